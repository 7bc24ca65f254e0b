// SPDX-License-Identifier: Apache-2.0

package main_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const mib = 1 << 20

// TestForward: one inherited TCP listener, every kind of backend, and 1 MiB
// of random bytes echoed byte for byte.
func TestForward(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		backend func(t *testing.T) string // starts an echo backend, returns the argument
	}{
		{name: "tcp4", backend: func(t *testing.T) string {
			_, addr := echoTCP(t, "127.0.0.1:0")
			return addr
		}},
		{name: "ipv6 unbracketed", backend: func(t *testing.T) string {
			// "::1:PORT" splits at the last colon, as in the original.
			if !hasIPv6Loopback() {
				t.Skip("no IPv6 on lo")
			}
			_, addr := echoTCP(t, "[::1]:0")
			_, port, _ := net.SplitHostPort(addr)
			return "::1:" + port
		}},
		{name: "unix path", backend: func(t *testing.T) string {
			path := filepath.Join(shortDir(t), "backend.sock")
			echoUnix(t, path)
			return path
		}},
		{name: "abstract", backend: func(t *testing.T) string {
			name := abstractName()
			echoUnix(t, name)
			return name
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			forEachImpl(t, func(t *testing.T, im impl) {
				backend := tt.backend(t)
				fd, addr := inheritTCP(t, "web")
				start(t, im.path, launch{args: []string{backend}, fds: []inherited{fd}})
				mustEcho(t, dial(t, "tcp", addr), mib)
			})
		})
	}
}

// TestForwardBracketedIPv6: "[::1]:PORT" is accepted (the original rejects
// the bracketed form, systemd issue #35621).
func TestForwardBracketedIPv6(t *testing.T) {
	t.Parallel()
	if !hasIPv6Loopback() {
		t.Skip("no IPv6 on lo")
	}
	checkDiffers(t, "bracketed IPv6 backend, systemd #35621", func(t *testing.T, im impl) error {
		_, backend := echoTCP(t, "[::1]:0") // net.Addr prints "[::1]:PORT"
		fd, addr := inheritTCP(t, "web")
		p := start(t, im.path, launch{args: []string{backend}, fds: []inherited{fd}})
		if err := echoRoundTrip(dial(t, "tcp", addr), mib); err != nil {
			return fmt.Errorf("backend %s: %v; stderr: %s", backend, err, p.stderr.String())
		}
		return nil
	})
}

// TestForwardHostname: "localhost:PORT" is resolved per connection and every
// resolved address is tried in turn. The backend listens only on the address
// that the resolver returns last, so a proxy that tries only the first fails
// (the original's defect) wherever localhost has several addresses.
func TestForwardHostname(t *testing.T) {
	t.Parallel()
	ips, err := net.DefaultResolver.LookupIP(context.Background(), "ip", "localhost")
	if err != nil || len(ips) == 0 {
		t.Skipf("localhost does not resolve here: %v", err)
	}
	last := ips[len(ips)-1]
	if len(ips) == 1 {
		t.Logf("localhost resolves only to %v here: only single-address resolution is exercised", last)
	}
	forEachImpl(t, func(t *testing.T, im impl) {
		_, addr := echoTCP(t, net.JoinHostPort(last.String(), "0"))
		_, port, _ := net.SplitHostPort(addr)
		fd, paddr := inheritTCP(t, "web")
		start(t, im.path, launch{args: []string{"localhost:" + port}, fds: []inherited{fd}})
		err := echoRoundTrip(dial(t, "tcp", paddr), 64*1024)
		switch {
		case err == nil:
		case im.original && len(ips) > 1:
			t.Logf("the original differs as documented (it tries only the first address of %v): %v", ips, err)
		default:
			t.Fatalf("localhost:%s (backend on %v only, localhost is %v): %v", port, last, ips, err)
		}
	})
}

// halfCloseReply is what the request/reply backend answers: a large reply
// derived from the request, so a lost tail is detected.
func halfCloseReply(req []byte) []byte {
	sum := sha256.Sum256(req)
	return bytes.Repeat(sum[:], 256*1024/len(sum)) // 256 KiB
}

