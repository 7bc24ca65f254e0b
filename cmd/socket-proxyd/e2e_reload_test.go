// SPDX-License-Identifier: Apache-2.0

package main_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Reload in place: SIGHUP executes the binary again with every
// connection carried over, same PID, no byte lost or doubled.

// reloadTo sends SIGHUP and waits for the n-th "resumed connections" line:
// the reloaded image is serving.
func reloadTo(t *testing.T, p *proc, n int) {
	t.Helper()
	p.signal(syscall.SIGHUP)
	if err := poll(30*time.Second, func() bool {
		return strings.Count(p.stderr.String(), "resumed connections") >= n
	}, func() string { return fmt.Sprintf("reload %d did not finish:\n%s", n, p.stderr.String()) }); err != nil {
		t.Fatal(err)
	}
	if p.exited() {
		t.Fatalf("the proxy exited on reload %d:\n%s", n, p.stderr.String())
	}
}

// startStreams starts n streams through addr; endStreams ends them and
// reports each one's error.
func startStreams(addr string, n int) (stop chan struct{}, errs chan error) {
	stop, errs = make(chan struct{}), make(chan error, n)
	for i := range n {
		go func() { errs <- stream(addr, uint64(i), stop) }()
	}
	return stop, errs
}

func endStreams(t *testing.T, stop chan struct{}, errs chan error) {
	t.Helper()
	close(stop)
	for range cap(errs) {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// stream sends random bytes through an echo backend until stop closes,
// then half-closes; it reads the echo back until EOF, and compares the
// SHA-256 and the length of both ways.
func stream(addr string, seed uint64, stop <-chan struct{}) error {
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		return fmt.Errorf("connect: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
	sent, got := sha256.New(), sha256.New()
	var nsent int64
	werr := make(chan error, 1)
	go func() {
		rng := rand.New(rand.NewPCG(seed, seed))
		buf := make([]byte, 256<<10)
		for {
			select {
			case <-stop:
				werr <- c.(*net.TCPConn).CloseWrite()
				return
			default:
			}
			p := buf[:1+rng.IntN(len(buf))]
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
			n, err := c.Write(p)
			sent.Write(p[:n])
			nsent += int64(n)
			if err != nil {
				werr <- err
				return
			}
			time.Sleep(time.Millisecond) // a steady stream, not a flood
		}
	}()
	ngot, rerr := io.Copy(got, c)
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %v", err)
	}
	if rerr != nil {
		return fmt.Errorf("read back: %v", rerr)
	}
	if ngot != nsent || !bytes.Equal(sent.Sum(nil), got.Sum(nil)) {
		return fmt.Errorf("sent %d bytes, got %d back; SHA-256 equal: %v", nsent, ngot, bytes.Equal(sent.Sum(nil), got.Sum(nil)))
	}
	return nil
}

// TestReloadUnderLoad: three reloads in the middle of 16 streams both ways;
// every stream ends whole (SHA-256 of each way), no reset, same process,
// and systemd hears RELOADING=1 with MONOTONIC_USEC= and READY=1 again.
func TestReloadUnderLoad(t *testing.T) {
	t.Parallel()
	reloads := 3
	if n, err := strconv.Atoi(os.Getenv("SPX_RELOADS")); err == nil && n > 0 {
		reloads = n // a longer run by hand
	}
	// A backend slower than the clients, so that the proxy holds bytes in
	// its pipes at every moment: a reload that dropped them would show.
	bl := listenTCP(t, "127.0.0.1:0")
	serve(t, bl, slowEcho)
	backend := bl.Addr().String()
	fd, addr := inheritTCP(t, "web")
	n := newNotifyReceiver(t)
	p := start(t, binary, launch{args: []string{backend}, fds: []inherited{fd}, env: []string{n.env()}})
	if err := n.wait("READY=1", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	pid := p.cmd.Process.Pid
	const streams = 16
	stop, errs := startStreams(addr, streams)
	// New clients all along: none is refused or cut while the proxy
	// reloads (they wait in the backlog).
	var newClients int
	newErr := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				newErr <- nil
				return
			default:
			}
			if err := stillServes(addr); err != nil {
				newErr <- fmt.Errorf("new client %d: %v", newClients+1, err)
				return
			}
			newClients++
		}
	}()
	time.Sleep(200 * time.Millisecond) // the streams under way
	for i := 1; i <= reloads; i++ {
		reloadTo(t, p, i)
		time.Sleep(100 * time.Millisecond) // traffic between reloads
	}
	endStreams(t, stop, errs)
	if err := <-newErr; err != nil {
		t.Error(err)
	}
	t.Logf("%d new clients served during the reloads", newClients)
	if got := strings.Count(p.stderr.String(), " reset=0 "); got != reloads || strings.Contains(p.stderr.String(), "connections=0 ") {
		t.Errorf("the 3 reloads did not carry every connection:\n%s", p.stderr.String())
	}
	if p.exited() || p.cmd.Process.Pid != pid {
		t.Errorf("the proxy did not stay process %d", pid)
	}
	var reloading, monotonic, ready int
	for _, m := range n.messages() {
		switch {
		case m == "RELOADING=1":
			reloading++
		case strings.HasPrefix(m, "MONOTONIC_USEC="):
			monotonic++
		case m == "READY=1":
			ready++
		}
	}
	if reloading != reloads || monotonic != reloads || ready != reloads+1 {
		t.Errorf("notifications: RELOADING=1 %d, MONOTONIC_USEC= %d, READY=1 %d; want 3, 3, 4", reloading, monotonic, ready)
	}
	if err := stillServes(addr); err != nil {
		t.Error(err)
	}
}

