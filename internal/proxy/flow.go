// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"context"
	"encoding/binary"
	"log/slog"
	"net/netip"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/proxyproto"
)

// Datagrams (systemd #5196): a datagram listener has no
// connections, so the proxy makes one flow per client address, each with
// its own connected socket to the backend, and the backend's replies on
// that socket map back to their client. Replies leave through the
// listening socket, from the address the client sent to. A flow lives in
// the same loop as the connections: its backend socket is in the epoll set
// with a generation, it counts against -c, and a sweep expires it after
// the flow idle timeout.

const (
	// dgramBatch is how many datagrams one recvmmsg or sendmmsg moves.
	dgramBatch = 32
	// udpSlot holds the largest UDP datagram (65507 bytes over IPv4);
	// unixSlot a unix datagram up to the default socket buffer, which
	// bounds what a unix sender can send.
	udpSlot  = 64 << 10
	unixSlot = 256 << 10
	// oobSize is room for one IP_PKTINFO or IPV6_PKTINFO control message.
	oobSize = 64
	// DefaultFlowIdleTimeout expires a datagram flow with no datagram
	// either way when Config.FlowIdleTimeout is not set: datagrams have no
	// end, so a flow needs one (streams keep "never").
	DefaultFlowIdleTimeout = time.Minute
	// flowEvents: a flow's backend socket is read, never waited on for
	// writing (a datagram that does not fit is dropped, as UDP does).
	flowEvents = unix.EPOLLIN | unix.EPOLLET
)

// flow is one client of a datagram listener: 96 bytes, its key and, on a
// wildcard listener, the control message replies carry. No buffer, no
// goroutine, no timer.
type flow struct {
	fd       int32  // connected socket to the backend
	gen      uint32 // its registration
	listener uint16
	nameLen  uint16 // the client's sockaddr is key[:nameLen]
	seen     uint32 // loop flow tick of the last datagram either way
	// prev and next link the flow into the list of its state
	// (flowbudget.go).
	prev, next flowRef
	state      uint8 // flowsWaiting or flowsAnswered
	refused    bool  // an ECONNREFUSED was logged for this flow
	member     uint8 // its backend in the listener's pool, for its whole life
	// gone: its backend is gone for it (a unix socket that closed, or a
	// backend that refuses while another of the pool is up); it is
	// closed once the send or read at hand is over, and the client's
	// next datagram opens a flow to a backend that is up.
	gone bool
	// resolving: the backend's host name is being looked up for this
	// flow; its socket is not connected yet (flowResolved does it).
	resolving bool
	// key is the client's raw sockaddr followed by the local address it
	// sent to, the flow's key in its listener's map.
	key string
	// oob is the IP_PKTINFO/IPV6_PKTINFO message replies carry so that
	// they leave from the address the client sent to; empty when the
	// listener is bound to one address.
	oob string
	// hdr is the PROXY v2 header each datagram to the backend starts
	// with; empty without --proxy-protocol.
	hdr   string
	start int64
}

// dgramListener is the datagram state of a listener.
type dgramListener struct {
	flows map[string]*flow
	// pktinfo is the control message carrying the destination of each
	// datagram (IP_PKTINFO, IPV6_PKTINFO), 0 when bound to one address.
	// (Not its level: IPPROTO_IP is 0.)
	pktinfo int
	local   netip.AddrPort // the bound address
	unix    bool
	slot    int
	// unbound says a unix client without an address was told (at debug
	// level) that it cannot get replies.
	unbound bool
}

// dgramBatch is the loop's batch for recvmmsg/sendmmsg: message headers,
// two iovecs each (PROXY header, payload), names, control messages and the
// slots, allocated once per slot size and reused.
type dgramBuf struct {
	msgs  [dgramBatch]unix.Mmsghdr
	out   [dgramBatch]unix.Mmsghdr
	iov   [2 * dgramBatch]unix.Iovec
	names [dgramBatch]unix.RawSockaddrAny
	oob   [dgramBatch * oobSize]byte
	key   [unix.SizeofSockaddrAny + 16]byte
	slot  int
	data  []byte
}

// replies is a batch of datagrams from flow sockets for one listener.
type replies struct {
	b        *dgramBuf
	listener uint16
	used     int // slots read into
	out      int // messages in b.out for the listener
}

// flowState is the loop's datagram state.
type flowState struct {
	table []*flow // by backend descriptor
	// lru orders the flows by activity, by the state of their exchange;
	// max is the budget (Config.MaxFlows), evict past it (flowbudget.go).
	lru     [2]flowList
	max     int
	bufs    [2]*dgramBuf
	count   int // flows open
	every   int64
	ticks   uint32
	tick    uint32
	sweepAt int64
	// replies hold the datagrams read from flow sockets until they leave
	// through their listener (by slot size, as bufs).
	replies [2]replies
	// held is the first datagram of each flow waiting for its backend's
	// host name, sent once it is resolved (later ones are dropped).
	held map[int32][]byte
	// packet is the buffer sequential-packet connections read a message
	// into (seqpacket.go), allocated at the first one; packetSize is the
	// most a sender's buffer holds (sendBufferMost), learnt at the start,
	// 0 until it could be.
	packet     []byte
	packetSize int
	// segments packs runs of datagrams for UDP_SEGMENT (gso.go), unless
	// the kernel said it cannot (noSegments).
	segments   segments
	noSegments bool
}

