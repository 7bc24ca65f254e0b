// SPDX-License-Identifier: Apache-2.0

package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/testutil"
)

// --metrics, --check and --log-level, on the built binary.

// scrape GETs /metrics from a unix socket path or HOST:PORT.
func scrape(addr string) (string, error) {
	client := &http.Client{Timeout: 10 * time.Second}
	target := "http://" + addr + "/metrics"
	if strings.HasPrefix(addr, "/") || strings.HasPrefix(addr, "@") {
		client.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", addr)
		}}
		target = "http://metrics/metrics"
	}
	resp, err := client.Get(target)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return string(b), err
}

// sample is the value of the series written exactly as series in a scrape.
func sample(t *testing.T, body, series string) int64 {
	t.Helper()
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return n
		}
	}
	t.Fatalf("no series %s in:\n%s", series, body)
	return 0
}

// metricsAddr is the address the proxy says it serves metrics on.
func metricsAddr(t *testing.T, p *proc) string {
	t.Helper()
	re := regexp.MustCompile(`serving metrics address=(\S+)`)
	var m []string
	if err := poll(10*time.Second, func() bool {
		m = re.FindStringSubmatch(p.stderr.String())
		return m != nil
	}, func() string { return "no metrics address in:\n" + p.stderr.String() }); err != nil {
		t.Fatal(err)
	}
	return m[1]
}

// listeningSocket is the inode of the socket (not of the file: a file
// system may give a new file the number of one just removed) listening at
// the unix path, from /proc/net/unix, whose flags 00010000 mark a
// listening socket; and the file's mode. The file's name must be unique
// on the machine.
func listeningSocket(t *testing.T, path string) (string, os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		// The proxy binds through /proc/self/fd/N/NAME: the path
		// shown ends the same.
		if len(f) == 8 && (f[7] == path || strings.HasSuffix(f[7], "/"+filepath.Base(path))) && f[3] == "00010000" {
			return f[6], fi.Mode().Perm()
		}
	}
	t.Fatalf("no socket listens at %q:\n%s", path, b)
	return "", 0
}

// TestMetricsSocketSurvivesReload: a unix --metrics socket gets
// --socket-mode, counts what went through, and after a reload in place is
// the very socket file it was (carried, not bound again), counting the
// reload.
func TestMetricsSocketSurvivesReload(t *testing.T) {
	_, backend := echoTCP(t, "127.0.0.1:0")
	fd, addr := inheritTCP(t, "web")
	sock := filepath.Join(shortDir(t), fmt.Sprintf("metrics-%d.sock", os.Getpid()))
	p := start(t, binary, launch{args: []string{"--metrics=" + sock, "--socket-mode=0600", backend}, fds: []inherited{fd}})
	metricsAddr(t, p)
	ino, mode := listeningSocket(t, sock)
	if mode != 0o600 {
		t.Errorf("metrics socket mode %#o, want 0600", mode)
	}
	c := dial(t, "tcp", addr)
	mustEcho(t, c, 1000)
	c.Close()
	series := fmt.Sprintf(`socket_proxyd_bytes_total{listener="web/tcp",backend=%q,direction="to_backend"}`, backend)
	var body string
	if err := poll(10*time.Second, func() bool {
		var err error
		body, err = scrape(sock)
		return err == nil && strings.Contains(body, series+" 1000\n")
	}, func() string { return "never counted 1000 bytes:\n" + body }); err != nil {
		t.Fatal(err)
	}

	reloadTo(t, p, 1)
	if got, _ := listeningSocket(t, sock); got != ino {
		t.Errorf("metrics socket inode %s after the reload, was %s: bound again, not carried", got, ino)
	}
	body, err := scrape(sock)
	if err != nil {
		t.Fatal(err)
	}
	if n := sample(t, body, `socket_proxyd_reloads_total{result="ok"}`); n != 1 {
		t.Errorf("%d reloads counted, want 1", n)
	}
	if n := sample(t, body, `socket_proxyd_reloads_total{result="failed"}`); n != 0 {
		t.Errorf("%d failed reloads counted, want 0", n)
	}
	if !strings.Contains(body, "\nsocket_proxyd_reload_pause_seconds 0.") {
		t.Errorf("no reload pause in:\n%s", body)
	}
	reloadTo(t, p, 2)
	body, err = scrape(sock)
	if err != nil {
		t.Fatal(err)
	}
	if n := sample(t, body, `socket_proxyd_reloads_total{result="ok"}`); n != 2 {
		t.Errorf("%d reloads counted after the second, want 2", n)
	}
	p.signal(syscall.SIGTERM)
	p.waitExit(10 * time.Second)
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("metrics socket file left after the stop: %v", err)
	}
}

