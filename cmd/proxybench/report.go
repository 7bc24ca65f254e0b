// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// column is one figure of the results table.
type column struct {
	key, title string
	format     func(float64) string
	better     string // "higher" or "lower", for the ratio table's heading
}

func fixed(prec int) func(float64) string {
	return func(v float64) string { return fmt.Sprintf("%.*f", prec, v) }
}

func kilo(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.1fk", v/1000)
	}
	return fmt.Sprintf("%.0f", v)
}

var columns = []column{
	{"up1", "1 stream up GB/s", fixed(2), "higher"},
	{"down1", "1 stream down GB/s", fixed(2), "higher"},
	{"up32", "32 streams up GB/s", fixed(2), "higher"},
	{"down32", "32 streams down GB/s", fixed(2), "higher"},
	{"p50", "ping-pong p50 µs", fixed(0), "lower"},
	{"p99", "ping-pong p99 µs", fixed(0), "lower"},
	{"pcpu", "ping-pong CPU µs per round trip", fixed(1), "lower"},
	{"rps", "64 conns req/s", kilo, "higher"},
	{"cps", "new conns/s", kilo, "higher"},
	{"rss", "RSS KiB per idle conn", fixed(2), "lower"},
	{"fds", "fds per conn", fixed(2), "lower"},
	{"kern", "kernel KiB per conn (MemAvailable)", fixed(2), "lower"},
	{"slab", "slab KiB per conn", fixed(2), "lower"},
	{"held", "max idle conns held", fixed(0), "higher"},
	{"cpu", "CPU s per GB", fixed(3), "lower"},
}

func columnByKey(key string) column {
	for _, c := range columns {
		if c.key == key {
			return c
		}
	}
	panic("no column " + key)
}

