// Package testutil holds the one rule every test that needs something from
// the machine follows: without it the test skips on a developer's machine
// and fails under CI (CI set), so a CI run that passes has run every test.
package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// InCI reports whether the tests run under CI: CI set to anything but ""
// "0" or "false" (.ci/run sets CI=1, CI services CI=true).
func InCI() bool {
	switch os.Getenv("CI") {
	case "", "0", "false":
		return false
	}
	return true
}

// Unavailable ends t for want of something the machine lacks (a tool, a
// privilege, a kernel feature): a skip locally, a failure under CI, where
// .ci/run installs and grants all of it.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf("CI=1: "+format+" (CI must provide it: see .ci/run)", args...)
	}
	t.Skipf(format+" (run under CI=1 to make this a failure)", args...)
}

// RequireTool returns the path of program name, looked up in PATH and in
// the sbin directories a non-root PATH lacks; when it is missing, the test
// is Unavailable, naming the Debian package that has it.
func RequireTool(t testing.TB, name, debianPackage string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/lib/systemd"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	Unavailable(t, "%s is not installed (apt-get install %s)", name, debianPackage)
	return ""
}

// RequireRoot makes the test Unavailable unless it runs as root.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root: %s", why)
	}
}
