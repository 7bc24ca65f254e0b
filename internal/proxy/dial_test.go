// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"
	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/proxyproto"
	"github.com/socket-proxyd/socket-proxyd/internal/testutil"
)

// TestConnectDoneHangupWithoutError: the event that ends a connect in
// progress may carry EPOLLHUP (or EPOLLERR) while SO_ERROR says nothing went
// wrong; with EPOLLOUT the connect is done and the connection goes on
// (dial.go, connectDone: "err == nil && e == 0", "ev&unix.EPOLLOUT == 0").
// The kernel does not produce it on loopback, so the test hook adds
// EPOLLHUP to the backend socket's first event: generation 2, the first
// connection's backend side (its client side is 1).
func TestConnectDoneHangupWithoutError(t *testing.T) {
	noLeak(t)
	var injected atomic.Bool
	ln, err := activation.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	back := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	p := startPrepared(t, ln, back, Config{ConnectTimeout: 20 * time.Second}, func(s *Server) {
		s.testBatch = func(events []unix.EpollEvent, n int) int {
			for i := range events[:n] {
				if ev := &events[i]; ev.Pad == 2 && !injected.Load() {
					if ev.Events&unix.EPOLLOUT == 0 {
						t.Errorf("the backend socket's first event is %#x, not the connect's EPOLLOUT", ev.Events)
					}
					ev.Events |= unix.EPOLLHUP
					injected.Store(true)
				}
			}
			return n
		}
	})
	c := dial(t, p.addr)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "ping" {
		t.Fatalf("echo: %q, %v; injected %v\n%s", got, err, injected.Load(), p.logs)
	}
	if !injected.Load() {
		t.Fatal("the hook saw no event of the backend socket")
	}
}

// TestLookupWaitersBounded: clients that come and go while the lookup of
// their backend's name hangs leave entries in its list of waiters, which
// is compacted so that it stays within twice the clients still waiting
// (plus 16): each one that goes is counted out (connection.go, release:
// "c.state == stateResolving" calls leaveLookup). The hook reads the list
// on the loop's goroutine.
func TestLookupWaitersBounded(t *testing.T) {
	const clients = 300
	var srv *Server
	peak, peakLive := 0, 0
	var mu sync.Mutex
	ln, err := activation.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := startPrepared(t, ln, "backend.invalid:80", Config{Resolver: silentResolver(t), ConnectTimeout: time.Hour}, func(s *Server) {
		srv = s
		s.testBatch = func(events []unix.EpollEvent, n int) int {
			if l := srv.loop.Load(); l != nil {
				mu.Lock()
				for _, lk := range l.lookups {
					peak, peakLive = max(peak, len(lk.waiting)), max(peakLive, lk.live)
				}
				mu.Unlock()
			}
			return n
		}
	})
	for i := range clients {
		if err := resetClient(p.addr); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		// One at a time, so that few wait at once and the bound is tight.
		waitFor(t, "the client to be gone", func() bool {
			st := p.srv.Stats()
			return st.Accepted == int64(i+1) && st.Active == 0
		})
	}
	mu.Lock()
	defer mu.Unlock()
	// One client waits at a time: 2*1+16 entries at most.
	if peak > 18 {
		t.Errorf("%d entries in the lookup's list at the peak (its count of waiters: %d), one client waiting at a time, after %d clients: gone clients are not counted out", peak, peakLive, clients)
	}
	t.Logf("at most %d entries, %d clients waiting", peak, peakLive)
}

// TestLookupCompactionKeepsWaiters: compacting a lookup's list of waiters
// drops the clients that went and keeps the one still waiting, which is
// served when the answer comes (dial.go, waitLookup: "l.waiter(d) == nil"
// in the compaction).
func TestLookupCompactionKeepsWaiters(t *testing.T) {
	noLeak(t)
	addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	_, port, _ := net.SplitHostPort(addr)
	dns := fakeDNS(t, [4]byte{127, 0, 0, 1})
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		select { // the answer waits until the list has been compacted
		case <-release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		var d net.Dialer
		return d.DialContext(ctx, "udp", dns)
	}}
	p := start(t, "one.spx.test:"+port, Config{Resolver: resolver, ConnectTimeout: 20 * time.Second})
	c := dial(t, p.addr)
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the client to be accepted", func() bool { return p.srv.Stats().Accepted == 1 })
	for i := range 40 { // gone clients: past 2*live+16 entries, so the list is compacted
		if err := resetClient(p.addr); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		waitFor(t, "the client to be gone", func() bool {
			st := p.srv.Stats()
			return st.Accepted == int64(i+2) && st.Active == 1
		})
	}
	once.Do(func() { close(release) })
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "ping" {
		t.Fatalf("the waiting client got %q, %v: it was dropped from the lookup\n%s", got, err, tail(p.logs.String(), 5))
	}
}

