// SPDX-License-Identifier: Apache-2.0

package main

import "testing"

// TestOracleTellsTinyDatagramsApart: a datagram too short to carry its
// flow's id and index (under 12 bytes) must still not pass for a later
// one of the same size when it comes twice, nor for another flow's.
func TestOracleTellsTinyDatagramsApart(t *testing.T) {
	checked := 0
	for seed := uint64(1); seed < 5000 && checked < 20; seed++ {
		p := planFlow(seed, kUDP4)
		for i := range p.sizes {
			for j := i + 1; j < len(p.sizes); j++ {
				// From 4 bytes up, random bytes that match by chance
				// (2^-32) cannot make the test flaky.
				if p.sizes[i] != p.sizes[j] || p.sizes[i] >= 12 || p.sizes[i] < 4 {
					continue
				}
				const id = 7
				d := datagram(id, seed, i+1, p.sizes[i])
				m := newMatcher(id, seed, kUDP4)
				m.take(d)
				m.take(d)
				if m.err == nil {
					t.Errorf("seed %d: datagram %d (%d bytes) taken twice, as %v, without an error", seed, i+1, p.sizes[i], m.got)
				}
				m = newMatcher(id, seed, kUDP4)
				m.take(datagram(id+1, seed+1, i+1, p.sizes[i]))
				if m.err == nil {
					t.Errorf("seed %d: another flow's %d-byte datagram taken for this flow's, as %v", seed, p.sizes[i], m.got)
				}
				checked++
			}
		}
	}
	if checked == 0 {
		t.Fatal("no plan with two tiny datagrams of one size")
	}
}
