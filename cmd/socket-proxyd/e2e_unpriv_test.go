// SPDX-License-Identifier: Apache-2.0

package main_test

// No privileges needed: the proxy runs as nobody, as it would
// under DynamicUser=yes, with inherited sockets and with --listen on an
// unprivileged port.

import (
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/testutil"
)

// unprivilegedBinary copies the binary under test where nobody may run it
// (the build directory is 0700), and returns setpriv's path and the copy.
func unprivilegedBinary(t *testing.T) (setpriv, bin string) {
	t.Helper()
	testutil.RequireRoot(t, "to switch to nobody")
	setpriv = testutil.RequireTool(t, "setpriv", "util-linux")
	dir := shortDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin = filepath.Join(dir, "socket-proxyd")
	src, err := os.Open(binary)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return setpriv, bin
}

// asNobody is setpriv's command line that runs bin as nobody:nogroup with
// no supplementary groups and no capabilities at all.
func asNobody(bin string, args ...string) []string {
	return append([]string{"--reuid=nobody", "--regid=nogroup", "--clear-groups",
		"--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--", bin}, args...)
}

// checkRunsAs asserts that p's process has the real and effective uid of
// nobody (65534) and no capabilities.
func checkRunsAs(t *testing.T, p *proc) {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(p.pid()) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[0] == "Uid:":
			if f[1] != "65534" || f[2] != "65534" {
				t.Errorf("runs as %q, want nobody (65534)", line)
			}
		case len(f) == 2 && (f[0] == "CapEff:" || f[0] == "CapPrm:"):
			if strings.Trim(f[1], "0") != "" {
				t.Errorf("has capabilities: %q", line)
			}
		}
	}
}

// TestUnprivilegedInherited: sockets passed in, the proxy running as
// nobody with no capabilities, forwarding as usual.
func TestUnprivilegedInherited(t *testing.T) {
	t.Parallel()
	setpriv, bin := unprivilegedBinary(t)
	_, backend := echoTCP(t, "127.0.0.1:0")
	fd, addr := inheritTCP(t, "web")
	// The shim sets LISTEN_PID and execs setpriv, which execs the proxy:
	// the same pid throughout.
	p := start(t, setpriv, launch{args: asNobody(bin, backend), fds: []inherited{fd}})
	mustEcho(t, dial(t, "tcp", addr), 256<<10)
	checkRunsAs(t, p)
}

// TestUnprivilegedListen: --listen on an unprivileged port as nobody, to a
// unix socket backend nobody may connect to.
func TestUnprivilegedListen(t *testing.T) {
	t.Parallel()
	setpriv, bin := unprivilegedBinary(t)
	dir := shortDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "b.sock")
	echoUnix(t, path)
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	p := start(t, setpriv, launch{args: asNobody(bin, "--listen", "127.0.0.1:0", path)})
	addrs, err := listeningTCP(p, 1, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	mustEcho(t, dial(t, "tcp", addrs[0]), 256<<10)
	checkRunsAs(t, p)
}

// TestUnprivilegedLowPortSaysHow: --listen on a port below 1024 as nobody
// fails with permission denied and says how to get the port: from
// systemd, or with the capability.
func TestUnprivilegedLowPortSaysHow(t *testing.T) {
	t.Parallel()
	setpriv, bin := unprivilegedBinary(t)
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start")
	if err == nil && strings.TrimSpace(string(b)) == "0" {
		testutil.Unavailable(t, "every port is unprivileged here (net.ipv4.ip_unprivileged_port_start=0)")
	}
	for _, flag := range []string{"--listen", "--listen-datagram"} {
		code, _, stderr := run(t, setpriv, launch{args: asNobody(bin, flag, "127.0.0.1:80", "127.0.0.1:9")})
		if code != 1 || !strings.Contains(stderr, `cannot listen on "127.0.0.1:80": permission denied: ports below 1024 need privilege: `+
			`let systemd bind it (a .socket unit, or systemd-socket-activate -l), or give the service AmbientCapabilities=CAP_NET_BIND_SERVICE`) {
			t.Errorf("%s 127.0.0.1:80 as nobody: exit %d, stderr %q", flag, code, stderr)
		}
	}
}
