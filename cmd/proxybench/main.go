// SPDX-License-Identifier: Apache-2.0

// Command proxybench measures socket-proxyd side by side with systemd-socket-proxyd,
// haproxy, nginx's stream module, socat and no proxy at all, on this machine, in one
// run: throughput, small-message latency, connection rate, the cost of an idle
// connection and CPU per byte. Run it as `make bench`; docs/BENCHMARKS.md explains
// the figures.
//
// The proxy under test runs on one CPU (-proxy-cpu), the load generator and the
// backend (this process) on the other (-load-cpu). Candidates are interleaved and
// repeated (-rounds); the tables report medians.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const original = "systemd-socket-proxyd" // the ratios' reference

var knownNames = []string{"direct", "socket-proxyd", "busy-poll", "metrics", "baseline", original, "haproxy", "nginx", "socat"}

type config struct {
	rounds   int
	quick    bool
	only     map[string]bool
	bytes    int64
	dur      time.Duration
	pings    int
	idle     int
	maxForks int
	connMax  int
	workers  int
	settle   time.Duration
	strace   bool
	waitIdle time.Duration
	idleLoad float64
	proxyd   string
	baseline string
	busyPoll string // -busy-poll: a span for candidate busy-poll
	metrics  bool   // -metrics: candidate metrics
	// scrapeEvery is the gap between the scrapes of candidate metrics.
	scrapeEvery time.Duration
	pin         bool
	proxyCPU    int
	loadCPU     int
	onlyFlag    string
	bytesFlag   string
	udp         bool
	backends    int
}

func parseFlags(args []string) (*config, error) {
	cfg := &config{}
	fs := flag.NewFlagSet("proxybench", flag.ContinueOnError)
	fs.IntVar(&cfg.rounds, "rounds", 3, "rounds; every candidate runs once per round, interleaved")
	fs.BoolVar(&cfg.quick, "quick", false, "smoke run: 1 round, 32MiB, short phases, 300 idle connections")
	fs.StringVar(&cfg.onlyFlag, "only", "", "comma-separated candidates to run: "+strings.Join(knownNames, ","))
	fs.StringVar(&cfg.bytesFlag, "bytes", "1GiB", "bytes per bulk transfer (split over the streams), e.g. 256MiB")
	fs.DurationVar(&cfg.dur, "duration", 2*time.Second, "length of the timed phases (64-connection requests, new connections) and the ping-pong cap")
	fs.IntVar(&cfg.pings, "pings", 20000, "at most this many 1-connection ping-pong round trips")
	fs.IntVar(&cfg.idle, "idle", 9000, "idle connections to try to hold (N)")
	fs.IntVar(&cfg.maxForks, "max-forks", 1000, "idle connections to try to hold for a process-per-connection candidate (socat)")
	fs.IntVar(&cfg.connMax, "c", 20000, "--connections-max for socket-proxyd and systemd-socket-proxyd")
	fs.IntVar(&cfg.workers, "conn-workers", 8, "concurrent clients in the new-connections test")
	fs.DurationVar(&cfg.settle, "settle", 300*time.Millisecond, "wait before each memory reading")
	fs.DurationVar(&cfg.waitIdle, "wait-idle", 2*time.Minute, "before each candidate run, wait up to this long for other processes to leave the CPUs idle")
	fs.Float64Var(&cfg.idleLoad, "idle-load", 0.1, "CPUs' worth of other processes' load that counts as idle for -wait-idle")
	fs.IntVar(&cfg.backends, "backends", 1, "backend instances (ports); with more than one, socket-proxyd balances round-robin with --health-interval=2s, haproxy with balance roundrobin and check, nginx with an upstream of max_fails=1; candidates that take one backend get the first")
	fs.BoolVar(&cfg.udp, "udp", false, "run the datagram workloads (socket-proxyd, nginx udp, socat) instead of the stream ones")
	fs.BoolVar(&cfg.strace, "strace", false, "also run one bulk transfer per proxy under strace -f -c and print the syscall counts")
	fs.StringVar(&cfg.proxyd, "proxyd", "", "socket-proxyd binary to test (default: go build ./cmd/socket-proxyd)")
	fs.StringVar(&cfg.busyPoll, "busy-poll", "", "also run socket-proxyd --busy-poll=SPAN, as candidate \"busy-poll\" (say 50us)")
	fs.BoolVar(&cfg.metrics, "metrics", false, "also run socket-proxyd --metrics (an abstract socket, scraped every -scrape-every by this process), as candidate \"metrics\"")
	fs.DurationVar(&cfg.scrapeEvery, "scrape-every", 100*time.Millisecond, "with -metrics, the gap between scrapes (0: never scraped)")
	fs.StringVar(&cfg.baseline, "baseline", "", "another socket-proxyd binary (say, main before a change) to run as candidate \"baseline\", interleaved with the others: an A/B in one run")
	fs.BoolVar(&cfg.pin, "pin", true, "pin the proxy and the load generator to separate CPUs")
	fs.IntVar(&cfg.proxyCPU, "proxy-cpu", 0, "CPU for the proxy")
	fs.IntVar(&cfg.loadCPU, "load-cpu", 1, "CPU for the load generator and backend (this process)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if cfg.quick {
		defaults := map[string]func(){
			"rounds":    func() { cfg.rounds = 1 },
			"bytes":     func() { cfg.bytesFlag = "32MiB" },
			"duration":  func() { cfg.dur = 300 * time.Millisecond },
			"pings":     func() { cfg.pings = 2000 },
			"idle":      func() { cfg.idle = 300 },
			"max-forks": func() { cfg.maxForks = 150 },
			"settle":    func() { cfg.settle = 100 * time.Millisecond },
			"wait-idle": func() { cfg.waitIdle = 10 * time.Second },
		}
		for name, f := range defaults {
			if !set[name] {
				f()
			}
		}
	}
	var err error
	if cfg.bytes, err = parseSize(cfg.bytesFlag); err != nil {
		return nil, fmt.Errorf("invalid value %q for -bytes: %v", cfg.bytesFlag, err)
	}
	if cfg.bytes < 32 {
		return nil, fmt.Errorf("invalid value %q for -bytes: at least 32 bytes (one per stream)", cfg.bytesFlag)
	}
	if cfg.rounds < 1 || cfg.pings < 1 || cfg.idle < 1 || cfg.maxForks < 1 || cfg.workers < 1 || cfg.connMax < 1 {
		return nil, errors.New("-rounds, -pings, -idle, -max-forks, -conn-workers and -c must be positive")
	}
	if cfg.onlyFlag != "" {
		cfg.only = map[string]bool{}
		for _, n := range strings.Split(cfg.onlyFlag, ",") {
			n = strings.TrimSpace(n)
			if !slices.Contains(knownNames, n) {
				return nil, fmt.Errorf("invalid value %q for -only: candidates are %s", n, strings.Join(knownNames, ","))
			}
			cfg.only[n] = true
		}
	}
	return cfg, nil
}

