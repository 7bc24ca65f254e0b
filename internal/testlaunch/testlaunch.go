// SPDX-License-Identifier: Apache-2.0

// Package testlaunch starts socket-proxyd the way systemd starts a
// socket-activated service, for the end-to-end tests and the measuring tools
// (cmd/proxybench, cmd/proxysoak): the listening sockets as fds 3, 4, ...,
// LISTEN_FDS, LISTEN_FDNAMES, and a LISTEN_PID that is the program's own pid.
//
// Every child it starts gets a parent-death signal (SIGKILL), so no proxy
// outlives the test binary or tool that started it, even one killed by
// go test -timeout; and one goroutine waits for each child, so none is left
// a zombie (PID 1 does not reap in the containers the tests run in).
package testlaunch

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Socket is one listening socket passed to the child as fd 3+i.
type Socket struct {
	File *os.File
	// Name is its LISTEN_FDNAMES entry; "" is "unknown", as systemd says.
	Name string
}

// Spec says how to start a program.
type Spec struct {
	Path string
	Args []string
	// Prefix runs before Path, e.g. {"taskset", "-c", "0"}; the programs
	// in it must exec the next one, so that LISTEN_PID stays right.
	Prefix []string
	// Env is the child's environment; nil means CleanEnv(). Extra is added
	// to it.
	Env, Extra []string
	Sockets    []Socket
	// Files follow the sockets (fd 3+len(Sockets) on), with nothing in
	// the environment about them: a handoff record, say.
	Files []*os.File
	// ListenPID, when not empty, is LISTEN_PID verbatim instead of the
	// child's own pid (to test a mismatch).
	ListenPID string
	// ListenFDs and ListenFDNames, when not empty, are LISTEN_FDS and
	// LISTEN_FDNAMES verbatim instead of what Sockets implies (to test
	// garbage); ListenFDs also sets LISTEN_PID when no socket is passed.
	ListenFDs, ListenFDNames string
	// NoNames leaves LISTEN_FDNAMES unset, as systemd before 227 does.
	NoNames bool
	// SoftNOFILE, when not zero, is the child's soft RLIMIT_NOFILE, like
	// systemd's default LimitNOFILE=1024:524288.
	SoftNOFILE int
	// Stdout and Stderr receive the child's output; nil discards it.
	Stdout, Stderr io.Writer
	Dir            string
	// Group puts the child in a process group of its own, which Kill and
	// Stop then signal whole (socat's children, a shell's).
	Group bool
}

// Proc is a started child.
type Proc struct {
	Cmd   *exec.Cmd
	Pid   int
	group bool
	done  chan struct{} // closed once Wait has returned
	err   error         // Wait's error, once done is closed
}

// CleanEnv is this process's environment without anything that would make
// the child think it runs under systemd or change its behaviour behind the
// caller's back.
func CleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "LISTEN_"), strings.HasPrefix(k, "WATCHDOG_"),
			k == "NOTIFY_SOCKET", k == "JOURNAL_STREAM", k == "SYSTEMD_LOG_LEVEL",
			k == "SYSTEMD_LOG_TARGET":
			continue
		}
		env = append(env, kv)
	}
	return env
}

// Start starts the program described by s. With sockets (or ListenFDs) and
// no ListenPID it runs through a /bin/sh shim that sets LISTEN_PID=$$ and
// execs the program, so LISTEN_PID is the program's own pid, as systemd
// sets it between fork and exec.
func Start(s Spec) (*Proc, error) {
	env := s.Env
	if env == nil {
		env = CleanEnv()
	}
	env = append(append([]string(nil), env...), s.Extra...)
	var pre, assign string
	if s.SoftNOFILE != 0 {
		pre = fmt.Sprintf("ulimit -Sn %d && ", s.SoftNOFILE)
	}
	if len(s.Sockets) > 0 || s.ListenFDs != "" {
		names := make([]string, len(s.Sockets))
		for i, sock := range s.Sockets {
			names[i] = sock.Name
			if names[i] == "" {
				names[i] = "unknown"
			}
		}
		count, joined := strconv.Itoa(len(s.Sockets)), strings.Join(names, ":")
		if s.ListenFDs != "" {
			count = s.ListenFDs
		}
		if s.ListenFDNames != "" {
			joined = s.ListenFDNames
		}
		env = append(env, "LISTEN_FDS="+count)
		if !s.NoNames {
			env = append(env, "LISTEN_FDNAMES="+joined)
		}
		if s.ListenPID != "" {
			env = append(env, "LISTEN_PID="+s.ListenPID)
		} else {
			assign = "LISTEN_PID=$$ "
		}
	}
	argv := append(append([]string(nil), s.Prefix...), s.Path)
	argv = append(argv, s.Args...)
	if pre != "" || assign != "" {
		// sh runs "exec PROGRAM ARGS..." ($0 and $@) after setting the
		// limit, prefixed with LISTEN_PID=$$, the pid that exec keeps.
		argv = append([]string{"/bin/sh", "-c", pre + assign + `exec "$0" "$@"`}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Dir = s.Dir
	cmd.Stdout, cmd.Stderr = s.Stdout, s.Stderr
	for _, sock := range s.Sockets {
		cmd.ExtraFiles = append(cmd.ExtraFiles, sock.File)
	}
	cmd.ExtraFiles = append(cmd.ExtraFiles, s.Files...)
	// Pdeathsig is sent when the thread that forked the child ends; Go
	// ends a thread only when a goroutine locked to it exits, which the
	// callers do not do, so in practice it fires when the process ends.
	// It survives exec (of anything but a set-uid program), so it reaches
	// the program through the shim, prlimit, setpriv and taskset, and
	// through systemd-socket-activate, which execs the program in place.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: s.Group}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", s.Path, err)
	}
	p := &Proc{Cmd: cmd, Pid: cmd.Process.Pid, group: s.Group, done: make(chan struct{})}
	go p.wait()
	return p, nil
}

// wait is the one goroutine that waits for the child.
func (p *Proc) wait() {
	p.err = p.Cmd.Wait()
	close(p.done)
}

// Done is closed once the child has exited and been waited for.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the child has exited and been waited for.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err is Wait's error (nil for exit status 0); only after Done.
func (p *Proc) Err() error { return p.err }

// State is the child's exit state; only after Done.
func (p *Proc) State() *os.ProcessState { return p.Cmd.ProcessState }

// Signal sends sig to the child, or to its process group with Group.
func (p *Proc) Signal(sig syscall.Signal) error {
	if p.Exited() {
		return os.ErrProcessDone
	}
	pid := p.Pid
	if p.group {
		pid = -pid
	}
	return syscall.Kill(pid, sig)
}

// Kill sends SIGKILL and waits for the child.
func (p *Proc) Kill() {
	_ = p.Signal(syscall.SIGKILL)
	<-p.done
}

// Stop sends SIGTERM, then SIGKILL if the child is still there after grace,
// and waits for it. It reports an error if the child had already exited
// (a proxy that should have been running) or needed the SIGKILL.
func (p *Proc) Stop(grace time.Duration) error {
	if p.Exited() {
		return fmt.Errorf("pid %d exited before it was stopped: %v", p.Pid, p.err)
	}
	_ = p.Signal(syscall.SIGTERM)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.done:
		return nil
	case <-timer.C:
	}
	p.Kill()
	return errors.New("ignored SIGTERM for " + grace.String() + "; killed")
}
