// SPDX-License-Identifier: Apache-2.0

package activation

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A --listen socket file is handled through a descriptor of its directory,
// never by path alone: by path, a directory swapped for a
// symlink between two steps makes "remove the stale socket" or "remove our
// socket at exit" remove another service's live socket. The directory
// descriptor stays on the directory we bound in, wherever it is moved, and
// the socket's device and inode, noted at bind, tell ours from a newcomer.

// boundFile is the file of a --listen unix socket: its directory, held
// open, its name there, and the device and inode it had when bound.
type boundFile struct {
	dir      int // O_PATH descriptor of the directory
	name     string
	dev, ino uint64
}

// FileID is the device and inode of the socket file a listener bound: at
// its path, that file and no other is the proxy's to remove.
type FileID struct{ Dev, Ino uint64 }

// BoundFile is the socket file l bound at its path (with --listen and the
// like, or carried over a reload as such), and whether it has one it will
// remove: what a reload passes on, so that the next image removes that
// file and not one put at the path since.
func (l Listener) BoundFile() (FileID, bool) {
	var id FileID
	switch u := l.Listener.(type) {
	case *unixListener:
		if u.file.dir >= 0 {
			id = FileID{u.file.dev, u.file.ino}
		}
	case *packetListener:
		if u.unlink != nil {
			id = u.file
		}
	}
	return id, id.Ino != 0
}

// unixListener removes its own socket file when closed, and only that.
type unixListener struct {
	*net.UnixListener
	file   boundFile
	addr   *net.UnixAddr // the path given, not the /proc path bound through
	remove sync.Once
}

// Addr is the socket's path as the user gave it: the kernel's name for it
// (getsockname, and so ss -xl) is the /proc/self/fd path it was bound by.
func (l *unixListener) Addr() net.Addr { return l.addr }

// Close closes the listener, then removes the socket file if it is still
// the one bound: Go's own unlink-on-close removes whatever has that path.
func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	l.remove.Do(l.file.remove)
	return err
}

