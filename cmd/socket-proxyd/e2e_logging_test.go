// SPDX-License-Identifier: Apache-2.0

package main_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRefusedFlood: clients beyond the limit are each closed at once, but
// the warning about them is rate-limited, so a flood cannot fill the
// journal. (The original admits N+1 and then warns once per refused client.)
func TestRefusedFlood(t *testing.T) {
	t.Parallel()
	const flood = 50
	checkDiffers(t, "exact limit, and its warning rate-limited", func(t *testing.T, im impl) error {
		_, backend := echoTCP(t, "127.0.0.1:0")
		fd, addr := inheritTCP(t, "web")
		p := start(t, im.path, launch{args: atOnce(im, "-c", "1", backend), fds: []inherited{fd}})
		held := dial(t, "tcp", addr)
		mustEcho(t, held, 1000)
		for i := 0; i < flood; i++ {
			c, err := net.DialTimeout("tcp", addr, ioTimeout)
			if err != nil {
				t.Fatal(err)
			}
			err = closedWithoutData(c, 10*time.Second)
			c.Close()
			if err != nil {
				return fmt.Errorf("refused client %d: %v", i, err)
			}
		}
		mustEcho(t, held, 1000)
		p.signal(syscall.SIGTERM)
		p.waitExit(10 * time.Second)
		stderr := strings.TrimSpace(p.stderr.String())
		lines := strings.Split(stderr, "\n")
		if stderr == "" {
			return fmt.Errorf("no warning at all for %d refused clients", flood)
		}
		if len(lines) > 5 {
			return fmt.Errorf("%d stderr lines for %d refused clients, want a rate-limited warning:\n%s", len(lines), flood, stderr)
		}
		if !im.original && !strings.Contains(stderr, "limit") {
			t.Errorf("the warning does not mention the limit:\n%s", stderr)
		}
		return nil
	})
}

// timestamp matches the date or time a log line would start with.
var timestamp = regexp.MustCompile(`\d{4}-\d\d-\d\d|\d\d:\d\d:\d\d`)

// asJournal wraps a command line so that the binary's JOURNAL_STREAM names
// its own stderr (the test's pipe), as systemd sets it for
// StandardError=journal. The sh shim execs, so the pid stays the binary's.
func asJournal(bin string, args ...string) (string, []string) {
	return "/bin/sh", append([]string{"-c", `JOURNAL_STREAM=$(stat -L -c %d:%i /dev/stderr) && export JOURNAL_STREAM && exec "$0" "$@"`, bin}, args...)
}

// noNativeJournal skips a test of the lines written to the journal stream
// on a host where journald's native socket is there: the proxy sends its
// entries there instead (test/systemd checks those under a real systemd).
func noNativeJournal(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/run/systemd/journal/socket"); err == nil {
		t.Skip("journald runs here: entries go to its native socket, not to stderr")
	}
}

// TestJournalLogging: when stderr is the journal (JOURNAL_STREAM names it)
// and journald's native socket is not there, log lines carry an sd-daemon
// priority prefix and no timestamp; SYSTEMD_LOG_LEVEL is honoured; at debug
// level each connection gets a line naming client and backend.
func TestJournalLogging(t *testing.T) {
	t.Parallel()
	noNativeJournal(t)
	tests := []struct {
		name     string
		level    string // SYSTEMD_LOG_LEVEL, "" for the default
		wantWarn bool   // the backend failure's "<4>" line
		wantConn bool   // the successful connection's "<7>" line
	}{
		{name: "default level", level: "", wantWarn: true, wantConn: false},
		{name: "debug", level: "debug", wantWarn: true, wantConn: true},
		{name: "numeric debug", level: "7", wantWarn: true, wantConn: true},
		{name: "err hides warnings", level: "err", wantWarn: false, wantConn: false},
		{name: "numeric err", level: "3", wantWarn: false, wantConn: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			forEachImpl(t, func(t *testing.T, im impl) {
				oursOnly(t, im, "slog lines with sd-daemon prefixes")
				missing := filepath.Join(shortDir(t), "missing.sock")
				_, backend := echoTCP(t, "127.0.0.1:0")
				fdBad, addrBad := inheritTCP(t, "bad")
				var env []string
				if tt.level != "" {
					env = append(env, "SYSTEMD_LOG_LEVEL="+tt.level)
				}
				// Two proxies: one with a missing backend, one that works.
				sh, args := asJournal(im.path, atOnce(im, missing)...)
				pBad := start(t, sh, launch{args: args, fds: []inherited{fdBad}, env: env})
				fdGood, addrGood := inheritTCP(t, "good")
				sh, args = asJournal(im.path, backend)
				pGood := start(t, sh, launch{args: args, fds: []inherited{fdGood}, env: env})

				bad := dial(t, "tcp", addrBad)
				if err := closedWithoutData(bad, 10*time.Second); err != nil {
					t.Fatal(err)
				}
				good := dial(t, "tcp", addrGood)
				mustEcho(t, good, 4096)
				good.Close()
				var goodLine string
				if tt.wantConn {
					// The per-connection line is logged when it ends.
					_ = pGood.waitStderr(good.LocalAddr().String(), 10*time.Second)
				}
				for _, p := range []*proc{pBad, pGood} {
					p.signal(syscall.SIGTERM)
					if code := p.waitExit(10 * time.Second); code != 0 {
						t.Errorf("exit status %d", code)
					}
				}
				for _, p := range []*proc{pBad, pGood} {
					for _, line := range strings.Split(strings.TrimSuffix(p.stderr.String(), "\n"), "\n") {
						if line == "" {
							continue
						}
						if !regexp.MustCompile(`^<[0-7]>`).MatchString(line) {
							t.Errorf("line without a priority prefix under JOURNAL_STREAM: %q", line)
						}
						if timestamp.MatchString(line) {
							t.Errorf("line with a timestamp under JOURNAL_STREAM: %q", line)
						}
						if strings.Contains(line, good.LocalAddr().String()) {
							goodLine = line
						}
					}
				}
				var warn string
				for _, line := range strings.Split(pBad.stderr.String(), "\n") {
					if strings.Contains(line, missing) && strings.Contains(line, bad.LocalAddr().String()) {
						warn = line
					}
				}
				switch {
				case tt.wantWarn && !strings.HasPrefix(warn, "<4>"):
					t.Errorf("no \"<4>\" line naming client %s and backend %s:\n%s", bad.LocalAddr(), missing, pBad.stderr.String())
				case !tt.wantWarn && warn != "":
					t.Errorf("SYSTEMD_LOG_LEVEL=%s, but the warning was logged: %q", tt.level, warn)
				}
				switch {
				case tt.wantConn && (!strings.HasPrefix(goodLine, "<7>") || !strings.Contains(goodLine, backend) ||
					!strings.Contains(goodLine, "4096")):
					t.Errorf("no \"<7>\" line naming client %s, backend %s and the 4096 bytes each way:\n%s",
						good.LocalAddr(), backend, pGood.stderr.String())
				case !tt.wantConn && goodLine != "":
					t.Errorf("a connection line at level %q: %q", tt.level, goodLine)
				}
			})
		})
	}
}

