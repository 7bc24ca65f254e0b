// SPDX-License-Identifier: Apache-2.0

package main_test

// Datagrams and sequential packets, black-box: sockets passed
// the way a .socket unit with ListenDatagram= and ListenSequentialPacket=
// passes them, the --listen-datagram and --listen-sequential-packet forms,
// a real dig through the proxy to a real dnsmasq over UDP and TCP on one
// port, and the start-up errors.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/testutil"
)

// echoPackets serves a datagram socket (UDP or unixgram) that sends each
// datagram back to its sender, prefixed.
func echoPackets(t *testing.T, network, addr, prefix string) string {
	return replyPackets(t, network, addr, func(net.Addr) string { return prefix })
}

// replyPackets serves a datagram socket that sends each datagram back to
// its sender (one that has an address), after prefix(sender); it returns
// the socket's address.
func replyPackets(t *testing.T, network, addr string, prefix func(from net.Addr) string) string {
	t.Helper()
	return testutil.EchoPackets(t, network, addr, prefix).LocalAddr().String()
}

// echoMessages sends each message of a seqpacket connection back whole
// (echo's io.Copy would cut it at its buffer size).
func echoMessages(c net.Conn) {
	buf := make([]byte, 300000)
	for {
		n, err := c.Read(buf)
		if err != nil {
			closeWrite(c)
			return
		}
		if _, err := c.Write(buf[:n]); err != nil {
			return
		}
	}
}

// askDatagram sends msg from c to addr and waits for the reply.
func askDatagram(t *testing.T, c net.PacketConn, to net.Addr, msg string) string {
	t.Helper()
	c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := c.WriteTo([]byte(msg), to); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 70000)
	n, _, err := c.ReadFrom(buf)
	if err != nil {
		t.Fatalf("no reply to %q: %v", msg, err)
	}
	return string(buf[:n])
}

// TestEveryKindOfSocket: one proxy serves a UDP socket, a unix datagram
// socket, a unix seqpacket socket and a TCP socket, passed as systemd
// passes them, each to its backend by name, and STATUS= counts the flows.
func TestEveryKindOfSocket(t *testing.T) {
	t.Parallel()
	dir := shortDir(t)
	udpBackend := echoPackets(t, "udp", "127.0.0.1:0", "udp:")
	unixBackend := echoPackets(t, "unixgram", filepath.Join(dir, "dg-be"), "unix:")
	seqBackend := filepath.Join(dir, "seq-be")
	serve(t, listenSeqpacket(t, seqBackend), echoMessages)
	_, tcpBackend := echoTCP(t, "127.0.0.1:0")

	udp := listenUDP(t)
	unixgram, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "dg"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unixgram.Close() })
	seq := listenSeqpacket(t, filepath.Join(dir, "seq"))
	tcpFD, tcpAddr := inheritTCP(t, "web")

	n := newNotifyReceiver(t)
	p := start(t, binary, launch{
		args: []string{tcpBackend, "--backend", "dns=" + udpBackend, "--backend", "log=" + unixBackend, "--backend", "pkt=" + seqBackend},
		fds: []inherited{{file: fileOf(t, udp), name: "dns"}, {file: fileOf(t, unixgram), name: "log"},
			{file: fileOf(t, seq), name: "pkt"}, tcpFD},
		env: []string{n.env(), "SYSTEMD_LOG_LEVEL=debug"},
	})
	if err := n.wait("READY=1", 10*time.Second); err != nil {
		t.Fatal(err)
	}

	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := askDatagram(t, c, udp.LocalAddr(), "hello"); got != "udp:hello" {
		t.Errorf("UDP reply %q", got)
	}

	uc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "cli"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	if got := askDatagram(t, uc, unixgram.LocalAddr(), "hello"); got != "unix:hello" {
		t.Errorf("unix datagram reply %q", got)
	}

	sc := dial(t, "unixpacket", filepath.Join(dir, "seq"))
	for _, msg := range []string{"one", strings.Repeat("x", 70000)} {
		if _, err := sc.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 100000)
	for _, want := range []int{3, 70000} {
		k, err := sc.Read(buf)
		if err != nil || k != want {
			t.Fatalf("seqpacket message of %d bytes (%v), want %d", k, err, want)
		}
	}

	mustEcho(t, dial(t, "tcp", tcpAddr), 1000)

	err = poll(10*time.Second, func() bool {
		for _, m := range n.messages() {
			if strings.HasPrefix(m, "STATUS=") && strings.Contains(m, "2 flows, 4 datagrams") {
				return true
			}
		}
		return false
	}, func() string { return fmt.Sprintf("no STATUS= with 2 flows: %q", n.messages()) })
	if err != nil {
		t.Fatal(err)
	}
	if s := p.stderr.String(); strings.Contains(s, "level=WARN") || strings.Contains(s, "<4>") {
		t.Errorf("warnings:\n%s", s)
	}
}

