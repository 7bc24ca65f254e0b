// SPDX-License-Identifier: Apache-2.0

// Package backend is the server the proxy forwards to: its address as the
// user wrote it, checked at start-up, and the dialing of it per connection.
package backend

import (
	"fmt"
	"net"
	"net/url"
	"path"
	"strconv"
	"strings"
)

// DefaultPort is used when HOST has no ":PORT", as systemd-socket-proxyd does.
const DefaultPort = "80"

// maxUnixPath is the room in sockaddr_un.sun_path: 108 bytes, one of which is
// the terminating NUL of a path (an abstract name needs no NUL).
const maxUnixPath = 108

// Address is a parsed backend address: a TCP host and port, or a unix socket.
type Address struct {
	// Network is "tcp" or "unix".
	Network string
	// Host and Port are set for "tcp". Host is an IP literal or a name,
	// without brackets; Port is numeric.
	Host, Port string
	// Path is set for "unix": a file path, or "@name" for an abstract socket.
	Path string
}

// Parse reads a backend address as the command line gives it:
// HOST:PORT, HOST (port 80), [IPv6]:PORT, /path/to/socket or @abstract.
func Parse(s string) (Address, error) {
	switch {
	case s == "":
		return Address{}, fmt.Errorf("empty backend address %q: give HOST:PORT, [IPv6]:PORT or a unix socket path", s)
	case strings.HasPrefix(s, "/"):
		if len(s) > maxUnixPath-1 {
			return Address{}, fmt.Errorf("unix socket path %q is %d bytes long; the limit is %d: use a shorter path", s, len(s), maxUnixPath-1)
		}
		return Address{Network: "unix", Path: s}, nil
	case strings.HasPrefix(s, "@"):
		if len(s) == 1 {
			return Address{}, fmt.Errorf("abstract socket name %q is empty: write @name", s)
		}
		if len(s) > maxUnixPath {
			return Address{}, fmt.Errorf("abstract socket name %q is %d bytes long; the limit is %d: use a shorter name", s, len(s), maxUnixPath)
		}
		return Address{Network: "unix", Path: s}, nil
	}
	if err := mistake(s); err != nil {
		return Address{}, err
	}
	host, port, err := splitHostPort(s)
	if err != nil {
		return Address{}, err
	}
	port, err = checkPort(s, port)
	if err != nil {
		return Address{}, err
	}
	return Address{Network: "tcp", Host: host, Port: port}, nil
}

// mistake recognises the backend addresses users write for other programs
// or by slip, and says what to write instead: a relative socket path (the
// original reads "nginx.sock" as a host name and fails every connection),
// socat's and nginx's "unix:" prefix, a URL, socat's "tcp:".
func mistake(s string) error {
	if scheme, _, ok := strings.Cut(s, "://"); ok {
		u, err := url.Parse(s)
		if err != nil || u.Host == "" {
			return fmt.Errorf("backend address %q is a URL: write HOST:PORT alone, without %q", s, scheme+"://")
		}
		host := u.Host
		if u.Port() == "" {
			if port, known := map[string]string{"http": "80", "https": "443"}[strings.ToLower(scheme)]; known {
				host = net.JoinHostPort(u.Hostname(), port)
			}
		}
		return fmt.Errorf("backend address %q is a URL: write HOST:PORT alone, %q (the proxy forwards bytes, whatever the protocol)", s, host)
	}
	prefix, rest, ok := strings.Cut(s, ":")
	if ok {
		switch strings.ToLower(prefix) {
		case "unix", "unix-connect", "unix-client", "abstract", "abstract-connect":
			if strings.HasPrefix(rest, "/") || strings.HasPrefix(rest, "@") {
				return fmt.Errorf("backend address %q: write the socket path alone, %q, without %q", s, rest, prefix+":")
			}
			if strings.HasPrefix(strings.ToLower(prefix), "abstract") && rest != "" {
				return fmt.Errorf("backend address %q: write an abstract socket as %q", s, "@"+rest)
			}
		case "tcp", "tcp4", "tcp6", "tcp-connect":
			if _, err := Parse(rest); err == nil && strings.Contains(rest, ":") {
				return fmt.Errorf("backend address %q: write HOST:PORT alone, %q, without %q", s, rest, prefix+":")
			}
		}
	}
	if before, _, found := strings.Cut(s, "/"); found && strings.Contains(before, ":") {
		return fmt.Errorf("backend address %q has a path: write HOST:PORT alone, %q", s, before)
	} else if found {
		return fmt.Errorf("backend address %q is a relative path: give the unix socket's absolute path, such as %q", s, "/run/"+path.Base(s))
	}
	if !ok {
		// No port, and a name ending like a socket file: "sock" and "socket"
		// are no top-level domains.
		if ext := strings.ToLower(path.Ext(s)); ext == ".sock" || ext == ".socket" {
			return fmt.Errorf("backend address %q looks like a unix socket file, not a host name: give its absolute path, such as %q", s, "/run/"+s)
		}
	}
	return nil
}

