// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/backend"
	"github.com/socket-proxyd/socket-proxyd/internal/proxy"
	"github.com/socket-proxyd/socket-proxyd/internal/proxyproto"
	"github.com/socket-proxyd/socket-proxyd/internal/timespan"
)

// --check: the command line read as the proxy would read it, every backend
// resolved or stat'ed, and the plan printed; nothing is bound, connected
// or started, so that it can run beside the running proxy (ExecReload=)
// or before a deployment. Not to be confused with checkFlag
// (--check-handoff=), which a reload asks of the next image.

// planned is one listener as the command line sets it up.
type planned struct {
	option, addr, network string
}

// label is the listener's label as the proxy will print it (NAME/TYPE).
func (p planned) label() string { return p.addr + "/" + p.network }

func plannedListeners(opts options) []planned {
	var out []planned
	add := func(option string, addrs []string, inet, local string) {
		for _, a := range addrs {
			n := inet
			if strings.HasPrefix(a, "/") || strings.HasPrefix(a, "@") {
				n = local
			}
			out = append(out, planned{option, a, n})
		}
	}
	add("--listen", opts.listen, "tcp", "unix")
	add("--listen-datagram", opts.listenDatagram, "udp", "unixgram")
	add("--listen-sequential-packet", opts.listenPacket, "unixpacket", "unixpacket")
	return out
}

