// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/handoff"
	"github.com/socket-proxyd/socket-proxyd/internal/testutil"
)

// TestStoreHandsOverEveryByte: one proxy stores a connection whose backend
// reads nothing, with bytes in flight in its pipe; a second proxy takes it
// back from the record and the stored descriptors (here: duplicates, as
// systemd's store holds them) and delivers every byte exactly once. A
// second proxy that keeps its connections (--fdstore=always) keeps this one
// too, bytes in its pipe and all (keep.go, keep: "p.r < 0" is a pipe in
// memory, which cannot be kept).
func TestStoreHandsOverEveryByte(t *testing.T) {
	for _, keeping := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "keeping"}[keeping], func(t *testing.T) {
			storeHandsOverEveryByte(t, keeping)
		})
	}
}

func storeHandsOverEveryByte(t *testing.T, keeping bool) {
	noLeak(t)
	release := make(chan struct{})
	addr := listenBackend(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
		<-release
		h := sha256.New()
		io.Copy(h, c)
		c.Write(h.Sum(nil))
	})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before the backend's own cleanup waits for its handler
	var rec []byte
	var stored []int
	t.Cleanup(func() {
		for _, fd := range stored {
			unix.Close(fd)
		}
	})
	keep := func(b []byte, fds []int) error {
		rec = b
		for _, fd := range fds {
			d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
			if err != nil {
				return err
			}
			stored = append(stored, d)
		}
		return nil
	}
	lnA, err := activation.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lnA.Name = "web"
	a := startOn(t, lnA, addr, Config{Store: keep})

	c := dial(t, a.addr)
	payload := randomBytes(t, 8<<20)
	wrote := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.CloseWrite()
		}
		wrote <- err
	}()
	waitFor(t, "bytes parked in a pipe", func() bool { return a.srv.Stats().Pipes > 0 })
	time.Sleep(50 * time.Millisecond) // the pipe fills up: the client's writes block
	a.srv.Store()
	if err := <-a.done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	a.done <- nil // for startOn's cleanup
	if !bytes.Contains([]byte(a.logs.String()), []byte("connections handed to the fd store")) {
		t.Fatalf("nothing stored:\n%s", a.logs.String())
	}

	mfd, err := handoff.Memfd(rec)
	if err != nil {
		t.Fatal(err)
	}
	b, resolve, left, err := handoff.Stored(mfd, stored)
	if err != nil {
		t.Fatal(err)
	}
	r, unused, err := handoff.Decode(b, resolve)
	if err != nil {
		t.Fatal(err)
	}
	if len(unused)+len(left()) != 0 || len(r.Conns) != 1 || r.Conns[0].Dir[0].InPipe == 0 {
		t.Fatalf("record: %d connections, unused %v; want one with bytes in its pipe: %+v", len(r.Conns), unused, r.Conns)
	}
	stored = nil // the second proxy owns them now
	for _, l := range r.Listeners {
		unix.Close(l.FD) // the --listen socket came along: main would serve it, this test has its own
	}
	lnB, err := activation.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lnB.Name = "web"
	cfgB := Config{Resume: r}
	k := &fakeKeeper{}
	if keeping {
		cfgB.Keep, cfgB.Forget = k.keep, k.forget
	}
	next := startOn(t, lnB, addr, cfgB)
	if keeping {
		waitFor(t, "the resumed connection kept", func() bool { return next.srv.Stats().Kept == 1 })
	}

	unblock()
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatalf("client write: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the client's write never finished")
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	want := sha256.Sum256(payload)
	if err != nil || !bytes.Equal(got, want[:]) {
		t.Fatalf("the backend got other bytes than were sent (SHA-256 %x, want %x), %v", got, want, err)
	}
}

