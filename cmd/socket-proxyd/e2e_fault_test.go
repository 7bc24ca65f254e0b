// SPDX-License-Identifier: Apache-2.0

package main_test

// Faults on the wire, black-box against the binary: a backend
// killed mid-transfer, resets from either side, a backend that never reads
// and a client that never reads (back-pressure, not buffering), half-open
// connections, a backend that resets as soon as it accepts, a listener shut
// down under the proxy. Each test checks that the other side is told within
// a deadline, that a fresh client still echoes afterwards, and that the
// proxy's descriptors and pipes come back to where they were.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// toldWithin bounds how long the other side may wait to hear of a fault.
const toldWithin = 10 * time.Second

// procfs: what the proxy holds

// fdCount returns how many descriptors pid has open, and how many of them
// are pipes of its own: pipes the test process holds too (the proxy's
// stdout and stderr, anything the test inherited and passed on) are not.
func fdCount(pid int) (fds, pipes int, err error) {
	targets, err := fdTargets(strconv.Itoa(pid))
	if err != nil {
		return 0, 0, err
	}
	ours, err := fdTargets("self")
	if err != nil {
		return 0, 0, err
	}
	shared := make(map[string]bool, len(ours))
	for _, t := range ours {
		shared[t] = true
	}
	for _, t := range targets {
		fds++
		if strings.HasPrefix(t, "pipe:") && !shared[t] {
			pipes++
		}
	}
	return fds, pipes, nil
}

// fdTargets reads what each descriptor of /proc/PID/fd links to.
func fdTargets(pid string) ([]string, error) {
	dir := "/proc/" + pid + "/fd"
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	targets := make([]string, 0, len(entries))
	for _, e := range entries {
		if t, err := os.Readlink(dir + "/" + e.Name()); err == nil { // else closed since ReadDir
			targets = append(targets, t)
		}
	}
	return targets, nil
}

