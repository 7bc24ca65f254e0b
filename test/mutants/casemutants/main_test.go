// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A package of one switch, whose test pins one boundary and not the other.
const (
	fixture = `package sign

func Sign(n int) int {
	switch {
	case n < 0:
		return -1
	case n > 100:
		return 2
	}
	if n == 0 {
		return 0
	}
	return 1
}
`
	fixtureTest = `package sign

import "testing"

func TestSign(t *testing.T) {
	if Sign(-1) != -1 || Sign(0) != 0 || Sign(1) != 1 {
		t.Fatal("wrong sign")
	}
}
`
)

// TestListAndTry: the case expressions' operators are listed (not the if's),
// each mutant tried gets its verdict, and the file is back as it was.
func TestListAndTry(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, text := range map[string]string{"go.mod": "module sign\n\ngo 1.26\n", "sign.go": fixture, "sign_test.go": fixtureTest} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ms, err := list(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range ms {
		got = append(got, m.String())
	}
	wantList := "sign.go:5:9 CONDITIONALS_BOUNDARY < -> <=|sign.go:5:9 CONDITIONALS_NEGATION < -> >=|sign.go:7:9 CONDITIONALS_BOUNDARY > -> >=|sign.go:7:9 CONDITIONALS_NEGATION > -> <="
	if strings.Join(got, "|") != wantList {
		t.Fatalf("listed\n%s\nwant\n%s", strings.Join(got, "\n"), strings.ReplaceAll(wantList, "|", "\n"))
	}
	t.Chdir(dir)
	verdicts := map[string]string{}
	for _, m := range ms {
		v, err := try(context.Background(), m, ".", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		verdicts[m.kind+" "+m.from+m.to] = v
		if b, _ := os.ReadFile(m.file); string(b) != fixture {
			t.Fatalf("after %s the file is not restored:\n%s", m, b)
		}
	}
	// n < 0 → n <= 0 makes Sign(0) -1: killed; n >= 0 too. Nothing tests
	// above 100: both of those live.
	for k, want := range map[string]string{
		"CONDITIONALS_BOUNDARY <<=": "KILLED", "CONDITIONALS_NEGATION <>=": "KILLED",
		"CONDITIONALS_BOUNDARY >>=": "LIVED", "CONDITIONALS_NEGATION ><=": "KILLED",
	} {
		if verdicts[k] != want {
			t.Errorf("%s: %s, want %s (all: %v)", k, verdicts[k], want, verdicts)
		}
	}
}