// TestResumeDeliversBytesInMemory: a record may carry a direction's bytes
// in memory (Dir.Mem: a write cut short when no kernel pipe was to be
// had; the test puts them in the record, as making the pool run dry would
// take the whole process's descriptors). The proxy that resumes the
// connection writes them first (handoff.go, adopt: "rd.Mem != nil").
func TestResumeDeliversBytesInMemory(t *testing.T) {
	noLeak(t)
	got := make(chan string, 1)
	addr := listenBackend(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, _ := io.ReadAll(c) // until the client's end
		got <- string(b)
	})
	st := newStore(t)
	a := startOn(t, listenNamed(t, "web"), addr, Config{Store: st.keep})
	c := dial(t, a.addr)
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first byte delivered", func() bool { return a.srv.Stats().BytesIn == 1 })
	r := st.take(t, a)
	if len(r.Conns) != 1 || r.Conns[0].State != handoff.Open || r.Conns[0].Dir[0].InPipe != 0 || r.Conns[0].Dir[0].Mem != nil {
		closeRecord(r)
		t.Fatalf("record: want one open connection with nothing in flight: %+v", r.Conns)
	}
	r.Conns[0].Dir[0].Mem = []byte(" parked")
	startOn(t, listenNamed(t, "web"), addr, Config{Resume: r})
	if _, err := c.Write([]byte(" then more")); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	if b := recv(t, got, "the backend's read"); b != "x parked then more" {
		t.Errorf("the backend read %q, want %q", b, "x parked then more")
	}
}

// TestStoreCarriesTotals: the running totals (connections since start,
// bytes, datagrams and their drops) go on from where the last image left
// them, so that STATUS= and the metrics count since the process started,
// not since the last reload.
func TestStoreCarriesTotals(t *testing.T) {
	addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	st := newStore(t)
	a := startOn(t, listenNamed(t, "web"), addr, Config{Store: st.keep})
	roundTrip(t, a.addr, []byte("twelve bytes"))
	waitFor(t, "the bytes counted", func() bool { s := a.srv.Stats(); return s.BytesIn == 12 && s.BytesOut == 12 })
	before := a.srv.Stats()
	r := st.take(t, a)
	b := startOn(t, listenNamed(t, "web"), addr, Config{Resume: r})
	roundTrip(t, b.addr, []byte("four"))
	waitFor(t, "the totals carried and counted on", func() bool {
		s := b.srv.Stats()
		return s.Accepted == before.Accepted+1 && s.BytesIn == before.BytesIn+4 && s.BytesOut == before.BytesOut+4
	})
}

// TestStoreCarriesFlows: a datagram flow goes to the fd store with its
// connected backend socket, and the proxy that takes it back forwards the
// client's next datagram through that socket, so the backend sees the same
// source address (handoff_flow.go: recordFlows and resumeFlows; the e2e
// TestReloadEveryKind does the same across a real reload), and its log
// line counts it.
func TestStoreCarriesFlows(t *testing.T) {
	noLeak(t)
	back, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		back.Close()
		wg.Wait()
	})
	wg.Go(func() { // replies with the source address it sees
		buf := make([]byte, 2000)
		for {
			_, from, err := back.ReadFrom(buf)
			if err != nil {
				return
			}
			back.WriteTo([]byte(from.String()), from)
		}
	})
	st := newStore(t)
	lnA, err := activation.ListenDatagram("127.0.0.1:0", activation.DefaultSocketMode)
	if err != nil {
		t.Fatal(err)
	}
	lnA.Name = "dns"
	a := startOn(t, lnA, back.LocalAddr().String(), Config{Store: st.keep})
	c := udpClient(t, "127.0.0.1:0", "")
	before, _ := exchange(t, c, a.addr, []byte("1"))

	r := st.take(t, a)
	if len(r.Flows) != 1 {
		closeRecord(r)
		t.Fatalf("record: %d flows, want the one: %+v\n%s", len(r.Flows), r.Flows, a.logs)
	}
	lnB, err := activation.ListenDatagram("127.0.0.1:0", activation.DefaultSocketMode)
	if err != nil {
		t.Fatal(err)
	}
	lnB.Name = "dns"
	// Flows that never expire (--idle-timeout=infinity): the resumed flow
	// has no idle clock to set (adoptFlow: "l.flows.every > 0").
	p := startOn(t, lnB, back.LocalAddr().String(), Config{Resume: r, FlowIdleTimeout: -1})
	after, _ := exchange(t, c, p.addr, []byte("2"))
	if string(after) != string(before) {
		t.Errorf("the backend saw the flow come from %s, then from %s: the flow was not carried\n%s", before, after, p.logs)
	}
	if st := p.srv.Stats(); st.Flows != 1 || st.FlowsOpened != 1 {
		t.Errorf("Flows %d, FlowsOpened %d after the resume; want 1 and 1 (the carried flow, counted by the first image, none new)", st.Flows, st.FlowsOpened)
	}
	// The log line counts it (resumeFlows: "adopted++").
	if !strings.Contains(p.logs.String(), `msg="resumed connections" connections=0 reset=0 flows=1 `) {
		t.Errorf("the log does not say one flow was resumed:\n%s", p.logs)
	}
}

