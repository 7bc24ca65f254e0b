// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"math"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Sequential packets: a SOCK_SEQPACKET listener's clients are
// connections like a stream's (accept, connect with retries, half-close,
// -c, drain, idle timeout, the PROXY header as a first message of its
// own), but each message is forwarded as one message, never merged or
// split: recvmsg into a buffer that holds the largest one, one write per
// message, no splice and no kernel pipe (a pipe would merge what it
// holds). A message the destination cannot take yet is parked whole in
// memory, and nothing more is read from its source meanwhile.

// packetSlot is the largest message forwarded: the largest a sender
// without CAP_NET_ADMIN can send. A unix socket sends a message of up to
// its send buffer (less a few bytes), and such a sender can raise that to
// twice net.core.wmem_max (the kernel doubles what it is asked for); the
// default buffer, 256 KiB, at the least. The loop learns it at its start
// (a net.core.wmem_max raised later takes effect at the next reload); its
// one buffer of that size is allocated at the first message and takes
// memory only as far as messages fill it.
func packetSlot() int {
	return max(unixSlot, sendBufferMost())
}

// sendBufferMost is the largest send buffer the kernel gives a socket
// that asks for more than any: twice net.core.wmem_max. A socket of our
// own asks, rather than /proc/sys being read, which ProcSubset=pid hides
// (the shipped units set it). A variable, so that tests can make it small.
var sendBufferMost = func() int {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0
	}
	defer unix.Close(fd)
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, math.MaxInt32/2)
	n, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF)
	return n
}

// parkBudget bounds the memory of parked messages, the loop's whole: a
// message read whose destination cannot take it yet is kept in memory
// (one per direction), and with messages of up to packetSlot, many slow
// backends could make that gigabytes. Past the budget, a message is only
// peeked at (MSG_PEEK), sent, and then taken off its socket; one its
// destination cannot take waits in the kernel's socket, where
// --socket-buffer and the kernel's limits bound it, as a stream's bytes.
var parkBudget = 32 << 20

// errMessageTooBig ends a connection whose message does not fit
// packetSlot: it cannot be forwarded whole, and a part would be a lie.
var errMessageTooBig = unix.EMSGSIZE

// pumpPackets is pump for a sequential-packet connection.
func (l *loop) pumpPackets(c *conn, d int) bool {
	dir := &c.dir[d]
	src, dst := int(c.fd[d]), int(c.fd[1-d])
	if l.flows.packetSize == 0 {
		// Not learnt yet: the start, or a reload, found no descriptor
		// to learn it with. Until then the least, 256 KiB.
		l.flows.packetSize = sendBufferMost()
		if l.flows.packetSize > len(l.flows.packet) {
			l.flows.packet = nil
		}
	}
	if l.flows.packet == nil {
		l.flows.packet = make([]byte, max(unixSlot, l.flows.packetSize))
	}
	buf := l.flows.packet
	for {
		if p := dir.pipe; p != nil {
			if c.ready[1-d]&canWrite == 0 {
				return true
			}
			n, e := rawWriteMsg(dst, p.mem)
			if e == unix.EAGAIN {
				c.ready[1-d] &^= canWrite
				return true
			}
			if e != 0 {
				return l.writeFailed(c, d, e)
			}
			if dir.flags&header == 0 {
				l.count(c, d, n)
			}
			dir.flags &^= header
			l.unpark(dir)
			dir.pipe = nil
			continue
		}
		if dir.flags&srcEOF != 0 {
			return l.ended(c, d)
		}
		if c.ready[d]&canRead == 0 || c.ready[1-d]&canWrite == 0 {
			return true
		}
		peek := l.parked >= parkBudget
		n, flags, message, e := recvMessage(src, buf, peek)
		if flags&unix.MSG_CTRUNC != 0 {
			l.descriptorsDropped(c, d) // the message itself goes on whole
		}
		switch {
		case e == unix.EAGAIN:
			c.ready[d] &^= canRead
			return true
		case e == unix.EINTR:
			continue
		case e == unix.ECONNRESET:
			// The peer closed with messages of ours unread. The kernel
			// says so once, before the messages the peer sent until
			// then, which are still queued (a unix stream says it
			// after them): they go on, and the connection is reset
			// after them, as a client of the peer itself would have
			// read them. A write's EPIPE may have marked the side
			// already (writeFailed), the reset still to be read.
			c.ready[d] |= peerReset
			continue
		case e != 0:
			l.abort(c, e)
			return false
		case flags&unix.MSG_TRUNC != 0:
			// Only a sender with CAP_NET_ADMIN (SO_SNDBUFFORCE) gets
			// here. A unix socket has no reset to send: its peer sees an
			// end, or an error only if messages of its are still unread.
			l.warn(warnOther, "a message too big to forward whole ended its connection", "message too big",
				"client", c.clientString(), "listener", l.listenerName(c), "from", [2]string{"client", "backend"}[d],
				"bytes", n, "most", len(buf))
			l.abort(c, errMessageTooBig)
			return false
		case n == 0 && !message:
			dir.flags |= srcEOF // ended resets it if the peer is gone
			continue
		}
		w, e := rawWriteMsg(dst, buf[:n])
		if e == unix.EMSGSIZE && n > 0 {
			// A message larger than dst's send buffer takes, which a
			// sender that raised its own may send: raise dst's (up to
			// wmem_max) and send it again; past that it cannot go whole.
			unix.SetsockoptInt(dst, unix.SOL_SOCKET, unix.SO_SNDBUF, len(buf))
			w, e = rawWriteMsg(dst, buf[:n])
		}
		switch {
		case e == unix.EAGAIN && peek:
			c.ready[1-d] &^= canWrite
			return true // the message waits in its socket, read again when dst can take it
		case e == unix.EAGAIN:
			c.ready[1-d] &^= canWrite
			// Non-nil even when empty: a parked message, not none.
			dir.pipe = &pipe{r: -1, w: -1, n: n, mem: append(make([]byte, 0, n), buf[:n]...)}
			dir.flags |= parkedMsg
			l.parked += n
		case e != 0:
			return l.writeFailed(c, d, e)
		default:
			if peek {
				// Take the message sent off its socket; were it left
				// there, the next read would send it again.
				if e := discardMessage(src); e != 0 {
					l.abort(c, e)
					return false
				}
			}
			l.count(c, d, w)
		}
	}
}

