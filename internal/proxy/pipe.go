// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"golang.org/x/sys/unix"
)

// pipeSize is what each pooled pipe asks for. Measured on the 2-core
// machines (one bulk stream, proxy pinned to one CPU, 6 interleaved runs):
// 1 MiB pipes moved 12% more per second than 256 KiB ones but cost 25% more
// CPU per GB, while 256 KiB matched systemd-socket-proxyd (which uses the
// same size) on CPU per GB and beat it on throughput. We want both,
// so 256 KiB. Its pages are only allocated while data sits in it.
const pipeSize = 256 << 10

// pipe holds the bytes of one direction that the destination could not take
// yet. A kernel pipe (r, w >= 0) keeps them out of userspace and lets splice
// move them; a memory pipe (r < 0) is the fallback when no kernel pipe can
// be had, and holds only the remainder of one shared-buffer read.
type pipe struct {
	r, w int
	n    int    // bytes inside
	mem  []byte // memory pipe: the bytes not yet written
}

// pipePool lends kernel pipes to directions that have data in flight. A
// direction returns its pipe as soon as it is drained, so an idle connection
// holds none; pipes unused for a trim interval are closed, so an idle proxy
// holds none either.
type pipePool struct {
	free []*pipe
	open int // kernel pipes open: lent out or free
	max  int // most kernel pipes open at once
	size int // capacity of a new pipe, as the kernel granted it
	used bool
	// stats mirrors open for Stats.
	stats *Server
}

// get lends an empty kernel pipe, or nil when none can be had.
func (pp *pipePool) get() *pipe {
	pp.used = true
	if n := len(pp.free); n > 0 {
		p := pp.free[n-1]
		pp.free = pp.free[:n-1]
		return p
	}
	if pp.open >= pp.max {
		return nil
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return nil // EMFILE and the like: the caller copies through memory
	}
	if pp.size == 0 {
		// Ask once; an unprivileged user over pipe-user-pages-soft gets
		// less, and the pool then works with what it got.
		unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, pipeSize)
		size, err := unix.FcntlInt(uintptr(fds[1]), unix.F_GETPIPE_SZ, 0)
		if err != nil || size <= 0 {
			size = 64 << 10
		}
		pp.size = size
	} else if size, err := unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, pp.size); err != nil || size < pp.size {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return nil
	}
	pp.open++
	pp.stats.pipes.Add(1)
	return &pipe{r: fds[0], w: fds[1]}
}

// put takes back a drained pipe.
func (pp *pipePool) put(p *pipe) {
	if p.r < 0 {
		return // memory pipes are garbage
	}
	if p.n != 0 {
		pp.discard(p)
		return
	}
	pp.free = append(pp.free, p)
}

// discard closes a pipe that still holds bytes nobody will read.
func (pp *pipePool) discard(p *pipe) {
	if p.r < 0 {
		return
	}
	unix.Close(p.r)
	unix.Close(p.w)
	p.r, p.w = -1, -1
	pp.open--
	pp.stats.pipes.Add(-1)
}

// trim closes the free pipes when none was lent since the last trim.
func (pp *pipePool) trim() {
	if pp.used {
		pp.used = false
		return
	}
	for _, p := range pp.free {
		pp.discard(p)
	}
	clear(pp.free)
	pp.free = pp.free[:0]
}

func (pp *pipePool) closeAll() {
	pp.used = false
	pp.trim()
}
