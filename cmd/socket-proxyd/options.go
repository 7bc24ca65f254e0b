// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/backend"
	"github.com/socket-proxyd/socket-proxyd/internal/getopt"
	"github.com/socket-proxyd/socket-proxyd/internal/logging"
	"github.com/socket-proxyd/socket-proxyd/internal/proxy"
	"github.com/socket-proxyd/socket-proxyd/internal/proxyproto"
	"github.com/socket-proxyd/socket-proxyd/internal/timespan"
)

// options is the parsed command line.
type options struct {
	backend []backend.Address            // empty when only --backend is given
	named   map[string][]backend.Address // --backend NAME=ADDRESS, repeated for several
	balance proxy.Balance
	// healthInterval is --health-interval (0: off); healthRise and
	// healthFall its counts (0: the proxy's defaults).
	healthInterval         time.Duration
	healthRise, healthFall int
	maxConnections         int
	maxFlows               int           // 0: the proxy's default, from the open files limit
	maxPerSource           int           // 0: no limit
	socketBuffer           int           // bytes; 0: the kernel's autotuning
	exitIdleTime           time.Duration // timespan.Infinity: never; 0: as soon as nothing is open
	listen                 []string
	socketMode             os.FileMode // of --listen unix socket files
	// listenDatagram and listenPacket are --listen-datagram and
	// --listen-sequential-packet, named after systemd's ListenDatagram=
	// and ListenSequentialPacket=.
	listenDatagram, listenPacket []string
	// idleTimeoutSet: --idle-timeout was given, so datagram flows take it
	// instead of their own default.
	idleTimeoutSet bool

	connectTimeout  time.Duration // 0: one attempt
	idleTimeout     time.Duration // timespan.Infinity: never
	keepAlive       time.Duration // 0 or timespan.Infinity: off
	shutdownTimeout time.Duration // 0: close at once
	proxyProtocol   proxyproto.Version
	fdstore         fdstoreMode
	busyPoll        time.Duration // 0: off
	// metrics is --metrics: where to serve /metrics; "" is off.
	metrics string
	// logLevel is --log-level as given ("" when not), which overrides
	// SYSTEMD_LOG_LEVEL.
	logLevel string

	// check is --check: print the plan and exit, starting nothing.
	help, version, check bool
}

// maxKeepAlive is the largest TCP_KEEPIDLE the kernel takes (MAX_TCP_KEEPIDLE,
// 32767 s); above it setsockopt fails with EINVAL and the kernel's default
// of 2 h stays in force, so a larger value is refused here instead.
const maxKeepAlive = 32767 * time.Second