// TestHalfCloseClient: the client sends a request and shuts down its write
// side; the backend reads to EOF and only then replies. The reply must
// arrive in full. The original tears the connection down on the client's EOF
// and the reply is lost.
func TestHalfCloseClient(t *testing.T) {
	t.Parallel()
	checkDiffers(t, "half-close: the original drops the reply after the client's shutdown(SHUT_WR)", func(t *testing.T, im impl) error {
		ln := listenTCP(t, "127.0.0.1:0")
		serve(t, ln, func(c net.Conn) {
			req, err := io.ReadAll(c)
			if err != nil {
				return
			}
			_, _ = c.Write(halfCloseReply(req))
		})
		fd, addr := inheritTCP(t, "web")
		start(t, im.path, launch{args: []string{ln.Addr().String()}, fds: []inherited{fd}})
		c := dial(t, "tcp", addr)
		req := randomBytes(100 * 1024)
		if _, err := c.Write(req); err != nil {
			t.Fatal(err)
		}
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(c)
		want := halfCloseReply(req)
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("reading reply after %d of %d bytes: %v", len(got), len(want), err)
		}
		if !bytes.Equal(got, want) {
			return fmt.Errorf("reply: got %d bytes, want %d bytes (the reply to a half-closed request)", len(got), len(want))
		}
		return nil
	})
}

// TestHalfCloseBackend: the reverse. The backend sends a greeting and shuts
// down its write side; the client reads it to EOF and keeps sending; the
// backend receives every byte.
func TestHalfCloseBackend(t *testing.T) {
	t.Parallel()
	checkDiffers(t, "half-close: the original closes both directions on the backend's EOF", func(t *testing.T, im impl) error {
		greeting := randomBytes(64 * 1024)
		type result struct {
			n   int
			sum [32]byte
			err error
		}
		results := make(chan result, 1)
		ln := listenTCP(t, "127.0.0.1:0")
		serve(t, ln, func(c net.Conn) {
			if _, err := c.Write(greeting); err != nil {
				results <- result{err: err}
				return
			}
			closeWrite(c)
			data, err := io.ReadAll(c)
			results <- result{n: len(data), sum: sha256.Sum256(data), err: err}
		})
		fd, addr := inheritTCP(t, "web")
		start(t, im.path, launch{args: []string{ln.Addr().String()}, fds: []inherited{fd}})
		c := dial(t, "tcp", addr)
		got, err := io.ReadAll(c)
		if err != nil || !bytes.Equal(got, greeting) {
			return fmt.Errorf("greeting: got %d bytes (err %v), want %d", len(got), err, len(greeting))
		}
		// The backend's EOF has been forwarded; now the other direction.
		body := randomBytes(mib)
		if _, err := c.Write(body); err != nil {
			return fmt.Errorf("sending after the backend's EOF: %v", err)
		}
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			return fmt.Errorf("CloseWrite: %v", err)
		}
		select {
		case r := <-results:
			if r.err != nil || r.n != len(body) || r.sum != sha256.Sum256(body) {
				return fmt.Errorf("backend received %d bytes (err %v), want all %d sent after its EOF", r.n, r.err, len(body))
			}
		case <-time.After(ioTimeout):
			return errors.New("backend never saw the client's EOF")
		}
		// Both directions ended: the proxy closes the client.
		if err := closedWithoutData(c, 10*time.Second); err != nil {
			return fmt.Errorf("after both sides ended: %v", err)
		}
		return nil
	})
}

// TestTwoInheritedListeners: systemd passes several sockets (a TCP one and a
// unix one); both forward to the backend.
func TestTwoInheritedListeners(t *testing.T) {
	t.Parallel()
	forEachImpl(t, func(t *testing.T, im impl) {
		srv, backend := echoTCP(t, "127.0.0.1:0")
		tcpFD, tcpAddr := inheritTCP(t, "web")
		path := filepath.Join(shortDir(t), "front.sock")
		unixFD := inherited{file: fileOf(t, listenUnix(t, path)), name: "local"}
		start(t, im.path, launch{args: []string{backend}, fds: []inherited{tcpFD, unixFD}})
		c1 := dial(t, "tcp", tcpAddr)
		c2 := dial(t, "unix", path)
		mustEcho(t, c1, 64*1024)
		mustEcho(t, c2, 64*1024)
		if n := srv.accepted.Load(); n != 2 {
			t.Errorf("backend accepted %d connections, want 2", n)
		}
	})
}

