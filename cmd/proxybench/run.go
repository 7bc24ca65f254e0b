// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// idleRaw is what holding n idle connections added, against the same process
// (and machine) with none.
type idleRaw struct {
	n      int
	dMem   float64 // proxy Pss, KiB
	dFds   float64 // proxy descriptors
	dAvail float64 // MemAvailable consumed, KiB (machine-wide)
	dSelf  float64 // the harness's own Pss, KiB
	dSlab  float64 // kernel slab caches, KiB (machine-wide)
	dFree  float64 // MemFree consumed, KiB (machine-wide)
}

// kernel is the kernel memory per connection that MemAvailable shows: what the
// machine lost, less what the proxy and the harness hold in user space.
func (d *idleRaw) kernel() float64 { return (d.dAvail - d.dMem - d.dSelf) / float64(d.n) }

func (d *idleRaw) slab() float64 { return d.dSlab / float64(d.n) }

// runResult is one candidate's figures from one round. vals holds the figures
// by column key; errs holds, by the same key, why a figure is missing.
type runResult struct {
	name    string
	vals    map[string]float64
	errs    map[string]string
	idle    [2]*idleRaw // at 100 connections, and at the most held
	heldAll bool        // held every connection asked for
	limit   string      // how the idle test ended, if it ended early
	cpus    string      // the proxy's Cpus_allowed_list
	notes   []string
	elapsed time.Duration
	foreign float64 // CPUs' worth of time other processes used during the run
}

var allKeys = []string{"up1", "down1", "up32", "down32", "p50", "p99", "pcpu", "rps", "cps", "rss", "fds", "kern", "slab", "held", "cpu"}

func (r *runResult) fail(key string, err error) {
	if _, dup := r.errs[key]; !dup {
		r.errs[key] = err.Error()
	}
}

// kernel computes kernel KiB per connection: MemAvailable consumed per connection
// less the proxy's and the harness's own Pss, less the same for direct
// connections (the client and backend sockets every candidate has). slab is the
// same difference of the Slab counter: narrower (no page allocations, such as
// pipe pages) but less disturbed by other processes. For direct itself both are
// the baseline's absolute figures, in the detail table only.
func (r *runResult) kernel(direct *runResult) {
	for i, sfx := range []string{"100", ""} {
		p := r.idle[i]
		switch {
		case p == nil:
			continue
		case r.name == "direct":
			r.vals["base"+sfx] = p.kernel()
			r.vals["baseslab"+sfx] = p.slab()
			continue
		case direct == nil || direct.idle[i] == nil:
			r.fail("kern"+sfx, errors.New("no direct baseline"))
			r.fail("slab"+sfx, errors.New("no direct baseline"))
			continue
		}
		d := direct.idle[i]
		r.vals["kern"+sfx] = p.kernel() - d.kernel()
		r.vals["slab"+sfx] = p.slab() - d.slab()
	}
}

func (r *runResult) summary() string {
	var parts []string
	for _, k := range allKeys {
		if v, ok := r.vals[k]; ok {
			parts = append(parts, fmt.Sprintf("%s=%.4g", k, v))
		} else if e, ok := r.errs[k]; ok {
			parts = append(parts, fmt.Sprintf("%s=FAIL(%s)", k, e))
		}
	}
	if r.limit != "" {
		parts = append(parts, "idle stopped: "+r.limit)
	}
	for _, d := range r.idle {
		if d != nil {
			parts = append(parts, fmt.Sprintf("[%d idle: proxy Pss %+.0f KiB, fds %+.0f, MemAvailable %+.0f KiB, harness Pss %+.0f KiB, Slab %+.0f KiB, MemFree %+.0f KiB]",
				d.n, d.dMem, d.dFds, -d.dAvail, d.dSelf, d.dSlab, -d.dFree))
		}
	}
	parts = append(parts, fmt.Sprintf("(%.1fs, other processes %.2f CPUs)", r.elapsed.Seconds(), r.foreign))
	return strings.Join(parts, " ")
}

