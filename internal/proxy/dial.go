// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/backend"
	"github.com/socket-proxyd/socket-proxyd/internal/proxyproto"
)

// target is one address to connect to, and how errors name it.
type target struct {
	sa   unix.Sockaddr
	name string
}

// dialState is what a connection to a backend host name needs: the
// addresses it resolved to, tried in turn (the original tries only the
// first), and why each failed.
type dialState struct {
	targets []target
	errs    []string // why each attempt of this round failed
	prev    []string // why each attempt of the round before failed
	// retryable: an attempt of the last round was refused, or found no
	// unix socket or a full backlog, so the backend may be starting.
	retryable bool
	// last is the error of the last attempt that failed (ETIMEDOUT for
	// the deadline), which the metrics count the failure by.
	last unix.Errno
}

// resolution is a resolver goroutine's answer, handed back to the loop.
type resolution struct {
	name    string // the lookup's key: the backend address
	targets []target
	err     error
}

// lookup is one host name lookup in flight, and the connections waiting
// for it. Connections to the same backend name share it, so the lookups
// in flight are at most one per backend name, however many clients come
// and go: a flood of clients that reset cannot pile up lookups (and their
// memory) while the DNS server is silent. A client that goes
// leaves its entry behind; entries are compacted as new ones come, so the
// list stays within twice the clients still waiting.
type lookup struct {
	waiting []deadline // fd and gen of each waiting connection; at unused
	live    int        // connections in waiting still waiting
}

// staticAddrs resolves, once, a backend that needs no name service: a unix
// socket or an IP literal. Connections to it then start connecting at once,
// with no resolver round trip (the original runs getaddrinfo for each).
func staticAddrs(a backend.Address) []target {
	if a.Network == "unix" {
		return []target{{sa: &unix.SockaddrUnix{Name: a.Path}, name: a.Path}}
	}
	ip, err := netip.ParseAddr(a.Host)
	if err != nil {
		return nil
	}
	port, err := strconv.Atoi(a.Port)
	if err != nil {
		return nil
	}
	t, err := tcpTarget(netip.AddrPortFrom(ip, uint16(port)))
	if err != nil {
		return nil
	}
	return []target{t}
}

func tcpTarget(ap netip.AddrPort) (target, error) {
	ip := ap.Addr()
	if ip.Is4() || ip.Is4In6() {
		return target{sa: &unix.SockaddrInet4{Addr: ip.Unmap().As4(), Port: int(ap.Port())}, name: ap.String()}, nil
	}
	sa := &unix.SockaddrInet6{Addr: ip.As16(), Port: int(ap.Port())}
	if zone := ip.Zone(); zone != "" {
		ifi, err := net.InterfaceByName(zone)
		if err != nil {
			if n, err2 := strconv.Atoi(zone); err2 == nil {
				sa.ZoneId = uint32(n)
			} else {
				return target{}, fmt.Errorf("%s: unknown zone: %v", ap, err)
			}
		} else {
			sa.ZoneId = uint32(ifi.Index)
		}
	}
	return target{sa: sa, name: ap.String()}, nil
}

// maxTargets bounds the addresses of one backend tried in a round: a
// connection counts them in a byte.
const maxTargets = 0xff

// targets are the addresses of the backend c is trying: its static ones,
// or those its host name resolved to.
func (l *loop) targets(c *conn) []target {
	if ts := l.memberOf(c).static; ts != nil {
		return ts
	}
	if c.dial != nil {
		return c.dial.targets
	}
	return nil
}

// dialBackend starts a new connection towards a backend of its
// listener's: the one the policy picks among those up, or, with every one
// down, the first (a round then tries each in turn).
func (l *loop) dialBackend(c *conn) {
	if p := &l.listeners[c.listener].pool; p.several() {
		m := max(p.pick(c.client.Addr(), l.now()), 0)
		c.member = uint8(m)
		p.members[m].add(1)
	}
	l.dialMember(c)
}

// dialMember connects c to the backend it is on, or has its host name
// looked up first.
func (l *loop) dialMember(c *conn) {
	if l.memberOf(c).static != nil {
		c.state = stateConnecting
		l.connect(c)
	} else {
		l.resolve(c)
	}
}