// parseSize reads a byte count with an optional KiB/MiB/GiB (or K/M/G) suffix.
func parseSize(s string) (int64, error) {
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}} {
		if rest, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = rest, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, errors.New("want a byte count like 1GiB, 64MiB or 1000000")
	}
	return n * mult, nil
}

// pinnedEnv marks the re-executed, pinned harness.
const pinnedEnv = "PROXYBENCH_PINNED"

// pinSelf moves the whole harness onto cpu. sched_setaffinity applies to one
// thread and the Go runtime already runs several, so this sets the affinity of
// the current (locked) thread and re-executes the program from it: after execve
// the process has that one thread, and every thread the runtime starts inherits
// its mask. threadCPUs shows the result.
func pinSelf(cpu int) error {
	if os.Getenv(pinnedEnv) == strconv.Itoa(cpu) {
		return nil
	}
	runtime.LockOSThread()
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	return syscall.Exec(exe, os.Args, append(os.Environ(), pinnedEnv+"="+strconv.Itoa(cpu)))
}

func main() {
	os.Exit(run())
}

func run() int {
	cfg, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "proxybench: %v\nproxybench: run 'proxybench -h' for usage\n", err)
		return 1
	}
	if cfg.pin {
		if runtime.NumCPU() < 2 && os.Getenv(pinnedEnv) == "" {
			fmt.Fprintln(os.Stderr, "proxybench: fewer than 2 CPUs: not pinning (-pin=false)")
			cfg.pin = false
		} else if err := pinSelf(cfg.loadCPU); err != nil {
			fmt.Fprintf(os.Stderr, "proxybench: cannot pin to CPU %d: %v\n", cfg.loadCPU, err)
			return 1
		}
	}
	// Candidates inherit our descriptor limit. Setting it explicitly (soft = hard)
	// also stops os/exec from handing children the soft limit we started with.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil {
		lim.Cur = lim.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	unlock, err := lockMachine(ctx, 20*time.Minute)
	if err != nil {
		fmt.Fprintf(os.Stderr, "proxybench: %v\n", err)
		return 1
	}
	defer unlock()

	tmp, err := os.MkdirTemp("", "pxb")
	if err != nil {
		fmt.Fprintf(os.Stderr, "proxybench: %v\n", err)
		return 1
	}
	defer os.RemoveAll(tmp)
	ours, oursErr := cfg.proxyd, error(nil)
	if ours == "" {
		fmt.Fprintln(os.Stderr, "proxybench: building ./cmd/socket-proxyd")
		ours, oursErr = buildOurs(tmp)
	}
	if cfg.metrics {
		var wg sync.WaitGroup
		scrapeCtx, stop := context.WithCancel(ctx)
		defer wg.Wait()
		defer stop()
		if cfg.scrapeEvery > 0 {
			wg.Go(func() { scrapeMetrics(scrapeCtx, metricsAddr, cfg.scrapeEvery) })
		}
	}
	if cfg.udp {
		b := &bench{cfg: cfg, l: &launcher{pin: cfg.pin, cpu: cfg.proxyCPU, connMax: cfg.connMax}, log: os.Stderr}
		return b.udpRun(ctx, os.Stdout, ours, oursErr)
	}
	all, skipped := findCandidates(ours, oursErr, cfg.baseline, cfg.busyPoll, cfg.metrics)
	var cands []*candidate
	for _, c := range all {
		if cfg.only == nil || cfg.only[c.name] {
			cands = append(cands, c)
		}
	}
	if cfg.only != nil {
		var kept []string
		for _, s := range skipped {
			name, _, _ := strings.Cut(s, ":")
			if cfg.only[name] {
				kept = append(kept, s)
			}
		}
		skipped = kept
	}
	for _, s := range skipped {
		fmt.Fprintf(os.Stderr, "proxybench: skipping %s\n", s)
	}
	if len(cands) == 0 {
		fmt.Fprintln(os.Stderr, "proxybench: no candidate to run")
		return 1
	}

	b := &bench{
		backends: cfg.backends,
		cfg:      cfg,
		pat:      makePattern(),
		l:        &launcher{pin: cfg.pin, cpu: cfg.proxyCPU, connMax: cfg.connMax},
		log:      os.Stderr,
	}
	results := b.rounds(ctx, cands)
	var traces []string
	if cfg.strace && ctx.Err() == nil {
		for _, c := range cands {
			if c.start == nil {
				continue
			}
			fmt.Fprintf(os.Stderr, "proxybench: strace: %s\n", c.name)
			out, err := b.straceRun(ctx, c)
			if err != nil {
				out = "failed: " + err.Error()
			}
			traces = append(traces, fmt.Sprintf("**%s**\n\n```\n%s\n```\n", c.name, strings.TrimSpace(out)))
		}
	}
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "proxybench: interrupted; partial results follow")
	}
	writeReport(os.Stdout, cfg, cands, skipped, results, traces)
	return 0
}