// TestSameNameTCPAndUDPTakeOwnBackends: a socket unit with ListenStream=53
// and ListenDatagram=53 names both descriptors after itself, and --listen
// and --listen-datagram of one address name both after it: NAME/tcp and
// NAME/udp send each to a backend of its own, and the log lines say which
// socket is which.
func TestSameNameTCPAndUDPTakeOwnBackends(t *testing.T) {
	t.Parallel()
	udpBackend := echoPackets(t, "udp", "127.0.0.1:0", "udp:")
	_, tcpBackend := echoTCP(t, "127.0.0.1:0")
	_, otherTCP := echoTCP(t, "127.0.0.1:0")
	udp := listenUDP(t)
	tcpFD, tcpAddr := inheritTCP(t, "dns.socket")
	p := start(t, binary, launch{
		args: []string{otherTCP, "--backend", "dns.socket/udp=" + udpBackend, "--backend", "dns.socket/tcp=" + tcpBackend,
			"--listen", "127.0.0.1:0", "--listen-datagram", "127.0.0.1:0", "--backend", "127.0.0.1:0/udp=" + udpBackend},
		fds: []inherited{{file: fileOf(t, udp), name: "dns.socket"}, tcpFD},
	})
	for _, want := range []string{
		"listening listener=dns.socket/udp fd=3 address=" + udp.LocalAddr().String() + " backend=" + udpBackend + "\n",
		"listening listener=dns.socket/tcp fd=4 address=" + tcpAddr + " backend=" + tcpBackend + "\n",
		"listening listener=127.0.0.1:0/tcp ",
		"listening listener=127.0.0.1:0/udp ",
	} {
		if err := p.waitStderr(want, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := askDatagram(t, c, udp.LocalAddr(), "hello"); got != "udp:hello" {
		t.Errorf("UDP reply %q", got)
	}
	mustEcho(t, dial(t, "tcp", tcpAddr), 1000)
	m := regexp.MustCompile(`listener=127\.0\.0\.1:0/udp address=(127\.0\.0\.1:[0-9]+) `).FindStringSubmatch(p.stderr.String())
	if m == nil {
		t.Fatalf("no line names the --listen-datagram port:\n%s", p.stderr.String())
	}
	to, _ := net.ResolveUDPAddr("udp", m[1])
	if got := askDatagram(t, c, to, "again"); got != "udp:again" {
		t.Errorf("--listen-datagram reply %q", got)
	}
}

// TestListenDatagramOptions: --listen-datagram and --listen-sequential-packet
// bind their sockets, which are served and, for paths, removed at exit.
func TestListenDatagramOptions(t *testing.T) {
	t.Parallel()
	dir := shortDir(t)
	udpBackend := echoPackets(t, "udp", "127.0.0.1:0", "re:")
	seqBackend := filepath.Join(dir, "seq-be")
	serve(t, listenSeqpacket(t, seqBackend), echo)
	dgPath, seqPath := filepath.Join(dir, "dg"), filepath.Join(dir, "seq")
	hold, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	udpAddr := hold.LocalAddr().String()
	hold.Close()
	p := start(t, binary, launch{args: []string{udpBackend,
		"--listen-datagram=" + udpAddr, "--listen-datagram", dgPath,
		"--listen-sequential-packet=" + seqPath, "--backend", seqPath + "=" + seqBackend}})
	var c net.Conn
	if err := poll(10*time.Second, func() bool {
		var err error
		c, err = net.Dial("unixpacket", seqPath)
		return err == nil
	}, func() string { return "the proxy never listened:\n" + p.stderr.String() }); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mustEcho(t, c, 1000)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	to, _ := net.ResolveUDPAddr("udp", udpAddr)
	if got := askDatagram(t, pc, to, "x"); got != "re:x" {
		t.Errorf("reply %q", got)
	}
	c.Close()
	p.signal(os.Interrupt) // the flow does not hold up the stop: it is closed
	if code := p.waitExit(10 * time.Second); code != 0 {
		t.Fatalf("exit status %d", code)
	}
	for _, path := range []string{dgPath, seqPath} {
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind: %v", path, err)
		}
	}
}

// TestDatagramStartupErrors: what a datagram or seqpacket socket cannot
// do is said at start-up, naming the socket and the fix.
func TestDatagramStartupErrors(t *testing.T) {
	t.Parallel()
	dir := shortDir(t)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"PROXY v1 on datagrams", []string{"--listen-datagram=127.0.0.1:0", "--proxy-protocol=v1", "127.0.0.1:53"}, "use --proxy-protocol=v2"},
		{"seqpacket to TCP", []string{"--listen-sequential-packet=" + filepath.Join(dir, "s"), "127.0.0.1:53"}, "must be a unix socket too"},
		{"seqpacket on a port", []string{"--listen-sequential-packet=127.0.0.1:5", "/run/x"}, "sequential packets are unix only"},
		{"datagram without a port", []string{"--listen-datagram=127.0.0.1", "127.0.0.1:53"}, "has no port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := run(t, binary, launch{args: tt.args})
			if code != 1 || !strings.Contains(stderr, tt.want) || strings.Count(stderr, "\n") > 2 {
				t.Errorf("exit %d, stderr %q; want 1 and %q", code, stderr, tt.want)
			}
		})
	}
}

