// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"context"
	"fmt"
	"math"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
)

const (
	// bufSize is the shared buffer small reads go through. A read that
	// fills it switches its direction to splice.
	bufSize = 16 << 10
	// maxEvents is how many events one wait returns at most.
	maxEvents = 256
	// listenerEvents: a listener is read (accepted from) until EAGAIN
	// after each edge.
	listenerEvents = unix.EPOLLIN | unix.EPOLLET
	// trimInterval is how long a free pipe may stay unused before it is
	// closed.
	trimInterval = time.Second
	// acceptRetry is how soon accepting resumes after EMFILE when no
	// connection closes in between.
	acceptRetry = time.Second
	// hotWait is how long the loop waits in a raw epoll_wait, holding its
	// P, after it last had work; past that it blocks through the scheduler
	// so that an idle proxy costs no wake-ups.
	hotWait = 5 // milliseconds
	// retryFirst and retryMax bound the backoff between connect rounds
	// to a refused or missing backend: 10ms, doubling, up to 500ms.
	retryFirst = 10 * time.Millisecond
	retryMax   = 500 * time.Millisecond
	// sweepMax is the longest interval between two idle sweeps.
	sweepMax = time.Second
)

// loop is the event loop: one epoll instance, the listeners, every
// connection, and the pipe pool. Only the goroutine running run touches it,
// except wake and the resolver hand-off.
type loop struct {
	s      *Server
	epfd   int
	wakefd int // eventfd: ctx cancelled or a resolution is ready
	events []unix.EpollEvent
	buf    []byte
	pipes  pipePool
	epoch  time.Time
	// parked is the bytes of the messages pumpPackets holds for
	// sequential-packet destinations that could not take them yet
	// (parkBudget).
	parked int

	listeners []listenerFD
	conns     []*conn // by descriptor number, both sides of each connection
	gen       uint32  // last connection generation handed out; never 0
	active    int

	// connectTimeout is the connect deadline's offset from accept;
	// retries says whether a refused round is tried again until then.
	connectTimeout time.Duration
	retries        bool
	// keepIdle and keepIntvl are TCP_KEEPIDLE and TCP_KEEPINTVL in
	// seconds; 0: keepalive off.
	keepIdle, keepIntvl int

	connectQ []deadline // connection attempts in deadline order
	qHead    int
	retryQ   []deadline // connections waiting for their next round: a min-heap by at
	attemptQ []deadline // connects in progress to a backend of several: a min-heap by at (gen: the backend side's)
	fdWait   int        // connections waiting for a descriptor for their backend socket

	// Idle timeout: the loop's clock in ticks of sweepEvery, each open
	// connection's tick of last activity, and a sweep of the table at
	// every tick that closes those idleTicks behind.
	sweepEvery int64
	idleTicks  uint32
	tick       uint32
	sweepAt    int64

	draining bool  // ctx ended: no accepting, the open connections finish
	drainAt  int64 // when the connections still open are closed

	idleAt       int64 // monotonic ns when the proxy exits if still idle; 0: not armed
	trimAt       int64
	acceptPaused bool
	acceptAt     int64

	// bursts rate-limit the warnings clients and backends cause;
	// warnAt is when the next summary is due (0: none pending).
	bursts [warnKinds]burst
	warnAt int64

	hot      bool          // the last wait found work: wait raw
	busyPoll time.Duration // Config.BusyPoll, at most MaxBusyPoll

	flows  flowState    // datagram flows (flow.go)
	health *healthState // active health checks (health.go); nil: off

	idleClocks []idleClock // of connections just resumed; see restoreIdleClocks
	carried    bool        // the epoll instance came over a reload, registrations and all
	// stored: everything went to the fd store. Closing a connection then
	// ends nothing (the store holds it, kept or not), and the --listen
	// sockets' files stay for the next instance.
	stored bool
	// flowsResumed counts the datagram flows a handoff carried, for its log line.
	flowsResumed int
	// carriedMembers maps, for each listener of a record being resumed,
	// its backend indexes to this image's members (pool.go).
	carriedMembers [][]uint8

	// resolutions handed back by resolver goroutines
	resolveMu sync.Mutex
	resolved  []resolution
	resolving int
	// lookups are the host name lookups in flight, one per backend
	// name, each with the connections waiting for it.
	lookups map[string]*lookup
	// sources counts what each client address holds, under
	// Config.MaxPerSource (persource.go); nil without it.
	sources     map[netip.Addr]perSource
	resolveWG   sync.WaitGroup
	reserveWG   sync.WaitGroup // reserveDescriptors, which duplicates epfd
	resolveCtx  context.Context
	resolveStop context.CancelFunc
	stopping    bool
}

