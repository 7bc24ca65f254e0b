// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	pp "github.com/pires/go-proxyproto"
	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/backend"
	"github.com/socket-proxyd/socket-proxyd/internal/proxyproto"
	"github.com/socket-proxyd/socket-proxyd/internal/testutil"
)

// Tests of datagram flows (flow.go).

// udpEcho runs a UDP (or unixgram) backend that sends every datagram back
// to its sender, prefixed by reply, until the test ends.
func udpEcho(t *testing.T, network, addr string, reply string) net.PacketConn {
	t.Helper()
	return testutil.EchoPackets(t, network, addr, func(net.Addr) string { return reply })
}

// startDgram runs a proxy with a datagram listener on addr in front of
// backendAddr.
func startDgram(t *testing.T, addr, backendAddr string, cfg Config) *running {
	t.Helper()
	ln, err := activation.ListenDatagram(addr, activation.DefaultSocketMode)
	if err != nil {
		t.Fatal(err)
	}
	return startOn(t, ln, backendAddr, cfg)
}

func udpClient(t *testing.T, local, remote string) *net.UDPConn {
	t.Helper()
	la, err := net.ResolveUDPAddr("udp", local)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.ListenUDP("udp", la)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// exchange sends msg to to and returns the reply and where it came from.
func exchange(t *testing.T, c *net.UDPConn, to string, msg []byte) ([]byte, netip.AddrPort) {
	t.Helper()
	dst, err := netip.ParseAddrPort(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteToUDPAddrPort(msg, dst); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 70000)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("no reply to %d bytes: %v", len(msg), err)
	}
	return buf[:n], from
}

func TestUDPFlowsPerClient(t *testing.T) {
	noLeak(t)
	be := udpEcho(t, "udp", "127.0.0.1:0", "re:")
	r := startDgram(t, "127.0.0.1:0", be.LocalAddr().String(), Config{})
	a, b := udpClient(t, "127.0.0.1:0", ""), udpClient(t, "127.0.0.1:0", "")
	for i, size := range []int{0, 1, 64, 1400, 65507 - 3} { // whole datagrams, the largest UDP one included
		msg := bytes.Repeat([]byte{byte('a' + i)}, size)
		for _, c := range []*net.UDPConn{a, b} {
			got, from := exchange(t, c, r.addr, msg)
			if !bytes.Equal(got, append([]byte("re:"), msg...)) {
				t.Fatalf("size %d: reply of %d bytes, want %d", size, len(got), size+3)
			}
			if from.String() != r.addr {
				t.Fatalf("reply from %s, want %s", from, r.addr)
			}
		}
	}
	// The loop counts a reply after sendmmsg returns, which may be after
	// the client has it: wait for the count, within waitFor's deadline.
	var s Stats
	waitFor(t, "2 flows, 10 datagrams each way", func() bool {
		s = r.srv.Stats()
		return s.Flows == 2 && s.FlowsOpened == 2 && s.DatagramsIn == 10 && s.DatagramsOut == 10
	})
	if s.Active != 0 || s.Accepted != 0 {
		t.Fatalf("flows counted as connections: %+v", s)
	}
}

// TestUDPReplyFromAddressClientSentTo: on a wildcard listener, a client
// that sent to 127.0.0.2 gets its reply from 127.0.0.2, not from the
// address routing would pick (127.0.0.1).
func TestUDPReplyFromAddressClientSentTo(t *testing.T) {
	be := udpEcho(t, "udp", "127.0.0.1:0", "")
	r := startDgram(t, "0.0.0.0:0", be.LocalAddr().String(), Config{})
	_, port, _ := net.SplitHostPort(r.addr)
	// Clients of every address: the kernel alone would answer a client of
	// 127.0.0.5 asking 127.0.0.2 from 127.0.0.5 (a local route's source
	// is the destination), never from 127.0.0.2.
	for _, tt := range []struct{ from, to string }{
		{"127.0.0.1", "127.0.0.2"}, {"127.0.0.5", "127.0.0.2"}, {"127.0.0.2", "127.0.0.3"}, {"127.0.0.1", "127.0.0.1"},
	} {
		c := udpClient(t, tt.from+":0", "")
		_, from := exchange(t, c, net.JoinHostPort(tt.to, port), []byte("hi "+tt.to))
		if from.Addr().String() != tt.to {
			t.Errorf("%s sent to %s, reply came from %s", tt.from, tt.to, from)
		}
	}
	t.Run("IPv6 wildcard", func(t *testing.T) {
		pc, err := net.ListenPacket("udp6", "[::1]:0")
		if err != nil {
			testutil.Unavailable(t, "no IPv6 loopback: %v", err)
		}
		pc.Close()
		r := startDgram(t, "[::]:0", be.LocalAddr().String(), Config{})
		_, port, _ := net.SplitHostPort(r.addr)
		for _, to := range []string{"::1", "127.0.0.2"} { // native and v4-mapped
			c := udpClient(t, "[::]:0", "")
			_, from := exchange(t, c, net.JoinHostPort(to, port), []byte("hi"))
			if from.Addr().Unmap().String() != to {
				t.Errorf("sent to %s, reply came from %s", to, from)
			}
		}
	})
}

