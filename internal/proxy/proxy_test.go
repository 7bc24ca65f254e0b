// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/backend"
)

func TestForwardsEveryByte(t *testing.T) {
	dir := shortDir(t)
	backends := map[string]string{
		"tcp":      listenBackend(t, "tcp", "127.0.0.1:0", echo),
		"unix":     listenBackend(t, "unix", filepath.Join(dir, "b"), echo),
		"abstract": listenBackend(t, "unix", "@spx-proxy-"+filepath.Base(dir), echo),
	}
	payload := randomBytes(t, 4<<20)
	for name, addr := range backends {
		t.Run(name, func(t *testing.T) {
			p := start(t, addr, Config{})
			roundTrip(t, p.addr, payload)
			roundTrip(t, p.addr, []byte("x"))
		})
	}
}

func TestHalfCloseKeepsTheReply(t *testing.T) {
	// The backend reads the whole request, then answers: the original
	// systemd-socket-proxyd drops this answer.
	reply := randomBytes(t, 1<<20)
	addr := listenBackend(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
		io.Copy(io.Discard, c)
		c.Write(reply)
	})
	p := start(t, addr, Config{})
	c := dial(t, p.addr)
	c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	c.CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, reply) {
		t.Fatalf("after half-close got %d bytes (%v), want %d", len(got), err, len(reply))
	}
}

func TestBackendHalfCloseKeepsClientStream(t *testing.T) {
	// The backend says its piece and shuts down writing, then keeps
	// reading; the client must still get everything it sends through.
	received := make(chan []byte, 1)
	addr := listenBackend(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
		c.Write([]byte("hello"))
		c.(*net.TCPConn).CloseWrite()
		b, _ := io.ReadAll(c)
		received <- b
	})
	p := start(t, addr, Config{})
	c := dial(t, p.addr)
	greeting, err := io.ReadAll(c) // ends at the backend's half-close
	if err != nil || string(greeting) != "hello" {
		t.Fatalf("greeting %q, %v", greeting, err)
	}
	body := randomBytes(t, 1<<20)
	if _, err := c.Write(body); err != nil {
		t.Fatalf("client write after backend half-close: %v", err)
	}
	c.CloseWrite()
	if got := recv(t, received, "what the backend received"); !bytes.Equal(got, body) {
		t.Fatalf("backend received %d bytes, want %d", len(got), len(body))
	}
}

func TestExactConnectionLimit(t *testing.T) {
	addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	p := start(t, addr, Config{MaxConnections: 2})
	var held []*net.TCPConn
	for i := 0; i < 2; i++ {
		c := dial(t, p.addr)
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatalf("connection %d within the limit not proxied: %v", i+1, err)
		}
		held = append(held, c)
	}
	third := dial(t, p.addr)
	third.Write([]byte("ping"))
	if n, err := third.Read(make([]byte, 4)); err == nil {
		t.Fatalf("third connection over a limit of 2 got %d bytes; want it closed", n)
	}
	if st := p.srv.Stats(); st.Refused != 1 || st.Active != 2 {
		t.Fatalf("stats %+v: want 1 refused, 2 active", st)
	}
	held[0].Close()
	// Once a slot is free a new client gets through; poll, since the
	// proxy notices the close asynchronously.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c := dial(t, p.addr)
		c.Write([]byte("ping"))
		if _, err := io.ReadFull(c, make([]byte, 4)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no connection admitted after one of the two closed")
		}
	}
	if !strings.Contains(p.logs.String(), "connection limit reached") {
		t.Fatalf("no warning about the limit in logs:\n%s", p.logs)
	}
}

func TestIdleExitWhenNeverUsed(t *testing.T) {
	addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	p := start(t, addr, Config{ExitIdleTime: 100 * time.Millisecond})
	select {
	case err := <-p.done:
		p.done <- err // for Cleanup
	case <-time.After(10 * time.Second):
		t.Fatal("proxy never used did not exit after its idle time")
	}
}

func TestIdleExitWaitsForOpenConnection(t *testing.T) {
	addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	p := start(t, addr, Config{ExitIdleTime: 50 * time.Millisecond})
	c := dial(t, p.addr)
	c.Write([]byte("ping"))
	if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	// Well past the idle time, with the connection open, it must still run
	// and forward.
	select {
	case <-p.done:
		t.Fatal("proxy exited while a connection was open")
	case <-time.After(300 * time.Millisecond):
	}
	c.Write([]byte("pong"))
	if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
		t.Fatalf("open connection stopped forwarding: %v", err)
	}
	c.Close()
	select {
	case err := <-p.done:
		p.done <- err
	case <-time.After(10 * time.Second):
		t.Fatal("proxy did not exit once idle after its last connection")
	}
}

func TestBackendRefusedClosesClientAndLogs(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p := start(t, addr, Config{ConnectTimeout: -1})
	c := dial(t, p.addr)
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("client of an unreachable backend was not closed")
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(p.logs.String(), "refused") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	logs := p.logs.String()
	if !strings.Contains(logs, addr) || !strings.Contains(logs, "refused") || !strings.Contains(logs, "client=127.0.0.1:") {
		t.Fatalf("log should name client, backend and reason:\n%s", logs)
	}
	if got := p.srv.Stats().BackendErrors; got != 1 {
		t.Fatalf("BackendErrors = %d", got)
	}
}

func TestBackendResetReachesClient(t *testing.T) {
	addr := listenBackend(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
		c.Read(make([]byte, 4))
		c.(*net.TCPConn).SetLinger(0)
		c.Close() // RST
	})
	p := start(t, addr, Config{})
	c := dial(t, p.addr)
	c.Write([]byte("ping"))
	_, err := io.ReadAll(c)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client saw %v after the backend reset, want a reset", err)
	}
}

func TestShutdownClosesConnections(t *testing.T) {
	addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	p := start(t, addr, Config{})
	c := dial(t, p.addr)
	c.Write([]byte("ping"))
	io.ReadFull(c, make([]byte, 4))
	p.cancel()
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection still open after shutdown")
	}
	if _, err := net.DialTimeout("tcp", p.addr, time.Second); err == nil {
		t.Fatal("listener still accepting after shutdown")
	}
}

func TestNoDescriptorLeak(t *testing.T) {
	noLeak(t)
	addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	p := start(t, addr, Config{})
	roundTrip(t, p.addr, randomBytes(t, 8<<20))
	for range 20 {
		roundTrip(t, p.addr, []byte("hello"))
	}
	waitFor(t, "connections to close", func() bool { return p.srv.Stats().Active == 0 })
}

// TestBackendsPerListener: two listeners, each with its own backend.
func TestBackendsPerListener(t *testing.T) {
	noLeak(t)
	named := func(name string) func(net.Conn) {
		return func(c net.Conn) { c.Write([]byte(name)) }
	}
	a := listenBackend(t, "tcp", "127.0.0.1:0", named("alpha"))
	b := listenBackend(t, "unix", filepath.Join(shortDir(t), "b"), named("beta"))
	ba, _ := backend.Parse(b)
	lnA, err := activation.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lnB, err := activation.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lnB.Name = "beta"
	p := startOn(t, lnA, a, Config{
		Listeners: []activation.Listener{lnB},
		Backends:  map[string][]backend.Address{"beta": {ba}},
	})
	for addr, want := range map[string]string{lnA.Addr().String(): "alpha", lnB.Addr().String(): "beta"} {
		c := dial(t, addr)
		got, err := io.ReadAll(c)
		if err != nil || string(got) != want {
			t.Errorf("client of %s got %q, %v; want %q", addr, got, err, want)
		}
	}
	_ = p
}
