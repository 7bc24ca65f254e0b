// SPDX-License-Identifier: Apache-2.0

package activation

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/socket-proxyd/socket-proxyd/internal/testutil"
)

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// answers reports whether something listens on the unix socket at p.
func answers(p string) bool {
	c, err := net.Dial("unix", p)
	if err == nil {
		c.Close()
	}
	return err == nil
}

// TestListenSocketMode: a --listen socket file gets exactly the mode asked,
// 0666 by default as systemd's SocketMode=, whatever the umask.
func TestListenSocketMode(t *testing.T) {
	dir := shortDir(t)
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	for _, tt := range []struct {
		mode os.FileMode
		def  bool
	}{{mode: 0o666, def: true}, {mode: 0o660}, {mode: 0o600}, {mode: 0o777}} {
		p := filepath.Join(dir, tt.mode.String()+".sock")
		var l Listener
		var err error
		if tt.def {
			l, err = Listen(p)
		} else {
			l, err = ListenMode(p, tt.mode)
		}
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Lstat(p)
		l.Close()
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != tt.mode {
			t.Errorf("socket file %s has mode %v, want %v", p, fi.Mode(), tt.mode)
		}
	}
}

// TestListenRemovesItsOwnSocketOnly: at exit the socket file goes if it is
// still ours, and stays if another one took its path.
func TestListenRemovesItsOwnSocketOnly(t *testing.T) {
	dir := shortDir(t)
	p := filepath.Join(dir, "own.sock")
	l, err := Listen(p)
	if err != nil {
		t.Fatal(err)
	}
	if !answers(p) {
		t.Fatal("the --listen socket does not answer")
	}
	if got := l.Addr().String(); got != p {
		t.Errorf("Addr() = %q, want the path given, %q", got, p)
	}
	l.Close()
	if exists(p) {
		t.Error("the socket file is left behind at exit")
	}

	l, err = Listen(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(p, p+".moved"); err != nil {
		t.Fatal(err)
	}
	other, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	l.Close()
	if !answers(p) {
		t.Error("closing the proxy's listener removed another socket at its path")
	}
}

// TestListenDirectorySwapped: the directory of a --listen socket is swapped
// for a symlink to another service's directory while the proxy runs; at
// exit the proxy removes its own socket, in the directory it bound in, and
// not the other service's live socket of the same name.
func TestListenDirectorySwapped(t *testing.T) {
	base := shortDir(t)
	mine, victim := filepath.Join(base, "mine"), filepath.Join(base, "victim")
	for _, d := range []string{mine, victim} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	l, err := Listen(filepath.Join(mine, "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	live, err := net.Listen("unix", filepath.Join(victim, "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if err := os.Rename(mine, mine+".old"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, mine); err != nil {
		t.Fatal(err)
	}
	l.Close()
	if !answers(filepath.Join(victim, "s.sock")) {
		t.Error("the proxy removed another service's live socket through a swapped directory")
	}
	if exists(filepath.Join(mine+".old", "s.sock")) {
		t.Error("the proxy left its own socket file behind in the moved directory")
	}
}

// TestListenStaleSocket: a socket file nobody answers on is replaced; a
// live one, a symlink or a plain file in the way are left alone.
func TestListenStaleSocket(t *testing.T) {
	dir := shortDir(t)
	stale := filepath.Join(dir, "stale.sock")
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: stale}); err != nil {
		t.Fatal(err)
	}
	syscall.Close(fd) // the file stays, nobody listens
	l, err := Listen(stale)
	if err != nil {
		t.Fatalf("a stale socket blocked --listen: %v", err)
	}
	if !answers(stale) {
		t.Error("the new socket does not answer")
	}
	l.Close()

	// A symlink named like the socket, to a stale socket elsewhere: not
	// followed, not removed.
	target := filepath.Join(dir, "target.sock")
	fd, _ = syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: target}); err != nil {
		t.Fatal(err)
	}
	syscall.Close(fd)
	link := filepath.Join(dir, "link.sock")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if l, err := Listen(link); err == nil {
		l.Close()
		t.Error("--listen replaced a symlink")
	} else if !strings.Contains(err.Error(), `"`+link+`"`) {
		t.Errorf("error %q does not name the path", err)
	}
	if !exists(target) || !exists(link) {
		t.Error("--listen removed a symlink or its target")
	}

	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if l, err := Listen(plain); err == nil {
		l.Close()
		t.Error("--listen replaced a plain file")
	}
	if b, err := os.ReadFile(plain); err != nil || string(b) != "data" {
		t.Error("--listen touched a plain file in its way")
	}
}

