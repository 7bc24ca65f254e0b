#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# run.sh: the .deb and the .rpm (make deb, make rpm), checked
# without booting anything (the .deb under a real systemd: make deb-test):
#   - two builds of each are byte-identical (SOURCE_DATE_EPOCH);
#   - each holds exactly what "make install PREFIX=/usr" installs, with the
#     man page compressed, zsh's file where that distribution's zsh looks,
#     and the licence: Debian's copyright file, the rpm's %license and tag;
#   - neither package's scripts enable or start anything, and "systemctl
#     preset-all" on a scratch root with either package's files enables none
#     of the units (the preset file); removal stops and disables every one;
#   - both packages recommend bash-completion (the bash completion needs it);
#   - the maintainer scripts do what they should for each argument dpkg and
#     rpm pass (a stub systemctl records it);
#   - the rpm installs into a scratch root with "rpm --root", its binary runs
#     there, and "rpm -e" removes every file again.
# Prints PASS/FAIL lines, then "N passed, N failed"; exits 1 on any failure.
# Needs dpkg-deb, rpm (Debian's rpm package), systemctl and unshare; root. Usage: test/packaging/run.sh   (from make package-test)
set -uo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
for c in dpkg-deb rpm systemctl unshare; do
	command -v "$c" >/dev/null || { echo "package-test: $c not found: apt-get install dpkg rpm systemd" >&2; exit 1; }
done
tmp=$(mktemp -d "${TMPDIR:-/tmp}/spx-pkg.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

passed=0 failed=0
pass() { echo "PASS $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1: $2"; failed=$((failed + 1)); }
check() { # NAME COMMAND...
	local name=$1 out
	shift
	if out=$("$@" 2>&1); then pass "$name"; else fail "$name" "$out"; fi
}
# same WANT GOT: the two files hold the same lines, or a diff.
same() { diff -u "$1" "$2"; }

build() { # N: build both into build/, copy them to $tmp/N
	make --no-print-directory deb rpm >"$tmp/make-$1.log" 2>&1 || { cat "$tmp/make-$1.log"; return 1; }
	mkdir -p "$tmp/$1"
	cp "$(cat build/deb-path)" "$(cat build/rpm-path)" "$tmp/$1/"
}
build 1 || { echo "package-test: make deb rpm failed"; exit 1; }
# The second build must not depend on the first one's file times: make
# install copies everything into a new stage with new times anyway, and the
# sources get new ones here.
touch contrib/systemd/* contrib/completion/* docs/socket-proxyd.8
build 2 || { echo "package-test: make deb rpm failed"; exit 1; }
deb=$(cat build/deb-path) rpm=$(cat build/rpm-path)
for p in "$deb" "$rpm"; do
	check "two builds of ${p##*/} are byte-identical" cmp "$tmp/1/${p##*/}" "$tmp/2/${p##*/}"
done

# What make install installs, as the packages name it: the man page gzipped.
make --no-print-directory install DESTDIR="$tmp/inst" PREFIX=/usr >/dev/null
(cd "$tmp/inst" && find . ! -type d | sed 's|^\.||; s|\.8$|.8.gz|' | sort) >"$tmp/install.list"

rpm -qlp "$rpm" 2>/dev/null | sort >"$tmp/rpm.list"
grep -vx /usr/share/licenses/socket-proxyd/LICENSE "$tmp/rpm.list" >"$tmp/rpm-files.list"
check "rpm -qlp lists what make install installs (and the licence)" same "$tmp/install.list" "$tmp/rpm-files.list"
check "rpm: the licence is %license" eval '[[ $(rpm -qLp "$rpm" 2>/dev/null) == /usr/share/licenses/socket-proxyd/LICENSE ]]'
check "rpm: License: Apache-2.0" eval 'l=$(rpm -qp --qf "%{LICENSE}" "$rpm" 2>/dev/null); [[ $l == Apache-2.0 ]] || { echo "got $l"; exit 1; }'

dpkg-deb --fsys-tarfile "$deb" | tar -t | grep -v '/$' | sed 's|^\.||' |
	grep -vx /usr/share/doc/socket-proxyd/copyright |
	sed 's|/usr/share/zsh/vendor-completions/|/usr/share/zsh/site-functions/|; s|^/lib/systemd/system-preset/|/usr/lib/systemd/system-preset/|' |
	sort >"$tmp/deb-files.list"
check "the .deb holds what make install installs (zsh's file in vendor-completions, the preset where Debian 12's systemd has its directory)" same "$tmp/install.list" "$tmp/deb-files.list"
check "deb: a machine-readable copyright file naming Apache-2.0" eval '
	dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/share/doc/socket-proxyd/copyright >"$tmp/copyright" &&
	head -n 1 "$tmp/copyright" | grep -qx "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/" &&
	grep -qx "License: Apache-2.0" "$tmp/copyright"'

# Nothing enabled or started on install, by either package.
mkdir -p "$tmp/deb-control"
dpkg-deb -e "$deb" "$tmp/deb-control"
rpm -qp --scripts "$rpm" >"$tmp/rpm-scripts" 2>/dev/null
for s in "$tmp"/deb-control/{postinst,prerm,postrm} "$tmp/rpm-scripts"; do
	check "${s#"$tmp"/}: no systemctl enable, start or preset" \
		eval '! grep -E "systemctl +(--[a-z-]+ +)*(enable|reenable|start|restart|try-restart|preset|preset-all)" "$s"'
done

# The scripts with the arguments each package manager passes, under a
# systemd that a stub systemctl stands for (it logs its arguments): dpkg
# says configure/remove/purge/upgrade, rpm 1 (install), 2 (upgrade), 0
# (erase). Run in a mount namespace with /run/systemd/system made up.
mkdir -p "$tmp/stub"
# The unit names of each call sorted, so that the test does not depend on
# the order the script lists them in.
cat >"$tmp/stub/systemctl" <<'STUB'
#!/bin/sh
head= units=
for a; do
	case $a in
	*.socket | *.service) units="$units $a" ;;
	*) head="$head $a" ;;
	esac
