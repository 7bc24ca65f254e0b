// SPDX-License-Identifier: Apache-2.0

package activation

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "spx")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// socketFile makes a raw socket of the given type and wraps it as systemd's
// passing would, under the given name.
func socketFile(t *testing.T, domain, typ int, listen bool, name string) *os.File {
	t.Helper()
	fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if listen {
		if err := unix.Listen(fd, 8); err != nil {
			t.Fatal(err)
		}
	}
	f := os.NewFile(uintptr(fd), name)
	t.Cleanup(func() { f.Close() })
	return f
}

func TestFromFileRejects(t *testing.T) {
	regular, err := os.CreateTemp(t.TempDir(), "plain")
	if err != nil {
		t.Fatal(err)
	}
	defer regular.Close()
	tests := []struct {
		name    string
		file    *os.File
		mention string
	}{
		{name: "not listening", file: socketFile(t, unix.AF_INET, unix.SOCK_STREAM, false, "web"), mention: "Accept=no"},
		{name: "regular file", file: regular, mention: "not a socket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := fromFile(tt.file)
			if err == nil {
				t.Fatal("fromFile accepted it")
			}
			fd := tt.file.Fd()
			for _, want := range []string{tt.mention, "fd " + strconv.Itoa(int(fd)), tt.file.Name()} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}

func TestFromFileAcceptsListeningStream(t *testing.T) {
	f := socketFile(t, unix.AF_INET, unix.SOCK_STREAM, true, "web")
	l, err := fromFile(f)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.Name != "web" {
		t.Errorf("name %q, want web", l.Name)
	}
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a, err := l.Accept()
	if err != nil {
		t.Fatalf("accept on inherited listener: %v", err)
	}
	a.Close()
}

func TestClosingInheritedUnixListenerKeepsFile(t *testing.T) {
	path := filepath.Join(shortDir(t), "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	l, err := fromFile(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("closing the inherited listener removed systemd's socket file: %v", err)
	}
}

// unsetVar marks a variable as not set at all in the tables below.
const unsetVar = "\x00unset"

func envOf(pid, fds, names string) env {
	return env{pid: pid, hasPID: pid != unsetVar, fds: fds, hasFDs: fds != unsetVar, names: names, hasNames: names != unsetVar}
}

func TestCheckEnvironment(t *testing.T) {
	const self = 42
	const u = unsetVar
	tests := []struct {
		name, pid, fds, names string
		want                  string // the names, joined by "|"; "error" for an error
	}{
		{name: "unset", pid: u, fds: u, names: u},
		{name: "normal", pid: "42", fds: "2", names: u, want: "LISTEN_FD_3|LISTEN_FD_4"},
		{name: "normal with names", pid: "42", fds: "2", names: "web:admin", want: "web|admin"},
		{name: "empty names", pid: "42", fds: "2", names: ":", want: "LISTEN_FD_3|LISTEN_FD_4"},
		{name: "zero sockets", pid: "42", fds: "0", names: ""},
		{name: "LISTEN_FDS without LISTEN_PID", pid: u, fds: "1", names: "web"},
		{name: "garbage LISTEN_FDS without LISTEN_PID", pid: u, fds: "two", names: u},
		{name: "LISTEN_PID without LISTEN_FDS", pid: "42", fds: u, names: u},
		{name: "empty LISTEN_PID", pid: "", fds: "1", names: u, want: "error"},
		{name: "garbage count", pid: "42", fds: "two", names: u, want: "error"},
		{name: "empty count", pid: "42", fds: "", names: u, want: "error"},
		{name: "negative count", pid: "42", fds: "-1", names: u, want: "error"},
		{name: "huge count", pid: "42", fds: "1000000", names: u, want: "error"},
		{name: "overflowing count", pid: "42", fds: "99999999999999999999999", names: u, want: "error"},
		{name: "garbage pid", pid: "me", fds: "1", names: u, want: "error"},
		{name: "garbage pid without LISTEN_FDS", pid: "me", fds: u, names: u, want: "error"},
		{name: "pid zero", pid: "0", fds: "1", names: u, want: "error"},
		{name: "negative pid", pid: "-42", fds: "1", names: u, want: "error"},
		{name: "overflowing pid", pid: "99999999999999999999999", fds: "1", names: u, want: "error"},
		{name: "more names than sockets", pid: "42", fds: "1", names: "web:admin", want: "error"},
		{name: "fewer names than sockets", pid: "42", fds: "3", names: "web", want: "error"},
		// Meant for another process: ignored, garbage or not, as sd_listen_fds.
		{name: "another process", pid: "1", fds: "2", names: u},
		{name: "another process, garbage count", pid: "1", fds: "two", names: u},
		{name: "another process, names mismatch", pid: "1", fds: "2", names: "web"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			names, err := checkEnvironment(envOf(tt.pid, tt.fds, tt.names), self)
			got := strings.Join(names, "|")
			if err != nil {
				got = "error"
				if !strings.Contains(err.Error(), "LISTEN_") {
					t.Errorf("error %q does not name the variable", err)
				}
			}
			if got != tt.want {
				t.Fatalf("checkEnvironment(%q, %q, %q) = %q (%v), want %q", tt.pid, tt.fds, tt.names, got, err, tt.want)
			}
		})
	}
}

// sdListenFDs is an independent reading of sd_listen_fds(3) and
// sd_listen_fds_with_names(3) (systemd 252, src/libsystemd/sd-daemon),
// with the deviations checkEnvironment documents, to check it against:
// the names of the sockets passed to self, or ok false for an error.
func sdListenFDs(e env, self int) (names []string, ok bool) {
	if !e.hasPID {
		return nil, true // "if (!e) { r = 0; goto finish; }"
	}
	pid, err := strconv.ParseUint(e.pid, 10, 31) // parse_pid: a pid_t above 0
	if err != nil || pid == 0 || strings.TrimLeft(e.pid, "0123456789") != "" {
		return nil, false
	}
	if pid != uint64(self) || !e.hasFDs {
		return nil, true // not for us, or nothing passed
	}
	n, err := strconv.ParseUint(e.fds, 10, 31) // safe_atoi, decimal only here
	if err != nil || strings.TrimLeft(e.fds, "0123456789") != "" || n > maxInherited {
		return nil, false
	}
	if n == 0 {
		return nil, true // EINVAL in systemd; no sockets here
	}
	var given []string
	if e.hasNames {
		given = strings.Split(e.names, ":") // strv_split(e, ":")
		if uint64(len(given)) != n {
			return nil, false // "if ((size_t) n_fds != n_names) return -EINVAL"
		}
	}
	for i := range int(n) {
		name := fmt.Sprintf("LISTEN_FD_%d", 3+i)
		if i < len(given) && len(given[i]) > 0 {
			name = given[i]
		}
		names = append(names, name)
	}
	return names, true
}

// FuzzCheckEnvironment compares checkEnvironment with sdListenFDs for any
// LISTEN_PID (the fuzzer's, or this process's), any count and any names;
// an error always names the variable.
func FuzzCheckEnvironment(f *testing.F) {
	f.Add("42", true, "1", true, "web", true, false)
	f.Add("42", true, "2", true, "web:", true, false)
	f.Add("1", true, "x", true, "", false, false)
	f.Add("", false, "4097", true, "", false, true)
	f.Add("42", true, "-0", true, strings.Repeat(":", 100), true, true)
	f.Add("+42", true, "1", true, "", false, true)
	f.Fuzz(func(t *testing.T, pid string, hasPID bool, fds string, hasFDs bool, names string, hasNames bool, selfPID bool) {
		self := 42
		if selfPID {
			// The fuzzer's pid is one of its strings only by chance: make
			// "ours" common by using the number the input writes, if any.
			if p, err := strconv.Atoi(pid); err == nil && p > 0 {
				self = p
			}
		}
		e := env{pid, hasPID, fds, hasFDs, names, hasNames}
		got, err := checkEnvironment(e, self)
		want, ok := sdListenFDs(e, self)
		if (err == nil) != ok || strings.Join(got, "\x00") != strings.Join(want, "\x00") || len(got) != len(want) {
			t.Fatalf("checkEnvironment(%+v, %d) = %q, %v; sd_listen_fds reads %q, ok %v", e, self, got, err, want, ok)
		}
		if err != nil && !strings.Contains(err.Error(), "LISTEN_") {
			t.Fatalf("error %q does not name the variable", err)
		}
	})
}

func TestListen(t *testing.T) {
	dir := shortDir(t)
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0", filepath.Join(dir, "l.sock"), "@spx-listen-" + filepath.Base(dir)} {
		t.Run(addr, func(t *testing.T) {
			l, err := Listen(addr)
			if err != nil {
				if strings.HasPrefix(addr, "[::1]") {
					t.Skipf("no IPv6 loopback: %v", err)
				}
				t.Fatal(err)
			}
			defer l.Close()
			network := l.Addr().Network()
			c, err := net.Dial(network, l.Addr().String())
			if err != nil {
				t.Fatalf("dial %s: %v", addr, err)
			}
			c.Close()
		})
	}
	for _, bad := range []string{"", "127.0.0.1", "256.0.0.1:80"} {
		if l, err := Listen(bad); err == nil {
			l.Close()
			t.Errorf("Listen(%q) succeeded", bad)
		} else if bad != "" && !strings.Contains(err.Error(), bad) {
			t.Errorf("Listen(%q) error %q does not name it", bad, err)
		}
	}
}

