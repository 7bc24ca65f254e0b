// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/json"
	"os"
	"testing"
)

// atouCase is a line of testdata/connections-max.json: what systemd 252's
// safe_atou, and so systemd-socket-proxyd's -c, makes of in. The e2e test
// TestConnectionsMaxLikeOriginal runs the same lines through both binaries.
type atouCase struct {
	In    string
	OK    bool
	Value uint64
}

func atouCases(t testing.TB) []atouCase {
	b, err := os.ReadFile("testdata/connections-max.json")
	if err != nil {
		t.Fatal(err)
	}
	var cases []atouCase
	if err := json.Unmarshal(b, &cases); err != nil {
		t.Fatal(err)
	}
	return cases
}

// TestParseAtouLikeSystemd: the values systemd-socket-proxyd 252 takes for
// -c, with the value it reads, and those it refuses.
func TestParseAtouLikeSystemd(t *testing.T) {
	for _, tt := range atouCases(t) {
		v, err := parseAtou(tt.In)
		switch {
		case tt.OK && (err != nil || v != tt.Value):
			t.Errorf("parseAtou(%q) = %d, %v; want %d", tt.In, v, err, tt.Value)
		case !tt.OK && err == nil:
			t.Errorf("parseAtou(%q) = %d; want it refused", tt.In, v)
		}
	}
}

func FuzzParseAtou(f *testing.F) {
	for _, tt := range atouCases(f) {
		f.Add(tt.In)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := parseAtou(s)
		if err == nil && v > 4294967295 {
			t.Fatalf("parseAtou(%q) = %d, past 32 bits", s, v)
		}
	})
}