// startDnsmasq runs a real DNS server on 127.0.0.1, TCP and UDP on one
// port, that answers A and AAAA for *.example.test (192.0.2.1,
// 2001:db8::1), until the test ends; it returns its address.
func startDnsmasq(t *testing.T) string {
	t.Helper()
	dnsmasq := testutil.RequireTool(t, "dnsmasq", "dnsmasq-base")
	// dnsmasq binds its own port for both protocols: find one free for both.
	var server string
	var srv *exec.Cmd
	for attempt := 0; ; attempt++ {
		server = freeTCPAddr(t, "tcp", "127.0.0.1")
		_, port, _ := net.SplitHostPort(server)
		var stderr bytes.Buffer
		srv = exec.Command(dnsmasq, "--keep-in-foreground", "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
			"--listen-address=127.0.0.1", "--bind-interfaces", "--port="+port, "--pid-file=", "--user=root",
			"--address=/example.test/192.0.2.1", "--address=/example.test/2001:db8::1")
		srv.Stderr = &stderr
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { srv.Wait(); close(done) }()
		t.Cleanup(func() { srv.Process.Kill(); <-done })
		if err := poll(10*time.Second, func() bool {
			select {
			case <-done:
				return true
			default:
			}
			c, err := net.Dial("tcp", server)
			if err == nil {
				c.Close()
			}
			return err == nil
		}, func() string { return "dnsmasq did not start: " + stderr.String() }); err != nil {
			t.Fatal(err)
		}
		select {
		case <-done:
			if attempt < 3 {
				continue // the port was taken meanwhile
			}
			t.Fatalf("dnsmasq exited: %s", stderr.String())
		default:
		}
		break
	}

	return server
}

// listenBothOnOnePort listens on a TCP and a UDP socket of one port of
// 127.0.0.1, as a .socket unit with ListenStream= and ListenDatagram= of
// one port passes them; the UDP socket is closed when the test ends.
func listenBothOnOnePort(t *testing.T) (*net.TCPListener, *net.UDPConn) {
	t.Helper()
	var tcpLn *net.TCPListener
	var udpConn *net.UDPConn
	var err error
	for attempt := 0; udpConn == nil; attempt++ {
		tcpLn = listenTCP(t, "127.0.0.1:0")
		udpConn, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: tcpLn.Addr().(*net.TCPAddr).Port})
		if err != nil && attempt == 5 {
			t.Fatalf("no port free for both TCP and UDP: %v", err)
		}
	}
	t.Cleanup(func() { udpConn.Close() })
	return tcpLn, udpConn
}

