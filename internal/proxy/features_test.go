// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/backend"
)

// Tests of the options of issue 4, over real sockets: connect retries,
// idle timeout, keepalive, PROXY protocol, backends per listener and the
// graceful stop.

// TestIdleTimeout closes a silent connection and not a busy one.
func TestIdleTimeout(t *testing.T) {
	noLeak(t)
	addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	// A busy client's pace (an exchange every 50 ms) must stay far inside
	// the timeout even under -race on a loaded 2-core machine: a 1 s gap
	// would be a false failure. TestIdleTimeoutBounds checks the bounds.
	const idle = time.Second
	p := start(t, addr, Config{IdleTimeout: idle})
	silent := dial(t, p.addr)
	busy := dial(t, p.addr)
	silent.Write([]byte("ping"))
	io.ReadFull(silent, make([]byte, 4))
	begin := time.Now()
	// The busy one talks every 50 ms for 2 idle timeouts.
	for time.Since(begin) < 2*idle {
		if _, err := busy.Write([]byte("ping")); err != nil {
			t.Fatalf("busy connection: %v", err)
		}
		if _, err := io.ReadFull(busy, make([]byte, 4)); err != nil {
			t.Fatalf("busy connection closed after %v: %v", time.Since(begin), err)
		}
		time.Sleep(50 * time.Millisecond) // the pace of the busy client
	}
	silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := silent.Read(make([]byte, 1))
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("silent connection still open after %v: %v", time.Since(begin), err)
	}
	if st := p.srv.Stats(); st.Active != 1 {
		t.Errorf("%d active, want the busy one", st.Active)
	}
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

// startStoppable runs a proxy whose Run the test waits for itself.
func startStoppable(t *testing.T, backendAddr string, cfg Config) (*running, activation.Listener) {
	t.Helper()
	ln, err := activation.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr, err := backend.Parse(backendAddr)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	cfg.Listeners = []activation.Listener{ln}
	cfg.Backend = []backend.Address{addr}
	cfg.Log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{srv: New(cfg), addr: ln.Addr().String(), logs: logs, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- r.srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		r.srv.CloseConnections()
		recv(t, r.done, "Run to return")
	})
	return r, ln
}

// slowBackend answers each request line with size bytes, sent in pieces
// while release is open, then the rest once it is closed.
func slowReply(release <-chan struct{}, size int) func(net.Conn) {
	return func(c net.Conn) {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := c.Read(make([]byte, 16)); err != nil {
			return
		}
		reply := bytes.Repeat([]byte("r"), size)
		c.Write(reply[:size/2])
		<-release
		c.Write(reply[size/2:])
	}
}

// TestGracefulStop: when ctx ends the listener closes at once, the
// connection in the middle of its reply gets all of it, and Run returns
// once it is done.
func TestGracefulStop(t *testing.T) {
	noLeak(t)
	release := make(chan struct{})
	addr := listenBackend(t, "tcp", "127.0.0.1:0", slowReply(release, 1<<20))
	p, _ := startStoppable(t, addr, Config{ShutdownTimeout: 20 * time.Second})
	c := dial(t, p.addr)
	c.Write([]byte("GET"))
	if _, err := io.ReadFull(c, make([]byte, 1<<19)); err != nil {
		t.Fatal(err)
	}
	p.cancel()
	// Stopped accepting: the listener is gone.
	waitFor(t, "the listener to close", func() bool {
		c, err := net.Dial("tcp", p.addr)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	select {
	case <-p.done:
		t.Fatal("Run returned with a connection in the middle of its reply")
	default:
	}
	close(release)
	rest, err := io.ReadAll(c)
	if err != nil || len(rest) != 1<<19 {
		t.Fatalf("rest of the reply: %d bytes, %v", len(rest), err)
	}
	c.Close() // the client is done too: the connection ends
	select {
	case err := <-p.done:
		p.done <- err
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return once the last connection closed")
	}
}

// TestGracefulStopTimesOut: a connection still open after ShutdownTimeout
// is closed, and CloseConnections cuts the wait short.
func TestGracefulStopTimesOut(t *testing.T) {
	for _, name := range []string{"timeout", "CloseConnections"} {
		t.Run(name, func(t *testing.T) {
			noLeak(t)
			release := make(chan struct{})
			defer close(release)
			addr := listenBackend(t, "tcp", "127.0.0.1:0", slowReply(release, 1<<10))
			timeout := 300 * time.Millisecond
			if name == "CloseConnections" {
				timeout = time.Hour
			}
			p, _ := startStoppable(t, addr, Config{ShutdownTimeout: timeout})
			c := dial(t, p.addr)
			c.Write([]byte("GET"))
			io.ReadFull(c, make([]byte, 1<<9))
			begin := time.Now()
			p.cancel()
			if name == "CloseConnections" {
				p.srv.CloseConnections()
			}
			select {
			case err := <-p.done:
				p.done <- err
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return")
			}
			if took := time.Since(begin); name == "timeout" && took < timeout {
				t.Errorf("returned after %v, before the shutdown timeout", took)
			}
			if _, err := io.ReadAll(c); err == nil {
				t.Error("the connection cut short ended with a clean EOF, want a reset")
			}
		})
	}
}

// TestGracefulStopRetryingConnection: a client waiting for its backend
// when the stop comes still gets served once the backend is up.
func TestGracefulStopRetryingConnection(t *testing.T) {
	noLeak(t)
	addr := filepath.Join(shortDir(t), "late.sock")
	p, _ := startStoppable(t, addr, Config{ShutdownTimeout: 20 * time.Second})
	c := dial(t, p.addr)
	c.Write([]byte("hello"))
	waitFor(t, "the retry", func() bool { return p.srv.Stats().Active == 1 })
	p.cancel()
	listenBackend(t, "unix", addr, echo)
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("client waiting for the backend at stop: %v", err)
	}
	c.CloseWrite()
	io.ReadAll(c)
	c.Close()
	select {
	case err := <-p.done:
		p.done <- err
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	fmt.Fprint(io.Discard, got)
}
