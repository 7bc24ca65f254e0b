// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
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
	"unsafe"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/testutil"
	"golang.org/x/sys/unix"
)

// TestPipeFullOfSmallMessages: splice from a unix stream socket into a pipe
// takes one pipe slot per message the client wrote, so a pipe of 64 slots
// fills up with 64 messages of less than a page, below its byte size, and splicing
// more into it says EAGAIN while the socket still holds data. Clearing the
// source's readiness on that EAGAIN (connection.go, splicePump: "if p.n ==
// 0") would stall the direction once the client has written all it can and
// waits: no new edge comes for bytes already queued.
func TestPipeFullOfSmallMessages(t *testing.T) {
	noLeak(t)
	const size, count = 3000, 1000
	const total = size * count
	dir := shortDir(t)
	release := make(chan struct{})
	back := listenBackend(t, "unix", filepath.Join(dir, "b"), func(c net.Conn) {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		<-release
		if _, err := io.CopyN(io.Discard, struct{ io.Reader }{c}, total); err == nil {
			c.Write([]byte("ok"))
		}
	})
	ln, err := activation.Listen(filepath.Join(dir, "p"))
	if err != nil {
		t.Fatal(err)
	}
	p := startOn(t, ln, back, Config{})
	c := edgeDial(t, "unix", p.addr)
	var written atomic.Int64
	go func() {
		// Messages of less than a page, each one socket buffer and
		// so one pipe slot: 64 of them fill a 256 KiB pipe's slots
		// with 192000 bytes. Several at once fill the shared buffer,
		// which puts the direction in bulk (splice) mode, and splices
		// of several keep it there.
		msg := bytes.Repeat([]byte{'s'}, size)
		for range count {
			n, err := c.Write(msg)
			written.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	// Let the backend read once the client is blocked (or done): by then
	// the backend's socket is full and the pipe holds as many messages as
	// it has slots. Releasing early only makes the test weaker, never
	// wrong.
	last, still := int64(-1), 0
	for end := time.Now().Add(5 * time.Second); still < 5 && time.Now().Before(end); {
		time.Sleep(20 * time.Millisecond)
		if n := written.Load(); n == last {
			still++
		} else {
			last, still = n, 0
		}
	}
	if last == total {
		t.Logf("the client wrote everything before the backend read: the pipe may not have filled")
	}
	close(release)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	reply := make([]byte, 2)
	if _, err := io.ReadFull(c, reply); err != nil || string(reply) != "ok" {
		t.Fatalf("after %d of %d bytes written: reply %q, %v (a stalled direction); %+v", written.Load(), total, reply, err, p.srv.Stats())
	}
}

// TestSmallMessagesNoPipe: 64-byte exchanges cost one read and one write
// each way: no pipe is taken from the pool and nothing is spliced
// (docs/ENGINE.md, "small data").
func TestSmallMessagesNoPipe(t *testing.T) {
	noLeak(t)
	addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	p := start(t, addr, Config{})
	c := dial(t, p.addr)
	msg := bytes.Repeat([]byte("m"), 64)
	got := make([]byte, 64)
	for i := range 200 {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	// A pipe lent and given back stays pooled for a trim interval: one
	// used now would still be counted.
	if st := p.srv.Stats(); st.Pipes != 0 || st.Splices != 0 || st.SplicedBytes != 0 {
		t.Errorf("after 200 64-byte exchanges: %d pipes, %d splices (%d bytes); want none", st.Pipes, st.Splices, st.SplicedBytes)
	}
}

// TestFailedConnectionClosesOnlyItsOwn: a client whose backend is never
// reached (a host name with no address; a refused backend the client
// gives up on between two retry rounds) is closed with its own socket and
// nothing else: a connection without a backend socket must not close
// whatever descriptor a wrong "no socket" marker names (stdout, here).
func TestFailedConnectionClosesOnlyItsOwn(t *testing.T) {
	t.Run("unresolvable", func(t *testing.T) {
		noLeak(t)
		dns := fakeDNS(t) // no address for any name
		resolver := dnsResolver(dns)
		before := stdoutTarget()
		p := start(t, "none.spx.test:80", Config{Resolver: resolver})
		closedWithin(t, dial(t, p.addr), 10*time.Second)
		waitFor(t, "the warning", func() bool { return strings.Contains(p.logs.String(), `cannot resolve \"none.spx.test\"`) })
		if st := p.srv.Stats(); st.BackendErrors != 1 {
			t.Errorf("BackendErrors %d, want 1", st.BackendErrors)
		}
		if after := stdoutTarget(); after != before {
			t.Errorf("descriptor 1 was %s, is %s after the failed connection", before, after)
		}
	})
	t.Run("client leaves while retrying", func(t *testing.T) {
		noLeak(t)
		refused := filepath.Join(shortDir(t), "none.sock")
		before := stdoutTarget()
		p := start(t, refused, Config{ConnectTimeout: time.Minute})
		c := dial(t, p.addr)
		waitFor(t, "the client to be accepted", func() bool { return p.srv.Stats().Active == 1 })
		time.Sleep(50 * time.Millisecond) // the scenario: a few refused rounds (10, 20 ms apart)
		c.SetLinger(0)
		c.Close()
		waitFor(t, "the client to be gone", func() bool { return p.srv.Stats().Active == 0 })
		if after := stdoutTarget(); after != before {
			t.Errorf("descriptor 1 was %s, is %s after the client left", before, after)
		}
	})
}

// TestParkedBytesCounted: small messages to a backend that stops reading
// for a while end in a partial write, whose rest is parked in a pipe and
// written out later; those bytes count in BytesIn like any other, so the
// total is exact once the backend has read everything.
func TestParkedBytesCounted(t *testing.T) {
	noLeak(t)
	const msgs, size = 400, 1000
	release := make(chan struct{})
	got := make(chan int64, 1)
	// A unix backend: its socket buffer (the proxy's send buffer, a few
	// hundred KiB) is not grown by the kernel, so it fills up.
	addr := listenBackend(t, "unix", filepath.Join(shortDir(t), "b"), func(c net.Conn) {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		<-release
		n, _ := io.Copy(io.Discard, struct{ io.Reader }{c})
		got <- n
	})
	p := start(t, addr, Config{})
	c := dial(t, p.addr)
	msg := bytes.Repeat([]byte("s"), size)
	for i := range msgs {
		if _, err := c.Write(msg); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		time.Sleep(time.Millisecond) // so the proxy reads them one by one, small
	}
	close(release)
	c.CloseWrite()
	if n := recv(t, got, "the backend to read to the end"); n != msgs*size {
		t.Fatalf("backend read %d bytes, want %d", n, msgs*size)
	}
	if st := p.srv.Stats(); st.BytesIn != msgs*size || st.BytesOut != 0 {
		t.Errorf("BytesIn %d, BytesOut %d; want %d (every byte delivered, parked ones too) and 0 (the backend sent nothing)", st.BytesIn, st.BytesOut, msgs*size)
	}
}

// TestLargeRequestThenWait: a client sends a request much larger than a
// pipe and then waits for the reply, without closing its side: no new
// edge will come for the request's last bytes, so a direction that gave up
// its readiness too early (on an EAGAIN that meant "pipe full", not
// "socket empty") would stall until the deadline.
func TestLargeRequestThenWait(t *testing.T) {
	noLeak(t)
	const size = 8 << 20
	addr := listenBackend(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.CopyN(io.Discard, c, size); err == nil {
			c.Write([]byte("ok"))
		}
	})
	p := start(t, addr, Config{})
	for i := range 3 {
		c := dial(t, p.addr)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		go c.Write(bytes.Repeat([]byte{'q'}, size))
		reply := make([]byte, 2)
		if _, err := io.ReadFull(c, reply); err != nil || string(reply) != "ok" {
			t.Fatalf("request %d of %d bytes: reply %q, %v; %+v", i, size, reply, err, p.srv.Stats())
		}
		c.Close()
	}
}

// Reads stop short at an urgent mark (TCP and unix MSG_OOB) and after a
// unix message carrying descriptors, with bytes waiting behind; a proxy
// that takes such a short read, a splice that returns 0, or EAGAIN from
// splice as "empty" or "ended" loses or holds back what follows.

// edgeProxy starts a proxy in front of handle, over TCP or unix sockets.
func edgeProxy(t *testing.T, network string, handle func(net.Conn)) *running {
	t.Helper()
	if network == "tcp" {
		return start(t, listenBackend(t, "tcp", "127.0.0.1:0", handle), Config{})
	}
	dir := shortDir(t)
	back := listenBackend(t, "unix", filepath.Join(dir, "b"), handle)
	ln, err := activation.Listen(filepath.Join(dir, "p"))
	if err != nil {
		t.Fatal(err)
	}
	return startOn(t, ln, back, Config{})
}

// writeWithUrgent writes before, one urgent byte 'U', then after.
func writeWithUrgent(t *testing.T, c net.Conn, before, after []byte) {
	t.Helper()
	if _, err := c.Write(before); err != nil {
		t.Errorf("write: %v", err)
		return
	}
	sendUrgent(t, c, 'U')
	if _, err := c.Write(after); err != nil {
		t.Errorf("write: %v", err)
	}
}

func closeWrite(c net.Conn) { c.(interface{ CloseWrite() error }).CloseWrite() }

func TestUrgentByteStaysInTheStream(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		for _, tc := range []struct {
			name          string
			before, after []byte
			fin           bool // the sender half-closes after the bytes
		}{
			// Small messages, no FIN: a request waits for its reply, so
			// held-back bytes show as a stall.
			{name: "small", before: []byte("AAAA"), after: []byte("CCCC")},
			// Bulk then FIN: splice stops at the mark and, with the FIN
			// behind it, returns 0; the bytes after the mark were lost.
			{name: "bulk", before: randomBytes(t, 4<<20), after: randomBytes(t, 1<<20), fin: true},
		} {
			want := append(append(append([]byte(nil), tc.before...), 'U'), tc.after...)
			wantSum := sha256.Sum256(want)
			t.Run(network+"/"+tc.name+"/client-to-backend", func(t *testing.T) {
				p := edgeProxy(t, network, func(c net.Conn) {
					c.SetDeadline(time.Now().Add(20 * time.Second))
					got := make([]byte, len(want))
					if _, err := io.ReadFull(c, got); err != nil {
						c.Write([]byte("short read: " + err.Error()))
						return
					}
					if tc.fin {
						if n, _ := io.Copy(io.Discard, c); n != 0 {
							c.Write([]byte("bytes after the end"))
							return
						}
					}
					sum := sha256.Sum256(got)
					c.Write(sum[:])
				})
				c := edgeDial(t, network, p.addr)
				go func() {
					writeWithUrgent(t, c, tc.before, tc.after)
					if tc.fin {
						closeWrite(c)
					}
				}()
				reply, err := io.ReadAll(c)
				if !bytes.Equal(reply, wantSum[:]) {
					t.Fatalf("backend replied %q (read error %v): it did not get the %d bytes with the urgent byte in order",
						reply, err, len(want))
				}
			})
			t.Run(network+"/"+tc.name+"/backend-to-client", func(t *testing.T) {
				p := edgeProxy(t, network, func(c net.Conn) {
					writeWithUrgent(t, c, tc.before, tc.after)
					if tc.fin {
						closeWrite(c)
					}
					c.SetDeadline(time.Now().Add(20 * time.Second))
					io.Copy(io.Discard, c) // until the client is done
				})
				c := edgeDial(t, network, p.addr)
				got := make([]byte, len(want))
				if n, err := io.ReadFull(c, got); err != nil {
					t.Fatalf("client got %d of %d bytes: %v", n, len(want), err)
				}
				if !bytes.Equal(got, want) {
					t.Fatal("client got the bytes out of order")
				}
				if tc.fin {
					if rest, err := io.ReadAll(c); len(rest) != 0 || err != nil {
						t.Fatalf("after the bytes: %d more, %v; want a clean EOF", len(rest), err)
					}
				}
			})
		}
	}
}

// TestUrgentByteGetsThroughSignals: a TCP read that starts at the urgent
// mark says EAGAIN, with every byte still queued, when a signal is pending
// on the thread, and the Go runtime signals the loop's thread to preempt
// it. Taken as "empty", that EAGAIN left the rest of a stream whose client
// had sent everything waiting for an edge that never came.
func TestUrgentByteGetsThroughSignals(t *testing.T) {
	const rounds = 300
	want := []byte("AAAAUCCCC")
	p := edgeProxy(t, "tcp", func(c net.Conn) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		got, _ := io.ReadAll(c)
		c.Write(got)
	})
	stop := signalEveryThread(t)
	defer stop()
	for i := range rounds {
		c := edgeDial(t, "tcp", p.addr)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		writeWithUrgent(t, c, want[:4], want[5:])
		closeWrite(c)
		got, err := io.ReadAll(c)
		c.Close()
		if !bytes.Equal(got, want) {
			t.Fatalf("round %d: the backend got %q (client's read: %v), want %q", i, got, err, want)
		}
	}
}

