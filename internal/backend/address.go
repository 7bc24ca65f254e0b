// Package backend is the server the proxy forwards to: its address as the
// user wrote it, checked at start-up, and the dialing of it per connection.
package backend

import (
	"fmt"
	"net"
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
		return Address{}, fmt.Errorf("empty backend address: give HOST:PORT, [IPv6]:PORT or a unix socket path")
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
// DNS names and /etc/hosts entries are made of.
func isHostName(h string) bool {
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
