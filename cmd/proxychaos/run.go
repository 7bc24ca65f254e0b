// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/testlaunch"
)

const (
	opDeadline    = 60 * time.Second
	idleTimeout   = 5 * time.Second // also how long a quiet flow lives
	shutdownGrace = 2 * time.Second
)

// harness is one run.
type harness struct {
	cfg   config
	run   runConfig
	dir   string
	p     *proxy
	tl    *timeline
	rep   *report
	res   *results
	gate  *gate
	drops kernelDrops

	tcp, unix, pkt *streamBackend
	udp, dgram     *dgramBackend
	addrs          map[string]string // listener name: address clients use
	open           atomic.Int64      // streams open now
	unbound        sync.Mutex        // held by the unbound unixgram flow under way
	servingRuns    int
	restarting     atomic.Bool // a sigterm event: the proxy ends on purpose
	deadSeen       atomic.Bool
	out            io.Writer
	vlog           func(string, ...any)
}

func run(cfg config, out io.Writer) int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "proxychaos:", err); return 1 }
	rc, ops := schedule(cfg.seed, cfg.duration, cfg.rate, cfg.eventRate, cfg.mix, cfg.events)
	dir, err := os.MkdirTemp("", "chaos")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(dir)
	bin, err := build(cfg.bin, dir)
	if err != nil {
		return fail(err)
	}
	h := &harness{cfg: cfg, run: rc, dir: dir, res: &results{}, gate: &gate{}, out: out, addrs: map[string]string{}}
	h.vlog = func(string, ...any) {}
	if cfg.verbose {
		h.vlog = func(f string, a ...any) {
			fmt.Fprintf(out, "  %8s  "+f+"\n", append([]any{time.Since(h.tl.start).Round(time.Millisecond)}, a...)...)
		}
	}
	if err := h.setup(bin); err != nil {
		return fail(err)
	}
	defer h.teardown()
	fmt.Fprintf(out, "proxychaos: %s, %d operations and events over %v; %s\n", bin, len(ops), cfg.duration, rc)
	binFlag := ""
	if cfg.bin != "" {
		binFlag = " -bin " + cfg.bin
	}
	fmt.Fprintf(out, "replay: go run ./cmd/proxychaos -seed %d -duration %v -rate %g -event-rate %g -mix %s -events %s%s\n",
		cfg.seed, cfg.duration, cfg.rate, cfg.eventRate, orNone(cfg.mixFlag), orNone(cfg.eventFlag), binFlag)
	if cfg.rate == defaultRate && cfg.eventRate == defaultEventRate && cfg.mixFlag == defaultMix && cfg.eventFlag == defaultEvents && cfg.bin == "" {
		fmt.Fprintf(out, "replay: make chaos SEED=%d DURATION=%v\n", cfg.seed, cfg.duration)
	}

	// Warm up, then the baseline.
	h.tl, h.rep = newTimeline(time.Now()), newReport(time.Now())
	if err := h.serving(); err != nil {
		return fail(fmt.Errorf("the proxy does not serve: %v\n%s", err, h.p.logTail(3000)))
	}
	time.Sleep(idleTimeout + time.Second)
	before, err := takeSample(h.p.pid())
	if err != nil {
		return fail(err)
	}
	h.tl, h.rep = newTimeline(time.Now()), newReport(time.Now())
	stopSampler := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stopSampler:
				return
			case <-t.C:
				h.drops.sample(h.p.pid(), os.Getpid())
			}
		}
	})

	var traffic sync.WaitGroup
	var events []*op
	start := h.tl.start
	for _, o := range ops {
		if o.event {
			events = append(events, o)
		}
	}
	var evDone sync.WaitGroup
	evDone.Go(func() {
		for _, e := range events {
			time.Sleep(time.Until(start.Add(e.At)))
			if h.dead() {
				return
			}
			h.event(e)
		}
	})
	for _, o := range ops {
		if o.event {
			continue
		}
		if h.dead() {
			break
		}
		time.Sleep(time.Until(start.Add(o.At)))
		traffic.Go(func() { h.traffic(o) })
	}
	evDone.Wait()
	waited := make(chan struct{})
	go func() { traffic.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(opDeadline + 30*time.Second):
		h.rep.fail(&op{Kind: "run"}, "operations still running %v after the last started", opDeadline+30*time.Second)
	}
	close(stopSampler)
	sampler.Wait()
	elapsed := time.Since(start)

	// Afterwards: still serving, and back to where it started.
	end := &op{Kind: "after"}
	if h.dead() {
		// recorded
	} else if err := h.serving(); err != nil {
		h.rep.fail(end, "the proxy no longer serves: %v", err)
	}
	var after sample
	var settleErr string
	deadline := time.Now().Add(idleTimeout + 10*time.Second)
	for !h.deadSeen.Load() { // a dead proxy has no baseline to come back to
		after, err = takeSample(h.p.pid())
		settleErr = ""
		switch {
		case err != nil:
			settleErr = err.Error()
		case after.fds > before.fds:
			settleErr = fmt.Sprintf("%d descriptors, %d before", after.fds, before.fds)
		case after.children > 0:
			settleErr = fmt.Sprintf("%d children", after.children)
		case after.rssKiB > before.rssKiB+64<<10:
			settleErr = fmt.Sprintf("RSS %d KiB, %d KiB before (slack 64 MiB)", after.rssKiB, before.rssKiB)
		}
		if settleErr == "" || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if settleErr != "" {
		h.rep.fail(end, "not back to the baseline: %s", settleErr)
	}

	fmt.Fprintf(out, "\nsummary: seed %d, %v\n", cfg.seed, elapsed.Round(time.Second))
	fmt.Fprintf(out, "  operations     %s\n  streams        %d\n", h.rep.kinds(), h.rep.conns.Load())
	fmt.Fprintf(out, "  flows          %d, %d datagrams sent, %d lost with an explanation\n", h.rep.flows.Load(), h.rep.datagrams.Load(), h.rep.dgramLost.Load())
	fmt.Fprintf(out, "  messages       %d\n", h.rep.messages.Load())
	fmt.Fprintf(out, "  payload        %.1f MiB checked\n", float64(h.rep.bytes.Load())/(1<<20))
	fmt.Fprintf(out, "  explained      %d bad outcomes an event allowed\n", h.rep.explained.Load())
	fmt.Fprintf(out, "  kernel drops   %d on the proxy's and the harness's UDP sockets\n", h.drops.total)
	fmt.Fprintf(out, "  proxy status   %s\n", h.p.notify.lastStatus())
	fmt.Fprintf(out, "  proxy before   %s\n  proxy after    %s\n", before, after)
	n := h.rep.failed()
	fmt.Fprintf(out, "  failures       %d\n", n)
	if n == 0 {
		fmt.Fprintln(out, "PASS")
		return 0
	}
	fmt.Fprintf(out, "\nFAIL: seed %d\nfailures (time since the start, %s by the clock):\n", cfg.seed, h.tl.start.Format("15:04:05.000"))
	h.rep.mu.Lock()
	for i, f := range h.rep.failures {
		if i == 30 {
			fmt.Fprintf(out, "  ... and %d more\n", len(h.rep.failures)-30)
			break
		}
		fmt.Fprintf(out, "  %s\n", f)
	}
	h.rep.mu.Unlock()
	fmt.Fprintf(out, "proxy log (end):\n%s\n", h.p.logTail(3000))
	fmt.Fprintln(out, "events as they ran:")
	for _, e := range h.tl.events() {
		fmt.Fprintf(out, "  %s\n", e)
	}
	fmt.Fprintln(out, "schedule:")
	for _, o := range ops {
		fmt.Fprintf(out, "  %s\n", o)
	}
	fmt.Fprintf(out, "FAIL: seed %d (replay with -seed %d and the same flags)\n", cfg.seed, cfg.seed)
	return 1
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// setup starts the backends, makes the listening sockets and starts the proxy.
func (h *harness) setup(bin string) error {
	pp := h.run.ProxyProtocol != ""
	h.tcp = &streamBackend{network: "tcp", addr: "127.0.0.1:0", proxyHeader: pp, gate: h.gate, res: h.res, deadline: opDeadline}
	h.unix = &streamBackend{network: "unix", addr: filepath.Join(h.dir, "be-stream"), proxyHeader: pp, gate: h.gate, res: h.res, deadline: opDeadline}
	h.pkt = &streamBackend{network: "unixpacket", addr: filepath.Join(h.dir, "be-pkt"), proxyHeader: pp, gate: h.gate, res: h.res, deadline: opDeadline}
	h.udp = &dgramBackend{network: "udp", addr: "127.0.0.1:0", proxyHeader: pp, gate: h.gate, res: h.res}
	h.dgram = &dgramBackend{network: "unixgram", addr: filepath.Join(h.dir, "be-dgram"), proxyHeader: pp, gate: h.gate, res: h.res}
	for _, b := range []interface{ listen() error }{h.tcp, h.unix, h.pkt, h.udp, h.dgram} {
		if err := b.listen(); err != nil {
			return err
		}
	}
	type lsock struct {
		name, network, addr string
	}
	var socks []testlaunch.Socket
	for _, l := range []lsock{
		{"tcp", "tcp", "127.0.0.1:0"}, {"unix", "unix", filepath.Join(h.dir, "stream")},
		{"pkt", "unixpacket", filepath.Join(h.dir, "pkt")}, {"udp4", "udp", "127.0.0.1:0"},
		{"udp6", "udp6", "[::1]:0"}, {"dgram", "unixgram", filepath.Join(h.dir, "dgram")},
	} {
		f, addr, err := listenFile(l.network, l.addr)
		if err != nil {
			return fmt.Errorf("listen %s %s: %v", l.network, l.addr, err)
		}
		h.addrs[l.name] = addr
		socks = append(socks, testlaunch.Socket{File: f, Name: l.name})
	}
	args := []string{"-c", strconv.Itoa(h.run.Limit), "--connect-timeout=5s", "--shutdown-timeout=" + shutdownGrace.String(),
		"--idle-timeout=" + idleTimeout.String()}
	if h.run.ProxyProtocol != "" {
		args = append(args, "--proxy-protocol="+h.run.ProxyProtocol)
	}
	if h.run.FDStore && h.run.Always {
		args = append(args, "--fdstore=always")
	} else if h.run.FDStore {
		args = append(args, "--fdstore=on-stop")
	}
	args = append(args, h.tcp.addr, "--backend", "unix="+h.unix.addr, "--backend", "pkt="+h.pkt.addr,
		"--backend", "udp4="+h.udp.addr, "--backend", "udp6="+h.udp.addr, "--backend", "dgram="+h.dgram.addr)
	ns, err := newNotifyStore(h.dir)
	if err != nil {
		return err
	}
	logPath := filepath.Join(h.dir, "proxy.log")
	if h.cfg.proxyLog != "" {
		logPath = h.cfg.proxyLog
		args = append([]string{"--log-level=debug"}, args...)
	}
	log, err := os.Create(logPath)
	if err != nil {
		return err
	}
	h.p = &proxy{bin: bin, dir: h.dir, args: args, sockets: socks, notify: ns, log: log}
	return h.p.start(nil)
}

func (h *harness) teardown() {
	if p := h.p; p != nil {
		if proc := p.current(); proc != nil {
			proc.Signal(syscall.SIGCONT)
			proc.Stop(10 * time.Second)
		}
		p.notify.close()
		for _, s := range p.sockets {
			s.File.Close()
		}
		p.log.Close()
	}
	for _, b := range []interface{ close() }{h.tcp, h.unix, h.pkt, h.udp, h.dgram} {
		if b != nil {
			b.close()
		}
	}
}

func listenFile(network, addr string) (*os.File, string, error) {
	switch network {
	case "udp", "udp6", "unixgram":
		c, err := net.ListenPacket(network, addr)
		if err != nil {
			return nil, "", err
		}
		defer c.Close()
		f, err := c.(interface{ File() (*os.File, error) }).File()
		return f, c.LocalAddr().String(), err
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, "", err
	}
	if ul, ok := ln.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(false)
	}
	defer ln.Close()
	f, err := ln.(interface{ File() (*os.File, error) }).File()
	return f, ln.Addr().String(), err
}

