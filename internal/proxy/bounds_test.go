// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"io"
	"math"
	"net"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Issue 13: bounded under abuse.

// resetClient connects and resets at once (SO_LINGER 0).
func resetClient(addr string) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	c.(*net.TCPConn).SetLinger(0)
	return c.Close()
}

// TestLookupsEndWithTheirClient: a flood of clients that connect and reset
// against a backend host name whose DNS server never answers. Each lookup
// must end with its client, and lookups whose client has gone count
// against the limit until they return, so the goroutines stay bounded by
// -c (today's main kept each one for the whole connect timeout: 150,000
// lookups and 393 MiB after 5 s at -c 4).
func TestLookupsEndWithTheirClient(t *testing.T) {
	const limit = 4
	base := runtime.NumGoroutine()
	p := start(t, "backend.invalid:80", Config{
		MaxConnections: limit, Resolver: silentResolver(t), ConnectTimeout: time.Hour,
	})
	peak := 0
	for i := range 2000 {
		if err := resetClient(p.addr); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		if i%50 == 0 {
			peak = max(peak, runtime.NumGoroutine()-base)
		}
	}
	// The resolver goroutines, plus a few of the runtime's and the
	// resolver's own per lookup in flight: bounded by the limit, not by
	// the number of clients.
	if peak > 8*limit+16 {
		t.Fatalf("%d goroutines above the start after 2000 clients at -c %d: lookups outlive their clients", peak, limit)
	}
	waitFor(t, "the lookups of the gone clients to end", func() bool {
		return runtime.NumGoroutine()-base <= 8 && p.srv.Stats().Active == 0
	})
	if st := p.srv.Stats(); st.Refused == 0 {
		t.Logf("stats %+v: no client was refused (the lookups ended fast enough)", st)
	}
}

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
