// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The soak protocol. The client opens with a header: the kind of exchange,
// how many bytes it will send (up) and how many the backend must send
// (down). Each side sends its payload followed by the payload's SHA-256, so
// the receiver checks every byte; who sends first and who half-closes when
// depends on the kind.
type kind byte

const (
	kindUpload   kind = 'U' // client sends, half-closes; then the backend replies and closes
	kindDownload kind = 'D' // backend sends and half-closes first; then the client sends
	kindEcho     kind = 'E' // client sends while the backend echoes it back verbatim
	kindBoth     kind = 'B' // both send at once, each half-closes when done
	// kindUrgent is kindBoth with the middle byte of each payload sent as
	// urgent data (MSG_OOB): it must arrive in order, as a byte like any
	// other (an urgent byte once cut the stream short).
	kindUrgent kind = 'O'
	// kindDescriptors is kindBoth over the proxy's unix listener, with a
	// descriptor attached (SCM_RIGHTS) to the first bytes the client
	// sends: they are not passed on, and nothing around them may stall or
	// go missing.
	kindDescriptors kind = 'F'
)

var kinds = []kind{kindUpload, kindDownload, kindEcho, kindBoth, kindUrgent, kindDescriptors}

// endpoints are where clients reach the proxy: its TCP listener, and its
// unix one for kindDescriptors.
type endpoints struct{ tcp, unix string }

// passed is the descriptor kindDescriptors sends: this process's standard
// input, which the proxy must close, never keep.
var passed = unix.UnixRights(0)

const headerLen = 1 + 8 + 8

// stats are the run's totals, shared by every worker and the backend.
type stats struct {
	conns       atomic.Int64 // exchanges completed and verified
	active      atomic.Int64 // client connections open now
	bytesUp     atomic.Int64 // payload bytes clients sent (and the backend verified)
	bytesDown   atomic.Int64 // payload bytes clients received and verified
	errs        atomic.Int64 // exchanges that failed, client side
	backendErrs atomic.Int64 // exchanges that failed, backend side
	byKind      [256]atomic.Int64

	mu       sync.Mutex
	firstErr []string // the first few errors, for the report
}

func (s *stats) fail(backend bool, err error) {
	if backend {
		s.backendErrs.Add(1)
	} else {
		s.errs.Add(1)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.firstErr) < 10 {
		side := "client"
		if backend {
			side = "backend"
		}
		s.firstErr = append(s.firstErr, side+": "+err.Error())
	}
}

// payload is n pseudo-random bytes from rng.
func payload(rng *rand.Rand, n int) []byte {
	b := make([]byte, n+8)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	return b[:n]
}

// sendWithHash writes p and its SHA-256.
func sendWithHash(c net.Conn, p []byte) error {
	sum := sha256.Sum256(p)
	if _, err := c.Write(p); err != nil {
		return err
	}
	_, err := c.Write(sum[:])
	return err
}

