// SPDX-License-Identifier: Apache-2.0

// Package handoff is the record a running proxy hands to its next self so
// that no connection is cut: which descriptors it carries, the listeners,
// and for each connection its sockets, the bytes in flight and its clocks.
// The engine fills and reads it; nothing else knows its format.
//
// The record is data from outside like any other: Decode checks its
// length, version, checksum and every count and index, and every
// descriptor it names against what the carrier actually received.
package handoff

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Version is the newest record version this build writes and reads. A
// reader takes every version from 1 up to its own; a new entry kind (a
// datagram flow, say) bumps it, so that an older build refuses the record
// in the check before exec (--check-handoff) instead of misreading it.
// Version 4 adds a listener's backends and which one each connection and
// flow is on, the engine's running totals (Totals), listeners of kind
// ListenCarried, and memory spills of zero bytes (an empty message of a
// sequential-packet connection, waiting to be sent).
const Version = 4

// Bounds: a record past them is refused, whatever it says.
const (
	MaxSize      = 64 << 20 // bytes in a whole record
	MaxFDs       = 1 << 20  // descriptors carried
	MaxListeners = 4096
	MaxName      = 4096    // bytes in a listener name or backend
	MaxMem       = MaxSize // bytes of one direction's memory spill: a parked message, as large as its sender's send buffer
	MaxPipe      = 1 << 30 // bytes said to wait in one kernel pipe
	MaxBackends  = 254     // backends of one listener; 255 is NoBackend
)

// NoBackend is Conn.Backend and Flow.Backend when the writer did not say
// (a record before version 4) or knew none.
const NoBackend = -1

// Record is the state handed over. Descriptors in it are numbers in the
// process that holds the Record: Encode turns them into slots of a
// descriptor table, Decode back into the numbers the carrier received.
type Record struct {
	// Written is CLOCK_MONOTONIC (ns) when the record was made; ages and
	// idle times are counted back from it, and the reader adds the time
	// the handoff itself took.
	Written   int64
	Listeners []Listener
	Conns     []Conn
	Flows     []Flow
	// Epoll is the writer's epoll instance, carried by a reload in place
	// (the descriptors keep their numbers, so its registrations stay
	// valid, edges not yet read included); -1 when not carried. Gen is the
	// last registration generation handed out, and Conn.Gen each side's.
	Epoll int
	Gen   uint32
	// ByNumber says the carrier keeps descriptor numbers (exec): the table
	// then holds numbers only, and the reader checks each is open and was
	// passed on purpose (not close-on-exec), which costs a fraction of an
	// fstat per descriptor while the loop stands still. Otherwise (the fd
	// store) each is recorded with its identity.
	ByNumber bool
	// Totals are the engine's running totals (connections accepted,
	// bytes, datagrams dropped by reason...), in the engine's own order,
	// so that the counts a reload or a restart carries on from are the
	// process's since its start (version 4). A reader takes the ones it
	// knows, the first ones; a writer only ever appends new ones.
	Totals []uint64
}

// MaxTotals bounds Record.Totals.
const MaxTotals = 1024

// Listener is one listening socket.
type Listener struct {
	FD      int    // -1: not carried (the fd store: systemd passes a socket unit's own again)
	Name    string // activation name: FileDescriptorName= or the --listen address
	Backend string // where it forwarded to, for messages; the reader uses its own configuration
	Bound   bool   // bound by --listen (a unix path is the proxy's to unlink), not inherited
	Kind    uint8  // ListenStream, ListenDatagram or ListenSequentialPacket (version 2); ListenCarried (version 4)
	// Backends are the backends it shared its clients among, in order
	// (version 4): Conn.Backend and Flow.Backend index them. The reader
	// matches them to its own by Name, so a reload that changes the list
	// keeps every connection on the backend it is on.
	Backends []Backend
}

// Backend is one backend of a listener (version 4).
type Backend struct {
	Name string // the address as the proxy prints it
	Down bool   // its last connect failed, or its health check says so
}

// Listener kinds: a datagram listener has flows, the others connections.
const (
	ListenStream uint8 = iota
	ListenDatagram
	ListenSequentialPacket
	// ListenCarried is a listening socket the engine does not serve but
	// carries for the program (the --metrics socket), so that it stays
	// open across a reload as the served ones do. No entry refers to it.
	ListenCarried
)

