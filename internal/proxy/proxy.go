// SPDX-License-Identifier: Apache-2.0

// Package proxy is the forwarding engine: it accepts clients on the
// listeners, holds the connection limit, connects each client to the
// backend and forwards bytes both ways until both sides are done, and exits
// when idle. Everything about how bytes move stays inside this package.
//
// The engine is one event loop on epoll (docs/ENGINE.md): each connection is
// a small state machine of two directions, idle connections hold their two
// sockets and nothing else, and bytes move through one shared buffer when
// they come in small reads and by splice through a pooled pipe when they
// come in bulk.
package proxy

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/backend"
	"github.com/socket-proxyd/socket-proxyd/internal/handoff"
	"github.com/socket-proxyd/socket-proxyd/internal/proxyproto"
)

// DefaultMaxConnections is systemd-socket-proxyd's default for -c.
const DefaultMaxConnections = 256

// Defaults for the connection options (connect timeout, keepalive,
// shutdown timeout); see Config.
const (
	DefaultConnectTimeout  = 10 * time.Second
	DefaultKeepAlive       = time.Minute
	DefaultShutdownTimeout = 30 * time.Second
)

// Config is what the proxy serves. The zero value of each optional field
// means its default.
type Config struct {
	// Listeners are served until Run returns, which closes them.
	Listeners []activation.Listener
	// Backend is where the clients of every listener not in Backends are
	// forwarded: one backend, or several that Balance shares the clients
	// among (pool.go), at most MaxBackends.
	Backend []backend.Address
	// Balance picks one of several backends for each new connection and
	// flow; a flow stays on its backend for its whole life. The zero
	// value is First: in order, the next standing by (failover).
	Balance Balance
	// HealthInterval, when positive, has each backend of a listener with
	// several probed by a connect this often (health.go): HealthFall
	// failed probes in a row take it down, HealthRise good ones bring it
	// back (zero: DefaultHealthFall, DefaultHealthRise). Zero: off, and a
	// failed connect alone takes a backend down, for a backoff.
	HealthInterval         time.Duration
	HealthRise, HealthFall int
	// Resolver looks up backend host names; nil means net.DefaultResolver.
	// ConnectTimeout bounds each lookup.
	Resolver *net.Resolver
	// MaxConnections is the most connections (stream and sequential-packet
	// clients) proxied at once; zero means DefaultMaxConnections. Client
	// MaxConnections+1 is accepted and closed. Datagram flows do not count.
	MaxConnections int
	// MaxFlows is the most datagram flows open at once, over every
	// listener; zero means a share of the open files limit (at most
	// MaxFlowsCap). Past it, a new client's flow takes the place of the
	// least recently active one, an answered one first: a new client is
	// never kept out (flowbudget.go).
	MaxFlows int
	// SocketBuffer, when positive, sets the send and receive buffers of
	// both sockets of every connection (SO_SNDBUF, SO_RCVBUF; the kernel
	// doubles the value for its bookkeeping), in place of the kernel's
	// autotuning: it bounds what a client that never reads holds in the
	// kernel, at a cost in throughput over long fat paths. Zero means the
	// kernel's autotuning.
	SocketBuffer int
	// MaxPerSource, when positive, is the most connections, and the most
	// flows, one client address holds at once (persource.go); zero means
	// no limit. Unix clients are not limited.
	MaxPerSource int
	// ExitIdleTime ends Run after this long without a connection, counted
	// from start-up too; zero or negative means never.
	ExitIdleTime time.Duration
	// Backends gives listeners a backend of their own, by Listener.Label
	// or Listener.Name (--backend NAME=ADDRESS, NamedBackend); the others
	// use Backend.
	Backends map[string][]backend.Address
	// ConnectTimeout bounds connecting to the backend, retries included: a
	// refused or missing backend (ECONNREFUSED, ENOENT, EAGAIN) is retried
	// with a short backoff until it passes, while the client's bytes wait
	// in its socket (systemd #2105). Zero means DefaultConnectTimeout;
	// negative means one attempt per address and no retry (the attempts
	// are then bounded by DefaultConnectTimeout, as a connect to a host
	// that never answers would otherwise wait for the kernel's SYN retries).
	ConnectTimeout time.Duration
	// IdleTimeout closes a connection with no traffic either way for this
	// long (systemd #23320); zero means never.
	IdleTimeout time.Duration
	// FlowIdleTimeout expires a datagram flow with no datagram either way
	// for this long; zero means DefaultFlowIdleTimeout, negative never.
	FlowIdleTimeout time.Duration
	// KeepAlive is the TCP keepalive idle time set on both TCP sides; zero
	// means DefaultKeepAlive, negative turns keepalive off.
	KeepAlive time.Duration
	// ProxyProtocol, unless proxyproto.None, has a PROXY protocol header
	// written to the backend before any client byte.
	ProxyProtocol proxyproto.Version
	// ShutdownTimeout is how long open connections may go on once ctx ends
	// and accepting has stopped; zero means DefaultShutdownTimeout,
	// negative closes them at once.
	ShutdownTimeout time.Duration
	// BusyPoll, when positive, has the loop spin on epoll_wait without
	// blocking for up to this long after it had work, before it blocks:
	// CPU time traded for latency, as a packet that lands while the loop
	// still polls needs no wake-up (busypoll.go). An idle proxy never
	// spins. Zero or negative: off. At most MaxBusyPoll.
	BusyPoll time.Duration
	// Log receives one line per event; nil discards.
	Log *slog.Logger
	// Carry are listening sockets the proxy does not serve but hands
	// over with its own at a reload, or to the fd store (the --metrics
	// socket): the next image finds them in the record as
	// handoff.ListenCarried. The caller keeps owning them.
	Carry []activation.Listener

	// Reload, when set, is called on the loop's goroutine after
	// Server.Reload, with the loop stopped between two batches of events:
	// rec is the handoff record and fds the descriptors it names. It is
	// meant to execute the next image and not return; if it returns, the
	// loop goes on as if nothing happened. A nil rec says the record could
	// not be written: the reload is over, and failed.
	Reload func(rec []byte, fds []int) error
	// Store, when set, is called on the loop's goroutine after
	// Server.Store, with the loop stopped: it hands rec and fds to
	// systemd's fd store. When it returns nil the connections are let go
	// (the store holds them); otherwise they drain.
	Store func(rec []byte, fds []int) error
	// Keep, when set (--fdstore=always), is called on the loop's
	// goroutine as each stream connection opens (after its PROXY header):
	// it puts fds (client, backend, and both ends of the connection's two
	// pipes) in systemd's fd store under name, so that a crash loses no
	// connection (keep.go). An error leaves the connection unkept. Forget
	// takes a name out of the store again, when the connection ends or
	// leaves it. Store must be set too: on a stop, the record goes to the
	// store with the connections that are not kept.
	Keep   func(name string, fds []int) error
	Forget func(name string)
	// Resume is a decoded handoff record whose connections Run adopts
	// before it serves; its listeners must be among Listeners (by name).
	Resume *handoff.Record
	// Recover are kept connections (Keep) found in the fd store with no
	// record, as a crash leaves them: descriptors by name. Run rebuilds
	// them (handoff.Recover); a group that does not add up is reset and
	// forgotten.
	Recover map[string][]int
}

