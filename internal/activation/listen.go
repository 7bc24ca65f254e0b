package activation

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
)

// Listen binds a listener for --listen ADDR: HOST:PORT, [IPv6]:PORT, :PORT
// (every address), a unix socket path, or @abstract.
func Listen(addr string) (Listener, error) {
	network := "tcp"
	switch {
	case addr == "":
		return Listener{}, errors.New("empty --listen address: give HOST:PORT, [IPv6]:PORT, a unix socket path or @name")
	case strings.HasPrefix(addr, "/"), strings.HasPrefix(addr, "@"):
		network = "unix"
		if strings.HasPrefix(addr, "/") {
			removeStaleSocket(addr)
		}
	case !strings.Contains(addr, ":"):
		return Listener{}, fmt.Errorf("--listen address %q has no port: write HOST:PORT, [IPv6]:PORT or :PORT", addr)
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return Listener{}, fmt.Errorf("cannot listen on %q: %v", addr, unwrap(err))
	}
	return Listener{Listener: ln, Name: addr, FD: -1}, nil
}

// removeStaleSocket deletes a socket file left behind by a proxy that died,
// but only when nobody answers on it: a live listener is never taken over.
func removeStaleSocket(path string) {
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		return
	}
	c, err := net.Dial("unix", path)
	if err == nil {
		c.Close()
		return
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		os.Remove(path)
	}
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
	return err
}

// FromFD adopts a listening socket carried over a reload under its name;
// bound says it was bound for --listen (a unix path is then the proxy's to
// unlink on the way out, as after Listen). The descriptor is checked like an
// inherited one, and closed: the listener holds a duplicate.
func FromFD(fd int, name string, bound bool) (Listener, error) {
	where := fmt.Sprintf("carried fd %d (%q)", fd, name)
	if err := checkFD(fd, where); err != nil {
		return Listener{}, err
	}
	f := os.NewFile(uintptr(fd), name)
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return Listener{}, fmt.Errorf("%s: %v", where, err)
	}
	if u, ok := ln.(*net.UnixListener); ok && bound && strings.HasPrefix(name, "/") {
		u.SetUnlinkOnClose(true)
	}
	if bound {
		fd = -1
	}
	return Listener{Listener: ln, Name: name, FD: fd}, nil
}
