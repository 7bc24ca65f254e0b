// SPDX-License-Identifier: Apache-2.0

package main_test

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const idleSpan = 500 * time.Millisecond

// TestIdleExitNeverUsed: --exit-idle-time counts from start-up, so a proxy
// nobody connects to exits 0 by itself. The original arms the timer only
// after a connection closes and never exits.
func TestIdleExitNeverUsed(t *testing.T) {
	t.Parallel()
	checkDiffers(t, "idle exit counted from start-up", func(t *testing.T, im impl) error {
		fd, _ := inheritTCP(t, "web")
		n := newNotifyReceiver(t)
		p := start(t, im.path, launch{args: []string{"--exit-idle-time=500ms", "127.0.0.1:9"},
			fds: []inherited{fd}, env: []string{n.env()}})
		code, err := p.exitWithin(idleSpan + 5*time.Second)
		if err != nil {
			return err
		}
		if code != 0 {
			t.Errorf("exit status %d, want 0; stderr:\n%s", code, p.stderr.String())
		}
		if err := n.wait("STOPPING=1", 5*time.Second); err != nil {
			t.Errorf("idle exit: %v", err)
		}
		// The span is a minimum: measured from our start, which is before its.
		if elapsed := time.Since(p.start); elapsed < idleSpan {
			t.Errorf("exited after %v, before the idle span of %v", elapsed, idleSpan)
		}
		return nil
	})
}

// TestIdleExitUsed: a client connects and stays longer than the span; the
// proxy must not exit while it is open. Once it closes, the proxy exits 0
// after the span.
func TestIdleExitUsed(t *testing.T) {
	t.Parallel()
	// Longer than idleSpan: the client must get in before the span counted
	// from start-up ends, even with a slow start under -race.
	const span = time.Second
	forEachImpl(t, func(t *testing.T, im impl) {
		_, backend := echoTCP(t, "127.0.0.1:0")
		fd, addr := inheritTCP(t, "web")
		p := start(t, im.path, launch{args: []string{"--exit-idle-time=1s", backend}, fds: []inherited{fd}})
		c := dial(t, "tcp", addr)
		mustEcho(t, c, 1000)
		// Waiting is the point here: nothing may happen for 2 spans.
		if err := p.stillRunningAfter(2 * span); err != nil {
			t.Fatalf("with a client connected: %v", err)
		}
		mustEcho(t, c, 1000) // still proxied
		c.Close()
		closed := time.Now()
		code := p.waitExit(span + 10*time.Second)
		if code != 0 {
			t.Errorf("exit status %d, want 0; stderr:\n%s", code, p.stderr.String())
		}
		if waited := time.Since(closed); waited < span {
			t.Errorf("exited %v after the last client closed, before the idle span of %v", waited, span)
		}
	})
}

// TestNotifyReady: READY=1 arrives on NOTIFY_SOCKET once the listeners are
// set up, before any client (so Type=notify units work). The original in
// systemd 252 never sends it.
func TestNotifyReady(t *testing.T) {
	t.Parallel()
	checkDiffers(t, "READY=1: the original never sends it", func(t *testing.T, im impl) error {
		_, backend := echoTCP(t, "127.0.0.1:0")
		n := newNotifyReceiver(t)
		fd, addr := inheritTCP(t, "web")
		start(t, im.path, launch{args: []string{backend}, fds: []inherited{fd}, env: []string{n.env()}})
		if err := n.wait("READY=1", 10*time.Second); err != nil {
			return err
		}
		mustEcho(t, dial(t, "tcp", addr), 1000)
		return nil
	})
}

// TestNotifyReadyListen: with --listen, READY=1 means the socket is bound:
// a client can connect right after it, without retrying.
func TestNotifyReadyListen(t *testing.T) {
	t.Parallel()
	checkDiffers(t, "READY=1 and --listen are new", func(t *testing.T, im impl) error {
		_, backend := echoTCP(t, "127.0.0.1:0")
		n := newNotifyReceiver(t)
		front := abstractName()
		start(t, im.path, launch{args: []string{"--listen", front, backend}, env: []string{n.env()}})
		if err := n.wait("READY=1", 10*time.Second); err != nil {
			return err
		}
		mustEcho(t, dial(t, "unix", front), 1000)
		return nil
	})
}

