// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/backend"
)

// member is one of several test backends: it greets each connection with
// its name and a newline, then echoes; stop kills it (its listener and
// every connection it has), start brings it back on the same address.
type testMember struct {
	t       *testing.T
	name    string
	network string
	addr    string
	mu      sync.Mutex
	ln      net.Listener
	conns   map[net.Conn]bool
	wg      sync.WaitGroup
}

func newMember(t *testing.T, name, network, addr string) *testMember {
	m := &testMember{t: t, name: name, network: network, addr: addr, conns: map[net.Conn]bool{}}
	m.start()
	t.Cleanup(m.stop)
	return m
}

func (m *testMember) start() {
	m.t.Helper()
	ln, err := net.Listen(m.network, m.addr)
	if err != nil {
		m.t.Fatal(err)
	}
	m.addr = ln.Addr().String()
	m.mu.Lock()
	m.ln = ln
	m.mu.Unlock()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			m.mu.Lock()
			m.conns[c] = true
			m.mu.Unlock()
			m.wg.Add(1)
			go func() {
				defer m.wg.Done()
				defer c.Close()
				fmt.Fprintf(c, "%s\n", m.name)
				io.Copy(c, c)
			}()
		}
	}()
}

func (m *testMember) stop() {
	m.mu.Lock()
	if m.ln != nil {
		m.ln.Close()
		m.ln = nil
	}
	for c := range m.conns {
		c.Close()
	}
	clear(m.conns)
	m.mu.Unlock()
	m.wg.Wait()
}

// startPool runs a proxy in front of the members, with cfg's policy.
func startPool(t *testing.T, ms []*testMember, cfg Config) *running {
	t.Helper()
	for _, m := range ms {
		a, err := backend.Parse(m.addr)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Backend = append(cfg.Backend, a)
	}
	ln, err := activation.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return startOn(t, ln, "", cfg)
}

func fourMembers(t *testing.T) []*testMember {
	var ms []*testMember
	for i := range 4 {
		ms = append(ms, newMember(t, fmt.Sprintf("b%d", i), "tcp", "127.0.0.1:0"))
	}
	return ms
}

// greeted connects to the proxy and returns the connection and the name
// of the backend that greeted it.
func greeted(t *testing.T, addr string) (net.Conn, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		c.Close()
		t.Fatalf("no greeting: %v", err)
	}
	return c, strings.TrimSpace(line)
}

// share opens n connections one after another, closing each, and counts
// them by backend.
func share(t *testing.T, addr string, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		c, name := greeted(t, addr)
		c.Close()
		got[name]++
	}
	return got
}

// TestRoundRobinSharesEvenly: four backends take 40 connections, ten each.
func TestRoundRobinSharesEvenly(t *testing.T) {
	noLeak(t)
	p := startPool(t, fourMembers(t), Config{Balance: RoundRobin})
	got := share(t, p.addr, 40)
	for i := range 4 {
		if n := got[fmt.Sprintf("b%d", i)]; n != 10 {
			t.Errorf("shares %v, want 10 each", got)
			break
		}
	}
}

// TestFirstStandsByInOrder: the first policy sends everything to the first
// backend; with it dead, to the second, and no client fails meanwhile;
// the death is logged once, not per client.
func TestFirstStandsByInOrder(t *testing.T) {
	noLeak(t)
	ms := fourMembers(t)
	p := startPool(t, ms, Config{})
	if got := share(t, p.addr, 8); got["b0"] != 8 {
		t.Fatalf("shares %v, want all on b0", got)
	}
	ms[0].stop()
	if got := share(t, p.addr, 8); got["b1"] != 8 {
		t.Fatalf("with b0 dead, shares %v, want all on b1", got)
	}
	if n := strings.Count(p.logs.String(), "backend down"); n != 1 {
		t.Errorf("%d lines say a backend went down, want 1:\n%s", n, p.logs)
	}
	if st := p.srv.Stats(); st.Backends != 4 || st.BackendsUp != 3 || st.BackendErrors != 0 {
		t.Errorf("stats: %d backends, %d up, %d backend errors; want 4, 3, 0", st.Backends, st.BackendsUp, st.BackendErrors)
	}
	want := "b0 down 0, b1 up 0, b2 up 0, b3 up 0"
	waitFor(t, "the metrics to show "+want, func() bool { return backendsShown(p.srv) == want })
}

