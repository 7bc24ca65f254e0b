// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestShortSoak runs the whole tool briefly: a few dozen workers for two
// seconds, every kind of exchange (urgent bytes included), and the proxy
// back to its baseline.
func TestShortSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the proxy")
	}
	var out bytes.Buffer
	code := run(config{
		duration: 2 * time.Second,
		conns:    40,
		maxSize:  256 << 10,
		maxPause: 100 * time.Millisecond,
		timeout:  30 * time.Second,
		settle:   20 * time.Second,
		rssSlack: 16 << 10,
	}, &out)
	t.Log(out.String())
	if code != 0 {
		t.Fatalf("exit status %d", code)
	}
	if strings.Contains(out.String(), " urgent 0,") || strings.Contains(out.String(), "descriptors 0)") {
		t.Error("no exchange with urgent bytes, or none with descriptors, ran")
	}
	for _, want := range []string{"exchanges verified", "proxy before", "proxy after", "PASS"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q", want)
		}
	}
}

// TestRandomSizeBounds: sizes stay within 0..max.
func TestRandomSizeBounds(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, max := range []int{0, 1, 1000, 1 << 20} {
		for i := 0; i < 1000; i++ {
			if n := randomSize(rng, max); n < 0 || n > max {
				t.Fatalf("randomSize(%d) = %d", max, n)
			}
		}
	}
}

// TestExchangeCatchesCorruption: through a forwarder that flips one byte,
// each way in turn, every kind of exchange that carries that byte fails.
func TestExchangeCatchesCorruption(t *testing.T) {
	st := &stats{}
	bln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	be := &backend{ln: bln, st: st, timeout: 10 * time.Second}
	be.wg.Add(1)
	go be.serve()
	defer func() { bln.Close(); be.wg.Wait() }()
	for _, flipUp := range []bool{true, false} {
		addr := corruptingForwarder(t, bln.Addr().String(), flipUp)
		for _, k := range kinds {
			if !flipUp && k == kindEcho {
				continue // the echo carries the client's bytes both ways: covered by flipUp
			}
			rng := rand.New(rand.NewPCG(3, 4))
			before := st.backendErrs.Load()
			err := exchange(endpoints{tcp: addr}, rng, k, 64<<10, 64<<10, 0, 10*time.Second, &stats{})
			// Bytes flipped on the way up may be caught by the backend
			// alone (the client has nothing to compare them with).
			deadline := time.Now().Add(5 * time.Second)
			for err == nil && st.backendErrs.Load() == before && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if err == nil && st.backendErrs.Load() == before {
				t.Errorf("kind %c, flipped %s: the corruption went unnoticed", k, map[bool]string{true: "upstream", false: "downstream"}[flipUp])
			}
		}
	}
}

// corruptingForwarder forwards TCP to backend, flipping byte 1000 of the
// client-to-backend stream (up) or of the other one.
func corruptingForwarder(t *testing.T, backend string, up bool) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
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
			pipe := func(dst, src net.Conn, flip bool) {
				w := io.Writer(dst)
				if flip {
					w = &flipper{w: dst, at: 1000}
				}
				_, _ = io.Copy(w, src)
				_ = closeWrite(dst)
			}
			var conn sync.WaitGroup
			conn.Go(func() { pipe(b, c, up) })
			conn.Go(func() { pipe(c, b, !up) })
			wg.Go(func() { conn.Wait(); c.Close(); b.Close() })
		}
	})
	return ln.Addr().String()
}

type flipper struct {
	w   io.Writer
	at  int64
	off int64
}

func (f *flipper) Write(p []byte) (int, error) {
	if f.at >= f.off && f.at < f.off+int64(len(p)) {
		q := append([]byte(nil), p...)
		q[f.at-f.off] ^= 0x40
		p = q
	}
	f.off += int64(len(p))
	return f.w.Write(p)
}
