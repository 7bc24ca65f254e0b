// SPDX-License-Identifier: Apache-2.0

package backend

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// listen starts a listener that accepts and immediately closes every client.
func listen(t *testing.T, network, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("cannot listen on %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln
}

func TestDialTriesEveryResolvedAddress(t *testing.T) {
	// localhost resolves to 127.0.0.1 and ::1; a backend listening on only
	// one of them must be reached whichever comes first.
	for _, network := range []string{"tcp4", "tcp6"} {
		t.Run(network, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if network == "tcp6" {
				addr = "[::1]:0"
			}
			ln := listen(t, network, addr)
			_, port, _ := net.SplitHostPort(ln.Addr().String())
			var d Dialer
			addrs, err := d.Resolve(context.Background(), Address{Network: "tcp", Host: "localhost", Port: port})
			if err != nil || len(addrs) < 2 {
				t.Skipf("localhost resolves to %v (%v); need both families", addrs, err)
			}
			c, err := d.Dial(context.Background(), Address{Network: "tcp", Host: "localhost", Port: port})
			if err != nil {
				t.Fatalf("Dial localhost:%s with a backend on %s only: %v", port, ln.Addr(), err)
			}
			c.Close()
		})
	}
}

func TestDialReturnsConcreteConns(t *testing.T) {
	dir, err := os.MkdirTemp("", "spx")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	tcp := listen(t, "tcp", "127.0.0.1:0")
	unixPath := filepath.Join(dir, "b.sock")
	listen(t, "unix", unixPath)
	listen(t, "unix", "@spx-dial-test-"+filepath.Base(dir))
	var d Dialer
	for _, a := range []string{tcp.Addr().String(), unixPath, "@spx-dial-test-" + filepath.Base(dir)} {
		addr, err := Parse(a)
		if err != nil {
			t.Fatal(err)
		}
		c, err := d.Dial(context.Background(), addr)
		if err != nil {
			t.Fatalf("Dial(%s): %v", a, err)
		}
		switch c.(type) {
		case *net.TCPConn, *net.UnixConn:
		default:
			t.Errorf("Dial(%s) returned %T; splice needs *net.TCPConn or *net.UnixConn", a, c)
		}
		c.Close()
	}
}

func TestDialRefusedNamesAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	a, _ := Parse(addr)
	_, err = Dialer{}.Dial(context.Background(), a)
	if err == nil {
		t.Fatalf("Dial(%s) with nothing listening succeeded", addr)
	}
	if !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("error %q should name %s and say refused", err, addr)
	}
}
