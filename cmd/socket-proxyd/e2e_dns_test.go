// SPDX-License-Identifier: Apache-2.0

package main_test

import (
	"bufio"
	"context"
	be "encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/testutil"
)

// DNS through the proxy with real clients and a real server (dnsmasq):
// a stub resolver asks each query from a new source port, so each query is
// a new flow, and the proxy must serve them at full rate with its default
// options and with the shipped dns-proxy unit's.

// dnsQuery is a query for name, type A, with id.
func dnsQuery(id uint16, name string) []byte {
	q := be.BigEndian.AppendUint16(nil, id)
	q = append(q, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0) // recursion desired; one question
	for _, label := range strings.Split(name, ".") {
		q = append(q, byte(len(label)))
		q = append(q, label...)
	}
	return append(q, 0, 0, 1, 0, 1) // root; A; IN
}

// stubQueries asks n queries of server, parallel at a time, each from a
// socket of its own (a new source port, as a stub resolver does), once,
// and counts the answers that come within a second.
func stubQueries(t *testing.T, server string, n, parallel int) (answered int64) {
	t.Helper()
	var ok atomic.Int64
	var next atomic.Int64
	var wg sync.WaitGroup
	for range parallel {
		wg.Go(func() {
			buf := make([]byte, 512)
			for i := next.Add(1); i <= int64(n); i = next.Add(1) {
				c, err := net.Dial("udp", server)
				if err != nil {
					t.Error(err)
					return
				}
				id := uint16(i)
				c.SetDeadline(time.Now().Add(time.Second))
				if _, err := c.Write(dnsQuery(id, fmt.Sprintf("q%d.example.test", i))); err == nil {
					if k, err := c.Read(buf); err == nil && k >= 12 && be.BigEndian.Uint16(buf) == id {
						ok.Add(1)
					}
				}
				c.Close()
			}
		})
	}
	wg.Wait()
	return ok.Load()
}

// shippedOptions is the options of the ExecStart= line of a unit in
// contrib/systemd, without the binary and the backend address.
func shippedOptions(t *testing.T, unit string) []string {
	t.Helper()
	f, err := os.Open("../../contrib/systemd/" + unit)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), "ExecStart="); ok {
			fields := strings.Fields(line)
			return fields[1 : len(fields)-1]
		}
	}
	t.Fatalf("%s has no ExecStart=", unit)
	return nil
}

// TestStubResolversLoseNothing: thousands of queries, each from a new
// source port, 32 at a time, through the proxy to dnsmasq: every one is
// answered, with the default options, with the shipped dns-proxy.service's,
// and with a flow budget so small that nearly every query evicts a flow.
func TestStubResolversLoseNothing(t *testing.T) {
	t.Parallel()
	server := startDnsmasq(t)
	const queries = 3000
	for _, tt := range []struct {
		name  string
		opts  []string
		evict bool
	}{
		{name: "default options"},
		{name: "dns-proxy.service", opts: shippedOptions(t, "dns-proxy.service")},
		// More than the queries in flight: only answered flows go.
		{name: "flows-max 64", opts: []string{"--flows-max=64"}, evict: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			udp := listenUDP(t)
			n := newNotifyReceiver(t)
			p := start(t, binary, launch{args: append(tt.opts, server), fds: []inherited{{file: fileOf(t, udp), name: "dns-proxy.socket"}},
				env: []string{n.env()}})
			if err := n.wait("READY=1", 10*time.Second); err != nil {
				t.Fatal(err)
			}
			if got := stubQueries(t, udp.LocalAddr().String(), queries, 32); got != queries {
				t.Fatalf("%d of %d queries answered\nproxy stderr:\n%s", got, queries, p.stderr.String())
			}
			evicted := strings.Contains(p.stderr.String(), "flow limit reached")
			if evicted != tt.evict {
				t.Errorf("flows evicted: %v, want %v:\n%s", evicted, tt.evict, p.stderr.String())
			}
		})
	}
}

