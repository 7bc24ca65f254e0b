// SPDX-License-Identifier: Apache-2.0

package logging

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestStreamIsJournal(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	file, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { file.Close() })
	devIno := func(f *os.File) (uint64, uint64) {
		fi, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		return st.Dev, st.Ino
	}
	pipeDev, pipeIno := devIno(w)
	fileDev, fileIno := devIno(file)
	tests := []struct {
		name   string
		stream string
		stderr io.Writer
		want   bool
	}{
		{"pipe, matching", fmt.Sprintf("%d:%d", pipeDev, pipeIno), w, true},
		{"file, matching", fmt.Sprintf("%d:%d", fileDev, fileIno), file, true},
		{"pipe, other inode", fmt.Sprintf("%d:%d", pipeDev, pipeIno+1), w, false},
		{"pipe, other device", fmt.Sprintf("%d:%d", pipeDev+1, pipeIno), w, false},
		{"file, the pipe's value", fmt.Sprintf("%d:%d", pipeDev, pipeIno), file, false},
		{"inherited by a terminal", "8:12345", w, false},
		{"unset", "", w, false},
		{"no colon", strconv.FormatUint(pipeIno, 10), w, false},
		{"garbage", "a:b", w, false},
		{"trailing garbage", fmt.Sprintf("%d:%d:0", pipeDev, pipeIno), w, false},
		{"not a file", fmt.Sprintf("%d:%d", pipeDev, pipeIno), &bytes.Buffer{}, false},
		{"nil file", fmt.Sprintf("%d:%d", pipeDev, pipeIno), (*os.File)(nil), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := StreamIsJournal(tt.stream, tt.stderr); got != tt.want {
				t.Errorf("StreamIsJournal(%q) = %v, want %v", tt.stream, got, tt.want)
			}
		})
	}
}

// fakeJournal is a unixgram socket bound where a test's Journal sends:
// it reads what journald would.
type fakeJournal struct {
	t    *testing.T
	path string
	conn *net.UnixConn
}

func newFakeJournal(t *testing.T) *fakeJournal {
	t.Helper()
	dir, err := os.MkdirTemp("", "spxj") // short: sun_path holds 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "socket")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &fakeJournal{t: t, path: path, conn: conn}
}

// logger returns a logger sending to the fake journal at level debug, and
// the buffer that stands for stderr.
func (f *fakeJournal) logger() (*slog.Logger, *bytes.Buffer) {
	f.t.Helper()
	j, err := DialJournal(f.path)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { j.Close() })
	var stderr bytes.Buffer
	return New(&stderr, Options{Journal: true, Level: slog.LevelDebug, Native: j}), &stderr
}

// entry reads the next datagram and decodes it.
func (f *fakeJournal) entry() map[string][]string {
	f.t.Helper()
	buf := make([]byte, 1<<16)
	if err := f.conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		f.t.Fatal(err)
	}
	n, err := f.conn.Read(buf)
	if err != nil {
		f.t.Fatalf("no entry reached the journal: %v", err)
	}
	fields, err := decodeEntry(buf[:n])
	if err != nil {
		f.t.Fatalf("%v in %q", err, buf[:n])
	}
	return fields
}

// nothing checks that no datagram is waiting.
func (f *fakeJournal) nothing() {
	f.t.Helper()
	if err := f.conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
		f.t.Fatal(err)
	}
	buf := make([]byte, 1<<16)
	if n, err := f.conn.Read(buf); err == nil {
		f.t.Errorf("unexpected entry %q", buf[:n])
	}
}

// decodeEntry reads the native protocol as journald does
// (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/): KEY=value lines, or KEY,
// a newline, a little-endian 64-bit length, that many bytes and a newline.
func decodeEntry(b []byte) (map[string][]string, error) {
	fields := make(map[string][]string)
	for len(b) > 0 {
		nl := bytes.IndexByte(b, '\n')
		if nl < 0 {
			return nil, errors.New("field without a final newline")
		}
		line := string(b[:nl])
		b = b[nl+1:]
		if key, value, ok := strings.Cut(line, "="); ok {
			fields[key] = append(fields[key], value)
			continue
		}
		if len(b) < 8 {
			return nil, fmt.Errorf("field %q without its length", line)
		}
		n := binary.LittleEndian.Uint64(b)
		b = b[8:]
		if uint64(len(b)) < n+1 || b[n] != '\n' {
			return nil, fmt.Errorf("field %q: %d bytes and a newline do not follow", line, n)
		}
		fields[line] = append(fields[line], string(b[:n]))
		b = b[n+1:]
	}
	return fields, nil
}

