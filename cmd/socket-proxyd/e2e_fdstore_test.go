// SPDX-License-Identifier: Apache-2.0

package main_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeStore is systemd's end of NOTIFY_SOCKET with an fd store: it keeps
// the descriptors sent with FDSTORE=1 under their FDNAME=, drops (closes)
// them on FDSTOREREMOVE=1, and hands them to the next instance as systemd
// does, in an order of its own.
type fakeStore struct {
	path string
	conn *net.UnixConn
	done chan struct{}
	// full drops every descriptor sent to it, as systemd 252 does past
	// FileDescriptorStoreMax= (with a line in its journal, no answer).
	full bool
	// max, when not zero, is FileDescriptorStoreMax=: systemd 252 keeps
	// descriptors in the order they come, and closes those past it.
	max int
	// synced hears each SYNC=1 the store receives (see take).
	synced chan struct{}

	mu      sync.Mutex
	stored  []inherited
	removed []string
	msgs    []string
}

func newFakeStore(t *testing.T) *fakeStore { return newStore(t, false) }

func newStore(t *testing.T, full bool) *fakeStore {
	t.Helper()
	path := filepath.Join(shortDir(t), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeStore{path: path, conn: conn, done: make(chan struct{}), full: full, synced: make(chan struct{}, 1)}
	go s.receive()
	t.Cleanup(func() {
		conn.Close()
		<-s.done
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, f := range s.stored {
			f.file.Close()
		}
	})
	return s
}

func (s *fakeStore) receive() {
	defer close(s.done)
	buf, oob := make([]byte, 4096), make([]byte, syscall.CmsgSpace(253*4))
	for {
		n, oobn, _, _, err := s.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			return
		}
		var fds []int
		if cmsgs, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range cmsgs {
				if rights, err := syscall.ParseUnixRights(&m); err == nil {
					fds = append(fds, rights...)
				}
			}
		}
		fields := map[string]string{}
		s.mu.Lock()
		for _, line := range strings.Split(string(buf[:n]), "\n") {
			k, v, _ := strings.Cut(line, "=")
			fields[k] = v
			s.msgs = append(s.msgs, line)
		}
		name := fields["FDNAME"]
		switch {
		case fields["SYNC"] == "1":
			s.synced <- struct{}{}
		case fields["FDSTORE"] == "1" && !s.full:
			for len(fds) > 0 && (s.max == 0 || len(s.stored) < s.max) {
				s.stored = append(s.stored, inherited{file: os.NewFile(uintptr(fds[0]), name), name: name})
				fds = fds[1:]
			}
		case fields["FDSTOREREMOVE"] == "1":
			kept := s.stored[:0]
			for _, f := range s.stored {
				if f.name == name {
					f.file.Close()
				} else {
					kept = append(kept, f)
				}
			}
			s.stored = kept
			s.removed = append(s.removed, name)
		}
		s.mu.Unlock()
		for _, fd := range fds {
			syscall.Close(fd)
		}
	}
}

