// SPDX-License-Identifier: Apache-2.0

package main

import (
	"slices"
	"testing"
	"time"
)

// TestParseDatagramOptions: the datagram and sequential-packet options,
// abbreviated as getopt allows, and --idle-timeout reaching the flows only when given.
func TestParseDatagramOptions(t *testing.T) {
	o, err := parseOptions([]string{"--listen-datagram=:53", "--listen-d", "/run/d", "--listen-seq=/run/p", "127.0.0.1:53"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.listenDatagram, []string{":53", "/run/d"}) || !slices.Equal(o.listenPacket, []string{"/run/p"}) {
		t.Fatalf("datagram %q, seqpacket %q", o.listenDatagram, o.listenPacket)
	}
	if got := flowIdleTimeout(o); got != 0 {
		t.Errorf("flows without --idle-timeout: %v, want 0 (the proxy's default)", got)
	}
	for _, tt := range []struct {
		arg  string
		want time.Duration
	}{{"5s", 5 * time.Second}, {"infinity", -1}, {"0", -1}} {
		o, err := parseOptions([]string{"--idle-timeout=" + tt.arg, "127.0.0.1:53"})
		if err != nil {
			t.Fatal(err)
		}
		if got := flowIdleTimeout(o); got != tt.want {
			t.Errorf("--idle-timeout=%s: flows get %v, want %v", tt.arg, got, tt.want)
		}
	}
}
