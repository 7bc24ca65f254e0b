// SPDX-License-Identifier: Apache-2.0

package activation

import (
	"os"
	"path/filepath"
	"testing"
)

// TestListenNeverChmodsThroughASymlink: a symlink swapped in for the socket
// file between the check that it is the socket and the chmod (in a
// directory another user may write) is never followed: the file it points
// to keeps its mode, and the symlink is left where it is.
func TestListenNeverChmodsThroughASymlink(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "s.sock")
	beforeChmod = func() {
		os.Remove(sock)
		if err := os.Symlink(victim, sock); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(func() { beforeChmod = nil })
	if l, err := ListenMode(sock, 0o666); err == nil {
		l.Close()
	}
	st, err := os.Stat(victim)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("the symlink's target was chmodded to %v", st.Mode().Perm())
	}
	if fi, err := os.Lstat(sock); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the swapped-in symlink was removed or replaced: %v", err)
	}
}

// TestListenSocketModeExact: without interference the socket file gets the
// mode asked for, whatever the umask.
func TestListenSocketModeExact(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := ListenMode(sock, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	st, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o640 || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("mode %v, want a socket with 0640", st.Mode())
	}
}
