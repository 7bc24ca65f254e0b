// SPDX-License-Identifier: Apache-2.0

package main_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/testutil"
)

// TestManPageNginx is the man page's own example: nginx listens on a unix
// socket, the proxy sits in front of it on a socket-activated TCP listener,
// and curl through the proxy gets the pages.
func TestManPageNginx(t *testing.T) {
	t.Parallel()
	nginx := lookTool(t, "nginx", "nginx-light")
	curl := lookTool(t, "curl", "curl")

	dir := shortDir(t)
	www := filepath.Join(dir, "www")
	if err := os.Mkdir(www, 0o755); err != nil {
		t.Fatal(err)
	}
	page := []byte("<!doctype html><title>socket-proxyd</title><p>Hello through the proxy.\n")
	big := randomBytes(3 * mib)
	for name, data := range map[string][]byte{"index.html": page, "big.bin": big} {
		if err := os.WriteFile(filepath.Join(www, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(dir, "nginx.sock")
	conf := fmt.Sprintf(`daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 64; }
http {
	access_log %[1]s/access.log;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	types { text/html html; application/octet-stream bin; }
	server {
		listen unix:%[2]s;
		root %[3]s;
	}
}
`, dir, sock, www)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	ng := start(t, nginx, launch{args: []string{"-p", dir, "-c", confPath, "-e", filepath.Join(dir, "error.log")}})
	if _, err := dialUntil(ng, "unix", sock, 10*time.Second); err != nil {
		errlog, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		t.Fatalf("nginx did not come up: %v\nerror.log:\n%s", err, errlog)
	}

	forEachImpl(t, func(t *testing.T, im impl) {
		fd, addr := inheritTCP(t, "http")
		start(t, im.path, launch{args: []string{sock}, fds: []inherited{fd}})
		for _, tc := range []struct {
			path string
			want []byte
		}{{"/index.html", page}, {"/", page}, {"/big.bin", big}} {
			ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
			out, err := exec.CommandContext(ctx, curl, "-sS", "--fail", "--noproxy", "*",
				"--max-time", "15", "http://"+addr+tc.path).Output()
			cancel()
			if err != nil {
				var stderr []byte
				if ee, ok := err.(*exec.ExitError); ok {
					stderr = ee.Stderr
				}
				t.Fatalf("curl http://%s%s: %v: %s", addr, tc.path, err, stderr)
			}
			if !bytes.Equal(out, tc.want) {
				t.Errorf("curl %s: got %d bytes, want the %d-byte file", tc.path, len(out), len(tc.want))
			}
		}
	})
}

// lookTool finds a program the test needs; without it the test skips, or
// fails under CI.
func lookTool(t *testing.T, name, pkg string) string {
	t.Helper()
	return testutil.RequireTool(t, name, pkg)
}

// socketActivate starts bin under the real systemd-socket-activate (plus
// extra options), handing it the test's own listening sockets the way
// systemd would (LISTEN_FDS: it takes them instead of binding -l
// addresses, so no port is picked, closed and raced for), and waits until
// it says it listens on each.
func socketActivate(t *testing.T, opts []string, socks []inherited, bin string, args ...string) *proc {
	t.Helper()
	activate := lookTool(t, "systemd-socket-activate", "systemd")
	argv := append(append(append([]string(nil), opts...), bin), args...)
	p := start(t, activate, launch{args: argv, fds: socks})
	err := poll(10*time.Second, func() bool {
		return p.exited() || strings.Count(p.stderr.String(), "Listening on ") == len(socks)
	}, func() string { return "systemd-socket-activate did not listen: " + p.stderr.String() })
	if err != nil {
		t.Fatal(err)
	}
	if p.exited() {
		t.Fatalf("systemd-socket-activate exited with status %d: %s", p.state.ExitCode(), p.stderr.String())
	}
	return p
}

// TestSystemdSocketActivate: under `systemd-socket-activate -l
// 127.0.0.1:PORT BINARY BACKEND`, the first connection starts the proxy,
// which forwards it and the next ones.
func TestSystemdSocketActivate(t *testing.T) {
	t.Parallel()
	forEachImpl(t, func(t *testing.T, im impl) {
		srv, backend := echoTCP(t, "127.0.0.1:0")
		fd, addr := inheritTCP(t, "")
		socketActivate(t, nil, []inherited{fd}, im.path, backend)
		c := dial(t, "tcp", addr) // this one makes it exec the proxy
		mustEcho(t, c, mib)
		mustEcho(t, dial(t, "tcp", addr), 64*1024)
		if n := srv.accepted.Load(); n != 2 {
			t.Errorf("backend accepted %d connections, want 2", n)
		}
	})
}

// TestSystemdSocketActivateNotify: two -l sockets (TCP and a unix path) with
// --fdname, and READY=1 through -E NOTIFY_SOCKET, as a Type=notify unit.
func TestSystemdSocketActivateNotify(t *testing.T) {
	t.Parallel()
	checkDiffers(t, "READY=1: the original never sends it", func(t *testing.T, im impl) error {
		_, backend := echoTCP(t, "127.0.0.1:0")
		n := newNotifyReceiver(t)
		path := filepath.Join(shortDir(t), "front.sock")
		fd, addr := inheritTCP(t, "")
		local := inherited{file: fileOf(t, listenUnix(t, path))}
		p := socketActivate(t, []string{"--fdname=web:local", "-E", n.env()}, []inherited{fd, local}, im.path, backend)
		mustEcho(t, dial(t, "unix", path), 64*1024)
		mustEcho(t, dial(t, "tcp", addr), 64*1024)
		if err := n.wait("READY=1", 10*time.Second); err != nil {
			return err
		}
		if p.exited() {
			return fmt.Errorf("exited: %s", p.stderr.String())
		}
		return nil
	})
}