const usage = `socket-proxyd [OPTIONS...] HOST:PORT|SOCKET...

Bidirectionally proxy local sockets to another (possibly remote) socket.

  -c --connections-max=N     Set the maximum number of connections to be
                             accepted (default: 256); datagram flows do not
                             count, see --flows-max
     --flows-max=N           Keep at most N datagram flows open; past it a
                             new client's flow replaces the least recently
                             active one, an answered one first (default:
                             from the open files limit, at most 16384)
     --per-source-max=N      Let one client address hold at most N
                             connections, and N datagram flows
                             (default: no limit)
     --socket-buffer=SIZE    Give both sockets of each connection buffers of
                             SIZE bytes (K, M suffixes), bounding the kernel
                             memory a client that never reads holds
                             (default: the kernel's autotuning)
     --exit-idle-time=SPAN   Exit when without a connection for this duration;
                             0 exits as soon as none is open. See the
                             systemd.time(7) man page for time span format
                             (default: infinity)
     --listen=ADDRESS        Also listen on ADDRESS: HOST:PORT, [IPv6]:PORT,
                             :PORT, a unix socket path or @abstract-name;
                             may be repeated; works without systemd
     --listen-datagram=ADDRESS
                             Also listen for datagrams on ADDRESS: UDP on
                             HOST:PORT, [IPv6]:PORT or :PORT, or a unix
                             datagram socket path or @abstract-name
     --listen-sequential-packet=SOCKET
                             Also listen on the unix SOCK_SEQPACKET socket
                             SOCKET (a path or @abstract-name)
     --socket-mode=MODE      File mode of --listen unix sockets, in octal
                             (default: 0666)
     --backend=NAME=ADDRESS  Forward the socket named NAME (its
                             FileDescriptorName=, or the --listen ADDRESS) to
                             ADDRESS instead; NAME/TYPE (tcp, udp, unix,
                             unixgram, unixpacket) picks one of two sockets
                             of one name; may be repeated, and repeated with
                             one NAME gives that socket several backends
     --balance=POLICY        How a socket with several backends picks one for
                             each connection and datagram flow: first (in
                             order, the next standing by), round-robin,
                             least-connections or source (by client address)
                             (default: first)
     --health-interval=SPAN  Probe each of several backends with a connect
                             every SPAN (at least 100ms); 0 turns probes
                             off, and a failed client connect alone takes a
                             backend down for a backoff (default: 0)
     --health-rise=N         Good probes in a row that bring a backend back
                             (default: 2)
     --health-fall=N         Failed probes in a row that take it down
                             (default: 3)
     --connect-timeout=SPAN  Keep retrying a refused or missing backend for
                             up to SPAN; 0 tries once (default: 10s)
     --idle-timeout=SPAN     Close a connection without traffic either way
                             for SPAN; given, datagram flows too, which
                             otherwise expire after 1min (default: infinity)
     --keepalive=SPAN        TCP keepalive idle time on both TCP sides, at
                             most 9h 6min 7s; 0 or infinity turns it off
                             (default: 1min)
     --proxy-protocol=VERSION
                             Send a PROXY protocol header, v1 or v2, to the
                             backend before any client byte; datagrams take
                             v2 only, one header each (default: none)
     --shutdown-timeout=SPAN
                             On SIGTERM, stop accepting and let open
                             connections finish for up to SPAN; 0 closes
                             them at once (default: 30s)
     --fdstore=MODE          on-stop: on SIGTERM, hand the open connections to
                             systemd's fd store for the next instance instead
                             of draining them; always: also keep each one in
                             the store while it is open, so that a crash and
                             Restart= lose no stream connection (datagram
                             flows and sequential-packet connections are
                             kept on stop only) (default: no)
     --busy-poll=SPAN        After traffic, poll for up to SPAN (at most 1ms)
                             before sleeping: lower latency for more CPU
                             time (default: 0)
     --metrics=ADDRESS       Serve Prometheus metrics over HTTP at /metrics
                             on ADDRESS: HOST:PORT, a unix socket path (its
                             mode from --socket-mode) or @abstract-name
                             (default: off)
     --log-level=LEVEL       Log at LEVEL and above: debug, info, notice,
                             warning or err; overrides SYSTEMD_LOG_LEVEL
                             (default: info)
     --check                 Check the command line, resolve or stat every
                             backend, print the plan and exit: 1 and the
                             reason when it cannot start, else 0 (binding
                             nothing, it cannot see a port in use or the
                             sockets systemd passes)
  -h --help                  Show this help
     --version               Show package version

HOST may be an IPv4 address, a host name, or an IPv6 address in brackets;
without :PORT the port is 80. SOCKET is an absolute unix socket path, or @name
for an abstract one. Several backend addresses, each its own argument, share
the clients by --balance; a backend whose connect fails is skipped while
another is up, and a client's connect moves on to the next within
--connect-timeout. Listening sockets come from systemd (a .socket unit with
Accept=no, or systemd-socket-activate -l ADDRESS) and from --listen. Long
options may be abbreviated, as in systemd-socket-proxyd (--conn=5).

See the socket-proxyd(8) man page for details.
`

