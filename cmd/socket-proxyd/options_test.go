// SPDX-License-Identifier: Apache-2.0

package main

import (
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/socket-proxyd/socket-proxyd/internal/proxy"
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
		{name: "several backends", args: []string{"127.0.0.1:1", "[::1]:2", "/run/a,b.sock", "@app 2", "localhost"}, max: 256, idle: timespan.Infinity,
			backend: "127.0.0.1:1 [::1]:2 /run/a,b.sock @app 2 localhost:80"},
		{name: "listen repeated", args: []string{"--listen", "127.0.0.1:1", "--listen=/run/l", "[::1]:2"}, max: 256, idle: timespan.Infinity, listen: []string{"127.0.0.1:1", "/run/l"}, backend: "[::1]:2"},
		{name: "help without address", args: []string{"-h"}, help: true},
		{name: "help stops parsing", args: []string{"-c5", "-h", "--bogus"}, help: true},
		{name: "help abbreviated as in the original, --health-* aside", args: []string{"--he", "h:1"}, help: true},
		{name: "version without address", args: []string{"--version"}, version: true},
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
			if got := strings.Join(names(o.backend), " "); tt.backend != "" && got != tt.backend {
				t.Fatalf("backend %q, want %q", got, tt.backend)
			}
		})
	}
}

// TestSeveralBackendsPerSocket: the positional backend and --backend
// NAME= each take several addresses, one per argument, kept in order,
// with the policy and health options.
func TestSeveralBackendsPerSocket(t *testing.T) {
	o, err := parseOptions([]string{"--backend=web=/run/app@1.sock", "--balance=least-connections", "--backend", "web=/run/app@2.sock",
		"--health-interval=2s", "--health-rise=3", "--health-fall=1", "/run/a.sock", "127.0.0.1:80"})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(names(o.named["web"]), " "); got != "/run/app@1.sock /run/app@2.sock" {
		t.Errorf("web's backends %q", got)
	}
	if got := strings.Join(names(o.backend), " "); got != "/run/a.sock 127.0.0.1:80" {
		t.Errorf("default backends %q", got)
	}
	if o.balance != proxy.LeastConnections || o.healthInterval != 2*time.Second || o.healthRise != 3 || o.healthFall != 1 {
		t.Errorf("balance %v, health %v %d %d", o.balance, o.healthInterval, o.healthRise, o.healthFall)
	}
}

