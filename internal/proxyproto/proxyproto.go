// SPDX-License-Identifier: Apache-2.0

// Package proxyproto writes the PROXY protocol header (HAProxy's
// proxy-protocol.txt, versions 1 and 2) that tells a backend who the client
// really is. The proxy sends it to the backend before any client byte.
package proxyproto

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strconv"
)

// Version selects the header format; None sends no header.
type Version int

const (
	None Version = iota
	V1           // text: "PROXY TCP4 1.2.3.4 5.6.7.8 1234 80\r\n"
	V2           // binary, with a 12-byte signature
)

// ParseVersion reads --proxy-protocol: "v1" or "v2" (or "1", "2"), or
// "none"/"" for no header.
func ParseVersion(s string) (Version, error) {
	switch s {
	case "", "none", "off":
		return None, nil
	case "v1", "1":
		return V1, nil
	case "v2", "2":
		return V2, nil
	}
	return None, fmt.Errorf("unknown PROXY protocol version %q: use v1 or v2", s)
}

// String is the flag's spelling.
func (v Version) String() string {
	switch v {
	case V1:
		return "v1"
	case V2:
		return "v2"
	}
	return "none"
}

// v2Signature starts every version 2 header.
var v2Signature = [12]byte{0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A}

// Header returns the header for a client at src that connected to dst.
// When either is not TCP (a unix socket client), the header says so:
// "PROXY UNKNOWN" in v1, the LOCAL command in v2, so the backend uses the
// connection's own addresses.
func Header(v Version, src, dst net.Addr) []byte {
	s, sok := src.(*net.TCPAddr)
	d, dok := dst.(*net.TCPAddr)
	known := sok && dok && s.IP != nil && d.IP != nil
	var sip, dip net.IP
	v4 := false
	if known {
		sip, dip = s.IP.To4(), d.IP.To4()
		v4 = sip != nil && dip != nil
		if !v4 {
			sip, dip = s.IP.To16(), d.IP.To16()
		}
	}
	switch v {
	case V1:
		if !known {
			return []byte("PROXY UNKNOWN\r\n")
		}
		family := "TCP6"
		if v4 {
			family = "TCP4"
		}
		return []byte("PROXY " + family + " " + ipText(sip) + " " + ipText(dip) + " " +
			strconv.Itoa(s.Port) + " " + strconv.Itoa(d.Port) + "\r\n")
	case V2:
		h := append([]byte(nil), v2Signature[:]...)
		if !known {
			// Version 2, LOCAL; family UNSPEC; no addresses.
			return append(h, 0x20, 0x00, 0x00, 0x00)
		}
		family, size := byte(0x21), 36 // TCP over IPv6
		if v4 {
			family, size = 0x11, 12 // TCP over IPv4
		}
		h = append(h, 0x21, family)
		h = binary.BigEndian.AppendUint16(h, uint16(size))
		h = append(h, sip...)
		h = append(h, dip...)
		h = binary.BigEndian.AppendUint16(h, uint16(s.Port))
		return binary.BigEndian.AppendUint16(h, uint16(d.Port))
	}
	return nil
}

// ipText prints a 4-byte IP as dotted quad and a 16-byte one as IPv6 text,
// even an IPv4-mapped one, which a TCP6 line must carry ("::ffff:1.2.3.4").
func ipText(ip net.IP) string {
	if len(ip) == net.IPv4len {
		return ip.String()
	}
	return netip.AddrFrom16([16]byte(ip)).String()
}

// DatagramHeader is the v2 header one UDP datagram starts with (family
// UDP over IPv4 or IPv6, as the specification allows a header per
// datagram); a v2 LOCAL header when either address is not an IP one.
func DatagramHeader(src, dst netip.AddrPort) []byte {
	if !src.IsValid() || !dst.IsValid() {
		return Header(V2, nil, nil)
	}
	h := Header(V2, net.TCPAddrFromAddrPort(src), net.TCPAddrFromAddrPort(dst))
	h[13]++ // TCP -> UDP: 0x11 -> 0x12, 0x21 -> 0x22
	return h
}
