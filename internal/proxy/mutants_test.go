// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"bytes"
	"io"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
)

// Tests written to kill mutants that survived `make mutants` (see
// docs/RELIABILITY.md, "Mutation testing"): each names the line it pins.

// TestPipeFullOfSmallMessages: splice from a unix stream socket into a pipe
// takes one pipe slot per message the client wrote, so a pipe of 64 slots
// fills up with 64 messages of less than a page, below its byte size, and splicing
// more into it says EAGAIN while the socket still holds data. Clearing the
// source's readiness on that EAGAIN (connection.go, splicePump: "if p.n ==
// 0") would stall the direction once the client has written all it can and
// waits: no new edge comes for bytes already queued.
func TestPipeFullOfSmallMessages(t *testing.T) {
	noLeak(t)
	const size, count = 3000, 1000
	const total = size * count
	dir := shortDir(t)
	release := make(chan struct{})
	back := listenBackend(t, "unix", filepath.Join(dir, "b"), func(c net.Conn) {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		<-release
		if _, err := io.CopyN(io.Discard, struct{ io.Reader }{c}, total); err == nil {
			c.Write([]byte("ok"))
		}
	})
	ln, err := activation.Listen(filepath.Join(dir, "p"))
	if err != nil {
		t.Fatal(err)
	}
	p := startOn(t, ln, back, Config{})
	c := edgeDial(t, "unix", p.addr)
	var written atomic.Int64
	go func() {
		// Messages of less than a page, each one socket buffer and
		// so one pipe slot: 64 of them fill a 256 KiB pipe's slots
		// with 192000 bytes. Several at once fill the shared buffer,
		// which puts the direction in bulk (splice) mode, and splices
		// of several keep it there.
		msg := bytes.Repeat([]byte{'s'}, size)
		for range count {
			n, err := c.Write(msg)
			written.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	// Let the backend read once the client is blocked (or done): by then
	// the backend's socket is full and the pipe holds as many messages as
	// it has slots. Releasing early only makes the test weaker, never
	// wrong.
	last, still := int64(-1), 0
	for end := time.Now().Add(5 * time.Second); still < 5 && time.Now().Before(end); {
		time.Sleep(20 * time.Millisecond)
		if n := written.Load(); n == last {
			still++
		} else {
			last, still = n, 0
		}
	}
	if last == total {
		t.Logf("the client wrote everything before the backend read: the pipe may not have filled")
	}
	close(release)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	reply := make([]byte, 2)
	if _, err := io.ReadFull(c, reply); err != nil || string(reply) != "ok" {
		t.Fatalf("after %d of %d bytes written: reply %q, %v (a stalled direction); %+v", written.Load(), total, reply, err, p.srv.Stats())
	}
}
