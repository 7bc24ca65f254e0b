// SPDX-License-Identifier: Apache-2.0

package main_test

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/testutil"
)

const hintLine = "socket-proxyd: run 'socket-proxyd --help' for usage"

const noSocketsLine = "socket-proxyd: no listening sockets: start it from a .socket unit, " +
	"under systemd-socket-activate -l ADDRESS, or with --listen ADDRESS (--listen-datagram, --listen-sequential-packet)"

func TestHelp(t *testing.T) {
	t.Parallel()
	forEachImpl(t, func(t *testing.T, im impl) {
		for _, arg := range []string{"--help", "-h"} {
			code, stdout, stderr := run(t, im.path, launch{args: []string{arg}})
			if code != 0 {
				t.Errorf("%s: exit status %d, want 0; stderr: %s", arg, code, stderr)
			}
			want := []string{"-c", "--connections-max", "--exit-idle-time", "--help", "-h", "--version"}
			if !im.original {
				want = append(want, "--listen")
				if stderr != "" {
					t.Errorf("%s: stderr %q, want it empty (usage goes to stdout)", arg, stderr)
				}
			}
			for _, opt := range want {
				if !strings.Contains(stdout, opt) {
					t.Errorf("%s: usage on stdout does not list %s:\n%s", arg, opt, stdout)
				}
			}
		}
	})
}

func TestVersion(t *testing.T) {
	t.Parallel()
	forEachImpl(t, func(t *testing.T, im impl) {
		code, stdout, stderr := run(t, im.path, launch{args: []string{"--version"}})
		if code != 0 {
			t.Errorf("exit status %d, want 0; stderr: %s", code, stderr)
		}
		if strings.TrimSpace(stdout) == "" {
			t.Fatalf("no version on stdout; stderr: %s", stderr)
		}
		if im.original {
			return
		}
		// "socket-proxyd VERSION (commit COMMIT, GOVERSION)"
		line := strings.TrimSpace(stdout)
		if !strings.HasPrefix(line, "socket-proxyd ") || !strings.Contains(line, "(commit ") ||
			!strings.Contains(line, ", go") || !strings.HasSuffix(line, ")") || strings.Contains(line, "\n") {
			t.Errorf("version line %q, want \"socket-proxyd VERSION (commit COMMIT, GOVERSION)\"", line)
		}
	})
}

// TestBadCommandLine: every bad argument is one error line naming the bad
// value, then the hint line, and exit status 1 (as the original's 1).
func TestBadCommandLine(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want []string // substrings of the error line (ours)
	}{
		{name: "missing backend", args: nil, want: []string{"backend"}},
		{name: "missing backend after option", args: []string{"-c", "5"}, want: []string{"backend"}},
		// A second address is a second backend; one that is no address is
		// refused, naming it (the original refuses any second argument).
		{name: "extra argument", args: []string{"127.0.0.1:9", "extra/arg"}, want: []string{`"extra/arg"`}},
		{name: "backend twice", args: []string{"127.0.0.1:9", "127.0.0.1:9"}, want: []string{`"127.0.0.1:9"`, "twice"}},
		{name: "unknown long option", args: []string{"--bogus-option", "127.0.0.1:9"}, want: []string{"--bogus-option"}},
		{name: "unknown short option", args: []string{"-Z", "127.0.0.1:9"}, want: []string{"-Z"}},
		{name: "connections zero", args: []string{"-c", "0", "127.0.0.1:9"}, want: []string{`"0"`, "-c/--connections-max"}},
		{name: "connections negative", args: []string{"-c", "-1", "127.0.0.1:9"}, want: []string{`"-1"`, "-c/--connections-max"}},
		{name: "connections not a number", args: []string{"-c", "abc", "127.0.0.1:9"}, want: []string{`"abc"`, "-c/--connections-max"}},
		{name: "connections long form", args: []string{"--connections-max=0", "127.0.0.1:9"}, want: []string{`"0"`, "-c/--connections-max"}},
		{name: "connections without value", args: []string{"127.0.0.1:9", "-c"}, want: []string{"-c"}},
		{name: "idle time not a span", args: []string{"--exit-idle-time=foo", "127.0.0.1:9"}, want: []string{`"foo"`, "--exit-idle-time"}},
		{name: "idle time bad unit", args: []string{"--exit-idle-time", "5 parsecs", "127.0.0.1:9"}, want: []string{`"5 parsecs"`, "--exit-idle-time"}},
		{name: "idle time negative", args: []string{"--exit-idle-time=-5s", "127.0.0.1:9"}, want: []string{`"-5s"`, "--exit-idle-time"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			forEachImpl(t, func(t *testing.T, im impl) {
				code, stdout, stderr := run(t, im.path, launch{args: tt.args})
				if code != 1 {
					t.Errorf("exit status %d, want 1", code)
				}
				if stdout != "" {
					t.Errorf("stdout %q, want nothing", stdout)
				}
				if im.original {
					return
				}
				checkErrorLines(t, stderr, tt.want)
			})
		})
	}
}

