#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# check.sh runs inside the test container (a Debian bookworm booted by
# systemd-nspawn, see run.sh) as spx-check.service. It sets up one scenario
# with the unit files from contrib/systemd, exactly as an administrator would,
# checks it, and writes one line per check to /opt/spx-test/results:
#   PASS <scenario>: <check>
#   FAIL <scenario>: <check>: <what went wrong>
# and a last line DONE. The host (run.sh) reads the file after power-off.
set -uo pipefail

t=/opt/spx-test
contrib=$t/contrib/systemd
results=$t/results
scenario=$(cat "$t/scenario")
: >"$results"

pass() { echo "PASS $scenario: $1" | tee -a "$results"; }
fail() { echo "FAIL $scenario: $1: $2" | tee -a "$results"; }

# check NAME COMMAND...: one check, passed when COMMAND succeeds.
check() {
	local name=$1 out
	shift
	if out=$("$@" 2>&1); then
		pass "$name"
	else
		fail "$name" "$(printf '%s' "$out" | tr '\n' ' ' | tail -c 400)"
	fi
}

# wait_for SECONDS COMMAND...: poll COMMAND every 0.1 s until it succeeds or
# the deadline passes.
wait_for() {
	local tries=$(($1 * 10))
	shift
	while ((tries-- > 0)); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "still false after the deadline: $*"
	return 1
}

state() { systemctl show -P ActiveState "$1"; }
is_state() { [[ $(systemctl show -P ActiveState "$1")/$(systemctl show -P SubState "$1") == "$2" ]] || {
	echo "$1 is $(systemctl show -P ActiveState "$1")/$(systemctl show -P SubState "$1"), want $2"
	return 1
}; }
running() { is_state "$1" active/running; }
inactive() { is_state "$1" inactive/dead; }

# get_page URL: the nginx welcome page through the proxy.
get_page() {
	local page
	page=$(curl -fsS --max-time 10 "$1") || return 1
	grep -q 'Welcome to nginx' <<<"$page" || { echo "unexpected page: $page"; return 1; }
}

# dynamic_user UNIT: the unit's main process runs as a DynamicUser= uid.
dynamic_user() {
	local pid uid
	pid=$(systemctl show -P MainPID "$1")
	[[ $pid != 0 ]] || { echo "$1 has no main process"; return 1; }
	uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
	[[ $(systemctl show -P DynamicUser "$1") == yes ]] || { echo "DynamicUser= is not set"; return 1; }
	((uid >= 61184 && uid <= 65519)) || { echo "uid $uid is not a dynamic user"; return 1; }
}

# hardened UNIT: the hardening settings of the units reached the running unit: its own
# user namespace (PrivateUsers=), MemoryMax=, TasksMax=, IPAddressDeny=. The
# other checks of each scenario show that the proxy still works with them.
hardened() {
	local pid host inside
	pid=$(systemctl show -P MainPID "$1")
	[[ $pid != 0 ]] || { echo "$1 has no main process"; return 1; }
	host=$(readlink /proc/1/ns/user)
	inside=$(readlink "/proc/$pid/ns/user")
	[[ $host != "$inside" ]] || { echo "PrivateUsers=: runs in the host's user namespace $host"; return 1; }
	[[ $(systemctl show -P MemoryMax "$1") == $((256 << 20)) ]] || { echo "MemoryMax=$(systemctl show -P MemoryMax "$1")"; return 1; }
	[[ $(systemctl show -P TasksMax "$1") == 256 ]] || { echo "TasksMax=$(systemctl show -P TasksMax "$1")"; return 1; }
	[[ $(systemctl show -P IPAddressDeny "$1") == *0.0.0.0/0* ]] || { echo "IPAddressDeny=$(systemctl show -P IPAddressDeny "$1")"; return 1; }
}

# nofile_raised UNIT: the soft RLIMIT_NOFILE was raised to the hard limit.
nofile_raised() {
	local pid soft hard
	pid=$(systemctl show -P MainPID "$1")
	read -r soft hard < <(awk '/^Max open files/ {print $4, $5}' "/proc/$pid/limits")
	# Go's runtime sets hard-1 on purpose (see syscall/rlimit.go).
	((soft + 1 >= hard)) || { echo "soft limit $soft, hard limit $hard"; return 1; }
}

# no_errors UNIT: nothing at priority err or worse in the unit's journal.
no_errors() {
	local lines
	lines=$(journalctl -q --no-pager -b -u "$1" -p err -o cat)
	[[ -z $lines ]] || { echo "$lines"; return 1; }
}

# install_nginx_site FILE DROPIN...: nginx's site config and nginx.service
# drop-ins from contrib/systemd/nginx.
install_nginx() {
	local site=$1
	shift
	rm -f /etc/nginx/sites-enabled/default
	cp "$contrib/nginx/$site" /etc/nginx/sites-enabled/default
	mkdir -p /etc/systemd/system/nginx.service.d
	for d in "$@"; do cp "$contrib/nginx/$d" /etc/systemd/system/nginx.service.d/; done
}

install_units() {
	local u
	for u in "$@"; do cp "$contrib/$u" /etc/systemd/system/; done
}

# record_exit UNIT: a test-only drop-in that records how each run of the
# unit's main process ended; "systemctl show" cannot tell once the stopped
# unit has been unloaded. "+" runs it outside the unit's sandbox.
record_exit() {
	mkdir -p "/etc/systemd/system/$1.d"
	printf '%s\n' '[Service]' \
		"ExecStopPost=+/bin/sh -c 'echo \"\$\$SERVICE_RESULT \$\$EXIT_CODE \$\$EXIT_STATUS\" >>/run/spx-exit-%n'" \
		>"/etc/systemd/system/$1.d/spx-record-exit.conf"
}

# exited_cleanly UNIT: its last run ended with exit status 0 (not a signal).
exited_cleanly() {
	local last
	last=$(tail -n 1 "/run/spx-exit-$1" 2>/dev/null)
	[[ $last == "success exited 0" ]] || { echo "last exit of $1: ${last:-none} (want: success exited 0)"; return 1; }
}