// sendUrgentWithHash is sendWithHash with p's middle byte sent as urgent
// data (MSG_OOB).
func sendUrgentWithHash(c net.Conn, p []byte) error {
	if len(p) == 0 {
		return sendWithHash(c, p)
	}
	sum := sha256.Sum256(p)
	mid := len(p) / 2
	if _, err := c.Write(p[:mid]); err != nil {
		return err
	}
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Write(func(fd uintptr) bool {
		_, serr = unix.SendmsgN(int(fd), p[mid:mid+1], nil, nil, unix.MSG_OOB)
		return serr != unix.EAGAIN
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("send MSG_OOB: %w", serr)
	}
	if _, err := c.Write(p[mid+1:]); err != nil {
		return err
	}
	_, err = c.Write(sum[:])
	return err
}

// sendWithDescriptorAndHash is sendWithHash with a descriptor attached
// to the first bytes of p (up to 4 KiB).
func sendWithDescriptorAndHash(c net.Conn, p []byte) error {
	uc, ok := c.(*net.UnixConn)
	if !ok || len(p) == 0 {
		return sendWithHash(c, p)
	}
	first := p[:min(len(p), 4<<10)]
	if _, _, err := uc.WriteMsgUnix(first, passed, nil); err != nil {
		return fmt.Errorf("sendmsg SCM_RIGHTS: %w", err)
	}
	sum := sha256.Sum256(p)
	if _, err := c.Write(p[len(first):]); err != nil {
		return err
	}
	_, err := c.Write(sum[:])
	return err
}

// senderFor is how a kind sends its payload.
func senderFor(k kind) func(net.Conn, []byte) error {
	switch k {
	case kindUrgent:
		return sendUrgentWithHash
	case kindDescriptors:
		return sendWithDescriptorAndHash
	}
	return sendWithHash
}

// recvAndCheck reads n bytes and a SHA-256, and checks they match; with
// want, it also checks the bytes are those expected (so that a payload
// delivered whole but to the wrong connection is caught too).
func recvAndCheck(c net.Conn, n int64, want *[sha256.Size]byte) error {
	h := sha256.New()
	if k, err := io.CopyN(h, c, n); err != nil {
		return fmt.Errorf("read %d of %d payload bytes: %w", k, n, err)
	}
	var sum [sha256.Size]byte
	if _, err := io.ReadFull(c, sum[:]); err != nil {
		return fmt.Errorf("read the hash after %d bytes: %w", n, err)
	}
	got := h.Sum(nil)
	if !bytes.Equal(got, sum[:]) {
		return fmt.Errorf("SHA-256 of %d bytes differs from the sender's", n)
	}
	if want != nil && !bytes.Equal(got, want[:]) {
		return fmt.Errorf("%d bytes arrived intact, but not the ones sent on this connection", n)
	}
	return nil
}

// backendPayload is what the backend sends for a header: both sides can
// work it out.
func backendPayload(up, down int) []byte {
	return payload(rand.New(rand.NewPCG(uint64(up), uint64(down))), down)
}

// expectEOF checks the peer has nothing more to send.
func expectEOF(c net.Conn) error {
	var b [1]byte
	k, err := c.Read(b[:])
	if k > 0 {
		return errors.New("bytes after the end of the exchange")
	}
	if err != io.EOF {
		return fmt.Errorf("want EOF after the exchange: %v", err)
	}
	return nil
}

func closeWrite(c net.Conn) error {
	return c.(interface{ CloseWrite() error }).CloseWrite()
}

// backend serves the soak protocol on ln until ln is closed.
type backend struct {
	ln      net.Listener
	st      *stats
	timeout time.Duration
	wg      sync.WaitGroup
}

func (b *backend) serve() {
	defer b.wg.Done()
	for {
		c, err := b.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			time.Sleep(10 * time.Millisecond) // EMFILE and the like: back off
			continue
		}
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(b.timeout))
			if err := b.exchange(c); err != nil {
				b.st.fail(true, err)
			}
		}()
	}
}

func (b *backend) exchange(c net.Conn) error {
	var h [headerLen]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return fmt.Errorf("header: %w", err)
	}
	k := kind(h[0])
	up := int64(binary.LittleEndian.Uint64(h[1:]))
	down := int(binary.LittleEndian.Uint64(h[9:]))
	switch k {
	case kindUpload:
		if err := recvAndCheck(c, up, nil); err != nil {
			return err
		}
		if err := expectEOF(c); err != nil {
			return err
		}
		if err := sendWithHash(c, backendPayload(int(up), down)); err != nil {
			return err
		}
		return closeWrite(c)
	case kindDownload:
		if err := sendWithHash(c, backendPayload(int(up), down)); err != nil {
			return err
		}
		if err := closeWrite(c); err != nil {
			return err
		}
		if err := recvAndCheck(c, up, nil); err != nil {
			return err
		}
		return expectEOF(c)
	case kindEcho:
		// Verbatim, payload and hash alike; the client checks.
		if _, err := io.Copy(struct{ io.Writer }{c}, struct{ io.Reader }{c}); err != nil {
			return err
		}
		return closeWrite(c)
	case kindBoth, kindUrgent, kindDescriptors:
		werr := make(chan error, 1)
		go func() {
			err := senderFor(k)(c, backendPayload(int(up), down))
			if err == nil {
				err = closeWrite(c)
			}
			werr <- err
		}()
		rerr := recvAndCheck(c, up, nil)
		if rerr == nil {
			rerr = expectEOF(c)
		}
		return errors.Join(rerr, <-werr)
	}
	return fmt.Errorf("unknown kind %q", k)
}

