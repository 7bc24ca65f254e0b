// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/backend"
	"github.com/socket-proxyd/socket-proxyd/internal/proxyproto"
)

// Tests of the options of issue 4, over real sockets: connect retries,
// idle timeout, keepalive, PROXY protocol, backends per listener and the
// graceful stop.

// TestBackendAppearsLater: the backend starts listening 1.5 s after the
// first client connected and sent its request; the client gets its reply
// (systemd #2105), over TCP (ECONNREFUSED meanwhile) and a unix path
// (ENOENT meanwhile).
func TestBackendAppearsLater(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			t.Parallel()
			noLeak(t)
			var addr string
			if network == "tcp" {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				addr = ln.Addr().String()
				ln.Close() // refused until the backend comes
			} else {
				addr = filepath.Join(shortDir(t), "late.sock")
			}
			p := start(t, addr, Config{ConnectTimeout: 10 * time.Second})
			c := dial(t, p.addr)
			if _, err := c.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			time.Sleep(1500 * time.Millisecond) // the scenario: a backend that is slow to start
			listenBackend(t, network, addr, echo)
			got := make([]byte, 5)
			if _, err := io.ReadFull(c, got); err != nil || string(got) != "hello" {
				t.Fatalf("first client got %q, %v; logs:\n%s", got, err, p.logs)
			}
			c.Close() // before the backend's cleanup, which waits for its handlers
			if st := p.srv.Stats(); st.BackendErrors != 0 {
				t.Fatalf("%d backend errors", st.BackendErrors)
			}
		})
	}
}

// TestRefusedWithoutRetryFailsAtOnce: a negative ConnectTimeout
// (--connect-timeout=0) tries once; a refused client is closed at once.
func TestRefusedWithoutRetryFailsAtOnce(t *testing.T) {
	noLeak(t)
	addr := filepath.Join(shortDir(t), "none.sock")
	p := start(t, addr, Config{ConnectTimeout: -1})
	begin := time.Now()
	c := dial(t, p.addr)
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("client of a missing backend got data")
	}
	if took := time.Since(begin); took > time.Second {
		t.Fatalf("closed after %v, want at once", took)
	}
	waitFor(t, "the warning", func() bool { return strings.Contains(p.logs.String(), "no such file") })
	if strings.Contains(p.logs.String(), "retried_for") {
		t.Errorf("retried with retries off:\n%s", p.logs)
	}
}

// TestRetriesUntilTheDeadline: a backend that never comes closes the
// client once ConnectTimeout has passed, with one warning saying how long
// it was retried.
func TestRetriesUntilTheDeadline(t *testing.T) {
	noLeak(t)
	addr := filepath.Join(shortDir(t), "never.sock")
	p := start(t, addr, Config{ConnectTimeout: 400 * time.Millisecond})
	begin := time.Now()
	c := dial(t, p.addr)
	c.Write([]byte("waiting"))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("client of a missing backend got data")
	}
	took := time.Since(begin)
	if took < 400*time.Millisecond || took > 5*time.Second {
		t.Fatalf("closed after %v, want after the 400ms connect timeout", took)
	}
	waitFor(t, "the warning", func() bool { return strings.Contains(p.logs.String(), "retried_for") })
	if n := strings.Count(p.logs.String(), "cannot connect to backend"); n != 1 {
		t.Errorf("%d warnings, want 1:\n%s", n, p.logs)
	}
	if st := p.srv.Stats(); st.BackendErrors != 1 {
		t.Errorf("BackendErrors %d", st.BackendErrors)
	}
}

