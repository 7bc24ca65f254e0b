// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/handoff"
)

// TestCheckKillsAHungBinary: a binary that never answers the check, and
// leaves a process behind that holds its output, costs the check's
// deadline and its wait delay at most; the whole process group is killed
// and the error names the file and the reason.
func TestCheckKillsAHungBinary(t *testing.T) {
	old := checkTimeout
	checkTimeout = 300 * time.Millisecond
	t.Cleanup(func() { checkTimeout = old })
	dir := t.TempDir()
	exe, gc := filepath.Join(dir, "hangs"), filepath.Join(dir, "grandchild")
	script := "#!/bin/sh\nsleep 100 &\necho $! >" + gc + "\nsleep 100\n"
	if err := os.WriteFile(exe, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := newReloader(exe, []string{exe, "127.0.0.1:9"}, slog.New(slog.DiscardHandler), false, nil, nil)
	began := time.Now()
	err = r.check(context.Background(), f)
	took := time.Since(began)
	if err == nil || !strings.Contains(err.Error(), exe) || !strings.Contains(err.Error(), "did not answer within 300ms") {
		t.Errorf("check: %v; want an error naming %q and the deadline", err, exe)
	}
	if took > checkTimeout+checkWaitDelay+2*time.Second {
		t.Errorf("the check took %v, past its deadline and wait delay", took.Round(time.Millisecond))
	}
	b, err := os.ReadFile(gc)
	if err != nil {
		t.Fatal(err)
	}
	// SIGKILL is sent to the group before check returns, but a process
	// that was running on the other core finishes dying a moment later:
	// it must be dead (a zombie, or reaped) within a bounded wait.
	pid := strings.TrimSpace(string(b))
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		st, err := os.ReadFile("/proc/" + pid + "/stat")
		if err != nil || strings.Contains(string(st), ") Z ") {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("the check's grandchild %s outlived it by 5s: %s", pid, st)
			break
		}
	}
}

// TestCheckAgainAfterASIGHUP: "systemctl kill -s HUP" signals the check
// too, which dies of it when it comes before its own signal.Notify; that
// signal asked for a reload, so the check runs again instead of failing
// the reload. A check that keeps failing otherwise still fails.
func TestCheckAgainAfterASIGHUP(t *testing.T) {
	dir := t.TempDir()
	exe, mark := filepath.Join(dir, "socket-proxyd"), filepath.Join(dir, "signalled")
	script := "#!/bin/sh\nif [ ! -e " + mark + " ]; then touch " + mark + "; kill -HUP $$; fi\n" +
		"echo '" + checkReply + strconv.Itoa(handoff.Version) + "'\n"
	if err := os.WriteFile(exe, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := newReloader(exe, []string{exe, "127.0.0.1:9"}, slog.New(slog.DiscardHandler), false, nil, nil)
	if err := r.check(context.Background(), f); err != nil {
		t.Fatalf("check after a SIGHUP that killed its first run: %v", err)
	}
	if _, err := os.Stat(mark); err != nil {
		t.Fatalf("the first run was not signalled: %v", err)
	}
}

// TestCarriedFilesReadWhatAnyPathBecomes: the socket files a reload passes
// on come back by path, whatever bytes the path holds, and a damaged entry
// is left out rather than misread.
func TestCarriedFilesReadWhatAnyPathBecomes(t *testing.T) {
	path := "/run/a,b:c d\n\x01.sock"
	v := fmt.Sprintf("1:2:%x,garbage,3:x:%x", path, "/other")
	got := carriedFiles(v)
	if len(got) != 1 || got[path] != (activation.FileID{Dev: 1, Ino: 2}) {
		t.Fatalf("carriedFiles(%q) = %v", v, got)
	}
}
