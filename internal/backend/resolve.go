// SPDX-License-Identifier: Apache-2.0

package backend

import (
	"context"
	"errors"
	"fmt"
	"net"
)

// Resolve returns every "IP:PORT" the TCP address a stands for, in the
// resolver's order (r nil: net.DefaultResolver). The engine tries them in
// turn; the original tries only the first, so "localhost" fails there when
// ::1 comes first and the backend listens on 127.0.0.1 alone. An IP
// literal is returned as it is, with no lookup.
func Resolve(ctx context.Context, r *net.Resolver, a Address) ([]string, error) {
	if net.ParseIP(a.Host) != nil {
		return []string{net.JoinHostPort(a.Host, a.Port)}, nil
	}
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
