package activation

import (
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

func TestCheckEnvironment(t *testing.T) {
	const self = 42
	tests := []struct {
		name, pid, fds, names string
		named                 bool
		ok                    bool
	}{
		{name: "unset", ok: true},
		{name: "normal", pid: "42", fds: "2", ok: true},
		{name: "normal with names", pid: "42", fds: "2", names: "web:admin", named: true, ok: true},
		{name: "empty names", pid: "42", fds: "2", names: ":", named: true, ok: true},
		{name: "zero sockets", pid: "42", fds: "0", names: "", named: true, ok: true},
		{name: "garbage count", pid: "42", fds: "two"},
		{name: "negative count", pid: "42", fds: "-1"},
		{name: "huge count", pid: "42", fds: "1000000"},
		{name: "overflowing count", pid: "42", fds: "99999999999999999999999"},
		{name: "garbage pid", pid: "me", fds: "1"},
		{name: "overflowing pid", pid: "99999999999999999999999", fds: "1"},
		{name: "more names than sockets", pid: "42", fds: "1", names: "web:admin", named: true},
		{name: "fewer names than sockets", pid: "42", fds: "3", names: "web", named: true},
		// Meant for another process: ignored, garbage or not, as sd_listen_fds.
		{name: "another process", pid: "1", fds: "2", ok: true},
		{name: "another process, garbage count", pid: "1", fds: "two", ok: true},
		{name: "another process, names mismatch", pid: "1", fds: "2", names: "web", named: true, ok: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkEnvironment(tt.pid, tt.fds, tt.names, tt.named, self)
			if (err == nil) != tt.ok {
				t.Fatalf("checkEnvironment(%q, %q, %q) = %v, want ok=%v", tt.pid, tt.fds, tt.names, err, tt.ok)
			}
			if err != nil && !strings.Contains(err.Error(), "LISTEN_") {
				t.Fatalf("error %q does not name the variable", err)
			}
		})
	}
}

// FuzzCheckEnvironment: any LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES give an
// answer, never a panic, and an error always names the variable.
func FuzzCheckEnvironment(f *testing.F) {
	f.Add("42", "1", "web", true)
	f.Add("42", "2", "web:", true)
	f.Add("1", "x", "", false)
	f.Add("", "4097", "", false)
	f.Add("42", "-0", strings.Repeat(":", 100), true)
	f.Fuzz(func(t *testing.T, pid, fds, names string, named bool) {
		err := checkEnvironment(pid, fds, names, named, 42)
		if err != nil && !strings.Contains(err.Error(), "LISTEN_") {
			t.Fatalf("error %q does not name the variable", err)
		}
		if err == nil && fds != "" && pid == "42" {
			n, aerr := strconv.Atoi(fds)
			if aerr != nil || n < 0 || n > maxInherited {
				t.Fatalf("accepted LISTEN_FDS=%q", fds)
			}
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
	live.Listener.(*net.UnixListener).SetUnlinkOnClose(false)
	live.Close()
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
