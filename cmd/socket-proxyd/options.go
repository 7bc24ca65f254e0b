package main

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/socket-proxyd/socket-proxyd/internal/backend"
	"github.com/socket-proxyd/socket-proxyd/internal/proxy"
	"github.com/socket-proxyd/socket-proxyd/internal/proxyproto"
	"github.com/socket-proxyd/socket-proxyd/internal/timespan"
)

// options is the parsed command line.
type options struct {
	backend        backend.Address            // zero when only --backend is given
	named          map[string]backend.Address // --backend NAME=ADDRESS
	maxConnections int
	exitIdleTime   time.Duration // timespan.Infinity: never
	listen         []string
	// listenDatagram and listenPacket are --listen-datagram and
	// --listen-sequential-packet, named after systemd's ListenDatagram=
	// and ListenSequentialPacket=.
	listenDatagram, listenPacket []string
	// idleTimeoutSet: --idle-timeout was given, so datagram flows take it
	// instead of their own default.
	idleTimeoutSet bool

	connectTimeout  time.Duration // 0: one attempt
	idleTimeout     time.Duration // timespan.Infinity: never
	keepAlive       time.Duration // 0: off
	shutdownTimeout time.Duration // 0: close at once
	proxyProtocol   proxyproto.Version

	help, version bool
}

const usage = `socket-proxyd [OPTIONS...] HOST:PORT
socket-proxyd [OPTIONS...] SOCKET

Bidirectionally proxy local sockets to another (possibly remote) socket.

  -c --connections-max=N     Set the maximum number of connections to be
                             accepted (default: 256)
     --exit-idle-time=SPAN   Exit when without a connection for this duration.
                             See the systemd.time(7) man page for time span
                             format (default: infinity)
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
     --backend=NAME=ADDRESS  Forward the socket named NAME (its
                             FileDescriptorName=, or the --listen ADDRESS) to
                             ADDRESS instead; may be repeated
     --connect-timeout=SPAN  Keep retrying a refused or missing backend for
                             up to SPAN; 0 tries once (default: 10s)
     --idle-timeout=SPAN     Close a connection or datagram flow without
                             traffic either way for SPAN (default: infinity
                             for connections, 1min for flows)
     --keepalive=SPAN        TCP keepalive idle time on both TCP sides; 0
                             turns it off (default: 1min)
     --proxy-protocol=VERSION
                             Send a PROXY protocol header, v1 or v2, to the
                             backend before any client byte; datagrams take
                             v2 only, one header each (default: none)
     --shutdown-timeout=SPAN
                             On SIGTERM, stop accepting and let open
                             connections finish for up to SPAN; 0 closes
                             them at once (default: 30s)
  -h --help                  Show this help
     --version               Show package version

HOST may be an IPv4 address, a host name, or an IPv6 address in brackets; without
:PORT the port is 80. SOCKET is a unix socket path, or @name for an abstract one.
Listening sockets come from systemd (a .socket unit with Accept=no, or
systemd-socket-activate -l ADDRESS) and from --listen.

See the socket-proxyd(8) man page for details.
`

