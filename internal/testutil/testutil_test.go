// SPDX-License-Identifier: Apache-2.0

package testutil

import (
	"errors"
	"net"
	"testing"
	"time"
)

func TestInCI(t *testing.T) {
	for _, tt := range []struct {
		value string
		want  bool
	}{{"", false}, {"0", false}, {"false", false}, {"1", true}, {"true", true}} {
		t.Setenv("CI", tt.value)
		if got := InCI(); got != tt.want {
			t.Errorf("CI=%q: InCI() = %v, want %v", tt.value, got, tt.want)
		}
	}
}

// TestUnavailableFailsUnderCI runs Unavailable on a fake testing.TB: a skip
// without CI, a failure with it.
func TestUnavailableFailsUnderCI(t *testing.T) {
	for _, tt := range []struct {
		ci              string
		failed, skipped bool
	}{{"", false, true}, {"1", true, false}} {
		t.Setenv("CI", tt.ci)
		r := &recorder{}
		func() {
			defer func() { _ = recover() }() // Fatalf and Skipf end the goroutine: here a panic
			RequireTool(r, "no-such-tool-spx", "nothing")
		}()
		if r.failed != tt.failed || r.skipped != tt.skipped {
			t.Errorf("CI=%q: failed %v skipped %v, want failed %v skipped %v", tt.ci, r.failed, r.skipped, tt.failed, tt.skipped)
		}
	}
	if p := RequireTool(t, "sh", "dash"); p == "" {
		t.Error("sh not found")
	}
}

// recorder is a testing.TB that records how the test ended.
type recorder struct {
	testing.TB
	failed, skipped bool
}

type ended struct{}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(string, ...any) {
	r.failed = true
	panic(ended{})
}
func (r *recorder) Skipf(string, ...any) {
	r.skipped = true
	panic(ended{})
}

// TestSilentTCP: a connect to the address neither completes nor fails
// before its deadline.
func TestSilentTCP(t *testing.T) {
	addr := SilentTCP(t)
	begin := time.Now()
	c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
	if err == nil {
		c.Close()
		t.Fatal("a connect to the silent address completed")
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || time.Since(begin) < 250*time.Millisecond {
		t.Fatalf("connect: %v after %v, want a timeout at the deadline", err, time.Since(begin))
	}
}

// TestEchoPackets: each datagram comes back whole to its sender, after the
// prefix its address gives, over UDP and unixgram.
func TestEchoPackets(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct{ network, server, client string }{
		{"udp", "127.0.0.1:0", "127.0.0.1:0"},
		{"unixgram", dir + "/server.sock", dir + "/client.sock"},
	} {
		t.Run(tt.network, func(t *testing.T) {
			pc := EchoPackets(t, tt.network, tt.server, func(from net.Addr) string { return "to " + from.String() + ": " })
			c, err := net.ListenPacket(tt.network, tt.client)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			msg := make([]byte, 60000)
			msg[len(msg)-1] = 'z'
			if _, err := c.WriteTo(msg, pc.LocalAddr()); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 70000)
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				t.Fatal(err)
			}
			want := append([]byte("to "+c.LocalAddr().String()+": "), msg...)
			if string(buf[:n]) != string(want) {
				t.Errorf("got %d bytes (%q...), want %d (%q...)", n, buf[:min(n, 40)], len(want), want[:40])
			}
		})
	}
}
