// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"testing"
)

// Tests of the event-driven engine itself: descriptors and pipes come back,
// splice is really used, and the edge cases of edge-triggered forwarding.

func TestNoDescriptorLeak(t *testing.T) {
	noLeak(t)
	addr := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	p := start(t, addr, Config{})
	roundTrip(t, p.addr, randomBytes(t, 8<<20))
	for range 20 {
		roundTrip(t, p.addr, []byte("hello"))
	}
	waitFor(t, "connections to close", func() bool { return p.srv.Stats().Active == 0 })
}
