// SPDX-License-Identifier: Apache-2.0

package testlaunch

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestListenEnvironment: the program sees LISTEN_PID equal to its own pid,
// LISTEN_FDS and LISTEN_FDNAMES, and the socket as fd 3.
func TestListenEnvironment(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out bytes.Buffer
	p, err := Start(Spec{
		Path:    "/bin/sh",
		Args:    []string{"-c", `echo "$LISTEN_PID $$ $LISTEN_FDS $LISTEN_FDNAMES $(readlink /proc/self/fd/3 | cut -c1-7)"`},
		Sockets: []Socket{{File: f, Name: "web"}},
		Stdout:  &out,
	})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	case <-time.After(10 * time.Second):
		p.Kill()
		t.Fatal("the child did not exit")
	}
	fields := strings.Fields(out.String())
	if len(fields) != 5 || fields[0] != fields[1] || fields[0] != strconv.Itoa(p.Pid) || fields[2] != "1" || fields[3] != "web" || fields[4] != "socket:" {
		t.Fatalf("child printed %q (pid %d); want LISTEN_PID = its pid, 1, web, a socket as fd 3", out.String(), p.Pid)
	}
}

// TestChildDiesWithParent: a parent (this test binary re-executed) starts a
// long sleep through Start and is SIGKILLed; the sleep must die with it.
func TestChildDiesWithParent(t *testing.T) {
	if os.Getenv("TESTLAUNCH_PARENT") == "1" {
		p, err := Start(Spec{Path: "/bin/sleep", Args: []string{"300"}})
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		fmt.Println(p.Pid)
		time.Sleep(time.Minute) // killed by the test long before
		os.Exit(1)
	}
	var out bytes.Buffer
	parent, err := Start(Spec{
		Path:   os.Args[0],
		Args:   []string{"-test.run=^TestChildDiesWithParent$"},
		Extra:  []string{"TESTLAUNCH_PARENT=1"},
		Stdout: &syncWriter{buf: &out},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer parent.Kill()
	var child int
	deadline := time.Now().Add(20 * time.Second)
	for child == 0 {
		if time.Now().After(deadline) || parent.Exited() {
			t.Fatalf("the parent never said its child's pid: %q", out.String())
		}
		time.Sleep(10 * time.Millisecond)
		child, _ = strconv.Atoi(strings.TrimSpace(readSync(&out)))
	}
	parent.Kill()
	// The child is the parent's, reaped by whoever reaps orphans here (or
	// nobody, when PID 1 does not reap): gone or a zombie both mean dead.
	deadline = time.Now().Add(10 * time.Second)
	for alive(child) {
		if time.Now().After(deadline) {
			syscall.Kill(child, syscall.SIGKILL)
			t.Fatalf("child %d still running 10s after its parent was killed", child)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// alive reports whether pid runs (exists and is not a zombie).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

var outMu = make(chan struct{}, 1)

type syncWriter struct{ buf *bytes.Buffer }

func (w *syncWriter) Write(p []byte) (int, error) {
	outMu <- struct{}{}
	defer func() { <-outMu }()
	return w.buf.Write(p)
}

func readSync(b *bytes.Buffer) string {
	outMu <- struct{}{}
	defer func() { <-outMu }()
	return b.String()
}

// TestStop: SIGTERM first; a child that ignores it is killed after grace.
func TestStop(t *testing.T) {
	p, err := Start(Spec{Path: "/bin/sh", Args: []string{"-c", `trap "" TERM; sleep 30 & wait; sleep 30`}, Group: true})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // let sh set its trap; Stop's result says if not
	if err := p.Stop(200 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("Stop of a child ignoring SIGTERM: %v, want killed", err)
	}
	q, err := Start(Spec{Path: "/bin/sleep", Args: []string{"30"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Stop(10 * time.Second); err != nil {
		t.Errorf("Stop of sleep: %v", err)
	}
	if err := q.Stop(time.Second); err == nil {
		t.Error("Stop of an exited child reported no error")
	}
}
