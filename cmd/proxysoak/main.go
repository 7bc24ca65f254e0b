// SPDX-License-Identifier: Apache-2.0

// Command proxysoak keeps thousands of connections going through
// socket-proxyd for a long time and checks that nothing is lost and nothing
// stays behind:
//
//	go run ./cmd/proxysoak -duration 10m -conns 3000
//
// It builds ./cmd/socket-proxyd (or runs -bin), starts it socket-activated
// on a loopback listener with a backend of its own, and runs -conns workers,
// each making connections one after another: uploads, downloads, echoes and
// both ways at once, of random sizes up to -max-size, half-closed in either
// order, idle for a random pause before their data. Every payload is checked
// by SHA-256 against what was sent. When the load stops, it waits for the
// proxy's descriptors and memory to come back to where they were before
// the load, and prints a summary. It exits 1 if any exchange failed or the
// proxy did not come back.
//
// With two or more CPUs it pins the proxy on CPU 0 and itself on CPU 1
// (taskset), as cmd/proxybench does, so the load does not steal the proxy's
// CPU.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/testlaunch"
)

// pinnedEnv marks the re-executed, pinned process.
const pinnedEnv = "PROXYSOAK_PINNED"

type config struct {
	duration time.Duration
	conns    int
	maxSize  int
	maxPause time.Duration
	timeout  time.Duration
	settle   time.Duration
	bin      string
	pin      bool
	rssSlack int64 // KiB
}

func main() {
	var cfg config
	flag.DurationVar(&cfg.duration, "duration", time.Minute, "how long to keep the load going")
	flag.IntVar(&cfg.conns, "conns", 1000, "concurrent connections (workers)")
	flag.IntVar(&cfg.maxSize, "max-size", 1<<20, "largest payload of one direction, in bytes")
	flag.DurationVar(&cfg.maxPause, "max-pause", 2*time.Second, "longest idle pause of a connection before its data")
	flag.DurationVar(&cfg.timeout, "timeout", 2*time.Minute, "deadline of one exchange")
	flag.DurationVar(&cfg.settle, "settle", time.Minute, "how long to wait for fds and RSS to come back after the load")
	flag.StringVar(&cfg.bin, "bin", "", "socket-proxyd binary to test (default: go build ./cmd/socket-proxyd)")
	flag.BoolVar(&cfg.pin, "pin", runtime.NumCPU() >= 2, "pin the proxy on CPU 0 and the load on CPU 1 (taskset)")
	flag.Int64Var(&cfg.rssSlack, "rss-slack", 16<<10, "KiB the proxy's RSS may stay above its start after the load")
	flag.Parse()
	if os.Getenv(pinnedEnv) != "" {
		cfg.pin = true // re-executed under taskset, where NumCPU is 1
	} else if cfg.pin {
		os.Exit(repin())
	}
	os.Exit(run(cfg, os.Stdout))
}

// repin re-executes this program under taskset on CPU 1.
func repin() int {
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "proxysoak:", err)
		return 1
	}
	cmd := exec.Command("taskset", append([]string{"-c", "1", exe}, os.Args[1:]...)...)
	cmd.Env = append(os.Environ(), pinnedEnv+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	signal.Ignore(syscall.SIGINT) // the child gets it too, and reports
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "proxysoak: taskset:", err)
		return 1
	}
	return 0
}