// lockMachine keeps two runs on one machine from measuring each other: it takes
// an exclusive flock on a file in the temporary directory, waiting up to timeout
// for a run that holds it.
func lockMachine(ctx context.Context, timeout time.Duration) (unlock func(), err error) {
	path := filepath.Join(os.TempDir(), "proxybench.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o666)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(timeout)
	for i := 0; ; i++ {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			f.Truncate(0)
			f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("another proxybench run holds %s; gave up after %v", path, timeout)
		}
		if i%30 == 0 {
			holder, _ := os.ReadFile(path)
			fmt.Fprintf(os.Stderr, "proxybench: waiting for another run to finish (pid %s)\n", strings.TrimSpace(string(holder)))
		}
		time.Sleep(time.Second)
	}
}

// bench runs the measurements.
type bench struct {
	backends int // -backends: instances of the backend each candidate balances over
	cfg      *config
	pat      []byte
	l        *launcher
	log      io.Writer
}

// rounds runs every candidate once per round, rotating the order each round so no
// candidate always runs first or right after another, and returns each
// candidate's results, one per round.
func (b *bench) rounds(ctx context.Context, cands []*candidate) map[string][]*runResult {
	results := map[string][]*runResult{}
	hasDirect := slices.ContainsFunc(cands, func(c *candidate) bool { return c.start == nil })
	for r := range b.cfg.rounds {
		if ctx.Err() != nil {
			break
		}
		var direct *runResult
		if !hasDirect {
			// Kernel memory per connection needs the no-proxy baseline.
			fmt.Fprintf(b.log, "proxybench: round %d/%d: direct (idle baseline only)\n", r+1, b.cfg.rounds)
			direct = b.runCandidate(ctx, &candidate{name: "direct"}, true)
		}
		var round []*runResult
		for i := range cands {
			c := cands[(i+r)%len(cands)]
			if ctx.Err() != nil {
				break
			}
			fmt.Fprintf(b.log, "proxybench: round %d/%d: %s\n", r+1, b.cfg.rounds, c.name)
			b.waitIdle(ctx)
			m := startLoad()
			res := b.runCandidate(ctx, c, false)
			res.elapsed, res.foreign = time.Since(m.start), m.foreign()
			fmt.Fprintf(b.log, "proxybench:   %s\n", res.summary())
			results[c.name] = append(results[c.name], res)
			round = append(round, res)
			if c.start == nil {
				direct = res
			}
		}
		for _, res := range round {
			res.kernel(direct)
		}
	}
	return results
}

// waitIdle waits, up to -wait-idle, until processes other than ours use less
// than -idle-load CPUs over half a second: on a shared machine other sessions'
// builds and tests would otherwise be measured too.
func (b *bench) waitIdle(ctx context.Context) {
	deadline := time.Now().Add(b.cfg.waitIdle)
	for i := 0; ctx.Err() == nil; i++ {
		m := startLoad()
		time.Sleep(500 * time.Millisecond)
		load := m.foreign()
		if load < b.cfg.idleLoad {
			return
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(b.log, "proxybench:   other processes still use %.2f CPUs after %v; measuring anyway\n", load, b.cfg.waitIdle)
			return
		}
		if i%10 == 0 {
			fmt.Fprintf(b.log, "proxybench:   waiting: other processes use %.2f CPUs\n", load)
		}
	}
}
