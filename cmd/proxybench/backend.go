// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// The wire protocol between the load generator and the backend, through the proxy:
// every connection starts with a 16-byte header, "PXB1", a mode byte, three bytes of
// padding and a big-endian uint64 argument.
//
//	'E' echo: everything read is written back, until EOF.
//	'U' upload: the backend reads exactly arg bytes of the pattern, then replies
//	    with the count it read (8 bytes) and 1 if every sampled chunk matched the
//	    pattern, else 0; any byte after that is an error.
//	'D' download: the backend writes arg bytes of the pattern, half-closes, and
//	    waits for the client to close.
//
// Lengths are in the header so that a transfer does not depend on how a candidate
// handles half-close (that is the end-to-end tests' business, not a benchmark's).
const (
	headerLen = 16
	modeEcho  = 'E'
	modeUp    = 'U'
	modeDown  = 'D'
)

// The pattern: byte i of every stream is pat[i%period]. The period is prime so no
// buffer size used by any candidate divides it: a chunk dropped, repeated or
// reordered shows up as a mismatch.
const (
	period = 65521
	chunk  = 256 << 10 // read and write size for bulk transfers
)

func header(mode byte, arg uint64) []byte {
	h := make([]byte, headerLen)
	copy(h, "PXB1")
	h[4] = mode
	binary.BigEndian.PutUint64(h[8:], arg)
	return h
}

func makePattern() []byte {
	p := make([]byte, period+chunk)
	x := uint64(0x9e3779b97f4a7c15)
	for i := range period {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		p[i] = byte(x >> 32)
	}
	for i := period; i < len(p); i++ {
		p[i] = p[i-period]
	}
	return p
}

// patternAt returns the n bytes (n <= chunk) the pattern has at stream offset off.
func patternAt(pat []byte, off int64, n int) []byte {
	s := int(off % period)
	return pat[s : s+n]
}

// sampled says whether the read number i, at stream offset off, is compared with
// the pattern: the first MiB of every stream and one read in 16 after that. Byte
// counts are always checked in full.
func sampled(off int64, i int) bool { return off < 1<<20 || i%16 == 0 }

// backend is the echo, sink and source server the candidates forward to. It runs in
// the load generator's process, on its CPU. A new one is started for every
// candidate run so each run has its own port (TIME_WAIT from a previous run cannot
// collide with this one's connections).
type backend struct {
	ln     *net.TCPListener
	more   []*net.TCPListener // -backends: the other instances, served alike
	pat    []byte
	active atomic.Int64 // connections being served
	wg     sync.WaitGroup

	mu     sync.Mutex
	conns  map[*net.TCPConn]struct{}
	closed bool
	err    error // first error since the last takeErr
}

func newBackend(pat []byte) (*backend, error) { return newBackends(pat, 1) }

// newBackends is a backend listening on n ports, as n instances of one
// service would (-backends): a candidate that balances is given them all.
func newBackends(pat []byte, n int) (*backend, error) {
	b := &backend{pat: pat, conns: map[*net.TCPConn]struct{}{}}
	for i := range max(n, 1) {
		ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			b.close()
			return nil, fmt.Errorf("backend: %w", err)
		}
		if i == 0 {
			b.ln = ln
		} else {
			b.more = append(b.more, ln)
		}
		b.wg.Add(1)
		go b.acceptLoop(ln)
	}
	return b, nil
}

// addr is where the load goes without a proxy (direct): the first instance.
func (b *backend) addr() string { return b.ln.Addr().String() }

// addrs are every instance's address, separated by spaces (loopback
// HOST:PORT only, so a space cannot be part of one).
func (b *backend) addrs() string {
	s := b.addr()
	for _, ln := range b.more {
		s += " " + ln.Addr().String()
	}
	return s
}

func (b *backend) fail(err error) {
	b.mu.Lock()
	if b.err == nil {
		b.err = err
	}
	b.mu.Unlock()
}

// takeErr returns the first error seen since the last call, and forgets it.
func (b *backend) takeErr() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	err := b.err
	b.err = nil
	return err
}

// quiet waits until every connection the backend accepted has ended.
func (b *backend) quiet(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for b.active.Load() > 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("backend: %d connections still open after %v", b.active.Load(), timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

// close stops accepting, closes every connection and waits for all goroutines.
func (b *backend) close() {
	b.mu.Lock()
	b.closed = true
	if b.ln != nil {
		b.ln.Close()
	}
	for _, ln := range b.more {
		ln.Close()
	}
	for c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

func (b *backend) acceptLoop(ln *net.TCPListener) {
	defer b.wg.Done()
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and the like: report it (the phase fails) and keep going;
			// close() ends the loop.
			b.fail(fmt.Errorf("backend accept: %w", err))
			time.Sleep(10 * time.Millisecond)
			continue
		}
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			c.Close()
			return
		}
		b.conns[c] = struct{}{}
		b.active.Add(1)
		b.wg.Add(1)
		b.mu.Unlock()
		go b.serveConn(c)
	}
}

func (b *backend) serveConn(c *net.TCPConn) {
	defer b.wg.Done()
	defer func() {
		c.Close()
		b.mu.Lock()
		delete(b.conns, c)
		b.mu.Unlock()
		b.active.Add(-1)
	}()
	var h [headerLen]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return // a readiness probe that gave up, or a candidate that closed early
	}
	if string(h[:4]) != "PXB1" {
		b.fail(fmt.Errorf("backend: bad header %q", h[:]))
		return
	}
	arg := int64(binary.BigEndian.Uint64(h[8:]))
	switch h[4] {
	case modeEcho:
		b.echo(c)
	case modeUp:
		b.sink(c, arg)
	case modeDown:
		b.source(c, arg)
	default:
		b.fail(fmt.Errorf("backend: bad mode %q", h[4]))
	}
}

func (b *backend) echo(c *net.TCPConn) {
	// Small buffer: echo carries only 64-byte messages, and the idle test holds
	// thousands of these goroutines.
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (b *backend) sink(c *net.TCPConn, n int64) {
	buf := make([]byte, chunk)
	var off int64
	ok := byte(1)
	for i := 0; off < n; i++ {
		k, err := c.Read(buf[:min(int64(chunk), n-off)])
		if k > 0 {
			if sampled(off, i) && !bytes.Equal(buf[:k], patternAt(b.pat, off, k)) {
				ok = 0
			}
			off += int64(k)
		}
		if err != nil {
			return // short: the client sees no reply and reports it
		}
	}
	var reply [9]byte
	binary.BigEndian.PutUint64(reply[:], uint64(off))
	reply[8] = ok
	if _, err := c.Write(reply[:]); err != nil {
		return
	}
	if k, _ := c.Read(buf[:1]); k > 0 {
		b.fail(fmt.Errorf("backend: upload of %d bytes: more bytes after the end", n))
	}
}

func (b *backend) source(c *net.TCPConn, n int64) {
	var off int64
	for off < n {
		k := int(min(int64(chunk), n-off))
		w, err := c.Write(patternAt(b.pat, off, k))
		off += int64(w)
		if err != nil {
			return
		}
	}
	c.CloseWrite()
	var one [1]byte
	if k, _ := c.Read(one[:]); k > 0 {
		b.fail(fmt.Errorf("backend: download of %d bytes: client sent bytes after the header", n))
	}
}
