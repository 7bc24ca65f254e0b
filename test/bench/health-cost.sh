#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# health-cost.sh: what active health checks cost the proxy. One listener
# with BACKENDS TCP backends on loopback (a Python accept-and-close server
# on CPU 1), socket-proxyd on CPU 0 with --health-interval=INTERVAL and no
# client at all; the proxy's CPU time over SECONDS, against the same with
# probes off, and the probes the backends saw per second.
#
# A listener takes at most 64 backends (a connection keeps its backend's
# index in a byte), so 1000 backends probed every second is measured as
# the same probe rate: 64 backends every 64ms (about 1000 probes a second).
#
# Usage: test/bench/health-cost.sh   (needs python3 and taskset; BACKENDS=64 INTERVAL=64ms SECONDS_EACH=20 BIN=./socket-proxyd)
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
bin=${BIN:-$top/socket-proxyd}
n=${BACKENDS:-64}
interval=${INTERVAL:-64ms}
secs=${SECONDS_EACH:-20}
dir=$(mktemp -d /tmp/spx-healthcost.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$dir"
}
trap cleanup EXIT
for c in python3 taskset; do command -v $c >/dev/null || { echo "health-cost.sh: $c not found" >&2; exit 1; }; done
[[ -x $bin ]] || { echo "health-cost.sh: no $bin (make build)" >&2; exit 1; }

# The backends: n listening ports, each connection accepted and closed,
# counted; the ports go to ports.txt, the count to count.txt on SIGUSR1.
cat >"$dir/backends.py" <<'PY'
import selectors, signal, socket, sys
n, out = int(sys.argv[1]), sys.argv[2]
sel, ports, count = selectors.DefaultSelector(), [], 0
for _ in range(n):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(512); s.setblocking(False)
    sel.register(s, selectors.EVENT_READ); ports.append(s.getsockname()[1])
open(out + "/ports.txt", "w").write(" ".join(map(str, ports)) + "\n")
def report(*_):
    open(out + "/count.txt", "w").write(f"{count}\n")
signal.signal(signal.SIGUSR1, report)
while True:
    for key, _ in sel.select():
        try:
            c, _ = key.fileobj.accept(); c.close(); count += 1
        except BlockingIOError:
            pass
PY
taskset -c 1 python3 "$dir/backends.py" "$n" "$dir" &
pids+=($!)
for _ in $(seq 100); do [[ -s $dir/ports.txt ]] && break; sleep 0.1; done
[[ -s $dir/ports.txt ]] || { echo "health-cost.sh: the backends did not start" >&2; exit 1; }
backends=()
for p in $(cat "$dir/ports.txt"); do backends+=("127.0.0.1:$p"); done

# cputime PID: its user+system CPU in clock ticks.
cputime() { awk '{print $14 + $15}' "/proc/$1/stat"; }
probes() {
	local pid=${pids[0]}
	rm -f "$dir/count.txt"
	kill -USR1 "$pid"
	for _ in $(seq 50); do [[ -s $dir/count.txt ]] && break; sleep 0.1; done
	cat "$dir/count.txt"
}

hz=$(getconf CLK_TCK)
printf '| %s | %s | %s | %s |\n' "health interval" "backends" "proxy CPU %" "probes per second"
printf '|---|---|---|---|\n'
port=$((20000 + RANDOM % 20000))
for iv in 0 "$interval"; do
	# --listen: systemd-socket-activate would start the proxy only at
	# the first client, and here there is none.
	taskset -c 0 "$bin" --listen "127.0.0.1:$port" --health-interval="$iv" "${backends[@]}" 2>"$dir/proxy.log" &
	p=$!
	sleep 3 # past start-up and the first round of probes
	c0=$(cputime $p) n0=$(probes)
	sleep "$secs"
	c1=$(cputime $p) n1=$(probes)
	kill $p
	wait $p || true
	awk -v c=$((c1 - c0)) -v hz="$hz" -v s="$secs" -v n=$((n1 - n0)) -v iv="$iv" -v b="$n" \
		'BEGIN { printf "| %s | %d | %.2f | %.0f |\n", iv, b, 100 * c / hz / s, n / s }'
	port=$((port + 1))
done
