// SPDX-License-Identifier: Apache-2.0

package docs_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// The completion scripts in contrib/completion, tested with the shells
// themselves: keys typed into an interactive bash and zsh on a pty, and
// fish's own "complete -C". Each script's options must be those of --help, so that a new
// option without completion fails here.
const completionDir = "../contrib/completion"

// need fails the test under CI=1 (where .ci/run installs the tool) and skips
// it elsewhere.
func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := os.Stat(tool); err == nil {
			continue
		}
		if _, err := exec.LookPath(tool); err == nil {
			continue
		}
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is missing (CI=1: a missing tool fails): apt-get install bash-completion zsh fish util-linux", tool)
		}
		t.Skipf("%s is missing: apt-get install bash-completion zsh fish util-linux", tool)
	}
}

// helpOptionSet is every spelling of every option of --help, sorted.
func helpOptionSet(t *testing.T) []string {
	t.Helper()
	var all []string
	for _, heading := range helpOptions(help(t)) {
		all = append(all, strings.Fields(heading)...)
	}
	slices.Sort(all)
	return all
}

// sameOptions fails the test unless got (a script's options) equals want
// (--help's), naming what is missing on either side.
func sameOptions(t *testing.T, script string, got, want []string) {
	t.Helper()
	got = slices.Compact(slices.Sorted(slices.Values(got)))
	for _, o := range want {
		if !slices.Contains(got, o) {
			t.Errorf("--help has %s; %s does not complete it (add it there)", o, script)
		}
	}
	for _, o := range got {
		if !slices.Contains(want, o) {
			t.Errorf("%s completes %s; --help has no such option", script, o)
		}
	}
}

// run runs a shell command with a deadline and returns its output.
func run(t *testing.T, stdin string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + t.TempDir(), "TERM=dumb", "INPUTRC=/dev/null", "LANG=C.UTF-8"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// typed types each line into an interactive shell on a pty (util-linux
// script), so the line editor (readline, zle) completes exactly as for a
// user, and returns the arguments each line ran socket-proxyd with.
// socket-proxyd is a shell function there that prints them: only the
// completion is tested. setup loads the completion as a user's rc file would.
func typed(t *testing.T, shell, setup string, lines ...string) []string {
	t.Helper()
	input := setup + "; socket-proxyd() { printf 'ARGS:%s:END\\n' \"$*\"; }\n" +
		strings.Join(lines, "\n") + "\nexit\n"
	out := run(t, input, "script", "-qec", shell, "/dev/null")
	var got []string
	for _, m := range regexp.MustCompile(`(?m)^ARGS:(.*):END\r?$`).FindAllStringSubmatch(out, -1) {
		got = append(got, m[1])
	}
	if len(got) != len(lines) {
		t.Fatalf("typed %d lines, socket-proxyd ran %d times; the session:\n%s", len(lines), len(got), out)
	}
	return got
}

func bashTyped(t *testing.T, lines ...string) []string {
	t.Helper()
	need(t, "bash", "script", "/usr/share/bash-completion/bash_completion")
	script, err := filepath.Abs(filepath.Join(completionDir, "socket-proxyd.bash"))
	if err != nil {
		t.Fatal(err)
	}
	return typed(t, "bash --norc --noprofile -i",
		"source /usr/share/bash-completion/bash_completion; source "+script, lines...)
}

// zshTyped: zsh with the completion directory on fpath, as the packages
// install it, and compinit, as in a user's .zshrc.
func zshTyped(t *testing.T, lines ...string) []string {
	t.Helper()
	need(t, "zsh", "script")
	dir, err := filepath.Abs(completionDir)
	if err != nil {
		t.Fatal(err)
	}
	return typed(t, "zsh -f -i",
		"fpath=("+dir+" $fpath); autoload -Uz compinit; compinit -u -d "+t.TempDir()+"/zcompdump", lines...)
}

// completes checks what each typed line ran socket-proxyd with.
func completes(t *testing.T, shell string, run func(*testing.T, ...string) []string, tests []struct{ typed, want string }) {
	t.Helper()
	var lines []string
	for _, tt := range tests {
		lines = append(lines, tt.typed)
	}
	got := run(t, lines...)
	for i, tt := range tests {
		if got[i] != tt.want {
			t.Errorf("%s: typed %q: socket-proxyd ran with %q, want %q", shell, tt.typed, got[i], tt.want)
		}
	}
}

// TestBashCompletes: <TAB> completes an option and --proxy-protocol's
// values; M-* (insert-completions) inserts every candidate, which shows the
// whole list.
func TestBashCompletes(t *testing.T) {
	completes(t, "bash", bashTyped, []struct{ typed, want string }{
		{"socket-proxyd --pro\tv\t2", "--proxy-protocol=v2"},
		{"socket-proxyd --proxy-protocol=n\t", "--proxy-protocol=none"},
		{"socket-proxyd --proxy-protocol=\x1b*", "--proxy-protocol=none v1 v2"},
		{"socket-proxyd --proxy-protocol \x1b*", "--proxy-protocol none v1 v2"},
		{"socket-proxyd --connections\t9", "--connections-max=9"},
	})
}

func TestBashOptionsMatchHelp(t *testing.T) {
	got := bashTyped(t, "socket-proxyd -\x1b*")
	var opts []string
	for _, o := range strings.Fields(got[0]) {
		opts = append(opts, strings.TrimSuffix(o, "="))
	}
	sameOptions(t, "socket-proxyd.bash", opts, helpOptionSet(t))
}

// fishComplete is what fish offers for a command line, one candidate a line
// without the description.
func fishComplete(t *testing.T, line string) []string {
	t.Helper()
	need(t, "fish")
	out := run(t, "", "fish", "--no-config", "-c",
		"source "+filepath.Join(completionDir, "socket-proxyd.fish")+"; and complete -C '"+line+"'")
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		c, _, _ := strings.Cut(l, "\t")
		got = append(got, c)
	}
	return got
}