func run(cfg config, out io.Writer) int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "proxysoak:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "proxysoak")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(dir)
	bin := cfg.bin
	if bin == "" {
		bin = filepath.Join(dir, "socket-proxyd")
		// By import path, so that it works from anywhere in the module.
		build := exec.Command("go", "build", "-o", bin, "github.com/socket-proxyd/socket-proxyd/cmd/socket-proxyd")
		if b, err := build.CombinedOutput(); err != nil {
			return fail(fmt.Errorf("go build ./cmd/socket-proxyd (run it from inside the repository): %v\n%s", err, b))
		}
	}

	st := &stats{}
	bln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fail(err)
	}
	be := &backend{ln: bln, st: st, timeout: cfg.timeout}
	be.wg.Add(1)
	go be.serve()
	defer func() { bln.Close(); be.wg.Wait() }()

	p, err := startProxy(bin, dir, bln.Addr().String(), cfg)
	if err != nil {
		return fail(err)
	}
	defer p.stop()

	// Wait until it serves, then take the baseline.
	if err := p.waitServing(10 * time.Second); err != nil {
		return fail(err)
	}
	time.Sleep(2 * time.Second) // the pool closes pipes unused for a second
	before, err := p.sample()
	if err != nil {
		return fail(err)
	}
	fmt.Fprintf(out, "proxysoak: %s, pid %d, %d workers for %v, payloads up to %d bytes, pauses up to %v, pinned=%v\n",
		bin, p.Pid, cfg.conns, cfg.duration, cfg.maxSize, cfg.maxPause, cfg.pin)
	fmt.Fprintf(out, "before: %s\n", before)

	ctx, cancel := context.WithTimeout(context.Background(), cfg.duration)
	defer cancel()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		select {
		case <-sigs:
			cancel()
		case <-ctx.Done():
		}
	}()
	var workers sync.WaitGroup
	for i := 0; i < cfg.conns; i++ {
		seed := uint64(time.Now().UnixNano()) + uint64(i)
		workers.Go(func() { worker(ctx, p.addr, seed, cfg.maxSize, cfg.maxPause, cfg.timeout, st) })
	}

	start := time.Now()
	peak := before
	var peakActive int64
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastReport := start
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-tick.C:
		}
		s, err := p.sample()
		if err != nil {
			cancel()
			workers.Wait()
			return fail(fmt.Errorf("the proxy: %v; log:\n%s", err, p.logTail()))
		}
		peak = peak.max(s)
		if a := st.active.Load(); a > peakActive {
			peakActive = a
		}
		if time.Since(lastReport) >= time.Minute || (cfg.duration < 2*time.Minute && time.Since(lastReport) >= 10*time.Second) {
			lastReport = time.Now()
			fmt.Fprintf(out, "%6s  %d active, %d exchanges, %s up, %s down, %d errors; proxy %s\n",
				time.Since(start).Round(time.Second), st.active.Load(), st.conns.Load(),
				mib(st.bytesUp.Load()), mib(st.bytesDown.Load()), st.errs.Load()+st.backendErrs.Load(), s)
		}
	}
	elapsed := time.Since(start)
	waited := make(chan struct{})
	go func() { workers.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(cfg.timeout + 10*time.Second):
		return fail(fmt.Errorf("workers still running %v after the end: an exchange hangs past its deadline", cfg.timeout+10*time.Second))
	}

	// Back to where it started? Descriptors at once (a few seconds for
	// the last closes and the pipe pool), memory as the Go runtime gives
	// it back (its scavenger returns freed memory over minutes).
	after, settled := p.settle(before, cfg.settle, cfg.rssSlack)
	fmt.Fprintf(out, "\nsummary after %v\n", elapsed.Round(time.Second))
	fmt.Fprintf(out, "  exchanges verified   %d (upload %d, download %d, echo %d, both %d, urgent %d, descriptors %d)\n", st.conns.Load(),
		st.byKind[kindUpload].Load(), st.byKind[kindDownload].Load(), st.byKind[kindEcho].Load(), st.byKind[kindBoth].Load(),
		st.byKind[kindUrgent].Load(), st.byKind[kindDescriptors].Load())
	fmt.Fprintf(out, "  per second           %.0f\n", float64(st.conns.Load())/elapsed.Seconds())
	fmt.Fprintf(out, "  payload verified     %s up, %s down\n", mib(st.bytesUp.Load()), mib(st.bytesDown.Load()))
	fmt.Fprintf(out, "  errors               %d client side, %d backend side\n", st.errs.Load(), st.backendErrs.Load())
	fmt.Fprintf(out, "  connections at once  %d at most (sampled every second)\n", peakActive)
	fmt.Fprintf(out, "  proxy before         %s\n", before)
	fmt.Fprintf(out, "  proxy peak           %s\n", peak)
	fmt.Fprintf(out, "  proxy after          %s (waited %v)\n", after, settled.Round(time.Second))
	for _, e := range st.firstErr {
		fmt.Fprintf(out, "  error: %s\n", e)
	}
	code := 0
	if st.errs.Load()+st.backendErrs.Load() > 0 {
		fmt.Fprintln(out, "FAIL: exchanges failed")
		code = 1
	}
	if after.fds > before.fds || after.pipes > before.pipes {
		fmt.Fprintf(out, "FAIL: the proxy holds %d fds (%d pipes) after the load, %d (%d) before\n", after.fds, after.pipes, before.fds, before.pipes)
		code = 1
	}
	if after.rssKiB > before.rssKiB+cfg.rssSlack {
		fmt.Fprintf(out, "FAIL: the proxy's RSS is %d KiB after the load, %d KiB before (slack %d KiB)\n", after.rssKiB, before.rssKiB, cfg.rssSlack)
		code = 1
	}
	if p.exited() {
		fmt.Fprintf(out, "FAIL: the proxy exited; log:\n%s\n", p.logTail())
		code = 1
	}
	if code == 0 {
		fmt.Fprintln(out, "PASS")
	}
	return code
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// sample is what the proxy holds at one moment.
type sample struct {
	fds, pipes int
	rssKiB     int64
	cpu        time.Duration
}

func (s sample) String() string {
	return fmt.Sprintf("%d fds (%d pipes), RSS %d KiB, CPU %v", s.fds, s.pipes, s.rssKiB, s.cpu.Round(10*time.Millisecond))
}

