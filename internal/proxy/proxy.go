// Package proxy is the forwarding engine: it accepts clients on the
// listeners, holds the connection limit, connects each client to the
// backend and forwards bytes both ways until both sides are done, and exits
// when idle. Everything about how bytes move stays inside this package.
package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/backend"
)

// DefaultMaxConnections is systemd-socket-proxyd's default for -c.
const DefaultMaxConnections = 256

// refusedWarningInterval rate-limits the "connection limit reached" warning
// so that a flood of clients cannot fill the journal.
const refusedWarningInterval = 10 * time.Second

// Config is what the proxy serves. The zero value of each optional field
// means its default.
type Config struct {
	// Listeners are served until Run returns, which closes them.
	Listeners []activation.Listener
	// Backend is where every client is forwarded.
	Backend backend.Address
	// Dialer connects to the backend.
	Dialer backend.Dialer
	// MaxConnections is the most clients proxied at once; zero means
	// DefaultMaxConnections. Client MaxConnections+1 is accepted and closed.
	MaxConnections int
	// ExitIdleTime ends Run after this long without a connection, counted
	// from start-up too; zero or negative means never.
	ExitIdleTime time.Duration
	// Log receives one line per event; nil discards.
	Log *slog.Logger
}

// Stats are running totals, safe to read while the proxy runs.
type Stats struct {
	Active        int64 // connections open now
	Accepted      int64 // connections proxied since start
	Refused       int64 // clients closed because the limit was reached
	BackendErrors int64 // clients closed because the backend could not be reached
	BytesIn       int64 // client to backend, counted when a connection ends
	BytesOut      int64 // backend to client, counted when a connection ends
}

// Server is one running proxy.
type Server struct {
	cfg Config
	log *slog.Logger

	mu          sync.Mutex
	active      int
	conns       map[*connection]struct{}
	idleTimer   *time.Timer
	idleGen     uint64 // bumped whenever a connection opens; stale timers see it
	idleExpired chan struct{}
	lastWarning time.Time
	unwarned    int // refused since the last warning

	accepted, refused, backendErrors, bytesIn, bytesOut atomic.Int64
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
	return &Server{cfg: cfg, log: log, conns: make(map[*connection]struct{}), idleExpired: make(chan struct{})}
}

// Run serves until ctx ends or the proxy has been idle for ExitIdleTime,
// then closes the listeners and every connection and returns nil.
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	s.mu.Lock()
	s.armIdleTimer()
	s.mu.Unlock()
	for _, l := range s.cfg.Listeners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.acceptLoop(ctx, l, &wg)
		}()
	}
	select {
	case <-ctx.Done():
	case <-s.idleExpired:
		s.log.Info("exiting after being idle", "exit_idle_time", s.cfg.ExitIdleTime.String())
	}
	cancel()
	activation.Close(s.cfg.Listeners)
	s.closeAll()
	wg.Wait()
	return nil
}

// Stats returns the running totals.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	active := s.active
	s.mu.Unlock()
	return Stats{
		Active:        int64(active),
		Accepted:      s.accepted.Load(),
		Refused:       s.refused.Load(),
		BackendErrors: s.backendErrors.Load(),
		BytesIn:       s.bytesIn.Load(),
		BytesOut:      s.bytesOut.Load(),
	}
}

// acceptLoop accepts on one listener until it is closed. Unlike a loop that
// stops at the first error, it backs off and retries on EMFILE and the like,
// so running out of descriptors pauses the proxy instead of ending it.
func (s *Server) acceptLoop(ctx context.Context, l activation.Listener, wg *sync.WaitGroup) {
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			if backoff == 0 {
				backoff = 5 * time.Millisecond
				s.log.Warn("cannot accept, pausing", "listener", l.Name, "error", err)
			} else if backoff = 2 * backoff; backoff > time.Second {
				backoff = time.Second
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		if !s.admit() {
			c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer s.release()
			s.serve(ctx, c, l.Name)
		}()
	}
}

// admit counts a new client in, or refuses it when the limit is reached:
// at most exactly MaxConnections (the original's check admits one more).
func (s *Server) admit() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active >= s.cfg.MaxConnections {
		s.refused.Add(1)
		s.unwarned++
		if now := time.Now(); now.Sub(s.lastWarning) >= refusedWarningInterval {
			s.log.Warn("connection limit reached, refusing clients", "max", s.cfg.MaxConnections, "refused", s.unwarned)
			s.lastWarning, s.unwarned = now, 0
		}
		return false
	}
	s.active++
	s.accepted.Add(1)
	s.idleGen++
	if s.idleTimer != nil {
		s.idleTimer.Stop()
	}
	return true
}

func (s *Server) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.active--
	s.armIdleTimer()
}

// armIdleTimer starts the idle countdown when no connection is open. The
// original arms it only when a connection closes, so a proxy whose first
// client never came, or came and went before it started, never exits.
// Called with s.mu held.
func (s *Server) armIdleTimer() {
	if s.active > 0 || s.cfg.ExitIdleTime <= 0 {
		return
	}
	gen := s.idleGen
	fire := func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.active == 0 && s.idleGen == gen {
			select {
			case <-s.idleExpired:
			default:
				close(s.idleExpired)
			}
		}
	}
	if s.idleTimer != nil {
		s.idleTimer.Stop()
	}
	s.idleTimer = time.AfterFunc(s.cfg.ExitIdleTime, fire)
}

func (s *Server) track(c *connection) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns == nil {
		return false // shutting down
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c *connection) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
}

// closeAll ends every open connection; connections set up later see a nil
// map and close themselves.
func (s *Server) closeAll() {
	s.mu.Lock()
	conns := s.conns
	s.conns = nil
	if s.idleTimer != nil {
		s.idleTimer.Stop()
	}
	s.mu.Unlock()
	for c := range conns {
		c.abort()
	}
}
