// SPDX-License-Identifier: Apache-2.0

package handoff

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// fds opens n descriptors (socket pairs) closed at the end of the test.
func fds(t testing.TB, n int) []int {
	t.Helper()
	var out []int
	for len(out) < n {
		p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, p[0], p[1])
	}
	t.Cleanup(func() {
		for _, fd := range out {
			unix.Close(fd)
		}
	})
	return out[:n]
}

// sameNumbers resolves every slot to the number the writer had, after
// checking identity: the reload carrier without the close-on-exec check.
func sameNumbers(_ int, f FD) int {
	if !sameFile(f.Num, f) {
		return -1
	}
	return f.Num
}

func sample(t testing.TB) *Record {
	d := fds(t, 8)
	none := [2]int{-1, -1}
	return &Record{
		Written: 123456789, Epoll: -1, Gen: 77, Totals: []uint64{1, 0, 1 << 60},
		Listeners: []Listener{
			{FD: d[0], Name: "web", Backend: "127.0.0.1:80",
				Backends: []Backend{{Name: "127.0.0.1:80"}, {Name: "[::1]:80", Down: true}, {Name: "@app"}}},
			{FD: d[1], Name: "/run/x.sock", Backend: "/run/backend", Bound: true},
			{FD: fds(t, 1)[0], Name: "dns", Backend: "127.0.0.1:53", Kind: ListenDatagram,
				Backends: []Backend{{Name: "127.0.0.1:53"}, {Name: "127.0.0.2:53"}}},
			{FD: fds(t, 1)[0], Name: "127.0.0.1:9100", Bound: true, Kind: ListenCarried}, // --metrics
		},
		Flows: []Flow{{Listener: 2, FD: fds(t, 1)[0], Gen: 9, Key: []byte{2, 0, 0, 53, 127, 0, 0, 1}, NameLen: 8, Age: 3e9, Idle: 1e9, Backend: 1}},
		Conns: []Conn{{
			Listener: 1, State: Open, FD: [2]int{d[2], d[3]}, Backend: NoBackend,
			Client: netip.MustParseAddrPort("127.0.0.1:4242"), Age: 5e9, Idle: 1e9,
			Gen: [2]uint32{5, 6}, Ready: [2]uint8{Readable | PeerClosed, Writable},
			Dir: [2]Dir{
				{Bytes: 10, Flags: Header, Pipe: none, Mem: []byte("PROXY TCP4 ...\r\n")},
				{Bytes: 1 << 40, Flags: NoSplice, Pipe: [2]int{d[4], d[5]}, InPipe: 65536},
			},
		}, {
			Listener: 0, State: Connecting, FD: [2]int{d[6], -1}, Backend: 1,
			Client: netip.MustParseAddrPort("[::1]:7"), Age: 1,
			Dir: [2]Dir{{Pipe: none}, {Pipe: none}},
		}, {
			Listener: 0, State: Open, FD: [2]int{d[7], fds(t, 1)[0]}, Backend: 2,
			Dir: [2]Dir{{Bytes: 3, Flags: EOF | Shut, Pipe: none}, {Pipe: none}},
		}, kept(t)},
	}
}

// kept is a kept connection (version 3): its pipes go with it empty, even
// after its direction ended.
func kept(t testing.TB) Conn {
	k := fds(t, 6)
	return Conn{Listener: 0, State: Open, Kept: true, FD: [2]int{k[0], k[1]}, Backend: NoBackend,
		Dir: [2]Dir{{Bytes: 7, Flags: EOF | Shut, Pipe: [2]int{k[2], k[3]}}, {Pipe: [2]int{k[4], k[5]}, InPipe: 5}}}
}

func TestRoundTrip(t *testing.T) {
	r := sample(t)
	b, carried, err := Encode(r)
	if err != nil {
		t.Fatal(err)
	}
	if len(carried) != 18 {
		t.Errorf("carried %d descriptors, want 18", len(carried))
	}
	got, unused, err := Decode(b, sameNumbers)
	if err != nil {
		t.Fatal(err)
	}
	if len(unused) != 0 {
		t.Errorf("unused %v", unused)
	}
	if !reflect.DeepEqual(got, r) {
		t.Errorf("decoded\n%+v\nwant\n%+v", got, r)
	}
}

