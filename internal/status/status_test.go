// SPDX-License-Identifier: Apache-2.0

package status

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/proxy"
)

func TestLine(t *testing.T) {
	tests := []struct {
		name  string
		stats proxy.Stats
		want  string
	}{
		{name: "fresh", want: "0 connections, 0 since start, 0 B forwarded, 0 backend errors"},
		{name: "busy", stats: proxy.Stats{Active: 12, Accepted: 1042, BytesIn: 3 << 30, BytesOut: 1 << 29, BackendErrors: 2},
			want: "12 connections, 1042 since start, 3.5 GiB forwarded, 2 backend errors"},
		{name: "singular and refused", stats: proxy.Stats{Active: 1, Accepted: 1, BytesIn: 1536, BackendErrors: 1, Refused: 7},
			want: "1 connection, 1 since start, 1.5 KiB forwarded, 1 backend error, 7 refused at the limit"},
		{name: "flows", stats: proxy.Stats{Flows: 3, FlowsOpened: 9, DatagramsIn: 100, DatagramsOut: 90, BytesIn: 2048},
			want: "0 connections, 0 since start, 2.0 KiB forwarded, 0 backend errors, 3 flows, 190 datagrams"},
		{name: "flows dropping", stats: proxy.Stats{Flows: 1, FlowsOpened: 1, DatagramsIn: 5, DatagramsDropped: 4, DatagramsTruncated: 1, Refused: 4},
			want: "0 connections, 0 since start, 0 B forwarded, 0 backend errors, 1 flow, 5 datagrams, 5 dropped, 4 refused at the limit"},
		{name: "several backends", stats: proxy.Stats{Active: 3, Accepted: 9, Backends: 4, BackendsUp: 3},
			want: "3 connections, 9 since start, 0 B forwarded, 0 backend errors, 3 of 4 backends up"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Line(tt.stats); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 5 << 20: "5.0 MiB", 1 << 62: "4.0 EiB"} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestReportSendsOnlyChanges(t *testing.T) {
	var mu sync.Mutex
	var sent []string
	calls := 0
	ctx, cancel := context.WithCancel(context.Background())
	stats := func() proxy.Stats {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls >= 3 {
			cancel()
		}
		return proxy.Stats{Accepted: 1}
	}
	Report(ctx, time.Millisecond, stats, func(s string) error {
		mu.Lock()
		defer mu.Unlock()
		sent = append(sent, s)
		return nil
	})
	if len(sent) != 1 {
		t.Fatalf("sent %d status lines for unchanged counters, want 1: %q", len(sent), sent)
	}
}
