// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/proxyproto"
)

// TestSegmentsPack: runs of equal-size datagrams to one destination (the
// last may be shorter) become one UDP_SEGMENT message each, within the
// bound of one UDP datagram's payload; anything else stays as it is.
func TestSegmentsPack(t *testing.T) {
	data := make([]byte, 32*4000)
	names := [2]byte{}
	plain := func(dest []*byte, sizes ...int) []unix.Mmsghdr {
		msgs := make([]unix.Mmsghdr, len(sizes))
		iov := make([]unix.Iovec, len(sizes))
		for k, n := range sizes {
			iov[k] = unix.Iovec{Base: &data[k*4000]}
			iov[k].SetLen(n)
			msgs[k].Hdr.Iov = &iov[k]
			msgs[k].Hdr.SetIovlen(1)
			msgs[k].Hdr.Name, msgs[k].Hdr.Namelen = dest[k], 1
			msgs[k].Len = uint32(n)
		}
		return msgs
	}
	same := func(n int) []*byte {
		d := make([]*byte, n)
		for k := range d {
			d[k] = &names[0]
		}
		return d
	}
	// segs says, per packed message, how many plain ones it holds and its
	// segment size (0: not segmented), and checks that its iovecs are
	// theirs, in order.
	segs := func(t *testing.T, g *segments, plain, msgs []unix.Mmsghdr) (got [][2]int) {
		for j := range msgs {
			size, n := 0, g.from[j+1]-g.from[j]
			if msgs[j].Hdr.Controllen > 0 {
				c := unsafe.Slice(msgs[j].Hdr.Control, msgs[j].Hdr.Controllen)
				size = int(binary.NativeEndian.Uint16(c[unix.CmsgLen(0):]))
			}
			iov := unsafe.Slice(msgs[j].Hdr.Iov, msgs[j].Hdr.Iovlen)
			if len(iov) != n {
				t.Fatalf("message %d has %d iovecs for %d datagrams", j, len(iov), n)
			}
			for k := range iov {
				if p := plain[g.from[j]+k].Hdr.Iov; iov[k] != *p {
					t.Fatalf("message %d, iovec %d: %v, want the datagram's %v", j, k, iov[k], *p)
				}
			}
			got = append(got, [2]int{n, size})
		}
		return got
	}
	sizes := func(n int, each ...int) []int {
		s := make([]int, 0, n)
		for len(s) < n {
			s = append(s, each...)
		}
		return s[:n]
	}
	runs := func(n int, run [2]int) [][2]int {
		r := make([][2]int, n)
		for k := range r {
			r[k] = run
		}
		return r
	}
	tests := []struct {
		name  string
		dest  []*byte
		sizes []int
		want  [][2]int // per message: plain datagrams in it, segment size (0: not segmented)
	}{
		{"one run, a short last", same(4), []int{1400, 1400, 1400, 700}, [][2]int{{4, 1400}}},
		{"a short one ends a run", same(6), []int{1400, 1400, 700, 1400, 1400, 1400}, [][2]int{{3, 1400}, {3, 1400}}},
		{"a longer one starts a run", same(3), []int{700, 1400, 1400}, [][2]int{{1, 0}, {2, 1400}}},
		{"alone", same(1), []int{1400}, [][2]int{{1, 0}}},
		{"empty datagrams are not segments", same(3), []int{0, 0, 0}, [][2]int{{1, 0}, {1, 0}, {1, 0}}},
		{"two destinations", []*byte{&names[0], &names[0], &names[1], &names[1]}, []int{1400, 1400, 1400, 1400}, [][2]int{{2, 1400}, {2, 1400}}},
		{"at most one datagram's payload", same(32), sizes(32, 4000), [][2]int{{16, 4000}, {16, 4000}}},
		{"exactly one datagram's payload", same(2), []int{65000, 507}, [][2]int{{2, 65000}}},
		{"a longer one alone", same(2), []int{700, 1400}, [][2]int{{1, 0}, {1, 0}}},
		{"many short runs", same(32), sizes(32, 1400, 700), runs(16, [2]int{2, 1400})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var g segments
			msgs := plain(tt.dest, tt.sizes...)
			got := segs(t, &g, msgs, g.pack(msgs))
			if len(got) != len(tt.want) {
				t.Fatalf("packed into %v, want %v", got, tt.want)
			}
			for j := range got {
				if got[j] != tt.want[j] {
					t.Fatalf("packed into %v, want %v", got, tt.want)
				}
			}
		})
	}
}