// TestListen: --listen binds listeners itself (unix path, @abstract, TCP
// 127.0.0.1 and [::1]), repeatable, and combines with inherited sockets.
// The original has no --listen.
func TestListen(t *testing.T) {
	t.Parallel()
	type front struct{ network, arg, dial string }
	tests := []struct {
		name    string
		inherit bool
		fronts  func(t *testing.T) []front
	}{
		{name: "unix path", fronts: func(t *testing.T) []front {
			p := filepath.Join(shortDir(t), "l.sock")
			return []front{{"unix", p, p}}
		}},
		{name: "abstract", fronts: func(t *testing.T) []front {
			n := abstractName()
			return []front{{"unix", n, n}}
		}},
		{name: "tcp 127.0.0.1", fronts: func(t *testing.T) []front {
			a := freeTCPAddr(t, "tcp4", "127.0.0.1")
			return []front{{"tcp", a, a}}
		}},
		{name: "tcp [::1]", fronts: func(t *testing.T) []front {
			if !hasIPv6Loopback() {
				t.Skip("no IPv6 on lo")
			}
			a := freeTCPAddr(t, "tcp6", "::1") // "[::1]:PORT"
			return []front{{"tcp", a, a}}
		}},
		{name: "repeated", fronts: func(t *testing.T) []front {
			p := filepath.Join(shortDir(t), "l.sock")
			n := abstractName()
			return []front{{"unix", p, p}, {"unix", n, n}}
		}},
		{name: "with inherited", inherit: true, fronts: func(t *testing.T) []front {
			p := filepath.Join(shortDir(t), "l.sock")
			return []front{{"unix", p, p}}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			checkDiffers(t, "--listen is new", func(t *testing.T, im impl) error {
				srv, backend := echoTCP(t, "127.0.0.1:0")
				var inhAddr string
				var fds []inherited
				if tt.inherit {
					var fd inherited
					fd, inhAddr = inheritTCP(t, "web")
					fds = []inherited{fd}
				}
				var fronts []front
				var conns []net.Conn
				// A TCP port from freeTCPAddr may be taken in between: then the
				// proxy fails to bind it, and we try again with another.
				for attempt := 1; conns == nil; attempt++ {
					fronts = tt.fronts(t)
					l := launch{fds: fds}
					for _, f := range fronts {
						l.args = append(l.args, "--listen", f.arg)
					}
					l.args = append(l.args, backend)
					p := start(t, im.path, l)
					for _, f := range fronts {
						c, err := dialUntil(p, f.network, f.dial, 10*time.Second)
						if err != nil {
							if p.exited() && strings.Contains(p.stderr.String(), "in use") && attempt < 3 {
								conns = nil
								break
							}
							return err
						}
						conns = append(conns, c)
					}
				}
				want := 0
				for _, c := range conns {
					mustEcho(t, c, 64*1024)
					want++
				}
				if tt.inherit {
					mustEcho(t, dial(t, "tcp", inhAddr), 64*1024)
					want++
				}
				if n := srv.accepted.Load(); n != int64(want) {
					t.Errorf("backend accepted %d connections, want %d", n, want)
				}
				return nil
			})
		})
	}
}

// dialUntil dials addr until the proxy has bound it, failing early if the
// proxy exits.
func dialUntil(p *proc, network, addr string, d time.Duration) (net.Conn, error) {
	var c net.Conn
	var last error
	err := poll(d, func() bool {
		if p.exited() {
			return true
		}
		c, last = net.DialTimeout(network, addr, ioTimeout)
		return last == nil
	}, func() string { return fmt.Sprintf("dial %s %s: %v", network, addr, last) })
	if err != nil {
		return nil, err
	}
	if c == nil {
		return nil, fmt.Errorf("exited with status %d before %s was dialled; stderr:\n%s",
			p.state.ExitCode(), addr, p.stderr.String())
	}
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	p.t.Cleanup(func() { c.Close() })
	return c, nil
}

