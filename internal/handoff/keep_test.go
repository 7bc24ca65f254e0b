// SPDX-License-Identifier: Apache-2.0

package handoff

import (
	"math/rand/v2"
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// keptConn makes what a kept connection is made of: a TCP client socket
// (accepted), its backend (a unix stream socket) and a pipe each way, with
// bytes in the client->backend one.
func keptConn(t *testing.T) (fds []int, name string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	accepted, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	f, _ := accepted.(*net.TCPConn).File()
	accepted.Close()
	client := int(f.Fd())
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(pair[1]) })
	var up, down [2]int
	if unix.Pipe(up[:]) != nil || unix.Pipe(down[:]) != nil {
		t.Fatal("pipe")
	}
	unix.Write(up[1], []byte("in flight"))
	var cst, ust unix.Stat_t
	unix.Fstat(client, &cst)
	unix.Fstat(up[0], &ust)
	return []int{client, pair[0], up[0], up[1], down[0], down[1]}, KeepName(0, cst.Ino, ust.Ino)
}

// TestCapsuleHoldsTheConnection: a capsule keeps its descriptors open after
// every other copy is closed, and gives them back, in order, with its label.
func TestCapsuleHoldsTheConnection(t *testing.T) {
	fds, name := keptConn(t)
	capsule, err := Capsule(name, fds)
	if err != nil {
		t.Fatal(err)
	}
	var ino [KeptFDs]uint64
	for i, fd := range fds {
		var st unix.Stat_t
		unix.Fstat(fd, &st)
		ino[i] = st.Ino
		unix.Close(fd)
	}
	label, got, err := OpenCapsule(capsule)
	if err != nil || label != name || len(got) != KeptFDs {
		t.Fatalf("OpenCapsule: %q, %d descriptors, %v; want %q and %d", label, len(got), err, name, KeptFDs)
	}
	defer Reset(got)
	for i, fd := range got {
		var st unix.Stat_t
		if unix.Fstat(fd, &st) != nil || st.Ino != ino[i] {
			t.Errorf("descriptor %d came back as inode %d, want %d", i, st.Ino, ino[i])
		}
	}
	buf := make([]byte, 32)
	if n, _ := unix.Read(got[2], buf); string(buf[:n]) != "in flight" {
		t.Errorf("the pipe held %q, want the bytes in flight", buf[:n])
	}
}

// TestOpenCapsuleRefuses: a capsule with the wrong number of descriptors,
// or none at all, is refused.
func TestOpenCapsuleRefuses(t *testing.T) {
	var p [2]int
	unix.Pipe(p[:])
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	capsule, err := Capsule("x", p[:])
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := OpenCapsule(capsule); err == nil {
		t.Error("a capsule of 2 descriptors was opened, want it refused")
	}
	empty, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(empty[1])
	if _, _, err := OpenCapsule(empty[0]); err == nil {
		t.Error("an empty capsule was opened, want it refused")
	}
}

// TestRecover: a kept connection's six descriptors, in any order, are told
// apart by its name; a group short of one, or under a listener that is not
// a stream one, is refused.
func TestRecover(t *testing.T) {
	fds, name := keptConn(t)
	shuffled := append([]int(nil), fds...)
	rand.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	short, shortName := keptConn(t)
	listeners := []Listener{{FD: -1, Name: "web", Kind: ListenStream}}
	r, bad := Recover(map[string][]int{name: shuffled, shortName: short[:5]}, listeners)
	defer Reset(fds)
	defer Reset(short)
	if len(r.Conns) != 1 || len(bad) != 1 || bad[shortName] == nil {
		t.Fatalf("recovered %d connections, %d bad (%v); want 1 and the short one", len(r.Conns), len(bad), bad)
	}
	c := r.Conns[0]
	want := Conn{State: Open, Kept: true, FD: [2]int{fds[0], fds[1]}, TCP: [2]bool{true, false},
		Dir: [2]Dir{{Pipe: [2]int{fds[2], fds[3]}, InPipe: len("in flight")}, {Pipe: [2]int{fds[4], fds[5]}}}}
	if c.State != want.State || !c.Kept || c.FD != want.FD || c.TCP != want.TCP ||
		c.Dir[0].Pipe != want.Dir[0].Pipe || c.Dir[0].InPipe != want.Dir[0].InPipe || c.Dir[1].Pipe != want.Dir[1].Pipe || c.Dir[1].InPipe != 0 {
		t.Errorf("recovered %+v, want %+v", c, want)
	}
	if _, bad := Recover(map[string][]int{name: fds}, []Listener{{Name: "dns", Kind: ListenDatagram}}); bad[name] == nil {
		t.Error("a connection under a datagram listener was recovered")
	}
}