scenario_simple() { # Examples 1 to 4
	install_nginx unix-socket.conf runtime-directory.conf
	install_units proxy-to-nginx.socket proxy-to-nginx.service
	record_exit proxy-to-nginx.service
	systemctl daemon-reload
	check "nginx restarts on its unix socket" systemctl restart nginx.service
	check "systemctl enable --now proxy-to-nginx.socket" systemctl enable --now proxy-to-nginx.socket
	check "socket listening, proxy not yet started" eval 'is_state proxy-to-nginx.socket active/listening && inactive proxy-to-nginx.service'
	check "first connection starts the proxy; curl gets nginx's page" get_page http://localhost:80/
	check "proxy-to-nginx.service is active (running)" running proxy-to-nginx.service
	check "proxy runs under DynamicUser=yes" dynamic_user proxy-to-nginx.service
	check "PrivateUsers=, MemoryMax=, TasksMax=, IPAddressDeny= in effect" hardened proxy-to-nginx.service
	check "soft RLIMIT_NOFILE raised to the hard limit" nofile_raised proxy-to-nginx.service
	check "20 more requests through the proxy" eval 'for i in {1..20}; do get_page http://127.0.0.1:80/ || exit 1; done'
	check "systemctl stop proxy-to-nginx.service" systemctl stop proxy-to-nginx.service
	check "SIGTERM: exit status 0" exited_cleanly proxy-to-nginx.service
	check "next connection starts it again" get_page http://localhost:80/
	check "no error lines in its journal" no_errors proxy-to-nginx.service
}

scenario_namespace() { # Examples 5 to 8
	install_nginx port-8080.conf private-namespace.conf
	install_units proxy-to-nginx-ns.socket proxy-to-nginx-ns.service
	systemctl daemon-reload
	check "nginx restarts in its private network namespace" systemctl restart nginx.service
	check "systemctl enable --now proxy-to-nginx-ns.socket" systemctl enable --now proxy-to-nginx-ns.socket
	check "curl gets nginx's page through the proxy" get_page http://localhost:80/
	check "proxy-to-nginx-ns.service is active (running)" running proxy-to-nginx-ns.service
	check "proxy is in nginx's network namespace" eval '
		a=$(readlink /proc/$(systemctl show -P MainPID nginx.service)/ns/net) &&
		b=$(readlink /proc/$(systemctl show -P MainPID proxy-to-nginx-ns.service)/ns/net) &&
		c=$(readlink /proc/self/ns/net) &&
		[[ $a == "$b" && $a != "$c" ]] || { echo "nginx $a, proxy $b, host $c"; exit 1; }'
	check "nginx's port 8080 is not reachable from outside the namespace" eval '! curl -sS --max-time 5 http://127.0.0.1:8080/'
	check "proxy runs under DynamicUser=yes" dynamic_user proxy-to-nginx-ns.service
	check "PrivateUsers=, MemoryMax=, TasksMax=, IPAddressDeny= in effect" hardened proxy-to-nginx-ns.service
	check "no error lines in its journal" no_errors proxy-to-nginx-ns.service
}

scenario_idle() { # --exit-idle-time= with StopWhenUnneeded=
	systemctl disable --now nginx.service
	install_nginx unix-socket.conf runtime-directory.conf stop-when-unneeded.conf
	install_units proxy-to-nginx-idle.socket
	# The shipped unit, with a short idle time so the test does not wait 5 min.
	sed 's/--exit-idle-time=[^ ]*/--exit-idle-time=2s/' "$contrib/proxy-to-nginx-idle.service" \
		>/etc/systemd/system/proxy-to-nginx-idle.service
	record_exit proxy-to-nginx-idle.service
	systemctl daemon-reload
	check "systemctl enable --now proxy-to-nginx-idle.socket" systemctl enable --now proxy-to-nginx-idle.socket
	check "before any connection neither proxy nor nginx runs" eval 'inactive proxy-to-nginx-idle.service && inactive nginx.service'
	check "first connection starts both; curl gets nginx's page" get_page http://localhost:80/
	check "both are active (running)" eval 'running proxy-to-nginx-idle.service && running nginx.service'
	check "proxy runs under DynamicUser=yes" dynamic_user proxy-to-nginx-idle.service
	check "PrivateUsers=, MemoryMax=, TasksMax=, IPAddressDeny= in effect" hardened proxy-to-nginx-idle.service
	check "idle proxy exits" wait_for 30 inactive proxy-to-nginx-idle.service
	check "idle exit: exit status 0" exited_cleanly proxy-to-nginx-idle.service
	check "nginx stops when unneeded" wait_for 30 inactive nginx.service
	check "next connection starts both again" get_page http://localhost:80/
	check "both are active (running) again" eval 'running proxy-to-nginx-idle.service && running nginx.service'
	check "both stop again when idle" eval 'wait_for 30 inactive proxy-to-nginx-idle.service && wait_for 30 inactive nginx.service'
	# A connection that stays open keeps the proxy up past the idle time.
	check "open connection keeps the proxy running past the idle time" eval '
		exec 3<>/dev/tcp/127.0.0.1/80 || exit 1
		wait_for 30 running proxy-to-nginx-idle.service || exit 1
		pid=$(systemctl show -P MainPID proxy-to-nginx-idle.service)
		sleep 4
		running proxy-to-nginx-idle.service || exit 1
		[[ $(systemctl show -P MainPID proxy-to-nginx-idle.service) == "$pid" ]] || { echo "proxy restarted"; exit 1; }
		exec 3>&-'
	check "exits once that connection closes" wait_for 30 inactive proxy-to-nginx-idle.service
	# Started without any connection: the idle time counts from start-up.
	check "started with no connection, it still exits when idle" eval '
		systemctl start proxy-to-nginx-idle.service || exit 1
		wait_for 30 inactive proxy-to-nginx-idle.service'
	check "no error lines in its journal" no_errors proxy-to-nginx-idle.service
}