type listenerFD struct {
	fd    int
	name  string // in the handoff record
	label string // in log lines: name and type
	pool  pool   // its backends (pool.go)
	kind  activation.Kind
	dgram *dgramListener // a datagram listener's flows (flow.go)
	n     *listenerCounters
}

// deadline is an entry of the connect queue; stale entries (the connection
// went on or went away) are skipped when they come up.
type deadline struct {
	fd  int32
	gen uint32
	at  int64
}

func newLoop(s *Server) (*loop, error) {
	epfd := carriedEpoll(s.cfg.Resume) // a reload's, registrations and all
	var err error
	if epfd < 0 {
		epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot create the event loop: %v", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("cannot create the event loop: %v", err)
	}
	l := &loop{
		s: s, epfd: epfd, wakefd: wakefd,
		events:   make([]unix.EpollEvent, maxEvents),
		buf:      make([]byte, bufSize),
		epoch:    time.Now(),
		busyPoll: min(s.cfg.BusyPoll, MaxBusyPoll),
		bursts:   newBursts(),
	}
	l.resolveCtx, l.resolveStop = context.WithCancel(context.Background())
	l.connectTimeout, l.retries = s.cfg.ConnectTimeout, true
	if l.connectTimeout == 0 {
		l.connectTimeout = DefaultConnectTimeout
	} else if l.connectTimeout < 0 {
		l.connectTimeout, l.retries = DefaultConnectTimeout, false
	}
	if k := s.cfg.KeepAlive; k >= 0 {
		if k == 0 {
			k = DefaultKeepAlive
		}
		l.keepIdle = int(min((k-1)/time.Second+1, maxKeepIdle)) // seconds, rounded up
		l.keepIntvl = max(1, l.keepIdle/4)
	}
	if t := s.cfg.IdleTimeout; t > 0 {
		l.sweepEvery = int64(min(max(t/4, time.Millisecond), sweepMax))
		l.idleTicks = uint32((int64(t) + l.sweepEvery - 1) / l.sweepEvery)
	}
	l.pipes = pipePool{max: pipeBudget(s.cfg.MaxConnections, s.cfg.Keep != nil), stats: s}
	// In the background: growing the table waits for an RCU grace
	// period, which the first client of a socket-activated proxy would
	// wait for too. The loop does not wait for it unless it needs a slot
	// beyond the table meanwhile (the kernel then waits for the growth in
	// progress instead of starting one).
	l.reserveWG.Go(func() { reserveDescriptors(epfd, 2*s.cfg.MaxConnections+2*l.pipes.max+64) })
	if err := l.add(wakefd, unix.EPOLLIN, 0); err != nil {
		l.close()
		return nil, fmt.Errorf("cannot create the event loop: %v", err)
	}
	for i, ln := range s.cfg.Listeners {
		fd, err := listenerFDOf(ln.Listener)
		if err == nil {
			err = l.add(fd, listenerEvents, 0)
		}
		if err != nil {
			l.close()
			return nil, fmt.Errorf("listener %q: %v", ln.Name, err)
		}
		b, ok := NamedBackend(s.cfg.Backends, ln)
		if !ok {
			b = s.cfg.Backend
		}
		if len(b) == 0 || len(b) > MaxBackends {
			l.close()
			return nil, fmt.Errorf("listener %q: %d backends: give 1 to %d", ln.Name, len(b), MaxBackends)
		}
		p := newPool(b, s.cfg.Balance, ln.Kind, &s.per[i].backends)
		if p.several() {
			s.poolSize.Add(int64(len(b)))
			s.poolUp.Add(int64(len(b)))
		}
		l.listeners = append(l.listeners, listenerFD{fd: fd, name: ln.Name, label: ln.Label(), pool: p, kind: ln.Kind, n: &s.per[i]})
		if ln.Kind == activation.Datagram {
			l.setupDatagram(&l.listeners[len(l.listeners)-1])
		}
		if ln.Kind == activation.SequentialPacket && l.flows.packetSize == 0 {
			// At the start, while descriptors are to be had: learning
			// it takes one, and the first message may come when none is
			// (0 when none is now either: pumpPackets tries again).
			l.flows.packetSize = sendBufferMost()
		}
	}
	l.setupHealth()
	if s.cfg.ExitIdleTime > 0 {
		l.idleAt = after(l.now(), s.cfg.ExitIdleTime)
	}
	return l, nil
}

