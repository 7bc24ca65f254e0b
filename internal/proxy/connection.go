// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"context"
	"log/slog"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
)

// conn is one client and its backend: a small state machine
//
//	resolving -> connecting -> open -> closed
//
//	             waiting (a refused round: backoff until the next)
//	                ^   |
//	                |   v
//	resolving -> connecting -> open -> closed
//
// whose open state is two independent directions, client->backend (in) and
// backend->client (out). It holds no buffer of its own: bytes in flight sit
// in a pipe lent by the loop's pool, and only for as long as they are in
// flight. A PROXY protocol header is a memory pipe the in direction starts
// with; the connect deadline, the retry backoff and the idle sweep are the
// loop's, so a connection has no timer of its own.
type conn struct {
	fd  [2]int32  // client, backend; -1 while there is no backend socket
	gen [2]uint32 // registration of each side, to tell stale events
	// The small fields, ordered so that they fill 16 bytes exactly and the
	// whole stays at 128 (TestConnectionSize).
	seen     uint32 // loop tick of the last event (idle timeout)
	listener uint16
	attempt  uint8 // index of the backend address being tried (at most maxTargets)
	member   uint8 // index of its backend in the listener's pool; noMember: none
	state    uint8
	tcp      [2]bool  // TCP (vs unix) socket: nodelay, and RST on abort
	ready    [2]uint8 // what each side is known ready for (canRead...)
	round    uint8    // connect rounds retried, for the backoff
	fdWait   bool     // waiting for a descriptor for the backend socket
	packets  bool     // a sequential-packet connection: message by message (seqpacket.go)
	dir      [2]direction
	start    int64 // loop clock at accept
	client   netip.AddrPort
	dial     *dialState // set for a backend host name, once resolved
}

const (
	stateResolving uint8 = iota + 1
	stateConnecting
	stateWaiting // for the next connect round, or for a descriptor
	stateOpen
)

// Readiness of one side, learned from edge-triggered events and cleared by
// EAGAIN. peerClosed is sticky: once the peer has sent FIN (or an error
// came), a short read no longer proves the socket empty, so reads go on
// until EOF. urgent is sticky too: the peer sent urgent data (MSG_OOB,
// reported as EPOLLPRI), and a read stops short at the urgent mark while
// bytes wait behind it, which splice cannot pass at all; such a direction
// reads until EAGAIN, and never splices.
const (
	canRead uint8 = 1 << iota
	canWrite
	peerClosed
	urgent
	// peerReset: a unix peer is gone, having closed with bytes or
	// messages sent to it unread, or refused a write (writeFailed). What
	// it sent before is read to the end, then the connection is reset.
	// Not in the handoff record: after a reload the end comes as a plain
	// one, with everything before it.
	peerReset
)

// direction is one way through the connection.
type direction struct {
	pipe  *pipe // bytes read and not yet written; nil when there are none
	n     int64 // bytes delivered
	flags uint8
}

const (
	srcEOF     uint8 = 1 << iota // the source ended its stream
	dstShut                      // the destination was shut down for writing
	bulk                         // the last read filled the buffer: splice
	noSplice                     // the kernel cannot splice this pair
	header                       // the pipe holds the PROXY header, not client bytes
	fdsDropped                   // descriptors (SCM_RIGHTS) arrived and were closed; logged
	parkedMsg                    // the pipe holds a message pumpPackets parked, counted in loop.parked
)

// armed marks, in c.dir[1].flags, a connection whose TCP sockets reset on
// close since a reload or the fd store handed them over (armResets): a
// clean end clears that first.
const armed = 1 << 7

// connEvents: every socket is registered once, for everything,
// edge-triggered; interest is never toggled. EPOLLPRI says urgent data came.
const connEvents = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLPRI | unix.EPOLLET

// streamSocket sets what every stream socket of a connection needs, at
// accept and at socket(). SO_OOBINLINE keeps an urgent byte (MSG_OOB) in
// the stream, in order: without it a plain read skips the byte, and the
// proxy would silently drop it. Urgency itself is not carried (the byte
// goes on as a normal one), as nothing after a proxy could rely on it.
func (l *loop) streamSocket(fd int, tcp bool) {
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_OOBINLINE, 1)
	if b := l.s.cfg.SocketBuffer; b > 0 {
		// Fixed buffers instead of the kernel's autotuning, which lets
		// a client that never reads hold megabytes (socket-proxyd(8),
		// --socket-buffer).
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, b)
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, b)
	}
	if tcp {
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		l.keepAlive(fd)
		if l.s.cfg.Keep != nil {
			resetOnClose(fd) // until its clean end (keep.go)
		}
	}
}