func median(vs []float64) float64 {
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// summary is one candidate's medians over the rounds.
type summary struct {
	vals    map[string]float64
	failed  map[string]int // rounds in which the figure failed
	rounds  int
	heldAll bool
}

func summarize(rs []*runResult, keys []string) summary {
	s := summary{vals: map[string]float64{}, failed: map[string]int{}, rounds: len(rs), heldAll: len(rs) > 0}
	for _, k := range keys {
		var vs []float64
		for _, r := range rs {
			if v, ok := r.vals[k]; ok {
				vs = append(vs, v)
			} else if _, bad := r.errs[k]; bad {
				s.failed[k]++
			}
		}
		if len(vs) > 0 {
			s.vals[k] = median(vs)
		}
	}
	for _, r := range rs {
		s.heldAll = s.heldAll && r.heldAll
	}
	return s
}

// cell formats a median; "fail" when every round failed, a "*" when some did,
// "–" when the figure does not apply (a proxy's memory for no proxy).
func (s summary) cell(c column, target int) string {
	v, ok := s.vals[c.key]
	switch {
	case !ok && s.failed[c.key] > 0:
		return "fail"
	case !ok:
		return "–"
	}
	out := c.format(v)
	if c.key == "held" && s.heldAll {
		out = fmt.Sprintf("≥%d", target)
	}
	if s.failed[c.key] > 0 {
		out += "*"
	}
	return out
}

func idleTarget(cfg *config, c *candidate) int {
	if c.forks {
		return min(cfg.idle, cfg.maxForks)
	}
	return cfg.idle
}

func writeReport(w io.Writer, cfg *config, cands []*candidate, skipped []string, results map[string][]*runResult, traces []string) {
	fmt.Fprintf(w, "### proxybench run of %s\n\n", time.Now().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "- command: `%s`\n", strings.Join(append([]string{"proxybench"}, os.Args[1:]...), " "))
	fmt.Fprintf(w, "- machine: %s\n", machine())
	fmt.Fprintf(w, "- harness: %s; load generator and backends in this process, its threads on CPU %s\n",
		runtime.Version(), threadCPUs())
	fmt.Fprintf(w, "- parameters: %d rounds, %d MiB per bulk transfer, %v timed phases, ≤%d pings, idle N=%d (≤%d for socat), -c %d, %d new-connection clients\n",
		cfg.rounds, cfg.bytes>>20, cfg.dur, cfg.pings, cfg.idle, cfg.maxForks, cfg.connMax, cfg.workers)
	var sum, most float64
	var runs int
	for _, rs := range results {
		for _, r := range rs {
			sum += r.foreign
			most = max(most, r.foreign)
			runs++
		}
	}
	if runs > 0 {
		fmt.Fprintf(w, "- other processes on the machine used %.2f CPUs on average during a candidate's run (at most %.2f); each run waited up to %v for them to use less than %.2f first\n",
			sum/float64(runs), most, cfg.waitIdle, cfg.idleLoad)
	}
	fmt.Fprintln(w, "- candidates:")
	for _, c := range cands {
		how := "binds its own listener"
		switch {
		case c.start == nil:
			how = "the load generator talks to the backend"
		case c.activated:
			how = "socket-activated: listener as fd 3, LISTEN_FDS=1, LISTEN_PID"
		}
		cpus := ""
		if rs := results[c.name]; len(rs) > 0 && rs[0].cpus != "" {
			cpus = ", on CPU " + rs[0].cpus
		}
		fmt.Fprintf(w, "  - %s: %s (%s%s)\n", c.name, c.version, how, cpus)
	}
	for _, s := range skipped {
		fmt.Fprintf(w, "  - skipped %s\n", s)
	}
	fmt.Fprintln(w)

	keys := make([]string, 0, len(columns))
	for _, c := range columns {
		keys = append(keys, c.key)
	}
	sums := map[string]summary{}
	for _, c := range cands {
		sums[c.name] = summarize(results[c.name], append(keys, "rss100", "fds100", "kern100", "slab100", "base100", "baseslab100", "base", "baseslab"))
	}

	// The results.
	tableHeader(w)
	for _, c := range cands {
		s := sums[c.name]
		fmt.Fprintf(w, "| %s |", c.name)
		for _, col := range columns {
			fmt.Fprintf(w, " %s |", s.cell(col, idleTarget(cfg, c)))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)

	// Ratios to the original.
	if ref, ok := sums[original]; ok {
		fmt.Fprintf(w, "Ratios to %s (for µs, KiB, fds and CPU lower is better; for the rest higher is better):\n\n", original)
		tableHeader(w)
		for _, c := range cands {
			if c.name == original {
				continue
			}
			s := sums[c.name]
			fmt.Fprintf(w, "| %s |", c.name)
			for _, col := range columns {
				v, ok1 := s.vals[col.key]
				r, ok2 := ref.vals[col.key]
				if ok1 && ok2 && r != 0 {
					at := ""
					if col.key == "held" && s.heldAll {
						at = "≥"
					}
					fmt.Fprintf(w, " %s%.2f× |", at, v/r)
				} else {
					fmt.Fprint(w, " – |")
				}
			}
			fmt.Fprintln(w)
		}
		fmt.Fprintln(w)
	}

	// Idle detail.
	fmt.Fprintln(w, "Idle connections in detail (per connection; the main table shows the largest N):")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| candidate | at 100: RSS KiB | fds | kernel KiB | slab KiB | at N: N | RSS KiB | fds | kernel KiB | slab KiB |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
	for _, c := range cands {
		s := sums[c.name]
		f := func(k string) string {
			if v, ok := s.vals[k]; ok {
				return fmt.Sprintf("%.2f", v)
			}
			if s.failed[k] > 0 {
				return "fail"
			}
			return "–"
		}
		k100, s100, k, sl := f("kern100"), f("slab100"), f("kern"), f("slab")
		if c.start == nil {
			k100, s100, k, sl = "("+f("base100")+")", "("+f("baseslab100")+")", "("+f("base")+")", "("+f("baseslab")+")"
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", c.name,
			f("rss100"), f("fds100"), k100, s100,
			s.cell(columnByKey("held"), idleTarget(cfg, c)), f("rss"), f("fds"), k, sl)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Kernel and slab KiB are beyond what the same number of direct connections cost; direct's own row (in parentheses) is that baseline: its client and backend sockets, per connection.")
	fmt.Fprintln(w)

	// What went wrong, and where the idle tests stopped.
	var notes []string
	for _, c := range cands {
		for i, r := range results[c.name] {
			ks := make([]string, 0, len(r.errs))
			for k := range r.errs {
				ks = append(ks, k)
			}
			slices.Sort(ks)
			for _, k := range ks {
				notes = append(notes, fmt.Sprintf("%s, round %d, %s: %s", c.name, i+1, k, r.errs[k]))
			}
			if r.limit != "" {
				notes = append(notes, fmt.Sprintf("%s, round %d: idle connections stopped %s", c.name, i+1, r.limit))
			}
			if r.foreign > 0.25 {
				notes = append(notes, fmt.Sprintf("%s, round %d: other processes used %.2f CPUs during the run; its figures are disturbed", c.name, i+1, r.foreign))
			}
			for _, n := range r.notes {
				notes = append(notes, fmt.Sprintf("round %d: %s", i+1, n))
			}
		}
	}
	if len(notes) > 0 {
		fmt.Fprintln(w, "Notes (\"*\" in the table: the median of the rounds that did not fail):")
		fmt.Fprintln(w)
		for _, n := range notes {
			fmt.Fprintf(w, "- %s\n", n)
		}
		fmt.Fprintln(w)
	}
	if len(traces) > 0 {
		fmt.Fprintln(w, "#### System calls during one bulk transfer each way (strace -f -c)")
		fmt.Fprintln(w)
		for _, t := range traces {
			fmt.Fprintln(w, t)
		}
	}
}

// machine describes the host: CPUs, model, kernel, memory.
func machine() string {
	model, ncpu := "unknown CPU", 0
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			switch k = strings.TrimSpace(k); {
			case ok && k == "processor":
				ncpu++
			case ok && k == "model name" && ncpu == 1:
				model = strings.TrimSpace(v)
			}
		}
	}
	var u unix.Utsname
	kernel := "unknown kernel"
	if unix.Uname(&u) == nil {
		kernel = "Linux " + unix.ByteSliceToString(u.Release[:])
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				if kib, err := parseKiB(rest); err == nil {
					mem = fmt.Sprintf(", %.1f GiB RAM", float64(kib)/(1<<20))
				}
			}
		}
	}
	var lim unix.Rlimit
	fdl := ""
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil {
		fdl = fmt.Sprintf(", open files limit %d", lim.Cur)
	}
	return fmt.Sprintf("%d CPUs (%s), %s%s%s", ncpu, model, kernel, mem, fdl)
}

// tableHeader prints the heading rows shared by the results and ratio tables.
func tableHeader(w io.Writer) {
	fmt.Fprint(w, "| candidate |")
	for _, c := range columns {
		fmt.Fprintf(w, " %s |", c.title)
	}
	fmt.Fprint(w, "\n|---|")
	for range columns {
		fmt.Fprint(w, "---|")
	}
	fmt.Fprintln(w)
}