// TestCheckPrintsThePlan: --check prints every listener with its backend
// and what it resolves to, binds nothing, and exits 0; a backend that is
// not there fails it with the reason.
func TestCheckPrintsThePlan(t *testing.T) {
	_, backend := echoTCP(t, "127.0.0.1:0")
	free := listenTCP(t, "127.0.0.1:0") // held by "the running proxy": --check must not need it
	sock := filepath.Join(shortDir(t), "b.sock")
	echoUnix(t, sock)
	code, stdout, stderr := run(t, binary, launch{args: []string{"--check", "--listen", free.Addr().String(),
		"--listen-datagram", "127.0.0.1:5353", "--backend", "127.0.0.1:5353/udp=" + sock,
		"--connections-max=9", "--metrics=127.0.0.1:9560", "--socket-buffer=64K", "--balance=least-connections",
		"--health-interval=2s", "--health-fall=4", backend}, env: []string{"SYSTEMD_LOG_LEVEL=err"}})
	if code != 0 {
		t.Fatalf("--check: exit %d\n%s%s", code, stdout, stderr)
	}
	for _, want := range []string{
		fmt.Sprintf("listener %s/tcp (--listen %s) -> %s (%s)\n", free.Addr(), free.Addr(), backend, backend),
		fmt.Sprintf("listener 127.0.0.1:5353/udp (--listen-datagram 127.0.0.1:5353) -> %s (%s)\n", sock, sock),
		"limits: connections-max=9 ",
		" socket-buffer=65536\n",
		"several backends: balance=least-connections health-interval=2s health-rise=2 health-fall=4\n",
		"metrics=127.0.0.1:9560",
		"log-level=err (SYSTEMD_LOG_LEVEL)\n",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("no %q in the plan:\n%s", want, stdout)
		}
	}
	code, stdout, stderr = run(t, binary, launch{args: []string{"--check", "--listen", "8080", backend}})
	if code != 1 || !strings.Contains(stdout, "(--listen 8080 INVALID ADDRESS)") || !strings.Contains(stderr, "is a port alone") {
		t.Errorf("--check with a bad --listen: exit %d, plan %q, stderr %q; want 1, the plan marking it and the reason", code, stdout, stderr)
	}
	missing := filepath.Join(shortDir(t), "none.sock")
	code, _, stderr = run(t, binary, launch{args: []string{"--check", "--listen", "127.0.0.1:0", missing}})
	if code != 1 || !strings.Contains(stderr, "no unix socket at "+strconv.Quote(missing)) {
		t.Errorf("--check with a missing backend: exit %d, stderr %q, want 1 and the reason", code, stderr)
	}
	code, _, stderr = run(t, binary, launch{args: []string{"--check", "--listen-sequential-packet", "@x", "127.0.0.1:80"}})
	if code != 1 || !strings.Contains(stderr, "must be a unix socket too") {
		t.Errorf("--check with a sequential-packet socket to TCP: exit %d, stderr %q, want 1 and the reason", code, stderr)
	}
}

// TestLogLevelOverridesEnvironment: --log-level wins over
// SYSTEMD_LOG_LEVEL either way.
func TestLogLevelOverridesEnvironment(t *testing.T) {
	_, backend := echoTCP(t, "127.0.0.1:0")
	for _, tc := range []struct {
		env, flag string
		debug     bool
	}{
		{"SYSTEMD_LOG_LEVEL=debug", "--log-level=warning", false},
		{"SYSTEMD_LOG_LEVEL=err", "--log-level=debug", true},
	} {
		t.Run(tc.flag, func(t *testing.T) {
			fd, _ := inheritTCP(t, "web")
			p := start(t, binary, launch{args: []string{tc.flag, "--exit-idle-time=0", backend}, fds: []inherited{fd}, env: []string{tc.env}})
			p.waitExit(10 * time.Second)
			out := p.stderr.String()
			if got := strings.Contains(out, "ready"); got != tc.debug {
				t.Errorf("%s %s: debug line %v, want %v:\n%s", tc.env, tc.flag, got, tc.debug, out)
			}
			if got := strings.Contains(out, "listening"); got != tc.debug {
				t.Errorf("%s %s: info line %v, want %v:\n%s", tc.env, tc.flag, got, tc.debug, out)
			}
		})
	}
}

