// SPDX-License-Identifier: Apache-2.0

package metrics

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/proxy"
	"github.com/socket-proxyd/socket-proxyd/internal/testutil"
)

// fixed is an exporter over made-up counters: a stream listener with
// three connect times and a datagram listener whose names need escaping.
func fixed() *Exporter {
	stream := proxy.ListenerStats{Listener: ":8080/tcp", Kind: activation.Stream, Backend: "127.0.0.1:80",
		Accepted: 7, Active: 2, BytesIn: 100, BytesOut: 2000}
	stream.Refused[proxy.RefusedLimit] = 3
	stream.ConnectFailed[proxy.ConnectMissing] = 1
	stream.ConnectTime.Counts[0] = 2 // <= 100us
	stream.ConnectTime.Counts[len(stream.ConnectTime.Counts)-1] = 1
	stream.ConnectTime.Sum = 20 * time.Second
	dgram := proxy.ListenerStats{Listener: "a\"b\\c\nd/udp", Kind: activation.Datagram, Backend: "/run/x.sock",
		Flows: 1, FlowsOpened: 4, FlowsExpired: 2, FlowsEvicted: 1, DatagramsIn: 9, DatagramsOut: 8}
	dgram.Dropped[proxy.DropTruncated] = 5
	pool := proxy.ListenerStats{Listener: "pool/tcp", Kind: activation.Stream, Backend: "/run/app1.sock,/run/app2.sock", NBackends: 2}
	pool.Backends[0] = proxy.BackendStats{Name: "/run/app1.sock", Up: true, Open: 3}
	pool.Backends[1] = proxy.BackendStats{Name: "/run/app2.sock"}
	e := &Exporter{
		Listeners: func(dst []proxy.ListenerStats) []proxy.ListenerStats { return append(dst, stream, dgram, pool) },
		Stats:     func() proxy.Stats { return proxy.Stats{Kept: 3, Paused: int64(1500 * time.Microsecond), Resumed: 6} },
		Reloads:   &Reloads{},
		Resumed:   true,
		Build:     Build{Version: "1.2", Commit: "abc", GoVersion: "go1.26"},
	}
	e.Reloads.OK.Store(2)
	return e
}

