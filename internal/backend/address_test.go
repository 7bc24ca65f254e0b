// SPDX-License-Identifier: Apache-2.0

package backend

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	long := "/" + strings.Repeat("a", 106)
	tests := []struct {
		name, in string
		want     Address
	}{
		{name: "ipv4", in: "127.0.0.1:8080", want: Address{Network: "tcp", Host: "127.0.0.1", Port: "8080"}},
		{name: "hostname", in: "localhost:80", want: Address{Network: "tcp", Host: "localhost", Port: "80"}},
		{name: "no port means 80", in: "example.internal", want: Address{Network: "tcp", Host: "example.internal", Port: "80"}},
		{name: "bracketed ipv6", in: "[::1]:8080", want: Address{Network: "tcp", Host: "::1", Port: "8080"}},
		{name: "bracketed ipv6 no port", in: "[fe80::1]", want: Address{Network: "tcp", Host: "fe80::1", Port: "80"}},
		{name: "unbracketed splits at last colon", in: "::1:8080", want: Address{Network: "tcp", Host: "::1", Port: "8080"}},
		{name: "service name", in: "127.0.0.1:http", want: Address{Network: "tcp", Host: "127.0.0.1", Port: "80"}},
		{name: "leading zeros", in: "127.0.0.1:0080", want: Address{Network: "tcp", Host: "127.0.0.1", Port: "80"}},
		{name: "unix path", in: "/run/nginx/socket", want: Address{Network: "unix", Path: "/run/nginx/socket"}},
		{name: "longest unix path", in: long, want: Address{Network: "unix", Path: long}},
		{name: "abstract", in: "@nginx", want: Address{Network: "unix", Path: "@nginx"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Fatalf("Parse(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
			again, err := Parse(got.String())
			if err != nil || again != got {
				t.Fatalf("Parse(%q) round trip = %+v, %v", got.String(), again, err)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, in, mention string
	}{
		{name: "empty", in: "", mention: "empty"},
		{name: "port zero", in: "127.0.0.1:0", mention: `"127.0.0.1:0"`},
		{name: "port too big", in: "127.0.0.1:99999", mention: "1 to 65535"},
		{name: "empty port", in: "127.0.0.1:", mention: "empty port"},
		{name: "unknown service", in: "127.0.0.1:nosuchservice", mention: `"nosuchservice"`},
		{name: "no host", in: ":80", mention: "no host"},
		{name: "unclosed bracket", in: "[::1:80", mention: "']'"},
		{name: "ipv4 in brackets", in: "[127.0.0.1]:80", mention: "not an IPv6"},
		{name: "junk after bracket", in: "[::1]x", mention: `"x"`},
		{name: "unix path too long", in: "/" + strings.Repeat("a", 107), mention: "shorter path"},
		{name: "abstract empty", in: "@", mention: "empty"},
		{name: "abstract too long", in: "@" + strings.Repeat("a", 108), mention: "shorter name"},
		{name: "space in host", in: "a b:80", mention: `"a b"`},
		{name: "control character", in: ":\n", mention: "no host"},
		{name: "unbracketed ipv6 without port", in: "::1", mention: "[IPv6]:PORT"},
		{name: "newline in host", in: "a\nb:80", mention: "not a host name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.in)
			if err == nil {
				t.Fatalf("Parse(%q) succeeded, want an error", tt.in)
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("Parse(%q) error %q does not mention %q", tt.in, err, tt.mention)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"127.0.0.1:80", "[::1]:8080", "::1:80", "/run/x", "@abs", "host", "[", "]:", ":", "a:b:c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := Parse(s)
		if err != nil {
			return
		}
		again, err := Parse(a.String())
		if err != nil {
			t.Fatalf("Parse(%q) = %+v, but its String %q does not parse: %v", s, a, a.String(), err)
		}
		if again != a {
			t.Fatalf("round trip of %q: %+v != %+v", s, again, a)
		}
	})
}

// TestParseHints: the addresses users write for other programs, or by slip,
// get an error that says what to write instead.
func TestParseHints(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{in: "nginx.sock", want: `backend address "nginx.sock" looks like a unix socket file, not a host name: give its absolute path, such as "/run/nginx.sock"`},
		{in: "php-fpm.SOCKET", want: `such as "/run/php-fpm.SOCKET"`},
		{in: "./nginx.sock", want: `backend address "./nginx.sock" is a relative path: give the unix socket's absolute path, such as "/run/nginx.sock"`},
		{in: "run/nginx/socket", want: `is a relative path`},
		{in: "unix:/run/x.sock", want: `backend address "unix:/run/x.sock": write the socket path alone, "/run/x.sock", without "unix:"`},
		{in: "UNIX-CONNECT:@web", want: `write the socket path alone, "@web"`},
		{in: "abstract:web", want: `write an abstract socket as "@web"`},
		{in: "http://127.0.0.1:80", want: `backend address "http://127.0.0.1:80" is a URL: write HOST:PORT alone, "127.0.0.1:80"`},
		{in: "https://backend.example/x", want: `is a URL: write HOST:PORT alone, "backend.example:443"`},
		{in: "http://[::1]", want: `"[::1]:80"`},
		{in: "http://", want: `is a URL: write HOST:PORT alone, without "http://"`},
		{in: "tcp:127.0.0.1:8080", want: `write HOST:PORT alone, "127.0.0.1:8080", without "tcp:"`},
		{in: "localhost:8080/app", want: `backend address "localhost:8080/app" has a path: write HOST:PORT alone, "localhost:8080"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			a, err := Parse(tt.in)
			if err == nil {
				t.Fatalf("Parse(%q) = %+v, want an error", tt.in, a)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want %q", err, tt.want)
			}
		})
	}
	// Not mistakes: a host name with a port, and a name that is only
	// called "tcp" or "unix".
	for _, ok := range []string{"nginx.sock:8080", "tcp:80", "unix:80", "sockets.example"} {
		if _, err := Parse(ok); err != nil {
			t.Errorf("Parse(%q): %v", ok, err)
		}
	}
}

// TestHostNameCharacters: the edges of each class of characters a host name
// may hold, and their neighbours in ASCII, which it may not.
func TestHostNameCharacters(t *testing.T) {
	for _, c := range "azAZ09.-_" {
		if !isHostName("x" + string(c) + "y") {
			t.Errorf("%q refused in a host name", c)
		}
	}
	for _, c := range "`{@[/:+,~ " {
		if isHostName("x" + string(c) + "y") {
			t.Errorf("%q accepted in a host name", c)
		}
	}
}
