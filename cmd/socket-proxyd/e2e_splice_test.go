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

// TestSpliceUnderStrace proves, from outside, that bulk bytes move by
// splice (docs/ENGINE.md, STYLE.md "prove splice is used"): strace attached
// to the running proxy counts its splice calls during a 32 MiB echo.
func TestSpliceUnderStrace(t *testing.T) {
	t.Parallel()
	strace := testutil.RequireTool(t, "strace", "strace")
	_, backend := echoTCP(t, "127.0.0.1:0")
	fd, addr := inheritTCP(t, "web")
	p := start(t, binary, launch{args: []string{backend}, fds: []inherited{fd}})
	mustEcho(t, dial(t, "tcp", addr), 1000) // it is up
	dir := shortDir(t)
	out := filepath.Join(dir, "strace.out")
	tracer := &lockedBuffer{}
	st, err := testlaunch.Start(testlaunch.Spec{
		Path: strace, Args: []string{"-f", "-c", "-o", out, "-e", "trace=splice", "-p", strconv.Itoa(p.cmd.Process.Pid)},
		Stdout: tracer, Stderr: tracer,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !st.Exited() {
			st.Kill()
		}
	})
	if err := poll(10*time.Second, func() bool { return strings.Contains(tracer.String(), "attached") || st.Exited() },
		func() string { return "strace did not attach: " + tracer.String() }); err != nil {
		t.Fatal(err)
	}
	if st.Exited() {
		t.Fatalf("strace exited: %s", tracer.String())
	}
	mustEcho(t, dial(t, "tcp", addr), 32*mib)
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
	// "% time  seconds  usecs/call  calls  errors syscall": the calls
	// column of the splice row.
	m := regexp.MustCompile(`(?m)^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?splice$`).FindSubmatch(summary)
	if m == nil {
		t.Fatalf("no splice call during a 32 MiB echo; strace -c says:\n%s", summary)
	}
	calls, _ := strconv.Atoi(string(m[1]))
	t.Logf("%d splice calls for a 32 MiB echo:\n%s", calls, summary)
	// 64 MiB moved (both ways) in pipes of at most 256 KiB: at least 256
	// splices, counting only the writes out of the pipes.
	if calls < 256 {
		t.Errorf("%d splice calls for 64 MiB forwarded, want at least 256", calls)
	}
}
