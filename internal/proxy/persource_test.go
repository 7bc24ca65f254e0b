// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"net"
	"strings"
	"testing"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
)

// dialFrom connects to addr from the local address src.
func dialFrom(t *testing.T, src, addr string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// TestConnectionsPerSource: one address holds at most MaxPerSource
// connections; past it its clients are refused, counted apart and logged
// with the option that raises it, while another address is served; one
// that closes makes room.
func TestConnectionsPerSource(t *testing.T) {
	noLeak(t)
	be := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	ln, err := activation.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := startOn(t, ln, be, Config{MaxPerSource: 2})
	echoOnce := func(c *net.TCPConn) error {
		if _, err := c.Write([]byte("x")); err != nil {
			return err
		}
		_, err := c.Read(make([]byte, 1))
		return err
	}
	a1, a2 := dialFrom(t, "127.0.0.2", r.addr), dialFrom(t, "127.0.0.2", r.addr)
	for _, c := range []*net.TCPConn{a1, a2} {
		if err := echoOnce(c); err != nil {
			t.Fatal(err)
		}
	}
	if err := echoOnce(dialFrom(t, "127.0.0.2", r.addr)); err == nil {
		t.Fatal("a third connection from 127.0.0.2 was served at a limit of 2")
	}
	if err := echoOnce(dialFrom(t, "127.0.0.3", r.addr)); err != nil {
		t.Fatalf("another address was refused: %v", err)
	}
	if s := r.srv.Stats(); s.Refused != 1 || s.RefusedPerSource != 1 {
		t.Fatalf("stats %+v: want 1 refused per source", s)
	}
	if !strings.Contains(r.logs.String(), `source=127.0.0.2 max_per_source=2 hint="raise it with --per-source-max"`) {
		t.Errorf("the warning does not name the address and the option:\n%s", r.logs)
	}
	a1.Close()
	waitFor(t, "the closed connection to be counted", func() bool { return r.srv.Stats().Active == 3-1 })
	if err := echoOnce(dialFrom(t, "127.0.0.2", r.addr)); err != nil {
		t.Fatalf("no room after a connection closed: %v", err)
	}
}

// TestFlowsPerSource: past MaxPerSource flows, an address's new flow takes
// the place of its own least recently active one, never another address's:
// a resolver that asks from a new port each time is served at any rate.
func TestFlowsPerSource(t *testing.T) {
	be := udpEcho(t, "udp", "127.0.0.1:0", "")
	r := startDgram(t, "127.0.0.1:0", be.LocalAddr().String(), Config{MaxPerSource: 2})
	other := udpClient(t, "127.0.0.3:0", "")
	exchange(t, other, r.addr, []byte("first"))
	for i := range 5 {
		exchange(t, udpClient(t, "127.0.0.2:0", ""), r.addr, []byte{byte('a' + i)})
	}
	if s := r.srv.Stats(); s.Flows != 3 || s.FlowsEvicted != 3 || s.DatagramsDropped != 0 {
		t.Fatalf("stats %+v: want 3 flows (2 of 127.0.0.2, 1 of 127.0.0.3), 3 evicted, none dropped", s)
	}
	// The other address's flow is the one it had: same socket to the
	// backend, so the backend sees the same source port.
	if got, _ := exchange(t, other, r.addr, []byte("again")); string(got) != "again" {
		t.Fatalf("reply %q", got)
	}
	if s := r.srv.Stats(); s.FlowsOpened != 6 {
		t.Fatalf("stats %+v: 127.0.0.3's flow was replaced", s)
	}
}
