// SPDX-License-Identifier: Apache-2.0

// Package logging formats the proxy's log/slog records one line per event:
// for the journal with sd-daemon priority prefixes and no timestamps, or for
// a terminal with them; and, where journald's native socket is there, sends
// them as journal entries with fields (CLIENT=, BACKEND=, …) instead.
package logging

import (
	"context"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"
)

// LevelNotice sits between info and warning, as syslog's notice does.
const LevelNotice = slog.Level(2)

// Options are read from the environment once, by main.
type Options struct {
	// Journal is true when stderr goes to the journal (see
	// StreamIsJournal): lines then carry "<N>" priority prefixes and no
	// timestamp.
	Journal bool
	// Level is the least severe level written.
	Level slog.Level
	// Native, when not nil, takes each record as a journal entry with
	// fields; a record it cannot send is written as a line, as without it.
	Native *Journal
}

// ParseLevel reads SYSTEMD_LOG_LEVEL: a syslog name or number, as systemd's
// own tools accept it.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "emerg", "alert", "crit", "err", "error", "0", "1", "2", "3":
		return slog.LevelError, nil
	case "warning", "warn", "4":
		return slog.LevelWarn, nil
	case "notice", "5":
		return LevelNotice, nil
	case "info", "6":
		return slog.LevelInfo, nil
	case "debug", "7":
		return slog.LevelDebug, nil
	}
	return slog.LevelInfo, fmt.Errorf("invalid SYSTEMD_LOG_LEVEL=%q: use debug, info, notice, warning or err", s)
}

// New returns a logger writing to w.
func New(w io.Writer, opts Options) *slog.Logger {
	return slog.New(&handler{w: w, opts: opts, mu: new(sync.Mutex)})
}

type handler struct {
	w     io.Writer
	opts  Options
	mu    *sync.Mutex
	attrs []slog.Attr
}

func (h *handler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.opts.Level }

func (h *handler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	if h.opts.Journal {
		b.WriteString("<" + strconv.Itoa(priority(r.Level)) + ">")
	} else {
		b.WriteString(r.Time.Format(time.DateTime + ".000"))
		b.WriteString(" " + levelName(r.Level) + " ")
	}
	start := b.Len()
	b.WriteString(r.Message)
	for a := range h.all(r) {
		writeAttr(&b, a)
	}
	if h.opts.Native != nil && h.opts.Native.send(priority(r.Level), b.String()[start:], h.all(r)) == nil {
		return nil
	}
	b.WriteByte('\n')
	h.mu.Lock()
	defer h.mu.Unlock()
	_, err := io.WriteString(h.w, b.String())
	return err
}

// all yields the logger's attrs, then the record's.
func (h *handler) all(r slog.Record) iter.Seq[slog.Attr] {
	return func(yield func(slog.Attr) bool) {
		for _, a := range h.attrs {
			if !yield(a) {
				return
			}
		}
		r.Attrs(yield)
	}
}

func (h *handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]slog.Attr(nil), h.attrs...), attrs...)
	return &c
}

// WithGroup is not used by the proxy; groups are flattened.
func (h *handler) WithGroup(string) slog.Handler { return h }

func writeAttr(b *strings.Builder, a slog.Attr) {
	if a.Equal(slog.Attr{}) {
		return
	}
	v := a.Value.Resolve().String()
	if v == "" || strings.ContainsAny(v, " \t\n\"=") {
		v = strconv.Quote(v)
	}
	b.WriteString(" " + a.Key + "=" + v)
}

// priority maps a level to sd-daemon(3)'s prefixes: 3 err, 4 warning,
// 5 notice, 6 info, 7 debug.
func priority(l slog.Level) int {
	switch {
	case l >= slog.LevelError:
		return 3
	case l >= slog.LevelWarn:
		return 4
	case l >= LevelNotice:
		return 5
	case l >= slog.LevelInfo:
		return 6
	}
	return 7
}

func levelName(l slog.Level) string {
	return [...]string{3: "error", 4: "warning", 5: "notice", 6: "info", 7: "debug"}[priority(l)]
}
