package main

import (
	"github.com/socket-proxyd/socket-proxyd/internal/activation"
)

// listenPackets binds --listen-datagram and --listen-sequential-packet
// sockets after the others; on failure it closes every listener, those
// given included, and returns the error.
func listenPackets(listeners []activation.Listener, opts options) ([]activation.Listener, error) {
	binds := []struct {
		addrs  []string
		listen func(string) (activation.Listener, error)
	}{
		{opts.listenDatagram, activation.ListenDatagram},
		{opts.listenPacket, activation.ListenSequentialPacket},
	}
	for _, b := range binds {
		for _, addr := range b.addrs {
			l, err := b.listen(addr)
			if err != nil {
				activation.Close(listeners)
				return nil, err
			}
			listeners = append(listeners, l)
		}
	}
	return listeners, nil
}
