// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"io"
	"math"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Issue 13: bounded under abuse.

// TestBackendWarningsAreRateLimited: one client looping against a backend
// that refuses, without retries, wrote 12,000 lines in 2 s on today's main.
// Now one warning, then one summary line with the count, at stop.
func TestBackendWarningsAreRateLimited(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p := start(t, addr, Config{ConnectTimeout: -1})
	const clients = 200
	for range clients {
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Read(make([]byte, 1)) // closed by the proxy
		c.Close()
	}
	waitFor(t, "every client to fail", func() bool { return p.srv.Stats().BackendErrors == clients })
	logs := p.logs.String()
	if n := strings.Count(logs, "level=WARN msg=\"cannot connect to backend"); n != 1 {
		t.Errorf("%d warnings for %d clients in well under 10 s, want 1", n, clients)
	}
	if n := strings.Count(logs, "level=DEBUG msg=\"cannot connect to backend"); n != clients-1 {
		t.Errorf("%d debug lines, want one for each of the %d other clients", n, clients-1)
	}
	p.cancel()
	<-p.done
	p.done <- nil // for the cleanup
	logs = p.logs.String()
	// msg=" anchors the count: "-199 more" must not pass for "199 more".
	want := `msg="199 more clients could not reach the backend in the last`
	if !strings.Contains(logs, want) || !strings.Contains(logs, "connection refused") {
		t.Fatalf("no summary %q with the reason at stop:\n%s", want, tail(logs, 5))
	}
	if n := strings.Count(logs, "more clients could not reach the backend"); n != 1 {
		t.Errorf("%d summaries, want 1:\n%s", n, tail(logs, 5))
	}
	if strings.Contains(logs, "%!") {
		t.Errorf("a line formatted with the wrong arguments:\n%s", tail(logs, 5))
	}
}

// TestRefusalsAreSummarised: clients refused at the limit are counted in a
// summary at stop, not silently swallowed by the rate limit (issue 12).
func TestRefusalsAreSummarised(t *testing.T) {
	addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	p := start(t, addr, Config{MaxConnections: 1})
	held := dial(t, p.addr)
	held.Write([]byte("x"))
	io.ReadFull(held, make([]byte, 1))
	for range 5 {
		c := dial(t, p.addr)
		c.Read(make([]byte, 1))
	}
	waitFor(t, "five refusals", func() bool { return p.srv.Stats().Refused == 5 })
	p.cancel()
	<-p.done
	p.done <- nil
	logs := p.logs.String()
	if n := strings.Count(logs, "level=WARN msg=\"connection limit reached"); n != 1 {
		t.Errorf("%d limit warnings, want 1", n)
	}
	if !strings.Contains(logs, `msg="4 more clients were refused at the connection limit`) {
		t.Fatalf("no summary of the 4 refusals after the first:\n%s", tail(logs, 5))
	}
	if strings.Contains(logs, "%!") {
		t.Errorf("a line formatted with the wrong arguments:\n%s", tail(logs, 5))
	}
}

// TestLongSpans: "infinity" (math.MaxInt64) and spans of days or years
// mean "later", never "at once" or an overflow (issue 13): a connect
// deadline computed as start+MaxInt64 failed every client, a drain deadline
// cut every connection at stop, and --exit-idle-time=30d made a negative
// epoll timeout that never woke up.
func TestLongSpans(t *testing.T) {
	const century = 100 * 365 * 24 * time.Hour
	for _, span := range []time.Duration{math.MaxInt64, century, 30 * 24 * time.Hour} {
		t.Run(span.String(), func(t *testing.T) {
			addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
			p := start(t, addr, Config{ConnectTimeout: span, IdleTimeout: span, ShutdownTimeout: span,
				ExitIdleTime: span, KeepAlive: span})
			c := dial(t, p.addr)
			if _, err := c.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
				t.Fatalf("no echo with every span at %v: %v\n%s", span, err, p.logs)
			}
			// Keepalive beyond what the kernel takes is clamped to
			// its maximum, not silently left at the 2 h default.
			front := socketBetween(t, p.addr, c.LocalAddr().String())
			if idle, _ := syscall.GetsockoptInt(front, syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE); idle != maxKeepIdle {
				t.Errorf("TCP_KEEPIDLE %d, want the kernel's maximum %d", idle, maxKeepIdle)
			}
			// Stop: the open connection is drained, not cut.
			p.cancel()
			if _, err := c.Write([]byte("pong")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
				t.Fatalf("connection cut at stop with a shutdown timeout of %v: %v", span, err)
			}
			c.CloseWrite()
			if _, err := io.ReadAll(c); err != nil {
				t.Fatalf("no clean end: %v", err)
			}
		})
	}
}

// TestWaitNeverNegative: the loop's wait for a deadline days or forever
// away is capped, never an int overflow into a negative (endless) wait.
func TestWaitNeverNegative(t *testing.T) {
	for _, span := range []time.Duration{math.MaxInt64, 100 * 365 * 24 * time.Hour, 30 * 24 * time.Hour} {
		l := &loop{epoch: time.Now()}
		l.idleAt = after(l.now(), span)
		if ms := l.timeout_ms(); ms <= 0 || ms > maxWaitMsec {
			t.Errorf("exit idle time %v: wait %d ms, want 1..%d", span, ms, maxWaitMsec)
		}
	}
}
