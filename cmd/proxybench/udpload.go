// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The datagram load generator and backend. Both batch with
// recvmmsg/sendmmsg on blocking sockets with a receive timeout, so that
// this process (load and backend share one CPU) is not what limits the
// proxy under test.

const udpBatch = 64

// mmsg is a batch of messages with a slot each.
type mmsg struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet4
	buf   []byte
	slot  int
}

func newMmsg(n, slot int) *mmsg {
	m := &mmsg{hdrs: make([]unix.Mmsghdr, n), iovs: make([]unix.Iovec, n), names: make([]unix.RawSockaddrInet4, n),
		buf: make([]byte, n*slot), slot: slot}
	for i := range m.hdrs {
		m.iovs[i] = unix.Iovec{Base: &m.buf[i*slot]}
		m.iovs[i].SetLen(slot)
		m.hdrs[i].Hdr.Iov, m.hdrs[i].Hdr.Iovlen = &m.iovs[i], 1
	}
	return m
}

// prepare sets every message up for a receive (named: with room for the
// sender's address) or for a send of size bytes on a connected socket.
func (m *mmsg) prepare(named bool, size int) {
	for i := range m.hdrs {
		h := &m.hdrs[i].Hdr
		h.Name, h.Namelen = nil, 0
		if named {
			h.Name, h.Namelen = (*byte)(unsafe.Pointer(&m.names[i])), unix.SizeofSockaddrInet4
		}
		m.iovs[i].SetLen(size)
		h.Flags = 0
	}
}

func mmsgCall(trap uintptr, fd int, hdrs []unix.Mmsghdr, flags int) (int, error) {
	r, _, e := unix.Syscall6(trap, uintptr(fd), uintptr(unsafe.Pointer(&hdrs[0])), uintptr(len(hdrs)), uintptr(flags), 0, 0)
	if e != 0 {
		return int(r), e
	}
	return int(r), nil
}

// udpSocket is a blocking UDP socket on 127.0.0.1 with a receive timeout,
// connected to peer unless peer is not valid.
func udpSocket(peer netip.AddrPort, timeout time.Duration) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	tv := unix.NsecToTimeval(int64(timeout))
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if peer.IsValid() {
		if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: peer.Addr().As4(), Port: int(peer.Port())}); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	return fd, nil
}

// udpBackend echoes every datagram to its sender, a batch at a time.
type udpBackend struct {
	fd   int
	addr netip.AddrPort
	stop atomic.Bool
	wg   sync.WaitGroup
}

func newUDPBackend() (*udpBackend, error) {
	fd, err := udpSocket(netip.AddrPort{}, 100*time.Millisecond)
	if err != nil {
		return nil, err
	}
	sa, _ := unix.Getsockname(fd)
	b := &udpBackend{fd: fd, addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*unix.SockaddrInet4).Port))}
	b.wg.Go(b.serve)
	return b, nil
}

func (b *udpBackend) serve() {
	m := newMmsg(udpBatch, 2048)
	for !b.stop.Load() {
		m.prepare(true, m.slot)
		n, err := mmsgCall(unix.SYS_RECVMMSG, b.fd, m.hdrs, unix.MSG_WAITFORONE)
		if err != nil || n <= 0 {
			continue // the timeout, to look at stop
		}
		for i := range n {
			m.iovs[i].SetLen(int(m.hdrs[i].Len))
		}
		for sent := 0; sent < n; {
			k, err := mmsgCall(unix.SYS_SENDMMSG, b.fd, m.hdrs[sent:n], 0)
			if err != nil || k <= 0 {
				break
			}
			sent += k
		}
	}
}

func (b *udpBackend) close() {
	b.stop.Store(true)
	b.wg.Wait()
	unix.Close(b.fd)
}

// udpPing sends one 64-byte datagram at a time from one socket and waits
// for its reply: round-trip percentiles and the rate they allow.
func udpPing(ctx context.Context, to netip.AddrPort, iters int, maxDur time.Duration) (p50, p99 time.Duration, pps float64, err error) {
	fd, err := udpSocket(to, time.Second)
	if err != nil {
		return 0, 0, 0, err
	}
	defer unix.Close(fd)
	return udpPingOn(ctx, fd, iters, maxDur)
}

// udpPingOn is udpPing from the connected socket fd.
func udpPingOn(ctx context.Context, fd int, iters int, maxDur time.Duration) (p50, p99 time.Duration, pps float64, err error) {
	msg, reply := make([]byte, 64), make([]byte, 2048)
	var rtts []time.Duration
	start := time.Now()
	lost := 0
	for i := 0; i < iters && time.Since(start) < maxDur && ctx.Err() == nil; i++ {
		t0 := time.Now()
		if _, err := unix.Write(fd, msg); err != nil {
			return 0, 0, 0, err
		}
		if n, err := unix.Read(fd, reply); err != nil || n != 64 {
			if lost++; lost > 10 {
				return 0, 0, 0, fmt.Errorf("%d datagrams lost (%v)", lost, err)
			}
			continue
		}
		rtts = append(rtts, time.Since(t0))
	}
	if len(rtts) == 0 {
		return 0, 0, 0, errors.New("no reply")
	}
	total := time.Since(start)
	slices.Sort(rtts)
	return rtts[len(rtts)/2], rtts[len(rtts)*99/100], float64(len(rtts)) / total.Seconds(), nil
}

