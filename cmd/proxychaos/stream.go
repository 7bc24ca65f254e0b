// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The stream protocol. The client opens with a header (its id, the seed of
// both payloads, how many bytes go each way, the mode, its own address);
// each side then sends its payload, generated from the seed, followed by a
// trailer, and half-closes. The receiver regenerates the payload and
// compares every byte, then wants the trailer, then the end: an end before
// the trailer is a cut, however cleanly it came.

var (
	streamMagic = [8]byte{'C', 'H', 'A', 'O', 'S', '1', '\n', 0}
	trailer     = [8]byte{'C', 'H', 'A', 'O', 'S', 'E', 'N', 'D'}
	errCorrupt  = errors.New("corrupt")
)

const streamHeaderLen = 8 + 8 + 8 + 8 + 8 + 1 + 1

// Modes: who sends when.
const (
	modeBoth     = 0 // both at once
	modeUpload   = 1 // the client sends and half-closes, then the backend sends
	modeDownload = 2 // the backend sends and half-closes, then the client sends
	// modeRequest: the client sends its upload and waits for the whole
	// reply before it half-closes; the backend replies once it has the
	// trailer, not the end. A request and its reply, as on a D-Bus
	// socket: here bytes held back by the proxy are a stall, not a delay
	// that the client's end would make good.
	modeRequest = 3
)

// payload is the byte stream of one direction of one connection.
func payload(seed uint64, dir byte) *rand.ChaCha8 {
	var k [32]byte
	binary.LittleEndian.PutUint64(k[:], seed)
	k[8] = dir
	return rand.NewChaCha8(k)
}

// logSize is log-uniform in [1, max], or 0 one time in eight.
func logSize(r *rand.Rand, max int) int {
	if r.IntN(8) == 0 {
		return 0
	}
	return int(math.Exp(r.Float64() * math.Log(float64(max))))
}

// streamPlan is what an operation's seed says about its stream.
type streamPlan struct {
	up, down int
	mode     byte
	parts    []int           // the upload in pieces
	pauses   []time.Duration // before each piece
	urgent   int             // offset of the byte sent as urgent data, or -1
	slow     bool            // the client reads in small pieces, slowly
	// fds is the offset of the upload's piece sent with descriptors
	// (SCM_RIGHTS) on a unix stream, or -1; fdLen its length at most
	// (the piece ends with its part), nfds how many descriptors.
	fds, fdLen, nfds int
	// hangUp, unless -1: the backend reads that many bytes of the upload,
	// sends its whole download and closes, with the rest of the upload
	// unread or still to come, as a server that answers and hangs up
	// does. The client sends its upload all the same (a write may then
	// fail) and must read the whole download; on TCP the backend's close
	// with bytes unread is a reset, which may cut it.
	hangUp int
}

func planStream(seed uint64, tcp bool) streamPlan {
	r := rand.New(rand.NewPCG(seed, 1))
	p := streamPlan{up: logSize(r, 1<<20), down: logSize(r, 1<<20), mode: byte(r.IntN(3)), urgent: -1}
	n := 1 + r.IntN(4)
	left := p.up
	for i := 0; i < n; i++ {
		k := left
		if i < n-1 && left > 0 {
			k = r.IntN(left + 1)
		}
		p.parts = append(p.parts, k)
		left -= k
		var pause time.Duration
		if r.IntN(3) == 0 {
			pause = time.Duration(r.IntN(300)) * time.Millisecond
		}
		p.pauses = append(p.pauses, pause)
	}
	if tcp && p.up > 0 && r.IntN(4) == 0 {
		p.urgent = r.IntN(p.up)
	}
	p.slow = r.IntN(5) == 0
	// Drawn last, so that the choices above stay what they were for
	// every seed.
	p.fds = -1
	if !tcp && p.up > 0 && r.IntN(4) == 0 {
		p.fds = r.IntN(p.up)
		p.fdLen = 1 + int(math.Exp(r.Float64()*math.Log(float64(p.up-p.fds))))
		p.nfds = 1 + r.IntN(3)
		if r.IntN(2) == 0 {
			p.mode = modeRequest
		}
	}
	p.hangUp = -1
	if p.up > 0 && r.IntN(10) == 0 {
		p.hangUp = r.IntN(p.up)
	}
	return p
}

// outcome is how one side saw a connection end.
type outcome struct {
	err  error
	got  int64 // payload bytes received and checked
	what string
}

func (o outcome) ok() bool { return o.err == nil }

// classify names an error the way the oracle thinks of it.
func classify(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, errCorrupt):
		return "corrupt"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, errEnd):
		return "cut"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ENOTCONN):
		// ENOTCONN: a shutdown of a socket the peer has reset.
		return "reset"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	}
	return "error"
}

// readPayload reads n bytes and compares them with g, then the trailer,
// then the end.
func readPayload(c net.Conn, g *rand.ChaCha8, n int, slow bool, what string) outcome {
	o := readBody(c, g, n, slow, what)
	if o.err != nil {
		return o
	}
	return readEnd(c, what, o.got)
}

