// SPDX-License-Identifier: Apache-2.0

// Package getopt reads a command line the way GNU getopt_long(3) does, so
// that every command line systemd-socket-proxyd accepts means the same to
// socket-proxyd: unique prefixes of long options, --opt=VALUE and --opt
// VALUE, -cN and -c N, clustered short options (-hc5), "--" and options
// after the positional arguments (permutation).
//
// pflag, which this replaces, has no abbreviations, and its errors had to
// be rewritten after the fact; a table and fifty lines of loop are simpler.
package getopt

import (
	"fmt"
	"strings"
)

// Option is one entry of the table, like getopt_long's struct option.
type Option struct {
	// Long is the name after "--"; Short, if not 0, the letter after "-".
	Long  string
	Short byte
	// Arg is true when the option takes a value (required_argument);
	// otherwise it takes none (no_argument) and Set gets "".
	Arg bool
	// Original marks the options the program being replaced has. An
	// abbreviation is resolved among them first, so that every abbreviation
	// the original accepted still means the same although newer options
	// share its prefix: systemd-socket-proxyd reads "--conn=5" as
	// --connections-max, and so must a drop-in replacement that also has
	// --connect-timeout.
	Original bool
	// Stop ends parsing once the option is set, as --help and --version
	// do in the original, which print and exit there: whatever follows,
	// even a bad option, is not read.
	Stop bool
	// Set stores the value; its error becomes "invalid value".
	Set func(value string) error
}

// Names is how messages name the option: "-c/--connections-max".
func (o *Option) Names() string {
	if o.Short != 0 {
		return "-" + string(o.Short) + "/--" + o.Long
	}
	return "--" + o.Long
}

// Arg is one positional argument.
type Arg struct {
	Value string
	// After is set when the argument came right after an option's value
	// ("--exit-idle-time 5 minutes" leaves "minutes" after --exit-idle-time's
	// "5"), so that a caller can spot a value that should have been quoted.
	After      *Option
	AfterValue string
}

// Parse sets the options args give and returns the other arguments, in
// order. Like getopt_long without POSIXLY_CORRECT, it takes options
// wherever they are until "--"; "-" alone is an argument. The first bad
// option ends parsing with an error that quotes what was written.
func Parse(table []Option, args []string) ([]Arg, error) {
	var rest []Arg
	var after *Option
	var afterValue string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			for _, v := range args[i+1:] {
				rest = append(rest, Arg{Value: v})
			}
			return rest, nil
		case strings.HasPrefix(a, "--"):
			name, value, hasValue := strings.Cut(a[2:], "=")
			o, err := lookupLong(table, name)
			if err != nil {
				return nil, err
			}
			written := "--" + name
			switch {
			case !o.Arg && hasValue:
				return nil, fmt.Errorf("option %q takes no value, but was given %q: write %s alone", written, value, written)
			case o.Arg && !hasValue:
				if i+1 == len(args) {
					return nil, fmt.Errorf("option %q needs a value: write %s=VALUE", written, written)
				}
				i++
				value = args[i]
			}
			if err := set(o, written, value); err != nil || o.Stop {
				return rest, err
			}
			after, afterValue = o, value
			continue
		case len(a) > 1 && a[0] == '-':
			var err error
			var stop bool
			if after, afterValue, i, stop, err = parseShort(table, args, i); err != nil || stop {
				return rest, err
			}
			continue
		}
		rest = append(rest, Arg{Value: a, After: after, AfterValue: afterValue})
		after, afterValue = nil, ""
	}
	return rest, nil
}

// parseShort reads the cluster of short options in args[i] ("-hc5"), and
// the next argument too when its last option needs a value ("-c 5"). It
// returns the option whose value it read, if any, the index of the last
// argument it used, and whether an option stopped parsing.
func parseShort(table []Option, args []string, i int) (*Option, string, int, bool, error) {
	a := args[i]
	in := "" // where a short option sits, when not alone: "-x" in "-hx"
	if len(a) > 2 {
		in = fmt.Sprintf(" in %q", a)
	}
	for j := 1; j < len(a); j++ {
		o := lookupShort(table, a[j])
		if o == nil {
			return nil, "", i, false, fmt.Errorf("unknown option %q%s", "-"+a[j:j+1], in)
		}
		written := "-" + string(a[j])
		if !o.Arg {
			if err := set(o, written, ""); err != nil || o.Stop {
				return nil, "", i, o.Stop, err
			}
			continue
		}
		value := a[j+1:]
		if value == "" {
			if i+1 == len(args) {
				return nil, "", i, false, fmt.Errorf("option %q%s needs a value: write %s N", written, in, written)
			}
			i++
			value = args[i]
		}
		return o, value, i, o.Stop, set(o, written, value)
	}
	return nil, "", i, false, nil
}

// set stores one value; written is the option as the user spelled it, kept
// in the message when it was an abbreviation so the user sees what it was
// taken for.
func set(o *Option, written, value string) error {
	err := o.Set(value)
	if err == nil {
		return nil
	}
	names := o.Names()
	if written != "--"+o.Long && written != "-"+string(o.Short) {
		names += fmt.Sprintf(" (written %q)", written)
	}
	return fmt.Errorf("invalid value %q for %s: %v", value, names, err)
}

func lookupShort(table []Option, c byte) *Option {
	for i := range table {
		if table[i].Short != 0 && table[i].Short == c {
			return &table[i]
		}
	}
	return nil
}

// lookupLong finds the option a name stands for: an exact match, else the
// only original option it abbreviates, else the only option at all. Other
// cases are errors that list the candidates, as getopt_long's do.
func lookupLong(table []Option, name string) (*Option, error) {
	var all, originals []*Option
	for i := range table {
		o := &table[i]
		if o.Long == name {
			return o, nil
		}
		if strings.HasPrefix(o.Long, name) {
			all = append(all, o)
			if o.Original {
				originals = append(originals, o)
			}
		}
	}
	switch {
	case len(originals) == 1:
		return originals[0], nil
	case len(all) == 1:
		return all[0], nil
	case len(all) == 0:
		return nil, fmt.Errorf("unknown option %q", "--"+name)
	}
	candidates := make([]string, len(all))
	for i, o := range all {
		candidates[i] = "--" + o.Long
	}
	return nil, fmt.Errorf("option %q is ambiguous: it could be %s; write more of it",
		"--"+name, strings.Join(candidates, ", "))
}