// worker runs exchanges through the proxy at addr, one after another,
// until ctx ends.
func worker(ctx context.Context, addr endpoints, seed uint64, maxSize int, maxPause, timeout time.Duration, st *stats) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for ctx.Err() == nil {
		k := kinds[rng.IntN(len(kinds))]
		up, down := randomSize(rng, maxSize), randomSize(rng, maxSize)
		pause := time.Duration(rng.Int64N(int64(maxPause) + 1))
		if err := exchange(addr, rng, k, up, down, pause, timeout, st); err != nil {
			if ctx.Err() != nil {
				return // the run ended under it: not a proxy failure
			}
			st.fail(false, fmt.Errorf("%c up=%d down=%d: %w", k, up, down, err))
			continue
		}
		st.conns.Add(1)
		st.byKind[k].Add(1)
		st.bytesUp.Add(int64(up))
		st.bytesDown.Add(int64(down))
	}
}

// randomSize is log-uniform from 0 to max: mostly small, some large.
func randomSize(rng *rand.Rand, max int) int {
	if max <= 0 || rng.IntN(10) == 0 {
		return 0
	}
	n := rng.IntN(1<<rng.IntN(bits.Len(uint(max))+1) + 1)
	return min(n, max)
}

func exchange(at endpoints, rng *rand.Rand, k kind, up, down int, pause, timeout time.Duration, st *stats) error {
	network, addr := "tcp", at.tcp
	if k == kindDescriptors && at.unix != "" {
		network, addr = "unix", at.unix
	}
	c, err := net.DialTimeout(network, addr, timeout)
	if err != nil {
		return err
	}
	st.active.Add(1)
	defer st.active.Add(-1)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	var h [headerLen]byte
	h[0] = byte(k)
	binary.LittleEndian.PutUint64(h[1:], uint64(up))
	binary.LittleEndian.PutUint64(h[9:], uint64(down))
	if _, err := c.Write(h[:]); err != nil {
		return err
	}
	// Hold the connection open, idle, for a while: the proxy sees
	// thousands of connections at once, most of them quiet.
	time.Sleep(pause)
	p := payload(rng, up)
	mine := sha256.Sum256(p)
	theirs := sha256.Sum256(backendPayload(up, down))
	switch k {
	case kindUpload:
		if err := sendWithHash(c, p); err != nil {
			return err
		}
		if err := closeWrite(c); err != nil {
			return err
		}
		if err := recvAndCheck(c, int64(down), &theirs); err != nil {
			return err
		}
		return expectEOF(c)
	case kindDownload:
		if err := recvAndCheck(c, int64(down), &theirs); err != nil {
			return err
		}
		if err := expectEOF(c); err != nil {
			return err
		}
		if err := sendWithHash(c, p); err != nil {
			return err
		}
		return closeWrite(c)
	case kindEcho, kindBoth, kindUrgent, kindDescriptors:
		// Echo gets back what it sends; both gets the backend's own bytes.
		wantLen, want := int64(up), &mine
		if k != kindEcho {
			wantLen, want = int64(down), &theirs
		}
		werr := make(chan error, 1)
		go func() {
			err := senderFor(k)(c, p)
			if err == nil {
				err = closeWrite(c)
			}
			werr <- err
		}()
		rerr := recvAndCheck(c, wantLen, want)
		if rerr == nil {
			rerr = expectEOF(c)
		}
		return errors.Join(rerr, <-werr)
	}
	return fmt.Errorf("unknown kind %q", k)
}
