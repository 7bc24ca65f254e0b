// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"fmt"
	"math"
	"net/netip"
	"strings"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/backend"
	"github.com/socket-proxyd/socket-proxyd/internal/handoff"
)

// A listener forwards to a pool of backends: one, as the original does, or
// several instances of a service (app@1 ... app@4). The pool picks a
// backend for each new connection and flow by the balancing policy, and
// keeps each backend's health: a backend whose connect fails is down for a
// backoff and skipped while another is up (passive), and with
// Config.HealthInterval a connect probe moves it down and up (active,
// health.go). A pool of one skips all of it: one backend behaves, logs and
// costs exactly as before.

// Balance is how a pool of several backends picks one for a new
// connection or flow.
type Balance uint8

const (
	// First takes the first backend, in the order given, that is up:
	// the others stand by (failover).
	First Balance = iota
	// RoundRobin takes the backends that are up in turn.
	RoundRobin
	// LeastConnections takes the backend with the fewest connections and
	// flows open (connecting included), in turn among equals.
	LeastConnections
	// Source takes a backend by a hash of the client's address (not its
	// port), so a client keeps its backend while that is up; a client
	// without an address (a unix socket) is taken in turn.
	Source
)

var balanceNames = [...]string{First: "first", RoundRobin: "round-robin", LeastConnections: "least-connections", Source: "source"}

func (b Balance) String() string {
	if int(b) < len(balanceNames) {
		return balanceNames[b]
	}
	return fmt.Sprintf("Balance(%d)", b)
}

// ParseBalance reads a policy as --balance gives it.
func ParseBalance(s string) (Balance, error) {
	for i, n := range balanceNames {
		if s == n {
			return Balance(i), nil
		}
	}
	return 0, fmt.Errorf("unknown balancing policy %q: use %s", s, strings.Join(balanceNames[:], ", "))
}

// MaxBackends is the most backends one listener takes: a connection keeps
// the index of its backend in a byte.
const MaxBackends = 64

// noMember is a connection or flow on no backend of its pool's (one
// recovered from the fd store without a record, or carried from a backend
// the new configuration no longer lists).
const noMember = 0xff

// Passive health: a backend is down for downFirst after a failed connect,
// doubling with each failure that follows its backoff, up to downMax.
// While down it is skipped as long as another is up.
const (
	downFirst = time.Second
	downMax   = 30 * time.Second
)

// member is one backend of a pool.
type member struct {
	addr backend.Address
	// name is the backend's identity in log lines, the handoff record
	// and STATUS=: the address as backend.Address prints it, which the
	// command line of a reload gives back the same.
	name string
	// static holds its addresses when it is numeric or a unix socket,
	// resolved once at start-up; nil for a host name.
	static []target
	// watched: active health checks can probe it (a numeric address or
	// a unix socket, and not UDP, where a connect says nothing). One
	// they cannot comes back by a client's connect after its backoff.
	watched bool
	// open counts the connections and flows on it, connecting included.
	open int32
	// shown is what a scrape of the metrics sees of it (up, open): the
	// loop writes it, another goroutine reads it. Nil for a pool of one.
	shown *backendCounters
	// down: a connect failed (or the probe said so) and nothing has
	// connected since. until is when, under passive health, it may be
	// tried again; fails counts the failures since it went down.
	down  bool
	fails uint8
	until int64
	// probe is the active health check's state (health.go).
	probe probe
}

// pool is a listener's backends.
type pool struct {
	members []member
	policy  Balance
	next    uint32 // the turn of RoundRobin, and of equals
	up      int    // members not down
	// checked: active health checks are on, and only a probe (or a
	// client's connect) brings a backend that went down back.
	checked bool
}

