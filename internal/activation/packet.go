// SPDX-License-Identifier: Apache-2.0

package activation

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
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
	// unlink removes the socket file bound by --listen-datagram, on close,
	// as a --listen unix stream socket's is; nil when systemd owns it.
	unlink func()
	// addr is the path as given, for a socket bound through /proc.
	addr net.Addr
	// file is the socket file unlink removes.
	file FileID
}

var errNoAccept = errors.New("a datagram socket accepts no connections")

func (p *packetListener) Accept() (net.Conn, error) { return nil, errNoAccept }
func (p *packetListener) Addr() net.Addr {
	if p.addr != nil {
		return p.addr
	}
	return p.LocalAddr()
}

func (p *packetListener) Close() error {
	err := p.PacketConn.Close()
	if p.unlink != nil {
		p.unlink()
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
// HOST:PORT, [IPv6]:PORT or :PORT for UDP, a unix socket path (its file
// gets mode, and is handled as --listen's are) or @abstract for a unix
// datagram socket, as ListenDatagram= reads them.
func ListenDatagram(addr string, mode os.FileMode) (Listener, error) {
	network, err := packetNetwork(addr, "--listen-datagram", "udp", "unixgram")
	if err != nil {
		return Listener{}, err
	}
	if strings.HasPrefix(addr, "/") {
		return listenUnixPathOf(addr, mode, unix.SOCK_DGRAM)
	}
	if network == "udp" {
		if err := checkListenPort("--listen-datagram", addr); err != nil {
			return Listener{}, err
		}
		network = udpFamily(addr)
	}
	pc, err := net.ListenPacket(network, addr)
	if err != nil {
		return Listener{}, listenError(addr, err)
	}
	return Listener{Listener: &packetListener{PacketConn: pc}, Name: addr, FD: -1, Kind: Datagram}, nil
}

// udpFamily keeps an IPv4 address IPv4, as ListenDatagram=0.0.0.0:53 does:
// Go's "udp" would bind 0.0.0.0 as a dual-stack [::] socket. An IPv6 address
// is "udp6", and :PORT stays "udp", every address of both families.
func udpFamily(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return "udp"
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		switch {
		case ip.Is4():
			return "udp4"
		case ip.IsUnspecified():
			return "udp" // [::]: both families, as BindIPv6Only=default
		}
		return "udp6"
	}
	return "udp"
}

// ListenSequentialPacket binds a unix SOCK_SEQPACKET listener for
// --listen-sequential-packet PATH (a path, whose file gets mode, or
// @abstract), as ListenSequentialPacket= does.
func ListenSequentialPacket(addr string, mode os.FileMode) (Listener, error) {
	if _, err := packetNetwork(addr, "--listen-sequential-packet", "", "unixpacket"); err != nil {
		return Listener{}, err
	}
	if strings.HasPrefix(addr, "/") {
		return listenUnixPathOf(addr, mode, unix.SOCK_SEQPACKET)
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
	case strings.Contains(addr, "://") || !strings.Contains(addr, ":"):
		return "", tcpMistake(flag, addr)
	}
	return inet, nil
}