// checkErrorLines asserts the CLI error format: exactly one error line
// "socket-proxyd: ..." containing every want, then the hint line.
func checkErrorLines(t *testing.T, stderr string, want []string) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("stderr has %d lines, want an error line and the hint line:\n%s", len(lines), stderr)
	}
	if !strings.HasPrefix(lines[0], "socket-proxyd: ") {
		t.Errorf("error line %q does not start with \"socket-proxyd: \"", lines[0])
	}
	for _, w := range want {
		if !strings.Contains(lines[0], w) {
			t.Errorf("error line %q does not name %s", lines[0], w)
		}
	}
	if lines[1] != hintLine {
		t.Errorf("last line %q, want %q", lines[1], hintLine)
	}
}

// TestBadBackend: an invalid backend is fatal at start-up, before anything is
// accepted. The original only fails later, on each connection.
func TestBadBackend(t *testing.T) {
	t.Parallel()
	long := "/tmp/" + strings.Repeat("x", 110)
	tests := []struct {
		name    string
		backend string
		want    string
	}{
		{name: "empty", backend: "", want: "empty backend"},
		{name: "port out of range", backend: "127.0.0.1:99999", want: `"127.0.0.1:99999"`},
		{name: "hostname port out of range", backend: "localhost:65536", want: `"localhost:65536"`},
		{name: "unix path longer than sun_path", backend: long, want: `"` + long + `"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			checkDiffers(t, "invalid backends are fatal at start-up", func(t *testing.T, im impl) error {
				// A good listener, so that only the backend can be wrong.
				fd, _ := inheritTCP(t, "web")
				p := start(t, im.path, launch{args: []string{tt.backend}, fds: []inherited{fd}})
				code, err := p.exitWithin(5 * time.Second)
				if err != nil {
					return err
				}
				if code != 1 {
					t.Errorf("exit status %d, want 1", code)
				}
				if !im.original {
					checkErrorLines(t, p.stderr.String(), []string{tt.want})
				}
				return nil
			})
		})
	}
}

// TestGoodCommandLine: the GNU getopt spellings the original accepts all work,
// and the proxy then forwards.
func TestGoodCommandLine(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		opts []string
	}{
		{name: "-c5", opts: []string{"-c5"}},
		{name: "-c 5", opts: []string{"-c", "5"}},
		{name: "--connections-max=5", opts: []string{"--connections-max=5"}},
		{name: "--connections-max 5", opts: []string{"--connections-max", "5"}},
		{name: "idle unitless", opts: []string{"--exit-idle-time=30"}},
		{name: "idle compound", opts: []string{"--exit-idle-time", "5min 20s"}},
		{name: "idle 1h30min", opts: []string{"--exit-idle-time=1h30min"}},
		{name: "idle infinity", opts: []string{"--exit-idle-time=infinity"}},
		{name: "option after backend", opts: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			forEachImpl(t, func(t *testing.T, im impl) {
				_, backend := echoTCP(t, "127.0.0.1:0")
				fd, addr := inheritTCP(t, "web")
				args := append(append([]string{}, tt.opts...), backend)
				if tt.opts == nil {
					args = []string{backend, "-c", "5"} // GNU getopt permutes
				}
				start(t, im.path, launch{args: args, fds: []inherited{fd}})
				mustEcho(t, dial(t, "tcp", addr), 1000)
			})
		})
	}
}

func TestNoSockets(t *testing.T) {
	t.Parallel()
	forEachImpl(t, func(t *testing.T, im impl) {
		code, _, stderr := run(t, im.path, launch{args: []string{"127.0.0.1:9"}})
		if code != 1 {
			t.Errorf("exit status %d, want 1", code)
		}
		if !im.original && strings.TrimSuffix(stderr, "\n") != noSocketsLine {
			t.Errorf("stderr %q, want %q", stderr, noSocketsLine)
		}
	})
}

// TestListenPIDMismatch: LISTEN_PID for another process means the fds are not
// ours (sd_listen_fds semantics): ignored, so no sockets.
func TestListenPIDMismatch(t *testing.T) {
	t.Parallel()
	forEachImpl(t, func(t *testing.T, im impl) {
		fd, _ := inheritTCP(t, "web")
		p := start(t, im.path, launch{args: []string{"127.0.0.1:9"}, fds: []inherited{fd}, listenPID: "1"})
		code := p.waitExit(10 * time.Second)
		if code != 1 {
			t.Errorf("exit status %d, want 1", code)
		}
		if stderr := p.stderr.String(); !im.original && !strings.Contains(stderr, noSocketsLine) {
			t.Errorf("stderr %q, want %q", stderr, noSocketsLine)
		}
	})
}

// TestBadInheritedFD: each fd is checked and reported by number and name,
// with what to change in the .socket unit.
func TestBadInheritedFD(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		fds  func(t *testing.T) []inherited
		want []string
	}{
		{
			name: "tcp socket not listening",
			fds: func(t *testing.T) []inherited {
				fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				f := os.NewFile(uintptr(fd), "unlistened")
				t.Cleanup(func() { f.Close() })
				if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
					t.Fatal(err)
				}
				return []inherited{{file: f, name: "web"}}
			},
			want: []string{`inherited fd 3 ("web"): socket is not listening`, "Accept=no"},
		},
		{
			name: "connected socket (Accept=yes)",
			fds: func(t *testing.T) []inherited {
				srv, addr := echoTCP(t, "127.0.0.1:0")
				_ = srv
				c := dial(t, "tcp", addr)
				return []inherited{{file: fileOf(t, c.(*net.TCPConn)), name: "conn"}}
			},
			want: []string{`inherited fd 3 ("conn"): socket is not listening`, "Accept=no"},
		},
		{
			name: "regular file",
			fds: func(t *testing.T) []inherited {
				f, err := os.Create(filepath.Join(shortDir(t), "file"))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { f.Close() })
				return []inherited{{file: f, name: "web"}}
			},
			want: []string{`inherited fd 3 ("web"): not a socket`},
		},
		{
			name: "second fd bad",
			fds: func(t *testing.T) []inherited {
				good, _ := inheritTCP(t, "good")
				fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				f := os.NewFile(uintptr(fd), "unlistened")
				t.Cleanup(func() { f.Close() })
				return []inherited{good, {file: f, name: "idle"}}
			},
			want: []string{`inherited fd 4 ("idle"): socket is not listening`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// The original checks too, with one message for every case
			// ("Passed in socket is not a stream socket.") and no fd number.
			forEachImpl(t, func(t *testing.T, im impl) {
				p := start(t, im.path, launch{args: []string{"127.0.0.1:9"}, fds: tt.fds(t)})
				code := p.waitExit(10 * time.Second)
				if code != 1 {
					t.Errorf("exit status %d, want 1", code)
				}
				if !im.original {
					stderr := p.stderr.String()
					for _, w := range tt.want {
						if !strings.Contains(stderr, w) {
							t.Errorf("stderr does not contain %q:\n%s", w, stderr)
						}
					}
					if n := strings.Count(strings.TrimSuffix(stderr, "\n"), "\n"); n != 0 {
						t.Errorf("stderr has %d lines, want one:\n%s", n+1, stderr)
					}
				}
			})
		})
	}
}

// TestConnectionsMaxLikeOriginal: -c takes every value the original
// takes ("010", "0x10", " 5", "0b101") and refuses every value it refuses
// ("4294967296", "5 ", "08"), side by side with the original (systemd's
// package installs it); the values themselves are checked by
// TestParseAtouLikeSystemd, from the same table.
func TestConnectionsMaxLikeOriginal(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("testdata/connections-max.json")
	if err != nil {
		t.Fatal(err)
	}
	var cases []struct {
		In    string
		OK    bool
		Value uint64
	}
	if err := json.Unmarshal(b, &cases); err != nil {
		t.Fatal(err)
	}
	for _, tt := range cases {
		t.Run(fmt.Sprintf("%q", tt.In), func(t *testing.T) {
			t.Parallel()
			for _, im := range []impl{{name: "ours", path: binary}, {name: "original", path: originalBinary, original: true}} {
				if im.original {
					if _, err := os.Stat(im.path); err != nil {
						testutil.Unavailable(t, "the original is not installed: %v", err)
					}
				}
				_, _, stderr := run(t, im.path, launch{args: []string{"-c", tt.In, "127.0.0.1:80"}})
				parsed := stderr == noSocketsLine+"\n" || stderr == "Didn't get any sockets passed in.\n"
				if want := tt.OK && tt.Value >= 1; parsed != want {
					t.Errorf("%s: -c %q: taken %v, want %v; stderr %q", im.name, tt.In, parsed, want, stderr)
				}
			}
		})
	}
}

// TestCommandLineLikeOriginal: the original's options are read as its
// getopt_long reads them, case by case: abbreviations, both
// value forms, clusters, "--" and options after the address. ok records
// what systemd-socket-proxyd 252 does; SPX_COMPARE_ORIGINAL=1 checks that
// record against the installed original. Parsing passed when the binary
// gets as far as looking for sockets (none are passed here).
func TestCommandLineLikeOriginal(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args []string
		ok   bool
		out  bool   // accepted and printed help or version on stdout, exit 0
		want string // ours, refused: in the error line
	}{
		{args: []string{"--connections=10", "127.0.0.1:80"}, ok: true},
		{args: []string{"--conn", "10", "127.0.0.1:80"}, ok: true},
		{args: []string{"--c=10", "127.0.0.1:80"}, ok: true},
		{args: []string{"--connect=5", "127.0.0.1:80"}, ok: true},
		{args: []string{"--exit-idle=1s", "127.0.0.1:80"}, ok: true},
		{args: []string{"--e=1s", "127.0.0.1:80"}, ok: true},
		{args: []string{"-c10", "127.0.0.1:80"}, ok: true},
		{args: []string{"127.0.0.1:80", "-c", "5"}, ok: true},
		{args: []string{"127.0.0.1:80", "-c5", "--exit-idle-time", "5s"}, ok: true},
		{args: []string{"--exit-idle-time=5", "127.0.0.1:80", "--conn=3"}, ok: true},
		{args: []string{"--connections-max=5", "--connections-max=6", "127.0.0.1:80"}, ok: true},
		{args: []string{"--", "127.0.0.1:80"}, ok: true},
		{args: []string{"--h"}, ok: true, out: true},
		{args: []string{"--he"}, ok: true, out: true},
		{args: []string{"--v"}, ok: true, out: true},
		{args: []string{"--ver"}, ok: true, out: true},
		{args: []string{"-hc5"}, ok: true, out: true},
		{args: []string{"-c", "5", "-h"}, ok: true, out: true},
		{args: []string{"-h", "--bogus"}, ok: true, out: true},
		{args: []string{"--version", "-c", "0"}, ok: true, out: true},
		{args: []string{"--bogus", "-h"}, want: `unknown option "--bogus"`},
		{args: []string{"--", "-c", "127.0.0.1:80"}, want: `"-c"`},
		{args: []string{"127.0.0.1:80", "--", "-c5"}, want: `"-c5"`},
		{args: []string{"-c"}, want: `"-c" needs a value`},
		{args: []string{"--connections-max"}, want: `"--connections-max" needs a value`},
		{args: []string{"--connections-max=", "127.0.0.1:80"}, want: `invalid value "" for -c/--connections-max`},
		{args: []string{"-c=5", "127.0.0.1:80"}, want: `invalid value "=5"`},
		{args: []string{"-c5h", "127.0.0.1:80"}, want: `invalid value "5h"`},
		{args: []string{"-ch"}, want: `invalid value "h"`},
		{args: []string{"--exit-idle-time=", "127.0.0.1:80"}, want: `invalid value "" for --exit-idle-time`},
		{args: []string{"--help=x"}, want: `"--help" takes no value`},
		{args: []string{"--version=1"}, want: `"--version" takes no value`},
		{args: []string{"--"}, want: "missing backend address"},
		{args: []string{"--connections-maxx=5", "127.0.0.1:80"}, want: `unknown option "--connections-maxx"`},
		{args: []string{"--=5", "127.0.0.1:80"}, want: `option "--" is ambiguous: it could be --connections-max, --exit-idle-time, --help, --version`},
		{args: []string{"---", "127.0.0.1:80"}, want: `unknown option "---"`},
		// Several addresses are several backends; one that is no address
		// is refused, as the original refuses any second argument.
		{args: []string{"127.0.0.1:80", "extra.sock"}, want: `"extra.sock"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Parallel()
			forEachImpl(t, func(t *testing.T, im impl) {
				code, stdout, stderr := run(t, im.path, launch{args: tt.args})
				switch {
				case tt.out:
					if code != 0 || stdout == "" {
						t.Errorf("exit status %d, stdout %q, want 0 and help or version; stderr: %s", code, stdout, stderr)
					}
				case tt.ok:
					noSockets := noSocketsLine + "\n"
					if im.original {
						noSockets = "Didn't get any sockets passed in.\n"
					}
					if code != 1 || stderr != noSockets {
						t.Errorf("exit status %d, stderr %q: want the parse to pass and 1, %q", code, stderr, noSockets)
					}
				default:
					if code != 1 || strings.Contains(stderr, "sockets passed in") || strings.Contains(stderr, "no listening sockets") {
						t.Errorf("exit status %d, stderr %q: want the command line refused", code, stderr)
					}
					if !im.original {
						checkErrorLines(t, stderr, []string{tt.want})
					}
				}
			})
		})
	}
}

