// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"time"

	"golang.org/x/sys/unix"
)

// MaxBusyPoll bounds Config.BusyPoll: a spin longer than this only burns a
// CPU, as the wake-up it saves costs tens of microseconds.
const MaxBusyPoll = time.Millisecond

// busySpin polls epfd without blocking until an event is ready or window
// has passed since start, and returns the number of events (0: none came).
//
// This is Config.BusyPoll (--busy-poll). A blocked loop whose CPU went idle
// is woken by an interrupt from the CPU that queued the packet, and in a
// virtual machine that wake-up is the largest part of a proxied round trip
// (136 µs through the proxy against 3 µs direct, proxybench -udp); a loop
// that still polls when the packet lands needs none. The window is fixed,
// as haproxy's busy-polling is: an adaptive one that shrinks when events
// come later than the window measures its gaps with the wake-up included,
// and so, tried here, stopped spinning for good on the very traffic it
// helps (a reply 60 µs away). The loop spins only after a wait that found
// work, so an idle proxy still costs no wake-ups.
func busySpin(epfd int, events []unix.EpollEvent, start time.Time, window time.Duration) int {
	for {
		n, e := rawEpollWait(epfd, events, 0)
		if e == 0 && n > 0 {
			return n
		}
		if e != 0 && e != unix.EINTR || time.Since(start) >= window {
			return 0
		}
	}
}
