// SPDX-License-Identifier: Apache-2.0

package logging

import (
	"encoding/binary"
	"errors"
	"io"
	"iter"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// JournalSocket is where journald takes entries in its native protocol
// (systemd-journald.service(8)).
const JournalSocket = "/run/systemd/journal/socket"

// identifier is the SYSLOG_IDENTIFIER of every entry: the program's name,
// whatever the binary is called.
const identifier = "socket-proxyd"

// sendTimeout bounds one send, as systemd's own log.c does for everything
// but PID 1: the send blocks rather than lose an entry to a busy journald,
// but never hangs the proxy on a journald that is stuck.
const sendTimeout = 10 * time.Second

// StreamIsJournal reports whether w is the journal stream that
// JOURNAL_STREAM ("DEV:INO") names. systemd sets the variable for
// StandardError=journal, and children inherit it: a shell started from such
// a unit passes it on to a program whose stderr is a terminal. So, as
// systemd's own stderr_is_journal() does, the variable counts only when w's
// device and inode match it; a malformed value or a w that is not an
// *os.File does not.
func StreamIsJournal(journalStream string, w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || f == nil || journalStream == "" {
		return false
	}
	devText, inoText, ok := strings.Cut(journalStream, ":")
	if !ok {
		return false
	}
	dev, err := strconv.ParseUint(devText, 10, 64)
	if err != nil {
		return false
	}
	ino, err := strconv.ParseUint(inoText, 10, 64)
	if err != nil {
		return false
	}
	fi, err := f.Stat()
	if err != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && st.Dev == dev && st.Ino == ino
}

// Journal sends log entries to journald over its native protocol
// (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/), where each entry carries
// fields besides its message, so `journalctl CLIENT=…` can select them.
// go-systemd's journal package speaks the same protocol, but to a socket
// path fixed at build time; this one takes the path, so tests can bind a
// journal of their own.
type Journal struct {
	conn   *net.UnixConn
	errnos []errnoText // for ERRNO=, from the text of an error attr

	mu  sync.Mutex // guards buf, shared by concurrent Handle calls
	buf []byte
}

// DialJournal connects to journald's native socket at path (JournalSocket
// in production). An error means there is no journal to send to; the
// caller then writes lines to stderr, as before.
func DialJournal(path string) (*Journal, error) {
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	return &Journal{conn: conn, errnos: errnoTexts()}, nil
}

// Close closes the connection to journald.
func (j *Journal) Close() error { return j.conn.Close() }

// send writes one entry: MESSAGE is the line stderr would get (without the
// priority prefix), then PRIORITY, SYSLOG_IDENTIFIER, one field per attr
// and ERRNO when an "error" attr names one. An error means the entry did
// not reach journald, and the caller writes the line instead.
func (j *Journal) send(priority int, message string, attrs iter.Seq[slog.Attr]) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	b := appendField(j.buf[:0], "MESSAGE", message)
	b = appendField(b, "PRIORITY", strconv.Itoa(priority))
	b = appendField(b, "SYSLOG_IDENTIFIER", identifier)
	var errno unix.Errno
	for a := range attrs {
		if a.Equal(slog.Attr{}) {
			continue
		}
		v := a.Value.Resolve()
		name := fieldName(a.Key)
		switch name {
		case "", "MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "ERRNO":
			// Ours, or nothing left of the key: the message keeps it.
		default:
			b = appendField(b, name, v.String())
		}
		if errno == 0 {
			errno = j.errnoOf(a.Key, v)
		}
	}
	if errno != 0 {
		b = appendField(b, "ERRNO", strconv.Itoa(int(errno)))
	}
	j.buf = b
	if err := j.conn.SetWriteDeadline(time.Now().Add(sendTimeout)); err != nil {
		return err
	}
	_, err := j.conn.Write(b)
	if errors.Is(err, unix.EMSGSIZE) || errors.Is(err, unix.ENOBUFS) {
		err = j.sendSealed(b)
	}
	return err
}