// TestStartupNamesListeners: one info line per listener names it, where it
// listens and its backend, so the port of --listen 127.0.0.1:0 can be
// found; LISTEN_FDS without LISTEN_PID is ignored, as sd_listen_fds does.
func TestStartupNamesListeners(t *testing.T) {
	t.Parallel()
	_, backend := echoTCP(t, "127.0.0.1:0")
	fd, inhAddr := inheritTCP(t, "web")
	p := start(t, binary, launch{args: []string{"--listen", "127.0.0.1:0", backend}, fds: []inherited{fd}})
	if err := p.waitStderr("listening listener=127.0.0.1:0/tcp ", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`listening listener=127\.0\.0\.1:0/tcp address=(127\.0\.0\.1:[0-9]+) backend=` + regexp.QuoteMeta(backend) + `\n`).
		FindStringSubmatch(p.stderr.String())
	if m == nil {
		t.Fatalf("no line names the --listen port and the backend:\n%s", p.stderr.String())
	}
	mustEcho(t, dial(t, "tcp", m[1]), 1000)
	if want := "listening listener=web/tcp fd=3 address=" + inhAddr + " backend=" + backend + "\n"; !strings.Contains(p.stderr.String(), want) {
		t.Errorf("no line %q:\n%s", want, p.stderr.String())
	}

	// Only LISTEN_FDS and LISTEN_FDNAMES, as a shell that inherited them
	// from a unit might: not for us, so --listen alone serves.
	q := start(t, binary, launch{args: []string{"--listen", "127.0.0.1:0", backend}, env: []string{"LISTEN_FDS=1", "LISTEN_FDNAMES=web"}})
	if err := q.waitStderr("listening listener=127.0.0.1:0/tcp ", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(q.stderr.String(), "web") {
		t.Errorf("LISTEN_FDS without LISTEN_PID was taken for sockets:\n%s", q.stderr.String())
	}
}

// TestListenSocketFile: a --listen unix socket is 0666 by default, as
// SocketMode=, or --socket-mode; and it is removed at exit.
func TestListenSocketFile(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		args []string
		mode os.FileMode
	}{{mode: 0o666}, {args: []string{"--socket-mode=0600"}, mode: 0o600}, {args: []string{"--socket-m", "640"}, mode: 0o640}} {
		t.Run(tt.mode.String(), func(t *testing.T) {
			t.Parallel()
			_, backend := echoTCP(t, "127.0.0.1:0")
			path := filepath.Join(shortDir(t), "l.sock")
			p := start(t, binary, launch{args: append(append([]string{"--listen", path}, tt.args...), backend)})
			if err := p.waitStderr("listening listener="+path, 10*time.Second); err != nil {
				t.Fatal(err)
			}
			fi, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != tt.mode {
				t.Errorf("socket file mode %v, want %v", fi.Mode().Perm(), tt.mode)
			}
			if want := "address=" + path + " "; !strings.Contains(p.stderr.String(), want) {
				t.Errorf("start-up line lacks %q:\n%s", want, p.stderr.String())
			}
			c := dial(t, "unix", path)
			mustEcho(t, c, 1000)
			c.Close() // so that SIGTERM has nothing to drain
			p.signal(syscall.SIGTERM)
			if code := p.waitExit(20 * time.Second); code != 0 {
				t.Errorf("exit status %d after SIGTERM", code)
			}
			if _, err := os.Lstat(path); err == nil {
				t.Error("the socket file is left behind at exit")
			}
		})
	}
}