// TestReadsVersion3: a record from the build before several backends (no
// backend lists, no backend per connection or flow) still decodes, every
// connection and flow on NoBackend, so a reload onto this build keeps them.
func TestReadsVersion3(t *testing.T) {
	r := sample(t)
	r.Listeners, r.Totals = r.Listeners[:3], nil // what version 3 had not
	b, _, err := encode(r, 3)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := Decode(b, sameNumbers)
	if err != nil {
		t.Fatal(err)
	}
	for i := range r.Listeners {
		r.Listeners[i].Backends = nil
	}
	for i := range r.Conns {
		r.Conns[i].Backend = NoBackend
	}
	for i := range r.Flows {
		r.Flows[i].Backend = NoBackend
	}
	if !reflect.DeepEqual(got, r) {
		t.Errorf("decoded\n%+v\nwant\n%+v", got, r)
	}
}

// A descriptor that did not arrive decodes as -1, and the caller resets
// what needs it.
func TestMissingDescriptors(t *testing.T) {
	r := sample(t)
	b, _, err := Encode(r)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := Decode(b, func(slot int, f FD) int {
		if f.Num == r.Conns[0].FD[1] {
			return -1
		}
		return sameNumbers(slot, f)
	})
	if err != nil {
		t.Fatal(err)
	}
	if got.Conns[0].FD[1] != -1 || got.Conns[0].FD[0] != r.Conns[0].FD[0] {
		t.Errorf("descriptors %v, want [%d -1]", got.Conns[0].FD, r.Conns[0].FD[0])
	}
}

func TestRejects(t *testing.T) {
	good, _, err := Encode(sample(t))
	if err != nil {
		t.Fatal(err)
	}
	// Without the carried listener, which a version 2 reader refuses first.
	older := sample(t)
	older.Listeners = older.Listeners[:3]
	good3, _, err := encode(older, 3)
	if err != nil {
		t.Fatal(err)
	}
	carried, _, err := Encode(&Record{Written: 1, Epoll: -1,
		Listeners: []Listener{{FD: fds(t, 1)[0], Name: "127.0.0.1:9100", Bound: true, Kind: ListenCarried}}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "not a socket-proxyd handoff record"},
		{"other magic", append([]byte("SPXHOFFX"), good[8:]...), "not a socket-proxyd"},
		{"kept in version 2", resum(append(append(bytes.Clone(good3[:8]), 2, 0), good3[10:]...)), "socket kinds 0x4"},
		{"carried listener in version 3", resum(append(append(bytes.Clone(carried[:8]), 3, 0), carried[10:]...)), "listener kind 3"},
		{"newer version", resum(append(append(bytes.Clone(good[:8]), Version+1, 0), good[10:]...)), fmt.Sprintf("version %d", Version+1)},
		{"truncated", good[:len(good)-10], "checksum"},
		{"flipped byte", func() []byte { b := bytes.Clone(good); b[len(b)/2] ^= 1; return b }(), "checksum"},
		{"huge fd count", func() []byte { b := bytes.Clone(good); binary.LittleEndian.PutUint32(b[20:], 1<<30); return resum(b) }(), "descriptor count"},
		{"trailing bytes", resum(append(bytes.Clone(good[:len(good)-4]), 0, 0, 0, 0, 0, 0, 0, 0)), "after the end"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := Decode(tt.b, sameNumbers)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Decode: %v, want an error with %q", err, tt.want)
			}
		})
	}
}

