// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/handoff"
	"github.com/socket-proxyd/socket-proxyd/internal/notify"
)

// Reload in place (issue 10): SIGHUP executes the binary again, with the
// same PID and every connection carried over.

// checkFlag runs the binary in its check mode: it says whether it reads
// handoff records of a version and understands the command line, and does
// nothing else. It is the first argument, so that no option parser (this
// build's or the next) sees it as an option of the proxy.
const checkFlag = "--check-handoff="

// checkReply is what the check mode prints: a binary that is not a
// socket-proxyd (or a truncated one) cannot print it by chance.
const checkReply = "socket-proxyd reads handoff record version "

// checkTimeout bounds the check of the binary on disk.
const checkTimeout = 10 * time.Second

// checkMode answers the check before a reload: exit 0 and checkReply when
// this build reads record version want and takes the command line.
func checkMode(want string, args []string, stdout, stderr io.Writer) int {
	v, err := strconv.Atoi(want)
	if err != nil || v < 1 || v > handoff.Version {
		fmt.Fprintf(stderr, "socket-proxyd: cannot read handoff record version %q: this build reads 1 to %d\n", want, handoff.Version)
		return 1
	}
	if _, err := parseOptions(args); err != nil {
		fmt.Fprintf(stderr, "socket-proxyd: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s%d\n", checkReply, v)
	return 0
}

// reloader executes the next image.
type reloader struct {
	// exe is the binary to execute: the path the proxy was started from,
	// taken at start-up. /proc/self/exe would name the old inode after a
	// package upgrade replaced the file, and the upgrade would not take.
	exe  string
	argv []string
	log  *slog.Logger
	// stopping says a SIGTERM came meanwhile: the stop goes first, as the
	// next image would never hear of it.
	stopping func() bool
}

// executable is the path argv0 was started from: as given when it has a
// slash (systemd gives ExecStart='s absolute path), else looked up in PATH
// as the shell did; os.Executable when neither works.
func executable(argv0 string) string {
	path := argv0
	if !strings.Contains(path, "/") {
		if p, err := exec.LookPath(path); err == nil {
			path = p
		}
	}
	if abs, err := filepath.Abs(path); err == nil && strings.Contains(path, "/") {
		return abs
	}
	exe, _ := os.Executable()
	return exe
}

// check runs the binary on disk in its check mode, as a child, with the
// same command line: a file that is missing, broken, too old for this
// record version or no longer takes these options fails here, before
// anything is stopped.
func (r *reloader) check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, r.exe, append([]string{checkFlag + strconv.Itoa(handoff.Version)}, r.argv[1:]...)...)
	cmd.Env = withoutVars(os.Environ(), "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", handoff.EnvVar)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	want := checkReply + strconv.Itoa(handoff.Version) + "\n"
	if err != nil || stdout.String() != want {
		why := strings.TrimSpace(stderr.String())
		if why == "" && err != nil {
			why = err.Error()
		} else if why == "" {
			why = fmt.Sprintf("it answered %q to %s", truncate(stdout.String(), 80), checkFlag)
		}
		return fmt.Errorf("%q cannot take over: %s", r.exe, truncate(why, 400))
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

func withoutVars(env []string, names ...string) []string {
	out := env[:0:0]
next:
	for _, kv := range env {
		for _, n := range names {
			if strings.HasPrefix(kv, n+"=") {
				continue next
			}
		}
		out = append(out, kv)
	}
	return out
}

// exec is proxy.Config.Reload: it does not return when the exec works.
// When it fails the loop goes on, and READY=1 tells systemd the reload is
// over.
func (r *reloader) exec(rec []byte, fds []int) error {
	if rec == nil {
		notify.Ready() // the engine could not write the record
		return nil
	}
	if r.stopping() {
		return errors.New("a SIGTERM came first: stopping instead")
	}
	err := handoff.Exec(r.exe, r.argv, os.Environ(), rec, fds)
	notify.Ready()
	return err
}

// watch reloads at each SIGHUP until alive ends. One that comes while
// stopping is ignored: systemd would wait for a READY=1 that never comes.
func (r *reloader) watch(alive context.Context, hup <-chan os.Signal, stop func()) {
	for {
		select {
		case <-hup:
			if r.stopping() {
				r.log.Info("not reloading: stopping")
				continue
			}
			r.reload(alive, stop)
		case <-alive.Done():
			return
		}
	}
}

// reload is SIGHUP: check the binary, then have the loop stop at its next
// safe point and execute it. A binary that fails the check changes
// nothing: one error, and the proxy goes on serving.
func (r *reloader) reload(ctx context.Context, stop func()) bool {
	if err := r.check(ctx); err != nil {
		r.log.Error("cannot reload, going on serving", "error", err.Error())
		return false
	}
	notify.Reloading()
	r.log.Info("reloading", "executable", r.exe)
	stop()
	return true
}

// resume reads the record a reload carried: the listeners it names (each
// checked as a listening stream socket), and the record for the engine.
// A record that cannot be read resets every descriptor that came with it:
// nothing is forwarded that the record does not vouch for.
func resume(value string) (*handoff.Record, []activation.Listener, error) {
	b, resolve, err := handoff.Inherited(value)
	var rec *handoff.Record
	var unused []int
	if err == nil {
		rec, unused, err = handoff.Decode(b, resolve)
	}
	if err != nil {
		handoff.Reset(handoff.Leftovers())
		return nil, nil, fmt.Errorf("cannot resume after a reload, the carried connections were reset: %v", err)
	}
	handoff.Reset(unused)
	handoff.CloseOnExec()
	listeners, err := carriedListeners(rec, true)
	if err != nil {
		for _, c := range rec.Conns {
			handoff.Reset([]int{c.FD[0], c.FD[1], c.Dir[0].Pipe[0], c.Dir[0].Pipe[1], c.Dir[1].Pipe[0], c.Dir[1].Pipe[1]})
		}
		return nil, nil, fmt.Errorf("cannot resume after a reload, the carried connections were reset: %v", err)
	}
	return rec, listeners, nil
}

// carriedListeners adopts the listeners a record carried. One a socket
// unit passed is not in the fd store (systemd passes it again, by name):
// all says every listener must have come.
func carriedListeners(rec *handoff.Record, all bool) ([]activation.Listener, error) {
	var listeners []activation.Listener
	for _, l := range rec.Listeners {
		var ln activation.Listener
		var err error
		switch {
		case l.FD >= 0:
			ln, err = activation.FromFD(l.FD, l.Name, l.Bound)
		case l.Bound:
			ln, err = activation.Listen(l.Name)
		case all:
			err = fmt.Errorf("listener %q was not carried over", l.Name)
		default:
			continue
		}
		if err != nil {
			activation.Close(listeners)
			return nil, err
		}
		listeners = append(listeners, ln)
	}
	return listeners, nil
}