scenario_notify() { # Type=notify, --listen, watchdog, journal
	install_nginx unix-socket.conf runtime-directory.conf
	# The shipped unit with a short watchdog, so a missing WATCHDOG=1 shows.
	sed 's/^WatchdogSec=.*/WatchdogSec=1s/' "$contrib/proxy-to-nginx-listen.service" \
		>/etc/systemd/system/proxy-to-nginx-listen.service
	record_exit proxy-to-nginx-listen.service
	systemctl daemon-reload
	check "nginx restarts on its unix socket" systemctl restart nginx.service
	check "socket-proxyd --version names version, commit and Go version" eval '
		v=$(/usr/bin/socket-proxyd --version) &&
		[[ $v =~ ^socket-proxyd\ [^\ ]+\ \(commit\ [^\ ,]+,\ go[0-9][^\ ]*\)$ ]] || { echo "got: $v"; exit 1; }'
	check "systemctl start returns once READY=1 is sent" timeout 20 systemctl start proxy-to-nginx-listen.service
	check "status shows active (running)" eval 'systemctl status proxy-to-nginx-listen.service | grep "Active: active (running)"'
	check "curl gets nginx's page through --listen 127.0.0.1:8081" get_page http://127.0.0.1:8081/
	check "proxy runs under DynamicUser=yes" dynamic_user proxy-to-nginx-listen.service
	check "PrivateUsers=, MemoryMax=, TasksMax=, IPAddressDeny= in effect" hardened proxy-to-nginx-listen.service
	check "watchdog pings keep it alive (WatchdogSec=1s, 4 s)" eval '
		pid=$(systemctl show -P MainPID proxy-to-nginx-listen.service)
		sleep 4
		running proxy-to-nginx-listen.service || exit 1
		[[ $(systemctl show -P MainPID proxy-to-nginx-listen.service) == "$pid" && $(systemctl show -P NRestarts proxy-to-nginx-listen.service) == 0 ]] ||
			{ echo "restarted: $(systemctl show -P Result proxy-to-nginx-listen.service)"; exit 1; }'
	check "systemctl stop proxy-to-nginx-listen.service" systemctl stop proxy-to-nginx-listen.service
	check "SIGTERM: exit status 0" exited_cleanly proxy-to-nginx-listen.service
	check "no error lines in its journal" no_errors proxy-to-nginx-listen.service

	# A backend that is not there: one warning line in the journal that names
	# the client and the backend, with the journal's own timestamp only.
	check "transient proxy to a missing backend starts" systemd-run --quiet --unit=spx-journal -p Type=notify -p DynamicUser=yes \
		/usr/bin/socket-proxyd --listen 127.0.0.1:8099 /run/nowhere.sock
	# The client's port is fixed, so the entry can be selected by CLIENT=.
	check "connection to it is closed" eval '! curl -sS --max-time 10 --local-port 41234 http://127.0.0.1:8099/'
	check "a warning at start-up that the backend socket does not exist" eval '
		journalctl -q -b -u spx-journal -p warning..warning -o cat | grep "does not exist yet" | grep -q /run/nowhere.sock'
	check "one warning line naming client and backend" eval '
		wait_for 10 eval "journalctl -q -b -u spx-journal -p warning..warning -o cat | grep -q closing.client.*/run/nowhere.sock" || exit 1
		lines=$(journalctl -q -b -u spx-journal -p warning..warning -o cat | grep /run/nowhere.sock | grep -v "does not exist yet")
		echo "$lines"
		[[ $(wc -l <<<"$lines") == 1 ]] && grep -q 127.0.0.1:41234 <<<"$lines" && ! grep -Eq "^(time=|[0-9]{4}[-/])" <<<"$lines"'
	# stderr is the journal (JOURNAL_STREAM matches), so the proxy logs over
	# the native protocol, with fields.
	check "journalctl -u spx-journal CLIENT=127.0.0.1:41234 selects the warning, with its fields" eval '
		json=$(journalctl -q -b -u spx-journal CLIENT=127.0.0.1:41234 -o json)
		echo "$json"
		[[ $(wc -l <<<"$json") == 1 ]] || exit 1
		for want in "\"CLIENT\":\"127.0.0.1:41234\"" "\"BACKEND\":\"/run/nowhere.sock\"" "\"PRIORITY\":\"4\"" \
			"\"LISTENER\":\"127.0.0.1:8099/tcp\"" \
			"\"SYSLOG_IDENTIFIER\":\"socket-proxyd\"" "\"ERRNO\":\"2\"" "\"_TRANSPORT\":\"journal\"" \
			"\"MESSAGE\":\"cannot connect to backend, closing client client=127.0.0.1:41234 listener=127.0.0.1:8099/tcp backend=/run/nowhere.sock "; do
			grep -qF "$want" <<<"$json" || { echo "missing $want"; exit 1; }
		done'
	systemctl stop spx-journal.service
	# Not by -u: journald may no longer find the unit of a process that
	# exited right after sending.
	check "the info line at stop is an entry too: PRIORITY=6, REASON=" wait_for 10 eval '
		journalctl -q -b SYSLOG_IDENTIFIER=socket-proxyd REASON=terminated -o json |
			grep -F "\"MESSAGE\":\"stopping reason=terminated\"" | grep -qF "\"PRIORITY\":\"6\""'
}

# download_ok FILE SIZE SHA256: a download finished whole.
download_ok() {
	local size sum
	size=$(stat -c %s "$1") || return 1
	sum=$(sha256sum <"$1" | cut -d" " -f1)
	[[ $size == "$2" && $sum == "$3" ]] || { echo "got $size bytes, sha256 $sum; want $2, $3"; return 1; }
}

# big_file MIB: /var/www/html/big.bin, MIB MiB of random bytes, for nginx
# to serve; its size and SHA-256 in $big_size and $big_sum.
big_file() {
	head -c "$1M" /dev/urandom >/var/www/html/big.bin
	big_size=$(stat -c %s /var/www/html/big.bin)
	big_sum=$(sha256sum </var/www/html/big.bin | cut -d" " -f1)
}

# start_download URL RATE: curl fetches URL (big.bin) into /tmp/big.bin at
# RATE bytes a second, in the background: a long-lived connection for a
# hand-over to happen in the middle of. Its PID in $download.
start_download() {
	rm -f /tmp/big.bin
	curl -fsS --limit-rate "$2" -o /tmp/big.bin "$1" &
	download=$!
}

# downloading: the download is still going on (so an event now is in its
# middle).
downloading() { kill -0 "$download" 2>/dev/null || { echo "the download has already ended"; return 1; }; }

# download_whole: two checks once the download ends: curl succeeded, and
# the file is big.bin, every byte.
download_whole() {
	local rc=0
	wait "$download" || rc=$?
	check "the download finished" eval "[[ $rc == 0 ]] || { echo 'curl exited with status $rc'; exit 1; }"
	check "its size and SHA-256 are the file's" download_ok /tmp/big.bin "$big_size" "$big_sum"
}

# journal_count UNIT TEXT: how many lines of the unit's journal hold TEXT.
journal_count() { journalctl -q -b -u "$1" -o cat | grep -cF "$2"; }