// statusKiB reads a "Name:   123 kB" field of /proc/PID/status.
func statusKiB(pid int, name string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			f := strings.Fields(v)
			if len(f) == 0 {
				break
			}
			return strconv.ParseInt(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", name, pid)
}

// cpuTime is the user plus system CPU time pid has used.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name is in parentheses and may hold spaces: fields
	// count from after its closing one. utime and stime are fields 14
	// and 15, in clock ticks of 1/100 s on Linux.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat: %q", pid, s)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("bad /proc/%d/stat: %q", pid, s)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// fdBaseline is what the proxy holds at rest.
type fdBaseline struct{ fds, pipes int }

// settle polls until the proxy holds no pipe of its own (the pool closes
// pipes unused for a second, so an idle proxy holds none) and its
// descriptor count has not changed for half a second, and returns that as
// the baseline. Call it with no client connected.
func settle(t *testing.T, p *proc) fdBaseline {
	t.Helper()
	var b fdBaseline
	stable := 0
	err := poll(15*time.Second, func() bool {
		fds, pipes, err := fdCount(p.pid())
		if err != nil {
			t.Fatal(err)
		}
		if (fdBaseline{fds, pipes}) == b {
			stable++
		} else {
			stable = 0
		}
		b = fdBaseline{fds: fds, pipes: pipes}
		return pipes == 0 && stable >= 50
	}, func() string {
		return fmt.Sprintf("the proxy never settled: %d fds, %d pipes:\n%s", b.fds, b.pipes, fdList(p.pid()))
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fdList describes pid's descriptors, for failure messages.
func fdList(pid int) string {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, _ := os.ReadDir(dir)
	var lines []string
	for _, e := range entries {
		target, _ := os.Readlink(dir + "/" + e.Name())
		lines = append(lines, "  "+e.Name()+" -> "+target)
	}
	return strings.Join(lines, "\n")
}

// backToBaseline polls until the proxy holds no more descriptors and pipes
// than at the baseline: every connection it closed gave back its sockets
// and its pipes.
func backToBaseline(t *testing.T, p *proc, b fdBaseline) {
	t.Helper()
	var fds, pipes int
	err := poll(toldWithin, func() bool {
		var err error
		fds, pipes, err = fdCount(p.pid())
		if err != nil {
			t.Fatal(err)
		}
		return fds <= b.fds && pipes <= b.pipes
	}, func() string {
		return fmt.Sprintf("descriptor leak: %d fds (%d pipes) %v after the test, %d (%d pipes) before:\n%s",
			fds, pipes, toldWithin, b.fds, b.pipes, fdList(p.pid()))
	})
	if err != nil {
		t.Error(err)
	}
}

// the fault backend: the client's first byte picks what it does

const (
	modeEcho       = 'e' // echo the rest
	modeNeverRead  = 'n' // read nothing more; hold the connection until unstalled
	modeSource     = 'w' // write without end, read nothing; report the error that ends it
	modeSink       = 'r' // read to the end; report how it ended
	modeResetAfter = 'x' // read 1 MiB, then reset
	modeLateReply  = 'l' // read to EOF, wait until unstalled, then reply "late" and close
)

// faultServer is a backend with per-connection behaviour.
type faultServer struct {
	*server
	addr    string
	ended   chan ending   // one per connection in modes that report
	unstall chan struct{} // closed by release: modeNeverRead and modeLateReply go on
	once    sync.Once
	written atomic.Int64 // bytes modeSource connections have written
}

// ending is how a reporting connection ended.
type ending struct {
	mode byte
	n    int64
	err  error
}

func faultBackend(t *testing.T) *faultServer {
	t.Helper()
	fs := &faultServer{ended: make(chan ending, 64), unstall: make(chan struct{})}
	ln := listenTCP(t, "127.0.0.1:0")
	fs.addr = ln.Addr().String()
	fs.server = serve(t, ln, fs.handle)
	// Registered after serve, so it runs first: stalled handlers return
	// before serve's cleanup waits for them.
	t.Cleanup(fs.release)
	return fs
}

// release lets stalled connections go on.
func (fs *faultServer) release() { fs.once.Do(func() { close(fs.unstall) }) }

func (fs *faultServer) handle(c net.Conn) {
	var mode [1]byte
	if _, err := io.ReadFull(c, mode[:]); err != nil {
		return
	}
	switch mode[0] {
	case modeEcho:
		echo(c)
	case modeNeverRead:
		<-fs.unstall
		// Whatever reaches us now is what the proxy did meanwhile.
		_ = c.SetReadDeadline(time.Now().Add(toldWithin))
		n, err := io.Copy(io.Discard, c)
		fs.ended <- ending{mode: mode[0], n: n, err: err}
	case modeSource:
		buf := bytes.Repeat([]byte("0123456789abcdef"), 4096)
		var err error
		for err == nil {
			var k int
			k, err = c.Write(buf)
			fs.written.Add(int64(k))
		}
		fs.ended <- ending{mode: mode[0], n: fs.written.Load(), err: err}
	case modeSink:
		n, err := io.Copy(io.Discard, c)
		fs.ended <- ending{mode: mode[0], n: n, err: err}
	case modeResetAfter:
		n, err := io.CopyN(io.Discard, c, 1<<20)
		_ = c.(*net.TCPConn).SetLinger(0)
		fs.ended <- ending{mode: mode[0], n: n, err: err}
	case modeLateReply:
		n, err := io.Copy(io.Discard, c)
		<-fs.unstall
		_, _ = c.Write([]byte("late"))
		fs.ended <- ending{mode: mode[0], n: n, err: err}
	}
}

// waitEnded waits for the next reporting connection to end.
func (fs *faultServer) waitEnded(t *testing.T, what string) ending {
	t.Helper()
	select {
	case e := <-fs.ended:
		return e
	case <-time.After(toldWithin):
		t.Fatalf("%s: the backend was not told within %v", what, toldWithin)
		return ending{}
	}
}

// faultProxy starts the proxy in front of a fault backend and returns it
// with its listening address and its settled baseline.
func faultProxy(t *testing.T, args ...string) (*proc, *faultServer, string, fdBaseline) {
	t.Helper()
	fs := faultBackend(t)
	fd, addr := inheritTCP(t, "web")
	p := start(t, binary, launch{args: append(args, fs.addr), fds: []inherited{fd}})
	freshEcho(t, addr) // it is up
	return p, fs, addr, settle(t, p)
}

// freshEcho checks the proxy still serves: a new client's bytes come back.
func freshEcho(t *testing.T, addr string) {
	t.Helper()
	c := dial(t, "tcp", addr)
	defer c.Close()
	if _, err := c.Write([]byte{modeEcho}); err != nil {
		t.Fatal(err)
	}
	mustEcho(t, c, 64<<10)
	closeWrite(c)
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatalf("fresh client after the echo: %v", err)
	}
}

func dialMode(t *testing.T, addr string, mode byte) *net.TCPConn {
	t.Helper()
	c := dial(t, "tcp", addr).(*net.TCPConn)
	if _, err := c.Write([]byte{mode}); err != nil {
		t.Fatal(err)
	}
	return c
}

// reset closes c with a TCP reset instead of a FIN.
func reset(c *net.TCPConn) {
	_ = c.SetLinger(0)
	c.Close()
}

// isReset reports whether err is what a reset looks like to a reader or a
// writer.
func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// drainUntilEnd reads c until it ends; the end must be EOF or a reset,
// within d.
func drainUntilEnd(c net.Conn, d time.Duration) (int64, error) {
	_ = c.SetReadDeadline(time.Now().Add(d))
	n, err := io.Copy(io.Discard, c)
	switch {
	case err == nil, isReset(err):
		return n, nil
	case errors.Is(err, os.ErrDeadlineExceeded):
		return n, fmt.Errorf("still open %v after the fault (read %d bytes)", d, n)
	default:
		return n, err
	}
}

// pushUntilBlocked writes to c until a write makes no progress for
// stallAfter (back-pressure) or limit bytes have gone, and returns how many
// bytes the kernel and the proxy took.
func pushUntilBlocked(c net.Conn, limit int64, stallAfter time.Duration) (int64, error) {
	chunk := make([]byte, 1<<20)
	var total int64
	for total < limit {
		_ = c.SetWriteDeadline(time.Now().Add(stallAfter))
		n, err := c.Write(chunk)
		total += int64(n)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// The back-pressure bounds. Loopback TCP buffers grow to tcp_wmem and
// tcp_rmem's maxima (4 and 6 MiB by default) on each of the four sockets
// on the way, plus one pooled pipe: some 21 MiB can be in flight with no
// buffering in the proxy. Buffering in the proxy would take all of the
// 200 MiB pushed.
const (
	pushed         = 200 << 20
	maxInFlight    = 64 << 20
	maxGrowthOfRSS = 24 << 10 // KiB
)

// TestFaultBackendNeverReads: a backend that accepts and never reads. The
// client's writes block (back-pressure), the proxy's memory stays put, and
// when the client gives up with a reset the proxy lets go of everything.
func TestFaultBackendNeverReads(t *testing.T) {
	t.Parallel()
	p, fs, addr, base := faultProxy(t)
	rssBefore, err := statusKiB(p.pid(), "VmRSS")
	if err != nil {
		t.Fatal(err)
	}
	c := dialMode(t, addr, modeNeverRead)
	took, err := pushUntilBlocked(c, pushed, 2*time.Second)
	if err != nil {
		t.Fatalf("writing to a stalled backend: %v after %d bytes", err, took)
	}
	rssDuring, err := statusKiB(p.pid(), "VmRSS")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the path took %d MiB before writes blocked; proxy RSS %d KiB -> %d KiB", took>>20, rssBefore, rssDuring)
	if took >= maxInFlight {
		t.Errorf("no back-pressure: %d MiB went into a backend that reads nothing", took>>20)
	}
	if rssDuring-rssBefore > maxGrowthOfRSS {
		t.Errorf("proxy RSS grew by %d KiB holding one stalled connection: buffering, not back-pressure", rssDuring-rssBefore)
	}
	freshEcho(t, addr) // others are served meanwhile
	reset(c)
	backToBaseline(t, p, base) // the stalled pair and its pipe are gone
	fs.release()
	e := fs.waitEnded(t, "client reset")
	if e.err == nil && e.n >= took {
		t.Errorf("the backend got all %d bytes and a clean end after the client's reset", e.n)
	}
	freshEcho(t, addr)
	backToBaseline(t, p, base)
}

// TestFaultClientNeverReads: a client that never reads while the backend
// writes without end. The backend's writes block, the proxy's memory stays
// put, and the client's reset reaches the backend.
func TestFaultClientNeverReads(t *testing.T) {
	t.Parallel()
	p, fs, addr, base := faultProxy(t)
	rssBefore, err := statusKiB(p.pid(), "VmRSS")
	if err != nil {
		t.Fatal(err)
	}
	c := dialMode(t, addr, modeSource)
	// Wait for the backend's writes to stop making progress.
	var last int64 = -1
	var since time.Time
	err = poll(60*time.Second, func() bool {
		n := fs.written.Load()
		if n != last {
			last, since = n, time.Now()
			return false
		}
		return time.Since(since) >= 2*time.Second
	}, func() string { return fmt.Sprintf("the backend never blocked: wrote %d MiB", fs.written.Load()>>20) })
	if err != nil {
		t.Fatal(err)
	}
	rssDuring, err := statusKiB(p.pid(), "VmRSS")
	if err != nil {
		t.Fatal(err)
	}
	took := fs.written.Load()
	t.Logf("the path took %d MiB before the backend's writes blocked; proxy RSS %d KiB -> %d KiB", took>>20, rssBefore, rssDuring)
	if took >= maxInFlight {
		t.Errorf("no back-pressure: %d MiB went towards a client that reads nothing", took>>20)
	}
	if rssDuring-rssBefore > maxGrowthOfRSS {
		t.Errorf("proxy RSS grew by %d KiB holding one stalled connection", rssDuring-rssBefore)
	}
	freshEcho(t, addr)
	reset(c)
	if e := fs.waitEnded(t, "client reset while the backend writes"); !isReset(e.err) {
		t.Errorf("the backend's writes ended with %v, want a reset", e.err)
	}
	backToBaseline(t, p, base)
	freshEcho(t, addr)
}

// TestFaultClientResetsMidDownload: the client resets while data flows to
// it; the backend's writes fail at once.
func TestFaultClientResetsMidDownload(t *testing.T) {
	t.Parallel()
	p, fs, addr, base := faultProxy(t)
	c := dialMode(t, addr, modeSource)
	if _, err := io.CopyN(io.Discard, c, 8<<20); err != nil {
		t.Fatal(err)
	}
	reset(c)
	if e := fs.waitEnded(t, "client reset mid-download"); !isReset(e.err) {
		t.Errorf("the backend's writes ended with %v, want a reset", e.err)
	}
	backToBaseline(t, p, base)
	freshEcho(t, addr)
}

// TestFaultClientResetsMidUpload: the client resets while it uploads; the
// backend's reads end at once (with a reset: the bytes after it are lost).
func TestFaultClientResetsMidUpload(t *testing.T) {
	t.Parallel()
	p, fs, addr, base := faultProxy(t)
	c := dialMode(t, addr, modeSink)
	if _, err := c.Write(make([]byte, 8<<20)); err != nil {
		t.Fatal(err)
	}
	reset(c)
	if e := fs.waitEnded(t, "client reset mid-upload"); e.err == nil {
		t.Errorf("the backend read %d bytes and a clean EOF, want a reset", e.n)
	}
	backToBaseline(t, p, base)
	freshEcho(t, addr)
}

// TestFaultBackendResetsMidUpload: the backend resets after 1 MiB of an
// upload; the client, still writing, learns of it at once.
func TestFaultBackendResetsMidUpload(t *testing.T) {
	t.Parallel()
	p, fs, addr, base := faultProxy(t)
	c := dialMode(t, addr, modeResetAfter)
	werr := make(chan error, 1)
	go func() {
		_ = c.SetWriteDeadline(time.Now().Add(toldWithin))
		_, err := c.Write(make([]byte, pushed))
		werr <- err
	}()
	fs.waitEnded(t, "upload")
	if _, err := drainUntilEnd(c, toldWithin); err != nil {
		t.Errorf("client after the backend's reset: %v", err)
	}
	if err := <-werr; err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the client's write ended with %v, want a reset or broken pipe", err)
	}
	backToBaseline(t, p, base)
	freshEcho(t, addr)
}

// TestFaultBackendResetsOnAccept: a backend that accepts and resets at once
// (a crashing worker, a firewall's reject-with-tcp-reset behind a NAT): each
// client is closed at once, the proxy goes on, nothing leaks.
func TestFaultBackendResetsOnAccept(t *testing.T) {
	t.Parallel()
	const resets = 20
	var n atomic.Int64
	ln := listenTCP(t, "127.0.0.1:0")
	serve(t, ln, func(c net.Conn) {
		if n.Add(1) <= resets {
			_ = c.(*net.TCPConn).SetLinger(0) // the return closes it: RST
			return
		}
		var mode [1]byte
		if _, err := io.ReadFull(c, mode[:]); err == nil {
			echo(c)
		}
	})
	fd, addr := inheritTCP(t, "web")
	p := start(t, binary, launch{args: []string{ln.Addr().String()}, fds: []inherited{fd}})
	base := settle(t, p) // before any client: the pool has no pipe yet
	for i := 0; i < resets; i++ {
		// The proxy's reset can beat the end of the client's own
		// connect on loopback: then it is the dial that is reset.
		c, err := net.DialTimeout("tcp", addr, toldWithin)
		if isReset(err) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		_, _ = c.Write([]byte("hello"))
		if err := closedWithoutData(c, toldWithin); err != nil {
			t.Fatalf("client %d after the backend's reset: %v", i, err)
		}
		c.Close()
	}
	backToBaseline(t, p, base)
	freshEcho(t, addr)
	backToBaseline(t, p, base)
}

// TestFaultHalfOpen: a client that has ended its stream while the backend,
// silent for a while, still owes it a reply: the half-open connection is
// kept (no timeout, no reset), the late reply arrives, then everything is
// given back.
func TestFaultHalfOpen(t *testing.T) {
	t.Parallel()
	p, fs, addr, base := faultProxy(t)
	c := dialMode(t, addr, modeLateReply)
	if _, err := c.Write(bytes.Repeat([]byte("q"), 100<<10)); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	// The backend has its EOF and sits on it; the proxy must keep both
	// sockets meanwhile. stillRunningAfter is the one deliberate wait.
	if err := p.stillRunningAfter(time.Second); err != nil {
		t.Fatal(err)
	}
	if fds, _, _ := fdCount(p.pid()); fds < base.fds+2 {
		t.Errorf("the proxy holds %d fds with a half-open connection, %d at rest: it dropped the connection", fds, base.fds)
	}
	fs.release()
	_ = c.SetReadDeadline(time.Now().Add(toldWithin))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "late" {
		t.Fatalf("late reply %q, %v; want \"late\" then EOF", got, err)
	}
	if e := fs.waitEnded(t, "half-close"); e.n != 100<<10 || e.err != nil {
		t.Errorf("backend read %d bytes, %v; want %d and EOF", e.n, e.err, 100<<10)
	}
	backToBaseline(t, p, base)
	freshEcho(t, addr)
}

// TestFaultHalfClosedThenReset: a client that half-closes and later resets
// while the backend streams to it: the backend hears of the reset.
func TestFaultHalfClosedThenReset(t *testing.T) {
	t.Parallel()
	p, fs, addr, base := faultProxy(t)
	c := dialMode(t, addr, modeSource)
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(io.Discard, c, 4<<20); err != nil {
		t.Fatal(err)
	}
	reset(c)
	if e := fs.waitEnded(t, "reset after half-close"); !isReset(e.err) {
		t.Errorf("the backend's writes ended with %v, want a reset", e.err)
	}
	backToBaseline(t, p, base)
	freshEcho(t, addr)
}

// A backend process of its own, to kill: the test binary re-executed with
// SPX_KILL_BACKEND set serves the listener it inherits as fd 3, writing
// without end to every connection and reading nothing.
func init() {
	if os.Getenv("SPX_KILL_BACKEND") == "" {
		return
	}
	ln, err := net.FileListener(os.NewFile(3, "backend"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "kill backend:", err)
		os.Exit(2)
	}
	buf := bytes.Repeat([]byte("k"), 64<<10)
	for {
		c, err := ln.Accept()
		if err != nil {
			os.Exit(2)
		}
		go func() {
			for {
				if _, err := c.Write(buf); err != nil {
					c.Close()
					return
				}
			}
		}()
	}
}

// TestFaultBackendKilled: the backend process is killed (SIGKILL) while
// bytes flow both ways; the client is told at once, and the proxy goes on
// serving the backend that takes over the same listener.
func TestFaultBackendKilled(t *testing.T) {
	t.Parallel()
	ln := listenTCP(t, "127.0.0.1:0")
	backendFile := fileOf(t, ln)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	be := start(t, exe, launch{args: []string{"-test.run=^$"}, env: []string{"SPX_KILL_BACKEND=1"},
		fds: []inherited{{file: backendFile, name: "backend"}}})

	fd, addr := inheritTCP(t, "web")
	p := start(t, binary, launch{args: []string{ln.Addr().String()}, fds: []inherited{fd}})
	c := dial(t, "tcp", addr).(*net.TCPConn)
	// Upload (the backend never reads: its receive queue fills, so its
	// death is a reset) while downloading.
	werr := make(chan error, 1)
	go func() {
		_ = c.SetWriteDeadline(time.Now().Add(toldWithin + 5*time.Second))
		_, err := c.Write(make([]byte, pushed))
		werr <- err
	}()
	if _, err := io.CopyN(io.Discard, c, 8<<20); err != nil {
		t.Fatal(err)
	}
	be.lp.Kill()
	if _, err := drainUntilEnd(c, toldWithin); err != nil {
		t.Errorf("client after the backend was killed: %v", err)
	}
	if err := <-werr; err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the client's upload ended with %v, want a reset or broken pipe", err)
	}
	c.Close()
	// A new backend takes over the listener; a fresh client gets through.
	fs := &faultServer{ended: make(chan ending, 64), unstall: make(chan struct{})}
	serve(t, ln, fs.handle)
	freshEcho(t, addr)
	base := settle(t, p)
	freshEcho(t, addr)
	backToBaseline(t, p, base)
}

// TestFaultListenerShutDown: a listener shut down under the proxy (the
// .socket unit's copy is shut down, as happens when someone calls
// shutdown(2) on a shared listening socket): accepting on it fails, which
// the proxy logs without spinning, and it keeps serving its other listener
// and the connections it has. Closing the launcher's copy alone changes
// nothing: the proxy holds its own.
func TestFaultListenerShutDown(t *testing.T) {
	t.Parallel()
	fs := faultBackend(t)
	lnA := listenTCP(t, "127.0.0.1:0")
	fdA := inherited{file: fileOf(t, lnA), name: "a"}
	fdB, addrB := inheritTCP(t, "b")
	addrA := lnA.Addr().String()
	p := start(t, binary, launch{args: []string{fs.addr}, fds: []inherited{fdA, fdB}})
	freshEcho(t, addrA)
	held := dialMode(t, addrA, modeEcho)
	mustEcho(t, held, 1000)

	// The test's copies closed: the proxy's duplicate keeps it open.
	lnA.Close()
	freshEcho(t, addrA)

	// Shut down (not closed): the listening socket itself leaves LISTEN.
	rc, err := fdA.file.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = syscall.Shutdown(int(fd), syscall.SHUT_RDWR) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatalf("shutdown: %v", serr)
	}
	cpu0, err := cpuTime(p.pid())
	if err != nil {
		t.Fatal(err)
	}
	wall0 := time.Now()
	if c, err := net.DialTimeout("tcp", addrA, time.Second); err == nil {
		c.Close()
		t.Errorf("connected to the shut-down listener")
	}
	freshEcho(t, addrB)
	mustEcho(t, held, 1000)
	if err := p.stillRunningAfter(time.Second); err != nil {
		t.Fatal(err)
	}
	cpu1, err := cpuTime(p.pid())
	if err != nil {
		t.Fatal(err)
	}
	wall := time.Since(wall0)
	t.Logf("proxy CPU %v in %v after the shutdown; stderr:\n%s", cpu1-cpu0, wall.Round(time.Millisecond), p.stderr.String())
	// A sanity bound against a spinning loop, not a speed test.
	if cpu1-cpu0 > wall*3/10 {
		t.Errorf("the proxy used %v of CPU in %v after its listener was shut down: a busy loop", cpu1-cpu0, wall)
	}
	if s := p.stderr.String(); strings.Contains(s, "panic") {
		t.Errorf("stderr:\n%s", s)
	}
}
