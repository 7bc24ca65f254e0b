// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/testlaunch"
)

// candidate is one way of getting bytes from the load generator to the backend.
type candidate struct {
	name    string
	version string
	// activated: started the way systemd starts a socket-activated service.
	activated bool
	// forks: one process per connection (socat); the idle test stops at -max-forks.
	forks bool
	// start launches the candidate forwarding to backend; nil for direct.
	start func(l *launcher, dir, backend string, onExit func()) (*proxyProc, error)
}

// launcher holds what every candidate's start needs.
type launcher struct {
	pin     bool
	cpu     int // the proxy's CPU
	connMax int // -c for socket-proxyd and systemd-socket-proxyd
}

// proxyProc is a running candidate. Its process group is its own, so stop reaches
// socat's per-connection children too.
type proxyProc struct {
	*testlaunch.Proc
	addr    string // where clients connect
	logPath string
}

// childEnv is the harness's environment without anything that would make a
// candidate think it runs under systemd, or pinned.
func childEnv() []string {
	var env []string
	for _, kv := range testlaunch.CleanEnv() {
		if k, _, _ := strings.Cut(kv, "="); k != pinnedEnv {
			env = append(env, kv)
		}
	}
	return env
}

// spawn starts argv (under taskset, on the proxy CPU) through internal/testlaunch
// (socks as fds 3.. with LISTEN_FDS and LISTEN_PID; killed if the harness dies),
// with stdout and stderr in a log file, and calls onExit once it has exited.
func (l *launcher) spawn(dir, name string, argv, env []string, socks []testlaunch.Socket, addr string, onExit func()) (*proxyProc, error) {
	var prefix []string
	if l.pin {
		prefix = []string{"taskset", "-c", strconv.Itoa(l.cpu)}
	}
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own copy
	lp, err := testlaunch.Start(testlaunch.Spec{
		Path: argv[0], Args: argv[1:], Prefix: prefix, Env: env, Sockets: socks,
		Stdout: logf, Stderr: logf, Dir: dir, Group: true,
	})
	if err != nil {
		return nil, err
	}
	go func() {
		<-lp.Done()
		onExit()
	}()
	return &proxyProc{Proc: lp, addr: addr, logPath: logPath}, nil
}

// exited reports whether the process has ended, and how.
func (p *proxyProc) exited() (bool, error) {
	if p.Exited() {
		return true, p.Err()
	}
	return false, nil
}

// stop ends the process group (SIGTERM, then SIGKILL after 5s) and waits for the
// process.
func (p *proxyProc) stop() error {
	if gone, err := p.exited(); gone {
		return fmt.Errorf("exited during the run: %v", err)
	}
	return p.Stop(5 * time.Second)
}

// logTail returns the last lines of the candidate's output, for error reports.
func (p *proxyProc) logTail() string {
	b, _ := os.ReadFile(p.logPath)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, " / ")
}

// activationListener creates a listening TCP socket on 127.0.0.1 the way systemd
// hands one to a service: blocking (systemd clears O_NONBLOCK unless
// NonBlocking=yes), backlog 4096 (somaxconn).
func activationListener() (*os.File, string, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, "", err
	}
	sa := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
	err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err == nil {
		err = unix.Bind(fd, sa)
	}
	if err == nil {
		err = unix.Listen(fd, 4096)
	}
	var name unix.Sockaddr
	if err == nil {
		name, err = unix.Getsockname(fd)
	}
	if err != nil {
		unix.Close(fd)
		return nil, "", fmt.Errorf("listener: %w", err)
	}
	port := name.(*unix.SockaddrInet4).Port
	return os.NewFile(uintptr(fd), "listener"), net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), nil
}

