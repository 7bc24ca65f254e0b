// SPDX-License-Identifier: Apache-2.0

package main_test

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/testutil"
)

// What a reload must survive: SIGHUPs in bursts, a check that hangs, a file
// swapped between the check and the exec, a name in argv[0] that is not
// the program's, and a death in the exec window.

// TestReloadBursts: bursts of SIGHUPs at random gaps of 0 to 50 ms (two
// `systemctl reload` in a row), aimed at the moment a reload executes the
// next image, with 8 transfers both ways under way. The
// proxy is never killed: every transfer ends whole (SHA-256 and length of
// each way), the process stays the same, every reload requested ends in one
// done, and no check child is left behind, zombie or not. The seed is
// printed; SPX_BURST_SEED=N replays a run.
func TestReloadBursts(t *testing.T) {
	t.Parallel()
	seed := uint64(time.Now().UnixNano())
	if s, err := strconv.ParseUint(os.Getenv("SPX_BURST_SEED"), 10, 64); err == nil {
		seed = s
	}
	t.Logf("seed %d (SPX_BURST_SEED=%d replays it)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0))

	bl := listenTCP(t, "127.0.0.1:0")
	serve(t, bl, slowEcho)
	fd, addr := inheritTCP(t, "web")
	p := start(t, binary, launch{args: []string{bl.Addr().String()}, fds: []inherited{fd}})
	pid := p.cmd.Process.Pid
	stop, errs := startStreams(addr, 8)
	time.Sleep(200 * time.Millisecond) // the streams under way
	const bursts = 6
	for b := range bursts {
		// The first SIGHUP starts a reload; the others come at random
		// gaps from the moment its check passed, when the loop stops,
		// executes and the next image starts up: the window where one
		// used to kill the proxy.
		n := 2 + rng.IntN(3)
		reloads := strings.Count(p.stderr.String(), "info reloading executable=")
		hup := func() {
			if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
				t.Fatalf("burst %d: the proxy is gone: %v\n%s", b+1, err, p.stderr.String())
			}
		}
		hup()
		if err := poll(30*time.Second, func() bool {
			return strings.Count(p.stderr.String(), "info reloading executable=") > reloads || p.exited()
		}, func() string { return "the check did not pass:\n" + p.stderr.String() }); err != nil {
			t.Fatal(err)
		}
		var gaps []string
		for range n - 1 {
			gap := time.Duration(rng.IntN(51)) * time.Millisecond
			gaps = append(gaps, gap.String())
			time.Sleep(gap)
			hup()
		}
		t.Logf("burst %d: %d SIGHUPs, gaps after the check %v", b+1, n, gaps)
		if err := reloadsOver(p, 30*time.Second); err != nil {
			t.Fatalf("burst %d: %v", b+1, err)
		}
	}
	endStreams(t, stop, errs)
	if p.exited() || p.cmd.Process.Pid != pid {
		t.Fatalf("the proxy did not stay process %d:\n%s", pid, p.stderr.String())
	}
	if n := strings.Count(p.stderr.String(), "resumed connections"); n < bursts {
		t.Errorf("%d reloads for %d bursts:\n%s", n, bursts, p.stderr.String())
	}
	if err := stillServes(addr); err != nil {
		t.Error(err)
	}
}

// reloadsOver waits until every reload asked for is over and the proxy has
// no child left: as many "resumed connections" lines as "reloading" ones,
// no SIGHUP waiting to be merged, for 300 ms in a row. A check child the
// proxy did not reap stays a child (a zombie) for ever.
func reloadsOver(p *proc, d time.Duration) error {
	var since time.Time
	return poll(d, func() bool {
		s := p.stderr.String()
		started, resumed := strings.Count(s, "info reloading executable="), strings.Count(s, "resumed connections")
		if p.exited() || started != resumed || len(childrenOf(p.cmd.Process.Pid)) > 0 {
			since = time.Time{}
			return p.exited()
		}
		if since.IsZero() {
			since = time.Now()
		}
		return time.Since(since) > 300*time.Millisecond
	}, func() string {
		return fmt.Sprintf("reloads not over within %v: children %v\n%s", d, childrenOf(p.cmd.Process.Pid), p.stderr.String())
	})
}

