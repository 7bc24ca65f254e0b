// SPDX-License-Identifier: Apache-2.0

// Command socket-proxyd forwards the connections on sockets systemd passes in
// (or that it binds with --listen) to one backend: a drop-in replacement for
// systemd-socket-proxyd.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/handoff"
	"github.com/socket-proxyd/socket-proxyd/internal/logging"
	"github.com/socket-proxyd/socket-proxyd/internal/metrics"
	"github.com/socket-proxyd/socket-proxyd/internal/notify"
	"github.com/socket-proxyd/socket-proxyd/internal/proxy"
	"github.com/socket-proxyd/socket-proxyd/internal/status"
	"github.com/socket-proxyd/socket-proxyd/internal/timespan"
)

// version and commit are set by the Makefile with -ldflags -X; a plain
// `go build` or `go install` falls back to the module's build info.
var version, commit string

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is the whole program; it returns the exit status: 0 on success, on
// idle exit and after SIGTERM/SIGINT, 1 on any failure, as the original.
func run(args []string, stdout, stderr io.Writer) int {
	// The signals are caught before anything else: one that comes while
	// a reloaded image starts up waits for it instead of killing it (and
	// every connection with it) by its default action. The first signal
	// stops accepting and lets the open connections finish (up to
	// --shutdown-timeout); a second one closes them at once.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(signals)
	if len(args) > 0 && strings.HasPrefix(args[0], checkFlag) {
		if byHand(os.Stdin, os.Stdout) {
			fmt.Fprintf(stderr, "socket-proxyd: %s is internal to reloads: a running socket-proxyd runs it on the binary it is about to execute; it is not for use by hand\n", strings.TrimSuffix(checkFlag, "="))
			return 1
		}
		return checkMode(strings.TrimPrefix(args[0], checkFlag), args[1:], stdout, stderr)
	}
	carried, resuming := os.LookupEnv(handoff.EnvVar)
	os.Unsetenv(handoff.EnvVar)
	_, reloadAgain := os.LookupEnv(againVar)
	os.Unsetenv(againVar)
	reloads := carriedReloads(os.Getenv(reloadsVar), resuming)
	os.Unsetenv(reloadsVar)
	files := carriedFiles(os.Getenv(boundVar))
	os.Unsetenv(boundVar)
	notifySocket := os.Getenv("NOTIFY_SOCKET")
	journal := logging.StreamIsJournal(os.Getenv("JOURNAL_STREAM"), stderr)
	fail := func(err error) int {
		prefix := ""
		if journal {
			prefix = "<3>"
		}
		fmt.Fprintf(stderr, "%ssocket-proxyd: %v\n", prefix, err)
		return 1
	}
	opts, err := parseOptions(args)
	if err != nil {
		fail(err)
		fmt.Fprintln(stderr, "socket-proxyd: run 'socket-proxyd --help' for usage")
		return 1
	}
	if opts.help {
		fmt.Fprint(stdout, usage)
		return 0
	}
	if opts.version {
		fmt.Fprintln(stdout, versionString())
		return 0
	}
	if opts.check {
		// Under systemd (ExecReload=), the plan is debug and the
		// reasons errors, so that journalctl -p shows the failure.
		planPrefix, errPrefix := "", ""
		if logging.StreamIsJournal(os.Getenv("JOURNAL_STREAM"), stdout) {
			planPrefix = "<7>"
		}
		if journal {
			errPrefix = "<3>"
		}
		return checkPlan(opts, stdout, stderr, planPrefix, errPrefix)
	}

	logOpts := logging.Options{Journal: journal, Level: slog.LevelInfo}
	if journal {
		// Upgrade to the native protocol, as systemd's own tools do when
		// stderr is the journal, so entries carry fields; without the
		// socket, the lines on stderr stay.
		if native, err := logging.DialJournal(logging.JournalSocket); err == nil {
			defer native.Close()
			logOpts.Native = native
		}
	}
	var levelErr error
	if s := os.Getenv("SYSTEMD_LOG_LEVEL"); s != "" {
		logOpts.Level, levelErr = logging.ParseLevel(s)
	}
	if opts.logLevel != "" {
		logOpts.Level, _ = logging.ParseLevel(opts.logLevel) // checked by parseOptions
		levelErr = nil
	}
	log := logging.New(stderr, logOpts)
	if levelErr != nil {
		log.Warn(levelErr.Error())
	}

	if opts.fdstore != fdstoreNo && notifySocket == "" {
		return fail(fmt.Errorf("--fdstore=%s needs systemd's fd store, and NOTIFY_SOCKET is not set: run it from a service with FileDescriptorStoreMax=, or drop --fdstore", opts.fdstore))
	}
	listeners, resumed, recovered, err := takeOver(carried, resuming, files, notifySocket, log)
	if err != nil {
		return fail(err)
	}
	listeners, metricsLn, err := metricsListener(listeners, resumed, opts)
	if err != nil {
		activation.Close(listeners)
		return fail(err)
	}
	closeAll := func() {
		activation.Close(listeners)
		if metricsLn != nil {
			metricsLn.Close()
		}
	}
	for _, addr := range opts.listen {
		if slices.ContainsFunc(listeners, func(l activation.Listener) bool { return l.Name == addr && l.Kind == activation.Stream }) {
			continue // carried over a reload
		}
		l, err := activation.ListenMode(addr, opts.socketMode)
		if err != nil {
			closeAll()
			return fail(err)
		}
		listeners = append(listeners, l)
	}
	if listeners, err = listenPackets(listeners, opts); err != nil {
		if metricsLn != nil {
			metricsLn.Close()
		}
		return fail(err)
	}
	if len(listeners) == 0 {
		closeAll()
		return fail(fmt.Errorf("no listening sockets: start it from a .socket unit, under systemd-socket-activate -l ADDRESS, or with --listen ADDRESS (--listen-datagram, --listen-sequential-packet)"))
	}
	if err := checkBackends(listeners, opts.backend, opts.named); err != nil {
		closeAll()
		return fail(err)
	}
	if err := checkKinds(listeners, opts); err != nil {
		closeAll()
		return fail(err)
	}
	announce(log, listeners, opts.backend, opts.named, opts.balance)

	// STOPPING=1 goes out before the proxy starts closing anything, so the
	// signal is watched here rather than through a context the proxy sees
	// first.
	var stopOnce sync.Once
	stopping := func(reason string) {
		stopOnce.Do(func() {
			notify.Stopping()
			log.Info("stopping", "reason", reason)
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reload := newReloader(selfExe(), os.Args, log, reloadAgain && resuming, hup, signals)
	reload.bound = boundValue(listeners)
	reload.counts = reloads
	if resuming {
		nameProcess(reload.exe)
	}
	cfg := proxy.Config{
		Reload:          reload.exec,
		Store:           storeFunc(opts.fdstore, notifySocket, os.Getenv("FDSTORE")),
		Resume:          resumed,
		Recover:         recovered,
		Listeners:       listeners,
		Backend:         opts.backend,
		MaxConnections:  opts.maxConnections,
		MaxFlows:        opts.maxFlows,
		MaxPerSource:    opts.maxPerSource,
		SocketBuffer:    opts.socketBuffer,
		ExitIdleTime:    exitIdleTime(opts.exitIdleTime),
		Backends:        opts.named,
		Balance:         opts.balance,
		HealthInterval:  opts.healthInterval,
		HealthRise:      opts.healthRise,
		HealthFall:      opts.healthFall,
		ConnectTimeout:  zeroMeansNegative(opts.connectTimeout),
		IdleTimeout:     infinityMeansZero(opts.idleTimeout),
		FlowIdleTimeout: flowIdleTimeout(opts),
		KeepAlive:       zeroMeansNegative(opts.keepAlive), // infinity is already 0: off
		ProxyProtocol:   opts.proxyProtocol,
		ShutdownTimeout: zeroMeansNegative(opts.shutdownTimeout),
		BusyPoll:        opts.busyPoll,
		Log:             log,
	}
	if metricsLn != nil {
		cfg.Carry = []activation.Listener{*metricsLn}
	}
	if opts.fdstore == fdstoreAlways {
		k, err := newKeeper(notifySocket, os.Getenv("FDSTORE"), len(recovered), log)
		if err != nil {
			closeAll()
			return fail(err)
		}
		cfg.Keep, cfg.Forget = k.keep, k.forget
	} else if len(recovered) > 0 {
		// Kept by an instance with --fdstore=always: each leaves the
		// store when it closes, whatever this instance's mode.
		cfg.Forget = func(name string) { notify.RemoveFDs(notifySocket, name) }
	}
	srv := proxy.New(cfg)
	// alive ends when Run returns: the watchdog, the status line and the
	// signal watcher live exactly as long as Run, graceful stop included.
	alive, done := context.WithCancel(context.Background())
	var background sync.WaitGroup
	defer background.Wait()
	defer done()
	reload.handOver = srv.Reload
	reload.stop = func(sig os.Signal) {
		stopping(sig.String())
		if opts.fdstore != fdstoreNo {
			srv.Store() // before cancel: the loop stores first, then stops
		}
		cancel()
	}
	reload.kill = func(sig os.Signal) {
		log.Info("closing the open connections at once", "reason", sig.String())
		srv.CloseConnections()
	}
	background.Go(func() { reload.watch(alive) })
	background.Go(func() { notify.Watchdog(alive, notify.WatchdogInterval()) })
	background.Go(func() { status.Report(alive, status.Interval, srv.Stats, notify.Status) })
	if metricsLn != nil {
		v, c := buildInfo()
		e := &metrics.Exporter{Listeners: srv.ListenerStats, Stats: srv.Stats, Reloads: reloads, Resumed: resuming,
			Build: metrics.Build{Version: v, Commit: c, GoVersion: runtime.Version()}}
		background.Go(func() { serveMetrics(alive, *metricsLn, e, log) })
	}
	notify.Ready()
	log.Debug("ready", "listeners", len(listeners), "backend", strings.Join(names(opts.backend), " "), "connections_max", opts.maxConnections)

	err = srv.Run(ctx)
	stopping("idle") // unless a signal already said so
	cancel()
	done()
	if err != nil {
		return fail(err)
	}
	return 0
}

// exitIdleTime maps the flag to proxy.Config, where zero means never: an
// explicit 0 means "exit as soon as nothing is open".
func exitIdleTime(d time.Duration) time.Duration {
	switch d {
	case timespan.Infinity:
		return 0
	case 0:
		return time.Nanosecond
	}
	return d
}

// The command line says 0 for "none" (no retry, no keepalive, no drain) and
// infinity for "never"; proxy.Config, like most Go configuration, keeps zero
// for the default, so these translate.
func zeroMeansNegative(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

func infinityMeansZero(d time.Duration) time.Duration {
	if d == timespan.Infinity {
		return 0
	}
	return d
}

func versionString() string {
	v, c := buildInfo()
	return fmt.Sprintf("socket-proxyd %s (commit %s, %s)", v, c, runtime.Version())
}

// buildInfo is the version and commit: the Makefile's, or the module's.
func buildInfo() (string, string) {
	v, c := version, commit
	if info, ok := debug.ReadBuildInfo(); ok {
		if v == "" {
			v = info.Main.Version
		}
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && c == "" {
				c = s.Value
			}
		}
	}
	if v == "" {
		v = "(devel)"
	}
	if c == "" {
		c = "unknown"
	}
	return v, c
}
