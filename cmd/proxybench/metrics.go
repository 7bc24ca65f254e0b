// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

// metricsAddr is where candidate "metrics" serves /metrics: an abstract
// socket of this run's own, so that runs side by side do not meet.
var metricsAddr = "@socket-proxyd-bench-" + strconv.Itoa(os.Getpid())

// scrapeMetrics GETs /metrics from addr every interval until ctx ends, as
// Prometheus would (more often), so that candidate "metrics" pays for its
// scrapes; while another candidate runs, the dial fails at once.
func scrapeMetrics(ctx context.Context, addr string, interval time.Duration) {
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", addr)
		},
	}}
	defer client.CloseIdleConnections()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://metrics/metrics", nil)
		if resp, err := client.Do(req); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
}
