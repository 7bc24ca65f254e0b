// SPDX-License-Identifier: Apache-2.0

package backend

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strings"
)

// Check says where a would be reached now, without connecting: the
// addresses a host name resolves to, or that a unix socket is there (a
// path is a socket file; an abstract name is bound in this network
// namespace, as /proc/net/unix lists it). It fails when a connection
// could not even be tried: a name that does not resolve, no socket at
// the path or name.
func Check(ctx context.Context, r *net.Resolver, a Address) ([]string, error) {
	switch {
	case a.Network == "tcp":
		return Resolve(ctx, r, a)
	case strings.HasPrefix(a.Path, "@"):
		ok, err := abstractBound(a.Path[1:])
		if err != nil {
			return nil, fmt.Errorf("cannot tell whether abstract socket %q is bound: %v", a.Path, err)
		}
		if !ok {
			return nil, fmt.Errorf("no abstract socket %q is bound: start the backend first", a.Path)
		}
		return []string{a.Path}, nil
	}
	fi, err := os.Stat(a.Path)
	switch {
	case os.IsNotExist(err):
		return nil, fmt.Errorf("no unix socket at %q: start the backend first, or correct the path", a.Path)
	case err != nil:
		return nil, fmt.Errorf("cannot stat backend %q: %v", a.Path, err)
	case fi.Mode()&os.ModeSocket == 0:
		return nil, fmt.Errorf("backend %q is not a unix socket (%s)", a.Path, fi.Mode().Type())
	}
	return []string{a.Path}, nil
}

// abstractBound looks for @name in /proc/net/unix, whose last column is
// the bound path ("@name" for an abstract one).
func abstractBound(name string) (bool, error) {
	f, err := os.Open("/proc/net/unix")
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	want := "@" + name
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 8 && fields[len(fields)-1] == want {
			return true, nil
		}
	}
	return false, sc.Err()
}