// connect starts connecting c to its next address, going on to the one
// after whenever one fails at once; with none left, to another backend of
// the pool, and with none left either, the round has failed.
func (l *loop) connect(c *conn) {
	ts := l.targets(c)
	for int(c.attempt) < len(ts) {
		t := ts[c.attempt]
		e := l.startConnect(c, t.sa)
		switch e {
		case 0:
			l.connected(c)
			return
		case unix.EINPROGRESS:
			c.state = stateConnecting
			l.armAttempt(c)
			return
		case unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM:
			l.waitForDescriptor(c, e)
			return
		}
		l.attemptFailed(c, t.name, e)
	}
	if l.nextMember(c) {
		return
	}
	l.roundFailed(c)
}

// nextMember moves c on, once every address of its backend failed, to
// another backend of the pool: one up, by the policy, or with none up the
// next in order, so that a round tries each. The backend it leaves is
// marked down (logged once, not per client). It reports whether c went
// on; false ends the round.
func (l *loop) nextMember(c *conn) bool {
	p := &l.listeners[c.listener].pool
	if !p.several() {
		return false
	}
	m := int(c.member)
	why := "no address to connect to"
	if c.dial != nil && len(c.dial.errs) > 0 {
		why = c.dial.errs[len(c.dial.errs)-1]
	}
	l.memberFailed(int(c.listener), m, why)
	n := p.pick(c.client.Addr(), l.now())
	if n < 0 {
		if m+1 >= len(p.members) {
			return false
		}
		n = m + 1
	}
	l.moveTo(c, n)
	l.dialMember(c)
	return true
}

// moveTo puts c on member n of its pool, to be tried from its first
// address.
func (l *loop) moveTo(c *conn, n int) {
	p := &l.listeners[c.listener].pool
	p.members[c.member].add(-1)
	p.members[n].add(1)
	c.member, c.attempt = uint8(n), 0
	if c.dial != nil {
		c.dial.targets = nil // a host name's: resolved again for the new one
	}
}

// armAttempt bounds a connect in progress to a backend of a pool of
// several by a share of the connect timeout, so that a backend that never
// answers (its SYNs dropped) leaves time to try the others: the attempt
// queue is a heap, as listeners may have pools of different sizes.
func (l *loop) armAttempt(c *conn) {
	p := &l.listeners[c.listener].pool
	if !p.several() {
		return
	}
	l.attemptQ = pushHeap(l.attemptQ, deadline{fd: c.fd[0], gen: c.gen[1], at: after(l.now(), l.connectTimeout/time.Duration(len(p.members)))})
}

// attemptTimedOut ends an attempt armAttempt bounded, and goes on with the
// next address or backend.
func (l *loop) attemptTimedOut(d deadline) {
	if int(d.fd) >= len(l.conns) {
		return
	}
	c := l.conns[d.fd]
	if c == nil || c.state != stateConnecting || c.gen[1] != d.gen || int(c.fd[0]) != int(d.fd) || c.fd[1] < 0 {
		return
	}
	t := l.targets(c)[c.attempt]
	l.dropBackend(c)
	l.attemptFailed(c, t.name, unix.ETIMEDOUT)
	l.connect(c)
}

// retryable errors say the backend is not there yet: nothing listens on
// the port or the unix path, or its backlog is full (a unix socket's
// connect says EAGAIN for that).
func retryable(e unix.Errno) bool {
	return e == unix.ECONNREFUSED || e == unix.ENOENT || e == unix.EAGAIN
}

// roundFailed is reached when every address failed: the round is tried
// again after a backoff while the deadline allows and the backend may be
// starting (systemd #2105); otherwise the client is closed. The client's
// bytes wait in its socket meanwhile: nothing reads them.
func (l *loop) roundFailed(c *conn) {
	now, end := l.now(), after(c.start, l.connectTimeout)
	if !l.retries || c.dial == nil || !c.dial.retryable || now >= end {
		l.backendFailed(c)
		return
	}
	l.waitRound(c, now, end)
}

// waitRound schedules c's next connect round: 10ms after the first
// failure, doubling up to 500ms, never past the deadline.
func (l *loop) waitRound(c *conn, now, end int64) {
	if c.round == 0 && l.s.log.Enabled(context.Background(), slog.LevelDebug) {
		// The warning comes only when the deadline gives up, seconds
		// later: say now why the client waits.
		why := ""
		if c.dial != nil {
			why = strings.Join(c.dial.errs, "; ")
		}
		l.s.log.Debug("backend not reachable yet, retrying until the connect timeout", "client", c.clientString(),
			"listener", l.listenerName(c), "backend", l.backendName(c), "error", why,
			"timeout", time.Duration(end-c.start).String())
	}
	backoff := retryMax
	if c.round < 6 {
		backoff = min(retryFirst<<c.round, retryMax)
		c.round++
	}
	c.state = stateWaiting
	l.pushRetry(deadline{fd: c.fd[0], gen: c.gen[0], at: min(now+int64(backoff), end)})
}