// TestConnectDeadlineSilentBackend: a backend that never answers the SYN
// closes the client once ConnectTimeout has passed, not after the kernel's
// SYN retries (about two minutes), with a warning that says it timed out.
func TestConnectDeadlineSilentBackend(t *testing.T) {
	noLeak(t)
	const timeout = 700 * time.Millisecond
	silent := testutil.SilentTCP(t)
	p := start(t, silent, Config{ConnectTimeout: timeout})
	c := dial(t, p.addr)
	c.Write([]byte("hello"))
	took := closedWithin(t, c, timeout+10*time.Second)
	if took < timeout-50*time.Millisecond {
		t.Errorf("closed after %v, before the %v connect timeout", took, timeout)
	}
	waitFor(t, "the warning", func() bool { return strings.Contains(p.logs.String(), "timed out") })
	if st := p.srv.Stats(); st.BackendErrors != 1 {
		t.Errorf("BackendErrors %d, want 1", st.BackendErrors)
	}
}

// TestHostNameTriesEveryAddress: a host name with two addresses, from a
// resolver of the test's own (Config.Resolver on a fake DNS server): the
// first, 127.0.0.2, refuses (nothing listens there: the reset comes as an
// event on the connecting socket); the second, 127.0.0.1, is the backend.
// (An address whose connect fails at once, such as a multicast one, cannot
// be put first: Go's resolver sorts addresses it cannot route to last,
// RFC 6724 rule 1.) Every connection must reach it at once, in
// its first round, with no backend error.
func TestHostNameTriesEveryAddress(t *testing.T) {
	noLeak(t)
	addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	_, port, _ := net.SplitHostPort(addr)
	dns := fakeDNS(t, [4]byte{127, 0, 0, 2}, [4]byte{127, 0, 0, 1})
	var queries atomic.Int64
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		queries.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, "udp", dns)
	}}
	ips, err := resolver.LookupHost(t.Context(), "two.spx.test")
	if want := "127.0.0.2 127.0.0.1"; err != nil || strings.Join(ips, " ") != want {
		t.Fatalf("the fake DNS server gives %v, %v; want %s in that order", ips, err, want)
	}
	// A connect timeout too short for a retry round to succeed unnoticed:
	// a proxy that tries only the first address fails the clients.
	p := start(t, "two.spx.test:"+port, Config{Resolver: resolver, ConnectTimeout: 300 * time.Millisecond})
	for range 3 {
		roundTrip(t, p.addr, []byte("through the second address"))
	}
	if st := p.srv.Stats(); st.BackendErrors != 0 {
		t.Fatalf("%d backend errors:\n%s", st.BackendErrors, p.logs)
	}
	if queries.Load() < 2 {
		t.Errorf("the proxy did not use Config.Resolver (%d queries)", queries.Load())
	}
}

