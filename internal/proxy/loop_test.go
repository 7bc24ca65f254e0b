// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/backend"
	"github.com/socket-proxyd/socket-proxyd/internal/testutil"
)

// TestRetryHeap: connect retries come out earliest first whatever the
// order they went in (loop.go, pushRetry's sift-up: "i > 0").
func TestRetryHeap(t *testing.T) {
	ats := []int64{50, 30, 80, 10, 90, 20, 20, 70, 40, 60, 0, 100}
	l := &loop{}
	for i, at := range ats {
		l.pushRetry(deadline{fd: int32(i), at: at})
	}
	prev := int64(-1)
	for range ats {
		d := l.popRetry()
		if d.at < prev {
			t.Fatalf("retry at %d came after one at %d", d.at, prev)
		}
		prev = d.at
	}
	if len(l.retryQ) != 0 {
		t.Fatalf("%d retries left", len(l.retryQ))
	}
}

// TestConnTableGrows: the table of connections by descriptor grows to hold
// any descriptor, the one just past its end included (loop.go, track:
// "fd >= len(l.conns)", "fd+1").
func TestConnTableGrows(t *testing.T) {
	l := &loop{}
	c := &conn{}
	for _, fd := range []int{3, 64, 128, 1000, 5000} {
		l.track(fd, c)
		if l.conns[fd] != c {
			t.Fatalf("descriptor %d not in the table", fd)
		}
	}
	for _, fd := range []int{3, 64, 128, 1000} {
		if l.conns[fd] != c {
			t.Fatalf("descriptor %d lost when the table grew", fd)
		}
	}
}

