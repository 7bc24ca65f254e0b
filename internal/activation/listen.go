// SPDX-License-Identifier: Apache-2.0

package activation

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// DefaultSocketMode is the mode of a --listen unix socket file unless told
// otherwise: systemd's SocketMode= default, so any local user may connect,
// as to the sockets a .socket unit creates.
const DefaultSocketMode os.FileMode = 0o666

// Listen binds a listener for --listen ADDR with DefaultSocketMode.
func Listen(addr string) (Listener, error) {
	return ListenMode(addr, DefaultSocketMode)
}

// ListenMode binds a listener for --listen ADDR: HOST:PORT, [IPv6]:PORT,
// :PORT (every address), an absolute unix socket path, whose file gets
// mode, or @abstract.
func ListenMode(addr string, mode os.FileMode) (Listener, error) {
	return ListenFor("--listen", addr, mode)
}

// ListenFor is ListenMode for the option named flag (--listen, --metrics),
// which its error messages name.
func ListenFor(flag, addr string, mode os.FileMode) (Listener, error) {
	switch {
	case addr == "":
		return Listener{}, fmt.Errorf("empty %s address: give HOST:PORT, [IPv6]:PORT, an absolute unix socket path or @name", flag)
	case strings.HasPrefix(addr, "/"):
		return listenUnixPath(addr, mode)
	case strings.HasPrefix(addr, "@"):
		if err := unixAddressFits(addr); err != nil {
			return Listener{}, err
		}
		ln, err := net.Listen("unix", addr)
		if err != nil {
			return Listener{}, fmt.Errorf("cannot listen on %q: %v", addr, unwrap(err))
		}
		return Listener{Listener: ln, Name: addr, FD: -1}, nil
	}
	if err := tcpMistake(flag, addr); err != nil {
		return Listener{}, err
	}
	if err := checkListenPort(flag, addr); err != nil {
		return Listener{}, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return Listener{}, listenError(addr, err)
	}
	return Listener{Listener: ln, Name: addr, FD: -1}, nil
}

// CheckListen says what is wrong with the address of a --listen,
// --listen-datagram, --listen-sequential-packet or --metrics option
// (flag), as binding it would, but without binding: --check runs beside
// the proxy that holds the address.
func CheckListen(flag, addr string) error {
	if err := checkListen(flag, addr); err != nil {
		return err
	}
	if strings.HasPrefix(addr, "/") || strings.HasPrefix(addr, "@") {
		return unixAddressFits(addr)
	}
	return nil
}

// unixAddressFits says whether a unix socket address can be bound as
// binding makes it, without binding: an abstract name after a NUL byte
// within sun_path (108 bytes); a socket file's path through the same
// steps as listenUnixPath (a file name, its directory opened, the bind
// address within sun_path), the directory closed again.
func unixAddressFits(addr string) error {
	if name, ok := strings.CutPrefix(addr, "@"); ok {
		if len(name) >= maxSunPath {
			return fmt.Errorf("cannot listen on %q: the abstract name is %d bytes long; the limit is %d: use a shorter name", addr, len(name), maxSunPath-1)
		}
		return nil
	}
	clean, dirName, name, err := splitSocketPath(addr)
	if err != nil {
		return err
	}
	dir, err := openSocketDir(addr, dirName)
	if err != nil {
		return err
	}
	defer unix.Close(dir)
	_, err = bindPath(addr, clean, name, dir)
	return err
}

func checkListen(flag, addr string) error {
	switch flag {
	case "--listen-datagram":
		if _, err := packetNetwork(addr, flag, "udp", "unixgram"); err != nil {
			return err
		}
	case "--listen-sequential-packet":
		_, err := packetNetwork(addr, flag, "", "unixpacket")
		return err
	default:
		if addr == "" {
			return errors.New("empty --listen address: give HOST:PORT, [IPv6]:PORT, an absolute unix socket path or @name")
		}
		if strings.HasPrefix(addr, "/") || strings.HasPrefix(addr, "@") {
			return nil
		}
		if err := tcpMistake(flag, addr); err != nil {
			return err
		}
	}
	if strings.HasPrefix(addr, "/") || strings.HasPrefix(addr, "@") {
		return nil
	}
	return checkListenPort(flag, addr)
}

// checkListenPort refuses a HOST:PORT whose port is neither a number from
// 0 to 65535 nor a service name, saying so, where Go would say "lookup
// tcp/80x: unknown port".
func checkListenPort(flag, addr string) error {
	_, port, _ := cutLast(addr, ":")
	if n, err := strconv.Atoi(port); err == nil {
		if n < 0 || n > 65535 {
			return fmt.Errorf("%s address %q: port %d is out of range: use 1 to 65535 (0 picks a free one)", flag, addr, n)
		}
		return nil
	}
	if _, err := net.LookupPort("tcp", port); err != nil || port == "" {
		return fmt.Errorf("%s address %q: %q is not a port number or known service name: use 1 to 65535 (0 picks a free one)", flag, addr, port)
	}
	return nil
}

