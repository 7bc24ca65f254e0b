// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
)

// The counters of each listener: the loop adds to them as it goes, with
// one atomic add each and no lock or allocation, and anything else
// (Stats, for STATUS=; ListenerStats, for --metrics) reads them from
// another goroutine. They are the only count of what they count: Stats
// sums them, so the status line and the metrics cannot disagree.

// ConnectFailure is why a connection (or a datagram flow) could not reach
// its backend: the last attempt's error.
type ConnectFailure uint8

const (
	ConnectRefused     ConnectFailure = iota // ECONNREFUSED, or a unix socket's full backlog (EAGAIN)
	ConnectTimeout                           // the connect timeout passed with an attempt in flight
	ConnectUnreachable                       // no route: ENETUNREACH, EHOSTUNREACH, EADDRNOTAVAIL, ...
	ConnectMissing                           // no unix socket at the path (ENOENT)
	ConnectOther                             // a failed lookup, no descriptors, anything else
	ConnectFailures                          // how many reasons there are
)

var connectFailureNames = [ConnectFailures]string{"refused", "timeout", "unreachable", "missing", "other"}

// String is the reason as the metrics label it.
func (r ConnectFailure) String() string { return connectFailureNames[r] }

// connectFailureOf classifies an attempt's error; 0 (a lookup that
// failed, or no attempt) is other.
func connectFailureOf(e unix.Errno) ConnectFailure {
	switch e {
	case unix.ECONNREFUSED, unix.EAGAIN:
		return ConnectRefused
	case unix.ETIMEDOUT:
		return ConnectTimeout
	case unix.ENETUNREACH, unix.EHOSTUNREACH, unix.ENETDOWN, unix.EHOSTDOWN, unix.EADDRNOTAVAIL:
		return ConnectUnreachable
	case unix.ENOENT:
		return ConnectMissing
	}
	return ConnectOther
}

// Refusal is why a client was closed as soon as it was accepted.
type Refusal uint8

const (
	RefusedLimit     Refusal = iota // Config.MaxConnections
	RefusedPerSource                // Config.MaxPerSource
	Refusals
)

var refusalNames = [Refusals]string{"limit", "per_source"}

func (r Refusal) String() string { return refusalNames[r] }

// Drop is why a datagram was not forwarded (Stats has the same reasons).
type Drop uint8

const (
	DropBufferFull     Drop = iota // a socket buffer full (EAGAIN, ENOBUFS)
	DropTooBig                     // larger than the backend's socket takes (EMSGSIZE)
	DropSendError                  // another error of the send
	DropNoFlow                     // no flow could be opened for a new client
	DropNoAddress                  // a reply for a unix client without an address
	DropBackendRefused             // ICMP port unreachable on the flow (ECONNREFUSED)
	DropTruncated                  // larger than the proxy reads: dropped whole
	Drops
)

var dropNames = [Drops]string{"buffer_full", "too_big", "send_error", "no_flow", "no_address", "backend_refused", "truncated"}

func (d Drop) String() string { return dropNames[d] }

// ConnectBuckets are the upper bounds of the connect time histogram: from
// a backend on loopback (tens of microseconds) to one that answers at the
// default connect timeout.
var ConnectBuckets = [...]time.Duration{
	100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second,
}

// Histogram is a snapshot of the connect times: Counts[i] is how many
// took at most ConnectBuckets[i] and more than the bucket before (the last
// one: more than every bucket), Sum their total.
type Histogram struct {
	Counts [len(ConnectBuckets) + 1]int64
	Sum    time.Duration
}

// Count is how many were observed.
func (h *Histogram) Count() int64 {
	var n int64
	for _, c := range h.Counts {
		n += c
	}
	return n
}

type histogram struct {
	counts [len(ConnectBuckets) + 1]atomic.Int64
	sum    atomic.Int64 // ns
}