// TestIdleTimeout closes a silent connection and not a busy one.
func TestIdleTimeout(t *testing.T) {
	noLeak(t)
	addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	// A busy client's pace (an exchange every 50 ms) must stay far inside
	// the timeout even under -race on a loaded 2-core machine: a 1 s gap
	// would be a false failure. TestIdleTimeoutBounds checks the bounds.
	const idle = time.Second
	p := start(t, addr, Config{IdleTimeout: idle})
	silent := dial(t, p.addr)
	busy := dial(t, p.addr)
	silent.Write([]byte("ping"))
	io.ReadFull(silent, make([]byte, 4))
	begin := time.Now()
	// The busy one talks every 50 ms for 2 idle timeouts.
	for time.Since(begin) < 2*idle {
		if _, err := busy.Write([]byte("ping")); err != nil {
			t.Fatalf("busy connection: %v", err)
		}
		if _, err := io.ReadFull(busy, make([]byte, 4)); err != nil {
			t.Fatalf("busy connection closed after %v: %v", time.Since(begin), err)
		}
		time.Sleep(50 * time.Millisecond) // the pace of the busy client
	}
	silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := silent.Read(make([]byte, 1))
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("silent connection still open after %v: %v", time.Since(begin), err)
	}
	if st := p.srv.Stats(); st.Active != 1 {
		t.Errorf("%d active, want the busy one", st.Active)
	}
}

// TestKeepAliveOnBothSides reads the keepalive options of the proxy's own
// sockets (this process's) with getsockopt.
func TestKeepAliveOnBothSides(t *testing.T) {
	tests := []struct {
		name                string
		keepAlive           time.Duration
		on                  bool
		idle, intvl, probes int
	}{
		{name: "default", keepAlive: 0, on: true, idle: 60, intvl: 15, probes: 4},
		{name: "20s", keepAlive: 20 * time.Second, on: true, idle: 20, intvl: 5, probes: 4},
		{name: "2s", keepAlive: 2 * time.Second, on: true, idle: 2, intvl: 1, probes: 4},
		{name: "off", keepAlive: -1, on: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			noLeak(t)
			backendConns := make(chan net.Conn, 1)
			addr := listenBackend(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
				backendConns <- c
				echo(c)
			})
			p := start(t, addr, Config{KeepAlive: tt.keepAlive})
			c := dial(t, p.addr)
			c.Write([]byte("ping"))
			io.ReadFull(c, make([]byte, 4))
			b := recv(t, backendConns, "the backend connection")
			front := socketBetween(t, p.addr, c.LocalAddr().String())
			back := socketBetween(t, b.RemoteAddr().String(), addr)
			for side, fd := range map[string]int{"client side": front, "backend side": back} {
				on, _ := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
				if (on != 0) != tt.on {
					t.Errorf("%s: SO_KEEPALIVE %d, want %v", side, on, tt.on)
				}
				if !tt.on {
					continue
				}
				idle, _ := syscall.GetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE)
				intvl, _ := syscall.GetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL)
				probes, _ := syscall.GetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT)
				if idle != tt.idle || intvl != tt.intvl || probes != tt.probes {
					t.Errorf("%s: idle %d, interval %d, probes %d; want %d, %d, %d", side, idle, intvl, probes, tt.idle, tt.intvl, tt.probes)
				}
			}
		})
	}
}

// proxyBackend is a backend that reads a PROXY header with the reference
// library, then echoes; it hands the header over.
func proxyBackend(t *testing.T, network, addr string) (string, chan *pp.Header) {
	headers := make(chan *pp.Header, 4)
	return listenBackend(t, network, addr, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		r := bufio.NewReader(c)
		h, err := pp.Read(r)
		if err != nil {
			t.Errorf("backend: PROXY header: %v", err)
			return
		}
		headers <- h
		io.Copy(c, r)
		c.(interface{ CloseWrite() error }).CloseWrite()
	}), headers
}

