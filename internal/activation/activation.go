// Package activation provides the listening sockets the proxy serves: those
// systemd passes in (LISTEN_FDS, Accept=no), each checked and named, and
// those it binds itself for --listen.
package activation

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/coreos/go-systemd/v22/activation"
	"golang.org/x/sys/unix"
)

// Listener is one listening socket and the name it goes by in messages and
// in --backend NAME=ADDRESS. A datagram socket is a Listener too: its
// Accept fails, and the proxy reads its datagrams by descriptor.
type Listener struct {
	net.Listener
	// Kind is the socket's type: how its clients are forwarded.
	Kind Kind
	// Name is the socket's FileDescriptorName= (LISTEN_FDNAMES), or
	// systemd's default "LISTEN_FD_<n>"; for --listen, the address given.
	Name string
	// FD is the descriptor number systemd passed, or -1 for --listen.
	FD int
}

// maxInherited bounds LISTEN_FDS, so that a garbage count cannot make us
// wrap thousands of descriptors that were never passed.
const maxInherited = 4096

// Inherited returns the sockets systemd passed in, and unsets the
// environment so that nothing reads it twice. It returns none, without
// error, when LISTEN_PID names another process (as sd_listen_fds does); it
// fails, naming the descriptor and what to change, for anything that is not
// a listening stream socket.
func Inherited() ([]Listener, error) {
	names, named := os.LookupEnv("LISTEN_FDNAMES")
	pid, fds := os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS")
	if err := checkEnvironment(pid, fds, names, named, os.Getpid()); err != nil {
		return nil, err
	}
	// Check every descriptor before anything wraps it in an *os.File. When
	// LISTEN_FDS counts more than were passed, the numbers past them belong
	// to whatever this process opened itself, the Go runtime's own epoll
	// and eventfd among them: an *os.File for one of those closes it (when
	// closed, or when the garbage collector finalizes it) and the runtime
	// dies with "fatal error: runtime: netpoll failed". So a bad fd is an
	// error before any descriptor is touched.
	if p, err := strconv.Atoi(pid); err == nil && p == os.Getpid() {
		n, _ := strconv.Atoi(fds) // checked above
		split := strings.Split(names, ":")
		for i := 0; i < n; i++ {
			fd := listenFDsStart + i
			name := "LISTEN_FD_" + strconv.Itoa(fd)
			if i < len(split) && split[i] != "" {
				name = split[i]
			}
			if _, err := checkFD(fd, fmt.Sprintf("inherited fd %d (%q)", fd, name)); err != nil {
				return nil, err
			}
		}
	}
	files := activation.Files(true)
	listeners := make([]Listener, 0, len(files))
	var failed error
	for _, f := range files {
		l, err := fromFile(f)
		f.Close() // the listener, if any, holds its own duplicate
		if err != nil && failed == nil {
			failed = err
		}
		if err == nil {
			listeners = append(listeners, l)
		}
	}
	if failed != nil {
		Close(listeners)
		return nil, failed
	}
	return listeners, nil
}

// listenFDsStart is SD_LISTEN_FDS_START, the first descriptor systemd passes.
const listenFDsStart = 3

// checkEnvironment rejects values go-systemd would silently ignore, so a
// broken unit gets an error instead of "no sockets". Variables meant for
// another process (LISTEN_PID is a number, not ours) are ignored, garbage
// or not, as sd_listen_fds(3) does. Like sd_listen_fds_with_names(3), it
// rejects a LISTEN_FDNAMES that names a different number of sockets than
// LISTEN_FDS counts: systemd always sets both together, so a mismatch means
// a broken launcher, and the descriptors past those really passed would be
// whatever the process holds there (the Go runtime opens files at start-up,
// so they would be reported as "not a socket", a misleading message).
func checkEnvironment(pid, fds, names string, named bool, self int) error {
	if fds == "" {
		return nil
	}
	if pid != "" {
		p, err := strconv.Atoi(pid)
		if err != nil {
			return fmt.Errorf("LISTEN_PID=%q is not a process ID: it must be set by systemd or systemd-socket-activate", pid)
		}
		if p != self {
			return nil
		}
	}
	n, err := strconv.Atoi(fds)
	if err != nil || n < 0 {
		return fmt.Errorf("LISTEN_FDS=%q is not a number of sockets: it must be set by systemd or systemd-socket-activate", fds)
	}
	if n > maxInherited {
		return fmt.Errorf("LISTEN_FDS=%q is more sockets than the %d this proxy accepts", fds, maxInherited)
	}
	if named && n > 0 {
		if k := strings.Count(names, ":") + 1; k != n {
			return fmt.Errorf("LISTEN_FDS=%q but LISTEN_FDNAMES=%q names %d: both must be set together by systemd or systemd-socket-activate", fds, truncate(names, 64), k)
		}
	}
	return nil
}

// truncate shortens s for an error message.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// fromFile checks that f is a socket a .socket unit passes with Accept=no
// (a listening stream or seqpacket socket, or a datagram socket) and wraps
// it by its kind.
func fromFile(f *os.File) (Listener, error) {
	fd := int(f.Fd())
	where := fmt.Sprintf("inherited fd %d (%q)", fd, f.Name())
	kind, err := checkFD(fd, where)
	if err != nil {
		return Listener{}, err
	}
	// The wrappers hold a duplicate and, for unix sockets, never unlink
	// the path on close: systemd owns that file.
	ln, err := wrapFile(f, kind)
	if err != nil {
		return Listener{}, fmt.Errorf("%s: %v", where, err)
	}
	return Listener{Listener: ln, Kind: kind, Name: f.Name(), FD: fd}, nil
}

// checkFD checks that descriptor fd is a socket the proxy can serve,
// without taking ownership of it, and says its kind; where names it in the
// error.
func checkFD(fd int, where string) (Kind, error) {
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	kind, known := kindOf(typ)
	switch {
	case errors.Is(err, unix.ENOTSOCK):
		return 0, fmt.Errorf("%s: not a socket: pass sockets with ListenStream=, ListenDatagram= or ListenSequentialPacket= in the .socket unit", where)
	case errors.Is(err, unix.EBADF):
		return 0, fmt.Errorf("%s: not an open descriptor: LISTEN_FDS counts more sockets than were passed", where)
	case err != nil:
		return 0, fmt.Errorf("%s: %v", where, err)
	case !known:
		return 0, fmt.Errorf("%s: socket type %d cannot be forwarded: use ListenStream=, ListenDatagram= or ListenSequentialPacket= in the .socket unit", where, typ)
	case kind == Datagram:
		return kind, nil // nothing to accept: no listening state
	}
	listening, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err != nil {
		return 0, fmt.Errorf("%s: %v", where, err)
	}
	if listening == 0 {
		return 0, fmt.Errorf("%s: socket is not listening: use Accept=no in the .socket unit (with Accept=yes systemd passes a connection, not a listener)", where)
	}
	return kind, nil
}

// Close closes every listener. Inherited unix sockets keep their files.
func Close(listeners []Listener) {
	for _, l := range listeners {
		l.Close()
	}
}