// TestStopClosesWaitingClients: a stop closes every client, those that
// have no backend socket at the time (waiting for the next connect round)
// included (loop.go, close: "int(c.fd[0]) == fd" finds each connection by
// its client's descriptor).
func TestStopClosesWaitingClients(t *testing.T) {
	noLeak(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // refused: the client waits between connect rounds
	p := start(t, addr, Config{ConnectTimeout: 20 * time.Second})
	c := dial(t, p.addr)
	waitFor(t, "the client to be accepted", func() bool { return p.srv.Stats().Active == 1 })
	time.Sleep(50 * time.Millisecond) // a few rounds: most of the time is spent waiting between them
	p.cancel()
	if err := recv(t, p.done, "Run to return"); err != nil {
		t.Fatalf("Run: %v", err)
	}
	p.done <- nil // for the cleanup
	closedWithin(t, c, 5*time.Second)
}

// TestIdleTimeoutBounds: a connection silent after an exchange is closed no
// sooner than IdleTimeout after it (the sweep runs every quarter of it and
// must not count a quarter as the whole), and not much later.
func TestIdleTimeoutBounds(t *testing.T) {
	noLeak(t)
	addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	const idle = 400 * time.Millisecond
	p := start(t, addr, Config{IdleTimeout: idle})
	c := dial(t, p.addr)
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	// The proxy saw its last event before the echo reached us, so the
	// close may look up to a scheduling delay early from here: the lower
	// bound leaves 10% for that; a sweep that closes after a tick or
	// two of the four comes at 25-50%.
	took := closedWithin(t, c, 10*idle)
	t.Logf("closed %v after the last exchange (idle timeout %v)", took, idle)
	if took < idle*9/10 {
		t.Errorf("closed %v after the last exchange, before the %v idle timeout", took, idle)
	}
	// Upper: the timeout plus one sweep interval (a quarter of it), plus
	// slack for -race on a loaded 2-core machine (seen: at most 0.21 s in
	// 50 runs under load); a sweep every timeout instead of every quarter
	// closes after 2 to 3 timeouts.
	if took > idle+idle/4+750*time.Millisecond {
		t.Errorf("closed %v after the last exchange, long after the %v idle timeout", took, idle)
	}
}

// TestStaleEventIgnored: an event whose generation is not the registration
// of the connection now on that descriptor (the descriptor was closed and
// reused within one batch of events) must be ignored. The test hook adds
// such an event to a batch deterministically: an EPOLLERR for the client
// side of a connection still connecting to a silent backend, carrying the
// generation of an earlier, finished connection. Acted on, it would close
// a healthy client.
func TestStaleEventIgnored(t *testing.T) {
	noLeak(t)
	silent := testutil.SilentTCP(t)
	var (
		mu       sync.Mutex
		seen     = map[int32]uint32{} // fd -> generation of its events
		inject   *unix.EpollEvent
		injected atomic.Bool
		batches  atomic.Int64 // batches seen by the hook
	)
	ln, err := activation.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := startPrepared(t, ln, silent, Config{ConnectTimeout: 20 * time.Second}, func(s *Server) {
		s.testBatch = func(events []unix.EpollEvent, n int) int {
			mu.Lock()
			defer mu.Unlock()
			batches.Add(1)
			for _, ev := range events[:n] {
				if ev.Pad != 0 {
					seen[ev.Fd] = uint32(ev.Pad)
				}
			}
			if inject != nil && n < len(events) {
				events[n] = *inject
				inject = nil
				injected.Store(true)
				return n + 1
			}
			return n
		}
	})
	// A first connection, waiting for the silent backend, is closed by
	// its client; its registration's generation is stale from then on.
	first := dial(t, p.addr)
	waitFor(t, "the first client to be accepted", func() bool { return p.srv.Stats().Active == 1 })
	first.SetLinger(0)
	first.Close()
	waitFor(t, "the first client to be gone", func() bool { return p.srv.Stats().Active == 0 })
	mu.Lock()
	var staleGen uint32
	for _, g := range seen {
		staleGen = max(staleGen, g)
	}
	clear(seen)
	mu.Unlock()
	if staleGen == 0 {
		t.Fatal("the hook saw no event of the first connection")
	}
	// The second connection waits for the backend too; its client side
	// gets the stale event, on its own descriptor.
	second := dial(t, p.addr)
	var fd int32 = -1
	waitFor(t, "an event on the second client's socket", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for f, g := range seen {
			if g > staleGen && fd < 0 {
				fd = f
			}
		}
		return fd >= 0
	})
	mu.Lock()
	inject = &unix.EpollEvent{Events: unix.EPOLLERR | unix.EPOLLHUP | unix.EPOLLIN | unix.EPOLLOUT, Fd: fd, Pad: int32(staleGen)}
	mu.Unlock()
	// Wake the loop so the batch with the stale event comes now.
	second.Write([]byte("x"))
	waitFor(t, "the stale event to be injected", injected.Load)
	// The batch with the stale event is handled before the next wait: a
	// later batch proves it was.
	after := batches.Load()
	second.Write([]byte("y"))
	waitFor(t, "a batch after the stale event, or the connection closed", func() bool {
		return batches.Load() > after || p.srv.Stats().Active == 0
	})
	if st := p.srv.Stats(); st.Active != 1 {
		t.Fatalf("%d connections open after a stale event for the second one's descriptor, want 1 (it was acted on)\n%s", st.Active, p.logs)
	}
	second.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := second.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("second client: %v, want it still open and waiting", err)
	}
}