// TestJournalStreamChecked: JOURNAL_STREAM counts only when it names
// stderr's device and inode, as systemd's own tools check it. A program
// started from a shell that inherited the variable from a unit writes to a
// terminal or a pipe, and gets timestamps and level names, not "<N>"
// prefixes; so do its fatal errors.
func TestJournalStreamChecked(t *testing.T) {
	t.Parallel()
	noNativeJournal(t)
	forEachImpl(t, func(t *testing.T, im impl) {
		oursOnly(t, im, "slog lines with sd-daemon prefixes")
		missing := filepath.Join(shortDir(t), "missing.sock")
		fd, addr := inheritTCP(t, "web")
		// A real stream's value, of the test's own stderr: not the proxy's.
		var st syscall.Stat_t
		if err := syscall.Fstat(2, &st); err != nil {
			t.Fatal(err)
		}
		for _, stream := range []string{"8:12345", fmt.Sprintf("%d:%d", st.Dev, st.Ino)} {
			env := []string{"JOURNAL_STREAM=" + stream}
			p := start(t, im.path, launch{args: atOnce(im, missing), fds: []inherited{fd}, env: env})
			c := dial(t, "tcp", addr)
			if err := closedWithoutData(c, 10*time.Second); err != nil {
				t.Fatal(err)
			}
			if err := p.waitStderr(missing, 10*time.Second); err != nil {
				t.Fatal(err)
			}
			p.signal(syscall.SIGTERM)
			p.waitExit(10 * time.Second)
			for _, line := range strings.Split(strings.TrimSuffix(p.stderr.String(), "\n"), "\n") {
				if strings.HasPrefix(line, "<") || !timestamp.MatchString(line) {
					t.Errorf("JOURNAL_STREAM=%s names another file, but the line is the journal's: %q", stream, line)
				}
			}
			if !regexp.MustCompile(` warning cannot connect .*` + regexp.QuoteMeta(missing)).MatchString(p.stderr.String()) {
				t.Errorf("JOURNAL_STREAM=%s: no terminal warning line naming %s:\n%s", stream, missing, p.stderr.String())
			}

			// A fatal error: no listening socket.
			code, _, stderr := run(t, im.path, launch{args: []string{missing}, env: env})
			if code != 1 || !strings.HasPrefix(stderr, "socket-proxyd: no listening sockets") {
				t.Errorf("JOURNAL_STREAM=%s, fatal error: exit %d, stderr %q; want 1 and no \"<3>\"", stream, code, stderr)
			}
		}
		// The same fatal error with stderr the journal.
		sh, args := asJournal(im.path, missing)
		code, _, stderr := run(t, sh, launch{args: args})
		if code != 1 || !strings.HasPrefix(stderr, "<3>socket-proxyd: no listening sockets") {
			t.Errorf("stderr the journal, fatal error: exit %d, stderr %q; want 1 and \"<3>\"", code, stderr)
		}
	})
}