// Entries that contradict themselves are refused even with a good checksum.
func TestRejectsInconsistentEntries(t *testing.T) {
	d := fds(t, 4)
	none := [2]int{-1, -1}
	open := func(mod func(*Conn)) *Record {
		c := Conn{Listener: 0, State: Open, FD: [2]int{d[1], d[2]}, Dir: [2]Dir{{Pipe: none}, {Pipe: none}}}
		mod(&c)
		return &Record{Epoll: -1, Listeners: []Listener{{FD: d[0], Name: "x"}}, Conns: []Conn{c}}
	}
	tests := []struct {
		name string
		r    *Record
		want string
	}{
		{"listener out of range", open(func(c *Conn) { c.Listener = 1 }), "listener 1 of 1"},
		{"same slot twice", open(func(c *Conn) { c.FD[1] = d[1] }), "received for two slots"},
		{"shut before EOF", open(func(c *Conn) { c.Dir[0].Flags = Shut }), "shut down before"},
		{"both over", open(func(c *Conn) { c.Dir[0].Flags, c.Dir[1].Flags = EOF|Shut, EOF|Shut }), "both directions"},
		{"unknown flag", open(func(c *Conn) { c.Dir[1].Flags = 0x80 }), "unknown flags"},
		{"header outbound", open(func(c *Conn) { c.Dir[1].Flags, c.Dir[1].Mem = Header, []byte("x") }), "PROXY header"},
		{"header with no bytes", open(func(c *Conn) { c.Dir[0].Flags = Header }), "PROXY header"},
		{"connecting with bytes", open(func(c *Conn) { c.State, c.FD[1], c.Dir[0].Bytes = Connecting, -1, 5 }), "traffic before"},
		{"backend while connecting", open(func(c *Conn) { c.State = Connecting }), "backend socket while connecting"},
		{"empty pipe", open(func(c *Conn) { c.Dir[0].Pipe, c.Dir[0].InPipe = [2]int{d[3], fds(t, 1)[0]}, 0 }), "0 bytes in a pipe"},
		{"bad state", open(func(c *Conn) { c.State = 9 }), "state 9"},
		{"kept without pipes", open(func(c *Conn) { c.Kept = true }), "kept without a pipe"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, _, err := Encode(tt.r)
			if err != nil {
				t.Fatal(err)
			}
			_, _, err = Decode(b, func(slot int, f FD) int {
				if tt.name == "same slot twice" {
					return d[1] // two slots resolved to one descriptor
				}
				return sameNumbers(slot, f)
			})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Decode: %v, want an error with %q", err, tt.want)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	good, _, err := Encode(sample(f))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:len(good)/2])
	if old, _, err := encode(sample(f), 3); err == nil {
		f.Add(old)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		// Every slot resolves to a number of its own, never a real
		// descriptor of this process: only the parsing is under test.
		r, unused, err := Decode(b, func(slot int, _ FD) int { return 1<<24 + slot })
		if err != nil {
			return
		}
		seen := map[int]bool{}
		claim := func(fd int) {
			if fd < 0 {
				return
			}
			if seen[fd] {
				t.Fatalf("descriptor %d handed out twice", fd)
			}
			seen[fd] = true
		}
		for _, l := range r.Listeners {
			claim(l.FD)
		}
		for _, c := range r.Conns {
			if c.Listener >= len(r.Listeners) {
				t.Fatalf("listener %d of %d", c.Listener, len(r.Listeners))
			}
			if c.Backend != NoBackend && (c.Backend < 0 || c.Backend >= len(r.Listeners[c.Listener].Backends)) {
				t.Fatalf("backend %d of %d", c.Backend, len(r.Listeners[c.Listener].Backends))
			}
			claim(c.FD[0])
			claim(c.FD[1])
			for _, d := range c.Dir {
				claim(d.Pipe[0])
				claim(d.Pipe[1])
				if len(d.Mem) > MaxMem || d.InPipe > MaxPipe {
					t.Fatalf("unbounded direction %+v", d)
				}
			}
		}
		for _, f := range r.Flows {
			if r.Listeners[f.Listener].Kind != ListenDatagram || len(f.Key) > MaxKey || f.NameLen > len(f.Key) {
				t.Fatalf("flow %+v", f)
			}
			claim(f.FD)
		}
		for _, fd := range unused {
			claim(fd)
		}
	})
}

// A flow must belong to a datagram listener.
func TestRejectsFlowOnStreamListener(t *testing.T) {
	d := fds(t, 2)
	r := &Record{Epoll: -1, Listeners: []Listener{{FD: d[0], Name: "web"}},
		Flows: []Flow{{Listener: 0, FD: d[1], Key: []byte{1, 2}, NameLen: 2}}}
	b, _, err := Encode(r)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := Decode(b, sameNumbers); err == nil || !strings.Contains(err.Error(), "not a datagram listener") {
		t.Errorf("Decode: %v, want a flow on a stream listener refused", err)
	}
}

// resum puts the right checksum on a record a test changed.
func resum(b []byte) []byte {
	b = bytes.Clone(b)
	binary.LittleEndian.PutUint32(b[len(b)-4:], crc32.Checksum(b[:len(b)-4], crc))
	return b
}

// TestEmptySpillRoundTrip: an empty message waiting in memory (a
// sequential-packet connection's, version 4) is a spill of zero bytes, and
// comes back as one, not as nothing; a record of an earlier version with
// such a spill is refused, as that version could not write one.
func TestEmptySpillRoundTrip(t *testing.T) {
	d := fds(t, 3)
	r := &Record{Written: 1, Epoll: -1,
		Listeners: []Listener{{FD: d[0], Name: "pkt", Kind: ListenSequentialPacket}},
		Conns: []Conn{{Listener: 0, State: Open, FD: [2]int{d[1], d[2]},
			Dir: [2]Dir{{Pipe: [2]int{-1, -1}, Mem: []byte{}}, {Pipe: [2]int{-1, -1}}}}},
	}
	b, _, err := Encode(r)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := Decode(b, sameNumbers)
	if err != nil {
		t.Fatal(err)
	}
	if m := got.Conns[0].Dir[0].Mem; m == nil || len(m) != 0 {
		t.Fatalf("the empty spill came back as %#v", m)
	}
	if m := got.Conns[0].Dir[1].Mem; m != nil {
		t.Fatalf("no spill came back as %#v", m)
	}
	old, _, err := encode(r, 3)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := Decode(old, sameNumbers); err == nil || !strings.Contains(err.Error(), "0 bytes in memory") {
		t.Fatalf("a version 3 record with an empty spill: %v; want it refused", err)
	}
}

// TestSpillOfAnyMessageSizeRoundTrips: a sequential-packet message parked
// in memory is as large as its sender's send buffer (twice
// net.core.wmem_max for a sender without privileges, 8 MiB with a 4 MiB
// wmem_max); whatever fits the record comes back, for what Encode writes
// Decode must read, or a reload loses every connection.
func TestSpillOfAnyMessageSizeRoundTrips(t *testing.T) {
	d := fds(t, 3)
	big := bytes.Repeat([]byte("m"), 16<<20)
	r := &Record{Written: 1, Epoll: -1,
		Listeners: []Listener{{FD: d[0], Name: "pkt", Kind: ListenSequentialPacket}},
		Conns: []Conn{{Listener: 0, State: Open, FD: [2]int{d[1], d[2]},
			Dir: [2]Dir{{Pipe: [2]int{-1, -1}, Mem: big}, {Pipe: [2]int{-1, -1}, Mem: big[:1]}}}},
	}
	b, _, err := Encode(r)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := Decode(b, sameNumbers)
	if err != nil {
		t.Fatalf("a record Encode wrote: %v", err)
	}
	if !bytes.Equal(got.Conns[0].Dir[0].Mem, big) || !bytes.Equal(got.Conns[0].Dir[1].Mem, big[:1]) {
		t.Fatal("the spills came back changed")
	}
	r.Conns[0].Dir[1].Mem = make([]byte, MaxSize)
	if _, _, err := Encode(r); err == nil {
		t.Fatal("Encode wrote a record past MaxSize, which Decode refuses")
	}
}
