// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"errors"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/handoff"
)

// Connections kept in systemd's fd store from the moment they open
// (--fdstore=always), so that a crash or kill -9 followed by a
// restart cuts none of them.
//
// The invariant: a connection recovered after a crash continues with every
// byte exactly once, or is reset. A kept connection keeps it by holding no
// byte in the process, ever: each direction has a kernel pipe of its own
// for the connection's whole life, and every byte goes socket -> pipe ->
// socket by splice, so at any instant each byte is in exactly one kernel
// buffer (a socket's receive queue, the pipe, a socket's send queue), and
// the store holds the sockets and the pipes. The next instance finds them
// there and goes on (handoff.Recover). What would take a byte into the
// process takes the connection out of the store first (unkeep): urgent
// data (splice stops at its mark; a read must pass it) and a pair the
// kernel cannot splice. A PROXY header is written before the connection
// is kept.
//
// Every TCP socket of a keeping proxy lingers 0 until its clean end, so
// that one the store does not hold when the process dies (still
// connecting, taken out of the store, refused by it) is reset, never closed
// with a FIN that would pass for the end of its stream; and one systemd
// closes on a plain stop is reset too.

// kept marks, in c.dir[0].flags, a connection in the fd store.
const kept = 1 << 7

func (c *conn) isKept() bool { return c.dir[0].flags&kept != 0 }

// keep puts an open connection in the fd store, if the proxy keeps them and
// it can be: it needs a kernel pipe each way, and no byte in a memory pipe.
// A connection that cannot be kept goes on unkept (and is reset by a crash).
// It reports whether c is kept now.
func (l *loop) keep(c *conn) bool {
	if l.s.cfg.Keep == nil || c.packets || c.isKept() || c.state != stateOpen || c.dir[0].flags&header != 0 {
		return false
	}
	var got [2]*pipe
	for d := range c.dir {
		switch p := c.dir[d].pipe; {
		case p == nil:
			if got[d] = l.pipes.get(); got[d] == nil {
				l.giveBack(got)
				l.warn(warnOther, "cannot keep a connection in the fd store", "no pipe to be had: raise the open-files limit or lower --connections-max",
					"client", c.clientString())
				return false
			}
		case p.r < 0:
			l.giveBack(got)
			return false // bytes in memory (rare: a write cut short before); stays unkept
		}
	}
	for d, p := range got {
		if p != nil {
			c.dir[d].pipe = p
		}
	}
	name, err := l.keptName(c)
	if err == nil {
		err = l.s.cfg.Keep(name, []int{int(c.fd[0]), int(c.fd[1]),
			c.dir[0].pipe.r, c.dir[0].pipe.w, c.dir[1].pipe.r, c.dir[1].pipe.w})
	}
	if err != nil {
		for d, p := range got {
			if p != nil {
				c.dir[d].pipe = nil // the pool's again, not the connection's
			}
		}
		l.giveBack(got)
		l.warn(warnOther, "cannot keep a connection in the fd store", err.Error(), "client", c.clientString(), "error", err.Error())
		return false
	}
	c.dir[0].flags |= kept
	for d := range c.dir {
		if c.dir[d].flags&noSplice == 0 {
			c.dir[d].flags |= bulk // and stays: splice only
		}
	}
	l.s.kept.Add(1)
	return true
}

// giveBack returns the pipes keep took for c and did not use.
func (l *loop) giveBack(got [2]*pipe) {
	for _, p := range got {
		if p != nil {
			l.pipes.put(p)
		}
	}
}

// keptName is c's name in the store: handoff.KeepName from its client
// socket's and its in-pipe's inodes.
func (l *loop) keptName(c *conn) (string, error) {
	var client, up unix.Stat_t
	if unix.Fstat(int(c.fd[0]), &client) != nil || unix.Fstat(c.dir[0].pipe.r, &up) != nil {
		return "", errors.New("cannot name the connection")
	}
	return handoff.KeepName(int(c.listener), client.Ino, up.Ino), nil
}

// unkeep takes c out of the store, before it ends or before a byte of it
// would pass through the process. Its pipes become ordinary ones.
func (l *loop) unkeep(c *conn) {
	if !c.isKept() {
		return
	}
	if name, err := l.keptName(c); err == nil {
		l.s.cfg.Forget(name)
	}
	c.dir[0].flags &^= kept
	l.s.kept.Add(-1)
}

// keptRead stands for the read that pump makes when a kept direction
// leaves splicing: a splice returned 0, which is the end of the stream or
// an urgent mark. A peek tells them apart without taking a byte: at the
// end, the direction ends with nothing read; otherwise the connection
// leaves the store and pump reads as usual. It reports whether pump should
// read.
func (l *loop) keptRead(c *conn, d int) (read bool, e unix.Errno) {
	n, _, err := unix.Recvfrom(int(c.fd[d]), l.buf[:1], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	switch {
	case err == nil && n == 0:
		c.dir[d].flags |= srcEOF
		return false, 0
	case err == unix.EAGAIN && c.tcp[d] && queued(int(c.fd[d])):
		// At the urgent mark with a signal pending (read): peek again.
		return false, unix.EINTR
	case err == unix.EAGAIN:
		c.dir[d].flags |= bulk // nothing after all: splice on
		c.ready[d] &^= canRead
		return false, unix.EAGAIN
	}
	l.unkeep(c)
	return true, 0
}

// notKept is fds without the descriptors of kept connections: the store
// holds those already, under their own names, and the next instance finds
// them there by identity like the others.
func (l *loop) notKept(r *handoff.Record, fds []int) []int {
	skip := map[int]bool{}
	for i := range r.Conns {
		if rc := &r.Conns[i]; rc.Kept {
			for _, fd := range carried(rc) {
				skip[fd] = true
			}
		}
	}
	if len(skip) == 0 {
		return fds
	}
	out := make([]int, 0, len(fds))
	for _, fd := range fds {
		if !skip[fd] {
			out = append(out, fd)
		}
	}
	return out
}

// recover adopts the kept connections a crash left in the store.
func (l *loop) recover(groups map[string][]int) {
	listeners := make([]handoff.Listener, len(l.listeners))
	for i, ln := range l.listeners {
		listeners[i] = handoff.Listener{FD: -1, Name: ln.name, Kind: listenerKinds[ln.kind]}
	}
	r, bad := handoff.Recover(groups, listeners)
	for name, err := range bad {
		l.s.log.Warn("cannot recover a connection from the fd store, resetting it", "name", name, "error", err.Error())
		handoff.Reset(groups[name])
		l.s.cfg.Forget(name)
	}
	adopted, reset := l.resume(r)
	for i := range r.Conns {
		if rc := &r.Conns[i]; rc.FD[0] >= 0 && (rc.FD[0] >= len(l.conns) || l.conns[rc.FD[0]] == nil) {
			// resume reset it: its name goes too.
			if name, ok := nameOf(groups, rc.FD[0]); ok {
				l.s.cfg.Forget(name)
			}
		}
	}
	l.s.resumed.Add(int64(adopted))
	l.s.log.Info("recovered connections after a crash", "connections", adopted, "reset", reset+len(bad))
}

func nameOf(groups map[string][]int, fd int) (string, bool) {
	for name, fds := range groups {
		if slices.Contains(fds, fd) {
			return name, true
		}
	}
	return "", false
}