// TestFullUnixBacklogIsRetried: a unix backend whose accept queue is full
// makes connect say EAGAIN; like a refusal, that is a backend not keeping
// up, retried until the connect timeout, so the client is served once the
// backend accepts again (systemd #2105's reasoning).
func TestFullUnixBacklogIsRetried(t *testing.T) {
	noLeak(t)
	path := filepath.Join(shortDir(t), "busy.sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	lnFile := os.NewFile(uintptr(fd), "busy")
	t.Cleanup(func() { lnFile.Close() })
	err = unix.Bind(fd, &unix.SockaddrUnix{Name: path})
	if err == nil {
		err = unix.Listen(fd, 0)
	}
	if err != nil {
		t.Fatal(err)
	}
	// Fill the queue with connects nobody accepts yet.
	var queued []int
	defer func() {
		for _, q := range queued {
			unix.Close(q)
		}
	}()
	for i := 0; ; i++ {
		cfd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		queued = append(queued, cfd)
		err = unix.Connect(cfd, &unix.SockaddrUnix{Name: path})
		if err == unix.EAGAIN {
			break
		}
		if err != nil || i == 16 {
			t.Fatalf("filling the backlog: connect %d: %v", i, err)
		}
	}
	p := start(t, path, Config{ConnectTimeout: 10 * time.Second})
	c := dial(t, p.addr)
	c.Write([]byte("hello"))
	waitFor(t, "the client to be accepted", func() bool { return p.srv.Stats().Accepted == 1 })
	time.Sleep(100 * time.Millisecond) // the scenario: the backend is busy for a while
	if st := p.srv.Stats(); st.BackendErrors != 0 {
		t.Fatalf("the client of a busy backend was given up on at once:\n%s", p.logs)
	}
	ln, err := net.FileListener(lnFile)
	if err != nil {
		t.Fatal(err)
	}
	serveBackend(t, ln, echo) // accepts the queued ones too: they end when closed, below
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "hello" {
		t.Fatalf("client of a backend that was busy: %q, %v\n%s", got, err, p.logs)
	}
	c.Close() // before the backend's cleanup, which waits for its handlers
}

// resetClient connects and resets at once (SO_LINGER 0).
func resetClient(addr string) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	c.(*net.TCPConn).SetLinger(0)
	return c.Close()
}

// TestLookupsEndWithTheirClient: a flood of clients that connect and reset
// against a backend host name whose DNS server never answers. Each lookup
// must end with its client, and lookups whose client has gone count
// against the limit until they return, so the goroutines stay bounded by
// -c (today's main kept each one for the whole connect timeout: 150,000
// lookups and 393 MiB after 5 s at -c 4).
func TestLookupsEndWithTheirClient(t *testing.T) {
	const limit = 4
	base := runtime.NumGoroutine()
	p := start(t, "backend.invalid:80", Config{
		MaxConnections: limit, Resolver: silentResolver(t), ConnectTimeout: time.Hour,
	})
	peak := 0
	for i := range 2000 {
		if err := resetClient(p.addr); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		if i%50 == 0 {
			peak = max(peak, runtime.NumGoroutine()-base)
		}
	}
	// The resolver goroutines, plus a few of the runtime's and the
	// resolver's own per lookup in flight: bounded by the limit, not by
	// the number of clients.
	if peak > 8*limit+16 {
		t.Fatalf("%d goroutines above the start after 2000 clients at -c %d: lookups outlive their clients", peak, limit)
	}
	waitFor(t, "the lookups of the gone clients to end", func() bool {
		return runtime.NumGoroutine()-base <= 8 && p.srv.Stats().Active == 0
	})
	if st := p.srv.Stats(); st.Refused == 0 {
		t.Logf("stats %+v: no client was refused (the lookups ended fast enough)", st)
	}
}

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

// TestWaitingForABackendIsLoggedAtOnce: the warning comes when the connect
// timeout gives up; a debug line says at the first failed round why the
// client waits, naming the backend and the error.
func TestWaitingForABackendIsLoggedAtOnce(t *testing.T) {
	noLeak(t)
	addr := filepath.Join(shortDir(t), "never.sock")
	p := start(t, addr, Config{ConnectTimeout: time.Minute})
	c := dial(t, p.addr)
	defer c.Close()
	waitFor(t, "the debug line", func() bool {
		return strings.Contains(p.logs.String(), "backend not reachable yet, retrying until the connect timeout")
	})
	if logs := p.logs.String(); !strings.Contains(logs, "backend="+addr) || !strings.Contains(logs, "no such file or directory") || !strings.Contains(logs, "timeout=1m0s") {
		t.Errorf("the line does not say which backend, why and until when:\n%s", logs)
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

// TestHostNameBackend: a host name is resolved off the loop, and every
// address it resolves to is tried in turn, so "localhost" works for a
// backend on 127.0.0.1 alone even where ::1 comes first.
func TestHostNameBackend(t *testing.T) {
	noLeak(t)
	addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	_, port, _ := net.SplitHostPort(addr)
	if ips, err := net.LookupHost("localhost"); err != nil || len(ips) == 0 {
		testutil.Unavailable(t, "localhost does not resolve here: %v", err)
	}
	p := start(t, "localhost:"+port, Config{})
	for range 3 {
		roundTrip(t, p.addr, randomBytes(t, 100<<10))
	}
	if st := p.srv.Stats(); st.BackendErrors != 0 {
		t.Fatalf("%d backend errors:\n%s", st.BackendErrors, p.logs)
	}
}
