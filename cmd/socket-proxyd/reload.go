// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/handoff"
	"github.com/socket-proxyd/socket-proxyd/internal/metrics"
	"github.com/socket-proxyd/socket-proxyd/internal/notify"
)

// Reload in place: SIGHUP executes the binary again, with the
// same PID and every connection carried over.

// checkFlag runs the binary in its check mode: it says whether it reads
// handoff records of a version and understands the command line, and does
// nothing else. It is the first argument, so that no option parser (this
// build's or the next) sees it as an option of the proxy.
const checkFlag = "--check-handoff="

// byHand says the check mode was started from a terminal: a reload runs
// it with its input from /dev/null and its output into a pipe (every
// version has, so a newer binary still answers an older one's reload).
func byHand(in, out *os.File) bool {
	for _, f := range []*os.File{in, out} {
		if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err == nil {
			return true
		}
	}
	return false
}

// checkReply is what the check mode prints: a binary that is not a
// socket-proxyd (or a truncated one) cannot print it by chance.
const checkReply = "socket-proxyd reads handoff record version "

// checkTimeout bounds the check of the binary on disk; a variable so that
// tests can shorten it.
var checkTimeout = 10 * time.Second

// checkWaitDelay bounds the wait for the check's output once it has
// exited or been killed: a process it left behind may hold the pipe.
const checkWaitDelay = time.Second

// againVar, in the environment of the image a reload executes, says that
// another SIGHUP came during that reload: the new image reloads once more
// when it is up. It is read once at start-up and unset.
const againVar = "SOCKET_PROXYD_RELOAD_AGAIN"

// boundVar, in the environment of the image a reload executes, names the
// socket file at each path the proxy bound (its device and inode): the
// next image removes that file at exit, not another put at the path since.
// It is read once at start-up and unset.
const boundVar = "SOCKET_PROXYD_BOUND_FILES"

// boundValue is boundVar's value for listeners: DEV:INO:PATH-IN-HEX, comma
// separated (a path may hold any byte but NUL).
func boundValue(listeners []activation.Listener) string {
	var entries []string
	for _, l := range listeners {
		if id, ok := l.BoundFile(); ok {
			entries = append(entries, fmt.Sprintf("%d:%d:%x", id.Dev, id.Ino, l.Name))
		}
	}
	return strings.Join(entries, ",")
}

// carriedFiles reads boundVar's value; what it cannot read it leaves out
// (that path's file is then taken as found).
func carriedFiles(v string) map[string]activation.FileID {
	files := map[string]activation.FileID{}
	for _, e := range strings.Split(v, ",") {
		f := strings.SplitN(e, ":", 3)
		if len(f) != 3 {
			continue
		}
		dev, err1 := strconv.ParseUint(f[0], 10, 64)
		ino, err2 := strconv.ParseUint(f[1], 10, 64)
		path, err3 := hex.DecodeString(f[2])
		if err1 == nil && err2 == nil && err3 == nil {
			files[string(path)] = activation.FileID{Dev: dev, Ino: ino}
		}
	}
	return files
}

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

// reloader is SIGHUP, SIGTERM and SIGINT: one goroutine (watch) hears all
// three, so that a reload and a stop never cross, and the loop's goroutine
// executes the next image (exec).
//
// A SIGHUP that comes while a reload is under way (its check running, the
// loop stopping to hand over) is merged into one more reload once this one
// is over; if the exec comes first, the next image does it (againVar). From
// just before the exec until the next image has called signal.Notify,
// SIGHUP is ignored: the kernel keeps an ignored disposition across execve
// and the Go runtime respects an inherited SIG_IGN for SIGHUP, whereas a
// SIGHUP caught or blocked there kills the new image before any of its code
// runs (the runtime unblocks it in minit and its default action is to
// exit). A SIGHUP in that window is lost, never fatal. SIGTERM cannot be
// treated so (the runtime installs its own handler for it whatever it
// inherits, and a lost SIGTERM is a service that does not stop): one that
// comes in the window kills the process, and the loop armed a reset on
// every carried TCP connection beforehand, so that none ends as if whole.
type reloader struct {
	// exe is the file a reload executes: the running image's path,
	// read from /proc/self/exe at start-up (not argv[0], which the
	// caller chooses, nor PATH). Each reload opens it once, checks that
	// open file and executes the very same, so that what runs is what
	// was checked; a file an upgrade puts at the path later is what the
	// next reload runs.
	exe  string
	argv []string
	log  *slog.Logger
	// again says the image before asked for one more reload.
	again bool
	// bound is boundVar's value for this image's listeners.
	bound string
	// counts are the reloads done and failed, carried to the next image
	// (reloadsVar); nil: not counted.
	counts *metrics.Reloads

	hup, term chan os.Signal
	// handOver asks the loop to hand over at its next safe point
	// (proxy.Server.Reload); stop is the first SIGTERM or SIGINT, kill
	// the second.
	handOver   func()
	stop, kill func(os.Signal)

	hold chan chan held // exec asks watch for what came before the exec
	over chan error     // exec did not happen: the reload is over

	mu   sync.Mutex
	file *os.File // the checked file, while the loop hands over
}

