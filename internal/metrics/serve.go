// SPDX-License-Identifier: Apache-2.0

package metrics

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"
)

// A scrape is one HTTP/1.x GET, answered and closed: the few lines of
// HTTP a scrape needs are written here rather than by net/http, which
// would double the binary (5.4 MB to 10.1 MB) for a server that answers
// one path. Prometheus opens a new connection when the last one closed.

const (
	// maxScrapes is the most scrapes served at once; past it a client
	// is closed at once: a scraper retries at its next interval.
	maxScrapes = 16
	// requestTimeout bounds the wait for a request: a connection that
	// sends nothing must not hold a place for long (a few silent ones
	// would keep every scraper out).
	requestTimeout = time.Second
	// scrapeTimeout bounds the whole of one scrape, request and answer.
	scrapeTimeout = 10 * time.Second
	// maxRequest bounds the request line and headers.
	maxRequest = 8 << 10
)

// Serve answers scrapes on ln until ctx ends, then closes ln and waits for
// the scrapes in progress. What goes wrong with one scrape (a client that
// goes away, a bad request) is logged at debug level: it concerns no
// proxied client. Out of descriptors, it waits before accepting again.
func Serve(ctx context.Context, ln net.Listener, e *Exporter, log *slog.Logger) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	// A place for a scrape is also its buffer: the answer is written from
	// it, outside the exporter's lock, so that a client slow to read holds
	// back no other scrape; and it is kept for the next one.
	slots := make(chan *[]byte, maxScrapes)
	for range maxScrapes {
		slots <- new([]byte)
	}
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			log.Debug("cannot accept a scrape, waiting", "error", err.Error(), "wait", backoff.String())
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		var buf *[]byte
		select {
		case buf = <-slots:
		default:
			c.Close()
			continue
		}
		wg.Go(func() {
			defer func() { slots <- buf }()
			cut := context.AfterFunc(ctx, func() { c.Close() })
			defer cut()
			defer c.Close()
			if err := e.serveConn(c, buf); err != nil {
				log.Debug("scrape failed", "error", err.Error())
			}
		})
	}
}

// serveConn reads one request and answers it from buf.
func (e *Exporter) serveConn(c net.Conn, buf *[]byte) error {
	c.SetDeadline(time.Now().Add(requestTimeout))
	method, path, err := readRequest(bufio.NewReaderSize(c, maxRequest))
	c.SetDeadline(time.Now().Add(scrapeTimeout))
	if err != nil {
		c.Write([]byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
		return err
	}
	switch {
	case path != "/metrics":
		_, err = c.Write([]byte("HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 19\r\nConnection: close\r\n\r\nnot found: /metrics"))
		return err
	case method != "GET" && method != "HEAD":
		_, err = c.Write([]byte("HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
		return err
	}
	// The header goes in front of the body, in the one buffer: one write.
	const head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nConnection: close\r\nContent-Length: "
	b := append((*buf)[:0], head...)
	b = append(b, "0000000000\r\n\r\n"...) // room for the length
	start := len(b)
	e.mu.Lock()
	b = e.Append(b)
	e.mu.Unlock()
	*buf = b
	var digits [20]byte
	n := strconv.AppendInt(digits[:0], int64(len(b)-start), 10)
	// Right-align the length in its room after the header, then cut the
	// padding by starting the answer later.
	lenAt := len(head)
	pad := 10 - len(n)
	copy(b[lenAt+pad:], n)
	copy(b[pad:], b[:lenAt])
	out := b[pad:]
	if method == "HEAD" {
		out = out[:start-pad]
	}
	_, err = c.Write(out)
	return err
}

// readRequest reads a request line and its headers, at most maxRequest
// bytes, and returns the method and the path without its query.
func readRequest(r *bufio.Reader) (method, path string, err error) {
	total := 0
	first := true
	for {
		line, err := r.ReadSlice('\n')
		total += len(line)
		if err != nil || total > maxRequest {
			if err == nil || errors.Is(err, bufio.ErrBufferFull) {
				err = errors.New("request too long")
			}
			return "", "", err
		}
		line = bytes.TrimRight(line, "\r\n")
		if first {
			first = false
			parts := bytes.Split(line, []byte(" "))
			if len(parts) != 3 || !bytes.HasPrefix(parts[2], []byte("HTTP/1.")) {
				return "", "", errors.New("not an HTTP/1 request line")
			}
			target, _, _ := bytes.Cut(parts[1], []byte("?"))
			method, path = string(parts[0]), string(target)
			continue
		}
		if len(line) == 0 {
			return method, path, nil
		}
	}
}
