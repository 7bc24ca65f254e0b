// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// The load generator: each function is one measurement, run against addr (a
// proxy's listener, or the backend itself for "direct"). Every connection's I/O
// deadline is the phase's deadline, and cancelling the phase (the proxy died)
// unblocks it at once, so no phase outlives its timeout.

const msgLen = 64 // ping-pong message size

func dial(ctx context.Context, addr string) (*net.TCPConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// guard ties c's I/O deadline to ctx: its deadline, and its cancellation.
func guard(ctx context.Context, c net.Conn) (stop func() bool) {
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	return context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
}

// fillMsg writes message number seq: the sequence number, then pattern bytes
// that depend on it, so an echo from another message or connection is caught.
func fillMsg(pat, msg []byte, seq uint64) {
	binary.BigEndian.PutUint64(msg, seq)
	copy(msg[8:], patternAt(pat, int64(seq*56%period), len(msg)-8))
}

// roundTrip sends msg and checks that exactly msg comes back.
func roundTrip(c *net.TCPConn, msg, reply []byte) error {
	if _, err := c.Write(msg); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, reply); err != nil {
		return err
	}
	if !bytes.Equal(msg, reply) {
		return fmt.Errorf("echo: sent %x, got %x", msg[:8], reply[:8])
	}
	return nil
}