// TestStoreCarriesIdleTime: a connection idle for a while when it goes to
// the fd store is closed by the next instance once the rest of its idle
// timeout has passed, not a whole timeout later: registering its sockets
// reports them writable, which is no traffic (loop.go, run: the idle
// clocks restored after the first batch, "l.idleClocks != nil").
func TestStoreCarriesIdleTime(t *testing.T) {
	noLeak(t)
	const timeout = 4 * time.Second // a sweep each second
	addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	st := newStore(t)
	lnA := listenNamed(t, "web")
	a := startOn(t, lnA, addr, Config{Store: st.keep, IdleTimeout: timeout})
	c := dial(t, a.addr)
	ping := func() {
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
	}
	// The last traffic at the first proxy's tick 1 (ticks count while a
	// connection is open), the store at tick 3: idle for 2 ticks (the
	// record's "l.tick-c.seen").
	ping()
	time.Sleep(1100 * time.Millisecond)
	ping()
	time.Sleep(2100 * time.Millisecond)
	r := st.take(t, a)
	if len(r.Conns) != 1 || r.Conns[0].Idle != 2*int64(time.Second) {
		closeRecord(r)
		t.Fatalf("record: %d connections, want one idle for 2 s: %+v", len(r.Conns), r.Conns)
	}
	// The record waits a second in the store before the next instance
	// takes it: that second is idle time too (adopt: "rc.Idle+elapsed").
	time.Sleep(time.Second)
	lnB := listenNamed(t, "web")
	startOn(t, lnB, addr, Config{Resume: r, IdleTimeout: timeout})
	// Idle 3 s at the resume: closed at the second sweep, 2 s on. A clock
	// restarted at the resume would run 5 s, one without the time in the
	// store 3 s (4 s with it taken off), one carried too long 1 s or less.
	took := closedWithin(t, c, 10*time.Second)
	if took > 2800*time.Millisecond {
		t.Errorf("closed %v after the resume, want about 2 s: idle time before or during the store was lost", took)
	}
	if took < 1200*time.Millisecond {
		t.Errorf("closed %v after the resume, want about 2 s: more idle time was carried than passed", took)
	}
	t.Logf("closed %v after the resume", took)
}

// TestStoreWakesTheLoop: Store on a proxy with nothing to do (no traffic,
// no timer due for an hour) takes effect at once: it wakes the loop
// (handoff.go, Store: "l != nil").
func TestStoreWakesTheLoop(t *testing.T) {
	noLeak(t)
	addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	st := newStore(t)
	ln := listenNamed(t, "web")
	a := startOn(t, ln, addr, Config{Store: st.keep, ConnectTimeout: time.Hour})
	c := dial(t, a.addr)
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	r := st.take(t, a) // fails after 10 s
	closeRecord(r)     // nothing adopts it
	if took := time.Since(begin); took > 2*time.Second || len(r.Conns) != 1 {
		t.Errorf("stored %d connections %v after Store, want 1 at once", len(r.Conns), took)
	}
}

// TestStoreThatKeepsNothing: when the fd store did not keep a socket after
// all (systemd 252 says nothing when FileDescriptorStoreMax= is too small),
// the proxy's close is the socket's last, and the client sees a reset,
// never a clean end in the middle of a transfer (handoff.go, storeAll:
// "s >= 0 && c.tcp[side]" sets SO_LINGER 0 on each stored TCP socket).
func TestStoreThatKeepsNothing(t *testing.T) {
	noLeak(t)
	addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	ln, err := activation.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	forget := func([]byte, []int) error { return nil } // accepted, and nothing kept
	a := startOn(t, ln, addr, Config{Store: forget})
	c := dial(t, a.addr)
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	a.srv.Store()
	if err := recv(t, a.done, "Run to return after Store"); err != nil {
		t.Fatalf("Run: %v", err)
	}
	a.done <- nil // for the cleanup
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, unix.ECONNRESET) {
		t.Fatalf("the client read %v after its connection was dropped, want a reset", err)
	}
}

