// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Datagram flows. The first datagram of a flow is a hello (its id, seed
// and the client's address); datagram i after it has a size and contents
// that follow from the seed: at least 12 bytes carry the id and i, shorter
// ones are a prefix of their contents. The backend echoes every datagram to
// whoever sent it. Each side keeps the indices it received: they must come
// in order, each whole, each once.

const (
	dgramMagic = "CHDG"
	helloLen   = 4 + 8 + 8 + 1
	maxUDP4    = 65507 // the largest UDP payload over IPv4
	oversized  = 65527 // over IPv6, and too big for an IPv4 backend
)

// flowPlan is what an operation's seed says about its flow.
type flowPlan struct {
	sizes  []int // of datagrams 1.. (0 is the hello)
	bursts []int // how many datagrams each burst sends
	pauses []time.Duration
	source int  // udp4: the last byte of 127.0.0.x the client binds
	bound  bool // unixgram: the client has an address, so replies
}

func planFlow(seed uint64, kind string) flowPlan {
	r := rand.New(rand.NewPCG(seed, 3))
	p := flowPlan{source: 2 + r.IntN(249), bound: r.IntN(4) != 0}
	n := 1 + r.IntN(4)
	for i := 0; i < n; i++ {
		k := 1 + r.IntN(16)
		p.bursts = append(p.bursts, k)
		p.pauses = append(p.pauses, time.Duration(r.IntN(200))*time.Millisecond)
		for j := 0; j < k; j++ {
			size := logSize(r, 1400)
			if r.IntN(10) == 0 {
				size = r.IntN(maxUDP4 + 1)
			}
			p.sizes = append(p.sizes, size)
		}
	}
	if kind == kUDP6 && r.IntN(2) == 0 {
		// One datagram too big for the backend, among others in a burst.
		p.sizes[r.IntN(len(p.sizes))] = oversized
	}
	return p
}

// datagram i (1..) of a flow.
func datagram(id, seed uint64, i, size int) []byte {
	g := payload(seed^uint64(i)*0x9e3779b97f4a7c15, 'g')
	if size < 12 {
		// Too short for the id and the index, whose first bytes are
		// zeros alike: bytes of its own, so that a repeat, or another
		// flow's datagram of its size, does not pass for it. An empty
		// one still can: it has no bytes to tell.
		b := make([]byte, size)
		g.Read(b)
		return b
	}
	full := make([]byte, size)
	binary.BigEndian.PutUint64(full, id)
	binary.BigEndian.PutUint32(full[8:], uint32(i))
	g.Read(full[12:])
	return full
}

func hello(id, seed uint64, local string) []byte {
	b := append([]byte(dgramMagic), make([]byte, 17)...)
	binary.BigEndian.PutUint64(b[4:], id)
	binary.BigEndian.PutUint64(b[12:], seed)
	b[20] = byte(len(local))
	return append(b, local...)
}

// matcher follows one flow's datagrams as they arrive: each must be the
// next planned one or a later one (the ones between are lost), whole.
type matcher struct {
	id, seed uint64
	sizes    []int // index 0 unused
	next     int
	got      []int
	err      error
}

func newMatcher(id, seed uint64, kind string) *matcher {
	p := planFlow(seed, kind)
	return &matcher{id: id, seed: seed, sizes: append([]int{0}, p.sizes...), next: 1}
}

func (m *matcher) take(b []byte) {
	if m.err != nil {
		return
	}
	for i := m.next; i < len(m.sizes); i++ {
		if len(b) == m.sizes[i] && firstDiff(b, datagram(m.id, m.seed, i, m.sizes[i])) < 0 {
			m.got = append(m.got, i)
			m.next = i + 1
			return
		}
		if len(b) >= 12 && binary.BigEndian.Uint64(b) == m.id && int(binary.BigEndian.Uint32(b[8:])) == i {
			m.err = fmt.Errorf("%w: datagram %d is %d bytes, want %d (cut short or merged)", errCorrupt, i, len(b), m.sizes[i])
			return
		}
	}
	if len(b) >= 12 && binary.BigEndian.Uint64(b) == m.id {
		m.err = fmt.Errorf("%w: datagram %d of %d bytes out of order, after %d", errCorrupt, binary.BigEndian.Uint32(b[8:]), len(b), m.next-1)
		return
	}
	m.err = fmt.Errorf("%w: a datagram of %d bytes that is none of the ones planned from %d on", errCorrupt, len(b), m.next)
}

// dgramBackend echoes datagrams, following each flow by its sender.
type dgramBackend struct {
	network, addr string
	proxyHeader   bool
	gate          *gate
	res           *results

	mu    sync.Mutex
	conn  net.PacketConn
	flows map[string]*backendFlow
	wg    sync.WaitGroup
}

type backendFlow struct {
	s *seen
	m *matcher
}

func (b *dgramBackend) listen() error {
	if b.network == "unixgram" {
		os.Remove(b.addr)
	}
	var c net.PacketConn
	var err error
	if b.addr == "127.0.0.1:0" {
		c, err = listenFixed(func(a string) (net.PacketConn, error) { return net.ListenPacket(b.network, a) })
	} else {
		c, err = net.ListenPacket(b.network, b.addr)
	}
	if err != nil {
		return err
	}
	b.addr = c.LocalAddr().String()
	setBuffers(c)
	b.mu.Lock()
	b.conn = c
	if b.flows == nil {
		b.flows = map[string]*backendFlow{}
	}
	b.mu.Unlock()
	b.wg.Add(1)
	go b.serve(c)
	return nil
}