func TestFlowExpires(t *testing.T) {
	noLeak(t)
	be := udpEcho(t, "udp", "127.0.0.1:0", "")
	r := startDgram(t, "127.0.0.1:0", be.LocalAddr().String(), Config{FlowIdleTimeout: 200 * time.Millisecond})
	c := udpClient(t, "127.0.0.1:0", "")
	exchange(t, c, r.addr, []byte("x"))
	if n := r.srv.Stats().Flows; n != 1 {
		t.Fatalf("%d flows, want 1", n)
	}
	start := time.Now()
	waitFor(t, "the flow to expire", func() bool { return r.srv.Stats().Flows == 0 })
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Errorf("expired after %v, before the idle timeout", d)
	}
	exchange(t, c, r.addr, []byte("again")) // a new flow
	if s := r.srv.Stats(); s.FlowsOpened != 2 {
		t.Fatalf("stats %+v: want a second flow", s)
	}
	if !strings.Contains(r.logs.String(), "reason=idle") {
		t.Errorf("no debug line for the expiry:\n%s", r.logs)
	}
}

// TestFlowKeptWhileActive: datagrams either way keep a flow alive past its
// idle timeout.
func TestFlowKeptWhileActive(t *testing.T) {
	be := udpEcho(t, "udp", "127.0.0.1:0", "")
	r := startDgram(t, "127.0.0.1:0", be.LocalAddr().String(), Config{FlowIdleTimeout: time.Second})
	c := udpClient(t, "127.0.0.1:0", "")
	for end := time.Now().Add(2500 * time.Millisecond); time.Now().Before(end); {
		exchange(t, c, r.addr, []byte("x"))
		time.Sleep(50 * time.Millisecond)
	}
	if s := r.srv.Stats(); s.FlowsOpened != 1 || s.Flows != 1 {
		t.Fatalf("stats %+v: the flow expired while in use\n%s", s, r.logs)
	}
}

// TestFlowLimit: -c counts flows; past it, datagrams of new clients are
// dropped with one warning, and a client gets in once a flow expires.
// TestFlowLimitEvictsAnsweredFirst: past the flow budget a new client is
// served, in the place of the least recently active flow that was
// answered; a flow still waiting for its reply keeps its place, and gets
// the reply when it comes.
func TestFlowLimitEvictsAnsweredFirst(t *testing.T) {
	// The backend answers at once, but a "wait" datagram only when a
	// "release" one comes.
	be, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { be.Close(); wg.Wait() })
	wg.Go(func() {
		var waiting net.Addr
		buf := make([]byte, 2048)
		for {
			n, from, err := be.ReadFrom(buf)
			if err != nil {
				return
			}
			switch string(buf[:n]) {
			case "wait":
				waiting = from
			case "release":
				be.WriteTo([]byte("late"), waiting)
				be.WriteTo([]byte("released"), from)
			default:
				be.WriteTo(buf[:n], from)
			}
		}
	})
	r := startDgram(t, "127.0.0.1:0", be.LocalAddr().String(), Config{MaxFlows: 2})
	dst := netip.MustParseAddrPort(r.addr)
	answered := udpClient(t, "127.0.0.1:0", "")
	exchange(t, answered, r.addr, []byte("1"))
	waiting := udpClient(t, "127.0.0.1:0", "")
	waiting.WriteToUDPAddrPort([]byte("wait"), dst)
	waitFor(t, "the waiting flow", func() bool { return r.srv.Stats().DatagramsIn == 2 })
	late := udpClient(t, "127.0.0.1:0", "")
	if got, _ := exchange(t, late, r.addr, []byte("release")); string(got) != "released" {
		t.Fatalf("third client: reply %q", got)
	}
	buf := make([]byte, 64)
	n, _, err := waiting.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "late" {
		t.Fatalf("the waiting client: %q, %v; its flow was evicted instead of the answered one", buf[:n], err)
	}
	if s := r.srv.Stats(); s.Flows != 2 || s.FlowsEvicted != 1 || s.DatagramsDropped != 0 || s.Refused != 0 {
		t.Fatalf("stats %+v: want 2 flows, 1 evicted, nothing dropped or refused", s)
	}
	if !strings.Contains(r.logs.String(), "hint=\"raise it with --flows-max\"") {
		t.Errorf("the warning does not say which option raises the limit:\n%s", r.logs)
	}
	// The evicted client is served again, in a new flow.
	exchange(t, answered, r.addr, []byte("4"))
}