// TestParseNamedBackendsAndTimeouts: --backend name=address, the connect,
// idle and shutdown timeouts, --keepalive and --proxy-protocol, and their
// defaults.
func TestParseNamedBackendsAndTimeouts(t *testing.T) {
	o, err := parseOptions([]string{"--backend", "web=127.0.0.1:8080", "--backend=admin=/run/a.sock",
		"--connect-timeout=2s", "--idle-timeout=5min", "--keepalive=0", "--shutdown-timeout=1min", "--proxy-protocol=v2"})
	if err != nil {
		t.Fatal(err)
	}
	if len(o.backend) != 0 || len(o.named) != 2 || len(o.named["web"]) != 1 || o.named["web"][0].String() != "127.0.0.1:8080" || o.named["admin"][0].String() != "/run/a.sock" {
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
		{name: "missing address", args: nil, mention: []string{"missing backend address", "HOST:PORT"}},
		{name: "missing address of a seqpacket listener", args: []string{"--listen-sequential-packet=/run/a.sock"}, mention: []string{"missing backend address", "sequential-packet socket"}},
		{name: "backend twice", args: []string{"a:1", "b:2", "a:1"}, mention: []string{`"a:1"`, "twice"}},
		{name: "bad second backend", args: []string{"a:1", "run/b.sock"}, mention: []string{`"run/b.sock"`, "absolute path"}},
		{name: "bad balance", args: []string{"--balance=random", "a:1", "b:1"}, mention: []string{`"random"`, "round-robin", "least-connections"}},
		{name: "health rise zero", args: []string{"--health-rise=0", "a:1", "b:1"}, mention: []string{`"0"`, "--health-rise"}},
		{name: "health fall past a byte", args: []string{"--health-fall=256", "a:1", "b:1"}, mention: []string{`"256"`, "--health-fall", "from 1 to 255"}},
		{name: "health interval too short", args: []string{"--health-interval=1us", "a:1", "b:1"}, mention: []string{`"1us"`, "--health-interval", "at least 100ms"}},
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
		{name: "named backend twice", args: []string{"--backend=web=a:1", "--backend=web=a:1"}, mention: []string{`"web=a:1"`, "twice"}},
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

// TestParseOptionValues: abbreviations as the original reads them, the
// range of --keepalive, --socket-mode, and a span the shell split.
func TestParseOptionValues(t *testing.T) {
	tests := []struct {
		args  []string
		check func(o options) bool
	}{
		{args: []string{"--connections=10", "h:1"}, check: func(o options) bool { return o.maxConnections == 10 }},
		{args: []string{"--conn", "10", "h:1"}, check: func(o options) bool { return o.maxConnections == 10 }},
		{args: []string{"--exit-idle=1s", "h:1"}, check: func(o options) bool { return o.exitIdleTime == time.Second }},
		{args: []string{"--exit-idle-time=0", "h:1"}, check: func(o options) bool { return o.exitIdleTime == 0 }},
		{args: []string{"--keep=9h 6min 7s", "h:1"}, check: func(o options) bool { return o.keepAlive == 32767*time.Second }},
		{args: []string{"--keepalive=infinity", "h:1"}, check: func(o options) bool { return o.keepAlive == 0 }},
		{args: []string{"--keepalive=500ms", "h:1"}, check: func(o options) bool { return o.keepAlive == 500*time.Millisecond }},
		{args: []string{"h:1"}, check: func(o options) bool { return o.socketMode == 0o666 }},
		{args: []string{"--socket-mode=0660", "h:1"}, check: func(o options) bool { return o.socketMode == 0o660 }},
		{args: []string{"--socket-mode", "600", "h:1"}, check: func(o options) bool { return o.socketMode == 0o600 }},
		{args: []string{"--socket-mode=0o777", "h:1"}, check: func(o options) bool { return o.socketMode == 0o777 }},
		{args: []string{"--socket-mode=0", "h:1"}, check: func(o options) bool { return o.socketMode == 0 }},
		{args: []string{"--connect-=5s", "h:1"}, check: func(o options) bool { return o.connectTimeout == 5*time.Second }},
		{args: []string{"h:1"}, check: func(o options) bool { return o.busyPoll == 0 }},
		{args: []string{"--busy-poll=50us", "h:1"}, check: func(o options) bool { return o.busyPoll == 50*time.Microsecond }},
		{args: []string{"--busy=1ms", "h:1"}, check: func(o options) bool { return o.busyPoll == time.Millisecond }},
		{args: []string{"--busy-poll=0", "h:1"}, check: func(o options) bool { return o.busyPoll == 0 }},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			o, err := parseOptions(tt.args)
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(o) {
				t.Errorf("parsed %+v", o)
			}
		})
	}
	errs := []struct {
		args []string
		want string
	}{
		{args: []string{"--keepalive=32768", "h:1"}, want: `invalid value "32768" for --keepalive: above the kernel's limit of 9h 6min 7s (32767s); use a shorter span, or 0 or infinity to turn keepalive off`},
		{args: []string{"--keepalive=32767.5s", "h:1"}, want: `invalid value "32767.5s" for --keepalive: above the kernel's limit`},
		{args: []string{"--keepalive=30d", "h:1"}, want: `invalid value "30d" for --keepalive`},
		{args: []string{"--socket-mode=666x", "h:1"}, want: `invalid value "666x" for --socket-mode: must be an octal file mode from 0 to 0777, such as 0666 or 0660`},
		{args: []string{"--socket-mode=1777", "h:1"}, want: `invalid value "1777" for --socket-mode`},
		{args: []string{"--socket-mode=-1", "h:1"}, want: `invalid value "-1" for --socket-mode`},
		{args: []string{"--busy-poll=1001us", "h:1"}, want: `invalid value "1001us" for --busy-poll: more than 1ms: a longer spin only burns a CPU; use a span such as 50us, or 0 to turn it off`},
		{args: []string{"--busy-poll=infinity", "h:1"}, want: `invalid value "infinity" for --busy-poll: more than 1ms`},
		{args: []string{"--b=1", "h:1"}, want: `option "--b" is ambiguous: it could be --backend, --balance, --busy-poll; write more of it`},
		{args: []string{"--s=1", "h:1"}, want: `option "--s" is ambiguous: it could be --socket-buffer, --socket-mode, --shutdown-timeout; write more of it`},
		{args: []string{"--conn=5s", "h:1"}, want: `invalid value "5s" for -c/--connections-max (written "--conn")`},
		{args: []string{"--exit-idle-time", "5", "minutes", "127.0.0.1:80"},
			want: `argument "minutes" follows --exit-idle-time "5": quote a span with spaces, --exit-idle-time="5 minutes"`},
		{args: []string{"--exit-idle-time", "5", "minutes"}, want: `--exit-idle-time="5 minutes"`},
		{args: []string{"127.0.0.1:80", "--keepalive", "1min", "30s"}, want: `--keepalive="1min 30s"`},
		{args: []string{"--idle-timeout=1h", "30min", "127.0.0.1:80"}, want: `--idle-timeout="1h 30min"`},
		{args: []string{"127.0.0.1:80", "nginx.sock"}, want: `backend address "nginx.sock" looks like a unix socket file, not a host name: give its absolute path, such as "/run/nginx.sock"`},
	}
	for _, tt := range errs {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			o, err := parseOptions(tt.args)
			if err == nil {
				t.Fatalf("accepted: %+v", o)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want %q", err, tt.want)
			}
		})
	}
}

