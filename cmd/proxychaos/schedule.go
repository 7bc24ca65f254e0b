// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The schedule is every choice of a run, made from the seed before the run
// starts: which operations and events, when, and each one's own seed, from
// which its sizes, pauses and contents follow. Replaying a seed replays the
// same schedule; only the timing of the machine differs.

// Kinds of traffic.
const (
	kTCP       = "tcp"       // a TCP stream: sizes, pauses, half-close, urgent byte, slow reader
	kUnix      = "unix"      // a unix stream, the same without the urgent byte
	kSeqpacket = "seqpacket" // sequential packets, empty and 256 KiB ones among them
	kUDP4      = "udp4"      // a UDP flow over 127.0.0.0/8, from 127.0.0.2..250
	kUDP6      = "udp6"      // a UDP flow over ::1 to an IPv4 backend: oversized datagrams
	kUnixgram  = "unixgram"  // a unix datagram flow, bound (replies) or not
	kFlood     = "flood"     // one datagram each from many source addresses
)

// Kinds of events.
const (
	eHUP      = "sighup" // one SIGHUP: reload in place
	eHUPBurst = "sighup-burst"
	eStop     = "sigstop"       // SIGSTOP, then SIGCONT: bursts queue up
	eDown     = "backend-down"  // a backend stops listening, then comes back
	eReset    = "backend-reset" // the stream backends reset some connections
	eStall    = "backend-stall" // the backends stop reading and writing for a while
	// eStallHUP is a backend-stall with a SIGHUP in its middle: messages
	// and bytes the backends do not take wait in the proxy (a seqpacket
	// message parked in memory among them) when the reload carries them.
	eStallHUP = "stall-reload"
	eExhaust  = "exhaust"       // the proxy's RLIMIT_NOFILE lowered to what it holds
	eLimit    = "limit"         // -c connections held open for a while
	eTerm     = "sigterm"       // SIGTERM, then start again (from the fd store when the run has --fdstore=on-stop)
	eBroken   = "broken-reload" // the binary on disk fails its check; SIGHUP
	eHang     = "hung-reload"   // the binary on disk hangs in its check; SIGHUP
)

var trafficKinds = []string{kTCP, kUnix, kSeqpacket, kUDP4, kUDP6, kUnixgram, kFlood}

// eTermMidReload is no scheduled event: the timeline records it when a
// SIGTERM killed the proxy in a reload's exec window.
const eTermMidReload = "sigterm-mid-reload"

// reloadWindow is how long after a SIGHUP its reload may still be under
// way: the check's deadline (10s) and its wait delay, with a second spare.
const reloadWindow = 12 * time.Second

var eventKinds = []string{eHUP, eHUPBurst, eStop, eDown, eReset, eStall, eExhaust, eLimit, eTerm, eBroken, eHang, eStallHUP, eTermMidReload}

// scheduledKinds are the events -events may ask for: not eTermMidReload,
// which would excuse what it never caused.
var scheduledKinds = eventKinds[:len(eventKinds)-1]

// defaultMix and defaultEvents are the weights of a run that says nothing,
// at defaultRate operations and defaultEventRate events a second.
const (
	defaultRate      = 15
	defaultEventRate = 0.5
	defaultMix       = "tcp=6,unix=3,seqpacket=3,udp4=3,udp6=2,unixgram=2,flood=1"
	defaultEvents    = "sighup=3,sighup-burst=2,sigstop=2,backend-down=1,backend-reset=2,backend-stall=1,exhaust=1,limit=1,sigterm=1,broken-reload=1,hung-reload=0,stall-reload=1"
)

// weights is a "kind=N,kind=N" flag value.
type weights map[string]int

func parseWeights(s string, known []string) (weights, error) {
	w := weights{}
	if s == "" || s == "none" {
		return w, nil
	}
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			v = "1"
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("weight %q: want KIND=N with N a count", part)
		}
		found := false
		for _, kk := range known {
			found = found || kk == k
		}
		if !found {
			return nil, fmt.Errorf("unknown kind %q: want one of %s", k, strings.Join(known, ", "))
		}
		w[k] = n
	}
	return w, nil
}