// one returns the single value of key, failing when there is not exactly one.
func one(t *testing.T, fields map[string][]string, key string) string {
	t.Helper()
	if len(fields[key]) != 1 {
		t.Errorf("%s: %q, want one value; entry %q", key, fields[key], fields)
		return ""
	}
	return fields[key][0]
}

// TestNativeEntry: a record becomes one datagram with the line's text as
// MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, a field per attr and ERRNO; stderr
// gets nothing.
func TestNativeEntry(t *testing.T) {
	f := newFakeJournal(t)
	log, stderr := f.logger()
	log.With("listener", "web").Warn("cannot connect to backend, closing client",
		"client", "192.0.2.1:4711", "backend", "127.0.0.1:8080",
		"error", "127.0.0.1:8080: connection refused; 127.0.0.1:8080: timed out", "retried_for", "10s")
	e := f.entry()

	// The message is the line stderr would have carried, prefix aside.
	var line bytes.Buffer
	New(&line, Options{Journal: true}).With("listener", "web").Warn("cannot connect to backend, closing client",
		"client", "192.0.2.1:4711", "backend", "127.0.0.1:8080",
		"error", "127.0.0.1:8080: connection refused; 127.0.0.1:8080: timed out", "retried_for", "10s")
	if got, want := one(t, e, "MESSAGE"), strings.TrimSuffix(strings.TrimPrefix(line.String(), "<4>"), "\n"); got != want {
		t.Errorf("MESSAGE=%q, want the line's text %q", got, want)
	}
	want := map[string]string{
		"PRIORITY":          "4",
		"SYSLOG_IDENTIFIER": "socket-proxyd",
		"CLIENT":            "192.0.2.1:4711",
		"BACKEND":           "127.0.0.1:8080",
		"LISTENER":          "web",
		"ERROR":             "127.0.0.1:8080: connection refused; 127.0.0.1:8080: timed out",
		"ERRNO":             strconv.Itoa(int(unix.ECONNREFUSED)),
		"RETRIED_FOR":       "10s",
	}
	for k, v := range want {
		if got := one(t, e, k); got != v {
			t.Errorf("%s=%q, want %q", k, got, v)
		}
	}
	if len(e) != len(want)+1 {
		t.Errorf("fields %q, want MESSAGE and %v", e, want)
	}
	if stderr.Len() != 0 {
		t.Errorf("stderr got %q while the journal took the entry", stderr.String())
	}
}

func TestNativePriorities(t *testing.T) {
	f := newFakeJournal(t)
	log, _ := f.logger()
	for _, tt := range []struct {
		level slog.Level
		want  string
	}{
		{slog.LevelError, "3"}, {slog.LevelWarn, "4"}, {LevelNotice, "5"},
		{slog.LevelInfo, "6"}, {slog.LevelDebug, "7"},
	} {
		log.Log(context.Background(), tt.level, "m")
		if got := one(t, f.entry(), "PRIORITY"); got != tt.want {
			t.Errorf("level %v: PRIORITY=%s, want %s", tt.level, got, tt.want)
		}
	}
}

// TestNativeLevelFilters: below the level nothing is sent at all.
func TestNativeLevelFilters(t *testing.T) {
	f := newFakeJournal(t)
	j, err := DialJournal(f.path)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	log := New(&bytes.Buffer{}, Options{Journal: true, Level: slog.LevelWarn, Native: j})
	log.Info("hidden")
	log.Debug("hidden")
	f.nothing()
	log.Warn("shown")
	if got := one(t, f.entry(), "MESSAGE"); got != "shown" {
		t.Errorf("MESSAGE=%q", got)
	}
}

// TestNativeNewlines: a value with a newline takes the protocol's
// binary form, and arrives whole.
func TestNativeNewlines(t *testing.T) {
	f := newFakeJournal(t)
	log, _ := f.logger()
	log.Info("two\nlines", "detail", "a\nb=c\n")
	e := f.entry()
	if got := one(t, e, "DETAIL"); got != "a\nb=c\n" {
		t.Errorf("DETAIL=%q", got)
	}
	if got := one(t, e, "MESSAGE"); got != `two`+"\n"+`lines detail="a\nb=c\n"` {
		t.Errorf("MESSAGE=%q", got)
	}
}