// parseOptions reads the command line the way the original's getopt_long
// does: -c5, -c 5, --connections-max=5, --connections-max 5 and --conn=5
// are all one thing, and options may follow the backend address.
func parseOptions(args []string) (options, error) {
	opts := options{
		maxConnections:  proxy.DefaultMaxConnections,
		exitIdleTime:    timespan.Infinity,
		socketMode:      activation.DefaultSocketMode,
		connectTimeout:  proxy.DefaultConnectTimeout,
		idleTimeout:     timespan.Infinity,
		keepAlive:       proxy.DefaultKeepAlive,
		shutdownTimeout: proxy.DefaultShutdownTimeout,
		fdstore:         fdstoreNo,
	}
	var named []string
	table := []getopt.Option{
		{Long: "connections-max", Short: 'c', Arg: true, Original: true, Set: connectionsMax(&opts.maxConnections)},
		{Long: "exit-idle-time", Arg: true, Original: true, Set: span(&opts.exitIdleTime)},
		{Long: "help", Short: 'h', Original: true, Stop: true, Set: flag(&opts.help)},
		{Long: "version", Original: true, Stop: true, Set: flag(&opts.version)},
		{Long: "flows-max", Arg: true, Set: positiveInt(&opts.maxFlows)},
		{Long: "per-source-max", Arg: true, Set: positiveInt(&opts.maxPerSource)},
		{Long: "socket-buffer", Arg: true, Set: byteSize(&opts.socketBuffer)},
		{Long: "listen", Arg: true, Set: appendTo(&opts.listen)},
		{Long: "listen-datagram", Arg: true, Set: appendTo(&opts.listenDatagram)},
		{Long: "listen-sequential-packet", Arg: true, Set: appendTo(&opts.listenPacket)},
		{Long: "socket-mode", Arg: true, Set: fileMode(&opts.socketMode)},
		{Long: "backend", Arg: true, Set: appendTo(&named)},
		{Long: "balance", Arg: true, Set: balance(&opts.balance)},
		{Long: "health-interval", Arg: true, Set: healthInterval(&opts.healthInterval)},
		{Long: "health-rise", Arg: true, Set: intUpTo(&opts.healthRise, 255)},
		{Long: "health-fall", Arg: true, Set: intUpTo(&opts.healthFall, 255)},
		{Long: "connect-timeout", Arg: true, Set: span(&opts.connectTimeout)},
		{Long: "idle-timeout", Arg: true, Set: func(v string) error {
			opts.idleTimeoutSet = true
			return span(&opts.idleTimeout)(v)
		}},
		{Long: "keepalive", Arg: true, Set: keepAlive(&opts.keepAlive)},
		{Long: "shutdown-timeout", Arg: true, Set: span(&opts.shutdownTimeout)},
		{Long: "proxy-protocol", Arg: true, Set: protocol(&opts.proxyProtocol)},
		{Long: "fdstore", Arg: true, Set: fdstore(&opts.fdstore)},
		{Long: "busy-poll", Arg: true, Set: busyPoll(&opts.busyPoll)},
		{Long: "metrics", Arg: true, Set: metricsAddress(&opts.metrics)},
		{Long: "log-level", Arg: true, Set: logLevel(&opts.logLevel)},
		{Long: "check", Set: flag(&opts.check)},
	}
	rest, err := getopt.Parse(table, args)
	if err != nil {
		return opts, err
	}
	if opts.help || opts.version {
		// Printed at once, whatever else the command line says.
		return options{help: opts.help, version: opts.version}, nil
	}
	if err := splitSpan(rest); err != nil {
		return opts, err
	}
	if opts.named, err = parseNamedBackends(named); err != nil {
		return opts, err
	}
	if opts.healthInterval == timespan.Infinity {
		opts.healthInterval = 0 // never is off
	}
	if len(rest) == 0 {
		if len(opts.named) == 0 {
			if len(opts.listenPacket) > 0 && len(opts.listen)+len(opts.listenDatagram) == 0 {
				return opts, errors.New("missing backend address: give the path of the backend's unix sequential-packet socket")
			}
			return opts, errors.New("missing backend address: give HOST:PORT or a unix socket path")
		}
		return opts, nil // every socket must then be named by --backend
	}
	// Each address its own argument: a unix path may hold any byte but
	// NUL, a comma or a space included, so no separator would do.
	for _, a := range rest {
		if opts.backend, err = addBackend(opts.backend, a.Value); err != nil {
			return opts, err
		}
	}
	return opts, nil
}

// addBackend parses one more backend address for a socket; one given twice
// is a mistake (it would take twice the share), said at once.
func addBackend(list []backend.Address, s string) ([]backend.Address, error) {
	a, err := backend.Parse(s)
	if err != nil {
		return list, err
	}
	for _, b := range list {
		if b == a {
			return list, fmt.Errorf("backend address %q is given twice: give each backend once", s)
		}
	}
	if len(list) == proxy.MaxBackends {
		return list, fmt.Errorf("backend address %q is one too many: a socket takes at most %d backends", s, proxy.MaxBackends)
	}
	return append(list, a), nil
}

// splitSpan catches a span written with a space and no quotes,
// "--exit-idle-time 5 minutes": the shell splits it, and "minutes" would
// otherwise be taken for the backend (or its extra argument).
func splitSpan(rest []getopt.Arg) error {
	for _, a := range rest {
		if a.After == nil || !isSpanOption(a.After.Long) {
			continue
		}
		joined := a.AfterValue + " " + a.Value
		if _, err := timespan.Parse(joined); err == nil {
			return fmt.Errorf("argument %q follows %s %q: quote a span with spaces, --%s=%q", a.Value, a.After.Names(), a.AfterValue, a.After.Long, joined)
		}
	}
	return nil
}

func isSpanOption(long string) bool {
	switch long {
	case "exit-idle-time", "connect-timeout", "idle-timeout", "keepalive", "shutdown-timeout", "busy-poll", "health-interval":
		return true
	}
	return false
}