func (l *loop) dgramBuf(slot int) *dgramBuf {
	i := 0
	if slot == unixSlot {
		i = 1
	}
	if b := l.flows.bufs[i]; b != nil {
		return b
	}
	b := &dgramBuf{slot: slot, data: make([]byte, dgramBatch*slot)}
	l.flows.bufs[i] = b
	return b
}

// setupDatagram prepares listener i for datagrams: on a wildcard UDP
// address it asks for the destination of each datagram, so that replies
// leave from it (a client of 127.0.0.2 gets its answer from 127.0.0.2).
func (l *loop) setupDatagram(ln *listenerFD) {
	d := &dgramListener{flows: make(map[string]*flow), slot: udpSlot}
	ln.dgram = d
	if l.flows.max == 0 {
		l.flows.max = l.s.cfg.MaxFlows
		if l.flows.max <= 0 {
			l.flows.max = flowBudget(l.s.cfg.MaxConnections, l.pipes.max)
		}
	}
	if t := l.s.cfg.FlowIdleTimeout; l.flows.every == 0 && t >= 0 {
		if t == 0 {
			t = DefaultFlowIdleTimeout
		}
		l.flows.every = int64(min(max(t/4, time.Millisecond), sweepMax))
		l.flows.ticks = uint32((int64(t) + l.flows.every - 1) / l.flows.every)
	}
	raiseBuffer(ln.fd, unix.SO_RCVBUF, unix.SO_RCVBUFFORCE)
	sa, err := unix.Getsockname(ln.fd)
	if err != nil {
		return
	}
	switch sa := sa.(type) {
	case *unix.SockaddrUnix:
		d.unix, d.slot = true, unixSlot
		// Replies wait in their clients' queues charged to the
		// listener's send buffer: one client that does not read must
		// not fill it for all (its own queue, net.unix.max_dgram_qlen
		// datagrams, fills first).
		raiseBuffer(ln.fd, unix.SO_SNDBUF, unix.SO_SNDBUFFORCE)
	case *unix.SockaddrInet4:
		d.local = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
		if d.local.Addr().IsUnspecified() && unix.SetsockoptInt(ln.fd, unix.IPPROTO_IP, unix.IP_PKTINFO, 1) == nil {
			d.pktinfo = unix.IP_PKTINFO
		}
	case *unix.SockaddrInet6:
		d.local = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
		if d.local.Addr().IsUnspecified() && unix.SetsockoptInt(ln.fd, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1) == nil {
			d.pktinfo = unix.IPV6_PKTINFO
		}
	}
}

// listenerRcvbuf is the receive buffer a datagram listener is given. While
// the loop stands still (a reload executes the next image, and it adopts
// every connection and flow: tens of milliseconds with thousands of them,
// ENGINE.md), datagrams wait in it, and those that do not fit are lost:
// 8 MiB holds 50 ms of 100k small datagrams a second (about 1 KiB each of
// kernel memory). Only what is queued takes memory.
const listenerRcvbuf = 8 << 20

// raiseBuffer gives a datagram listener's buffer opt (SO_RCVBUF or
// SO_SNDBUF) listenerRcvbuf bytes, never less than it has (a .socket
// unit's ReceiveBuffer= may have given more): with force (SO_RCVBUFFORCE,
// SO_SNDBUFFORCE) where the proxy may (CAP_NET_ADMIN), else with opt,
// which the kernel caps at net.core.rmem_max or wmem_max (ReceiveBuffer=
// is not capped, as systemd sets it).
func raiseBuffer(fd, opt, force int) {
	// The kernel reports twice what was set (its bookkeeping overhead).
	if have, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, opt); err != nil || have >= 2*listenerRcvbuf {
		return
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, force, listenerRcvbuf) != nil {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, opt, listenerRcvbuf)
	}
}

