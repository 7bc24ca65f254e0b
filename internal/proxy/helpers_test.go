// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/backend"
	"github.com/socket-proxyd/socket-proxyd/internal/handoff"
)

// Helpers the package's tests share: a proxy started over real sockets,
// backends and clients, a fake fd store, a fake DNS server, and waits that
// fail with a message instead of hanging.

// openFDs counts this process's sockets, epoll instances and eventfds: what
// the proxy opens besides pipes (which Stats.Pipes counts; Go's own splice,
// used by the test backends, caches pipes of its own).
func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("cannot count descriptors: %v", err)
	}
	n := 0
	for _, e := range entries {
		link, _ := os.Readlink("/proc/self/fd/" + e.Name())
		if strings.HasPrefix(link, "socket:") || strings.HasPrefix(link, "anon_inode:") {
			n++
		}
	}
	return n
}

// noLeak fails the test if, once everything the test set up is torn down,
// more sockets are open than before. Call it first: cleanups run last in,
// first out, so its check runs after every other cleanup.
func noLeak(t *testing.T) {
	t.Helper()
	// Make sure the runtime's own descriptors (netpoll) exist already.
	if ln, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		ln.Close()
	}
	before := openFDs(t)
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		for {
			n := openFDs(t)
			if n <= before {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("%d descriptors open after the test, %d before", n, before)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// startOn runs a proxy with the given listener in front of backendAddr.
func startOn(t *testing.T, ln activation.Listener, backendAddr string, cfg Config) *running {
	t.Helper()
	return startPrepared(t, ln, backendAddr, cfg, nil)
}

// startPrepared is startOn with a prepare func that sees the Server before
// it runs (to set a test hook).
func startPrepared(t *testing.T, ln activation.Listener, backendAddr string, cfg Config, prepare func(*Server)) *running {
	t.Helper()
	if backendAddr != "" { // "": the test gives cfg.Backend, several perhaps
		addr, err := backend.Parse(backendAddr)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Backend = []backend.Address{addr}
	}
	logs := &syncBuffer{}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = -1 // tests of the graceful stop set their own
	}
	cfg.Listeners = append(cfg.Listeners, ln)
	cfg.Log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{srv: New(cfg), addr: ln.Addr().String(), logs: logs, cancel: cancel, done: make(chan error, 1)}
	if prepare != nil {
		prepare(r.srv)
	}
	go func() { r.done <- r.srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := recv(t, r.done, "Run to return"); err != nil {
			t.Errorf("Run: %v", err)
		}
		if n := r.srv.Stats().Pipes; n != 0 {
			t.Errorf("%d pipes open after Run returned", n)
		}
	})
	return r
}

// waitFor polls cond until it holds or 10 seconds pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// syncBuffer collects log output from the proxy's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// running is a proxy under test.
type running struct {
	srv    *Server
	addr   string // where clients connect
	logs   *syncBuffer
	cancel context.CancelFunc
	done   chan error
}

// start runs a proxy with one TCP listener in front of backendAddr.
func start(t *testing.T, backendAddr string, cfg Config) *running {
	t.Helper()
	ln, err := activation.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return startOn(t, ln, backendAddr, cfg)
}

// serveBackend runs handle for each connection on ln until the test ends.
func serveBackend(t *testing.T, ln net.Listener, handle func(net.Conn)) {
	t.Helper()
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

func echo(c net.Conn) {
	io.Copy(c, c)
	c.(interface{ CloseWrite() error }).CloseWrite()
}

func listenBackend(t *testing.T, network, addr string, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	serveBackend(t, ln, handle)
	return ln.Addr().String()
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return c.(*net.TCPConn)
}

// roundTrip sends payload, half-closes, and checks every byte comes back.
func roundTrip(t *testing.T, addr string, payload []byte) {
	t.Helper()
	c := dial(t, addr)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read back: %v", err)
	}
	if err := recv(t, errc, "the write to end"); err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echo returned %d bytes, sent %d; equal prefix: %v", len(got), len(payload), bytes.HasPrefix(payload, got))
	}
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func shortDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "spx")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// recv waits for a value on ch for at most 10 seconds (less if the test's
// deadline is nearer), so that a regression fails the test with a message
// instead of hanging it until go test's timeout.
func recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	timer := time.NewTimer(10 * time.Second)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("timed out after 10s waiting for %s", what)
	}
	var zero T
	return zero
}

// store is an fd store for tests: it keeps what a proxy's Store hands it
// (duplicates of the descriptors, as systemd's store holds them).
type store struct {
	rec    []byte
	stored []int
}

func newStore(t *testing.T) *store {
	st := &store{}
	t.Cleanup(func() {
		for _, fd := range st.stored {
			unix.Close(fd)
		}
	})
	return st
}