// listenerFDOf borrows the descriptor of a listener. The listener keeps
// owning it (Run closes the listeners on the way out); it is non-blocking
// already, as Go makes every socket.
func listenerFDOf(ln any) (int, error) {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("%T is not a socket", ln)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return -1, err
	}
	return fd, nil
}

// pipeBudget bounds the pool so that pipes, two descriptors each, never take
// the descriptors the connection limit needs.
//
// A proxy that keeps its connections in the fd store (keep.go) gives each a
// pipe each way for its whole life, so its pool may grow by two per
// connection, within the same descriptor budget.
func pipeBudget(maxConns int, keeping bool) int {
	var rl unix.Rlimit
	limit := 1024
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil && rl.Cur < 1<<30 {
		limit = int(rl.Cur)
	}
	n := (limit - 2*maxConns - 64) / 2
	most := 1024
	if keeping {
		most += 2 * maxConns
	}
	return max(16, min(n, most))
}

// maxReserve bounds reserveDescriptors: 65536 slots are 512 KiB of kernel
// memory; past that a doubling of the table is paid once per 32768 or more
// new descriptors, which no longer shows.
const maxReserve = 1 << 16

// reserveDescriptors grows the process's descriptor table at once to n
// slots (at most the open files limit and maxReserve), by duplicating fd
// onto slot n-1 and closing the copy; the table never shrinks. The kernel
// doubles the table when a new descriptor does not fit, and in a process
// whose threads share it (every Go program) it waits for an RCU grace
// period first (expand_fdtable calls synchronize_rcu): measured 8 to 16 ms
// per doubling on the bench VM, during which the loop is stuck in the
// socket() or accept4() that needed the slot and no client is served. A
// burst of new flows went through five of them (at descriptors 256, 512,
// ... 4096), each stalling every client in flight; single-threaded nginx
// never pays them. Here they are paid once, at start-up. The cost is the
// table itself: 8 bytes a slot of kernel memory (a default -c 256 reserves
// 4096 slots, 32 KiB).
func reserveDescriptors(fd, n int) {
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil && uint64(n) > rl.Cur {
		n = int(rl.Cur)
	}
	n = min(n, maxReserve)
	if n < 2 {
		return
	}
	if dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, n-1); err == nil {
		unix.Close(dup)
	}
}

func (l *loop) add(fd int, events uint32, gen uint32) error {
	ev := unix.EpollEvent{Events: events, Fd: int32(fd), Pad: int32(gen)}
	return unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev)
}

// rearm has epoll look at fd afresh: modifying an edge-triggered
// registration checks the socket's readiness again, and queues an event if
// it is ready, as if a new edge had come.
func (l *loop) rearm(fd int, events uint32, gen uint32) {
	ev := unix.EpollEvent{Events: events, Fd: int32(fd), Pad: int32(gen)}
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, fd, &ev)
}

func (l *loop) now() int64 { return int64(time.Since(l.epoch)) }

// after is now+d, saturating: a span of "infinity" (math.MaxInt64) means
// never, not an overflow into the past.
func after(now int64, d time.Duration) int64 {
	if d > 0 && now > math.MaxInt64-int64(d) {
		return math.MaxInt64
	}
	return now + int64(d)
}

// maxKeepIdle is the largest TCP_KEEPIDLE the kernel takes (MAX_TCP_KEEPIDLE);
// above it setsockopt fails and the kernel's 2 h default stays.
const maxKeepIdle = 32767

// maxWaitMsec caps one epoll wait: a deadline days away (--exit-idle-time
// 30d) must not overflow the int timeout into a negative one, which means
// "wait forever". The loop just waits again.
const maxWaitMsec = 3600 * 1000

// wake interrupts the wait; it is the one method other goroutines call.
func (l *loop) wake() {
	l.resolveMu.Lock()
	defer l.resolveMu.Unlock()
	if l.wakefd >= 0 {
		var one = [8]byte{1}
		unix.Write(l.wakefd, one[:])
	}
}

