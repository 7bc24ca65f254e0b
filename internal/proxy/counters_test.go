// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"net"
	"path/filepath"
	"testing"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/backend"
)

// TestCountersByListener: each listener counts its own connections,
// bytes, connect times, flows and datagrams, under its label and its
// backend, and Stats is their sum.
func TestCountersByListener(t *testing.T) {
	tcpBackend := listenBackend(t, "tcp", "127.0.0.1:0", echo)
	udpBackend := udpEcho(t, "udp", "127.0.0.1:0", "pong!")
	udp, err := activation.ListenDatagram("127.0.0.1:0", activation.DefaultSocketMode)
	if err != nil {
		t.Fatal(err)
	}
	tcp, err := activation.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ub, _ := backend.Parse(udpBackend.LocalAddr().String())
	r := startOn(t, tcp, tcpBackend, Config{
		Listeners: []activation.Listener{udp},
		Backends:  map[string][]backend.Address{udp.Label(): {ub}},
	})

	const conns, size = 3, 1000
	for range conns {
		roundTrip(t, r.addr, make([]byte, size))
	}
	c := udpClient(t, "127.0.0.1:0", udp.Addr().String())
	const datagrams = 5
	replied := 0
	for range datagrams {
		reply, _ := exchange(t, c, udp.Addr().String(), []byte("ping"))
		replied += len(reply)
	}
	var got []ListenerStats
	// The counts follow the sends: a client can have its reply a moment
	// before it is counted.
	waitFor(t, "the connections to close and the replies to be counted", func() bool {
		got = r.srv.ListenerStats(got[:0])
		return got[1].Active == 0 && got[0].DatagramsOut == datagrams
	})
	u, s := got[0], got[1]
	if u.Listener != udp.Label() || u.Backend != ub.String() || s.Listener != tcp.Label() || s.Backend != tcpBackend {
		t.Fatalf("labels %q -> %q and %q -> %q, want %q -> %q and %q -> %q",
			u.Listener, u.Backend, s.Listener, s.Backend, udp.Label(), ub.String(), tcp.Label(), tcpBackend)
	}
	if s.Accepted != conns || s.BytesIn != conns*size || s.BytesOut != conns*size || s.ConnectTime.Count() != conns || s.ConnectTime.Sum <= 0 {
		t.Errorf("stream listener: %d accepted, %d bytes in, %d out, %d connect times (sum %v); want %d, %d, %d, %d",
			s.Accepted, s.BytesIn, s.BytesOut, s.ConnectTime.Count(), s.ConnectTime.Sum, conns, conns*size, conns*size, conns)
	}
	if s.FlowsOpened != 0 || s.DatagramsIn != 0 {
		t.Errorf("stream listener counted %d flows, %d datagrams", s.FlowsOpened, s.DatagramsIn)
	}
	if u.Accepted != 0 || u.FlowsOpened != 1 || u.Flows != 1 || u.DatagramsIn != datagrams || u.DatagramsOut != datagrams ||
		u.BytesIn != 4*datagrams || u.BytesOut != int64(replied) {
		t.Errorf("datagram listener: %d accepted, %d flows opened, %d open, %d datagrams in, %d out, %d bytes in, %d out; want 0, 1, 1, %d, %d, %d, %d",
			u.Accepted, u.FlowsOpened, u.Flows, u.DatagramsIn, u.DatagramsOut, u.BytesIn, u.BytesOut, datagrams, datagrams, 4*datagrams, replied)
	}
	st := r.srv.Stats()
	if st.Accepted != conns || st.BytesIn != s.BytesIn+u.BytesIn || st.BytesOut != s.BytesOut+u.BytesOut ||
		st.DatagramsIn != datagrams || st.FlowsOpened != 1 || st.Flows != 1 {
		t.Errorf("Stats %+v is not the sum of %+v and %+v", st, s, u)
	}
}

// TestConnectFailuresByReason: a backend that refuses and a unix socket
// that is not there are told apart, and both are backend errors in Stats.
func TestConnectFailuresByReason(t *testing.T) {
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusing := closed.Addr().String()
	closed.Close()
	for _, tc := range []struct {
		name    string
		backend string
		want    ConnectFailure
	}{
		{"refused", refusing, ConnectRefused},
		{"missing", filepath.Join(shortDir(t), "none.sock"), ConnectMissing},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := start(t, tc.backend, Config{ConnectTimeout: -1})
			c := dial(t, r.addr)
			if _, err := c.Read(make([]byte, 1)); err == nil {
				t.Fatal("the client stayed open")
			}
			got := r.srv.ListenerStats(nil)[0]
			for reason, n := range got.ConnectFailed {
				want := int64(0)
				if ConnectFailure(reason) == tc.want {
					want = 1
				}
				if n != want {
					t.Errorf("%d failures counted %s, want %d", n, ConnectFailure(reason), want)
				}
			}
			if st := r.srv.Stats(); st.BackendErrors != 1 {
				t.Errorf("Stats: %d backend errors, want 1", st.BackendErrors)
			}
		})
	}
}

// TestListenerStatsAllocateNothing: a scrape reads the counters into a
// slice it keeps, allocating nothing.
func TestListenerStatsAllocateNothing(t *testing.T) {
	tcp, err := activation.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := start(t, listenBackend(t, "tcp", "127.0.0.1:0", echo), Config{Listeners: []activation.Listener{tcp}})
	buf := r.srv.ListenerStats(nil)
	if allocs := testing.AllocsPerRun(100, func() { buf = r.srv.ListenerStats(buf[:0]) }); allocs != 0 {
		t.Errorf("%v allocations per snapshot, want 0", allocs)
	}
	if allocs := testing.AllocsPerRun(100, func() { r.srv.Stats() }); allocs != 0 {
		t.Errorf("%v allocations per Stats, want 0", allocs)
	}
}

// TestListenerLabelsAreUnique: sockets of one unit share its name unless
// FileDescriptorName= says otherwise, so two TCP sockets are both
// "web/tcp"; the second gets its address after the label, so that the
// metrics never hold two series with one set of labels.
func TestListenerLabelsAreUnique(t *testing.T) {
	var lns []activation.Listener
	for range 2 {
		ln, err := activation.Listen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		ln.Name = "web"
		lns = append(lns, ln)
	}
	b, _ := backend.Parse("127.0.0.1:9")
	s := New(Config{Listeners: lns, Backend: []backend.Address{b}})
	stats := s.ListenerStats(nil)
	if stats[0].Listener != "web/tcp" || stats[1].Listener != "web/tcp@"+lns[1].Addr().String() {
		t.Fatalf("labels %q and %q, want web/tcp and web/tcp@%s", stats[0].Listener, stats[1].Listener, lns[1].Addr())
	}
}