// parseOptions reads the command line the way the original's getopt does:
// -c5, -c 5, --connections-max=5 and --connections-max 5 are all one thing.
func parseOptions(args []string) (options, error) {
	opts := options{maxConnections: proxy.DefaultMaxConnections}
	fs := pflag.NewFlagSet("socket-proxyd", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.SetInterspersed(true)
	fs.VarP((*positiveInt)(&opts.maxConnections), "connections-max", "c", "")
	fs.Var(timespan.NewValue(&opts.exitIdleTime, timespan.Infinity), "exit-idle-time", "")
	fs.StringArrayVar(&opts.listen, "listen", nil, "")
	fs.StringArrayVar(&opts.listenDatagram, "listen-datagram", nil, "")
	fs.StringArrayVar(&opts.listenPacket, "listen-sequential-packet", nil, "")
	var named []string
	fs.StringArrayVar(&named, "backend", nil, "")
	fs.Var(timespan.NewValue(&opts.connectTimeout, proxy.DefaultConnectTimeout), "connect-timeout", "")
	fs.Var(timespan.NewValue(&opts.idleTimeout, timespan.Infinity), "idle-timeout", "")
	fs.Var(timespan.NewValue(&opts.keepAlive, proxy.DefaultKeepAlive), "keepalive", "")
	fs.Var(timespan.NewValue(&opts.shutdownTimeout, proxy.DefaultShutdownTimeout), "shutdown-timeout", "")
	fs.Var((*protocolFlag)(&opts.proxyProtocol), "proxy-protocol", "")
	fs.BoolVarP(&opts.help, "help", "h", false, "")
	fs.BoolVar(&opts.version, "version", false, "")
	if err := fs.Parse(args); err != nil {
		return opts, flagError(err)
	}
	opts.idleTimeoutSet = fs.Changed("idle-timeout")
	if opts.help || opts.version {
		return opts, nil
	}
	var err error
	if opts.named, err = parseNamedBackends(named); err != nil {
		return opts, err
	}
	switch fs.NArg() {
	case 0:
		if len(opts.named) == 0 {
			return opts, errors.New("missing backend address: give HOST:PORT or a unix socket path")
		}
		return opts, nil // every socket must then be named by --backend
	case 1:
	default:
		return opts, fmt.Errorf("too many arguments %q: give exactly one backend address", fs.Args()[1:])
	}
	opts.backend, err = backend.Parse(fs.Arg(0))
	return opts, err
}

// parseNamedBackends reads each --backend NAME=ADDRESS.
func parseNamedBackends(values []string) (map[string]backend.Address, error) {
	if len(values) == 0 {
		return nil, nil
	}
	named := make(map[string]backend.Address, len(values))
	for _, v := range values {
		name, addr, ok := strings.Cut(v, "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("invalid value %q for --backend: write NAME=ADDRESS, NAME being a socket's FileDescriptorName= or --listen address", v)
		}
		if _, dup := named[name]; dup {
			return nil, fmt.Errorf("invalid value %q for --backend: socket %q already has a backend", v, name)
		}
		a, err := backend.Parse(addr)
		if err != nil {
			return nil, fmt.Errorf("invalid value %q for --backend: %v", v, err)
		}
		named[name] = a
	}
	return named, nil
}

// flagError rewrites pflag's messages into ours: the bad value quoted, both
// spellings of the flag, and what to write instead.
func flagError(err error) error {
	msg := err.Error()
	if rest, ok := strings.CutPrefix(msg, "invalid argument "); ok {
		// invalid argument "x" for "-c, --connections-max" flag: reason
		value, rest, _ := strings.Cut(rest, ` for "`)
		flag, reason, _ := strings.Cut(rest, `" flag: `)
		return fmt.Errorf("invalid value %s for %s: %s", value, strings.ReplaceAll(flag, ", ", "/"), reason)
	}
	if flag, ok := strings.CutPrefix(msg, "unknown flag: "); ok {
		return fmt.Errorf("unknown option %q", flag)
	}
	if rest, ok := strings.CutPrefix(msg, "unknown shorthand flag: "); ok {
		short, _, _ := strings.Cut(rest, " in ")
		return fmt.Errorf("unknown option %q", "-"+strings.Trim(short, "'"))
	}
	if flag, ok := strings.CutPrefix(msg, "flag needs an argument: "); ok {
		if short, _, found := strings.Cut(flag, " in "); found {
			flag = "-" + strings.Trim(short, "'")
		}
		return fmt.Errorf("option %s needs a value", flag)
	}
	if arg, ok := strings.CutPrefix(msg, "bad flag syntax: "); ok {
		return fmt.Errorf("bad option syntax %q: write -c N or --name=VALUE", arg)
	}
	// Anything else pflag may say: keep it to one line whatever the input.
	return errors.New(strings.Trim(strconv.Quote(msg), `"`))
}

// protocolFlag is --proxy-protocol's value.
type protocolFlag proxyproto.Version

func (p *protocolFlag) Set(s string) error {
	v, err := proxyproto.ParseVersion(s)
	*p = protocolFlag(v)
	return err
}

func (p *protocolFlag) String() string { return proxyproto.Version(*p).String() }
func (p *protocolFlag) Type() string   { return "version" }

// positiveInt is -c's value: a whole number of at least 1.
type positiveInt int

func (p *positiveInt) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return errors.New("must be a whole number of at least 1")
	}
	*p = positiveInt(n)
	return nil
}

func (p *positiveInt) String() string { return strconv.Itoa(int(*p)) }
func (p *positiveInt) Type() string   { return "int" }
