// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/testlaunch"
)

// -udp: the datagram workloads, side by side with nginx's
// stream module (listen ... udp) and socat (UDP-RECVFROM with fork, and
// UDP-LISTEN, which serves one client). systemd-socket-proxyd forwards no
// datagrams, and haproxy neither.

// udpCandidate is one way of getting datagrams to the backend.
type udpCandidate struct {
	name, version string
	oneClient     bool // serves one client address only (socat UDP-LISTEN)
	maxIdle       int  // 0: -idle
	start         func(l *launcher, dir string, backend netip.AddrPort) (*proxyProc, error)
}

var udpKeys = []string{"p50", "p99", "pps1", "cpu1", "cpu1k", "pps64", "bulk", "newflows", "kib", "fds"}

var udpColumns = map[string]struct {
	title string
	f     func(float64) string
}{
	"p50":      {"1 client 64 B p50 µs", fixed(0)},
	"p99":      {"p99 µs", fixed(0)},
	"pps1":     {"1 client pps", kilo},
	"cpu1":     {"CPU µs per round trip", fixed(1)},
	"cpu1k":    {"CPU % at 1k/s", fixed(1)},
	"pps64":    {"64 flows pps", kilo},
	"bulk":     {"1400 B bulk MB/s", fixed(0)},
	"newflows": {"new flows/s", kilo},
	"kib":      {"KiB per idle flow", fixed(2)},
	"fds":      {"fds per idle flow", fixed(2)},
}

func udpCandidates(ours string, oursErr error, baseline, busyPoll string, metrics bool) (cands []*udpCandidate, skipped []string) {
	cands = append(cands, &udpCandidate{name: "direct", version: "no proxy"})
	if oursErr != nil {
		skipped = append(skipped, "socket-proxyd: "+oursErr.Error())
	} else {
		cands = append(cands, &udpCandidate{name: "socket-proxyd", version: versionOf("", ours, "--version"), start: startOursUDP(ours)})
		if busyPoll != "" {
			cands = append(cands, &udpCandidate{name: "busy-poll", version: "socket-proxyd --busy-poll=" + busyPoll, start: startOursUDP(ours, "--busy-poll="+busyPoll)})
		}
		if metrics {
			cands = append(cands, &udpCandidate{name: "metrics", version: "socket-proxyd --metrics", start: startOursUDP(ours, "--metrics="+metricsAddr)})
		}
	}
	if baseline != "" {
		cands = append(cands, &udpCandidate{name: "baseline", version: versionOf("", baseline, "--version"), start: startOursUDP(baseline)})
	}
	if p, err := exec.LookPath("nginx"); err != nil {
		skipped = append(skipped, "nginx: not installed")
	} else if _, err := os.Stat(nginxStreamModule); err != nil {
		skipped = append(skipped, "nginx: stream module not installed ("+nginxStreamModule+")")
	} else {
		cands = append(cands, &udpCandidate{name: "nginx", version: versionOf("nginx version", p, "-v"), start: startNginxUDP(p)})
	}
	if p, err := exec.LookPath("socat"); err != nil {
		skipped = append(skipped, "socat: not installed")
	} else {
		v := versionOf("socat version", p, "-V")
		if i := strings.Index(v, " on "); i > 0 {
			v = v[:i]
		}
		cands = append(cands,
			&udpCandidate{name: "socat recvfrom,fork", version: v, maxIdle: 150, start: startSocatUDP(p, "UDP-RECVFROM:%d,bind=127.0.0.1,fork,reuseaddr")},
			&udpCandidate{name: "socat udp-listen", version: v, oneClient: true, start: startSocatUDP(p, "UDP-LISTEN:%d,bind=127.0.0.1,reuseaddr")})
	}
	return cands, skipped
}

// startOursUDP starts socket-proxyd as systemd does for ListenDatagram=:
// the bound UDP socket as fd 3.
func startOursUDP(bin string, options ...string) func(l *launcher, dir string, backend netip.AddrPort) (*proxyProc, error) {
	return func(l *launcher, dir string, backend netip.AddrPort) (*proxyProc, error) {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			unix.Close(fd)
			return nil, err
		}
		sa, _ := unix.Getsockname(fd)
		f := os.NewFile(uintptr(fd), "udp")
		defer f.Close()
		argv := append(append([]string{bin, "-c", strconv.Itoa(l.connMax)}, options...), backend.String())
		socks := []testlaunch.Socket{{File: f, Name: "proxybench"}}
		return l.spawn(dir, "socket-proxyd", argv, childEnv(), socks, fmt.Sprintf("127.0.0.1:%d", sa.(*unix.SockaddrInet4).Port), func() {})
	}
}