// Flow is one client of a datagram listener (version 2): its connected
// socket to the backend, and the key the listener finds it by.
type Flow struct {
	Listener int // index into Record.Listeners, a datagram one
	FD       int // the connected backend socket
	Gen      uint32
	// Key is the client's raw sockaddr (its first NameLen bytes), then,
	// on a wildcard listener, the 16-byte local address it sent to.
	Key     []byte
	NameLen int
	Age     int64 // ns since the first datagram, at Written
	Idle    int64 // ns since the last datagram either way, at Written
	// Backend indexes the listener's Backends: the one the flow stays on
	// (version 4); NoBackend: not said.
	Backend int
}

// MaxKey bounds Flow.Key: a sockaddr_storage and an IPv6 address.
const MaxKey = 128 + 16

// Conn states: an open connection carries both sockets; one still
// resolving, connecting or waiting for a retry carries only its client and
// is started connecting again by the reader (its deadline still counts
// from Age).
const (
	Open uint8 = iota + 1
	Connecting
)

// Conn is one client connection.
type Conn struct {
	Listener int // index into Record.Listeners
	State    uint8
	FD       [2]int  // client, backend (-1 while Connecting)
	TCP      [2]bool // each side is a TCP socket (else unix): its identity, checked by the Resolver, vouches for it
	Client   netip.AddrPort
	Age      int64 // ns since accept, at Written
	Idle     int64 // ns without traffic, at Written (a lower bound)
	Dir      [2]Dir
	// Gen is each side's registration generation in Record.Epoll, and
	// Ready what each side was known ready for (Readable...): edges the
	// writer consumed are not reported again by a carried epoll.
	Gen   [2]uint32
	Ready [2]uint8
	// Kept says the connection is in systemd's fd store under its own
	// name (KeepName) since it opened (--fdstore=always, version 3): both
	// directions then have a kernel pipe of their own, empty or not, and
	// it stays in the store until it closes.
	Kept bool
	// Backend indexes the listener's Backends: the one the connection is
	// on, or was trying (version 4); NoBackend: not said.
	Backend int
}

// Readiness bits of Conn.Ready.
const (
	Readable uint8 = 1 << iota
	Writable
	PeerClosed
	Urgent
	allReady = Readable | Writable | PeerClosed | Urgent
)

// Dir is one direction: client->backend (0), backend->client (1).
type Dir struct {
	Bytes int64 // delivered so far
	Flags uint8
	// Pipe is a kernel pipe holding InPipe bytes not yet written; -1
	// when there is none. Mem holds a memory spill instead: non-nil, even
	// empty, when there is one.
	Pipe   [2]int
	InPipe int
	Mem    []byte
}

// Direction flags.
const (
	EOF        uint8 = 1 << iota // the source ended
	Shut                         // the destination was shut down for writing
	NoSplice                     // the kernel refused splice for this pair
	Header                       // Mem (or the pipe) holds the PROXY header, not client bytes
	FDsDropped                   // descriptors sent over it were dropped (logged once)
	allFlags   = EOF | Shut | NoSplice | Header | FDsDropped
)

// FD is one descriptor as the writer saw it: its number there, and the
// file it is (device and inode), so that a reader can match what it got
// by identity, whatever number or order the carrier gave it.
type FD struct {
	Num      int
	Dev, Ino uint64
	// Access is a pipe end's O_ACCMODE (O_RDONLY, O_WRONLY): both ends of
	// a pipe are one inode. Zero for anything else.
	Access uint8
}

// Entry kinds. A datagram flow will be kind 4.
const (
	kindListener uint8 = iota + 1
	kindConn
	kindEnd
	kindLoop
	kindFlow   // version 2
	kindTotals // version 4
)

var magic = [8]byte{'S', 'P', 'X', 'H', 'O', 'F', 'F', 0}

// header: magic, version u16, reserved u16, written i64, fd count u32.
const headerSize = 8 + 2 + 2 + 8 + 4

// fdSize is one descriptor table entry: number i32, dev u64, ino u64,
// access u8.
const fdSize = 4 + 8 + 8 + 1

var crc = crc32.MakeTable(crc32.Castagnoli)

// Encode writes r, with the descriptor table (each descriptor fstat'ed for
// its identity), and returns it with the descriptors in slot order: those
// are what the carrier must pass on.
func Encode(r *Record) ([]byte, []int, error) {
	return encode(r, Version)
}

