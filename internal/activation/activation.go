// SPDX-License-Identifier: Apache-2.0

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

// Network is the listener's type as Go's net names it: tcp, udp, unix
// (stream), unixgram or unixpacket; "" without a socket.
func (l Listener) Network() string {
	if l.Listener == nil {
		return ""
	}
	return l.Addr().Network()
}

// Label is the listener's name and type, as in "dns.socket/udp": a TCP
// and a UDP socket on one port (both named ":53", or both named after
// their socket unit) are told apart by it, in log lines and in
// --backend NAME/TYPE=ADDRESS.
func (l Listener) Label() string {
	if n := l.Network(); n != "" {
		return l.Name + "/" + n
	}
	return l.Name
}

// maxInherited bounds LISTEN_FDS, so that a garbage count cannot make us
// wrap thousands of descriptors that were never passed.
const maxInherited = 4096

// Inherited returns the sockets systemd passed in, and unsets the
// environment so that nothing reads it twice. It returns none, without
// error, when LISTEN_PID is unset or names another process (as
// sd_listen_fds does); it fails, naming the descriptor and what to change,
// for anything that is not a listening stream socket.
func Inherited() ([]Listener, error) {
	listeners, _, err := inherited(nil, maxInherited)
	return listeners, err
}

// inherited is Inherited that hands back, unchecked, the descriptors whose
// name isStored accepts (see InheritedWithStored), up to limit in all.
func inherited(isStored func(string) bool, limit uint64) ([]Listener, []Stored, error) {
	names, named := os.LookupEnv("LISTEN_FDNAMES")
	pid, hasPID := os.LookupEnv("LISTEN_PID")
	fds, hasFDs := os.LookupEnv("LISTEN_FDS")
	for _, v := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		os.Unsetenv(v) // as sd_listen_fds(1): children must not see them
	}
	passed, err := checkEnvironmentUpTo(env{pid, hasPID, fds, hasFDs, names, named}, os.Getpid(), limit)
	if err != nil {
		return nil, nil, err
	}
	var stored []Stored
	isListener := func(i int) bool {
		if isStored == nil || !isStored(passed[i]) {
			return true
		}
		stored = append(stored, Stored{FD: listenFDsStart + i, Name: passed[i]})
		return false
	}
	// Check every descriptor before anything wraps it in an *os.File. When
	// LISTEN_FDS counts more than were passed, the numbers past them belong
	// to whatever this process opened itself, the Go runtime's own epoll
	// and eventfd among them: an *os.File for one of those closes it (when
	// closed, or when the garbage collector finalizes it) and the runtime
	// dies with "fatal error: runtime: netpoll failed". So a bad fd is an
	// error before any descriptor is touched.
	for i, name := range passed {
		fd := listenFDsStart + i
		if !isListener(i) {
			continue
		}
		if _, err := checkFD(fd, fmt.Sprintf("inherited fd %d (%q)", fd, name)); err != nil {
			return nil, nil, err
		}
	}
	for _, s := range stored {
		unix.CloseOnExec(s.FD)
	}
	listeners := make([]Listener, 0, len(passed)-len(stored))
	for i, name := range passed {
		fd := listenFDsStart + i
		if isStored != nil && isStored(name) {
			continue
		}
		unix.CloseOnExec(fd)
		f := os.NewFile(uintptr(fd), name)
		l, err := fromFile(f)
		f.Close() // the listener, if any, holds its own duplicate
		if err != nil {
			Close(listeners)
			return nil, nil, err
		}
		listeners = append(listeners, l)
	}
	return listeners, stored, nil
}

// listenFDsStart is SD_LISTEN_FDS_START, the first descriptor systemd passes.
const listenFDsStart = 3

// env is the activation environment as read: each variable and whether it
// is set at all.
type env struct {
	pid      string
	hasPID   bool
	fds      string
	hasFDs   bool
	names    string
	hasNames bool
}

// checkEnvironment reads the environment by sd_listen_fds(3)'s rules and
// returns the names of the sockets passed to process self, one per
// descriptor from fd 3: LISTEN_FDNAMES' entry, or "LISTEN_FD_<fd>" where
// there is none (go-systemd's default). The rules:
//   - without LISTEN_PID, nothing was passed: LISTEN_FDS alone is ignored;
//   - a LISTEN_PID that is not a process ID is an error;
//   - a LISTEN_PID of another process means nothing was passed to us,
//     whatever the other variables say;
//   - without LISTEN_FDS, nothing was passed; a LISTEN_FDS that is not a
//     count is an error;
//   - like sd_listen_fds_with_names(3), a LISTEN_FDNAMES that names a
//     different number of sockets than LISTEN_FDS counts is an error:
//     systemd sets both together, so a mismatch means a broken launcher.
//
// Where this differs from sd_listen_fds, it is deliberate: LISTEN_FDS=0 is
// no sockets rather than EINVAL (harmless, and --listen may add some), a
// count above maxInherited is an error (no unit passes that many, and
// checking thousands of descriptors that were never passed helps nobody),
// and numbers are plain decimal (systemd never writes "+42" or "0x2a").
func checkEnvironment(e env, self int) ([]string, error) {
	return checkEnvironmentUpTo(e, self, maxInherited)
}

// checkEnvironmentUpTo is checkEnvironment with another bound than
// maxInherited on LISTEN_FDS.
func checkEnvironmentUpTo(e env, self int, limit uint64) ([]string, error) {
	if !e.hasPID {
		return nil, nil
	}
	p, ok := decimal(e.pid)
	if !ok || p == 0 {
		return nil, fmt.Errorf("LISTEN_PID=%q is not a process ID: it must be set by systemd or systemd-socket-activate", truncate(e.pid, 64))
	}
	if p != uint64(self) || !e.hasFDs {
		return nil, nil
	}
	n, ok := decimal(e.fds)
	if !ok {
		return nil, fmt.Errorf("LISTEN_FDS=%q is not a number of sockets: it must be set by systemd or systemd-socket-activate", truncate(e.fds, 64))
	}
	if n > limit {
		return nil, fmt.Errorf("LISTEN_FDS=%q is more sockets than the %d this proxy accepts", truncate(e.fds, 64), limit)
	}
	if n == 0 {
		return nil, nil
	}
	var given []string
	if e.hasNames {
		given = strings.SplitN(e.names, ":", int(limit)+1)
		if len(given) != int(n) {
			return nil, fmt.Errorf("LISTEN_FDS=%q but LISTEN_FDNAMES=%q names %d: both must be set together by systemd or systemd-socket-activate",
				e.fds, truncate(e.names, 64), strings.Count(e.names, ":")+1)
		}
	}
	names := make([]string, n)
	for i := range names {
		if i < len(given) && given[i] != "" {
			names[i] = given[i]
		} else {
			names[i] = "LISTEN_FD_" + strconv.Itoa(listenFDsStart+i)
		}
	}
	return names, nil
}

// decimal reads a whole number written in decimal digits only, up to
// 2^31-1 (the largest pid_t and int systemd would write).
func decimal(s string) (uint64, bool) {
	if s == "" {
		return 0, false
	}
	var n uint64
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, false
		}
		if n = n*10 + uint64(c-'0'); n > 1<<31-1 {
			return 0, false
		}
	}
	return n, true
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
