// SPDX-License-Identifier: Apache-2.0

// Package metrics serves the proxy's counters in the Prometheus text
// exposition format (version 0.0.4) over HTTP at /metrics, for
// --metrics (serve.go). It reads the engine's own counters from its own goroutine:
// the loop never waits for a scrape, and a scrape allocates nothing once
// its buffers have grown.
package metrics

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/proxy"
)

// Build is what socket_proxyd_build_info says.
type Build struct {
	Version, Commit, GoVersion string
}

// Reloads are the reloads in place of this process, the ones before the
// last exec included (the count is carried across it).
type Reloads struct {
	OK, Failed atomic.Int64
}

// Exporter writes the metrics. Its fields are set before Serve and not
// changed after.
type Exporter struct {
	// Listeners and Stats are the engine's (proxy.Server.ListenerStats
	// and Stats).
	Listeners func([]proxy.ListenerStats) []proxy.ListenerStats
	Stats     func() proxy.Stats
	Reloads   *Reloads
	// Resumed says what Stats.Resumed and Stats.Paused are: a reload in
	// place (true), or a start from systemd's fd store.
	Resumed bool
	Build   Build

	mu sync.Mutex // one Append at a time: they share ls
	ls []proxy.ListenerStats
}

// Append appends every metric to b. It is not safe for concurrent use
// (serveConn holds a lock around it).
func (e *Exporter) Append(b []byte) []byte {
	e.ls = e.Listeners(e.ls[:0])
	st := e.Stats()
	w := writer{b: b}

	w.family("socket_proxyd_connections_accepted_total", "counter", "Connections accepted (stream and sequential-packet listeners), whether or not their backend connection then succeeded.")
	for i := range e.ls {
		if l := &e.ls[i]; l.Kind != activation.Datagram {
			w.sample("socket_proxyd_connections_accepted_total", l, "", "", l.Accepted)
		}
	}
	w.family("socket_proxyd_connections_active", "gauge", "Connections open now.")
	for i := range e.ls {
		if l := &e.ls[i]; l.Kind != activation.Datagram {
			w.sample("socket_proxyd_connections_active", l, "", "", l.Active)
		}
	}
	w.family("socket_proxyd_connections_refused_total", "counter", "Clients closed as soon as accepted: at --connections-max (limit) or --per-source-max (per_source).")
	for i := range e.ls {
		if l := &e.ls[i]; l.Kind != activation.Datagram {
			for r, n := range l.Refused {
				w.sample("socket_proxyd_connections_refused_total", l, "reason", proxy.Refusal(r).String(), n)
			}
		}
	}
	w.family("socket_proxyd_bytes_total", "counter", "Bytes forwarded, connections and datagrams: to_backend from the clients, to_client from the backend.")
	for i := range e.ls {
		l := &e.ls[i]
		w.sample("socket_proxyd_bytes_total", l, "direction", "to_backend", l.BytesIn)
		w.sample("socket_proxyd_bytes_total", l, "direction", "to_client", l.BytesOut)
	}
	w.family("socket_proxyd_backend_connect_failures_total", "counter", "Clients (or datagram flows) that could not reach the backend, by the last attempt's error.")
	for i := range e.ls {
		l := &e.ls[i]
		for r, n := range l.ConnectFailed {
			w.sample("socket_proxyd_backend_connect_failures_total", l, "reason", proxy.ConnectFailure(r).String(), n)
		}
	}
	w.family("socket_proxyd_backend_connect_seconds", "histogram", "Time from accepting a connection to its backend connection being up, retries included.")
	for i := range e.ls {
		if l := &e.ls[i]; l.Kind != activation.Datagram {
			w.histogram("socket_proxyd_backend_connect_seconds", l, &l.ConnectTime)
		}
	}
	if several(e.ls) {
		w.family("socket_proxyd_backend_up", "gauge", "1 while a backend of a listener with several is up, 0 while a failed connect or probe holds it down.")
		w.members(e.ls, "socket_proxyd_backend_up", func(b *proxy.BackendStats) int64 {
			if b.Up {
				return 1
			}
			return 0
		})
		w.family("socket_proxyd_backend_open", "gauge", "Connections and datagram flows on each backend of a listener with several, connecting included.")
		w.members(e.ls, "socket_proxyd_backend_open", func(b *proxy.BackendStats) int64 { return b.Open })
	}
	w.family("socket_proxyd_flows_active", "gauge", "Datagram flows open now.")
	w.datagram(e.ls, "socket_proxyd_flows_active", func(l *proxy.ListenerStats) int64 { return l.Flows })
	w.family("socket_proxyd_flows_opened_total", "counter", "Datagram flows opened.")
	w.datagram(e.ls, "socket_proxyd_flows_opened_total", func(l *proxy.ListenerStats) int64 { return l.FlowsOpened })
	w.family("socket_proxyd_flows_expired_total", "counter", "Datagram flows closed after the flow idle timeout.")
	w.datagram(e.ls, "socket_proxyd_flows_expired_total", func(l *proxy.ListenerStats) int64 { return l.FlowsExpired })
	w.family("socket_proxyd_flows_evicted_total", "counter", "Datagram flows closed to make room for a new client's (--flows-max, --per-source-max).")
	w.datagram(e.ls, "socket_proxyd_flows_evicted_total", func(l *proxy.ListenerStats) int64 { return l.FlowsEvicted })
	w.family("socket_proxyd_datagrams_forwarded_total", "counter", "Datagrams forwarded: to_backend from the clients, to_client from the backend.")
	for i := range e.ls {
		if l := &e.ls[i]; l.Kind == activation.Datagram {
			w.sample("socket_proxyd_datagrams_forwarded_total", l, "direction", "to_backend", l.DatagramsIn)
			w.sample("socket_proxyd_datagrams_forwarded_total", l, "direction", "to_client", l.DatagramsOut)
		}
	}
	w.family("socket_proxyd_datagrams_dropped_total", "counter", "Datagrams not forwarded, by reason.")
	for i := range e.ls {
		if l := &e.ls[i]; l.Kind == activation.Datagram {
			for r, n := range l.Dropped {
				w.sample("socket_proxyd_datagrams_dropped_total", l, "reason", proxy.Drop(r).String(), n)
			}
		}
	}

	w.family("socket_proxyd_reloads_total", "counter", "Reloads in place (SIGHUP): ok, or failed and went on serving.")
	w.plain("socket_proxyd_reloads_total", "result", "ok", e.Reloads.OK.Load())
	w.plain("socket_proxyd_reloads_total", "result", "failed", e.Reloads.Failed.Load())
	var pause, taken int64
	if e.Resumed {
		pause = st.Paused
	} else {
		taken = st.Resumed
	}
	w.family("socket_proxyd_reload_pause_seconds", "gauge", "How long the last reload in place stood the loop still, from the old image's record to the new one's first wait.")
	w.seconds("socket_proxyd_reload_pause_seconds", time.Duration(pause))
	w.family("socket_proxyd_fdstore_connections", "gauge", "Connections in systemd's fd store now (--fdstore=always).")
	w.plain("socket_proxyd_fdstore_connections", "", "", st.Kept)
	w.family("socket_proxyd_fdstore_taken_total", "counter", "Connections and flows taken back from systemd's fd store at start-up.")
	w.plain("socket_proxyd_fdstore_taken_total", "", "", taken)
	w.family("socket_proxyd_pipes", "gauge", "Kernel pipes open now, lent to connections or pooled.")
	w.plain("socket_proxyd_pipes", "", "", st.Pipes)
	w.family("socket_proxyd_spliced_bytes_total", "counter", "Bytes moved by splice from a socket into a pipe, without a copy to user space; those delivered are counted in socket_proxyd_bytes_total, and a connection cut with bytes in its pipe has spliced more than it delivered.")
	w.plain("socket_proxyd_spliced_bytes_total", "", "", st.SplicedBytes)

	open, limit := descriptors()
	w.family("process_open_fds", "gauge", "Number of open file descriptors.")
	w.plain("process_open_fds", "", "", open)
	w.family("process_max_fds", "gauge", "Maximum number of open file descriptors (RLIMIT_NOFILE).")
	w.plain("process_max_fds", "", "", limit)
	w.family("socket_proxyd_build_info", "gauge", "The running build: always 1.")
	w.b = append(w.b, "socket_proxyd_build_info{version="...)
	w.b = appendQuoted(w.b, e.Build.Version)
	w.b = append(w.b, ",commit="...)
	w.b = appendQuoted(w.b, e.Build.Commit)
	w.b = append(w.b, ",goversion="...)
	w.b = appendQuoted(w.b, e.Build.GoVersion)
	w.b = append(w.b, "} 1\n"...)
	return w.b
}