// TestExposition: each counter under its listener and backend, label
// values escaped, the histogram cumulative with its sum and count, series
// only where the listener's type has them.
func TestExposition(t *testing.T) {
	out := string(fixed().Append(nil))
	for _, want := range []string{
		`socket_proxyd_connections_accepted_total{listener=":8080/tcp",backend="127.0.0.1:80"} 7`,
		`socket_proxyd_connections_active{listener=":8080/tcp",backend="127.0.0.1:80"} 2`,
		`socket_proxyd_connections_refused_total{listener=":8080/tcp",backend="127.0.0.1:80",reason="limit"} 3`,
		`socket_proxyd_connections_refused_total{listener=":8080/tcp",backend="127.0.0.1:80",reason="per_source"} 0`,
		`socket_proxyd_bytes_total{listener=":8080/tcp",backend="127.0.0.1:80",direction="to_backend"} 100`,
		`socket_proxyd_bytes_total{listener=":8080/tcp",backend="127.0.0.1:80",direction="to_client"} 2000`,
		`socket_proxyd_backend_connect_failures_total{listener=":8080/tcp",backend="127.0.0.1:80",reason="missing"} 1`,
		`socket_proxyd_backend_connect_seconds_bucket{listener=":8080/tcp",backend="127.0.0.1:80",le="0.0001"} 2`,
		`socket_proxyd_backend_connect_seconds_bucket{listener=":8080/tcp",backend="127.0.0.1:80",le="10"} 2`,
		`socket_proxyd_backend_connect_seconds_bucket{listener=":8080/tcp",backend="127.0.0.1:80",le="+Inf"} 3`,
		`socket_proxyd_backend_connect_seconds_sum{listener=":8080/tcp",backend="127.0.0.1:80"} 20`,
		`socket_proxyd_backend_connect_seconds_count{listener=":8080/tcp",backend="127.0.0.1:80"} 3`,
		`socket_proxyd_flows_active{listener="a\"b\\c\nd/udp",backend="/run/x.sock"} 1`,
		`socket_proxyd_flows_opened_total{listener="a\"b\\c\nd/udp",backend="/run/x.sock"} 4`,
		`socket_proxyd_flows_expired_total{listener="a\"b\\c\nd/udp",backend="/run/x.sock"} 2`,
		`socket_proxyd_flows_evicted_total{listener="a\"b\\c\nd/udp",backend="/run/x.sock"} 1`,
		`socket_proxyd_datagrams_forwarded_total{listener="a\"b\\c\nd/udp",backend="/run/x.sock",direction="to_backend"} 9`,
		`socket_proxyd_datagrams_forwarded_total{listener="a\"b\\c\nd/udp",backend="/run/x.sock",direction="to_client"} 8`,
		`socket_proxyd_datagrams_dropped_total{listener="a\"b\\c\nd/udp",backend="/run/x.sock",reason="truncated"} 5`,
		`socket_proxyd_backend_up{listener="pool/tcp",backend="/run/app1.sock"} 1`,
		`socket_proxyd_backend_up{listener="pool/tcp",backend="/run/app2.sock"} 0`,
		`socket_proxyd_backend_open{listener="pool/tcp",backend="/run/app1.sock"} 3`,
		`socket_proxyd_backend_open{listener="pool/tcp",backend="/run/app2.sock"} 0`,
		`socket_proxyd_reloads_total{result="ok"} 2`,
		`socket_proxyd_reloads_total{result="failed"} 0`,
		`socket_proxyd_reload_pause_seconds 0.0015`,
		`socket_proxyd_fdstore_connections 3`,
		`socket_proxyd_fdstore_taken_total 0`, // Resumed: a reload's, not the store's
		`socket_proxyd_build_info{version="1.2",commit="abc",goversion="go1.26"} 1`,
	} {
		if !strings.Contains(out, "\n"+want+"\n") {
			t.Errorf("no line %s in:\n%s", want, out)
		}
	}
	for _, absent := range []string{
		`socket_proxyd_connections_accepted_total{listener="a`,
		`socket_proxyd_flows_active{listener=":8080/tcp"`,
		`socket_proxyd_backend_connect_seconds_bucket{listener="a`,
		`socket_proxyd_backend_up{listener=":8080/tcp"`, // one backend: no health kept
	} {
		if strings.Contains(out, absent) {
			t.Errorf("a series of the wrong listener type: %s", absent)
		}
	}
	if !strings.Contains(out, "\nprocess_open_fds ") || !strings.Contains(out, "\nprocess_max_fds ") {
		t.Errorf("no descriptor counts in:\n%s", out)
	}
}

// TestPromtoolAcceptsTheExposition: Prometheus's own linter reads the
// output without a complaint.
func TestPromtoolAcceptsTheExposition(t *testing.T) {
	promtool := testutil.RequireTool(t, "promtool", "prometheus")
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(string(fixed().Append(nil)))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}

// TestScrapeAllocatesNothing: once its buffers have grown, a scrape
// allocates nothing of its own (net/http's part aside).
func TestScrapeAllocatesNothing(t *testing.T) {
	e := fixed()
	ls := make([]proxy.ListenerStats, 0, 3)
	e.Listeners = func(dst []proxy.ListenerStats) []proxy.ListenerStats {
		return append(dst, ls[:cap(ls)]...)
	}
	b := e.Append(nil)
	if allocs := testing.AllocsPerRun(100, func() { b = e.Append(b[:0]) }); allocs != 0 {
		t.Errorf("%v allocations per scrape, want 0", allocs)
	}
}

