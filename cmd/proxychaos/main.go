// SPDX-License-Identifier: Apache-2.0

// Command proxychaos runs seeded chaos against socket-proxyd: random
// traffic of every kind the proxy carries (TCP and unix streams, sequential
// packets, UDP over IPv4 and IPv6, unix datagrams) mixed with events
// (SIGHUP alone and in bursts, SIGSTOP, SIGTERM and a restart, backends
// that go down, reset or stall, descriptor exhaustion, the connection
// limit, a broken binary at reload), against a real binary and backends of
// its own, and checks every byte, datagram and message boundary against a
// model of what the events allow:
//
//	go run ./cmd/proxychaos -duration 1m
//	go run ./cmd/proxychaos -seed 42 -mix seqpacket -events none
//
// The seed is printed first; every choice of the run follows from it, so
// -seed replays the same schedule (the machine's timing differs). A
// failure prints the seed, what went wrong, and the schedule.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

type config struct {
	seed               uint64
	duration           time.Duration
	rate, eventRate    float64
	mix, events        weights
	bin                string
	verbose            bool
	proxyLog           string
	mixFlag, eventFlag string
}

func main() {
	var cfg config
	var seed int64
	flag.Int64Var(&seed, "seed", 0, "the run's seed (default: from the clock); the same seed replays the same schedule")
	flag.DurationVar(&cfg.duration, "duration", time.Minute, "how long to keep starting operations")
	flag.Float64Var(&cfg.rate, "rate", defaultRate, "operations started per second, on average")
	flag.Float64Var(&cfg.eventRate, "event-rate", defaultEventRate, "events per second, on average")
	flag.StringVar(&cfg.mixFlag, "mix", defaultMix, "weights of the kinds of traffic, KIND=N,...: "+fmt.Sprint(trafficKinds))
	flag.StringVar(&cfg.eventFlag, "events", defaultEvents, "weights of the kinds of events, KIND=N,... or none: "+fmt.Sprint(scheduledKinds))
	flag.StringVar(&cfg.bin, "bin", "", "socket-proxyd binary to test (default: go build ./cmd/socket-proxyd)")
	flag.BoolVar(&cfg.verbose, "v", false, "print each event as it runs")
	flag.StringVar(&cfg.proxyLog, "proxy-log", "", "keep the proxy's log in this file, at debug level (each connection's end and why)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), `Usage: proxychaos [flags]

Seeded chaos against socket-proxyd: random traffic of every kind it
carries, mixed with events, each byte, datagram and message checked.
Exit status 0: no failure; 1: failures (printed first, with the seed to
replay), or a harness error (on standard error); 2: bad flags. How to
read a failure: docs/RELIABILITY.md, "Chaos".

`)
		flag.PrintDefaults()
	}
	flag.Parse()
	from := ""
	if seed == 0 {
		seed = time.Now().UnixNano() & (1<<53 - 1)
		from = " (from the clock)"
	}
	cfg.seed = uint64(seed)
	fmt.Printf("proxychaos: seed %d%s\n", seed, from)
	var err error
	if cfg.mix, err = parseWeights(cfg.mixFlag, trafficKinds); err != nil {
		fmt.Fprintf(os.Stderr, "proxychaos: -mix: %v\n", err)
		os.Exit(2)
	}
	if cfg.events, err = parseWeights(cfg.eventFlag, scheduledKinds); err != nil {
		fmt.Fprintf(os.Stderr, "proxychaos: -events: %v\n", err)
		os.Exit(2)
	}
	os.Exit(run(cfg, os.Stdout))
}

// build puts the binary under test at dir/socket-proxyd: the tree's, or a
// copy of -bin (the broken-reload event replaces the file in place).
func build(bin, dir string) (string, error) {
	out := filepath.Join(dir, "socket-proxyd")
	if bin == "" {
		b, err := exec.Command("go", "build", "-o", out, "github.com/socket-proxyd/socket-proxyd/cmd/socket-proxyd").CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("go build ./cmd/socket-proxyd (run it from inside the repository): %v\n%s", err, b)
		}
		return out, nil
	}
	src, err := os.Open(bin)
	if err != nil {
		return "", err
	}
	defer src.Close()
	dst, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return "", err
	}
	return out, dst.Close()
}