func TestListenReplacesStaleSocketOnly(t *testing.T) {
	path := filepath.Join(shortDir(t), "stale.sock")
	live, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	if l, err := Listen(path); err == nil {
		l.Close()
		t.Fatal("a second --listen took over a live socket")
	}
	// Leave the file behind, as a proxy that was killed would.
	ul := live.Listener.(*unixListener)
	ul.UnixListener.Close()
	unix.Close(ul.file.dir)
	again, err := Listen(path)
	if err != nil {
		t.Fatalf("a stale socket file blocked --listen: %v", err)
	}
	again.Close()
}

// TestInheritedLeavesOtherDescriptorsAlone: LISTEN_FDS counting far more
// descriptors than were passed is an error, and the descriptors past the
// passed ones, which belong to this process (the Go runtime's epoll and
// eventfd among them), are neither closed nor wrapped in an *os.File that
// the garbage collector would close. Before the fix, the e2e test
// "LISTEN_FDS counts more than passed" crashed the -race binary with
// "fatal error: runtime: netpoll failed".
func TestInheritedLeavesOtherDescriptorsAlone(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0") // the netpoller is up
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	before := openFDs(t)
	t.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	t.Setenv("LISTEN_FDS", strconv.Itoa(maxInherited))
	os.Unsetenv("LISTEN_FDNAMES")
	if _, err := Inherited(); err == nil {
		t.Fatal("Inherited accepted 4096 descriptors that were never passed")
	} else {
		t.Log(err)
	}
	runtime.GC()
	runtime.GC() // finalizers of any *os.File made on the way have run
	if after := openFDs(t); after != before {
		t.Errorf("%d descriptors open before, %d after", before, after)
	}
	// The runtime's poller still works.
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Close()
		}
		done <- err
	}()
	c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip(err)
	}
	return len(entries)
}
