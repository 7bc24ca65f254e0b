// SPDX-License-Identifier: Apache-2.0

package handoff

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// systemd's fd store (FDSTORE=1) as a carrier: on stop, the proxy stores
// every descriptor of the record under StoreName and the record itself (a
// memfd) under RecordName; the next instance gets them back in LISTEN_FDS,
// in no particular order (systemd keeps its own list and drops duplicates),
// so each descriptor is matched by identity, not by position.

// Names in LISTEN_FDNAMES (FDNAME=): valid fd names for systemd (printable,
// no colon, at most 255 bytes).
const (
	StoreName  = "socket-proxyd-conn"
	RecordName = "socket-proxyd-record"
)

// IsStored says whether a LISTEN_FDNAMES name is one of ours: a stopped
// instance's connections and record, or a kept connection (keep.go).
func IsStored(name string) bool { return name == StoreName || name == RecordName || IsKept(name) }

// Stored is the carrier for descriptors back from the fd store: the record
// (the one descriptor named RecordName) and a Resolver that matches each
// slot by identity among the others. Descriptors the record does not
// claim are returned by left, once Decode is done, for the caller to reset.
func Stored(record int, fds []int) (b []byte, resolve Resolver, left func() []int, err error) {
	b, err = ReadFD(record)
	unix.Close(record)
	if err != nil {
		return nil, nil, nil, err
	}
	type key struct {
		dev, ino uint64
		access   uint8
	}
	byID := make(map[key]int, len(fds))
	for _, fd := range fds {
		var st unix.Stat_t
		if fstat(fd, &st) != 0 {
			return nil, nil, nil, fmt.Errorf("stored descriptor %d: not open", fd)
		}
		k := key{st.Dev, st.Ino, access(fd, &st)}
		if _, dup := byID[k]; dup {
			return nil, nil, nil, fmt.Errorf("stored descriptor %d: the same file twice", fd)
		}
		byID[k] = fd
	}
	resolve = func(_ int, f FD) int {
		if fd, ok := byID[key{f.Dev, f.Ino, f.Access}]; ok {
			delete(byID, key{f.Dev, f.Ino, f.Access}) // once
			return fd
		}
		return -1
	}
	left = func() []int {
		var fds []int
		for _, fd := range byID {
			fds = append(fds, fd)
		}
		return fds
	}
	return b, resolve, left, nil
}
