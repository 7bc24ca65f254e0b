// SPDX-License-Identifier: Apache-2.0

package timespan

import (
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	oneDay   = 24 * time.Hour
	oneWeek  = 7 * oneDay
	oneMonth = 2629800 * time.Second  // systemd's USEC_PER_MONTH: 30.4375 days
	oneYear  = 31557600 * time.Second // systemd's USEC_PER_YEAR: 365.25 days
)

// maxFinite is the longest span Parse accepts other than Infinity.
const maxFinite = time.Duration(maxUsec) * time.Microsecond

type parseTest struct {
	name string
	in   string
	want time.Duration
}

// manPageTests are the examples of systemd.time(7), "PARSING TIME SPANS",
// and of its DISPLAYING section ("2h 30min").
var manPageTests = []parseTest{
	{name: "space before unit", in: "2 h", want: 2 * time.Hour},
	{name: "long unit", in: "2hours", want: 2 * time.Hour},
	{name: "hr", in: "48hr", want: 48 * time.Hour},
	{name: "year and months add up to two years", in: "1y 12month", want: 2 * oneYear},
	{name: "concatenated s ms", in: "55s500ms", want: 55*time.Second + 500*time.Millisecond},
	{name: "concatenated ms s", in: "300ms20s", want: 20*time.Second + 300*time.Millisecond},
	{name: "day", in: "5day", want: 5 * oneDay},
	{name: "whole example line", in: "300ms20s 5day", want: 5*oneDay + 20*time.Second + 300*time.Millisecond},
	{name: "displayed form", in: "2h 30min", want: 150 * time.Minute},
}

// parseTests cover every unit name, the number forms and systemd's quirks;
// each was checked against systemd-analyze timespan (systemd 252).
var parseTests = []parseTest{
	// The forms in the contract and in --help.
	{name: "unit-less is seconds", in: "30", want: 30 * time.Second},
	{name: "min and s", in: "5min 20s", want: 5*time.Minute + 20*time.Second},
	{name: "h and min concatenated", in: "1h30min", want: 90 * time.Minute},
	{name: "ms", in: "500ms", want: 500 * time.Millisecond},
	{name: "fraction", in: "2.5s", want: 2500 * time.Millisecond},
	{name: "d", in: "1d", want: oneDay},
	{name: "infinity", in: "infinity", want: Infinity},
	{name: "zero", in: "0", want: 0},
	{name: "zero with unit", in: "0s", want: 0},

	// Every unit name in systemd.time(7).
	{name: "usec", in: "7usec", want: 7 * time.Microsecond},
	{name: "us", in: "7us", want: 7 * time.Microsecond},
	{name: "micro sign", in: "7µs", want: 7 * time.Microsecond},
	{name: "greek mu", in: "7μs", want: 7 * time.Microsecond},
	{name: "msec", in: "7msec", want: 7 * time.Millisecond},
	{name: "seconds", in: "7seconds", want: 7 * time.Second},
	{name: "second", in: "1second", want: time.Second},
	{name: "sec", in: "7sec", want: 7 * time.Second},
	{name: "s", in: "7s", want: 7 * time.Second},
	{name: "minutes", in: "7minutes", want: 7 * time.Minute},
	{name: "minute", in: "7minute", want: 7 * time.Minute},
	{name: "min", in: "7min", want: 7 * time.Minute},
	{name: "m", in: "7m", want: 7 * time.Minute},
	{name: "hours", in: "7hours", want: 7 * time.Hour},
	{name: "hour", in: "7hour", want: 7 * time.Hour},
	{name: "h", in: "7h", want: 7 * time.Hour},
	{name: "days", in: "7days", want: 7 * oneDay},
	{name: "weeks", in: "7weeks", want: 7 * oneWeek},
	{name: "week", in: "7week", want: 7 * oneWeek},
	{name: "w", in: "7w", want: 7 * oneWeek},
	{name: "months", in: "7months", want: 7 * oneMonth},
	{name: "M is a month", in: "7M", want: 7 * oneMonth},
	{name: "years", in: "7years", want: 7 * oneYear},
	{name: "year", in: "7year", want: 7 * oneYear},
	{name: "y", in: "7y", want: 7 * oneYear},

	// Spacing.
	{name: "leading and trailing whitespace", in: " \t5s\n\r", want: 5 * time.Second},
	{name: "spaces everywhere", in: " 1 h  30 min ", want: 90 * time.Minute},
	{name: "tab before unit", in: "5\tmin", want: 5 * time.Minute},
	{name: "infinity with whitespace", in: " infinity \n", want: Infinity},
	{name: "unit-less numbers add up", in: "12 34", want: 46 * time.Second},
	{name: "unit-less number after a unit", in: "1h30", want: time.Hour + 30*time.Second},
	{name: "same unit twice", in: "5s5s", want: 10 * time.Second},

	// Numbers.
	{name: "leading zeros", in: "007s", want: 7 * time.Second},
	{name: "unit-less fraction", in: "0.5", want: 500 * time.Millisecond},
	{name: "fraction without integer part", in: ".5", want: 500 * time.Millisecond},
	{name: "fraction of a minute", in: "1.5min", want: 90 * time.Second},
	{name: "fraction of a month", in: "1.5M", want: 3944700 * time.Second},
	{name: "fraction of a year", in: "0.5y", want: 15778800 * time.Second},
	{name: "fraction before space and unit", in: "1.5 s", want: 1500 * time.Millisecond},
	{name: "fraction after a unit", in: "5s.5", want: 5500 * time.Millisecond},
	{name: "two fractions with a space", in: "12.34 .56", want: 12900 * time.Millisecond},
	{name: "two fractions with a unit", in: "12.34s.56", want: 12900 * time.Millisecond},
	{name: "plus sign", in: "+5s", want: 5 * time.Second},
	{name: "plus sign after a space", in: "5 +5", want: 10 * time.Second},
	{name: "plus sign after a unit", in: "5s+5s", want: 10 * time.Second},
	{name: "sub-microsecond digits are dropped", in: "1.0000009s", want: time.Second},
	{name: "only sub-microsecond digits", in: "0.0000001s", want: 0},
	{name: "fraction of a microsecond", in: "1.5us", want: time.Microsecond},
	{name: "fraction of a millisecond", in: "1.5ms", want: 1500 * time.Microsecond},
	{name: "many fractional digits", in: "1." + strings.Repeat("9", 100) + "s", want: 1999999 * time.Microsecond},
	{name: "Go duration string", in: "1h0m30.5s", want: time.Hour + 30500*time.Millisecond},
	{name: "many leading zeros", in: strings.Repeat("0", 100) + "1s", want: time.Second},

	// The limits of time.Duration.
	{name: "longest finite span in us", in: strconv.FormatUint(maxUsec, 10) + "us", want: maxFinite},
	{name: "longest finite span as printed", in: "292y 3month 1w 16h 17min 16.854775s", want: maxFinite},
	{name: "292 years", in: "292y", want: 292 * oneYear},
}

