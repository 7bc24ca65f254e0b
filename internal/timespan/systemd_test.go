// SPDX-License-Identifier: Apache-2.0

package timespan

import (
	"bytes"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestMatchesSystemdAnalyze checks every table input against the real thing,
// systemd-analyze timespan, where it is installed: same acceptance, same
// microseconds, same printed form. The one intended difference: spans longer
// than a time.Duration holds, which systemd accepts up to 2^64-1 µs.
func TestMatchesSystemdAnalyze(t *testing.T) {
	if testing.Short() {
		t.Skip("starts systemd-analyze once per input")
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	var inputs []string
	for _, tt := range manPageTests {
		inputs = append(inputs, tt.in)
	}
	for _, tt := range parseTests {
		inputs = append(inputs, tt.in)
	}
	for _, tt := range errorTests {
		inputs = append(inputs, tt.in)
	}
	for _, tt := range formatTests {
		if tt.in >= 0 {
			inputs = append(inputs, Format(tt.in))
		}
	}
	tooLarge := make(map[string]bool)
	for _, tt := range tooLargeTests {
		tooLarge[tt.in] = true
		inputs = append(inputs, tt.in)
	}

	for _, in := range inputs {
		t.Run(strconv.Quote(in), func(t *testing.T) {
			cmd := exec.Command(analyze, "timespan", "--", in)
			cmd.Env = []string{"LC_ALL=C", "SYSTEMD_LOG_LEVEL=err", "SYSTEMD_COLORS=0", "SYSTEMD_PAGER=cat"}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, runErr := cmd.Output() // waits for the child
			got, err := Parse(in)
			if runErr != nil {
				if err == nil {
					t.Errorf("Parse(%q) = %v, but systemd-analyze refuses it: %v: %s", in, got, runErr, stderr.Bytes())
				}
				return
			}
			usec, human := analyzeOutput(t, out)
			if tooLarge[in] {
				if err == nil {
					t.Errorf("Parse(%q) = %v, want too large", in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v; systemd-analyze says %s µs", in, err, usec)
			}
			if got == Infinity {
				if usec != strconv.FormatUint(1<<64-1, 10) {
					t.Errorf("Parse(%q) = infinity, systemd-analyze says %s µs", in, usec)
				}
			} else if strconv.FormatInt(int64(got/time.Microsecond), 10) != usec {
				t.Errorf("Parse(%q) = %d µs, systemd-analyze says %s µs", in, got/time.Microsecond, usec)
			}
			if f := Format(got); f != human {
				t.Errorf("Format(Parse(%q)) = %q, systemd-analyze says %q", in, f, human)
			}
		})
	}
}

// analyzeOutput picks the microseconds and the human form out of
//
//	Original: 2.5s
//	      μs: 2500000
//	   Human: 2.500000s
func analyzeOutput(t *testing.T, out []byte) (usec, human string) {
	t.Helper()
	for line := range strings.Lines(string(out)) {
		key, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		switch strings.TrimSpace(key) {
		case "μs", "µs", "us":
			usec = value
		case "Human":
			human = value
		}
	}
	if usec == "" || human == "" {
		t.Fatalf("cannot read systemd-analyze output %q", out)
	}
	return usec, human
}
