// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/handoff"
)

// fakeKeeper stands for systemd's fd store behind Config.Keep and Forget.
type fakeKeeper struct {
	mu      sync.Mutex
	kept    map[string]int // name -> descriptors given
	forgot  []string
	refuse  bool
	keepers int
}

func (k *fakeKeeper) keep(name string, fds []int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.keepers++
	if k.refuse {
		return io.ErrClosedPipe
	}
	if k.kept == nil {
		k.kept = map[string]int{}
	}
	k.kept[name] = len(fds)
	return nil
}

func (k *fakeKeeper) forget(name string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.kept, name)
	k.forgot = append(k.forgot, name)
}

func (k *fakeKeeper) names() (kept, forgot []string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for name, n := range k.kept {
		if n != handoff.KeptFDs {
			name += " (wrong count)"
		}
		kept = append(kept, name)
	}
	return kept, slices.Clone(k.forgot)
}

// startKeeping starts a keeping proxy in front of an echo backend.
func startKeeping(t *testing.T, refuse bool) (*fakeKeeper, *running) {
	t.Helper()
	noLeak(t)
	k := &fakeKeeper{refuse: refuse}
	addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	return k, start(t, addr, Config{Keep: k.keep, Forget: k.forget})
}

// TestKeptConnectionSplicesEveryByte: a kept connection (--fdstore=always)
// holds no byte in the process: even 64-byte exchanges, which otherwise go
// through one read and one write (TestSmallMessagesNoPipe), are spliced
// through its own pipes, every byte. It is in the store, under a name of
// its own with its six descriptors, while open, and leaves it at its end.
func TestKeptConnectionSplicesEveryByte(t *testing.T) {
	k, p := startKeeping(t, false)
	c := dial(t, p.addr)
	msg := bytes.Repeat([]byte("m"), 64)
	got := make([]byte, 64)
	const rounds = 200
	for i := range rounds {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	// The loop counts a byte once its write returned: the client may
	// read it first.
	waitFor(t, "every byte counted", func() bool {
		st := p.srv.Stats()
		return st.BytesIn == rounds*64 && st.BytesOut == rounds*64
	})
	st := p.srv.Stats()
	if st.Kept != 1 || st.BytesIn != rounds*64 || st.BytesOut != rounds*64 || st.SplicedBytes != st.BytesIn+st.BytesOut {
		t.Errorf("after %d 64-byte exchanges: kept %d, %d bytes in, %d out, %d spliced; want 1 kept and every byte spliced",
			rounds, st.Kept, st.BytesIn, st.BytesOut, st.SplicedBytes)
	}
	kept, _ := k.names()
	if len(kept) != 1 || !handoff.IsKept(kept[0]) {
		t.Fatalf("the store holds %q, want one kept connection with its %d descriptors", kept, handoff.KeptFDs)
	}
	c.Close()
	waitFor(t, "the connection to leave the store", func() bool {
		_, forgot := k.names()
		return len(forgot) == 1 && forgot[0] == kept[0] && p.srv.Stats().Kept == 0
	})
	// Nothing was in the store at the start: nothing to recover, and no
	// line saying so (proxy.go, Run: "len(s.cfg.Recover) > 0").
	if strings.Contains(p.logs.String(), "recovered connections") {
		t.Errorf("a start with an empty store logged a recovery:\n%s", p.logs)
	}
}

// TestKeptConnectionLeavesStoreForUrgentData: an urgent byte must be read
// into the process to pass its mark, so its connection leaves the store
// first (a crash then resets it rather than lose the byte); its bytes go on
// in order.
func TestKeptConnectionLeavesStoreForUrgentData(t *testing.T) {
	k, p := startKeeping(t, false)
	c := dial(t, p.addr)
	if _, err := c.Write([]byte("AAAA")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 9)
	if _, err := io.ReadFull(c, got[:4]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the connection in the store", func() bool { return p.srv.Stats().Kept == 1 })
	sendUrgent(t, c, 'U')
	if _, err := c.Write([]byte("CCCC")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, got[4:]); err != nil {
		t.Fatal(err)
	}
	if string(got) != "AAAAUCCCC" {
		t.Errorf("echoed %q, want AAAAUCCCC", got)
	}
	kept, forgot := k.names()
	if len(kept) != 0 || len(forgot) != 1 || p.srv.Stats().Kept != 0 {
		t.Errorf("after urgent data the store holds %q and forgot %q (kept %d); want it out of the store", kept, forgot, p.srv.Stats().Kept)
	}
}

// TestKeepRefusedGoesOn: a store that refuses the descriptors leaves the
// connection unkept, served as usual, with a warning.
func TestKeepRefusedGoesOn(t *testing.T) {
	k, p := startKeeping(t, true)
	roundTrip(t, p.addr, bytes.Repeat([]byte("r"), 100_000))
	k.mu.Lock()
	keepers := k.keepers
	k.mu.Unlock()
	if st := p.srv.Stats(); st.Kept != 0 || keepers != 1 {
		t.Errorf("kept %d after %d refusals; want 0 after 1", st.Kept, keepers)
	}
	waitFor(t, "the warning", func() bool {
		return bytes.Contains([]byte(p.logs.String()), []byte("cannot keep a connection in the fd store"))
	})
}

// TestKeptConnectionEnds: a kept connection's end of stream is learned
// without reading a byte (a peek after the splice that returned 0): 4 MiB
// each way, then half-closes, arrive whole, and it leaves the store.
func TestKeptConnectionEnds(t *testing.T) {
	k, p := startKeeping(t, false)
	payload := make([]byte, 4<<20)
	for i := range payload {
		payload[i] = byte(rand.Uint32())
	}
	roundTrip(t, p.addr, payload)
	waitFor(t, "the connection to leave the store", func() bool {
		kept, forgot := k.names()
		return len(kept) == 0 && len(forgot) == 1 && p.srv.Stats().Kept == 0
	})
	if st := p.srv.Stats(); st.SplicedBytes != st.BytesIn+st.BytesOut {
		t.Errorf("%d bytes in, %d out, %d spliced: want every byte spliced", st.BytesIn, st.BytesOut, st.SplicedBytes)
	}
}

// TestKeepRefusedGivesPipesBack: the pipes a refused keep took go back to
// the pool and only there: no connection holds a pipe the pool would lend
// again (checked on the loop's goroutine after every batch of events).
func TestKeepRefusedGivesPipesBack(t *testing.T) {
	noLeak(t)
	k := &fakeKeeper{refuse: true}
	addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	var srv *Server
	shared := make(chan string, 1)
	p := startPrepared(t, listenNamed(t, "web"), addr, Config{Keep: k.keep, Forget: k.forget}, func(s *Server) {
		srv = s
		s.testBatch = func(events []unix.EpollEvent, n int) int {
			if l := srv.loop.Load(); l != nil {
				if why := poolShared(l); why != "" {
					select {
					case shared <- why:
					default:
					}
				}
			}
			return n
		}
	})
	c := dial(t, p.addr)
	for range 3 {
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case why := <-shared:
		t.Fatal(why)
	default:
	}
}

// poolShared says what is wrong if a pipe is free in the pool twice, or
// free and held by a connection.
func poolShared(l *loop) string {
	free := map[*pipe]bool{}
	for _, p := range l.pipes.free {
		if free[p] {
			return "a pipe is free in the pool twice"
		}
		free[p] = true
	}
	for _, c := range l.conns {
		if c == nil {
			continue
		}
		for d := range c.dir {
			if p := c.dir[d].pipe; p != nil && free[p] {
				return fmt.Sprintf("a connection's direction %d holds a pipe the pool would lend", d)
			}
		}
	}
	return ""
}

// TestNotKept: on a stop, the descriptors of kept connections are left out
// of what goes to the store under the record (it holds them already, in
// their capsules: twice, the next instance would refuse the record).
func TestNotKept(t *testing.T) {
	r := &handoff.Record{Conns: []handoff.Conn{
		{FD: [2]int{10, 11}, Kept: true, Dir: [2]handoff.Dir{{Pipe: [2]int{12, 13}}, {Pipe: [2]int{14, 15}}}},
		{FD: [2]int{20, 21}, Dir: [2]handoff.Dir{{Pipe: [2]int{-1, -1}}, {Pipe: [2]int{22, 23}}}},
	}}
	all := []int{3, 10, 11, 12, 13, 14, 15, 20, 21, 22, 23}
	l := &loop{}
	if got, want := l.notKept(r, all), []int{3, 20, 21, 22, 23}; !slices.Equal(got, want) {
		t.Errorf("notKept = %v, want %v", got, want)
	}
	r.Conns[0].Kept = false
	if got := l.notKept(r, all); !slices.Equal(got, all) {
		t.Errorf("with nothing kept, notKept = %v, want all of %v", got, all)
	}
}

// TestKeptUrgentByteSpliced: keptRead's EAGAIN (an urgent mark reported
// when the byte is gone already). A unix socket with SO_OOBINLINE takes an
// urgent byte (MSG_OOB) inline, and splice takes it with the rest when it
// starts there; so when an earlier event of the same batch has spliced it
// (here a copy of the client's event without EPOLLPRI, put before it by
// the testBatch hook), the EPOLLPRI that follows finds nothing to peek.
// The byte never entered the process: the connection stays in the store.
// Its direction never splices again (urgent is sticky), so it leaves the
// store before its next byte is read, as after any urgent data.
func TestKeptUrgentByteSpliced(t *testing.T) {
	noLeak(t)
	k := &fakeKeeper{}
	dir := shortDir(t)
	back := listenBackend(t, "unix", filepath.Join(dir, "b"), echo)
	ln, err := activation.Listen(filepath.Join(dir, "p"))
	if err != nil {
		t.Fatal(err)
	}
	var injected atomic.Bool
	p := startPrepared(t, ln, back, Config{Keep: k.keep, Forget: k.forget}, func(s *Server) {
		s.testBatch = func(events []unix.EpollEvent, n int) int {
			for i := range n {
				if events[i].Events&unix.EPOLLPRI == 0 || n == len(events) || injected.Load() {
					continue
				}
				copy(events[i+1:n+1], events[i:n])
				events[i].Events &^= unix.EPOLLPRI
				injected.Store(true)
				return n + 1
			}
			return n
		}
	})
	c := edgeDial(t, "unix", p.addr)
	got := make([]byte, 9)
	if _, err := c.Write([]byte("AAAA")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, got[:4]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the connection in the store", func() bool { return p.srv.Stats().Kept == 1 })
	sendUrgent(t, c, 'U')
	// The echo comes in a batch after the one that spliced the byte to
	// the backend: that one, with its EPOLLPRI, is done.
	if _, err := io.ReadFull(c, got[4:5]); err != nil {
		t.Fatal(err)
	}
	if !injected.Load() {
		t.Fatal("no EPOLLPRI for the urgent byte")
	}
	waitFor(t, "5 bytes counted each way", func() bool {
		st := p.srv.Stats()
		return st.BytesIn == 5 && st.BytesOut == 5
	})
	if st := p.srv.Stats(); st.Kept != 1 || st.SplicedBytes != 10 {
		t.Errorf("after an urgent byte that was spliced: kept %d, %d bytes spliced; want it kept, all 10 spliced", st.Kept, st.SplicedBytes)
	}
	if _, err := c.Write([]byte("CCCC")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, got[5:]); err != nil {
		t.Fatal(err)
	}
	if string(got) != "AAAAUCCCC" {
		t.Errorf("echoed %q, want AAAAUCCCC", got)
	}
	if st := p.srv.Stats(); st.Kept != 0 {
		t.Errorf("kept %d after bytes behind urgent data, want it out of the store", st.Kept)
	}
}

// TestKeptConnectionEndsWithFIN: every TCP socket of a keeping proxy
// lingers 0 until its clean end (keep.go), and the clean end turns that
// off (connection.go, release: "Keep != nil"): a kept connection's last
// bytes, still queued in the proxy's send queue as it closes (the client's
// tiny window holds them back), arrive, then a clean end.
// TestKeptConnectionEnds sees the mutant only when its close races the
// last bytes.
func TestKeptConnectionEndsWithFIN(t *testing.T) {
	noLeak(t)
	addr, goAhead := tailBackend(t)
	k := &fakeKeeper{}
	p := start(t, addr, Config{Keep: k.keep, Forget: k.forget})
	c := dialTinyWindow(t, p.addr)
	waitFor(t, "the connection in the store", func() bool { return p.srv.Stats().Kept == 1 })
	close(goAhead)
	waitFor(t, "the proxy to close it", func() bool { return p.srv.Stats().Active == 0 })
	readWholeTail(t, c)
}

// TestKeptHalfClosedStaysKept: a kept connection whose client has ended
// its stream stays in the store while the backend still talks: the end
// is learned by a peek, without leaving the store (keep.go, keptRead:
// "err == nil && n == 0"), so a crash then resumes it half-closed. It
// leaves the store when the other way ends too.
func TestKeptHalfClosedStaysKept(t *testing.T) {
	noLeak(t)
	goAhead := make(chan struct{})
	sawEOF := make(chan struct{})
	addr := listenBackend(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
		io.Copy(io.Discard, c)
		close(sawEOF)
		<-goAhead
		c.Write([]byte("bye"))
		c.Close()
	})
	k := &fakeKeeper{}
	p := start(t, addr, Config{Keep: k.keep, Forget: k.forget})
	c := dial(t, p.addr)
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the connection in the store", func() bool { return p.srv.Stats().Kept == 1 })
	c.CloseWrite()
	recv(t, sawEOF, "the backend to see the client's end")
	if st := p.srv.Stats(); st.Kept != 1 {
		t.Errorf("kept %d once the client's end went through, want 1: half-closed, it must stay in the store", st.Kept)
	}
	close(goAhead)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got, err := io.ReadAll(c); err != nil || string(got) != "bye" {
		t.Errorf("read %q, %v; want the backend's bye and a clean end", got, err)
	}
	waitFor(t, "the connection to leave the store", func() bool { return p.srv.Stats().Kept == 0 })
}
