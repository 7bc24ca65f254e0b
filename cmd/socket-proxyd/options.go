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
	"github.com/socket-proxyd/socket-proxyd/internal/timespan"
)

// options is the parsed command line.
type options struct {
	backend        backend.Address
	maxConnections int
	exitIdleTime   time.Duration // timespan.Infinity: never
	listen         []string
	help, version  bool
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
	fs.BoolVarP(&opts.help, "help", "h", false, "")
	fs.BoolVar(&opts.version, "version", false, "")
	if err := fs.Parse(args); err != nil {
		return opts, flagError(err)
	}
	if opts.help || opts.version {
		return opts, nil
	}
	switch fs.NArg() {
	case 0:
		return opts, errors.New("missing backend address: give HOST:PORT or a unix socket path")
	case 1:
	default:
		return opts, fmt.Errorf("too many arguments %q: give exactly one backend address", fs.Args()[1:])
	}
	addr, err := backend.Parse(fs.Arg(0))
	if err != nil {
		return opts, err
	}
	opts.backend = addr
	return opts, nil
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