// TestPipeBudget: the pool leaves every descriptor the connection limit
// needs (2 per connection) and 64 for the rest of the process, takes at
// most 1024 pipes and never fewer than 16.
func TestPipeBudget(t *testing.T) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	limit := int(min(rl.Cur, 1<<30-1))
	if limit < 2*16+2*100+64 {
		testutil.Unavailable(t, "RLIMIT_NOFILE %d is too low to see the budget between its bounds", limit)
	}
	for _, tt := range []struct {
		maxConns, want int
	}{
		{maxConns: (limit - 64 - 2*100) / 2, want: 100}, // between the bounds: exact
		{maxConns: (limit - 64 - 2*17) / 2, want: 17},
		{maxConns: limit, want: 16},                  // floor
		{maxConns: 1, want: min(1024, (limit-66)/2)}, // ceiling, on a large limit
	} {
		if got := pipeBudget(tt.maxConns, false); got != tt.want {
			t.Errorf("pipeBudget(%d) = %d with RLIMIT_NOFILE %d, want %d", tt.maxConns, got, limit, tt.want)
		}
		if b := pipeBudget(tt.maxConns, false); b > 16 && 2*b+2*tt.maxConns+64 > limit {
			t.Errorf("pipeBudget(%d) = %d: pipes would take descriptors the connections need", tt.maxConns, b)
		}
	}
	// A keeping proxy (keep.go) gives each connection two pipes of its
	// own: the ceiling grows by two per connection, within the limit.
	if c := 10; limit >= 2*c+64+2*(1024+2*c) {
		if got, want := pipeBudget(c, true), 1024+2*c; got != want {
			t.Errorf("pipeBudget(%d, keeping) = %d with RLIMIT_NOFILE %d, want %d", c, got, limit, want)
		}
	}
}

// TestLongSpans: "infinity" (math.MaxInt64) and spans of days or years
// mean "later", never "at once" or an overflow: a connect
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

// TestIdleTimeout closes a silent connection and not a busy one.
func TestIdleTimeout(t *testing.T) {
	noLeak(t)
	addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	// A busy client's pace (an exchange every 50 ms) must stay far inside
	// the timeout even under -race on a loaded 2-core machine: a 1 s gap
	// would be a false failure. TestIdleTimeoutBounds checks the bounds.
	const idle = time.Second
	p := start(t, addr, Config{IdleTimeout: idle})
	silent := dial(t, p.addr)
	busy := dial(t, p.addr)
	silent.Write([]byte("ping"))
	io.ReadFull(silent, make([]byte, 4))
	begin := time.Now()
	// The busy one talks every 50 ms for 2 idle timeouts.
	for time.Since(begin) < 2*idle {
		if _, err := busy.Write([]byte("ping")); err != nil {
			t.Fatalf("busy connection: %v", err)
		}
		if _, err := io.ReadFull(busy, make([]byte, 4)); err != nil {
			t.Fatalf("busy connection closed after %v: %v", time.Since(begin), err)
		}
		time.Sleep(50 * time.Millisecond) // the pace of the busy client
	}
	silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := silent.Read(make([]byte, 1))
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("silent connection still open after %v: %v", time.Since(begin), err)
	}
	if st := p.srv.Stats(); st.Active != 1 {
		t.Errorf("%d active, want the busy one", st.Active)
	}
}

// startStoppable runs a proxy whose Run the test waits for itself.
func startStoppable(t *testing.T, backendAddr string, cfg Config) (*running, activation.Listener) {
	t.Helper()
	ln, err := activation.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr, err := backend.Parse(backendAddr)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	cfg.Listeners = []activation.Listener{ln}
	cfg.Backend = []backend.Address{addr}
	cfg.Log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{srv: New(cfg), addr: ln.Addr().String(), logs: logs, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- r.srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		r.srv.CloseConnections()
		recv(t, r.done, "Run to return")
	})
	return r, ln
}

// slowBackend answers each request line with size bytes, sent in pieces
// while release is open, then the rest once it is closed.
func slowReply(release <-chan struct{}, size int) func(net.Conn) {
	return func(c net.Conn) {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := c.Read(make([]byte, 16)); err != nil {
			return
		}
		reply := bytes.Repeat([]byte("r"), size)
		c.Write(reply[:size/2])
		<-release
		c.Write(reply[size/2:])
	}
}