func TestProxyProtocolTCP(t *testing.T) {
	for _, v := range []proxyproto.Version{proxyproto.V1, proxyproto.V2} {
		t.Run(v.String(), func(t *testing.T) {
			noLeak(t)
			addr, headers := proxyBackend(t, "tcp", "127.0.0.1:0")
			p := start(t, addr, Config{ProxyProtocol: v})
			payload := randomBytes(t, 1<<20)
			c := dial(t, p.addr)
			go func() {
				c.Write(payload)
				c.CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, payload) {
				t.Fatalf("echo after the header: %d bytes of %d, %v", len(got), len(payload), err)
			}
			h := recv(t, headers, "the PROXY header")
			if h.Version != map[proxyproto.Version]byte{proxyproto.V1: 1, proxyproto.V2: 2}[v] {
				t.Errorf("header version %d", h.Version)
			}
			if h.TransportProtocol != pp.TCPv4 || h.Command != pp.PROXY {
				t.Errorf("header %v %v, want TCPv4 PROXY", h.TransportProtocol, h.Command)
			}
			if h.SourceAddr.String() != c.LocalAddr().String() || h.DestinationAddr.String() != p.addr {
				t.Errorf("header says %s -> %s, want %s -> %s", h.SourceAddr, h.DestinationAddr, c.LocalAddr(), p.addr)
			}
			// The header is not the client's: the counters leave it out.
			if st := p.srv.Stats(); st.BytesIn != int64(len(payload)) {
				t.Errorf("BytesIn %d, want %d", st.BytesIn, len(payload))
			}
		})
	}
}

func TestProxyProtocolUnixClient(t *testing.T) {
	for _, v := range []proxyproto.Version{proxyproto.V1, proxyproto.V2} {
		t.Run(v.String(), func(t *testing.T) {
			noLeak(t)
			dir := shortDir(t)
			addr, headers := proxyBackend(t, "unix", filepath.Join(dir, "b"))
			ln, err := activation.Listen(filepath.Join(dir, "f"))
			if err != nil {
				t.Fatal(err)
			}
			p := startOn(t, ln, addr, Config{ProxyProtocol: v})
			c, err := net.Dial("unix", p.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write([]byte("hi"))
			if _, err := io.ReadFull(c, make([]byte, 2)); err != nil {
				t.Fatal(err)
			}
			h := recv(t, headers, "the PROXY header")
			// The library reads v1's "PROXY UNKNOWN" as LOCAL too.
			if h.TransportProtocol != pp.UNSPEC || h.Command != pp.LOCAL {
				t.Errorf("header %v %v for a unix client, want UNSPEC LOCAL", h.TransportProtocol, h.Command)
			}
		})
	}
}

// TestBackendsPerListener: two listeners, each with its own backend.
func TestBackendsPerListener(t *testing.T) {
	noLeak(t)
	named := func(name string) func(net.Conn) {
		return func(c net.Conn) { c.Write([]byte(name)) }
	}
	a := listenBackend(t, "tcp", "127.0.0.1:0", named("alpha"))
	b := listenBackend(t, "unix", filepath.Join(shortDir(t), "b"), named("beta"))
	ba, _ := backend.Parse(b)
	lnA, err := activation.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lnB, err := activation.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lnB.Name = "beta"
	p := startOn(t, lnA, a, Config{
		Listeners: []activation.Listener{lnB},
		Backends:  map[string][]backend.Address{"beta": {ba}},
	})
	for addr, want := range map[string]string{lnA.Addr().String(): "alpha", lnB.Addr().String(): "beta"} {
		c := dial(t, addr)
		got, err := io.ReadAll(c)
		if err != nil || string(got) != want {
			t.Errorf("client of %s got %q, %v; want %q", addr, got, err, want)
		}
	}
	_ = p
}

// startStoppable runs a proxy whose Run the test waits for itself.
func startStoppable(t *testing.T, backendAddr string, cfg Config) (*running, activation.Listener) {
	t.Helper()
	ln, err := activation.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr, err := backend.Parse(backendAddr)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	cfg.Listeners = []activation.Listener{ln}
	cfg.Backend = []backend.Address{addr}
	cfg.Log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{srv: New(cfg), addr: ln.Addr().String(), logs: logs, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- r.srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		r.srv.CloseConnections()
		recv(t, r.done, "Run to return")
	})
	return r, ln
}