func (s sample) max(o sample) sample {
	return sample{fds: max(s.fds, o.fds), pipes: max(s.pipes, o.pipes), rssKiB: max(s.rssKiB, o.rssKiB), cpu: max(s.cpu, o.cpu)}
}

// proxy is the running socket-proxyd.
type proxy struct {
	*testlaunch.Proc
	addr endpoints
	log  *os.File
}

// startProxy starts bin socket-activated through internal/testlaunch, the
// launcher the e2e tests and cmd/proxybench use: the listener as fd 3 with
// LISTEN_FDS=1 and LISTEN_PID its own pid (so also the pid we measure),
// killed if proxysoak dies.
func startProxy(bin, dir, backendAddr string, cfg config) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f, err := ln.(*net.TCPListener).File()
	ln.Close() // f holds the socket
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child has its own copy
	// A unix listener too, to the same backend: kindDescriptors passes
	// descriptors over it.
	unixPath := filepath.Join(dir, "soak.sock")
	uln, err := net.ListenUnix("unix", &net.UnixAddr{Name: unixPath, Net: "unix"})
	if err != nil {
		return nil, err
	}
	uln.SetUnlinkOnClose(false)
	uf, err := uln.File()
	uln.Close() // uf holds the socket; the file stays until dir goes
	if err != nil {
		return nil, err
	}
	defer uf.Close()
	log, err := os.Create(filepath.Join(dir, "proxy.log"))
	if err != nil {
		return nil, err
	}
	var env []string
	for _, kv := range testlaunch.CleanEnv() {
		if k, _, _ := strings.Cut(kv, "="); k != pinnedEnv {
			env = append(env, kv)
		}
	}
	spec := testlaunch.Spec{
		Path: bin, Args: []string{"-c", strconv.Itoa(cfg.conns + 100), backendAddr}, Env: env,
		Sockets: []testlaunch.Socket{{File: f, Name: "soak"}, {File: uf, Name: "soak-unix"}}, Stdout: log, Stderr: log,
	}
	if cfg.pin {
		spec.Prefix = []string{"taskset", "-c", "0"}
	}
	lp, err := testlaunch.Start(spec)
	if err != nil {
		log.Close()
		return nil, err
	}
	return &proxy{Proc: lp, addr: endpoints{tcp: ln.Addr().String(), unix: unixPath}, log: log}, nil
}

func (p *proxy) exited() bool { return p.Exited() }

// stop ends the proxy with SIGTERM (SIGKILL after 10s) and waits for it.
func (p *proxy) stop() {
	_ = p.Stop(10 * time.Second)
	p.log.Close()
}

func (p *proxy) logTail() string {
	b, _ := os.ReadFile(p.log.Name())
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// waitServing waits until an echo exchange goes through.
func (p *proxy) waitServing(d time.Duration) error {
	deadline := time.Now().Add(d)
	st := &stats{}
	for {
		err := exchange(p.addr, nil, kindBoth, 0, 100, 0, 5*time.Second, st)
		if err == nil {
			return nil
		}
		if p.exited() || time.Now().After(deadline) {
			return fmt.Errorf("the proxy does not serve: %v; log:\n%s", err, p.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// settle polls until the proxy's descriptors are back to the baseline and
// its RSS within slack of it, or d has passed; it returns the last sample
// and how long it waited.
func (p *proxy) settle(before sample, d time.Duration, slack int64) (sample, time.Duration) {
	start := time.Now()
	for {
		s, err := p.sample()
		if err != nil {
			return s, time.Since(start)
		}
		if (s.fds <= before.fds && s.pipes <= before.pipes && s.rssKiB <= before.rssKiB+slack) || time.Since(start) >= d {
			return s, time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sample reads /proc/PID: descriptors, pipes among them, VmRSS and CPU.
func (p *proxy) sample() (sample, error) {
	var s sample
	if p.exited() {
		return s, fmt.Errorf("exited")
	}
	dir := fmt.Sprintf("/proc/%d/fd", p.Pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return s, err
	}
	for _, e := range entries {
		t, err := os.Readlink(dir + "/" + e.Name())
		if err != nil {
			continue
		}
		s.fds++
		if n, _ := strconv.Atoi(e.Name()); n > 2 && strings.HasPrefix(t, "pipe:") {
			s.pipes++
		}
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Pid))
	if err != nil {
		return s, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			if f := strings.Fields(v); len(f) > 0 {
				s.rssKiB, _ = strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Pid))
	if err != nil {
		return s, err
	}
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if len(f) > 12 {
		u, _ := strconv.ParseInt(f[11], 10, 64)
		k, _ := strconv.ParseInt(f[12], 10, 64)
		s.cpu = time.Duration(u+k) * 10 * time.Millisecond
	}
	return s, nil
}
