// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/testlaunch"
)

// proxy is the socket-proxyd under test: its listening sockets, which this
// process holds so that a restart finds them again, as systemd does; its
// NOTIFY_SOCKET, a fake systemd with an fd store; and the running process.
type proxy struct {
	bin, dir string
	args     []string
	sockets  []testlaunch.Socket
	notify   *notifyStore
	log      *os.File

	mu   sync.Mutex
	proc *testlaunch.Proc
}

func (p *proxy) start(extra []testlaunch.Socket) error {
	// Counted before the start: a proxy quicker than this goroutine
	// sends READY=1 before a later count would see it.
	ready := p.notify.count("READY=1")
	spec := testlaunch.Spec{Path: p.bin, Args: p.args, Sockets: append(append([]testlaunch.Socket(nil), p.sockets...), extra...),
		Extra: []string{"NOTIFY_SOCKET=" + p.notify.path}, Stdout: p.log, Stderr: p.log}
	proc, err := testlaunch.Start(spec)
	for _, s := range extra {
		s.File.Close()
	}
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.proc = proc
	p.mu.Unlock()
	return p.notify.waitFor("READY=1", ready, proc, 10*time.Second)
}

func (p *proxy) current() *testlaunch.Proc {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.proc
}

func (p *proxy) pid() int { return p.current().Pid }

func (p *proxy) signal(s syscall.Signal) error { return p.current().Signal(s) }

func (p *proxy) logTail(n int) string {
	b, _ := os.ReadFile(p.log.Name())
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// notifyStore is systemd's end of NOTIFY_SOCKET: it counts the messages
// (READY=1, ...), keeps the last STATUS=, and is an fd store (FDSTORE=1
// with FDNAME=).
type notifyStore struct {
	path string
	conn *net.UnixConn
	done chan struct{}

	mu     sync.Mutex
	seen   map[string]int // how many times each line came
	status string
	// dropped says some STATUS= counted a dropped datagram. Sticky: a
	// reload or a restart starts the proxy's counters again at 0.
	dropped bool
	stored  []testlaunch.Socket
	synced  chan struct{}
}

func newNotifyStore(dir string) (*notifyStore, error) {
	path := filepath.Join(dir, "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	s := &notifyStore{path: path, conn: c, done: make(chan struct{}), synced: make(chan struct{}, 1), seen: map[string]int{}}
	go s.receive()
	return s, nil
}

func (s *notifyStore) close() {
	s.conn.Close()
	<-s.done
	for _, f := range s.stored {
		f.File.Close()
	}
}

func (s *notifyStore) receive() {
	defer close(s.done)
	buf, oob := make([]byte, 8192), make([]byte, syscall.CmsgSpace(253*4))
	for {
		n, oobn, _, _, err := s.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			return
		}
		var fds []int
		if cmsgs, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range cmsgs {
				if r, err := syscall.ParseUnixRights(&m); err == nil {
					fds = append(fds, r...)
				}
			}
		}
		fields := map[string]string{}
		s.mu.Lock()
		for _, line := range strings.Split(string(buf[:n]), "\n") {
			k, v, _ := strings.Cut(line, "=")
			fields[k] = v
			if k == "STATUS" {
				s.status = v
				s.dropped = s.dropped || statusCount(v, "dropped") > 0
			} else if k != "FDNAME" && k != "MONOTONIC_USEC" {
				s.seen[line]++ // bounded: lines without a name or a clock in them
			}
		}
		name := fields["FDNAME"]
		switch {
		case fields["SYNC"] == "1":
			select {
			case s.synced <- struct{}{}:
			default:
			}
		case fields["FDSTORE"] == "1":
			for _, fd := range fds {
				syscall.CloseOnExec(fd)
				s.stored = append(s.stored, testlaunch.Socket{File: os.NewFile(uintptr(fd), name), Name: name})
			}
			fds = nil
		case fields["FDSTOREREMOVE"] == "1":
			kept := s.stored[:0]
			for _, f := range s.stored {
				if f.Name == name {
					f.File.Close()
				} else {
					kept = append(kept, f)
				}
			}
			s.stored = kept
		}
		s.mu.Unlock()
		for _, fd := range fds {
			syscall.Close(fd)
		}
	}
}

