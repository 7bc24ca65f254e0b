// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"math"
	"strings"
)

// errAtou is what parseAtou says of a number systemd would refuse.
var errAtou = errors.New("not a number systemd-socket-proxyd takes")

// parseAtou reads a number as systemd 252's safe_atou does, which is how
// systemd-socket-proxyd reads -c, so that a drop-in takes every value the
// original takes and refuses every value it refuses: leading whitespace;
// "0b" and "0o" (Python's binary and octal prefixes, any case); then C's
// strtoul with base 0, which takes a sign, "0x" for hexadecimal and a
// leading 0 for octal ("010" is 8); nothing after the number; no minus
// sign before anything but zero; and a value that fits 32 bits.
func parseAtou(s string) (uint64, error) {
	s = strings.TrimLeft(s, " \t\n\r")
	base := 0
	switch {
	case hasPrefixFold(s, "0b"):
		base, s = 2, s[2:]
	case hasPrefixFold(s, "0o"):
		base, s = 8, s[2:]
	}
	v, rest, overflow := strtoul(s, base)
	if rest == s || rest != "" {
		return 0, errAtou // no digits, or something after them
	}
	if overflow || (v != 0 && s[0] == '-') || v > math.MaxUint32 {
		return 0, errAtou
	}
	return v, nil
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// strtoul is C's: it skips white space, takes a sign, and with base 0
// reads "0x" as hexadecimal and a leading "0" as octal. It returns the
// value (negated modulo 2^64 after a minus sign, as C does), what follows
// the digits (s itself when there are none), and whether the value
// overflowed.
func strtoul(s string, base int) (v uint64, rest string, overflow bool) {
	start := s
	s = strings.TrimLeft(s, " \t\n\v\f\r")
	neg := false
	if s != "" && (s[0] == '+' || s[0] == '-') {
		neg = s[0] == '-'
		s = s[1:]
	}
	if (base == 0 || base == 16) && len(s) > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X') && digit(s[2]) < 16 {
		base, s = 16, s[2:]
	}
	if base == 0 {
		base = 10
		if s != "" && s[0] == '0' {
			base = 8
		}
	}
	n := 0
	for ; n < len(s) && digit(s[n]) < base; n++ {
		d := uint64(digit(s[n]))
		if v > (math.MaxUint64-d)/uint64(base) {
			overflow = true
		}
		v = v*uint64(base) + d
	}
	if n == 0 {
		return 0, start, false
	}
	if overflow {
		return math.MaxUint64, s[n:], true
	}
	if neg {
		v = -v
	}
	return v, s[n:], false
}

// digit is c's value as a digit, 99 when it is none.
func digit(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'a' <= c && c <= 'z':
		return int(c-'a') + 10
	case 'A' <= c && c <= 'Z':
		return int(c-'A') + 10
	}
	return 99
}