// slowEcho echoes at most 64 KiB every 2 ms. Its deadline is one of
// inactivity: a long run (SPX_RELOADS) outlasts serve's ioTimeout.
func slowEcho(c net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		_ = c.SetDeadline(time.Now().Add(ioTimeout))
		n, err := c.Read(buf)
		if n > 0 {
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			closeWrite(c)
			return
		}
		time.Sleep(2 * time.Millisecond) // the backend's pace
	}
}

func stillServes(addr string) error {
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	return echoRoundTrip(c, 1000)
}

// TestReloadStates: a reload with a connection half-closed, and one still
// waiting for its backend (retrying, its bytes and its PROXY header still to
// go): each goes on exactly where it was.
func TestReloadStates(t *testing.T) {
	t.Parallel()
	dir := shortDir(t)
	late, live := filepath.Join(dir, "late.sock"), filepath.Join(dir, "live.sock")
	release := make(chan struct{})
	handle := headerEchoBye(t, release)
	serve(t, listenUnix(t, live), handle)
	web, webAddr := inheritTCP(t, "web")
	api, apiAddr := inheritTCP(t, "api")
	p := start(t, binary, launch{args: []string{"--proxy-protocol=v1", "--connect-timeout=30s",
		"--backend", "web=" + late, "--backend", "api=" + live}, fds: []inherited{web, api}})

	waiting := dial(t, "tcp", webAddr) // its backend does not exist yet
	if _, err := waiting.Write([]byte("early")); err != nil {
		t.Fatal(err)
	}
	halfClosed := dial(t, "tcp", apiAddr)
	if _, err := halfClosed.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	closeWrite(halfClosed)
	readExactly(t, halfClosed, "abc")
	time.Sleep(300 * time.Millisecond) // the waiting client retries

	reloadTo(t, p, 1)
	if !strings.Contains(p.stderr.String(), "connections=2 reset=0") {
		t.Errorf("the reload did not carry the two connections:\n%s", p.stderr.String())
	}
	close(release)
	readExactly(t, halfClosed, "bye")
	if err := closedWithoutData(halfClosed, 5*time.Second); err != nil {
		t.Errorf("half-closed connection: %v", err)
	}
	serve(t, listenUnix(t, late), handle)
	readExactly(t, waiting, "early")
}