// take hands the stored descriptors to the next instance, as systemd does,
// once every message sent before it is handled.
func (s *notifyStore) take() ([]testlaunch.Socket, error) {
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: s.path, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if _, err := c.Write([]byte("SYNC=1")); err != nil {
		return nil, err
	}
	select {
	case <-s.synced:
	case <-time.After(10 * time.Second):
		return nil, fmt.Errorf("the fake fd store did not get to its SYNC=1 in 10s")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []testlaunch.Socket
	for _, f := range s.stored {
		fd, err := syscall.Dup(int(f.File.Fd()))
		if err != nil {
			return nil, err
		}
		syscall.CloseOnExec(fd)
		out = append(out, testlaunch.Socket{File: os.NewFile(uintptr(fd), f.Name), Name: f.Name})
	}
	return out, nil
}

// droppedOnce says whether the proxy has counted a dropped datagram since
// the run started, across reloads and restarts.
func (s *notifyStore) droppedOnce() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropped
}

func (s *notifyStore) lastStatus() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// count says how many times msg has come so far.
func (s *notifyStore) count(msg string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[msg]
}

// waitFor waits for msg to come once more than the before that count gave.
func (s *notifyStore) waitFor(msg string, before int, proc *testlaunch.Proc, d time.Duration) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if s.count(msg) > before {
			return nil
		}
		if proc.Exited() {
			return fmt.Errorf("the proxy exited before %s: %v", msg, proc.Err())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("no %s from the proxy in %v", msg, d)
}

// statusCount reads "N what" from a STATUS= line ("3 dropped").
func statusCount(line, what string) int64 {
	for _, part := range strings.Split(line, ", ") {
		if f := strings.Fields(part); len(f) >= 2 && strings.Join(f[1:], " ") == what {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			return n
		}
	}
	return 0
}

// sample is what the proxy holds at one moment.
type sample struct {
	fds, threads, children int
	rssKiB                 int64
}

func (s sample) String() string {
	return fmt.Sprintf("%d fds, %d threads, %d children, RSS %d KiB", s.fds, s.threads, s.children, s.rssKiB)
}

func takeSample(pid int) (sample, error) {
	var s sample
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return s, err
	}
	s.fds = len(ents)
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		fs := strings.Fields(v)
		if len(fs) == 0 {
			continue
		}
		switch k {
		case "VmRSS":
			s.rssKiB, _ = strconv.ParseInt(fs[0], 10, 64)
		case "Threads":
			s.threads, _ = strconv.Atoi(fs[0])
		}
	}
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		s.children += len(strings.Fields(string(b)))
	}
	return s, nil
}

// kernelDrops counts the datagrams the kernel dropped on the UDP sockets
// of the proxy and of this process (the drops column of /proc/net/udp and
// udp6), keeping for each socket the most it has seen, so that a socket
// that closes keeps its count.
type kernelDrops struct {
	mu    sync.Mutex
	seen  map[string]int64
	total int64
}

func (k *kernelDrops) sample(pids ...int) int64 {
	inodes := map[string]bool{}
	for _, pid := range pids {
		dir := fmt.Sprintf("/proc/%d/fd", pid)
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if t, err := os.Readlink(dir + "/" + e.Name()); err == nil && strings.HasPrefix(t, "socket:[") {
				inodes[t[8:len(t)-1]] = true
			}
		}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.seen == nil {
		k.seen = map[string]int64{}
	}
	for _, file := range []string{"/proc/net/udp", "/proc/net/udp6"} {
		b, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 13 || !inodes[f[9]] {
				continue
			}
			d, _ := strconv.ParseInt(f[len(f)-1], 10, 64)
			if d > k.seen[f[9]] {
				k.total += d - k.seen[f[9]]
				k.seen[f[9]] = d
			}
		}
	}
	return k.total
}