// held is what watch answers exec: another reload is wanted, or a stop.
type held struct{ again, stopping bool }

func newReloader(exe string, argv []string, log *slog.Logger, again bool, hup, term chan os.Signal) *reloader {
	return &reloader{exe: exe, argv: argv, log: log, again: again, hup: hup, term: term,
		hold: make(chan chan held), over: make(chan error, 1)}
}

// selfExe is the path of the running image. After a package upgrade
// replaced the file, the kernel names the old inode "PATH (deleted)":
// the path is what the next reload runs.
func selfExe() string {
	if p, err := os.Readlink("/proc/self/exe"); err == nil {
		return strings.TrimSuffix(p, " (deleted)")
	}
	exe, _ := os.Executable()
	return exe
}

// nameProcess gives a reloaded image the name of its file again: executed
// by /proc/self/fd/N, it is called "N" (what ps, top, pidof and killall
// read). The kernel keeps 15 bytes of it, as at any exec.
func nameProcess(exe string) {
	os.WriteFile(fmt.Sprintf("/proc/self/task/%d/comm", os.Getpid()), []byte(filepath.Base(exe)), 0)
}

// check runs the open file exe in its check mode, as a child, with the
// same command line: a file that is missing, broken, too old for this
// record version or no longer takes these options fails here, before
// anything is stopped. The child runs in a process group of its own, which
// is killed whole at the deadline (or when ctx ends: a SIGTERM), and the
// wait for its output is bounded too: a hung binary, or one that leaves a
// process holding its output, costs checkTimeout and checkWaitDelay at
// most. It inherits exe as descriptor 3 and nothing else: every other
// descriptor is close-on-exec, and no check runs while the loop executes.
func (r *reloader) check(ctx context.Context, exe *os.File) error {
	for attempt := 1; ; attempt++ {
		hup, err := r.checkOnce(ctx, exe)
		// "systemctl kill -s HUP" signals every process of the unit,
		// the check too, which dies of it if it comes before its own
		// signal.Notify: the signal asked for a reload, not against it.
		if !hup || attempt == 3 {
			return err
		}
	}
}

// checkOnce is one run of the check; hup says it died of a SIGHUP.
func (r *reloader) checkOnce(ctx context.Context, exe *os.File) (hup bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	// /proc/self/fd/3 in the child is exe; it works for a script too,
	// whose interpreter opens that path.
	cmd := exec.CommandContext(ctx, "/proc/self/fd/3", append([]string{checkFlag + strconv.Itoa(handoff.Version)}, r.argv[1:]...)...)
	cmd.Args[0] = r.exe
	cmd.ExtraFiles = []*os.File{exe}
	cmd.Env = withoutVars(os.Environ(), "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", handoff.EnvVar, againVar, boundVar)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = checkWaitDelay
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	if cmd.Process != nil {
		// Whatever the check left behind in its group goes too.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	want := checkReply + strconv.Itoa(handoff.Version) + "\n"
	if err == nil && stdout.String() == want {
		return false, nil
	}
	if cmd.ProcessState != nil && ctx.Err() == nil {
		ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
		hup = ok && ws.Signaled() && ws.Signal() == syscall.SIGHUP
	}
	var why string
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		why = fmt.Sprintf("it did not answer within %v, and was killed", checkTimeout)
	case ctx.Err() != nil:
		why = "the check was cut short: stopping"
	case strings.TrimSpace(stderr.String()) != "":
		why = strings.TrimSpace(stderr.String())
	case errors.Is(err, exec.ErrWaitDelay):
		why = "it left a process behind that held its output"
	case err != nil:
		why = withLimitHint(err).Error()
	default:
		why = fmt.Sprintf("it is not a socket-proxyd that reads this build's handoff record: asked, it answered %q", truncate(stdout.String(), 80))
	}
	return hup, fmt.Errorf("%q cannot take over: %s", r.exe, truncate(why, 400))
}

