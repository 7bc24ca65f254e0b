// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"io"
	"net"
	"path/filepath"
	"testing"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/backend"
)

// Tests of the options of issue 4, over real sockets: connect retries,
// idle timeout, keepalive, PROXY protocol, backends per listener and the
// graceful stop.

// TestBackendsPerListener: two listeners, each with its own backend.
func TestBackendsPerListener(t *testing.T) {
	noLeak(t)
	named := func(name string) func(net.Conn) {
		return func(c net.Conn) { c.Write([]byte(name)) }
	}
	a := listenBackend(t, "tcp", "127.0.0.1:0", named("alpha"))
	b := listenBackend(t, "unix", filepath.Join(shortDir(t), "b"), named("beta"))
	ba, _ := backend.Parse(b)
	lnA, err := activation.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lnB, err := activation.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lnB.Name = "beta"
	p := startOn(t, lnA, a, Config{
		Listeners: []activation.Listener{lnB},
		Backends:  map[string][]backend.Address{"beta": {ba}},
	})
	for addr, want := range map[string]string{lnA.Addr().String(): "alpha", lnB.Addr().String(): "beta"} {
		c := dial(t, addr)
		got, err := io.ReadAll(c)
		if err != nil || string(got) != want {
			t.Errorf("client of %s got %q, %v; want %q", addr, got, err, want)
		}
	}
	_ = p
}
