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
)

// TestManPageNginx is the man page's own example: nginx listens on a unix
// socket, the proxy sits in front of it on a socket-activated TCP listener,
// and curl through the proxy gets the pages.
func TestManPageNginx(t *testing.T) {
	t.Parallel()
	nginx := lookTool(t, "nginx", "/usr/sbin/nginx", "nginx-light")
	curl := lookTool(t, "curl", "/usr/bin/curl", "curl")

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

// lookTool finds a program the test needs, or skips saying what to install.
func lookTool(t *testing.T, name, path, pkg string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if _, err := os.Stat(path); err == nil {
		return path
	}
	t.Skipf("%s is not installed (apt-get install %s); CI installs it", name, pkg)
	return ""
}

// socketActivate starts bin under the real systemd-socket-activate with the
// given -l addresses (plus extra options) and waits until it listens. TCP
// addresses from freeTCPAddr may be lost to a race: then it retries with a
// fresh one.
func socketActivate(t *testing.T, opts []string, listen func() []string, bin string, args ...string) (*proc, []string) {
	t.Helper()
	activate := lookTool(t, "systemd-socket-activate", "/usr/bin/systemd-socket-activate", "systemd")
	for attempt := 0; ; attempt++ {
		addrs := listen()
		var argv []string
		for _, a := range addrs {
			argv = append(argv, "-l", a)
		}
		argv = append(append(append(argv, opts...), bin), args...)
		p := start(t, activate, launch{args: argv})
		err := poll(10*time.Second, func() bool {
			return p.exited() || strings.Count(p.stderr.String(), "Listening on ") == len(addrs)
		}, func() string { return "systemd-socket-activate did not listen: " + p.stderr.String() })
		if err != nil {
			t.Fatal(err)
		}
		if !p.exited() {
			return p, addrs
		}
		if attempt == 2 || !strings.Contains(p.stderr.String(), "in use") {
			t.Fatalf("systemd-socket-activate exited with status %d: %s", p.state.ExitCode(), p.stderr.String())
		}
	}
}

// TestSystemdSocketActivate: under `systemd-socket-activate -l
// 127.0.0.1:PORT BINARY BACKEND`, the first connection starts the proxy,
// which forwards it and the next ones.
func TestSystemdSocketActivate(t *testing.T) {
	t.Parallel()
	forEachImpl(t, func(t *testing.T, im impl) {
		srv, backend := echoTCP(t, "127.0.0.1:0")
		_, addrs := socketActivate(t, nil, func() []string {
			return []string{freeTCPAddr(t, "tcp4", "127.0.0.1")}
		}, im.path, backend)
		c := dial(t, "tcp", addrs[0]) // this one makes it exec the proxy
		mustEcho(t, c, mib)
		mustEcho(t, dial(t, "tcp", addrs[0]), 64*1024)
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
		p, addrs := socketActivate(t, []string{"--fdname=web:local", "-E", n.env()}, func() []string {
			os.Remove(path) // a lost TCP race left it behind
			return []string{freeTCPAddr(t, "tcp4", "127.0.0.1"), path}
		}, im.path, backend)
		mustEcho(t, dial(t, "unix", path), 64*1024)
		mustEcho(t, dial(t, "tcp", addrs[0]), 64*1024)
		if err := n.wait("READY=1", 10*time.Second); err != nil {
			return err
		}
		if p.exited() {
			return fmt.Errorf("exited: %s", p.stderr.String())
		}
		return nil
	})
}
