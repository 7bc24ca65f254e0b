#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# dns.sh: DNS through socket-proxyd, side by side with direct and with
# nginx's stream proxy (udp, proxy_responses 1), in one run, to NSD on
# loopback. For each candidate, ROUNDS interleaved rounds of dnsperf
# (64 clients, 100 queries in flight, SECONDS each), and a stub-resolver
# load (STUB queries, 32 at a time, each from a new source port): queries
# per second and queries lost. The proxy runs on CPU 0, dnsperf, NSD and
# nginx's worker on CPU 1 (nginx is a peer: it gets CPU 0 as the proxy).
#
# Usage: test/bench/dns.sh   (root; needs nsd, dnsperf, nginx with the
# stream module, taskset; ROUNDS=3 SECONDS_EACH=10 STUB=20000 BIN=./socket-proxyd)
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
bin=${BIN:-$top/socket-proxyd}
rounds=${ROUNDS:-3}
secs=${SECONDS_EACH:-10}
stub=${STUB:-20000}
dir=$(mktemp -d /tmp/spx-dnsbench.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$dir"
}
trap cleanup EXIT
for c in nsd dnsperf nginx taskset; do command -v $c >/dev/null || { echo "dns.sh: $c not found" >&2; exit 1; }; done
[[ -x $bin ]] || { echo "dns.sh: no $bin (make build)" >&2; exit 1; }

# NSD on 5354, no response rate limiting, on CPU 1.
cat >"$dir/zone" <<'Z'
$ORIGIN example.test.
$TTL 300
@ IN SOA ns.example.test. admin.example.test. 1 3600 600 86400 300
@ IN NS ns
ns IN A 192.0.2.53
* IN A 192.0.2.1
Z
cat >"$dir/nsd.conf" <<N
server:
  ip-address: 127.0.0.1@5354
  port: 5354
  username: ""
  chroot: ""
  zonesdir: "$dir"
  database: ""
  pidfile: "$dir/nsd.pid"
  xfrdfile: "$dir/xfrd.state"
  zonelistfile: "$dir/zone.list"
  logfile: "$dir/nsd.log"
  server-count: 1
  rrl-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: example.test
  zonefile: zone
N
setsid taskset -c 1 nsd -d -c "$dir/nsd.conf" & pids+=($!)
# nginx: one worker on CPU 0, UDP, one flow per query as its docs advise for DNS.
cat >"$dir/nginx.conf" <<G
daemon off; worker_processes 1; worker_cpu_affinity 01; pid $dir/nginx.pid; error_log $dir/nginx.err;
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
events { worker_connections 20000; }
stream { server { listen 127.0.0.1:5402 udp; proxy_pass 127.0.0.1:5354; proxy_responses 1; proxy_timeout 30s; } }
G
nginx -c "$dir/nginx.conf" & pids+=($!)
# socket-proxyd with its defaults, and with the shipped dns-proxy unit's options.
opts=$(sed -n 's|^ExecStart=/usr/bin/socket-proxyd \(.*\) 127.0.0.1:5353$|\1|p' "$top/contrib/systemd/dns-proxy.service")
taskset -c 0 "$bin" --listen-datagram 127.0.0.1:5400 127.0.0.1:5354 2>"$dir/px1.log" & pids+=($!)
px1=$!
taskset -c 0 "$bin" $opts --listen-datagram 127.0.0.1:5401 127.0.0.1:5354 2>"$dir/px2.log" & pids+=($!)
sleep 1
for i in $(seq 0 99); do echo "q$i.example.test A"; done >"$dir/queries"

# stub N PORT: N queries from a new source port each, 32 at a time (python).
stubload() {
	taskset -c 1 python3 - "$1" "$2" <<'PY'
import socket, struct, sys, time, selectors
n, port = int(sys.argv[1]), int(sys.argv[2])
sel = selectors.DefaultSelector(); sent = ok = 0; t0 = time.time()
def ask():
    global sent
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setblocking(False)
    q = struct.pack(">HHHHHH", sent & 0xffff, 0x0100, 1, 0, 0, 0) + b"\x01q\x07example\x04test\x00" + struct.pack(">HH", 1, 1)
    s.sendto(q, ("127.0.0.1", port)); sel.register(s, selectors.EVENT_READ, time.time() + 2); sent += 1
while sent < min(32, n): ask()
while sel.get_map():
    for key, _ in sel.select(0.2):
        try: key.fileobj.recv(512); ok += 1
        except OSError: pass
        sel.unregister(key.fileobj); key.fileobj.close()
        if sent < n: ask()
    now = time.time()
    for key in list(sel.get_map().values()):
        if key.data < now:
            sel.unregister(key.fileobj); key.fileobj.close()
            if sent < n: ask()
print("%d %d %.0f" % (n, n - ok, ok / (time.time() - t0)))
PY
}

printf '| candidate | round | dnsperf qps | dnsperf lost | stub queries/s | stub lost |\n|---|---|---|---|---|---|\n'
for r in $(seq 1 "$rounds"); do
	for cand in direct:5354 socket-proxyd:5400 socket-proxyd-dns-unit:5401 nginx:5402; do
		name=${cand%:*} port=${cand#*:}
		out=$(taskset -c 1 dnsperf -s 127.0.0.1 -p "$port" -d "$dir/queries" -c 64 -l "$secs" -t 2 2>&1)
		qps=$(sed -n 's/.*Queries per second: *\([0-9.]*\).*/\1/p' <<<"$out")
		lost=$(sed -n 's/.*Queries lost: *\([0-9]*\).*/\1/p' <<<"$out")
		read -r _ slost sqps < <(stubload "$stub" "$port")
		printf '| %s | %d | %.0f | %s | %s | %s |\n' "$name" "$r" "$qps" "$lost" "$sqps" "$slost"
	done
done
for f in px1 px2; do grep -E "WARN|warning" "$dir/$f.log" | head -3 || true; done

# MILLION=1: a million stub queries (a new source port each) through the
# proxy with default options, and what it holds before and after: memory
# and descriptors stay bounded by the flow budget.
if [[ ${MILLION:-} == 1 ]]; then
	held() { echo "RSS $(awk '/VmRSS/{print $2, $3}' /proc/$px1/status), $(ls /proc/$px1/fd | wc -l) descriptors"; }
	echo "before a million stub queries: $(held)"
	read -r n mlost mqps < <(stubload 1000000 5400)
	echo "a million stub queries: $mqps queries/s, $mlost lost; after: $(held)"
fi
