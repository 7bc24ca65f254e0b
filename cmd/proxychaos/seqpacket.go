// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"syscall"
	"time"
)

// Sequential packets: the client sends a header message (its id and seed),
// then messages whose sizes and contents follow from the seed (empty ones
// and 256 KiB ones among them), then shuts down; the backend checks each
// message whole and echoes it; the client checks the echoes, then the end.
// A read of zero bytes is an empty message where the plan has one next,
// and the end anywhere else: so an end that comes early is seen.
//
// Some plans have the backend answer only the first messages and close
// without reading the rest, as a server that answers and hangs up does,
// sometimes with the next message already queued in its socket (the
// kernel then reports a reset to the proxy ahead of the answers still
// queued there), sometimes before it comes (the proxy's next send fails).
// Every answer must still reach the client, then the end.

const maxMessage = 256 << 10

type messagePlan struct {
	sizes []int
	// answered is how many the backend echoes before it closes:
	// len(sizes) when it reads them all and then the end.
	answered int
	queued   bool // an early close waits for the next message to be queued
}

func (p messagePlan) early() bool { return p.answered < len(p.sizes) }

func (p messagePlan) String() string {
	if p.early() {
		return fmt.Sprintf("%v, the backend closes after %d (next queued: %v)", p.sizes, p.answered, p.queued)
	}
	return fmt.Sprint(p.sizes)
}

func planMessages(seed uint64) messagePlan {
	r := rand.New(rand.NewPCG(seed, 2))
	sizes := make([]int, 1+r.IntN(8))
	for i := range sizes {
		switch k := r.IntN(20); {
		case k < 5:
			sizes[i] = 0
		case k == 5:
			sizes[i] = maxMessage
		case k == 6:
			sizes[i] = 64<<10 + r.IntN(maxMessage-64<<10)
		default:
			sizes[i] = 1 + r.IntN(2000)
		}
	}
	// Drawn after the sizes, which stay what they were for every seed.
	p := messagePlan{sizes: sizes, answered: len(sizes)}
	if len(sizes) > 1 && r.IntN(8) == 0 {
		p.answered, p.queued = r.IntN(len(sizes)), r.IntN(2) == 0
	}
	return p
}

// message i of seed.
func message(seed uint64, i, size int) []byte {
	b := make([]byte, size)
	payload(seed^uint64(i+1)*0x9e3779b97f4a7c15, 'm').Read(b)
	return b
}

// packetReader reads a seqpacket socket and tells an empty message from
// the end, which Go reads alike (EOF): with SO_PASSCRED set, every message
// comes with the sender's credentials, and the end with none.
type packetReader struct {
	c        *net.UnixConn
	buf, oob []byte
}

func newPacketReader(c *net.UnixConn, size int) *packetReader {
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_PASSCRED, 1) })
	}
	return &packetReader{c: c, buf: make([]byte, size), oob: make([]byte, 64)}
}

// read reads one message into r.buf, or the end. The end is believed when
// a second read says it too: the kernel says it to a read that found the
// queue empty just before the peer's last message came and the peer shut
// down.
func (r *packetReader) read() (n, flags int, end bool, err error) {
	for range 2 {
		var oobn int
		n, oobn, flags, _, err = r.c.ReadMsgUnix(r.buf, r.oob)
		if errors.Is(err, io.EOF) {
			err = nil
		}
		if end = err == nil && n == 0 && oobn == 0; !end {
			break
		}
	}
	return n, flags, end, err
}