func (st *store) keep(b []byte, fds []int) error {
	st.rec = b
	for _, fd := range fds {
		d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return err
		}
		st.stored = append(st.stored, d)
	}
	return nil
}

// take has proxy a store everything and stop, and decodes the record as
// the next instance would; the listeners that came along are closed (the
// tests give the next proxy its own).
func (st *store) take(t *testing.T, a *running) *handoff.Record {
	t.Helper()
	a.srv.Store()
	if err := recv(t, a.done, "Run to return after Store"); err != nil {
		t.Fatalf("Run: %v", err)
	}
	a.done <- nil // for the cleanup
	mfd, err := handoff.Memfd(st.rec)
	if err != nil {
		t.Fatal(err)
	}
	b, resolve, left, err := handoff.Stored(mfd, st.stored)
	if err != nil {
		t.Fatal(err)
	}
	r, unused, err := handoff.Decode(b, resolve)
	if err != nil {
		t.Fatal(err)
	}
	st.stored = nil // the record owns them now
	if r.Epoll >= 0 {
		// Only a reload in place carries the epoll instance (record:
		// "Epoll: -1").
		unix.Close(r.Epoll)
		t.Errorf("the store carried descriptor %d as an epoll instance", r.Epoll)
		r.Epoll = -1
	}
	if len(unused)+len(left()) != 0 {
		t.Fatalf("descriptors left over: %v and %v", unused, left())
	}
	for _, l := range r.Listeners {
		// The tests' listeners are bound by the proxy (as --listen
		// ones): they are stored, a socket unit's are not.
		if !l.Bound || l.FD < 0 {
			t.Errorf("listener %q recorded as bound %v, descriptor %d: a --listen socket must be stored", l.Name, l.Bound, l.FD)
		}
		unix.Close(l.FD)
	}
	return r
}

// closeRecord closes the descriptors of a record that no proxy adopted:
// a test that fails between the store and the resume must not leave the
// backend's handler waiting on a socket nobody closes.
func closeRecord(r *handoff.Record) {
	for _, rc := range r.Conns {
		for _, fd := range append(rc.FD[:], append(rc.Dir[0].Pipe[:], rc.Dir[1].Pipe[:]...)...) {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
	}
	for _, f := range r.Flows {
		if f.FD >= 0 {
			unix.Close(f.FD)
		}
	}
}

// batchHold holds the loop, through the test hook, in its first non-empty
// batch of events once armed (from the start, unless disarmed), until
// released: what clients send meanwhile is queued, and read together.
type batchHold struct {
	armed atomic.Bool
	held  chan struct{} // closed once the loop is held
	hold  chan struct{}
	once  sync.Once
}

// holdFirstBatch makes a batchHold and the func that releases the loop
// (also called when the test ends).
func holdFirstBatch(t *testing.T) (*batchHold, func()) {
	h := &batchHold{held: make(chan struct{}), hold: make(chan struct{})}
	h.armed.Store(true)
	var release sync.Once
	unhold := func() { release.Do(func() { close(h.hold) }) }
	t.Cleanup(unhold)
	return h, unhold
}

// prepare sets the hook: startPrepared's prepare.
func (h *batchHold) prepare(s *Server) {
	s.testBatch = func(events []unix.EpollEvent, n int) int {
		if h.armed.Load() && n > 0 {
			h.once.Do(func() {
				close(h.held)
				<-h.hold
			})
		}
		return n
	}
}

// tinyWindowTail is more than a client with a 1 KiB receive buffer lets
// through: the last of it still waits in the proxy's send queue as the
// proxy closes the connection.
const tinyWindowTail = 8 << 10

// tailBackend is a backend that sends tinyWindowTail bytes and closes once
// goAhead is closed.
func tailBackend(t *testing.T) (addr string, goAhead chan struct{}) {
	goAhead = make(chan struct{})
	addr = listenBackend(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
		<-goAhead
		c.Write(bytes.Repeat([]byte("t"), tinyWindowTail))
		c.Close()
	})
	return addr, goAhead
}

// dialTinyWindow connects a client with a 1 KiB receive buffer to addr and
// ends its own stream: the backend's answer is all that is left.
func dialTinyWindow(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 1024) })
	}}
	conn, err := d.DialContext(t.Context(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := conn.(*net.TCPConn)
	t.Cleanup(func() { c.Close() })
	c.CloseWrite()
	return c
}

// readWholeTail checks that c gets the whole tail, then a clean end.
func readWholeTail(t *testing.T, c *net.TCPConn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || len(got) != tinyWindowTail {
		t.Errorf("the client read %d of the last %d bytes, then %v; want all of them and a clean end", len(got), tinyWindowTail, err)
	}
}

// closedWithin reads from c until it ends and returns how long that took;
// data is an error, and so is still being open after limit.
func closedWithin(t *testing.T, c net.Conn, limit time.Duration) time.Duration {
	t.Helper()
	begin := time.Now()
	c.SetReadDeadline(begin.Add(limit))
	var b [1]byte
	n, err := c.Read(b[:])
	took := time.Since(begin)
	switch {
	case n > 0:
		t.Fatalf("got data %q, want the connection closed", b[:n])
	case errors.Is(err, os.ErrDeadlineExceeded):
		t.Fatalf("still open after %v", limit)
	}
	return took
}

// dnsResolver is a Go resolver that asks the DNS server at dns only.
func dnsResolver(dns string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", dns)
	}}
}