// runCandidate starts a backend and the candidate, runs every phase (or only the
// idle one), and stops both.
func (b *bench) runCandidate(ctx context.Context, c *candidate, idleOnly bool) *runResult {
	r := &runResult{name: c.name, vals: map[string]float64{}, errs: map[string]string{}}
	failAll := func(err error) {
		for _, k := range allKeys {
			r.fail(k, err)
		}
	}
	dir, err := os.MkdirTemp("", "pxb")
	if err != nil {
		failAll(err)
		return r
	}
	defer os.RemoveAll(dir)
	be, err := newBackends(b.pat, b.backends)
	if err != nil {
		failAll(err)
		return r
	}
	defer be.close()

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	addr, pid := be.addr(), 0
	var p *proxyProc
	if c.start != nil {
		// cancel on exit: a candidate that dies ends the current phase at once.
		p, err = c.start(b.l, dir, be.addrs(), cancel)
		if err != nil {
			failAll(fmt.Errorf("start: %w", err))
			return r
		}
		defer func() {
			if err := p.stop(); err != nil {
				r.notes = append(r.notes, fmt.Sprintf("%s: %v; output: %s", c.name, err, p.logTail()))
			}
		}()
		addr, pid = p.addr, p.Pid
		rctx, rcancel := context.WithTimeout(runCtx, 10*time.Second)
		err := ready(rctx, addr, b.pat)
		rcancel()
		if err != nil {
			failAll(fmt.Errorf("%v; output: %s", err, p.logTail()))
			return r
		}
		r.cpus, _ = statusField(pid, "Cpus_allowed_list")
	}

	phase := func(key string, timeout time.Duration, f func(ctx context.Context) error) error {
		if runCtx.Err() != nil {
			err := errors.New("candidate exited")
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			r.fail(key, err)
			return err
		}
		pctx, pcancel := context.WithTimeout(runCtx, timeout)
		err := f(pctx)
		pcancel()
		if qerr := be.quiet(15 * time.Second); err == nil {
			err = qerr
		}
		if berr := be.takeErr(); err == nil {
			err = berr
		}
		if err != nil && p != nil {
			if gone, _ := p.exited(); gone {
				err = fmt.Errorf("%v (candidate exited; output: %s)", err, p.logTail())
			}
		}
		if err != nil {
			r.fail(key, err)
		}
		return err
	}

	if !idleOnly {
		b.throughput(runCtx, r, c, phase, addr, pid)
		phase("p50", b.cfg.dur+30*time.Second, func(ctx context.Context) error {
			cpu0, cpuErr := treeCPU(pid)
			p50, p99, trips, err := pingPong(ctx, addr, b.pat, b.cfg.pings, b.cfg.dur)
			if err != nil {
				r.fail("p99", err)
				r.fail("pcpu", err)
				return err
			}
			r.vals["p50"] = float64(p50) / float64(time.Microsecond)
			r.vals["p99"] = float64(p99) / float64(time.Microsecond)
			if pid != 0 { // direct: no proxy, nothing to count
				if cpu1, err := treeCPU(pid); cmp(cpuErr, err) != nil {
					r.fail("pcpu", cmp(cpuErr, err))
				} else {
					r.vals["pcpu"] = (cpu1 - cpu0) * 1e6 / float64(trips)
				}
			}
			return nil
		})
		phase("rps", b.cfg.dur+30*time.Second, func(ctx context.Context) error {
			rate, err := requestRate(ctx, addr, b.pat, 64, b.cfg.dur)
			r.vals["rps"] = rate
			return err
		})
		phase("cps", b.cfg.dur+30*time.Second, func(ctx context.Context) error {
			rate, err := connRate(ctx, addr, b.pat, b.cfg.workers, b.cfg.dur, 20000)
			r.vals["cps"] = rate
			return err
		})
	}
	target := b.cfg.idle
	if c.forks {
		target = min(target, b.cfg.maxForks)
	}
	err = phase("held", 10*time.Minute, func(ctx context.Context) error {
		return b.idle(ctx, r, addr, pid, target)
	})
	if err != nil {
		for _, k := range []string{"rss", "fds", "kern", "slab", "rss100", "fds100", "kern100", "slab100"} {
			r.fail(k, errors.New("idle test failed"))
		}
	}
	for k := range r.errs {
		delete(r.vals, k)
	}
	return r
}

