// SPDX-License-Identifier: Apache-2.0

package main_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Several backends behind one socket, with the real binary: four
// instances of a service on unix sockets, as app@1 ... app@4 would be.

// instance is one backend: it greets each connection with its name and a
// newline, then echoes.
type instance struct {
	name, path string
	s          *server
}

func startInstance(t *testing.T, name, path string) *instance {
	t.Helper()
	in := &instance{name: name, path: path}
	in.s = serve(t, listenUnix(t, path), func(c net.Conn) {
		fmt.Fprintf(c, "%s\n", name)
		echo(c)
	})
	return in
}

// kill ends the instance as a crash would: its socket and every
// connection it has (the file stays, refusing).
func (in *instance) kill() {
	in.s.ln.(*net.UnixListener).SetUnlinkOnClose(false)
	in.s.ln.Close()
	in.s.mu.Lock()
	for c := range in.s.conns {
		c.Close()
	}
	in.s.mu.Unlock()
}

func fourInstances(t *testing.T) ([]*instance, []string) {
	dir := shortDir(t)
	var ins []*instance
	var paths []string
	for i := 1; i <= 4; i++ {
		in := startInstance(t, fmt.Sprintf("app@%d", i), filepath.Join(dir, fmt.Sprintf("%d.sock", i)))
		ins = append(ins, in)
		paths = append(paths, in.path)
	}
	return ins, paths
}

// greetedBy connects and says which instance greeted the connection.
func greetedBy(addr string) (net.Conn, string, error) {
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		return nil, "", err
	}
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		c.Close()
		return nil, "", fmt.Errorf("no greeting: %v", err)
	}
	return c, strings.TrimSpace(line), nil
}

// echoes says whether c still carries bytes both ways.
func echoes(c net.Conn) bool {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return false
	}
	_, err := io.ReadFull(c, make([]byte, 4))
	return err == nil
}

// TestOneOfFourDiesUnderLoad: new clients come all along while one of four
// instances dies: none of them fails, only the connections on the dead one
// end, the death is one log line naming it, and STATUS= says 3 of 4 up.
func TestOneOfFourDiesUnderLoad(t *testing.T) {
	t.Parallel()
	ins, paths := fourInstances(t)
	fd, addr := inheritTCP(t, "web")
	n := newNotifyReceiver(t)
	p := start(t, binary, launch{args: append([]string{"--balance=round-robin"}, paths...), fds: []inherited{fd}, env: []string{n.env()}})
	if err := n.wait("READY=1", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	held := map[net.Conn]string{}
	for range 8 {
		c, name, err := greetedBy(addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held[c] = name
	}
	// A client the proxy put on app@2 just before it died was open on
	// it, and may end with it (unix connect returns once the connection
	// is queued, before the instance even greets it); any other failure,
	// and any failure once the death is past, is one too many.
	var served, failed atomic.Int64
	var firstErr atomic.Value
	var killedAt atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				began := time.Now()
				c, name, err := greetedBy(addr)
				if err == nil && !echoes(c) {
					err = fmt.Errorf("no echo from %s", name)
				}
				if c != nil {
					c.Close()
				}
				if err != nil {
					k := killedAt.Load()
					if (name == "" || name == "app@2") && k != 0 && began.UnixNano() < k {
						continue // it was open on app@2 when it died
					}
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				served.Add(1)
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	killedAt.Store(time.Now().UnixNano())
	ins[1].kill()
	time.Sleep(700 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("%d new clients served, %d failed", served.Load(), failed.Load())
	if failed.Load() > 0 {
		t.Errorf("%d new clients failed, the first: %v", failed.Load(), firstErr.Load())
	}
	for c, name := range held {
		if alive := echoes(c); alive == (name == "app@2") {
			t.Errorf("a connection held on %s: alive %v", name, alive)
		}
	}
	logs := p.stderr.String()
	if got := strings.Count(logs, "backend down"); got != 1 || !strings.Contains(logs, "backend="+paths[1]) {
		t.Errorf("%d lines say a backend went down, want 1 naming %s:\n%s", got, paths[1], logs)
	}
	if err := poll(5*time.Second, func() bool {
		for _, m := range n.messages() {
			if strings.HasPrefix(m, "STATUS=") && strings.Contains(m, "3 of 4 backends up") {
				return true
			}
		}
		return false
	}, func() string { return fmt.Sprintf("no STATUS= with 3 of 4 backends up: %q", n.messages()) }); err != nil {
		t.Error(err)
	}
}

// TestAllDownThenOneStarts: clients that come while every instance is
// down wait, and the first instance to start serves them all, within
// --connect-timeout.
func TestAllDownThenOneStarts(t *testing.T) {
	t.Parallel()
	dir := shortDir(t)
	var paths []string
	for i := 1; i <= 4; i++ {
		paths = append(paths, filepath.Join(dir, fmt.Sprintf("%d.sock", i)))
	}
	fd, addr := inheritTCP(t, "web")
	n := newNotifyReceiver(t)
	start(t, binary, launch{args: append([]string{"--connect-timeout=5s", "--balance=least-connections"}, paths...), fds: []inherited{fd}, env: []string{n.env()}})
	if err := n.wait("READY=1", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	type result struct {
		name string
		err  error
	}
	results := make(chan result, 4)
	for range 4 {
		go func() {
			c, name, err := greetedBy(addr)
			if c != nil {
				c.Close()
			}
			results <- result{name, err}
		}()
	}
	time.Sleep(500 * time.Millisecond)
	began := time.Now()
	startInstance(t, "app@3", paths[2])
	for range 4 {
		r := <-results
		if r.err != nil || r.name != "app@3" {
			t.Errorf("waiting client: %q, %v; want served by app@3", r.name, r.err)
		}
	}
	if took := time.Since(began); took > time.Second {
		t.Errorf("served %v after app@3 started, want within the 500ms retry backoff", took)
	}
}

// TestReloadKeepsBalancing: a reload carries which backend each
// connection is on, so least-connections goes on from the real counts:
// with connections held on app@1 and app@4 across a SIGHUP, the next two
// clients go to app@2 and app@3, and the held ones still echo.
func TestReloadKeepsBalancing(t *testing.T) {
	t.Parallel()
	_, paths := fourInstances(t)
	fd, addr := inheritTCP(t, "web")
	n := newNotifyReceiver(t)
	p := start(t, binary, launch{args: append([]string{"--balance=least-connections"}, paths...), fds: []inherited{fd}, env: []string{n.env()}})
	if err := n.wait("READY=1", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	held := map[string]net.Conn{}
	for range 4 {
		c, name, err := greetedBy(addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held[name] = c
	}
	if len(held) != 4 {
		t.Fatalf("four clients went to %d instances", len(held))
	}
	held["app@2"].Close()
	held["app@3"].Close()
	time.Sleep(200 * time.Millisecond) // the proxy sees both ends
	reloadTo(t, p, 1)
	for _, name := range []string{"app@1", "app@4"} {
		if !echoes(held[name]) {
			t.Errorf("the connection on %s did not survive the reload", name)
		}
	}
	got := map[string]int{}
	for range 2 {
		c, name, err := greetedBy(addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		got[name]++
	}
	if got["app@2"] != 1 || got["app@3"] != 1 {
		t.Errorf("after the reload the next two went to %v, want app@2 and app@3", got)
	}
}
