// SPDX-License-Identifier: Apache-2.0

package timespan

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// FuzzParse checks that Parse never panics, never returns a negative or
// sub-microsecond span, explains every refusal naming the input, and that
// whatever it accepts survives Format and Parse again unchanged.
func FuzzParse(f *testing.F) {
	for _, tt := range manPageTests {
		f.Add(tt.in)
	}
	for _, tt := range parseTests {
		f.Add(tt.in)
	}
	for _, tt := range errorTests {
		f.Add(tt.in)
	}
	for _, tt := range tooLargeTests {
		f.Add(tt.in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := Parse(s)
		if err != nil {
			if d != 0 {
				t.Errorf("Parse(%q) = %v with error %v, want 0", s, d, err)
			}
			msg := err.Error()
			if prefix := "invalid time span " + strconv.Quote(s) + ": "; !strings.HasPrefix(msg, prefix) {
				t.Errorf("Parse(%q) error %q does not start with %q", s, msg, prefix)
			}
			if strings.HasSuffix(msg, ".") {
				t.Errorf("Parse(%q) error %q ends with a period", s, msg)
			}
			return
		}
		if d < 0 {
			t.Fatalf("Parse(%q) = %v: negative without an error", s, d)
		}
		if d != Infinity && d%time.Microsecond != 0 {
			t.Fatalf("Parse(%q) = %d ns: not whole microseconds", s, int64(d))
		}
		text := Format(d)
		again, err := Parse(text)
		if err != nil {
			t.Fatalf("Parse(%q) = %v, but Parse(Format(%v)) = Parse(%q): %v", s, d, d, text, err)
		}
		if again != d {
			t.Fatalf("Parse(%q) = %v, but Parse(Format(%v)) = Parse(%q) = %v", s, d, d, text, again)
		}
	})
}
