#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# run.sh: socket-proxyd under a real systemd. For each scenario it boots a
# Debian bookworm container (systemd-nspawn) with our binary, the unit files
# from contrib/systemd and check.sh inside; check.sh sets the scenario up as an
# administrator would, checks it, writes its results and powers off. This
# script prints the results and fails if any check failed.
#
# Usage: test/systemd/run.sh [SCENARIO...]
#   scenarios: simple namespace idle notify handoff reload fdstore fdstore-always dns backends seqpacket deb
#   (default: all; deb only when SOCKET_PROXYD_DEB is set); fdstore-cost (measures
#   --fdstore=always, only when named). reload, fdstore and fdstore-always run the
#   shipped proxy-to-nginx-SCENARIO units.
# Environment:
#   SOCKET_PROXYD_BIN   the binary to test (default ./socket-proxyd)
#   SOCKET_PROXYD_DEB   the .deb for the deb scenario (make deb)
#   SOCKET_PROXYD_TEST_CACHE  where the bookworm root is cached
#                       (default ${XDG_CACHE_HOME:-/var/cache}/socket-proxyd-systemd-test)
#   DEBIAN_MIRROR       default http://deb.debian.org/debian
#   KEEP=1              keep each scenario's container tree (it is kept anyway on failure)
# Needs root, debootstrap and systemd-container (systemd-nspawn). The first run
# builds the root with debootstrap (under a minute or two, from Debian's
# mirror); later runs copy the cached root, so each scenario starts clean.
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
here=$top/test/systemd
bin=${SOCKET_PROXYD_BIN:-$top/socket-proxyd}
deb=${SOCKET_PROXYD_DEB:-}
suite=bookworm
# procps: /bin/kill, which the shipped units' ExecReload= runs, as on any
# Debian installed with its default ("important") packages; minbase has none.
include=systemd,systemd-sysv,dbus,curl,nginx-light,procps,dnsmasq-base,dnsperf
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=${SOCKET_PROXYD_TEST_CACHE:-${XDG_CACHE_HOME:-/var/cache}/socket-proxyd-systemd-test}

die() { echo "systemd-test: $*" >&2; exit 1; }

[[ $EUID == 0 ]] || die "must run as root (debootstrap and systemd-nspawn need it)"
for c in debootstrap systemd-nspawn flock; do
	command -v "$c" >/dev/null || die "$c not found: apt-get install debootstrap systemd-container"
done
[[ -x $bin ]] || die "$bin: no socket-proxyd binary (run make build, or set SOCKET_PROXYD_BIN)"

if (($# == 0)); then
	set -- simple namespace idle notify handoff reload fdstore fdstore-always dns backends seqpacket
	if [[ -n $deb ]]; then set -- "$@" deb; else echo "systemd-test: SKIP deb (SOCKET_PROXYD_DEB not set)"; fi
fi
for s in "$@"; do
	case $s in
	simple | namespace | idle | notify | handoff | reload | fdstore | fdstore-always | dns | backends | seqpacket | fdstore-cost) ;;
	deb) [[ -f $deb ]] || die "deb scenario: SOCKET_PROXYD_DEB=$deb is not a file (run make deb)" ;;
	*) die "unknown scenario $s" ;;
	esac
done

# The cached root, named after what it holds so a change of the package list
# builds a new one. Built under a lock, in a temporary directory that is
# renamed only once debootstrap has succeeded.
mkdir -p "$cache"
root=$cache/$suite-$(printf '%s %s' "$suite" "$include" | sha256sum | cut -c1-12)
exec 9>"$cache/lock"
flock 9
if [[ ! -d $root ]]; then
	echo "systemd-test: building $root with debootstrap (once)"
	rm -rf "$root.tmp"
	if ! debootstrap --variant=minbase --include="$include" "$suite" "$root.tmp" "$mirror" >"$cache/debootstrap.log" 2>&1; then
		tail -n 20 "$cache/debootstrap.log" >&2
		die "debootstrap failed: see $cache/debootstrap.log"
	fi
	mv "$root.tmp" "$root"
fi
flock -u 9

failed=0
for s in "$@"; do
	work=$(mktemp -d "$cache/run-$s.XXXXXX")
	r=$work/root
	cp -a "$root" "$r"

	# The payload: check.sh and its unit, the units under test, the binary
	# where the units expect it (the deb scenario installs it from the .deb).
	mkdir -p "$r/opt/spx-test/contrib"
	cp -r "$top/contrib/systemd" "$r/opt/spx-test/contrib/"
	cp "$here/check.sh" "$r/opt/spx-test/"
	echo "$s" >"$r/opt/spx-test/scenario"
	if [[ $s == deb ]]; then
		cp "$deb" "$r/opt/spx-test/socket-proxyd.deb"
	else
		install -m 0755 "$bin" "$r/usr/bin/socket-proxyd"
	fi
	cp "$here/spx-check.service" "$r/etc/systemd/system/"
	ln -s ../spx-check.service "$r/etc/systemd/system/multi-user.target.wants/spx-check.service"

	echo "systemd-test: $s: booting $r"
	rc=0
	# --foreground: timeout stays in our process group, so whoever stops
	# this script stops the container too.
	timeout --foreground -k 10 300 systemd-nspawn --quiet --keep-unit --register=no --private-network \
		--machine="spx-$s-$$" -D "$r" -b --console=pipe >"$work/console.log" 2>&1 || rc=$?

	res=$r/opt/spx-test/results
	if [[ -f $res ]]; then grep -v '^DONE$' "$res" || true; fi
	ok=1
	if ((rc != 0)); then echo "FAIL $s: container exited with status $rc (124: timed out)"; ok=0; fi
	if [[ ! -f $res ]] || ! grep -qx DONE "$res"; then echo "FAIL $s: checks did not finish"; ok=0; fi
	if [[ -f $res ]] && grep -q '^FAIL' "$res"; then ok=0; fi
	if ((ok)); then
		[[ ${KEEP:-} == 1 ]] && echo "systemd-test: $s: kept $work" || rm -rf "$work"
	else
		failed=1
		echo "systemd-test: $s: failed; container tree kept in $work"
		echo "--- console (last 20 lines)"
		tail -n 20 "$work/console.log" || true
		if [[ -f $r/opt/spx-test/journal.txt ]]; then
			echo "--- journal of socket-proxyd units (last 60 lines; all: $r/opt/spx-test/journal.txt)"
			grep -E 'proxy|nginx|spx|socket-proxyd' "$r/opt/spx-test/journal.txt" | tail -n 60 || true
		fi
	fi
done
if ((failed)); then
	echo "systemd-test: FAILED"
	exit 1
fi
echo "systemd-test: all checks passed"
