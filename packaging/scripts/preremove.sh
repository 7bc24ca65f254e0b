#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Before removal (dpkg: remove; rpm: 0, not 1 on upgrade): the binary goes
# away with the package, so stop whatever of ours runs, sockets first so
# nothing starts the services again. Enablement links an administrator made in
# /etc are left alone, as for any unit file in /etc.
set -e
case "$1" in
remove | 0) ;;
*) exit 0 ;;
esac
if [ -d /run/systemd/system ]; then
	# A pattern matches the loaded units, which are the ones that can run.
	systemctl stop 'proxy-to-nginx*.socket' >/dev/null 2>&1 || true
	systemctl stop 'proxy-to-nginx*.service' >/dev/null 2>&1 || true
fi