// serving runs one operation of each kind, with no event, and wants each whole.
func (h *harness) serving() error {
	before := h.rep.failed()
	h.servingRuns++
	for i, k := range []string{kTCP, kUnix, kSeqpacket, kUDP4} {
		h.traffic(&op{ID: 1<<30 + 8*h.servingRuns + i, Kind: k, Seed: uint64(i + 1)})
	}
	if h.rep.failed() > before {
		h.rep.mu.Lock()
		defer h.rep.mu.Unlock()
		return fmt.Errorf("%s", strings.Join(h.rep.failures[before:], "; "))
	}
	return nil
}

// dead says whether the proxy exited when no event stopped it, and
// records it as a failure the first time: the run stops starting
// operations, whose failures would only repeat it.
func (h *harness) dead() bool {
	if h.restarting.Load() || !h.p.current().Exited() {
		return false
	}
	if h.deadSeen.CompareAndSwap(false, true) {
		h.rep.fail(&op{Kind: "proxy"}, "the proxy exited: %v; events just before: %v", h.p.current().Err(),
			h.tl.during(time.Now().Add(-2*time.Second), time.Now(), 0, eventKinds...))
		// Nothing will accept again: closing the listening sockets
		// resets the clients in their backlog, which would otherwise
		// wait out their deadline.
		for _, s := range h.p.sockets {
			s.File.Close()
		}
	}
	return true
}

