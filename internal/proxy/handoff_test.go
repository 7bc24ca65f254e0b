// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"bytes"
	"crypto/sha256"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/handoff"
)

// TestStoreHandsOverEveryByte: one proxy stores a connection whose backend
// reads nothing, with bytes in flight in its pipe; a second proxy takes it
// back from the record and the stored descriptors (here: duplicates, as
// systemd's store holds them) and delivers every byte exactly once.
func TestStoreHandsOverEveryByte(t *testing.T) {
	noLeak(t)
	release := make(chan struct{})
	addr := listenBackend(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
		<-release
		h := sha256.New()
		io.Copy(h, c)
		c.Write(h.Sum(nil))
	})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before the backend's own cleanup waits for its handler
	var rec []byte
	var stored []int
	t.Cleanup(func() {
		for _, fd := range stored {
			unix.Close(fd)
		}
	})
	keep := func(b []byte, fds []int) error {
		rec = b
		for _, fd := range fds {
			d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
			if err != nil {
				return err
			}
			stored = append(stored, d)
		}
		return nil
	}
	lnA, err := activation.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lnA.Name = "web"
	a := startOn(t, lnA, addr, Config{Store: keep})

	c := dial(t, a.addr)
	payload := randomBytes(t, 8<<20)
	wrote := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.CloseWrite()
		}
		wrote <- err
	}()
	waitFor(t, "bytes parked in a pipe", func() bool { return a.srv.Stats().Pipes > 0 })
	time.Sleep(50 * time.Millisecond) // the pipe fills up: the client's writes block
	a.srv.Store()
	if err := <-a.done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	a.done <- nil // for startOn's cleanup
	if !bytes.Contains([]byte(a.logs.String()), []byte("connections handed to the fd store")) {
		t.Fatalf("nothing stored:\n%s", a.logs.String())
	}

	mfd, err := handoff.Memfd(rec)
	if err != nil {
		t.Fatal(err)
	}
	b, resolve, left, err := handoff.Stored(mfd, stored)
	if err != nil {
		t.Fatal(err)
	}
	r, unused, err := handoff.Decode(b, resolve)
	if err != nil {
		t.Fatal(err)
	}
	if len(unused)+len(left()) != 0 || len(r.Conns) != 1 || r.Conns[0].Dir[0].InPipe == 0 {
		t.Fatalf("record: %d connections, unused %v; want one with bytes in its pipe: %+v", len(r.Conns), unused, r.Conns)
	}
	stored = nil // the second proxy owns them now
	for _, l := range r.Listeners {
		unix.Close(l.FD) // the --listen socket came along: main would serve it, this test has its own
	}
	lnB, err := activation.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lnB.Name = "web"
	startOn(t, lnB, addr, Config{Resume: r})

	unblock()
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatalf("client write: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the client's write never finished")
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	want := sha256.Sum256(payload)
	if err != nil || !bytes.Equal(got, want[:]) {
		t.Fatalf("the backend got other bytes than were sent (SHA-256 %x, want %x), %v", got, want, err)
	}
}