done
# shellcheck disable=SC2086
[ -z "$units" ] || units=$(printf ' %s\n' $units | LC_ALL=C sort | tr -d '\n')
echo "systemctl$head$units" >>"$SPX_LOG"
STUB
chmod 0755 "$tmp/stub/systemctl"
rpm -qp --qf '%{POSTIN}' "$rpm" >"$tmp/rpm-postinst" 2>/dev/null
rpm -qp --qf '%{PREUN}' "$rpm" >"$tmp/rpm-prerm" 2>/dev/null
rpm -qp --qf '%{POSTUN}' "$rpm" >"$tmp/rpm-postrm" 2>/dev/null
calls() { # SCRIPT ARG: what the script asked systemctl to do, on one line
	: >"$tmp/calls"
	SPX_LOG=$tmp/calls PATH=$tmp/stub:$PATH unshare -m sh -c \
		'mount -t tmpfs spx /run && mkdir -p /run/systemd/system && sh "$0" "$1"' "$1" "$2" || echo "exit $?"
	paste -sd';' "$tmp/calls"
}
# Removal stops every unit the package ships, sockets first, and disables
# them all: the list in the script must name every unit in contrib/systemd.
sockets=$(cd contrib/systemd && printf ' %s\n' *.socket | LC_ALL=C sort | tr -d '\n')
services=$(cd contrib/systemd && printf ' %s\n' *.service | LC_ALL=C sort | tr -d '\n')
all=$(cd contrib/systemd && printf ' %s\n' *.socket *.service | LC_ALL=C sort | tr -d '\n')
stop="systemctl stop$sockets;systemctl stop$services;systemctl --no-reload disable$all"
while read -r script arg want; do
	[[ $want == - ]] && want=
	label=${want:-systemctl not called}
	[[ $want == stop ]] && want=$stop label="stops every unit, sockets first, and disables them all"
	check "$script $arg: $label" eval '
		got=$(calls "$tmp/$script" "$arg"); [[ $got == "$want" ]] || { echo "got:  $got"; echo "want: $want"; exit 1; }'
done <<SCRIPTS
deb-control/postinst configure systemctl daemon-reload
deb-control/prerm remove stop
deb-control/prerm upgrade -
deb-control/postrm remove systemctl daemon-reload
deb-control/postrm purge systemctl daemon-reload
deb-control/postrm upgrade -
rpm-postinst 1 systemctl daemon-reload
rpm-postinst 2 systemctl daemon-reload
rpm-prerm 0 stop
rpm-prerm 1 -
rpm-postrm 0 systemctl daemon-reload
rpm-postrm 1 -
SCRIPTS

# preset_enables_nothing ROOT: ROOT holds every unit of contrib/systemd
# and "systemctl --root=ROOT preset-all" (no running systemd needed) enables
# none of them. systemd enables a unit that no preset line names, so this
# fails for a unit the preset file does not cover.
preset_enables_nothing() {
	local u links
	for u in contrib/systemd/*.socket contrib/systemd/*.service; do
		[[ -f $1/usr/lib/systemd/system/${u##*/} ]] || { echo "not installed: ${u##*/}"; return 1; }
	done
	mkdir -p "$1/etc/systemd/system"
	systemctl --root="$1" preset-all || return 1
	links=$(find "$1/etc/systemd" ! -type d)
	[[ -z $links ]] || { echo "enabled: $links"; return 1; }
}

# The .deb's files in a scratch root (dpkg-deb -x: no dpkg database
# needed for what systemctl reads).
check "deb: systemctl preset-all enables none of the units" eval '
	dpkg-deb -x "$deb" "$tmp/deb-root" && preset_enables_nothing "$tmp/deb-root"'
check "deb: Recommends: bash-completion (the bash completion needs it)" eval '
	s=$(dpkg-deb -f "$deb" Recommends); [[ $s == *bash-completion* ]] || { echo "Recommends: $s"; exit 1; }'
check "rpm: Recommends: bash-completion" eval '
	s=$(rpm -qp --recommends "$rpm" 2>/dev/null); [[ $s == *bash-completion* ]] || { echo "Recommends: $s"; exit 1; }'

# The rpm into a scratch root. Its scriptlets need /bin/sh and systemd
# inside the root, which a scratch root has not: --noscripts (they are the
# .deb's, run under real systemd by make deb-test).
root=$tmp/root
mkdir -p "$root"
check "rpm --root: initdb" rpm --root "$root" --initdb
check "rpm --root -i" rpm --root "$root" -i --noscripts --nodeps "$rpm"
check "rpm --root -q: installed" rpm --root "$root" -q socket-proxyd
check "every file of the rpm is in the root" eval 'while read -r f; do [[ -e $root$f ]] || { echo "missing: $f"; exit 1; }; done <"$tmp/rpm.list"'
check "the installed binary runs" "$root/usr/bin/socket-proxyd" --version
check "rpm: systemctl preset-all enables none of the units" preset_enables_nothing "$root"
check "rpm --root -e" rpm --root "$root" -e --noscripts socket-proxyd
check "every file of the rpm is gone" eval 'while read -r f; do [[ ! -e $root$f ]] || { echo "left: $f"; exit 1; }; done <"$tmp/rpm.list"'

echo "package-test: $passed passed, $failed failed"
((failed == 0))