// signalEveryThread sends SIGURG, which the Go runtime takes as a
// preemption request and otherwise ignores, to every thread of the test
// process, over and over, until stop is called.
func signalEveryThread(t *testing.T) (stop func()) {
	t.Helper()
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		pid := unix.Getpid()
		for {
			entries, err := os.ReadDir("/proc/self/task")
			if err != nil {
				t.Error(err)
				return
			}
			for range 100 {
				select {
				case <-done:
					return
				default:
				}
				for _, e := range entries {
					var tid int
					fmt.Sscan(e.Name(), &tid)
					unix.Tgkill(pid, tid, unix.SIGURG)
				}
			}
		}
	}()
	return func() { close(done); <-finished }
}

func TestDescriptorsDoNotStallTheStream(t *testing.T) {
	for _, dir := range []string{"client-to-backend", "backend-to-client"} {
		t.Run(dir, func(t *testing.T) {
			// The descriptor sent is a pipe's write end; once every copy
			// is closed (ours below, the kernel's for the proxy), its
			// read end sees EOF: the proxy kept no descriptor.
			pr, pw, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer pr.Close()
			// talk sends "AAAA" with the descriptor, then "BBBB" as a
			// message of its own, and expects "OK" for the 8 bytes.
			talk := func(c net.Conn) {
				sendWithDescriptor(t, c.(*net.UnixConn), []byte("AAAA"), pw)
				if _, err := c.Write([]byte("BBBB")); err != nil {
					t.Errorf("write: %v", err)
				}
			}
			answer := func(c net.Conn) error {
				got := make([]byte, 8)
				if _, err := io.ReadFull(c, got); err != nil {
					return err
				}
				if string(got) != "AAAABBBB" {
					c.Write([]byte("NO"))
					return nil
				}
				_, err := c.Write([]byte("OK"))
				return err
			}
			reply := make(chan string, 1)
			p := edgeProxy(t, "unix", func(c net.Conn) {
				c.SetDeadline(time.Now().Add(20 * time.Second))
				if dir == "client-to-backend" {
					answer(c)
				} else {
					talk(c)
					b := make([]byte, 2)
					io.ReadFull(c, b)
					reply <- string(b)
				}
				io.Copy(io.Discard, c)
			})
			c := edgeDial(t, "unix", p.addr)
			if dir == "client-to-backend" {
				talk(c)
				b := make([]byte, 2)
				if _, err := io.ReadFull(c, b); err != nil {
					t.Fatalf("no reply to the 8 bytes (stalled after the descriptor?): %v", err)
				}
				reply <- string(b)
			} else if err := answer(c); err != nil {
				t.Fatalf("client did not get the 8 bytes (stalled after the descriptor?): %v", err)
			}
			if got := <-reply; got != "OK" {
				t.Fatalf("reply %q, want OK: the bytes around the descriptor were not forwarded in order", got)
			}
			pw.Close()
			pr.SetReadDeadline(time.Now().Add(10 * time.Second))
			if n, err := pr.Read(make([]byte, 1)); err != io.EOF {
				t.Fatalf("the passed descriptor is still open somewhere: read %d, %v", n, err)
			}
			c.Close()
			waitFor(t, "the connection to close", func() bool { return p.srv.Stats().Active == 0 })
			if !bytes.Contains([]byte(p.logs.String()), []byte("descriptors passed over the connection were closed")) {
				t.Errorf("no debug line says descriptors are not passed on; logs:\n%s", p.logs)
			}
		})
	}
}

