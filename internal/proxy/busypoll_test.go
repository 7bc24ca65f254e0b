// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"bytes"
	"fmt"
	"testing"
)

// TestBusyPoll: with Config.BusyPoll the loop finds events while it spins
// (Stats.BusyPollHits: the path is taken), and every datagram still comes
// back whole; without it, the loop never spins.
func TestBusyPoll(t *testing.T) {
	t.Parallel()
	for _, spin := range []bool{true, false} {
		t.Run(fmt.Sprintf("on=%v", spin), func(t *testing.T) {
			t.Parallel()
			be := udpEcho(t, "udp", "127.0.0.1:0", "re:")
			cfg := Config{}
			if spin {
				cfg.BusyPoll = MaxBusyPoll
			}
			p := startDgram(t, "127.0.0.1:0", be.LocalAddr().String(), cfg)
			c := udpClient(t, "127.0.0.1:0", "")
			// Ping-pong: each reply comes back well within the 1 ms
			// window after the request left, while the loop spins.
			for i := range 200 {
				msg := fmt.Appendf(nil, "ping %d", i)
				if got, _ := exchange(t, c, p.addr, msg); !bytes.Equal(got, append([]byte("re:"), msg...)) {
					t.Fatalf("reply %q to %q", got, msg)
				}
			}
			hits := p.srv.Stats().BusyPollHits
			if spin && hits == 0 {
				t.Errorf("no wait found its event while spinning in 200 round trips")
			}
			if !spin && hits != 0 {
				t.Errorf("%d spins with BusyPoll off", hits)
			}
		})
	}
}