// backendsShown is what the metrics would show of the first listener's
// backends, each named as in fourMembers.
func backendsShown(s *Server) string {
	ls := s.ListenerStats(nil)[0]
	var parts []string
	for m := range ls.NBackends {
		b := ls.Backends[m]
		state := "down"
		if b.Up {
			state = "up"
		}
		parts = append(parts, fmt.Sprintf("b%d %s %d", m, state, b.Open))
	}
	return strings.Join(parts, ", ")
}

// TestDeadBackendComesBack: a backend started again on its address takes
// its share again once its backoff is over, logged up once.
func TestDeadBackendComesBack(t *testing.T) {
	noLeak(t)
	ms := fourMembers(t)
	p := startPool(t, ms, Config{Balance: RoundRobin})
	ms[2].stop()
	if got := share(t, p.addr, 12); got["b2"] != 0 || len(got) != 3 {
		t.Fatalf("with b2 dead, shares %v", got)
	}
	ms[2].start()
	waitFor(t, "b2 to take connections again", func() bool { return share(t, p.addr, 4)["b2"] > 0 })
	if n := strings.Count(p.logs.String(), "backend up"); n != 1 {
		t.Errorf("%d lines say a backend came up, want 1:\n%s", n, p.logs)
	}
	if st := p.srv.Stats(); st.BackendsUp != 4 {
		t.Errorf("%d backends up, want 4", st.BackendsUp)
	}
}

// TestKillOneUnderLoad: with connections open on every backend, one dies:
// only the connections on it end, and no new connection fails.
func TestKillOneUnderLoad(t *testing.T) {
	noLeak(t)
	ms := fourMembers(t)
	p := startPool(t, ms, Config{Balance: RoundRobin})
	type held struct {
		c    net.Conn
		name string
	}
	var open []held
	for range 8 {
		c, name := greeted(t, p.addr)
		defer c.Close()
		open = append(open, held{c, name})
	}
	ms[1].stop()
	for range 20 {
		c, name := greeted(t, p.addr)
		if name == "b1" {
			t.Errorf("a new connection went to the dead backend")
		}
		c.Close()
	}
	for _, h := range open {
		h.c.SetDeadline(time.Now().Add(5 * time.Second))
		_, werr := h.c.Write([]byte("x\n"))
		buf := make([]byte, 2)
		_, rerr := io.ReadFull(h.c, buf)
		alive := werr == nil && rerr == nil
		if alive == (h.name == "b1") {
			t.Errorf("connection on %s: alive %v (write %v, read %v)", h.name, alive, werr, rerr)
		}
	}
	if st := p.srv.Stats(); st.BackendErrors != 0 {
		t.Errorf("%d backend errors, want 0", st.BackendErrors)
	}
}

