// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// The backends run in this process: one for each kind of socket. Each
// checks what arrives against the schedule and records its outcome by the
// operation's id, for the oracle.

// gate holds the backends' reads and writes during backend-stall.
type gate struct{ until atomic.Int64 }

func (g *gate) hold(d time.Duration) { g.until.Store(time.Now().Add(d).UnixNano()) }

func (g *gate) wait() {
	if d := time.Until(time.Unix(0, g.until.Load())); d > 0 {
		time.Sleep(d)
	}
}

// seen is what a backend observed of one operation.
type seen struct {
	done chan struct{}
	out  outcome
	// Datagrams: the indices received, in order, and problems.
	got []int
}

type results struct {
	mu sync.Mutex
	m  map[uint64]*seen
}

func (r *results) open(id uint64) *seen {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[uint64]*seen{}
	}
	s := r.m[id]
	if s == nil {
		s = &seen{done: make(chan struct{})}
		r.m[id] = s
	}
	return s
}

func (r *results) get(id uint64) *seen {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.m[id]
}

// wait returns the backend's outcome for id once it has one, or nil if
// the backend never saw it within d.
func (r *results) wait(id uint64, d time.Duration) *seen {
	deadline := time.Now().Add(d)
	for {
		if s := r.get(id); s != nil {
			select {
			case <-s.done:
				return s
			case <-time.After(time.Until(deadline)):
				return s
			}
		}
		if time.Now().After(deadline) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// streamBackend serves TCP or unix streams.
type streamBackend struct {
	network, addr string
	proxyHeader   bool
	gate          *gate
	res           *results
	deadline      time.Duration

	mu   sync.Mutex
	ln   net.Listener
	live map[uint64]net.Conn
	wg   sync.WaitGroup
}

func (b *streamBackend) listen() error {
	if b.network == "unix" || b.network == "unixpacket" {
		os.Remove(b.addr)
	}
	var ln net.Listener
	var err error
	if b.addr == "127.0.0.1:0" {
		ln, err = listenFixed(func(a string) (net.Listener, error) { return net.Listen(b.network, a) })
	} else {
		ln, err = net.Listen(b.network, b.addr)
	}
	if err != nil {
		return err
	}
	b.addr = ln.Addr().String()
	b.mu.Lock()
	b.ln = ln
	if b.live == nil {
		b.live = map[uint64]net.Conn{}
	}
	b.mu.Unlock()
	b.wg.Add(1)
	go b.accept(ln)
	return nil
}

// down closes the listener (new connections are refused) until up.
func (b *streamBackend) down() {
	b.mu.Lock()
	ln := b.ln
	b.ln = nil
	b.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
}

func (b *streamBackend) close() {
	b.down()
	b.mu.Lock()
	for _, c := range b.live {
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// reset resets n of the open connections, chosen by r, calling mark with
// each one's id before its reset: the operation's judge may wake as soon as
// the reset lands, and must find it marked.
func (b *streamBackend) reset(r *rand.Rand, n int, mark func(id uint64)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var ids []uint64
	for id := range b.live {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	r.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	if len(ids) > n {
		ids = ids[:n]
	}
	for _, id := range ids {
		mark(id)
		c := b.live[id]
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		c.Close()
	}
}

func (b *streamBackend) accept(ln net.Listener) {
	defer b.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		b.wg.Add(1)
		go b.serve(c)
	}
}

func (b *streamBackend) serve(c net.Conn) {
	defer b.wg.Done()
	defer c.Close()
	c.SetDeadline(time.Now().Add(b.deadline))
	var src string
	if b.proxyHeader {
		var err error
		if src, err = readProxyV2(c, b.network == "unixpacket"); err != nil {
			return // a limit event's idle connection, or garbage: the client's side reports it
		}
	}
	if b.network == "unixpacket" {
		b.serveMessages(c)
		return
	}
	var h [streamHeaderLen]byte
	if _, err := io.ReadFull(c, h[:]); err != nil || [8]byte(h[:8]) != streamMagic {
		return
	}
	id := binary.BigEndian.Uint64(h[8:])
	seed := binary.BigEndian.Uint64(h[16:])
	up := int(binary.BigEndian.Uint64(h[24:]))
	down := int(binary.BigEndian.Uint64(h[32:]))
	mode := h[40]
	local := make([]byte, h[41])
	if _, err := io.ReadFull(c, local); err != nil {
		return
	}
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
	if b.proxyHeader && len(local) > 0 && src != string(local) {
		s.out = outcome{err: fmt.Errorf("%w: the PROXY header says the client is %s, it is %s", errCorrupt, src, local)}
		return
	}
	send := func() error {
		if err := writePayload(c, payload(seed, 'd'), []int{down}, nil, -1, nil, b.gate); err != nil {
			return fmt.Errorf("download: %w", err)
		}
		return closeWrite(c)
	}
	recv := func() outcome { return readPayload(c, payload(seed, 'u'), up, false, "upload") }
	if p := planStream(seed, b.network == "tcp"); p.hangUp >= 0 {
		s.out = readPrefix(c, payload(seed, 'u'), p.hangUp)
		if s.out.ok() {
			if err := writePayload(c, payload(seed, 'd'), []int{down}, nil, -1, nil, b.gate); err != nil {
				s.out.err = fmt.Errorf("download: %w", err)
			}
		}
		return // closed with the rest of the upload unread, or still to come
	}
	switch mode {
	case modeRequest:
		if s.out = readBody(c, payload(seed, 'u'), up, false, "upload"); s.out.ok() {
			if err := send(); err != nil {
				s.out.err = err
				return
			}
			s.out = readEnd(c, "upload", s.out.got)
		}
	case modeUpload:
		if s.out = recv(); s.out.ok() {
			if err := send(); err != nil {
				s.out.err = err
			}
		}
	case modeDownload:
		if err := send(); err != nil {
			s.out.err = err
			return
		}
		s.out = recv()
	default:
		errc := make(chan error, 1)
		go func() { errc <- send() }()
		s.out = recv()
		if s.out.err != nil {
			c.Close()
		}
		if err := <-errc; err != nil && s.out.err == nil {
			s.out.err = err
		}
	}
}

// readProxyV2 reads a PROXY v2 header and returns the source it names
// ("" for a local or unix one). On a seqpacket connection it is a message
// of its own.
func readProxyV2(c net.Conn, message bool) (string, error) {
	var b []byte
	if message {
		buf := make([]byte, 600)
		n, err := c.Read(buf)
		if err != nil {
			return "", err
		}
		b = buf[:n]
	} else {
		h := make([]byte, 16)
		if _, err := io.ReadFull(c, h); err != nil {
			return "", err
		}
		rest := make([]byte, binary.BigEndian.Uint16(h[14:]))
		if _, err := io.ReadFull(c, rest); err != nil {
			return "", err
		}
		b = append(h, rest...)
	}
	return parseProxyV2(b)
}

var v2sig = []byte("\r\n\r\n\x00\r\nQUIT\n")

// parseProxyV2 parses a whole v2 header, returning the source address.
func parseProxyV2(b []byte) (string, error) {
	if len(b) < 16 || string(b[:12]) != string(v2sig) || b[12]>>4 != 2 {
		return "", fmt.Errorf("%w: no PROXY v2 header: %q", errCorrupt, b[:min(len(b), 16)])
	}
	n := int(binary.BigEndian.Uint16(b[14:]))
	if len(b) != 16+n {
		return "", fmt.Errorf("%w: PROXY v2 header of %d bytes says %d", errCorrupt, len(b), 16+n)
	}
	a := b[16:]
	switch b[13] >> 4 {
	case 1:
		if n < 12 {
			return "", fmt.Errorf("%w: short PROXY v2 IPv4 addresses", errCorrupt)
		}
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[:4])), binary.BigEndian.Uint16(a[8:])).String(), nil
	case 2:
		if n < 36 {
			return "", fmt.Errorf("%w: short PROXY v2 IPv6 addresses", errCorrupt)
		}
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[:16])), binary.BigEndian.Uint16(a[32:])).String(), nil
	}
	return "", nil
}

// readPrefix reads the first n bytes of a payload and compares them.
func readPrefix(c net.Conn, g *rand.ChaCha8, n int) outcome {
	buf, want := make([]byte, n), make([]byte, n)
	if _, err := io.ReadFull(c, buf); err != nil {
		return outcome{err: fmt.Errorf("upload: the first %d bytes: %w", n, err)}
	}
	g.Read(want)
	if i := firstDiff(buf, want); i >= 0 {
		return outcome{err: fmt.Errorf("%w: upload byte %d is %#x, want %#x", errCorrupt, i, buf[i], want[i]), got: int64(i)}
	}
	return outcome{got: int64(n)}
}
