#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# build.sh deb|rpm VERSION OUTDIR: build OUTDIR/socket-proxyd_VERSION_ARCH.deb
# or OUTDIR/socket-proxyd-VERSION-1.ARCH.rpm from ./socket-proxyd (make build)
# with nfpm and the one description packaging/nfpm.yaml. Stages "make install
# PREFIX=/usr" first, so a package holds what make install installs. Writes
# the package's path to OUTDIR/deb-path or OUTDIR/rpm-path. Run it through
# "make deb" and "make rpm".
#
# Reproducible: every time in the package is SOURCE_DATE_EPOCH, the commit's
# time unless set (make sets it), so two builds of one commit are identical.
set -euo pipefail

usage="usage: build.sh deb|rpm VERSION OUTDIR"
packager=${1:?$usage}
version=${2:?$usage}
out=${3:?$usage}
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

# nfpm is a tool of the build, pinned here and not in go.mod.
nfpm=${NFPM:-"go run github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2"}

case $packager in
deb | rpm) ;;
*) echo "build.sh: unknown package kind \"$packager\": give deb or rpm" >&2; exit 1 ;;
esac
# Both formats: a digit first; "-" would start a Debian revision or an rpm
# release, so a git describe suffix ("1.2.3-4-gHASH") gets "+" instead.
pkgversion=${version//-/+}
[[ $pkgversion =~ ^[0-9][A-Za-z0-9.+~]*$ ]] || { echo "build.sh: unusable version \"$version\"" >&2; exit 1; }

export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
export VERSION=$pkgversion
export GOARCH=${GOARCH:-$(go env GOARCH)}
export MAINTAINER=${DEB_MAINTAINER:-"socket-proxyd developers <socket-proxyd@users.noreply.github.com>"}
mkdir -p "$out"
export STAGE
STAGE=$(cd "$out" && pwd)/stage-$packager
rm -rf "$STAGE"
make --no-print-directory install DESTDIR="$STAGE" PREFIX=/usr >/dev/null
gzip -9n "$STAGE/usr/share/man/man8/socket-proxyd.8"

rm -f "$out"/socket-proxyd*."$packager"
$nfpm package --config packaging/nfpm.yaml --packager "$packager" --target "$out/" >"$out/nfpm-$packager.log"
rm -rf "$STAGE"
pkg=$(ls "$out"/socket-proxyd*."$packager")
echo "$pkg" >"$out/$packager-path"
echo "$packager: $pkg"