// fakeDNS answers every A question with addrs, in that order, and every
// other question with no answer; it serves UDP on 127.0.0.1 until the test
// ends.
func fakeDNS(t *testing.T, addrs ...[4]byte) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	go func() {
		defer close(done)
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if resp := dnsAnswer(buf[:n], addrs); resp != nil {
				pc.WriteTo(resp, from)
			}
		}
	}()
	return pc.LocalAddr().String()
}

// dnsAnswer builds the response to one query (RFC 1035 4.1): the header
// with QR, RD and RA set, the question copied, and for type A one answer
// per address, each naming the question by a pointer to offset 12.
func dnsAnswer(q []byte, addrs [][4]byte) []byte {
	if len(q) < 12 {
		return nil
	}
	i := 12
	for i < len(q) && q[i] != 0 {
		i += int(q[i]) + 1
	}
	if i+5 > len(q) {
		return nil
	}
	question := q[12 : i+5]
	qtype := binary.BigEndian.Uint16(q[i+1:])
	var answers [][4]byte
	if qtype == 1 { // A
		answers = addrs
	}
	resp := binary.BigEndian.AppendUint16(nil, binary.BigEndian.Uint16(q))
	resp = binary.BigEndian.AppendUint16(resp, 0x8180)
	resp = binary.BigEndian.AppendUint16(resp, 1)
	resp = binary.BigEndian.AppendUint16(resp, uint16(len(answers)))
	resp = append(resp, 0, 0, 0, 0)
	resp = append(resp, question...)
	for _, a := range answers {
		resp = append(resp, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4)
		resp = append(resp, a[:]...)
	}
	return resp
}

// stdoutTarget is what descriptor 1 is: tests of a wrong "no socket"
// marker see it closed.
func stdoutTarget() string {
	s, err := os.Readlink("/proc/self/fd/1")
	if err != nil {
		return "closed: " + err.Error()
	}
	return s
}

// listenNamed is a TCP listener on loopback named as a socket unit would.
func listenNamed(t *testing.T, name string) activation.Listener {
	t.Helper()
	ln, err := activation.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Name = name
	return ln
}

func edgeDial(t *testing.T, network, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout(network, addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// A regression stalls bytes: fail in seconds, not at go test's timeout.
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c
}

// sendUrgent sends one byte as urgent data (MSG_OOB).
func sendUrgent(t *testing.T, c net.Conn, b byte) {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	err = rc.Write(func(fd uintptr) bool {
		_, serr = unix.SendmsgN(int(fd), []byte{b}, nil, nil, unix.MSG_OOB)
		return serr != unix.EAGAIN
	})
	if err != nil || serr != nil {
		t.Errorf("send MSG_OOB: %v %v", err, serr)
	}
}

// sendWithDescriptor sends b with one descriptor attached (SCM_RIGHTS).
func sendWithDescriptor(t *testing.T, c *net.UnixConn, b []byte, f *os.File) {
	t.Helper()
	if _, _, err := c.WriteMsgUnix(b, unix.UnixRights(int(f.Fd())), nil); err != nil {
		t.Errorf("sendmsg SCM_RIGHTS: %v", err)
	}
}

// silentResolver is a resolver whose DNS server never answers: every
// lookup waits until its context ends.
func silentResolver(t *testing.T) *net.Resolver {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	server := pc.LocalAddr().String()
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", server)
	}}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// socketBetween finds, among this process's descriptors, the TCP socket
// whose local and peer addresses are the ones given: one of the proxy's.
func socketBetween(t *testing.T, local, peer string) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		la, err1 := syscall.Getsockname(fd)
		pa, err2 := syscall.Getpeername(fd)
		if err1 != nil || err2 != nil {
			continue
		}
		if sockaddrString(la) == local && sockaddrString(pa) == peer {
			return fd
		}
	}
	t.Fatalf("no socket from %s to %s", local, peer)
	return -1
}

func sockaddrString(sa syscall.Sockaddr) string {
	if sa, ok := sa.(*syscall.SockaddrInet4); ok {
		return net.JoinHostPort(net.IP(sa.Addr[:]).String(), strconv.Itoa(sa.Port))
	}
	return ""
}