// TestFlowFloodKeepsServingEveryone: one datagram from each of thousands
// of source addresses, far past a small connection limit and the flow
// budget, keeps out neither stream clients of the same proxy nor a new
// datagram client.
func TestFlowFloodKeepsServingEveryone(t *testing.T) {
	noLeak(t)
	// One port for the UDP and the TCP echo backend.
	var be net.PacketConn
	var port string
	for attempt := 0; ; attempt++ {
		be = udpEcho(t, "udp", "127.0.0.1:0", "")
		_, port, _ = net.SplitHostPort(be.LocalAddr().String())
		if tcp, err := net.Listen("tcp", "127.0.0.1:"+port); err == nil {
			serveBackend(t, tcp, echo)
			break
		}
		if attempt == 5 {
			t.Fatal("no port free for both UDP and TCP")
		}
	}
	stream, err := activation.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	const maxConns, maxFlows = 4, 64
	r := startDgram(t, "127.0.0.1:0", "127.0.0.1:"+port, Config{MaxConnections: maxConns, MaxFlows: maxFlows,
		Listeners: []activation.Listener{stream}})
	dst := netip.MustParseAddrPort(r.addr)
	const sources = 2000
	for i := range sources {
		src := netip.AddrFrom4([4]byte{127, 0, byte(1 + i/250), byte(2 + i%250)})
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: src.As4()}); err != nil {
			unix.Close(fd)
			t.Fatalf("bind %s: %v", src, err)
		}
		err = unix.Sendto(fd, []byte("q"), 0, &unix.SockaddrInet4{Addr: dst.Addr().As4(), Port: int(dst.Port())})
		unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
		if (i+1)%100 == 0 { // in bursts the listener's receive buffer holds
			waitFor(t, "the burst forwarded or dropped", func() bool {
				s := r.srv.Stats()
				return s.DatagramsIn+s.DatagramsDropped >= int64(i+1)
			})
		}
	}
	if s := r.srv.Stats(); s.Flows > maxFlows || s.FlowsEvicted < sources-maxFlows || s.DatagramsDropped != 0 {
		t.Fatalf("stats %+v: want at most %d flows, at least %d evicted, none dropped", s, maxFlows, sources-maxFlows)
	}
	for range maxConns {
		roundTrip(t, stream.Addr().String(), []byte("stream clients are served"))
	}
	if got, _ := exchange(t, udpClient(t, "127.0.0.1:0", ""), r.addr, []byte("new")); string(got) != "new" {
		t.Fatalf("a new datagram client: reply %q", got)
	}
}

// TestOversizedDatagramDropsAlone: a datagram the backend's socket
// refuses for its size (EMSGSIZE) is dropped and counted alone; the ones
// read in the same batch after it are forwarded, in order. The datagrams
// are queued on the listener before the proxy starts, so that they are
// read in one batch.
func TestOversizedDatagramDropsAlone(t *testing.T) {
	for _, tt := range []struct {
		name, listen, client string
		big                  int
		cfg                  Config
	}{
		// Legal over IPv6, too big for an IPv4 socket.
		{name: "IPv6 client, IPv4 backend", listen: "[::1]:0", client: "[::1]:0", big: 65527},
		// The largest IPv4 datagram, with a PROXY header before it.
		{name: "PROXY header", listen: "127.0.0.1:0", client: "127.0.0.1:0", big: 65507, cfg: Config{ProxyProtocol: proxyproto.V2}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if strings.HasPrefix(tt.listen, "[") && !hasIPv6() {
				testutil.Unavailable(t, "no ::1")
			}
			got := make(chan string, 16)
			be, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			t.Cleanup(func() { be.Close(); wg.Wait() })
			wg.Go(func() {
				buf := make([]byte, 70000)
				for {
					n, _, err := be.ReadFrom(buf)
					if err != nil {
						return
					}
					got <- string(buf[max(0, n-1):n]) // the payload's last byte, after any header
				}
			})
			ln, err := activation.ListenDatagram(tt.listen, activation.DefaultSocketMode)
			if err != nil {
				t.Fatal(err)
			}
			c := udpClient(t, tt.client, "")
			dst := netip.MustParseAddrPort(ln.Addr().String())
			want := "abcdef"
			c.WriteToUDPAddrPort([]byte("a"), dst)
			if _, err := c.WriteToUDPAddrPort(bytes.Repeat([]byte("X"), tt.big), dst); err != nil {
				t.Fatal(err)
			}
			for _, b := range want[1:] {
				c.WriteToUDPAddrPort([]byte{byte(b)}, dst)
			}
			r := startOn(t, ln, be.LocalAddr().String(), tt.cfg)
			for i := range want {
				if b := recv(t, got, "datagram "+want[i:i+1]); b != want[i:i+1] {
					t.Fatalf("backend got %q, want %q", b, want[i:i+1])
				}
			}
			// A datagram is counted once its send returns: the backend
			// may read it a moment before.
			waitFor(t, "the count", func() bool {
				s := r.srv.Stats()
				return s.DatagramsDropped == 1 && s.DatagramsIn == int64(len(want))
			})
			if s := r.srv.Stats(); s.DroppedTooBig != 1 || s.DatagramsIn != int64(len(want)) {
				t.Fatalf("stats %+v: want %d forwarded, 1 dropped as too big", s, len(want))
			}
		})
	}
}