// splitHostPort accepts "[v6]:port" and "[v6]" (which the original rejects,
// systemd issue #35621), and otherwise splits at the last colon as the
// original does, so "::1:8080" is host "::1", port 8080.
func splitHostPort(s string) (host, port string, err error) {
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", "", fmt.Errorf("backend address %q has no closing ']': write [IPv6]:PORT", s)
		}
		host, rest := s[1:end], s[end+1:]
		if net.ParseIP(host) == nil || !strings.Contains(host, ":") {
			return "", "", fmt.Errorf("backend address %q: %q is not an IPv6 address; only IPv6 goes in brackets", s, host)
		}
		switch {
		case rest == "":
			return host, DefaultPort, nil
		case strings.HasPrefix(rest, ":"):
			return host, rest[1:], nil
		default:
			return "", "", fmt.Errorf("backend address %q: unexpected %q after ']': write [IPv6]:PORT", s, rest)
		}
	}
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		host, port = s, DefaultPort
	} else {
		host, port = s[:i], s[i+1:]
	}
	if host == "" {
		return "", "", fmt.Errorf("backend address %q has no host: write HOST:PORT, e.g. 127.0.0.1:80", s)
	}
	if strings.Contains(host, ":") {
		if net.ParseIP(host) == nil {
			return "", "", fmt.Errorf("backend address %q: %q is not an IPv6 address: write [IPv6]:PORT, e.g. [::1]:80", s, host)
		}
		return host, port, nil
	}
	if net.ParseIP(host) == nil && !isHostName(host) {
		return "", "", fmt.Errorf("backend address %q: %q is not a host name or IP address", s, host)
	}
	return host, port, nil
}

// isHostName allows the letters, digits, dots, hyphens and underscores that
// DNS names and /etc/hosts entries are made of; no name starts with a
// hyphen (RFC 1123), so an option that lands among the backend addresses
// ("-- -c5") is refused, not taken for a host.
func isHostName(h string) bool {
	if strings.HasPrefix(h, "-") {
		return false
	}
	for _, r := range h {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '_':
		default:
			return false
		}
	}
	return len(h) <= 253
}

// checkPort allows a number from 1 to 65535 or a service name from
// /etc/services, which the original also accepts through getaddrinfo.
func checkPort(s, port string) (string, error) {
	if port == "" {
		return "", fmt.Errorf("backend address %q has an empty port: write HOST:PORT with a port from 1 to 65535", s)
	}
	if n, err := strconv.Atoi(port); err == nil {
		if n < 1 || n > 65535 {
			return "", fmt.Errorf("backend address %q: port %d is out of range: use 1 to 65535", s, n)
		}
		return strconv.Itoa(n), nil
	}
	n, err := net.LookupPort("tcp", port)
	if err != nil || n == 0 {
		return "", fmt.Errorf("backend address %q: %q is not a port number or known service name: use 1 to 65535", s, port)
	}
	return strconv.Itoa(n), nil
}

// String prints the address so that Parse reads it back the same.
func (a Address) String() string {
	if a.Network == "unix" {
		return a.Path
	}
	return net.JoinHostPort(a.Host, a.Port)
}

// IsLiteral reports whether the host needs no name resolution.
func (a Address) IsLiteral() bool {
	return a.Network == "unix" || net.ParseIP(a.Host) != nil
}
