// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/handoff"
	"github.com/socket-proxyd/socket-proxyd/internal/proxyproto"
	"github.com/socket-proxyd/socket-proxyd/internal/testutil"
)

// Tests written to kill mutants that survived `make mutants` (see
// docs/RELIABILITY.md, "Mutation testing"): each names the line it pins.

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

// TestPacketsEmptyMessage: a message of zero bytes goes on as one, in its
// place, and is not taken for the end of the stream; the end, which reads
// alike, goes on as a shutdown, not as empty messages; the bytes are
// counted (seqpacket.go: peerShut, rawWriteMsg).
func TestPacketsEmptyMessage(t *testing.T) {
	noLeak(t)
	r, path := startPackets(t, func(nc net.Conn) {
		c := nc.(*net.UnixConn)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		rc, err := c.SyscallConn()
		if err != nil {
			return
		}
		// A raw recvmsg: Go's reads, ReadMsgUnix too, take an empty
		// message for EOF.
		buf := make([]byte, 100)
		read := func() (n int, err error) {
			if rerr := rc.Read(func(fd uintptr) bool {
				n, _, _, _, err = unix.Recvmsg(int(fd), buf, nil, 0)
				return err != unix.EAGAIN
			}); rerr != nil {
				err = rerr
			}
			return n, err
		}
		var lens []string
		for {
			n, err := read()
			if err != nil {
				c.Write([]byte(err.Error()))
				return
			}
			lens = append(lens, strconv.Itoa(n))
			if string(buf[:n]) == "end" {
				break
			}
		}
		c.Write([]byte(strings.Join(lens, " ")))
		// Then the client's end: a read of nothing, and the peer shut.
		n, err := read()
		shut := false
		rc.Control(func(fd uintptr) {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
			m, perr := unix.Poll(fds, 5000)
			shut = perr == nil && m > 0 && fds[0].Revents&unix.POLLRDHUP != 0
		})
		c.Write([]byte(fmt.Sprintf("read %d %v, shut %v", n, err, shut)))
	}, Config{})
	c := dialPackets(t, path)
	for _, m := range []string{"a", "", "b", "end"} {
		if _, _, err := c.WriteMsgUnix([]byte(m), nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 100)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "1 0 1 3" {
		t.Fatalf("the backend got messages of %q bytes, %v; want \"1 0 1 3\"\n%s", buf[:n], err, r.logs)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	n, err = c.Read(buf)
	if want := "read 0 <nil>, shut true"; err != nil || string(buf[:n]) != want {
		t.Fatalf("the backend after the client's end: %q, %v; want %q", buf[:n], err, want)
	}
	waitFor(t, "the connection to close", func() bool { return r.srv.Stats().Active == 0 })
	if st := r.srv.Stats(); st.BytesIn != 5 || st.BytesOut != int64(len("1 0 1 3")+n) {
		t.Errorf("BytesIn %d, BytesOut %d; want 5 and %d", st.BytesIn, st.BytesOut, len("1 0 1 3")+n)
	}
}

// TestFlowIdleBounds: a flow silent after an exchange expires no sooner
// than its idle timeout and not much later: the sweep runs every quarter
// of it (flow.go, setupDatagram: "t/4"). TestFlowExpires has the lower
// bound only.
func TestFlowIdleBounds(t *testing.T) {
	noLeak(t)
	const idle = 200 * time.Millisecond
	be := udpEcho(t, "udp", "127.0.0.1:0", "")
	r := startDgram(t, "127.0.0.1:0", be.LocalAddr().String(), Config{FlowIdleTimeout: idle})
	c := udpClient(t, "127.0.0.1:0", "")
	exchange(t, c, r.addr, []byte("x"))
	// The sweeps count from the flow's first datagram: the last one comes
	// between two of them, where a sweep too early would show.
	time.Sleep(idle / 8)
	exchange(t, c, r.addr, []byte("x"))
	start := time.Now()
	waitFor(t, "the flow to expire", func() bool { return r.srv.Stats().Flows == 0 })
	took := time.Since(start)
	t.Logf("expired %v after the last exchange (idle timeout %v)", took, idle)
	// Never early: the flow was last seen before the exchange returned.
	// A little slack for that, and no more: a sweep early (flow.go,
	// flowTimers: "> l.flows.ticks") expires it at least a sweep interval
	// (a quarter of the timeout) early.
	if took < idle-10*time.Millisecond {
		t.Errorf("expired %v after the last exchange, before the %v idle timeout", took, idle)
	}
	// The timeout plus a quarter, plus slack for -race on a loaded
	// machine; a sweep every 4 timeouts (capped at 1 s) comes after 0.8 s.
	if took > idle+idle/4+500*time.Millisecond {
		t.Errorf("expired %v after the last exchange, long after the %v idle timeout", took, idle)
	}
	// With no flow the sweep stops, and its tick with it: a flow that
	// comes after a silence must not start from the old tick
	// (newFlow: "l.flows.every > 0" brings it up to date).
	time.Sleep(3 * idle)
	exchange(t, c, r.addr, []byte("y"))
	start = time.Now()
	waitFor(t, "the second flow to expire", func() bool { return r.srv.Stats().Flows == 0 })
	if took := time.Since(start); took < idle*9/10 {
		t.Errorf("a flow opened after a silence expired %v after its exchange, before the %v idle timeout", took, idle)
	}
}

// TestFlowNeverExpires: a negative FlowIdleTimeout turns expiry off; the
// loop has no flow tick then, and must not divide by it (flow.go,
// newFlow: "l.flows.every > 0").
func TestFlowNeverExpires(t *testing.T) {
	be := udpEcho(t, "udp", "127.0.0.1:0", "")
	r := startDgram(t, "127.0.0.1:0", be.LocalAddr().String(), Config{FlowIdleTimeout: -1})
	c := udpClient(t, "127.0.0.1:0", "")
	exchange(t, c, r.addr, []byte("x"))
	time.Sleep(100 * time.Millisecond)
	if n := r.srv.Stats().Flows; n != 1 {
		t.Errorf("%d flows, want the one, kept", n)
	}
}

// TestFlowIdleDefault: a FlowIdleTimeout of 0 means the default, not
// "never" (flow.go, setupDatagram: "t >= 0"). Read on the loop's
// goroutine, through the test hook: the default is too long to wait for.
func TestFlowIdleDefault(t *testing.T) {
	be := udpEcho(t, "udp", "127.0.0.1:0", "")
	ln, err := activation.ListenDatagram("127.0.0.1:0", activation.DefaultSocketMode)
	if err != nil {
		t.Fatal(err)
	}
	var srv *Server
	got := make(chan time.Duration, 1)
	r := startPrepared(t, ln, be.LocalAddr().String(), Config{}, func(s *Server) {
		srv = s
		s.testBatch = func(events []unix.EpollEvent, n int) int {
			if l := srv.loop.Load(); l != nil {
				select {
				case got <- time.Duration(int64(l.flows.ticks) * l.flows.every):
				default:
				}
			}
			return n
		}
	})
	exchange(t, udpClient(t, "127.0.0.1:0", ""), r.addr, []byte("x"))
	if d := recv(t, got, "a batch of events"); d < DefaultFlowIdleTimeout || d > DefaultFlowIdleTimeout+sweepMax {
		t.Errorf("flows expire after %v of silence, want the default %v", d, DefaultFlowIdleTimeout)
	}
}

// TestDatagramBatches: datagrams queued while the loop is busy are read in
// batches of dgramBatch, each datagram into its own slot of the batch
// (data and control message), and a full batch is followed by another
// read, as no new edge will come for what is queued (flow.go, datagrams:
// "k*b.slot", "k*oobSize", "n < dgramBatch"). The test hook holds the loop
// while the client queues more than two batches; on a wildcard listener, to two
// local addresses, each reply must come back with its payload and from the
// address it was sent to.
func TestDatagramBatches(t *testing.T) {
	be := udpEcho(t, "udp", "127.0.0.1:0", "")
	ln, err := activation.ListenDatagram("0.0.0.0:0", activation.DefaultSocketMode)
	if err != nil {
		t.Fatal(err)
	}
	held, unhold := holdFirstBatch(t)
	r := startPrepared(t, ln, be.LocalAddr().String(), Config{}, held.prepare)
	_, port, _ := net.SplitHostPort(r.addr)
	c := udpClient(t, "127.0.0.1:0", "")
	// More than two batches: the edges of the datagrams queued while the
	// loop is held come as one event, which pays for one read only.
	const count = 2*dgramBatch + 9
	send := func(i int) {
		to := netip.MustParseAddrPort(net.JoinHostPort(fmt.Sprintf("127.0.0.%d", 2+i%2), port))
		if _, err := c.WriteToUDPAddrPort([]byte(fmt.Sprintf("%d %s", i, to.Addr())), to); err != nil {
			t.Fatal(err)
		}
	}
	send(0)
	recv(t, held.held, "the loop to be held")
	for i := 1; i < count; i++ {
		send(i)
	}
	unhold()
	seen := make(map[int]bool)
	buf := make([]byte, 100)
	for range count {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("%d replies of %d: %v; %+v", len(seen), count, err, r.srv.Stats())
		}
		var i int
		var to string
		if _, err := fmt.Sscanf(string(buf[:n]), "%d %s", &i, &to); err != nil || i < 0 || i >= count || seen[i] {
			t.Fatalf("reply %q: not one of the datagrams sent, or twice", buf[:n])
		}
		seen[i] = true
		if from.Addr().String() != to {
			t.Errorf("datagram %d was sent to %s, its reply came from %s", i, to, from.Addr())
		}
	}
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

// TestHeldDatagramsInBatch: the first datagram of each new flow to a
// backend host name is held while the name resolves, copied from its own
// slot of the batch (flow.go, forwardIn: "k*b.slot" in the hold). The test
// hook holds the loop while three clients queue one datagram each, so that
// they come in one batch.
func TestHeldDatagramsInBatch(t *testing.T) {
	be := udpEcho(t, "udp", "127.0.0.1:0", "")
	_, port, _ := net.SplitHostPort(be.LocalAddr().String())
	dns := fakeDNS(t, [4]byte{127, 0, 0, 1})
	resolver := dnsResolver(dns)
	ln, err := activation.ListenDatagram("127.0.0.1:0", activation.DefaultSocketMode)
	if err != nil {
		t.Fatal(err)
	}
	held, unhold := holdFirstBatch(t)
	r := startPrepared(t, ln, "one.spx.test:"+port, Config{Resolver: resolver}, held.prepare)
	// The loop is held on a first client's datagram; the three that count
	// are queued meanwhile and read together.
	first := udpClient(t, "127.0.0.1:0", "")
	dst := netip.MustParseAddrPort(r.addr)
	if _, err := first.WriteToUDPAddrPort([]byte("first"), dst); err != nil {
		t.Fatal(err)
	}
	recv(t, held.held, "the loop to be held")
	var clients []*net.UDPConn
	for i := range 3 {
		c := udpClient(t, "127.0.0.1:0", "")
		if _, err := c.WriteToUDPAddrPort([]byte(fmt.Sprintf("client %d", i)), dst); err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	unhold()
	buf := make([]byte, 100)
	for i, c := range clients {
		n, _, err := c.ReadFromUDPAddrPort(buf)
		if want := fmt.Sprintf("client %d", i); err != nil || string(buf[:n]) != want {
			t.Errorf("client %d got %q, %v; want its own datagram back", i, buf[:n], err)
		}
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

// TestFlowTableGrows: the table of flows by descriptor grows to hold any
// descriptor, the one just past its end included, and an event for a
// descriptor past its end is not a flow's (flow.go, insertFlow:
// "fd >= len(l.flows.table)", "fd+1"; flowEvent: "fd >= len").
func TestFlowTableGrows(t *testing.T) {
	l := &loop{s: New(Config{})}
	ln := &listenerFD{dgram: &dgramListener{flows: make(map[string]*flow)}, n: new(listenerCounters)}
	for _, fd := range []int{3, 64, 128, 1000} {
		f := &flow{fd: int32(fd), key: strconv.Itoa(fd)}
		l.insertFlow(ln, f, netip.Addr{})
		if l.flows.table[fd] != f {
			t.Fatalf("flow on descriptor %d not in the table", fd)
		}
	}
	l.flowEvent(len(l.flows.table), 1, unix.EPOLLIN) // none there: ignored
}

// TestReplyBursts: replies queued on flow sockets while the loop is busy
// are read in batches until each socket is empty, as no new edge will come
// for them, the second flow's into the rest of the first's batch (flow.go,
// flowEvent: "n < dgramBatch-lo"). The test hook holds the loop while the
// backend answers two flows with more than three batches of replies each,
// so that one wait reports both flows, once each.
func TestReplyBursts(t *testing.T) {
	const burst = 3*dgramBatch + 4
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	goAhead, sent := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	t.Cleanup(func() {
		pc.Close()
		wg.Wait()
	})
	wg.Go(func() {
		buf := make([]byte, 100)
		var bursts []net.Addr
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if string(buf[:n]) != "burst" {
				pc.WriteTo(buf[:n], from)
				continue
			}
			if bursts = append(bursts, from); len(bursts) < 2 {
				continue
			}
			select {
			case <-goAhead:
			case <-time.After(10 * time.Second):
				return
			}
			for _, to := range bursts {
				for i := range burst {
					pc.WriteTo([]byte(strconv.Itoa(i)), to)
				}
			}
			close(sent)
		}
	})
	held, unhold := holdFirstBatch(t)
	held.armed.Store(false)
	r := startPrepared(t, ln4(t), pc.LocalAddr().String(), Config{}, held.prepare)
	dst := netip.MustParseAddrPort(r.addr)
	clients := []*net.UDPConn{udpClient(t, "127.0.0.1:0", ""), udpClient(t, "127.0.0.1:0", "")}
	for _, c := range clients {
		exchange(t, c, r.addr, []byte("x")) // its flow
		if _, err := c.WriteToUDPAddrPort([]byte("burst"), dst); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "both bursts forwarded", func() bool { return r.srv.Stats().DatagramsIn == 4 })
	// Hold the loop on a third client's datagram; the replies come
	// meanwhile.
	held.armed.Store(true)
	third := udpClient(t, "127.0.0.1:0", "")
	if _, err := third.WriteToUDPAddrPort([]byte("wake"), dst); err != nil {
		t.Fatal(err)
	}
	recv(t, held.held, "the loop to be held")
	close(goAhead)
	recv(t, sent, "the backend to send its replies")
	unhold()
	for i, c := range clients {
		seen := make(map[string]bool)
		buf := make([]byte, 100)
		for len(seen) < burst {
			n, _, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatalf("client %d: %d replies of %d: %v; %+v", i, len(seen), burst, err, r.srv.Stats())
			}
			seen[string(buf[:n])] = true
		}
	}
}

// ln4 is a datagram listener on 127.0.0.1.
func ln4(t *testing.T) activation.Listener {
	t.Helper()
	ln, err := activation.ListenDatagram("127.0.0.1:0", activation.DefaultSocketMode)
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// TestRepliesLeaveByTheirListener: replies read in one wait for flows of
// two datagram listeners each leave through their own listener (flow.go,
// flowEvent: the batch of one listener is flushed before another's
// replies are read into it). The backend answers both clients at once;
// the test hook holds the wait that reports the first reply until both
// are in their flow sockets, and adds the second flow's event to it. Each
// client's socket is connected to its listener's address and takes no
// reply from the other.
func TestRepliesLeaveByTheirListener(t *testing.T) {
	be, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	answered := make(chan struct{}, 1)
	go func() { // echo in pairs: both answers leave together
		buf := make([]byte, 100)
		for {
			var got [2]struct {
				msg  []byte
				from netip.AddrPort
			}
			for k := range got {
				n, from, err := be.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				got[k].msg, got[k].from = append([]byte(nil), buf[:n]...), from
			}
			for _, g := range got {
				be.WriteToUDPAddrPort(g.msg, g.from)
			}
			answered <- struct{}{}
		}
	}()
	lnA, err := activation.ListenDatagram("127.0.0.1:0", activation.DefaultSocketMode)
	if err != nil {
		t.Fatal(err)
	}
	lnB, err := activation.ListenDatagram("127.0.0.1:0", activation.DefaultSocketMode)
	if err != nil {
		t.Fatal(err)
	}
	var armed atomic.Bool
	var srv *Server
	startPrepared(t, lnB, be.LocalAddr().String(), Config{Listeners: []activation.Listener{lnA}}, func(s *Server) {
		srv = s
		s.testBatch = func(events []unix.EpollEvent, n int) int {
			l := srv.loop.Load()
			if l == nil || !armed.Load() {
				return n
			}
			for _, ev := range events[:n] {
				if int(ev.Fd) < len(l.flows.table) && l.flows.table[ev.Fd] != nil {
					armed.Store(false)
					<-answered // both replies wait in their flow sockets now
					for _, f := range l.flows.table {
						if f != nil && int(f.fd) != int(ev.Fd) && n < len(events) {
							events[n] = unix.EpollEvent{Events: unix.EPOLLIN, Fd: f.fd, Pad: int32(f.gen)}
							n++
						}
					}
					return n
				}
			}
			return n
		}
	})
	dial := func(ln activation.Listener) *net.UDPConn {
		c, err := net.DialUDP("udp", nil, ln.Addr().(*net.UDPAddr))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		return c
	}
	clients := [2]*net.UDPConn{dial(lnA), dial(lnB)}
	ask := func(round string) {
		for k, c := range clients {
			if _, err := c.Write([]byte(fmt.Sprintf("%s %d", round, k))); err != nil {
				t.Fatal(err)
			}
		}
		buf := make([]byte, 100)
		for k, c := range clients {
			n, err := c.Read(buf)
			if want := fmt.Sprintf("%s %d", round, k); err != nil || string(buf[:n]) != want {
				t.Fatalf("%s: client %d read %q, %v; want %q from its own listener", round, k, buf[:n], err, want)
			}
		}
	}
	ask("open")
	<-answered
	armed.Store(true)
	ask("mixed")
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

// TestHeldDatagramGoesWithItsHeader: the first datagram of a flow whose
// backend's name is being resolved waits, and goes once it resolves with
// its PROXY v2 header, counted as forwarded; an empty one goes as a header
// alone (flow.go, flowResolved).
func TestHeldDatagramGoesWithItsHeader(t *testing.T) {
	dns := fakeDNS(t, [4]byte{127, 0, 0, 1})
	resolver := dnsResolver(dns)
	be, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	be.SetDeadline(time.Now().Add(10 * time.Second))
	_, port, _ := net.SplitHostPort(be.LocalAddr().String())
	r := startDgram(t, "127.0.0.1:0", "one.spx.test:"+port, Config{Resolver: resolver, ProxyProtocol: proxyproto.V2})
	signature := "\r\n\r\n\x00\r\nQUIT\n"
	buf := make([]byte, 1000)
	for _, payload := range []string{"first", ""} {
		c := udpClient(t, "127.0.0.1:0", "")
		if _, err := c.WriteToUDPAddrPort([]byte(payload), netip.MustParseAddrPort(r.addr)); err != nil {
			t.Fatal(err)
		}
		n, err := be.Read(buf)
		if err != nil {
			t.Fatalf("%q: %v", payload, err)
		}
		got := string(buf[:n])
		if !strings.HasPrefix(got, signature) || !strings.HasSuffix(got, payload) || n <= len(payload)+len(signature) {
			t.Errorf("the backend got %q for %q, want a PROXY v2 header, then it", got, payload)
		}
	}
	waitFor(t, "both counted", func() bool { return r.srv.Stats().DatagramsIn == 2 })
	if st := r.srv.Stats(); st.DatagramsDropped != 0 {
		t.Errorf("%d dropped, want none", st.DatagramsDropped)
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