func TestSpliceCarriesBulk(t *testing.T) {
	noLeak(t)
	addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	p := start(t, addr, Config{})
	payload := randomBytes(t, 32<<20)
	roundTrip(t, p.addr, payload)
	st := p.srv.Stats()
	t.Logf("after echoing %d bytes: %+v", len(payload), st)
	if st.Splices == 0 {
		t.Fatal("a 32 MiB echo was not spliced at all")
	}
	// Both ways: nearly everything should have gone through a pipe; only
	// the first read of a burst goes through the shared buffer.
	if st.SplicedBytes < int64(len(payload)) {
		t.Errorf("spliced %d bytes of %d echoed both ways", st.SplicedBytes, 2*len(payload))
	}
	if st.BytesIn != int64(len(payload)) || st.BytesOut != int64(len(payload)) {
		t.Errorf("bytes in %d, out %d; want %d each", st.BytesIn, st.BytesOut, len(payload))
	}
}

func TestUnixToUnix(t *testing.T) {
	noLeak(t)
	dir := shortDir(t)
	addr := listenBackend(t, "unix", filepath.Join(dir, "b"), echo)
	ln, err := activation.Listen(filepath.Join(dir, "f"))
	if err != nil {
		t.Fatal(err)
	}
	p := startOn(t, ln, addr, Config{})
	for _, size := range []int{1, 100, 64 << 10, 8 << 20} {
		c, err := net.Dial("unix", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		payload := randomBytes(t, size)
		go func() {
			c.Write(payload)
			c.(*net.UnixConn).CloseWrite()
		}()
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("%d bytes over unix<->unix: got %d (%v)", size, len(got), err)
		}
	}
	if !bytes.Contains([]byte(p.logs.String()), []byte("client=unix")) {
		t.Errorf("log lines should name the unix client:\n%s", p.logs)
	}
}

