// SPDX-License-Identifier: Apache-2.0

package handoff

import (
	"fmt"
	"math"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// EnvVar names, in the image a reload executes, the descriptor of the memfd
// that holds the record. It is read once at start-up and unset.
const EnvVar = "SOCKET_PROXYD_HANDOFF"

// Memfd puts a record into a sealed memfd (close-on-exec until Exec clears
// it): the next image, or systemd's fd store, holds it as a descriptor,
// and the seals make sure nobody changes it on the way.
func Memfd(b []byte) (int, error) {
	fd, err := unix.MemfdCreate("socket-proxyd-handoff", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return -1, fmt.Errorf("cannot create a memfd for the handoff record: %w", err)
	}
	for off := 0; off < len(b); {
		n, err := unix.Pwrite(fd, b[off:], int64(off))
		if err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("cannot write the handoff record: %v", err)
		}
		off += n
	}
	unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_WRITE|unix.F_SEAL_SEAL)
	return fd, nil
}

// ReadFD reads a whole record from a memfd (or any regular file), at most
// MaxSize bytes.
func ReadFD(fd int) ([]byte, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("handoff record descriptor %d: %v", fd, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size > MaxSize {
		return nil, fmt.Errorf("handoff record descriptor %d: not a record (mode %#o, %d bytes)", fd, st.Mode, st.Size)
	}
	b := make([]byte, st.Size)
	for off := 0; off < len(b); {
		n, err := unix.Pread(fd, b[off:], int64(off))
		if err != nil || n == 0 {
			return nil, fmt.Errorf("handoff record descriptor %d: read %d of %d bytes: %v", fd, off, len(b), err)
		}
		off += n
	}
	return b, nil
}

// Exec executes the open file exe with the record and its descriptors
// carried over: close-on-exec is cleared on each, the record goes into a
// memfd named by EnvVar. It runs that very file, by /proc/self/fd, not a
// path that an upgrade may have given another file since exe was opened
// and checked. It returns only when the exec failed, with every descriptor
// as it was, so the caller goes on serving.
func Exec(exe *os.File, argv, env []string, rec []byte, fds []int) error {
	mfd, err := Memfd(rec)
	if err != nil {
		return err
	}
	carried := append(fds, mfd)
	efd := int(exe.Fd())
	if isScript(efd) {
		// The kernel hands a script's interpreter the path
		// /proc/self/fd/N, which it opens after the exec: N must stay
		// open. The ELF binary needs nothing after the exec, and
		// leaves nothing open in the next image.
		carried = append(carried, efd)
	}
	for _, fd := range carried {
		// Raw: one call per descriptor while the loop stands still.
		unix.RawSyscall(unix.SYS_FCNTL, uintptr(fd), unix.F_SETFD, 0)
	}
	env = append(withoutVar(env, EnvVar), EnvVar+"="+strconv.Itoa(mfd))
	err = syscall.Exec("/proc/self/fd/"+strconv.Itoa(efd), argv, env)
	for _, fd := range carried {
		unix.CloseOnExec(fd)
	}
	unix.Close(mfd)
	return fmt.Errorf("cannot execute %q: %v", exe.Name(), err)
}

// isScript says whether the file starts with "#!".
func isScript(fd int) bool {
	var b [2]byte
	n, _ := unix.Pread(fd, b[:], 0)
	return n == 2 && string(b[:]) == "#!"
}

func withoutVar(env []string, name string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if len(kv) > len(name) && kv[:len(name)] == name && kv[len(name)] == '=' {
			continue
		}
		out = append(out, kv)
	}
	return out
}

// Inherited is the carrier for a reload in place: the value of EnvVar
// names the memfd; the descriptors kept their numbers across exec. It
// returns the record's bytes and a Resolver that accepts a descriptor only
// when it is open here without close-on-exec (the runtime's own are all
// close-on-exec, so nothing of this image's can be mistaken for one) and
// is the very file the writer saw.
func Inherited(value string) ([]byte, Resolver, error) {
	mfd, err := strconv.Atoi(value)
	if err != nil || mfd < 3 {
		return nil, nil, fmt.Errorf("%s=%q does not name a descriptor: it is set by socket-proxyd for itself, unset it", EnvVar, value)
	}
	if !inheritedFD(mfd) {
		return nil, nil, fmt.Errorf("%s=%q: descriptor %d was not passed: unset %s", EnvVar, value, mfd, EnvVar)
	}
	b, err := ReadFD(mfd)
	unix.Close(mfd)
	if err != nil {
		return nil, nil, err
	}
	// A descriptor recorded with its identity must be that very file;
	// one recorded by number (Record.ByNumber) must be open here without
	// close-on-exec: passed on purpose, as everything the Go runtime opens
	// is close-on-exec.
	resolve := func(_ int, f FD) int {
		switch {
		case f.Num < 3 || f.Num == mfd:
			return -1
		case f.Dev == 0 && f.Ino == 0:
			if !inheritedFD(f.Num) {
				return -1
			}
		case !sameFile(f.Num, f):
			return -1
		}
		return f.Num
	}
	return b, resolve, nil
}

func inheritedFD(fd int) bool {
	flags, _, e := unix.RawSyscall(unix.SYS_FCNTL, uintptr(fd), unix.F_GETFD, 0)
	return e == 0 && flags&unix.FD_CLOEXEC == 0
}

func sameFile(fd int, f FD) bool {
	var st unix.Stat_t
	return fstat(fd, &st) == 0 && st.Dev == f.Dev && st.Ino == f.Ino && access(fd, &st) == f.Access
}

// CloseOnExec sets close-on-exec again on every descriptor above stderr,
// the carried ones included, so that a child (the check before the next
// reload) inherits none: one close_range(2) call, or one call each on
// kernels before 5.11.
func CloseOnExec() {
	const closeRangeCloexec = 1 << 2 // CLOSE_RANGE_CLOEXEC
	if _, _, e := unix.Syscall(unix.SYS_CLOSE_RANGE, 3, math.MaxUint32, closeRangeCloexec); e == 0 {
		return
	}
	for _, fd := range Leftovers() {
		unix.CloseOnExec(fd)
	}
}

// Leftovers lists the descriptors above stderr open without close-on-exec:
// after a reload whose record cannot be read, those are the carried ones,
// to be reset.
func Leftovers() []int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil
	}
	var fds []int
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 && inheritedFD(fd) {
			fds = append(fds, fd)
		}
	}
	return fds
}

// Reset closes descriptors nobody will serve: a TCP socket with a reset
// (SO_LINGER 0), so that its peer sees the connection fail rather than end
// cleanly; never a byte more is forwarded.
func Reset(fds []int) {
	for _, fd := range fds {
		unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		unix.Close(fd)
	}
}