// TestSIGTERM: SIGTERM and SIGINT stop the proxy: STOPPING=1, the open
// connection is closed, exit 0. The original has no handler: it dies of the
// signal, without STOPPING=1.
func TestSIGTERM(t *testing.T) {
	t.Parallel()
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			t.Parallel()
			checkDiffers(t, "SIGTERM: the original dies of the signal", func(t *testing.T, im impl) error {
				_, backend := echoTCP(t, "127.0.0.1:0")
				n := newNotifyReceiver(t)
				fd, addr := inheritTCP(t, "web")
				p := start(t, im.path, launch{args: atOnce(im, backend), fds: []inherited{fd}, env: []string{n.env()}})
				c := dial(t, "tcp", addr)
				mustEcho(t, c, 1000)
				p.signal(sig)
				code := p.waitExit(10 * time.Second)
				if err := closedWithoutData(c, 10*time.Second); err != nil {
					t.Errorf("client after %v: %v", sig, err)
				}
				if code != 0 {
					return fmt.Errorf("exit status %d after %v, want 0; stderr:\n%s", code, sig, p.stderr.String())
				}
				// The datagram was sent before the exit, but the receiver
				// goroutine may not have read it yet.
				if err := n.wait("STOPPING=1", 5*time.Second); err != nil {
					return err
				}
				if !n.has("READY=1") {
					return fmt.Errorf("no READY=1 before STOPPING=1: %q", n.messages())
				}
				return nil
			})
		})
	}
}

// TestSIGTERMWhileIdle: SIGTERM with no connection: exit 0 promptly, after
// READY=1 and STOPPING=1.
func TestSIGTERMWhileIdle(t *testing.T) {
	t.Parallel()
	checkDiffers(t, "SIGTERM: the original dies of the signal", func(t *testing.T, im impl) error {
		fd, _ := inheritTCP(t, "web")
		n := newNotifyReceiver(t)
		p := start(t, im.path, launch{args: []string{"127.0.0.1:9"}, fds: []inherited{fd}, env: []string{n.env()}})
		if !im.original {
			if err := n.wait("READY=1", 10*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		p.signal(syscall.SIGTERM)
		if code := p.waitExit(10 * time.Second); code != 0 {
			return fmt.Errorf("exit status %d, want 0; stderr:\n%s", code, p.stderr.String())
		}
		return n.wait("STOPPING=1", 5*time.Second)
	})
}

// TestWatchdog: with WATCHDOG_USEC set, WATCHDOG=1 is sent at half of it,
// as the original does through sd-event.
func TestWatchdog(t *testing.T) {
	t.Parallel()
	forEachImpl(t, func(t *testing.T, im impl) {
		n := newNotifyReceiver(t)
		fd, _ := inheritTCP(t, "web")
		start(t, im.path, launch{args: []string{"127.0.0.1:9"}, fds: []inherited{fd},
			env: []string{n.env(), "WATCHDOG_USEC=400000"}})
		count := func() int {
			k := 0
			for _, m := range n.messages() {
				if m == "WATCHDOG=1" {
					k++
				}
			}
			return k
		}
		// Every 200ms: three pings within 5s even on a loaded machine.
		err := poll(5*time.Second, func() bool { return count() >= 3 },
			func() string {
				return fmt.Sprintf("%d WATCHDOG=1 in 5s with WATCHDOG_USEC=400000: %q", count(), n.messages())
			})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// TestRaiseNOFILE: started with systemd's default soft limit of 1024 open
// files, the proxy runs with the hard limit (Go's runtime sets hard-1 on
// purpose, see syscall/rlimit.go). The original keeps 1024 and runs out of
// descriptors long before its own connection limit.
func TestRaiseNOFILE(t *testing.T) {
	t.Parallel()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Max <= 2048 {
		t.Skipf("hard RLIMIT_NOFILE is only %d", lim.Max)
	}
	checkDiffers(t, "RLIMIT_NOFILE raised to the hard limit", func(t *testing.T, im impl) error {
		_, backend := echoTCP(t, "127.0.0.1:0")
		fd, addr := inheritTCP(t, "web")
		p := start(t, im.path, launch{args: []string{backend}, fds: []inherited{fd}, softNOFILE: 1024})
		mustEcho(t, dial(t, "tcp", addr), 1000) // it has started
		limits, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", p.cmd.Process.Pid))
		if err != nil {
			t.Skipf("cannot read the proxy's limits: %v", err)
		}
		for _, line := range strings.Split(string(limits), "\n") {
			if !strings.HasPrefix(line, "Max open files") {
				continue
			}
			f := strings.Fields(strings.TrimPrefix(line, "Max open files"))
			if len(f) < 2 {
				break
			}
			soft, err1 := strconv.ParseUint(f[0], 10, 64)
			hard, err2 := strconv.ParseUint(f[1], 10, 64)
			if err1 != nil || err2 != nil {
				break
			}
			if soft+1 < hard {
				return fmt.Errorf("soft limit of open files %d, want the hard limit %d", soft, hard)
			}
			return nil
		}
		t.Fatalf("no \"Max open files\" in /proc/PID/limits:\n%s", limits)
		return nil
	})
}
