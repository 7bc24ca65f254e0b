// SPDX-License-Identifier: Apache-2.0

package main

import (
	"math/rand/v2"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// TestResetIsMarkedBeforeItLands: the judge of an operation wakes as soon
// as its backend connection is reset, and must find the reset marked, or it
// reports a failure the harness caused itself.
func TestResetIsMarkedBeforeItLands(t *testing.T) {
	b := &streamBackend{network: "unix", addr: filepath.Join(t.TempDir(), "be"), gate: &gate{}, res: &results{}, deadline: 10 * time.Second}
	if err := b.listen(); err != nil {
		t.Fatal(err)
	}
	defer b.close()
	c, err := net.Dial("unix", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const id, seed = 7, 1
	if _, err := c.Write(streamHeader(id, seed, planStream(seed, false), "")); err != nil {
		t.Fatal(err)
	}
	// The backend now waits for the upload, which never comes.
	for deadline := time.Now().Add(5 * time.Second); ; {
		b.mu.Lock()
		live := b.live[id] != nil
		b.mu.Unlock()
		if live {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the backend never took the connection")
		}
		time.Sleep(time.Millisecond)
	}
	var marked []uint64
	b.reset(rand.New(rand.NewPCG(1, 2)), 1, func(got uint64) {
		select {
		case <-b.res.get(got).done:
			t.Errorf("connection %d was marked after its outcome was out", got)
		default:
		}
		marked = append(marked, got)
	})
	if len(marked) != 1 || marked[0] != id {
		t.Fatalf("marked %v, want [%d]", marked, id)
	}
	if s := b.res.wait(id, 5*time.Second); s == nil || s.out.err == nil {
		t.Fatal("the reset connection has no failed outcome")
	}
}
