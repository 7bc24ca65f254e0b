// SPDX-License-Identifier: Apache-2.0

package main_test

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
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

// TestReloadKeepsTheKindOfSocketsItBound: a sequential-packet socket the
// proxy bound itself (--listen-sequential-packet) comes back from a reload
// as one, under its label: a --backend that names it by label and kind
// still finds it, and new clients keep their message boundaries.
func TestReloadKeepsTheKindOfSocketsItBound(t *testing.T) {
	t.Parallel()
	dir := shortDir(t)
	seqBackend := filepath.Join(dir, "seq-be")
	serve(t, listenSeqpacket(t, seqBackend), echoMessages)
	_, tcpBackend := echoTCP(t, "127.0.0.1:0")
	seqPath := filepath.Join(dir, "seq")
	p := start(t, binary, launch{args: []string{tcpBackend,
		"--listen-sequential-packet", seqPath, "--backend", seqPath + "/unixpacket=" + seqBackend}})
	before := dialRetry(t, "unixpacket", seqPath, 10*time.Second)
	if _, err := before.Write([]byte("before")); err != nil {
		t.Fatal(err)
	}
	readExactly(t, before, "before")

	reloadTo(t, p, 1)
	label := "listener=" + seqPath + "/unixpacket"
	if n := strings.Count(p.stderr.String(), label); n < 2 {
		t.Errorf("the reloaded image does not list %s:\n%s", label, p.stderr.String())
	}
	after := dial(t, "unixpacket", seqPath)
	for _, m := range []string{"one", "two"} {
		if _, err := after.Write([]byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	readExactly(t, after, "one")
	readExactly(t, after, "two")
	if _, err := before.Write([]byte("carried")); err != nil {
		t.Fatal(err)
	}
	readExactly(t, before, "carried")
}
