// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{in: "1GiB", want: 1 << 30, ok: true},
		{in: "64MiB", want: 64 << 20, ok: true},
		{in: "8K", want: 8 << 10, ok: true},
		{in: "1000000", want: 1000000, ok: true},
		{in: "", ok: false},
		{in: "-1M", ok: false},
		{in: "1TiB", ok: false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseSize(tc.in)
			if (err == nil) != tc.ok || got != tc.want {
				t.Errorf("parseSize(%q) = %d, %v; want %d, ok=%v", tc.in, got, err, tc.want, tc.ok)
			}
		})
	}
}

func TestMedian(t *testing.T) {
	if got := median([]float64{3, 1, 2}); got != 2 {
		t.Errorf("median of 3 = %v, want 2", got)
	}
	if got := median([]float64{4, 1, 2, 3}); got != 2.5 {
		t.Errorf("median of 4 = %v, want 2.5", got)
	}
}

// The pattern must repeat with its period across the chunk-sized tail, or a
// transfer would be checked against the wrong bytes.
func TestPattern(t *testing.T) {
	pat := makePattern()
	for _, off := range []int64{0, period - 1, period, 5*period + 17, 1<<40 + 3} {
		got := patternAt(pat, off, chunk)
		want := patternAt(pat, off%period, chunk)
		if string(got) != string(want) {
			t.Fatalf("patternAt(%d) differs from patternAt(%d)", off, off%period)
		}
		for i := 0; i < chunk; i += 4099 {
			if got[i] != pat[(int(off%period)+i)%period] {
				t.Fatalf("patternAt(%d)[%d] is not pat[(off+i)%%period]", off, i)
			}
		}
	}
}

func TestProcfs(t *testing.T) {
	st, err := readStat(os.Getpid())
	if err != nil || st.ppid != os.Getppid() {
		t.Fatalf("readStat(self) = %+v, %v; want ppid %d", st, err, os.Getppid())
	}
	if kib, fds, err := treeMem(os.Getpid()); err != nil || kib <= 0 || fds < 3 {
		t.Errorf("treeMem(self) = %d KiB, %d fds, %v", kib, fds, err)
	}
	if _, err := meminfo("MemAvailable", "Slab"); err != nil {
		t.Error(err)
	}
}

// Every mode of the backend, driven by the load generator's own functions,
// directly (no proxy).
func TestBackendDirect(t *testing.T) {
	pat := makePattern()
	be, err := newBackend(pat)
	if err != nil {
		t.Fatal(err)
	}
	defer be.close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	addr := be.addr()
	for _, up := range []bool{true, false} {
		if _, err := bulk(ctx, addr, pat, 4, 3<<20+7, up); err != nil {
			t.Errorf("bulk up=%v: %v", up, err)
		}
	}
	if _, _, _, err := pingPong(ctx, addr, pat, 100, time.Second); err != nil {
		t.Errorf("pingPong: %v", err)
	}
	if _, err := requestRate(ctx, addr, pat, 4, 50*time.Millisecond); err != nil {
		t.Errorf("requestRate: %v", err)
	}
	if _, err := connRate(ctx, addr, pat, 2, 50*time.Millisecond, 100); err != nil {
		t.Errorf("connRate: %v", err)
	}
	conns, err := openIdle(ctx, addr, pat, 20, 4, 3*time.Second)
	if err != nil || len(conns) != 20 {
		t.Errorf("openIdle: %d connections, %v", len(conns), err)
	}
	for _, c := range conns {
		c.Close()
	}
	if err := be.quiet(10 * time.Second); err != nil {
		t.Error(err)
	}
	if err := be.takeErr(); err != nil {
		t.Error(err)
	}
}

// flipProxy forwards to backend, flipping the byte at offset flipAt of the
// direction chosen by up (offsets count from the start of that direction's bytes).
func flipProxy(t *testing.T, backend string, up bool, flipAt int64) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	flipCopy := func(dst, src net.Conn, flip bool, done chan<- struct{}) {
		defer func() { done <- struct{}{} }()
		buf := make([]byte, 32<<10)
		var off int64
		for {
			n, err := src.Read(buf)
			if flip && flipAt >= off && flipAt < off+int64(n) {
				buf[flipAt-off] ^= 0x01
			}
			off += int64(n)
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		dst.(*net.TCPConn).CloseWrite()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", backend)
			if err != nil {
				c.Close()
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				done := make(chan struct{}, 2)
				go flipCopy(b, c, up, done)
				go flipCopy(c, b, !up, done)
				<-done
				<-done
				c.Close()
				b.Close()
			}()
		}
	}()
	return ln.Addr().String()
}

// A candidate that changes one byte fails the transfer, in either direction.
func TestCorruptionDetected(t *testing.T) {
	pat := makePattern()
	be, err := newBackend(pat)
	if err != nil {
		t.Fatal(err)
	}
	defer be.close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, up := range []bool{true, false} {
		addr := flipProxy(t, be.addr(), up, headerLen+1000)
		if _, err := bulk(ctx, addr, pat, 1, 1<<20, up); err == nil || !strings.Contains(err.Error(), "pattern mismatch") {
			t.Errorf("bulk up=%v through a byte-flipping proxy: err = %v, want a pattern mismatch", up, err)
		}
	}
}