// TestListenRefusesUnsafeDirectory: as root, a socket in a directory that
// others may change (or under one) is refused; a sticky one such as /tmp
// and a symlink kept in a safe directory are fine.
func TestListenRefusesUnsafeDirectory(t *testing.T) {
	testutil.RequireRoot(t, "to own directories as another user")
	base := shortDir(t)
	open := filepath.Join(base, "open")
	sticky := filepath.Join(base, "sticky")
	safe := filepath.Join(base, "safe")
	for d, mode := range map[string]os.FileMode{open: 0o777, sticky: 0o777 | os.ModeSticky, safe: 0o755} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(open, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(open, "x.sock"), filepath.Join(open, "sub", "x.sock")} {
		l, err := Listen(p)
		if err == nil {
			l.Close()
			t.Errorf("Listen(%q) as root accepted a directory others may change", p)
			continue
		}
		for _, want := range []string{`"` + p + `"`, `"` + open + `"`, "writable by other users", "/run/socket-proxyd"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not mention %s", err, want)
			}
		}
		if exists(p) {
			t.Errorf("refused, but %s was created", p)
		}
	}
	// Group-writable: safe for root's own group, not for another's.
	rootGroup, otherGroup := filepath.Join(base, "rootgroup"), filepath.Join(base, "othergroup")
	for d, gid := range map[string]int{rootGroup: 0, otherGroup: 1} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, 0o775); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(d, 0, gid); err != nil {
			t.Fatal(err)
		}
	}
	if l, err := Listen(filepath.Join(otherGroup, "x.sock")); err == nil {
		l.Close()
		t.Errorf("Listen as root accepted %s, writable by group 1", otherGroup)
	} else if !strings.Contains(err.Error(), "writable by other users") {
		t.Errorf("error %q does not say why", err)
	}
	if err := os.Symlink(safe, filepath.Join(base, "alias")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(sticky, "x.sock"), filepath.Join(base, "alias", "y.sock"), filepath.Join(rootGroup, "x.sock")} {
		l, err := Listen(p)
		if err != nil {
			t.Errorf("Listen(%q): %v", p, err)
			continue
		}
		if !answers(p) {
			t.Errorf("%s does not answer", p)
		}
		l.Close()
	}
	if exists(filepath.Join(safe, "y.sock")) {
		t.Error("the socket bound through a symlinked directory was left behind")
	}
}

// TestListenHints: the slips users make in --listen get a hint.
func TestListenHints(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{in: "::1:8080", want: `--listen address "::1:8080": write an IPv6 address in brackets, "[::1]:8080"`},
		{in: ":::80", want: `"[::]:80"`},
		{in: "./web.sock", want: `is a relative path: give the unix socket's absolute path, such as "/run/web.sock"`},
		{in: "web.sock", want: `looks like a unix socket file: give its absolute path, such as "/run/web.sock"`},
		{in: "127.0.0.1", want: "has no port"},
		{in: "/", want: "names a directory"},
		{in: "http://127.0.0.1:8080/", want: `--listen address "http://127.0.0.1:8080/" is a URL: give HOST:PORT, such as "127.0.0.1:8080"`},
		{in: "https://localhost", want: `is a URL: give HOST:PORT, such as "localhost:443"`},
		{in: "8080", want: `--listen address "8080" is a port alone: write ":8080" for every address (as ListenStream=8080), or HOST:8080`},
	} {
		l, err := Listen(tt.in)
		if err == nil {
			l.Close()
			t.Errorf("Listen(%q) succeeded", tt.in)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Listen(%q): %q, want %q", tt.in, err, tt.want)
		}
	}
}

