// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The oracle. Every operation ends in an outcome that each side observed
// for itself; the oracle compares them with the model: what the schedule
// sent, and which events happened while the operation was open. An event
// allows some bad outcomes and no others:
//
//	reset of a stream           backend-reset (of that connection), sigterm without the store, exhaust,
//	                            a sigterm that killed the proxy in a reload's exec window
//	end of the proxy by SIGTERM a sigterm within reloadWindow of a sighup
//	refusal of a new stream     limit, exhaust, sigterm without the store, backend-down
//	loss of a datagram          sigstop, backend-down, backend-stall, exhaust, limit, sigterm,
//	                            flood (the flow table), or a drop the kernel counted on a socket
//	                            on the way; on a unix datagram socket, a drop the proxy counted
//
// Nothing allows a clean end of a stream before its trailer (a cut dressed
// as an end), a byte out of place, a datagram cut short or out of order,
// or a message boundary moved.

// timeline records when each event really ran.
type timeline struct {
	mu     sync.Mutex
	spans  []span
	start  time.Time
	resets map[uint64]bool // stream ids the backend reset on purpose
}

type span struct {
	kind       string
	id         int
	start, end time.Time
}

func newTimeline(start time.Time) *timeline {
	return &timeline{start: start, resets: map[uint64]bool{}}
}

func (t *timeline) begin(kind string, id int) *span {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.spans = append(t.spans, span{kind: kind, id: id, start: time.Now()})
	return &t.spans[len(t.spans)-1]
}

// add records an event that was seen after the fact.
func (t *timeline) add(kind string, id int, start, end time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.spans = append(t.spans, span{kind: kind, id: id, start: start, end: end})
}

func (t *timeline) end(kind string, id int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range t.spans {
		if t.spans[i].id == id && t.spans[i].kind == kind {
			t.spans[i].end = time.Now()
		}
	}
}

func (t *timeline) markReset(id uint64) {
	t.mu.Lock()
	t.resets[id] = true
	t.mu.Unlock()
}

func (t *timeline) wasReset(id uint64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.resets[id]
}

// during names the events of the given kinds that overlapped [from, to]
// (an event still running counts up to now), with grace after each.
func (t *timeline) during(from, to time.Time, grace time.Duration, kinds ...string) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for _, s := range t.spans {
		ok := false
		for _, k := range kinds {
			ok = ok || s.kind == k
		}
		if !ok {
			continue
		}
		end := s.end
		if end.IsZero() {
			end = time.Now()
		}
		if !s.start.After(to) && !end.Add(grace).Before(from) {
			out = append(out, fmt.Sprintf("%s#%d", s.kind, s.id))
		}
	}
	return out
}

// events is what the timeline saw, for the report.
func (t *timeline) events() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for _, s := range t.spans {
		end := "running"
		if !s.end.IsZero() {
			end = s.end.Sub(t.start).Round(time.Millisecond).String()
		}
		out = append(out, fmt.Sprintf("%9s  #%d %s until %s", s.start.Sub(t.start).Round(time.Millisecond), s.id, s.kind, end))
	}
	return out
}

// report gathers the run's counts and failures.
type report struct {
	conns, flows, datagrams, dgramLost, messages atomic.Int64
	bytes                                        atomic.Int64
	explained                                    atomic.Int64 // bad outcomes an event explained

	mu       sync.Mutex
	start    time.Time
	byKind   map[string]int
	failures []string
}

func newReport(start time.Time) *report { return &report{start: start, byKind: map[string]int{}} }

func (r *report) count(kind string) {
	r.mu.Lock()
	r.byKind[kind]++
	r.mu.Unlock()
}

func (r *report) fail(o *op, format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	at := time.Since(r.start).Round(time.Millisecond)
	r.failures = append(r.failures, fmt.Sprintf("%9s  #%d %s seed=%d: %s", at, o.ID, o.Kind, o.Seed, fmt.Sprintf(format, args...)))
}

func (r *report) failed() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.failures)
}

func (r *report) kinds() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ks []string
	for k := range r.byKind {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	var parts []string
	for _, k := range ks {
		parts = append(parts, fmt.Sprintf("%s %d", k, r.byKind[k]))
	}
	return strings.Join(parts, ", ")
}