// run serves until ctx ends or the idle time passes; it reports whether it
// stopped for being idle.
func (l *loop) run(ctx context.Context) (idle bool) {
	for {
		n := l.wait(l.timeout_ms())
		if l.s.testBatch != nil {
			n = l.s.testBatch(l.events, n)
		}
		for i := range n {
			ev := &l.events[i]
			if ev.Pad == 0 {
				l.special(int(ev.Fd))
				continue
			}
			fd := int(ev.Fd)
			if fd < len(l.conns) {
				if c := l.conns[fd]; c != nil {
					side := 0
					if int(c.fd[1]) == fd {
						side = 1
					}
					if c.gen[side] == uint32(ev.Pad) {
						l.event(c, side, fd, ev.Events)
					}
					continue
				}
			}
			if l.health != nil && l.probeEvent(fd, uint32(ev.Pad), ev.Events) {
				continue
			}
			l.flowEvent(fd, uint32(ev.Pad), ev.Events)
		}
		if l.flows.count > 0 {
			l.sendReplies() // the replies of every flow that had an event, together
		}
		if l.idleClocks != nil {
			l.restoreIdleClocks()
		}
		// The stop is read before the store flag: Server.Store is called
		// before the context ends (--fdstore), so a stop seen here comes
		// with its store request, never ahead of it into a plain drain.
		stop := ctx.Err() != nil
		if l.s.reload.Load() {
			l.s.reload.Store(false)
			l.handoff() // returns only when the reload failed
		}
		if l.s.store.Load() {
			l.s.store.Store(false)
			l.storeAll()
		}
		if !l.draining && stop {
			l.startDrain()
		}
		if l.draining && l.drained() {
			return false
		}
		if l.timers() {
			return true
		}
	}
}

// startDrain starts a graceful stop: no more accepting, and the listeners are
// closed, so that clients connecting meanwhile wait in the backlog of the
// socket systemd keeps for the next instance; the connections already
// accepted go on until drained says they are done.
func (l *loop) startDrain() {
	l.draining = true
	for _, ln := range l.listeners {
		unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, ln.fd, nil)
	}
	if l.stored {
		activation.CloseKeepingFiles(l.s.cfg.Listeners)
	} else {
		activation.Close(l.s.cfg.Listeners)
	}
	l.closeFlows() // their replies could no longer leave
	l.acceptPaused = false
	l.idleAt = 0
	d := l.s.cfg.ShutdownTimeout
	if d == 0 {
		d = DefaultShutdownTimeout
	}
	l.drainAt = after(l.now(), max(d, 0))
	if l.active > 0 && d > 0 && !l.s.hurry.Load() {
		l.s.log.Info("letting open connections finish", "connections", l.active, "shutdown_timeout", d.String())
	}
}

// drained reports whether a graceful stop is over: every connection has
// closed, or the time is up or was cut short (CloseConnections), in which
// case the rest are closed by the caller.
func (l *loop) drained() bool {
	if l.active == 0 {
		return true
	}
	if l.s.hurry.Load() || l.now() >= l.drainAt {
		l.s.log.Info("closing the connections still open", "connections", l.active)
		return true
	}
	return false
}

// wait returns the number of events ready, waiting at most msec (-1: no
// limit). When the loop had work recently it waits in a raw epoll_wait for
// up to hotWait ms, keeping its P; otherwise, or past that, it polls once
// without waiting and then blocks through the scheduler, which releases the
// P for as long as the proxy is idle. With GOMAXPROCS=1 (a proxy pinned to
// one CPU) the rest of the program then waits for the loop's P: at most
// hotWait, or the runtime's 10 ms preemption under constant load; that is a
// signal or a watchdog ping a few ms late. A host name resolution in flight
// needs a P at once, so it turns raw waits off, and the busy poll
// (busypoll.go) with them.
func (l *loop) wait(msec int) int {
	if l.hot && l.resolving == 0 && msec != 0 && l.busyPoll > 0 {
		if n := busySpin(l.epfd, l.events, time.Now(), l.busyPoll); n > 0 {
			l.s.busyPollHits.Add(1)
			return n
		}
	}
	return l.block(msec)
}

