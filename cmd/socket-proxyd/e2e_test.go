// SPDX-License-Identifier: Apache-2.0

// Black-box end-to-end tests of the socket-proxyd binary.
//
// TestMain builds ./cmd/socket-proxyd into a temporary directory (with -race
// when the tests run with -race, so races in the program fail the tests too);
// SPX_BINARY=/path tests another binary instead, such as the original
// /lib/systemd/systemd-socket-proxyd. With SPX_COMPARE_ORIGINAL=1 every test
// that runs over impls() also runs against the original: where the original
// is right it must pass the same assertions, and where we deliberately differ
// (see checkDiffers) the original must still show the documented defect.
//
// The launcher passes listening sockets the way systemd does: as fds 3, 4, ...
// with LISTEN_FDS, LISTEN_FDNAMES and a LISTEN_PID equal to the pid of the
// process that runs the binary (an sh shim execs it, so $$ is that pid).
package main_test

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/testlaunch"
)

// originalBinary is systemd's own proxy, used for side-by-side runs.
const originalBinary = "/lib/systemd/systemd-socket-proxyd"

// binary is the program under test; set by TestMain.
var binary string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	// FuzzParseOptions shares this test binary but needs no built program;
	// its fuzz workers re-run TestMain, and a go build in each made them slow
	// enough to start that the fuzzer hit its deadline in CI.
	flag.Parse()
	if flagSet("test.fuzz") || flagSet("test.fuzzworker") {
		return m.Run()
	}
	if b := os.Getenv("SPX_BINARY"); b != "" {
		abs, err := filepath.Abs(b)
		if err != nil {
			fmt.Fprintf(os.Stderr, "e2e: SPX_BINARY %q: %v\n", b, err)
			return 1
		}
		binary = abs
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "spxbin")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "socket-proxyd")
	args := []string{"build", "-o", binary}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, ".")
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	out, err := exec.Command(gobin, args...).CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go %s: %v\n%s", strings.Join(args, " "), err, out)
		return 1
	}
	return m.Run()
}

// flagSet reports whether the testing flag name was given a value.
func flagSet(name string) bool {
	f := flag.Lookup(name)
	return f != nil && f.Value.String() != "" && f.Value.String() != "false"
}

// impl is one binary the tests run against.
type impl struct {
	name     string // sub-test name: "ours" or "original"
	path     string
	original bool
}

// impls lists the binaries to run a test over: ours, plus the original when
// SPX_COMPARE_ORIGINAL=1 and it is installed.
func impls() []impl {
	list := []impl{{name: "ours", path: binary}}
	if os.Getenv("SPX_COMPARE_ORIGINAL") == "1" {
		if _, err := os.Stat(originalBinary); err == nil {
			list = append(list, impl{name: "original", path: originalBinary, original: true})
		}
	}
	return list
}

// forEachImpl runs f as a parallel sub-test for each binary of impls(): a
// behaviour in which the original is right, so both must pass.
func forEachImpl(t *testing.T, f func(t *testing.T, im impl)) {
	t.Helper()
	for _, im := range impls() {
		t.Run(im.name, func(t *testing.T) {
			t.Parallel()
			f(t, im)
		})
	}
}

// checkDiffers runs check for each binary of impls() for a behaviour where we
// deliberately differ from the original (why names the systemd defect). Ours
// must pass; the original must still fail the check, which demonstrates the
// defect side by side. If the original starts passing, the documented
// difference is out of date and the test says so.
func checkDiffers(t *testing.T, why string, check func(t *testing.T, im impl) error) {
	t.Helper()
	for _, im := range impls() {
		t.Run(im.name, func(t *testing.T) {
			t.Parallel()
			err := check(t, im)
			switch {
			case !im.original && err != nil:
				t.Fatal(err)
			case im.original && err == nil:
				t.Errorf("the original passed, but it is documented to differ (%s): update the test and the docs", why)
			case im.original:
				t.Logf("the original differs as documented (%s): %v", why, err)
			}
		})
	}
}

// oursOnly skips behaviour the original does not have at all (messages,
// checks it never makes) when running against it.
func oursOnly(t *testing.T, im impl, what string) {
	t.Helper()
	if im.original {
		t.Skipf("the original does not do this: %s", what)
	}
}

// inherited is one socket passed to the child as fd 3+i.
type inherited struct {
	file *os.File
	name string // LISTEN_FDNAMES entry; "" means "unknown", as systemd does
}

// launch describes how to start the binary.
type launch struct {
	args []string
	fds  []inherited
	env  []string // extra environment, KEY=VALUE
	// listenPID, when not empty, is used verbatim as LISTEN_PID instead of
	// the child's own pid (to test a mismatch).
	listenPID string
	// noNames leaves LISTEN_FDNAMES unset, as older systemd versions do.
	noNames bool
	// listenFDs and listenFDNames, when not empty, are used verbatim as
	// LISTEN_FDS and LISTEN_FDNAMES instead of the values fds implies (to
	// test garbage); listenFDs also makes LISTEN_PID the child's own pid
	// when no fds are passed at all.
	listenFDs, listenFDNames string
	// softNOFILE, when not zero, starts the binary with this soft
	// RLIMIT_NOFILE, like systemd's default LimitNOFILE=1024:524288.
	softNOFILE int
	// extra files follow fds, with nothing in the environment about them.
	extra []*os.File
}

// proc is a running binary; Cleanup kills it (by pid) and waits for it.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	lp     *testlaunch.Proc
	stdout *lockedBuffer
	stderr *lockedBuffer
	start  time.Time
	done   <-chan struct{} // closed once the child has been waited for
	state  *os.ProcessState
}