// Which events allow what (see oracle.go).
func (h *harness) resetKinds() []string {
	if h.run.FDStore {
		return []string{eExhaust, eTermMidReload}
	}
	return []string{eExhaust, eTerm, eTermMidReload}
}

// refuseKinds: a connection the backend never saw may also end when the
// backends stop listening (backend-down), as a real backend's restart
// does: the kernel resets what waits in a closed listener's backlog,
// which the proxy had connected to.
func (h *harness) refuseKinds() []string { return append(h.resetKinds(), eLimit, eDown) }

var lossKinds = []string{eStop, eDown, eStall, eStallHUP, eExhaust, eLimit, eTerm, kFlood}

// traffic runs one operation and judges it.
func (h *harness) traffic(o *op) {
	h.rep.count(o.Kind)
	o.started = time.Now()
	switch o.Kind {
	case kTCP, kUnix, kSeqpacket:
		o.crowd = h.open.Add(1)
		var out outcome
		var what string
		resetOK := false // a reset the plan itself explains
		switch o.Kind {
		case kSeqpacket:
			out = runMessages(h.addrs["pkt"], uint64(o.ID), o.Seed, opDeadline)
			what = "messages " + planMessages(o.Seed).String()
			h.rep.messages.Add(out.got)
		default:
			p := planStream(o.Seed, o.Kind == kTCP)
			network, addr := "tcp", h.addrs["tcp"]
			if o.Kind == kUnix {
				network, addr = "unix", h.addrs["unix"]
			}
			out, _ = runStream(network, addr, uint64(o.ID), o.Seed, p, opDeadline)
			what = fmt.Sprintf("up %d, down %d, mode %d, urgent at %d, slow %v", p.up, p.down, p.mode, p.urgent, p.slow)
			if p.hangUp >= 0 {
				what += fmt.Sprintf(", the backend hangs up after %d bytes", p.hangUp)
				// Its close with bytes unread is a reset on TCP, which
				// may cut the download on its way.
				resetOK = o.Kind == kTCP
			}
			if p.fds >= 0 {
				what += fmt.Sprintf(", %d descriptors with up to %d bytes at %d", p.nfds, p.fdLen, p.fds)
			}
			h.rep.bytes.Add(out.got)
		}
		openNow := h.open.Add(-1) + 1
		o.ended = time.Now()
		h.rep.conns.Add(1)
		be := h.res.wait(uint64(o.ID), 5*time.Second)
		h.judgeStream(o, out, be, openNow, what, resetOK)
	case kUDP4, kUDP6, kUnixgram:
		h.flow(o)
	case kFlood:
		h.flood(o)
	}
}

