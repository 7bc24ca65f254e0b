// SPDX-License-Identifier: Apache-2.0

package handoff

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// --fdstore=always: each connection goes to systemd's fd store as it opens,
// under a name of its own, with its two sockets and its two pipes (both
// ends of each), and leaves it when it closes. Its bytes never wait in the
// process: they sit in socket buffers and in those pipes, all of which the
// store holds. After a crash nothing describes the connection but the
// descriptors themselves and their name, so the name says which is which.
//
// The six descriptors reach the store as one, a capsule: a unix datagram
// socket whose queue holds one message carrying them (SCM_RIGHTS), and
// whose sending end is closed at once. The kernel keeps descriptors in
// flight open for as long as the message waits, so holding the capsule
// holds the connection. This matters for PID 1: systemd 252 compares each
// descriptor it is given with every one it stores already, so with six per
// connection a proxy holding 1000 of them could open only ~80 more per
// second; with one, ~36 times fewer comparisons.

// KeepPrefix starts the name of a kept connection.
const KeepPrefix = "socket-proxyd-keep."

// KeptFDs is how many descriptors a kept connection's capsule carries:
// client, backend, and the read and write ends of its two pipes.
const KeptFDs = 6

// Capsule returns a capsule holding fds, labelled with name: the one
// descriptor to hand to the store for them. The caller's descriptors stay
// its own.
func Capsule(name string, fds []int) (int, error) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("capsule: %v", err)
	}
	err = unix.Sendmsg(pair[1], []byte(name), unix.UnixRights(fds...), nil, unix.MSG_DONTWAIT)
	unix.Close(pair[1])
	if err != nil {
		unix.Close(pair[0])
		return -1, fmt.Errorf("capsule: %v", err)
	}
	return pair[0], nil
}

// OpenCapsule takes the descriptors out of a capsule (close-on-exec), with
// its label, and closes it. A capsule with no message, a truncated one or
// more than KeptFDs descriptors is refused; what it held is closed.
func OpenCapsule(fd int) (name string, fds []int, err error) {
	defer unix.Close(fd)
	buf := make([]byte, 256)
	oob := make([]byte, unix.CmsgSpace(4*(KeptFDs+1)))
	n, oobn, flags, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return "", nil, fmt.Errorf("capsule: %v", err)
	}
	if cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, m := range cmsgs {
			if rights, err := unix.ParseUnixRights(&m); err == nil {
				fds = append(fds, rights...)
			}
		}
	}
	if flags&(unix.MSG_CTRUNC|unix.MSG_TRUNC) != 0 || len(fds) != KeptFDs {
		Reset(fds)
		return "", nil, fmt.Errorf("capsule: %d descriptors, want %d", len(fds), KeptFDs)
	}
	return string(buf[:n]), fds, nil
}

// KeepName names a kept connection: its listener's index, and the inodes
// of its client socket and of its client->backend pipe, which tell its
// six descriptors apart when they come back in no particular order. Both
// are unique among open files, so no two kept connections share a name.
func KeepName(listener int, client, up uint64) string {
	return KeepPrefix + strconv.Itoa(listener) + "." + strconv.FormatUint(client, 16) + "." + strconv.FormatUint(up, 16)
}

// IsKept says whether a LISTEN_FDNAMES name is a kept connection's.
func IsKept(name string) bool { return strings.HasPrefix(name, KeepPrefix) }

func parseKeepName(name string) (listener int, client, up uint64, err error) {
	parts := strings.Split(strings.TrimPrefix(name, KeepPrefix), ".")
	if len(parts) != 3 {
		return 0, 0, 0, fmt.Errorf("fd name %q: not listener.client.pipe", name)
	}
	l, err1 := strconv.ParseUint(parts[0], 10, 16)
	client, err2 := strconv.ParseUint(parts[1], 16, 64)
	up, err3 := strconv.ParseUint(parts[2], 16, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return 0, 0, 0, fmt.Errorf("fd name %q: not listener.client.pipe", name)
	}
	return int(l), client, up, nil
}

// Recover rebuilds kept connections from their descriptors after a crash,
// when no record was written: groups maps each kept name to the
// descriptors that came with it, listeners are the listeners served now
// (the name's index refers to the same list). Every connection comes back
// open, with what its pipes hold; whether a direction had ended is learned
// again from its source (a read at the end of a stream returns 0 again,
// and a second shutdown changes nothing), and counts and ages start over;
// the client's address is for the engine to read from its socket.
// A group that does not add up (a descriptor missing, one of the wrong
// kind) is returned in bad, for the caller to reset and take out of the
// store.
func Recover(groups map[string][]int, listeners []Listener) (r *Record, bad map[string]error) {
	r = &Record{Written: Monotonic(), Listeners: listeners, Epoll: -1}
	bad = map[string]error{}
	for name, fds := range groups {
		c, err := recoverConn(name, fds, listeners)
		if err != nil {
			bad[name] = err
			continue
		}
		r.Conns = append(r.Conns, c)
	}
	return r, bad
}

func recoverConn(name string, fds []int, listeners []Listener) (Conn, error) {
	c := Conn{State: Open, FD: [2]int{-1, -1}, Kept: true, Backend: NoBackend,
		Dir: [2]Dir{{Pipe: [2]int{-1, -1}}, {Pipe: [2]int{-1, -1}}}}
	listener, clientIno, upIno, err := parseKeepName(name)
	if err != nil {
		return c, err
	}
	if listener >= len(listeners) || listeners[listener].Kind != ListenStream {
		return c, fmt.Errorf("listener %d is not a stream listener here", listener)
	}
	c.Listener = listener
	if len(fds) != KeptFDs {
		return c, fmt.Errorf("%d descriptors came back, a kept connection has %d", len(fds), KeptFDs)
	}
	for _, fd := range fds {
		var st unix.Stat_t
		if fstat(fd, &st) != 0 {
			return c, fmt.Errorf("descriptor %d is not open", fd)
		}
		var slot *int
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFSOCK:
			side := 1
			if st.Ino == clientIno {
				side = 0
			}
			slot = &c.FD[side]
			domain, err := streamSocket(fd)
			if err != nil {
				return c, err
			}
			c.TCP[side] = domain != unix.AF_UNIX
		case unix.S_IFIFO:
			d := 1
			if st.Ino == upIno {
				d = 0
			}
			end := 0
			if access(fd, &st) == unix.O_WRONLY+1 {
				end = 1
			}
			slot = &c.Dir[d].Pipe[end]
		}
		if slot == nil || *slot >= 0 {
			return c, fmt.Errorf("descriptor %d is not one of a connection's two sockets and four pipe ends", fd)
		}
		*slot = fd
	}
	for d := range c.Dir {
		n, err := unix.IoctlGetInt(c.Dir[d].Pipe[0], unix.TIOCINQ) // FIONREAD
		if err != nil {
			return c, fmt.Errorf("pipe: %v", err)
		}
		c.Dir[d].InPipe = n
	}
	return c, nil
}

// streamSocket checks that fd is a connected stream socket and says its
// domain.
func streamSocket(fd int) (int, error) {
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil || typ != unix.SOCK_STREAM {
		return 0, fmt.Errorf("descriptor %d is not a stream socket", fd)
	}
	return unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
}

// Monotonic is CLOCK_MONOTONIC in ns: the one clock that means the same in
// the next image (exec) and the next instance (fd store).
func Monotonic() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}
