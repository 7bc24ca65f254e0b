// SPDX-License-Identifier: Apache-2.0

package main

import (
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// TestPacketReaderTellsAnEmptyMessageFromTheEnd: Go reads an empty message
// and the end alike; the oracle must not, or an empty message the proxy
// duplicates, or an end it sends early in place of one, passes unseen.
func TestPacketReaderTellsAnEmptyMessageFromTheEnd(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]*net.UnixConn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "pair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c.(*net.UnixConn)
	}
	conns[0].SetDeadline(time.Now().Add(10 * time.Second))
	sent := []string{"", "x", ""}
	for _, m := range sent {
		if _, _, err := conns[1].WriteMsgUnix([]byte(m), nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	conns[1].CloseWrite()
	r := newPacketReader(conns[0], 16)
	for i, want := range sent {
		n, _, end, err := r.read()
		if err != nil || end || string(r.buf[:n]) != want {
			t.Fatalf("read %d: %q, end %v, %v; want the message %q", i, r.buf[:n], end, err, want)
		}
	}
	if n, _, end, err := r.read(); err != nil || !end {
		t.Fatalf("after the messages: %d bytes, end %v, %v; want the end", n, end, err)
	}
}
