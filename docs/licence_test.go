// SPDX-License-Identifier: Apache-2.0

package docs_test

import (
	"bufio"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const spdx = "SPDX-License-Identifier: Apache-2.0"

// sourceKind says how a file of the repository carries its SPDX line: "go"
// and "make" on the first line, "shell" on the first line or the one after
// "#!" or zsh's "#compdef" (which must stay first); "" for other files.
func sourceKind(path, first string) string {
	name := filepath.Base(path)
	switch {
	case strings.HasSuffix(name, ".go"):
		return "go"
	case name == "Makefile" || strings.HasSuffix(name, ".mk"):
		return "make"
	case strings.HasPrefix(first, "#!") && strings.Contains(first, "sh"),
		strings.HasPrefix(first, "#compdef"),
		strings.HasSuffix(name, ".sh"), strings.HasSuffix(name, ".bash"),
		strings.HasSuffix(name, ".zsh"), strings.HasSuffix(name, ".fish"):
		return "shell"
	}
	return ""
}

// firstLines reads up to two lines of a file.
func firstLines(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	s := bufio.NewScanner(f)
	for len(lines) < 2 && s.Scan() {
		lines = append(lines, s.Text())
	}
	return lines
}

// TestSPDXLines: every Go file, shell script and Makefile of the repository
// names its licence in an SPDX line at the top, so a new file
// without one fails here.
func TestSPDXLines(t *testing.T) {
	counts := map[string]int{}
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case ".git", "build", "testdata":
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		lines := firstLines(t, path)
		if len(lines) == 0 {
			return nil
		}
		kind := sourceKind(path, lines[0])
		if kind == "" {
			return nil
		}
		counts[kind]++
		want := "# " + spdx
		if kind == "go" {
			want = "// " + spdx
		}
		ok := lines[0] == want
		if kind == "shell" && !ok && len(lines) == 2 {
			ok = (strings.HasPrefix(lines[0], "#!") || strings.HasPrefix(lines[0], "#compdef")) && lines[1] == want
		}
		if !ok {
			where := "as its first line"
			if kind == "shell" {
				where = "as its first line, or its second after #! or #compdef"
			}
			t.Errorf("%s: no %q %s", path, want, where)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The walk must have found the tree, or the test would pass on nothing.
	if counts["go"] < 20 || counts["shell"] < 5 || counts["make"] < 1 {
		t.Fatalf("found too few sources to check (%v): is the test run from docs/?", counts)
	}
}

// TestLicence: LICENSE is the Apache License 2.0 that the SPDX lines,
// the .deb's copyright file and the rpm's License: tag name.
func TestLicence(t *testing.T) {
	b, err := os.ReadFile("../LICENSE")
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Join(strings.Fields(string(b)), " ")
	for _, want := range []string{
		"Apache License Version 2.0, January 2004 http://www.apache.org/licenses/",
		"TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
		"END OF TERMS AND CONDITIONS",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("LICENSE lacks %q: is it the Apache License 2.0 text?", want)
		}
	}
}
