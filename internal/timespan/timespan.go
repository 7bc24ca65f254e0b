// SPDX-License-Identifier: Apache-2.0

// Package timespan parses and prints systemd time spans ("30", "5min 20s",
// "500ms", "infinity"), so that a span copied from a unit file means the same
// to socket-proxyd as it does to systemd-socket-proxyd.
//
// The grammar and the arithmetic follow parse_sec() and format_timespan() in
// systemd's src/basic/time-util.c (systemd 252), as documented in
// systemd.time(7): spans are counted in whole microseconds, a number without a
// unit means seconds, and extra fractional digits are dropped, not rounded.
package timespan

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Infinity is the span "infinity": never.
const Infinity time.Duration = math.MaxInt64

// Unit sizes in microseconds. A month and a year are the averages systemd
// uses (USEC_PER_MONTH, USEC_PER_YEAR): 365.25 days a year and a twelfth of
// that a month, which is 30.4375 days ("30.44 days" in systemd.time(7)), so
// that "1y 12month" is exactly two years.
const (
	usec   uint64 = 1
	msec          = 1000 * usec
	sec           = 1000 * msec
	minute        = 60 * sec
	hour          = 60 * minute
	day           = 24 * hour
	week          = 7 * day
	month         = 2629800 * sec
	year          = 31557600 * sec
)

// maxUsec is the longest finite span a time.Duration can hold, in whole
// microseconds (about 292 years). systemd's own limit is 2^64-1 µs; spans
// between the two are rejected here rather than wrapped.
const maxUsec = uint64(math.MaxInt64 / int64(time.Microsecond))

// units are the unit names systemd.time(7) lists, case-sensitive: "M" is a
// month and "m" a minute.
var units = map[string]uint64{
	"usec": usec, "us": usec, "µs": usec, "μs": usec, // U+00B5 MICRO SIGN and U+03BC GREEK SMALL LETTER MU
	"msec": msec, "ms": msec,
	"seconds": sec, "second": sec, "sec": sec, "s": sec,
	"minutes": minute, "minute": minute, "min": minute, "m": minute,
	"hours": hour, "hour": hour, "hr": hour, "h": hour,
	"days": day, "day": day, "d": day,
	"weeks": week, "week": week, "w": week,
	"months": month, "month": month, "M": month,
	"years": year, "year": year, "y": year,
}

// hint ends every syntax error with spans that would have been accepted.
const hint = "use e.g. 30s, 5min 20s, 500ms or infinity"

// whitespace is systemd's WHITESPACE set; other control characters such as
// \v are rejected, as systemd rejects them everywhere but in a few corners.
const whitespace = " \t\n\r"

// Parse parses a systemd time span such as "30", "5min 20s", "1h30min",
// "500ms", "2.5s", "1d", "infinity".
//
// It accepts what systemd's parse_sec() accepts, with one exception: a span
// too long for a time.Duration (over about 292 years) is an error, never
// wrapped. Components are added up and may be written with or without spaces
// between them ("1h30min", "5min 20s", "5 min"); a number without a unit is in
// seconds; a number may have a fraction ("2.5s", ".5") and, as in systemd, a
// leading "+". Sub-microsecond digits are dropped. Negative spans are errors,
// and "infinity" stands alone.
func Parse(s string) (time.Duration, error) {
	p := strings.TrimLeft(s, whitespace)
	if p == "" {
		return 0, syntaxError(s, "empty")
	}
	if rest, ok := strings.CutPrefix(p, "infinity"); ok {
		if strings.TrimLeft(rest, whitespace) != "" {
			return 0, syntaxError(s, `"infinity" cannot be combined with other values`)
		}
		return Infinity, nil
	}

	var total uint64 // microseconds, never above maxUsec
	for {
		p = strings.TrimLeft(p, whitespace)
		if p == "" {
			break
		}
		if p[0] == '-' {
			return 0, syntaxError(s, "negative spans are not allowed")
		}

		// The number: [+]digits[.digits] or .digits, like strtoll() followed
		// by systemd's own fraction scan. "+.5" is refused, as strtoll()
		// then converts nothing.
		i := 0
		plus := p[0] == '+'
		if plus {
			i++
		}
		intStart := i
		i += digits(p[i:])
		intPart := p[intStart:i]
		fracPart, hasFrac := "", false
		if i < len(p) && p[i] == '.' && (intPart != "" || !plus) {
			hasFrac = true
			n := digits(p[i+1:])
			fracPart = p[i+1 : i+1+n]
			i += 1 + n
		} else if intPart == "" {
			return 0, noNumber(s, p)
		}
		number := p[:i]

		// The unit, perhaps after spaces. Without one, the number must
		// end the span or be followed by a space: systemd refuses
		// "12.34.56" and "5+5" but takes "12.34 .56" and "5 +5".
		afterSpace := i + len(p[i:]) - len(strings.TrimLeft(p[i:], whitespace))
		word := letters(p[afterSpace:])
		mult := sec
		switch {
		case word != "":
			m, ok := units[word]
			if !ok {
				return 0, unknownUnit(s, word)
			}
			mult = m
			p = p[afterSpace+len(word):]
		case afterSpace == i && i < len(p):
			return 0, syntaxError(s, fmt.Sprintf("unexpected %q after %q", field(p[i:]), number))
		default:
			p = p[afterSpace:]
		}
		if hasFrac && fracPart == "" {
			// systemd: 'Don't allow "0.-0", "3.+1", "3. 1", "3.sec" or "3.hoge"'.
			return 0, syntaxError(s, fmt.Sprintf("%q needs digits after the decimal point", number))
		}

		// The value, checked before each addition so that nothing wraps.
		var whole uint64
		if intPart != "" {
			var err error
			// intPart is all digits, so the only possible error is
			// strconv.ErrRange.
			whole, err = strconv.ParseUint(intPart, 10, 64)
			if err != nil || whole > maxUsec/mult {
				return 0, tooLarge(s)
			}
		}
		v := whole * mult
		// Each fractional digit is worth a tenth of the one before, in
		// whole microseconds, as in systemd: digits finer than a
		// microsecond count for nothing.
		for j, m := 0, mult/10; j < len(fracPart) && m > 0; j, m = j+1, m/10 {
			v += uint64(fracPart[j]-'0') * m // stays below (whole+1)*mult
		}
		if v > maxUsec-total {
			return 0, tooLarge(s)
		}
		total += v
	}
	return time.Duration(total) * time.Microsecond, nil
}