// startActivated starts bin socket-activated: the listener as fd 3, LISTEN_FDS=1,
// LISTEN_FDNAMES, and LISTEN_PID set by a shell to its own pid just before it execs
// bin, so the pid is right and is also the pid we measure.
func startActivated(bin string, options ...string) func(l *launcher, dir, backend string, onExit func()) (*proxyProc, error) {
	return func(l *launcher, dir, backend string, onExit func()) (*proxyProc, error) {
		f, addr, err := activationListener()
		if err != nil {
			return nil, err
		}
		defer f.Close() // the child has its own copy
		argv := append([]string{bin, "-c", strconv.Itoa(l.connMax)}, options...)
		if addrs := strings.Fields(backend); len(addrs) > 1 {
			// As haproxy's balance roundrobin with check (inter 2s).
			argv = append(argv, "--balance=round-robin", "--health-interval=2s")
		}
		argv = append(argv, strings.Fields(backend)...)
		socks := []testlaunch.Socket{{File: f, Name: "proxybench"}}
		return l.spawn(dir, filepath.Base(bin), argv, childEnv(), socks, addr, onExit)
	}
}

// freePort returns a loopback port that was free a moment ago, for the candidates
// that bind their own listener.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func startSocat(bin string) func(l *launcher, dir, backend string, onExit func()) (*proxyProc, error) {
	return func(l *launcher, dir, backend string, onExit func()) (*proxyProc, error) {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		argv := []string{bin,
			fmt.Sprintf("TCP-LISTEN:%d,bind=127.0.0.1,fork,reuseaddr,backlog=4096", port),
			"TCP:" + strings.Fields(backend)[0]} // socat takes one
		return l.spawn(dir, "socat", argv, childEnv(), nil, fmt.Sprintf("127.0.0.1:%d", port), onExit)
	}
}

// haproxyMaxconn keeps haproxy's own descriptor budget (2 per connection plus a
// few) inside the 20000 limit, above the 9000 connections the idle test wants.
const haproxyMaxconn = 9900

func startHAProxy(bin string) func(l *launcher, dir, backend string, onExit func()) (*proxyProc, error) {
	return func(l *launcher, dir, backend string, onExit func()) (*proxyProc, error) {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		cfg := fmt.Sprintf(`global
	maxconn %d
	nbthread 1
defaults
	mode tcp
	maxconn %d
	timeout connect 5s
	timeout client 1h
	timeout server 1h
frontend bench
	bind 127.0.0.1:%d backlog 4096
	default_backend bench
backend bench
%s`, haproxyMaxconn, haproxyMaxconn, port, haproxyServers(backend))
		path := filepath.Join(dir, "haproxy.cfg")
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			return nil, err
		}
		argv := []string{bin, "-db", "-f", path}
		return l.spawn(dir, "haproxy", argv, childEnv(), nil, fmt.Sprintf("127.0.0.1:%d", port), onExit)
	}
}

// haproxyServers is the server lines of the backend section: one as
// always, or several with balance roundrobin and a health check each.
func haproxyServers(backend string) string {
	addrs := strings.Fields(backend)
	if len(addrs) == 1 {
		return "\tserver backend " + addrs[0] + "\n"
	}
	s := "\tbalance roundrobin\n"
	for i, a := range addrs {
		s += fmt.Sprintf("\tserver backend%d %s check\n", i+1, a)
	}
	return s
}

// nginxUpstream is what proxy_pass names: the one address, or an upstream
// of several (round-robin, nginx's default, each out for 10s after a
// failure) declared in upstreams.
func nginxUpstream(backend string) (pass, upstreams string) {
	addrs := strings.Fields(backend)
	if len(addrs) == 1 {
		return addrs[0], ""
	}
	upstreams = "upstream bench {\n"
	for _, a := range addrs {
		upstreams += fmt.Sprintf("\t\tserver %s max_fails=1 fail_timeout=10s;\n", a)
	}
	return "bench", upstreams + "\t}\n"
}

const nginxStreamModule = "/usr/lib/nginx/modules/ngx_stream_module.so"

func startNginx(bin string) func(l *launcher, dir, backend string, onExit func()) (*proxyProc, error) {
	return func(l *launcher, dir, backend string, onExit func()) (*proxyProc, error) {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		pass, upstreams := nginxUpstream(backend)
		server := fmt.Sprintf(`listen 127.0.0.1:%d backlog=4096;
		proxy_pass %s;
		proxy_timeout 1h;
		proxy_half_close on;`, port, pass)
		return spawnNginx(l, bin, dir, upstreams, server, port, onExit)
	}
}

