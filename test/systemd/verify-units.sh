#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# verify-units.sh: run "systemd-analyze verify" on every unit file and nginx
# drop-in in contrib/systemd, the way "make install" installs them: ExecStart=
# rewritten to a real socket-proxyd binary, and man:socket-proxyd(8) found in
# our docs/. Any message from systemd-analyze counts as a failure, since it
# reports unknown keys and bad values only as warnings. Then
# "systemd-analyze security --offline=true" on every service: an overall
# exposure above 1.0 fails (contrib/systemd/README.md says why each
# remaining point stays). Last, "systemctl preset-all" on a scratch root that
# holds the units and 90-socket-proxyd.preset: it must enable none of them, so
# a unit added to contrib/systemd without a line in the preset file fails.
#
# Usage: test/systemd/verify-units.sh [SOCKET_PROXYD_BINARY]   (default ./socket-proxyd)
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:-${SOCKET_PROXYD_BIN:-$top/socket-proxyd}}
[[ -x $bin ]] || { echo "verify-units: $bin: no executable socket-proxyd (run make build)" >&2; exit 1; }
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")

tmp=$(mktemp -d "${TMPDIR:-/tmp}/spx-verify.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/units/nginx.service.d" "$tmp/man/man8"
cp "$top/docs/socket-proxyd.8" "$tmp/man/man8/"

units=()
for f in "$top"/contrib/systemd/*.socket "$top"/contrib/systemd/*.service; do
	sed "s|/usr/bin/socket-proxyd|$bin|g" "$f" >"$tmp/units/${f##*/}"
	units+=("$tmp/units/${f##*/}")
done
# nginx.service may not exist on this machine: a stand-in carries the drop-ins
# the examples ask for, so they are checked as well.
printf '[Unit]\nDescription=stand-in for nginx\n[Service]\nExecStart=/bin/true\n' >"$tmp/units/nginx.service"
cp "$top"/contrib/systemd/nginx/*.conf "$tmp/units/nginx.service.d/"
rm "$tmp/units/nginx.service.d/"{unix-socket,port-8080}.conf # nginx's own config, not drop-ins
units+=("$tmp/units/nginx.service")

out=$(cd "$tmp/units" && SYSTEMD_UNIT_PATH="$tmp/units:" MANPATH="$tmp/man" \
	systemd-analyze verify "${units[@]}" 2>&1) || { echo "$out" >&2; echo "verify-units: systemd-analyze verify failed" >&2; exit 1; }
if [[ -n $out ]]; then
	echo "$out" >&2
	echo "verify-units: systemd-analyze verify printed warnings" >&2
	exit 1
fi
echo "verify-units: ok: ${units[*]##*/}"

# --threshold is on systemd's internal scale, ten times the printed one:
# 10 is an exposure of 1.0.
bad=0
for u in "$tmp"/units/*.service; do
	[[ $u == */nginx.service ]] && continue # nginx's own unit, not ours
	out=$(cd "$tmp/units" && SYSTEMD_UNIT_PATH="$tmp/units:" \
		systemd-analyze security --offline=true --threshold=10 --no-pager "$u" 2>&1) || bad=1
	grep -E '^→ Overall exposure' <<<"$out" || { echo "$out" >&2; bad=1; }
done
((bad == 0)) || { echo "verify-units: a unit's exposure is above 1.0 (systemd-analyze security)" >&2; exit 1; }
echo "verify-units: security: every service at exposure 1.0 or below"

# The preset file: systemd enables a unit that no preset line names, so
# preset-all on a root with nothing but our units and our preset file shows
# any unit it does not cover. systemctl --root needs no running systemd.
preset=$tmp/preset-root
mkdir -p "$preset/usr/lib/systemd/system" "$preset/usr/lib/systemd/system-preset" "$preset/etc/systemd/system"
cp "$top"/contrib/systemd/*.socket "$top"/contrib/systemd/*.service "$preset/usr/lib/systemd/system/"
cp "$top/contrib/systemd/90-socket-proxyd.preset" "$preset/usr/lib/systemd/system-preset/"
out=$(systemctl --root="$preset" preset-all 2>&1) || { echo "$out" >&2; echo "verify-units: systemctl preset-all failed" >&2; exit 1; }
if grep -q "Couldn't parse" <<<"$out"; then
	echo "$out" >&2
	echo "verify-units: systemctl cannot parse a line of contrib/systemd/90-socket-proxyd.preset" >&2
	exit 1
fi
enabled=$(cd "$preset/etc/systemd/system" && find . -type l | sed 's|^\./||')
if [[ -n $enabled ]]; then
	echo "$enabled" >&2
	echo "verify-units: systemctl preset-all enabled the units above: add them to contrib/systemd/90-socket-proxyd.preset" >&2
	exit 1
fi
echo "verify-units: preset: systemctl preset-all enables none of the units"