// TestReloadKeepsIdleClock: a connection idle for 2s of a 3s idle timeout
// when the reload comes is closed about 1s after it, not 3s: its idle clock
// went over, and it is never closed early.
func TestReloadKeepsIdleClock(t *testing.T) {
	t.Parallel()
	_, backend := echoTCP(t, "127.0.0.1:0")
	fd, addr := inheritTCP(t, "web")
	p := start(t, binary, launch{args: []string{"--idle-timeout=3s", backend}, fds: []inherited{fd}})
	idle := dial(t, "tcp", addr)
	mustEcho(t, idle, 10)
	idleSince := time.Now()
	time.Sleep(2 * time.Second) // the idle timer runs
	reloadTo(t, p, 1)
	if err := closedWithoutData(idle, 10*time.Second); err != nil {
		t.Errorf("idle connection: %v", err)
	}
	// Never early; at most two sweep ticks (750 ms each) late, and some
	// slack for a loaded machine. A clock restarted at the reload would
	// close it 3s after the reload: 5.25s at the earliest.
	if d := time.Since(idleSince); d < 3*time.Second || d > 5*time.Second {
		t.Errorf("idle connection closed after %v, want 3s to 5s (carried: at most 4.5s; restarted: at least 5.25s)", d.Round(time.Millisecond))
	}
}

// headerEchoBye is a backend that reads a PROXY v1 header line, echoes
// until the client's EOF, then, once released, sends "bye" and ends: so a
// connection stays half-closed for as long as the test wants. It gives up
// when t ends, so that a test that fails before releasing it does not hang
// in serve's cleanup, which waits for every handler.
func headerEchoBye(t *testing.T, release <-chan struct{}) func(net.Conn) {
	ctx := t.Context() // canceled before the cleanups run
	return func(c net.Conn) {
		var hdr []byte
		for len(hdr) == 0 || hdr[len(hdr)-1] != '\n' {
			var b [1]byte
			if _, err := c.Read(b[:]); err != nil {
				return
			}
			hdr = append(hdr, b[0])
		}
		if !strings.HasPrefix(string(hdr), "PROXY TCP4 127.0.0.1 127.0.0.1 ") {
			c.Write([]byte("bad header " + string(hdr)))
			return
		}
		io.Copy(struct{ io.Writer }{c}, struct{ io.Reader }{c})
		select {
		case <-release:
		case <-ctx.Done():
			return
		}
		c.Write([]byte("bye"))
		closeWrite(c)
	}
}

// readExactly reads len(want) bytes and compares them.
func readExactly(t *testing.T, c net.Conn, want string) {
	t.Helper()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != want {
		t.Fatalf("read %q, %v; want %q", got, err, want)
	}
}

// copyBinary puts a copy of the proxy at a path of the test's own, so that
// the test can replace it.
func copyBinary(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(binary)
	if err != nil {
		t.Fatal(err)
	}
	tmp := path + ".new"
	if err := os.WriteFile(tmp, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil { // as a package manager does: a new inode
		t.Fatal(err)
	}
}

// replaceFile puts content at path as a new inode, as a package upgrade does.
func replaceFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path+".new", []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
}

// startFromCopy starts a copy of the binary, whose file a test may then
// replace, in front of an echo backend, with one connection open through
// it: the copy's path, the proxy, the connection and the proxy's address.
func startFromCopy(t *testing.T) (string, *proc, net.Conn, string) {
	t.Helper()
	exe := filepath.Join(shortDir(t), "socket-proxyd")
	copyBinary(t, exe)
	_, backend := echoTCP(t, "127.0.0.1:0")
	fd, addr := inheritTCP(t, "web")
	p := start(t, exe, launch{args: []string{backend}, fds: []inherited{fd}})
	c := dial(t, "tcp", addr)
	mustEcho(t, c, 100)
	return exe, p, c, addr
}

// TestReloadRunsTheNewFile: after the file on disk is replaced, SIGHUP
// runs the new file (here a script that says so and executes the real
// binary), not the old inode /proc/self/exe still points at.
func TestReloadRunsTheNewFile(t *testing.T) {
	t.Parallel()
	exe, p, c, addr := startFromCopy(t)
	replaceFile(t, exe, "#!/bin/sh\necho the new file runs >&2\nexec "+binary+" \"$@\"\n")
	reloadTo(t, p, 1)
	if !strings.Contains(p.stderr.String(), "the new file runs") {
		t.Errorf("the reload did not run the new file:\n%s", p.stderr.String())
	}
	mustEcho(t, c, 100)
	if err := stillServes(addr); err != nil {
		t.Error(err)
	}
}

