// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"fmt"
	"net/netip"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/handoff"
)

// Datagram flows across a handoff: each flow's connected backend socket
// goes over with its key, so the backend keeps seeing the same source
// address and the client's replies keep coming, as if nothing happened.

// listenerKinds maps a listener's kind to the record's.
var listenerKinds = [...]uint8{
	activation.Stream:           handoff.ListenStream,
	activation.Datagram:         handoff.ListenDatagram,
	activation.SequentialPacket: handoff.ListenSequentialPacket,
}

// recordFlows adds every flow to r, in the order a new client would
// evict them (flowbudget.go): the answered ones, least recently active
// first, then those waiting for a reply. The next image adopts them in
// this order into one list, so its evictions follow the same order.
func (l *loop) recordFlows(r *handoff.Record, now int64) {
	if l.flows.count == 0 {
		return
	}
	tick := l.flows.tick
	if l.flows.every > 0 {
		tick = uint32(now / l.flows.every)
	}
	for f := range l.flowsByEviction() {
		if f.resolving {
			// Not connected yet: it goes, and the client's next
			// datagram opens a new one.
			continue
		}
		rf := handoff.Flow{Listener: int(f.listener), FD: int(f.fd), Gen: f.gen, Key: []byte(f.key),
			NameLen: int(f.nameLen), Age: max(now-f.start, 0), Backend: recordMember(f.member)}
		if l.flows.every > 0 {
			rf.Idle = int64(tick-f.seen) * l.flows.every
		}
		r.Flows = append(r.Flows, rf)
	}
}

// resumeFlows adopts the flows of a record; a flow that cannot be adopted
// is closed (its client's next datagram opens a new one).
func (l *loop) resumeFlows(r *handoff.Record, listenerOf func(int) (int, bool), elapsed int64) (adopted, reset int) {
	for i := range r.Flows {
		rf := &r.Flows[i]
		li, ok := listenerOf(rf.Listener)
		err := fmt.Errorf("listener %q is not served any more", r.Listeners[rf.Listener].Name)
		if ok {
			err = l.adoptFlow(rf, li, elapsed)
		}
		if err != nil {
			l.s.log.Warn("cannot resume a datagram flow, closing it", "listener", r.Listeners[rf.Listener].Name, "error", err.Error())
			handoff.Reset([]int{rf.FD})
			reset++
			continue
		}
		adopted++
	}
	return adopted, reset
}

func (l *loop) adoptFlow(rf *handoff.Flow, li int, elapsed int64) error {
	ln := &l.listeners[li]
	if ln.dgram == nil {
		return fmt.Errorf("listener %q is not a datagram listener", ln.name)
	}
	if rf.FD < 0 {
		return fmt.Errorf("the backend socket was not carried")
	}
	key := string(rf.Key)
	if ln.dgram.flows[key] != nil {
		return fmt.Errorf("two flows of one client")
	}
	var local netip.Addr
	if len(rf.Key) == rf.NameLen+16 {
		local = netip.AddrFrom16([16]byte(rf.Key[rf.NameLen:]))
	}
	f := &flow{fd: int32(rf.FD), listener: uint16(li), nameLen: uint16(rf.NameLen), key: key,
		start: l.now() - elapsed - rf.Age, member: l.adoptMember(li, rf.Listener, rf.Backend)}
	if l.flows.every > 0 {
		now := uint32(l.now() / l.flows.every)
		f.seen = now - uint32(min((rf.Idle+elapsed)/l.flows.every, int64(l.flows.ticks)+1))
	}
	if l.carried {
		if rf.Gen == 0 || rf.Gen > l.gen {
			return fmt.Errorf("registration generation %d out of range", rf.Gen)
		}
		f.gen = rf.Gen
	} else {
		f.gen = l.nextGen()
		if e := l.addRaw(rf.FD, flowEvents, f.gen); e != 0 {
			return e
		}
	}
	l.insertFlow(ln, f, local)
	return nil
}