// TestSegmentedDatagrams: bursts of 1400-byte datagrams through the proxy
// go as UDP_SEGMENT messages both ways (Stats), and every datagram arrives
// whole, with its own boundaries, in order. On a wildcard listener the
// replies still leave from the address the client sent to (127.0.0.2): the
// client's socket is connected to it and takes nothing from elsewhere.
func TestSegmentedDatagrams(t *testing.T) {
	for _, tt := range []struct{ listen, dial string }{{"127.0.0.1:0", "127.0.0.1"}, {"0.0.0.0:0", "127.0.0.2"}} {
		t.Run(tt.listen, func(t *testing.T) { segmentedBursts(t, tt.listen, tt.dial) })
	}
}

func segmentedBursts(t *testing.T, listen, dial string) {
	be := udpEcho(t, "udp", "127.0.0.1:0", "")
	r := startDgram(t, listen, be.LocalAddr().String(), Config{})
	_, port, _ := net.SplitHostPort(r.addr)
	to, err := net.ResolveUDPAddr("udp", net.JoinHostPort(dial, port))
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialUDP("udp", nil, to) // connected: one sendmmsg burst below
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	const burst, size = 16, 1400
	data := make([]byte, burst*size)
	msgs := make([]unix.Mmsghdr, burst)
	iov := make([]unix.Iovec, burst)
	got := make([]byte, 2*size)
	seq := uint32(0)
	for round := 0; round < 50 && r.srv.Stats().DatagramsSegmented == 0; round++ {
		for k := range burst {
			binary.BigEndian.PutUint32(data[k*size:], seq+uint32(k))
			iov[k] = unix.Iovec{Base: &data[k*size]}
			iov[k].SetLen(size)
			msgs[k].Hdr.Iov = &iov[k]
			msgs[k].Hdr.SetIovlen(1)
		}
		raw.Write(func(fd uintptr) bool {
			n, e := rawMmsg(unix.SYS_SENDMMSG, int(fd), msgs)
			if e != 0 || n != burst {
				t.Fatalf("sendmmsg: %d of %d, %v", n, burst, e)
			}
			return true
		})
		for k := range burst {
			n, err := c.Read(got)
			if err != nil {
				t.Fatalf("round %d, reply %d: %v", round, k, err)
			}
			if n != size || binary.BigEndian.Uint32(got) != seq+uint32(k) {
				t.Fatalf("round %d: reply %d is %d bytes numbered %d, want %d bytes numbered %d", round, k, n, binary.BigEndian.Uint32(got), size, seq+uint32(k))
			}
		}
		seq += burst
	}
	// A datagram is counted once its send returned: the client may have
	// read it first.
	waitFor(t, "every datagram counted", func() bool {
		st := r.srv.Stats()
		return st.DatagramsIn == int64(seq) && st.DatagramsOut == int64(seq)
	})
	if st := r.srv.Stats(); st.DatagramsSegmented == 0 || st.DatagramsIn != int64(seq) || st.DatagramsOut != int64(seq) {
		t.Errorf("%d datagrams each way: %d in, %d out, %d of them as segments; want all, and some segmented", seq, st.DatagramsIn, st.DatagramsOut, st.DatagramsSegmented)
	}
}