// TestAllDownWaitThenOneStarts: with every backend dead, clients wait (as
// with one backend that is starting); the first backend to start serves
// them all within the connect timeout.
func TestAllDownWaitThenOneStarts(t *testing.T) {
	noLeak(t)
	ms := fourMembers(t)
	p := startPool(t, ms, Config{Balance: RoundRobin, ConnectTimeout: 5 * time.Second})
	for _, m := range ms {
		m.stop()
	}
	type result struct {
		name string
		err  error
	}
	results := make(chan result, 6)
	for range 6 {
		go func() {
			c, err := net.Dial("tcp", p.addr)
			if err != nil {
				results <- result{err: err}
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(8 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			results <- result{strings.TrimSpace(line), err}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	ms[3].start()
	for range 6 {
		r := recv(t, results, "a waiting client")
		if r.err != nil || r.name != "b3" {
			t.Errorf("client: %q, %v; want served by b3", r.name, r.err)
		}
	}
	// Six clients retried every backend for 300ms: still one line per
	// backend going down, and one for b3 coming back.
	logs := p.logs.String()
	if down, up := strings.Count(logs, "backend down"), strings.Count(logs, "backend up"); down != 4 || up != 1 {
		t.Errorf("%d lines say a backend went down, %d up; want 4 and 1:\n%s", down, up, logs)
	}
}

// TestLeastConnectionsFillsTheEmptiest: with two connections held on two
// backends, the next two go to the two backends without one.
func TestLeastConnectionsFillsTheEmptiest(t *testing.T) {
	noLeak(t)
	ms := fourMembers(t)
	p := startPool(t, ms, Config{Balance: LeastConnections})
	held := map[string]net.Conn{}
	for range 4 {
		c, name := greeted(t, p.addr)
		defer c.Close()
		held[name] = c
	}
	if len(held) != 4 {
		t.Fatalf("four connections went to %d backends", len(held))
	}
	if got := backendsShown(p.srv); got != "b0 up 1, b1 up 1, b2 up 1, b3 up 1" {
		t.Errorf("with one connection on each, the metrics show the backends as %q", got)
	}
	held["b0"].Close()
	held["b2"].Close()
	waitFor(t, "two connections to close", func() bool { return p.srv.Stats().Active == 2 })
	got := map[string]int{}
	for range 2 {
		c, name := greeted(t, p.addr)
		defer c.Close()
		got[name]++
	}
	if got["b0"] != 1 || got["b2"] != 1 {
		t.Errorf("the next two went to %v, want b0 and b2", got)
	}
	if got := backendsShown(p.srv); got != "b0 up 1, b1 up 1, b2 up 1, b3 up 1" {
		t.Errorf("after two closed and two more came, the metrics show the backends as %q", got)
	}
	held["b1"].Close()
	want := "b0 up 1, b1 up 0, b2 up 1, b3 up 1"
	waitFor(t, "the metrics to show "+want, func() bool { return backendsShown(p.srv) == want })
}

// TestSourceKeepsAClientOnItsBackend: each client address keeps its
// backend, and the addresses spread over more than one.
func TestSourceKeepsAClientOnItsBackend(t *testing.T) {
	noLeak(t)
	p := startPool(t, fourMembers(t), Config{Balance: Source})
	seen := map[string]bool{}
	for i := 1; i <= 16; i++ {
		src := fmt.Sprintf("127.0.0.%d", i)
		first := ""
		for range 3 {
			c := dialFrom(t, src, p.addr)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if err != nil {
				t.Fatal(err)
			}
			if first == "" {
				first = line
			} else if line != first {
				t.Errorf("client %s moved from %q to %q", src, first, line)
			}
		}
		seen[first] = true
	}
	if len(seen) < 2 {
		t.Errorf("16 client addresses all went to one backend")
	}
}

// blackhole is a TCP listener that never completes a handshake: its
// backlog of one is filled, so the kernel drops the next SYNs (loopback
// only, as the tests' traffic must stay).
func blackhole(t *testing.T) string {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(fd)
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*unix.SockaddrInet4).Port)
	for range 2 { // the backlog, and the one more the kernel allows
		c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
		if err != nil {
			break
		}
		t.Cleanup(func() { c.Close() })
	}
	return addr
}

// TestSilentBackendLeavesTimeForTheNext: a backend that never answers the
// SYN takes a share of the connect timeout, not all of it: the client is
// served by the next one, and the silent one is down.
func TestSilentBackendLeavesTimeForTheNext(t *testing.T) {
	noLeak(t)
	good := newMember(t, "good", "tcp", "127.0.0.1:0")
	silent, _ := backend.Parse(blackhole(t))
	ok, _ := backend.Parse(good.addr)
	ln, err := activation.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := startOn(t, ln, "", Config{Backend: []backend.Address{silent, ok}, ConnectTimeout: 2 * time.Second})
	began := time.Now()
	c, name := greeted(t, p.addr)
	c.Close()
	took := time.Since(began)
	if name != "good" || took > 1500*time.Millisecond || took < 900*time.Millisecond {
		t.Errorf("served by %q after %v, want by good after about 1s (half of 2s)", name, took)
	}
	if !strings.Contains(p.logs.String(), "timed out") || !strings.Contains(p.logs.String(), "backend down") {
		t.Errorf("the silent backend is not said down for a time-out:\n%s", p.logs)
	}
}

// TestHealthChecksMoveBackendsDownAndUp: with probes on, a backend that
// dies is taken down by the probes alone (no client needed), and brought
// back up when it returns, after the rise count.
func TestHealthChecksMoveBackendsDownAndUp(t *testing.T) {
	noLeak(t)
	ms := fourMembers(t)
	p := startPool(t, ms, Config{Balance: RoundRobin, HealthInterval: 30 * time.Millisecond, HealthFall: 2, HealthRise: 2})
	ms[3].stop()
	waitFor(t, "the probes to take b3 down", func() bool { return p.srv.Stats().BackendsUp == 3 })
	if !strings.Contains(p.logs.String(), "health check") {
		t.Errorf("the down line does not say a health check:\n%s", p.logs)
	}
	if got := share(t, p.addr, 9); got["b3"] != 0 {
		t.Errorf("shares %v with b3 down", got)
	}
	ms[3].start()
	waitFor(t, "the probes to bring b3 back", func() bool { return p.srv.Stats().BackendsUp == 4 })
	if got := share(t, p.addr, 8); got["b3"] != 2 {
		t.Errorf("shares %v with b3 back, want 2 on it", got)
	}
}

// TestHostNameBackendComesBackWithProbesOn: the probes cannot watch a
// backend given as a host name, so with them on it still comes back as
// without them: a client's connect tries it again after its backoff.
func TestHostNameBackendComesBackWithProbesOn(t *testing.T) {
	noLeak(t)
	ms := fourMembers(t)
	cfg := Config{Balance: RoundRobin, HealthInterval: 30 * time.Millisecond}
	for i, m := range ms {
		addr := m.addr
		if i == 3 {
			addr = strings.Replace(addr, "127.0.0.1:", "localhost:", 1)
		}
		a, err := backend.Parse(addr)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Backend = append(cfg.Backend, a)
	}
	ln, err := activation.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := startOn(t, ln, "", cfg)
	want := "backend not probed: a host name or a UDP backend is checked by its clients' connects only"
	waitFor(t, "a line at start-up: "+want, func() bool { return strings.Contains(p.logs.String(), want) })
	if n := strings.Count(p.logs.String(), want); n != 1 {
		t.Errorf("%d lines %q, want 1 (for b3):\n%s", n, want, p.logs)
	}
	ms[3].stop()
	waitFor(t, "a client's connect to take b3 down", func() bool {
		share(t, p.addr, 4)
		return p.srv.Stats().BackendsUp == 3
	})
	ms[3].start()
	waitFor(t, "b3 to take connections again", func() bool { return share(t, p.addr, 4)["b3"] > 0 })
}

// TestUDPBackendComesBackWithProbesOn: a connect says nothing of a UDP
// backend, so the probes leave it alone, and with them on a UDP backend
// that refused a datagram comes back as without them: a new flow tries it
// again after its backoff.
func TestUDPBackendComesBackWithProbesOn(t *testing.T) {
	noLeak(t)
	addrs, conns := udpBackends(t, 2)
	ln, err := activation.ListenDatagram("127.0.0.1:0", 0o666)
	if err != nil {
		t.Fatal(err)
	}
	p := startOn(t, ln, "", Config{Backend: addrs, Balance: RoundRobin, HealthInterval: 30 * time.Millisecond})
	ask := func() string { // one datagram from a new socket: a new flow
		c, err := net.Dial("udp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(200 * time.Millisecond))
		fmt.Fprint(c, "q")
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		return string(buf[:n])
	}
	conns[0].Close()
	waitFor(t, "a refused datagram to take b0 down", func() bool {
		ask()
		return p.srv.Stats().BackendsUp == 1
	})
	again, err := net.ListenPacket("udp", addrs[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := again.ReadFrom(buf)
			if err != nil {
				return
			}
			again.WriteTo(append([]byte("b0:"), buf[:n]...), from)
		}
	}()
	waitFor(t, "b0 to answer a new flow again", func() bool { return ask() == "b0:q" })
}

// TestOneBackendLogsAsBefore: a pool of one says nothing of pools: no
// up or down lines, no backend counts, and a refused backend is the same
// one warning as always.
func TestOneBackendLogsAsBefore(t *testing.T) {
	noLeak(t)
	m := newMember(t, "only", "tcp", "127.0.0.1:0")
	addr := m.addr
	m.stop()
	p := start(t, addr, Config{ConnectTimeout: -1})
	c := dial(t, p.addr)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read from a client of a dead backend")
	}
	logs := p.logs.String()
	if strings.Contains(logs, "backend down") || strings.Contains(logs, "backends_up") {
		t.Errorf("one backend logs pool lines:\n%s", logs)
	}
	if !strings.Contains(logs, "cannot connect to backend, closing client") || !strings.Contains(logs, "backend="+addr) {
		t.Errorf("the usual warning is missing:\n%s", logs)
	}
	if st := p.srv.Stats(); st.Backends != 0 || st.BackendsUp != 0 {
		t.Errorf("stats count %d backends, %d up, want 0", st.Backends, st.BackendsUp)
	}
}

// udpBackends runs n UDP echo backends, each prefixing its replies with
// "b<i>:", until the test ends.
func udpBackends(t *testing.T, n int) ([]backend.Address, []net.PacketConn) {
	var addrs []backend.Address
	var conns []net.PacketConn
	for i := range n {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		go func() {
			buf := make([]byte, 64)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo(append([]byte(fmt.Sprintf("b%d:", i)), buf[:n]...), from)
			}
		}()
		a, _ := backend.Parse(pc.LocalAddr().String())
		addrs, conns = append(addrs, a), append(conns, pc)
	}
	return addrs, conns
}

// TestFlowsStayOnTheirBackend: a datagram client keeps its backend for
// every datagram of its flow, under round-robin, and clients spread.
func TestFlowsStayOnTheirBackend(t *testing.T) {
	noLeak(t)
	addrs, _ := udpBackends(t, 2)
	ln, err := activation.ListenDatagram("127.0.0.1:0", 0o666)
	if err != nil {
		t.Fatal(err)
	}
	p := startOn(t, ln, "", Config{Backend: addrs, Balance: RoundRobin})
	seen := map[string]bool{}
	for range 4 {
		c, err := net.Dial("udp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		first := ""
		for i := range 5 {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			fmt.Fprintf(c, "%d", i)
			buf := make([]byte, 64)
			n, err := c.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			who, _, _ := strings.Cut(string(buf[:n]), ":")
			if first == "" {
				first = who
			} else if who != first {
				t.Errorf("a flow moved from %s to %s", first, who)
			}
		}
		seen[first] = true
	}
	if len(seen) != 2 {
		t.Errorf("four flows went to %d backends, want 2", len(seen))
	}
}

// TestSourceSameInEveryImage: --balance=source sends a client address to
// the same backend in every image, so that a reload or a restart keeps
// clients where they were (a hash seeded afresh in each process moved 16
// of 24 clients at one reload).
func TestSourceSameInEveryImage(t *testing.T) {
	addrs := make([]backend.Address, 4)
	for i := range addrs {
		a, err := backend.Parse(fmt.Sprintf("127.0.0.1:%d", 9001+i))
		if err != nil {
			t.Fatal(err)
		}
		addrs[i] = a
	}
	before, after := newPool(addrs, Source, activation.Stream, nil), newPool(addrs, Source, activation.Stream, nil)
	spread := map[int]bool{}
	for i := range 64 {
		src := netip.AddrFrom4([4]byte{10, 0, byte(i / 8), byte(i)})
		a, b := before.pick(src, 0), after.pick(src, 0)
		if a != b {
			t.Fatalf("%s: backend %d, then %d in the next image", src, a, b)
		}
		spread[a] = true
	}
	if len(spread) < 3 {
		t.Errorf("64 addresses went to %d backends: no spread", len(spread))
	}
}

// TestFlowLeavesABackendThatIsGone: a flow keeps its backend while that
// backend answers; once it refuses (ICMP port unreachable) while another
// backend is up, the flow ends, and the client's next datagrams go to a
// backend that is up, instead of to the dead one for as long as the client
// keeps sending.
func TestFlowLeavesABackendThatIsGone(t *testing.T) {
	addrs, conns := udpBackends(t, 2)
	ln, err := activation.ListenDatagram("127.0.0.1:0", 0o666)
	if err != nil {
		t.Fatal(err)
	}
	p := startOn(t, ln, "", Config{Backend: addrs, Balance: First})
	c, err := net.Dial("udp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ask := func(wait time.Duration) string {
		c.SetDeadline(time.Now().Add(wait))
		fmt.Fprint(c, "q")
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		if err != nil {
			return ""
		}
		return string(buf[:n])
	}
	if got := ask(5 * time.Second); got != "b0:q" {
		t.Fatalf("first reply %q, want the first backend's", got)
	}
	conns[0].Close() // the first backend is gone: its port answers ICMP unreachable
	for range 50 {
		if got := ask(200 * time.Millisecond); got == "b1:q" {
			return
		}
	}
	t.Fatalf("the client's flow stayed on the dead backend; stats %+v", p.srv.Stats())
}

// TestGivingUpNamesEveryBackend: a client given up on while every backend
// is down was tried on all of them, and its warning names them all.
func TestGivingUpNamesEveryBackend(t *testing.T) {
	noLeak(t)
	ms := []*testMember{newMember(t, "b0", "tcp", "127.0.0.1:0"), newMember(t, "b1", "tcp", "127.0.0.1:0")}
	p := startPool(t, ms, Config{Balance: RoundRobin, ConnectTimeout: 200 * time.Millisecond})
	for _, m := range ms {
		m.stop()
	}
	c := dial(t, p.addr)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read from a client of dead backends")
	}
	want := fmt.Sprintf("backend=%q", ms[0].addr+", "+ms[1].addr)
	waitFor(t, "the warning", func() bool { return strings.Contains(p.logs.String(), "closing client") })
	for _, line := range strings.Split(p.logs.String(), "\n") {
		if strings.Contains(line, "closing client") && !strings.Contains(line, want) {
			t.Errorf("the warning does not name both backends (%s):\n%s", want, line)
		}
	}
}
