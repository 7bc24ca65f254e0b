// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/handoff"
)

// Handing the loop to the next image. The loop stops between two
// batches of events, so that no connection is half-way through a step:
// every byte read is either written or parked in its direction's pipe. The
// record lists what each connection holds; the descriptors go over as they
// are (exec keeps them, the fd store keeps them), so the kernel keeps every
// byte in flight in socket buffers and pipes, and nothing is copied.
//
// A connection still resolving, connecting or waiting to retry is carried
// with its client socket only: the backend socket of a connect in progress
// stays close-on-exec and goes, and the next image starts connecting again,
// within the deadline counted from the original accept. A connect that was
// about to succeed costs one more round trip; none of the client's bytes
// were read, so none can be lost or doubled.

// Reload asks the loop to hand over at its next safe point: Config.Reload
// is called on the loop's goroutine, with the loop stopped. It is safe to
// call from any goroutine; a stopping proxy ignores it.
func (s *Server) Reload() {
	s.reload.Store(true)
	if l := s.loop.Load(); l != nil {
		l.wake()
	}
}

// Store asks the loop to hand every connection to systemd's fd store at
// its next safe point (Config.Store), then stop: --fdstore=on-stop. When
// the store fails, the loop drains as on a plain stop.
func (s *Server) Store() {
	s.store.Store(true)
	if l := s.loop.Load(); l != nil {
		l.wake()
	}
}

// handoff writes the record and gives it to Config.Reload, which executes
// the next image and does not return when that works. When it returns,
// nothing has changed and the loop goes on.
func (l *loop) handoff() {
	if l.draining || l.s.cfg.Reload == nil {
		return
	}
	r := l.record()
	r.Epoll, r.Gen, r.ByNumber = l.epfd, l.gen, true
	b, fds, err := handoff.Encode(r)
	if err == nil {
		// The next image registers its listeners anew (as duplicates,
		// under other numbers): the old registrations would only
		// report every client twice.
		for _, ln := range l.listeners {
			unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, ln.fd, nil)
		}
		l.armResets()
		err = l.s.cfg.Reload(b, fds)
		for _, ln := range l.listeners {
			l.add(ln.fd, listenerEvents, 0)
		}
	}
	if err != nil && b == nil {
		l.s.cfg.Reload(nil, nil) // tells the caller it is over
	}
	l.s.log.Error("reload failed, going on serving", "error", err.Error())
}

// armResets sets a reset on the last close of every TCP socket a reload
// carries. Armed, a process that dies between the exec and the next image
// adopting them (a SIGTERM in that window takes its default action: the Go
// runtime unblocks it before any of our code runs) resets each connection;
// without it the kernel would close them with a FIN, and a transfer cut in
// the middle would look complete to both peers. Nothing disarms them while
// the loop stands still: a connection marked armed has its reset cleared
// when it ends cleanly (release), the only close that must be a FIN. A
// keeping proxy's sockets linger 0 all their life already. Raw: one call
// per socket while the loop stands still (about 1 µs each).
func (l *loop) armResets() {
	if l.s.cfg.Keep != nil {
		return
	}
	lg := unix.Linger{Onoff: 1}
	for fd, c := range l.conns {
		if c == nil || int(c.fd[0]) != fd {
			continue
		}
		for side, sfd := range c.fd {
			// A backend still connecting is not carried: it closes at
			// the exec, and the next image connects again.
			if sfd >= 0 && c.tcp[side] && (side == 0 || c.state == stateOpen) {
				unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(sfd), unix.SOL_SOCKET, unix.SO_LINGER,
					uintptr(unsafe.Pointer(&lg)), unsafe.Sizeof(lg), 0)
			}
		}
		c.dir[1].flags |= armed // also when the exec fails and the loop goes on
	}
}

// carriedEpoll is the epoll instance a reload carried, when the record
// names one that is an epoll instance; -1 otherwise.
func carriedEpoll(r *handoff.Record) int {
	if r == nil || r.Epoll < 0 {
		return -1
	}
	if link, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(r.Epoll)); err != nil || link != "anon_inode:[eventpoll]" {
		unix.Close(r.Epoll)
		r.Epoll = -1
		return -1
	}
	return r.Epoll
}