// atFDCWD is AT_FDCWD (-100) as the raw call takes it.
var atFDCWD = func() uintptr { v := unix.AT_FDCWD; return uintptr(v) }()

var procSelfFD = [...]byte{'/', 'p', 'r', 'o', 'c', '/', 's', 'e', 'l', 'f', '/', 'f', 'd', 0}

// descriptors counts this process's open descriptors (from /proc/self/fd,
// without reading the names into memory one by one) and its limit.
func descriptors() (open, limit int64) {
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil {
		limit = int64(rl.Cur)
	}
	// Raw, with the path ready: unix.Open would allocate its copy.
	r, _, e := unix.Syscall6(unix.SYS_OPENAT, atFDCWD, uintptr(unsafe.Pointer(&procSelfFD[0])),
		unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0, 0, 0)
	if e != 0 {
		return -1, limit
	}
	fd := int(r)
	defer unix.Close(fd)
	var buf [8192]byte
	for {
		n, err := unix.Getdents(fd, buf[:])
		if err != nil || n <= 0 {
			break
		}
		for off := 0; off < n; {
			reclen := int(buf[off+16]) | int(buf[off+17])<<8
			name := buf[off+19]
			if name != '.' {
				open++
			}
			off += reclen
		}
	}
	return open - 1, limit // the descriptor reading the directory
}

