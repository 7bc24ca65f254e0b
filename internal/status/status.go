// SPDX-License-Identifier: Apache-2.0

// Package status keeps the one-line STATUS= that `systemctl status` shows up
// to date with the proxy's counters, sending at most once a second and only
// when something changed.
package status

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/proxy"
)

// Interval is how often Report looks at the counters: systemd asks that
// status updates be rate-limited, and once a second is plenty for a human.
const Interval = time.Second

// Line formats the counters, e.g.
// "12 connections, 1042 since start, 3.1 GiB forwarded, 2 backend errors",
// with ", 3 flows, 5120 datagrams" once a datagram socket has had a client,
// and ", 3 of 4 backends up" when a socket has several backends.
func Line(s proxy.Stats) string {
	parts := []string{
		plural(s.Active, "connection"),
		fmt.Sprintf("%d since start", s.Accepted),
		Bytes(s.BytesIn+s.BytesOut) + " forwarded",
		plural(s.BackendErrors+s.BackendRefused, "backend error"), // refused datagrams too
	}
	if s.FlowsOpened > 0 {
		// Only once a datagram socket has had a client: a stream-only
		// proxy's line stays as it was.
		parts = append(parts, plural(s.Flows, "flow"), fmt.Sprintf("%d datagrams", s.DatagramsIn+s.DatagramsOut))
		if s.DatagramsDropped+s.DatagramsTruncated > 0 {
			parts = append(parts, fmt.Sprintf("%d dropped", s.DatagramsDropped+s.DatagramsTruncated))
		}
	}
	if s.Refused > 0 {
		parts = append(parts, fmt.Sprintf("%d refused at the limit", s.Refused))
	}
	if s.Backends > 0 {
		// Only with several backends to a socket: one backend's line
		// stays as it was.
		parts = append(parts, fmt.Sprintf("%d of %d backends up", s.BackendsUp, s.Backends))
	}
	return strings.Join(parts, ", ")
}

func plural(n int64, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// Bytes prints a byte count in binary units with one decimal, as systemd
// prints sizes ("512 B", "3.1 GiB").
func Bytes(n int64) string {
	const units = "KMGTPE"
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n)/1024, 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	return fmt.Sprintf("%.1f %ciB", v, units[i])
}

// Report sends Line(stats()) through send every interval while it changes,
// until ctx ends. The caller owns the goroutine it runs in.
func Report(ctx context.Context, interval time.Duration, stats func() proxy.Stats, send func(string) error) {
	t := time.NewTicker(interval)
	defer t.Stop()
	last := ""
	for {
		if line := Line(stats()); line != last {
			send(line)
			last = line
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