func TestManySmallMessages(t *testing.T) {
	noLeak(t)
	addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	p := start(t, addr, Config{})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", p.addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			msg := make([]byte, 64)
			got := make([]byte, 64)
			for j := range 1000 {
				copy(msg, fmt.Sprintf("conn %d message %d", i, j))
				if _, err := c.Write(msg); err != nil {
					errs <- err
					return
				}
				if _, err := io.ReadFull(c, got); err != nil {
					errs <- fmt.Errorf("conn %d message %d: %v", i, j, err)
					return
				}
				if !bytes.Equal(got, msg) {
					errs <- fmt.Errorf("conn %d message %d: got %q", i, j, got)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if st := p.srv.Stats(); st.BytesIn != 8*1000*64 {
		t.Errorf("BytesIn %d, want %d", st.BytesIn, 8*1000*64)
	}
}

func TestBothWaysAtOnce(t *testing.T) {
	noLeak(t)
	const size = 32 << 20
	fromBackend := randomBytes(t, size)
	fromClient := randomBytes(t, size)
	backendGot := make(chan [32]byte, 1)
	addr := listenBackend(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			c.Write(fromBackend)
			c.(*net.TCPConn).CloseWrite()
		}()
		h := sha256.New()
		io.Copy(h, c)
		var sum [32]byte
		h.Sum(sum[:0])
		backendGot <- sum
		<-wrote // the handler's return closes c
	})
	p := start(t, addr, Config{})
	c := dial(t, p.addr)
	go func() {
		c.Write(fromClient)
		c.CloseWrite()
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		t.Fatal(err)
	}
	if n != size || !bytes.Equal(h.Sum(nil), sha256Of(fromBackend)) {
		t.Errorf("client got %d bytes, other than the %d the backend sent", n, size)
	}
	if got := recv(t, backendGot, "the backend's digest"); !bytes.Equal(got[:], sha256Of(fromClient)) {
		t.Error("backend got other bytes than the client sent")
	}
}