// TestSendDatagramsFallsBack: sendDatagrams counts what went as segments
// (runs only, each datagram of a run once), and where the kernel refuses
// UDP_SEGMENT (here: a socket without UDP checksums, SO_NO_CHECK, which
// the kernel will not segment for) it sends the same datagrams one by one,
// and from then on only so.
func TestSendDatagramsFallsBack(t *testing.T) {
	rc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	rc.SetDeadline(time.Now().Add(10 * time.Second))
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	to := rc.LocalAddr().(*net.UDPAddr)
	if err := unix.Connect(fd, &unix.SockaddrInet4{Port: to.Port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sizes := []int{700, 1400, 1400, 700, 1400, 1400}
	data := make([]byte, len(sizes)*1400)
	msgs := make([]unix.Mmsghdr, len(sizes))
	iov := make([]unix.Iovec, len(sizes))
	want := 0
	for k, n := range sizes {
		data[k*1400] = byte(k)
		iov[k] = unix.Iovec{Base: &data[k*1400]}
		iov[k].SetLen(n)
		msgs[k].Hdr.Iov = &iov[k]
		msgs[k].Hdr.SetIovlen(1)
		msgs[k].Len = uint32(n)
		want += n
	}
	l := &loop{s: New(Config{})}
	receive := func(what string) {
		t.Helper()
		buf := make([]byte, 2000)
		for k, n := range sizes {
			got, err := rc.Read(buf)
			if err != nil || got != n || buf[0] != byte(k) {
				t.Fatalf("%s: datagram %d is %d bytes numbered %d (%v), want %d bytes numbered %d", what, k, got, buf[0], err, n, k)
			}
		}
	}
	sent, bytes, e := l.sendDatagrams(fd, msgs, true)
	if sent != len(sizes) || bytes != int64(want) || e != 0 || l.s.segmented.Load() != 5 || l.flows.noSegments {
		t.Fatalf("sent %d datagrams, %d bytes, %v; %d as segments; want %d, %d, none; 5 (two runs: 3 and 2)",
			sent, bytes, e, l.s.segmented.Load(), len(sizes), want)
	}
	receive("segmented")
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_NO_CHECK, 1); err != nil {
		t.Fatal(err)
	}
	// As sendFlow and flushReplies do: sendmmsg reports the error of a
	// message only when it is the first of the call.
	sent, bytes, e = 0, 0, 0
	for try := 0; try < 3 && sent < len(msgs) && e == 0; try++ {
		n, b, err := l.sendDatagrams(fd, msgs[sent:], true)
		sent, bytes, e = sent+n, bytes+b, err
	}
	if sent != len(sizes) || bytes != int64(want) || e != 0 || l.s.segmented.Load() != 5 || !l.flows.noSegments {
		t.Fatalf("with the kernel refusing: sent %d datagrams, %d bytes, %v; %d as segments, one by one from now on: %v; want %d, %d, none; still 5, true",
			sent, bytes, e, l.s.segmented.Load(), l.flows.noSegments, len(sizes), want)
	}
	receive("one by one")
}

// TestBurstWithHeaderNotSegmented: with a PROXY v2 header each datagram
// needs its own, so a burst of one flow goes datagram by datagram, each
// with its header (gso.go is not for it: sendFlow's "f.hdr == nil").
func TestBurstWithHeaderNotSegmented(t *testing.T) {
	be, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	be.SetDeadline(time.Now().Add(10 * time.Second))
	r := startDgram(t, "127.0.0.1:0", be.LocalAddr().String(), Config{ProxyProtocol: proxyproto.V2})
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(r.addr)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	const burst, size = 8, 1400
	data := make([]byte, burst*size)
	msgs := make([]unix.Mmsghdr, burst)
	iov := make([]unix.Iovec, burst)
	for k := range burst {
		iov[k] = unix.Iovec{Base: &data[k*size]}
		iov[k].SetLen(size)
		msgs[k].Hdr.Iov = &iov[k]
		msgs[k].Hdr.SetIovlen(1)
	}
	raw.Write(func(fd uintptr) bool {
		if n, e := rawMmsg(unix.SYS_SENDMMSG, int(fd), msgs); e != 0 || n != burst {
			t.Fatalf("sendmmsg: %d of %d, %v", n, burst, e)
		}
		return true
	})
	buf := make([]byte, 4000)
	for k := range burst {
		n, err := be.Read(buf)
		if err != nil || n <= size || !bytes.HasPrefix(buf[:n], []byte("\r\n\r\n\x00\r\nQUIT\n")) {
			t.Fatalf("datagram %d at the backend: %d bytes, %v; want a PROXY v2 header and %d bytes", k, n, err, size)
		}
	}
}