// withLimitHint says which limit to raise when a reload failed for want of
// a descriptor: the reload needs a few (the binary, its check's pipes, the
// handoff record), and a proxy at its open-files limit has none to spare.
func withLimitHint(err error) error {
	if errors.Is(err, syscall.EMFILE) {
		return fmt.Errorf("%w: the proxy is at its open-files limit: raise LimitNOFILE= or lower --connections-max", err)
	}
	return err
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

// exec is proxy.Config.Reload, on the loop's goroutine: it does not return
// when the exec works. When it fails the loop goes on, and READY=1 tells
// systemd the reload is over.
func (r *reloader) exec(rec []byte, fds []int) error {
	if rec == nil {
		notify.Ready() // the engine could not write the record
		r.failed()
		r.over <- nil
		return nil
	}
	// From here on a SIGHUP is ignored, and a SIGTERM or SIGINT takes its
	// default action; Stop waits for one already caught to be in its
	// channel, so watch sees every one that came before.
	signal.Ignore(syscall.SIGHUP)
	signal.Stop(r.term)
	reply := make(chan held, 1)
	r.hold <- reply
	h := <-reply
	var err error
	if h.stopping {
		err = errors.New("a SIGTERM came first: stopping instead")
	} else {
		env := os.Environ()
		if h.again {
			env = append(env, againVar+"=1")
		}
		if r.counts != nil {
			env = append(withoutVars(env, reloadsVar), reloadsVar+"="+reloadsValue(r.counts))
		}
		if r.bound != "" {
			env = append(withoutVars(env, boundVar), boundVar+"="+r.bound)
		}
		r.mu.Lock()
		exe := r.file
		r.mu.Unlock()
		err = withLimitHint(handoff.Exec(exe, r.argv, env, rec, fds))
		r.failed()
	}
	signal.Notify(r.hup, syscall.SIGHUP)
	signal.Notify(r.term, syscall.SIGTERM, syscall.SIGINT)
	notify.Ready()
	r.over <- err
	return err
}

// failed counts a reload that did not happen, the proxy serving on.
func (r *reloader) failed() {
	if r.counts != nil {
		r.counts.Failed.Add(1)
	}
}

// checked is the end of a check.
type checked struct {
	file *os.File
	err  error
}

// watch hears the signals until alive ends, and runs each reload: the
// check (on a goroutine of its own, which watch waits for), then the
// handover by the loop, which ends in exec. It never blocks but in its
// select, so that exec always has its answer.
func (r *reloader) watch(alive context.Context) {
	var (
		cancelCheck context.CancelFunc // a check runs
		done        = make(chan checked, 1)
		handing     bool // the loop was asked to hand over
		pending     bool // a SIGHUP came during this reload
		stopping    bool
		terms       int
	)
	start := func() {
		f, err := os.Open(r.exe)
		if err != nil {
			r.failed()
			r.log.Error("cannot reload, going on serving", "error", fmt.Sprintf("%q cannot take over: %v", r.exe, withLimitHint(err)))
			return
		}
		ctx, cancel := context.WithCancel(alive)
		cancelCheck = cancel
		go func() { done <- checked{f, r.check(ctx, f)} }()
	}
	request := func() {
		switch {
		case stopping:
			r.log.Info("not reloading: stopping")
		case cancelCheck != nil || handing:
			if !pending {
				r.log.Info("reload requested during a reload: reloading again once it is done")
			}
			pending = true
		default:
			start()
		}
	}
	terminate := func(sig os.Signal) {
		terms++
		if terms > 1 {
			r.kill(sig)
			return
		}
		stopping = true
		if cancelCheck != nil {
			cancelCheck()
		}
		r.stop(sig)
	}
	again := func() {
		if pending && !stopping {
			pending = false
			start()
		}
	}
	if r.again {
		r.log.Info("reloading again: a reload was requested during the last one")
		start()
	}
	for {
		select {
		case <-r.hup:
			request()
		case sig := <-r.term:
			terminate(sig)
		case c := <-done:
			cancelCheck()
			cancelCheck = nil
			switch {
			case stopping:
				c.file.Close()
				r.log.Info("not reloading: stopping")
			case c.err != nil:
				c.file.Close()
				r.failed()
				r.log.Error("cannot reload, going on serving", "error", c.err.Error())
				again()
			default:
				r.mu.Lock()
				r.file = c.file
				r.mu.Unlock()
				handing = true
				notify.Reloading()
				r.log.Info("reloading", "executable", r.exe)
				r.handOver()
			}
		case <-r.over:
			handing = false
			r.mu.Lock()
			if r.file != nil {
				r.file.Close()
				r.file = nil
			}
			r.mu.Unlock()
			again()
		case reply := <-r.hold:
			// Nothing more comes in either channel until exec
			// restores them: what is there came before.
			for drained := false; !drained; {
				select {
				case <-r.hup:
					request()
				case sig := <-r.term:
					terminate(sig)
				default:
					drained = true
				}
			}
			reply <- held{again: pending, stopping: stopping}
		case <-alive.Done():
			if cancelCheck != nil {
				cancelCheck()
				c := <-done
				c.file.Close()
			}
			return
		}
	}
}

// resume reads the record a reload carried: the listeners it names (each
// checked as a listening stream socket), and the record for the engine.
// A record that cannot be read resets every descriptor that came with it:
// nothing is forwarded that the record does not vouch for.
func resume(value string, files map[string]activation.FileID) (*handoff.Record, []activation.Listener, error) {
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
	listeners, err := carriedListeners(rec, true, files)
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
func carriedListeners(rec *handoff.Record, all bool, files map[string]activation.FileID) ([]activation.Listener, error) {
	var listeners []activation.Listener
	for _, l := range rec.Listeners {
		var ln activation.Listener
		var err error
		switch {
		case l.FD >= 0:
			ln, err = activation.FromFD(l.FD, l.Name, l.Bound, files[l.Name])
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