// retry starts c's next connect round.
func (l *loop) retry(c *conn) {
	if c.fdWait {
		c.fdWait = false
		l.fdWait--
	}
	c.attempt = 0
	if c.dial != nil {
		// The last round's reasons are kept: if this round runs into
		// the deadline, they say why, not "timed out".
		c.dial.prev, c.dial.errs = c.dial.errs, c.dial.prev[:0]
		c.dial.retryable = false
	}
	c.state = stateConnecting
	if p := &l.listeners[c.listener].pool; p.several() {
		// A new round starts on the backend the policy picks now, or
		// with every one down, on the first.
		if n := max(p.pick(c.client.Addr(), l.now()), 0); n != int(c.member) || len(l.targets(c)) == 0 {
			l.moveTo(c, n)
			l.dialMember(c)
			return
		}
	}
	l.connect(c)
}

// waitForDescriptor handles EMFILE (and the like) on the backend socket:
// the client has been accepted but its backend socket cannot be had. It
// waits, with the backoff of a refused round and within its deadline
// (whether or not retries are on, as the backend is not to blame), and
// accepting pauses until it gets one, with one warning per burst rather
// than one per client.
func (l *loop) waitForDescriptor(c *conn, e unix.Errno) {
	l.pauseAccepting("cannot open a socket to the backend, pausing accepting until a connection closes", l.listenerName(c), e)
	now, end := l.now(), after(c.start, l.connectTimeout)
	if now >= end {
		l.attemptFailed(c, "socket", e)
		l.backendFailed(c)
		return
	}
	if !c.fdWait {
		c.fdWait = true
		l.fdWait++
	}
	l.waitRound(c, now, end)
}

// familyOf is the address family of sa.
func familyOf(sa unix.Sockaddr) int {
	switch sa.(type) {
	case *unix.SockaddrInet4:
		return unix.AF_INET
	case *unix.SockaddrInet6:
		return unix.AF_INET6
	}
	return unix.AF_UNIX
}

func (l *loop) startConnect(c *conn, sa unix.Sockaddr) unix.Errno {
	family := familyOf(sa)
	typ := unix.SOCK_STREAM
	if c.packets {
		typ = unix.SOCK_SEQPACKET
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err.(unix.Errno)
	}
	c.tcp[1] = family != unix.AF_UNIX
	l.streamSocket(fd, c.tcp[1])
	c.gen[1] = l.nextGen()
	c.ready[1] = 0
	// Registered before connect: the edge that says the connect is done
	// cannot be missed, and is the socket's only registration.
	if err := l.add(fd, connEvents, c.gen[1]); err != nil {
		unix.Close(fd)
		return err.(unix.Errno)
	}
	c.fd[1] = int32(fd)
	l.track(fd, c)
	err = unix.Connect(fd, sa)
	if c.packets {
		// After connect, which would otherwise autobind the socket.
		passCredentials(fd)
	}
	switch err {
	case nil:
		return 0
	case unix.EINPROGRESS, unix.EINTR:
		return unix.EINPROGRESS
	}
	l.dropBackend(c)
	return err.(unix.Errno)
}

// connectDone handles the event that ends a connect in progress.
func (l *loop) connectDone(c *conn, fd int, ev uint32) {
	if ev&(unix.EPOLLERR|unix.EPOLLHUP) == 0 {
		if ev&unix.EPOLLOUT != 0 {
			l.connected(c) // writable and no error: connected, no SO_ERROR call needed
		}
		return
	}
	e, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err == nil && e == 0 {
		if ev&unix.EPOLLOUT == 0 {
			return // not done yet
		}
		l.connected(c)
		return
	}
	if err != nil {
		e = int(err.(unix.Errno))
	}
	t := l.targets(c)[c.attempt]
	l.dropBackend(c)
	l.attemptFailed(c, t.name, unix.Errno(e))
	l.connect(c)
}

// keepAlive turns TCP keepalive on for a TCP socket, once at accept or
// connect: a peer that vanished (a laptop suspended, systemd #23320) is
// noticed after about twice the idle time.
func (l *loop) keepAlive(fd int) {
	if l.keepIdle == 0 {
		return
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, l.keepIdle)
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, l.keepIntvl)
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPCNT, keepCount)
}