// TestFlowBackendRefused: an ICMP port unreachable is counted and logged
// once at debug level, costs no busy loop, and the flow is served as soon
// as the backend is up.
func TestFlowBackendRefused(t *testing.T) {
	hold, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := hold.LocalAddr().String()
	hold.Close() // nothing listens there now: the kernel answers ICMP unreachable
	r := startDgram(t, "127.0.0.1:0", addr, Config{})
	c := udpClient(t, "127.0.0.1:0", "")
	dst := netip.MustParseAddrPort(r.addr)
	// One datagram at a time, each once the last refusal is counted: a
	// burst read in one batch goes in one (segmented) send, which gets
	// one refusal for all.
	for i := int64(1); i <= 3; i++ {
		c.WriteToUDPAddrPort([]byte("x"), dst)
		waitFor(t, fmt.Sprintf("refusal %d counted", i), func() bool { return r.srv.Stats().BackendRefused >= i })
	}
	if n := strings.Count(r.logs.String(), `level=WARN msg="backend refused datagrams (ICMP port unreachable): is it running?"`); n != 1 {
		t.Errorf("%d warnings for the refusals, want 1 per flow:\n%s", n, r.logs)
	}
	var ru0, ru1 unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru0)
	time.Sleep(200 * time.Millisecond)
	unix.Getrusage(unix.RUSAGE_SELF, &ru1)
	if cpu := time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano()); cpu > 100*time.Millisecond {
		t.Errorf("%v of CPU in 200ms while idle: a busy loop", cpu)
	}
	udpEcho(t, "udp", addr, "up:")
	if got, _ := exchange(t, c, r.addr, []byte("x")); string(got) != "up:x" {
		t.Fatalf("reply %q", got)
	}
	if s := r.srv.Stats(); s.FlowsOpened != 1 {
		t.Errorf("stats %+v: the flow should have stayed", s)
	}
}

// TestUnixDatagramFlows: the backend-side socket autobinds so that the
// backend can reply; a client bound to an address gets replies, an
// unbound one is forwarded and told once, at debug level.
func TestUnixDatagramFlows(t *testing.T) {
	noLeak(t)
	dir := shortDir(t)
	be := udpEcho(t, "unixgram", filepath.Join(dir, "be"), "re:")
	r := startDgram(t, filepath.Join(dir, "px"), be.LocalAddr().String(), Config{})
	cli, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "c"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	cli.SetDeadline(time.Now().Add(10 * time.Second))
	to := &net.UnixAddr{Name: r.addr, Net: "unixgram"}
	big := bytes.Repeat([]byte("z"), 100000) // more than UDP carries
	for _, msg := range [][]byte{[]byte("hello"), big} {
		if _, err := cli.WriteTo(msg, to); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 200000)
		n, _, err := cli.ReadFrom(buf)
		if err != nil || !bytes.Equal(buf[:n], append([]byte("re:"), msg...)) {
			t.Fatalf("reply of %d bytes, %v", n, err)
		}
	}
	// An unbound client: forwarded, no reply possible.
	u, err := net.DialUnix("unixgram", nil, to)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	before := r.srv.Stats().DatagramsIn
	u.Write([]byte("one"))
	u.Write([]byte("two"))
	waitFor(t, "the unbound client's datagrams forwarded", func() bool { return r.srv.Stats().DatagramsIn == before+2 })
	if n := strings.Count(r.logs.String(), "without an address cannot get replies"); n != 1 {
		t.Errorf("%d debug lines about the unbound client, want 1:\n%s", n, r.logs)
	}
}

// TestFullBackendDropsTheRest: a flow's backend whose queue is full (a
// unix datagram socket that reads nothing takes max_dgram_qlen datagrams)
// refuses the rest of a batch with EAGAIN: those are dropped and counted,
// not retried (which would hold the loop) and not taken for refusals
// (flow.go, sendFlow: the cases "len(msgs) == 0", "e == unix.EINTR", "e ==
// unix.ECONNREFUSED").
func TestFullBackendDropsTheRest(t *testing.T) {
	noLeak(t)
	dir := shortDir(t)
	be, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "be"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	r := startDgram(t, filepath.Join(dir, "px"), be.LocalAddr().String(), Config{})
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: r.addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	const n = 200
	for i := range n {
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatalf("datagram %d: %v (the proxy no longer reads)", i, err)
		}
	}
	waitFor(t, "every datagram forwarded or dropped", func() bool {
		st := r.srv.Stats()
		return st.DatagramsIn+st.DatagramsDropped == n
	})
	if st := r.srv.Stats(); st.DatagramsDropped == 0 || st.BackendRefused != 0 {
		t.Errorf("%d forwarded, %d dropped, %d refusals; want some dropped, no refusal", st.DatagramsIn, st.DatagramsDropped, st.BackendRefused)
	}
}

