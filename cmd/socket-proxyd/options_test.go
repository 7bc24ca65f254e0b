package main

import (
	"strings"
	"testing"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/proxyproto"
	"github.com/socket-proxyd/socket-proxyd/internal/timespan"
)

func TestParseOptions(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		max     int
		idle    time.Duration
		listen  []string
		backend string
		help    bool
		version bool
	}{
		{name: "defaults", args: []string{"127.0.0.1:80"}, max: 256, idle: timespan.Infinity, backend: "127.0.0.1:80"},
		{name: "-c5", args: []string{"-c5", "h:1"}, max: 5, idle: timespan.Infinity, backend: "h:1"},
		{name: "-c 5", args: []string{"-c", "5", "h:1"}, max: 5, idle: timespan.Infinity, backend: "h:1"},
		{name: "long equals", args: []string{"--connections-max=5", "h:1"}, max: 5, idle: timespan.Infinity, backend: "h:1"},
		{name: "long separate", args: []string{"--connections-max", "5", "h:1"}, max: 5, idle: timespan.Infinity, backend: "h:1"},
		{name: "option after address", args: []string{"/run/x", "-c", "7"}, max: 7, idle: timespan.Infinity, backend: "/run/x"},
		{name: "idle span", args: []string{"--exit-idle-time=5min 20s", "@x"}, max: 256, idle: 320 * time.Second, backend: "@x"},
		{name: "listen repeated", args: []string{"--listen", "127.0.0.1:1", "--listen=/run/l", "[::1]:2"}, max: 256, idle: timespan.Infinity, listen: []string{"127.0.0.1:1", "/run/l"}, backend: "[::1]:2"},
		{name: "help without address", args: []string{"-h"}, max: 256, idle: timespan.Infinity, help: true},
		{name: "version without address", args: []string{"--version"}, max: 256, idle: timespan.Infinity, version: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseOptions(tt.args)
			if err != nil {
				t.Fatalf("parseOptions(%q): %v", tt.args, err)
			}
			if o.maxConnections != tt.max || o.exitIdleTime != tt.idle || o.help != tt.help || o.version != tt.version ||
				strings.Join(o.listen, ",") != strings.Join(tt.listen, ",") {
				t.Fatalf("parseOptions(%q) = %+v", tt.args, o)
			}
			if tt.backend != "" && o.backend.String() != tt.backend {
				t.Fatalf("backend %q, want %q", o.backend.String(), tt.backend)
			}
		})
	}
}

func TestParseIssue4Options(t *testing.T) {
	o, err := parseOptions([]string{"--backend", "web=127.0.0.1:8080", "--backend=admin=/run/a.sock",
		"--connect-timeout=2s", "--idle-timeout=5min", "--keepalive=0", "--shutdown-timeout=1min", "--proxy-protocol=v2"})
	if err != nil {
		t.Fatal(err)
	}
	if o.backend.Network != "" || len(o.named) != 2 || o.named["web"].String() != "127.0.0.1:8080" || o.named["admin"].String() != "/run/a.sock" {
		t.Fatalf("backends: default %+v, named %+v", o.backend, o.named)
	}
	if o.connectTimeout != 2*time.Second || o.idleTimeout != 5*time.Minute || o.keepAlive != 0 ||
		o.shutdownTimeout != time.Minute || o.proxyProtocol != proxyproto.V2 {
		t.Fatalf("parsed %+v", o)
	}
	d, err := parseOptions([]string{"h:1"})
	if err != nil {
		t.Fatal(err)
	}
	if d.connectTimeout != 10*time.Second || d.idleTimeout != timespan.Infinity || d.keepAlive != time.Minute ||
		d.shutdownTimeout != 30*time.Second || d.proxyProtocol != proxyproto.None {
		t.Fatalf("defaults %+v", d)
	}
}

func TestParseOptionsErrors(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		mention []string
	}{
		{name: "missing address", args: nil, mention: []string{"missing backend address"}},
		{name: "extra argument", args: []string{"a:1", "b:2"}, mention: []string{`"b:2"`}},
		{name: "limit zero", args: []string{"-c0", "a:1"}, mention: []string{`"0"`, "-c/--connections-max"}},
		{name: "limit negative", args: []string{"-c", "-1", "a:1"}, mention: []string{`"-1"`, "-c/--connections-max"}},
		{name: "limit not a number", args: []string{"--connections-max=many", "a:1"}, mention: []string{`"many"`}},
		{name: "bad span", args: []string{"--exit-idle-time=soon", "a:1"}, mention: []string{`"soon"`, "--exit-idle-time"}},
		{name: "unknown long", args: []string{"--frobnicate", "a:1"}, mention: []string{`"--frobnicate"`}},
		{name: "unknown short", args: []string{"-z", "a:1"}, mention: []string{`"-z"`}},
		{name: "missing value", args: []string{"a:1", "--listen"}, mention: []string{"--listen", "needs a value"}},
		{name: "bad backend", args: []string{"a:99999"}, mention: []string{`"a:99999"`}},
		{name: "named backend without name", args: []string{"--backend=127.0.0.1:80"}, mention: []string{`"127.0.0.1:80"`, "NAME=ADDRESS"}},
		{name: "named backend bad address", args: []string{"--backend=web=a:0"}, mention: []string{`"web=a:0"`, "1 to 65535"}},
		{name: "named backend twice", args: []string{"--backend=web=a:1", "--backend=web=b:1"}, mention: []string{`"web"`, "already"}},
		{name: "bad proxy protocol", args: []string{"--proxy-protocol=v3", "a:1"}, mention: []string{`"v3"`, "v1 or v2"}},
		{name: "bad connect timeout", args: []string{"--connect-timeout=later", "a:1"}, mention: []string{`"later"`, "--connect-timeout"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseOptions(tt.args)
			if err == nil {
				t.Fatalf("parseOptions(%q) accepted", tt.args)
			}
			for _, m := range tt.mention {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not mention %q", err, m)
				}
			}
		})
	}
}

// FuzzParseOptions feeds whole command lines (NUL separates arguments):
// whatever comes in, parsing ends with options or an error, never a panic,
// and an error is one line.
func FuzzParseOptions(f *testing.F) {
	for _, s := range []string{"127.0.0.1:80", "-c5\x00h:1", "--exit-idle-time=5min 20s\x00@x", "--listen\x00/run/l\x00[::1]:2", "-h", "--", "-c\x00", "--connections-max=\x00x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		args := strings.Split(line, "\x00")
		_, err := parseOptions(args)
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Fatalf("parseOptions(%q) error spans lines: %q", args, err)
		}
	})
}