# store_holds UNIT N: the unit's fd store holds N descriptors.
store_holds() {
	local n
	n=$(systemctl show -P NFileDescriptorStore "$1")
	[[ $n == "$2" ]] || { echo "the fd store of $1 holds $n descriptors, want $2"; return 1; }
}

scenario_handoff() { # reload in place and restart through the fd store, mid-download, with --listen
	install_nginx unix-socket.conf runtime-directory.conf
	systemctl daemon-reload
	check "nginx restarts on its unix socket" systemctl restart nginx.service
	big_file 300
	# systemd 252: no Type=notify-reload yet, so ExecReload= sends SIGHUP.
	printf '%s\n' '[Service]' 'Type=notify' \
		'ExecStart=/usr/bin/socket-proxyd --fdstore=on-stop --listen 127.0.0.1:8090 /run/nginx/socket' \
		'ExecReload=/bin/sh -c "kill -HUP $MAINPID"' 'FileDescriptorStoreMax=64' \
		>/etc/systemd/system/spx-handoff.service
	systemctl daemon-reload
	check "systemctl start spx-handoff (Type=notify, --fdstore=on-stop)" timeout 20 systemctl start spx-handoff.service
	# A download at 30 MB/s takes 10 s: both hand-overs happen in its middle.
	start_download http://127.0.0.1:8090/big.bin 30M
	local pid
	sleep 2
	pid=$(systemctl show -P MainPID spx-handoff.service)
	check "systemctl reload during the download" timeout 20 systemctl reload spx-handoff.service
	check "reloaded in place: same PID, the connection resumed" wait_for 10 eval '
		[[ $(systemctl show -P MainPID spx-handoff.service) == '"$pid"' ]] &&
		journalctl -q -b -u spx-handoff -o cat | grep -q "resumed connections connections=1 reset=0"'
	check "active (running) after the reload" wait_for 10 running spx-handoff.service
	sleep 2
	check "systemctl restart during the download" timeout 20 systemctl restart spx-handoff.service
	check "restarted: a new PID took the connection from the fd store" wait_for 10 eval '
		[[ $(systemctl show -P MainPID spx-handoff.service) != '"$pid"' ]] &&
		journalctl -q -b -u spx-handoff -o cat | grep -q "connections handed to the fd store connections=1" &&
		[[ $(journal_count spx-handoff "resumed connections connections=1 reset=0") == 2 ]]'
	check "the fd store is empty again" store_holds spx-handoff.service 0
	download_whole
	check "a new connection is served" get_page http://127.0.0.1:8090/
	check "no error lines in its journal" no_errors spx-handoff.service

	# --fdstore=always: kill -9 in the middle of a download, Restart=always.
	printf '%s\n' '[Socket]' 'ListenStream=127.0.0.1:8091' >/etc/systemd/system/spx-crash.socket
	printf '%s\n' '[Service]' 'Type=notify' \
		'ExecStart=/usr/bin/socket-proxyd --fdstore=always /run/nginx/socket' \
		'Restart=always' 'FileDescriptorStoreMax=64' \
		>/etc/systemd/system/spx-crash.service
	systemctl daemon-reload
	check "systemctl start spx-crash.socket (--fdstore=always, Restart=always)" systemctl start spx-crash.socket
	start_download http://127.0.0.1:8091/big.bin 30M
	check "the download's connection is in the fd store (one capsule)" wait_for 10 store_holds spx-crash.service 1
	sleep 2
	pid=$(systemctl show -P MainPID spx-crash.service)
	check "kill -9 the proxy during the download" kill -9 "$pid"
	check "restarted: a new PID recovered the connection from the fd store" wait_for 15 eval '
		p=$(systemctl show -P MainPID spx-crash.service) && [[ $p != 0 && $p != '"$pid"' ]] &&
		journalctl -q -b -u spx-crash -o cat | grep -q "recovered connections after a crash connections=1 reset=0"'
	download_whole
	check "the fd store is empty once it ended" wait_for 10 store_holds spx-crash.service 0
	check "a new connection is served" get_page http://127.0.0.1:8091/
}

# shipped_handoff UNIT: the shipped UNIT.socket and UNIT.service, installed
# as an administrator would, in front of nginx's unix socket; a 24 MiB file
# to download through it at 8 MB/s (3 s: the mode's event comes 1 s in).
# The first connection, the download, starts the proxy.
shipped_handoff() {
	install_nginx unix-socket.conf runtime-directory.conf
	install_units "$1.socket" "$1.service"
	systemctl daemon-reload
	big_file 24
	check "nginx restarts on its unix socket" systemctl restart nginx.service
	check "systemctl enable --now $1.socket" systemctl enable --now "$1.socket"
	start_download http://127.0.0.1:80/big.bin 8M
	check "the download starts $1.service" wait_for 10 running "$1.service"
	check "proxy runs under DynamicUser=yes" dynamic_user "$1.service"
	check "PrivateUsers=, MemoryMax=, TasksMax=, IPAddressDeny= in effect" hardened "$1.service"
	sleep 1
}

scenario_reload() { # contrib/systemd/proxy-to-nginx-reload.*: systemctl reload, twice at once
	local u=proxy-to-nginx-reload pid
	shipped_handoff $u
	pid=$(systemctl show -P MainPID $u.service)
	check "two systemctl reloads in quick succession, mid-download" eval '
		downloading && timeout 20 systemctl reload '$u' && timeout 20 systemctl reload '$u' && downloading'
	check "reloaded in place: same PID, the connection resumed" wait_for 10 eval '
		running '$u'.service && [[ $(systemctl show -P MainPID '$u'.service) == '"$pid"' ]] &&
		(($(journal_count '$u' "resumed connections connections=1 reset=0") >= 1))'
	download_whole
	check "active (running), same PID, after the download" eval '
		running '$u'.service && [[ $(systemctl show -P MainPID '$u'.service) == '"$pid"' ]]'
	check "a new connection is served" get_page http://127.0.0.1:80/
	check "a third reload, with no connection open" timeout 20 systemctl reload $u
	check "reloaded again: resumed with no connection" wait_for 10 eval '
		(($(journal_count '$u' "resumed connections connections=0") >= 1)) && running '$u'.service'
	check "no error lines in its journal" no_errors $u.service
}