// TestReplyToGoneClientDropped: a reply whose client's socket is gone
// (its unix path removed) is dropped and counted, once: not retried, which
// would hold the loop (flow.go, flushReplies: "e != unix.EINTR"); the next
// client is served.
func TestReplyToGoneClientDropped(t *testing.T) {
	dir := shortDir(t)
	be, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "be"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	release := make(chan struct{})
	go func() { // holds its answer to "later" until released
		buf := make([]byte, 100)
		for {
			n, from, err := be.ReadFrom(buf)
			if err != nil {
				return
			}
			if string(buf[:n]) == "later" {
				<-release
			}
			be.WriteTo(buf[:n], from)
		}
	}()
	r := startDgram(t, filepath.Join(dir, "px"), be.LocalAddr().String(), Config{})
	to := &net.UnixAddr{Name: r.addr, Net: "unixgram"}
	client := func(name string) *net.UnixConn { return unixgramClient(t, filepath.Join(dir, name), 10*time.Second) }
	gone := client("gone")
	if _, err := gone.WriteTo([]byte("later"), to); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the datagram forwarded", func() bool { return r.srv.Stats().DatagramsIn == 1 })
	gone.Close()
	os.Remove(filepath.Join(dir, "gone"))
	close(release)
	waitFor(t, "the reply dropped", func() bool { return r.srv.Stats().DatagramsDropped == 1 })
	next := client("next")
	if _, err := next.WriteTo([]byte("now"), to); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	if n, _, err := next.ReadFrom(buf); err != nil || string(buf[:n]) != "now" {
		t.Fatalf("the next client read %q, %v; want its answer", buf[:n], err)
	}
	// A reply is counted once its send returned: the client may read it
	// first.
	waitFor(t, "the next one's reply counted", func() bool { return r.srv.Stats().DatagramsOut == 1 })
	if st := r.srv.Stats(); st.DatagramsDropped != 1 || st.DatagramsOut != 1 {
		t.Errorf("%d dropped, %d out; want the gone client's reply dropped once, the next one's sent", st.DatagramsDropped, st.DatagramsOut)
	}
}

// TestTruncatedDatagramDropped: a datagram larger than the proxy reads is
// dropped whole and counted, never forwarded in part.
func TestTruncatedDatagramDropped(t *testing.T) {
	dir := shortDir(t)
	got := make(chan int, 4)
	be, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "be"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	go func() {
		buf := make([]byte, 1<<20)
		for {
			n, _, err := be.ReadFrom(buf)
			if err != nil {
				return
			}
			got <- n
		}
	}()
	r := startDgram(t, filepath.Join(dir, "px"), be.LocalAddr().String(), Config{})
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 4<<20); err != nil {
		testutil.Unavailable(t, "cannot raise the send buffer (needs CAP_NET_ADMIN): %v", err)
	}
	if err := unix.Sendto(fd, make([]byte, unixSlot+1), 0, &unix.SockaddrUnix{Name: r.addr}); err != nil {
		testutil.Unavailable(t, "cannot send a datagram over %d bytes: %v", unixSlot, err)
	}
	unix.Sendto(fd, []byte("small"), 0, &unix.SockaddrUnix{Name: r.addr})
	select {
	case n := <-got:
		if n != 5 {
			t.Fatalf("backend got %d bytes first, want the small datagram (5)", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("nothing forwarded")
	}
	waitFor(t, "the count", func() bool { return r.srv.Stats().DatagramsIn == 1 })
	if s := r.srv.Stats(); s.DatagramsTruncated != 1 {
		t.Fatalf("stats %+v: want 1 truncated", s)
	}
}

// TestProxyProtocolDatagrams: with PROXY v2 every datagram to the backend
// starts with a header naming the client and the address it sent to.
func TestProxyProtocolDatagrams(t *testing.T) {
	be, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	r := startDgram(t, "0.0.0.0:0", be.LocalAddr().String(), Config{ProxyProtocol: 2})
	_, port, _ := net.SplitHostPort(r.addr)
	c := udpClient(t, "127.0.0.1:0", "")
	dst := netip.MustParseAddrPort("127.0.0.2:" + port)
	be.SetReadDeadline(time.Now().Add(10 * time.Second))
	for i := range 3 {
		payload := fmt.Sprintf("datagram %d", i)
		c.WriteToUDPAddrPort([]byte(payload), dst)
		buf := make([]byte, 2000)
		n, _, err := be.ReadFrom(buf)
		if err != nil {
			t.Fatal(err)
		}
		h, err := pp.Read(bufioReader(buf[:n]))
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if h.TransportProtocol != pp.UDPv4 || h.SourceAddr.String() != c.LocalAddr().String() || h.DestinationAddr.String() != dst.String() {
			t.Fatalf("header %v %s -> %s, want UDPv4 %s -> %s", h.TransportProtocol, h.SourceAddr, h.DestinationAddr, c.LocalAddr(), dst)
		}
		if rest := buf[n-len(payload) : n]; string(rest) != payload || n != len(payload)+28 {
			t.Fatalf("datagram %d: %d bytes, payload %q", i, n, rest)
		}
	}
}

// TestProxyProtocolDatagramsIPv6: the PROXY v2 header of an IPv6 client's
// datagram carries its IPv6 address (flow.go, sockaddrAddrPort: the
// AF_INET6 case, which the IPv4 test above never reaches).
func TestProxyProtocolDatagramsIPv6(t *testing.T) {
	if _, err := net.ResolveUDPAddr("udp6", "[::1]:0"); err != nil {
		testutil.Unavailable(t, "no IPv6: %v", err)
	}
	be, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	ln, err := activation.ListenDatagram("[::1]:0", activation.DefaultSocketMode)
	if err != nil {
		testutil.Unavailable(t, "no IPv6 loopback: %v", err)
	}
	r := startOn(t, ln, be.LocalAddr().String(), Config{ProxyProtocol: 2})
	c := udpClient(t, "[::1]:0", "")
	dst := netip.MustParseAddrPort(r.addr)
	be.SetReadDeadline(time.Now().Add(10 * time.Second))
	c.WriteToUDPAddrPort([]byte("six"), dst)
	buf := make([]byte, 2000)
	n, _, err := be.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	h, err := pp.Read(bufioReader(buf[:n]))
	if err != nil {
		t.Fatal(err)
	}
	if h.TransportProtocol != pp.UDPv6 || h.SourceAddr.String() != c.LocalAddr().String() || h.DestinationAddr.String() != dst.String() {
		t.Fatalf("header %v %s -> %s, want UDPv6 %s -> %s", h.TransportProtocol, h.SourceAddr, h.DestinationAddr, c.LocalAddr(), dst)
	}
	if string(buf[n-3:n]) != "six" {
		t.Fatalf("%d bytes, ending %q", n, buf[n-3:n])
	}
}

// TestDatagramsAllocateNothing: forwarding on an existing flow allocates
// nothing per datagram.
func TestDatagramsAllocateNothing(t *testing.T) {
	be, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		be.Close()
		wg.Wait()
	})
	wg.Go(func() { // an echo that allocates nothing per datagram
		buf := make([]byte, 2000)
		for {
			n, from, err := be.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			be.WriteToUDPAddrPort(buf[:n], from)
		}
	})
	r := startDgram(t, "127.0.0.1:0", be.LocalAddr().String(), Config{})
	c, err := net.Dial("udp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 100)
	msg := make([]byte, 64)
	round := func() {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Read(buf); err != nil {
			t.Fatal(err)
		}
	}
	round()
	const n = 2000
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	for range n {
		round()
	}
	runtime.ReadMemStats(&m1)
	// The echo backend allocates nothing per datagram either; the test's
	// own Read/Write none. Allow the runtime some slack.
	if per := float64(m1.Mallocs-m0.Mallocs) / n; per > 0.5 {
		t.Errorf("%.2f allocations per round trip", per)
	}
}