// checkPlan prints the plan to stdout and returns 0, or prints why it
// would not start to stderr and returns 1.
// planPrefix and errPrefix go before each line of either (the journal's
// priority prefixes, under systemd).
func checkPlan(opts options, stdout, stderr io.Writer, planPrefix, errPrefix string) int {
	var errs []string
	fail := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	var b strings.Builder
	listeners := plannedListeners(opts)

	// Each backend once, with what it resolves to now.
	timeout := opts.connectTimeout
	if timeout <= 0 || timeout == timespan.Infinity {
		timeout = 10 * time.Second
	}
	type checked struct {
		text string
		err  error
	}
	resolved := map[string]checked{}
	check := func(a backend.Address) checked {
		s := a.String()
		if r, ok := resolved[s]; ok {
			return r
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		addrs, err := backend.Check(ctx, nil, a)
		r := checked{text: strings.Join(addrs, ", "), err: err}
		if err != nil {
			r.text = "NOT REACHABLE: " + err.Error()
		}
		resolved[s] = r
		return r
	}
	// checkAll is check for each of a socket's backends. One that is
	// down fails the check only when it is the socket's only one: of
	// several, the proxy skips it while another is up, and a reload
	// (ExecReload= with --check) must not fail for an instance stopped
	// on purpose.
	checkAll := func(list []backend.Address) string {
		var out []string
		up := 0
		for _, a := range list {
			r := check(a)
			if r.err == nil {
				up++
			}
			out = append(out, a.String()+" ("+r.text+")")
		}
		if up == 0 {
			for _, a := range list {
				fail("backend %q: %v", a.String(), check(a).err)
			}
		}
		return strings.Join(out, ", ")
	}
	backendOf := func(p planned) ([]backend.Address, bool) {
		if a, ok := opts.named[p.label()]; ok {
			return a, true
		}
		if a, ok := opts.named[p.addr]; ok {
			return a, true
		}
		return opts.backend, len(opts.backend) > 0
	}

	used := map[string]bool{}
	for _, p := range listeners {
		bad := ""
		if err := activation.CheckListen(p.option, p.addr); err != nil {
			fail("%v", err)
			bad = " INVALID ADDRESS"
		}
		used[p.label()], used[p.addr] = true, true
		a, ok := backendOf(p)
		fmt.Fprintf(&b, "listener %s (%s %s%s)", p.label(), p.option, p.addr, bad)
		if !ok {
			fail("socket %q (%s) has no backend: add --backend %s=ADDRESS, or give a default backend address", p.addr, p.option, p.addr)
			b.WriteString(" -> NO BACKEND\n")
			continue
		}
		fmt.Fprintf(&b, " -> %s\n", checkAll(a))
		notUnix := slices.IndexFunc(a, func(x backend.Address) bool { return x.Network != "unix" })
		switch {
		case p.network == "unixpacket" && notUnix >= 0:
			fail("socket %q is a sequential-packet socket, so its backend %q must be a unix socket too", p.addr, a[notUnix].String())
		case (p.network == "udp" || p.network == "unixgram") && opts.proxyProtocol == proxyproto.V1:
			fail("socket %q is a datagram socket, and --proxy-protocol=v1 is a line for streams: use --proxy-protocol=v2", p.addr)
		}
	}
	if len(opts.backend) > 0 {
		fmt.Fprintf(&b, "sockets systemd passes -> %s, unless --backend names them\n", checkAll(opts.backend))
	}
	names := make([]string, 0, len(opts.named))
	for n := range opts.named {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if used[n] {
			continue
		}
		// Only the running service sees the sockets systemd passes.
		a := opts.named[n]
		fmt.Fprintf(&b, "socket %q from systemd, if passed -> %s\n", n, checkAll(a))
	}
	if len(listeners) == 0 {
		b.WriteString("no --listen sockets: every socket comes from systemd (a .socket unit or systemd-socket-activate)\n")
	}

	flows := "from the open files limit"
	if opts.maxFlows > 0 {
		flows = strconv.Itoa(opts.maxFlows)
	}
	perSource := "none"
	if opts.maxPerSource > 0 {
		perSource = strconv.Itoa(opts.maxPerSource)
	}
	socketBuffer := "autotuned"
	if opts.socketBuffer > 0 {
		socketBuffer = strconv.Itoa(opts.socketBuffer)
	}
	fmt.Fprintf(&b, "limits: connections-max=%d flows-max=%s per-source-max=%s socket-buffer=%s\n", opts.maxConnections, flows, perSource, socketBuffer)
	rise, fall := opts.healthRise, opts.healthFall
	if rise == 0 {
		rise = proxy.DefaultHealthRise
	}
	if fall == 0 {
		fall = proxy.DefaultHealthFall
	}
	fmt.Fprintf(&b, "several backends: balance=%s health-interval=%s health-rise=%d health-fall=%d\n",
		opts.balance, timespan.Format(opts.healthInterval), rise, fall)
	flowIdle := "1min"
	if opts.idleTimeoutSet {
		flowIdle = timespan.Format(opts.idleTimeout)
	}
	fmt.Fprintf(&b, "spans: exit-idle-time=%s connect-timeout=%s idle-timeout=%s (flows: %s) keepalive=%s shutdown-timeout=%s busy-poll=%s\n",
		timespan.Format(opts.exitIdleTime), timespan.Format(opts.connectTimeout), timespan.Format(opts.idleTimeout), flowIdle,
		timespan.Format(opts.keepAlive), timespan.Format(opts.shutdownTimeout), timespan.Format(opts.busyPoll))
	metrics, level := "off", "info"
	if opts.metrics != "" {
		metrics = opts.metrics
		if err := activation.CheckListen("--metrics", opts.metrics); err != nil {
			fail("%v", err)
			metrics += " INVALID ADDRESS"
		}
	}
	if s := os.Getenv("SYSTEMD_LOG_LEVEL"); s != "" {
		level = s + " (SYSTEMD_LOG_LEVEL)"
	}
	if opts.logLevel != "" {
		level = opts.logLevel
	}
	fmt.Fprintf(&b, "proxy-protocol=%s fdstore=%s socket-mode=%#o metrics=%s log-level=%s\n",
		opts.proxyProtocol, opts.fdstore, uint32(opts.socketMode), metrics, level)

	for _, line := range strings.SplitAfter(b.String(), "\n") {
		if line != "" {
			io.WriteString(stdout, planPrefix+line)
		}
	}
	for i, e := range errs {
		if !slices.Contains(errs[:i], e) { // a backend shared by several sockets fails once
			fmt.Fprintf(stderr, "%ssocket-proxyd: %s\n", errPrefix, e)
		}
	}
	if len(errs) > 0 {
		return 1
	}
	return 0
}