func TestParse(t *testing.T) {
	for _, group := range []struct {
		name  string
		tests []parseTest
	}{
		{name: "man page", tests: manPageTests},
		{name: "more", tests: parseTests},
	} {
		t.Run(group.name, func(t *testing.T) {
			for _, tt := range group.tests {
				t.Run(tt.name, func(t *testing.T) {
					got, err := Parse(tt.in)
					if err != nil {
						t.Fatalf("Parse(%q): %v", tt.in, err)
					}
					if got != tt.want {
						t.Errorf("Parse(%q) = %v, want %v", tt.in, got, tt.want)
					}
				})
			}
		})
	}
}

type errorTest struct {
	name string
	in   string
	want string // the reason, between the quoted input and the hint
}

var errorTests = []errorTest{
	{name: "empty", in: "", want: "empty"},
	{name: "only whitespace", in: " \t\n", want: "empty"},
	{name: "negative", in: "-5s", want: "negative spans are not allowed"},
	{name: "negative zero", in: "-0", want: "negative spans are not allowed"},
	{name: "negative component", in: "5s -3s", want: "negative spans are not allowed"},
	{name: "negative after unit", in: "5s-3s", want: "negative spans are not allowed"},
	{name: "unknown unit", in: "5 parsecs", want: `unknown unit "parsecs"`},
	{name: "plural of an abbreviation", in: "5mins", want: `unknown unit "mins"`},
	{name: "hrs", in: "2hrs", want: `unknown unit "hrs"`},
	{name: "unit in upper case", in: "5MIN", want: `unknown unit "MIN" (units are case-sensitive: did you mean "min"?)`},
	{name: "S", in: "5S", want: `unknown unit "S" (units are case-sensitive: did you mean "s"?)`},
	{name: "nanoseconds", in: "5ns", want: `unknown unit "ns" (the smallest unit is us)`},
	{name: "nsec", in: "5nsec", want: `unknown unit "nsec" (the smallest unit is us)`},
	{name: "Go exponent", in: "1e3", want: `unknown unit "e"`},
	{name: "letters after a unit", in: "5sx", want: `unknown unit "sx"`},
	{name: "word", in: "soon", want: `expected a number, found "soon"`},
	{name: "unit without number", in: "s", want: `expected a number, found "s"`},
	{name: "garbage after a unit", in: "5s,3s", want: `expected a number, found ",3s"`},
	{name: "garbage after a space", in: "5 ,", want: `expected a number, found ","`},
	{name: "vertical tab", in: "5\vs", want: `unexpected "\vs" after "5"`},
	{name: "garbage after a number", in: "5,3", want: `unexpected ",3" after "5"`},
	{name: "two decimal points", in: "12.34.56", want: `unexpected ".56" after "12.34"`},
	{name: "plus without space", in: "5+5", want: `unexpected "+5" after "5"`},
	{name: "lone plus", in: "+", want: `expected a number, found "+"`},
	{name: "double plus", in: "++5", want: `expected a number, found "++5"`},
	{name: "plus and decimal point", in: "+.5", want: `expected a number, found "+.5"`},
	{name: "lone decimal point", in: ".", want: `"." needs digits after the decimal point`},
	{name: "no digits after point", in: "5.", want: `"5." needs digits after the decimal point`},
	{name: "unit after point", in: "3.sec", want: `"3." needs digits after the decimal point`},
	{name: "space after point", in: "3. 1", want: `"3." needs digits after the decimal point`},
	{name: "infinity then span", in: "infinity 5s", want: `"infinity" cannot be combined with other values`},
	{name: "infinity glued", in: "infinity5s", want: `"infinity" cannot be combined with other values`},
	{name: "span then infinity", in: "5s infinity", want: `"infinity" cannot be combined with other values`},
	{name: "number then infinity", in: "5 infinity", want: `"infinity" cannot be combined with other values`},
	{name: "infinity twice", in: "infinity infinity", want: `"infinity" cannot be combined with other values`},
	{name: "Infinity", in: "Infinity", want: `"Infinity" must be written in lower case`},
	{name: "inf", in: "inf", want: `expected a number, found "inf"`},
	{name: "Go duration in ns", in: "1h0m0.000000001s500ns", want: `unknown unit "ns" (the smallest unit is us)`},
	{name: "invalid UTF-8", in: "5\xff", want: `unexpected "\xff" after "5"`},
}