// parseNamedBackends reads each --backend NAME=ADDRESS; NAME repeated
// gives that socket several backends, in the order given.
func parseNamedBackends(values []string) (map[string][]backend.Address, error) {
	if len(values) == 0 {
		return nil, nil
	}
	named := make(map[string][]backend.Address, len(values))
	for _, v := range values {
		name, addr, ok := strings.Cut(v, "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("invalid value %q for --backend: write NAME=ADDRESS, NAME being a socket's FileDescriptorName= or --listen address", v)
		}
		list, err := addBackend(named[name], addr)
		if err != nil {
			return nil, fmt.Errorf("invalid value %q for --backend: %v", v, err)
		}
		named[name] = list
	}
	return named, nil
}

// commandLine prints the options as a command line that parseOptions reads
// back to the same options: every option in its long form with "=", and
// the backend after "--".
func (o options) commandLine() []string {
	if o.help {
		return []string{"--help"}
	}
	if o.version {
		return []string{"--version"}
	}
	args := []string{
		"--connections-max=" + strconv.Itoa(o.maxConnections),
		"--exit-idle-time=" + timespan.Format(o.exitIdleTime),
		"--socket-mode=" + fmt.Sprintf("%#o", uint32(o.socketMode)),
		"--connect-timeout=" + timespan.Format(o.connectTimeout),
		"--keepalive=" + timespan.Format(o.keepAlive),
		"--shutdown-timeout=" + timespan.Format(o.shutdownTimeout),
		"--proxy-protocol=" + o.proxyProtocol.String(),
		"--fdstore=" + string(o.fdstore),
		"--busy-poll=" + timespan.Format(o.busyPoll),
	}
	if o.maxFlows > 0 {
		args = append(args, "--flows-max="+strconv.Itoa(o.maxFlows))
	}
	if o.maxPerSource > 0 {
		args = append(args, "--per-source-max="+strconv.Itoa(o.maxPerSource))
	}
	if o.socketBuffer > 0 {
		args = append(args, "--socket-buffer="+strconv.Itoa(o.socketBuffer))
	}
	if o.metrics != "" {
		args = append(args, "--metrics="+o.metrics)
	}
	if o.logLevel != "" {
		args = append(args, "--log-level="+o.logLevel)
	}
	if o.check {
		args = append(args, "--check")
	}
	if o.idleTimeoutSet {
		// Only when given: it also sets the flows' timeout (not given,
		// they expire after a minute).
		args = append(args, "--idle-timeout="+timespan.Format(o.idleTimeout))
	}
	for _, l := range o.listen {
		args = append(args, "--listen="+l)
	}
	for _, l := range o.listenDatagram {
		args = append(args, "--listen-datagram="+l)
	}
	for _, l := range o.listenPacket {
		args = append(args, "--listen-sequential-packet="+l)
	}
	names := make([]string, 0, len(o.named))
	for name := range o.named {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		for _, b := range o.named[name] {
			args = append(args, "--backend="+name+"="+b.String())
		}
	}
	if o.balance != proxy.First {
		args = append(args, "--balance="+o.balance.String())
	}
	if o.healthInterval > 0 {
		args = append(args, "--health-interval="+timespan.Format(o.healthInterval))
	}
	if o.healthRise > 0 {
		args = append(args, "--health-rise="+strconv.Itoa(o.healthRise))
	}
	if o.healthFall > 0 {
		args = append(args, "--health-fall="+strconv.Itoa(o.healthFall))
	}
	if len(o.backend) > 0 {
		args = append(args, "--")
		for _, b := range o.backend {
			args = append(args, b.String())
		}
	}
	return args
}

// The setters below turn a value into the field they are given.

func flag(p *bool) func(string) error {
	return func(string) error { *p = true; return nil }
}

func appendTo(p *[]string) func(string) error {
	return func(s string) error { *p = append(*p, s); return nil }
}

func span(p *time.Duration) func(string) error {
	return func(s string) error {
		d, err := timespan.Parse(s)
		if err == nil {
			*p = d
		}
		return err
	}
}

// keepAlive takes a span of at most maxKeepAlive once rounded up to whole
// seconds, as the kernel counts; infinity, like 0, turns keepalive off: a
// probe that never comes is no keepalive.
func keepAlive(p *time.Duration) func(string) error {
	return func(s string) error {
		d, err := timespan.Parse(s)
		switch {
		case err != nil:
			return err
		case d == timespan.Infinity:
			d = 0
		case d > maxKeepAlive: // rounded up, it would be more than 32767 s
			return fmt.Errorf("above the kernel's limit of %s (32767s); use a shorter span, or 0 or infinity to turn keepalive off", timespan.Format(maxKeepAlive))
		}
		*p = d
		return nil
	}
}