func freeUDPPort() (int, error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer pc.Close()
	return pc.LocalAddr().(*net.UDPAddr).Port, nil
}

func startNginxUDP(bin string) func(l *launcher, dir string, backend netip.AddrPort) (*proxyProc, error) {
	return func(l *launcher, dir string, backend netip.AddrPort) (*proxyProc, error) {
		port, err := freeUDPPort()
		if err != nil {
			return nil, err
		}
		// Sessions by client address, kept for a minute without traffic
		// (socket-proxyd's flow default); no proxy_responses, so a
		// session is a flow and not one request.
		server := fmt.Sprintf(`listen 127.0.0.1:%d udp;
		proxy_pass %s;
		proxy_timeout 60s;`, port, backend)
		return spawnNginx(l, bin, dir, "", server, port, func() {})
	}
}

func startSocatUDP(bin, listen string) func(l *launcher, dir string, backend netip.AddrPort) (*proxyProc, error) {
	return func(l *launcher, dir string, backend netip.AddrPort) (*proxyProc, error) {
		port, err := freeUDPPort()
		if err != nil {
			return nil, err
		}
		argv := []string{bin, "-T", "60", fmt.Sprintf(listen, port), "UDP:" + backend.String()}
		return l.spawn(dir, "socat", argv, childEnv(), nil, fmt.Sprintf("127.0.0.1:%d", port), func() {})
	}
}

// udpRun is -udp: every candidate once per round, interleaved, then the
// table of medians.
func (b *bench) udpRun(ctx context.Context, w io.Writer, ours string, oursErr error) int {
	cands, skipped := udpCandidates(ours, oursErr, b.cfg.baseline, b.cfg.busyPoll, b.cfg.metrics)
	for _, s := range skipped {
		fmt.Fprintf(b.log, "proxybench: skipping %s\n", s)
	}
	be, err := newUDPBackend()
	if err != nil {
		fmt.Fprintf(b.log, "proxybench: udp backend: %v\n", err)
		return 1
	}
	defer be.close()
	results := map[string][]map[string]float64{}
	errs := map[string]map[string]string{}
	for r := range b.cfg.rounds {
		for i := range cands {
			c := cands[(i+r)%len(cands)]
			if ctx.Err() != nil {
				break
			}
			if b.cfg.only != nil && !b.cfg.only[strings.Fields(c.name)[0]] {
				continue
			}
			fmt.Fprintf(b.log, "proxybench: udp round %d/%d: %s\n", r+1, b.cfg.rounds, c.name)
			b.waitIdle(ctx)
			vals, why := b.udpCandidate(ctx, c, be.addr)
			fmt.Fprintf(b.log, "proxybench:   %v %v\n", vals, why)
			results[c.name] = append(results[c.name], vals)
			if errs[c.name] == nil {
				errs[c.name] = why
			}
		}
	}
	fmt.Fprintf(w, "Datagrams (proxybench -udp): %d rounds, medians; proxy on CPU %d, load and backend on CPU %d; %s\n\n",
		b.cfg.rounds, b.cfg.proxyCPU, b.cfg.loadCPU, machine())
	udpTable(w, cands, results, func(k string, vs []float64) string { return udpColumns[k].f(median(vs)) })
	if b.cfg.rounds > 1 {
		fmt.Fprintf(w, "\nPer round, lowest to highest:\n\n")
		udpTable(w, cands, results, func(k string, vs []float64) string {
			return udpColumns[k].f(slices.Min(vs)) + "–" + udpColumns[k].f(slices.Max(vs))
		})
	}
	fmt.Fprintln(w)
	for _, c := range cands {
		if len(results[c.name]) == 0 {
			continue // left out by -only
		}
		for k, why := range errs[c.name] {
			fmt.Fprintf(w, "- %s, %s: %s\n", c.name, udpColumns[k].title, why)
		}
		fmt.Fprintf(w, "- %s: %s\n", c.name, c.version)
	}
	return 0
}

