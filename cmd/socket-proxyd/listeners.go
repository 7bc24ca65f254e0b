// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/proxy"
	"github.com/socket-proxyd/socket-proxyd/internal/proxyproto"
	"github.com/socket-proxyd/socket-proxyd/internal/timespan"
)

// listenPackets binds --listen-datagram and --listen-sequential-packet
// sockets after the others; on failure it closes every listener, those
// given included, and returns the error.
func listenPackets(listeners []activation.Listener, opts options) ([]activation.Listener, error) {
	binds := []struct {
		addrs  []string
		kind   activation.Kind
		listen func(string, os.FileMode) (activation.Listener, error)
	}{
		{opts.listenDatagram, activation.Datagram, activation.ListenDatagram},
		{opts.listenPacket, activation.SequentialPacket, activation.ListenSequentialPacket},
	}
	for _, b := range binds {
		for _, addr := range b.addrs {
			if slices.ContainsFunc(listeners, func(l activation.Listener) bool { return l.Name == addr && l.Kind == b.kind }) {
				continue // carried over a reload
			}
			l, err := b.listen(addr, opts.socketMode)
			if err != nil {
				activation.Close(listeners)
				return nil, err
			}
			listeners = append(listeners, l)
		}
	}
	return listeners, nil
}

// checkKinds checks what each socket's type asks of its backend and
// options: a sequential-packet socket forwards to a unix socket (there is
// no such thing over IP); a datagram socket cannot carry a PROXY v1 header,
// a line for streams.
func checkKinds(listeners []activation.Listener, opts options) error {
	for _, l := range listeners {
		b, ok := proxy.NamedBackend(opts.named, l)
		if !ok {
			b = opts.backend
		}
		switch l.Kind {
		case activation.SequentialPacket:
			for _, b := range b {
				if b.Network != "unix" {
					return fmt.Errorf("socket %s is a sequential-packet socket, so its backend %q must be a unix socket too: give a unix socket path or @name", describe(l), b.String())
				}
			}
		case activation.Datagram:
			if opts.proxyProtocol == proxyproto.V1 {
				return fmt.Errorf("socket %s is a datagram socket, and --proxy-protocol=v1 is a line for streams: use --proxy-protocol=v2, one header per datagram", describe(l))
			}
		}
	}
	return nil
}

// flowIdleTimeout is proxy.Config.FlowIdleTimeout: flows take
// --idle-timeout when it is given (infinity or 0: never), and otherwise
// the proxy's default, as datagrams have no end of their own.
func flowIdleTimeout(opts options) time.Duration {
	switch {
	case !opts.idleTimeoutSet:
		return 0
	case opts.idleTimeout == timespan.Infinity, opts.idleTimeout == 0:
		return -1
	}
	return opts.idleTimeout
}