// remove unlinks the socket file if it is still the one bound, and lets
// go of the directory.
func (f *boundFile) remove() {
	if f.dir < 0 {
		return
	}
	var st unix.Stat_t
	if unix.Fstatat(f.dir, f.name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil &&
		st.Mode&unix.S_IFMT == unix.S_IFSOCK && st.Dev == f.dev && st.Ino == f.ino {
		unix.Unlinkat(f.dir, f.name, 0)
	}
	unix.Close(f.dir)
	f.dir = -1
}

// beforeChmod, set by tests only, runs between the check that the name
// is the socket just bound and the chmod: where a symlink swapped in would
// be followed by a chmod by name.
var beforeChmod func()

// chmodBound gives the socket file just bound at name in dir its mode,
// and returns its device and inode. It never follows a symlink: a file
// swapped in for the socket (in a directory another user may write) is
// refused, not chmodded. It opens the name itself with O_PATH|O_NOFOLLOW,
// checks that it is a socket, and changes the mode of that very inode
// through /proc/self/fd; without /proc, fchmodat2 with
// AT_SYMLINK_NOFOLLOW (Linux 6.6) does it by name, or it fails.
func chmodBound(dir int, name string, mode os.FileMode) (dev, ino uint64, err error) {
	changed := errors.New("the directory changed while binding: the socket file is gone or was replaced")
	fd, err := unix.Openat(dir, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, 0, changed
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return 0, 0, changed
	}
	if beforeChmod != nil {
		beforeChmod()
	}
	err = unix.Chmod("/proc/self/fd/"+strconv.Itoa(fd), uint32(mode.Perm()))
	if errors.Is(err, unix.ENOENT) {
		p, perr := unix.BytePtrFromString(name)
		if perr != nil {
			return 0, 0, perr
		}
		_, _, e := unix.Syscall6(unix.SYS_FCHMODAT2, uintptr(dir), uintptr(unsafe.Pointer(p)),
			uintptr(mode.Perm()), unix.AT_SYMLINK_NOFOLLOW, 0, 0)
		err = nil
		if e != 0 {
			err = fmt.Errorf("cannot set its mode without following a symlink (no /proc, and fchmodat2: %v)", e)
		}
	}
	return st.Dev, st.Ino, err
}

// splitSocketPath cleans the socket path p and splits it into its
// directory and file name, refusing a path that names a directory.
func splitSocketPath(p string) (clean, dirName, name string, err error) {
	clean = filepath.Clean(p)
	dirName, name = filepath.Split(clean)
	if name == "" {
		return "", "", "", fmt.Errorf("--listen address %q names a directory: give a socket file's path, such as /run/socket-proxyd/web.sock", p)
	}
	return clean, dirName, name, nil
}

// openSocketDir opens the directory a socket path p is bound in, held open
// for the bind (O_PATH).
func openSocketDir(p, dirName string) (int, error) {
	dir, err := unix.Open(dirName, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("cannot listen on %q: directory %q: %v", p, dirName, err)
	}
	return dir, nil
}

// bindPath is the address a socket file is bound by: through
// /proc/self/fd/DIR/NAME, so the path resolves to the directory held
// open; without /proc, or if that path is too long for sun_path, by the
// path given (the check after bind catches a swap). Either must fit
// sun_path.
func bindPath(p, clean, name string, dir int) (string, error) {
	at := "/proc/self/fd/" + strconv.Itoa(dir) + "/" + name
	if len(at) >= maxSunPath {
		at = clean
	} else if _, err := os.Stat("/proc/self/fd/" + strconv.Itoa(dir)); err != nil {
		at = clean
	}
	if len(at) >= maxSunPath {
		return "", fmt.Errorf("cannot listen on %q: the path is %d bytes long; the limit is %d: use a shorter path", p, len(clean), maxSunPath-1)
	}
	return at, nil
}

// listenUnixPath binds a unix stream socket at the absolute path p with
// file mode mode.
func listenUnixPath(p string, mode os.FileMode) (Listener, error) {
	return listenUnixPathOf(p, mode, unix.SOCK_STREAM)
}

// listenUnixPathOf is listenUnixPath for a socket of type typ: SOCK_STREAM,
// SOCK_SEQPACKET (listening too) or SOCK_DGRAM (bound only).
func listenUnixPathOf(p string, mode os.FileMode, typ int) (Listener, error) {
	clean, dirName, name, err := splitSocketPath(p)
	if err != nil {
		return Listener{}, err
	}
	dir, err := openSocketDir(p, dirName)
	if err != nil {
		return Listener{}, err
	}
	fail := func(err error) (Listener, error) {
		unix.Close(dir)
		return Listener{}, err
	}
	if os.Geteuid() == 0 {
		if err := checkDirectory(dir, dirName); err != nil {
			return fail(fmt.Errorf("refusing to listen on %q as root: %v", p, err))
		}
	}
	// Bind through /proc/self/fd/N/name, so the path resolves to the
	// directory held open; without /proc, or if that path is too long for
	// sun_path, by the path given, and the check after bind catches a swap.
	at, err := bindPath(p, clean, name, dir)
	if err != nil {
		return fail(err)
	}
	removeStaleSocket(dir, name, at, typ)

	fd, err := unix.Socket(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return fail(fmt.Errorf("cannot listen on %q: %v", p, err))
	}
	// The file takes the socket's mode less the umask at bind: start no
	// wider than mode, and widen to exactly mode once bound, so the file
	// is never more open than asked, even for a moment.
	if err := unix.Fchmod(fd, uint32(mode.Perm())); err != nil {
		unix.Close(fd)
		return fail(fmt.Errorf("cannot listen on %q: %v", p, err))
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: at}); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EADDRINUSE) {
			return fail(fmt.Errorf("cannot listen on %q: the file exists and is not a stale socket: remove it, or stop what listens on it", p))
		}
		return fail(fmt.Errorf("cannot listen on %q: %v", p, err))
	}
	file := boundFile{dir: dir, name: name}
	file.dev, file.ino, err = chmodBound(dir, name, mode)
	if err == nil && typ != unix.SOCK_DGRAM {
		err = unix.Listen(fd, unix.SOMAXCONN)
	}
	if err != nil {
		unix.Close(fd)
		if file.ino != 0 {
			file.remove()
		} else {
			unix.Close(dir)
		}
		return Listener{}, fmt.Errorf("cannot listen on %q: %v", p, err)
	}
	f := os.NewFile(uintptr(fd), p)
	if typ == unix.SOCK_DGRAM {
		pc, err := net.FilePacketConn(f)
		f.Close()
		if err != nil {
			file.remove()
			return Listener{}, fmt.Errorf("cannot listen on %q: %v", p, err)
		}
		pl := &packetListener{PacketConn: pc, addr: &net.UnixAddr{Name: clean, Net: "unixgram"}, file: FileID{file.dev, file.ino}}
		var once sync.Once
		pl.unlink = func() { once.Do(file.remove) }
		return Listener{Listener: pl, Name: p, FD: -1, Kind: Datagram}, nil
	}
	ln, err := net.FileListener(f)
	f.Close() // ln holds its own duplicate
	if err != nil {
		file.remove()
		return Listener{}, fmt.Errorf("cannot listen on %q: %v", p, err)
	}
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(false) // ours checks the inode first
	l := Listener{Listener: &unixListener{UnixListener: ul, file: file, addr: &net.UnixAddr{Name: clean, Net: "unix"}}, Name: p, FD: -1}
	if typ == unix.SOCK_SEQPACKET {
		l.Kind = SequentialPacket
		l.Listener.(*unixListener).addr.Net = "unixpacket"
	}
	return l, nil
}

