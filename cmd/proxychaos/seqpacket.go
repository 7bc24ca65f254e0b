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

const maxMessage = 256 << 10

func planMessages(seed uint64) []int {
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
	return sizes
}

// message i of seed.
func message(seed uint64, i, size int) []byte {
	b := make([]byte, size)
	payload(seed^uint64(i+1)*0x9e3779b97f4a7c15, 'm').Read(b)
	return b
}

func describe(sizes []int) string { return fmt.Sprint(sizes) }

// readMessages reads len(sizes) messages and compares each, then the end.
func readMessages(c *net.UnixConn, seed uint64, sizes []int, what string, echo *net.UnixConn, g *gate) outcome {
	buf := make([]byte, maxMessage+1)
	for i, size := range sizes {
		if g != nil {
			g.wait()
		}
		n, _, flags, _, err := c.ReadMsgUnix(buf, nil)
		if errors.Is(err, io.EOF) {
			err = nil // Go reads an empty message and the end alike as EOF
		}
		if err != nil {
			return outcome{err: fmt.Errorf("%s: message %d of %d %v: %w", what, i+1, len(sizes), sizes, err), got: int64(i)}
		}
		if flags&syscall.MSG_TRUNC != 0 || n > maxMessage {
			return outcome{err: fmt.Errorf("%w: %s: message %d of %d %v is longer than %d", errCorrupt, what, i+1, len(sizes), sizes, maxMessage)}
		}
		if n == 0 && size != 0 {
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
	n, _, _, _, err := c.ReadMsgUnix(buf, nil)
	if errors.Is(err, io.EOF) {
		err = nil
	}
	switch {
	case err != nil:
		return outcome{err: fmt.Errorf("%s: after %d messages, %w instead of the end", what, len(sizes), err), got: int64(len(sizes))}
	case n != 0:
		return outcome{err: fmt.Errorf("%w: %s: a message of %d bytes after the %d planned", errCorrupt, what, n, len(sizes))}
	}
	return outcome{got: int64(len(sizes))}
}

// errEnd is a clean end where the plan has more: classify calls it a cut.
var errEnd = errors.New("a clean end")

func runMessages(path string, id, seed uint64, deadline time.Duration) outcome {
	sizes := planMessages(seed)
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
	o := readMessages(c, seed, sizes, "echo", nil, nil)
	if o.err != nil {
		c.Close()
	}
	if err := <-errc; err != nil && o.err == nil {
		o.err = err
	}
	return o
}

// serveMessages is the seqpacket backend's side of one connection.
func (b *streamBackend) serveMessages(c net.Conn) {
	uc := c.(*net.UnixConn)
	uc.SetWriteBuffer(2 * maxMessage)
	buf := make([]byte, 64)
	n, _, _, _, err := uc.ReadMsgUnix(buf, nil)
	if err != nil || n != 24 || [8]byte(buf[:8]) != streamMagic {
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
	s.out = readMessages(uc, seed, planMessages(seed), "messages", uc, b.gate)
	if s.out.err == nil {
		uc.CloseWrite()
	}
}
