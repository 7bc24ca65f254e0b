#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# After install or upgrade (dpkg: configure; rpm: 1 or 2): systemd learns of
# the new unit files. Nothing is enabled or started: see the preset file.
set -e
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