// TestServeAnswersAndStops: GET /metrics answers with the format's
// content type and the body's length, again and again; HEAD the header;
// another path is 404, another method 405, garbage 400; and Serve
// returns once ctx ends.
func TestServeAnswersAndStops(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var serveErr error
	wg.Go(func() { serveErr = Serve(ctx, ln, fixed(), slog.New(slog.DiscardHandler)) })
	get := func(path string) (*http.Response, string) {
		resp, err := http.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	for range 3 { // the buffer it keeps, reused
		resp, body := get("/metrics?x=1")
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/plain; version=0.0.4; charset=utf-8" ||
			!strings.HasSuffix(body, "} 1\n") || resp.ContentLength != int64(len(body)) {
			t.Errorf("GET /metrics: %s, %q, %d bytes of %d", resp.Status, resp.Header.Get("Content-Type"), len(body), resp.ContentLength)
		}
	}
	if resp, _ := get("/"); resp.StatusCode != 404 {
		t.Errorf("GET /: %s, want 404", resp.Status)
	}
	resp, err := http.Head("http://" + ln.Addr().String() + "/metrics")
	if err != nil || resp.StatusCode != 200 || resp.ContentLength <= 0 {
		t.Errorf("HEAD /metrics: %v, %v", resp, err)
	}
	resp, err = http.Post("http://"+ln.Addr().String()+"/metrics", "text/plain", strings.NewReader("x"))
	if err != nil || resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST /metrics: %v, %v", resp, err)
	}
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	raw.Write([]byte("garbage\r\n\r\n"))
	if b, _ := io.ReadAll(raw); !strings.HasPrefix(string(b), "HTTP/1.1 400 ") {
		t.Errorf("a bad request answered %q", b)
	}
	raw.Close()
	cancel()
	wg.Wait()
	if serveErr != nil {
		t.Errorf("Serve: %v", serveErr)
	}
}

// TestServeOutlastsSilentClients: connections that never send a request
// hold a place for a second at most, so a few of them cannot keep a
// scraper out; and a request with a long line (a bearer token, a long
// query) is read up to the 8 KiB the server allows, not refused at 1 KiB.
func TestServeOutlastsSilentClients(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { Serve(ctx, ln, fixed(), slog.New(slog.DiscardHandler)) })
	defer func() { cancel(); wg.Wait() }()
	for range maxScrapes {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close() // silent
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + ln.Addr().String() + "/metrics?token=" + strings.Repeat("x", 2000))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("a request with a 2 KiB line: %s", resp.Status)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("silent connections kept the scraper out: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // a scraper's retry; the bound is the deadline above
	}
}

// TestClientThatDoesNotReadHoldsNoOtherScrape: an answer larger than the
// socket's buffer keeps its write waiting while the client does not read
// (up to the scrape's 10 s); another scrape meanwhile is answered at once.
func TestClientThatDoesNotReadHoldsNoOtherScrape(t *testing.T) {
	big := fixed()
	stream := proxy.ListenerStats{Kind: activation.Stream, Backend: "/run/" + strings.Repeat("b", 80) + ".sock"}
	big.Listeners = func(dst []proxy.ListenerStats) []proxy.ListenerStats {
		for i := range 1000 {
			stream.Listener = fmt.Sprintf("listener-%04d/tcp", i)
			dst = append(dst, stream)
		}
		return dst
	}
	if n := len(big.Append(nil)); n < 4<<20 {
		t.Fatalf("the answer is %d bytes: too small to fill a unix socket's buffers", n)
	}
	addr := t.TempDir() + "/m.sock"
	ln, err := net.Listen("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { Serve(ctx, ln, big, slog.New(slog.DiscardHandler)) })
	defer func() { cancel(); wg.Wait() }()

	request := []byte("GET /metrics HTTP/1.1\r\nHost: m\r\n\r\n")
	stuck, err := net.Dial("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	stuck.Write(request)
	// One byte read: its answer is being written, and the rest waits.
	stuck.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := stuck.Read(make([]byte, 1)); err != nil {
		t.Fatalf("no answer began: %v", err)
	}

	other, err := net.Dial("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	other.SetDeadline(time.Now().Add(5 * time.Second))
	other.Write(request)
	b, err := io.ReadAll(other)
	if err != nil || !strings.HasPrefix(string(b), "HTTP/1.1 200 ") || !strings.HasSuffix(string(b), "\n") {
		t.Fatalf("the other scrape got %d bytes (%v) while a client that does not read held its answer", len(b), err)
	}
}