// TestDigThroughProxy: a real resolver and a real server. dnsmasq answers
// on 127.0.0.1 at a high port; one proxy process holds a stream socket and
// a datagram socket on one port, as a .socket unit with ListenStream=53
// and ListenDatagram=53 passes them; dig asks through it over UDP and TCP.
func TestDigThroughProxy(t *testing.T) {
	t.Parallel()
	dig := testutil.RequireTool(t, "dig", "bind9-dnsutils")
	server := startDnsmasq(t)

	// One port, both kinds, as systemd passes them.
	tcpLn, udpConn := listenBothOnOnePort(t)
	proxyPort := tcpLn.Addr().(*net.TCPAddr).Port
	p := start(t, binary, launch{args: []string{server},
		fds: []inherited{{file: fileOf(t, tcpLn), name: "dns-tcp"}, {file: fileOf(t, udpConn), name: "dns-udp"}}})

	for _, mode := range []string{"+notcp", "+tcp"} {
		for _, q := range []struct{ typ, want string }{{"A", "192.0.2.1"}, {"AAAA", "2001:db8::1"}} {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			out, err := exec.CommandContext(ctx, dig, "@127.0.0.1", "-p", fmt.Sprint(proxyPort), mode, "+short", "+time=5", "+tries=2",
				"example.test", q.typ).CombinedOutput()
			cancel()
			if err != nil || strings.TrimSpace(string(out)) != q.want {
				t.Errorf("dig %s %s: %q, %v; want %s\nproxy stderr:\n%s", mode, q.typ, out, err, q.want, p.stderr.String())
			}
		}
	}
}