// Readiness bits as the record has them.
var readyBits = [...][2]uint8{
	{canRead, handoff.Readable}, {canWrite, handoff.Writable}, {peerClosed, handoff.PeerClosed}, {urgent, handoff.Urgent},
}

func mapBits(v uint8, table [][2]uint8, from, to int) uint8 {
	var out uint8
	for _, f := range table {
		if v&f[from] != 0 {
			out |= f[to]
		}
	}
	return out
}

// storeAll gives every connection to Config.Store and lets go of them:
// closing this process's copies sends nothing (no FIN, no reset), as the
// store's copies keep each socket open. The listeners a socket unit passed
// are systemd's and come back on their own; --listen ones are stored, and
// their files stay. Then the loop stops as on SIGTERM, with nothing left
// to drain.
func (l *loop) storeAll() {
	if l.draining || l.s.cfg.Store == nil {
		return
	}
	r := l.record()
	for i := range r.Listeners {
		if !r.Listeners[i].Bound {
			r.Listeners[i].FD = -1
		}
	}
	b, fds, err := handoff.Encode(r)
	if err == nil {
		err = l.s.cfg.Store(b, l.notKept(r, fds))
	}
	if err != nil {
		l.s.log.Warn("cannot hand the connections to the fd store, letting them finish", "error", err.Error())
		l.startDrain()
		return
	}
	l.stored = true
	for fd, c := range l.conns {
		if c != nil && int(c.fd[0]) == fd {
			// If the store did not keep a socket after all (systemd
			// 252 says nothing when FileDescriptorStoreMax= is too
			// small), this close is its last: a reset then, never a
			// clean end in the middle of a transfer. While the store
			// holds it, the close does nothing; the next instance
			// turns lingering back off.
			l.release(c, true)
		}
	}
	// The attrs' order keeps the line's start what scripts grep for.
	l.s.log.Info("connections handed to the fd store", "connections", len(r.Conns), "descriptors", len(fds),
		"note", "the next instance takes them back (systemctl restart); a plain stop closes them, unless the unit has FileDescriptorStorePreserve=yes (systemd 254 and later)")
	l.startDrain()
}

// record describes the loop.
func (l *loop) record() *handoff.Record {
	r := &handoff.Record{Written: handoff.Monotonic(), Conns: make([]handoff.Conn, 0, l.active), Epoll: -1, Totals: l.s.totals()}
	for _, ln := range l.listeners {
		bound := false
		for _, cl := range l.s.cfg.Listeners {
			if cl.Name == ln.name {
				bound = cl.FD < 0
			}
		}
		r.Listeners = append(r.Listeners, handoff.Listener{FD: ln.fd, Name: ln.name, Backend: ln.pool.members[0].name, Bound: bound,
			Kind: listenerKinds[ln.kind], Backends: ln.pool.record()})
	}
	for _, cl := range l.s.cfg.Carry {
		if fd, err := listenerFDOf(cl.Listener); err == nil {
			r.Listeners = append(r.Listeners, handoff.Listener{FD: fd, Name: cl.Name, Bound: cl.FD < 0, Kind: handoff.ListenCarried})
		}
	}
	now := l.now()
	l.recordFlows(r, now)
	none := [2]int{-1, -1}
	for fd, c := range l.conns {
		if c == nil || int(c.fd[0]) != fd {
			continue
		}
		rc := handoff.Conn{
			Listener: int(c.listener), State: handoff.Connecting, FD: [2]int{fd, -1},
			Age: max(now-c.start, 0), Dir: [2]handoff.Dir{{Pipe: none}, {Pipe: none}},
			Gen: [2]uint32{c.gen[0]}, Ready: [2]uint8{mapBits(c.ready[0], readyBits[:], 0, 1)},
			Backend: recordMember(c.member),
		}
		rc.TCP[0] = c.tcp[0]
		if c.tcp[0] {
			rc.Client = c.client
		}
		if c.state == stateOpen {
			rc.State, rc.FD[1], rc.TCP[1] = handoff.Open, int(c.fd[1]), c.tcp[1]
			rc.Gen[1], rc.Ready[1] = c.gen[1], mapBits(c.ready[1], readyBits[:], 0, 1)
			if l.sweepEvery > 0 {
				rc.Idle = int64(l.tick-c.seen) * l.sweepEvery
			}
			rc.Kept = c.isKept()
			for d := range c.dir {
				rc.Dir[d] = recordDir(&c.dir[d], rc.Kept)
			}
		}
		r.Conns = append(r.Conns, rc)
	}
	return r
}

