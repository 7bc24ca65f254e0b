package main_test

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
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
		{name: "extra argument", args: []string{"127.0.0.1:9", "extra-arg"}, want: []string{`"extra-arg"`}},
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