// listenFixed listens on 127.0.0.1 at a port below the ephemeral range,
// which the kernel never gives to a socket that connects: a backend that
// goes down and listens again finds its port free, where a port of the
// ephemeral range may meanwhile be the local port of a flow the proxy
// opened to another backend, or of another program's connection.
func listenFixed[T io.Closer](listen func(addr string) (T, error)) (T, error) {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 2048 {
				low = n
			}
		}
	}
	var last error
	for range 100 {
		port := low/2 + rand.IntN(low/2)
		c, err := listen(fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			return c, nil
		}
		last = err
	}
	var zero T
	return zero, fmt.Errorf("no free port below the ephemeral range (from %d): %v", low, last)
}

func setBuffers(c any) {
	if s, ok := c.(interface{ SetReadBuffer(int) error }); ok {
		s.SetReadBuffer(4 << 20)
	}
	if s, ok := c.(interface{ SetWriteBuffer(int) error }); ok {
		s.SetWriteBuffer(4 << 20)
	}
}

func (b *dgramBackend) down() {
	b.mu.Lock()
	c := b.conn
	b.conn = nil
	b.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

func (b *dgramBackend) close() { b.down(); b.wg.Wait() }

func (b *dgramBackend) serve(c net.PacketConn) {
	defer b.wg.Done()
	buf := make([]byte, 1<<17)
	for {
		b.gate.wait()
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		d := buf[:n]
		key := from.String()
		if b.proxyHeader {
			h := 16 + int(binaryLen(d))
			if n < 16 || h > n {
				continue // counted as lost by the flow's matcher
			}
			if _, err := parseProxyV2(d[:h]); err != nil {
				continue
			}
			d = d[h:]
		}
		b.mu.Lock()
		f := b.flows[key]
		if len(d) >= helloLen && string(d[:4]) == dgramMagic {
			id := binary.BigEndian.Uint64(d[4:])
			seed := binary.BigEndian.Uint64(d[12:])
			kind := kUDP4
			if len(d) > helloLen && d[helloLen] == '[' {
				kind = kUDP6
			}
			f = &backendFlow{s: b.res.open(id), m: newMatcher(id, seed, kind)}
			b.flows[key] = f
		} else if f != nil {
			f.m.take(d)
			f.s.got = f.m.got
			f.s.out.err = f.m.err
		}
		b.mu.Unlock()
		if key != "" && from != nil && from.String() != "@" {
			c.WriteTo(d, from)
		}
	}
}

func binaryLen(d []byte) uint16 {
	if len(d) < 16 {
		return 0
	}
	return binary.BigEndian.Uint16(d[14:])
}

// flowResult is a flow's client side.
type flowResult struct {
	sent     int   // datagrams sent after the hello
	expected []int // indices the backend should get
	echoes   *matcher
	err      error
}

// runFlow is the client of one datagram flow.
func runFlow(kind string, c net.PacketConn, to net.Addr, id, seed uint64, replies bool, header int, deadline time.Duration) flowResult {
	p := planFlow(seed, kind)
	local := c.LocalAddr().String()
	if kind == kUnixgram {
		local = ""
	}
	res := flowResult{echoes: newMatcher(id, seed, kind)}
	setBuffers(c)
	var got sync.WaitGroup
	quiet := make(chan struct{})
	if replies {
		got.Add(1)
		go func() {
			defer got.Done()
			buf := make([]byte, 1<<17)
			first := true
			for {
				c.SetReadDeadline(time.Now().Add(deadline))
				select {
				case <-quiet:
					c.SetReadDeadline(time.Now().Add(700 * time.Millisecond))
				default:
				}
				n, _, err := c.ReadFrom(buf)
				if err != nil {
					return
				}
				if first && n >= 4 && string(buf[:4]) == dgramMagic {
					first = false
					continue
				}
				res.echoes.take(buf[:n])
				if res.echoes.err != nil || res.echoes.next >= len(res.echoes.sizes) {
					return
				}
			}
		}()
	}
	if _, err := c.WriteTo(hello(id, seed, local), to); err != nil {
		res.err = fmt.Errorf("hello: %w", err)
	}
	i := 1
	for k, n := range p.bursts {
		if res.err != nil {
			break
		}
		time.Sleep(p.pauses[k])
		for j := 0; j < n; j++ {
			size := p.sizes[i-1]
			if _, err := c.WriteTo(datagram(id, seed, i, size), to); err != nil {
				res.err = fmt.Errorf("datagram %d of %d bytes: %w", i, size, err)
				break
			}
			res.sent++
			// A datagram that does not fit the IPv4 backend's, with
			// the PROXY header the proxy puts before it, is dropped
			// alone (and counted, "too_big"): the model expects it lost.
			if size != oversized && (kind == kUnixgram || size+header <= maxUDP4) {
				res.expected = append(res.expected, i)
			}
			i++
		}
	}
	close(quiet)
	got.Wait()
	return res
}