// open starts a connection for an accepted client.
func (l *loop) open(fd int, sa unix.Sockaddr, listener int) {
	c := &conn{fd: [2]int32{int32(fd), -1}, listener: uint16(listener), start: l.now(), client: clientAddr(sa)}
	c.gen[0] = l.nextGen()
	c.packets = l.listeners[listener].kind == activation.SequentialPacket
	_, isUnix := sa.(*unix.SockaddrUnix)
	c.tcp[0] = !isUnix
	l.streamSocket(fd, c.tcp[0])
	if c.packets {
		passCredentials(fd)
	}
	if err := l.add(fd, connEvents, c.gen[0]); err != nil {
		unix.Close(fd)
		l.warn(warnOther, "cannot watch client, closing it", err.Error(), "client", c.clientString(), "error", err.Error())
		return
	}
	l.track(fd, c)
	l.opened(c)
	l.sourceAdd(c.client.Addr(), false, 1)
	l.connectQ = append(l.connectQ, deadline{fd: int32(fd), gen: c.gen[0], at: after(c.start, l.connectTimeout)})
	l.dialBackend(c)
}

// event handles what epoll said about one side of c.
func (l *loop) event(c *conn, side, fd int, ev uint32) {
	r := c.ready[side]
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		r |= canRead
	}
	if ev&unix.EPOLLPRI != 0 {
		r |= canRead | urgent
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		r |= canWrite
	}
	if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		r |= peerClosed
	}
	c.ready[side] = r
	if c.state != stateOpen {
		switch {
		case side == 1 && c.state == stateConnecting:
			l.connectDone(c, fd, ev)
		case side == 0 && ev&unix.EPOLLERR != 0:
			// The client reset while waiting for the backend.
			e, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
			l.abort(c, unix.Errno(e))
		}
		return // otherwise the client's readiness is remembered for later
	}
	c.seen = l.tick
	if !l.pump(c, side) || !l.pump(c, 1-side) {
		return
	}
	if ev&unix.EPOLLERR != 0 {
		// An error neither direction ran into, e.g. a reset from a
		// client whose direction had ended while the backend was
		// silent: end the connection now, not at the next write.
		if e, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err == nil && e != 0 {
			if unix.Errno(e) == unix.ECONNRESET && l.drainsFirst(c, side) {
				if l.pump(c, side) {
					l.pump(c, 1-side)
				}
				return
			}
			l.abort(c, unix.Errno(e))
		}
	}
}