// start launches bin as described by l, through internal/testlaunch: with
// inherited fds and no listenPID, LISTEN_PID is the binary's own pid, and
// the child dies with the test binary.
func start(t *testing.T, bin string, l launch) *proc {
	t.Helper()
	spec := testlaunch.Spec{
		Path: bin, Args: l.args, Extra: l.env,
		ListenPID: l.listenPID, ListenFDs: l.listenFDs, ListenFDNames: l.listenFDNames,
		NoNames: l.noNames, SoftNOFILE: l.softNOFILE,
	}
	for _, f := range l.fds {
		spec.Sockets = append(spec.Sockets, testlaunch.Socket{File: f.file, Name: f.name})
	}
	spec.Files = l.extra
	p := &proc{t: t, stdout: &lockedBuffer{}, stderr: &lockedBuffer{}}
	spec.Stdout, spec.Stderr = p.stdout, p.stderr
	p.start = time.Now()
	lp, err := testlaunch.Start(spec)
	if err != nil {
		t.Fatal(err)
	}
	p.lp, p.cmd, p.done = lp, lp.Cmd, lp.Done()
	t.Cleanup(func() {
		if !lp.Exited() {
			lp.Kill()
		}
		if t.Failed() {
			t.Logf("%s %q stderr:\n%s", filepath.Base(bin), l.args, p.stderr.String())
		}
	})
	return p
}

// run starts bin and waits for it to exit, returning exit code, stdout and stderr.
func run(t *testing.T, bin string, l launch) (int, string, string) {
	t.Helper()
	p := start(t, bin, l)
	code := p.waitExit(20 * time.Second)
	return code, p.stdout.String(), p.stderr.String()
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	if p.lp.Exited() {
		p.state = p.lp.State()
		return true
	}
	return false
}

// waitExit waits up to d for the process to exit and returns its exit code
// (-1 for a signal); it fails the test if the process is still running.
func (p *proc) waitExit(d time.Duration) int {
	p.t.Helper()
	code, err := p.exitWithin(d)
	if err != nil {
		p.t.Fatal(err)
	}
	return code
}

// exitWithin is waitExit returning an error instead of failing.
func (p *proc) exitWithin(d time.Duration) (int, error) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-p.done:
		p.state = p.lp.State()
		return p.state.ExitCode(), nil
	case <-timer.C:
		return 0, fmt.Errorf("process still running after %v; stderr:\n%s", d, p.stderr.String())
	}
}

// stillRunningAfter waits d and reports an error if the process exits in that
// time. It is the one place where the tests wait for a span on purpose: the
// behaviour under test is that nothing happens for that span.
func (p *proc) stillRunningAfter(d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-p.done:
		p.state = p.lp.State()
		return fmt.Errorf("exited with status %d after %v, while it should have kept running; stderr:\n%s",
			p.state.ExitCode(), time.Since(p.start).Round(time.Millisecond), p.stderr.String())
	case <-timer.C:
		return nil
	}
}

func (p *proc) signal(sig os.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("signal %v: %v", sig, err)
	}
}

// waitStderr polls until stderr contains substr.
func (p *proc) waitStderr(substr string, d time.Duration) error {
	return poll(d, func() bool { return strings.Contains(p.stderr.String(), substr) },
		func() string { return fmt.Sprintf("stderr never contained %q:\n%s", substr, p.stderr.String()) })
}

// lockedBuffer is a bytes.Buffer safe for the exec copier and the test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// poll calls cond every 10ms until it is true or d has passed.
func poll(d time.Duration, cond func() bool, msg func() string) error {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New(msg())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// notifyReceiver is an NOTIFY_SOCKET the test owns: a unixgram socket that
// collects every line of every datagram.
type notifyReceiver struct {
	path string
	conn *net.UnixConn
	mu   sync.Mutex
	msgs []string
	done chan struct{}
}

func newNotifyReceiver(t *testing.T) *notifyReceiver {
	t.Helper()
	path := filepath.Join(shortDir(t), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n := &notifyReceiver{path: path, conn: conn, done: make(chan struct{})}
	go n.receive()
	t.Cleanup(func() {
		conn.Close()
		<-n.done
	})
	return n
}

func (n *notifyReceiver) receive() {
	defer close(n.done)
	buf := make([]byte, 4096)
	for {
		k, _, err := n.conn.ReadFromUnix(buf)
		if err != nil {
			return
		}
		n.mu.Lock()
		for _, line := range strings.Split(string(buf[:k]), "\n") {
			if line != "" {
				n.msgs = append(n.msgs, line)
			}
		}
		n.mu.Unlock()
	}
}

func (n *notifyReceiver) env() string { return "NOTIFY_SOCKET=" + n.path }

func (n *notifyReceiver) messages() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.msgs...)
}

func (n *notifyReceiver) has(msg string) bool {
	for _, m := range n.messages() {
		if m == msg {
			return true
		}
	}
	return false
}

// wait polls until msg (a whole line such as "READY=1") has arrived.
func (n *notifyReceiver) wait(msg string, d time.Duration) error {
	return poll(d, func() bool { return n.has(msg) },
		func() string { return fmt.Sprintf("no %q on NOTIFY_SOCKET within %v; got %q", msg, d, n.messages()) })
}

// shortDir is a temporary directory with a short path, so unix socket paths
// in it fit sun_path (108 bytes); t.TempDir() paths can be too long.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "spx")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
