// SPDX-License-Identifier: Apache-2.0

package backend

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestCheck: a backend that could be connected to now passes; a missing
// socket, a file that is no socket and a name that does not resolve fail,
// each saying which.
func TestCheck(t *testing.T) {
	dir, err := os.MkdirTemp("", "spx")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "b.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	abstract := "@spx-check-" + strconv.Itoa(os.Getpid())
	aln, err := net.Listen("unix", abstract)
	if err != nil {
		t.Fatal(err)
	}
	defer aln.Close()
	plain := filepath.Join(dir, "plain")
	os.WriteFile(plain, nil, 0o600)

	for _, tc := range []struct {
		addr string
		want string // in the error; "" for none
	}{
		{"127.0.0.1:80", ""},
		{sock, ""},
		{abstract, ""},
		{filepath.Join(dir, "none.sock"), "no unix socket at"},
		{"@spx-check-none-" + strconv.Itoa(os.Getpid()), "no abstract socket"},
		{plain, "is not a unix socket"},
		{"no-such-host.invalid:80", "cannot resolve"},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			a, err := Parse(tc.addr)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Check(context.Background(), nil, a)
			switch {
			case tc.want == "" && (err != nil || len(got) == 0):
				t.Errorf("Check: %v, %v; want the address", got, err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("Check: %v, %v; want an error with %q", got, err, tc.want)
			}
		})
	}
}