// writer appends the exposition format.
type writer struct{ b []byte }

func (w *writer) family(name, typ, help string) {
	w.b = append(w.b, "# HELP "...)
	w.b = append(w.b, name...)
	w.b = append(w.b, ' ')
	w.b = append(w.b, help...)
	w.b = append(w.b, "\n# TYPE "...)
	w.b = append(w.b, name...)
	w.b = append(w.b, ' ')
	w.b = append(w.b, typ...)
	w.b = append(w.b, '\n')
}

// sample writes name{listener=...,backend=...[,key=value]} n.
func (w *writer) sample(name string, l *proxy.ListenerStats, key, value string, n int64) {
	w.open(name, l)
	if key != "" {
		w.label(key, value)
	}
	w.b = append(w.b, "} "...)
	w.b = strconv.AppendInt(w.b, n, 10)
	w.b = append(w.b, '\n')
}

// open writes the name and the listener's labels, and leaves the braces
// open for more.
func (w *writer) open(name string, l *proxy.ListenerStats) {
	w.b = append(w.b, name...)
	w.b = append(w.b, "{listener="...)
	w.b = appendQuoted(w.b, l.Listener)
	w.b = append(w.b, ",backend="...)
	w.b = appendQuoted(w.b, l.Backend)
}

// several says some listener has several backends.
func several(ls []proxy.ListenerStats) bool {
	for i := range ls {
		if ls[i].NBackends > 0 {
			return true
		}
	}
	return false
}

// members writes name{listener=...,backend=MEMBER} v for each backend of
// each listener with several.
func (w *writer) members(ls []proxy.ListenerStats, name string, v func(*proxy.BackendStats) int64) {
	for i := range ls {
		l := &ls[i]
		for m := range l.NBackends {
			b := &l.Backends[m]
			w.b = append(w.b, name...)
			w.b = append(w.b, "{listener="...)
			w.b = appendQuoted(w.b, l.Listener)
			w.b = append(w.b, ",backend="...)
			w.b = appendQuoted(w.b, b.Name)
			w.b = append(w.b, "} "...)
			w.b = strconv.AppendInt(w.b, v(b), 10)
			w.b = append(w.b, '\n')
		}
	}
}

func (w *writer) label(key, value string) {
	w.b = append(w.b, ',')
	w.b = append(w.b, key...)
	w.b = append(w.b, '=')
	w.b = appendQuoted(w.b, value)
}

func (w *writer) datagram(ls []proxy.ListenerStats, name string, v func(*proxy.ListenerStats) int64) {
	for i := range ls {
		if l := &ls[i]; l.Kind == activation.Datagram {
			w.sample(name, l, "", "", v(l))
		}
	}
}

func (w *writer) plain(name, key, value string, n int64) {
	w.b = append(w.b, name...)
	if key != "" {
		w.b = append(w.b, '{')
		w.b = append(w.b, key...)
		w.b = append(w.b, '=')
		w.b = appendQuoted(w.b, value)
		w.b = append(w.b, '}')
	}
	w.b = append(w.b, ' ')
	w.b = strconv.AppendInt(w.b, n, 10)
	w.b = append(w.b, '\n')
}

func (w *writer) seconds(name string, d time.Duration) {
	w.b = append(w.b, name...)
	w.b = append(w.b, ' ')
	w.b = strconv.AppendFloat(w.b, d.Seconds(), 'g', -1, 64)
	w.b = append(w.b, '\n')
}

// histogram writes the cumulative buckets, the sum and the count.
func (w *writer) histogram(name string, l *proxy.ListenerStats, h *proxy.Histogram) {
	var cum int64
	for i, n := range h.Counts {
		cum += n
		w.b = append(w.b, name...)
		w.open("_bucket", l)
		w.b = append(w.b, `,le="`...)
		if i < len(proxy.ConnectBuckets) {
			w.b = strconv.AppendFloat(w.b, proxy.ConnectBuckets[i].Seconds(), 'g', -1, 64)
		} else {
			w.b = append(w.b, "+Inf"...)
		}
		w.b = append(w.b, `"} `...)
		w.b = strconv.AppendInt(w.b, cum, 10)
		w.b = append(w.b, '\n')
	}
	w.b = append(w.b, name...)
	w.open("_sum", l)
	w.b = append(w.b, "} "...)
	w.b = strconv.AppendFloat(w.b, h.Sum.Seconds(), 'g', -1, 64)
	w.b = append(w.b, '\n')
	w.b = append(w.b, name...)
	w.open("_count", l)
	w.b = append(w.b, "} "...)
	w.b = strconv.AppendInt(w.b, cum, 10)
	w.b = append(w.b, '\n')
}

// appendQuoted appends a label value in double quotes, with backslash,
// double quote and line feed escaped as the format asks.
func appendQuoted(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			b = append(b, `\\`...)
		case '"':
			b = append(b, `\"`...)
		case '\n':
			b = append(b, `\n`...)
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}