// ready waits until a connection through addr echoes a message.
func ready(ctx context.Context, addr string, pat []byte) error {
	var last error
	for i := 0; i < 10000; i++ {
		if ctx.Err() != nil {
			return fmt.Errorf("not ready: %v (last: %v)", ctx.Err(), last)
		}
		if last = probe(ctx, addr, pat, time.Second); last == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("not ready: %v", last)
}

// probe opens one connection, echoes one message through it and closes it.
func probe(ctx context.Context, addr string, pat []byte, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := openEcho(ctx, addr, pat, 8, 0)
	if err != nil {
		return err
	}
	return c.Close()
}

// openEcho connects in echo mode and checks one message of n bytes; the header
// and the message go in one write, like a small request. The connection is
// returned with no deadline.
func openEcho(ctx context.Context, addr string, pat []byte, n int, seq uint64) (*net.TCPConn, error) {
	c, err := dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	stop := guard(ctx, c)
	req := header(modeEcho, 0)
	msg := make([]byte, max(n, 8))
	fillMsg(pat, msg, seq)
	req = append(req, msg...)
	reply := make([]byte, len(msg))
	_, err = c.Write(req)
	if err == nil {
		_, err = io.ReadFull(c, reply)
	}
	if err == nil && !bytes.Equal(msg, reply) {
		err = fmt.Errorf("echo: sent %x, got %x", msg[:8], reply[:8])
	}
	stop()
	if err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// bulk moves total bytes over streams connections at once, upload (client to
// backend) or download, and returns the rate in bytes per second. The clock runs
// from the moment all streams are connected until the last one is verified.
func bulk(ctx context.Context, addr string, pat []byte, streams int, total int64, up bool) (float64, error) {
	conns := make([]*net.TCPConn, 0, streams)
	for range streams {
		c, err := dial(ctx, addr)
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return 0, err
		}
		conns = append(conns, c)
	}
	per := total / int64(streams)
	errs := make([]error, streams)
	var wg sync.WaitGroup
	start := time.Now()
	for i, c := range conns {
		n := per
		if i == streams-1 {
			n = total - per*int64(streams-1)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if up {
				errs[i] = uploadStream(ctx, c, pat, n)
			} else {
				errs[i] = downloadStream(ctx, c, pat, n)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	return float64(total) / elapsed.Seconds(), nil
}

func uploadStream(ctx context.Context, c *net.TCPConn, pat []byte, n int64) error {
	defer c.Close()
	stop := guard(ctx, c)
	defer stop()
	if _, err := c.Write(header(modeUp, uint64(n))); err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	var off int64
	for off < n {
		k := int(min(int64(chunk), n-off))
		w, err := c.Write(patternAt(pat, off, k))
		off += int64(w)
		if err != nil {
			return fmt.Errorf("upload: after %d of %d bytes: %w", off, n, err)
		}
	}
	var reply [9]byte
	if _, err := io.ReadFull(c, reply[:]); err != nil {
		return fmt.Errorf("upload: %d bytes sent, no reply from the backend: %w", n, err)
	}
	if got := int64(binary.BigEndian.Uint64(reply[:])); got != n {
		return fmt.Errorf("upload: sent %d bytes, backend got %d", n, got)
	}
	if reply[8] != 1 {
		return fmt.Errorf("upload: %d bytes arrived but not as sent (pattern mismatch)", n)
	}
	return nil
}

func downloadStream(ctx context.Context, c *net.TCPConn, pat []byte, n int64) error {
	defer c.Close()
	stop := guard(ctx, c)
	defer stop()
	if _, err := c.Write(header(modeDown, uint64(n))); err != nil {
		return fmt.Errorf("download: %w", err)
	}
	buf := make([]byte, chunk)
	var off int64
	for i := 0; ; i++ {
		k, err := c.Read(buf)
		if k > 0 {
			if off+int64(k) > n {
				return fmt.Errorf("download: expected %d bytes, got more", n)
			}
			if sampled(off, i) && !bytes.Equal(buf[:k], patternAt(pat, off, k)) {
				return fmt.Errorf("download: bytes at offset %d not as sent (pattern mismatch)", off)
			}
			off += int64(k)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("download: after %d of %d bytes: %w", off, n, err)
		}
	}
	if off != n {
		return fmt.Errorf("download: expected %d bytes, got %d", n, off)
	}
	return nil
}

// pingPong sends 64-byte messages one at a time over one connection and returns
// the 50th and 99th percentile round-trip times, after a warm-up, from at most
// iters round trips or maxDur, whichever ends first.
func pingPong(ctx context.Context, addr string, pat []byte, iters int, maxDur time.Duration) (p50, p99 time.Duration, trips int, err error) {
	c, err := openEcho(ctx, addr, pat, msgLen, 0)
	if err != nil {
		return 0, 0, 0, err
	}
	defer c.Close()
	stop := guard(ctx, c)
	defer stop()
	msg, reply := make([]byte, msgLen), make([]byte, msgLen)
	const warm = 200
	lat := make([]time.Duration, 0, iters)
	var end time.Time
	for i := 0; i < warm+iters; i++ {
		fillMsg(pat, msg, uint64(i+1))
		t := time.Now()
		if err := roundTrip(c, msg, reply); err != nil {
			return 0, 0, 0, err
		}
		trips++
		d := time.Since(t)
		if i == warm-1 {
			end = time.Now().Add(maxDur)
		}
		if i >= warm {
			lat = append(lat, d)
			if time.Now().After(end) {
				break
			}
		}
	}
	slices.Sort(lat)
	return lat[len(lat)/2], lat[len(lat)*99/100], trips, nil
}

// requestRate runs conns connections, each sending 64-byte messages one at a time
// for dur, and returns the total round trips per second.
func requestRate(ctx context.Context, addr string, pat []byte, conns int, dur time.Duration) (float64, error) {
	cs := make([]*net.TCPConn, 0, conns)
	defer func() {
		for _, c := range cs {
			c.Close()
		}
	}()
	for i := range conns {
		c, err := openEcho(ctx, addr, pat, msgLen, uint64(i))
		if err != nil {
			return 0, err
		}
		cs = append(cs, c)
	}
	var total atomic.Int64
	errs := make([]error, conns)
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(dur)
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stop := guard(ctx, c)
			defer stop()
			msg, reply := make([]byte, msgLen), make([]byte, msgLen)
			for seq := uint64(i) << 32; time.Now().Before(end); seq++ {
				fillMsg(pat, msg, seq)
				if err := roundTrip(c, msg, reply); err != nil {
					errs[i] = err
					return
				}
				total.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	return float64(total.Load()) / elapsed.Seconds(), nil
}

// connRate opens connections from workers goroutines for dur (at most maxConns in
// all, to stay well inside the ephemeral port range): each connects, echoes one
// 64-byte message (sent with the header in one write) and closes. It returns
// connections per second.
func connRate(ctx context.Context, addr string, pat []byte, workers int, dur time.Duration, maxConns int64) (float64, error) {
	var next, done atomic.Int64
	errs := make([]error, workers)
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(dur)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				seq := next.Add(1)
				if seq > maxConns {
					return
				}
				c, err := openEcho(ctx, addr, pat, msgLen, uint64(seq))
				if err != nil {
					errs[w] = fmt.Errorf("connection %d: %w", seq, err)
					return
				}
				c.Close()
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	return float64(done.Load()) / elapsed.Seconds(), nil
}

// openIdle opens up to want connections, workers at a time, each checked with one
// echo that must come back within perConn; it stops at the first failure and
// returns the connections that work together with that failure.
func openIdle(ctx context.Context, addr string, pat []byte, want, workers int, perConn time.Duration) ([]*net.TCPConn, error) {
	var (
		mu    sync.Mutex
		conns []*net.TCPConn
		first error
		next  atomic.Int64
		stop  atomic.Bool
		wg    sync.WaitGroup
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				seq := next.Add(1)
				if seq > int64(want) {
					return
				}
				cctx, cancel := context.WithTimeout(ctx, perConn)
				c, err := openEcho(cctx, addr, pat, 8, uint64(seq))
				cancel()
				mu.Lock()
				if err != nil {
					if first == nil {
						first = err
					}
					stop.Store(true)
				} else {
					conns = append(conns, c)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return conns, first
}