// block is wait without the busy poll.
func (l *loop) block(msec int) int {
	if l.hot && l.resolving == 0 {
		t := hotWait
		if msec >= 0 && msec < t {
			t = msec
		}
		n, e := rawEpollWait(l.epfd, l.events, t)
		if e == 0 && n > 0 {
			return n
		}
		if e == unix.EINTR || (e == 0 && t == msec) {
			return 0 // the caller's timeout passed, or a signal came
		}
		l.hot = false
		if msec > 0 {
			msec -= t
		}
	} else if n, e := rawEpollWait(l.epfd, l.events, 0); e == 0 && n > 0 {
		l.hot = true
		return n
	} else if msec == 0 {
		return 0
	}
	n, err := unix.EpollWait(l.epfd, l.events, msec)
	if err != nil || n <= 0 {
		return 0
	}
	l.hot = true
	return n
}

// timeout_ms is how long the next wait may last: until the earliest of the
// connect deadlines, the idle exit, the pipe trim and the accept retry.
func (l *loop) timeout_ms() int {
	if l.qHead == len(l.connectQ) && len(l.retryQ) == 0 && len(l.attemptQ) == 0 && l.health == nil && l.idleAt == 0 && len(l.pipes.free) == 0 &&
		!l.acceptPaused && !l.draining && (l.sweepEvery == 0 || l.active == 0) && l.warnAt == 0 && l.flows.count == 0 {
		return -1
	}
	now := l.now()
	next := int64(-1)
	consider := func(at int64) {
		if at > 0 && (next < 0 || at < next) {
			next = at
		}
	}
	if l.qHead < len(l.connectQ) {
		consider(l.connectQ[l.qHead].at)
	}
	if len(l.retryQ) > 0 {
		consider(l.retryQ[0].at)
	}
	if len(l.attemptQ) > 0 {
		consider(l.attemptQ[0].at)
	}
	if l.health != nil {
		consider(l.health.at)
	}
	if l.draining {
		consider(max(l.drainAt, 1))
	}
	if l.sweepEvery > 0 && l.active > 0 {
		if l.sweepAt == 0 {
			l.sweepAt = now + l.sweepEvery
		}
		consider(l.sweepAt)
	}
	consider(l.idleAt)
	consider(l.warnAt)
	consider(l.flowTimeout(now))
	if len(l.pipes.free) > 0 {
		if l.trimAt == 0 {
			l.trimAt = now + int64(trimInterval)
		}
		consider(l.trimAt)
	}
	if l.acceptPaused {
		consider(l.acceptAt)
	}
	if next < 0 {
		return -1
	}
	if next <= now {
		return 0
	}
	return int(min((next-now)/int64(time.Millisecond)+1, maxWaitMsec))
}

// timers runs what is due; it reports whether the idle time has passed.
func (l *loop) timers() bool {
	if l.qHead == len(l.connectQ) && len(l.retryQ) == 0 && len(l.attemptQ) == 0 && l.health == nil && l.idleAt == 0 && l.trimAt == 0 &&
		!l.acceptPaused && l.sweepAt == 0 && l.warnAt == 0 && l.flows.sweepAt == 0 {
		return false
	}
	now := l.now()
	l.flowTimers(now)
	if l.warnAt != 0 && now >= l.warnAt {
		l.flushWarnings(now, false)
	}
	// Retries before deadlines: a round due at the deadline still runs.
	for len(l.retryQ) > 0 && l.retryQ[0].at <= now {
		d := l.popRetry()
		if int(d.fd) < len(l.conns) {
			if c := l.conns[d.fd]; c != nil && c.gen[0] == d.gen && c.state == stateWaiting {
				l.retry(c)
			}
		}
	}
	for len(l.attemptQ) > 0 && l.attemptQ[0].at <= now {
		var d deadline
		l.attemptQ, d = popHeap(l.attemptQ)
		l.attemptTimedOut(d)
	}
	if l.health != nil && now >= l.health.at {
		l.probeAll(now)
	}
	// Pop the entries that are due, and the stale ones in front (their
	// connection is open or gone), so that the queue stays as short as
	// the number of connects in progress.
	for l.qHead < len(l.connectQ) {
		d := l.connectQ[l.qHead]
		var c *conn
		if int(d.fd) < len(l.conns) {
			if c = l.conns[d.fd]; c != nil && (c.gen[0] != d.gen || c.state == stateOpen) {
				c = nil
			}
		}
		if c != nil && d.at > now {
			break
		}
		l.connectQ[l.qHead] = deadline{}
		l.qHead++
		if c != nil {
			l.connectTimedOut(c)
		}
	}
	if l.qHead == len(l.connectQ) {
		l.connectQ, l.qHead = l.connectQ[:0], 0
	} else if l.qHead > 1024 && l.qHead > len(l.connectQ)/2 {
		n := copy(l.connectQ, l.connectQ[l.qHead:])
		l.connectQ, l.qHead = l.connectQ[:n], 0
	}
	if l.trimAt != 0 && now >= l.trimAt {
		l.pipes.trim()
		l.trimAt = 0
	}
	if l.acceptPaused && now >= l.acceptAt && l.fdWait == 0 {
		l.resumeAccepting()
	}
	if l.sweepAt != 0 && now >= l.sweepAt {
		l.tick++
		l.sweepAt = 0
		l.sweep()
	}
	return l.idleAt != 0 && now >= l.idleAt && l.active == 0
}