// TestListenHintsNameTheirOption: --metrics and --listen-datagram take
// the same addresses, and their hints name them, not --listen.
func TestListenHintsNameTheirOption(t *testing.T) {
	if _, err := ListenFor("--metrics", "http://127.0.0.1:9560", DefaultSocketMode); err == nil || !strings.HasPrefix(err.Error(), `--metrics address "http://127.0.0.1:9560" is a URL`) {
		t.Errorf("--metrics with a URL: %v", err)
	}
	if _, err := ListenDatagram("5353", DefaultSocketMode); err == nil || !strings.HasPrefix(err.Error(), `--listen-datagram address "5353" is a port alone`) {
		t.Errorf("--listen-datagram with a port alone: %v", err)
	}
}

// TestListenPortMistakes: a --listen or --listen-datagram port that is no
// port says so and what to use, naming the option.
func TestListenPortMistakes(t *testing.T) {
	for _, tt := range []struct {
		listen func(string) (Listener, error)
		addr   string
		want   string
	}{
		{Listen, "127.0.0.1:80x", `--listen address "127.0.0.1:80x": "80x" is not a port number or known service name: use 1 to 65535`},
		{Listen, "127.0.0.1:65536", `--listen address "127.0.0.1:65536": port 65536 is out of range: use 1 to 65535`},
		{Listen, "127.0.0.1:", `--listen address "127.0.0.1:": "" is not a port number`},
		{func(a string) (Listener, error) { return ListenDatagram(a, DefaultSocketMode) }, "[::1]:5x3",
			`--listen-datagram address "[::1]:5x3": "5x3" is not a port number`},
	} {
		l, err := tt.listen(tt.addr)
		if err == nil {
			l.Close()
			t.Errorf("%q: listening", tt.addr)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: %v; want %q", tt.addr, err, tt.want)
		}
	}
}

// TestUnixAddressFitsAsBindingMakesIt: a path too long for sun_path still
// binds through its directory held open when its name is short, which
// CheckListen must allow; an abstract name has 107 bytes after its NUL.
func TestUnixAddressFitsAsBindingMakesIt(t *testing.T) {
	dir := t.TempDir()
	deep := dir
	for len(deep) < 120 {
		deep = filepath.Join(deep, "dddddddddd")
	}
	if err := os.MkdirAll(deep, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		addr string
		fits bool
	}{
		{filepath.Join(deep, "s.sock"), true},
		// Too long as given, and bound through /proc/self/fd/N/NAME:
		// a name of 88 bytes fits with the descriptor the bind gets.
		{filepath.Join(deep, strings.Repeat("m", 88)), true},
		{filepath.Join(deep, strings.Repeat("m", 100)), false},
		{filepath.Join(dir, strings.Repeat("n", 110)), false},
		{"/", false},
		{filepath.Join(dir, "missing", "s.sock"), false},
		{"@" + strings.Repeat("a", 107), true},
		{"@" + strings.Repeat("a", 108), false},
	} {
		checkErr := CheckListen("--listen", tt.addr)
		if (checkErr == nil) != tt.fits {
			t.Errorf("CheckListen(%d bytes): %v; want fits=%v", len(tt.addr), checkErr, tt.fits)
		}
		l, err := Listen(tt.addr)
		if err == nil {
			l.Close()
		}
		if (err == nil) != tt.fits {
			t.Errorf("Listen(%d bytes): %v; want it to bind: %v", len(tt.addr), err, tt.fits)
		}
	}
}

// TestListenHintsAtForbiddenAddressFamilies: a unit's
// RestrictAddressFamilies= makes socket() fail with EAFNOSUPPORT, which
// says nothing of the unit; the message says what to change.
func TestListenHintsAtForbiddenAddressFamilies(t *testing.T) {
	err := listenError("127.0.0.1:9560", &net.OpError{Op: "listen", Net: "tcp", Err: os.NewSyscallError("socket", syscall.EAFNOSUPPORT)})
	if err == nil || !strings.Contains(err.Error(), "RestrictAddressFamilies=") || !strings.Contains(err.Error(), "unix socket path") {
		t.Errorf("EAFNOSUPPORT: %v", err)
	}
}