// pump moves bytes from side d to side 1-d until one of them would block,
// the source ends, or an error ends the connection. It reports whether the
// connection is still open.
//
// Small reads go through the loop's shared buffer and straight out with
// write; what the destination cannot take is parked in a pooled pipe. Once a
// read fills the buffer the direction is bulk and splicePump moves it.
func (l *loop) pump(c *conn, d int) bool {
	if c.ready[1-d]&peerReset != 0 {
		if c.ready[d]&peerReset != 0 {
			l.abort(c, unix.ECONNRESET) // both peers gone: nowhere to deliver
			return false
		}
		return l.sink(c, d)
	}
	if c.packets {
		return l.pumpPackets(c, d)
	}
	dir := &c.dir[d]
	dst := int(c.fd[1-d])
	for {
		if dir.flags&(bulk|noSplice) == bulk && c.ready[d]&urgent == 0 && (dir.pipe == nil || dir.pipe.r >= 0) {
			open, more := l.splicePump(c, d)
			if !open {
				return false
			}
			if !more {
				return true
			}
		}
		if p := dir.pipe; p != nil && p.n > 0 {
			if c.ready[1-d]&canWrite == 0 {
				return true
			}
			n, e := l.drain(c, p, dst)
			if n > 0 && dir.flags&header == 0 {
				l.count(c, d, n)
			}
			if e == unix.EAGAIN {
				c.ready[1-d] &^= canWrite
				return true
			}
			if e == 0 && n == 0 {
				e = unix.EIO // the pipe holds less than counted: never spin on it
			}
			if e != 0 {
				return l.writeFailed(c, d, e)
			}
			if p.n > 0 {
				continue
			}
			if dir.flags&header != 0 {
				dir.flags &^= header
				l.pipes.put(p)
				dir.pipe = nil
				if l.keep(c) {
					continue // splicing from now on
				}
			}
		}
		if p := dir.pipe; p != nil && !c.isKept() {
			l.pipes.put(p)
			dir.pipe = nil
		}
		if dir.flags&srcEOF != 0 {
			return l.ended(c, d)
		}
		if c.ready[d]&canRead == 0 || c.ready[1-d]&canWrite == 0 {
			return true
		}
		if c.isKept() {
			if read, e := l.keptRead(c, d); !read {
				if e == unix.EAGAIN {
					return true
				}
				continue
			}
		}
		n, cut, e := l.read(c, d)
		switch {
		case e == unix.EAGAIN:
			c.ready[d] &^= canRead
			return true
		case e == unix.EINTR:
			continue
		case e != 0:
			l.abort(c, e)
			return false
		case n == 0:
			// Only a read that returns 0 proves the end of the
			// stream (a splice that returns 0 may have stopped at
			// an urgent mark). With the peer gone (peerReset), ended
			// then resets the connection.
			dir.flags |= srcEOF
			continue
		case n == len(l.buf):
			if c.ready[d]&urgent == 0 {
				dir.flags |= bulk
			}
		case c.ready[d]&(peerClosed|urgent) == 0 && !cut:
			// A short read emptied the socket; new data will raise a
			// new edge, so skip the read that would say EAGAIN. That
			// is proof only while the peer has not closed, has sent
			// no urgent data (a read stops at its mark) and no
			// descriptors (a unix read stops after them).
			c.ready[d] &^= canRead
		}
		w, e := rawWrite(dst, l.buf[:n])
		if e == unix.EAGAIN {
			w = 0
			c.ready[1-d] &^= canWrite
		} else if e != 0 {
			return l.writeFailed(c, d, e)
		}
		if w > 0 {
			l.count(c, d, w)
		}
		if w < n {
			dir.pipe = l.park(l.buf[w:n])
		}
	}
}

// read reads what side d's socket holds into the shared buffer. A unix
// socket is read with recvmsg, which also says whether the read stopped
// after a message carrying descriptors (cut): they are not forwarded (as in
// the original; systemd #22744), the kernel closes them, and the bytes
// around them flow on.
func (l *loop) read(c *conn, d int) (n int, cut bool, e unix.Errno) {
	fd := int(c.fd[d])
	if c.tcp[d] {
		n, e = rawRead(fd, l.buf)
		if e == unix.EAGAIN && c.ready[d]&urgent != 0 && queued(fd) {
			// A read that starts at the urgent mark says EAGAIN, with
			// the bytes still queued, when a signal is pending on the
			// thread, and the runtime signals the loop's thread to
			// preempt it: no edge will come for those bytes, so the
			// read is made again, as after EINTR.
			e = unix.EINTR
		}
		return n, false, e
	}
	n, flags, e := rawRecvmsg(fd, l.buf)
	cut = flags&unix.MSG_CTRUNC != 0
	if cut {
		l.descriptorsDropped(c, d)
	}
	return n, cut, e
}

// descriptorsDropped says once per connection and direction, at debug
// level, that descriptors sent over it were closed.
func (l *loop) descriptorsDropped(c *conn, d int) {
	if c.dir[d].flags&fdsDropped == 0 {
		c.dir[d].flags |= fdsDropped
		l.s.log.Debug("descriptors passed over the connection were closed: passing them on is not supported",
			"client", c.clientString(), "listener", l.listenerName(c), "from", [2]string{"client", "backend"}[d])
	}
}

// ended is for direction d, whose source has ended and whose last bytes
// have gone: the end goes on (halfClose), or, when the source's peer is
// gone with bytes of ours unread (peerReset), the connection is reset.
func (l *loop) ended(c *conn, d int) bool {
	if c.ready[d]&peerReset != 0 {
		l.abort(c, unix.ECONNRESET)
		return false
	}
	return l.halfClose(c, d)
}