// maxSunPath is the size of sockaddr_un.sun_path, its terminating NUL
// included.
const maxSunPath = 108

// removeStaleSocket deletes a socket file left behind by a proxy that died,
// but only when nobody answers on it and it is still the same file: a live
// listener, or a file put there meanwhile, is never removed. It asks with a
// socket of type typ (a datagram or seqpacket socket cannot be probed with
// a stream connect: that says EPROTOTYPE, and the file stays).
func removeStaleSocket(dir int, name, at string, typ int) {
	var before unix.Stat_t
	if unix.Fstatat(dir, name, &before, unix.AT_SYMLINK_NOFOLLOW) != nil || before.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return
	}
	probe, err := unix.Socket(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return
	}
	err = unix.Connect(probe, &unix.SockaddrUnix{Name: at})
	unix.Close(probe)
	if !isRefused(err) {
		return // answered (or busy: EAGAIN), or not ours to judge
	}
	var after unix.Stat_t
	if unix.Fstatat(dir, name, &after, unix.AT_SYMLINK_NOFOLLOW) == nil && after.Dev == before.Dev && after.Ino == before.Ino {
		unix.Unlinkat(dir, name, 0)
	}
}

// checkDirectory refuses a directory that a user other than root can
// change, nor any directory above it: such a user could swap it for a
// symlink and have a proxy running as root remove or replace another
// service's socket. A sticky bit (as on /tmp) protects the names in a
// directory that others may write.
func checkDirectory(dir int, given string) error {
	real, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(dir))
	if err != nil {
		real = filepath.Clean(given)
	}
	for d := real; ; d = filepath.Dir(d) {
		var st unix.Stat_t
		if err := unix.Lstat(d, &st); err != nil {
			return fmt.Errorf("directory %q: %v", d, err)
		}
		sticky := st.Mode&unix.S_ISVTX != 0
		switch {
		case st.Uid != 0:
			return fmt.Errorf("directory %q belongs to uid %d, who could swap it for a symlink to another service's socket: use a directory only root can change, such as /run/socket-proxyd (RuntimeDirectory=)", d, st.Uid)
		case st.Mode&0o002 != 0 && !sticky, st.Mode&0o020 != 0 && st.Gid != 0 && !sticky:
			return fmt.Errorf("directory %q is writable by other users and not sticky (mode %#o), so it could be swapped for a symlink to another service's socket: use a directory only root can change, such as /run/socket-proxyd (RuntimeDirectory=)", d, st.Mode&0o7777)
		}
		if d == "/" {
			return nil
		}
	}
}

// adoptedFile is the socket file of a --listen or --listen-datagram unix
// socket carried over a reload, for its listener to remove on the way out,
// as it would have in the image that bound it: the file at the path, if it
// is the one that image bound (want, which it passed on; unknown when zero,
// from an image that did not), not another's put there since. The
// directory is held open from here. network is the socket's own: unix,
// unixpacket or unixgram.
func adoptedFile(p, network string, want FileID) (boundFile, *net.UnixAddr) {
	clean := filepath.Clean(p)
	dirName, name := filepath.Split(clean)
	file := boundFile{dir: -1, name: name}
	if dir, err := unix.Open(dirName, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
		var st unix.Stat_t
		if unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFSOCK &&
			(want == FileID{} || want == FileID{st.Dev, st.Ino}) {
			file.dir, file.dev, file.ino = dir, st.Dev, st.Ino
		} else {
			unix.Close(dir)
		}
	}
	return file, &net.UnixAddr{Name: clean, Net: network}
}

// adoptPath gives a carried listener of a bound unix path the removal of its
// file at close, if the file there is still the one want names.
func adoptPath(ln net.Listener, p string, want FileID) net.Listener {
	switch l := ln.(type) {
	case *net.UnixListener:
		l.SetUnlinkOnClose(false)
		file, addr := adoptedFile(p, l.Addr().Network(), want) // unix or unixpacket
		return &unixListener{UnixListener: l, file: file, addr: addr}
	case *packetListener:
		file, addr := adoptedFile(p, "unixgram", want)
		var once sync.Once
		l.unlink, l.addr, l.file = func() { once.Do(file.remove) }, addr, FileID{file.dev, file.ino}
	}
	return ln
}