// TestGracefulStop: when ctx ends the listener closes at once, the
// connection in the middle of its reply gets all of it, and Run returns
// once it is done.
func TestGracefulStop(t *testing.T) {
	noLeak(t)
	release := make(chan struct{})
	addr := listenBackend(t, "tcp", "127.0.0.1:0", slowReply(release, 1<<20))
	p, _ := startStoppable(t, addr, Config{ShutdownTimeout: 20 * time.Second})
	c := dial(t, p.addr)
	c.Write([]byte("GET"))
	if _, err := io.ReadFull(c, make([]byte, 1<<19)); err != nil {
		t.Fatal(err)
	}
	p.cancel()
	// Stopped accepting: the listener is gone.
	waitFor(t, "the listener to close", func() bool {
		c, err := net.Dial("tcp", p.addr)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	select {
	case <-p.done:
		t.Fatal("Run returned with a connection in the middle of its reply")
	default:
	}
	close(release)
	rest, err := io.ReadAll(c)
	if err != nil || len(rest) != 1<<19 {
		t.Fatalf("rest of the reply: %d bytes, %v", len(rest), err)
	}
	c.Close() // the client is done too: the connection ends
	select {
	case err := <-p.done:
		p.done <- err
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return once the last connection closed")
	}
}

// TestGracefulStopTimesOut: a connection still open after ShutdownTimeout
// is closed, and CloseConnections cuts the wait short.
func TestGracefulStopTimesOut(t *testing.T) {
	for _, name := range []string{"timeout", "CloseConnections"} {
		t.Run(name, func(t *testing.T) {
			noLeak(t)
			release := make(chan struct{})
			defer close(release)
			addr := listenBackend(t, "tcp", "127.0.0.1:0", slowReply(release, 1<<10))
			timeout := 300 * time.Millisecond
			if name == "CloseConnections" {
				timeout = time.Hour
			}
			p, _ := startStoppable(t, addr, Config{ShutdownTimeout: timeout})
			c := dial(t, p.addr)
			c.Write([]byte("GET"))
			io.ReadFull(c, make([]byte, 1<<9))
			begin := time.Now()
			p.cancel()
			if name == "CloseConnections" {
				p.srv.CloseConnections()
			}
			select {
			case err := <-p.done:
				p.done <- err
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return")
			}
			if took := time.Since(begin); name == "timeout" && took < timeout {
				t.Errorf("returned after %v, before the shutdown timeout", took)
			}
			if _, err := io.ReadAll(c); err == nil {
				t.Error("the connection cut short ended with a clean EOF, want a reset")
			}
		})
	}
}

// TestGracefulStopRetryingConnection: a client waiting for its backend
// when the stop comes still gets served once the backend is up.
func TestGracefulStopRetryingConnection(t *testing.T) {
	noLeak(t)
	addr := filepath.Join(shortDir(t), "late.sock")
	p, _ := startStoppable(t, addr, Config{ShutdownTimeout: 20 * time.Second})
	c := dial(t, p.addr)
	c.Write([]byte("hello"))
	waitFor(t, "the retry", func() bool { return p.srv.Stats().Active == 1 })
	p.cancel()
	listenBackend(t, "unix", addr, echo)
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("client waiting for the backend at stop: %v", err)
	}
	c.CloseWrite()
	io.ReadAll(c)
	c.Close()
	select {
	case err := <-p.done:
		p.done <- err
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	fmt.Fprint(io.Discard, got)
}

// TestAcceptPausesOnEMFILE: out of descriptors, accept fails and its event
// is gone; the proxy warns once, keeps the pending client in the backlog,
// and serves it as soon as a connection closes.
func TestAcceptPausesOnEMFILE(t *testing.T) {
	noLeak(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	// This backend shares the lowered limit, and accept4 fails with
	// EMFILE even with nothing to accept: it must retry, not stop.
	go func() {
		for {
			c, err := ln.Accept()
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			go func() {
				defer c.Close()
				echo(c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	p := start(t, addr, Config{})
	first := dial(t, p.addr)
	first.Write([]byte("ping"))
	if _, err := io.ReadFull(first, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	var saved syscall.Rlimit
	if err = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &saved); err != nil {
		t.Fatal(err)
	}
	restore := func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &saved); err != nil {
			t.Errorf("restoring the descriptor limit: %v", err)
		}
	}
	defer restore()
	// The limit bounds descriptor numbers: leave exactly one free number
	// below it, for the second client's socket, and none for the accept.
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	used := map[int]bool{}
	for _, e := range entries {
		n, _ := strconv.Atoi(e.Name())
		used[n] = true
	}
	free := []int{}
	for n := 0; len(free) < 3; n++ {
		if !used[n] {
			free = append(free, n)
		}
	}
	// free[0] may be the descriptor ReadDir used, closed again by now.
	lowered := syscall.Rlimit{Cur: uint64(free[2]), Max: saved.Max}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lowered); err != nil {
		t.Fatal(err)
	}
	second, err := net.Dial("tcp", p.addr)
	if err != nil {
		restore()
		testutil.Unavailable(t, "cannot open the second client under the lowered limit: %v", err)
	}
	defer second.Close()
	waitFor(t, "the proxy to pause accepting", func() bool {
		return strings.Contains(p.logs.String(), "cannot accept, pausing")
	})
	restore()
	first.Close()
	second.SetDeadline(time.Now().Add(10 * time.Second))
	second.Write([]byte("pong"))
	if _, err := io.ReadFull(second, make([]byte, 4)); err != nil {
		t.Fatalf("the client left in the backlog was not served after a connection closed: %v; %+v\n%s", err, p.srv.Stats(), p.logs)
	}
	if n := strings.Count(p.logs.String(), "cannot accept"); n != 1 {
		t.Errorf("%d accept warnings, want 1", n)
	}
}

// TestDescriptorTableReserved: the loop grows the descriptor table to what
// -c can use at start-up, so that no new flow (or connection) waits for
// the kernel to grow it: in a threaded process each doubling waits for an
// RCU grace period, 8 to 16 ms on the bench VM. With an open files limit
// below what -c asks for, it grows the table up to the limit, where a
// reserve past it would fail and grow nothing (reserveDescriptors:
// "Getrlimit(...) == nil").
func TestDescriptorTableReserved(t *testing.T) {
	mode := os.Getenv("SPX_FDTABLE_CHILD")
	if mode == "" {
		// In a process of its own: the table only grows, and every
		// proxy the other tests start grows this one's.
		for _, mode := range []string{"c", "limit"} {
			cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestDescriptorTableReserved$", "-test.count=1", "-test.v")
			cmd.Env = append(os.Environ(), "SPX_FDTABLE_CHILD="+mode)
			if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "--- PASS: TestDescriptorTableReserved") {
				t.Fatalf("in a fresh process (%s): %v\n%s", mode, err, out)
			}
		}
		return
	}
	before := fdTableSize(t)
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	c := before // 2c descriptors do not fit in the table as it is
	if mode == "limit" {
		rl.Cur = min(rl.Cur, 1000)
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
			t.Fatal(err)
		}
		c = int(rl.Cur) // 2c descriptors do not fit under the limit
	}
	want := min(2*c+64, int(min(rl.Cur, 1<<30)), maxReserve)
	if want <= before {
		testutil.Unavailable(t, "the table has %d slots, as many as a reserve may take (open files limit %d)", before, rl.Cur)
	}
	be := udpEcho(t, "udp", "127.0.0.1:0", "re:")
	r := startDgram(t, "127.0.0.1:0", be.LocalAddr().String(), Config{MaxConnections: c})
	exchange(t, udpClient(t, "127.0.0.1:0", ""), r.addr, []byte("x")) // served meanwhile
	waitFor(t, fmt.Sprintf("a descriptor table of at least %d slots for -c %d (it had %d)", want, c, before), func() bool {
		return fdTableSize(t) >= want
	})
}

// fdTableSize is the size of the process's descriptor table (FDSize).
func fdTableSize(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "FDSize:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no FDSize in /proc/self/status")
	return 0
}