// NamedBackend is the backends that named (--backend) gives listener l: by
// its label, name and type ("dns.socket/udp"), or else by its name alone.
func NamedBackend(named map[string][]backend.Address, l activation.Listener) ([]backend.Address, bool) {
	if b, ok := named[l.Label()]; ok {
		return b, true
	}
	b, ok := named[l.Name]
	return b, ok
}

// Stats are running totals, safe to read while the proxy runs.
type Stats struct {
	Active   int64 // connections open now
	Accepted int64 // connections proxied since start
	Refused  int64 // clients closed because a limit was reached
	// RefusedPerSource counts those of Refused closed at MaxPerSource.
	RefusedPerSource int64
	BackendErrors    int64 // clients closed because the backend could not be reached
	BytesIn          int64 // client to backend, counted as they are delivered
	BytesOut         int64 // backend to client, counted as they are delivered

	Kept         int64 // connections in systemd's fd store now (Config.Keep)
	Pipes        int64 // kernel pipes open now, lent out or pooled
	Splices      int64 // splice calls that moved bytes from a socket into a pipe
	SplicedBytes int64 // bytes those calls moved without copying to userspace

	// Datagram listeners (flow.go): Active, Accepted and Refused count
	// connections only; BytesIn and BytesOut count datagrams' bytes too.
	Flows              int64 // datagram flows open now (Config.MaxFlows bounds them)
	FlowsOpened        int64 // flows opened since start
	DatagramsIn        int64 // datagrams forwarded client to backend
	DatagramsOut       int64 // datagrams forwarded backend to client
	DatagramsDropped   int64 // datagrams not forwarded, for any of the reasons below (truncated aside)
	DatagramsTruncated int64 // datagrams larger than the proxy reads, dropped whole
	DatagramsSegmented int64 // datagrams sent as segments of one UDP_SEGMENT message (GSO)
	BackendRefused     int64 // ICMP port unreachable (ECONNREFUSED) on a flow: dropped
	// The other reasons a datagram is dropped.
	DroppedBufferFull int64 // a socket buffer full (EAGAIN, ENOBUFS)
	DroppedTooBig     int64 // larger than the backend's socket takes (EMSGSIZE)
	DroppedSendError  int64 // another error of the send (EPERM from a firewall, unreachable, ...)
	DroppedNoFlow     int64 // no flow could be opened for a new client (limit, descriptors, backend)
	DroppedNoAddress  int64 // a reply for a unix client without an address
	FlowsEvicted      int64 // flows closed to make room for a new client's

	BusyPollHits int64 // waits that found an event while spinning (Config.BusyPoll)

	// Resumed counts the connections and flows adopted at start-up
	// (Config.Resume, Config.Recover); Paused is how long the loop stood
	// still for the handoff that carried them, in ns (the record's age).
	Resumed, Paused int64
	// Listeners with several backends (pool.go): how many backends they
	// have in all, and how many of those are up. Both 0 when every
	// listener has one.
	Backends, BackendsUp int64
}

