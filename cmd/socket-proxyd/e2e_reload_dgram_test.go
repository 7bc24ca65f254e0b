// SPDX-License-Identifier: Apache-2.0

package main_test

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
)

// whoEchoes serves UDP: each datagram back to its sender, prefixed with the
// sender's address, so a client sees which flow (backend socket) carried it.
func whoEchoes(t *testing.T) string {
	return replyPackets(t, "udp", "127.0.0.1:0", func(from net.Addr) string { return from.String() + " " })
}

// TestReloadEveryKind: a reload carries a UDP flow (the backend keeps
// seeing the same source address: the same connected socket), a
// sequential-packet connection and a TCP connection, next to each other.
func TestReloadEveryKind(t *testing.T) {
	t.Parallel()
	dir := shortDir(t)
	seqBackend := filepath.Join(dir, "seq-be")
	serve(t, listenSeqpacket(t, seqBackend), echoMessages)
	_, tcpBackend := echoTCP(t, "127.0.0.1:0")
	udp := listenUDP(t)
	seq := listenSeqpacket(t, filepath.Join(dir, "seq"))
	tcpFD, tcpAddr := inheritTCP(t, "web")
	p := start(t, binary, launch{
		args: []string{tcpBackend, "--backend", "dns=" + whoEchoes(t), "--backend", "pkt=" + seqBackend},
		fds:  []inherited{{file: fileOf(t, udp), name: "dns"}, {file: fileOf(t, seq), name: "pkt"}, tcpFD},
	})
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	before := askDatagram(t, c, udp.LocalAddr(), "one")
	sc := dial(t, "unixpacket", filepath.Join(dir, "seq"))
	tc := dial(t, "tcp", tcpAddr)
	mustEcho(t, tc, 100)
	if _, err := sc.Write([]byte("message one")); err != nil {
		t.Fatal(err)
	}
	readExactly(t, sc, "message one")

	reloadTo(t, p, 1)
	if !strings.Contains(p.stderr.String(), "connections=2 reset=0 flows=1") {
		t.Errorf("the reload did not carry two connections and the flow:\n%s", p.stderr.String())
	}
	after := askDatagram(t, c, udp.LocalAddr(), "two")
	from := func(s string) string { f, _, _ := strings.Cut(s, " "); return f }
	if from(before) != from(after) || !strings.HasSuffix(after, " two") {
		t.Errorf("before the reload the backend saw %q, after %q: the flow was not carried", before, after)
	}
	if _, err := sc.Write([]byte("message two")); err != nil {
		t.Fatal(err)
	}
	readExactly(t, sc, "message two")
	mustEcho(t, tc, 100)
}