func sha256Of(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

func TestClientResetReachesBackend(t *testing.T) {
	for _, name := range []string{"while sending", "after half-close"} {
		t.Run(name, func(t *testing.T) {
			noLeak(t)
			got := make(chan error, 1)
			addr := listenBackend(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
				c.SetDeadline(time.Now().Add(10 * time.Second))
				_, err := io.Copy(io.Discard, c)
				if err == nil && name == "after half-close" {
					// The client's direction ended cleanly and the
					// backend sits silent: reads say EOF for good,
					// but the reset still lands in SO_ERROR.
					err = waitSocketError(c, 10*time.Second)
				}
				got <- err
			})
			p := start(t, addr, Config{})
			c := dial(t, p.addr)
			c.Write([]byte("some request"))
			if name == "after half-close" {
				c.CloseWrite()
				time.Sleep(50 * time.Millisecond) // let the EOF through first; not needed for correctness
			}
			c.SetLinger(0)
			c.Close()
			// A reset reaching a socket that got our FIN first reads
			// as EPIPE (tcp_reset in CLOSE_WAIT).
			err := recv(t, got, "the backend's read to end")
			if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
				t.Fatalf("backend saw %v after the client reset, want a reset", err)
			}
		})
	}
}

func TestBackendNeverReads(t *testing.T) {
	noLeak(t)
	release := make(chan struct{})
	addr := listenBackend(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
		<-release
	})
	t.Cleanup(func() { close(release) })
	p := start(t, addr, Config{})
	c := dial(t, p.addr)
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	chunk := make([]byte, 1<<20)
	written := 0
	for written < 256<<20 {
		c.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := c.Write(chunk)
		written += n
		if err != nil {
			break
		}
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	st := p.srv.Stats()
	t.Logf("client could write %d MiB before back-pressure; pipes %d; heap %+d KiB", written>>20, st.Pipes, (int64(after.HeapInuse)-int64(before.HeapInuse))>>10)
	if written >= 256<<20 {
		t.Fatal("no back-pressure: the proxy took 256 MiB for a backend that reads nothing")
	}
	if st.Pipes > 2 {
		t.Errorf("%d pipes for one stalled connection", st.Pipes)
	}
	if grown := int64(after.HeapInuse) - int64(before.HeapInuse); grown > 8<<20 {
		t.Errorf("heap grew by %d KiB while the backend stalled", grown>>10)
	}
}