func (w weights) pick(r *rand.Rand, order []string) string {
	total := 0
	for _, k := range order {
		total += w[k]
	}
	if total == 0 {
		return ""
	}
	n := r.IntN(total)
	for _, k := range order {
		if n < w[k] {
			return k
		}
		n -= w[k]
	}
	return ""
}

// runConfig is what the seed chooses about the proxy itself.
type runConfig struct {
	Limit         int    // -c
	ProxyProtocol string // "" or "v2"
	FDStore       bool   // --fdstore=on-stop: SIGTERM hands connections to the next instance
	// Always makes the FDStore run's --fdstore=always: each stream
	// connection kept in the store from its start, its bytes spliced
	// through pipes of its own; a SIGTERM hands over as on-stop does.
	Always bool
}

func (c runConfig) String() string {
	store := "off"
	if c.FDStore {
		store = map[bool]string{false: "on-stop", true: "always"}[c.Always]
	}
	return fmt.Sprintf("-c %d, PROXY header %q, fd store %s", c.Limit, c.ProxyProtocol, store)
}

// op is one operation or event of the schedule.
type op struct {
	At   time.Duration
	ID   int
	Kind string
	Seed uint64
	// Event only: how long it lasts, how many signals.
	Hold  time.Duration
	Count int
	Gap   time.Duration
	event bool

	// Filled in as it runs.
	started, ended time.Time
	// crowd: the streams open when a stream started, itself among them.
	crowd int64
}

func (o *op) String() string {
	s := fmt.Sprintf("%9s  #%d %s seed=%d", o.At.Round(time.Millisecond), o.ID, o.Kind, o.Seed)
	if o.event {
		if o.Count > 0 {
			s += fmt.Sprintf(" count=%d gap=%v", o.Count, o.Gap)
		}
		if o.Hold > 0 {
			s += fmt.Sprintf(" hold=%v", o.Hold)
		}
	}
	return s
}

// schedule makes a run's operations from its seed.
func schedule(seed uint64, d time.Duration, rate float64, eventRate float64, mix, events weights) (runConfig, []*op) {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	cfg := runConfig{Limit: 96}
	if r.IntN(2) == 0 {
		cfg.ProxyProtocol = "v2"
	}
	cfg.FDStore = r.IntN(2) == 0
	// From a stream of its own, so that every seed's schedule stays what
	// it was before the choice existed.
	cfg.Always = cfg.FDStore && rand.New(rand.NewPCG(seed, 3)).IntN(2) == 0
	var ops []*op
	id := 0
	if rate > 0 && len(mix) > 0 {
		for t := time.Duration(0); ; {
			t += time.Duration(r.ExpFloat64() / rate * float64(time.Second))
			if t >= d {
				break
			}
			k := mix.pick(r, trafficKinds)
			if k == "" {
				break
			}
			id++
			ops = append(ops, &op{At: t, ID: id, Kind: k, Seed: r.Uint64()})
		}
	}
	if eventRate > 0 && len(events) > 0 {
		for t := time.Duration(0); ; {
			t += time.Duration(r.ExpFloat64() / eventRate * float64(time.Second))
			if t >= d {
				break
			}
			k := events.pick(r, eventKinds)
			if k == "" {
				break
			}
			id++
			e := &op{At: t, ID: id, Kind: k, Seed: r.Uint64(), event: true}
			switch k {
			case eHUPBurst:
				e.Count, e.Gap = 2+r.IntN(7), time.Duration(r.IntN(30))*time.Millisecond
			case eStop:
				e.Hold = time.Duration(100+r.IntN(700)) * time.Millisecond
			case eDown, eStall, eStallHUP:
				e.Hold = time.Duration(200+r.IntN(1800)) * time.Millisecond
			case eExhaust, eLimit:
				e.Hold = time.Duration(300+r.IntN(1200)) * time.Millisecond
			case eReset:
				e.Count = 1 + r.IntN(3)
			}
			ops = append(ops, e)
		}
	}
	sort.SliceStable(ops, func(i, j int) bool { return ops[i].At < ops[j].At })
	return cfg, ops
}