// halfClose ends direction d once its source has ended and every byte is
// delivered: shutdown(SHUT_WR) towards the destination, while the other
// direction keeps going; when both have ended, the connection closes. It
// reports whether the connection is still open.
func (l *loop) halfClose(c *conn, d int) bool {
	dir := &c.dir[d]
	if dir.flags&dstShut == 0 {
		dir.flags |= dstShut
		unix.Shutdown(int(c.fd[1-d]), unix.SHUT_WR)
		if c.dir[1-d].flags&dstShut != 0 {
			l.finish(c)
			return false
		}
	}
	return true
}

// splicePump is pump for a bulk direction: socket -> pooled pipe -> socket,
// alternating, until neither side makes progress. It keeps the pipe topped
// up while the destination is busy, so each wake-up moves as much as the
// sockets allow. It reports whether the connection is still open, and
// whether pump should go on with the read/write path (the direction left
// bulk mode, or the source ended and the pipe is empty).
//
// EAGAIN from splicing into a non-empty pipe may mean "pipe full" as well as
// "socket empty", so it does not clear the source's readiness; only EAGAIN
// into an empty pipe does. A readiness kept by mistake costs one splice
// later, never a stall.
func (l *loop) splicePump(c *conn, d int) (open, more bool) {
	dir := &c.dir[d]
	src, dst := int(c.fd[d]), int(c.fd[1-d])
	p := dir.pipe
	if p == nil {
		if c.ready[d]&canRead == 0 || c.ready[1-d]&canWrite == 0 || dir.flags&srcEOF != 0 {
			return true, dir.flags&srcEOF != 0
		}
		if p = l.pipes.get(); p == nil {
			dir.flags &^= bulk // no pipe to be had: copy through the buffer
			return true, true
		}
		dir.pipe = p
	}
	last := -1 // bytes the last splice from the source brought
	for {
		progress := false
		if p.n > 0 && c.ready[1-d]&canWrite != 0 {
			n, e := rawSplice(p.r, dst, p.n)
			switch {
			case n > 0:
				p.n -= n
				l.count(c, d, n)
				progress = true
			case e == unix.EAGAIN:
				c.ready[1-d] &^= canWrite
			case e == unix.EINVAL:
				l.unkeep(c)
				dir.flags = dir.flags&^bulk | noSplice
				return true, true // the read/write path drains it
			case e != 0:
				return l.writeFailed(c, d, e), false
			}
		}
		if dir.flags&(srcEOF|bulk) == bulk && c.ready[d]&(canRead|urgent) == canRead && p.n < l.pipes.size {
			n, e := rawSplice(src, p.w, l.pipes.size-p.n)
			switch {
			case n > 0:
				l.s.splices.Add(1)
				l.s.splicedBytes.Add(int64(n))
				p.n += n
				last = n
				progress = true
			case e == 0:
				// The end of the stream, or an urgent mark with the
				// FIN behind it: splice cannot tell them apart, so
				// the read path confirms (read returns 0 only at the
				// end), once the pipe is drained.
				dir.flags &^= bulk
			case e == unix.EAGAIN:
				// Into an empty pipe: the socket is empty, unless the
				// splice stopped at an urgent mark; urgent data raises
				// EPOLLPRI with its own edge (seen already, or still to
				// come), which takes the direction off splice.
				if p.n == 0 {
					c.ready[d] &^= canRead
				}
			case e == unix.EINVAL:
				l.unkeep(c)
				dir.flags = dir.flags&^bulk | noSplice
				return true, true
			case e == unix.ECONNRESET && !c.tcp[d]:
				// A unix peer that closed with bytes of ours unread
				// says so after the bytes it sent: those in the pipe
				// go on, then the reset.
				l.unkeep(c)
				c.ready[d] |= peerReset
				dir.flags = dir.flags&^bulk | srcEOF
				return true, true
			default:
				l.abort(c, e)
				return false, false
			}
		}
		if !progress {
			break
		}
	}
	if p.n > 0 {
		return true, false // wait for the destination
	}
	if c.isKept() {
		// The pipe is the connection's own, and it splices for good,
		// unless a splice returned 0 (the read path confirms).
		return true, dir.flags&(srcEOF|bulk) != bulk
	}
	l.pipes.put(p)
	dir.pipe = nil
	if last >= 0 && last < bufSize {
		dir.flags &^= bulk // the burst is over: small reads again
	}
	// Off bulk (the burst is over, or a splice returned 0), the read path
	// goes on: it confirms an end or reads past an urgent mark.
	return true, dir.flags&(srcEOF|bulk) != bulk
}

