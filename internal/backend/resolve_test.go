// SPDX-License-Identifier: Apache-2.0

package backend

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
)

// TestResolve: an IP literal needs no lookup; a failed lookup names the
// host; every address comes back, in the resolver's order.
func TestResolve(t *testing.T) {
	var lookups atomic.Int64 // the resolver dials for A and AAAA at once
	failing := &net.Resolver{PreferGo: true, Dial: func(context.Context, string, string) (net.Conn, error) {
		lookups.Add(1)
		return nil, errors.New("no DNS here")
	}}
	got, err := Resolve(t.Context(), failing, Address{Network: "tcp", Host: "::1", Port: "80"})
	if err != nil || strings.Join(got, " ") != "[::1]:80" || lookups.Load() != 0 {
		t.Errorf("Resolve(::1) = %v, %v after %d lookups; want [::1]:80 and no lookup", got, err, lookups.Load())
	}
	_, err = Resolve(t.Context(), failing, Address{Network: "tcp", Host: "nowhere.spx.test", Port: "80"})
	if err == nil || !strings.Contains(err.Error(), `cannot resolve "nowhere.spx.test"`) {
		t.Errorf("Resolve with a failing resolver: %v, want it to name the host", err)
	}
	if lookups.Load() == 0 {
		t.Error("Resolve did not use the resolver it was given")
	}
	got, err = Resolve(t.Context(), nil, Address{Network: "tcp", Host: "localhost", Port: "7"})
	if err != nil || len(got) == 0 || !strings.HasSuffix(got[0], ":7") {
		t.Errorf("Resolve(localhost) = %v, %v", got, err)
	}
}
