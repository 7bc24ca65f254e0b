// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestPipePool: the pool lends kernel pipes up to its bound, sized as the
// kernel granted the first (pipe.go, get: "err != nil || size <= 0"); takes
// back an empty pipe for the next get; closes one that still holds bytes,
// which no other connection may ever read (put: "p.n != 0"), and then has
// room for a new one (discard: "pp.open--").
func TestPipePool(t *testing.T) {
	noLeak(t)
	s := &Server{}
	pp := &pipePool{max: 2, stats: s}
	t.Cleanup(pp.closeAll)
	a := pp.get()
	if a == nil || a.r < 0 || a.w < 0 {
		t.Fatalf("first get: %+v, want a kernel pipe", a)
	}
	granted, err := unix.FcntlInt(uintptr(a.w), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		t.Fatal(err)
	}
	if pp.size != granted {
		t.Errorf("pool size %d, the kernel granted %d", pp.size, granted)
	}
	b := pp.get()
	if b == nil || pp.get() != nil || pp.open != 2 || s.pipes.Load() != 2 {
		t.Fatalf("second and third get: %+v, open %d (%d in Stats); want a pipe, then none past the bound of 2", b, pp.open, s.pipes.Load())
	}
	pp.put(a) // drained
	if again := pp.get(); again != a {
		t.Errorf("get after put of an empty pipe: %+v, want the same pipe %+v back", again, a)
	}
	if n, e := rawWrite(b.w, []byte("stale")); e != 0 || n != 5 {
		t.Fatal(e)
	}
	b.n = 5
	pp.put(b) // still holds bytes
	if b.r >= 0 || pp.open != 1 || len(pp.free) != 0 || s.pipes.Load() != 1 {
		t.Fatalf("put of a pipe holding bytes: %+v, open %d (%d in Stats), %d free; want it closed", b, pp.open, s.pipes.Load(), len(pp.free))
	}
	c := pp.get()
	if c == nil {
		t.Fatal("no pipe after one was closed: the pool lost count")
	}
	if n, e := rawRead(c.r, make([]byte, 8)); e != unix.EAGAIN {
		t.Errorf("a new pipe holds %d bytes (%v): another connection's", n, e)
	}
	pp.put(c)
	pp.put(a)
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

func TestPipesGoBackToZero(t *testing.T) {
	noLeak(t)
	addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	p := start(t, addr, Config{})
	// An idle connection, open all along, must not keep a pipe.
	idle := dial(t, p.addr)
	idle.Write([]byte("ping"))
	io.ReadFull(idle, make([]byte, 4))
	var wg sync.WaitGroup
	payload := randomBytes(t, 8<<20)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			roundTrip(t, p.addr, payload)
		}()
	}
	wg.Wait()
	if p.srv.Stats().Pipes == 0 {
		t.Log("no pipe left right after the transfers (all closed already)")
	}
	waitFor(t, "the pipe pool to empty", func() bool { return p.srv.Stats().Pipes == 0 })
	idle.Write([]byte("pong"))
	if _, err := io.ReadFull(idle, make([]byte, 4)); err != nil {
		t.Fatalf("idle connection stopped working: %v", err)
	}
}

// TestManyStreamsShareThePool: concurrent echoes with writes of every size
// share the pipe pool and the one buffer; every byte must come back in
// order on every connection.
func TestManyStreamsShareThePool(t *testing.T) {
	noLeak(t)
	addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	p := start(t, addr, Config{})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			payload := make([]byte, 4<<20)
			for j := range payload {
				payload[j] = byte(j*7 + i)
			}
			c, err := net.Dial("tcp", p.addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(60 * time.Second))
			go func() {
				// Writes from 1 byte to 256 KiB, so that reads come
				// small, full-buffer and bulk in turn.
				for off, k := 0, 0; off < len(payload); k++ {
					n := min(len(payload)-off, 1<<(k%19))
					if _, err := c.Write(payload[off : off+n]); err != nil {
						return
					}
					off += n
				}
				c.(*net.TCPConn).CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, payload) {
				errs <- fmt.Errorf("stream %d: %d bytes back of %d (%v)", i, len(got), len(payload), err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
