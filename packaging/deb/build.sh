#!/bin/bash
# build.sh VERSION OUTDIR: build OUTDIR/socket-proxyd_VERSION_ARCH.deb from
# ./socket-proxyd (make build) with "make install PREFIX=/usr" into a staging
# tree and dpkg-deb. Writes the .deb's path to OUTDIR/deb-path. Run it through
# "make deb". The maintainer scripts only reload systemd and stop our units on
# removal: the units are installed disabled, as after "make install".
set -euo pipefail

version=${1:?usage: build.sh VERSION OUTDIR}
out=${2:?usage: build.sh VERSION OUTDIR}
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"

# Debian versions must start with a digit; "-" would start a Debian revision.
debversion=${version//-/+}
[[ $debversion =~ ^[0-9][A-Za-z0-9.+~]*$ ]] || { echo "deb: unusable version \"$version\"" >&2; exit 1; }
case $(go env GOARCH) in
amd64 | arm64 | riscv64 | s390x) arch=$(go env GOARCH) ;;
386) arch=i386 ;;
arm) arch=armhf ;;
ppc64le) arch=ppc64el ;;
*) echo "deb: no Debian architecture for GOARCH $(go env GOARCH)" >&2; exit 1 ;;
esac
maintainer=${DEB_MAINTAINER:-"socket-proxyd developers <socket-proxyd@users.noreply.github.com>"}

stage=$out/deb-root
rm -rf "$stage"
mkdir -p "$stage/DEBIAN"
make --no-print-directory install DESTDIR="$stage" PREFIX=/usr >/dev/null
gzip -9n "$stage/usr/share/man/man8/socket-proxyd.8"

units=$(cd contrib/systemd && ls -- *.socket *.service | tr '\n' ' ')
sockets=$(cd contrib/systemd && ls -- *.socket | tr '\n' ' ')

cat >"$stage/DEBIAN/control" <<EOF
Package: socket-proxyd
Version: $debversion
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)
Section: net
Priority: optional
Homepage: https://github.com/socket-proxyd/socket-proxyd
Description: proxy local sockets to another socket, with systemd socket activation
 socket-proxyd accepts connections on sockets passed in by systemd (a .socket
 unit with Accept=no) or bound with --listen, and forwards each one to a
 backend: HOST:PORT, [IPv6]:PORT or a unix socket. It is a drop-in
 replacement for systemd-socket-proxyd that also sends READY=1, enforces
 its connection limit exactly, keeps half-closed connections open and
 tries every address of a backend host name.
 .
 Example units (proxy-to-nginx*.socket, .service) are installed disabled;
 see socket-proxyd(8).
EOF

cat >"$stage/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null || true
fi
EOF

# The binary goes away with the package: stop whatever of ours runs, sockets
# first so nothing starts the services again. Enablement links an
# administrator made in /etc are left alone, as for any unit file in /etc.
cat >"$stage/DEBIAN/prerm" <<EOF
#!/bin/sh
set -e
if [ "\$1" = remove ] && [ -d /run/systemd/system ]; then
	systemctl stop $sockets >/dev/null 2>&1 || true
	systemctl stop $units >/dev/null 2>&1 || true
fi
EOF

cat >"$stage/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if { [ "$1" = remove ] || [ "$1" = purge ]; } && [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null || true
fi
EOF
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"

(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) >"$stage/DEBIAN/md5sums"

deb=$out/socket-proxyd_${debversion}_$arch.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
rm -rf "$stage"
echo "$deb" >"$out/deb-path"
echo "deb: $deb"
dpkg-deb --contents "$deb" | awk '{print "  " $6}'
