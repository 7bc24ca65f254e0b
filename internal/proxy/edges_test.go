// SPDX-License-Identifier: Apache-2.0

package proxy

import (
	"bytes"
	"crypto/sha256"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
)

// Issue 12: reads stop short at an urgent mark (TCP and unix MSG_OOB) and
// after a unix message carrying descriptors, with bytes waiting behind; a
// proxy that takes such a short read, a splice that returns 0, or EAGAIN
// from splice as "empty" or "ended" loses or holds back what follows.

// edgeProxy starts a proxy in front of handle, over TCP or unix sockets.
func edgeProxy(t *testing.T, network string, handle func(net.Conn)) *running {
	t.Helper()
	if network == "tcp" {
		return start(t, listenBackend(t, "tcp", "127.0.0.1:0", handle), Config{})
	}
	dir := shortDir(t)
	back := listenBackend(t, "unix", filepath.Join(dir, "b"), handle)
	ln, err := activation.Listen(filepath.Join(dir, "p"))
	if err != nil {
		t.Fatal(err)
	}
	return startOn(t, ln, back, Config{})
}

// writeWithUrgent writes before, one urgent byte 'U', then after.
func writeWithUrgent(t *testing.T, c net.Conn, before, after []byte) {
	t.Helper()
	if _, err := c.Write(before); err != nil {
		t.Errorf("write: %v", err)
		return
	}
	sendUrgent(t, c, 'U')
	if _, err := c.Write(after); err != nil {
		t.Errorf("write: %v", err)
	}
}

func closeWrite(c net.Conn) { c.(interface{ CloseWrite() error }).CloseWrite() }

func TestUrgentByteStaysInTheStream(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		for _, tc := range []struct {
			name          string
			before, after []byte
			fin           bool // the sender half-closes after the bytes
		}{
			// Small messages, no FIN: a request waits for its reply, so
			// held-back bytes show as a stall.
			{name: "small", before: []byte("AAAA"), after: []byte("CCCC")},
			// Bulk then FIN: splice stops at the mark and, with the FIN
			// behind it, returns 0; the bytes after the mark were lost.
			{name: "bulk", before: randomBytes(t, 4<<20), after: randomBytes(t, 1<<20), fin: true},
		} {
			want := append(append(append([]byte(nil), tc.before...), 'U'), tc.after...)
			wantSum := sha256.Sum256(want)
			t.Run(network+"/"+tc.name+"/client-to-backend", func(t *testing.T) {
				p := edgeProxy(t, network, func(c net.Conn) {
					c.SetDeadline(time.Now().Add(20 * time.Second))
					got := make([]byte, len(want))
					if _, err := io.ReadFull(c, got); err != nil {
						c.Write([]byte("short read: " + err.Error()))
						return
					}
					if tc.fin {
						if n, _ := io.Copy(io.Discard, c); n != 0 {
							c.Write([]byte("bytes after the end"))
							return
						}
					}
					sum := sha256.Sum256(got)
					c.Write(sum[:])
				})
				c := edgeDial(t, network, p.addr)
				go func() {
					writeWithUrgent(t, c, tc.before, tc.after)
					if tc.fin {
						closeWrite(c)
					}
				}()
				reply, err := io.ReadAll(c)
				if !bytes.Equal(reply, wantSum[:]) {
					t.Fatalf("backend replied %q (read error %v): it did not get the %d bytes with the urgent byte in order",
						reply, err, len(want))
				}
			})
			t.Run(network+"/"+tc.name+"/backend-to-client", func(t *testing.T) {
				p := edgeProxy(t, network, func(c net.Conn) {
					writeWithUrgent(t, c, tc.before, tc.after)
					if tc.fin {
						closeWrite(c)
					}
					c.SetDeadline(time.Now().Add(20 * time.Second))
					io.Copy(io.Discard, c) // until the client is done
				})
				c := edgeDial(t, network, p.addr)
				got := make([]byte, len(want))
				if n, err := io.ReadFull(c, got); err != nil {
					t.Fatalf("client got %d of %d bytes: %v", n, len(want), err)
				}
				if !bytes.Equal(got, want) {
					t.Fatal("client got the bytes out of order")
				}
				if tc.fin {
					if rest, err := io.ReadAll(c); len(rest) != 0 || err != nil {
						t.Fatalf("after the bytes: %d more, %v; want a clean EOF", len(rest), err)
					}
				}
			})
		}
	}
}

func TestDescriptorsDoNotStallTheStream(t *testing.T) {
	for _, dir := range []string{"client-to-backend", "backend-to-client"} {
		t.Run(dir, func(t *testing.T) {
			// The descriptor sent is a pipe's write end; once every copy
			// is closed (ours below, the kernel's for the proxy), its
			// read end sees EOF: the proxy kept no descriptor.
			pr, pw, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer pr.Close()
			// talk sends "AAAA" with the descriptor, then "BBBB" as a
			// message of its own, and expects "OK" for the 8 bytes.
			talk := func(c net.Conn) {
				sendWithDescriptor(t, c.(*net.UnixConn), []byte("AAAA"), pw)
				if _, err := c.Write([]byte("BBBB")); err != nil {
					t.Errorf("write: %v", err)
				}
			}
			answer := func(c net.Conn) error {
				got := make([]byte, 8)
				if _, err := io.ReadFull(c, got); err != nil {
					return err
				}
				if string(got) != "AAAABBBB" {
					c.Write([]byte("NO"))
					return nil
				}
				_, err := c.Write([]byte("OK"))
				return err
			}
			reply := make(chan string, 1)
			p := edgeProxy(t, "unix", func(c net.Conn) {
				c.SetDeadline(time.Now().Add(20 * time.Second))
				if dir == "client-to-backend" {
					answer(c)
				} else {
					talk(c)
					b := make([]byte, 2)
					io.ReadFull(c, b)
					reply <- string(b)
				}
				io.Copy(io.Discard, c)
			})
			c := edgeDial(t, "unix", p.addr)
			if dir == "client-to-backend" {
				talk(c)
				b := make([]byte, 2)
				if _, err := io.ReadFull(c, b); err != nil {
					t.Fatalf("no reply to the 8 bytes (stalled after the descriptor?): %v", err)
				}
				reply <- string(b)
			} else if err := answer(c); err != nil {
				t.Fatalf("client did not get the 8 bytes (stalled after the descriptor?): %v", err)
			}
			if got := <-reply; got != "OK" {
				t.Fatalf("reply %q, want OK: the bytes around the descriptor were not forwarded in order", got)
			}
			pw.Close()
			pr.SetReadDeadline(time.Now().Add(10 * time.Second))
			if n, err := pr.Read(make([]byte, 1)); err != io.EOF {
				t.Fatalf("the passed descriptor is still open somewhere: read %d, %v", n, err)
			}
			c.Close()
			waitFor(t, "the connection to close", func() bool { return p.srv.Stats().Active == 0 })
			if !bytes.Contains([]byte(p.logs.String()), []byte("descriptors passed over the connection were closed")) {
				t.Errorf("no debug line says descriptors are not passed on; logs:\n%s", p.logs)
			}
		})
	}
}
