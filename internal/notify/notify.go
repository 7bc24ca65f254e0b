// SPDX-License-Identifier: Apache-2.0

// Package notify tells the service manager how the proxy is doing
// (sd_notify: READY, RELOADING, STOPPING, STATUS, WATCHDOG). Outside systemd, with no
// NOTIFY_SOCKET, every call does nothing.
package notify

import (
	"context"
	"fmt"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
)

// Ready says the listeners are set up. systemd-socket-proxyd in systemd 252
// never sends it, so a Type=notify unit of it hangs in "activating".
func Ready() error { return send(daemon.SdNotifyReady) }

// Stopping says the proxy is on its way out.
func Stopping() error { return send(daemon.SdNotifyStopping) }

// Status sets the one-line status `systemctl status` shows.
func Status(s string) error { return send("STATUS=" + s) }

func send(state string) error {
	_, err := daemon.SdNotify(false, state)
	return err
}

// WatchdogInterval is how often to send WATCHDOG=1: half of WATCHDOG_USEC,
// or zero when the unit has no WatchdogSec= (or it is meant for another PID).
func WatchdogInterval() time.Duration {
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil || d <= 0 {
		return 0
	}
	return d / 2
}

// Watchdog sends WATCHDOG=1 every interval until ctx ends. The caller owns
// the goroutine it runs in.
func Watchdog(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			send(daemon.SdNotifyWatchdog)
		}
	}
}

// Reloading says a reload has begun (Type=notify-reload, systemd >= 253):
// MONOTONIC_USEC= lets systemd tell this reload from an earlier one, and
// READY=1 from the reloaded image ends it.
func Reloading() error {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return send(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", ts.Nano()/1000))
}

// maxFDsPerMessage is the kernel's SCM_MAX_FD: descriptors in one message.
const maxFDsPerMessage = 253

// StoreFDs hands descriptors to systemd's fd store (FDSTORE=1) under name,
// in as many messages as it takes. FDPOLL=0: systemd must not drop one on
// POLLHUP, as a half-closed connection may still have bytes to deliver. It
// fails without NOTIFY_SOCKET. systemd keeps at most FileDescriptorStoreMax=
// and closes the rest, with a message in the journal but no answer here.
func StoreFDs(socket, name string, fds []int) error {
	c, err := Dial(socket)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Store(name, fds)
}

// RemoveFDs takes every descriptor stored under name out of the store
// (FDSTOREREMOVE=1): once the proxy holds them, a copy left in the store
// would keep a connection open after the proxy closed it.
func RemoveFDs(socket, name string) error {
	return sendWithFDs(socket, "FDSTOREREMOVE=1\nFDNAME="+name, nil)
}

// sendWithFDs sends one notification with descriptors attached
// (SCM_RIGHTS), as sd_pid_notify_with_fds does.
func sendWithFDs(socket, state string, fds []int) error {
	c, err := Dial(socket)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.send(state, fds)
}

// Conn is a socket to NOTIFY_SOCKET kept open, for a proxy that talks to
// the fd store for every connection (--fdstore=always): one sendmsg per
// message, no socket per message. A message waits while systemd's queue is
// full (the proxy then goes at the pace PID 1 stores), at most sendTimeout.
type Conn struct {
	fd   int
	addr unix.SockaddrUnix
}

// sendTimeout bounds the wait for room in systemd's queue.
const sendTimeout = time.Second

// Dial opens a socket to NOTIFY_SOCKET.
func Dial(socket string) (*Conn, error) {
	if socket == "" {
		return nil, fmt.Errorf("NOTIFY_SOCKET is not set: the fd store needs systemd")
	}
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("cannot reach NOTIFY_SOCKET: %v", err)
	}
	tv := unix.NsecToTimeval(int64(sendTimeout))
	unix.SetsockoptTimeval(s, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	return &Conn{fd: s, addr: unix.SockaddrUnix{Name: socket}}, nil
}

// Close closes the socket.
func (c *Conn) Close() error { return unix.Close(c.fd) }

// Store is StoreFDs on c.
func (c *Conn) Store(name string, fds []int) error {
	for len(fds) > 0 {
		n := min(len(fds), maxFDsPerMessage)
		if err := c.send("FDSTORE=1\nFDPOLL=0\nFDNAME="+name, fds[:n]); err != nil {
			return err
		}
		fds = fds[n:]
	}
	return nil
}

// Remove is RemoveFDs on c.
func (c *Conn) Remove(name string) error {
	return c.send("FDSTOREREMOVE=1\nFDNAME="+name, nil)
}

func (c *Conn) send(state string, fds []int) error {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if err := unix.Sendmsg(c.fd, []byte(state), oob, &c.addr, 0); err != nil {
		return fmt.Errorf("cannot send %d descriptors to NOTIFY_SOCKET %q: %v", len(fds), c.addr.Name, err)
	}
	return nil
}
