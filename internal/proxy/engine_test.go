// SPDX-License-Identifier: Apache-2.0

package proxy

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
	"syscall"
	"testing"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/testutil"
)

// Tests of the event-driven engine itself: descriptors and pipes come back,
// splice is really used, and the edge cases of edge-triggered forwarding.

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

func TestPipesGoBackToZero(t *testing.T) {
	noLeak(t)
	addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	p := start(t, addr, Config{})
	// An idle connection, open all along, must not keep a pipe.
	idle := dial(t, p.addr)
	idle.Write([]byte("ping"))
	io.ReadFull(idle, make([]byte, 4))
	var wg sync.WaitGroup
	payload := randomBytes(t, 8<<20)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			roundTrip(t, p.addr, payload)
		}()
	}
	wg.Wait()
	if p.srv.Stats().Pipes == 0 {
		t.Log("no pipe left right after the transfers (all closed already)")
	}
	waitFor(t, "the pipe pool to empty", func() bool { return p.srv.Stats().Pipes == 0 })
	idle.Write([]byte("pong"))
	if _, err := io.ReadFull(idle, make([]byte, 4)); err != nil {
		t.Fatalf("idle connection stopped working: %v", err)
	}
}

// TestManyStreamsShareThePool: concurrent echoes with writes of every size
// share the pipe pool and the one buffer; every byte must come back in
// order on every connection.
func TestManyStreamsShareThePool(t *testing.T) {
	noLeak(t)
	addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	p := start(t, addr, Config{})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			payload := make([]byte, 4<<20)
			for j := range payload {
				payload[j] = byte(j*7 + i)
			}
			c, err := net.Dial("tcp", p.addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(60 * time.Second))
			go func() {
				// Writes from 1 byte to 256 KiB, so that reads come
				// small, full-buffer and bulk in turn.
				for off, k := 0, 0; off < len(payload); k++ {
					n := min(len(payload)-off, 1<<(k%19))
					if _, err := c.Write(payload[off : off+n]); err != nil {
						return
					}
					off += n
				}
				c.(*net.TCPConn).CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, payload) {
				errs <- fmt.Errorf("stream %d: %d bytes back of %d (%v)", i, len(got), len(payload), err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestAcceptPausesOnEMFILE: out of descriptors, accept fails and its event
// is gone; the proxy warns once, keeps the pending client in the backlog,
// and serves it as soon as a connection closes.
func TestAcceptPausesOnEMFILE(t *testing.T) {
	noLeak(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	// This backend shares the lowered limit, and accept4 fails with
	// EMFILE even with nothing to accept: it must retry, not stop.
	go func() {
		for {
			c, err := ln.Accept()
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			go func() {
				defer c.Close()
				echo(c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	p := start(t, addr, Config{})
	first := dial(t, p.addr)
	first.Write([]byte("ping"))
	if _, err := io.ReadFull(first, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	var saved syscall.Rlimit
	if err = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &saved); err != nil {
		t.Fatal(err)
	}
	restore := func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &saved); err != nil {
			t.Errorf("restoring the descriptor limit: %v", err)
		}
	}
	defer restore()
	// The limit bounds descriptor numbers: leave exactly one free number
	// below it, for the second client's socket, and none for the accept.
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	used := map[int]bool{}
	for _, e := range entries {
		n, _ := strconv.Atoi(e.Name())
		used[n] = true
	}
	free := []int{}
	for n := 0; len(free) < 3; n++ {
		if !used[n] {
			free = append(free, n)
		}
	}
	// free[0] may be the descriptor ReadDir used, closed again by now.
	lowered := syscall.Rlimit{Cur: uint64(free[2]), Max: saved.Max}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lowered); err != nil {
		t.Fatal(err)
	}
	second, err := net.Dial("tcp", p.addr)
	if err != nil {
		restore()
		testutil.Unavailable(t, "cannot open the second client under the lowered limit: %v", err)
	}
	defer second.Close()
	waitFor(t, "the proxy to pause accepting", func() bool {
		return strings.Contains(p.logs.String(), "cannot accept, pausing")
	})
	restore()
	first.Close()
	second.SetDeadline(time.Now().Add(10 * time.Second))
	second.Write([]byte("pong"))
	if _, err := io.ReadFull(second, make([]byte, 4)); err != nil {
		t.Fatalf("the client left in the backlog was not served after a connection closed: %v; %+v\n%s", err, p.srv.Stats(), p.logs)
	}
	if n := strings.Count(p.logs.String(), "cannot accept"); n != 1 {
		t.Errorf("%d accept warnings, want 1", n)
	}
}
