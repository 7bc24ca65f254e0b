package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// connection is one client and its backend connection.
type connection struct {
	client, backend net.Conn
	abortOnce       sync.Once
}

// closeWriter is the half-close both *net.TCPConn and *net.UnixConn have.
type closeWriter interface{ CloseWrite() error }

var (
	_ closeWriter = (*net.TCPConn)(nil)
	_ closeWriter = (*net.UnixConn)(nil)
)

// serve is what happens to one client: connect to the backend, forward both
// ways until both directions have ended, close, and log one line.
func (s *Server) serve(ctx context.Context, client net.Conn, listener string) {
	start := time.Now()
	backendConn, err := s.cfg.Dialer.Dial(ctx, s.cfg.Backend)
	if err != nil {
		client.Close()
		if ctx.Err() == nil {
			s.backendErrors.Add(1)
			s.log.Warn("cannot connect to backend, closing client",
				"client", client.RemoteAddr().String(), "backend", s.cfg.Backend.String(), "error", err.Error())
		}
		return
	}
	c := &connection{client: client, backend: backendConn}
	if !s.track(c) {
		c.abort()
		return
	}
	defer s.untrack(c)

	var (
		wg    sync.WaitGroup
		in    int64
		inErr error
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		in, inErr = c.clientToBackend()
	}()
	out, outErr := c.backendToClient()
	wg.Wait()
	client.Close()
	backendConn.Close()

	s.bytesIn.Add(in)
	s.bytesOut.Add(out)
	attrs := []any{"client", client.RemoteAddr().String(), "listener", listener, "backend", s.cfg.Backend.String(),
		"bytes_in", in, "bytes_out", out, "duration", time.Since(start).Round(time.Millisecond).String()}
	if err := errors.Join(inErr, outErr); err != nil && ctx.Err() == nil {
		s.log.Debug("connection aborted", append(attrs, "error", err.Error())...)
		return
	}
	s.log.Debug("connection closed", attrs...)
}

// clientToBackend and backendToClient are named so that a goroutine dump
// says which way a stuck copy goes.
func (c *connection) clientToBackend() (int64, error) { return c.forward(c.backend, c.client) }
func (c *connection) backendToClient() (int64, error) { return c.forward(c.client, c.backend) }

// forward copies src to dst until src ends. io.Copy is handed the concrete
// *net.TCPConn and *net.UnixConn, never a wrapper, so that the kernel
// splices TCP->TCP, unix->TCP and TCP->unix without copying to userspace.
// On EOF it shuts down writing towards dst and leaves the other direction
// running: a client that sends its request and then shutdown(SHUT_WR) still
// gets its reply (the original tears the whole connection down here). Any
// other error aborts both sides, so the peer learns of it promptly.
func (c *connection) forward(dst, src net.Conn) (int64, error) {
	n, err := io.Copy(dst, src)
	if err != nil {
		c.abort()
		if errors.Is(err, net.ErrClosed) {
			err = nil // we closed it: the other direction failed, or shutdown
		}
		return n, err
	}
	if cw, ok := dst.(closeWriter); ok {
		cw.CloseWrite()
	}
	return n, nil
}

// abort closes both sides at once, with a reset on TCP so that the peer of a
// failed connection does not mistake the end for a clean EOF.
func (c *connection) abort() {
	c.abortOnce.Do(func() {
		for _, conn := range []net.Conn{c.client, c.backend} {
			if tcp, ok := conn.(*net.TCPConn); ok {
				tcp.SetLinger(0)
			}
			conn.Close()
		}
	})
}

// ensure io.Copy's fast paths stay reachable: both concrete types must keep
// implementing io.ReaderFrom / io.WriterTo.
var (
	_ io.ReaderFrom = (*net.TCPConn)(nil)
	_ io.WriterTo   = (*net.TCPConn)(nil)
)
