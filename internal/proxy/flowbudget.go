// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"iter"

	"golang.org/x/sys/unix"
)

// Flows have a budget of their own, apart from the connection limit (-c):
// a flow costs its client nothing (no handshake, and its source address
// can be spoofed), so a flood of one-datagram clients must not keep stream
// clients out, nor new datagram clients. When the budget is spent, a new
// client's first datagram evicts the flow least recently active, taking
// first those whose last datagram was a reply (answered: nothing is in
// flight for them) and only then those still waiting for one, oldest first.
// A stub resolver asks each query from a new port: its flows are answered
// at once and make room for the next queries, so DNS at any rate loses
// nothing to the budget. This is conntrack's early_drop (unreplied entries
// go first there, as they are the cheap ones to fake; here a waiting flow
// may have a reply on its way, which eviction would lose).
//
// Both lists are intrusive and linked by the flows' descriptors, so
// keeping them in order costs a few stores per datagram run and no
// allocation.

// flowRef names a flow in a list: its descriptor plus one, so that the
// zero value, in a new flow or list, is "none".
type flowRef int32

func refOf(f *flow) flowRef { return flowRef(f.fd + 1) }

// flowList is a list of flows, least recently active first.
type flowList struct {
	head, tail flowRef
}

// The lists, by the state of the flow's exchange.
const (
	flowsWaiting  = 0 // the last datagram went to the backend
	flowsAnswered = 1 // the last datagram was a reply
)

// MaxFlowsCap bounds the default flow budget: 16384 flows hold 16384
// descriptors and their sockets' kernel memory (about 1 KiB each while
// idle), and are far more than clients active within a flow idle timeout
// at any rate the loop sustains.
const MaxFlowsCap = 16384

// flowBudget is the default for Config.MaxFlows: the descriptors the open
// files limit leaves after the connections (two each), their pipes and the
// loop's own, the connections taking half the limit at most (-c is a limit,
// often set far past what the descriptors allow: -c 20000 under a limit of
// 20000 must not leave flows 64), and never fewer than 64 nor more than
// MaxFlowsCap.
func flowBudget(maxConns, pipes int) int {
	var rl unix.Rlimit
	limit := 1024
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil && rl.Cur < 1<<30 {
		limit = int(rl.Cur)
	}
	conns := min(2*maxConns+2*pipes, limit/2)
	return max(64, min(limit-conns-64, MaxFlowsCap))
}

func (l *loop) flowAt(r flowRef) *flow { return l.flows.table[r-1] }

// link appends f to the end of its list.
func (l *loop) link(f *flow) {
	list := &l.flows.lru[f.state]
	f.prev, f.next = list.tail, 0
	if list.tail != 0 {
		l.flowAt(list.tail).next = refOf(f)
	} else {
		list.head = refOf(f)
	}
	list.tail = refOf(f)
}

// unlink takes f off its list.
func (l *loop) unlink(f *flow) {
	list := &l.flows.lru[f.state]
	if f.prev != 0 {
		l.flowAt(f.prev).next = f.next
	} else {
		list.head = f.next
	}
	if f.next != 0 {
		l.flowAt(f.next).prev = f.prev
	} else {
		list.tail = f.prev
	}
	f.prev, f.next = 0, 0
}

// touch moves f to the end of the list for state: it is the most recently
// active flow now. Consecutive datagrams of one flow cost a comparison.
func (l *loop) touch(f *flow, state uint8) {
	if f.state == state && f.next == 0 {
		return
	}
	l.unlink(f)
	f.state = state
	l.link(f)
}

// flowsByEviction yields every flow in the order evictFlow would take
// them.
func (l *loop) flowsByEviction() iter.Seq[*flow] {
	return func(yield func(*flow) bool) {
		for _, state := range []uint8{flowsAnswered, flowsWaiting} {
			for r := l.flows.lru[state].head; r != 0; {
				f := l.flowAt(r)
				r = f.next
				if !yield(f) {
					return
				}
			}
		}
	}
}

// evictFlow closes the flow least recently active, an answered one first,
// to make room for a new client's.
func (l *loop) evictFlow() {
	r := l.flows.lru[flowsAnswered].head
	if r == 0 {
		r = l.flows.lru[flowsWaiting].head
	}
	if r == 0 {
		return
	}
	f := l.flowAt(r)
	l.listeners[f.listener].n.flowsEvicted.Add(1)
	l.closeFlow(f, "evicted")
}
