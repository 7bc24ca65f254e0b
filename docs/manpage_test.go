// SPDX-License-Identifier: Apache-2.0

package docs_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/testutil"
)

const manPage = "socket-proxyd.8"

// program builds the program and runs it with args, with no sockets passed
// in; it returns stdout, stderr and the exit status.
func program(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "socket-proxyd")
	build := exec.Command("go", "build", "-o", bin, "github.com/socket-proxyd/socket-proxyd/cmd/socket-proxyd")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/socket-proxyd: %v\n%s", err, out)
	}
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")} // no LISTEN_*, no JOURNAL_STREAM
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("socket-proxyd %q: %v", args, err)
	}
	return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
}

// help returns the program's --help text.
func help(t *testing.T) string {
	t.Helper()
	stdout, stderr, code := program(t, "--help")
	if code != 0 {
		t.Fatalf("socket-proxyd --help: exit status %d\n%s", code, stderr)
	}
	return stdout
}

// section returns the roff source of one .SH section of the man page.
func section(t *testing.T, page, name string) string {
	t.Helper()
	start := strings.Index(page, "\n.SH "+name+"\n")
	if start < 0 {
		t.Fatalf("%s has no .SH %s", manPage, name)
	}
	rest := page[start+len("\n.SH "+name+"\n"):]
	if end := strings.Index(rest, "\n.SH "); end >= 0 {
		rest = rest[:end]
	}
	return rest
}

var fontEscape = regexp.MustCompile(`\\f[BIRP]`)

// plain turns roff into text: no font escapes, \- as -, no macro names.
func plain(roff string) string {
	s := fontEscape.ReplaceAllString(roff, "")
	s = strings.ReplaceAll(s, `\-`, "-")
	s = strings.ReplaceAll(s, `\(aq`, "'")
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, ".") {
			if _, rest, ok := strings.Cut(l, " "); ok {
				l = strings.ReplaceAll(rest, `"`, "")
			} else {
				continue
			}
		}
		lines = append(lines, l)
	}
	return strings.Join(lines, "\n")
}

var optionName = regexp.MustCompile(`(?:^|[\s,])(--?[a-zA-Z][a-zA-Z0-9-]*)`)

// options lists the spellings in an option's heading, e.g. "-c --connections-max".
func options(heading string) string {
	var names []string
	for _, m := range optionName.FindAllStringSubmatch(heading, -1) {
		names = append(names, m[1])
	}
	return strings.Join(names, " ")
}

// helpOptions: the option headings of --help, the lines that start with "-"
// up to the gap before the description.
func helpOptions(help string) []string {
	var opts []string
	for _, l := range strings.Split(help, "\n") {
		l = strings.TrimSpace(l)
		if !strings.HasPrefix(l, "-") {
			continue
		}
		heading, _, _ := strings.Cut(l, "  ")
		opts = append(opts, options(heading))
	}
	slices.Sort(opts)
	return opts
}

// manOptions: the headings of the .TP entries in OPTIONS.
func manOptions(src string) []string {
	var opts []string
	lines := strings.Split(src, "\n")
	for i, l := range lines {
		if l == ".TP" && i+1 < len(lines) {
			opts = append(opts, options(plain(lines[i+1])))
		}
	}
	slices.Sort(opts)
	return opts
}