// newPool makes the pool of addrs; shown, if not nil, receives what the
// metrics show of each member, while the pool has several.
func newPool(addrs []backend.Address, policy Balance, kind activation.Kind, shown *[MaxBackends]backendCounters) pool {
	p := pool{policy: policy}
	for i, a := range addrs {
		static := staticAddrs(a)
		watched := len(static) > 0 && (kind != activation.Datagram || a.Network == "unix")
		p.members = append(p.members, member{addr: a, name: a.String(), static: static, watched: watched, probe: probe{fd: -1}})
		if shown != nil && len(addrs) > 1 {
			p.members[i].shown = &shown[i]
			shown[i].up.Store(true)
		}
	}
	p.up = len(p.members)
	return p
}

// add counts d more connections or flows on m.
func (m *member) add(d int32) {
	m.open += d
	if m.shown != nil {
		m.shown.open.Add(int64(d))
	}
}

// setDown marks m down (or up again).
func (m *member) setDown(down bool) {
	m.down = down
	if m.shown != nil {
		m.shown.up.Store(!down)
	}
}

// several says the pool balances and keeps health at all.
func (p *pool) several() bool { return len(p.members) > 1 }

// eligible says member m may be picked now: up, or down with its backoff
// over (the next connection to it tries it again).
func (p *pool) eligible(m int, now int64) bool {
	b := &p.members[m]
	return !b.down || now >= b.until
}

// sourceHash is FNV-1a of the client's address: the same in every image,
// so that a reload (or a restart) keeps each client address on its
// backend, as long as the list of backends stays the same.
func sourceHash(a netip.Addr) uint64 {
	b := a.Unmap().As16()
	h := uint64(14695981039346656037)
	for _, c := range b {
		h = (h ^ uint64(c)) * 1099511628211
	}
	return h
}

// anotherUp says a member other than m may be picked now.
func (p *pool) anotherUp(m int, now int64) bool {
	for i := range p.members {
		if i != m && p.eligible(i, now) {
			return true
		}
	}
	return false
}

// pick chooses a backend for a new connection or flow from client src
// (invalid for a unix client), by the policy, among those eligible; -1
// when none is.
func (p *pool) pick(src netip.Addr, now int64) int {
	n := len(p.members)
	start := 0
	switch p.policy {
	case RoundRobin, LeastConnections:
		start = int(p.next % uint32(n))
	case Source:
		if src.IsValid() {
			start = int(sourceHash(src) % uint64(n))
		} else {
			start = int(p.next % uint32(n))
		}
	}
	best := -1
	for i := range n {
		m := (start + i) % n
		if !p.eligible(m, now) {
			continue
		}
		if p.policy != LeastConnections {
			best = m
			break
		}
		if best < 0 || p.members[m].open < p.members[best].open {
			best = m
		}
	}
	if best >= 0 && (p.policy == RoundRobin || p.policy == LeastConnections || p.policy == Source && !src.IsValid()) {
		p.next = uint32(best) + 1
	}
	return best
}

// failed records a failed connect to member m; it reports whether the
// member went down just now (the caller logs that, once).
func (p *pool) failed(m int, now int64) bool {
	b := &p.members[m]
	// A member the probes watch comes back by a probe; one they cannot
	// (a host name, UDP) by a client's connect after its backoff, as
	// without probes.
	probed := p.checked && b.watched
	if b.down {
		if now >= b.until && !probed {
			// Tried again after its backoff, and failed again.
			b.fails = min(b.fails+1, 8)
			b.until = after(now, min(downFirst<<b.fails, downMax))
		}
		return false
	}
	b.setDown(true)
	b.fails, b.until = 0, after(now, downFirst)
	if probed {
		b.until = math.MaxInt64
	}
	p.up--
	return true
}

// succeeded records a connect to member m; it reports whether the member
// came up just now.
func (p *pool) succeeded(m int) bool {
	b := &p.members[m]
	if !b.down {
		return false
	}
	b.setDown(false)
	b.fails, b.until = 0, 0
	p.up++
	return true
}

// names lists the members as log lines name them, comma-separated.
func (p *pool) names() string {
	var b strings.Builder
	for i := range p.members {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(p.members[i].name)
	}
	return b.String()
}