// udpCandidate runs the workloads against one candidate.
func (b *bench) udpCandidate(ctx context.Context, c *udpCandidate, backend netip.AddrPort) (map[string]float64, map[string]string) {
	vals, why := map[string]float64{}, map[string]string{}
	addr := backend
	pid, probe := 0, -1
	if c.start != nil {
		dir, err := os.MkdirTemp("", "pxb-udp")
		if err != nil {
			why["p50"] = err.Error()
			return vals, why
		}
		defer os.RemoveAll(dir)
		p, err := c.start(b.l, dir, backend)
		if err != nil {
			why["p50"] = err.Error()
			return vals, why
		}
		defer p.stop()
		pid = p.Pid
		addr = netip.MustParseAddrPort(p.addr)
		// The probe's socket is the one the ping uses: a one-client
		// candidate serves only the first address it hears from.
		fd, err := udpSocket(addr, time.Second)
		if err != nil {
			why["p50"] = err.Error()
			return vals, why
		}
		defer unix.Close(fd)
		probe = fd
		if !waitFor(10*time.Second, func() bool {
			_, _, _, err := udpPingOn(ctx, fd, 1, time.Second)
			return err == nil
		}) {
			why["p50"] = "never answered: " + p.logTail()
			return vals, why
		}
	}
	pings := b.cfg.pings
	if c.name == "socat recvfrom,fork" {
		pings = min(pings, 500) // a process per datagram
	}
	ping := func() (time.Duration, time.Duration, float64, error) {
		if probe >= 0 {
			return udpPingOn(ctx, probe, pings, b.cfg.dur)
		}
		return udpPing(ctx, addr, pings, b.cfg.dur)
	}
	cpu0, _ := treeCPU(pid)
	t0 := time.Now()
	if p50, p99, pps, err := ping(); err != nil {
		why["p50"] = err.Error()
	} else {
		vals["p50"], vals["p99"], vals["pps1"] = float64(p50.Microseconds()), float64(p99.Microseconds()), pps
		if cpu1, err := treeCPU(pid); pid != 0 && err == nil {
			vals["cpu1"] = (cpu1 - cpu0) * 1e6 / (pps * time.Since(t0).Seconds())
		}
	}
	// The same client at a steady 1000 round trips a second: the CPU a
	// proxy spends on sparse traffic, where a busy poll (--busy-poll) would
	// cost the most.
	if probe < 0 {
		why["cpu1k"] = "no proxy"
	} else if pct, err := udpPacedCPU(ctx, probe, pid, time.Millisecond, b.cfg.dur); err != nil {
		why["cpu1k"] = err.Error()
	} else {
		vals["cpu1k"] = pct
	}
	if c.oneClient {
		why["pps64"] = "serves one client"
	} else if pps, err := udpFlows(ctx, addr, 64, 8, 64, b.cfg.dur); err != nil {
		why["pps64"] = err.Error()
	} else {
		vals["pps64"] = pps
	}
	if c.oneClient {
		why["bulk"] = "serves one client (measured: the ping)"
	} else if pps, err := udpFlows(ctx, addr, 1, 32, 1400, b.cfg.dur); err != nil {
		why["bulk"] = err.Error()
	} else {
		vals["bulk"] = pps * 1400 / 1e6
	}
	if c.oneClient {
		why["kib"] = "serves one client"
	} else if pid != 0 {
		n := b.cfg.idle
		if c.maxIdle > 0 {
			n = min(n, c.maxIdle)
		}
		n = min(n, 3000) // nginx holds two of worker_connections per flow
		time.Sleep(b.cfg.settle)
		kib0, fds0, err := treeMem(pid)
		if err == nil {
			var release func()
			release, err = udpIdle(ctx, addr, n)
			if err == nil {
				time.Sleep(b.cfg.settle)
				var kib1 int64
				var fds1 int
				kib1, fds1, err = treeMem(pid)
				vals["kib"], vals["fds"] = float64(kib1-kib0)/float64(n), float64(fds1-fds0)/float64(n)
				release()
			}
		}
		if err != nil {
			why["kib"] = err.Error()
		}
	}
	if c.oneClient {
		why["newflows"] = "serves one client"
	} else if rate, err := udpNewFlows(ctx, addr, b.cfg.workers, b.cfg.dur, 6000); err != nil {
		why["newflows"] = err.Error()
	} else {
		vals["newflows"] = rate
	}
	return vals, why
}

// udpTable prints a row per candidate that ran, each cell what cell makes
// of the candidate's values of one column over the rounds.
func udpTable(w io.Writer, cands []*udpCandidate, results map[string][]map[string]float64, cell func(k string, vs []float64) string) {
	fmt.Fprint(w, "| candidate |")
	for _, k := range udpKeys {
		fmt.Fprintf(w, " %s |", udpColumns[k].title)
	}
	fmt.Fprint(w, "\n|---|")
	for range udpKeys {
		fmt.Fprint(w, "---|")
	}
	fmt.Fprintln(w)
	for _, c := range cands {
		rs := results[c.name]
		if len(rs) == 0 {
			continue
		}
		fmt.Fprintf(w, "| %s |", c.name)
		for _, k := range udpKeys {
			var vs []float64
			for _, r := range rs {
				if v, ok := r[k]; ok {
					vs = append(vs, v)
				}
			}
			if len(vs) == 0 {
				fmt.Fprint(w, " – |")
				continue
			}
			fmt.Fprintf(w, " %s |", cell(k, vs))
		}
		fmt.Fprintln(w)
	}
}
