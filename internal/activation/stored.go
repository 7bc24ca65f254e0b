// SPDX-License-Identifier: Apache-2.0

package activation

import (
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Stored is a descriptor systemd passed back from its fd store that is not
// a listener: what a previous instance stored there, by name.
type Stored struct {
	FD   int
	Name string
}

// InheritedWithStored is Inherited for a proxy that uses systemd's fd
// store: the descriptors whose FDNAME isStored accepts are returned as they
// are, close-on-exec and otherwise unchecked (the caller checks each),
// and LISTEN_FDS may count as many more as LISTEN_FDNAMES names such
// descriptors, up to maxStored.
func InheritedWithStored(isStored func(name string) bool, maxStored int) ([]Listener, []Stored, error) {
	extra := 0
	if names, ok := os.LookupEnv("LISTEN_FDNAMES"); ok {
		for name := range strings.SplitSeq(names, ":") {
			if isStored(name) {
				extra++
			}
		}
	}
	return inherited(isStored, maxInherited+uint64(min(extra, maxStored)))
}

// CloseKeepingFiles closes every listener but leaves each --listen socket's
// file in place: the socket lives on in systemd's fd store, and the next
// instance serves it at the same path.
func CloseKeepingFiles(listeners []Listener) {
	for _, l := range listeners {
		switch u := l.Listener.(type) {
		case *unixListener:
			u.remove.Do(func() {
				if u.file.dir >= 0 {
					unix.Close(u.file.dir)
					u.file.dir = -1
				}
			})
		case *packetListener:
			u.unlink = nil // its directory descriptor goes with the process
		}
		l.Close()
	}
}