// TestStoreConnecting: a connection still connecting goes to the store
// with its client's socket only: no backend socket, no pipes (handoff.go,
// record: "none := [2]int{-1, -1}").
func TestStoreConnecting(t *testing.T) {
	noLeak(t)
	silent := testutil.SilentTCP(t)
	st := newStore(t)
	ln := listenNamed(t, "web")
	a := startOn(t, ln, silent, Config{Store: st.keep, ConnectTimeout: time.Hour})
	dial(t, a.addr)
	waitFor(t, "the client to be accepted", func() bool { return a.srv.Stats().Active == 1 })
	r := st.take(t, a)
	defer closeRecord(r) // nothing adopts it
	if len(r.Conns) != 1 {
		t.Fatalf("%d connections stored, want 1", len(r.Conns))
	}
	rc := r.Conns[0]
	if rc.State != handoff.Connecting || rc.FD[0] < 0 || rc.FD[1] >= 0 {
		t.Errorf("stored state %d, descriptors %v; want connecting, with the client's socket only", rc.State, rc.FD)
	}
	for d, dir := range rc.Dir {
		if dir.Pipe != [2]int{-1, -1} {
			t.Errorf("direction %d stored with pipe %v, want none", d, dir.Pipe)
		}
	}
}

// TestStoreKeepsConnectDeadline: a connection still connecting keeps its
// connect deadline across the store, counted from its accept: the record
// carries its age (handoff.go, record: "now-c.start"), and the next
// instance counts it back (adopt: "l.now() - elapsed - rc.Age"; resume:
// "monotonic()-r.Written"). The first proxy runs a while before the client
// comes, so that an age counted from the wrong end would be too long.
func TestStoreKeepsConnectDeadline(t *testing.T) {
	noLeak(t)
	const timeout, age = time.Second, 500 * time.Millisecond
	silent := testutil.SilentTCP(t)
	st := newStore(t)
	lnA := listenNamed(t, "web")
	a := startOn(t, lnA, silent, Config{Store: st.keep, ConnectTimeout: timeout})
	time.Sleep(600 * time.Millisecond)
	c := dial(t, a.addr)
	waitFor(t, "the client to be accepted", func() bool { return a.srv.Stats().Active == 1 })
	time.Sleep(age)
	r := st.take(t, a)
	if len(r.Conns) != 1 || r.Conns[0].Age < int64(age) || r.Conns[0].Age > int64(age+300*time.Millisecond) {
		closeRecord(r)
		t.Fatalf("record: %d connections, want one of age %v: %+v", len(r.Conns), age, r.Conns)
	}
	lnB := listenNamed(t, "web")
	startOn(t, lnB, silent, Config{Resume: r, ConnectTimeout: timeout})
	// The deadline comes about timeout-age after the resume.
	took := closedWithin(t, c, 5*time.Second)
	t.Logf("closed %v after the resume", took)
	if took < (timeout-age)/2 || took > timeout-age+450*time.Millisecond {
		t.Errorf("closed %v after the resume, want about %v: the deadline moved", took, timeout-age)
	}
}

// TestAdoptedResolvingClosesOnlyItsOwn: a connection adopted while still
// connecting has no backend socket until it connects; one that fails
// before that (its backend's name never resolves, and the connect
// deadline passes) closes its client's socket and nothing else, not
// whatever descriptor a wrong "no socket" marker names (handoff.go, adopt:
// the backend's -1).
func TestAdoptedResolvingClosesOnlyItsOwn(t *testing.T) {
	before := stdoutTarget()
	st := newStore(t)
	lnA := listenNamed(t, "web")
	a := startOn(t, lnA, testutil.SilentTCP(t), Config{Store: st.keep, ConnectTimeout: time.Hour})
	c := dial(t, a.addr)
	waitFor(t, "the client to be accepted", func() bool { return a.srv.Stats().Active == 1 })
	r := st.take(t, a)
	lnB := listenNamed(t, "web")
	b := startOn(t, lnB, "never.spx.test:80", Config{Resume: r, Resolver: silentResolver(t), ConnectTimeout: 300 * time.Millisecond})
	closedWithin(t, c, 10*time.Second)
	waitFor(t, "the connection to end", func() bool { return b.srv.Stats().Active == 0 })
	if after := stdoutTarget(); after != before {
		t.Errorf("descriptor 1 was %q, is %q after the adopted connection failed", before, after)
	}
}

