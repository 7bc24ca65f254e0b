package proxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/backend"
)

const defaultDialTimeout = backend.DefaultDialTimeout

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
	errs    []string
}

// resolution is a resolver goroutine's answer, handed back to the loop.
type resolution struct {
	fd      int32
	gen     uint32
	targets []target
	err     error
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

func (l *loop) targets(c *conn) []target {
	if c.dial != nil {
		return c.dial.targets
	}
	return l.static
}

// connect starts connecting c to its next address, going on to the one
// after whenever one fails at once; with none left, the client is closed.
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
			return
		}
		l.attemptFailed(c, t.name+": "+e.Error())
	}
	l.backendFailed(c)
}

func (l *loop) startConnect(c *conn, sa unix.Sockaddr) unix.Errno {
	family := unix.AF_UNIX
	switch sa.(type) {
	case *unix.SockaddrInet4:
		family = unix.AF_INET
	case *unix.SockaddrInet6:
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err.(unix.Errno)
	}
	c.tcp[1] = family != unix.AF_UNIX
	if c.tcp[1] {
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	}
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
	l.attemptFailed(c, t.name+": "+unix.Errno(e).Error())
	l.connect(c)
}

// connected starts forwarding. Whatever the client sent meanwhile was
// remembered as readiness (its events came while the connect was in
// progress), so both directions are pumped now.
func (l *loop) connected(c *conn) {
	c.state = stateOpen
	c.ready[1] |= canWrite
	if l.pump(c, 0) {
		l.pump(c, 1)
	}
}

func (l *loop) dropBackend(c *conn) {
	if fd := c.fd[1]; fd >= 0 {
		l.conns[fd] = nil
		unix.Close(int(fd))
		c.fd[1] = -1
	}
}

func (l *loop) attemptFailed(c *conn, why string) {
	c.attempt++
	if c.dial == nil {
		c.dial = &dialState{targets: l.static}
	}
	c.dial.errs = append(c.dial.errs, why)
}

// connectTimedOut fails a connection whose attempts took the whole dial
// timeout.
func (l *loop) connectTimedOut(c *conn) {
	if c.state == stateResolving {
		if c.dial == nil {
			c.dial = &dialState{}
		}
		c.dial.errs = append(c.dial.errs, fmt.Sprintf("cannot resolve %q: timed out", l.s.cfg.Backend.Host))
		l.backendFailed(c)
		return
	}
	t := l.targets(c)[c.attempt]
	l.dropBackend(c)
	l.attemptFailed(c, t.name+": timed out")
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
	l.s.backendErrors.Add(1)
	l.s.log.Warn("cannot connect to backend, closing client",
		"client", c.clientString(), "backend", l.s.cfg.Backend.String(), "error", why)
	l.release(c, false)
}

// resolve looks the backend's host name up off the loop (a lookup may take
// seconds); the answer comes back through takeResolved. Host names are
// resolved for each connection, as the original does.
func (l *loop) resolve(c *conn) {
	c.state = stateResolving
	l.resolving++
	l.resolveWG.Add(1)
	go l.resolveBackend(c.fd[0], c.gen[0])
}

// resolveBackend is the resolver goroutine of one connection; the loop owns
// it and waits for it on the way out.
func (l *loop) resolveBackend(fd int32, gen uint32) {
	defer l.resolveWG.Done()
	ctx, cancel := context.WithTimeout(l.resolveCtx, l.timeout)
	addrs, err := l.s.cfg.Dialer.Resolve(ctx, l.s.cfg.Backend)
	cancel()
	r := resolution{fd: fd, gen: gen, err: err}
	for _, a := range addrs {
		ap, perr := netip.ParseAddrPort(a)
		if perr != nil {
			continue
		}
		if t, terr := tcpTarget(ap); terr == nil {
			r.targets = append(r.targets, t)
		}
	}
	if err == nil && len(r.targets) == 0 {
		r.err = fmt.Errorf("cannot resolve %q: no usable address", l.s.cfg.Backend.Host)
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
		if int(r.fd) >= len(l.conns) {
			continue
		}
		c := l.conns[r.fd]
		if c == nil || c.gen[0] != r.gen || c.state != stateResolving {
			continue // the client went away meanwhile
		}
		c.dial = &dialState{targets: r.targets}
		if r.err != nil {
			c.dial.errs = append(c.dial.errs, r.err.Error())
			l.backendFailed(c)
			continue
		}
		c.state = stateConnecting
		l.connect(c)
	}
}
