// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"encoding/binary"
	"unsafe"

	"golang.org/x/sys/unix"
)

// UDP segmentation offload (UDP_SEGMENT, "GSO"). A run of
// datagrams to one destination, all of one size but the last (which may be
// shorter), leaves as one message that the kernel cuts into those datagrams
// again below the socket layer: one trip through the UDP and IP stack for
// the run instead of one per datagram. Measured on loopback with 1400-byte
// datagrams 32 at a time: about half the sender's CPU per datagram. The
// receiver sees the same datagrams, with the same boundaries: a socket
// that did not ask for UDP_GRO never gets them merged.
//
// Where the kernel or the route cannot do it (EIO: no checksum offload on
// the way out; EINVAL or ENOPROTOOPT: no UDP_SEGMENT), the loop says so
// once at debug level and sends datagram by datagram from then on.

const (
	// maxSegmentBytes bounds a segmented message's payload: one UDP
	// datagram's worth over IPv4 (65535 - 20 - 8).
	maxSegmentBytes = 65507
	// segmentCtl is room for a pktinfo control message and UDP_SEGMENT.
	segmentCtl = oobSize + 16
)

// segments is the loop's batch of segmented messages, made from a batch of
// plain ones.
type segments struct {
	msgs [dgramBatch]unix.Mmsghdr
	iov  [dgramBatch]unix.Iovec
	ctl  [dgramBatch * segmentCtl]byte
	// from[j] is the index of the first plain message in msgs[j], and
	// from[len] the number of plain messages.
	from [dgramBatch + 1]int
}

// pack turns plain messages (one payload iovec each, Len its size) into
// as few segmented ones as it can, in order, and returns them.
func (g *segments) pack(plain []unix.Mmsghdr) []unix.Mmsghdr {
	j, iov, ctl := 0, 0, 0
	for i := 0; i < len(plain); {
		first := &plain[i]
		size, total := first.Len, int(first.Len)
		k := i + 1
		for k < len(plain) && plain[k-1].Len == size && plain[k].Len <= size && plain[k].Len > 0 &&
			total+int(plain[k].Len) <= maxSegmentBytes && sameDestination(&plain[k].Hdr, &first.Hdr) {
			total += int(plain[k].Len)
			k++
		}
		g.from[j] = i
		m := &g.msgs[j]
		*m = plain[i]
		if k-i > 1 {
			for n := i; n < k; n++ {
				g.iov[iov+n-i] = *plain[n].Hdr.Iov
			}
			m.Hdr.Iov = &g.iov[iov]
			m.Hdr.SetIovlen(k - i)
			iov += k - i
			c := g.ctl[ctl : ctl+segmentCtl]
			n := 0
			if first.Hdr.Controllen > 0 {
				n = copy(c, unsafe.Slice(first.Hdr.Control, first.Hdr.Controllen))
			}
			n += putSegmentSize(c[n:], int(size))
			m.Hdr.Control = &c[0]
			m.Hdr.SetControllen(n)
			m.Len = uint32(total)
			ctl += segmentCtl
		}
		j++
		i = k
	}
	g.from[j] = len(plain)
	return g.msgs[:j]
}

// sameDestination says whether two messages go to the same place: the same
// client name and control message (a reply), or both none (a flow's
// connected socket).
func sameDestination(a, b *unix.Msghdr) bool {
	return a.Name == b.Name && a.Namelen == b.Namelen && a.Control == b.Control && a.Controllen == b.Controllen
}

// putSegmentSize writes a UDP_SEGMENT control message into c.
func putSegmentSize(c []byte, size int) int {
	h := (*unix.Cmsghdr)(unsafe.Pointer(&c[0]))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(c[unix.CmsgLen(0):], uint16(size))
	return unix.CmsgSpace(2)
}

// sendDatagrams sends plain messages on fd with sendmmsg, segmented where
// it can be when segment is set. It reports how many of plain went, their
// payload bytes, and the error that stopped it.
func (l *loop) sendDatagrams(fd int, plain []unix.Mmsghdr, segment bool) (sent int, bytes int64, e unix.Errno) {
	if segment && !l.flows.noSegments && len(plain) > 1 {
		g := &l.flows.segments
		msgs := g.pack(plain)
		if len(msgs) < len(plain) {
			n, e := rawMmsg(unix.SYS_SENDMMSG, fd, msgs)
			for k := range n {
				bytes += int64(msgs[k].Len)
				if segs := g.from[k+1] - g.from[k]; segs > 1 {
					l.s.segmented.Add(int64(segs))
				}
			}
			sent = g.from[n]
			if e == 0 || n == len(msgs) || g.from[n+1]-g.from[n] == 1 ||
				(e != unix.EIO && e != unix.EINVAL && e != unix.ENOPROTOOPT) {
				return sent, bytes, e
			}
			// The kernel cannot segment on this way out: plain
			// datagrams from here on, starting with this run.
			l.flows.noSegments = true
			l.s.log.Debug("sending datagrams one by one: UDP segmentation offload is not available", "error", e.Error())
			plain = plain[sent:]
		}
	}
	n, e := rawMmsg(unix.SYS_SENDMMSG, fd, plain)
	for k := range n {
		bytes += int64(plain[k].Len)
	}
	return sent + n, bytes, e
}