// TestConnectionLimit: with -c 2, exactly two connections are proxied at
// once; the third is accepted and closed at once without reaching the
// backend; when one closes, a new client gets through. The original admits
// N+1.
func TestConnectionLimit(t *testing.T) {
	t.Parallel()
	checkDiffers(t, "exact limit: the original admits N+1", func(t *testing.T, im impl) error {
		srv, backend := echoTCP(t, "127.0.0.1:0")
		fd, addr := inheritTCP(t, "web")
		p := start(t, im.path, launch{args: []string{"-c", "2", backend}, fds: []inherited{fd}})
		c1 := dial(t, "tcp", addr)
		mustEcho(t, c1, 1000)
		c2 := dial(t, "tcp", addr)
		mustEcho(t, c2, 1000)

		c3 := dial(t, "tcp", addr)
		_, _ = c3.Write([]byte("x")) // an admitted client would get this echoed
		if err := closedWithoutData(c3, 10*time.Second); err != nil {
			return fmt.Errorf("third client with -c 2: %v (backend accepted %d)", err, srv.accepted.Load())
		}
		if n := srv.accepted.Load(); n != 2 {
			return fmt.Errorf("backend accepted %d connections, want 2", n)
		}
		// The first two are still proxied.
		mustEcho(t, c1, 1000)
		mustEcho(t, c2, 1000)

		// One closes; a new client gets through (once the proxy noticed).
		c1.Close()
		var admitted bool
		err := poll(10*time.Second, func() bool {
			c, err := net.DialTimeout("tcp", addr, ioTimeout)
			if err != nil {
				return false
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(ioTimeout))
			admitted = echoRoundTrip(c, 1000) == nil
			return admitted
		}, func() string { return "no new client admitted after one of two closed" })
		if err != nil {
			return fmt.Errorf("%v; stderr:\n%s", err, p.stderr.String())
		}
		mustEcho(t, c2, 1000)
		return nil
	})
}

// TestBackendUnavailable: the backend is not there; the client is closed at
// once, one warning line names the backend, and the proxy keeps serving: once
// the backend appears, the next client gets through.
func TestBackendUnavailable(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		backend func(t *testing.T) (arg string, appear func())
	}{
		{name: "unix path missing", backend: func(t *testing.T) (string, func()) {
			path := filepath.Join(shortDir(t), "later.sock")
			return path, func() { echoUnix(t, path) }
		}},
		{name: "abstract missing", backend: func(t *testing.T) (string, func()) {
			name := abstractName()
			return name, func() { echoUnix(t, name) }
		}},
		{name: "tcp refused", backend: func(t *testing.T) (string, func()) {
			addr := freeTCPAddr(t, "tcp4", "127.0.0.1")
			return addr, func() {
				ln, err := net.Listen("tcp", addr)
				if err != nil {
					t.Skipf("port %s was taken in between: %v", addr, err)
				}
				t.Cleanup(func() { ln.Close() })
				serve(t, ln, echo)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			forEachImpl(t, func(t *testing.T, im impl) {
				backend, appear := tt.backend(t)
				fd, addr := inheritTCP(t, "web")
				p := start(t, im.path, launch{args: atOnce(im, backend), fds: []inherited{fd}})
				c := dial(t, "tcp", addr)
				if err := closedWithoutData(c, 10*time.Second); err != nil {
					t.Fatalf("client of an unavailable backend: %v", err)
				}
				if !im.original {
					// One warning line naming the client and the backend.
					client := c.LocalAddr().String()
					if err := p.waitStderr(client, 10*time.Second); err != nil {
						t.Error(err)
					}
				}
				appear()
				mustEcho(t, dial(t, "tcp", addr), 64*1024)
				if p.exited() {
					t.Fatalf("proxy exited")
				}
				if !im.original {
					var lines []string
					for _, line := range strings.Split(p.stderr.String(), "\n") {
						if strings.Contains(line, backend) && strings.Contains(line, c.LocalAddr().String()) {
							lines = append(lines, line)
						}
					}
					if len(lines) != 1 {
						t.Errorf("%d stderr lines name client %s and backend %s, want 1:\n%s",
							len(lines), c.LocalAddr(), backend, p.stderr.String())
					}
				}
			})
		})
	}
}

// TestUnixListenerNotUnlinked: closing an inherited unix listener (here on
// SIGTERM) must not remove systemd's socket file.
func TestUnixListenerNotUnlinked(t *testing.T) {
	t.Parallel()
	forEachImpl(t, func(t *testing.T, im impl) {
		_, backend := echoTCP(t, "127.0.0.1:0")
		path := filepath.Join(shortDir(t), "front.sock")
		fd := inherited{file: fileOf(t, listenUnix(t, path)), name: "local"}
		p := start(t, im.path, launch{args: atOnce(im, backend), fds: []inherited{fd}})
		mustEcho(t, dial(t, "unix", path), 1000)
		p.signal(os.Interrupt)
		p.waitExit(10 * time.Second)
		if _, err := os.Lstat(path); err != nil {
			t.Errorf("socket file of the inherited listener: %v", err)
		}
	})
}