// TestHints: the mistakes users make get an error that says what to write,
// one line and the usage hint, exit status 1.
func TestHints(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		args []string
		want string
	}{
		{args: []string{"nginx.sock"}, want: `backend address "nginx.sock" looks like a unix socket file, not a host name: give its absolute path, such as "/run/nginx.sock"`},
		{args: []string{"./nginx.sock"}, want: `backend address "./nginx.sock" is a relative path: give the unix socket's absolute path, such as "/run/nginx.sock"`},
		{args: []string{"unix:/run/x.sock"}, want: `backend address "unix:/run/x.sock": write the socket path alone, "/run/x.sock", without "unix:"`},
		{args: []string{"http://127.0.0.1:80"}, want: `backend address "http://127.0.0.1:80" is a URL: write HOST:PORT alone, "127.0.0.1:80"`},
		{args: []string{"--exit-idle-time", "5", "minutes", "127.0.0.1:80"},
			want: `argument "minutes" follows --exit-idle-time "5": quote a span with spaces, --exit-idle-time="5 minutes"`},
		{args: []string{"--keepalive=10h", "127.0.0.1:80"}, want: `invalid value "10h" for --keepalive: above the kernel's limit of 9h 6min 7s (32767s); use a shorter span, or 0 or infinity to turn keepalive off`},
		{args: []string{"--s=1", "127.0.0.1:80"}, want: `option "--s" is ambiguous: it could be --socket-buffer, --socket-mode, --shutdown-timeout; write more of it`},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := run(t, binary, launch{args: tt.args})
			if code != 1 || stdout != "" {
				t.Errorf("exit status %d, stdout %q; want 1 and nothing", code, stdout)
			}
			checkErrorLines(t, stderr, []string{tt.want})
		})
	}
	// --listen is checked when it binds, after the command line: one line.
	code, _, stderr := run(t, binary, launch{args: []string{"--listen", "::1:8080", "127.0.0.1:80"}})
	if want := `socket-proxyd: --listen address "::1:8080": write an IPv6 address in brackets, "[::1]:8080"` + "\n"; code != 1 || stderr != want {
		t.Errorf("exit status %d, stderr %q; want 1 and %q", code, stderr, want)
	}
}

