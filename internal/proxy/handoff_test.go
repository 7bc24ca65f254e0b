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
// systemd's store holds them) and delivers every byte exactly once. A
// second proxy that keeps its connections (--fdstore=always) keeps this one
// too, bytes in its pipe and all (keep.go, keep: "p.r < 0" is a pipe in
// memory, which cannot be kept).
func TestStoreHandsOverEveryByte(t *testing.T) {
	for _, keeping := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "keeping"}[keeping], func(t *testing.T) {
			storeHandsOverEveryByte(t, keeping)
		})
	}
}

func storeHandsOverEveryByte(t *testing.T, keeping bool) {
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
	cfgB := Config{Resume: r}
	k := &fakeKeeper{}
	if keeping {
		cfgB.Keep, cfgB.Forget = k.keep, k.forget
	}
	next := startOn(t, lnB, addr, cfgB)
	if keeping {
		waitFor(t, "the resumed connection kept", func() bool { return next.srv.Stats().Kept == 1 })
	}

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

// TestResumeDeliversBytesInMemory: a record may carry a direction's bytes
// in memory (Dir.Mem: a write cut short when no kernel pipe was to be
// had; the test puts them in the record, as making the pool run dry would
// take the whole process's descriptors). The proxy that resumes the
// connection writes them first (handoff.go, adopt: "rd.Mem != nil").
func TestResumeDeliversBytesInMemory(t *testing.T) {
	noLeak(t)
	got := make(chan string, 1)
	addr := listenBackend(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, _ := io.ReadAll(c) // until the client's end
		got <- string(b)
	})
	st := newStore(t)
	a := startOn(t, listenNamed(t, "web"), addr, Config{Store: st.keep})
	c := dial(t, a.addr)
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first byte delivered", func() bool { return a.srv.Stats().BytesIn == 1 })
	r := st.take(t, a)
	if len(r.Conns) != 1 || r.Conns[0].State != handoff.Open || r.Conns[0].Dir[0].InPipe != 0 || r.Conns[0].Dir[0].Mem != nil {
		closeRecord(r)
		t.Fatalf("record: want one open connection with nothing in flight: %+v", r.Conns)
	}
	r.Conns[0].Dir[0].Mem = []byte(" parked")
	startOn(t, listenNamed(t, "web"), addr, Config{Resume: r})
	if _, err := c.Write([]byte(" then more")); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	if b := recv(t, got, "the backend's read"); b != "x parked then more" {
		t.Errorf("the backend read %q, want %q", b, "x parked then more")
	}
}

// TestStoreCarriesTotals: the running totals (connections since start,
// bytes, datagrams and their drops) go on from where the last image left
// them, so that STATUS= and the metrics count since the process started,
// not since the last reload.
func TestStoreCarriesTotals(t *testing.T) {
	addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	st := newStore(t)
	a := startOn(t, listenNamed(t, "web"), addr, Config{Store: st.keep})
	roundTrip(t, a.addr, []byte("twelve bytes"))
	waitFor(t, "the bytes counted", func() bool { s := a.srv.Stats(); return s.BytesIn == 12 && s.BytesOut == 12 })
	before := a.srv.Stats()
	r := st.take(t, a)
	b := startOn(t, listenNamed(t, "web"), addr, Config{Resume: r})
	roundTrip(t, b.addr, []byte("four"))
	waitFor(t, "the totals carried and counted on", func() bool {
		s := b.srv.Stats()
		return s.Accepted == before.Accepted+1 && s.BytesIn == before.BytesIn+4 && s.BytesOut == before.BytesOut+4
	})
}