// sendSealed sends an entry too large for one datagram as journald takes
// it: written to a memfd, sealed against any change, and the descriptor
// passed in an empty datagram (systemd.io/JOURNAL_NATIVE_PROTOCOL).
func (j *Journal) sendSealed(b []byte) error {
	fd, err := unix.MemfdCreate("socket-proxyd-journal-entry", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	for rest := b; len(rest) > 0; {
		n, err := unix.Write(fd, rest)
		if err != nil {
			return err
		}
		rest = rest[n:]
	}
	seals := unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE | unix.F_SEAL_SEAL
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		return err
	}
	// Go refuses WriteMsgUnix on a connected datagram socket.
	rc, err := j.conn.SyscallConn()
	if err != nil {
		return err
	}
	var sendErr error
	if err := rc.Write(func(s uintptr) bool {
		sendErr = unix.Sendmsg(int(s), nil, unix.UnixRights(fd), nil, 0)
		return sendErr != unix.EAGAIN
	}); err != nil {
		return err
	}
	return sendErr
}

// appendField encodes one field in the native protocol: KEY=value and a
// newline, or, for a value with a newline in it, KEY, a newline, the
// value's length as a little-endian uint64, the value and a newline.
func appendField(b []byte, key, value string) []byte {
	b = append(b, key...)
	if strings.IndexByte(value, '\n') < 0 {
		b = append(b, '=')
	} else {
		b = append(b, '\n')
		b = binary.LittleEndian.AppendUint64(b, uint64(len(value)))
	}
	b = append(b, value...)
	return append(b, '\n')
}

// fieldName turns an attr's key into a journal field name by journald's
// rules (journal_field_valid() in systemd): upper-case letters, digits and
// underscores (one for each other character), not starting with a digit or
// an underscore (those are the trusted fields journald adds), at most 64
// bytes; "" means nothing usable was left.
func fieldName(key string) string {
	b := make([]byte, 0, min(len(key), 64))
	for _, r := range key {
		if len(b) == 64 {
			break
		}
		c := byte('_')
		switch {
		case 'a' <= r && r <= 'z':
			c = byte(r - 'a' + 'A')
		case 'A' <= r && r <= 'Z', '0' <= r && r <= '9':
			c = byte(r)
		}
		if len(b) == 0 && (c == '_' || '0' <= c && c <= '9') {
			continue
		}
		b = append(b, c)
	}
	return string(b)
}

type errnoText struct {
	text  string
	errno unix.Errno
}

// errnoTexts lists the kernel's error texts as Go prints them
// ("connection refused").
func errnoTexts() []errnoText {
	var list []errnoText
	for e := unix.Errno(1); e < 256; e++ {
		if text := e.Error(); !strings.HasPrefix(text, "errno ") {
			list = append(list, errnoText{text, e})
		}
	}
	return list
}

// errnoOf finds the errno an attr carries: a syscall.Errno in an error
// value, or, in the text of an attr named "error" (the engine logs
// err.Error()), the kernel's error text that ends last, so "a: connection
// refused; b: timed out" gives ECONNREFUSED, the last real reason.
func (j *Journal) errnoOf(key string, v slog.Value) unix.Errno {
	if v.Kind() == slog.KindAny {
		if err, ok := v.Any().(error); ok {
			if e := unix.Errno(0); errors.As(err, &e) {
				return e
			}
			return j.errnoIn(err.Error())
		}
	}
	if key != "error" {
		return 0
	}
	return j.errnoIn(v.String())
}

func (j *Journal) errnoIn(s string) unix.Errno {
	var found unix.Errno
	end := -1
	for _, t := range j.errnos {
		for from := len(s); from >= 0; {
			i := strings.LastIndex(s[:from], t.text)
			if i < 0 {
				break
			}
			if e := i + len(t.text); wordAt(s, i, e) {
				if e > end || e == end && len(t.text) > len(found.Error()) {
					found, end = t.errno, e
				}
				break
			}
			from = i + len(t.text) - 1
		}
	}
	return found
}

// wordAt reports whether s[i:e] stands as words of its own, so "no data
// available" does not match inside "no data availableness".
func wordAt(s string, i, e int) bool {
	letter := func(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }
	return (i == 0 || !letter(s[i-1])) && (e == len(s) || !letter(s[e]))
}
