// SPDX-License-Identifier: Apache-2.0

package proxyproto

import (
	"bufio"
	"bytes"
	"net"
	"net/netip"
	"testing"

	pp "github.com/pires/go-proxyproto"
)

func TestHeaderParsesWithReferenceLibrary(t *testing.T) {
	tcp := func(ip string, port int) *net.TCPAddr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: port} }
	unix := &net.UnixAddr{Name: "/run/x.sock", Net: "unix"}
	tests := []struct {
		name     string
		src, dst net.Addr
		want     pp.AddressFamilyAndProtocol
		local    bool
	}{
		{name: "ipv4", src: tcp("192.0.2.7", 51234), dst: tcp("127.0.0.1", 80), want: pp.TCPv4},
		{name: "ipv6", src: tcp("2001:db8::7", 51234), dst: tcp("::1", 443), want: pp.TCPv6},
		{name: "mixed families use ipv6", src: tcp("192.0.2.7", 1), dst: tcp("::1", 2), want: pp.TCPv6},
		{name: "unix client", src: unix, dst: unix, want: pp.UNSPEC, local: true},
	}
	for _, v := range []Version{V1, V2} {
		for _, tt := range tests {
			t.Run(v.String()+"/"+tt.name, func(t *testing.T) {
				raw := Header(v, tt.src, tt.dst)
				h, err := pp.Read(bufio.NewReader(bytes.NewReader(append(raw, "payload"...))))
				if err != nil {
					t.Fatalf("library rejects %q: %v", raw, err)
				}
				if h.TransportProtocol != tt.want {
					t.Fatalf("family %v, want %v", h.TransportProtocol, tt.want)
				}
				if tt.local {
					if v == V2 && h.Command != pp.LOCAL {
						t.Fatalf("v2 command %v for a unix client, want LOCAL", h.Command)
					}
					return
				}
				src, dst := h.SourceAddr.(*net.TCPAddr), h.DestinationAddr.(*net.TCPAddr)
				ws, wd := tt.src.(*net.TCPAddr), tt.dst.(*net.TCPAddr)
				if !src.IP.Equal(ws.IP) || src.Port != ws.Port || !dst.IP.Equal(wd.IP) || dst.Port != wd.Port {
					t.Fatalf("addresses %v -> %v, want %v -> %v", src, dst, ws, wd)
				}
			})
		}
	}
}

func TestV1Text(t *testing.T) {
	got := string(Header(V1, &net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 5000}, &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 80}))
	if want := "PROXY TCP4 192.0.2.7 127.0.0.1 5000 80\r\n"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestParseVersion(t *testing.T) {
	for in, want := range map[string]Version{"": None, "none": None, "v1": V1, "1": V1, "v2": V2, "2": V2} {
		if got, err := ParseVersion(in); err != nil || got != want {
			t.Errorf("ParseVersion(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseVersion("v3"); err == nil {
		t.Error("v3 accepted")
	}
}

// TestDatagramHeader: a v2 header per UDP datagram says UDP (0x12, 0x22),
// and LOCAL without IP addresses.
func TestDatagramHeader(t *testing.T) {
	for _, tt := range []struct {
		src, dst string
		family   byte
		size     int
	}{
		{"192.0.2.1:5353", "198.51.100.1:53", 0x12, 16 + 12},
		{"[2001:db8::1]:5353", "[2001:db8::2]:53", 0x22, 16 + 36},
	} {
		h := DatagramHeader(netip.MustParseAddrPort(tt.src), netip.MustParseAddrPort(tt.dst))
		if len(h) != tt.size || h[12] != 0x21 || h[13] != tt.family {
			t.Errorf("%s -> %s: % x", tt.src, tt.dst, h)
		}
	}
	if h := DatagramHeader(netip.AddrPort{}, netip.MustParseAddrPort("127.0.0.1:53")); len(h) != 16 || h[12] != 0x20 {
		t.Errorf("unix client: % x, want a LOCAL header", h)
	}
}
