// SPDX-License-Identifier: Apache-2.0

package proxy

// Tests that pin the engine's claims to numbers, written against mutants
// that the rest of the suite let survive (issue 14): the idle timeout's
// lower and upper bound, the generation check on stale events, the connect
// deadline against a backend that never answers, every address of a host
// name tried, the pipe pool's bound, and no pipe for small messages.

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/testutil"
)

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

// TestPipePoolBound: many bulk connections at once, each stalled on a
// backend that does not read yet, hold at most the pool's bound of kernel
// pipes (the connection limit is set so the bound is its floor, 16); the
// connections past it copy through memory, and every byte still arrives
// once the backend reads.
func TestPipePoolBound(t *testing.T) {
	noLeak(t)
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	// (limit - 2*max - 64)/2 <= 16: the budget is its floor.
	maxConns := int(min(rl.Cur, 1<<30)/2) + 16
	bound := pipeBudget(maxConns, false)
	if bound != 16 {
		t.Fatalf("pipeBudget(%d) = %d with RLIMIT_NOFILE %d, want the floor 16", maxConns, bound, rl.Cur)
	}
	const conns, size = 40, 4 << 20
	release := make(chan struct{})
	received := make(chan int, conns)
	// A small receive buffer on the backend's sockets: without it loopback
	// TCP could buffer a whole payload, and the pipes would drain.
	addr := smallRcvbufBackend(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(60 * time.Second))
		<-release
		n, _ := io.Copy(io.Discard, struct{ io.Reader }{c})
		received <- int(n)
	})
	p := start(t, addr, Config{MaxConnections: maxConns})
	payload := bytes.Repeat([]byte("p"), size)
	var wg sync.WaitGroup
	for range conns {
		c := dial(t, p.addr)
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Write(payload)
			c.CloseWrite()
		}()
	}
	// Sample while the connections fill the pipes and stall: until the
	// bound has been reached for half a second (a pool that grows past it
	// does so meanwhile), or 5 s.
	peak := int64(0)
	var reached time.Time
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		peak = max(peak, p.srv.Stats().Pipes)
		if peak >= int64(bound) && reached.IsZero() {
			reached = time.Now()
		}
		if !reached.IsZero() && time.Since(reached) > 500*time.Millisecond {
			break
		}
	}
	close(release)
	wg.Wait()
	total := 0
	for range conns {
		select {
		case n := <-received:
			total += n
		case <-time.After(30 * time.Second):
			t.Fatalf("a backend connection did not end; %+v", p.srv.Stats())
		}
	}
	t.Logf("%d stalled bulk connections: at most %d pipes (bound %d)", conns, peak, bound)
	if peak > int64(bound) {
		t.Errorf("%d pipes open at once, over the pool's bound of %d", peak, bound)
	}
	if peak < int64(bound) {
		t.Errorf("only %d pipes at the peak with %d connections stalled: the bound of %d was not exercised", peak, conns, bound)
	}
	if total != conns*size {
		t.Errorf("backends received %d bytes, want %d", total, conns*size)
	}
}

// smallRcvbufBackend listens with a small receive buffer (set on the
// listener, so accepted sockets start with it and the kernel does not grow
// it): the few MiB loopback TCP would otherwise buffer between the proxy
// and a backend that does not read hide the proxy's own parking of bytes.
func smallRcvbufBackend(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var err error
		rc.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 32<<10) })
		return err
	}}
	ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveBackend(t, ln, handle)
	return ln.Addr().String()
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