// TestExitIdleZero: --exit-idle-time=0 exits as soon as nothing is open,
// with status 0, and no message calls the span "1ns".
func TestExitIdleZero(t *testing.T) {
	t.Parallel()
	code, _, stderr := run(t, binary, launch{args: []string{"--listen", "127.0.0.1:0", "--exit-idle-time=0", "127.0.0.1:9"}})
	if code != 0 || !strings.Contains(stderr, "exiting after being idle") {
		t.Errorf("exit status %d, stderr:\n%s\nwant 0 after an idle exit", code, stderr)
	}
	if strings.Contains(stderr, "1ns") {
		t.Errorf("a message calls --exit-idle-time=0 1ns:\n%s", stderr)
	}
}

// TestCheckHandoffNotByHand: the check mode a reload runs on the next
// binary refuses to run from a terminal, saying what it is; from a pipe,
// as a reload runs it, it answers.
func TestCheckHandoffNotByHand(t *testing.T) {
	t.Parallel()
	script := testutil.RequireTool(t, "script", "util-linux")
	out, err := exec.Command(script, "-qec", binary+" --check-handoff=1 127.0.0.1:9", "/dev/null").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--check-handoff is internal to reloads") {
		t.Errorf("from a terminal: %v, %q; want it refused", err, out)
	}
	code, stdout, _ := run(t, binary, launch{args: []string{"--check-handoff=1", "127.0.0.1:9"}})
	if code != 0 || stdout != "socket-proxyd reads handoff record version 1\n" {
		t.Errorf("from a pipe: exit %d, %q; want the answer", code, stdout)
	}
}