// TestReloadBrokenFile: a file on disk that cannot take over (garbage,
// another program that exits 0, a socket-proxyd that rejects the command
// line) changes nothing: one error, and the proxy goes on serving its
// connections.
func TestReloadBrokenFile(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ name, content, want string }{
		{"garbage", "\x7fELF garbage", "cannot take over"},
		{"another program", "#!/bin/sh\nexit 0\n", "cannot take over"},
		{"refuses the options", "#!/bin/sh\necho 'socket-proxyd: unknown option \"--frobnicate\"' >&2\nexit 1\n", "unknown option"},
		{"missing", "", "cannot take over"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			exe, p, c, addr := startFromCopy(t)
			if tt.content == "" {
				os.Remove(exe)
			} else {
				replaceFile(t, exe, tt.content)
			}
			p.signal(syscall.SIGHUP)
			if err := p.waitStderr("cannot reload, going on serving", 20*time.Second); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(p.stderr.String(), tt.want) {
				t.Errorf("the error does not say %q:\n%s", tt.want, p.stderr.String())
			}
			mustEcho(t, c, 100)
			if err := stillServes(addr); err != nil {
				t.Error(err)
			}
			if p.exited() {
				t.Error("the proxy exited")
			}
		})
	}
}

// TestReloadAtTheOpenFilesLimit: a reload that finds the process out of
// descriptors, before its check or after it (the connections accepted
// meanwhile took the last ones, or the limit came down), refuses: it says
// which limit to raise, the proxy serves on, and once there is room the
// next reload works.
func TestReloadAtTheOpenFilesLimit(t *testing.T) {
	t.Parallel()
	for _, when := range []string{"before the check", "after the check"} {
		t.Run(when, func(t *testing.T) {
			t.Parallel()
			exe, p, c, addr := startFromCopy(t)
			pid := p.cmd.Process.Pid
			dir := shortDir(t)
			checking, proceed := filepath.Join(dir, "checking"), filepath.Join(dir, "proceed")
			// The check waits for the test, then answers as the
			// binary does.
			replaceFile(t, exe, fmt.Sprintf(`#!/bin/sh
case "$1" in --check-handoff=*)
	: > %[1]s
	i=0
	while [ ! -e %[2]s ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done
esac
exec %[3]s "$@"
`, checking, proceed, binary))
			setLimit := func(n int) {
				lim := unix.Rlimit{Cur: uint64(n), Max: 1024}
				if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &lim, nil); err != nil {
					t.Fatal(err)
				}
			}
			// A limit at the first free descriptor leaves no room.
			if when == "before the check" {
				setLimit(firstFreeDescriptor(t, pid))
				os.WriteFile(proceed, nil, 0o644)
			}
			p.signal(syscall.SIGHUP)
			if when == "after the check" {
				if err := poll(20*time.Second, func() bool { _, err := os.Stat(checking); return err == nil },
					func() string { return "the check never started:\n" + p.stderr.String() }); err != nil {
					t.Fatal(err)
				}
				setLimit(firstFreeDescriptor(t, pid))
				os.WriteFile(proceed, nil, 0o644)
			}
			if err := p.waitStderr("going on serving", 20*time.Second); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(p.stderr.String(), "LimitNOFILE=") {
				t.Errorf("the refusal does not say which limit to raise:\n%s", p.stderr.String())
			}
			mustEcho(t, c, 100)
			setLimit(1024)
			reloadTo(t, p, 1)
			mustEcho(t, c, 100)
			if err := stillServes(addr); err != nil {
				t.Error(err)
			}
		})
	}
}

// firstFreeDescriptor is the lowest descriptor number pid does not use: a
// RLIMIT_NOFILE of that leaves it no room for a new one.
func firstFreeDescriptor(t *testing.T, pid int) int {
	t.Helper()
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	used := map[int]bool{}
	for _, e := range entries {
		n, _ := strconv.Atoi(e.Name())
		used[n] = true
	}
	n := 0
	for used[n] {
		n++
	}
	return n
}