// childrenOf lists the children of pid, each with its state letter (Z: a
// zombie nobody reaped).
func childrenOf(pid int) []string {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []string
	for _, task := range tasks {
		b, _ := os.ReadFile(task)
		for _, c := range strings.Fields(string(b)) {
			out = append(out, c+":"+procState(c))
		}
	}
	return out
}

// procState is the state letter of /proc/PID/stat, "" when it is gone.
func procState(pid string) string {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return ""
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	state, _, _ := strings.Cut(rest, " ")
	return state
}

// TestReloadHungCheck: the file on disk is a script that hangs (a
// grandchild holds the check's output). The SIGHUP costs the check's 10 s
// deadline and then one error line naming the file and the reason; the
// whole process group is killed; the proxy serves all along. A SIGTERM
// during the next (hung) check cuts it short: the proxy ends within its
// --shutdown-timeout, with a connection open.
func TestReloadHungCheck(t *testing.T) {
	t.Parallel()
	exe := filepath.Join(shortDir(t), "socket-proxyd")
	copyBinary(t, exe)
	_, backend := echoTCP(t, "127.0.0.1:0")
	fd, addr := inheritTCP(t, "web")
	p := start(t, exe, launch{args: []string{"--shutdown-timeout=2s", backend}, fds: []inherited{fd}})
	c := dial(t, "tcp", addr)
	mustEcho(t, c, 100)
	gcFile := filepath.Join(shortDir(t), "grandchild")
	replaceFile(t, exe, "#!/bin/sh\nsleep 100 &\necho $! >"+gcFile+".new\nmv "+gcFile+".new "+gcFile+"\nsleep 100\n")

	sent := time.Now()
	p.signal(syscall.SIGHUP)
	const line = "cannot reload, going on serving"
	if err := p.waitStderr(line, 10*time.Second+5*time.Second); err != nil {
		t.Fatal(err)
	}
	took := time.Since(sent)
	s := p.stderr.String()
	if strings.Count(s, line) != 1 || !strings.Contains(s, exe) || !strings.Contains(s, "did not answer within 10s") {
		t.Errorf("want one line naming %q and the deadline:\n%s", exe, s)
	}
	if took < 10*time.Second {
		t.Errorf("the check gave up after %v, before its deadline", took.Round(time.Millisecond))
	}
	gc, err := os.ReadFile(gcFile)
	if err != nil {
		t.Fatal(err)
	}
	if st := procState(strings.TrimSpace(string(gc))); st != "" && st != "Z" {
		t.Errorf("the check's grandchild %s is still running (state %s)", strings.TrimSpace(string(gc)), st)
	}
	mustEcho(t, c, 100)
	if err := stillServes(addr); err != nil {
		t.Error(err)
	}

	os.Remove(gcFile)
	p.signal(syscall.SIGHUP)
	if err := poll(5*time.Second, func() bool { _, err := os.Stat(gcFile); return err == nil },
		func() string { return "the second check did not start:\n" + p.stderr.String() }); err != nil {
		t.Fatal(err)
	}
	p.signal(syscall.SIGTERM)
	if _, err := p.exitWithin(2*time.Second + 3*time.Second); err != nil {
		t.Fatalf("SIGTERM during a hung check: %v", err)
	}
	if n := strings.Count(p.stderr.String(), line); n != 1 {
		t.Errorf("%d error lines, want the first check's only:\n%s", n, p.stderr.String())
	}
}