// listenError is a failed bind of addr, with what to do about a port
// below 1024 that an unprivileged process may not bind.
func listenError(addr string, err error) error {
	err = unwrap(err)
	if errors.Is(err, syscall.EACCES) {
		if _, port, ok := cutLast(addr, ":"); ok {
			if n, perr := strconv.Atoi(port); perr == nil && n > 0 && n < 1024 {
				return fmt.Errorf("cannot listen on %q: %v: ports below 1024 need privilege: let systemd bind it (a .socket unit, or systemd-socket-activate -l), or give the service AmbientCapabilities=CAP_NET_BIND_SERVICE", addr, err)
			}
		}
	}
	if errors.Is(err, syscall.EAFNOSUPPORT) {
		return fmt.Errorf("cannot listen on %q: %v: the service may not open IP sockets (RestrictAddressFamilies= or PrivateNetwork= in its unit): listen on a unix socket path instead, or allow AF_INET and AF_INET6", addr, err)
	}
	return fmt.Errorf("cannot listen on %q: %v", addr, err)
}

// tcpMistake says what to write instead of an address for the option
// named flag that is not HOST:PORT, for the slips users make.
func tcpMistake(flag, addr string) error {
	host, port, found := cutLast(addr, ":")
	switch {
	case strings.Contains(addr, "://"):
		return fmt.Errorf("%s address %q is a URL: give HOST:PORT, such as %q", flag, addr, urlHostPort(addr))
	case strings.Contains(addr, "/"):
		return fmt.Errorf("%s address %q is a relative path: give the unix socket's absolute path, such as %q", flag, addr, "/run/"+path.Base(addr))
	case !found:
		if ext := path.Ext(addr); ext == ".sock" || ext == ".socket" {
			return fmt.Errorf("%s address %q looks like a unix socket file: give its absolute path, such as %q", flag, addr, "/run/"+addr)
		}
		if _, err := strconv.ParseUint(addr, 10, 16); err == nil {
			return fmt.Errorf("%s address %q is a port alone: write %q for every address (as ListenStream=%s), or HOST:%s", flag, addr, ":"+addr, addr, addr)
		}
		return fmt.Errorf("%s address %q has no port: write HOST:PORT, [IPv6]:PORT or :PORT", flag, addr)
	case strings.Contains(host, ":") && !strings.HasPrefix(host, "["):
		// Go says "too many colons"; the backend splits at the last colon
		// as the original does, but a new option can ask for the clear form.
		return fmt.Errorf("%s address %q: write an IPv6 address in brackets, %q", flag, addr, "["+host+"]:"+port)
	}
	return nil
}

// urlHostPort is the HOST:PORT of a URL, the scheme's port when it has
// none (80 for http, 443 for https).
func urlHostPort(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return "127.0.0.1:8080"
	}
	if u.Port() != "" {
		return u.Host
	}
	port := "80"
	if u.Scheme == "https" {
		port = "443"
	}
	return net.JoinHostPort(u.Hostname(), port)
}

func cutLast(s, sep string) (before, after string, found bool) {
	if i := strings.LastIndex(s, sep); i >= 0 {
		return s[:i], s[i+len(sep):], true
	}
	return s, "", false
}

// unwrap keeps the system's reason from a net.OpError; the caller already
// names the address.
func unwrap(err error) error {
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		var sysErr *os.SyscallError
		if errors.As(opErr.Err, &sysErr) {
			return sysErr.Err
		}
		return opErr.Err
	}
	var sysErr *os.SyscallError
	if errors.As(err, &sysErr) {
		return sysErr.Err
	}
	return err
}

// FromFD adopts a listening socket carried over a reload under its name;
// bound says it was bound for --listen (a unix path is then the proxy's to
// unlink on the way out, as after Listen: the file file names, the image
// before said, or whatever is there when it did not say). The descriptor is
// checked like an inherited one, and closed: the listener holds a duplicate.
func FromFD(fd int, name string, bound bool, file FileID) (Listener, error) {
	where := fmt.Sprintf("carried fd %d (%q)", fd, name)
	kind, err := checkFD(fd, where)
	if err != nil {
		return Listener{}, err
	}
	f := os.NewFile(uintptr(fd), name)
	ln, err := wrapFile(f, kind)
	f.Close()
	if err != nil {
		return Listener{}, fmt.Errorf("%s: %v", where, err)
	}
	if bound && strings.HasPrefix(name, "/") {
		ln = adoptPath(ln, name, file)
	}
	if bound {
		fd = -1
	}
	return Listener{Listener: ln, Kind: kind, Name: name, FD: fd}, nil
}

// isRefused reports whether a dial found a socket file nobody listens on.
func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }
