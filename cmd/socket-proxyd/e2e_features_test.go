// SPDX-License-Identifier: Apache-2.0

package main_test

// The connection options, black-box: connect retries, idle timeout,
// keepalive, PROXY protocol (with a real nginx), graceful stop under load,
// backends per socket, and STATUS=.

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/testutil"
)

// atOnce prepends, for our binary only, the options that bring back the
// original's immediate behaviour, for the tests of that behaviour: a refused
// backend closes the client at once (--connect-timeout=0) and a signal
// closes open connections at once (--shutdown-timeout=0). The original does
// not know these options.
func atOnce(im impl, args ...string) []string {
	if im.original {
		return args
	}
	return append([]string{"--connect-timeout=0", "--shutdown-timeout=0"}, args...)
}

// tagged answers every connection with its tag and closes.
func tagged(tag string) func(net.Conn) {
	return func(c net.Conn) { _, _ = c.Write([]byte(tag)) }
}

// TestBackendStartsLater: the backend's unix socket appears 1.5 s after the
// first client connected; that client gets its reply (systemd #2105).
func TestBackendStartsLater(t *testing.T) {
	t.Parallel()
	path := filepath.Join(shortDir(t), "late.sock")
	fd, addr := inheritTCP(t, "web")
	start(t, binary, launch{args: []string{path}, fds: []inherited{fd}})
	c := dial(t, "tcp", addr)
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // the scenario: a backend slow to start
	echoUnix(t, path)
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "hello" {
		t.Fatalf("first client got %q, %v", got, err)
	}
	c.Close()
}

// TestConnectTimeoutZero: --connect-timeout=0 tries once, so a refused
// backend closes the client at once.
func TestConnectTimeoutZero(t *testing.T) {
	t.Parallel()
	ln := listenTCP(t, "127.0.0.1:0")
	backend := ln.Addr().String()
	ln.Close()
	fd, addr := inheritTCP(t, "web")
	p := start(t, binary, launch{args: []string{"--connect-timeout=0", backend}, fds: []inherited{fd}})
	begin := time.Now()
	if err := closedWithoutData(dial(t, "tcp", addr), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(begin); took > time.Second {
		t.Errorf("closed after %v, want at once", took)
	}
	if err := p.waitStderr("connection refused", 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestIdleTimeoutE2E closes a silent connection and not a busy one.
func TestIdleTimeoutE2E(t *testing.T) {
	t.Parallel()
	_, backend := echoTCP(t, "127.0.0.1:0")
	fd, addr := inheritTCP(t, "web")
	// The busy client's pace (an exchange every 50ms) stays far inside
	// the 1s timeout even under -race on a loaded 2-core machine.
	start(t, binary, launch{args: []string{"--idle-timeout=1s", backend}, fds: []inherited{fd}})
	silent, busy := dial(t, "tcp", addr), dial(t, "tcp", addr)
	mustEcho(t, silent, 10)
	begin := time.Now()
	for time.Since(begin) < 2*time.Second {
		if err := echoRoundTrip(busy, 10); err != nil {
			t.Fatalf("busy connection after %v: %v", time.Since(begin), err)
		}
		time.Sleep(50 * time.Millisecond) // the busy client's pace
	}
	if err := closedWithoutData(silent, 5*time.Second); err != nil {
		t.Fatalf("silent connection: %v", err)
	}
}

// TestKeepAliveE2E: ss shows a keepalive timer on the proxy's sockets of
// both sides, and none with --keepalive=0.
func TestKeepAliveE2E(t *testing.T) {
	ss := testutil.RequireTool(t, "ss", "iproute2")
	for _, tt := range []struct {
		name string
		args []string
		want bool
	}{{"default", nil, true}, {"off", []string{"--keepalive=0"}, false}} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, backend := echoTCP(t, "127.0.0.1:0")
			fd, addr := inheritTCP(t, "web")
			start(t, binary, launch{args: append(tt.args, backend), fds: []inherited{fd}})
			c := dial(t, "tcp", addr)
			mustEcho(t, c, 10)
			// The proxy's client side has the listener's address as
			// source; its backend side has the backend's as peer.
			front := ssLine(t, addr, c.LocalAddr().String())
			var back string
			out, _ := exec.Command(ss, "-tnoH", "state", "established").Output()
			for _, line := range strings.Split(string(out), "\n") {
				f := strings.Fields(line)
				if len(f) >= 4 && f[3] == backend && f[2] != c.LocalAddr().String() {
					back = line
				}
			}
			for side, line := range map[string]string{"client side": front, "backend side": back} {
				if got := strings.Contains(line, "timer:(keepalive"); got != tt.want {
					t.Errorf("%s: keepalive timer %v, want %v: %q", side, got, tt.want, line)
				}
			}
		})
	}
}

// ssLine is ss's line for the TCP socket from local to peer.
func ssLine(t *testing.T, local, peer string) string {
	t.Helper()
	out, err := exec.Command("ss", "-tnoH", "state", "established").Output()
	if err != nil {
		t.Fatalf("ss: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[2] == local && f[3] == peer {
			return line
		}
	}
	t.Fatalf("ss shows no socket %s -> %s:\n%s", local, peer, out)
	return ""
}

// startNginx runs Debian's nginx in the foreground with a server on a unix
// socket that expects the PROXY protocol and answers with the client
// address the header gave.
func startNginx(t *testing.T) string {
	t.Helper()
	bin := testutil.RequireTool(t, "nginx", "nginx-light")
	dir := shortDir(t)
	sock := filepath.Join(dir, "n.sock")
	conf := fmt.Sprintf(`daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 64; }
http {
	access_log off;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	server {
		listen unix:%[2]s proxy_protocol;
		location / { return 200 "[$proxy_protocol_addr]:$proxy_protocol_port"; }
	}
}
`, dir, sock)
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	ng := start(t, bin, launch{args: []string{"-p", dir, "-c", filepath.Join(dir, "nginx.conf"), "-e", filepath.Join(dir, "error.log")}})
	out := ng.stderr
	if err := poll(10*time.Second, func() bool {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, func() string {
		log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		return fmt.Sprintf("nginx did not listen on %s: %s%s", sock, out.String(), log)
	}); err != nil {
		t.Fatal(err)
	}
	return sock
}

// httpGet sends a minimal request over c and returns the body.
func httpGet(t *testing.T, c net.Conn) string {
	t.Helper()
	if _, err := c.Write([]byte("GET / HTTP/1.0\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	resp, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("response: %v", err)
	}
	_, body, ok := strings.Cut(string(resp), "\r\n\r\n")
	if !ok || !strings.HasPrefix(string(resp), "HTTP/1.1 200") {
		t.Fatalf("response %q", resp)
	}
	return body
}

// TestProxyProtocolNginx: nginx, listening with proxy_protocol, reports the
// client's address from our v1 and v2 headers; a unix client's header
// (UNKNOWN, LOCAL) gives it none.
func TestProxyProtocolNginx(t *testing.T) {
	for _, v := range []string{"v1", "v2"} {
		t.Run(v, func(t *testing.T) {
			t.Parallel()
			sock := startNginx(t)
			fd, addr := inheritTCP(t, "web")
			front := filepath.Join(shortDir(t), "front.sock")
			ufd := inherited{file: fileOf(t, listenUnix(t, front)), name: "local"}
			start(t, binary, launch{args: []string{"--proxy-protocol=" + v, sock}, fds: []inherited{fd, ufd}})
			c := dial(t, "tcp", addr)
			local := c.LocalAddr().(*net.TCPAddr)
			want := fmt.Sprintf("[%s]:%d", local.IP, local.Port)
			if got := httpGet(t, c); got != want {
				t.Errorf("nginx saw the client as %q, want %q", got, want)
			}
			if got := httpGet(t, dial(t, "unix", front)); got != "[]:" {
				t.Errorf("nginx saw a unix client as %q, want no address", got)
			}
		})
	}
}

// TestBackendPerSocket: two sockets by LISTEN_FDNAMES, one with its own
// --backend and one to the default backend.
func TestBackendPerSocket(t *testing.T) {
	t.Parallel()
	api := filepath.Join(shortDir(t), "api.sock")
	serve(t, listenUnix(t, api), tagged("api"))
	def := listenTCP(t, "127.0.0.1:0")
	serve(t, def, tagged("default"))
	fdWeb, addrWeb := inheritTCP(t, "web")
	fdAPI, addrAPI := inheritTCP(t, "api")
	start(t, binary, launch{args: []string{"--backend", "api=" + api, def.Addr().String()}, fds: []inherited{fdWeb, fdAPI}})
	for addr, want := range map[string]string{addrWeb: "default", addrAPI: "api"} {
		got, err := io.ReadAll(dial(t, "tcp", addr))
		if err != nil || string(got) != want {
			t.Errorf("client of %s got %q, %v; want %q", addr, got, err, want)
		}
	}
}

func TestBackendPerSocketErrors(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name    string
		args    []string
		mention []string
	}{
		{"unknown name", []string{"--backend", "nope=/run/x.sock", "127.0.0.1:80"}, []string{`"nope"`, `"web"`, `"api"`}},
		{"socket without backend", []string{"--backend", "web=/run/x.sock"}, []string{`"api"`, "has no backend"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fdWeb, _ := inheritTCP(t, "web")
			fdAPI, _ := inheritTCP(t, "api")
			code, _, stderr := run(t, binary, launch{args: tt.args, fds: []inherited{fdWeb, fdAPI}})
			if code != 1 {
				t.Errorf("exit status %d, want 1", code)
			}
			for _, m := range tt.mention {
				if !strings.Contains(stderr, m) {
					t.Errorf("stderr does not name %s:\n%s", m, stderr)
				}
			}
		})
	}
}

// TestStatusLine: STATUS= arrives over NOTIFY_SOCKET and counts
// connections.
func TestStatusLine(t *testing.T) {
	t.Parallel()
	_, backend := echoTCP(t, "127.0.0.1:0")
	n := newNotifyReceiver(t)
	fd, addr := inheritTCP(t, "web")
	start(t, binary, launch{args: []string{backend}, fds: []inherited{fd}, env: []string{n.env()}})
	mustEcho(t, dial(t, "tcp", addr), 100)
	err := poll(10*time.Second, func() bool {
		for _, m := range n.messages() {
			if strings.HasPrefix(m, "STATUS=") && strings.Contains(m, "1 connection,") {
				return true
			}
		}
		return false
	}, func() string { return fmt.Sprintf("no STATUS= with the open connection: %q", n.messages()) })
	if err != nil {
		t.Fatal(err)
	}
}

// TestSecondSignalCutsTheDrain: with a long --shutdown-timeout, the first
// SIGTERM waits for the open connection; a second closes it and exits.
func TestSecondSignalCutsTheDrain(t *testing.T) {
	t.Parallel()
	_, backend := echoTCP(t, "127.0.0.1:0")
	fd, addr := inheritTCP(t, "web")
	p := start(t, binary, launch{args: []string{"--shutdown-timeout=1h", backend}, fds: []inherited{fd}})
	c := dial(t, "tcp", addr)
	mustEcho(t, c, 100)
	p.signal(syscall.SIGTERM)
	if err := p.waitStderr("letting open connections finish", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	mustEcho(t, c, 100) // still served while draining
	p.signal(syscall.SIGTERM)
	if code := p.waitExit(10 * time.Second); code != 0 {
		t.Errorf("exit status %d, want 0", code)
	}
	if err := closedWithoutData(c, 5*time.Second); err != nil {
		t.Error(err)
	}
}

// TestRestartUnderLoad: the test holds the listening socket, as systemd
// does. Proxy A serves it under steady load (clients in a loop, each:
// connect, request, a reply sent in pieces, close); SIGTERM reaches A
// while replies are in the middle of their transfer, proxy B starts on the
// same socket, and every client that connected gets its whole reply:
// none is refused or reset, and A exits 0 within its shutdown timeout.
func TestRestartUnderLoad(t *testing.T) {
	t.Parallel()
	const replySize, pieces, loaders = 64 << 10, 8, 8
	// The backend sends each reply in pieces 10 ms apart, so that
	// connections are always in the middle of one.
	slow := func(c net.Conn) {
		if _, err := c.Read(make([]byte, 4)); err != nil {
			return
		}
		piece := randomBytes(replySize / pieces)
		for i := 0; i < pieces; i++ {
			if _, err := c.Write(piece); err != nil {
				return
			}
			time.Sleep(10 * time.Millisecond) // the reply's pace
		}
	}
	bl := listenTCP(t, "127.0.0.1:0")
	serve(t, bl, slow)
	front := listenTCP(t, "127.0.0.1:0")
	addr := front.Addr().String()
	args := []string{"--shutdown-timeout=10s", bl.Addr().String()}
	a := start(t, binary, launch{args: args, fds: []inherited{{file: fileOf(t, front), name: "web"}}})

	var (
		stop         = make(chan struct{})
		wg           sync.WaitGroup
		mu           sync.Mutex
		done, failed int
		firstFailure error
		doneAtTerm   int
		afterTerm    int
		terminated   bool
	)
	for i := 0; i < loaders; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				err := func() error {
					c, err := net.DialTimeout("tcp", addr, ioTimeout)
					if err != nil {
						return fmt.Errorf("connect: %v", err)
					}
					defer c.Close()
					_ = c.SetDeadline(time.Now().Add(ioTimeout))
					if _, err := c.Write([]byte("GET\n")); err != nil {
						return fmt.Errorf("request: %v", err)
					}
					n, err := io.Copy(io.Discard, c)
					if err != nil || n != replySize {
						return fmt.Errorf("reply: %d bytes of %d, %v", n, replySize, err)
					}
					return nil
				}()
				mu.Lock()
				if err != nil {
					failed++
					if firstFailure == nil {
						firstFailure = err
					}
				} else {
					done++
					if terminated {
						afterTerm++
					}
				}
				mu.Unlock()
			}
		}()
	}
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return done
	}
	if err := poll(20*time.Second, func() bool { return count() >= 20 }, func() string { return "no load through proxy A" }); err != nil {
		t.Fatal(err)
	}
	a.signal(syscall.SIGTERM)
	mu.Lock()
	terminated, doneAtTerm = true, done
	mu.Unlock()
	if err := a.waitStderr("stopping", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	b := start(t, binary, launch{args: args, fds: []inherited{{file: fileOf(t, front), name: "web"}}})
	if err := poll(20*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return afterTerm >= 40
	}, func() string { return "no load after the restart" }); err != nil {
		t.Fatal(err)
	}
	code, err := a.exitWithin(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if code != 0 {
		t.Errorf("proxy A exited with status %d, want 0", code)
	}
	close(stop)
	wg.Wait()
	t.Logf("%d replies before SIGTERM, %d after; A: %s", doneAtTerm, done-doneAtTerm, strings.TrimSpace(a.stderr.String()))
	if failed > 0 {
		t.Errorf("%d clients failed across the restart; the first: %v", failed, firstFailure)
	}
	if !strings.Contains(a.stderr.String(), "letting open connections finish") {
		t.Errorf("proxy A had no connection open at SIGTERM: the test did not test the drain")
	}
	b.signal(syscall.SIGTERM)
	b.waitExit(20 * time.Second)
}