func (h *harness) judgeStream(o *op, client outcome, be *seen, openNow int64, what string, resetOK bool) {
	cc := classify(client.err)
	bc, berr := "unseen", error(nil)
	if be != nil {
		select {
		case <-be.done:
			bc, berr = classify(be.out.err), be.out.err
			h.rep.bytes.Add(be.out.got)
		default:
			bc, berr = "still open", fmt.Errorf("the backend's side is still open after the client's ended")
		}
	}
	if cc == "ok" && bc == "ok" {
		return
	}
	all := h.tl.during(o.started, o.ended, time.Second, eventKinds...)
	detail := fmt.Sprintf("%s; client: %v; backend: %v; events during: %v", what, client.err, berr, all)
	if cc == "corrupt" || bc == "corrupt" {
		h.rep.fail(o, "corrupt: %s", detail)
		return
	}
	if resetOK && cc == "reset" && bc == "ok" {
		h.rep.explained.Add(1)
		return
	}
	if h.tl.wasReset(uint64(o.ID)) && (cc == "reset" || cc == "cut" || cc == "ok") {
		h.rep.explained.Add(1)
		return
	}
	if be == nil {
		if ev := h.tl.during(o.started, o.ended, time.Second, h.refuseKinds()...); len(ev) > 0 {
			h.rep.explained.Add(1)
			return
		}
		if o.crowd > int64(h.run.Limit) {
			// -c was full of this run's own streams when it came: the
			// proxy refuses it by design.
			h.rep.explained.Add(1)
			return
		}
		h.rep.fail(o, "refused (%s) with %d streams open at its start, %d at its end, -c %d; proxy status %q; %s", cc, o.crowd, openNow, h.run.Limit, h.p.notify.lastStatus(), detail)
		return
	}
	if (cc == "cut" || bc == "cut") && o.Kind != kTCP && len(h.tl.during(o.started, o.ended, time.Second, eTermMidReload)) > 0 {
		// SIGTERM killed the proxy in a reload's exec window: a unix
		// socket has no reset to send, so its peers see an end, as at
		// any death of the process (a TCP peer sees the reset the
		// reload armed).
		h.rep.explained.Add(1)
		return
	}
	if cc == "cut" || bc == "cut" {
		h.rep.fail(o, "a clean end stands in for a cut: %s", detail)
		return
	}
	if (cc == "reset" || bc == "reset" || cc == "ok" || bc == "ok") && len(h.tl.during(o.started, o.ended, time.Second, h.resetKinds()...)) > 0 {
		h.rep.explained.Add(1)
		return
	}
	if cc == "timeout" || bc == "timeout" {
		h.rep.fail(o, "stalled: still open after %v: %s", opDeadline, detail)
		return
	}
	h.rep.fail(o, "%s/%s: %s", cc, bc, detail)
}

