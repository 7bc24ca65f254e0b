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
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
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

// freeTCPAddr returns a 127.0.0.1 address that was free a moment ago. Only
// for programs that must bind themselves (--listen, systemd-socket-activate);
// callers that can retry on a lost race do.
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

// dialRetry dials until the proxy has bound addr itself (--listen, or
// systemd-socket-activate), within d.
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