// datagrams reads what listener i has, in batches, until it is empty, and
// forwards each datagram to its client's flow.
func (l *loop) datagrams(i int) {
	ln := &l.listeners[i]
	d := ln.dgram
	b := l.dgramBuf(d.slot)
	errs := 0
	for {
		for k := range b.msgs {
			m := &b.msgs[k].Hdr
			m.Name = (*byte)(unsafe.Pointer(&b.names[k]))
			m.Namelen = unix.SizeofSockaddrAny
			b.iov[2*k+1] = unix.Iovec{Base: &b.data[k*b.slot]}
			b.iov[2*k+1].SetLen(b.slot)
			m.Iov, m.Iovlen = &b.iov[2*k+1], 1
			m.Control, m.Controllen = nil, 0
			if d.pktinfo != 0 {
				m.Control, m.Controllen = &b.oob[k*oobSize], oobSize
			}
			m.Flags = 0
		}
		n, e := rawMmsg(unix.SYS_RECVMMSG, ln.fd, b.msgs[:])
		switch {
		case e == unix.EAGAIN:
			return // empty: a new datagram is a new edge
		case e != 0:
			// EINTR, or a pending error of the socket (an ICMP error
			// queued by IP_RECVERR, ENOMEM, ...), which the failed read
			// took off the socket: datagrams may still be queued behind
			// it, and under edge-triggered epoll nothing would tell us
			// again. Read on, a bounded number of times; past that, ask
			// epoll to look at the socket afresh.
			if errs++; errs > dgramBatch {
				l.rearm(ln.fd, listenerEvents, 0)
				return
			}
			continue
		}
		l.forwardIn(ln, i, b, n)
		if n < dgramBatch {
			return // a short batch emptied the socket; a new datagram is a new edge
		}
	}
}

// forwardIn sends the n datagrams of b, read from listener i, to their
// flows, consecutive datagrams of one flow in one sendmmsg.
func (l *loop) forwardIn(ln *listenerFD, i int, b *dgramBuf, n int) {
	var cur *flow
	run := 0
	for k := range n {
		m := &b.msgs[k]
		if m.Hdr.Flags&unix.MSG_TRUNC != 0 {
			ln.n.drop(DropTruncated, 1) // never forward a part of a datagram
			continue
		}
		f, key, nameLen, local := l.flowOf(ln, b, k)
		if f == nil {
			// A new client. Its flow may take the place of another,
			// evicted, whose descriptor a new socket may reuse at
			// once: the run for the current flow goes first.
			if run > 0 {
				l.sendFlow(cur, b, run)
				run = 0
			}
			if f = l.newFlow(ln, i, key, nameLen, local); f == nil {
				continue
			}
		}
		if f.resolving {
			l.hold(f, b.data[k*b.slot:k*b.slot+int(m.Len)])
			continue
		}
		f.seen = l.flows.tick
		l.touch(f, flowsWaiting)
		if f != cur && run > 0 {
			l.sendFlow(cur, b, run)
			run = 0
		}
		cur = f
		o := &b.out[run].Hdr
		*o = unix.Msghdr{}
		b.iov[2*k+1].SetLen(int(m.Len))
		if f.hdr != "" {
			b.iov[2*k] = unix.Iovec{Base: unsafe.StringData(f.hdr)}
			b.iov[2*k].SetLen(len(f.hdr))
			o.Iov, o.Iovlen = &b.iov[2*k], 2
		} else {
			o.Iov, o.Iovlen = &b.iov[2*k+1], 1
		}
		b.out[run].Len = m.Len // payload bytes, for the count
		run++
	}
	if run > 0 {
		l.sendFlow(cur, b, run)
	}
}

// sendFlow sends the first run messages of b.out on f's backend socket. A
// datagram the socket refuses is dropped and counted: nothing is queued.
func (l *loop) sendFlow(f *flow, b *dgramBuf, run int) {
	segment := f.hdr == "" && !l.listeners[f.listener].dgram.unix
	n := l.listeners[f.listener].n
	sent, bytes := l.sendOrDrop(int(f.fd), b.out[:run], segment, false, f, n)
	n.bytesIn.Add(bytes)
	n.datagramsIn.Add(sent)
	if f.gone {
		l.closeFlow(f, "backend gone")
	}
}

// sendOrDrop sends msgs on fd, segmented where it can be when segment is
// set, and reports how many went and their bytes. A full socket buffer
// drops the rest (they would meet the same full buffer), unless each
// message goes to a queue of its own (perDestination: a unix datagram
// socket's replies, each to its client's socket, where EAGAIN says that
// one client's queue is full); any other error belongs to the one datagram
// the send stopped at, which is dropped alone, and the send goes on with
// the next. A unix datagram larger than the socket's send buffer (which
// the kernel sets below the 256 KiB the proxy reads) raises the buffer
// once and goes again. f is the flow whose backend fd is, nil for replies;
// cnt the counters of their listener.
func (l *loop) sendOrDrop(fd int, msgs []unix.Mmsghdr, segment, perDestination bool, f *flow, cnt *listenerCounters) (sent, bytes int64) {
	raised := false
	for len(msgs) > 0 {
		n, b, e := l.sendDatagrams(fd, msgs, segment)
		sent += int64(n)
		bytes += b
		msgs = msgs[n:]
		switch {
		case len(msgs) == 0:
		case e == 0 && n > 0, e == unix.EINTR:
			// sendmmsg stops without an error at the first datagram
			// that fails after one went: the next call reports it.
			// (Nothing sent and no error would loop: it drops one.)
		case e == unix.EMSGSIZE && segment:
			// The failed send may have been a run of segments: send
			// one by one from here, to find the one datagram too big.
			segment = false
		case e == unix.EMSGSIZE && !raised && msgs[0].Len > udpSlot:
			// Only a unix datagram is this large (msgs' Len is the
			// payload read): its socket's buffer may take it raised.
			raised = true
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 2*unixSlot)
		case (e == unix.EAGAIN || e == unix.ENOBUFS) && perDestination:
			cnt.drop(DropBufferFull, 1)
			msgs = msgs[1:]
		case e == unix.EAGAIN || e == unix.ENOBUFS:
			cnt.drop(DropBufferFull, len(msgs))
			return sent, bytes
		default:
			l.dropOne(f, e, cnt)
			msgs = msgs[1:]
			if f != nil && f.gone {
				cnt.drop(DropBackendRefused, len(msgs)) // the flow closes: the rest go with it
				return sent, bytes
			}
		}
	}
	return sent, bytes
}

