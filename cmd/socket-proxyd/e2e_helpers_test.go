// SPDX-License-Identifier: Apache-2.0

package main_test

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/testutil"
)

// raceEnabled reports whether this test binary was built with -race; the
// binary under test is then built with -race too.
var raceEnabled = func() bool {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range info.Settings {
		if s.Key == "-race" && s.Value == "true" {
			return true
		}
	}
	return false
}()

// ioTimeout bounds every read and write of a test connection, so a broken
// proxy fails a test instead of hanging it.
const ioTimeout = 20 * time.Second

// listener creation

func listenTCP(t *testing.T, addr string) *net.TCPListener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// listenUnix listens on a unix path or an @abstract name. The test's copy
// never unlinks the path, so a test can tell whether the proxy did.
func listenUnix(t *testing.T, addr string) *net.UnixListener {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: addr, Net: "unix"})
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	ln.SetUnlinkOnClose(false)
	t.Cleanup(func() { ln.Close() })
	return ln
}

// abstractName is a fresh abstract unix socket name, "@spx-...".
func abstractName() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return "@spx-" + hex.EncodeToString(b[:])
}

// fileOf returns a dup of a listener's fd, for passing it to the child. It
// is closed when the test ends (the child has its own copy).
func fileOf(t *testing.T, ln interface{ File() (*os.File, error) }) *os.File {
	t.Helper()
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// inheritTCP creates a listening TCP socket on 127.0.0.1 for the child and
// returns it with its address.
func inheritTCP(t *testing.T, name string) (inherited, string) {
	t.Helper()
	ln := listenTCP(t, "127.0.0.1:0")
	return inherited{file: fileOf(t, ln), name: name}, ln.Addr().String()
}

// listeningTCP polls until the process pid listens on TCP sockets of its
// own (--listen 127.0.0.1:0 binds a port the kernel picks) and returns
// their addresses, read from /proc/PID/net/tcp{,6} for the socket inodes
// in /proc/PID/fd. No port is picked, closed and reused, so none is raced
// for.
func listeningTCP(p *proc, want int, d time.Duration) ([]string, error) {
	var addrs []string
	err := poll(d, func() bool {
		addrs = listeningTCPOf(p.cmd.Process.Pid)
		return len(addrs) >= want || p.exited()
	}, func() string {
		return fmt.Sprintf("pid %d listens on %d TCP sockets of the %d wanted within %v; stderr:\n%s",
			p.cmd.Process.Pid, len(addrs), want, d, p.stderr.String())
	})
	if err == nil && len(addrs) < want {
		err = fmt.Errorf("exited before listening; stderr:\n%s", p.stderr.String())
	}
	return addrs, err
}

func listeningTCPOf(pid int) []string {
	dir := fmt.Sprintf("/proc/%d/", pid)
	inodes := map[string]bool{}
	entries, _ := os.ReadDir(dir + "fd")
	for _, e := range entries {
		link, _ := os.Readlink(dir + "fd/" + e.Name())
		if ino, ok := strings.CutPrefix(link, "socket:["); ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	var addrs []string
	for _, table := range []string{"net/tcp", "net/tcp6"} {
		b, _ := os.ReadFile(dir + table)
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			// sl local_address rem_address st ... inode (field 9)
			if len(f) < 10 || f[3] != "0A" || !inodes[f[9]] {
				continue
			}
			if a, err := procNetAddr(f[1]); err == nil {
				addrs = append(addrs, a)
			}
		}
	}
	return addrs
}

// procNetAddr decodes /proc/net/tcp's "0100007F:1F90" (the address in host
// byte order, 32 bits at a time) into "127.0.0.1:8080".
func procNetAddr(s string) (string, error) {
	hexIP, hexPort, ok := strings.Cut(s, ":")
	raw, err := hex.DecodeString(hexIP)
	if !ok || err != nil || (len(raw) != 4 && len(raw) != 16) {
		return "", fmt.Errorf("bad address %q", s)
	}
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		return "", err
	}
	ip := make(net.IP, len(raw))
	for i := 0; i < len(raw); i += 4 {
		ip[i], ip[i+1], ip[i+2], ip[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
	}
	return net.JoinHostPort(ip.String(), strconv.Itoa(int(port))), nil
}

// refusingTCP holds a 127.0.0.1 port bound but not listening, so connects
// to it are refused, and returns its address and a func that starts
// listening on that very socket: no port is given up and raced for.
func refusingTCP(t *testing.T) (string, func() net.Listener) {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "refusing")
	t.Cleanup(func() { f.Close() })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
	return addr, func() net.Listener {
		if err := syscall.Listen(fd, 128); err != nil {
			t.Fatal(err)
		}
		ln, err := net.FileListener(f) // a dup: f's cleanup closes the original
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		return ln
	}
}