scenario_fdstore() { # contrib/systemd/proxy-to-nginx-fdstore.*: systemctl restart
	local u=proxy-to-nginx-fdstore pid n
	shipped_handoff $u
	pid=$(systemctl show -P MainPID $u.service)
	check "systemctl restart, mid-download" eval 'downloading && timeout 20 systemctl restart '$u'.service && downloading'
	check "restarted: a new PID took the connection from the fd store" wait_for 10 eval '
		p=$(systemctl show -P MainPID '$u'.service) && [[ $p != 0 && $p != '"$pid"' ]] &&
		(($(journal_count '$u' "connections handed to the fd store connections=1 ") == 1)) &&
		(($(journal_count '$u' "resumed connections connections=1 reset=0") == 1))'
	# The unit's FileDescriptorStoreMax= allows 6 per connection and one.
	n=$(journalctl -q -b -u $u -o cat | sed -n 's/.*connections handed to the fd store connections=1 descriptors=\([0-9]*\).*/\1/p')
	check "the store took ${n:-?} descriptors for the connection (the unit allows 6, and 1 for the record)" eval '[[ -n "'"$n"'" ]] && (("'"$n"'" <= 6))'
	check "the fd store is empty again" store_holds $u.service 0
	download_whole
	check "a new connection is served" get_page http://127.0.0.1:80/
	check "no error lines in its journal" no_errors $u.service
}

scenario_fdstore_always() { # contrib/systemd/proxy-to-nginx-fdstore-always.*: kill -9
	local u=proxy-to-nginx-fdstore-always pid
	shipped_handoff $u
	check "the download's connection is in the fd store (one capsule)" wait_for 10 store_holds $u.service 1
	pid=$(systemctl show -P MainPID $u.service)
	check "kill -9 the proxy, mid-download" eval 'downloading && kill -9 '"$pid"' && downloading'
	check "Restart=always: a new PID recovered the connection from the fd store" wait_for 15 eval '
		p=$(systemctl show -P MainPID '$u'.service) && [[ $p != 0 && $p != '"$pid"' ]] &&
		journalctl -q -b -u '$u' -o cat | grep -q "recovered connections after a crash connections=1 reset=0"'
	check "restarted once" eval '[[ $(systemctl show -P NRestarts '$u'.service) == 1 ]]'
	download_whole
	check "the fd store is empty once it ended" wait_for 10 store_holds $u.service 0
	check "a new connection is served" get_page http://127.0.0.1:80/
}

scenario_deb() { # the Debian package: install, use, remove
	local files
	check "dpkg -i socket-proxyd.deb" dpkg -i "$t/socket-proxyd.deb"
	check "socket-proxyd --version runs" /usr/bin/socket-proxyd --version
	check "man page installed" test -f /usr/share/man/man8/socket-proxyd.8.gz
	check "units installed and known to systemd" eval 'systemctl cat proxy-to-nginx.socket proxy-to-nginx.service >/dev/null'
	check "nothing enabled or started by the install" eval '
		for u in $(cd "$contrib" && ls -- *.socket *.service); do
			[[ $(systemctl is-enabled "$u") == @(disabled|static) ]] || { echo "$u is $(systemctl is-enabled "$u")"; exit 1; }
			[[ $(state "$u") == inactive ]] || { echo "$u is $(state "$u")"; exit 1; }
		done'
	check "systemctl preset keeps every unit disabled (90-socket-proxyd.preset)" eval '
		units=$(cd "$contrib" && ls -- *.socket *.service) &&
		systemctl preset $units || exit 1
		for u in $units; do
			[[ $(systemctl is-enabled "$u") == @(disabled|static) ]] || { echo "$u is $(systemctl is-enabled "$u")"; exit 1; }
		done'
	check "copyright file and completions installed" test -f /usr/share/doc/socket-proxyd/copyright \
		-a -f /usr/share/bash-completion/completions/socket-proxyd \
		-a -f /usr/share/zsh/vendor-completions/_socket-proxyd \
		-a -f /usr/share/fish/vendor_completions.d/socket-proxyd.fish
	install_nginx unix-socket.conf runtime-directory.conf
	systemctl daemon-reload
	check "nginx restarts on its unix socket" systemctl restart nginx.service
	check "Example 4 with the packaged units: systemctl enable --now proxy-to-nginx.socket" systemctl enable --now proxy-to-nginx.socket
	check "curl gets nginx's page" get_page http://localhost:80/
	files=$(dpkg -L socket-proxyd | while read -r f; do [[ -d $f ]] || echo "$f"; done)
	check "package lists its files" test -n "$files"
	check "dpkg -r socket-proxyd, without a warning" eval 'out=$(dpkg -r socket-proxyd 2>&1) || exit 1; echo "$out"; ! grep -i warning <<<"$out"'
	check "removal stopped the proxy and its socket" eval 'inactive proxy-to-nginx.service && ! systemctl is-active -q proxy-to-nginx.socket'
	check "removal disabled it: no link left in /etc/systemd/system" eval '
		links=$(find /etc/systemd/system -name "proxy-to-nginx*" -type l); [[ -z $links ]] || { echo "left: $links"; exit 1; }'
	check "every file of the package is gone" eval 'left=0; while read -r f; do [[ -e $f ]] && { echo "left: $f"; left=1; }; done <<<"$files"; exit $left'
	check "dpkg -P socket-proxyd, without a warning" eval 'out=$(dpkg -P socket-proxyd 2>&1) || exit 1; echo "$out"; ! grep -i warning <<<"$out"'
	check "package no longer known to dpkg" eval '! dpkg -s socket-proxyd'
}

# rate PORT N: N sequential HTTP/1.0 requests through 127.0.0.1:PORT,
# printed as requests per second.
rate() {
	local t0 t1
	t0=$(date +%s%N)
	perl -MIO::Socket::INET -e '
		for (1 .. $ARGV[1]) {
			my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$ARGV[0]") or die "connect: $!";
			$s->syswrite("GET / HTTP/1.0\r\n\r\n"); my $b; 1 while $s->sysread($b, 65536); close $s;
		}' "$1" "$2" || return 1
	t1=$(date +%s%N)
	echo $(($2 * 1000000000 / (t1 - t0)))
}

# hold PORT N: N connections through 127.0.0.1:PORT that stay open (and
# silent) until the process is killed.
hold() {
	perl -MIO::Socket::INET -e '
		my @s; for (1 .. $ARGV[1]) { push @s, IO::Socket::INET->new(PeerAddr => "127.0.0.1:$ARGV[0]") or die "connect: $!"; }
		sleep 600;' "$1" "$2" &
}