// readMessages reads len(sizes) messages and compares each, then the end
// if end says so. resetOK: one ECONNRESET may come first, the kernel's word
// that the peer closed with messages of ours unread, ahead of those it
// sent before.
func readMessages(pr *packetReader, seed uint64, sizes []int, what string, echo *net.UnixConn, g *gate, end, resetOK bool) outcome {
	buf := pr.buf
	read := func() (int, int, bool, error) {
		n, flags, end, err := pr.read()
		if resetOK && errors.Is(err, syscall.ECONNRESET) {
			resetOK = false
			n, flags, end, err = pr.read()
		}
		return n, flags, end, err
	}
	for i, size := range sizes {
		if g != nil {
			g.wait()
		}
		n, flags, ended, err := read()
		if err != nil {
			return outcome{err: fmt.Errorf("%s: message %d of %d %v: %w", what, i+1, len(sizes), sizes, err), got: int64(i)}
		}
		if flags&syscall.MSG_TRUNC != 0 || n > maxMessage {
			return outcome{err: fmt.Errorf("%w: %s: message %d of %d %v is longer than %d", errCorrupt, what, i+1, len(sizes), sizes, maxMessage)}
		}
		if ended {
			return outcome{err: fmt.Errorf("%s: the end after %d of %d messages %v (next: %d bytes): %w", what, i, len(sizes), sizes, size, errEnd), got: int64(i)}
		}
		if n != size {
			return outcome{err: fmt.Errorf("%w: %s: message %d of %d %v is %d bytes, want %d (a boundary moved)", errCorrupt, what, i+1, len(sizes), sizes, n, size)}
		}
		if firstDiff(buf[:n], message(seed, i, size)) >= 0 {
			return outcome{err: fmt.Errorf("%w: %s: message %d of %d (%d bytes) differs", errCorrupt, what, i+1, len(sizes), size)}
		}
		if echo != nil {
			if _, _, err := echo.WriteMsgUnix(buf[:n], nil, nil); err != nil {
				return outcome{err: fmt.Errorf("echo of message %d: %w", i+1, err), got: int64(i)}
			}
		}
	}
	if !end {
		return outcome{got: int64(len(sizes))}
	}
	n, _, ended, err := read()
	switch {
	case err != nil:
		return outcome{err: fmt.Errorf("%s: after %d messages, %w instead of the end", what, len(sizes), err), got: int64(len(sizes))}
	case !ended:
		return outcome{err: fmt.Errorf("%w: %s: a message of %d bytes after the %d planned", errCorrupt, what, n, len(sizes))}
	}
	return outcome{got: int64(len(sizes))}
}

// errEnd is a clean end where the plan has more: classify calls it a cut.
var errEnd = errors.New("a clean end")

func runMessages(path string, id, seed uint64, deadline time.Duration) outcome {
	plan := planMessages(seed)
	sizes := plan.sizes
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return outcome{err: fmt.Errorf("connect: %w", err), what: "connect"}
	}
	defer c.Close()
	c.SetWriteBuffer(2 * maxMessage)
	c.SetDeadline(time.Now().Add(deadline))
	h := append(append([]byte(nil), streamMagic[:]...), make([]byte, 16)...)
	binary.BigEndian.PutUint64(h[8:], id)
	binary.BigEndian.PutUint64(h[16:], seed)
	if _, _, err := c.WriteMsgUnix(h, nil, nil); err != nil {
		return outcome{err: fmt.Errorf("header: %w", err), what: "header"}
	}
	errc := make(chan error, 1)
	go func() {
		for i, size := range sizes {
			if _, _, err := c.WriteMsgUnix(message(seed, i, size), nil, nil); err != nil {
				errc <- fmt.Errorf("message %d of %d %v: %w", i+1, len(sizes), sizes, err)
				return
			}
		}
		errc <- c.CloseWrite()
	}()
	o := readMessages(newPacketReader(c, maxMessage+1), seed, sizes[:plan.answered], "echo", nil, nil, true, plan.early())
	if o.err != nil {
		c.Close()
	}
	// After an early close, a send may find the proxy gone.
	if err := <-errc; err != nil && o.err == nil && !plan.early() {
		o.err = err
	}
	return o
}

// serveMessages is the seqpacket backend's side of one connection.
func (b *streamBackend) serveMessages(c net.Conn) {
	uc := c.(*net.UnixConn)
	uc.SetWriteBuffer(2 * maxMessage)
	pr := newPacketReader(uc, maxMessage+1)
	buf := pr.buf
	n, _, end, err := pr.read()
	if err != nil || end || n != 24 || [8]byte(buf[:8]) != streamMagic {
		return
	}
	id := binary.BigEndian.Uint64(buf[8:])
	seed := binary.BigEndian.Uint64(buf[16:])
	s := b.res.open(id)
	defer close(s.done)
	b.mu.Lock()
	b.live[id] = c
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.live, id)
		b.mu.Unlock()
	}()
	plan := planMessages(seed)
	s.out = readMessages(pr, seed, plan.sizes[:plan.answered], "messages", uc, b.gate, !plan.early(), false)
	if s.out.err == nil && plan.early() && plan.queued {
		waitQueued(uc, time.Second)
	}
	if s.out.err == nil {
		uc.CloseWrite()
	}
}

// waitQueued waits at most d for a message to be queued in c, and leaves it
// there.
func waitQueued(c *net.UnixConn, d time.Duration) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	c.SetReadDeadline(time.Now().Add(d))
	rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), make([]byte, 1), syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return err != syscall.EAGAIN
	})
}
