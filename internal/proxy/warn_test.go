// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// TestWarningSummaryWhileIdle: the summary of warnings held back by the
// rate limit comes at the end of its window even when nothing else
// happens then: the wait is not "forever" while one is pending (loop.go,
// timeout_ms: "l.warnAt == 0"; warn.go, warn: "l.warnAt == 0"). It says
// how long the window was ("now - b.logged"), and a new window starts with
// it: the next failure is held back too ("now-b.logged >= warnEvery").
// Not under -short: the window is 10 s.
func TestWarningSummaryWhileIdle(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the 10 s window of the warnings")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // refused from now on
	p := start(t, addr, Config{ConnectTimeout: -1})
	fail := func(n int64) {
		c := dial(t, p.addr)
		c.Read(make([]byte, 1)) // closed by the proxy
		waitFor(t, "the client to fail", func() bool { return p.srv.Stats().BackendErrors == n })
	}
	// The window then starts well after the loop's clock, so a window
	// measured from the wrong end would not round to 10 s.
	time.Sleep(time.Second)
	fail(1)
	fail(2)
	const want = `msg="1 more clients could not reach the backend in the last 10s: `
	for end := time.Now().Add(warnEvery + 5*time.Second); !strings.Contains(p.logs.String(), want); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("no summary %q %v after the second failure, with the proxy idle:\n%s", want, warnEvery+5*time.Second, tail(p.logs.String(), 5))
		}
	}
	fail(3)
	if n := strings.Count(p.logs.String(), `level=WARN msg="cannot connect to backend`); n != 1 {
		t.Errorf("%d warnings for 3 failures, the third just after the summary; want 1:\n%s", n, tail(p.logs.String(), 5))
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
// summary at stop, not silently swallowed by the rate limit.
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