// dropOne counts the datagram a send refused with e. ECONNREFUSED on a
// flow is an ICMP port unreachable from an earlier datagram, which the
// kernel reports on this send; EMSGSIZE a datagram larger than the socket
// takes (a 65527-byte IPv6 datagram to an IPv4 backend, or the largest one
// with a PROXY header before it).
func (l *loop) dropOne(f *flow, e unix.Errno, n *listenerCounters) {
	switch {
	case (e == unix.ECONNREFUSED || e == unix.ENOTCONN) && f != nil:
		// ENOTCONN: a unix datagram socket whose backend closed, after
		// the ECONNREFUSED that said so.
		l.flowRefused(f)
	case e == unix.EMSGSIZE:
		n.drop(DropTooBig, 1)
	default:
		n.drop(DropSendError, 1)
	}
}

// flowOf finds the flow of datagram k of b; when there is none, it returns
// what newFlow needs to open one: the flow's key (which allocates only
// then), the length of the client's address in it, and the local address
// the client sent to.
func (l *loop) flowOf(ln *listenerFD, b *dgramBuf, k int) (*flow, string, int, netip.Addr) {
	d := ln.dgram
	m := &b.msgs[k].Hdr
	nameLen := int(m.Namelen)
	if nameLen > unix.SizeofSockaddrAny {
		nameLen = unix.SizeofSockaddrAny
	}
	key := b.key[:0]
	key = append(key, unsafe.Slice((*byte)(unsafe.Pointer(&b.names[k])), nameLen)...)
	var local netip.Addr
	if d.pktinfo != 0 {
		local = pktinfoAddr(b.oob[k*oobSize : k*oobSize+int(m.Controllen)])
		if local.IsValid() {
			a := local.As16()
			key = append(key, a[:]...)
		}
	}
	if f := d.flows[string(key)]; f != nil { // no allocation: the compiler sees the conversion
		return f, "", 0, netip.Addr{}
	}
	return nil, string(key), nameLen, local
}

// newFlow opens a flow: a socket connected to the listener's backend,
// registered in the loop. With the flow budget spent, it evicts a flow
// first (flowbudget.go). When the backend cannot be reached, or there are
// no descriptors, the datagram is dropped; the next one from the client
// tries again.
func (l *loop) newFlow(ln *listenerFD, i int, key string, nameLen int, local netip.Addr) *flow {
	d := ln.dgram
	if l.draining {
		return nil
	}
	if src := keySource(key, nameLen, l.s.cfg.MaxPerSource); l.sourceFull(src, true) && !l.evictSourceFlow(src) {
		// Its flows are all too recent to be found: the datagram goes.
		ln.n.drop(DropNoFlow, 1)
		l.warn(warnFlows, "flow limit per client address reached, dropping a datagram", "",
			"listener", ln.label, "source", src.String(), "max_per_source", l.s.cfg.MaxPerSource, "hint", "raise it with --per-source-max")
		return nil
	}
	if l.flows.count >= l.flows.max {
		l.evictFlow()
		l.warn(warnFlows, "flow limit reached, closing the least recently active flows to make room for new clients", "",
			"listener", ln.label, "max_flows", l.flows.max, "hint", "raise it with --flows-max")
	}
	// A flow stays on the backend it starts on for its whole life; a
	// backend that refuses the flow's socket (a unix one gone) is marked
	// down and the next one the policy picks is tried.
	p := &ln.pool
	m, tried := 0, 0
	if p.several() {
		m = max(p.pick(keySource(key, nameLen, 1), l.now()), 0)
	}
	fd, resolve, t, err := l.flowSocket(&p.members[m])
	for err != nil && p.several() && !descriptorsShort(err) && tried < len(p.members)-1 {
		l.memberFailed(i, m, err.Error())
		n := p.pick(keySource(key, nameLen, 1), l.now())
		if n < 0 {
			n = (m + 1) % len(p.members)
		}
		m, tried = n, tried+1
		fd, resolve, t, err = l.flowSocket(&p.members[m])
	}
	if err != nil {
		ln.n.drop(DropNoFlow, 1)
		kind := warnBackend
		if descriptorsShort(err) {
			kind = warnDescriptors
		} else {
			e, _ := err.(unix.Errno)
			ln.n.connectFailed[connectFailureOf(e)].Add(1)
			l.memberFailed(i, m, err.Error())
		}
		l.warn(kind, "cannot open a flow to the backend, dropping the datagram", err.Error(), "listener", ln.label, "backend", t.name, "error", err.Error())
		return nil
	}
	if l.flows.every > 0 {
		l.flows.tick = uint32(l.now() / l.flows.every) // the sweep may have been off
	}
	f := &flow{fd: int32(fd), gen: l.nextGen(), listener: uint16(i), member: uint8(m), nameLen: uint16(nameLen), key: key, seen: l.flows.tick, start: l.now()}
	if err := l.add(fd, flowEvents, f.gen); err != nil {
		unix.Close(fd)
		ln.n.drop(DropNoFlow, 1)
		return nil
	}
	l.insertFlow(ln, f, local)
	ln.n.flowsOpened.Add(1)
	if resolve {
		f.resolving = true
		l.waitLookup(p.members[m].addr, deadline{fd: f.fd, gen: f.gen, at: -1})
	}
	if nameLen <= 2 && d.unix && !d.unbound {
		d.unbound = true
		l.s.log.Debug("a unix client without an address cannot get replies: bind its socket to get them; its datagrams are forwarded", "listener", ln.label)
	}
	return f
}