// TestConnectionSize keeps the per-connection state as small as
// docs/ENGINE.md says: 128 bytes, plus two 8-byte table slots (the aim is
// at most 0.25 KiB per idle connection).
func TestConnectionSize(t *testing.T) {
	size, slot := unsafe.Sizeof(conn{}), unsafe.Sizeof((*conn)(nil))
	t.Logf("conn is %d bytes, plus 2 table slots of %d", size, slot)
	if size > 128 || slot != 8 {
		t.Errorf("conn is %d bytes and a table slot %d; docs/ENGINE.md says 128 and 8", size, slot)
	}
}

// TestManyConnections holds as many connections open at once as the
// descriptor limit allows in one process (the clients and the backend live
// here too, so each proxied connection costs 4 descriptors of this
// process), and checks every one of them works and costs the proxy 2
// descriptors and no pipe.
func TestManyConnections(t *testing.T) {
	if testing.Short() {
		t.Skip("holds thousands of connections")
	}
	noLeak(t)
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	n := min(9000, (int(rl.Cur)-300)/4)
	if n < 100 {
		testutil.Unavailable(t, "descriptor limit %d is too low", rl.Cur)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu       sync.Mutex
		backends []net.Conn
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range backends {
			c.Close()
		}
	})
	// One goroutine answers every backend connection: a goroutine each
	// would cost the test more memory than the proxy.
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			backends = append(backends, c)
			mu.Unlock()
			// Copy without Go's splice, which holds a pipe per copy.
			go io.Copy(struct{ io.Writer }{c}, struct{ io.Reader }{c})
		}
	}()
	fdsBefore := openFDs(t)
	p := start(t, ln.Addr().String(), Config{MaxConnections: n})
	clients := make([]net.Conn, 0, n)
	t.Cleanup(func() {
		for _, c := range clients {
			c.Close()
		}
	})
	msg := []byte("0123456789abcdef")
	got := make([]byte, len(msg))
	for i := range n {
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		clients = append(clients, c)
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Write(msg); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
			logs := p.logs.String()
			t.Fatalf("connection %d: got %q, %v; %+v\n%s", i, got, err, p.srv.Stats(), logs[max(0, len(logs)-3000):])
		}
	}
	st := p.srv.Stats()
	if st.Active != int64(n) {
		t.Fatalf("%d active, want %d", st.Active, n)
	}
	// Everyone still works with all of them open. A new deadline: with
	// GOMAXPROCS=1 (go test -cpu 1) the loop's raw waits hold the one P
	// the clients here need too, so opening them all takes about a minute.
	for i, c := range clients {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Write(msg); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	for i, c := range clients {
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("connection %d second round: got %q, %v", i, got, err)
		}
	}
	waitFor(t, "the pipe pool to empty", func() bool { return p.srv.Stats().Pipes == 0 })
	fds := openFDs(t) - fdsBefore
	// This process holds the client, the backend and the proxy's two.
	perConn := float64(fds)/float64(n) - 2
	t.Logf("%d connections: %.2f proxy descriptors each", n, perConn)
	if perConn > 2.05 {
		t.Errorf("%.2f descriptors per idle connection, want 2", perConn)
	}
}

