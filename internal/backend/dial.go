// SPDX-License-Identifier: Apache-2.0

package backend

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

// DefaultDialTimeout bounds one connection attempt to the backend, all of its
// resolved addresses together.
const DefaultDialTimeout = 10 * time.Second

// Dialer connects to a backend. The zero value is ready to use.
type Dialer struct {
	// Timeout bounds the whole dial; zero means DefaultDialTimeout.
	Timeout time.Duration
	// Resolver looks up host names; nil means net.DefaultResolver.
	Resolver *net.Resolver
}

// Dial connects to a, resolving a host name afresh each time (as the original
// does) and trying every address it resolves to in turn; the original tries
// only the first, so "localhost" fails when ::1 comes first and the backend
// listens on 127.0.0.1 alone. The conn it returns is the concrete
// *net.TCPConn or *net.UnixConn, so that copying can splice.
func (d Dialer) Dial(ctx context.Context, a Address) (net.Conn, error) {
	timeout := d.Timeout
	if timeout <= 0 {
		timeout = DefaultDialTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var nd net.Dialer
	if a.Network == "unix" {
		return nd.DialContext(ctx, "unix", a.Path)
	}
	addrs, err := d.Resolve(ctx, a)
	if err != nil {
		return nil, err
	}
	var errs []string
	for _, addr := range addrs {
		c, err := nd.DialContext(ctx, "tcp", addr)
		if err == nil {
			return c, nil
		}
		errs = append(errs, shortDialError(err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.New(strings.Join(errs, "; "))
}

// Resolve returns every "IP:PORT" the TCP address stands for, in the
// resolver's order.
func (d Dialer) Resolve(ctx context.Context, a Address) ([]string, error) {
	if net.ParseIP(a.Host) != nil {
		return []string{net.JoinHostPort(a.Host, a.Port)}, nil
	}
	r := d.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	ips, err := r.LookupIPAddr(ctx, a.Host)
	if err != nil {
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) {
			return nil, fmt.Errorf("cannot resolve %q: %s", a.Host, dnsErr.Err)
		}
		return nil, fmt.Errorf("cannot resolve %q: %w", a.Host, err)
	}
	addrs := make([]string, 0, len(ips))
	for _, ip := range ips {
		addrs = append(addrs, net.JoinHostPort(ip.String(), a.Port))
	}
	return addrs, nil
}

// shortDialError drops the "dial tcp" prefix Go adds, keeping the address and
// the reason, so that a line listing several attempts stays readable.
func shortDialError(err error) string {
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Addr != nil {
		return opErr.Addr.String() + ": " + errorText(opErr.Err)
	}
	return err.Error()
}

func errorText(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return "timed out"
	}
	return err.Error()
}
