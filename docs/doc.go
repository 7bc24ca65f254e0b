// SPDX-License-Identifier: Apache-2.0

// Package docs holds the socket-proxyd(8) manual page, socket-proxyd.8,
// written in roff by hand. Its tests keep the page in step with the program's
// --help and with the unit files in contrib/systemd, the shell completions in
// contrib/completion with --help, and every source file's SPDX line with
// LICENSE.
package docs