func TestFlowSize(t *testing.T) {
	if n := unsafeSizeofFlow(); n > 96 {
		t.Errorf("flow is %d bytes; an idle flow should stay small", n)
	}
}

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }

func unsafeSizeofFlow() uintptr { return unsafe.Sizeof(flow{}) }

// TestExitIdleWaitsForFlows: --exit-idle-time treats a flow as open until
// it expires: the proxy exits only the exit idle time after that.
func TestExitIdleWaitsForFlows(t *testing.T) {
	be := udpEcho(t, "udp", "127.0.0.1:0", "")
	ln, err := activation.ListenDatagram("127.0.0.1:0", activation.DefaultSocketMode)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := backend.Parse(be.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	srv := New(Config{Listeners: []activation.Listener{ln}, Backend: []backend.Address{addr}, ExitIdleTime: 300 * time.Millisecond,
		FlowIdleTimeout: time.Second, ShutdownTimeout: -1})
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- srv.Run(context.Background()) }()
	c := udpClient(t, "127.0.0.1:0", "")
	exchange(t, c, ln.Addr().String(), []byte("x"))
	select {
	case <-done:
		t.Fatalf("exited after %v with a flow open", time.Since(start))
	case <-time.After(800 * time.Millisecond):
	}
	if srv.Stats().Flows != 1 {
		t.Fatalf("stats %+v", srv.Stats())
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
		// The flow expires a second after its datagram at the earliest,
		// and the exit idle time counts from then.
		if d := time.Since(start); d < time.Second+300*time.Millisecond {
			t.Errorf("exited after %v, before the flow expired and then the 300ms exit idle time", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("did not exit once the flow expired")
	}
}

// FuzzControlMessages: whatever a control message buffer or a sockaddr
// holds, reading it gives an answer, never a panic or an endless loop.
func FuzzControlMessages(f *testing.F) {
	f.Add(pktinfoReply(unix.IP_PKTINFO, netip.MustParseAddr("127.0.0.2")))
	f.Add(pktinfoReply(unix.IPV6_PKTINFO, netip.MustParseAddr("::1")))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 8, 0, 0, 0})
	f.Add([]byte{2, 0, 0, 53, 127, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		buf := make([]byte, len(b)+8) // aligned, as the loop's batch is
		n := copy(buf, b)
		pktinfoAddr(buf[:n])
		sockaddrAddrPort(buf[:n])
	})
}

