// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

// warnEvery is the window of the warnings that clients and backends cause:
// at most one line per kind per window, whatever the rate of events.
const warnEvery = 10 * time.Second

// burst rate-limits one kind of warning that clients or backends cause (a
// client refused at the limit, a backend that cannot be reached, running
// out of descriptors), so that a flood cannot fill the journal: the first
// event of a burst is logged at once, the next ones within warnEvery are
// counted, and a summary line says how many there were and the last one's
// reason when the window ends, or at stop. At debug level every event is
// logged too, as it happens. Only the loop touches it.
type burst struct {
	// summary formats the summary line from the count, the window and
	// the last reason, e.g. "%d more clients could not reach the
	// backend in the last %s: %s".
	summary string
	logged  int64 // loop clock of the last line; 0: none yet
	missed  int   // events counted since
	reason  string
	attrs   []any // of the last event missed
}

// The kinds of rate-limited warnings.
const (
	warnRefused = iota
	warnBackend
	warnDescriptors
	warnOther
	warnFlows
	warnKinds
)

func newBursts() [warnKinds]burst {
	return [warnKinds]burst{
		warnRefused:     {summary: "%d more clients were refused at the connection limit in the last %s"},
		warnBackend:     {summary: "%d more clients could not reach the backend in the last %s: %s"},
		warnDescriptors: {summary: "%d more times out of descriptors in the last %s: %s"},
		warnOther:       {summary: "%d more client errors in the last %s: %s"},
		warnFlows:       {summary: "%d more flows were evicted at the flow limit in the last %s"},
	}
}

// warn logs one event of a kind: a warning line unless one was logged in
// the last warnEvery, and at debug level always.
func (l *loop) warn(kind int, msg, reason string, attrs ...any) {
	log := l.s.log
	b := &l.bursts[kind]
	now := l.now()
	if b.logged == 0 || now-b.logged >= int64(warnEvery) {
		l.summarise(b, now)
		log.Warn(msg, attrs...)
		b.logged = max(now, 1)
		return
	}
	if log.Enabled(context.Background(), slog.LevelDebug) {
		log.Debug(msg, attrs...)
	}
	b.missed++
	b.reason, b.attrs = reason, attrs
	if l.warnAt == 0 || b.logged+int64(warnEvery) < l.warnAt {
		l.warnAt = b.logged + int64(warnEvery)
	}
}

// summarise logs the summary of what b counted, if anything.
func (l *loop) summarise(b *burst, now int64) {
	if b.missed == 0 {
		return
	}
	window := time.Duration(now - b.logged).Round(time.Second)
	msg := fmt.Sprintf(b.summary, b.missed, window, b.reason)
	if b.reason == "" {
		msg = fmt.Sprintf(b.summary, b.missed, window)
	}
	l.s.log.Warn(msg, append([]any{"count", b.missed}, b.attrs...)...)
	b.missed, b.reason, b.attrs = 0, "", nil
	b.logged = max(now, 1)
}

// flushWarnings logs the summaries whose window has ended (all of them when
// stopping), and sets warnAt to the next window's end.
func (l *loop) flushWarnings(now int64, all bool) {
	l.warnAt = 0
	for i := range l.bursts {
		b := &l.bursts[i]
		if b.missed == 0 {
			continue
		}
		end := b.logged + int64(warnEvery)
		if all || now >= end {
			l.summarise(b, now)
			continue
		}
		if l.warnAt == 0 || end < l.warnAt {
			l.warnAt = end
		}
	}
}