// errIdle ends a connection idle for longer than Config.IdleTimeout.
var errIdle = fmt.Errorf("idle timeout")

// sweep closes the open connections that have been idle for idleTicks:
// one pass over the table per tick costs less than a timer per connection,
// and the data path only stores the tick.
func (l *loop) sweep() {
	for fd, c := range l.conns {
		if c != nil && int(c.fd[0]) == fd && c.state == stateOpen && l.tick-c.seen > l.idleTicks {
			l.abort(c, errIdle)
		}
	}
}

// pushRetry and popRetry keep retryQ a min-heap by at.
func (l *loop) pushRetry(d deadline) { l.retryQ = pushHeap(l.retryQ, d) }

func (l *loop) popRetry() deadline {
	var top deadline
	l.retryQ, top = popHeap(l.retryQ)
	return top
}

// pushHeap and popHeap keep a min-heap of deadlines by at (container/heap
// would box every entry).
func pushHeap(q []deadline, d deadline) []deadline {
	q = append(q, d)
	for i := len(q) - 1; i > 0; {
		parent := (i - 1) / 2
		if q[parent].at <= q[i].at {
			break
		}
		q[parent], q[i] = q[i], q[parent]
		i = parent
	}
	return q
}

func popHeap(q []deadline) ([]deadline, deadline) {
	top := q[0]
	n := len(q) - 1
	q[0] = q[n]
	q = q[:n]
	for i := 0; ; {
		m, a, b := i, 2*i+1, 2*i+2
		if a < n && q[a].at < q[m].at {
			m = a
		}
		if b < n && q[b].at < q[m].at {
			m = b
		}
		if m == i {
			break
		}
		q[m], q[i] = q[i], q[m]
		i = m
	}
	return q, top
}

// special handles the loop's own descriptors: the wake-up eventfd and the
// listeners.
func (l *loop) special(fd int) {
	if fd == l.wakefd {
		var b [8]byte
		unix.Read(l.wakefd, b[:])
		l.takeResolved()
		return
	}
	for i := range l.listeners {
		if l.listeners[i].fd == fd && l.listeners[i].dgram != nil {
			if !l.draining {
				l.datagrams(i) // not paused by EMFILE: the flows that exist go on
			}
			return
		}
	}
	if l.acceptPaused || l.draining {
		return
	}
	for i := range l.listeners {
		if l.listeners[i].fd == fd {
			l.accept(i)
			return
		}
	}
}