// Server is one running proxy.
type Server struct {
	cfg Config
	log *slog.Logger

	loop   atomic.Pointer[loop] // set while Run runs
	hurry  atomic.Bool          // CloseConnections was called
	reload atomic.Bool          // Reload was called
	store  atomic.Bool          // Store was called

	// per are each listener's counters (counters.go), by index in
	// Config.Listeners; labels and backends name them, members names
	// each backend of each.
	per              []listenerCounters
	labels, backends []string
	members          [][]string

	pipes, splices, splicedBytes, kept atomic.Int64
	busyPollHits, segmented            atomic.Int64
	resumed, paused                    atomic.Int64
	poolSize, poolUp                   atomic.Int64 // Stats.Backends, BackendsUp

	// testBatch, set by tests only, sees each batch of events before the
	// loop handles it and may add to it (a stale event, deterministically).
	testBatch func(events []unix.EpollEvent, n int) int
}

// New prepares a proxy; Run starts it.
func New(cfg Config) *Server {
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = DefaultMaxConnections
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: log, per: make([]listenerCounters, len(cfg.Listeners))}
	for _, ln := range cfg.Listeners {
		b, ok := NamedBackend(cfg.Backends, ln)
		if !ok {
			b = cfg.Backend
		}
		names := make([]string, len(b))
		for i, a := range b {
			names[i] = a.String()
		}
		s.labels = append(s.labels, ln.Label())
		s.members = append(s.members, names)
		// Several backends share a listener's counters: the label
		// names them all, in order (bounded by MaxBackends).
		s.backends = append(s.backends, strings.Join(names, ","))
	}
	// Sockets of one unit share its name unless FileDescriptorName= says
	// otherwise: two TCP sockets would both be "web.socket/tcp", and the
	// metrics would hold two series with one set of labels. A label
	// taken already gets the socket's address after it.
	seen := make(map[string]bool, len(s.labels))
	for i, label := range s.labels {
		if seen[label] {
			s.labels[i] = label + "@" + cfg.Listeners[i].Addr().String()
		}
		seen[s.labels[i]] = true
	}
	return s
}