// tooLargeTests are spans systemd would take (it counts to 2^64-1 µs) but
// that do not fit in a time.Duration.
var tooLargeTests = []parseTest{
	{name: "one microsecond too many", in: strconv.FormatUint(maxUsec+1, 10) + "us"},
	{name: "one microsecond too many as printed", in: "292y 3month 1w 16h 17min 16.854776s"},
	{name: "300 years", in: "300y"},
	{name: "sum too large", in: "200y 200y"},
	{name: "over int64", in: "9223372036854775808us"},
	{name: "over uint64", in: "18446744073709551616us"},
	{name: "huge", in: strings.Repeat("9", 100)},
	{name: "fraction tips it over", in: strconv.FormatUint(maxUsec/uint64(1e6), 10) + ".9s"},
}

func TestParseErrors(t *testing.T) {
	for _, tt := range errorTests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if err == nil {
				t.Fatalf("Parse(%q) = %v, want an error", tt.in, got)
			}
			want := "invalid time span " + strconv.Quote(tt.in) + ": " + tt.want +
				"; use e.g. 30s, 5min 20s, 500ms or infinity"
			if err.Error() != want {
				t.Errorf("Parse(%q) error:\n got: %s\nwant: %s", tt.in, err, want)
			}
		})
	}
	for _, tt := range tooLargeTests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if err == nil {
				t.Fatalf("Parse(%q) = %v, want an error", tt.in, got)
			}
			want := "invalid time span " + strconv.Quote(tt.in) +
				": too large, the longest finite span is 292y 3month 1w 16h 17min 16.854775s; use a shorter span or infinity"
			if err.Error() != want {
				t.Errorf("Parse(%q) error:\n got: %s\nwant: %s", tt.in, err, want)
			}
		})
	}
}

