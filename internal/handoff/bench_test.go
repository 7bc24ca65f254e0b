// SPDX-License-Identifier: Apache-2.0

package handoff

import (
	"net/netip"
	"testing"
)

// BenchmarkEncodeDecode is a reload's record with 9000 connections (18000
// descriptors): what the loop stands still for, besides exec.
func BenchmarkEncodeDecode(b *testing.B) {
	const n = 9000
	d := fds(b, 2*n)
	r := &Record{Epoll: -1}
	for i := range n {
		r.Conns = append(r.Conns, Conn{State: Open, FD: [2]int{d[2*i], d[2*i+1]}, TCP: [2]bool{true, true},
			Client: netip.MustParseAddrPort("127.0.0.1:4242"), Gen: [2]uint32{1, 2},
			Dir: [2]Dir{{Pipe: [2]int{-1, -1}}, {Pipe: [2]int{-1, -1}}}})
	}
	r.Listeners = []Listener{{FD: -1, Name: "web"}}
	b.Run("encode", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := Encode(r); err != nil {
				b.Fatal(err)
			}
		}
	})
	rec, _, _ := Encode(r)
	b.Run("decode", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := Decode(rec, sameNumbers); err != nil {
				b.Fatal(err)
			}
		}
	})
}
