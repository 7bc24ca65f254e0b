// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"time"

	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
)

// Active health checks (Config.HealthInterval): every interval, each
// backend of a listener with several is probed by a non-blocking connect
// in the loop's own epoll set, closed as soon as it is answered. As in
// haproxy, HealthFall failed probes in a row take a backend down and
// HealthRise good ones bring it back; a probe not answered by the next
// one has failed. A failed client connect still takes a backend down at
// once, but then only a probe (or a client connect that succeeds while
// every backend is down) brings it back. Off, the loop has no health
// state at all: nil, one comparison per timer run.
//
// A backend given as a host name is checked passively only: probing it
// would take a lookup per probe, off the loop. So is a UDP backend, which
// a connect says nothing about (member.watched).

// Defaults of the rise and fall counts, haproxy's.
const (
	DefaultHealthRise = 2
	DefaultHealthFall = 3
)

// probe is one backend's active check.
type probe struct {
	fd         int32 // the connect in flight; -1: none
	gen        uint32
	rise, fall uint8 // good and failed probes in a row
}

// healthState is the loop's active checking.
type healthState struct {
	every      int64 // ns between probes
	at         int64 // when the next probes start
	rise, fall uint8
	// byFD finds the probe of an event: listener and member.
	byFD map[int32][2]int
}

// setupHealth turns active checks on, if asked and any listener has
// several backends.
func (l *loop) setupHealth() {
	cfg := &l.s.cfg
	if cfg.HealthInterval <= 0 {
		return
	}
	any := false
	for i := range l.listeners {
		any = any || l.listeners[i].pool.several()
	}
	if !any {
		return
	}
	h := &healthState{every: int64(cfg.HealthInterval), rise: DefaultHealthRise, fall: DefaultHealthFall, byFD: make(map[int32][2]int)}
	if cfg.HealthRise > 0 {
		h.rise = uint8(min(cfg.HealthRise, 255))
	}
	if cfg.HealthFall > 0 {
		h.fall = uint8(min(cfg.HealthFall, 255))
	}
	h.at = l.now() // the first probes at once
	l.health = h
	for i := range l.listeners {
		p := &l.listeners[i].pool
		p.checked = true
		for m := range p.members {
			if p.several() && !p.members[m].watched {
				l.s.log.Info("backend not probed: a host name or a UDP backend is checked by its clients' connects only",
					"listener", l.listeners[i].label, "backend", p.members[m].name)
			}
		}
	}
}

// probeAll ends the probes still unanswered (failed) and starts the next.
func (l *loop) probeAll(now int64) {
	h := l.health
	h.at = after(now, time.Duration(h.every))
	for i := range l.listeners {
		p := &l.listeners[i].pool
		if !p.several() {
			continue
		}
		for m := range p.members {
			if p.members[m].probe.fd >= 0 {
				l.probeDone(i, m, false, "timed out")
			}
			l.startProbe(i, m)
		}
	}
}

// startProbe connects to the first address of a backend, the way a client
// connect would (a stream, sequential-packet or unix datagram socket).
func (l *loop) startProbe(i, m int) {
	ln := &l.listeners[i]
	b := &ln.pool.members[m]
	if !b.watched {
		return // a host name, or UDP: passive only
	}
	sa := b.static[0].sa
	family := familyOf(sa)
	typ := unix.SOCK_STREAM
	switch ln.kind {
	case activation.SequentialPacket:
		typ = unix.SOCK_SEQPACKET
	case activation.Datagram:
		typ = unix.SOCK_DGRAM // a unix one: a UDP backend is not watched
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return // out of descriptors, say: the backend is not to blame
	}
	gen := l.nextGen()
	if err := l.add(fd, unix.EPOLLOUT|unix.EPOLLET, gen); err != nil {
		unix.Close(fd)
		return
	}
	b.probe.fd, b.probe.gen = int32(fd), gen
	l.health.byFD[int32(fd)] = [2]int{i, m}
	switch err := unix.Connect(fd, sa); err {
	case nil:
		l.probeDone(i, m, true, "")
	case unix.EINPROGRESS, unix.EINTR:
	default:
		l.probeDone(i, m, false, err.Error())
	}
}

// probeEvent handles an event on a probe's socket; it reports whether fd
// was a probe's.
func (l *loop) probeEvent(fd int, gen uint32, ev uint32) bool {
	at, ok := l.health.byFD[int32(fd)]
	if !ok {
		return false
	}
	b := &l.listeners[at[0]].pool.members[at[1]]
	if b.probe.gen != gen {
		return true // stale
	}
	e, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	switch {
	case err != nil:
		l.probeDone(at[0], at[1], false, err.Error())
	case e != 0:
		l.probeDone(at[0], at[1], false, unix.Errno(e).Error())
	case ev&unix.EPOLLOUT != 0:
		l.probeDone(at[0], at[1], true, "")
	}
	return true
}

// probeDone closes a probe and counts its verdict towards rise or fall.
func (l *loop) probeDone(i, m int, good bool, why string) {
	h := l.health
	p := &l.listeners[i].pool
	b := &p.members[m]
	delete(h.byFD, b.probe.fd)
	unix.Close(int(b.probe.fd))
	b.probe.fd = -1
	if good {
		b.probe.fall = 0
		b.probe.rise = min(b.probe.rise+1, 255)
		if b.down && b.probe.rise >= h.rise && p.succeeded(m) {
			l.backendUp(i, m)
		}
		return
	}
	b.probe.rise = 0
	b.probe.fall = min(b.probe.fall+1, 255)
	if !b.down && b.probe.fall >= h.fall && p.failed(m, l.now()) {
		l.backendDown(i, m, "health check: "+why)
	}
}

// closeProbes ends the probes in flight, when the loop closes.
func (l *loop) closeProbes() {
	if l.health == nil {
		return
	}
	for fd := range l.health.byFD {
		unix.Close(int(fd))
	}
	clear(l.health.byFD)
}