// Direction flags as the record has them (its own bits, so the engine's
// may change).
var dirFlags = [...][2]uint8{
	{srcEOF, handoff.EOF}, {dstShut, handoff.Shut}, {noSplice, handoff.NoSplice},
	{header, handoff.Header}, {fdsDropped, handoff.FDsDropped},
}

// A kept connection's pipes go with it even when empty: they are its own.
func recordDir(dir *direction, kept bool) handoff.Dir {
	rd := handoff.Dir{Bytes: dir.n, Pipe: [2]int{-1, -1}}
	for _, f := range dirFlags {
		if dir.flags&f[0] != 0 {
			rd.Flags |= f[1]
		}
	}
	// A memory spill is a whole message, even an empty one.
	if p := dir.pipe; p != nil && (p.n > 0 || p.r < 0 || kept && p.r >= 0) {
		if p.r >= 0 {
			rd.Pipe, rd.InPipe = [2]int{p.r, p.w}, p.n
		} else {
			rd.Mem = p.mem[:p.n]
		}
	} else {
		rd.Flags &^= handoff.Header // sent whole already
	}
	return rd
}

// resume adopts the connections of a record. Each descriptor is checked
// for what it must be (a stream socket, a pipe holding exactly the bytes
// the record says); a connection that fails a check is reset, never
// forwarded. It reports how many were adopted.
func (l *loop) resume(r *handoff.Record) (adopted, reset int) {
	elapsed := max(handoff.Monotonic()-r.Written, 0)
	if l.epfd == r.Epoll {
		// Registrations, generations and unread edges came along; new
		// generations start past the carried ones.
		l.carried = true
		l.gen = max(l.gen, r.Gen)
	}
	// By name and kind: --listen and --listen-datagram may name one
	// address.
	type key struct {
		name string
		kind uint8
	}
	index := make(map[key]int, len(l.listeners))
	for i, ln := range l.listeners {
		index[key{ln.name, listenerKinds[ln.kind]}] = i
	}
	listenerOf := func(i int) (int, bool) {
		li, ok := index[key{r.Listeners[i].Name, r.Listeners[i].Kind}]
		return li, ok
	}
	l.s.addTotals(r, listenerOf)
	l.resumePools(r, listenerOf)
	l.flowsResumed, reset = l.resumeFlows(r, listenerOf, elapsed)
	for i := range r.Conns {
		rc := &r.Conns[i]
		li, ok := listenerOf(rc.Listener)
		err := fmt.Errorf("listener %q is not served any more", r.Listeners[rc.Listener].Name)
		if ok {
			err = l.adopt(rc, li, elapsed)
		}
		if err != nil {
			l.s.log.Warn("cannot resume connection, resetting it", "client", rc.Client.String(), "error", err.Error())
			handoff.Reset(carried(rc))
			reset++
			continue
		}
		adopted++
	}
	return adopted, reset
}

// carried lists the descriptors of a connection that came over.
func carried(rc *handoff.Conn) []int {
	var fds []int
	for _, fd := range []int{rc.FD[0], rc.FD[1], rc.Dir[0].Pipe[0], rc.Dir[0].Pipe[1], rc.Dir[1].Pipe[0], rc.Dir[1].Pipe[1]} {
		if fd >= 0 {
			fds = append(fds, fd)
		}
	}
	return fds
}

// carriedSocket checks that a socket came over. The carrier's Resolver
// matched it by identity (device and inode) to the socket the writer had,
// which it knew for a stream socket of the kind the record says: no
// getsockopt per descriptor while the loop stands still.
func carriedSocket(fd int, what string) error {
	if fd < 0 {
		return fmt.Errorf("the %s socket was not carried", what)
	}
	return nil
}