// waitSocketError polls SO_ERROR until the socket has a pending error.
func waitSocketError(c net.Conn, timeout time.Duration) error {
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		var soErr int
		rc.Control(func(fd uintptr) {
			soErr, _ = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_ERROR)
		})
		if soErr != 0 {
			return syscall.Errno(soErr)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return errors.New("no error on the socket")
}

// hangUps are the two ways a backend that answers can hang up: with the
// client's second write or message already queued, unread (the proxy's
// socket then says ECONNRESET), or before it comes (the proxy's write of it
// then fails with EPIPE).
var hangUps = []struct {
	name   string
	unread bool
}{
	{"closed with data unread", true},
	{"closed, then sent to", false},
}

// TestBytesOfAUnixPeerThatClosedArrive: a unix backend that answers and
// closes without reading all the client sent, or before the client's next
// bytes come, still has its answer queued in the proxy's socket (the
// client reads nothing until the backend has closed, so the answer backs
// up there). The proxy's next write fails (EPIPE, or ECONNRESET when bytes
// were left unread), or SO_ERROR says ECONNRESET; either way the answer
// reaches the client whole, then the end.
func TestBytesOfAUnixPeerThatClosedArrive(t *testing.T) {
	const size = 300 << 10
	answer := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	for _, tc := range hangUps {
		t.Run(tc.name, func(t *testing.T) {
			noLeak(t)
			dir := shortDir(t)
			closed := make(chan struct{})
			back := listenBackend(t, "unix", filepath.Join(dir, "b"), func(c net.Conn) {
				defer close(closed)
				defer c.Close()
				uc := c.(*net.UnixConn)
				uc.SetWriteBuffer(1 << 20)
				if _, err := io.ReadFull(c, make([]byte, len("request"))); err != nil {
					t.Error(err)
					return
				}
				if tc.unread {
					peekOne(t, uc)
				}
				if _, err := c.Write(answer); err != nil {
					t.Error(err)
				}
			})
			ln, err := activation.Listen(filepath.Join(dir, "p"))
			if err != nil {
				t.Fatal(err)
			}
			p := startOn(t, ln, back, Config{})
			c := edgeDial(t, "unix", p.addr)
			c.Write([]byte("request"))
			if tc.unread {
				c.Write([]byte("more"))
			}
			recv(t, closed, "the backend's close")
			if !tc.unread {
				c.Write([]byte("more"))
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(c)
			if !bytes.Equal(got, answer) {
				t.Fatalf("the client read %d bytes of the %d-byte answer, then %v", len(got), len(answer), err)
			}
		})
	}
}

// TestClientWritingToAGoneBackendIsNotStuck: a client that sends a large
// upload before it reads, to a unix backend that answered and hung up
// after the first bytes, is not left blocked in its write by a proxy that
// stopped reading (the bytes go nowhere, and are dropped); it then reads
// the whole answer. The same for a connection kept in the fd store
// (--fdstore=always), which leaves the store for it.
func TestClientWritingToAGoneBackendIsNotStuck(t *testing.T) {
	for _, keeping := range []bool{false, true} {
		t.Run(fmt.Sprintf("kept %v", keeping), func(t *testing.T) {
			noLeak(t)
			dir := shortDir(t)
			// More than the client's side holds, less than the backend's
			// send buffer adds to that: the backend's close comes, with
			// the end of its answer still queued in the proxy's socket.
			answer := bytes.Repeat([]byte("answer. "), 75<<10)
			closed := make(chan struct{})
			back := listenBackend(t, "unix", filepath.Join(dir, "b"), func(c net.Conn) {
				defer close(closed)
				defer c.Close()
				c.(*net.UnixConn).SetWriteBuffer(1 << 20)
				if _, err := io.ReadFull(c, make([]byte, len("request"))); err != nil {
					t.Error(err)
					return
				}
				c.Write(answer)
			})
			ln, err := activation.Listen(filepath.Join(dir, "p"))
			if err != nil {
				t.Fatal(err)
			}
			var cfg Config
			k := &fakeKeeper{}
			if keeping {
				cfg.Keep, cfg.Forget = k.keep, k.forget
			}
			p := startOn(t, ln, back, cfg)
			c := edgeDial(t, "unix", p.addr)
			c.Write([]byte("request"))
			recv(t, closed, "the backend's close")
			if kept, _ := k.names(); keeping && len(kept) != 1 {
				t.Fatalf("kept %v, want the connection", kept)
			}
			c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			upload := make([]byte, 16<<20) // far past every socket buffer on the way
			if _, err := c.Write(upload); errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("the client's upload is stuck: %v", err)
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(c)
			if !bytes.Equal(got, answer) {
				t.Fatalf("the client read %d bytes of the %d-byte answer, then %v", len(got), len(answer), err)
			}
			if kept, _ := k.names(); len(kept) != 0 {
				t.Errorf("still kept in the store: %v", kept)
			}
		})
	}
}
