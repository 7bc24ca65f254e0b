// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// The data path calls the kernel through RawSyscall: every descriptor it
// touches is non-blocking (sockets are created or accepted with
// SOCK_NONBLOCK, splice gets SPLICE_F_NONBLOCK), so no call can block and the
// runtime's entersyscall/exitsyscall bookkeeping is pure overhead there.

func rawRead(fd int, p []byte) (int, unix.Errno) {
	r, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(r), 0
}

func rawWrite(fd int, p []byte) (int, unix.Errno) {
	r, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(r), 0
}

const spliceFlags = unix.SPLICE_F_MOVE | unix.SPLICE_F_NONBLOCK

func rawSplice(in, out, n int) (int, unix.Errno) {
	r, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n), spliceFlags)
	if e != 0 {
		return 0, e
	}
	return int(r), 0
}

// rawEpollWait waits without telling the scheduler: the loop keeps its P, so
// no other thread is woken to take it over at every wait (measured: ~15%
// less CPU per GB). A signal (the runtime's preemption signal included)
// interrupts it with EINTR. epoll_pwait with a nil mask is epoll_wait on
// every architecture.
func rawEpollWait(epfd int, events []unix.EpollEvent, msec int) (int, unix.Errno) {
	r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])),
		uintptr(len(events)), uintptr(msec), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), 0
}

// rawRecvmsg reads like rawRead, with recvmsg and no room for ancillary
// data, and returns the message flags: MSG_CTRUNC says the read came with
// ancillary data, which the kernel dropped (descriptors of SCM_RIGHTS are
// closed, as nobody received them); MSG_TRUNC says a message of a
// sequential-packet or datagram socket was larger than p. A unix stream
// read stops after a message that carries descriptors, whatever follows
// it, so such a short read does not prove the socket empty.
func rawRecvmsg(fd int, p []byte) (n, flags int, e unix.Errno) {
	iov := unix.Iovec{Base: &p[0]}
	iov.SetLen(len(p))
	msg := unix.Msghdr{Iov: &iov, Iovlen: 1}
	r, _, e := unix.RawSyscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), unix.MSG_DONTWAIT)
	if e != 0 {
		return 0, 0, e
	}
	return int(r), int(msg.Flags), 0
}

// rawMmsg is recvmmsg or sendmmsg (trap) without a timeout, on a
// non-blocking socket: how many messages went, and the error that stopped
// it before the first one.
func rawMmsg(trap uintptr, fd int, msgs []unix.Mmsghdr) (int, unix.Errno) {
	r, _, e := unix.RawSyscall6(trap, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), unix.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), 0
}

// queued says whether a TCP socket holds bytes not yet read (SIOCINQ).
func queued(fd int) bool {
	n, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
	return err == nil && n > 0
}