// keepCount is TCP_KEEPCNT: unanswered probes before the connection is
// dropped.
const keepCount = 4

// connected starts forwarding. Whatever the client sent meanwhile was
// remembered as readiness (its events came while the connect was in
// progress), so both directions are pumped now; a PROXY protocol header
// goes first, as a memory pipe the in direction drains before it reads
// from the client (a partial write of it is continued like any other).
func (l *loop) connected(c *conn) {
	if c.state != stateOpen {
		l.listeners[c.listener].n.connectTime.observe(time.Duration(l.now() - c.start))
	}
	c.state = stateOpen
	c.ready[1] |= canWrite
	c.seen = l.tick
	l.memberSucceeded(int(c.listener), int(c.member))
	if v := l.s.cfg.ProxyProtocol; v != proxyproto.None {
		h := proxyproto.Header(v, c.sourceAddr(), localAddr(int(c.fd[0])))
		c.dir[0].pipe = &pipe{r: -1, w: -1, n: len(h), mem: h}
		c.dir[0].flags |= header
	}
	l.keep(c) // --fdstore=always; with a header, once it is written
	if l.pump(c, 0) {
		l.pump(c, 1)
	}
}

// sourceAddr is the client's address for a PROXY header: a *net.TCPAddr,
// or nil for a client on a unix socket (the header then says UNKNOWN or
// LOCAL).
func (c *conn) sourceAddr() net.Addr {
	if !c.tcp[0] {
		return nil
	}
	return net.TCPAddrFromAddrPort(c.client)
}

// localAddr is the address the client connected to (getsockname on the
// accepted socket: the listener's address, or the one it was reached at
// for a wildcard listener).
func localAddr(fd int) net.Addr {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return nil
	}
	if _, ok := sa.(*unix.SockaddrUnix); ok {
		return nil
	}
	if ap := clientAddr(sa); ap.IsValid() {
		return net.TCPAddrFromAddrPort(ap)
	}
	return nil
}

func (l *loop) dropBackend(c *conn) {
	if fd := c.fd[1]; fd >= 0 {
		l.conns[fd] = nil
		unix.Close(int(fd))
		c.fd[1] = -1
	}
}

func (l *loop) attemptFailed(c *conn, name string, e unix.Errno) {
	c.attempt++
	if c.dial == nil {
		c.dial = &dialState{}
	}
	c.dial.errs = append(c.dial.errs, name+": "+e.Error())
	c.dial.last = e
	if retryable(e) {
		c.dial.retryable = true
	}
}

// connectTimedOut fails a connection whose attempts took the whole
// connect timeout.
func (l *loop) connectTimedOut(c *conn) {
	switch c.state {
	case stateResolving:
		if c.dial == nil {
			c.dial = &dialState{}
		}
		c.dial.errs = append(c.dial.errs, fmt.Sprintf("cannot resolve %q: timed out", l.memberOf(c).addr.Host))
		c.dial.last = unix.ETIMEDOUT
	case stateConnecting:
		t := l.targets(c)[c.attempt]
		l.dropBackend(c)
		if c.dial == nil {
			c.dial = &dialState{}
		}
		if len(c.dial.errs) == 0 && len(c.dial.prev) > 0 {
			// A retry round ran into the deadline: the round before
			// has the real reasons (connection refused, say).
			c.dial.errs = c.dial.prev
		} else {
			c.dial.errs = append(c.dial.errs, t.name+": timed out")
		}
		c.dial.last = unix.ETIMEDOUT
	case stateWaiting:
		if c.fdWait {
			if c.dial == nil {
				c.dial = &dialState{}
			}
			if len(c.dial.errs) == 0 {
				c.dial.errs = append(c.dial.errs, "socket: "+unix.EMFILE.Error())
			}
		}
	}
	l.backendFailed(c)
}

// backendFailed closes the client of a backend that cannot be reached, with
// one warning naming client, backend and why; the proxy goes on.
func (l *loop) backendFailed(c *conn) {
	l.dropBackend(c)
	why := "no address to connect to"
	if c.dial != nil && len(c.dial.errs) > 0 {
		why = strings.Join(c.dial.errs, "; ")
	}
	var e unix.Errno
	if c.dial != nil {
		e = c.dial.last
	}
	l.listeners[c.listener].n.connectFailed[connectFailureOf(e)].Add(1)
	attrs := []any{"client", c.clientString(), "listener", l.listenerName(c), "backend", l.backendName(c), "error", why}
	if p := &l.listeners[c.listener].pool; p.several() && p.up == 0 {
		attrs[5] = p.names() // every one was tried: naming one would mislead
	}
	if c.round > 0 {
		attrs = append(attrs, "retried_for", time.Duration(l.now()-c.start).Round(time.Millisecond).String())
	}
	l.warn(warnBackend, "cannot connect to backend, closing client", why, attrs...)
	l.release(c, false)
}