// poolMember is the member c is on, or nil (a pool of one, or none).
func (l *loop) poolMember(listener uint16, m uint8) *member {
	p := &l.listeners[listener].pool
	if !p.several() || int(m) >= len(p.members) {
		return nil
	}
	return &p.members[m]
}

// backendDown logs, once, that a backend went down.
func (l *loop) backendDown(listener int, m int, why string) {
	ln := &l.listeners[listener]
	l.s.poolUp.Add(-1)
	msg := "backend down, skipping it while another is up"
	if ln.pool.up == 0 {
		msg = "backend down, and every backend of the socket is down: clients wait and retry within --connect-timeout"
	}
	l.s.log.Warn(msg, "listener", ln.label, "backend", ln.pool.members[m].name,
		"error", why, "backends_up", ln.pool.up, "backends", len(ln.pool.members))
}

// backendUp logs, once, that a backend came back.
func (l *loop) backendUp(listener int, m int) {
	ln := &l.listeners[listener]
	l.s.poolUp.Add(1)
	l.s.log.Info("backend up", "listener", ln.label, "backend", ln.pool.members[m].name,
		"backends_up", ln.pool.up, "backends", len(ln.pool.members))
}

// memberFailed marks the member c was trying as failed.
func (l *loop) memberFailed(listener int, m int, why string) {
	p := &l.listeners[listener].pool
	if !p.several() || m >= len(p.members) {
		return
	}
	if p.failed(m, l.now()) {
		l.backendDown(listener, m, why)
	}
}

// memberSucceeded marks the member a connection just connected to as up.
func (l *loop) memberSucceeded(listener int, m int) {
	p := &l.listeners[listener].pool
	if !p.several() || m >= len(p.members) {
		return
	}
	if p.succeeded(m) {
		l.backendUp(listener, m)
	}
}

// Across a reload (handoff.go): the record lists each listener's backends
// by name, whether each is down, and the index of the one each connection
// and flow is on. The next image matches the names to its own list, so a
// list changed by the reload keeps every connection where it is, and
// balancing carries on from the counts of what was adopted.

// record lists the pool for the handoff record.
func (p *pool) record() []handoff.Backend {
	bs := make([]handoff.Backend, len(p.members))
	for i := range p.members {
		bs[i] = handoff.Backend{Name: p.members[i].name, Down: p.members[i].down}
	}
	return bs
}

// recordMember is a member index as the record has it.
func recordMember(m uint8) int {
	if m == noMember {
		return handoff.NoBackend
	}
	return int(m)
}

// resumePools takes over from a record which backends are down (each
// tried again after its first backoff) and keeps, for each of the
// record's listeners, the map from its backend indexes to this image's.
func (l *loop) resumePools(r *handoff.Record, listenerOf func(int) (int, bool)) {
	l.carriedMembers = make([][]uint8, len(r.Listeners))
	for i := range r.Listeners {
		li, ok := listenerOf(i)
		if !ok {
			continue
		}
		p := &l.listeners[li].pool
		idx := make([]uint8, len(r.Listeners[i].Backends))
		for j, b := range r.Listeners[i].Backends {
			idx[j] = noMember
			for m := range p.members {
				if p.members[m].name == b.Name {
					idx[j] = uint8(m)
					if b.Down && p.several() && !p.members[m].down && p.failed(m, l.now()) {
						l.s.poolUp.Add(-1)
					}
				}
			}
		}
		l.carriedMembers[i] = idx
	}
}

// adoptMember is the member of listener li a carried connection or flow
// is on: by the record's index for it (rl, its listener in the record).
// A record before backends were listed (a pool of one then) or a backend
// no longer listed gives member 0 for a pool of one, noMember for more.
func (l *loop) adoptMember(li, rl, b int) uint8 {
	if !l.listeners[li].pool.several() {
		return 0
	}
	if b < 0 || rl < 0 || rl >= len(l.carriedMembers) || b >= len(l.carriedMembers[rl]) {
		return noMember
	}
	return l.carriedMembers[rl][b]
}
