// SPDX-License-Identifier: Apache-2.0

package getopt

import (
	"errors"
	"strings"
	"testing"
)

// parsed records what a command line set, in order: "c=5", "help", "arg:x".
type parsed []string

// table is systemd-socket-proxyd's getopt table ("c:h", connections-max,
// exit-idle-time, help, version) plus newer options sharing its prefixes.
func table(p *parsed) []Option {
	rec := func(name string) func(string) error {
		return func(v string) error {
			if v == "bad" {
				return errors.New("not good")
			}
			*p = append(*p, name+"="+v)
			return nil
		}
	}
	return []Option{
		{Long: "connections-max", Short: 'c', Arg: true, Original: true, Set: rec("c")},
		{Long: "exit-idle-time", Arg: true, Original: true, Set: rec("exit")},
		{Long: "help", Short: 'h', Original: true, Stop: true, Set: rec("help")},
		{Long: "version", Original: true, Stop: true, Set: rec("version")},
		{Long: "connect-timeout", Arg: true, Set: rec("connect")},
		{Long: "shutdown-timeout", Arg: true, Set: rec("shutdown")},
		{Long: "socket-mode", Arg: true, Set: rec("mode")},
		{Long: "listen", Arg: true, Set: rec("listen")},
		{Long: "quiet", Short: 'q', Set: rec("quiet")},
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		args []string
		want string // what was set, then the arguments
	}{
		{args: []string{"-c5", "a"}, want: "c=5 arg:a"},
		{args: []string{"-c", "5", "a"}, want: "c=5 arg:a"},
		{args: []string{"-c", "-1"}, want: "c=-1"},
		{args: []string{"--connections-max=5"}, want: "c=5"},
		{args: []string{"--connections-max", "5"}, want: "c=5"},
		{args: []string{"--connections-max="}, want: "c="},
		{args: []string{"--connections=5"}, want: "c=5"},
		{args: []string{"--conn", "5"}, want: "c=5"},
		{args: []string{"--c=5"}, want: "c=5"},       // original wins over --connect-timeout
		{args: []string{"--connect=5"}, want: "c=5"}, // as the original reads it
		{args: []string{"--connect-=5"}, want: "connect=5"},
		{args: []string{"--e=1s"}, want: "exit=1s"},
		{args: []string{"--sh=1s"}, want: "shutdown=1s"},
		{args: []string{"--l", "x"}, want: "listen=x"},
		{args: []string{"--h", "--v"}, want: "help="},
		{args: []string{"--v", "--h"}, want: "version="},
		{args: []string{"-qc5"}, want: "quiet= c=5"},
		{args: []string{"-qc", "5"}, want: "quiet= c=5"},
		{args: []string{"-hc5"}, want: "help="},
		{args: []string{"a", "-c", "5", "b"}, want: "c=5 arg:a arg:b"},
		{args: []string{"-", "--", "-c5", "--help"}, want: "arg:- arg:-c5 arg:--help"},
		{args: []string{"", "x"}, want: "arg: arg:x"},
		{args: []string{"--listen=a=b"}, want: "listen=a=b"},
		{args: []string{"a", "-h", "--bogus", "b"}, want: "help= arg:a"}, // help stops, as the original prints it at once
		{args: []string{"--version", "-c", "bad"}, want: "version="},
		{args: []string{"-hz"}, want: "help="},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var p parsed
			rest, err := Parse(table(&p), tt.args)
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range rest {
				p = append(p, "arg:"+a.Value)
			}
			if got := strings.Join(p, " "); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{args: []string{"--s=1"}, want: `option "--s" is ambiguous: it could be --shutdown-timeout, --socket-mode; write more of it`},
		{args: []string{"--=1"}, want: `option "--" is ambiguous: it could be --connections-max, --exit-idle-time, --help, --version, --connect-timeout, --shutdown-timeout, --socket-mode, --listen, --quiet; write more of it`},
		{args: []string{"--bogus"}, want: `unknown option "--bogus"`},
		{args: []string{"--bogus=1"}, want: `unknown option "--bogus"`},
		{args: []string{"---"}, want: `unknown option "---"`},
		{args: []string{"-z"}, want: `unknown option "-z"`},
		{args: []string{"-qz"}, want: `unknown option "-z" in "-qz"`},
		{args: []string{"-qc"}, want: `option "-c" in "-qc" needs a value: write -c N`},
		{args: []string{"-c"}, want: `option "-c" needs a value: write -c N`},
		{args: []string{"a", "--listen"}, want: `option "--listen" needs a value: write --listen=VALUE`},
		{args: []string{"--help=yes"}, want: `option "--help" takes no value, but was given "yes": write --help alone`},
		{args: []string{"--he=yes"}, want: `option "--he" takes no value, but was given "yes": write --he alone`},
		{args: []string{"-c", "bad"}, want: `invalid value "bad" for -c/--connections-max: not good`},
		{args: []string{"--conn=bad"}, want: `invalid value "bad" for -c/--connections-max (written "--conn"): not good`},
		{args: []string{"--listen", "bad"}, want: `invalid value "bad" for --listen: not good`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var p parsed
			_, err := Parse(table(&p), tt.args)
			if err == nil || err.Error() != tt.want {
				t.Errorf("error %v, want %q", err, tt.want)
			}
		})
	}
}

// TestAfter: an argument right after an option's value is marked, so that
// "--exit-idle-time 5 minutes" can be told apart from a backend.
func TestAfter(t *testing.T) {
	var p parsed
	rest, err := Parse(table(&p), []string{"--exit-idle-time", "5", "minutes", "b", "-c5", "x", "-q", "y"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range rest {
		s := a.Value
		if a.After != nil {
			s += "<" + a.After.Long + ":" + a.AfterValue
		}
		got = append(got, s)
	}
	if g, want := strings.Join(got, " "), "minutes<exit-idle-time:5 b x<connections-max:5 y"; g != want {
		t.Errorf("got %q, want %q", g, want)
	}
}