// TestFlowHostNameBackend: a host-name backend is looked up for each new
// flow; the first datagram waits for the answer instead of being lost.
func TestFlowHostNameBackend(t *testing.T) {
	noLeak(t)
	// localhost may resolve to 127.0.0.1 or ::1 first: answer on both.
	var port string
	for attempt := 0; port == ""; attempt++ {
		be := udpEcho(t, "udp4", "127.0.0.1:0", "re:")
		_, p, _ := net.SplitHostPort(be.LocalAddr().String())
		pc, err := net.ListenPacket("udp6", "[::1]:"+p)
		switch {
		case err == nil:
			pc.Close()
			udpEcho(t, "udp6", "[::1]:"+p, "re:")
			port = p
		case !hasIPv6():
			port = p // localhost is 127.0.0.1 only
		case attempt == 5:
			t.Fatal("no port free on both 127.0.0.1 and ::1")
		}
	}
	r := startDgram(t, "127.0.0.1:0", "localhost:"+port, Config{})
	c := udpClient(t, "127.0.0.1:0", "")
	// Sent once, no retry: the reply proves the first datagram was held.
	if got, _ := exchange(t, c, r.addr, []byte("first")); string(got) != "re:first" {
		t.Fatalf("reply %q", got)
	}
	if got, _ := exchange(t, c, r.addr, []byte("second")); string(got) != "re:second" {
		t.Fatalf("reply %q", got)
	}
	if s := r.srv.Stats(); s.FlowsOpened != 1 || s.BackendErrors != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestFlowHostNameUnresolvable: a name that does not resolve closes the
// flow with a warning; the proxy goes on.
func TestFlowHostNameUnresolvable(t *testing.T) {
	r := startDgram(t, "127.0.0.1:0", "no-such-host.invalid:53", Config{ConnectTimeout: 2 * time.Second})
	c := udpClient(t, "127.0.0.1:0", "")
	c.WriteToUDPAddrPort([]byte("x"), netip.MustParseAddrPort(r.addr))
	waitFor(t, "the flow to close", func() bool { s := r.srv.Stats(); return s.FlowsOpened == 1 && s.Flows == 0 })
	if s := r.srv.Stats(); s.BackendErrors != 1 || !strings.Contains(r.logs.String(), "cannot reach the backend of a flow") {
		t.Fatalf("stats %+v, logs:\n%s", s, r.logs)
	}
}

func hasIPv6() bool {
	pc, err := net.ListenPacket("udp6", "[::1]:0")
	if err != nil {
		return false
	}
	pc.Close()
	return true
}

// TestDatagramListenerBufferRaised: a datagram listener gets a receive
// buffer that holds a reload's pause at a high rate, as far as the kernel
// lets the proxy raise it, and one larger already is left as it is.
func TestDatagramListenerBufferRaised(t *testing.T) {
	rmemMax := 212992
	if b, err := os.ReadFile("/proc/sys/net/core/rmem_max"); err == nil {
		rmemMax, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	want := 2 * min(listenerRcvbuf, rmemMax)
	if unix.Geteuid() == 0 {
		want = 2 * listenerRcvbuf // SO_RCVBUFFORCE
	}
	be := udpEcho(t, "udp", "127.0.0.1:0", "")
	ln, err := activation.ListenDatagram("127.0.0.1:0", activation.DefaultSocketMode)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := listenerFDOf(ln.Listener)
	if err != nil {
		t.Fatal(err)
	}
	r := startOn(t, ln, be.LocalAddr().String(), Config{})
	exchange(t, udpClient(t, "127.0.0.1:0", ""), r.addr, []byte("x")) // the loop is running
	if got, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF); got < want {
		t.Fatalf("listener's receive buffer %d bytes, want %d", got, want)
	}

	big, err := activation.ListenDatagram("127.0.0.1:0", activation.DefaultSocketMode)
	if err != nil {
		t.Fatal(err)
	}
	bigFD, _ := listenerFDOf(big.Listener)
	if err := unix.SetsockoptInt(bigFD, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4*listenerRcvbuf); err != nil {
		testutil.Unavailable(t, "cannot set a receive buffer past rmem_max (needs CAP_NET_ADMIN): %v", err)
	}
	r = startOn(t, big, be.LocalAddr().String(), Config{})
	exchange(t, udpClient(t, "127.0.0.1:0", ""), r.addr, []byte("x"))
	if got, _ := unix.GetsockoptInt(bigFD, unix.SOL_SOCKET, unix.SO_RCVBUF); got != 8*listenerRcvbuf {
		t.Fatalf("a larger receive buffer was changed to %d bytes", got)
	}
}

// TestUnixReplyToAFullClientDropsAlone: replies through a unix datagram
// listener go each to its client's socket; one client that never reads
// fills its own queue, and its replies are dropped and counted, while the
// replies of another client in the same batch are delivered.
func TestUnixReplyToAFullClientDropsAlone(t *testing.T) {
	dir := shortDir(t)
	be, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "be"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	be.SetDeadline(time.Now().Add(20 * time.Second))
	ln, err := activation.ListenDatagram(filepath.Join(dir, "px"), activation.DefaultSocketMode)
	if err != nil {
		t.Fatal(err)
	}
	held, unhold := holdFirstBatch(t)
	held.armed.Store(false)
	r := startPrepared(t, ln, be.LocalAddr().String(), Config{}, held.prepare)
	client := func(name string) *net.UnixConn { return unixgramClient(t, filepath.Join(dir, name), 20*time.Second) }
	px := &net.UnixAddr{Name: r.addr, Net: "unixgram"}
	buf := make([]byte, 100)
	forward := func(c *net.UnixConn, msg string) *net.UnixAddr { // client -> proxy -> backend; the flow's address
		if _, err := c.WriteToUnix([]byte(msg), px); err != nil {
			t.Fatal(err)
		}
		_, from, err := be.ReadFromUnix(buf)
		if err != nil {
			t.Fatalf("the backend got nothing: %v", err)
		}
		return from
	}
	// A never reads: its queue (net.unix.max_dgram_qlen, 512) fills.
	a := client("a")
	var flowA *net.UnixAddr
	const many = 600
	for range many {
		flowA = forward(a, "a")
		be.WriteToUnix([]byte("to a"), flowA)
	}
	waitFor(t, "every reply to A sent or dropped", func() bool {
		s := r.srv.Stats()
		return s.DatagramsOut+s.DatagramsDropped == many
	})
	b := client("b")
	flowB := forward(b, "b")
	// Hold the loop, answer A once and B five times, release: the loop
	// reads both flows in one wait, and sends their replies in one batch.
	held.armed.Store(true)
	if _, err := b.WriteToUnix([]byte("wake"), px); err != nil {
		t.Fatal(err)
	}
	recv(t, held.held, "the loop to be held")
	be.WriteToUnix([]byte("to a"), flowA)
	for i := range 5 {
		be.WriteToUnix([]byte{'0' + byte(i)}, flowB)
	}
	unhold()
	for i := range 5 {
		n, err := b.Read(buf)
		if err != nil || string(buf[:n]) != string(rune('0'+i)) {
			t.Fatalf("B's reply %d: %q, %v; stats %+v", i, buf[:max(n, 0)], err, r.srv.Stats())
		}
	}
	if s := r.srv.Stats(); s.DroppedBufferFull == 0 {
		t.Errorf("stats %+v: want A's replies dropped and counted", s)
	}
}

// TestLargestUnixDatagramGoesWhole: a unix datagram up to the 256 KiB the
// proxy reads, from a client that raised its send buffer, goes to the
// backend whole, and so does a reply that large, though the kernel gives
// the proxy's sockets smaller send buffers by default.
func TestLargestUnixDatagramGoesWhole(t *testing.T) {
	dir := shortDir(t)
	be := udpEcho(t, "unixgram", filepath.Join(dir, "be"), "")
	if err := be.(*net.UnixConn).SetWriteBuffer(2 * unixSlot); err != nil { // to send the reply back
		t.Fatal(err)
	}
	r := startDgram(t, filepath.Join(dir, "px"), be.LocalAddr().String(), Config{})
	c := unixgramClient(t, filepath.Join(dir, "c"), 10*time.Second)
	if err := c.SetWriteBuffer(2 * unixSlot); err != nil {
		t.Fatal(err)
	}
	msg := bytes.Repeat([]byte("y"), unixSlot)
	if _, err := c.WriteToUnix(msg, &net.UnixAddr{Name: r.addr, Net: "unixgram"}); err != nil {
		t.Fatalf("client write of %d bytes: %v", len(msg), err)
	}
	buf := make([]byte, 2*unixSlot)
	n, err := c.Read(buf)
	if err != nil || n != len(msg) {
		t.Fatalf("reply of %d bytes, %v; want %d; stats %+v", n, err, len(msg), r.srv.Stats())
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

// TestUnixFlowFollowsARestartedBackend: a unix datagram flow whose backend
// closed is dead for good, even when the backend binds its path again: the
// flow ends at the refusal, and the client's next datagram opens a flow to
// the backend that is there now.
func TestUnixFlowFollowsARestartedBackend(t *testing.T) {
	dir := shortDir(t)
	bePath := filepath.Join(dir, "be")
	listenBe := func() *net.UnixConn {
		os.Remove(bePath)
		be, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: bePath, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { be.Close() })
		return be
	}
	be := listenBe()
	r := startDgram(t, filepath.Join(dir, "px"), bePath, Config{})
	c := unixgramClient(t, filepath.Join(dir, "c"), 20*time.Second)
	px := &net.UnixAddr{Name: r.addr, Net: "unixgram"}
	buf := make([]byte, 64)
	c.WriteToUnix([]byte("before"), px)
	be.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := be.Read(buf); err != nil || string(buf[:n]) != "before" {
		t.Fatalf("first datagram: %q, %v", buf[:max(n, 0)], err)
	}
	be.Close()
	be = listenBe() // the backend restarts at the same path
	for i := range 50 {
		c.WriteToUnix([]byte("after"), px)
		be.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if n, err := be.Read(buf); err == nil && string(buf[:n]) == "after" {
			if i > 2 {
				t.Errorf("%d datagrams lost before the flow followed the backend", i)
			}
			return
		}
	}
	t.Fatalf("the restarted backend never got the client's datagrams; stats %+v", r.srv.Stats())
}

// unixgramClient is a unix datagram socket bound at path, closed when the
// test ends, that gives up on reads and writes after wait.
func unixgramClient(t *testing.T, path string, wait time.Duration) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(wait))
	return c
}