// TestNativeFieldNames: attr keys become valid field names; keys that
// would collide with the fields the handler sets stay in the message only.
func TestNativeFieldNames(t *testing.T) {
	f := newFakeJournal(t)
	log, _ := f.logger()
	long := strings.Repeat("k", 70)
	log.Info("m", "bytes-in", 1, "_trusted", 2, "9lives", 3, "Ünï", 4, "priority", "high",
		"message", "x", "errno", "y", "syslog.identifier", "z", "", "empty", long, 5)
	e := f.entry()
	for k, v := range map[string]string{
		"BYTES_IN": "1", "TRUSTED": "2", "LIVES": "3", "N_": "4", "PRIORITY": "6",
		"MESSAGE":           `m bytes-in=1 _trusted=2 9lives=3 Ünï=4 priority=high message=x errno=y syslog.identifier=z =empty ` + long + "=5",
		"SYSLOG_IDENTIFIER": "socket-proxyd", strings.Repeat("K", 64): "5",
	} {
		if got := one(t, e, k); got != v {
			t.Errorf("%s=%q, want %q", k, got, v)
		}
	}
	if _, ok := e["ERRNO"]; ok {
		t.Errorf("ERRNO=%q from an attr named errno", e["ERRNO"])
	}
	for k := range e {
		if !validField(k) {
			t.Errorf("invalid field name %q", k)
		}
	}
}