// TestStoreCarriesFlowIdleTime: a datagram flow's idle clock goes through
// the store like a connection's, time in the store included. A flow idle
// for I whole seconds (ticks of a 4 s timeout) when stored, and taken back
// when I and the time in the store make 4.5 s, is idle for exactly 4 ticks
// in the next proxy, as a record of that one says (taken before its clock
// reaches its first tick). handoff_flow.go: recordFlows, the tick counted
// from the clock, "tick-f.seen" (the flow starts after the first tick of the
// proxy's clock, or "tick+f.seen" would give the same), "* l.flows.every";
// adoptFlow, "rf.Idle+elapsed" and the clamp at "ticks+1" (4 ticks, not 3).
func TestStoreCarriesFlowIdleTime(t *testing.T) {
	noLeak(t)
	const timeout = 4 * time.Second // ticks of a second
	be := udpEcho(t, "udp", "127.0.0.1:0", "")
	listen := func() activation.Listener {
		ln, err := activation.ListenDatagram("127.0.0.1:0", activation.DefaultSocketMode)
		if err != nil {
			t.Fatal(err)
		}
		ln.Name = "dns"
		return ln
	}
	st := newStore(t)
	a := startOn(t, listen(), be.LocalAddr().String(), Config{Store: st.keep, FlowIdleTimeout: timeout})
	time.Sleep(1100 * time.Millisecond) // past the first tick
	sent := time.Now()
	exchange(t, udpClient(t, "127.0.0.1:0", ""), a.addr, []byte("x"))
	time.Sleep(1100 * time.Millisecond)
	r := st.take(t, a)
	idle := time.Since(sent) // at least the flow's idle time, by less than a tick
	if len(r.Flows) != 1 || r.Flows[0].Idle < int64(time.Second) || r.Flows[0].Idle >= int64(idle+time.Second) ||
		r.Flows[0].Idle%int64(time.Second) != 0 {
		closeRecord(r)
		t.Fatalf("record: %d flows, want one idle for 1 or 2 whole seconds (less than %v): %+v", len(r.Flows), idle+time.Second, r.Flows)
	}
	// In the store until I and the time there make 4.5 s.
	time.Sleep(time.Duration(int64(4500*time.Millisecond) - r.Flows[0].Idle - (handoff.Monotonic() - r.Written)))
	st2 := newStore(t)
	b := startOn(t, listen(), be.LocalAddr().String(), Config{Resume: r, Store: st2.keep, FlowIdleTimeout: timeout})
	waitFor(t, "the flow carried", func() bool { return b.srv.Stats().Flows == 1 })
	r2 := st2.take(t, b)
	defer closeRecord(r2)
	if len(r2.Flows) != 1 || r2.Flows[0].Idle != 4*int64(time.Second) {
		t.Errorf("taken back after 4.5 s idle, the flow is idle for %+v, want 4 s", r2.Flows)
	}
}

// TestResumedConnectionEndsWithFIN: a connection resumed from the store
// ends cleanly, its last bytes delivered even when they still wait in the
// proxy's send queue as it closes. The stopping proxy set its sockets to
// reset on close (in case the store had dropped them); the next one turns
// that off (handoff.go, register: "Keep == nil"), or the close would throw
// the queued bytes away with a reset.
func TestResumedConnectionEndsWithFIN(t *testing.T) {
	noLeak(t)
	addr, goAhead := tailBackend(t)
	st := newStore(t)
	a := startOn(t, listenNamed(t, "web"), addr, Config{Store: st.keep})
	c := dialTinyWindow(t, a.addr)
	waitFor(t, "the connection open", func() bool { return a.srv.Stats().Active == 1 })
	r := st.take(t, a)
	b := startOn(t, listenNamed(t, "web"), addr, Config{Resume: r})
	waitFor(t, "the connection resumed", func() bool { return b.srv.Stats().Active == 1 })
	close(goAhead)
	waitFor(t, "the proxy to close it", func() bool { return b.srv.Stats().Active == 0 })
	readWholeTail(t, c)
}