// writeFailed ends direction d, whose write into side 1-d failed with e.
// On a unix socket, EPIPE says the peer is gone, and ECONNRESET that it
// closed with bytes or messages of ours unread (a write learns that first
// when it comes before a read). What the direction held is lost with the
// peer, but what the peer sent before it went is still queued in the same
// socket: the other direction reads it to the end first, and the
// connection is reset after it; a kept connection leaves the fd store
// for that (its pipes become the pool's, as they empty). Any other error,
// or a TCP side (the reset that ends the client's side would drop the
// bytes still on their way to it), ends it now.
func (l *loop) writeFailed(c *conn, d int, e unix.Errno) bool {
	side := 1 - d
	if e != unix.EPIPE && e != unix.ECONNRESET || c.tcp[side] || l.spent(c, side) {
		l.abort(c, e)
		return false
	}
	l.unkeep(c)
	c.ready[side] |= peerReset | peerClosed
	return l.pump(c, side) && l.pump(c, d) // d's from now on a sink
}

// sink is pump for direction d while its destination's peer is gone
// (peerReset on side 1-d): what d's side sends can go nowhere, and is read
// and dropped, so that a client that writes all before it reads is not
// stuck behind a proxy that stopped reading, and goes on to read the
// answer; a client of that peer itself would have seen its writes fail.
// It reports whether the connection is still open.
func (l *loop) sink(c *conn, d int) bool {
	dir := &c.dir[d]
	if dir.pipe != nil {
		l.unpark(dir)
		l.pipes.put(dir.pipe) // discarded with what it holds
		dir.pipe = nil
	}
	dir.flags &^= bulk
	for dir.flags&srcEOF == 0 && c.ready[d]&canRead != 0 {
		var n int
		var end bool
		var e unix.Errno
		if c.packets {
			var message bool
			n, _, message, e = recvMessage(int(c.fd[d]), l.buf, false)
			end = n == 0 && !message
		} else {
			n, _, e = l.read(c, d)
			end = n == 0
		}
		switch {
		case e == unix.EAGAIN:
			c.ready[d] &^= canRead
		case e == unix.EINTR:
		case e != 0:
			l.abort(c, e)
			return false
		case end:
			dir.flags |= srcEOF
		}
	}
	return true
}

// drainsFirst is for a connection whose side's socket says ECONNRESET
// (taken with SO_ERROR, so no read will say it): on a unix socket, its
// peer closed with bytes or messages unread. When what it sent before may
// still be queued, it is read to the end first, and the connection is
// reset after it; drainsFirst reports whether that is so.
func (l *loop) drainsFirst(c *conn, side int) bool {
	if c.tcp[side] || l.spent(c, side) {
		return false
	}
	l.unkeep(c)
	c.ready[side] |= peerReset | peerClosed
	return true
}

// spent says that the direction reading from side has nothing more to
// deliver: its source ended and its pipe is empty (a kept connection's
// pipe is there even when empty; a sequential packet's is a message, even
// an empty one).
func (l *loop) spent(c *conn, side int) bool {
	dir := &c.dir[side]
	return dir.flags&srcEOF != 0 && (dir.pipe == nil || !c.packets && dir.pipe.n == 0)
}

// drain writes out what c's pipe p holds.
func (l *loop) drain(c *conn, p *pipe, dst int) (int, unix.Errno) {
	if p.r < 0 {
		n, e := rawWrite(dst, p.mem)
		if n > 0 {
			p.mem = p.mem[n:]
			p.n -= n
		}
		return n, e
	}
	n, e := rawSplice(p.r, dst, p.n)
	if n > 0 {
		p.n -= n
	}
	if e == unix.EINVAL {
		// The destination cannot take a splice (never seen on Linux
		// sockets, but then nothing is lost): copy the pipe out, which
		// a kept connection may not do in the store.
		l.unkeep(c)
		mem := make([]byte, p.n)
		m, _ := rawRead(p.r, mem)
		l.pipes.put(&pipe{r: p.r, w: p.w, n: p.n - m}) // discarded if bytes stayed behind
		*p = pipe{r: -1, w: -1, n: m, mem: mem[:m]}
		return n, 0
	}
	return n, e
}