// encode writes r as version v: from 3 up, so that tests can write the
// records an older build leaves for a newer one to read.
func encode(r *Record, v uint16) ([]byte, []int, error) {
	fds := make([]int, 0, 2*len(r.Conns)+len(r.Listeners))
	slot := func(fd int) uint32 {
		if fd < 0 {
			return math.MaxUint32 // -1
		}
		fds = append(fds, fd)
		return uint32(len(fds) - 1)
	}
	le := binary.LittleEndian
	// One buffer, entries written in place and their lengths patched:
	// a reload with 9000 connections makes no garbage here.
	body := make([]byte, 0, 64*len(r.Conns)+64*len(r.Listeners)+16)
	entry := func(kind uint8) int {
		body = append(body, kind, 0, 0, 0, 0)
		return len(body)
	}
	end := func(at int) { le.PutUint32(body[at-4:], uint32(len(body)-at)) }
	at := entry(kindLoop)
	body = le.AppendUint32(body, slot(r.Epoll))
	body = le.AppendUint32(body, r.Gen)
	end(at)
	for _, l := range r.Listeners {
		at := entry(kindListener)
		body = le.AppendUint32(body, slot(l.FD))
		body = appendString(body, l.Name)
		body = appendString(body, l.Backend)
		body = append(body, boolByte(l.Bound), l.Kind)
		if v >= 4 {
			body = le.AppendUint16(body, uint16(len(l.Backends)))
			for _, b := range l.Backends {
				body = appendString(body, b.Name)
				body = append(body, boolByte(b.Down))
			}
		}
		end(at)
	}
	for i := range r.Flows {
		f := &r.Flows[i]
		at := entry(kindFlow)
		body = le.AppendUint16(body, uint16(f.Listener))
		body = le.AppendUint32(body, slot(f.FD))
		body = le.AppendUint32(body, f.Gen)
		body = le.AppendUint16(body, uint16(f.NameLen))
		body = le.AppendUint16(body, uint16(len(f.Key)))
		body = append(body, f.Key...)
		body = le.AppendUint64(body, uint64(f.Age))
		body = le.AppendUint64(body, uint64(f.Idle))
		if v >= 4 {
			body = append(body, backendByte(f.Backend, r.Listeners, f.Listener))
		}
		end(at)
	}
	for i := range r.Conns {
		c := &r.Conns[i]
		at := entry(kindConn)
		body = le.AppendUint16(body, uint16(c.Listener))
		body = append(body, c.State, boolByte(c.TCP[0])|boolByte(c.TCP[1])<<1|boolByte(c.Kept)<<2)
		body = le.AppendUint32(body, slot(c.FD[0]))
		body = le.AppendUint32(body, slot(c.FD[1]))
		body = appendAddr(body, c.Client)
		body = le.AppendUint64(body, uint64(c.Age))
		body = le.AppendUint64(body, uint64(c.Idle))
		body = le.AppendUint32(body, c.Gen[0])
		body = le.AppendUint32(body, c.Gen[1])
		body = append(body, c.Ready[0], c.Ready[1])
		for d := range c.Dir {
			dir := &c.Dir[d]
			body = le.AppendUint64(body, uint64(dir.Bytes))
			body = append(body, dir.Flags)
			switch {
			case dir.Pipe[0] >= 0:
				body = append(body, 1)
				body = le.AppendUint32(body, slot(dir.Pipe[0]))
				body = le.AppendUint32(body, slot(dir.Pipe[1]))
				body = le.AppendUint32(body, uint32(dir.InPipe))
			case dir.Mem != nil:
				body = append(body, 2)
				body = le.AppendUint32(body, uint32(len(dir.Mem)))
				body = append(body, dir.Mem...)
			default:
				body = append(body, 0)
			}
		}
		if v >= 4 {
			body = append(body, backendByte(c.Backend, r.Listeners, c.Listener))
		}
		end(at)
	}
	if v >= 4 && len(r.Totals) > 0 {
		if len(r.Totals) > MaxTotals {
			return nil, nil, fmt.Errorf("handoff record: %d totals, more than %d", len(r.Totals), MaxTotals)
		}
		at := entry(kindTotals)
		body = le.AppendUint16(body, uint16(len(r.Totals)))
		for _, v := range r.Totals {
			body = le.AppendUint64(body, v)
		}
		end(at)
	}
	end(entry(kindEnd))
	for _, l := range r.Listeners {
		if len(l.Backends) > MaxBackends {
			return nil, nil, fmt.Errorf("handoff record: listener %q has %d backends, at most %d", l.Name, len(l.Backends), MaxBackends)
		}
	}
	if len(fds) > MaxFDs || len(r.Listeners) > MaxListeners {
		return nil, nil, fmt.Errorf("handoff record too large: %d descriptors, %d listeners", len(fds), len(r.Listeners))
	}

	b := make([]byte, 0, headerSize+fdSize*len(fds)+len(body)+4)
	b = append(b, magic[:]...)
	b = le.AppendUint16(b, v)
	b = le.AppendUint16(b, 0)
	b = le.AppendUint64(b, uint64(r.Written))
	b = le.AppendUint32(b, uint32(len(fds)))
	for _, fd := range fds {
		var st unix.Stat_t
		if !r.ByNumber {
			if err := fstat(fd, &st); err != 0 {
				return nil, nil, fmt.Errorf("descriptor %d: %v", fd, err)
			}
		}
		b = le.AppendUint32(b, uint32(fd))
		b = le.AppendUint64(b, st.Dev)
		b = le.AppendUint64(b, st.Ino)
		b = append(b, access(fd, &st))
	}
	b = append(b, body...)
	b = le.AppendUint32(b, crc32.Checksum(b, crc))
	if len(b) > MaxSize {
		return nil, nil, fmt.Errorf("handoff record too large: %d bytes", len(b))
	}
	return b, fds, nil
}