// TestUnreadableRecordResets: an image handed a record it cannot read
// resets the connections that came with it (the peer sees a reset or the
// end, never a byte) and fails; it forwards nothing.
func TestUnreadableRecordResets(t *testing.T) {
	t.Parallel()
	rec, err := os.CreateTemp(shortDir(t), "record")
	if err != nil {
		t.Fatal(err)
	}
	rec.WriteString("SPXHOFF\x00\x01\x00garbage that is no record")
	defer rec.Close()
	ln := listenTCP(t, "127.0.0.1:0")
	peer := dial(t, "tcp", ln.Addr().String())
	carried, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := carried.File()
	carried.Close()
	defer cf.Close()
	cmd := startRaw(t, []*os.File{rec, cf}, "SOCKET_PROXYD_HANDOFF=3")
	code := cmd.waitExit(20 * time.Second)
	cf.Close()
	if code != 1 || !strings.Contains(cmd.stderr.String(), "carried connections were reset") {
		t.Errorf("exit %d, want 1 and an error saying the connections were reset:\n%s", code, cmd.stderr.String())
	}
	_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	k, err := peer.Read(make([]byte, 10))
	if k != 0 || !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the carried connection's peer read %d bytes, %v; want a reset", k, err)
	}
}

// startRaw starts the binary with files as fds 3, 4, ... and no shim.
func startRaw(t *testing.T, files []*os.File, env ...string) *proc {
	t.Helper()
	return start(t, binary, launch{args: []string{"127.0.0.1:9"}, env: env, extra: files})
}

// TestReloadPause: five reloads in a row carry every one of n open
// connections, each still answering after. With SPX_RELOAD_CONNS it also
// measures how long the loop stands still during a reload with that many
// connections (docs/ENGINE.md: 1000 and 9000): from the record being
// written to the new loop's first wait, as the reloaded image logs it. Run
// without -race for the figures:
//
//	SPX_RELOAD_CONNS=9000 go test -run TestReloadPause -v ./cmd/socket-proxyd/
//
// Without it, n is 200: the check runs in every test run, with no skip.
func TestReloadPause(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("SPX_RELOAD_CONNS"))
	if n <= 0 {
		n = 200
	}
	_, backend := echoTCP(t, "127.0.0.1:0")
	fd, addr := inheritTCP(t, "web")
	p := start(t, binary, launch{args: []string{"-c", strconv.Itoa(n + 10), backend}, fds: []inherited{fd}})
	conns := make([]net.Conn, n)
	for i := range conns {
		conns[i] = dial(t, "tcp", addr)
		mustEcho(t, conns[i], 1)
	}
	for i := 1; i <= 5; i++ {
		reloadTo(t, p, i)
	}
	for _, line := range strings.Split(p.stderr.String(), "\n") {
		if strings.Contains(line, "resumed connections") || strings.Contains(line, "handoff took") {
			t.Log(line)
		}
	}
	if got := strings.Count(p.stderr.String(), fmt.Sprintf("connections=%d reset=0", n)); got != 5 {
		t.Errorf("%d of 5 reloads carried all %d connections", got, n)
	}
	for i := 0; i < n; i += max(1, n/100) {
		mustEcho(t, conns[i], 100)
	}
}

// TestReloadRemovesOnlyItsOwnSocketFile: at exit the proxy removes the
// socket file it bound for --listen, and not another service's put at the
// path since, even when a reload came in between: the image before passes
// on which file it bound.
func TestReloadRemovesOnlyItsOwnSocketFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(shortDir(t), "px.sock")
	_, backend := echoTCP(t, "127.0.0.1:0")
	p := start(t, binary, launch{args: []string{"--listen=" + path, backend}})
	c := dialRetry(t, "unix", path, 10*time.Second)
	mustEcho(t, c, 100)
	c.Close()
	// Another service takes the path.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	other, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	other.(*net.UnixListener).SetUnlinkOnClose(false)
	defer other.Close()
	reloadTo(t, p, 1)
	p.signal(syscall.SIGTERM)
	if code := p.waitExit(20 * time.Second); code != 0 {
		t.Fatalf("exit status %d", code)
	}
	if st, err := os.Lstat(path); err != nil || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("the other service's socket file at %s is gone: %v", path, err)
	}
}
