// SPDX-License-Identifier: Apache-2.0

package notify

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// receiver is the service manager's end of NOTIFY_SOCKET.
func receiver(t *testing.T) *net.UnixConn {
	t.Helper()
	dir, err := os.MkdirTemp("", "spx")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return c
}

func receive(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no notification: %v", err)
	}
	return string(buf[:n])
}

func TestMessages(t *testing.T) {
	c := receiver(t)
	for _, tt := range []struct {
		send func() error
		want string
	}{
		{Ready, "READY=1"},
		{func() error { return Status("3 connections") }, "STATUS=3 connections"},
		{Stopping, "STOPPING=1"},
	} {
		if err := tt.send(); err != nil {
			t.Fatal(err)
		}
		if got := receive(t, c); got != tt.want {
			t.Fatalf("got %q, want %q", got, tt.want)
		}
	}
}

func TestWatchdog(t *testing.T) {
	c := receiver(t)
	t.Setenv("WATCHDOG_USEC", "20000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	interval := WatchdogInterval()
	if interval != 10*time.Millisecond {
		t.Fatalf("interval %v, want half of WATCHDOG_USEC", interval)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Watchdog(ctx, interval); close(done) }()
	if got := receive(t, c); got != "WATCHDOG=1" {
		t.Fatalf("got %q", got)
	}
	cancel()
	<-done
}

func TestNoWatchdogWithoutUsec(t *testing.T) {
	t.Setenv("WATCHDOG_USEC", "")
	if d := WatchdogInterval(); d != 0 {
		t.Fatalf("interval %v without WATCHDOG_USEC", d)
	}
}
