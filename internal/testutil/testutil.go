// SPDX-License-Identifier: Apache-2.0

// Package testutil holds the one rule every test that needs something from
// the machine follows: without it the test skips on a developer's machine
// and fails under CI (CI set), so a CI run that passes has run every test.
// It also holds the network fixtures that more than one package's tests
// need.
package testutil

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// InCI reports whether the tests run under CI: CI set to anything but ""
// "0" or "false" (.ci/run sets CI=1, CI services CI=true).
func InCI() bool {
	switch os.Getenv("CI") {
	case "", "0", "false":
		return false
	}
	return true
}

// Unavailable ends t for want of something the machine lacks (a tool, a
// privilege, a kernel feature): a skip locally, a failure under CI, where
// .ci/run installs and grants all of it.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf("CI=1: "+format+" (CI must provide it: see .ci/run)", args...)
	}
	t.Skipf(format+" (run under CI=1 to make this a failure)", args...)
}

// RequireTool returns the path of program name, looked up in PATH and in
// the sbin directories a non-root PATH lacks; when it is missing, the test
// is Unavailable, naming the Debian package that has it.
func RequireTool(t testing.TB, name, debianPackage string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/lib/systemd"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	Unavailable(t, "%s is not installed (apt-get install %s)", name, debianPackage)
	return ""
}

// RequireRoot makes the test Unavailable unless it runs as root.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root: %s", why)
	}
}

// SilentTCP returns a 127.0.0.1 address whose SYNs go unanswered, for as
// long as the test runs: a listener with a backlog of 0 whose accept queue
// it fills and never accepts from, so the kernel drops further SYNs
// (listen queue overflow) and a connect waits until its own deadline. No
// privilege or network namespace needed.
func SilentTCP(t testing.TB) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	err = syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}})
	if err == nil {
		err = syscall.Listen(fd, 0)
	}
	if err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
	// Connects complete until the queue is full; the first that does not
	// complete within 200ms shows SYNs are dropped from then on.
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			if i == 0 {
				t.Fatalf("the first connect to a listener with an empty queue failed: %v", err)
			}
			return addr
		}
		t.Cleanup(func() { c.Close() })
		if i == 8 {
			t.Fatalf("%d connects to a backlog-0 listener completed: the kernel does not drop SYNs here", i+1)
		}
	}
}

// EchoPackets serves a datagram socket (UDP or unixgram) on addr that sends
// each datagram back to its sender, after prefix(sender), until the test
// ends. A sender without an address (an unbound unix socket) gets nothing:
// there is nowhere to reply.
func EchoPackets(t testing.TB, network, addr string, prefix func(from net.Addr) string) net.PacketConn {
	t.Helper()
	pc, err := net.ListenPacket(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		pc.Close()
		wg.Wait()
	})
	wg.Go(func() {
		buf := make([]byte, 1<<20) // the largest unix datagram the tests send
		for {
			n, from, err := pc.ReadFrom(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err == nil && from != nil && from.String() != "" && from.String() != "@" {
				pc.WriteTo(append([]byte(prefix(from)), buf[:n]...), from)
			}
		}
	})
	return pc
}
