#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Before removal (dpkg: remove; rpm: 0, not 1 on upgrade): the binary goes
# away with the package, so stop every unit of ours, sockets first so nothing
# starts the services again, and disable them, so that no link in /etc names
# a unit file that is gone. The list is every unit the package ships
# (contrib/systemd): make package-test fails when one is missing here.
set -e
case "$1" in
remove | 0) ;;
*) exit 0 ;;
esac
sockets="proxy-to-nginx.socket proxy-to-nginx-idle.socket proxy-to-nginx-ns.socket
	proxy-to-nginx-reload.socket proxy-to-nginx-fdstore.socket proxy-to-nginx-fdstore-always.socket
	dns-proxy.socket seqpacket-proxy.socket"
services="proxy-to-nginx.service proxy-to-nginx-idle.service proxy-to-nginx-ns.service
	proxy-to-nginx-listen.service proxy-to-nginx-reload.service proxy-to-nginx-fdstore.service
	proxy-to-nginx-fdstore-always.service dns-proxy.service seqpacket-proxy.service"
if [ -d /run/systemd/system ]; then
	# shellcheck disable=SC2086 # one word per unit
	systemctl stop $sockets >/dev/null 2>&1 || true
	# shellcheck disable=SC2086
	systemctl stop $services >/dev/null 2>&1 || true
fi
# Also without a running systemd (a chroot, an image build): disable only
# removes links.
# shellcheck disable=SC2086
systemctl --no-reload disable $sockets $services >/dev/null 2>&1 || true