// hasIPv6Loopback reports whether ::1 can be bound here.
func hasIPv6Loopback() bool {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// backends

// server runs handle for every connection accepted on ln, and on Cleanup
// closes the listener and all connections and waits for every goroutine.
type server struct {
	ln       net.Listener
	accepted atomic.Int64
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
}

func serve(t *testing.T, ln net.Listener, handle func(net.Conn)) *server {
	t.Helper()
	s := &server{ln: ln, conns: make(map[net.Conn]struct{})}
	s.wg.Add(1)
	go s.acceptLoop(handle)
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *server) acceptLoop(handle func(net.Conn)) {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.accepted.Add(1)
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
			_ = c.SetDeadline(time.Now().Add(ioTimeout))
			handle(c)
		}()
	}
}

// echo copies everything back, then ends its write side. The wrappers keep
// io.Copy from trying to splice a socket into itself.
func echo(c net.Conn) {
	_, _ = io.Copy(struct{ io.Writer }{c}, struct{ io.Reader }{c})
	closeWrite(c)
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

// echoTCP starts an echo backend on addr ("127.0.0.1:0", "[::1]:0").
func echoTCP(t *testing.T, addr string) (*server, string) {
	t.Helper()
	ln := listenTCP(t, addr)
	return serve(t, ln, echo), ln.Addr().String()
}

// echoUnix starts an echo backend on a unix path or @abstract name.
func echoUnix(t *testing.T, addr string) *server {
	t.Helper()
	return serve(t, listenUnix(t, addr), echo)
}

// clients

func dial(t *testing.T, network, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout(network, addr, ioTimeout)
	if err != nil {
		t.Fatalf("dial %s %s: %v", network, addr, err)
	}
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	t.Cleanup(func() { c.Close() })
	return c
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return b
}

// echoRoundTrip sends n random bytes through c while reading them back, and
// checks that exactly the same bytes come back.
func echoRoundTrip(c net.Conn, n int) error {
	payload := randomBytes(n)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		werr <- err
	}()
	got := make([]byte, n)
	k, rerr := io.ReadFull(c, got)
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %v", err)
	}
	if rerr != nil {
		return fmt.Errorf("read back %d of %d bytes: %v", k, n, rerr)
	}
	if !bytes.Equal(got, payload) {
		i := 0
		for i < n && got[i] == payload[i] {
			i++
		}
		return fmt.Errorf("echoed bytes differ from byte %d of %d", i, n)
	}
	return nil
}

// mustEcho is echoRoundTrip that fails the test.
func mustEcho(t *testing.T, c net.Conn, n int) {
	t.Helper()
	if err := echoRoundTrip(c, n); err != nil {
		t.Fatal(err)
	}
}

// closedWithoutData reads from c and reports nil if the peer closed it (EOF
// or reset) without sending anything; data or a timeout is an error.
func closedWithoutData(c net.Conn, d time.Duration) error {
	_ = c.SetReadDeadline(time.Now().Add(d))
	var buf [64]byte
	k, err := c.Read(buf[:])
	switch {
	case k > 0:
		return fmt.Errorf("got %d bytes %q, want the connection closed without data", k, buf[:k])
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return nil
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("connection still open after %v, want it closed at once", d)
	default:
		return fmt.Errorf("read: %v", err)
	}
}

// requireIPv6 makes the test Unavailable where ::1 cannot be bound.
func requireIPv6(t *testing.T) {
	t.Helper()
	if !hasIPv6Loopback() {
		testutil.Unavailable(t, "no IPv6 on lo (::1)")
	}
}

// dialRetry dials until something listens on addr (a socket the proxy
// binds itself), within d.
func dialRetry(t *testing.T, network, addr string, d time.Duration) net.Conn {
	t.Helper()
	var c net.Conn
	err := poll(d, func() bool {
		var err error
		c, err = net.DialTimeout(network, addr, ioTimeout)
		return err == nil
	}, func() string { return fmt.Sprintf("nothing listening on %s %s within %v", network, addr, d) })
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	t.Cleanup(func() { c.Close() })
	return c
}

// listenUDP binds a UDP socket on 127.0.0.1, closed when the test ends.
func listenUDP(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// listenSeqpacket listens on a unix sequential-packet socket at path,
// closed when the test ends.
func listenSeqpacket(t *testing.T, path string) *net.UnixListener {
	t.Helper()
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}