// slowBackend answers each request line with size bytes, sent in pieces
// while release is open, then the rest once it is closed.
func slowReply(release <-chan struct{}, size int) func(net.Conn) {
	return func(c net.Conn) {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := c.Read(make([]byte, 16)); err != nil {
			return
		}
		reply := bytes.Repeat([]byte("r"), size)
		c.Write(reply[:size/2])
		<-release
		c.Write(reply[size/2:])
	}
}

// TestGracefulStop: when ctx ends the listener closes at once, the
// connection in the middle of its reply gets all of it, and Run returns
// once it is done.
func TestGracefulStop(t *testing.T) {
	noLeak(t)
	release := make(chan struct{})
	addr := listenBackend(t, "tcp", "127.0.0.1:0", slowReply(release, 1<<20))
	p, _ := startStoppable(t, addr, Config{ShutdownTimeout: 20 * time.Second})
	c := dial(t, p.addr)
	c.Write([]byte("GET"))
	if _, err := io.ReadFull(c, make([]byte, 1<<19)); err != nil {
		t.Fatal(err)
	}
	p.cancel()
	// Stopped accepting: the listener is gone.
	waitFor(t, "the listener to close", func() bool {
		c, err := net.Dial("tcp", p.addr)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	select {
	case <-p.done:
		t.Fatal("Run returned with a connection in the middle of its reply")
	default:
	}
	close(release)
	rest, err := io.ReadAll(c)
	if err != nil || len(rest) != 1<<19 {
		t.Fatalf("rest of the reply: %d bytes, %v", len(rest), err)
	}
	c.Close() // the client is done too: the connection ends
	select {
	case err := <-p.done:
		p.done <- err
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return once the last connection closed")
	}
}

// TestGracefulStopTimesOut: a connection still open after ShutdownTimeout
// is closed, and CloseConnections cuts the wait short.
func TestGracefulStopTimesOut(t *testing.T) {
	for _, name := range []string{"timeout", "CloseConnections"} {
		t.Run(name, func(t *testing.T) {
			noLeak(t)
			release := make(chan struct{})
			defer close(release)
			addr := listenBackend(t, "tcp", "127.0.0.1:0", slowReply(release, 1<<10))
			timeout := 300 * time.Millisecond
			if name == "CloseConnections" {
				timeout = time.Hour
			}
			p, _ := startStoppable(t, addr, Config{ShutdownTimeout: timeout})
			c := dial(t, p.addr)
			c.Write([]byte("GET"))
			io.ReadFull(c, make([]byte, 1<<9))
			begin := time.Now()
			p.cancel()
			if name == "CloseConnections" {
				p.srv.CloseConnections()
			}
			select {
			case err := <-p.done:
				p.done <- err
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return")
			}
			if took := time.Since(begin); name == "timeout" && took < timeout {
				t.Errorf("returned after %v, before the shutdown timeout", took)
			}
			if _, err := io.ReadAll(c); err == nil {
				t.Error("the connection cut short ended with a clean EOF, want a reset")
			}
		})
	}
}

// TestGracefulStopRetryingConnection: a client waiting for its backend
// when the stop comes still gets served once the backend is up.
func TestGracefulStopRetryingConnection(t *testing.T) {
	noLeak(t)
	addr := filepath.Join(shortDir(t), "late.sock")
	p, _ := startStoppable(t, addr, Config{ShutdownTimeout: 20 * time.Second})
	c := dial(t, p.addr)
	c.Write([]byte("hello"))
	waitFor(t, "the retry", func() bool { return p.srv.Stats().Active == 1 })
	p.cancel()
	listenBackend(t, "unix", addr, echo)
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("client waiting for the backend at stop: %v", err)
	}
	c.CloseWrite()
	io.ReadAll(c)
	c.Close()
	select {
	case err := <-p.done:
		p.done <- err
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	fmt.Fprint(io.Discard, got)
}
