// SPDX-License-Identifier: Apache-2.0

package notify

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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

// StoreFDs sends FDSTORE=1 with the descriptors attached (SCM_RIGHTS), in
// messages of at most 253 (SCM_MAX_FD); RemoveFDs sends FDSTOREREMOVE=1.
func TestStoreFDs(t *testing.T) {
	c := receiver(t)
	var fds []int
	for range 150 {
		p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		fds = append(fds, p[0], p[1])
		t.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
	}
	socket := os.Getenv("NOTIFY_SOCKET")
	if err := StoreFDs(socket, "conn", fds); err != nil {
		t.Fatal(err)
	}
	got := 0
	for _, want := range []int{253, 47} {
		buf, oob := make([]byte, 256), make([]byte, unix.CmsgSpace(253*4))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if err != nil {
			t.Fatal(err)
		}
		if string(buf[:n]) != "FDSTORE=1\nFDPOLL=0\nFDNAME=conn" {
			t.Errorf("message %q", buf[:n])
		}
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		k := 0
		for _, m := range msgs {
			rights, _ := unix.ParseUnixRights(&m)
			k += len(rights)
			for _, fd := range rights {
				unix.Close(fd)
			}
		}
		if k != want {
			t.Errorf("a message carried %d descriptors, want %d", k, want)
		}
		got += k
	}
	if got != len(fds) {
		t.Errorf("%d descriptors stored, want %d", got, len(fds))
	}
	if err := RemoveFDs(socket, "conn"); err != nil {
		t.Fatal(err)
	}
	if m := receive(t, c); m != "FDSTOREREMOVE=1\nFDNAME=conn" {
		t.Errorf("got %q", m)
	}
	if err := StoreFDs("", "conn", fds[:1]); err == nil {
		t.Error("storing without NOTIFY_SOCKET did not fail")
	}
}

func TestReloading(t *testing.T) {
	c := receiver(t)
	if err := Reloading(); err != nil {
		t.Fatal(err)
	}
	m := receive(t, c)
	usec, ok := strings.CutPrefix(m, "RELOADING=1\nMONOTONIC_USEC=")
	if n, err := strconv.ParseInt(usec, 10, 64); !ok || err != nil || n <= 0 {
		t.Errorf("got %q, want RELOADING=1 and MONOTONIC_USEC=", m)
	}
}