// Run serves until ctx ends or the proxy has been idle for ExitIdleTime,
// and returns nil once every connection is closed. When ctx ends it stops
// accepting at once and closes its copies of the listeners (systemd keeps
// the sockets, so clients that connect meanwhile wait in the backlog for
// the next instance instead of being refused), lets the open connections
// finish for up to ShutdownTimeout, then closes the rest. It fails only
// when the event loop cannot be set up.
func (s *Server) Run(ctx context.Context) error {
	l, err := newLoop(s)
	if err != nil {
		activation.Close(s.cfg.Listeners)
		return err
	}
	if r := s.cfg.Resume; r != nil {
		adopted, reset := l.resume(r)
		l.resumed(r, adopted, reset)
	}
	if len(s.cfg.Recover) > 0 {
		l.recover(s.cfg.Recover)
	}
	s.loop.Store(l)
	stop := context.AfterFunc(ctx, l.wake)
	idle := l.run(ctx)
	stop()
	s.loop.Store(nil)
	if !l.draining {
		// Listeners first, so that no client is accepted into a dying proxy.
		activation.Close(s.cfg.Listeners)
	}
	l.close()
	if idle {
		s.log.Info("exiting after being idle", "exit_idle_time", s.cfg.ExitIdleTime.Round(time.Millisecond).String()) // 0, not the 1ns it maps to
	}
	return nil
}

// CloseConnections cuts a graceful stop short (a second SIGTERM): once the
// context given to Run has ended, the connections still open are closed at
// once instead of after ShutdownTimeout. Called earlier, it makes the stop,
// when it comes, close them at once. It is safe to call from any goroutine.
func (s *Server) CloseConnections() {
	s.hurry.Store(true)
	if l := s.loop.Load(); l != nil {
		l.wake()
	}
}

// Stats returns the running totals: the sums of ListenerStats.
func (s *Server) Stats() Stats {
	st := Stats{
		Kept:               s.kept.Load(),
		Pipes:              s.pipes.Load(),
		Splices:            s.splices.Load(),
		SplicedBytes:       s.splicedBytes.Load(),
		DatagramsSegmented: s.segmented.Load(),
		BusyPollHits:       s.busyPollHits.Load(),
		Resumed:            s.resumed.Load(),
		Paused:             s.paused.Load(),
		Backends:           s.poolSize.Load(),
		BackendsUp:         s.poolUp.Load(),
	}
	var o ListenerStats
	for i := range s.per {
		s.per[i].snapshot(&o)
		st.Active += o.Active
		st.Accepted += o.Accepted
		st.Refused += o.Refused[RefusedLimit] + o.Refused[RefusedPerSource]
		st.RefusedPerSource += o.Refused[RefusedPerSource]
		for _, n := range o.ConnectFailed {
			st.BackendErrors += n
		}
		st.BytesIn += o.BytesIn
		st.BytesOut += o.BytesOut
		st.Flows += o.Flows
		st.FlowsOpened += o.FlowsOpened
		st.FlowsEvicted += o.FlowsEvicted
		st.DatagramsIn += o.DatagramsIn
		st.DatagramsOut += o.DatagramsOut
		st.DatagramsTruncated += o.Dropped[DropTruncated]
		st.BackendRefused += o.Dropped[DropBackendRefused]
		st.DroppedBufferFull += o.Dropped[DropBufferFull]
		st.DroppedTooBig += o.Dropped[DropTooBig]
		st.DroppedSendError += o.Dropped[DropSendError]
		st.DroppedNoFlow += o.Dropped[DropNoFlow]
		st.DroppedNoAddress += o.Dropped[DropNoAddress]
	}
	st.DatagramsDropped = st.BackendRefused + st.DroppedBufferFull + st.DroppedTooBig + st.DroppedSendError + st.DroppedNoFlow + st.DroppedNoAddress
	return st
}