// udpPacedCPU sends a 64-byte datagram on fd every interval for dur, each
// after the last one's reply, and returns the CPU pid's process tree used
// meanwhile, in percent of one CPU.
func udpPacedCPU(ctx context.Context, fd, pid int, interval, dur time.Duration) (float64, error) {
	msg, reply := make([]byte, 64), make([]byte, 2048)
	cpu0, err := treeCPU(pid)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	lost := 0
	for next := start; time.Since(start) < dur && ctx.Err() == nil; next = next.Add(interval) {
		time.Sleep(time.Until(next))
		if _, err := unix.Write(fd, msg); err != nil {
			return 0, err
		}
		if n, err := unix.Read(fd, reply); err != nil || n != 64 {
			if lost++; lost > 10 {
				return 0, fmt.Errorf("%d datagrams lost (%v)", lost, err)
			}
		}
	}
	cpu1, err := treeCPU(pid)
	if err != nil {
		return 0, err
	}
	return (cpu1 - cpu0) * 100 / time.Since(start).Seconds(), nil
}

// udpFlows runs flows clients, each keeping window datagrams of size bytes
// in flight for dur, and returns the replies per second.
func udpFlows(ctx context.Context, to netip.AddrPort, flows, window, size int, dur time.Duration) (float64, error) {
	var replies atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	deadline := time.Now().Add(dur)
	fds := make([]int, flows)
	for i := range fds {
		fd, err := udpSocket(to, 200*time.Millisecond)
		if err != nil {
			for _, f := range fds[:i] {
				unix.Close(f)
			}
			return 0, err
		}
		fds[i] = fd
	}
	defer func() {
		for _, f := range fds {
			unix.Close(f)
		}
	}()
	start := time.Now()
	for _, fd := range fds {
		wg.Go(func() {
			out, in := newMmsg(window, size), newMmsg(window, 2048)
			out.prepare(false, size)
			for time.Now().Before(deadline) && ctx.Err() == nil {
				if _, err := mmsgCall(unix.SYS_SENDMMSG, fd, out.hdrs, 0); err != nil {
					mu.Lock()
					firstErr = cmp(firstErr, err)
					mu.Unlock()
					return
				}
				got := 0
				for got < window {
					in.prepare(false, in.slot)
					n, err := mmsgCall(unix.SYS_RECVMMSG, fd, in.hdrs[:window-got], unix.MSG_WAITFORONE)
					if err != nil || n <= 0 {
						break // lost ones: send a new window
					}
					got += n
				}
				replies.Add(int64(got))
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return 0, firstErr
	}
	if replies.Load() == 0 {
		return 0, errors.New("no reply")
	}
	return float64(replies.Load()) / time.Since(start).Seconds(), nil
}

func cmp(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// udpNewFlows opens a new client socket for each request: the rate at which
// the proxy sets flows up, at most maxFlows in all.
//
// Each worker waits for its reply in a blocking read, so the harness gets a
// P per worker for the phase: pinned to one CPU it runs with GOMAXPROCS=1,
// and then a worker whose reply has come waits for the one P until sysmon
// takes it from a worker blocked in its read, which is up to 10 ms when
// sysmon has backed off. Replies that arrive together (a proxy that sends
// the replies of several flows in one sendmmsg) then cost the whole
// generator stalls of milliseconds that no set of real clients has: with
// GOMAXPROCS=1 the new flows' p99 was 4 to 7 ms through socket-proxyd and
// 2 to 5 ms through nginx, 1 to 2 ms for both with a P per worker.
func udpNewFlows(ctx context.Context, to netip.AddrPort, workers int, dur time.Duration, maxFlows int64) (float64, error) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(workers + 2))
	var done, failed atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(dur)
	start := time.Now()
	for range workers {
		wg.Go(func() {
			msg, reply := make([]byte, 64), make([]byte, 2048)
			for time.Now().Before(deadline) && ctx.Err() == nil && done.Load()+failed.Load() < maxFlows {
				fd, err := udpSocket(to, time.Second)
				if err != nil {
					failed.Add(1)
					return
				}
				unix.Write(fd, msg)
				if n, err := unix.Read(fd, reply); err == nil && n == len(msg) {
					done.Add(1)
				} else {
					failed.Add(1)
				}
				unix.Close(fd)
			}
		})
	}
	wg.Wait()
	if f := failed.Load(); f > done.Load()/100+5 {
		return 0, fmt.Errorf("%d of %d new flows got no reply", f, f+done.Load())
	}
	return float64(done.Load()) / time.Since(start).Seconds(), nil
}

// udpIdle opens n flows, one request and reply each, and keeps their
// sockets open until release is called.
func udpIdle(ctx context.Context, to netip.AddrPort, n int) (release func(), err error) {
	var fds []int
	release = func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	msg, reply := make([]byte, 64), make([]byte, 2048)
	for i := 0; i < n && ctx.Err() == nil; i++ {
		fd, err := udpSocket(to, 2*time.Second)
		if err != nil {
			release()
			return nil, err
		}
		fds = append(fds, fd)
		unix.Write(fd, msg)
		if _, err := unix.Read(fd, reply); err != nil {
			release()
			return nil, fmt.Errorf("flow %d: no reply: %v", i, err)
		}
	}
	return release, ctx.Err()
}