// throughput runs the four bulk transfers and reads the proxy's CPU time around
// them.
func (b *bench) throughput(ctx context.Context, r *runResult, c *candidate, phase func(string, time.Duration, func(context.Context) error) error, addr string, pid int) {
	var cpu0 float64
	var cpuErr error
	if pid > 0 {
		cpu0, cpuErr = treeCPU(pid)
	}
	var moved float64
	timeout := 30*time.Second + time.Duration(float64(b.cfg.bytes)/50e6*float64(time.Second))
	for _, t := range []struct {
		key     string
		streams int
		up      bool
	}{{"up1", 1, true}, {"down1", 1, false}, {"up32", 32, true}, {"down32", 32, false}} {
		err := phase(t.key, timeout, func(ctx context.Context) error {
			rate, err := bulk(ctx, addr, b.pat, t.streams, b.cfg.bytes, t.up)
			r.vals[t.key] = rate / 1e9
			return err
		})
		if err != nil && cpuErr == nil {
			cpuErr = fmt.Errorf("%s failed", t.key)
		}
		moved += float64(b.cfg.bytes)
	}
	if pid == 0 {
		return
	}
	if c.forks {
		// Let socat reap its children, so their CPU is in its cutime/cstime.
		waitFor(5*time.Second, func() bool { return len(procTree(pid)) == 1 })
	}
	cpu1, err := treeCPU(pid)
	if cpuErr == nil {
		cpuErr = err
	}
	if cpuErr != nil {
		r.fail("cpu", cpuErr)
		return
	}
	r.vals["cpu"] = (cpu1 - cpu0) / (moved / 1e9)
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

type snapshot struct {
	mem   int64 // proxy Pss KiB
	fds   int
	self  int64 // the harness's own Pss KiB
	avail int64 // MemAvailable KiB
	slab  int64 // Slab KiB
	free  int64 // MemFree KiB
}

// snap reads memory after letting the harness's garbage and freed kernel memory
// settle.
func (b *bench) snap(pid int) (snapshot, error) {
	runtime.GC()
	debug.FreeOSMemory()
	time.Sleep(b.cfg.settle)
	var s snapshot
	var err error
	if pid > 0 {
		if s.mem, s.fds, err = treeMem(pid); err != nil {
			return s, err
		}
	}
	if s.self, err = memKiB(os.Getpid()); err != nil {
		return s, err
	}
	m, err := meminfo("MemAvailable", "Slab", "MemFree")
	if err != nil {
		return s, err
	}
	s.avail, s.slab, s.free = m["MemAvailable"], m["Slab"], m["MemFree"]
	return s, nil
}

// idle holds 100 idle connections, then up to target, each proven to work by one
// echo, and records what they cost at both levels. A candidate that cannot take
// more connections (the original runs out of descriptors) ends the test where it
// failed; that is its "max idle conns held".
func (b *bench) idle(ctx context.Context, r *runResult, addr string, pid int, target int) error {
	base, err := b.snap(pid)
	if err != nil {
		return err
	}
	var conns []*net.TCPConn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		if pid > 0 {
			// Leave the candidate as we found it for the next phase.
			waitFor(15*time.Second, func() bool {
				_, fds, err := treeMem(pid)
				return err != nil || fds <= base.fds
			})
		}
	}()
	levels := []int{min(100, target), target}
	var limitErr error
	for i, want := range levels {
		more, err := openIdle(ctx, addr, b.pat, want-len(conns), 16, 3*time.Second)
		conns = append(conns, more...)
		if err != nil {
			limitErr = err
			if len(conns) < levels[0] {
				return fmt.Errorf("held only %d connections: %w", len(conns), err)
			}
		}
		s, err := b.snap(pid)
		if err != nil {
			return err
		}
		raw := &idleRaw{n: len(conns), dMem: float64(s.mem - base.mem), dFds: float64(s.fds - base.fds),
			dAvail: float64(base.avail - s.avail), dSelf: float64(s.self - base.self), dSlab: float64(s.slab - base.slab), dFree: float64(base.free - s.free)}
		r.idle[i] = raw
		suffix := []string{"100", ""}[i]
		if pid > 0 {
			r.vals["rss"+suffix] = raw.dMem / float64(raw.n)
			r.vals["fds"+suffix] = raw.dFds / float64(raw.n)
		}
		if limitErr != nil {
			if i == 0 {
				r.idle[1] = raw
			}
			break
		}
	}
	r.vals["held"] = float64(len(conns))
	r.heldAll = limitErr == nil
	if limitErr != nil {
		r.limit = fmt.Sprintf("at %d: %v", len(conns), limitErr)
		if i := len(r.limit); i > 200 {
			r.limit = r.limit[:200]
		}
	}
	return ctx.Err()
}