// flow runs one datagram flow and judges it.
func (h *harness) flow(o *op) {
	p := planFlow(o.Seed, o.Kind)
	if o.Kind == kUnixgram && !p.bound {
		// Unix clients without an address are one flow to the proxy
		// (nothing tells them apart), and so to the backend: two at
		// once would mix their datagrams. One at a time.
		h.unbound.Lock()
		defer h.unbound.Unlock()
	}
	id := uint64(o.ID)
	var c net.PacketConn
	var to net.Addr
	var err error
	replies := true
	switch o.Kind {
	case kUDP4:
		c, err = net.ListenPacket("udp", fmt.Sprintf("127.0.0.%d:0", p.source))
		to, _ = net.ResolveUDPAddr("udp", h.addrs["udp4"])
	case kUDP6:
		c, err = net.ListenPacket("udp6", "[::1]:0")
		to, _ = net.ResolveUDPAddr("udp6", h.addrs["udp6"])
	case kUnixgram:
		to = &net.UnixAddr{Name: h.addrs["dgram"], Net: "unixgram"}
		if p.bound {
			c, err = net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(h.dir, fmt.Sprintf("c%d", o.ID)), Net: "unixgram"})
		} else {
			c, err = unboundUnixgram()
			replies = false
		}
	}
	if err != nil {
		h.rep.fail(o, "client socket: %v", err)
		return
	}
	drops0 := h.drops.sample(h.p.pid(), os.Getpid())
	refused0 := statusCount(h.p.notify.lastStatus(), "refused at the limit")
	res := runFlow(o.Kind, c, to, id, o.Seed, replies, h.headerSize(o.Kind), 10*time.Second)
	time.Sleep(200 * time.Millisecond) // the last datagrams on their way
	drops := h.drops.sample(h.p.pid(), os.Getpid()) - drops0
	c.Close()
	if o.Kind == kUnixgram && p.bound {
		os.Remove(filepath.Join(h.dir, fmt.Sprintf("c%d", o.ID)))
	}
	o.ended = time.Now()
	h.rep.flows.Add(1)
	h.rep.datagrams.Add(int64(res.sent))
	var got []int
	var berr error
	if s := h.res.get(id); s != nil {
		h.udp.mu.Lock()
		h.dgram.mu.Lock()
		got, berr = append([]int(nil), s.got...), s.out.err
		h.dgram.mu.Unlock()
		h.udp.mu.Unlock()
	}
	what := fmt.Sprintf("sizes %v in bursts %v", p.sizes, p.bursts)
	if res.err != nil && !strings.Contains(res.err.Error(), "message too long") {
		h.rep.fail(o, "client: %v; %s", res.err, what)
		return
	}
	if berr != nil || res.echoes.err != nil {
		h.rep.fail(o, "backend: %v; echoes: %v; %s", berr, res.echoes.err, what)
		return
	}
	lostFwd := missing(res.expected, got)
	var lostBack []int
	if replies {
		lostBack = missing(got, res.echoes.got)
	}
	if len(lostFwd)+len(lostBack) == 0 {
		return
	}
	h.rep.dgramLost.Add(int64(len(lostFwd) + len(lostBack)))
	grace := time.Second
	if ev := h.tl.during(o.started, o.ended, grace, lossKinds...); len(ev) > 0 || drops > 0 {
		h.rep.explained.Add(1)
		return
	}
	// The flow table full: the proxy counts each refused datagram. Its
	// STATUS= comes at most once a second.
	time.Sleep(1100 * time.Millisecond)
	if statusCount(h.p.notify.lastStatus(), "refused at the limit") > refused0 {
		h.rep.explained.Add(1)
		return
	}
	if o.Kind == kUnixgram {
		// A unix datagram socket refuses what it cannot take (EAGAIN:
		// its queue holds net.unix.max_dgram_qlen datagrams, 10 by
		// default), and the proxy counts the drop; a reload since
		// starts its count again.
		if h.p.notify.droppedOnce() {
			h.rep.explained.Add(1)
			return
		}
	}
	h.rep.fail(o, "datagrams lost with nothing to explain it: %v of %v on the way to the backend, %v of the echoes; the kernel dropped %d on the sockets on the way; proxy status %q; %s",
		lostFwd, res.expected, lostBack, drops, h.p.notify.lastStatus(), what)
}

