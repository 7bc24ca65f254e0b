package activation

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Kind is the type of a listening socket, which decides how its clients are
// forwarded and how the backend address is read: the three kinds a .socket
// unit can pass (ListenStream=, ListenDatagram=, ListenSequentialPacket=).
type Kind uint8

const (
	Stream           Kind = iota // SOCK_STREAM: TCP or unix, accepted connections
	Datagram                     // SOCK_DGRAM: UDP or unix, one flow per client address
	SequentialPacket             // SOCK_SEQPACKET: unix, accepted connections of messages
)

func (k Kind) String() string {
	switch k {
	case Datagram:
		return "datagram"
	case SequentialPacket:
		return "sequential-packet"
	}
	return "stream"
}

// kindOf maps SO_TYPE to a Kind; ok is false for a type no .socket unit
// passes to a proxy (SOCK_RAW and the like).
func kindOf(soType int) (Kind, bool) {
	switch soType {
	case unix.SOCK_STREAM:
		return Stream, true
	case unix.SOCK_DGRAM:
		return Datagram, true
	case unix.SOCK_SEQPACKET:
		return SequentialPacket, true
	}
	return 0, false
}

// packetListener lets a datagram socket stand in a Listener: nothing is
// accepted on it (the proxy reads its datagrams), but it closes, names its
// address and yields its descriptor like a listener does.
type packetListener struct {
	net.PacketConn
	// unlink is the socket file bound by --listen-datagram, removed on
	// close as a --listen unix stream socket's is; empty when systemd
	// owns the file.
	unlink string
}

var errNoAccept = errors.New("a datagram socket accepts no connections")

func (p *packetListener) Accept() (net.Conn, error) { return nil, errNoAccept }
func (p *packetListener) Addr() net.Addr            { return p.LocalAddr() }
func (p *packetListener) Close() error {
	err := p.PacketConn.Close()
	if p.unlink != "" {
		os.Remove(p.unlink)
	}
	return err
}

// SyscallConn yields the descriptor, which is what the proxy takes.
func (p *packetListener) SyscallConn() (syscall.RawConn, error) {
	return p.PacketConn.(syscall.Conn).SyscallConn()
}

var (
	_ net.Listener = (*packetListener)(nil)
	_ syscall.Conn = (*packetListener)(nil)
)

// wrapFile makes the Listener of an inherited socket of kind k.
func wrapFile(f *os.File, k Kind) (net.Listener, error) {
	if k == Datagram {
		pc, err := net.FilePacketConn(f)
		if err != nil {
			return nil, err
		}
		return &packetListener{PacketConn: pc}, nil
	}
	// Stream and sequential-packet sockets are listeners to Go ("tcp",
	// "unix", "unixpacket").
	return net.FileListener(f)
}

// ListenDatagram binds a datagram socket for --listen-datagram ADDR:
// HOST:PORT, [IPv6]:PORT or :PORT for UDP, a unix socket path or @abstract
// for a unix datagram socket, as ListenDatagram= reads them.
func ListenDatagram(addr string) (Listener, error) {
	network, err := packetNetwork(addr, "--listen-datagram", "udp", "unixgram")
	if err != nil {
		return Listener{}, err
	}
	var pl packetListener
	if network == "unixgram" && strings.HasPrefix(addr, "/") {
		if err := removeStaleDatagram(addr); err != nil {
			return Listener{}, err
		}
		pl.unlink = addr
	}
	pl.PacketConn, err = net.ListenPacket(network, addr)
	if err != nil {
		return Listener{}, fmt.Errorf("cannot listen on %q: %v", addr, unwrap(err))
	}
	return Listener{Listener: &pl, Name: addr, FD: -1, Kind: Datagram}, nil
}

// ListenSequentialPacket binds a unix SOCK_SEQPACKET listener for
// --listen-sequential-packet PATH (a path or @abstract), as
// ListenSequentialPacket= does.
func ListenSequentialPacket(addr string) (Listener, error) {
	if _, err := packetNetwork(addr, "--listen-sequential-packet", "", "unixpacket"); err != nil {
		return Listener{}, err
	}
	if strings.HasPrefix(addr, "/") {
		if err := removeStaleDatagram(addr); err != nil {
			return Listener{}, err
		}
	}
	ln, err := net.Listen("unixpacket", addr)
	if err != nil {
		return Listener{}, fmt.Errorf("cannot listen on %q: %v", addr, unwrap(err))
	}
	return Listener{Listener: ln, Name: addr, FD: -1, Kind: SequentialPacket}, nil
}

// packetNetwork reads addr for the option named flag: inet ("" when the
// option takes unix sockets only) for HOST:PORT, local for a path.
func packetNetwork(addr, flag, inet, local string) (string, error) {
	switch {
	case addr == "" && inet == "":
		return "", fmt.Errorf("empty %s address: give a unix socket path or @name", flag)
	case addr == "":
		return "", fmt.Errorf("empty %s address: give HOST:PORT, [IPv6]:PORT, a unix socket path or @name", flag)
	case strings.HasPrefix(addr, "/"), strings.HasPrefix(addr, "@") && len(addr) > 1:
		return local, nil
	case inet == "":
		return "", fmt.Errorf("%s address %q is not a unix socket: write /path or @name (sequential packets are unix only)", flag, addr)
	case !strings.Contains(addr, ":"):
		return "", fmt.Errorf("%s address %q has no port: write HOST:PORT, [IPv6]:PORT or :PORT", flag, addr)
	}
	return inet, nil
}

// removeStaleDatagram deletes a socket file left behind by a proxy that
// died, but only when nobody is bound to it: a datagram or seqpacket
// socket cannot be probed with a stream connect, so it probes with its own
// kind, and a live socket is an error naming the path.
func removeStaleDatagram(path string) error {
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		return nil // bind says what is wrong, if anything
	}
	for _, typ := range []int{unix.SOCK_DGRAM, unix.SOCK_SEQPACKET, unix.SOCK_STREAM} {
		fd, err := unix.Socket(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
		if err != nil {
			return nil
		}
		err = unix.Connect(fd, &unix.SockaddrUnix{Name: path})
		unix.Close(fd)
		switch {
		case err == nil, errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINPROGRESS):
			return fmt.Errorf("cannot listen on %q: a socket is bound there already: stop its owner or choose another path", path)
		case errors.Is(err, unix.EPROTOTYPE):
			continue // bound, but of another kind: ask with that one
		case errors.Is(err, unix.ECONNREFUSED):
			os.Remove(path) // nobody bound: left behind
		}
		return nil
	}
	return nil
}