scenario_fdstore_cost() { # what --fdstore=always costs under systemd 252 (not in the default run)
	install_nginx unix-socket.conf runtime-directory.conf
	systemctl daemon-reload
	check "nginx restarts on its unix socket" systemctl restart nginx.service
	local mode port
	for mode in no always; do
		port=$((8100 + ${#mode}))
		printf '%s\n' '[Service]' 'Type=notify' \
			"ExecStart=/usr/bin/socket-proxyd --fdstore=$mode -c 2000 --listen 127.0.0.1:$port /run/nginx/socket" \
			'FileDescriptorStoreMax=16384' 'LimitNOFILE=20000' >"/etc/systemd/system/spx-cost-$mode.service"
	done
	systemctl daemon-reload
	check "both proxies start" systemctl start spx-cost-no.service spx-cost-always.service
	local round held r pid
	for held in 0 1000; do
		local holders=()
		if ((held > 0)); then
			for mode in no always; do
				hold $((8100 + ${#mode})) "$held"
				holders+=($!)
			done
			check "$held connections held open each" wait_for 20 eval '
				[[ $(systemctl show -P NFileDescriptorStore spx-cost-always.service) == '$held' ]]'
		fi
		for round in 1 2 3; do
			for mode in no always; do
				r=$(rate $((8100 + ${#mode})) 2000)
				pid=$(systemctl show -P MainPID "spx-cost-$mode.service")
				pass "measure: round $round, $held held, --fdstore=$mode: $r connections/s; the proxy has $(ls /proc/"$pid"/fd | wc -l) descriptors open, the store $(systemctl show -P NFileDescriptorStore "spx-cost-$mode.service")"
			done
		done
		if ((${#holders[@]} > 0)); then kill "${holders[@]}"; wait "${holders[@]}" 2>/dev/null; fi
	done
}

# dns_backend: a stand-in for a DNS server on 127.0.0.1:5353, UDP and TCP,
# that answers each message with "re:" and the message (perl-base is in the
# minimal root; dnsmasq and dig are not, and the proxy is what is tested).
dns_backend() {
	cat >"$t/dns-backend.pl" <<'PERL'
use IO::Socket::INET;
my $u = IO::Socket::INET->new(LocalAddr => "127.0.0.1:5353", Proto => "udp") or die "udp: $!";
my $t = IO::Socket::INET->new(LocalAddr => "127.0.0.1:5353", Listen => 16, ReuseAddr => 1) or die "tcp: $!";
if (fork) { my $m; while (1) { $u->recv($m, 65535); $u->send("re:$m"); } }
while (my $c = $t->accept) { my $m; $c->sysread($m, 65535); $c->syswrite("re:$m"); close $c; }
PERL
	printf '%s\n' '[Service]' "ExecStart=/usr/bin/perl $t/dns-backend.pl" >/etc/systemd/system/spx-dns-backend.service
}

# ask_udp FROM_ADDR TO_ADDR [WAIT]: a datagram to port 53 from a socket
# bound to FROM_ADDR gets "re:" and itself back, from the address it was
# sent to, within WAIT seconds (2; the first query, which starts the
# service, may take longer on a loaded machine).
ask_udp() {
	perl -MIO::Socket::INET -e '
		$s = IO::Socket::INET->new(LocalAddr => "$ARGV[0]:0", PeerAddr => "$ARGV[1]:53", Proto => "udp") or die "socket: $!";
		$s->send("q") or die "send: $!";
		$r = ""; eval { local $SIG{ALRM} = sub { die "no reply in $ARGV[2]s\n" }; alarm $ARGV[2]; $s->recv($r, 100); alarm 0; };
		die $@ if $@; $r eq "re:q" or die "reply \"$r\"\n";' "$1" "$2" "${3:-2}"
}

ask_tcp() {
	perl -MIO::Socket::INET -e '
		$s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:53", Timeout => 5) or die "connect: $!";
		$s->syswrite("q"); $s->sysread($r, 100); $r eq "re:q" or die "reply \"$r\"\n";'
}

status_has() { systemctl show -P StatusText "$1" | grep -qF "$2"; }

scenario_dns() { # Examples 12 and 13: ListenStream=53 and ListenDatagram=53
	dns_backend
	install_units dns-proxy.socket dns-proxy.service
	systemctl daemon-reload
	check "a stand-in DNS server on 127.0.0.1:5353" systemctl start spx-dns-backend.service
	check "it answers on TCP" wait_for 5 eval 'exec 3<>/dev/tcp/127.0.0.1/5353' 
	check "systemctl enable --now dns-proxy.socket" systemctl enable --now dns-proxy.socket
	check "systemd listens on TCP and UDP port 53" eval 'systemctl show -P Listen dns-proxy.socket | grep -q "53 (Stream)" && systemctl show -P Listen dns-proxy.socket | grep -q "53 (Datagram)"'
	check "a UDP query starts the proxy and gets its answer" ask_udp 127.0.0.1 127.0.0.1 20
	check "dns-proxy.service is running" running dns-proxy.service
	check "a TCP query is answered by the same proxy" ask_tcp
	check "a client of 127.0.0.2 gets its answer from 127.0.0.2" ask_udp 127.0.0.1 127.0.0.2
	check "STATUS= counts the flows" wait_for 5 status_has dns-proxy.service " flows, "
	# A real DNS server in the stand-in's place, and real clients at full
	# rate, with the shipped units as they are.
	systemctl stop spx-dns-backend.service
	check "dnsmasq on 127.0.0.1:5353" systemd-run --unit=spx-dnsmasq /usr/sbin/dnsmasq --keep-in-foreground --conf-file=/dev/null \
		--no-resolv --no-hosts --listen-address=127.0.0.1 --bind-interfaces --port=5353 --user=root --address=/example.test/192.0.2.1
	check "dnsmasq answers" wait_for 5 eval 'exec 3<>/dev/tcp/127.0.0.1/5353'
	check "3000 queries, each from a new port as a stub resolver asks, 32 at a time: all answered" stub_queries 3000 32
	check "dnsperf over UDP, 100 queries in flight: none lost" dnsperf_lost_none udp
	check "dnsperf over UDP with two systemctl reload during it: none lost, the same PID" dnsperf_reloads_lose_none
	check "no errors in the journal" no_errors dns-proxy.service
}

# seqpacket_backend: a sequential-packet echo service at
# /run/seqpacket-app/app.sock, each message back as one, up to 16 MiB.
seqpacket_backend() {
	mkdir -p /run/seqpacket-app
	# In a file: systemd-run cannot pass a program of several lines.
	cat >/run/seqpacket-app/echo.pl <<'PERL'
use Socket;
socket(my $s, PF_UNIX, SOCK_SEQPACKET, 0) or die "socket: $!";
unlink $ARGV[0]; bind($s, pack_sockaddr_un($ARGV[0])) or die "bind: $!";
chmod 0666, $ARGV[0]; listen($s, 16) or die "listen: $!"; $SIG{CHLD} = "IGNORE";
while (accept(my $c, $s)) {
	next if fork;
	setsockopt($c, SOL_SOCKET, SO_SNDBUF, 1 << 30);
	while (1) { my $m; defined(recv($c, $m, 16 << 20, 0)) && length $m or exit; send($c, $m, 0) or exit; }
}
PERL
	systemd-run --unit=spx-seq-backend perl /run/seqpacket-app/echo.pl /run/seqpacket-app/app.sock
}

# seqpacket_echo SIZE [RELOAD]: one connection to the proxy sends a
# message of SIZE bytes and reads its echo, whole; with RELOAD, systemctl
# reload runs between two such messages on the same connection.
seqpacket_echo() {
	perl -MSocket -e '
		my ($size, $reload) = @ARGV;
		socket(my $c, PF_UNIX, SOCK_SEQPACKET, 0) or die "socket: $!";
		setsockopt($c, SOL_SOCKET, SO_SNDBUF, 1 << 30);
		connect($c, pack_sockaddr_un("/run/seqpacket-proxy.sock")) or die "connect: $!";
		for my $round (1 .. ($reload ? 2 : 1)) {
			my $m = join "", map { chr(($_ * 7 + $round) & 255) } 1 .. 256;
			$m = substr($m x ($size / 256 + 1), 0, $size);
			send($c, $m, 0) or die "send: $!";
			defined(recv($c, my $r, 16 << 20, 0)) or die "recv: $!";
			$r eq $m or die sprintf("round %d: an echo of %d bytes, want %d", $round, length $r, $size);
			next unless $reload && $round == 1;
			# ExecReload=kill -HUP returns before the reload is done:
			# the journal says when the next image resumed.
			my $resumed = sub { scalar(() = `journalctl -q -b -u seqpacket-proxy -o cat` =~ /resumed connections/g) };
			my $before = $resumed->();
			system("systemctl reload seqpacket-proxy.service") == 0 or die "reload";
			for (1 .. 100) { last if $resumed->() > $before; select(undef, undef, undef, 0.1); }
			$resumed->() > $before or die "the reload did not resume";
		}' "$@"
}

scenario_seqpacket() { # Examples 18 and 19: ListenSequentialPacket=, under the shipped hardening
	local pid
	seqpacket_backend
	install_units seqpacket-proxy.socket seqpacket-proxy.service
	systemctl daemon-reload
	check "a sequential-packet echo service" wait_for 5 test -S /run/seqpacket-app/app.sock
	check "systemctl enable --now seqpacket-proxy.socket" systemctl enable --now seqpacket-proxy.socket
	check "a message of 1 MiB goes whole, though ProcSubset=pid hides net.core.wmem_max" seqpacket_echo 1048576
	check "seqpacket-proxy.service is running, hardened" eval 'running seqpacket-proxy.service && hardened seqpacket-proxy.service'
	pid=$(systemctl show -P MainPID seqpacket-proxy.service)
	check "a systemctl reload between two messages of one connection: both echoed" seqpacket_echo 300000 reload
	check "reloaded in place: same PID, the connection resumed" eval '
		running seqpacket-proxy.service && [[ $(systemctl show -P MainPID seqpacket-proxy.service) == '"$pid"' ]] &&
		(($(journal_count seqpacket-proxy "resumed connections connections=1") >= 1))'
	check "no errors in the journal" no_errors seqpacket-proxy.service
}

# stub_queries N P: N queries for *.example.test to 127.0.0.1:53, P at a
# time, each from a socket of its own (a new source port), asked once with
# a 2 s wait: every one must be answered.
stub_queries() {
	perl -MIO::Socket::INET -MIO::Select -e '
		my ($n, $p) = @ARGV; my ($sent, $ok) = (0, 0); my %q;
		my $sel = IO::Select->new;
		my $ask = sub { my $id = $sent++ & 0xffff;
			my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:53", Proto => "udp") or die "socket: $!";
			my $name = join "", map { chr(length $_) . $_ } ("q$sent", "example", "test");
			$s->send(pack("n n n n n n", $id, 0x0100, 1, 0, 0, 0) . $name . "\0" . pack("n n", 1, 1));
			$q{$s} = [$s, time + 2]; $sel->add($s); };
		$ask->() while $sent < $p && $sent < $n;
		while ($sel->count) {
			for my $s ($sel->can_read(0.2)) { my $r; $s->recv($r, 512); $ok++ if length $r >= 12;
				$sel->remove($s); delete $q{$s}; close $s; $ask->() if $sent < $n; }
			for my $e (values %q) { next if $e->[1] > time; $sel->remove($e->[0]); delete $q{$e->[0]}; close $e->[0]; $ask->() if $sent < $n; }
		}
		print "$ok of $n answered\n"; exit($ok == $n ? 0 : 1);' "$1" "$2"
}

# dnsperf_reloads_lose_none: dnsperf for 3 s over UDP while the service is
# reloaded twice, 1 s apart (the binary re-executed, flows carried): no
# query lost, and the PID is the same.
dnsperf_reloads_lose_none() {
	local pid out
	pid=$(systemctl show -P MainPID dns-proxy.service)
	dnsperf -s 127.0.0.1 -p 53 -m udp -d "$t/queries" -c 64 -l 3 -t 5 >"$t/dnsperf-reload" 2>&1 &
	local perf=$!
	sleep 1
	systemctl reload dns-proxy.service || { kill $perf; wait $perf; return 1; }
	sleep 1
	systemctl reload dns-proxy.service || { kill $perf; wait $perf; return 1; }
	wait $perf || { cat "$t/dnsperf-reload"; return 1; }
	out=$(<"$t/dnsperf-reload")
	grep -E "Queries (sent|lost)" <<<"$out"
	[[ $(systemctl show -P MainPID dns-proxy.service) == "$pid" ]] || { echo "the PID changed"; return 1; }
	journalctl -q --no-pager -b -u dns-proxy.service -o cat | grep -c "resumed connections" | grep -qx 2 || { echo "not two resumes"; return 1; }
	grep -qE "Queries lost:[[:space:]]+0 " <<<"$out"
}

# dnsperf_lost_none MODE: dnsperf for 3 s over MODE through port 53 loses
# no query.
dnsperf_lost_none() {
	local out
	for i in $(seq 0 99); do echo "q$i.example.test A"; done >"$t/queries"
	out=$(dnsperf -s 127.0.0.1 -p 53 -m "$1" -d "$t/queries" -c 64 -l 3 -t 5 2>&1) || { echo "$out"; return 1; }
	grep -E "Queries (sent|lost)|per second" <<<"$out"
	systemctl show -P StatusText dns-proxy.service
	grep -qE "Queries lost:[[:space:]]+0 " <<<"$out"
}

# app_units: a template app@.service, each instance a stand-in for one
# instance of a service on its own unix socket /run/app/%i/sock (greets
# each client with its instance name, then echoes), and one socket-activated
# proxy in front of the four on 127.0.0.1:8080 (the man page's Example 17).
# Test-only units, written here: the shipped ones are about nginx.
app_units() {
	cat >"$t/app.pl" <<'PERL'
use IO::Socket::UNIX;
my ($path, $name) = @ARGV;
unlink $path;
my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Local => $path, Listen => 128) or die "listen: $!";
$SIG{CHLD} = 'IGNORE';
while (1) {
	my $c = $s->accept or next;
	if (!fork) { syswrite($c, "$name\n"); my $b; while (sysread($c, $b, 4096)) { syswrite($c, $b); } exit 0; }
	close $c;
}
PERL
	printf '%s\n' '[Service]' 'RuntimeDirectory=app/%i' "ExecStart=/usr/bin/perl $t/app.pl /run/app/%i/sock app@%i" \
		'KillMode=control-group' >/etc/systemd/system/app@.service
	printf '%s\n' '[Socket]' 'ListenStream=127.0.0.1:8080' >/etc/systemd/system/app-proxy.socket
	printf '%s\n' '[Unit]' 'After=app@1.service app@2.service app@3.service app@4.service' '[Service]' 'Type=notify' \
		'ExecStart=/usr/bin/socket-proxyd --balance=round-robin /run/app/1/sock /run/app/2/sock /run/app/3/sock /run/app/4/sock' \
		>/etc/systemd/system/app-proxy.service
}

# app_clients SECONDS OUT: clients one after another for SECONDS, each
# greeted and echoed; OUT gets "served N failed M" and the instances seen.
app_clients() {
	perl -MIO::Socket::INET -e '
		my ($secs, $out) = @ARGV; my ($ok, $bad, $cut, %seen) = (0, 0, 0);
		my $end = time + $secs;
		while (time < $end) {
			my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:8080", Timeout => 5);
			my $name = $s ? <$s> : undef;
			my $r = "";
			if (defined $name) { syswrite($s, "ping"); sysread($s, $r, 4); }
			chomp $name if defined $name;
			if (defined $name && $r eq "ping") { $seen{$name}++; $ok++; }
			elsif (defined $name && $name ne "app\@2") { $bad++; }  # cut on a live instance
			else { $cut++; }  # no greeting, or cut on app@2: open on it as it stopped
		}
		open my $f, ">", $out or die; print $f "served $ok failed $bad cut $cut " . join(" ", sort keys %seen) . "\n";' "$1" "$2"
}

served_by() { # served_by FILE INSTANCES...: the clients in FILE saw exactly these instances, and none failed
	local line
	line=$(cat "$1")
	[[ $line == *" failed 0 cut 0 "* ]] || { echo "$line"; return 1; }
	[[ ${line#* cut 0 } == "${*:2}" ]] || { echo "$line; want instances ${*:2}"; return 1; }
}

scenario_backends() { # Example 17: four app@ instances behind one socket-activated proxy
	app_units
	systemctl daemon-reload
	check "four app@ instances start" systemctl start app@1 app@2 app@3 app@4
	check "each listens on its own socket" wait_for 5 eval '[[ -S /run/app/1/sock && -S /run/app/2/sock && -S /run/app/3/sock && -S /run/app/4/sock ]]'
	check "systemctl start app-proxy.socket" systemctl start app-proxy.socket
	check "clients are shared among the four" eval 'app_clients 1 /run/spx-clients && served_by /run/spx-clients app@1 app@2 app@3 app@4'
	app_clients 3 /run/spx-during & 
	local load=$!
	sleep 1
	check "systemctl stop app@2 under load" systemctl stop app@2
	wait "$load"
	# At most the one client that was on app@2 as it stopped ends with it.
	check "no client failed while app@2 stopped" eval 'grep -Eq " failed 0 cut [01] " /run/spx-during || { cat /run/spx-during; false; }'
	check "new clients go to the other three" eval 'app_clients 1 /run/spx-after && served_by /run/spx-after app@1 app@3 app@4'
	check "one journal line says app@2 went down" eval '[[ $(journal_count app-proxy.service "backend down") == 1 ]] && journalctl -q -b -u app-proxy.service -o cat | grep "backend down" | grep -qF /run/app/2/sock'
	check "STATUS= says 3 of 4 backends up" wait_for 5 status_has app-proxy.service "3 of 4 backends up"
	check "systemctl start app@2" systemctl start app@2
	check "app@2 takes clients again after its backoff" wait_for 10 eval 'app_clients 1 /run/spx-back && grep -q "app@2" /run/spx-back'
	check "no errors in the journal" no_errors app-proxy.service
}

case $scenario in
simple | namespace | idle | notify | handoff | reload | fdstore | deb | dns | backends | seqpacket) "scenario_$scenario" ;;
fdstore-always) scenario_fdstore_always ;;
fdstore-cost) scenario_fdstore_cost ;;
*) fail setup "unknown scenario $scenario" ;;
esac
journalctl -b --no-pager -o short-monotonic >"$t/journal.txt" 2>&1
echo DONE >>"$results"
