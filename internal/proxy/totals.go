// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"sync/atomic"

	"github.com/socket-proxyd/socket-proxyd/internal/handoff"
)

// The running totals go to the next image in the handoff record, so that
// the counts (STATUS=, the metrics) are the process's since it started, as
// its PID is, not since its last reload. Record.Totals is laid out as
// [n, the n server-wide totals, m, then m totals for each listener of the
// record, in its order]; a reader takes of each group the ones it knows,
// and a writer only ever appends to a group: builds of different versions
// agree on what they share. Gauges (connections open, flows) are not
// totals: the next image counts what it adopts.

// serverTotals are the server-wide counters that only grow.
func (s *Server) serverTotals() []*atomic.Int64 {
	return []*atomic.Int64{&s.splices, &s.splicedBytes, &s.segmented, &s.busyPollHits}
}

// totals are one listener's counters that only grow, in their order.
func (n *listenerCounters) totals() []*atomic.Int64 {
	t := []*atomic.Int64{&n.accepted, &n.bytesIn, &n.bytesOut, &n.flowsOpened, &n.flowsExpired, &n.flowsEvicted,
		&n.datagramsIn, &n.datagramsOut, &n.connectTime.sum}
	for i := range n.refused {
		t = append(t, &n.refused[i])
	}
	for i := range n.connectFailed {
		t = append(t, &n.connectFailed[i])
	}
	for i := range n.connectTime.counts {
		t = append(t, &n.connectTime.counts[i])
	}
	for i := range n.dropped {
		t = append(t, &n.dropped[i])
	}
	return t
}

// totals is Record.Totals for this server's counters.
func (s *Server) totals() []uint64 {
	server := s.serverTotals()
	out := make([]uint64, 0, 2+len(server)+len(s.per)*64)
	out = append(out, uint64(len(server)))
	for _, c := range server {
		out = append(out, uint64(c.Load()))
	}
	var per listenerCounters
	out = append(out, uint64(len(per.totals())))
	for i := range s.per {
		for _, c := range s.per[i].totals() {
			out = append(out, uint64(c.Load()))
		}
	}
	return out
}

// addTotals adds the totals of r to this server's: the server-wide ones,
// and each listener's to the listener that takes its place (listenerOf,
// by the record's listener index). A record too short for its own
// counts adds nothing more.
func (s *Server) addTotals(r *handoff.Record, listenerOf func(int) (int, bool)) {
	t := r.Totals
	take := func() ([]uint64, bool) {
		if len(t) == 0 || uint64(len(t)-1) < t[0] {
			return nil, false
		}
		group := t[1 : 1+t[0]]
		t = t[1+t[0]:]
		return group, true
	}
	add := func(cs []*atomic.Int64, vs []uint64) {
		for i := range min(len(cs), len(vs)) {
			cs[i].Add(int64(vs[i]))
		}
	}
	server, ok := take()
	if !ok {
		return
	}
	add(s.serverTotals(), server)
	if len(t) == 0 || t[0] == 0 {
		return
	}
	m := t[0]
	t = t[1:]
	for i := 0; uint64(len(t)) >= m && i < len(r.Listeners); i++ {
		if li, ok := listenerOf(i); ok && li < len(s.per) {
			add(s.per[li].totals(), t[:m])
		}
		t = t[m:]
	}
}