// straceRun starts c, attaches strace -f -c to it, moves one bulk transfer each
// way through it, detaches strace with SIGINT, and returns strace's summary.
func (b *bench) straceRun(ctx context.Context, c *candidate) (string, error) {
	dir, err := os.MkdirTemp("", "pxb")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	be, err := newBackend(b.pat)
	if err != nil {
		return "", err
	}
	defer be.close()
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	p, err := c.start(b.l, dir, be.addr(), cancel)
	if err != nil {
		return "", err
	}
	defer p.stop()
	rctx, rcancel := context.WithTimeout(runCtx, 10*time.Second)
	err = ready(rctx, p.addr, b.pat)
	rcancel()
	if err != nil {
		return "", err
	}

	out := filepath.Join(dir, "strace.out")
	errPath := filepath.Join(dir, "strace.err")
	errf, err := os.Create(errPath)
	if err != nil {
		return "", err
	}
	defer errf.Close()
	cmd := exec.Command("strace", "-f", "-c", "-o", out,
		"-e", "trace=splice,read,write,recvfrom,sendto,readv,writev,recvmsg,sendmsg", "-p", strconv.Itoa(p.Pid))
	cmd.Stdout, cmd.Stderr = errf, errf
	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	detach := func() error {
		cmd.Process.Signal(syscall.SIGINT)
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			return errors.New("strace did not detach within 10s; killed")
		}
	}
	attached := waitFor(10*time.Second, func() bool {
		b, _ := os.ReadFile(errPath)
		return strings.Contains(string(b), "attached")
	})
	if !attached {
		detach()
		msg, _ := os.ReadFile(errPath)
		return "", fmt.Errorf("strace did not attach: %s", strings.TrimSpace(string(msg)))
	}
	n := min(b.cfg.bytes, 256<<20)
	var lines []string
	for _, up := range []bool{true, false} {
		bctx, bcancel := context.WithTimeout(runCtx, 2*time.Minute)
		rate, err := bulk(bctx, p.addr, b.pat, 1, n, up)
		bcancel()
		dirName := map[bool]string{true: "upload", false: "download"}[up]
		if err != nil {
			detach()
			return "", fmt.Errorf("%s under strace: %w", dirName, err)
		}
		lines = append(lines, fmt.Sprintf("%s of %d MiB, 1 stream, under strace: %.2f GB/s", dirName, n>>20, rate/1e9))
	}
	be.quiet(15 * time.Second)
	derr := detach()
	summary, err := os.ReadFile(out)
	if err != nil {
		return "", fmt.Errorf("strace: %v (%v)", err, derr)
	}
	return strings.Join(lines, "\n") + "\n\n" + strings.TrimSpace(string(summary)), nil
}
