// SPDX-License-Identifier: Apache-2.0

package activation

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/testutil"
)

// unixSocketFile makes a unix socket of type typ bound to path, listening
// when asked, wrapped as systemd's passing would.
func unixSocketFile(t *testing.T, typ int, path string, listen bool, name string) *os.File {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if listen {
		if err := unix.Listen(fd, 8); err != nil {
			t.Fatal(err)
		}
	}
	f := os.NewFile(uintptr(fd), name)
	t.Cleanup(func() { f.Close() })
	return f
}

func TestFromFileKinds(t *testing.T) {
	dir := shortDir(t)
	tests := []struct {
		name string
		file *os.File
		kind Kind
	}{
		{name: "udp", file: socketFile(t, unix.AF_INET, unix.SOCK_DGRAM, false, "dns"), kind: Datagram},
		{name: "unix datagram", file: unixSocketFile(t, unix.SOCK_DGRAM, filepath.Join(dir, "d"), false, "log"), kind: Datagram},
		{name: "seqpacket", file: unixSocketFile(t, unix.SOCK_SEQPACKET, filepath.Join(dir, "p"), true, "pkt"), kind: SequentialPacket},
		{name: "stream", file: socketFile(t, unix.AF_INET, unix.SOCK_STREAM, true, "web"), kind: Stream},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := fromFile(tt.file)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			if l.Kind != tt.kind || l.Name != tt.file.Name() {
				t.Errorf("kind %v name %q, want %v %q", l.Kind, l.Name, tt.kind, tt.file.Name())
			}
			if l.Addr() == nil {
				t.Error("no address")
			}
			if tt.kind == Datagram {
				if _, err := l.Accept(); err == nil {
					t.Error("Accept on a datagram socket succeeded")
				}
			}
		})
	}
}

func TestFromFileRejectsSeqpacketNotListening(t *testing.T) {
	f := unixSocketFile(t, unix.SOCK_SEQPACKET, filepath.Join(shortDir(t), "p"), false, "pkt")
	if _, err := fromFile(f); err == nil || !strings.Contains(err.Error(), "Accept=no") {
		t.Fatalf("fromFile = %v, want a not-listening error naming Accept=no", err)
	}
}

func TestKindOf(t *testing.T) {
	for typ, want := range map[int]Kind{unix.SOCK_STREAM: Stream, unix.SOCK_DGRAM: Datagram, unix.SOCK_SEQPACKET: SequentialPacket} {
		if k, ok := kindOf(typ); !ok || k != want {
			t.Errorf("kindOf(%d) = %v, %v", typ, k, ok)
		}
	}
	for _, typ := range []int{unix.SOCK_RAW, unix.SOCK_RDM, 0} {
		if _, ok := kindOf(typ); ok {
			t.Errorf("kindOf(%d) accepted", typ)
		}
	}
}

func TestListenDatagram(t *testing.T) {
	dir := shortDir(t)
	for _, tt := range []struct{ addr, network string }{
		{"127.0.0.1:0", "udp"}, {"[::1]:0", "udp"}, {filepath.Join(dir, "d.sock"), "unixgram"}, {"@spx-dg-" + filepath.Base(dir), "unixgram"},
	} {
		t.Run(tt.addr, func(t *testing.T) {
			l, err := ListenDatagram(tt.addr, DefaultSocketMode)
			if err != nil {
				if strings.HasPrefix(tt.addr, "[::1]") {
					testutil.Unavailable(t, "no IPv6 loopback: %v", err)
				}
				t.Fatal(err)
			}
			if l.Kind != Datagram || l.Name != tt.addr {
				t.Errorf("kind %v name %q", l.Kind, l.Name)
			}
			c, err := net.Dial(tt.network, l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			pc := l.Listener.(*packetListener)
			pc.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 16)
			n, _, err := pc.ReadFrom(buf)
			if err != nil || string(buf[:n]) != "hello" {
				t.Fatalf("read %q, %v", buf[:n], err)
			}
			l.Close()
			if strings.HasPrefix(tt.addr, "/") {
				if _, err := os.Stat(tt.addr); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("socket file left behind: %v", err)
				}
			}
		})
	}
	for _, bad := range []string{"", "127.0.0.1", "256.0.0.1:53", "@"} {
		if l, err := ListenDatagram(bad, DefaultSocketMode); err == nil {
			l.Close()
			t.Errorf("ListenDatagram(%q, DefaultSocketMode) succeeded", bad)
		} else if !strings.Contains(err.Error(), "--listen-datagram") && !strings.Contains(err.Error(), bad) {
			t.Errorf("ListenDatagram(%q, DefaultSocketMode) error %q names neither the option nor the address", bad, err)
		}
	}
}

func TestListenSequentialPacket(t *testing.T) {
	path := filepath.Join(shortDir(t), "p.sock")
	l, err := ListenSequentialPacket(path, DefaultSocketMode)
	if err != nil {
		t.Fatal(err)
	}
	if l.Kind != SequentialPacket {
		t.Errorf("kind %v", l.Kind)
	}
	c, err := net.Dial("unixpacket", path)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if _, err := ListenSequentialPacket(path, DefaultSocketMode); err == nil {
		t.Fatal("a second --listen-sequential-packet took over a live socket")
	}
	l.Close()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file left behind: %v", err)
	}
	staleSocket(t, unix.SOCK_SEQPACKET, path)
	again, err := ListenSequentialPacket(path, DefaultSocketMode) // the stale file is replaced
	if err != nil {
		t.Fatalf("a stale socket file blocked it: %v", err)
	}
	again.Close()
	for _, bad := range []string{"", "127.0.0.1:5"} {
		l, err := ListenSequentialPacket(bad, DefaultSocketMode)
		if err == nil {
			l.Close()
			t.Errorf("ListenSequentialPacket(%q, DefaultSocketMode) succeeded", bad)
			continue
		}
		// Sequential packets are unix only: the hint offers no HOST:PORT.
		if strings.Contains(err.Error(), "HOST:PORT") {
			t.Errorf("ListenSequentialPacket(%q): %q offers HOST:PORT", bad, err)
		}
	}
}

func TestListenDatagramReplacesStaleOnly(t *testing.T) {
	path := filepath.Join(shortDir(t), "d.sock")
	live, err := ListenDatagram(path, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("socket file %v, %v: want mode 0640 (--socket-mode)", fi, err)
	}
	if l, err := ListenDatagram(path, DefaultSocketMode); err == nil {
		l.Close()
		t.Fatal("took over a live datagram socket")
	}
	live.Close()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file left behind: %v", err)
	}
	staleSocket(t, unix.SOCK_DGRAM, path) // as a killed proxy leaves it
	again, err := ListenDatagram(path, DefaultSocketMode)
	if err != nil {
		t.Fatalf("a stale socket file blocked it: %v", err)
	}
	again.Close()
}

// staleSocket leaves a socket file of type typ at path that nobody holds.
func staleSocket(t *testing.T, typ int, path string) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
}
