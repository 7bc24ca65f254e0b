#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# After removal (dpkg: remove or purge; rpm: 0): systemd forgets the unit
# files that went.
set -e
case "$1" in
remove | purge | 0) ;;
*) exit 0 ;;
esac
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