func TestFishCompletes(t *testing.T) {
	if got := fishComplete(t, "socket-proxyd --pro"); !slices.Equal(got, []string{"--proxy-protocol"}) {
		t.Errorf("fish completes --pro to %q, want [--proxy-protocol]", got)
	}
	want := []string{"--proxy-protocol=none", "--proxy-protocol=v1", "--proxy-protocol=v2"}
	if got := fishComplete(t, "socket-proxyd --proxy-protocol="); !slices.Equal(got, want) {
		t.Errorf("fish completes --proxy-protocol= to %q, want %q", got, want)
	}
	sameOptions(t, "socket-proxyd.fish", fishComplete(t, "socket-proxyd -"), helpOptionSet(t))
}

// zshSpecOption is an option in an _arguments spec once its quotes, braces,
// commas, parentheses, "*", "=" and "+" are spaces.
var zshSpecOption = regexp.MustCompile(`^--?[a-zA-Z][a-zA-Z0-9-]*$`)

// TestZshCompletes: the same keys in zsh's line editor.
func TestZshCompletes(t *testing.T) {
	completes(t, "zsh", zshTyped, []struct{ typed, want string }{
		{"socket-proxyd --pro\tv\t2", "--proxy-protocol=v2"},
		{"socket-proxyd --proxy-protocol=n\t", "--proxy-protocol=none"},
		{"socket-proxyd --connections\t9", "--connections-max=9"},
		{"socket-proxyd --vers\t", "--version"},
	})
}

// TestZshOptionsMatchHelp: the _arguments specs name the options of --help.
func TestZshOptionsMatchHelp(t *testing.T) {
	src, err := os.ReadFile(filepath.Join(completionDir, "_socket-proxyd"))
	if err != nil {
		t.Fatal(err)
	}
	_, specs, ok := strings.Cut(string(src), "_arguments -s -S")
	if !ok {
		t.Fatal("_socket-proxyd has no _arguments -s -S call")
	}
	specs = regexp.MustCompile(`\[[^\]]*\]`).ReplaceAllString(specs, "[]") // descriptions
	var opts []string
	for _, w := range strings.Fields(strings.NewReplacer("'", " ", `"`, " ", "{", " ", "}", " ", ",", " ",
		"(", " ", ")", " ", "*", " ", "=", " ", "+", " ", "[]", " ").Replace(specs)) {
		if zshSpecOption.MatchString(w) {
			opts = append(opts, w)
		}
	}
	sameOptions(t, "_socket-proxyd", opts, helpOptionSet(t))
}