// access is what FD.Access records: a pipe end's access mode, else 0.
func access(fd int, st *unix.Stat_t) uint8 {
	if st.Mode&unix.S_IFMT != unix.S_IFIFO {
		return 0
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return 0
	}
	return uint8(fl&unix.O_ACCMODE) + 1 // never 0 for a pipe
}

// fstat without the scheduler's bookkeeping: it cannot block, and a
// reload makes one per descriptor while the loop stands still.
func fstat(fd int, st *unix.Stat_t) unix.Errno {
	_, _, e := unix.RawSyscall(unix.SYS_FSTAT, uintptr(fd), uintptr(unsafe.Pointer(st)), 0)
	return e
}

func appendString(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// backendByte writes a backend index in a byte: 255 for NoBackend, and for
// an index its listener has no backend for (the zero value of a Conn whose
// listener lists none), which the reader would refuse.
func backendByte(i int, ls []Listener, l int) byte {
	if i < 0 || l < 0 || l >= len(ls) || i >= len(ls[l].Backends) {
		return 0xff
	}
	return byte(i)
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

// appendAddr: family 0 (none: a unix client), 4 or 6, then address and port.
func appendAddr(b []byte, ap netip.AddrPort) []byte {
	a := ap.Addr()
	switch {
	case !ap.IsValid():
		return append(b, 0)
	case a.Is4():
		b = append(b, 4)
		s := a.As4()
		b = append(b, s[:]...)
	default:
		b = append(b, 6)
		s := a.As16()
		b = append(b, s[:]...)
	}
	return binary.LittleEndian.AppendUint16(b, ap.Port())
}

// Resolver maps a slot of the descriptor table to the descriptor the
// carrier received for it, or -1 when none came (the store refused it,
// say). It must check the identity (FD.Dev, FD.Ino) itself.
type Resolver func(slot int, f FD) int

// Peek reads the version of a record without checking the rest; the check
// before exec uses it.
func Peek(b []byte) (int, error) {
	if len(b) < headerSize || [8]byte(b[:8]) != magic {
		return 0, errors.New("not a socket-proxyd handoff record")
	}
	return int(binary.LittleEndian.Uint16(b[8:])), nil
}

// Decode reads a record. Every descriptor slot goes through resolve; the
// Record holds the numbers it returned, -1 for those missing (the caller
// resets what cannot be whole). It also returns the descriptors received
// and named by no entry, for the caller to close. Any malformed byte fails
// the whole record: the caller then resets every carried connection rather
// than forward garbage.
func Decode(b []byte, resolve Resolver) (*Record, []int, error) {
	bad := func(format string, a ...any) (*Record, []int, error) {
		return nil, nil, fmt.Errorf("bad handoff record: "+format, a...)
	}
	v, err := Peek(b)
	if err != nil {
		return nil, nil, err
	}
	if v < 1 || v > Version {
		return nil, nil, fmt.Errorf("handoff record version %d: this build reads 1 to %d", v, Version)
	}
	if len(b) > MaxSize {
		return bad("%d bytes, more than %d", len(b), MaxSize)
	}
	if len(b) < headerSize+4 {
		return bad("truncated")
	}
	le := binary.LittleEndian
	if sum := le.Uint32(b[len(b)-4:]); sum != crc32.Checksum(b[:len(b)-4], crc) {
		return bad("checksum mismatch (truncated or damaged)")
	}
	rd := reader{b: b[headerSize : len(b)-4]}
	r := &Record{Written: int64(le.Uint64(b[12:])), Epoll: -1}
	nfd := int(le.Uint32(b[20:]))
	if nfd > MaxFDs || nfd*fdSize > len(rd.b) {
		return bad("descriptor count %d does not fit", nfd)
	}
	r.Conns = make([]Conn, 0, nfd/2)
	table := make([]int, nfd)
	var taken descriptorSet
	for i := range table {
		f := FD{Num: int(int32(rd.u32())), Dev: rd.u64(), Ino: rd.u64(), Access: rd.u8()}
		fd := resolve(i, f)
		if fd >= 0 && !taken.add(fd) {
			return bad("descriptor %d received for two slots", fd)
		}
		table[i] = fd
	}
	used := make([]bool, nfd)
	// ref reads a slot reference: -1 for none, otherwise a slot in the
	// table that no other entry named.
	ref := func(e *reader, optional bool) (int, error) {
		s := int32(e.u32())
		if e.err != nil {
			return 0, e.err
		}
		if s == -1 && optional {
			return -1, nil
		}
		if s < 0 || int(s) >= nfd {
			return 0, fmt.Errorf("descriptor slot %d out of range 0..%d", s, nfd-1)
		}
		if used[s] {
			return 0, fmt.Errorf("descriptor slot %d named twice", s)
		}
		used[s] = true
		return table[s], nil
	}
	for done := false; !done; {
		kind := rd.u8()
		n := int(rd.u32())
		if rd.err != nil || n > len(rd.b) {
			return bad("entry runs past the end")
		}
		e := reader{b: rd.b[:n]}
		rd.b = rd.b[n:]
		switch kind {
		case kindListener:
			if len(r.Listeners) >= MaxListeners {
				return bad("more than %d listeners", MaxListeners)
			}
			var l Listener
			if l.FD, err = ref(&e, true); err != nil {
				return bad("listener: %v", err)
			}
			l.Name, l.Backend, l.Bound = e.str(), e.str(), e.u8() == 1
			if v >= 2 {
				if l.Kind = e.u8(); l.Kind > ListenCarried || l.Kind == ListenCarried && v < 4 {
					return bad("listener kind %d", l.Kind)
				}
			}
			if v >= 4 {
				n := int(e.u16())
				if n > MaxBackends {
					return bad("listener %q: %d backends", l.Name, n)
				}
				for range n {
					if e.err != nil {
						break
					}
					name, down := e.str(), e.u8()
					if down > 1 {
						return bad("listener %q: backend state %d", l.Name, down)
					}
					l.Backends = append(l.Backends, Backend{Name: name, Down: down == 1})
				}
			}
			r.Listeners = append(r.Listeners, l)
		case kindFlow:
			if v < 2 {
				return bad("a flow in a version %d record", v)
			}
			f, err := decodeFlow(&e, ref, r.Listeners, v)
			if err != nil {
				return bad("flow %d: %v", len(r.Flows), err)
			}
			r.Flows = append(r.Flows, f)
		case kindConn:
			c, err := decodeConn(&e, ref, r.Listeners, v)
			if err != nil {
				return bad("connection %d: %v", len(r.Conns), err)
			}
			r.Conns = append(r.Conns, c)
		case kindLoop:
			if r.Epoll, err = ref(&e, true); err != nil {
				return bad("loop: %v", err)
			}
			r.Gen = e.u32()
		case kindTotals:
			if v < 4 || r.Totals != nil {
				return bad("totals in a version %d record, or twice", v)
			}
			n := int(e.u16())
			if n > MaxTotals {
				return bad("%d totals, more than %d", n, MaxTotals)
			}
			r.Totals = make([]uint64, n)
			for i := range r.Totals {
				r.Totals[i] = e.u64()
			}
		case kindEnd:
			done = true
		default:
			return bad("unknown entry kind %d", kind)
		}
		if e.err != nil {
			return bad("entry of kind %d: %v", kind, e.err)
		}
		if len(e.b) != 0 {
			return bad("entry of kind %d has %d bytes left over", kind, len(e.b))
		}
	}
	if len(rd.b) != 0 {
		return bad("%d bytes after the end", len(rd.b))
	}
	var unused []int
	for i, fd := range table {
		if !used[i] && fd >= 0 {
			unused = append(unused, fd)
		}
	}
	return r, unused, nil
}

// descriptorSet is a set of descriptor numbers: a bitmap for the usual small
// ones, a map past it.
type descriptorSet struct {
	bits []uint64
	big  map[int]bool
}

// add adds fd and reports whether it was new.
func (s *descriptorSet) add(fd int) bool {
	if fd < 1<<22 {
		w := fd / 64
		if w >= len(s.bits) {
			s.bits = append(s.bits, make([]uint64, w+1-len(s.bits)+len(s.bits)/2)...)
		}
		if s.bits[w]&(1<<(fd%64)) != 0 {
			return false
		}
		s.bits[w] |= 1 << (fd % 64)
		return true
	}
	if s.big == nil {
		s.big = make(map[int]bool)
	}
	if s.big[fd] {
		return false
	}
	s.big[fd] = true
	return true
}
