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
