// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of the times in /proc/PID/stat; it is 100 on
// every Linux architecture Go supports.
const clockTicks = 100

// procStat is the part of /proc/PID/stat the benchmark needs.
type procStat struct {
	ppid int
	// cpu is utime+stime+cutime+cstime in clock ticks: the process's own CPU time
	// (all threads) plus that of children it has already waited for, which is how
	// the CPU of socat's exited per-connection children is counted.
	cpu int64
	// waited is cutime+cstime alone, in clock ticks.
	waited int64
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	// The command name (field 2) may contain spaces and parentheses: split after
	// the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); ppid is field 4, utime..cstime are fields 14..17.
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	var st procStat
	if st.ppid, err = strconv.Atoi(f[1]); err != nil {
		return procStat{}, err
	}
	for i, s := range f[11:15] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return procStat{}, err
		}
		st.cpu += v
		if i >= 2 {
			st.waited += v
		}
	}
	return st, nil
}

// procTree returns root and all its living descendants (socat forks a process per
// connection; the others are a single process).
func procTree(root int) []int {
	children := map[int][]int{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return []int{root}
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == root {
			continue
		}
		if st, err := readStat(pid); err == nil {
			children[st.ppid] = append(children[st.ppid], pid)
		}
	}
	tree := []int{root}
	for i := 0; i < len(tree) && i < 1<<20; i++ {
		tree = append(tree, children[tree[i]]...)
	}
	return tree
}

// treeCPU returns the CPU seconds used so far by root and its living
// descendants, and by the children they have waited for. A living thread's
// time comes from its schedstat, in nanoseconds: /proc/PID/stat counts in
// ticks of 10 ms, too coarse for a second of light traffic.
func treeCPU(root int) (float64, error) {
	var ticks, nsec int64
	for i, pid := range procTree(root) {
		st, err := readStat(pid)
		if err != nil {
			if i == 0 {
				return 0, err
			}
			continue // a child that exited meanwhile
		}
		if ns, ok := threadsRunTime(pid); ok {
			nsec += ns
			ticks += st.waited
		} else {
			ticks += st.cpu
		}
	}
	return float64(ticks)/clockTicks + float64(nsec)/1e9, nil
}

// threadsRunTime sums the time on CPU of pid's threads, from the first field
// of each /proc/PID/task/TID/schedstat; false if the kernel has none.
func threadsRunTime(pid int) (int64, bool) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, false
	}
	var sum int64
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
		if err != nil {
			continue // a thread that exited meanwhile
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			return 0, false
		}
		v, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, false
		}
		sum += v
	}
	return sum, true
}

// statusField returns a "Name:   value" line's value from /proc/PID/status.
func statusField(pid int, name string) (string, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && k == name {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("/proc/%d/status: no %s", pid, name)
}

// memKiB returns the proportional set size of one process in KiB, from
// smaps_rollup (shared pages divided among their users, so socat's forked
// children are not each charged their whole shared libraries); VmRSS if
// smaps_rollup cannot be read.
func memKiB(pid int) (int64, error) {
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid)); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "Pss:"); ok {
				return parseKiB(rest)
			}
		}
	}
	v, err := statusField(pid, "VmRSS")
	if err != nil {
		return 0, err
	}
	return parseKiB(v)
}

func parseKiB(s string) (int64, error) {
	s = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(s), "kB"))
	return strconv.ParseInt(s, 10, 64)
}

// treeMem returns the summed Pss (KiB) and open descriptor count of root and its
// descendants.
func treeMem(root int) (kib int64, fds int, err error) {
	for i, pid := range procTree(root) {
		m, err := memKiB(pid)
		if err != nil {
			if i == 0 {
				return 0, 0, err
			}
			continue
		}
		ents, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
		if err != nil {
			if i == 0 {
				return 0, 0, err
			}
			continue
		}
		kib += m
		fds += len(ents)
	}
	return kib, fds, nil
}

// meminfo returns the named /proc/meminfo fields, in KiB.
func meminfo(names ...string) (map[string]int64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && slices.Contains(names, k) {
			if out[k], err = parseKiB(v); err != nil {
				return nil, fmt.Errorf("/proc/meminfo: %s: %v", k, err)
			}
		}
	}
	for _, n := range names {
		if _, ok := out[n]; !ok {
			return nil, fmt.Errorf("/proc/meminfo: no %s", n)
		}
	}
	return out, nil
}

// threadCPUs returns the distinct Cpus_allowed_list values of this process's
// threads: the proof that pinning took for every thread, not just one.
func threadCPUs() string {
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return "unknown: " + err.Error()
	}
	seen := map[string]bool{}
	var out []string
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/status", tid))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
				v := strings.TrimSpace(rest)
				if !seen[v] {
					seen[v] = true
					out = append(out, v)
				}
			}
		}
	}
	return fmt.Sprintf("%s (%d threads)", strings.Join(out, " | "), len(ents))
}

// cpuTicks is machine-wide CPU time from the first line of /proc/stat, in clock
// ticks: busy is everything but idle and iowait.
func cpuTicks() (busy int64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	for i, s := range f[1:] {
		if i == 3 || i == 4 || i >= 8 { // idle, iowait; guest time is already in user
			continue
		}
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, err
		}
		busy += v
	}
	return busy, nil
}

// loadMeter measures the CPU that processes other than the harness and the
// candidate used over an interval: other sessions' builds and tests on a shared
// machine, which distort every figure.
type loadMeter struct {
	start      time.Time
	busy, mine int64
}

// mineTicks is the CPU time of this process and of its children already waited
// for (every candidate and its helpers, once stopped).
func mineTicks() int64 {
	st, err := readStat(os.Getpid())
	if err != nil {
		return 0
	}
	return st.cpu
}

func startLoad() loadMeter {
	busy, _ := cpuTicks()
	return loadMeter{start: time.Now(), busy: busy, mine: mineTicks()}
}

// foreign returns the CPUs' worth of time (0.5 = half a CPU) used by other
// processes since startLoad; call it after the candidate has been waited for.
func (m loadMeter) foreign() float64 {
	busy, _ := cpuTicks()
	el := time.Since(m.start).Seconds()
	if el <= 0 {
		return 0
	}
	other := float64((busy-m.busy)-(mineTicks()-m.mine)) / clockTicks
	return max(other, 0) / el
}