// TestFlowLimitAndExpiry: -c counts connections, not flows: at -c 1 a
// second datagram client is served, and a TCP client too; past
// --flows-max a new client's flow takes the place of the oldest answered
// one, with one warning that names the option; a flow expires after
// --idle-timeout.
func TestFlowLimitAndExpiry(t *testing.T) {
	t.Parallel()
	backend := echoPackets(t, "udp", "127.0.0.1:0", "re:")
	udp := listenUDP(t)
	p := start(t, binary, launch{args: []string{"-c", "1", "--flows-max=1", "--idle-timeout=1s", backend},
		fds: []inherited{{file: fileOf(t, udp), name: "dns"}}, env: []string{"SYSTEMD_LOG_LEVEL=debug"}})
	var clients []net.PacketConn
	for i := range 3 {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got := askDatagram(t, c, udp.LocalAddr(), "a"); got != "re:a" {
			t.Fatalf("client %d: reply %q", i, got)
		}
		clients = append(clients, c)
	}
	if err := p.waitStderr(`flow limit reached, closing the least recently active flows to make room for new clients listener=dns/udp max_flows=1 hint="raise it with --flows-max"`, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(p.stderr.String(), "warning flow limit reached"); n != 1 {
		t.Errorf("%d warnings for 2 evictions, want 1:\n%s", n, p.stderr)
	}
	// The first client's flow was evicted: it is served in a new one.
	if got := askDatagram(t, clients[0], udp.LocalAddr(), "b"); got != "re:b" {
		t.Fatalf("reply %q", got)
	}
	// Idle for 1s (plus the sweep's granularity), the flow expires.
	if err := p.waitStderr("flow closed client="+clients[0].LocalAddr().String()+" listener=dns/udp reason=idle", 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestProxyProtocolPerDatagram: --proxy-protocol=v2 on a datagram socket
// puts a header (UDP over IPv4, the client and the address it sent to) on
// every datagram.
func TestProxyProtocolPerDatagram(t *testing.T) {
	t.Parallel()
	be, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	udp, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { udp.Close() })
	start(t, binary, launch{args: []string{"--proxy-protocol=v2", be.LocalAddr().String()},
		fds: []inherited{{file: fileOf(t, udp), name: "dns"}}})
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	to := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: udp.LocalAddr().(*net.UDPAddr).Port}
	be.SetReadDeadline(time.Now().Add(ioTimeout))
	for _, msg := range []string{"one", "two"} {
		c.WriteTo([]byte(msg), to)
		buf := make([]byte, 100)
		n, _, err := be.ReadFrom(buf)
		if err != nil {
			t.Fatal(err)
		}
		h := buf[:n]
		cport := c.LocalAddr().(*net.UDPAddr).Port
		want := append([]byte("\r\n\r\n\x00\r\nQUIT\n\x21\x12\x00\x0c"), 127, 0, 0, 1, 127, 0, 0, 2,
			byte(cport>>8), byte(cport), byte(to.Port>>8), byte(to.Port))
		if !bytes.Equal(h, append(want, msg...)) {
			t.Fatalf("datagram % x, want % x", h, append(want, msg...))
		}
	}
}

// freeTCPAddr returns a 127.0.0.1 address that was free a moment ago: the
// one pick-close-reuse left in the tests, for dnsmasq, which binds its own
// port for both protocols and takes no inherited socket; its caller
// retries when the port was taken in between.
func freeTCPAddr(t *testing.T, network, host string) string {
	t.Helper()
	ln, err := net.Listen(network, net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestRepliesBehindAnICMPErrorArrive: an ICMP error other than "port
// unreachable" (here "host prohibited", what a firewall's REJECT sends)
// that lands on a flow's socket behind the backend's replies is taken off
// by a read before them; the replies still reach the client. The proxy
// is stopped while the replies and the error land, so that one wake-up
// finds them all. Needs CAP_NET_RAW to send the ICMP error.
func TestRepliesBehindAnICMPErrorArrive(t *testing.T) {
	t.Parallel()
	raw, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err != nil {
		t.Skipf("an ICMP error needs a raw socket (CAP_NET_RAW): %v", err)
	}
	defer unix.Close(raw)
	be := listenUDP(t)
	udp := listenUDP(t)
	p := start(t, binary, launch{args: []string{be.LocalAddr().String()}, fds: []inherited{{file: fileOf(t, udp), name: "dns"}}})
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.WriteTo([]byte("q"), udp.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	be.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64)
	_, flow, err := be.ReadFromUDP(buf)
	if err != nil {
		t.Fatalf("the backend got nothing: %v", err)
	}
	p.signal(syscall.SIGSTOP)
	for _, r := range []string{"r1", "r2"} {
		if _, err := be.WriteToUDP([]byte(r), flow); err != nil {
			t.Fatal(err)
		}
	}
	sendICMPHostProhibited(t, raw, be.LocalAddr().(*net.UDPAddr), flow)
	p.signal(syscall.SIGCONT)
	var got []string
	for range 2 {
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			t.Fatalf("after %q: %v (the replies behind the ICMP error stayed in the flow's socket)", got, err)
		}
		got = append(got, string(buf[:n]))
	}
	if got[0] != "r1" || got[1] != "r2" {
		t.Errorf("the client got %q, want r1 and r2", got)
	}
}

// sendICMPHostProhibited sends, as from the backend's address, the ICMP
// error "destination unreachable, host prohibited" (type 3, code 10) for a
// datagram from flow to backend, which the kernel hands to flow's socket.
func sendICMPHostProhibited(t *testing.T, raw int, backend, flow *net.UDPAddr) {
	t.Helper()
	// The datagram it is about: an IPv4 header and the UDP header.
	inner := make([]byte, 28)
	inner[0], inner[8], inner[9] = 0x45, 64, unix.IPPROTO_UDP
	put16(inner[2:], 28)
	copy(inner[12:16], flow.IP.To4())
	copy(inner[16:20], backend.IP.To4())
	put16(inner[10:], inetChecksum(inner[:20]))
	put16(inner[20:], uint16(flow.Port))
	put16(inner[22:], uint16(backend.Port))
	put16(inner[24:], 8)
	icmp := append([]byte{3, 10, 0, 0, 0, 0, 0, 0}, inner...)
	put16(icmp[2:], inetChecksum(icmp))
	to := &unix.SockaddrInet4{}
	copy(to.Addr[:], flow.IP.To4())
	if err := unix.Sendto(raw, icmp, 0, to); err != nil {
		t.Fatalf("sending the ICMP error: %v", err)
	}
}

// put16 writes v at b[0:2] in network order.
func put16(b []byte, v uint16) { b[0], b[1] = byte(v>>8), byte(v) }

// inetChecksum is the Internet checksum (RFC 1071) of b.
func inetChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// TestLargestMessageWithProcSysHidden: the largest message goes whole when
// /proc/sys cannot be read, as under ProcSubset=pid, which the shipped
// units set: the proxy learns the most a sender's buffer holds from a
// socket, not from net.core.wmem_max's file (hidden here in a mount
// namespace of the proxy's own).
func TestLargestMessageWithProcSysHidden(t *testing.T) {
	t.Parallel()
	unshare := lookTool(t, "unshare", "util-linux")
	if os.Geteuid() != 0 {
		t.Skip("hiding /proc/sys takes a mount namespace: root only")
	}
	dir := shortDir(t)
	seqBackend, seqPath := filepath.Join(dir, "seq-be"), filepath.Join(dir, "seq")
	got := make(chan int, 1)
	serve(t, listenSeqpacket(t, seqBackend), func(c net.Conn) {
		buf := make([]byte, 16<<20)
		n, _ := c.Read(buf)
		got <- n
	})
	p := start(t, unshare, launch{args: []string{"-m", "sh", "-c",
		`mount --bind /dev/null /proc/sys/net/core/wmem_max && exec "$0" "$@"`, binary,
		"--listen-sequential-packet", seqPath, seqBackend}})
	c := dialRetry(t, "unixpacket", seqPath, 10*time.Second).(*net.UnixConn)
	if err := c.SetWriteBuffer(1 << 30); err != nil { // the kernel gives twice wmem_max
		t.Fatal(err)
	}
	const size = 1 << 20 // past the 256 KiB the proxy falls back to, within any wmem_max's double
	if _, err := c.Write(make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-got:
		if n != size {
			t.Fatalf("the backend read a message of %d bytes, want %d:\n%s", n, size, p.stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no message reached the backend:\n%s", p.stderr.String())
	}
}

// TestLargestMessageAfterAStartOutOfDescriptors: the largest message is
// learnt at the start, not at the first message, which may come when the
// process has no descriptor to spare for learning it: a first connection
// out of descriptors, and every one after it, still carry messages of
// 1 MiB.
func TestLargestMessageAfterAStartOutOfDescriptors(t *testing.T) {
	t.Parallel()
	dir := shortDir(t)
	seqBackend, seqPath := filepath.Join(dir, "seq-be"), filepath.Join(dir, "seq")
	got, accepted := make(chan int, 2), make(chan struct{}, 2)
	serve(t, listenSeqpacket(t, seqBackend), func(c net.Conn) {
		accepted <- struct{}{}
		buf := make([]byte, 16<<20)
		n, _ := c.Read(buf)
		got <- n
	})
	p := start(t, binary, launch{args: []string{"--listen-sequential-packet", seqPath, seqBackend}})
	first := dialRetry(t, "unixpacket", seqPath, 10*time.Second).(*net.UnixConn)
	<-accepted // the proxy holds both of its sockets
	const size = 1 << 20
	send := func(c *net.UnixConn) {
		t.Helper()
		if err := c.SetWriteBuffer(1 << 30); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(make([]byte, size)); err != nil {
			t.Fatal(err)
		}
		select {
		case n := <-got:
			if n != size {
				t.Fatalf("the backend read a message of %d bytes, want %d:\n%s", n, size, p.stderr.String())
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no message reached the backend:\n%s", p.stderr.String())
		}
	}
	// No room for a descriptor more.
	limit := firstFreeDescriptor(t, p.cmd.Process.Pid)
	lim := unix.Rlimit{Cur: uint64(limit), Max: 1024}
	if err := unix.Prlimit(p.cmd.Process.Pid, unix.RLIMIT_NOFILE, &lim, nil); err != nil {
		t.Fatal(err)
	}
	send(first)
	lim.Cur = 1024
	unix.Prlimit(p.cmd.Process.Pid, unix.RLIMIT_NOFILE, &lim, nil)
	send(dial(t, "unixpacket", seqPath).(*net.UnixConn))
}