// insertFlow puts a new or adopted flow in the tables, with the control
// message and PROXY header its datagrams carry.
func (l *loop) insertFlow(ln *listenerFD, f *flow, local netip.Addr) {
	d := ln.dgram
	fd := int(f.fd)
	if d.pktinfo != 0 && local.IsValid() {
		f.oob = string(pktinfoReply(d.pktinfo, local))
	}
	if v := l.s.cfg.ProxyProtocol; v == proxyproto.V2 {
		dst := d.local
		if local.IsValid() {
			dst = netip.AddrPortFrom(local.Unmap(), d.local.Port())
		}
		f.hdr = string(proxyproto.DatagramHeader(sockaddrAddrPort(f.name()), dst))
	}
	if fd >= len(l.flows.table) {
		table := make([]*flow, max(2*len(l.flows.table), fd+1, 64))
		copy(table, l.flows.table)
		l.flows.table = table
	}
	l.flows.table[fd] = f
	d.flows[f.key] = f
	if p := &ln.pool; p.several() && int(f.member) < len(p.members) {
		p.members[f.member].add(1)
	}
	f.state = flowsWaiting
	l.link(f)
	if l.s.cfg.MaxPerSource > 0 {
		l.sourceAdd(flowSource(f), true, 1)
	}
	l.flows.count++
	l.active++
	l.idleAt = 0
	ln.n.flows.Add(1)
}

// flowSocket opens a flow's socket to backend b: connected, unless b is a
// host name (an IPv6 socket then, which reaches IPv4 addresses too,
// mapped, so it can be opened before the lookup says which). On error the
// socket is closed.
func (l *loop) flowSocket(b *member) (fd int, resolve bool, t target, err error) {
	resolve = len(b.static) == 0
	t = target{name: b.name}
	family := unix.AF_INET6
	if !resolve {
		t = b.static[0]
		switch t.sa.(type) {
		case *unix.SockaddrInet4:
			family = unix.AF_INET
		case *unix.SockaddrUnix:
			family = unix.AF_UNIX
		}
	}
	fd, err = unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	switch {
	case err != nil:
	case resolve:
		err = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
	case family == unix.AF_UNIX:
		// Autobind: the backend replies to an abstract name the kernel
		// picks, which a unix datagram sender has none of otherwise.
		if err = unix.Bind(fd, &unix.SockaddrUnix{}); err == nil {
			err = unix.Connect(fd, t.sa)
		}
	default:
		err = unix.Connect(fd, t.sa)
	}
	if err != nil && fd >= 0 {
		unix.Close(fd)
		fd = -1
	}
	return fd, resolve, t, err
}

// descriptorsShort says err is the proxy's shortage, not the backend's.
func descriptorsShort(err error) bool {
	return err == unix.EMFILE || err == unix.ENFILE || err == unix.ENOBUFS || err == unix.ENOMEM
}

func (f *flow) name() []byte { return unsafe.Slice(unsafe.StringData(f.key), f.nameLen) }

