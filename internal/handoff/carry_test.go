// SPDX-License-Identifier: Apache-2.0

package handoff

import (
	"bytes"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// The reload carrier takes a descriptor only when it is the file the writer
// saw: another file under the same number is not taken.
func TestInheritedResolver(t *testing.T) {
	r := sample(t)
	b, mfd, carried := encodeForExec(t, r)
	// Under carried[0] (listener "web"), another file: as if not passed.
	unix.Dup2(fds(t, 1)[0], carried[0])
	got, resolve, err := Inherited(strconv.Itoa(mfd))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, b) {
		t.Fatal("record read back differs")
	}
	if _, err := unix.FcntlInt(uintptr(mfd), unix.F_GETFD, 0); err == nil {
		t.Error("the memfd was left open")
	}
	rec, _, err := Decode(got, resolve)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Listeners[0].FD != -1 || rec.Listeners[1].FD != r.Listeners[1].FD {
		t.Errorf("listener descriptors %d, %d; want -1 (another file), %d", rec.Listeners[0].FD, rec.Listeners[1].FD, r.Listeners[1].FD)
	}
	var st unix.Stat_t
	unix.Fstat(carried[1], &st)
	if fd := resolve(0, FD{Num: carried[1], Dev: st.Dev, Ino: st.Ino + 1}); fd != -1 {
		t.Errorf("another file under the same number resolved to %d", fd)
	}
	for _, bad := range []string{"x", "-1", "2", "99999"} {
		if _, _, err := Inherited(bad); err == nil {
			t.Errorf("Inherited(%q) accepted", bad)
		}
	}
}

func TestMemfdSealed(t *testing.T) {
	fd, err := Memfd([]byte("record"))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if _, err := unix.Pwrite(fd, []byte("X"), 0); err == nil {
		t.Error("the record could be changed after it was written")
	}
	b, err := ReadFD(fd)
	if err != nil || string(b) != "record" {
		t.Errorf("ReadFD = %q, %v", b, err)
	}
}

// A record by number (a reload in place) takes a descriptor only when it was
// passed without close-on-exec: everything the runtime opens has it set.
func TestInheritedByNumber(t *testing.T) {
	r := sample(t)
	r.ByNumber = true
	_, mfd, _ := encodeForExec(t, r)
	got, resolve, err := Inherited(strconv.Itoa(mfd))
	if err != nil {
		t.Fatal(err)
	}
	rec, _, err := Decode(got, resolve)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Listeners[0].FD != -1 || rec.Listeners[1].FD != r.Listeners[1].FD {
		t.Errorf("listener descriptors %d, %d; want -1 (close-on-exec: not passed), %d", rec.Listeners[0].FD, rec.Listeners[1].FD, r.Listeners[1].FD)
	}
}

// encodeForExec encodes r, writes it into a memfd and clears close-on-exec on it and
// on the carried descriptors but the first, as the exec carrier does.
func encodeForExec(t *testing.T, r *Record) (b []byte, mfd int, carried []int) {
	t.Helper()
	b, carried, err := Encode(r)
	if err != nil {
		t.Fatal(err)
	}
	mfd, err = Memfd(b)
	if err != nil {
		t.Fatal(err)
	}
	unix.FcntlInt(uintptr(mfd), unix.F_SETFD, 0)
	for _, fd := range carried[1:] {
		unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0)
	}
	return b, mfd, carried
}