// validField is systemd's journal_field_valid() for fields a client sends.
func validField(k string) bool {
	if k == "" || len(k) > 64 || k[0] == '_' || '0' <= k[0] && k[0] <= '9' {
		return false
	}
	for _, c := range []byte(k) {
		if (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

func TestFieldName(t *testing.T) {
	for _, tt := range []struct{ key, want string }{
		{"client", "CLIENT"}, {"bytes_in", "BYTES_IN"}, {"exit-idle.time", "EXIT_IDLE_TIME"},
		{"__x", "X"}, {"2xx", "XX"}, {"_9_a", "A"}, {"", ""}, {"___", ""}, {"ü", ""}, {"Ünï", "N_"}, {"a→b", "A_B"},
		{strings.Repeat("a", 65), strings.Repeat("A", 64)},
		// The edges of each class, and their ASCII neighbours.
		{"az", "AZ"}, {"AZ", "AZ"}, {"x09", "X09"}, {"9x", "X"},
		{"x`{", "X__"}, {"x@[", "X__"}, {"x/:", "X__"},
	} {
		if got := fieldName(tt.key); got != tt.want {
			t.Errorf("fieldName(%q) = %q, want %q", tt.key, got, tt.want)
		}
	}
}

// TestNativeErrno: ERRNO= is the number of the errno an error attr
// carries, as a value or in its text.
func TestNativeErrno(t *testing.T) {
	f := newFakeJournal(t)
	log, _ := f.logger()
	tests := []struct {
		name string
		attr slog.Attr
		want string // "" for no ERRNO
	}{
		{"text", slog.String("error", "connection refused"), "111"},
		{"text after a name", slog.String("error", "/run/x.sock: no such file or directory"), "2"},
		{"last real reason wins", slog.String("error", "a: connection refused; b: connection reset by peer; c: timed out"), "104"},
		{"connection timed out", slog.String("error", "a: connection timed out"), "110"},
		{"timed out is no errno", slog.String("error", "a: timed out"), ""},
		{"longest text", slog.String("error", "b: no such device or address"), "6"},
		{"EMFILE", slog.String("error", "socket: too many open files"), "24"},
		{"EAGAIN", slog.String("error", "resource temporarily unavailable"), "11"},
		{"not inside a word", slog.String("error", "connection refusedness"), ""},
		{"other attrs' text is not an error", slog.String("reason", "connection refused"), ""},
		{"no errno", slog.String("error", "no address to connect to"), ""},
		{"Errno value", slog.Any("error", unix.ECONNRESET), "104"},
		{"Errno without a text", slog.Any("error", unix.Errno(200)), "200"},
		{"wrapped Errno", slog.Any("error", fmt.Errorf("read: %w", os.NewSyscallError("read", syscall.EPIPE))), "32"},
		{"error value with errno text", slog.Any("cause", errors.New("dial: network is unreachable")), "101"},
	}
	for _, tt := range tests {
		log.Warn(tt.name, tt.attr)
		e := f.entry()
		switch got := e["ERRNO"]; {
		case tt.want == "" && got != nil:
			t.Errorf("%s: ERRNO=%q, want none", tt.name, got)
		case tt.want != "" && (len(got) != 1 || got[0] != tt.want):
			t.Errorf("%s: ERRNO=%q, want %s", tt.name, got, tt.want)
		}
	}
}

// TestNativeFallsBack: without a journal the records are lines on stderr,
// as before: no socket to connect to, or a journal that went away.
func TestNativeFallsBack(t *testing.T) {
	if _, err := DialJournal(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("DialJournal to a missing socket succeeded")
	}
	f := newFakeJournal(t)
	log, stderr := f.logger()
	log.Warn("before", "client", "c")
	if got := one(t, f.entry(), "CLIENT"); got != "c" {
		t.Errorf("CLIENT=%q", got)
	}
	f.conn.Close()
	log.Warn("after", "client", "c")
	log.Debug("again")
	if want := "<4>after client=c\n<7>again\n"; stderr.String() != want {
		t.Errorf("stderr %q, want %q", stderr.String(), want)
	}
}

// TestNativeConcurrent: records logged at once from several goroutines
// (the engine's loop, main's signal watcher) each arrive whole.
func TestNativeConcurrent(t *testing.T) {
	f := newFakeJournal(t)
	log, stderr := f.logger()
	const writers, each = 4, 25
	done := make(chan struct{})
	for w := range writers {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range each {
				log.Info("event", "client", fmt.Sprintf("c%d-%d", w, i), "detail", strings.Repeat("x", 100*w+1))
			}
		}()
	}
	seen := make(map[string]bool)
	for range writers * each {
		e := f.entry()
		client := one(t, e, "CLIENT")
		if seen[client] || one(t, e, "MESSAGE") != "event client="+client+" detail="+one(t, e, "DETAIL") {
			t.Fatalf("entry mixed up or repeated: %q", e)
		}
		seen[client] = true
	}
	for range writers {
		<-done
	}
	if stderr.Len() != 0 {
		t.Errorf("stderr got %q", stderr.String())
	}
}

// sealedEntry reads the next datagram, which must be empty and carry one
// descriptor, a sealed memfd, and decodes the entry in it.
func (f *fakeJournal) sealedEntry() map[string][]string {
	f.t.Helper()
	if err := f.conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		f.t.Fatal(err)
	}
	buf, oob := make([]byte, 16), make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := f.conn.ReadMsgUnix(buf, oob)
	if err != nil || n != 0 {
		f.t.Fatalf("read %d bytes, %v; want an empty datagram", n, err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		f.t.Fatalf("control messages %v, %v; want one", msgs, err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		f.t.Fatalf("descriptors %v, %v; want one", fds, err)
	}
	memfd := os.NewFile(uintptr(fds[0]), "memfd")
	defer memfd.Close()
	seals, err := unix.FcntlInt(uintptr(fds[0]), unix.F_GET_SEALS, 0)
	if want := unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE | unix.F_SEAL_SEAL; err != nil || seals&want != want {
		f.t.Errorf("seals %#x, %v; journald takes only a sealed memfd", seals, err)
	}
	b, err := io.ReadAll(io.NewSectionReader(memfd, 0, 1<<30)) // from the start, as journald maps it
	if err != nil {
		f.t.Fatal(err)
	}
	fields, err := decodeEntry(b)
	if err != nil {
		f.t.Fatalf("%v in an entry of %d bytes", err, len(b))
	}
	return fields
}

// TestLargeEntryThroughMemfd: an entry larger than a datagram can be (a
// field over 200 KiB) reaches the journal whole, in a sealed memfd, as
// journald's protocol says; stderr gets nothing.
func TestLargeEntryThroughMemfd(t *testing.T) {
	f := newFakeJournal(t)
	log, stderr := f.logger()
	big := strings.Repeat("0123456789abcdef", 16<<10) + "\nand a second line"
	log.Warn("a large entry", "detail", big)
	fields := f.sealedEntry()
	if got := one(t, fields, "DETAIL"); got != big {
		t.Fatalf("DETAIL of %d bytes arrived, want %d", len(got), len(big))
	}
	if got := one(t, fields, "PRIORITY"); got != "4" {
		t.Errorf("PRIORITY %q", got)
	}
	if stderr.Len() != 0 {
		t.Errorf("stderr got %d bytes", stderr.Len())
	}
}