// quoted returns the strings an error message quotes with %q.
func quoted(msg string) []string {
	var out []string
	for i := 0; i < len(msg); i++ {
		if msg[i] != '"' {
			continue
		}
		q, err := strconv.QuotedPrefix(msg[i:])
		if err != nil {
			continue
		}
		s, _ := strconv.Unquote(q)
		out = append(out, s)
		i += len(q) - 1
	}
	return out
}

// FuzzParseOptions feeds whole command lines (NUL separates arguments).
// Whatever comes in, parsing ends with options or a one-line error, never
// a panic. Options print as a canonical command line that parses back to
// the same options; an error quotes what was wrong, a piece of one of the
// arguments (only a missing backend has nothing to quote).
func FuzzParseOptions(f *testing.F) {
	for _, s := range []string{"127.0.0.1:80", "-c5\x00h:1", "--exit-idle-time=5min 20s\x00@x", "--listen\x00/run/l\x00[::1]:2", "-h", "--", "-c\x00", "--connections-max=\x00x",
		"--conn=7\x00--backend=web=/run/w.sock\x00--keep=infinity\x00--socket-mode=640\x00--proxy-protocol=v2\x00h", "--exit-idle-time\x005\x00minutes"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		args := strings.Split(line, "\x00")
		o, err := parseOptions(args)
		if err != nil {
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Fatalf("parseOptions(%q) error spans lines: %q", args, msg)
			}
			if strings.HasPrefix(msg, "missing backend address") {
				return
			}
			for _, q := range quoted(msg) {
				for _, a := range args {
					if strings.Contains(a, q) {
						return
					}
				}
			}
			t.Fatalf("parseOptions(%q): error %q quotes no part of the command line", args, msg)
		}
		canon := o.commandLine()
		again, err := parseOptions(canon)
		if err != nil {
			t.Fatalf("parseOptions(%q) = %+v, printed as %q, which fails: %v", args, o, canon, err)
		}
		if !reflect.DeepEqual(o, again) {
			t.Fatalf("parseOptions(%q) = %+v, printed as %q, read back as %+v", args, o, canon, again)
		}
	})
}

// TestSocketBufferSizes: --socket-buffer takes bytes or a K, M or G
// suffix, as ReceiveBuffer= does, from 4K to 1G, and refuses the rest
// naming the range.
func TestSocketBufferSizes(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int
	}{
		{"65536", 65536}, {"64K", 64 << 10}, {"64k", 64 << 10}, {"1M", 1 << 20}, {"1G", 1 << 30}, {"4K", 4096},
		{"4095", -1}, {"2G", -1}, {"0", -1}, {"-1K", -1}, {"64KB", -1}, {"K", -1}, {"1.5M", -1}, {"", -1},
	} {
		opts, err := parseOptions([]string{"--socket-buffer=" + tt.in, "h:1"})
		switch {
		case tt.want < 0 && (err == nil || !strings.Contains(err.Error(), "from 4K to 1G")):
			t.Errorf("%q: %d, %v; want it refused with the range", tt.in, opts.socketBuffer, err)
		case tt.want >= 0 && (err != nil || opts.socketBuffer != tt.want):
			t.Errorf("%q: %d, %v; want %d", tt.in, opts.socketBuffer, err, tt.want)
		}
	}
}

// TestHelpFitsATerminal: every line of --help fits 79 columns, as the
// original's do.
func TestHelpFitsATerminal(t *testing.T) {
	for i, line := range strings.Split(usage, "\n") {
		if n := utf8.RuneCountInString(line); n > 79 {
			t.Errorf("--help line %d is %d columns: %q", i+1, n, line)
		}
	}
}
