// SPDX-License-Identifier: Apache-2.0

package main_test

// Bad socket-activation environments: LISTEN_FDS, LISTEN_PID and
// LISTEN_FDNAMES with garbage, huge counts, a PID mismatch, closed and
// non-socket descriptors. Each is one clear error line and exit status 1,
// never a panic or a hang. TestBadInheritedFD (e2e_cli_test.go) covers the
// socket kinds a .socket unit can get wrong; these are the rest.

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/testutil"
)

// checkCleanFailure waits for p to exit and asserts the clean failure: exit
// status 1, one stderr line containing every want, no panic, no goroutine
// dump.
func checkCleanFailure(t *testing.T, p *proc, want ...string) {
	t.Helper()
	code := p.waitExit(10 * time.Second)
	stderr := p.stderr.String()
	if code != 1 {
		t.Errorf("exit status %d, want 1", code)
	}
	if strings.Contains(stderr, "panic") || strings.Contains(stderr, "goroutine ") {
		t.Fatalf("it crashed:\n%s", stderr)
	}
	if n := strings.Count(strings.TrimSuffix(stderr, "\n"), "\n"); n != 0 {
		t.Errorf("stderr has %d lines, want one:\n%s", n+1, stderr)
	}
	if len(stderr) > 1000 {
		t.Errorf("stderr is %d bytes long, want one readable line", len(stderr))
	}
	for _, w := range want {
		if !strings.Contains(stderr, w) {
			t.Errorf("stderr does not contain %q:\n%s", w, stderr)
		}
	}
}

