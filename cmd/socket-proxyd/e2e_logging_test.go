package main_test

import (
	"fmt"
	"net"
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

// TestJournalLogging: under systemd (JOURNAL_STREAM set) log lines carry an
// sd-daemon priority prefix and no timestamp; SYSTEMD_LOG_LEVEL is honoured;
// at debug level each connection gets a line naming client and backend.
func TestJournalLogging(t *testing.T) {
	t.Parallel()
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
				env := []string{"JOURNAL_STREAM=8:12345"}
				if tt.level != "" {
					env = append(env, "SYSTEMD_LOG_LEVEL="+tt.level)
				}
				// Two proxies: one with a missing backend, one that works.
				pBad := start(t, im.path, launch{args: atOnce(im, missing), fds: []inherited{fdBad}, env: env})
				fdGood, addrGood := inheritTCP(t, "good")
				pGood := start(t, im.path, launch{args: []string{backend}, fds: []inherited{fdGood}, env: env})

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