// headerSize is what the proxy puts before each datagram of a flow of
// kind: a PROXY v2 header (16 bytes, and the addresses: 12 for IPv4, 36
// for IPv6), or nothing.
func (h *harness) headerSize(kind string) int {
	switch {
	case h.run.ProxyProtocol != "v2":
		return 0
	case kind == kUDP6:
		return 16 + 36
	case kind == kUDP4:
		return 16 + 12
	}
	return 0 // unix: the backend takes far more than the largest UDP payload
}

// missing returns the elements of want not in got (got a subsequence).
func missing(want, got []int) []int {
	in := map[int]bool{}
	for _, g := range got {
		in[g] = true
	}
	var out []int
	for _, w := range want {
		if !in[w] {
			out = append(out, w)
		}
	}
	return out
}

func unboundUnixgram() (net.PacketConn, error) {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "unbound")
	defer f.Close()
	return net.FilePacketConn(f)
}

// flood sends one datagram from each of many source addresses: as many
// flows, each gone quiet at once.
func (h *harness) flood(o *op) {
	r := rand.New(rand.NewPCG(o.Seed, 4))
	n := h.run.Limit + 20 + r.IntN(100)
	h.tl.begin(kFlood, o.ID)
	defer h.tl.end(kFlood, o.ID)
	to, _ := net.ResolveUDPAddr("udp", h.addrs["udp4"])
	for i := 0; i < n; i++ {
		c, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.%d:0", 2+(i%249)))
		if err != nil {
			continue
		}
		c.WriteTo(hello(uint64(o.ID)<<20|uint64(i), o.Seed, c.LocalAddr().String()), to)
		c.Close()
	}
	h.rep.datagrams.Add(int64(n))
}