// adoptPipe checks a carried kernel pipe: both ends pipes, holding exactly
// the bytes the record says.
func (l *loop) adoptPipe(rd *handoff.Dir) (*pipe, error) {
	for _, fd := range rd.Pipe {
		var st unix.Stat_t
		if fd < 0 || unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
			return nil, fmt.Errorf("pipe descriptor %d is not a carried pipe", fd)
		}
	}
	n, err := unix.IoctlGetInt(rd.Pipe[0], unix.TIOCINQ) // FIONREAD
	if err != nil || n != rd.InPipe {
		return nil, fmt.Errorf("pipe holds %d bytes, the record says %d", n, rd.InPipe)
	}
	if l.pipes.size == 0 {
		size, err := unix.FcntlInt(uintptr(rd.Pipe[1]), unix.F_GETPIPE_SZ, 0)
		if err != nil || size <= 0 {
			size = 64 << 10
		}
		l.pipes.size = size
	}
	return &pipe{r: rd.Pipe[0], w: rd.Pipe[1], n: n}, nil
}

func (l *loop) adopt(rc *handoff.Conn, listener int, elapsed int64) error {
	c := &conn{fd: [2]int32{int32(rc.FD[0]), -1}, listener: uint16(listener), client: rc.Client,
		start: l.now() - elapsed - rc.Age, packets: l.listeners[listener].kind == activation.SequentialPacket,
		member: l.adoptMember(listener, rc.Listener, rc.Backend)}
	if l.listeners[listener].kind == activation.Datagram {
		return fmt.Errorf("listener %q takes datagrams, not connections", l.listeners[listener].name)
	}
	c.tcp = rc.TCP
	if err := carriedSocket(rc.FD[0], "client"); err != nil {
		return err
	}
	if c.packets {
		// Carried from an image that did not set it, perhaps.
		passCredentials(rc.FD[0])
		if rc.State == handoff.Open {
			passCredentials(rc.FD[1])
		}
	}
	var pipes [2]*pipe
	var err error
	if rc.State == handoff.Open {
		if err := carriedSocket(rc.FD[1], "backend"); err != nil {
			return err
		}
		for d := range rc.Dir {
			rd := &rc.Dir[d]
			switch {
			case rd.Pipe[0] >= 0 || rd.Pipe[1] >= 0:
				if pipes[d], err = l.adoptPipe(rd); err != nil {
					return err
				}
			case rd.Mem != nil:
				pipes[d] = &pipe{r: -1, w: -1, n: len(rd.Mem), mem: bytes.Clone(rd.Mem)} // non-nil, even empty
			}
		}
	}
	// From here on nothing fails: the descriptors are this image's.
	for d, p := range pipes {
		switch {
		case p != nil && p.r >= 0:
			l.pipes.open++
			l.s.pipes.Add(1)
		case p != nil && c.packets:
			// A parked message: it counts against parkBudget here as it
			// did in the image that parked it.
			c.dir[d].flags |= parkedMsg
			l.parked += p.n
		}
		c.dir[d].pipe = p
	}
	if err := l.register(c, 0, rc); err != nil {
		for d := range c.dir {
			l.unpark(&c.dir[d])
		}
		return err
	}
	l.track(rc.FD[0], c)
	l.sourceAdd(c.client.Addr(), false, 1)
	l.active++
	l.listeners[listener].n.active.Add(1)
	l.idleAt = 0
	if rc.State != handoff.Open {
		// It starts afresh: on the backend the policy picks now.
		l.connectQ = append(l.connectQ, deadline{fd: c.fd[0], gen: c.gen[0], at: after(c.start, l.connectTimeout)})
		c.member = 0
		l.dialBackend(c)
		return nil
	}
	c.fd[1] = int32(rc.FD[1])
	if err := l.register(c, 1, rc); err != nil {
		l.abort(c, err)
		return nil
	}
	l.track(rc.FD[1], c)
	c.state = stateOpen
	if m := l.poolMember(c.listener, c.member); m != nil {
		m.add(1) // counted from here on, as release uncounts it
	}
	for d := range rc.Dir {
		c.dir[d].n = rc.Dir[d].Bytes
		for _, f := range dirFlags {
			if rc.Dir[d].Flags&f[1] != 0 {
				c.dir[d].flags |= f[0]
			}
		}
		if rc.Kept && c.dir[d].flags&noSplice == 0 {
			c.dir[d].flags |= bulk
		}
	}
	if rc.Kept {
		c.dir[0].flags |= kept
		l.s.kept.Add(1)
	}
	if c.tcp[0] && !c.client.IsValid() {
		// Recovered after a crash (handoff.Recover): no record said.
		if sa, err := unix.Getpeername(rc.FD[0]); err == nil {
			c.client = clientAddr(sa)
		}
	}
	l.keep(c) // a keeping proxy keeps what came over unkept, if it can
	if l.sweepEvery > 0 {
		ticks := min((rc.Idle+elapsed)/l.sweepEvery, int64(l.idleTicks)+1)
		c.seen = l.tick - uint32(ticks)
		if !l.carried {
			l.idleClocks = append(l.idleClocks, idleClock{c, c.gen[0], c.seen})
		}
	}
	return nil
}

