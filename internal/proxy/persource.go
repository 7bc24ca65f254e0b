// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"net/netip"
	"unsafe"
)

// A limit per client address (Config.MaxPerSource), in the spirit of
// systemd's MaxConnectionsPerSource= (which only Accept=yes sockets have):
// one address may hold at most that many connections, and at most that
// many datagram flows, so that one host cannot take the whole of -c or of
// the flow budget. Connections past it are refused like those past -c. A
// flow past it takes the place of that address's own least recently
// active flow, so that a busy resolver on one host (a new source port per
// query) is served at any rate, and never displaces another host's flows.
// Unix clients have no address and are not limited. The counts are a map
// from address to two counters, touched once per connection or flow, never
// per packet; it holds only the addresses with something open.

// perSource is what one client address holds.
type perSource struct {
	conns, flows int32
}

// sourceScan bounds the search for an address's own flow to evict: the
// flows least recently active, answered ones first, up to this many.
const sourceScan = 64

// sourceFull says whether addr holds as many connections (flows false) or
// flows (true) as the limit allows.
func (l *loop) sourceFull(addr netip.Addr, flows bool) bool {
	limit := l.s.cfg.MaxPerSource
	if limit <= 0 || !addr.IsValid() {
		return false
	}
	s := l.sources[addr]
	if flows {
		return s.flows >= int32(limit)
	}
	return s.conns >= int32(limit)
}

// sourceAdd counts a connection or flow (flows) of addr opened (n = 1) or
// closed (n = -1).
func (l *loop) sourceAdd(addr netip.Addr, flows bool, n int32) {
	if l.s.cfg.MaxPerSource <= 0 || !addr.IsValid() {
		return
	}
	if l.sources == nil {
		l.sources = make(map[netip.Addr]perSource)
	}
	s := l.sources[addr]
	if flows {
		s.flows += n
	} else {
		s.conns += n
	}
	if s.conns <= 0 && s.flows <= 0 {
		delete(l.sources, addr)
		return
	}
	l.sources[addr] = s
}

// flowSource is the client address of a flow, invalid for a unix client.
func flowSource(f *flow) netip.Addr { return keySource(f.key, int(f.nameLen), 1) }

// keySource is the client address in a flow's key, when there is a limit
// to check it against.
func keySource(key string, nameLen, limit int) netip.Addr {
	if limit <= 0 {
		return netip.Addr{}
	}
	return sockaddrAddrPort(unsafe.Slice(unsafe.StringData(key), nameLen)).Addr().Unmap()
}

// evictSourceFlow closes a flow of addr to make room for its new one: the
// least recently active among the first sourceScan of each list. It
// reports whether it found one.
func (l *loop) evictSourceFlow(addr netip.Addr) bool {
	for _, state := range []uint8{flowsAnswered, flowsWaiting} {
		r := l.flows.lru[state].head
		for range sourceScan {
			if r == 0 {
				break
			}
			f := l.flowAt(r)
			if flowSource(f) == addr {
				l.listeners[f.listener].n.flowsEvicted.Add(1)
				l.closeFlow(f, "evicted")
				return true
			}
			r = f.next
		}
	}
	return false
}
