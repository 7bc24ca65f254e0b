// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/handoff"
	"github.com/socket-proxyd/socket-proxyd/internal/metrics"
)

// --metrics: the socket is bound like a --listen one (a unix path gets
// --socket-mode) and, like them, carried over a reload in place and through
// the fd store (proxy.Config.Carry), so that a scrape during a reload
// waits in the backlog instead of being refused.

// reloadsVar, in the image a reload executes, carries the count of
// reloads before it, "OK,FAILED": the counter goes on across the exec.
// It is read once at start-up and unset.
const reloadsVar = "SOCKET_PROXYD_RELOADS"

// carriedReloads reads reloadsVar; an image started by a reload counts
// that reload as done.
func carriedReloads(v string, resuming bool) *metrics.Reloads {
	r := &metrics.Reloads{}
	if ok, failed, found := strings.Cut(v, ","); found {
		o, err1 := strconv.ParseInt(ok, 10, 64)
		f, err2 := strconv.ParseInt(failed, 10, 64)
		if err1 == nil && err2 == nil && o >= 0 && f >= 0 {
			r.OK.Store(o)
			r.Failed.Store(f)
		}
	}
	if resuming {
		r.OK.Add(1)
	}
	return r
}

func reloadsValue(r *metrics.Reloads) string {
	return strconv.FormatInt(r.OK.Load(), 10) + "," + strconv.FormatInt(r.Failed.Load(), 10)
}

// metricsListener takes the --metrics socket out of the listeners a
// record carried (handoff.ListenCarried), or binds it; one carried that
// the command line no longer names is closed. It returns the listeners
// to serve, and the metrics socket (nil without --metrics).
func metricsListener(listeners []activation.Listener, rec *handoff.Record, opts options) ([]activation.Listener, *activation.Listener, error) {
	var found *activation.Listener
	if rec != nil {
		for _, rl := range rec.Listeners {
			if rl.Kind != handoff.ListenCarried {
				continue
			}
			i := -1
			for j, l := range listeners {
				if l.Name == rl.Name && l.FD < 0 && l.Kind == activation.Stream {
					i = j
				}
			}
			if i < 0 {
				continue
			}
			l := listeners[i]
			listeners = append(listeners[:i:i], listeners[i+1:]...)
			if l.Name == opts.metrics && found == nil {
				found = &l
			} else {
				l.Close()
			}
		}
	}
	if found != nil || opts.metrics == "" {
		return listeners, found, nil
	}
	l, err := activation.ListenFor("--metrics", opts.metrics, opts.socketMode)
	if err != nil && !strings.Contains(err.Error(), "--metrics") {
		err = fmt.Errorf("--metrics: %w", err) // not to be taken for a --listen socket's
	}
	if err != nil {
		return listeners, nil, err
	}
	return listeners, &l, nil
}

// serveMetrics answers scrapes until alive ends; a failure to serve is
// logged, and the proxy goes on without its metrics.
func serveMetrics(alive context.Context, ln activation.Listener, e *metrics.Exporter, log *slog.Logger) {
	log.Info("serving metrics", "address", ln.Addr().String())
	if err := metrics.Serve(alive, ln, e, log); err != nil {
		log.Error("cannot serve metrics, going on without them", "address", ln.Name, "error", err.Error())
	}
}