// register puts one side of an adopted connection in the loop. With the
// epoll instance carried, it is registered already: it keeps its generation
// and the readiness the old image knew (a consumed edge does not come
// again). Otherwise it is registered now, and registering reports its
// readiness as an event (for an edge-triggered socket, its state now).
func (l *loop) register(c *conn, side int, rc *handoff.Conn) error {
	fd := int(c.fd[side])
	if l.carried {
		if rc.Gen[side] == 0 || rc.Gen[side] > l.gen {
			return fmt.Errorf("registration generation %d out of range", rc.Gen[side])
		}
		c.gen[side] = rc.Gen[side]
		c.ready[side] = mapBits(rc.Ready[side], readyBits[:], 1, 0)
	} else {
		c.gen[side] = l.nextGen()
		if e := l.addRaw(fd, connEvents, c.gen[side]); e != 0 {
			return e
		}
	}
	if c.tcp[side] {
		// The image before set a reset on close (armResets before a
		// reload, storeAll before the fd store): a clean end clears it
		// first (release), so that it is a FIN again.
		c.dir[1].flags |= armed
	}
	return nil
}

// addRaw is add without the scheduler's bookkeeping, for the thousands of
// registrations of a resume.
func (l *loop) addRaw(fd int, events uint32, gen uint32) unix.Errno {
	ev := unix.EpollEvent{Events: events, Fd: int32(fd), Pad: int32(gen)}
	_, _, e := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(l.epfd), unix.EPOLL_CTL_ADD, uintptr(fd), uintptr(unsafe.Pointer(&ev)), 0, 0)
	return e
}

// idleClock is an adopted connection's idle clock, put back after the
// first batch of events: registering a socket reports its readiness
// (writable, at least) as an event, which is no traffic.
type idleClock struct {
	c    *conn
	gen  uint32
	seen uint32
}

// restoreIdleClocks runs after the first batch of events of a resumed
// loop. Traffic that came in that very batch (the first milliseconds
// after the reload) is not counted; the idle time carried is a lower bound
// rounded down to a tick, which covers it.
func (l *loop) restoreIdleClocks() {
	for _, ic := range l.idleClocks {
		if ic.c.gen[0] == ic.gen && ic.c.state == stateOpen {
			ic.c.seen = ic.seen
		}
	}
	l.idleClocks = nil
}

// resumed logs the end of a handoff, with how long the loop stood still:
// from the old image's record to this loop's first wait.
func (l *loop) resumed(r *handoff.Record, adopted, reset int) {
	l.s.resumed.Add(int64(adopted + l.flowsResumed))
	l.s.paused.Store(max(handoff.Monotonic()-r.Written, 0))
	l.s.log.Info("resumed connections", "connections", adopted, "reset", reset, "flows", l.flowsResumed, "listeners", len(l.listeners),
		"paused", time.Duration(handoff.Monotonic()-r.Written).Round(10*time.Microsecond).String())
	if reset > 0 && !r.ByNumber {
		// From the fd store: the likely cause is one it did not keep.
		l.s.log.Warn("connections the fd store did not hold whole were reset: if FileDescriptorStoreMax= is below 6 per connection plus 1, raise it",
			"reset", reset)
	}
}