// flowEvent handles an event on a flow's backend socket: the backend's
// datagrams are read into the reply batch, and leave for the client through
// the listener when the batch is full or the loop has handled every event
// of its wait (flushReplies): replies of many flows, one sendmmsg.
func (l *loop) flowEvent(fd int, gen uint32, ev uint32) {
	if fd >= len(l.flows.table) {
		return
	}
	f := l.flows.table[fd]
	if f == nil || f.gen != gen {
		return // stale
	}
	r := l.replyBatch(l.listeners[f.listener].dgram.slot)
	if r.out > 0 && r.listener != f.listener {
		l.flushReplies(r)
	}
	r.listener = f.listener
	b := r.b
	f.seen = l.flows.tick
	l.touch(f, flowsAnswered)
	errs := 0
	for {
		if r.used == dgramBatch {
			l.flushReplies(r)
		}
		lo := r.used
		for k := lo; k < dgramBatch; k++ {
			m := &b.msgs[k].Hdr
			*m = unix.Msghdr{}
			b.iov[k] = unix.Iovec{Base: &b.data[k*b.slot]}
			b.iov[k].SetLen(b.slot)
			m.Iov, m.Iovlen = &b.iov[k], 1
		}
		n, e := rawMmsg(unix.SYS_RECVMMSG, fd, b.msgs[lo:])
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.ECONNREFUSED:
			// The backend's port is closed (ICMP unreachable). Reading
			// consumed the error: no busy loop; the flow stays, unless
			// its backend is gone for it.
			l.flowRefused(f)
			if f.gone {
				l.closeFlow(f, "backend gone")
				return
			}
			continue
		case e != 0:
			// Another ICMP error (host or administratively prohibited:
			// EHOSTUNREACH, EACCES; ...) or ENOMEM, which this read took
			// off the socket: replies may be queued behind it, and under
			// edge-triggered epoll nothing would say so again. Read on, a
			// bounded number of times; past that, ask epoll to look at
			// the socket afresh.
			if errs++; errs > dgramBatch {
				l.rearm(fd, flowEvents, f.gen)
				return
			}
			continue
		}
		l.queueReplies(r, f, lo, n)
		if n < dgramBatch-lo {
			// A short batch emptied the socket, or stopped at a
			// pending error (ICMP unreachable: recvmsg checks it
			// before it dequeues); the error's arrival raised an edge
			// of its own, and the next event reads on.
			return
		}
	}
}

// replyBatch is the loop's batch of replies for listeners of slot size slot.
func (l *loop) replyBatch(slot int) *replies {
	i := 0
	if slot == unixSlot {
		i = 1
	}
	r := &l.flows.replies[i]
	if r.b == nil {
		r.b = &dgramBuf{slot: slot, data: make([]byte, dgramBatch*slot)}
	}
	return r
}

// queueReplies adds the n datagrams read into slots lo.. of r to the
// messages for f's client.
func (l *loop) queueReplies(r *replies, f *flow, lo, n int) {
	if f.nameLen <= 2 {
		l.listeners[f.listener].n.drop(DropNoAddress, n) // the client has no address to reply to
		return
	}
	b := r.b
	for k := lo; k < lo+n; k++ {
		m := &b.msgs[k]
		if m.Hdr.Flags&unix.MSG_TRUNC != 0 {
			l.listeners[f.listener].n.drop(DropTruncated, 1)
			continue
		}
		o := &b.out[r.out]
		o.Hdr = unix.Msghdr{Name: unsafe.StringData(f.key), Namelen: uint32(f.nameLen)}
		b.iov[k].SetLen(int(m.Len))
		o.Hdr.Iov, o.Hdr.Iovlen = &b.iov[k], 1
		if f.oob != "" {
			o.Hdr.Control = unsafe.StringData(f.oob)
			o.Hdr.SetControllen(len(f.oob))
		}
		o.Len = m.Len
		r.out++
	}
	r.used = lo + n
}

// flushReplies sends the replies waiting in r through their listener. One
// the listener cannot take is dropped and counted, never queued: the
// client's socket is gone (ECONNREFUSED on unix), or the listener's buffer
// is full.
func (l *loop) flushReplies(r *replies) {
	ln := l.listeners[r.listener]
	// Replies through a unix listener go each to its client's own
	// socket, whose queue may be full when the others' are not.
	sent, bytes := l.sendOrDrop(ln.fd, r.b.out[:r.out], !ln.dgram.unix, ln.dgram.unix, nil, ln.n)
	r.used, r.out = 0, 0
	ln.n.bytesOut.Add(bytes)
	ln.n.datagramsOut.Add(sent)
}

// sendReplies flushes every reply batch; the loop calls it once it has
// handled the events of a wait.
func (l *loop) sendReplies() {
	for i := range l.flows.replies {
		if r := &l.flows.replies[i]; r.used > 0 {
			l.flushReplies(r)
		}
	}
}