// TestResetPropagates: a reset on one side closes the other side promptly,
// instead of leaving it half-open.
func TestResetPropagates(t *testing.T) {
	t.Parallel()
	t.Run("backend resets", func(t *testing.T) {
		t.Parallel()
		forEachImpl(t, func(t *testing.T, im impl) {
			ln := listenTCP(t, "127.0.0.1:0")
			serve(t, ln, func(c net.Conn) {
				var b [1]byte
				if _, err := io.ReadFull(c, b[:]); err != nil {
					return
				}
				_ = c.(*net.TCPConn).SetLinger(0) // Close sends RST
			})
			fd, addr := inheritTCP(t, "web")
			start(t, im.path, launch{args: []string{ln.Addr().String()}, fds: []inherited{fd}})
			c := dial(t, "tcp", addr)
			if _, err := c.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			if err := closedWithoutData(c, 10*time.Second); err != nil {
				t.Fatalf("client after the backend's reset: %v", err)
			}
		})
	})
	t.Run("client resets", func(t *testing.T) {
		t.Parallel()
		forEachImpl(t, func(t *testing.T, im impl) {
			ended := make(chan error, 1)
			ln := listenTCP(t, "127.0.0.1:0")
			serve(t, ln, func(c net.Conn) {
				var b [1]byte
				if _, err := io.ReadFull(c, b[:]); err != nil {
					ended <- err
					return
				}
				_, err := io.Copy(io.Discard, c) // until the proxy closes us
				ended <- err
			})
			fd, addr := inheritTCP(t, "web")
			start(t, im.path, launch{args: []string{ln.Addr().String()}, fds: []inherited{fd}})
			c := dial(t, "tcp", addr)
			if _, err := c.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			_ = c.(*net.TCPConn).SetLinger(0)
			c.Close()
			select {
			case <-ended: // EOF or reset: either way the proxy closed it
			case <-time.After(10 * time.Second):
				t.Fatal("backend connection still open 10s after the client's reset")
			}
		})
	})
}

// TestManyClients: 64 clients at once, each echoing 256 KiB, all intact.
func TestManyClients(t *testing.T) {
	t.Parallel()
	const clients = 64
	forEachImpl(t, func(t *testing.T, im impl) {
		path := filepath.Join(shortDir(t), "b.sock")
		srv := echoUnix(t, path)
		fd, addr := inheritTCP(t, "web")
		start(t, im.path, launch{args: []string{path}, fds: []inherited{fd}})
		errs := make(chan error, clients)
		for i := 0; i < clients; i++ {
			go func() {
				c, err := net.DialTimeout("tcp", addr, ioTimeout)
				if err != nil {
					errs <- err
					return
				}
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(ioTimeout))
				errs <- echoRoundTrip(c, 256*1024)
			}()
		}
		for i := 0; i < clients; i++ {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
		if n := srv.accepted.Load(); n != clients {
			t.Errorf("backend accepted %d connections, want %d", n, clients)
		}
	})
}

// TestInheritedWithoutNames: without LISTEN_FDNAMES (systemd before 227, or
// a hand-made launcher) the sockets are used all the same.
func TestInheritedWithoutNames(t *testing.T) {
	t.Parallel()
	forEachImpl(t, func(t *testing.T, im impl) {
		_, backend := echoTCP(t, "127.0.0.1:0")
		fd1, addr1 := inheritTCP(t, "")
		fd2, addr2 := inheritTCP(t, "")
		start(t, im.path, launch{args: []string{backend}, fds: []inherited{fd1, fd2}, noNames: true})
		mustEcho(t, dial(t, "tcp", addr1), 1000)
		mustEcho(t, dial(t, "tcp", addr2), 1000)
	})
}

// TestBackendDefaultPort: a backend without a port means port 80, as in the
// original. Needs 127.0.0.1:80 free and bindable (root).
func TestBackendDefaultPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:80")
	if err != nil {
		t.Skipf("cannot listen on 127.0.0.1:80: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	serve(t, ln, echo)
	forEachImpl(t, func(t *testing.T, im impl) {
		fd, addr := inheritTCP(t, "web")
		start(t, im.path, launch{args: []string{"127.0.0.1"}, fds: []inherited{fd}})
		mustEcho(t, dial(t, "tcp", addr), 1000)
	})
}