// readBody reads n bytes and compares them with g, then the trailer.
func readBody(c net.Conn, g *rand.ChaCha8, n int, slow bool, what string) outcome {
	buf, want := make([]byte, 64<<10), make([]byte, 64<<10)
	var got int64
	var slept time.Duration
	for got < int64(n) {
		k := min(len(buf), n-int(got))
		if slow {
			k = min(k, 1024+int(got%3072))
			if slept < time.Second {
				time.Sleep(2 * time.Millisecond)
				slept += 2 * time.Millisecond
			}
		}
		m, err := c.Read(buf[:k])
		if m > 0 {
			g.Read(want[:m])
			if i := firstDiff(buf[:m], want[:m]); i >= 0 {
				return outcome{err: fmt.Errorf("%w: %s byte %d of %d is %#x, want %#x", errCorrupt, what, got+int64(i), n, buf[i], want[i]), got: got}
			}
			got += int64(m)
		}
		if err != nil {
			return outcome{err: fmt.Errorf("%s: after %d of %d bytes: %w", what, got, n, err), got: got}
		}
	}
	var tr [8]byte
	if m, err := io.ReadFull(c, tr[:]); err != nil {
		return outcome{err: fmt.Errorf("%s: all %d bytes, then %d of the trailer: %w", what, n, m, err), got: got}
	}
	if tr != trailer {
		return outcome{err: fmt.Errorf("%w: %s: %d bytes, then %q where the trailer goes", errCorrupt, what, n, tr[:]), got: got}
	}
	return outcome{got: got}
}

// readEnd wants the end of the stream after the trailer.
func readEnd(c net.Conn, what string, got int64) outcome {
	var one [1]byte
	m, err := c.Read(one[:])
	if m > 0 {
		return outcome{err: fmt.Errorf("%w: %s: a byte %#x after the trailer", errCorrupt, what, one[0]), got: got}
	}
	if err != io.EOF {
		return outcome{err: fmt.Errorf("%s: after the trailer, %w instead of the end", what, err), got: got}
	}
	return outcome{got: got}
}

// readEndAfterHangUp is readEnd for a client whose backend hung up with
// its upload unread: the proxy then closes the client's socket with bytes
// of the client's unread too, which a unix socket reports as one
// ECONNRESET, after the bytes before it.
func readEndAfterHangUp(c net.Conn, what string, got int64) outcome {
	o := readEnd(c, what, got)
	if o.err != nil && errors.Is(o.err, syscall.ECONNRESET) {
		return readEnd(c, what, got)
	}
	return o
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// descriptors are what a stream sends with SCM_RIGHTS: the write end of
// a pipe, n times, sent at offset off with at most len bytes.
type descriptors struct {
	off, len, n int
	w           *os.File
}

// writePayload sends n bytes of g in parts, pausing before each, with the
// byte at urgent (if not -1) sent as urgent data and the piece at fds.off
// (if fds is not nil) sent with descriptors, then the trailer.
func writePayload(c net.Conn, g *rand.ChaCha8, parts []int, pauses []time.Duration, urgent int, fds *descriptors, gate *gate) error {
	buf := make([]byte, 64<<10)
	off := 0
	for i, part := range parts {
		if i < len(pauses) && pauses[i] > 0 {
			time.Sleep(pauses[i])
		}
		for part > 0 {
			if gate != nil {
				gate.wait()
			}
			k := min(part, len(buf))
			if fds != nil && fds.off >= off && fds.off < off+k {
				k = fds.off - off // up to the piece with descriptors
				if k == 0 {
					k = min(part, fds.len, len(buf))
					g.Read(buf[:k])
					if err := sendDescriptors(c, buf[:k], fds); err != nil {
						return err
					}
					off += k
					part -= k
					continue
				}
			}
			if urgent >= off && urgent < off+k {
				k = urgent - off // up to the urgent byte
				if k == 0 {
					g.Read(buf[:1])
					if err := sendUrgent(c, buf[0]); err != nil {
						return err
					}
					off++
					part--
					continue
				}
			}
			g.Read(buf[:k])
			if _, err := c.Write(buf[:k]); err != nil {
				return err
			}
			off += k
			part -= k
		}
	}
	_, err := c.Write(trailer[:])
	return err
}

// sendDescriptors sends b as one message with fds.n copies of fds.w.
func sendDescriptors(c net.Conn, b []byte, fds *descriptors) error {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		_, err := c.Write(b)
		return err
	}
	rights := make([]int, fds.n)
	for i := range rights {
		rights[i] = int(fds.w.Fd())
	}
	n, _, err := uc.WriteMsgUnix(b, unix.UnixRights(rights...), nil)
	if err == nil && n < len(b) {
		_, err = c.Write(b[n:])
	}
	return err
}