// formatUnits are the units Format prints, largest first, with the names
// format_timespan() gives them.
var formatUnits = [...]struct {
	name string
	usec uint64
}{
	{"y", year},
	{"month", month},
	{"w", week},
	{"d", day},
	{"h", hour},
	{"min", minute},
	{"s", sec},
	{"ms", msec},
	{"us", usec},
}

// Format prints a span the way systemd does ("5min 20s", "500ms",
// "1.500000s", "infinity"): format_timespan() at microsecond accuracy, which
// is what systemd-analyze timespan prints as "Human". Parse(Format(d)) == d
// for d >= 0 at microsecond precision: the sub-microsecond part of d is
// dropped. A negative d, which Parse never returns, is printed as "-" and the
// span, so that a bad value is still readable.
func Format(d time.Duration) string {
	if d == Infinity {
		return "infinity"
	}
	t := d / time.Microsecond
	if t < 0 {
		return "-" + formatUsec(uint64(-t)) // -t fits: |MinInt64/1000| < MaxInt64
	}
	return formatUsec(uint64(t))
}

func formatUsec(t uint64) string {
	if t == 0 {
		return "0"
	}
	var buf [64]byte
	b := buf[:0]
	for _, u := range formatUnits {
		if t == 0 {
			break
		}
		if t < u.usec {
			continue
		}
		if len(b) > 0 {
			b = append(b, ' ')
		}
		whole, rest := t/u.usec, t%u.usec
		b = strconv.AppendUint(b, whole, 10)
		// Under a minute, systemd writes the rest as a decimal fraction of
		// the unit ("1.500000s", "1.500ms") rather than as more units.
		if t < minute && rest > 0 {
			places := 0
			for c := u.usec; c > 1; c /= 10 {
				places++
			}
			if places > 0 {
				frac := strconv.FormatUint(rest, 10)
				b = append(b, '.')
				for range places - len(frac) {
					b = append(b, '0')
				}
				b = append(b, frac...)
				b = append(b, u.name...)
				break
			}
		}
		b = append(b, u.name...)
		t = rest
	}
	return string(b)
}

// digits returns how many ASCII digits s starts with.
func digits(s string) int {
	i := 0
	for i < len(s) && '0' <= s[i] && s[i] <= '9' {
		i++
	}
	return i
}

// letters returns the run of letters s starts with: a unit name, or a word
// that is meant to be one. Units are matched whole: systemd matches a prefix,
// but then refuses whatever letters follow it, so "5mins" fails either way.
func letters(s string) string {
	i := 0
	for i < len(s) {
		r, n := utf8.DecodeRuneInString(s[i:])
		if !unicode.IsLetter(r) {
			break
		}
		i += n
	}
	return s[:i]
}

// field returns s up to its first whitespace, to quote in an error.
func field(s string) string {
	if i := strings.IndexAny(s, whitespace); i >= 0 {
		return s[:i]
	}
	return s
}

func syntaxError(s, reason string) error {
	return fmt.Errorf("invalid time span %q: %s; %s", s, reason, hint)
}

func noNumber(s, p string) error {
	w := letters(p)
	switch {
	case w == "infinity":
		return syntaxError(s, `"infinity" cannot be combined with other values`)
	case strings.EqualFold(w, "infinity"):
		return syntaxError(s, fmt.Sprintf("%q must be written in lower case", w))
	}
	return syntaxError(s, fmt.Sprintf("expected a number, found %q", field(p)))
}

func unknownUnit(s, word string) error {
	reason := fmt.Sprintf("unknown unit %q", word)
	switch lower := strings.ToLower(word); {
	case word == "infinity":
		reason = `"infinity" cannot be combined with other values`
	case lower == "ns" || lower == "nsec":
		reason += " (the smallest unit is us)"
	case units[lower] != 0:
		reason += fmt.Sprintf(" (units are case-sensitive: did you mean %q?)", lower)
	}
	return syntaxError(s, reason)
}

func tooLarge(s string) error {
	return fmt.Errorf("invalid time span %q: too large, the longest finite span is %s; use a shorter span or infinity",
		s, formatUsec(maxUsec))
}