func (h *histogram) observe(d time.Duration) {
	i := 0
	for i < len(ConnectBuckets) && d > ConnectBuckets[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sum.Add(int64(d))
}

// listenerCounters are one listener's. With one backend per listener they
// are the backend's too.
type listenerCounters struct {
	accepted, active   atomic.Int64
	refused            [Refusals]atomic.Int64
	bytesIn, bytesOut  atomic.Int64
	connectFailed      [ConnectFailures]atomic.Int64
	connectTime        histogram
	flows, flowsOpened atomic.Int64
	flowsExpired       atomic.Int64
	flowsEvicted       atomic.Int64
	datagramsIn        atomic.Int64
	datagramsOut       atomic.Int64
	dropped            [Drops]atomic.Int64
	backends           [MaxBackends]backendCounters
}

// backendCounters are one backend's, of a listener with several: whether
// it is up, and the connections and flows on it.
type backendCounters struct {
	up   atomic.Bool
	open atomic.Int64
}

func (n *listenerCounters) drop(why Drop, k int) { n.dropped[why].Add(int64(k)) }

// ListenerStats are one listener's counters, labelled as the user knows
// the listener (Label: "dns.socket/udp", ":8080/tcp") and its backend (its
// address as printed in log lines).
type ListenerStats struct {
	Listener string
	Kind     activation.Kind
	Backend  string

	Accepted, Active int64 // connections
	Refused          [Refusals]int64
	BytesIn          int64 // client to backend
	BytesOut         int64 // backend to client
	ConnectFailed    [ConnectFailures]int64
	ConnectTime      Histogram

	Flows, FlowsOpened, FlowsExpired, FlowsEvicted int64
	DatagramsIn, DatagramsOut                      int64
	Dropped                                        [Drops]int64

	// Backends are the first NBackends entries: each backend of a
	// listener with several (none for a listener with one, whose health
	// is not kept), in the order of the command line.
	Backends  [MaxBackends]BackendStats
	NBackends int
}

// BackendStats is one backend of a listener with several.
type BackendStats struct {
	Name string // its address as log lines print it
	Up   bool   // not marked down by a failed connect or probe
	Open int64  // connections and datagram flows on it, connecting included
}

// ListenerStats appends a snapshot of each listener's counters to dst, in
// the order of Config.Listeners, and returns it: with room in dst, it
// allocates nothing.
func (s *Server) ListenerStats(dst []ListenerStats) []ListenerStats {
	for i := range s.per {
		dst = append(dst, ListenerStats{Listener: s.labels[i], Kind: s.cfg.Listeners[i].Kind, Backend: s.backends[i]})
		o := &dst[len(dst)-1]
		s.per[i].snapshot(o)
		if names := s.members[i]; len(names) > 1 {
			o.NBackends = len(names)
			for m, name := range names {
				b := &s.per[i].backends[m]
				o.Backends[m] = BackendStats{Name: name, Up: b.up.Load(), Open: b.open.Load()}
			}
		}
	}
	return dst
}

func (n *listenerCounters) snapshot(o *ListenerStats) {
	o.Accepted, o.Active = n.accepted.Load(), n.active.Load()
	for i := range n.refused {
		o.Refused[i] = n.refused[i].Load()
	}
	o.BytesIn, o.BytesOut = n.bytesIn.Load(), n.bytesOut.Load()
	for i := range n.connectFailed {
		o.ConnectFailed[i] = n.connectFailed[i].Load()
	}
	for i := range n.connectTime.counts {
		o.ConnectTime.Counts[i] = n.connectTime.counts[i].Load()
	}
	o.ConnectTime.Sum = time.Duration(n.connectTime.sum.Load())
	o.Flows, o.FlowsOpened = n.flows.Load(), n.flowsOpened.Load()
	o.FlowsExpired, o.FlowsEvicted = n.flowsExpired.Load(), n.flowsEvicted.Load()
	o.DatagramsIn, o.DatagramsOut = n.datagramsIn.Load(), n.datagramsOut.Load()
	for i := range n.dropped {
		o.Dropped[i] = n.dropped[i].Load()
	}
}