// park keeps the bytes a write left over, in a pooled pipe if one can be had.
func (l *loop) park(b []byte) *pipe {
	if p := l.pipes.get(); p != nil {
		if l.pipes.size >= len(b) {
			if n, e := rawWrite(p.w, b); e == 0 && n == len(b) {
				p.n = n
				return p
			}
		}
		l.pipes.discard(p)
	}
	return &pipe{r: -1, w: -1, n: len(b), mem: append([]byte(nil), b...)}
}

func (l *loop) count(c *conn, d, n int) {
	c.dir[d].n += int64(n)
	if d == 0 {
		l.listeners[c.listener].n.bytesIn.Add(int64(n))
	} else {
		l.listeners[c.listener].n.bytesOut.Add(int64(n))
	}
}

// resetOnClose makes the last close of a TCP socket a reset.
func resetOnClose(fd int) {
	unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
}

// finish closes a connection both of whose directions ended cleanly.
func (l *loop) finish(c *conn) {
	l.release(c, false)
	l.logClosed(c, nil)
}

// abort closes both sides at once, with a reset on TCP so that the peer of a
// failed connection does not mistake the end for a clean EOF. A nil err is a
// close we caused ourselves (shutdown) and is not logged as a failure.
func (l *loop) abort(c *conn, err error) {
	l.release(c, true)
	l.logClosed(c, err)
}

// release closes the sockets and gives the pipes back.
func (l *loop) release(c *conn, reset bool) {
	if !l.stored {
		l.unkeep(c)
	}
	for side, fd := range c.fd {
		if fd < 0 {
			continue
		}
		switch {
		case !c.tcp[side]: // lingering is TCP's
		case reset:
			resetOnClose(int(fd))
		case l.s.cfg.Keep != nil || c.dir[1].flags&armed != 0:
			// A clean end: the FIN went with the last shutdown, and
			// what is queued must still go out.
			unix.SetsockoptLinger(int(fd), unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{})
		}
		l.conns[fd] = nil
		unix.Close(int(fd))
		c.fd[side] = -1
	}
	for d := range c.dir {
		l.unpark(&c.dir[d])
		if p := c.dir[d].pipe; p != nil {
			l.pipes.put(p) // discarded when it still holds bytes
			c.dir[d].pipe = nil
		}
	}
	if c.fdWait {
		c.fdWait = false
		l.fdWait--
	}
	if c.state == stateResolving {
		l.leaveLookup(c)
	}
	if m := l.poolMember(c.listener, c.member); m != nil && c.state != 0 {
		m.add(-1)
	}
	c.state = 0
	l.sourceAdd(c.client.Addr(), false, -1)
	l.closed(c)
}

func (l *loop) logClosed(c *conn, err error) {
	if !l.s.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	attrs := []any{"client", c.clientString(), "listener", l.listenerName(c), "backend", l.backendName(c),
		"bytes_in", c.dir[0].n, "bytes_out", c.dir[1].n,
		"duration", time.Duration(l.now() - c.start).Round(time.Millisecond).String()}
	if err != nil && !l.stopping {
		l.s.log.Debug("connection aborted", append(attrs, "error", err.Error())...)
		return
	}
	l.s.log.Debug("connection closed", attrs...)
}

func (l *loop) listenerName(c *conn) string {
	return l.listeners[c.listener].label
}

// memberOf is the backend c is on, or is trying.
func (l *loop) memberOf(c *conn) *member {
	return &l.listeners[c.listener].pool.members[c.member]
}

// backendName names c's backend in log lines: the address as the user
// wrote it (as backend.Address prints it).
func (l *loop) backendName(c *conn) string {
	p := &l.listeners[c.listener].pool
	if int(c.member) < len(p.members) {
		return p.members[c.member].name
	}
	return "unknown"
}

// clientString is the client's address as Go's net prints it; a client on
// a unix listener has, as a rule, no name.
func (c *conn) clientString() string {
	if !c.tcp[0] {
		return "unix"
	}
	return c.client.String()
}