// flowRefused counts an ICMP port unreachable (or a unix backend gone) and
// says so at debug level, once per flow.
func (l *loop) flowRefused(f *flow) {
	ln := &l.listeners[f.listener]
	ln.n.drop(DropBackendRefused, 1)
	// Nothing listens there: new flows go elsewhere for a while. A flow
	// keeps its backend while it is the only one to go to; a UDP port
	// that answers again serves the same connected socket, but a unix
	// datagram socket whose backend closed is dead for good, even when a
	// new one is bound at the same path.
	l.memberFailed(int(f.listener), int(f.member), unix.ECONNREFUSED.Error())
	if ln.dgram.unix || ln.pool.anotherUp(int(f.member), l.now()) {
		f.gone = true
	}
	if !f.refused {
		// Once per flow, and rate-limited with the connections' backend
		// warnings: a backend that is down is as loud for datagrams as
		// for streams.
		f.refused = true
		l.warn(warnBackend, "backend refused datagrams (ICMP port unreachable): is it running?", "connection refused",
			"client", flowClient(f), "listener", ln.label, "backend", l.flowBackend(f).name)
	}
}

// flowBackend is the backend f is on; a flow carried from a backend the
// configuration no longer lists is named by its listener's first.
func (l *loop) flowBackend(f *flow) *member {
	p := &l.listeners[f.listener].pool
	if int(f.member) < len(p.members) {
		return &p.members[f.member]
	}
	return &p.members[0]
}

func flowClient(f *flow) string {
	if ap := sockaddrAddrPort(f.name()); ap.IsValid() {
		return ap.String()
	}
	return "unix"
}

// closeFlow ends a flow: its socket, its table and map entries.
func (l *loop) closeFlow(f *flow, why string) {
	if m := l.poolMember(f.listener, f.member); m != nil {
		m.add(-1)
	}
	if f.resolving {
		if lk := l.lookups[l.flowBackend(f).name]; lk != nil {
			lk.live--
		}
		delete(l.flows.held, f.fd)
	}
	l.unlink(f)
	if l.s.cfg.MaxPerSource > 0 {
		l.sourceAdd(flowSource(f), true, -1)
	}
	l.flows.table[f.fd] = nil
	delete(l.listeners[f.listener].dgram.flows, f.key)
	unix.Close(int(f.fd))
	l.flows.count--
	l.listeners[f.listener].n.flows.Add(-1)
	l.active--
	if l.active == 0 && l.s.cfg.ExitIdleTime > 0 {
		l.idleAt = l.now() + int64(l.s.cfg.ExitIdleTime)
	}
	if l.s.log.Enabled(context.Background(), slog.LevelDebug) && !l.stopping {
		l.s.log.Debug("flow closed", "client", flowClient(f), "listener", l.listeners[f.listener].label, "reason", why,
			"duration", time.Duration(l.now()-f.start).Round(time.Millisecond).String())
	}
}

// closeFlows ends every flow: at a stop, as replies could no longer leave
// through the closed listeners.
func (l *loop) closeFlows() {
	for _, f := range l.flows.table {
		if f != nil {
			l.closeFlow(f, "stopping")
		}
	}
}

// flowTimeout is when the flow sweep is due next, 0 when none is.
func (l *loop) flowTimeout(now int64) int64 {
	if l.flows.count == 0 || l.flows.every == 0 {
		l.flows.sweepAt = 0
		return 0
	}
	if l.flows.sweepAt == 0 {
		l.flows.sweepAt = now + l.flows.every
	}
	return l.flows.sweepAt
}

// flowTimers runs the flow sweep when due: a flow with no datagram either
// way for the flow idle timeout expires (one pass over the table per tick,
// as the connection sweep does).
func (l *loop) flowTimers(now int64) {
	if l.flows.sweepAt == 0 || now < l.flows.sweepAt {
		return
	}
	l.flows.sweepAt = 0
	l.flows.tick = uint32(now / l.flows.every)
	for _, f := range l.flows.table {
		if f != nil && l.flows.tick-f.seen > l.flows.ticks {
			l.listeners[f.listener].n.flowsExpired.Add(1)
			l.closeFlow(f, "idle")
		}
	}
}

// pktinfoAddr is the destination address in a received control message.
func pktinfoAddr(oob []byte) netip.Addr {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		if uint64(h.Len) < unix.SizeofCmsghdr || uint64(h.Len) > uint64(len(oob)) {
			break
		}
		data := oob[unix.SizeofCmsghdr:h.Len]
		switch {
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			// The header's destination, the address the client sent
			// to; the kernel's choice of a local address (Spec_dst)
			// only for a broadcast or multicast one, which a reply
			// cannot come from.
			p := (*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0]))
			if a := netip.AddrFrom4(p.Addr); !a.IsMulticast() && p.Addr != [4]byte{255, 255, 255, 255} {
				return a
			}
			return netip.AddrFrom4(p.Spec_dst)
		case h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			p := (*unix.Inet6Pktinfo)(unsafe.Pointer(&data[0]))
			return netip.AddrFrom16(p.Addr)
		}
		oob = oob[min(unix.CmsgSpace(int(h.Len)-unix.SizeofCmsghdr), len(oob)):]
	}
	return netip.Addr{}
}