// spawnNginx runs nginx's stream module with one server block. One process
// (no master), which is then the pid we measure; each proxied connection
// or UDP session takes two of worker_connections.
func spawnNginx(l *launcher, bin, dir, upstreams, server string, port int, onExit func()) (*proxyProc, error) {
	cfg := fmt.Sprintf(`load_module %s;
daemon off;
master_process off;
worker_rlimit_nofile 20000;
error_log %s/error.log warn;
pid %s/nginx.pid;
events {
	worker_connections 20000;
}
stream {
	%s
	server {
		%s
	}
}
`, nginxStreamModule, dir, dir, upstreams, server)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	argv := []string{bin, "-p", dir + "/", "-c", path, "-e", filepath.Join(dir, "error.log")}
	return l.spawn(dir, "nginx", argv, childEnv(), nil, fmt.Sprintf("127.0.0.1:%d", port), onExit)
}

// versionOf runs argv and returns the first output line containing want (or the
// first line if want is empty).
func versionOf(want string, argv ...string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		line = strings.TrimSpace(line)
		if line != "" && strings.Contains(line, want) {
			return line
		}
	}
	return "unknown"
}

// buildOurs builds ./cmd/socket-proxyd into dir.
func buildOurs(dir string) (string, error) {
	bin := filepath.Join(dir, "socket-proxyd")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/socket-proxyd").CombinedOutput()
	if err != nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) > 3 {
			lines = lines[:3]
		}
		return "", fmt.Errorf("go build ./cmd/socket-proxyd: %v: %s", err, strings.Join(lines, " / "))
	}
	return bin, nil
}

// findCandidates returns the candidates that are installed, in table order, and a
// line for each one that is not.
func findCandidates(ours string, oursErr error, baseline, busyPoll string, metrics bool) (cands []*candidate, skipped []string) {
	cands = append(cands, &candidate{name: "direct", version: "no proxy"})
	if oursErr != nil {
		skipped = append(skipped, "socket-proxyd: "+oursErr.Error())
	} else {
		cands = append(cands, &candidate{name: "socket-proxyd", activated: true,
			version: versionOf("", ours, "--version"), start: startActivated(ours)})
		if busyPoll != "" {
			cands = append(cands, &candidate{name: "busy-poll", activated: true,
				version: "socket-proxyd --busy-poll=" + busyPoll, start: startActivated(ours, "--busy-poll="+busyPoll)})
		}
		if metrics {
			cands = append(cands, &candidate{name: "metrics", activated: true,
				version: "socket-proxyd --metrics", start: startActivated(ours, "--metrics="+metricsAddr)})
		}
	}
	if baseline != "" {
		cands = append(cands, &candidate{name: "baseline", activated: true,
			version: versionOf("", baseline, "--version"), start: startActivated(baseline)})
	}
	look := func(name string, paths ...string) string {
		for _, p := range paths {
			if p, err := exec.LookPath(p); err == nil {
				return p
			}
		}
		skipped = append(skipped, name+": not installed")
		return ""
	}
	if p := look("systemd-socket-proxyd", "/lib/systemd/systemd-socket-proxyd", "/usr/lib/systemd/systemd-socket-proxyd"); p != "" {
		cands = append(cands, &candidate{name: "systemd-socket-proxyd", activated: true,
			version: versionOf("systemd", p, "--version"), start: startActivated(p)})
	}
	if p := look("haproxy", "haproxy", "/usr/sbin/haproxy"); p != "" {
		v, _, _ := strings.Cut(versionOf("HAProxy version", p, "-v"), " - ")
		cands = append(cands, &candidate{name: "haproxy", version: v, start: startHAProxy(p)})
	}
	if p := look("nginx", "nginx", "/usr/sbin/nginx"); p != "" {
		if _, err := os.Stat(nginxStreamModule); err != nil {
			skipped = append(skipped, "nginx: stream module not installed ("+nginxStreamModule+")")
		} else {
			cands = append(cands, &candidate{name: "nginx", version: versionOf("nginx version", p, "-v"), start: startNginx(p)})
		}
	}
	if p := look("socat", "socat"); p != "" {
		v := versionOf("socat version", p, "-V")
		if i := strings.Index(v, " on "); i > 0 {
			v = v[:i]
		}
		cands = append(cands, &candidate{name: "socat", forks: true, version: v, start: startSocat(p)})
	}
	return cands, skipped
}
