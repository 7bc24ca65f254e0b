#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# demo.sh: socket-proxyd on a real example, needing nothing but Go and bash.
# A small HTTP backend listens on a unix socket only; socket-proxyd listens on
# 127.0.0.1:$PORT (default 8080) with --listen and forwards to it; one request
# goes through the proxy. Everything it starts is stopped and removed on exit.
#
# Usage: contrib/demo.sh            (from the repository; PORT=8081 to change the port)
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
port=${PORT:-8080}
dir=$(mktemp -d /tmp/spx-demo.XXXXXX)
pids=()
cleanup() {
	((${#pids[@]})) && kill "${pids[@]}" 2>/dev/null
	wait
	rm -rf "$dir"
}
trap cleanup EXIT

cd "$top"
echo "+ go build -o $dir/socket-proxyd ./cmd/socket-proxyd"
go build -o "$dir/socket-proxyd" ./cmd/socket-proxyd
go build -o "$dir/backend" ./contrib/demo/backend

"$dir/backend" "$dir/backend.sock" &
pids+=($!)
# The backend's socket first (at most 5 s): started before it, the proxy
# would warn that it does not exist yet.
for _ in {1..50}; do
	[[ -S $dir/backend.sock ]] && break
	sleep 0.1
done
echo "+ socket-proxyd --listen 127.0.0.1:$port $dir/backend.sock"
"$dir/socket-proxyd" --listen "127.0.0.1:$port" "$dir/backend.sock" &
proxy=$!
pids+=($proxy)

# Wait (at most 5 s) for both to listen.
for _ in {1..50}; do
	kill -0 "$proxy" 2>/dev/null || { echo "demo: socket-proxyd exited (port $port taken? try PORT=8081 $0)" >&2; exit 1; }
	[[ -S $dir/backend.sock ]] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
	sleep 0.1
done

if command -v curl >/dev/null; then
	echo "+ curl http://127.0.0.1:$port/demo"
	curl -sS "http://127.0.0.1:$port/demo"
else
	echo "+ GET http://127.0.0.1:$port/demo (bash /dev/tcp; no curl here)"
	exec 3<>"/dev/tcp/127.0.0.1/$port"
	printf 'GET /demo HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
	sed -n '$p' <&3
	exec 3<&-
fi