// busyPoll takes a span of at most proxy.MaxBusyPoll: past it, a spin
// costs more CPU than the wake-up it saves, and infinity would never sleep.
func busyPoll(p *time.Duration) func(string) error {
	return func(s string) error {
		d, err := timespan.Parse(s)
		switch {
		case err != nil:
			return err
		case d > proxy.MaxBusyPoll:
			return fmt.Errorf("more than %s: a longer spin only burns a CPU; use a span such as 50us, or 0 to turn it off", timespan.Format(proxy.MaxBusyPoll))
		}
		*p = d
		return nil
	}
}

// connectionsMax reads -c as systemd-socket-proxyd does (parseAtou):
// "010" is 8, "0x10" 16, " 5" 5, and "4294967296" is refused.
func connectionsMax(p *int) func(string) error {
	return func(s string) error {
		n, err := parseAtou(s)
		if err != nil || n < 1 {
			return errors.New("must be a whole number of at least 1")
		}
		*p = int(n)
		return nil
	}
}

// metricsAddress takes what --listen takes; it is bound later.
func metricsAddress(p *string) func(string) error {
	return func(s string) error {
		if s == "" {
			return errors.New("empty address: give HOST:PORT, a unix socket path or @name, such as 127.0.0.1:9560")
		}
		if *p != "" {
			return fmt.Errorf("given twice (%q before): the metrics are served on one address", *p)
		}
		*p = s
		return nil
	}
}

// byteSize reads a buffer size as systemd's ReceiveBuffer= does, in bytes
// or with a K, M or G suffix (1024-based), from 4K to 1G.
func byteSize(p *int) func(string) error {
	return func(s string) error {
		num, mult := s, 1
		if i := strings.IndexAny(s, "KMGkmg"); i >= 0 && i == len(s)-1 {
			num, mult = s[:i], 1<<(10*(1+strings.IndexByte("KMG", s[i]&^0x20)))
		}
		n, err := strconv.Atoi(num)
		if err != nil || n < 0 || n > (1<<30)/mult || n*mult < 4096 {
			return errors.New("must be a size from 4K to 1G, in bytes or with a K, M or G suffix, such as 64K")
		}
		*p = n * mult
		return nil
	}
}

// logLevel takes systemd's level names (and numbers), as SYSTEMD_LOG_LEVEL.
func logLevel(p *string) func(string) error {
	return func(s string) error {
		if _, err := logging.ParseLevel(s); err != nil {
			return errors.New("must be debug, info, notice, warning or err (or a syslog level number, 0 to 7)")
		}
		*p = s
		return nil
	}
}

func positiveInt(p *int) func(string) error {
	return func(s string) error {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return errors.New("must be a whole number of at least 1")
		}
		*p = n
		return nil
	}
}

// minHealthInterval is the shortest --health-interval: a probe not
// answered by the next one has failed, so a shorter one would take
// healthy backends down while their answers are on the way, and probe
// them thousands of times a second.
const minHealthInterval = 100 * time.Millisecond

// healthInterval reads --health-interval: 0 or infinity (off), or at
// least minHealthInterval.
func healthInterval(p *time.Duration) func(string) error {
	return func(s string) error {
		d, err := timespan.Parse(s)
		if err != nil {
			return err
		}
		if d > 0 && d < minHealthInterval {
			return fmt.Errorf("a probe not answered by the next one has failed: give 0 (off) or at least %v", minHealthInterval)
		}
		*p = d
		return nil
	}
}

// intUpTo reads a whole number from 1 to most.
func intUpTo(p *int, most int) func(string) error {
	return func(s string) error {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > most {
			return fmt.Errorf("must be a whole number from 1 to %d", most)
		}
		*p = n
		return nil
	}
}

// fileMode reads an octal mode as systemd's SocketMode= does (0666, 660,
// 0o600); only the permission bits are allowed.
func fileMode(p *os.FileMode) func(string) error {
	return func(s string) error {
		n, err := strconv.ParseUint(strings.TrimPrefix(s, "0o"), 8, 32)
		if err != nil || n > 0o777 {
			return errors.New("must be an octal file mode from 0 to 0777, such as 0666 or 0660")
		}
		*p = os.FileMode(n)
		return nil
	}
}

func balance(p *proxy.Balance) func(string) error {
	return func(s string) error {
		b, err := proxy.ParseBalance(s)
		if err == nil {
			*p = b
		}
		return err
	}
}

func protocol(p *proxyproto.Version) func(string) error {
	return func(s string) error {
		v, err := proxyproto.ParseVersion(s)
		if err == nil {
			*p = v
		}
		return err
	}
}