// event runs one event, in schedule order (one at a time).
func (h *harness) event(e *op) {
	h.rep.count(e.Kind)
	h.vlog("event %s", e)
	h.tl.begin(e.Kind, e.ID)
	defer h.tl.end(e.Kind, e.ID)
	r := rand.New(rand.NewPCG(e.Seed, 5))
	switch e.Kind {
	case eHUP:
		h.p.signal(syscall.SIGHUP)
	case eHUPBurst:
		for i := 0; i < e.Count; i++ {
			h.p.signal(syscall.SIGHUP)
			time.Sleep(e.Gap)
		}
	case eStop:
		h.p.signal(syscall.SIGSTOP)
		time.Sleep(e.Hold)
		h.p.signal(syscall.SIGCONT)
	case eDown:
		for _, b := range []interface{ down() }{h.tcp, h.unix, h.pkt, h.udp, h.dgram} {
			b.down()
		}
		time.Sleep(e.Hold)
		for _, b := range []interface{ listen() error }{h.tcp, h.unix, h.pkt, h.udp, h.dgram} {
			if err := b.listen(); err != nil {
				h.rep.fail(e, "the backend cannot listen again: %v", err)
			}
		}
	case eReset:
		for _, b := range []*streamBackend{h.tcp, h.unix, h.pkt} {
			b.reset(r, e.Count, h.tl.markReset)
		}
	case eStall:
		h.gate.hold(e.Hold)
		time.Sleep(e.Hold)
	case eStallHUP:
		h.gate.hold(e.Hold)
		time.Sleep(e.Hold / 2)
		h.p.signal(syscall.SIGHUP)
		time.Sleep(e.Hold - e.Hold/2)
	case eExhaust:
		h.exhaust(e)
	case eLimit:
		var held []net.Conn
		for i := 0; i < h.run.Limit; i++ {
			if c, err := net.DialTimeout("tcp", h.addrs["tcp"], time.Second); err == nil {
				held = append(held, c)
			}
		}
		time.Sleep(e.Hold)
		for _, c := range held {
			c.Close()
		}
	case eTerm:
		h.restart(e)
	case eBroken, eHang:
		h.badReload(e)
	}
	time.Sleep(10 * time.Millisecond)
}