// pktinfoReply is the control message that makes a reply leave from local.
// The interface is left to routing (0), as the address alone picks it.
func pktinfoReply(kind int, local netip.Addr) []byte {
	if kind == unix.IP_PKTINFO {
		b := make([]byte, unix.CmsgSpace(unix.SizeofInet4Pktinfo))
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		h.Level, h.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
		h.SetLen(unix.CmsgLen(unix.SizeofInet4Pktinfo))
		p := (*unix.Inet4Pktinfo)(unsafe.Pointer(&b[unix.SizeofCmsghdr]))
		p.Spec_dst = local.Unmap().As4()
		return b
	}
	b := make([]byte, unix.CmsgSpace(unix.SizeofInet6Pktinfo))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = unix.IPPROTO_IPV6, unix.IPV6_PKTINFO
	h.SetLen(unix.CmsgLen(unix.SizeofInet6Pktinfo))
	p := (*unix.Inet6Pktinfo)(unsafe.Pointer(&b[unix.SizeofCmsghdr]))
	p.Addr = local.As16()
	return b
}

// sockaddrAddrPort reads a raw IPv4 or IPv6 sockaddr; the zero AddrPort
// for anything else (a unix client).
func sockaddrAddrPort(b []byte) netip.AddrPort {
	if len(b) < 2 {
		return netip.AddrPort{}
	}
	family := *(*uint16)(unsafe.Pointer(&b[0]))
	switch {
	case family == unix.AF_INET && len(b) >= unix.SizeofSockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:4]))
	case family == unix.AF_INET6 && len(b) >= unix.SizeofSockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])).Unmap(), binary.BigEndian.Uint16(b[2:4]))
	}
	return netip.AddrPort{}
}

// flowWaiter is the flow an entry of a lookup's list stands for (at < 0),
// or nil when it is not a flow or has gone.
func (l *loop) flowWaiter(d deadline) *flow {
	if d.at >= 0 || int(d.fd) >= len(l.flows.table) {
		return nil
	}
	if f := l.flows.table[d.fd]; f != nil && f.gen == d.gen && f.resolving {
		return f
	}
	return nil
}

// hold keeps the first datagram of a flow whose backend is being looked
// up, so that a client's first query is not lost to the lookup; the next
// ones are dropped (the client retries, as over any lossy path).
func (l *loop) hold(f *flow, payload []byte) {
	if _, ok := l.flows.held[f.fd]; ok {
		l.listeners[f.listener].n.drop(DropNoFlow, 1)
		return
	}
	if l.flows.held == nil {
		l.flows.held = make(map[int32][]byte)
	}
	l.flows.held[f.fd] = append([]byte(nil), payload...)
}

// flowResolved connects a flow to the first address its backend's host
// name resolved to, and sends the datagram it held; a failed lookup
// closes the flow (the next datagram of the client looks it up again).
func (l *loop) flowResolved(f *flow, r resolution) {
	f.resolving = false
	held, ok := l.flows.held[f.fd]
	delete(l.flows.held, f.fd)
	ln := &l.listeners[f.listener]
	err := r.err
	if err == nil {
		var sa unix.SockaddrInet6
		switch t := r.targets[0].sa.(type) {
		case *unix.SockaddrInet4:
			sa.Port = t.Port
			sa.Addr = [16]byte{10: 0xff, 11: 0xff, 12: t.Addr[0], 13: t.Addr[1], 14: t.Addr[2], 15: t.Addr[3]} // IPv4-mapped
		case *unix.SockaddrInet6:
			sa = *t
		}
		err = unix.Connect(int(f.fd), &sa)
	}
	if err != nil {
		e, _ := err.(unix.Errno)
		ln.n.connectFailed[connectFailureOf(e)].Add(1)
		if ok {
			ln.n.drop(DropNoFlow, 1)
		}
		l.warn(warnBackend, "cannot reach the backend of a flow, dropping its datagrams", err.Error(),
			"client", flowClient(f), "backend", l.flowBackend(f).name, "error", err.Error())
		l.closeFlow(f, "backend unreachable")
		return
	}
	if !ok {
		return
	}
	iov := [2]unix.Iovec{}
	msg := [1]unix.Mmsghdr{}
	n := 0
	if f.hdr != "" {
		iov[0] = unix.Iovec{Base: unsafe.StringData(f.hdr)}
		iov[0].SetLen(len(f.hdr))
		n++
	}
	if len(held) > 0 {
		iov[n] = unix.Iovec{Base: &held[0]}
		iov[n].SetLen(len(held))
		n++
	}
	if n > 0 {
		msg[0].Hdr.Iov = &iov[0]
		msg[0].Hdr.SetIovlen(n)
	}
	if sent, _ := rawMmsg(unix.SYS_SENDMMSG, int(f.fd), msg[:]); sent == 1 {
		ln.n.bytesIn.Add(int64(len(held)))
		ln.n.datagramsIn.Add(1)
	} else {
		ln.n.drop(DropSendError, 1)
	}
}