// passCredentials asks the kernel to attach the sender's credentials to
// each message read from a sequential-packet socket. They are how a
// message of zero bytes is told from the end of the stream, which read
// alike, even with messages queued behind the empty one when the peer shuts
// down: only a message comes with credentials.
func passCredentials(fd int) {
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
}

// credSpace is room for the SCM_CREDENTIALS message each read carries, and
// no more: descriptors a client sends along (SCM_RIGHTS) find no room, so
// the kernel closes them instead of installing them here, and says so with
// MSG_CTRUNC.
var credSpace = unix.CmsgSpace(unix.SizeofUcred)

// recvMessage reads one message into p. message says a message was read,
// perhaps an empty one, rather than the end of the stream: it came with
// the credentials passCredentials asked for.
//
// The end is believed only when a second read says it too. The kernel
// says the end when a read finds the queue empty and then sees that the
// peer has shut down, two looks a peer's last send can fall between
// (unix_dgram_recvmsg): the message is queued, and a stream cut short by
// it would end cleanly. Whatever was sent before the shutdown was queued
// before the first read saw it, so the second read finds it.
func recvMessage(fd int, p []byte, peek bool) (n, flags int, message bool, e unix.Errno) {
	for range 2 {
		n, flags, message, e = recvOnce(fd, p, peek)
		if e != 0 || message {
			break
		}
	}
	return n, flags, message, e
}

func recvOnce(fd int, p []byte, peek bool) (n, flags int, message bool, e unix.Errno) {
	var oob [64]byte
	iov := unix.Iovec{Base: &p[0]}
	iov.SetLen(len(p))
	msg := unix.Msghdr{Iov: &iov, Iovlen: 1, Control: &oob[0]}
	msg.SetControllen(credSpace)
	// MSG_TRUNC: a message longer than p says its whole length (and
	// MSG_TRUNC in flags), for the log line of the one that cannot go.
	how := unix.MSG_DONTWAIT | unix.MSG_TRUNC
	if peek {
		how |= unix.MSG_PEEK // the message stays first in the socket
	}
	r, _, e := unix.RawSyscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), uintptr(how))
	if e != 0 {
		return 0, 0, false, e
	}
	return int(r), int(msg.Flags), r > 0 || msg.Controllen > 0, 0
}

// discardMessage takes the first message off fd, which a peek has read
// (descriptors it carries are closed by the kernel: no room for them).
func discardMessage(fd int) unix.Errno {
	for {
		var msg unix.Msghdr
		_, _, e := unix.RawSyscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), unix.MSG_DONTWAIT|unix.MSG_TRUNC)
		if e != unix.EINTR {
			return e
		}
	}
}

// unpark uncounts the message parked in dir, if pumpPackets parked one.
func (l *loop) unpark(dir *direction) {
	if dir.flags&parkedMsg != 0 {
		l.parked -= dir.pipe.n
		dir.flags &^= parkedMsg
	}
}

// rawWriteMsg sends b as one message (a zero-length one too, which write
// with an empty buffer cannot express through rawWrite).
func rawWriteMsg(fd int, b []byte) (int, unix.Errno) {
	var iov unix.Iovec
	msg := unix.Msghdr{}
	if len(b) > 0 {
		iov = unix.Iovec{Base: &b[0]}
		iov.SetLen(len(b))
		msg.Iov, msg.Iovlen = &iov, 1
	}
	r, _, e := unix.RawSyscall(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
	if e != 0 {
		return 0, e
	}
	return int(r), 0
}