// exhaust lowers the proxy's RLIMIT_NOFILE to what it holds, then puts it back.
func (h *harness) exhaust(e *op) {
	pid := h.p.pid()
	soft, hard, err := nofile(pid)
	if err != nil {
		h.rep.fail(e, "%v", err)
		return
	}
	// What it holds: the most of a few samples, as one may fall in a
	// reload's exec, when the next image has not yet opened what it
	// needs (its runtime's poller, its socket to NOTIFY_SOCKET): a limit
	// from that count is below what the proxy holds while it serves, and
	// leaves the next image no room to start, not the exhaustion this
	// event stands for.
	var s sample
	for range 10 {
		n, err := takeSample(pid)
		if err != nil {
			return
		}
		s.fds = max(s.fds, n.fds)
		time.Sleep(10 * time.Millisecond)
	}
	prlimit := func(lim string) {
		if b, err := exec.Command("prlimit", "--pid", strconv.Itoa(pid), "--nofile="+lim).CombinedOutput(); err != nil {
			h.rep.fail(e, "prlimit --nofile=%s: %v %s", lim, err, b)
		}
	}
	prlimit(fmt.Sprintf("%d:%s", s.fds+2, hard))
	time.Sleep(e.Hold)
	prlimit(soft + ":" + hard)
}

func nofile(pid int) (soft, hard string, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		return "", "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "Max open files") {
			f := strings.Fields(line)
			return f[3], f[4], nil
		}
	}
	return "", "", fmt.Errorf("no Max open files in /proc/%d/limits", pid)
}

// restart sends SIGTERM, waits for the proxy to end, and starts it again
// with its listeners (and what it left in the fd store).
func (h *harness) restart(e *op) {
	h.restarting.Store(true)
	defer h.restarting.Store(false)
	proc := h.p.current()
	sent := time.Now()
	proc.Signal(syscall.SIGTERM)
	select {
	case <-proc.Done():
	case <-time.After(shutdownGrace + 10*time.Second):
		h.rep.fail(e, "the proxy did not end within %v of SIGTERM", shutdownGrace+10*time.Second)
		proc.Kill()
		<-proc.Done()
	}
	if st := proc.State(); st == nil || st.ExitCode() != 0 {
		// A SIGTERM between a reload's exec and the next image's
		// signal.Notify kills it by the default action; the proxy
		// armed a reset on every carried connection for that case, so
		// an end by SIGTERM and those resets are what a reload just
		// before allows, and nothing else.
		if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM &&
			len(h.tl.during(sent.Add(-reloadWindow), sent, 0, eHUP, eHUPBurst, eStallHUP)) > 0 {
			h.rep.explained.Add(1)
			h.tl.add(eTermMidReload, e.ID, sent, time.Now())
		} else {
			h.rep.fail(e, "the proxy ended with %v after SIGTERM", proc.Err())
		}
	}
	var stored []testlaunch.Socket
	if h.run.FDStore {
		var err error
		if stored, err = h.p.notify.take(); err != nil {
			h.rep.fail(e, "%v", err)
		}
	}
	if err := h.p.start(stored); err != nil {
		h.rep.fail(e, "the proxy does not start again: %v", err)
	}
}

// badReload puts a binary that fails (or hangs in) the reload's check in
// place of the proxy's, sends SIGHUP, and puts the real one back: the
// proxy must go on serving as it was.
func (h *harness) badReload(e *op) {
	bin := h.p.bin
	saved := bin + ".real"
	if err := os.Rename(bin, saved); err != nil {
		h.rep.fail(e, "%v", err)
		return
	}
	script, hold := "#!/bin/sh\necho broken >&2\nexit 1\n", 500*time.Millisecond
	if e.Kind == eHang {
		script, hold = "#!/bin/sh\nexec sleep 30\n", 12*time.Second
	}
	os.WriteFile(bin, []byte(script), 0o755)
	pid := h.p.pid()
	h.p.signal(syscall.SIGHUP)
	time.Sleep(hold)
	if err := os.Rename(saved, bin); err != nil {
		h.rep.fail(e, "cannot put the binary back: %v", err)
	}
	if h.p.current().Exited() || h.p.pid() != pid {
		h.rep.fail(e, "the proxy did not survive a reload with a broken binary: %v", h.p.current().Err())
	}
}