func sendUrgent(c net.Conn, b byte) error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		_, err := c.Write([]byte{b})
		return err
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	werr := rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), []byte{b}, unix.MSG_OOB, nil)
		return serr != unix.EAGAIN
	})
	if werr != nil {
		return werr
	}
	return serr
}

// descriptorsClosed wants the pipe whose write end went over the stream
// closed everywhere once the stream is over: the proxy does not pass
// descriptors on, and keeps none (the kernel closes them when the proxy
// reads the message with no room for them).
func descriptorsClosed(fds *descriptors, pr *os.File) error {
	fds.w.Close()
	pr.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	if _, err := pr.Read(b[:]); err != io.EOF {
		return fmt.Errorf("descriptors: the pipe sent with the upload is still open 5s after the stream ended: %v", err)
	}
	return nil
}

func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func streamHeader(id, seed uint64, p streamPlan, local string) []byte {
	b := make([]byte, 0, streamHeaderLen+len(local))
	b = append(b, streamMagic[:]...)
	b = binary.BigEndian.AppendUint64(b, id)
	b = binary.BigEndian.AppendUint64(b, seed)
	b = binary.BigEndian.AppendUint64(b, uint64(p.up))
	b = binary.BigEndian.AppendUint64(b, uint64(p.down))
	b = append(b, p.mode, byte(len(local)))
	return append(b, local...)
}

// runStream is the client of one stream connection: it returns what it
// saw and whether the proxy refused it (closed before a byte came back).
func runStream(network, addr string, id, seed uint64, p streamPlan, deadline time.Duration) (out outcome, local string) {
	c, err := net.DialTimeout(network, addr, 10*time.Second)
	if err != nil {
		return outcome{err: fmt.Errorf("connect: %w", err), what: "connect"}, ""
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(deadline))
	if network == "tcp" {
		local = c.LocalAddr().String()
	}
	if _, err := c.Write(streamHeader(id, seed, p, local)); err != nil {
		return outcome{err: fmt.Errorf("header: %w", err), what: "header"}, local
	}
	up, down := payload(seed, 'u'), payload(seed, 'd')
	var fds *descriptors
	if p.fds >= 0 && network == "unix" {
		pr, pw, err := os.Pipe()
		if err != nil {
			return outcome{err: fmt.Errorf("descriptors: %w", err), what: "pipe"}, local
		}
		defer pr.Close()
		defer pw.Close()
		fds = &descriptors{off: p.fds, len: p.fdLen, n: p.nfds, w: pw}
		defer func() {
			if out.err == nil {
				out.err = descriptorsClosed(fds, pr)
			}
		}()
	}
	upload := func() error {
		if err := writePayload(c, up, p.parts, p.pauses, p.urgent, fds, nil); err != nil {
			return fmt.Errorf("upload: %w", err)
		}
		return nil
	}
	send := func() error {
		if err := upload(); err != nil {
			return err
		}
		return closeWrite(c)
	}
	if p.hangUp >= 0 {
		errc := make(chan error, 1)
		if p.mode == modeUpload {
			// All of it first, as a client that reads only once it
			// has sent does: a proxy that stops reading once the
			// backend is gone would leave it stuck.
			errc <- send()
		} else {
			go func() { errc <- send() }()
		}
		// The upload may fail once the backend is gone.
		o := readBody(c, down, p.down, p.slow, "download")
		if o.err == nil {
			o = readEndAfterHangUp(c, "download", o.got)
		}
		c.Close() // the sender stops too
		// On TCP a write that meets the reset takes it (ECONNRESET
		// once), and a read after it sees only the end: that end is
		// the reset. A unix socket has none to take.
		if sendErr := <-errc; network == "tcp" && classify(o.err) == "cut" && classify(sendErr) == "reset" {
			o.err = fmt.Errorf("%w, and then %v", sendErr, o.err)
		}
		return o, local
	}
	switch p.mode {
	case modeRequest:
		if err := upload(); err != nil {
			return outcome{err: err, what: "upload"}, local
		}
		o := readPayload(c, down, p.down, p.slow, "reply")
		if o.err == nil {
			o.err = closeWrite(c)
		}
		return o, local
	case modeUpload:
		if err := send(); err != nil {
			return outcome{err: err, what: "upload"}, local
		}
		return readPayload(c, down, p.down, p.slow, "download"), local
	case modeDownload:
		o := readPayload(c, down, p.down, p.slow, "download")
		if o.err != nil {
			return o, local
		}
		if err := send(); err != nil {
			return outcome{err: err, got: o.got, what: "upload"}, local
		}
		return o, local
	}
	errc := make(chan error, 1)
	go func() { errc <- send() }()
	o := readPayload(c, down, p.down, p.slow, "download")
	if o.err != nil {
		c.Close() // the sender stops too
		<-errc
		return o, local
	}
	if err := <-errc; err != nil {
		return outcome{err: err, got: o.got}, local
	}
	return o, local
}