// take returns copies of the stored descriptors, shuffled, for the next
// instance; the caller closes them. It first waits for the messages sent
// before it to be handled, as systemd has by the time it starts the next
// instance: a SYNC=1 sent now is queued behind them.
func (s *fakeStore) take(t *testing.T) []inherited {
	t.Helper()
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: s.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("SYNC=1")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.synced:
	case <-time.After(10 * time.Second):
		t.Fatal("the fake store did not get to its SYNC=1 within 10s")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []inherited
	for _, f := range s.stored {
		fd, err := syscall.Dup(int(f.file.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		syscall.CloseOnExec(fd)
		out = append(out, inherited{file: os.NewFile(uintptr(fd), f.name), name: f.name})
	}
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

func (s *fakeStore) state() (stored int, removed []string, msgs []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.stored), append([]string(nil), s.removed...), append([]string(nil), s.msgs...)
}

// TestFDStoreRestart: with --fdstore=on-stop, SIGTERM hands 8 streams in
// the middle of their transfer (and a --listen socket) to the fd store and
// exits 0; the next instance, started with them as systemd does, takes
// them back, empties the store and carries on: every stream ends whole.
func TestFDStoreRestart(t *testing.T) {
	t.Parallel()
	bl := listenTCP(t, "127.0.0.1:0")
	serve(t, bl, slowEcho)
	front, addr := inheritTCP(t, "web")
	bound := filepath.Join(shortDir(t), "bound.sock")
	store := newFakeStore(t)
	args := []string{"--fdstore=on-stop", "--listen", bound, bl.Addr().String()}
	a := start(t, binary, launch{args: args, fds: []inherited{front}, env: []string{"NOTIFY_SOCKET=" + store.path}})
	if err := a.waitStderr("listening", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	const streams = 8
	stop, errs := startStreams(addr, streams)
	viaPath := dialRetry(t, "unix", bound, 5*time.Second)
	mustEcho(t, viaPath, 100)
	time.Sleep(300 * time.Millisecond) // the streams under way

	a.signal(syscall.SIGTERM)
	if code := a.waitExit(20 * time.Second); code != 0 {
		t.Fatalf("the first instance exited with %d, want 0:\n%s", code, a.stderr.String())
	}
	if !strings.Contains(a.stderr.String(), "connections handed to the fd store connections=9") {
		t.Fatalf("the first instance did not store its 9 connections:\n%s", a.stderr.String())
	}
	if _, err := os.Stat(bound); err != nil {
		t.Errorf("the --listen socket's file went with the first instance: %v", err)
	}
	stored := store.take(t)
	b := start(t, binary, launch{args: args, fds: append([]inherited{front}, stored...), env: []string{"NOTIFY_SOCKET=" + store.path}})
	if err := b.waitStderr("resumed connections connections=9 reset=0", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, f := range stored {
		f.file.Close() // the test's copies; the store's go on FDSTOREREMOVE=1
	}
	if err := poll(10*time.Second, func() bool {
		n, removed, _ := store.state()
		return n == 0 && len(removed) == 2
	}, func() string {
		n, removed, msgs := store.state()
		return fmt.Sprintf("the store still holds %d descriptors, removed %q; messages %q", n, removed, msgs)
	}); err != nil {
		t.Fatal(err)
	}
	mustEcho(t, viaPath, 100)
	endStreams(t, stop, errs)
	if err := stillServes(addr); err != nil {
		t.Error(err)
	}
	c := dialRetry(t, "unix", bound, 5*time.Second)
	mustEcho(t, c, 100)
}

// TestFDStoreNeedsSystemd: --fdstore without NOTIFY_SOCKET is refused at
// start-up, saying why.
func TestFDStoreNeedsSystemd(t *testing.T) {
	t.Parallel()
	fd, _ := inheritTCP(t, "web")
	code, _, stderr := run(t, binary, launch{args: []string{"--fdstore=on-stop", "127.0.0.1:9"}, fds: []inherited{fd}})
	if code != 1 || !strings.Contains(stderr, "NOTIFY_SOCKET is not set") {
		t.Errorf("exit %d, stderr %q; want 1 and NOTIFY_SOCKET named", code, stderr)
	}
}

// TestFDStoreTooSmall: when systemd says its store is too small for the
// connections ($FDSTORE, systemd >= 254), nothing is stored and they drain
// as on a plain stop: each ends whole, and the proxy exits 0.
func TestFDStoreTooSmall(t *testing.T) {
	t.Parallel()
	bl := listenTCP(t, "127.0.0.1:0")
	serve(t, bl, slowEcho)
	front, addr := inheritTCP(t, "web")
	store := newFakeStore(t)
	a := start(t, binary, launch{args: []string{"--fdstore=on-stop", bl.Addr().String()}, fds: []inherited{front},
		env: []string{"NOTIFY_SOCKET=" + store.path, "FDSTORE=3"}})
	stop, errs := startStreams(addr, 2)
	if err := poll(10*time.Second, func() bool { return strings.Contains(lastStatus(store), "2 connections") },
		func() string { return "the two streams never showed in STATUS=" }); err != nil {
		t.Fatal(err)
	}
	a.signal(syscall.SIGTERM)
	if err := a.waitStderr("letting them finish", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	endStreams(t, stop, errs)
	if code := a.waitExit(20 * time.Second); code != 0 {
		t.Errorf("exit status %d, want 0", code)
	}
	if n, _, _ := store.state(); n != 0 {
		t.Errorf("the store holds %d descriptors, want none", n)
	}
}

// lastStatus is the last STATUS= the store heard.
func lastStatus(s *fakeStore) string {
	_, _, msgs := s.state()
	for i := len(msgs) - 1; i >= 0; i-- {
		if strings.HasPrefix(msgs[i], "STATUS=") {
			return msgs[i]
		}
	}
	return ""
}

// TestFDStoreBadRecord: a store whose record cannot be read (damaged, or
// written by something else) has its connections reset, never forwarded,
// and emptied; the proxy serves new clients all the same.
func TestFDStoreBadRecord(t *testing.T) {
	t.Parallel()
	_, backend := echoTCP(t, "127.0.0.1:0")
	front, addr := inheritTCP(t, "web")
	rec, err := os.CreateTemp(shortDir(t), "record")
	if err != nil {
		t.Fatal(err)
	}
	defer rec.Close()
	rec.WriteString("SPXHOFF\x00\x01\x00not a record")
	ln := listenTCP(t, "127.0.0.1:0")
	peer := dial(t, "tcp", ln.Addr().String())
	conn, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := conn.File()
	conn.Close()
	store := newFakeStore(t)
	p := start(t, binary, launch{args: []string{"--fdstore=on-stop", backend},
		fds: []inherited{front, {file: cf, name: "socket-proxyd-conn"}, {file: rec, name: "socket-proxyd-record"}},
		env: []string{"NOTIFY_SOCKET=" + store.path}})
	cf.Close()
	if err := p.waitStderr("cannot resume from the fd store", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if k, err := peer.Read(make([]byte, 10)); k != 0 || !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the stored connection's peer read %d bytes, %v; want a reset", k, err)
	}
	if err := stillServes(addr); err != nil {
		t.Error(err)
	}
	if _, removed, _ := store.state(); len(removed) != 2 {
		t.Errorf("FDSTOREREMOVE=1 for %q, want both names", removed)
	}
}

// TestFDStoreTooSmallKeepsWhatFits: a store too small for every
// connection (systemd 252 does not say its size, and closes what comes
// past it) still holds the record, which goes first: the next instance
// resumes the connection that fits, resets the others, and says how to
// size the store.
func TestFDStoreTooSmallKeepsWhatFits(t *testing.T) {
	t.Parallel()
	bl := listenTCP(t, "127.0.0.1:0")
	serve(t, bl, echo)
	front, addr := inheritTCP(t, "web")
	store := newFakeStore(t)
	store.mu.Lock()
	store.max = 1 + 2 // the record, and one idle connection's two sockets
	store.mu.Unlock()
	args := []string{"--fdstore=on-stop", bl.Addr().String()}
	a := start(t, binary, launch{args: args, fds: []inherited{front}, env: []string{"NOTIFY_SOCKET=" + store.path}})
	var conns []net.Conn
	for range 3 {
		c := dial(t, "tcp", addr)
		mustEcho(t, c, 100) // idle now: nothing in flight, two descriptors
		conns = append(conns, c)
	}
	a.signal(syscall.SIGTERM)
	if code := a.waitExit(20 * time.Second); code != 0 {
		t.Fatalf("the first instance exited with %d, want 0:\n%s", code, a.stderr.String())
	}
	stored := store.take(t)
	b := start(t, binary, launch{args: args, fds: append([]inherited{front}, stored...), env: []string{"NOTIFY_SOCKET=" + store.path}})
	for _, want := range []string{"resumed connections connections=1 reset=2", "if FileDescriptorStoreMax= is below 6 per connection plus 1, raise it"} {
		if err := b.waitStderr(want, 20*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range stored {
		f.file.Close()
	}
	served := 0
	for _, c := range conns {
		if echoRoundTrip(c, 100) == nil {
			served++
		}
	}
	if served != 1 {
		t.Errorf("%d connections served after the restart, want the one the store held", served)
	}
}

// TestFDStoreDroppedResets: a store that silently keeps nothing (systemd 252
// past FileDescriptorStoreMax=) leaves each client a reset, never a clean
// end in the middle of its download.
func TestFDStoreDroppedResets(t *testing.T) {
	t.Parallel()
	bl := listenTCP(t, "127.0.0.1:0")
	serve(t, bl, slowEcho)
	front, addr := inheritTCP(t, "web")
	store := newStore(t, true)
	a := start(t, binary, launch{args: []string{"--fdstore=on-stop", bl.Addr().String()}, fds: []inherited{front},
		env: []string{"NOTIFY_SOCKET=" + store.path}})
	c := dial(t, "tcp", addr)
	mustEcho(t, c, 1000)
	a.signal(syscall.SIGTERM)
	if code := a.waitExit(20 * time.Second); code != 0 {
		t.Fatalf("exit status %d, want 0", code)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if k, err := c.Read(make([]byte, 10)); k != 0 || !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the client read %d bytes, %v; want a reset", k, err)
	}
}

// TestFDStoreKeepsFlow: a datagram flow goes through the fd store too: after
// the restart the backend sees the client's datagrams come from the same
// socket as before.
func TestFDStoreKeepsFlow(t *testing.T) {
	t.Parallel()
	udp := listenUDP(t)
	dns := inherited{file: fileOf(t, udp), name: "dns"}
	store := newFakeStore(t)
	args := []string{"--fdstore=on-stop", whoEchoes(t)}
	a := start(t, binary, launch{args: args, fds: []inherited{dns}, env: []string{"NOTIFY_SOCKET=" + store.path}})
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	before := askDatagram(t, c, udp.LocalAddr(), "one")
	a.signal(syscall.SIGTERM)
	if code := a.waitExit(20 * time.Second); code != 0 || !strings.Contains(a.stderr.String(), "descriptors=1") {
		t.Fatalf("exit status %d, want 0 with the flow's socket stored:\n%s", code, a.stderr.String())
	}
	stored := store.take(t)
	b := start(t, binary, launch{args: args, fds: append([]inherited{dns}, stored...), env: []string{"NOTIFY_SOCKET=" + store.path}})
	if err := b.waitStderr("flows=1", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, f := range stored {
		f.file.Close()
	}
	after := askDatagram(t, c, udp.LocalAddr(), "two")
	from := func(s string) string { f, _, _ := strings.Cut(s, " "); return f }
	if from(before) != from(after) || !strings.HasSuffix(after, " two") {
		t.Errorf("before the restart the backend saw %q, after %q: the flow was not kept", before, after)
	}
}

// TestFDStoreCrash: with --fdstore=always each connection is in the fd
// store from the moment it opens, so a kill -9 in the middle of 8 transfers
// loses none of them: the next instance, started with what the store holds
// (and no record: the first instance never wrote one), recovers each, and
// every stream ends whole, SHA-256 checked both ways. A SIGTERM instead
// hands them over with a record, as on-stop does, and they stay kept; so
// does a reload in place (SIGHUP) before the kill -9. Connections that end
// leave the store.
func TestFDStoreCrash(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		reload bool // SIGHUP first
		sig    syscall.Signal
		want   string
	}{
		{"kill", false, syscall.SIGKILL, "recovered connections after a crash connections=8 reset=0"},
		{"term", false, syscall.SIGTERM, "resumed connections connections=8 reset=0"},
		{"reload-then-kill", true, syscall.SIGKILL, "recovered connections after a crash connections=8 reset=0"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			bl := listenTCP(t, "127.0.0.1:0")
			serve(t, bl, slowEcho)
			front, addr := inheritTCP(t, "web")
			store := newFakeStore(t)
			args := []string{"--fdstore=always", bl.Addr().String()}
			env := []string{"NOTIFY_SOCKET=" + store.path}
			a := start(t, binary, launch{args: args, fds: []inherited{front}, env: env})
			if err := a.waitStderr("listening", 10*time.Second); err != nil {
				t.Fatal(err)
			}
			const streams = 8
			stop, errs := startStreams(addr, streams)
			capsules := func() bool { n, _, _ := store.state(); return n == streams }
			if err := poll(10*time.Second, capsules, func() string {
				n, _, msgs := store.state()
				return fmt.Sprintf("the store holds %d descriptors, want %d (one capsule per connection); messages %q", n, streams, msgs)
			}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(300 * time.Millisecond) // the streams under way
			if tt.reload {
				reloadTo(t, a, 1)
				if !strings.Contains(a.stderr.String(), "resumed connections connections=8 reset=0") {
					t.Fatalf("the reload did not carry the 8 connections:\n%s", a.stderr.String())
				}
				time.Sleep(300 * time.Millisecond)
			}

			a.signal(tt.sig)
			a.waitExit(20 * time.Second)
			stored := store.take(t)
			b := start(t, binary, launch{args: args, fds: append([]inherited{front}, stored...), env: env})
			if err := b.waitStderr(tt.want, 20*time.Second); err != nil {
				t.Fatal(err)
			}
			for _, f := range stored {
				f.file.Close()
			}
			if err := poll(10*time.Second, capsules, func() string {
				n, removed, _ := store.state()
				return fmt.Sprintf("after the restart the store holds %d descriptors, want the %d capsules; removed %q", n, streams, removed)
			}); err != nil {
				t.Error(err)
			}
			// Still kept once bytes flow again: an adopted kept
			// connection splices, and so never leaves the store.
			time.Sleep(300 * time.Millisecond)
			if n, removed, _ := store.state(); n != streams {
				t.Errorf("with the streams going on after the restart, the store holds %d descriptors, want the %d capsules; removed %q", n, streams, removed)
			}
			endStreams(t, stop, errs)
			if err := poll(10*time.Second, func() bool {
				n, _, _ := store.state()
				return n == 0
			}, func() string {
				n, removed, _ := store.state()
				return fmt.Sprintf("the store still holds %d descriptors after every stream ended; removed %q", n, removed)
			}); err != nil {
				t.Error(err)
			}
			if err := stillServes(addr); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestFDStoreCrashStates: a kill -9 with --fdstore=always, and what becomes
// of each connection. One half-closed, its PROXY header sent: the next
// instance recovers it, the header is not sent again, and the backend's
// last words and its end reach the client. One still waiting for its
// backend (never kept, as nothing was forwarded yet): reset, never a clean
// end that would pass for a complete answer.
func TestFDStoreCrashStates(t *testing.T) {
	t.Parallel()
	dir := shortDir(t)
	late, live := filepath.Join(dir, "late.sock"), filepath.Join(dir, "live.sock")
	release := make(chan struct{})
	serve(t, listenUnix(t, live), headerEchoBye(t, release))
	web, webAddr := inheritTCP(t, "web")
	api, apiAddr := inheritTCP(t, "api")
	store := newFakeStore(t)
	args := []string{"--fdstore=always", "--proxy-protocol=v1", "--connect-timeout=30s", "--backend", "web=" + late, "--backend", "api=" + live}
	env := []string{"NOTIFY_SOCKET=" + store.path}
	a := start(t, binary, launch{args: args, fds: []inherited{web, api}, env: env})

	// Its backend does not exist yet. It sends nothing: unread bytes would
	// make any close a reset, and the test is that this one is.
	waiting := dial(t, "tcp", webAddr)
	halfClosed := dial(t, "tcp", apiAddr)
	if _, err := halfClosed.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	closeWrite(halfClosed)
	readExactly(t, halfClosed, "abc")
	if err := poll(10*time.Second, func() bool { n, _, _ := store.state(); return n == 1 }, func() string {
		n, _, msgs := store.state()
		return fmt.Sprintf("the store holds %d descriptors, want the half-closed connection's capsule; messages %q", n, msgs)
	}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the client's end reaches the backend

	a.signal(syscall.SIGKILL)
	a.waitExit(10 * time.Second)
	if k, err := waiting.Read(make([]byte, 10)); k != 0 || !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the connection still waiting for its backend: read %d bytes, %v; want a reset", k, err)
	}
	stored := store.take(t)
	b := start(t, binary, launch{args: args, fds: append([]inherited{web, api}, stored...), env: env})
	if err := b.waitStderr("recovered connections after a crash connections=1 reset=0", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, f := range stored {
		f.file.Close()
	}
	close(release)
	readExactly(t, halfClosed, "bye")
	if err := closedWithoutData(halfClosed, 5*time.Second); err != nil {
		t.Errorf("half-closed connection: %v", err)
	}
	if err := poll(10*time.Second, func() bool { n, _, _ := store.state(); return n == 0 }, func() string {
		n, removed, _ := store.state()
		return fmt.Sprintf("the store still holds %d descriptors; removed %q", n, removed)
	}); err != nil {
		t.Error(err)
	}
}
