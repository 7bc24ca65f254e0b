// SPDX-License-Identifier: Apache-2.0

package main_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/testlaunch"
	"github.com/socket-proxyd/socket-proxyd/internal/testutil"
)

// TestSyscallsUnderStrace proves from outside, with strace attached to the
// running proxy, what docs/ENGINE.md says of its system calls: bulk bytes
// move by splice (STYLE.md: "prove splice is used"), each socket is
// registered once and its interest never toggled (no epoll_ctl per
// transfer), and an idle proxy's loop does not wake up.
func TestSyscallsUnderStrace(t *testing.T) {
	t.Parallel()
	strace := testutil.RequireTool(t, "strace", "strace")
	_, backend := echoTCP(t, "127.0.0.1:0")
	fd, addr := inheritTCP(t, "web")
	p := start(t, binary, launch{args: []string{backend}, fds: []inherited{fd}})
	mustEcho(t, dial(t, "tcp", addr), 1000) // it is up
	pid := p.cmd.Process.Pid

	t.Run("splice", func(t *testing.T) {
		calls := straceCount(t, strace, pid, "splice", func() { mustEcho(t, dial(t, "tcp", addr), 32*mib) })
		// 64 MiB forwarded (both ways) through pipes of at most 256 KiB:
		// at least 256 splices, counting only those out of the pipes.
		if calls["splice"] < 256 {
			t.Errorf("%d splice calls for 64 MiB forwarded, want at least 256", calls["splice"])
		}
	})
	t.Run("epoll_ctl once per socket", func(t *testing.T) {
		const conns = 10
		calls := straceCount(t, strace, pid, "epoll_ctl", func() {
			for range conns {
				c := dial(t, "tcp", addr)
				for range 20 {
					mustEcho(t, c, 4096)
				}
				c.Close()
			}
		})
		// Two sockets per connection, one EPOLL_CTL_ADD each; closing
		// a descriptor removes it from the set with no call.
		if calls["epoll_ctl"] > 2*conns {
			t.Errorf("%d epoll_ctl calls for %d connections of 20 exchanges each, want at most %d", calls["epoll_ctl"], conns, 2*conns)
		}
	})
	t.Run("idle", func(t *testing.T) {
		// Idle: no connection and no pooled pipe left to trim (the pool
		// closes free pipes after a second or two, which wakes the loop).
		settle(t, p)
		// The loop blocks in one epoll wait; strace's attaching restarts
		// the waits in progress (the loop's and the Go runtime's own
		// poller's, seen: 3-4 in all). A loop that kept waking (its 5 ms
		// hot wait, say) would show hundreds.
		idleWaits(t, strace, pid)
	})
	t.Run("idle after --busy-poll", func(t *testing.T) {
		// The busy poll spins on epoll_wait after traffic; once the
		// traffic has stopped, the loop sleeps as without it.
		fd, addr := inheritTCP(t, "web")
		p := start(t, binary, launch{args: []string{"--busy-poll=1ms", backend}, fds: []inherited{fd}})
		c := dial(t, "tcp", addr)
		for range 100 {
			mustEcho(t, c, 100)
		}
		c.Close()
		settle(t, p)
		idleWaits(t, strace, p.cmd.Process.Pid)
	})
}

// idleWaits checks that pid's loop stays asleep for 2s, under strace.
func idleWaits(t *testing.T, strace string, pid int) {
	t.Helper()
	calls := straceCount(t, strace, pid, "epoll_wait,epoll_pwait", func() { time.Sleep(2 * time.Second) })
	if n := calls["epoll_wait"] + calls["epoll_pwait"]; n > 8 {
		t.Errorf("%d epoll waits in 2s of idleness, want at most 8", n)
	}
}

// straceCount attaches strace -f -c to pid for the given syscalls while
// during runs, and returns the calls counted per syscall.
func straceCount(t *testing.T, strace string, pid int, syscalls string, during func()) map[string]int {
	t.Helper()
	out := filepath.Join(shortDir(t), "strace.out")
	tracer := &lockedBuffer{}
	st, err := testlaunch.Start(testlaunch.Spec{
		Path: strace, Args: []string{"-f", "-c", "-o", out, "-e", "trace=" + syscalls, "-p", strconv.Itoa(pid)},
		Stdout: tracer, Stderr: tracer,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if !st.Exited() {
			st.Kill()
		}
	}()
	// strace says "attached" once per thread of the process.
	if err := poll(10*time.Second, func() bool { return strings.Contains(tracer.String(), "attached") || st.Exited() },
		func() string { return "strace did not attach: " + tracer.String() }); err != nil {
		t.Fatal(err)
	}
	if st.Exited() {
		t.Fatalf("strace exited: %s", tracer.String())
	}
	during()
	_ = st.Signal(syscall.SIGINT) // detach and write the summary
	select {
	case <-st.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("strace did not detach within 10s")
	}
	summary, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("strace summary: %v; %s", err, tracer.String())
	}
	t.Logf("strace -c -e trace=%s:\n%s", syscalls, summary)
	// "% time  seconds  usecs/call  calls  [errors]  syscall"
	calls := map[string]int{}
	row := regexp.MustCompile(`^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?([a-z_0-9]+)$`)
	for _, line := range strings.Split(string(summary), "\n") {
		if m := row.FindStringSubmatch(line); m != nil && m[2] != "total" {
			calls[m[2]], _ = strconv.Atoi(m[1])
		}
	}
	return calls
}