// formatTests were checked against the "Human:" line of systemd-analyze
// timespan (systemd 252).
var formatTests = []struct {
	name string
	in   time.Duration
	want string
}{
	{name: "zero", in: 0, want: "0"},
	{name: "infinity", in: Infinity, want: "infinity"},
	{name: "microsecond", in: time.Microsecond, want: "1us"},
	{name: "below a microsecond", in: 999 * time.Nanosecond, want: "0"},
	{name: "nanoseconds are dropped", in: time.Second + 999*time.Nanosecond, want: "1s"},
	{name: "ms", in: 500 * time.Millisecond, want: "500ms"},
	{name: "fraction of a ms", in: 1500 * time.Microsecond, want: "1.500ms"},
	{name: "fraction of a second", in: 2500 * time.Millisecond, want: "2.500000s"},
	{name: "second and a microsecond", in: time.Second + time.Microsecond, want: "1.000001s"},
	{name: "s", in: 30 * time.Second, want: "30s"},
	{name: "min and s", in: 5*time.Minute + 20*time.Second, want: "5min 20s"},
	{name: "fraction after a minute", in: 61500 * time.Millisecond, want: "1min 1.500000s"},
	{name: "ms after a minute", in: time.Minute + 500*time.Millisecond, want: "1min 500ms"},
	{name: "h and min", in: 90 * time.Minute, want: "1h 30min"},
	{name: "day", in: oneDay, want: "1d"},
	{name: "man page example line", in: 5*oneDay + 20*time.Second + 300*time.Millisecond, want: "5d 20.300000s"},
	{name: "week", in: 8 * oneDay, want: "1w 1d"},
	{name: "month", in: oneMonth, want: "1month"},
	{name: "a month and a half", in: 3944700 * time.Second, want: "1month 2w 1d 5h 15min"},
	{name: "year", in: oneYear, want: "1y"},
	{name: "1y 12month", in: 2 * oneYear, want: "2y"},
	{name: "365 days", in: 365 * oneDay, want: "11month 4w 2d 4h 30min"},
	{name: "every unit", in: oneYear + oneMonth + oneWeek + oneDay + time.Hour + time.Minute + time.Second + time.Millisecond + time.Microsecond,
		want: "1y 1month 1w 1d 1h 1min 1.001001s"},
	{name: "longest finite span", in: maxFinite, want: "292y 3month 1w 16h 17min 16.854775s"},
	{name: "just below infinity", in: Infinity - 1, want: "292y 3month 1w 16h 17min 16.854775s"},
	{name: "negative", in: -90 * time.Second, want: "-1min 30s"},
	{name: "most negative", in: time.Duration(-1 << 63), want: "-292y 3month 1w 16h 17min 16.854775s"},
}

func TestFormat(t *testing.T) {
	for _, tt := range formatTests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Format(tt.in); got != tt.want {
				t.Errorf("Format(%d) = %q, want %q", int64(tt.in), got, tt.want)
			}
		})
	}
}

// roundTrip reports whether Parse(Format(d)) gives back d to the
// microsecond, and Format of that gives the same text again.
func roundTrip(t *testing.T, d time.Duration) {
	t.Helper()
	want := d
	if d != Infinity {
		want = d.Truncate(time.Microsecond)
	}
	s := Format(d)
	got, err := Parse(s)
	if err != nil {
		t.Fatalf("Parse(Format(%d)) = Parse(%q): %v", int64(d), s, err)
	}
	if got != want {
		t.Fatalf("Parse(Format(%d)) = Parse(%q) = %d, want %d", int64(d), s, int64(got), int64(want))
	}
	if again := Format(got); again != s {
		t.Fatalf("Format(Parse(%q)) = %q, want it unchanged", s, again)
	}
}

func TestRoundTrip(t *testing.T) {
	t.Run("table", func(t *testing.T) {
		for _, tt := range formatTests {
			if tt.in >= 0 {
				roundTrip(t, tt.in)
			}
		}
	})
	t.Run("unit boundaries", func(t *testing.T) {
		for _, u := range []time.Duration{time.Microsecond, time.Millisecond, time.Second, time.Minute, time.Hour, oneDay, oneWeek, oneMonth, oneYear} {
			for _, d := range []time.Duration{u - time.Microsecond, u, u + time.Microsecond, 59*u + u/2, maxFinite / u * u} {
				roundTrip(t, d)
			}
		}
	})
	t.Run("random", func(t *testing.T) {
		r := rand.New(rand.NewPCG(1, 2)) // fixed seed: failures reproduce
		for range 20000 {
			// Spread the magnitudes: uniform over the range would
			// almost never try spans under a minute.
			roundTrip(t, time.Duration(r.Int64()>>r.IntN(63)))
		}
	})
}
