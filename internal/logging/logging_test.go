// SPDX-License-Identifier: Apache-2.0

package logging

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
)

func TestJournalLines(t *testing.T) {
	var buf bytes.Buffer
	log := New(&buf, Options{Journal: true, Level: slog.LevelDebug})
	log.Error("backend connect failed", "client", "127.0.0.1:5000", "backend", "/run/x", "error", "connection refused")
	log.Warn("limit")
	log.Log(context.Background(), LevelNotice, "notice")
	log.Info("info")
	log.With("client", "c").Debug("closed", "bytes", 3)
	want := "<3>backend connect failed client=127.0.0.1:5000 backend=/run/x error=\"connection refused\"\n" +
		"<4>limit\n<5>notice\n<6>info\n<7>closed client=c bytes=3\n"
	if buf.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", buf.String(), want)
	}
}

func TestTerminalLinesHaveTimeAndLevel(t *testing.T) {
	var buf bytes.Buffer
	New(&buf, Options{Level: slog.LevelInfo}).Warn("limit reached", "max", 2)
	line := buf.String()
	if strings.HasPrefix(line, "<") || !strings.Contains(line, " warning limit reached max=2\n") {
		t.Fatalf("unexpected terminal line %q", line)
	}
}

func TestLevelFilters(t *testing.T) {
	var buf bytes.Buffer
	log := New(&buf, Options{Journal: true, Level: slog.LevelWarn})
	log.Info("hidden")
	log.Debug("hidden")
	log.Warn("shown")
	if buf.String() != "<4>shown\n" {
		t.Fatalf("got %q", buf.String())
	}
}

func TestParseLevel(t *testing.T) {
	tests := []struct {
		in   string
		want slog.Level
	}{
		{"debug", slog.LevelDebug}, {"7", slog.LevelDebug}, {"info", slog.LevelInfo},
		{"notice", LevelNotice}, {"warning", slog.LevelWarn}, {"4", slog.LevelWarn},
		{"err", slog.LevelError}, {"crit", slog.LevelError}, {" DEBUG ", slog.LevelDebug},
	}
	for _, tt := range tests {
		got, err := ParseLevel(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseLevel(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	if _, err := ParseLevel("loud"); err == nil || !strings.Contains(err.Error(), `"loud"`) {
		t.Errorf("ParseLevel(loud) error = %v", err)
	}
}