// accept takes every pending client of listener i (the listener is
// edge-triggered: one event, then accept until EAGAIN).
func (l *loop) accept(i int) {
	if l.listeners[i].dgram != nil {
		return // datagrams are read by datagrams(), not accepted
	}
	lfd := l.listeners[i].fd
	for {
		nfd, sa, err := unix.Accept4(lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		switch {
		case err == nil:
		case err == unix.EAGAIN:
			return
		case err == unix.EINTR, err == unix.ECONNABORTED, err == unix.EPROTO, err == unix.EPERM:
			continue // that client is gone or was filtered; the next one may not be
		case err == unix.EMFILE, err == unix.ENFILE, err == unix.ENOBUFS, err == unix.ENOMEM:
			// Out of descriptors: the pending clients stay in the
			// backlog, and their event is consumed. Accept again when
			// a connection closes, or after acceptRetry.
			l.pauseAccepting("cannot accept, pausing until a connection closes", l.listeners[i].label, err)
			return
		default:
			l.warn(warnOther, "cannot accept", err.Error(), "listener", l.listeners[i].label, "error", err.Error())
			return
		}
		if l.active-l.flows.count >= l.s.cfg.MaxConnections {
			l.refuse(i) // counted before the client can see the close
			unix.Close(nfd)
			continue
		}
		if l.s.cfg.MaxPerSource > 0 && l.sourceFull(clientAddr(sa).Addr(), false) {
			l.refuseSource(i, clientAddr(sa).Addr())
			unix.Close(nfd)
			continue
		}
		l.open(nfd, sa, i)
	}
}

// pauseAccepting stops accepting while descriptors are short, with one
// warning per burst: the burst ends when a connection gets both its
// sockets (see connected).
func (l *loop) pauseAccepting(msg, listener string, err error) {
	l.warn(warnDescriptors, msg, err.Error(), "listener", listener, "error", err.Error())
	l.acceptPaused = true
	l.acceptAt = l.now() + int64(acceptRetry)
}

// resumeAccepting accepts on every listener after a pause for EMFILE; the
// events that would have said so were consumed while paused.
func (l *loop) resumeAccepting() {
	l.acceptPaused = false
	if l.draining {
		return // the listeners are closed
	}
	for i := range l.listeners {
		l.accept(i)
		if l.acceptPaused {
			return
		}
	}
}

// refuse counts a client closed at the limit: at most exactly
// MaxConnections are proxied (the original's check admits one more), and
// the warning is rate-limited so a flood cannot fill the journal.
func (l *loop) refuse(i int) {
	l.listeners[i].n.refused[RefusedLimit].Add(1)
	l.warn(warnRefused, "connection limit reached, refusing clients", "", "max_connections", l.s.cfg.MaxConnections, "hint", "raise it with -c/--connections-max")
}

// refuseSource counts a client closed at the limit per source address.
func (l *loop) refuseSource(i int, addr netip.Addr) {
	l.listeners[i].n.refused[RefusedPerSource].Add(1)
	l.warn(warnRefused, "connection limit per client address reached, refusing its clients", "",
		"source", addr.String(), "max_per_source", l.s.cfg.MaxPerSource, "hint", "raise it with --per-source-max")
}

// track records the connection's descriptor in the table.
func (l *loop) track(fd int, c *conn) {
	if fd >= len(l.conns) {
		n := max(2*len(l.conns), fd+1, 64)
		conns := make([]*conn, n)
		copy(conns, l.conns)
		l.conns = conns
	}
	l.conns[fd] = c
}

func (l *loop) nextGen() uint32 {
	l.gen++
	if l.gen == 0 {
		l.gen = 1
	}
	return l.gen
}

// opened and closed keep the count, the idle timer and the accept pause.
func (l *loop) opened(c *conn) {
	l.active++
	n := l.listeners[c.listener].n
	n.active.Add(1)
	n.accepted.Add(1)
	l.idleAt = 0
}

func (l *loop) closed(c *conn) {
	l.active--
	l.listeners[c.listener].n.active.Add(-1)
	if l.active == 0 && l.s.cfg.ExitIdleTime > 0 {
		l.idleAt = after(l.now(), l.s.cfg.ExitIdleTime)
	}
	// A connection waiting for a descriptor for its backend socket gets
	// the one just freed before a new client is accepted.
	if l.acceptPaused && !l.stopping && l.fdWait == 0 {
		l.resumeAccepting()
	}
}

// close ends every connection (with a reset on TCP, as a stopped proxy
// cannot finish them) and frees the loop. The listeners are the caller's.
func (l *loop) close() {
	l.stopping = true
	l.resolveStop()
	for fd, c := range l.conns {
		if c != nil && int(c.fd[0]) == fd {
			l.abort(c, nil)
		}
	}
	l.closeFlows()
	l.closeProbes()
	l.resolveWG.Wait()
	l.reserveWG.Wait() // before epfd, its source, is closed
	l.flushWarnings(l.now(), true)
	l.pipes.closeAll()
	unix.Close(l.epfd)
	l.resolveMu.Lock()
	unix.Close(l.wakefd)
	l.wakefd = -1
	l.resolveMu.Unlock()
}

// clientAddr is the client's address for log lines.
func clientAddr(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
	}
	return netip.AddrPort{}
}
