// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"net"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
)

// TestEvictionOrderSurvivesTheStore: the flows go to the next instance in
// the order a new client would evict them, so after a reload or a
// restart through the fd store the least recently active flow is still
// the one that makes room, not the one opened first.
func TestEvictionOrderSurvivesTheStore(t *testing.T) {
	back, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { back.Close(); wg.Wait() })
	wg.Go(func() { // replies with the source address it sees: the flow's socket
		buf := make([]byte, 2000)
		for {
			_, from, err := back.ReadFrom(buf)
			if err != nil {
				return
			}
			back.WriteTo([]byte(from.String()), from)
		}
	})
	listen := func() activation.Listener {
		ln, err := activation.ListenDatagram("127.0.0.1:0", activation.DefaultSocketMode)
		if err != nil {
			t.Fatal(err)
		}
		ln.Name = "dns"
		return ln
	}
	st := newStore(t)
	a := startOn(t, listen(), back.LocalAddr().String(), Config{Store: st.keep, MaxFlows: 2})
	first, second := udpClient(t, "127.0.0.1:0", ""), udpClient(t, "127.0.0.1:0", "")
	flowOfFirst, _ := exchange(t, first, a.addr, []byte("1"))
	flowOfSecond, _ := exchange(t, second, a.addr, []byte("2"))
	exchange(t, first, a.addr, []byte("1 again")) // the second is now the least recently active
	r := st.take(t, a)
	b := startOn(t, listen(), back.LocalAddr().String(), Config{Resume: r, MaxFlows: 2})
	exchange(t, udpClient(t, "127.0.0.1:0", ""), b.addr, []byte("3")) // evicts one
	if got, _ := exchange(t, first, b.addr, []byte("1")); string(got) != string(flowOfFirst) {
		t.Errorf("the most recently active flow was evicted: the backend sees %s, was %s", got, flowOfFirst)
	}
	if got, _ := exchange(t, second, b.addr, []byte("2")); string(got) == string(flowOfSecond) {
		t.Errorf("the least recently active flow was kept")
	}
}

// TestFlowBudgetFromTheLimit: the default budget is what the open files
// limit leaves after the connections, which take half of it at most: a -c
// far past the limit does not leave flows a budget of 64.
func TestFlowBudgetFromTheLimit(t *testing.T) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Cur < 4096 {
		t.Skipf("open files limit %d: too low to tell", rl.Cur)
	}
	limit := int(min(rl.Cur, 1<<30))
	if got := flowBudget(20000, 1024); got < min(limit/2-64, MaxFlowsCap) {
		t.Errorf("-c 20000 under a limit of %d: budget %d, want at least half the limit", limit, got)
	}
	if got := flowBudget(256, 224); got != min(limit-2*256-2*224-64, MaxFlowsCap) {
		t.Errorf("-c 256: budget %d", got)
	}
}