// TestReloadRunsTheCheckedFile: the file at the path is replaced while it
// is being checked (here by the checked script itself). The reload runs
// the file that was checked, and the replacement is for the next reload.
func TestReloadRunsTheCheckedFile(t *testing.T) {
	t.Parallel()
	exe, p, c, addr := startFromCopy(t)
	next := filepath.Join(filepath.Dir(exe), "next")
	if err := os.WriteFile(next, []byte("#!/bin/sh\necho an unchecked file runs >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	replaceFile(t, exe, "#!/bin/sh\ncase \"$1\" in --check-handoff=*) mv "+next+" "+exe+"; exec "+binary+" \"$@\";; esac\n"+
		"echo the checked file runs >&2\nexec "+binary+" \"$@\"\n")
	reloadTo(t, p, 1)
	s := p.stderr.String()
	if !strings.Contains(s, "the checked file runs") || strings.Contains(s, "unchecked") {
		t.Errorf("the reload did not run the file it checked:\n%s", s)
	}
	if _, err := os.Stat(next); err == nil {
		t.Error("the check did not replace the file")
	}
	mustEcho(t, c, 100)
	if err := stillServes(addr); err != nil {
		t.Error(err)
	}
}

// TestReloadKeepsTheProgram: started under another name (exec -a, as
// systemd's ExecStart=@/usr/bin/socket-proxyd othername does), with a
// different program of that name first in PATH: a reload runs the same
// program as before, with the same argv[0], under the same process name.
func TestReloadKeepsTheProgram(t *testing.T) {
	t.Parallel()
	bash := testutil.RequireTool(t, "bash", "bash")
	dir := shortDir(t)
	if err := os.WriteFile(filepath.Join(dir, "socket-proxyd"), []byte("#!/bin/sh\necho the wrong program runs >&2\nexec "+binary+" \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, backend := echoTCP(t, "127.0.0.1:0")
	fd, addr := inheritTCP(t, "web")
	p := start(t, bash, launch{args: []string{"-c", `exec -a socket-proxyd "$0" "$@"`, binary, backend}, fds: []inherited{fd},
		env: []string{"PATH=" + dir + ":" + os.Getenv("PATH")}})
	c := dial(t, "tcp", addr)
	mustEcho(t, c, 100)
	reloadTo(t, p, 1)
	if strings.Contains(p.stderr.String(), "the wrong program runs") {
		t.Errorf("the reload ran the program PATH names for argv[0]:\n%s", p.stderr.String())
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.cmd.Process.Pid))
	if argv0, _, _ := strings.Cut(string(cmdline), "\x00"); argv0 != "socket-proxyd" {
		t.Errorf("argv[0] after the reload is %q, want %q", argv0, "socket-proxyd")
	}
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p.cmd.Process.Pid)); strings.TrimSpace(string(comm)) != "socket-proxyd" {
		t.Errorf("the process is called %q after the reload, want %q", strings.TrimSpace(string(comm)), "socket-proxyd")
	}
	mustEcho(t, c, 100)
	if err := stillServes(addr); err != nil {
		t.Error(err)
	}
}

// TestReloadDeathResets: the process dies between the exec and the next
// image taking its connections over (here the executed file kills itself,
// as a SIGTERM in that window does). Each connection is reset: a peer never
// reads a clean end in place of the rest of its stream.
func TestReloadDeathResets(t *testing.T) {
	t.Parallel()
	exe, p, c, _ := startFromCopy(t)
	replaceFile(t, exe, "#!/bin/sh\ncase \"$1\" in --check-handoff=*) exec "+binary+" \"$@\";; esac\nkill -KILL $$\n")
	p.signal(syscall.SIGHUP)
	if _, err := p.exitWithin(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	k, err := c.Read(make([]byte, 10))
	switch {
	case errors.Is(err, syscall.ECONNRESET):
	case errors.Is(err, io.EOF):
		t.Errorf("the connection ended cleanly (EOF) when the process died: want a reset")
	default:
		t.Errorf("read %d bytes, %v; want a reset", k, err)
	}
}

// TestReloadSignalWhileStarting: a SIGHUP that comes after the exec, while
// the next image starts up (here a script that takes half a second before
// it executes the binary, so that the window is wide), does not kill it:
// SIGHUP stays ignored across the exec until the new image catches it.
// The connections go on, and a later SIGHUP reloads again.
func TestReloadSignalWhileStarting(t *testing.T) {
	t.Parallel()
	exe, p, c, addr := startFromCopy(t)
	replaceFile(t, exe, "#!/bin/sh\ncase \"$1\" in --check-handoff=*) exec "+binary+" \"$@\";; esac\n"+
		"echo the next image starts >&2\nsleep 0.5\nexec "+binary+" \"$@\"\n")
	p.signal(syscall.SIGHUP)
	if err := p.waitStderr("the next image starts", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	p.signal(syscall.SIGHUP)
	if err := p.waitStderr("resumed connections", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if p.exited() {
		t.Fatalf("a SIGHUP while the next image started killed it:\n%s", p.stderr.String())
	}
	mustEcho(t, c, 100)
	reloadTo(t, p, 2)
	mustEcho(t, c, 100)
	if err := stillServes(addr); err != nil {
		t.Error(err)
	}
}