// freePort is a loopback port nothing listens on (for Prometheus's own
// web address, which it must be told).
func freePort(t *testing.T) string {
	ln := listenTCP(t, "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// promQuery asks Prometheus's HTTP API for the value of an instant query,
// -1 when it has no sample.
func promQuery(web, query string) (float64, error) {
	resp, err := http.Get("http://" + web + "/api/v1/query?query=" + url.QueryEscape(query))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string
		Data   struct {
			Result []struct {
				Value [2]any
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return 0, err
	}
	if r.Status != "success" {
		return 0, fmt.Errorf("query %s: %s", query, r.Status)
	}
	if len(r.Data.Result) == 0 {
		return -1, nil
	}
	s, _ := r.Data.Result[0].Value[1].(string)
	return strconv.ParseFloat(s, 64)
}

// TestPrometheusScrapesTheProxy: a real Prometheus scrapes a running proxy
// through which a known load went (streams of known sizes, datagrams of
// known sizes, a refused backend); through its HTTP API the target is up
// and every counter equals what was sent; promtool accepts the scrape.
func TestPrometheusScrapesTheProxy(t *testing.T) {
	prometheus := testutil.RequireTool(t, "prometheus", "prometheus")
	promtool := testutil.RequireTool(t, "promtool", "prometheus")

	_, tcpBackend := echoTCP(t, "127.0.0.1:0")
	udpBackend := testutil.EchoPackets(t, "udp", "127.0.0.1:0", func(net.Addr) string { return "" })
	refusing, _ := refusingTCP(t)
	web, webAddr := inheritTCP(t, "web")
	gone, goneAddr := inheritTCP(t, "gone")
	udp := listenUDP(t)
	dns := inherited{file: fileOf(t, udp), name: "dns"}
	udpAddr := udp.LocalAddr().String()
	p := start(t, binary, launch{
		args: []string{"--metrics=127.0.0.1:0", "--connect-timeout=0",
			"--backend=dns=" + udpBackend.LocalAddr().String(), "--backend=gone=" + refusing, tcpBackend},
		fds: []inherited{web, gone, dns},
	})
	metrics := metricsAddr(t, p)

	// The load: streams of known sizes, datagrams of known sizes, clients
	// of a refused backend.
	const streams, datagrams = 4, 6
	sent := 0
	for i := range streams {
		c := dial(t, "tcp", webAddr)
		mustEcho(t, c, 1000*(i+1))
		sent += 1000 * (i + 1)
		c.Close()
	}
	u, err := net.Dial("udp", udpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	u.SetDeadline(time.Now().Add(20 * time.Second))
	dsent := 0
	buf := make([]byte, 2048)
	for i := range datagrams {
		msg := make([]byte, 100+i)
		dsent += len(msg)
		if _, err := u.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := u.Read(buf); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		c := dial(t, "tcp", goneAddr)
		closedWithoutData(c, 10*time.Second)
	}

	dir := shortDir(t)
	promWeb := freePort(t)
	config := filepath.Join(dir, "prometheus.yml")
	os.WriteFile(config, []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: socket-proxyd
    static_configs:
      - targets: [%q]
`, metrics)), 0o644)
	cmd := exec.Command(prometheus, "--config.file="+config, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promWeb, "--log.level=warn")
	var promLog lockedBuffer
	cmd.Stdout, cmd.Stderr = &promLog, &promLog
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus:\n%s", promLog.String())
		}
	})

	want := map[string]float64{
		`up{job="socket-proxyd"}`:                                                                             1,
		`socket_proxyd_connections_accepted_total{listener="web/tcp"}`:                                        streams,
		`socket_proxyd_bytes_total{listener="web/tcp",direction="to_backend"}`:                                float64(sent),
		`socket_proxyd_bytes_total{listener="web/tcp",direction="to_client"}`:                                 float64(sent),
		`socket_proxyd_backend_connect_seconds_count{listener="web/tcp"}`:                                     streams,
		`socket_proxyd_connections_accepted_total{listener="gone/tcp"}`:                                       2,
		`socket_proxyd_backend_connect_failures_total{listener="gone/tcp",reason="refused"}`:                  2,
		`sum(socket_proxyd_backend_connect_failures_total{listener="web/tcp"})`:                               0,
		`socket_proxyd_datagrams_forwarded_total{listener="dns/udp",direction="to_backend"}`:                  datagrams,
		`socket_proxyd_datagrams_forwarded_total{listener="dns/udp",direction="to_client"}`:                   datagrams,
		`socket_proxyd_bytes_total{listener="dns/udp",direction="to_backend"}`:                                float64(dsent),
		`socket_proxyd_flows_opened_total{listener="dns/udp"}`:                                                1,
		`sum(socket_proxyd_datagrams_dropped_total)`:                                                          0,
		`socket_proxyd_connections_active{listener="web/tcp"}`:                                                0,
		`count(socket_proxyd_build_info)`:                                                                     1,
		`process_open_fds > 0`:                                                                                -2, // any value
		`count(socket_proxyd_bytes_total{backend="` + udpBackend.LocalAddr().String() + `"})`:                 2,
		`count(socket_proxyd_backend_connect_failures_total{backend="` + refusing + `",listener="gone/tcp"})`: 5,
	}
	for q, v := range want {
		var got float64
		if err := poll(60*time.Second, func() bool {
			got, err = promQuery(promWeb, q)
			return err == nil && (got == v || v == -2 && got > 0)
		}, func() string { return fmt.Sprintf("%s = %v (%v), want %v", q, got, err, v) }); err != nil {
			t.Error(err)
		}
	}

	body, err := scrape(metrics)
	if err != nil {
		t.Fatal(err)
	}
	check := exec.Command(promtool, "check", "metrics")
	check.Stdin = strings.NewReader(body)
	if out, err := check.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// TestCheckSeveralBackendsAndListenAddresses: of several backends, one
// that is down fails --check only when none is up (an ExecReload= with
// --check must not fail for an instance stopped on purpose); a --listen
// address that binding would refuse fails it, unbound.
func TestCheckSeveralBackendsAndListenAddresses(t *testing.T) {
	t.Parallel()
	dir := shortDir(t)
	up, down := filepath.Join(dir, "up.sock"), filepath.Join(dir, "down.sock")
	echoUnix(t, up)
	code, stdout, stderr := run(t, binary, launch{args: []string{"--check", "--listen", "127.0.0.1:0", up, down}})
	if code != 0 || !strings.Contains(stdout, "NOT REACHABLE") {
		t.Errorf("one of two backends down: exit %d, stdout %q, stderr %q; want 0 and the plan saying which", code, stdout, stderr)
	}
	code, _, stderr = run(t, binary, launch{args: []string{"--check", "--listen", "127.0.0.1:0", down}})
	if code != 1 || !strings.Contains(stderr, "no unix socket") {
		t.Errorf("the only backend down: exit %d, stderr %q; want 1 and why", code, stderr)
	}
	for _, bad := range [][]string{{"--listen", "127.0.0.1:99999"}, {"--listen", "::1:8080"}, {"--listen-datagram", "127.0.0.1:70000"},
		{"--metrics", "127.0.0.1:99999"}, {"--metrics", "relative"}} {
		code, _, stderr = run(t, binary, launch{args: append([]string{"--check"}, append(bad, up)...)})
		if code != 1 || !strings.Contains(stderr, bad[0]+" address") {
			t.Errorf("%v: exit %d, stderr %q; want 1 and the address named", bad, code, stderr)
		}
	}
	// Addresses too long for sun_path, which the start refuses as well.
	long := "/tmp/" + strings.Repeat("x", 130)
	for _, bad := range [][]string{{"--listen", long}, {"--listen-datagram", long}, {"--listen-sequential-packet", long},
		{"--listen", "@" + strings.Repeat("x", 120)}, {"--metrics", long}} {
		code, _, stderr = run(t, binary, launch{args: append([]string{"--check"}, append(bad, up)...)})
		if code != 1 || !strings.Contains(stderr, "the limit is 107") {
			t.Errorf("%s of %d bytes: exit %d, stderr %q; want 1 and the limit", bad[0], len(bad[1]), code, stderr)
		}
	}
}

// TestMetricsAddressInUseSaysMetrics: a --metrics port that something
// else holds fails the start, and the message names --metrics, so that it
// is not taken for a --listen socket's.
func TestMetricsAddressInUseSaysMetrics(t *testing.T) {
	_, backend := echoTCP(t, "127.0.0.1:0")
	taken := listenTCP(t, "127.0.0.1:0")
	code, _, stderr := run(t, binary, launch{args: []string{"--listen", "127.0.0.1:0", "--metrics", taken.Addr().String(), backend}})
	if code != 1 || !strings.Contains(stderr, "--metrics: cannot listen on \""+taken.Addr().String()+"\"") {
		t.Errorf("--metrics on a taken port: exit %d, stderr %q", code, stderr)
	}
}

// TestMissingUnixBackendIsNamedAtStart: a unix socket backend that does
// not exist when the proxy starts is named once in a warning, since its
// clients will wait for it and then be reset.
func TestMissingUnixBackendIsNamedAtStart(t *testing.T) {
	missing := filepath.Join(shortDir(t), "not-yet.sock")
	p := start(t, binary, launch{args: []string{"--listen", "127.0.0.1:0", missing}})
	if err := p.waitStderr("backend socket does not exist yet", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(p.stderr.String(), missing) {
		t.Errorf("the warning does not name %s:\n%s", missing, p.stderr.String())
	}
}
