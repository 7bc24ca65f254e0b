// SPDX-License-Identifier: Apache-2.0

package handoff

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// reader is a cursor over bytes that never reads past them: the first
// short read sets err, and every read after it returns zero.
type reader struct {
	b   []byte
	err error
}

var errShort = errors.New("truncated")

func (r *reader) take(n int) []byte {
	if r.err != nil || n < 0 || n > len(r.b) {
		r.err = errShort
		return nil
	}
	p := r.b[:n:n]
	r.b = r.b[n:]
	return p
}

func (r *reader) u8() uint8 {
	if p := r.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (r *reader) u16() uint16 {
	if p := r.take(2); p != nil {
		return binary.LittleEndian.Uint16(p)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if p := r.take(4); p != nil {
		return binary.LittleEndian.Uint32(p)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if p := r.take(8); p != nil {
		return binary.LittleEndian.Uint64(p)
	}
	return 0
}

func (r *reader) str() string {
	n := int(r.u16())
	if n > MaxName {
		r.err = fmt.Errorf("name of %d bytes, more than %d", n, MaxName)
		return ""
	}
	return string(r.take(n))
}

func (r *reader) addr() netip.AddrPort {
	var a netip.Addr
	switch fam := r.u8(); fam {
	case 0:
		return netip.AddrPort{}
	case 4:
		if p := r.take(4); p != nil {
			a = netip.AddrFrom4([4]byte(p))
		}
	case 6:
		if p := r.take(16); p != nil {
			a = netip.AddrFrom16([16]byte(p))
		}
	default:
		if r.err == nil {
			r.err = fmt.Errorf("address family %d", fam)
		}
	}
	return netip.AddrPortFrom(a, r.u16())
}

// decodeConn reads one connection entry; ref reads a descriptor slot.
func decodeConn(e *reader, ref func(*reader, bool) (int, error), ls []Listener, version int) (Conn, error) {
	listeners := len(ls)
	c := Conn{Backend: NoBackend}
	var err error
	c.Listener = int(e.u16())
	c.State = e.u8()
	tcp := e.u8()
	c.TCP = [2]bool{tcp&1 != 0, tcp&2 != 0}
	c.Kept = tcp&4 != 0
	if tcp&^7 != 0 || (c.Kept && version < 3) {
		return c, fmt.Errorf("socket kinds %#x", tcp)
	}
	if e.err == nil && c.Listener >= listeners {
		return c, fmt.Errorf("listener %d of %d", c.Listener, listeners)
	}
	if c.State != Open && c.State != Connecting {
		return c, fmt.Errorf("state %d", c.State)
	}
	if c.FD[0], err = ref(e, false); err != nil {
		return c, err
	}
	if c.FD[1], err = ref(e, c.State == Connecting); err != nil {
		return c, err
	}
	if c.State == Connecting && (c.FD[1] != -1 || c.TCP[1]) {
		return c, errors.New("a backend socket while connecting")
	}
	c.Client = e.addr()
	c.Age, c.Idle = int64(e.u64()), int64(e.u64())
	c.Gen = [2]uint32{e.u32(), e.u32()}
	c.Ready = [2]uint8{e.u8(), e.u8()}
	if (c.Ready[0]|c.Ready[1])&^allReady != 0 {
		return c, fmt.Errorf("readiness %#x", c.Ready)
	}
	if c.Age < 0 || c.Idle < 0 {
		return c, errors.New("negative age or idle time")
	}
	for d := range c.Dir {
		dir := &c.Dir[d]
		dir.Pipe = [2]int{-1, -1}
		dir.Bytes = int64(e.u64())
		dir.Flags = e.u8()
		switch kind := e.u8(); kind {
		case 0:
		case 1:
			if dir.Pipe[0], err = ref(e, false); err != nil {
				return c, err
			}
			if dir.Pipe[1], err = ref(e, false); err != nil {
				return c, err
			}
			dir.InPipe = int(e.u32())
			// A kept connection's pipes are its own, empty or not.
			if dir.InPipe < 0 || (dir.InPipe == 0 && !c.Kept) || dir.InPipe > MaxPipe {
				return c, fmt.Errorf("%d bytes in a pipe", dir.InPipe)
			}
		case 2:
			// An empty message of a sequential-packet connection waits
			// as a spill of zero bytes (version 4).
			n := int(e.u32())
			if n < 0 || n > MaxMem || (n == 0 && version < 4) {
				return c, fmt.Errorf("%d bytes in memory", n)
			}
			if dir.Mem = e.take(n); dir.Mem == nil && e.err == nil {
				dir.Mem = []byte{}
			}
		default:
			return c, fmt.Errorf("pipe kind %d", kind)
		}
		if e.err != nil {
			return c, e.err
		}
		switch {
		case dir.Bytes < 0:
			return c, errors.New("negative byte count")
		case dir.Flags&^allFlags != 0:
			return c, fmt.Errorf("unknown flags %#x", dir.Flags)
		case dir.Flags&Shut != 0 && dir.Flags&EOF == 0:
			return c, errors.New("shut down before the end of its source")
		case dir.Flags&Shut != 0 && (dir.InPipe > 0 || dir.Mem != nil):
			return c, errors.New("bytes in flight after shutdown")
		case dir.Flags&Header != 0 && (d != 0 || (dir.Pipe[0] < 0 && dir.Mem == nil)):
			return c, errors.New("a PROXY header out of place")
		case c.State == Connecting && (dir.Bytes != 0 || dir.Flags != 0 || dir.Pipe[0] >= 0 || dir.Mem != nil):
			return c, errors.New("traffic before connecting")
		}
	}
	if c.Kept && (c.State != Open || c.Dir[0].Pipe[0] < 0 || c.Dir[1].Pipe[0] < 0) {
		return c, errors.New("kept without a pipe of its own each way")
	}
	if c.Dir[0].Flags&c.Dir[1].Flags&Shut != 0 {
		return c, errors.New("both directions over")
	}
	if version >= 4 && e.err == nil && c.Listener < listeners {
		if c.Backend, err = backendIndex(e, ls[c.Listener]); err != nil {
			return c, err
		}
	}
	return c, nil
}

// backendIndex reads a connection's or flow's backend: an index into its
// listener's backends, or 255 for NoBackend.
func backendIndex(e *reader, l Listener) (int, error) {
	b := e.u8()
	switch {
	case e.err != nil:
		return NoBackend, e.err
	case b == 0xff:
		return NoBackend, nil
	case int(b) >= len(l.Backends):
		return NoBackend, fmt.Errorf("backend %d of %d", b, len(l.Backends))
	}
	return int(b), nil
}

// decodeFlow reads one flow entry; its listener must be a datagram one,
// read before it.
func decodeFlow(e *reader, ref func(*reader, bool) (int, error), listeners []Listener, version int) (Flow, error) {
	f := Flow{Backend: NoBackend}
	var err error
	f.Listener = int(e.u16())
	if e.err == nil && (f.Listener >= len(listeners) || listeners[f.Listener].Kind != ListenDatagram) {
		return f, fmt.Errorf("listener %d is not a datagram listener", f.Listener)
	}
	if f.FD, err = ref(e, false); err != nil {
		return f, err
	}
	f.Gen = e.u32()
	f.NameLen = int(e.u16())
	n := int(e.u16())
	if n > MaxKey || f.NameLen > n {
		return f, fmt.Errorf("key of %d bytes, name of %d", n, f.NameLen)
	}
	f.Key = e.take(n)
	f.Age, f.Idle = int64(e.u64()), int64(e.u64())
	if e.err != nil {
		return f, e.err
	}
	if f.Age < 0 || f.Idle < 0 {
		return f, errors.New("negative age or idle time")
	}
	if version >= 4 && f.Listener < len(listeners) {
		if f.Backend, err = backendIndex(e, listeners[f.Listener]); err != nil {
			return f, err
		}
	}
	return f, nil
}