// resolve looks the backend's host name up off the loop (a lookup may take
// seconds); the answer comes back through takeResolved. Host names are
// resolved for each connection, as the original does, except that
// connections that come while a lookup of the name is in flight share it
// (as Go's resolver would merge them anyway).
func (l *loop) resolve(c *conn) {
	c.state = stateResolving
	l.waitLookup(l.memberOf(c).addr, deadline{fd: c.fd[0], gen: c.gen[0]})
}

// waitLookup adds a waiter (a connection, or a flow: at < 0) to the lookup
// of backend a, starting the lookup unless one is in flight.
func (l *loop) waitLookup(a backend.Address, w deadline) {
	name := a.String()
	lk := l.lookups[name]
	if lk == nil {
		if l.lookups == nil {
			l.lookups = make(map[string]*lookup)
		}
		lk = &lookup{}
		l.lookups[name] = lk
		l.resolving++
		l.resolveWG.Add(1)
		ctx, cancel := context.WithDeadline(l.resolveCtx, l.epoch.Add(time.Duration(after(l.now(), l.connectTimeout))))
		go l.resolveBackend(ctx, cancel, name, a)
	}
	if len(lk.waiting) >= 2*lk.live+16 {
		lk.waiting = slices.DeleteFunc(lk.waiting, func(d deadline) bool { return l.waiter(d) == nil && l.flowWaiter(d) == nil })
	}
	lk.waiting = append(lk.waiting, w)
	lk.live++
}

// waiter is the connection an entry of a lookup's list stands for, or nil
// when it has gone.
func (l *loop) waiter(d deadline) *conn {
	if d.at >= 0 && int(d.fd) < len(l.conns) {
		if c := l.conns[d.fd]; c != nil && c.gen[0] == d.gen && c.state == stateResolving {
			return c
		}
	}
	return nil
}

// leaveLookup is called when a connection waiting for a lookup closes.
func (l *loop) leaveLookup(c *conn) {
	if lk := l.lookups[l.memberOf(c).name]; lk != nil {
		lk.live--
	}
}

// resolveBackend is the goroutine of one lookup; the loop owns it and
// waits for it on the way out. ctx ends at the connect timeout, or when
// the loop closes.
func (l *loop) resolveBackend(ctx context.Context, cancel context.CancelFunc, name string, a backend.Address) {
	defer l.resolveWG.Done()
	addrs, err := backend.Resolve(ctx, l.s.cfg.Resolver, a)
	cancel()
	r := resolution{name: name, err: err}
	for _, a := range addrs {
		ap, perr := netip.ParseAddrPort(a)
		if perr != nil {
			continue
		}
		if t, terr := tcpTarget(ap); terr == nil && len(r.targets) < maxTargets {
			r.targets = append(r.targets, t)
		}
	}
	if err == nil && len(r.targets) == 0 {
		r.err = fmt.Errorf("cannot resolve %q: no usable address", a.Host)
	}
	l.resolveMu.Lock()
	defer l.resolveMu.Unlock()
	l.resolved = append(l.resolved, r)
	if l.wakefd >= 0 {
		var one = [8]byte{1}
		unix.Write(l.wakefd, one[:])
	}
}

// takeResolved starts connecting the connections whose names came back.
func (l *loop) takeResolved() {
	l.resolveMu.Lock()
	rs := l.resolved
	l.resolved = nil
	l.resolveMu.Unlock()
	for _, r := range rs {
		l.resolving--
		lk := l.lookups[r.name]
		delete(l.lookups, r.name)
		for _, d := range lk.waiting {
			if f := l.flowWaiter(d); f != nil {
				l.flowResolved(f, r)
				continue
			}
			c := l.waiter(d)
			if c == nil {
				continue // the client went away meanwhile
			}
			if c.dial == nil {
				c.dial = &dialState{}
			}
			c.dial.targets = r.targets // the reasons other backends failed are kept
			c.state = stateConnecting  // the lookup is over
			if r.err != nil {
				c.dial.errs = append(c.dial.errs, r.err.Error())
				if !l.nextMember(c) {
					l.backendFailed(c)
				}
				continue
			}
			l.connect(c)
		}
	}
}