// rawSocketFile is a socket of any domain and type, bound and listening
// when listen is set, as a file to pass.
func rawSocketFile(t *testing.T, domain, typ int, listen bool) *os.File {
	t.Helper()
	fd, err := syscall.Socket(domain, typ|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		testutil.Unavailable(t, "socket(%d, %d): %v", domain, typ, err)
	}
	f := os.NewFile(uintptr(fd), "raw")
	t.Cleanup(func() { f.Close() })
	if listen {
		path := filepath.Join(shortDir(t), "s")
		if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Listen(fd, 8); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func TestBadActivationEnvironment(t *testing.T) {
	t.Parallel()
	good := func(t *testing.T) inherited { fd, _ := inheritTCP(t, "web"); return fd }
	tests := []struct {
		name string
		l    func(t *testing.T) launch
		want []string
	}{
		{
			name: "LISTEN_FDS not a number",
			l:    func(t *testing.T) launch { return launch{fds: []inherited{good(t)}, listenFDs: "abc"} },
			want: []string{`LISTEN_FDS="abc"`},
		},
		{
			name: "LISTEN_FDS negative",
			l:    func(t *testing.T) launch { return launch{fds: []inherited{good(t)}, listenFDs: "-3"} },
			want: []string{`LISTEN_FDS="-3"`},
		},
		{
			name: "LISTEN_FDS overflows",
			l: func(t *testing.T) launch {
				return launch{fds: []inherited{good(t)}, listenFDs: "99999999999999999999", noNames: true}
			},
			want: []string{`LISTEN_FDS="99999999999999999999"`},
		},
		{
			name: "LISTEN_FDS huge",
			l: func(t *testing.T) launch {
				return launch{fds: []inherited{good(t)}, listenFDs: "1000000", noNames: true}
			},
			want: []string{`LISTEN_FDS="1000000"`, "4096"},
		},
		{
			// The largest count accepted, with one socket really passed:
			// fd 4 onwards are not what systemd would have passed (the
			// Go runtime may hold files there, or nothing does).
			name: "LISTEN_FDS counts more than passed",
			l:    func(t *testing.T) launch { return launch{fds: []inherited{good(t)}, listenFDs: "4096", noNames: true} },
			want: []string{`inherited fd 4 ("LISTEN_FD_4")`},
		},
		{
			name: "LISTEN_FDNAMES names fewer than LISTEN_FDS",
			l: func(t *testing.T) launch {
				return launch{fds: []inherited{good(t), good(t)}, listenFDNames: "web"}
			},
			want: []string{`LISTEN_FDS="2"`, `LISTEN_FDNAMES="web"`},
		},
		{
			name: "LISTEN_FDNAMES huge and wrong",
			l: func(t *testing.T) launch {
				return launch{fds: []inherited{good(t)}, listenFDNames: strings.Repeat("x:", 50000)}
			},
			want: []string{`LISTEN_FDS="1"`, "LISTEN_FDNAMES="},
		},
		{
			name: "LISTEN_PID not a number",
			l:    func(t *testing.T) launch { return launch{fds: []inherited{good(t)}, listenPID: "abc"} },
			want: []string{`LISTEN_PID="abc"`},
		},
		{
			name: "LISTEN_PID overflows",
			l: func(t *testing.T) launch {
				return launch{fds: []inherited{good(t)}, listenPID: "99999999999999999999"}
			},
			want: []string{`LISTEN_PID="99999999999999999999"`},
		},
		{
			// sd_listen_fds semantics: variables for another process are
			// not ours to judge, garbage or not.
			name: "another pid with garbage count",
			l: func(t *testing.T) launch {
				return launch{fds: []inherited{good(t)}, listenPID: "1", listenFDs: "garbage"}
			},
			want: []string{noSocketsLine},
		},
		{
			name: "LISTEN_FDS without any fd",
			l:    func(t *testing.T) launch { return launch{listenFDs: "1", listenFDNames: "web"} },
			want: []string{`inherited fd 3 ("web")`},
		},
		{
			name: "closed fd between two sockets",
			l: func(t *testing.T) launch {
				return launch{fds: []inherited{good(t), {name: "gone"}, good(t)}}
			},
			want: []string{`inherited fd 4 ("gone")`},
		},
		{
			name: "pipe",
			l: func(t *testing.T) launch {
				r, w, err := os.Pipe()
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { r.Close(); w.Close() })
				return launch{fds: []inherited{{file: r, name: "pipe"}}}
			},
			want: []string{`inherited fd 3 ("pipe"): not a socket`},
		},
		{
			name: "character device",
			l: func(t *testing.T) launch {
				f, err := os.Open(os.DevNull)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { f.Close() })
				return launch{fds: []inherited{{file: f, name: "null"}}}
			},
			want: []string{`inherited fd 3 ("null"): not a socket`},
		},
		{
			name: "directory",
			l: func(t *testing.T) launch {
				f, err := os.Open(shortDir(t))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { f.Close() })
				return launch{fds: []inherited{{file: f, name: "dir"}}}
			},
			want: []string{`inherited fd 3 ("dir"): not a socket`},
		},
		{
			name: "listening seqpacket socket",
			l: func(t *testing.T) launch {
				f := rawSocketFile(t, syscall.AF_UNIX, syscall.SOCK_SEQPACKET, true)
				return launch{fds: []inherited{{file: f, name: "seq"}}}
			},
			// A sequential-packet socket is served, but it
			// forwards to a unix socket only.
			want: []string{`socket "seq" (fd 3) is a sequential-packet socket`, "unix socket"},
		},
		{
			name: "netlink socket",
			l: func(t *testing.T) launch {
				f := rawSocketFile(t, syscall.AF_NETLINK, syscall.SOCK_RAW, false)
				return launch{fds: []inherited{{file: f, name: "nl"}}}
			},
			want: []string{`inherited fd 3 ("nl"): socket type 3 cannot be forwarded`, "ListenDatagram="},
		},
		{
			// A name is quoted, so even a newline in it keeps the error
			// on one line.
			name: "bad fd with a newline in its name",
			l: func(t *testing.T) launch {
				f := rawSocketFile(t, syscall.AF_NETLINK, syscall.SOCK_RAW, false)
				return launch{fds: []inherited{{file: f, name: "we\nb\x1b[31m"}}}
			},
			want: []string{`inherited fd 3 ("we\nb\x1b[31m"): socket type 3`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l := tt.l(t)
			l.args = []string{"127.0.0.1:9"}
			checkCleanFailure(t, start(t, binary, l), tt.want...)
		})
	}
}

// TestOddButValidNames: LISTEN_FDNAMES with empty, very long or non-UTF-8
// names is still a valid environment: the proxy serves.
func TestOddButValidNames(t *testing.T) {
	t.Parallel()
	for _, names := range []string{":", strings.Repeat("n", 60000) + ":x", "\xff\xfe:\x01"} {
		t.Run("", func(t *testing.T) {
			t.Parallel()
			_, backend := echoTCP(t, "127.0.0.1:0")
			fd1, addr1 := inheritTCP(t, "")
			fd2, addr2 := inheritTCP(t, "")
			p := start(t, binary, launch{args: []string{backend}, fds: []inherited{fd1, fd2}, listenFDNames: names})
			mustEcho(t, dial(t, "tcp", addr1), 1000)
			mustEcho(t, dial(t, "tcp", addr2), 1000)
			if s := p.stderr.String(); strings.Contains(s, "panic") {
				t.Fatalf("stderr:\n%s", s)
			}
		})
	}
}