// startNSD runs NSD, an authoritative DNS server that serves TCP as well
// as UDP at full rate (dnsmasq's TCP loses queries to dnsperf even
// directly), without response rate limiting, on 127.0.0.1, answering A and AAAA for *.example.test, until
// the test ends; it returns its address.
func startNSD(t *testing.T) string {
	t.Helper()
	nsd := testutil.RequireTool(t, "nsd", "nsd")
	dir := t.TempDir()
	zone := `$ORIGIN example.test.
$TTL 300
@ IN SOA ns.example.test. admin.example.test. 1 3600 600 86400 300
@ IN NS ns
ns IN A 192.0.2.53
* IN A 192.0.2.1
* IN AAAA 2001:db8::1
`
	if err := os.WriteFile(dir+"/example.test.zone", []byte(zone), 0o644); err != nil {
		t.Fatal(err)
	}
	for attempt := 0; ; attempt++ {
		server := freeTCPAddr(t, "tcp", "127.0.0.1")
		_, port, _ := net.SplitHostPort(server)
		conf := fmt.Sprintf(`server:
  ip-address: 127.0.0.1@%[1]s
  port: %[1]s
  username: ""
  chroot: ""
  zonesdir: "%[2]s"
  database: ""
  pidfile: "%[2]s/nsd.pid"
  xfrdfile: "%[2]s/xfrd.state"
  zonelistfile: "%[2]s/zone.list"
  logfile: "%[2]s/nsd.log"
  server-count: 1
  tcp-count: 256
  rrl-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: example.test
  zonefile: example.test.zone
`, port, dir)
		if err := os.WriteFile(dir+"/nsd.conf", []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		srv := exec.Command(nsd, "-d", "-c", dir+"/nsd.conf")
		srv.Stderr = os.Stderr
		srv.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // nsd forks its server processes
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { srv.Wait(); close(done) }()
		t.Cleanup(func() { syscall.Kill(-srv.Process.Pid, syscall.SIGTERM); <-done })
		err := poll(10*time.Second, func() bool {
			select {
			case <-done:
				return true
			default:
			}
			c, err := net.Dial("tcp", server)
			if err == nil {
				c.Close()
			}
			return err == nil
		}, func() string { return "nsd did not start" })
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-done:
			if attempt < 3 {
				continue // the port was taken meanwhile
			}
			t.Fatal("nsd exited")
		default:
		}
		return server
	}
}

// dnsperfLost runs dnsperf against server for seconds over mode (udp or
// tcp), with clients sockets, and returns the queries sent and lost.
func dnsperfLost(t *testing.T, server, mode string, clients, seconds int) (sent, lost int) {
	t.Helper()
	dnsperf := testutil.RequireTool(t, "dnsperf", "dnsperf")
	host, port, _ := net.SplitHostPort(server)
	data, err := os.CreateTemp(t.TempDir(), "queries")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		fmt.Fprintf(data, "q%d.example.test A\n", i)
	}
	data.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(seconds+30)*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, dnsperf, "-s", host, "-p", port, "-m", mode, "-d", data.Name(),
		"-c", strconv.Itoa(clients), "-l", strconv.Itoa(seconds), "-t", "2").CombinedOutput()
	if err != nil {
		t.Fatalf("dnsperf: %v\n%s", err, out)
	}
	count := func(what string) int {
		m := regexp.MustCompile(what + `:\s+(\d+)`).FindSubmatch(out)
		if m == nil {
			t.Fatalf("dnsperf printed no %q:\n%s", what, out)
		}
		v, _ := strconv.Atoi(string(m[1]))
		return v
	}
	t.Logf("dnsperf -m %s -c %d:\n%s", mode, clients, out)
	return count("Queries sent"), count("Queries lost")
}

// TestDnsperfThroughProxy: dnsperf at full rate (100 queries in flight)
// through the proxy with default options to NSD, over UDP and over TCP, as a
// .socket unit with ListenStream= and ListenDatagram= on one port passes
// them: no query lost.
func TestDnsperfThroughProxy(t *testing.T) {
	t.Parallel()
	server := startNSD(t)
	tcpLn, udpConn := listenBothOnOnePort(t)
	p := start(t, binary, launch{args: []string{server},
		fds: []inherited{{file: fileOf(t, tcpLn), name: "dns-proxy.socket"}, {file: fileOf(t, udpConn), name: "dns-proxy.socket"}}})
	for _, mode := range []string{"udp", "tcp"} {
		sent, lost := dnsperfLost(t, tcpLn.Addr().String(), mode, 64, 2)
		if sent < 1000 || lost != 0 {
			t.Errorf("dnsperf over %s: %d sent, %d lost; want over 1000 and none\nproxy stderr:\n%s", mode, sent, lost, p.stderr.String())
		}
	}
}
