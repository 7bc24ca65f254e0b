// SPDX-License-Identifier: Apache-2.0

package main_test

import (
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/testutil"
)

// socketMemory is the kernel memory the TCP sockets of process pid hold,
// by ss's skmem (receive and send queues, forward allocation, and what
// waits to be sent), in bytes.
func socketMemory(t *testing.T, ss string, pid int) int64 {
	t.Helper()
	out, err := exec.Command(ss, "-tmnpH").Output()
	if err != nil {
		t.Fatalf("ss: %v", err)
	}
	re := regexp.MustCompile(`skmem:\(r(\d+),rb\d+,t(\d+),tb\d+,f(\d+),w(\d+)`)
	var total int64
	// ss prints each socket's skmem on a line of its own, indented.
	text := strings.ReplaceAll(string(out), "\n\t", " ")
	for _, l := range strings.Split(text, "\n") {
		if !strings.Contains(l, "pid="+strconv.Itoa(pid)+",") {
			continue
		}
		if m := re.FindStringSubmatch(l); m != nil {
			for _, v := range m[1:] {
				n, _ := strconv.ParseInt(v, 10, 64)
				total += n
			}
		}
	}
	return total
}

// TestNonReadingClientsMemory: clients that never read, in front of a
// backend that sends without end, hold what the kernel's autotuning lets
// their sockets grow to (logged: megabytes each); with --socket-buffer=64K
// each connection's sockets hold at most a few hundred KiB.
func TestNonReadingClientsMemory(t *testing.T) {
	t.Parallel()
	ss := testutil.RequireTool(t, "ss", "iproute2")
	be := listenTCP(t, "127.0.0.1:0")
	serve(t, be, func(c net.Conn) {
		buf := make([]byte, 1<<20)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	})
	const clients = 4
	for _, tt := range []struct {
		opts []string
		most int64 // per connection; 0: only logged
	}{
		{opts: nil},
		{opts: []string{"--socket-buffer=64K"}, most: 512 << 10},
	} {
		p := start(t, binary, launch{args: append(tt.opts, "--listen", "127.0.0.1:0", be.Addr().String())})
		addrs, err := listeningTCP(p, 1, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		for range clients {
			c := dial(t, "tcp", addrs[0])
			defer c.Close()
		}
		// Wait until the memory stops growing: every buffer full.
		var mem, last int64
		poll(20*time.Second, func() bool {
			last, mem = mem, socketMemory(t, ss, p.pid())
			time.Sleep(200 * time.Millisecond)
			return mem > 0 && mem == last
		}, func() string { return "the memory never settled" })
		per := mem / clients
		t.Logf("%v: %d non-reading clients, the proxy's sockets hold %.2f MiB, %.0f KiB per connection", tt.opts, clients, float64(mem)/(1<<20), float64(per)/1024)
		if tt.most > 0 && per > tt.most {
			t.Errorf("%v: %d KiB per connection, want at most %d", tt.opts, per>>10, tt.most>>10)
		}
	}
}