func readPage(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(manPage)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestOptionsMatchHelp: every option of --help is in the man page's OPTIONS
// with the same spellings, and the man page documents no option that
// --help does not have; defaults --help gives are in the man page too.
func TestOptionsMatchHelp(t *testing.T) {
	h := help(t)
	page := readPage(t)
	opts := section(t, page, "OPTIONS")
	fromHelp, fromMan := helpOptions(h), manOptions(opts)
	if len(fromHelp) == 0 {
		t.Fatalf("no options found in --help:\n%s", h)
	}
	for _, o := range fromHelp {
		if !slices.Contains(fromMan, o) {
			t.Errorf("--help has %q; the man page's OPTIONS do not (they have %q)", o, fromMan)
		}
	}
	for _, o := range fromMan {
		if !slices.Contains(fromHelp, o) {
			t.Errorf("the man page's OPTIONS have %q; --help does not (it has %q)", o, fromHelp)
		}
	}
	text := plain(opts)
	for _, m := range regexp.MustCompile(`\(default: ([^)]+)\)`).FindAllStringSubmatch(h, -1) {
		if !strings.Contains(text, m[1]) {
			t.Errorf("--help gives the default %q; the man page's OPTIONS do not mention it", m[1])
		}
	}
}

// TestSections: the sections an administrator expects, in order.
func TestSections(t *testing.T) {
	page := readPage(t)
	want := []string{"NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "SIGNALS", "ENVIRONMENT", "LOGGING",
		"EXAMPLES", "DIFFERENCES FROM SYSTEMD-SOCKET-PROXYD", "SEE ALSO", "COPYRIGHT"}
	var got []string
	for _, l := range strings.Split(page, "\n") {
		if name, ok := strings.CutPrefix(l, ".SH "); ok {
			got = append(got, strings.ReplaceAll(strings.Trim(name, `"`), `\-`, "-"))
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("sections %q, want %q", got, want)
	}
}

// TestExamplesMatchUnits: every ExecStart= in the man page's examples is the
// one of a unit in contrib/systemd, and every unit there appears in the man
// page, so the two cannot drift apart.
func TestExamplesMatchUnits(t *testing.T) {
	examples := plain(section(t, readPage(t), "EXAMPLES"))
	units, err := filepath.Glob("../contrib/systemd/*.s*")
	if err != nil || len(units) == 0 {
		t.Fatalf("no unit files in contrib/systemd: %v", err)
	}
	shipped := map[string]bool{}
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		name := filepath.Base(u)
		if !strings.Contains(examples, name) {
			t.Errorf("contrib/systemd/%s is not in the man page's EXAMPLES", name)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "ExecStart=") {
				shipped[l] = true
				if !strings.Contains(examples, l) {
					t.Errorf("contrib/systemd/%s has %q; the man page's EXAMPLES do not", name, l)
				}
			}
		}
	}
	for _, l := range strings.Split(examples, "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "ExecStart=") && !shipped[l] {
			t.Errorf("the man page has %q; no unit in contrib/systemd does", l)
		}
	}
}

// TestRendersWithoutWarnings: groff, as man(1) runs it, has nothing to say.
func TestRendersWithoutWarnings(t *testing.T) {
	groff := testutil.RequireTool(t, "groff", "groff-base")
	out, err := exec.Command(groff, "-man", "-ww", "-z", manPage).CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("groff -man -ww -z %s: %v\n%s", manPage, err, out)
	}
}

// TestExitStatusExample: the example in EXIT STATUS is what the program
// prints: the command after "$ " is run, and its standard error must be
// the lines that follow, with exit status 1.
func TestExitStatusExample(t *testing.T) {
	text := plain(section(t, readPage(t), `"EXIT STATUS"`))
	_, example, ok := strings.Cut(text, "\n$ ")
	if !ok {
		t.Fatal(`EXIT STATUS has no example command ("$ socket-proxyd ...")`)
	}
	command, want, _ := strings.Cut(example, "\n")
	want, _, _ = strings.Cut(want, "\n.EE") // plain keeps no macros, but be safe
	words := strings.Fields(command)
	if len(words) < 2 || words[0] != "socket-proxyd" {
		t.Fatalf("example command %q does not run socket-proxyd", command)
	}
	var lines []string
	for _, l := range strings.Split(want, "\n") {
		if strings.HasPrefix(l, "socket-proxyd: ") {
			lines = append(lines, l)
		}
	}
	_, stderr, code := program(t, words[1:]...)
	if got := strings.Join(lines, "\n") + "\n"; stderr != got || code != 1 {
		t.Errorf("socket-proxyd %s: exit status %d, standard error:\n%s\nthe man page says (exit status 1):\n%s", strings.Join(words[1:], " "), code, stderr, got)
	}
}

// TestDifferencesListed: the defaults a drop-in user will notice, and the
// command-line rules, are in DIFFERENCES FROM SYSTEMD-SOCKET-PROXYD.
func TestDifferencesListed(t *testing.T) {
	text := strings.Join(strings.Fields(plain(section(t, readPage(t), `"DIFFERENCES FROM SYSTEMD\-SOCKET\-PROXYD"`))), " ")
	for _, want := range []string{
		"retried for up to 10s ( --connect-timeout )",
		"keepalive is on, with 1min",
		"finish for up to 30s ( --shutdown-timeout )",
		"abbreviations included",
		"0666 by default, like SocketMode=",
		"--exit-idle-time= counts from start-up",
		"LISTEN_FDS=0",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the differences do not say %q:\n%s", want, text)
		}
	}
}
