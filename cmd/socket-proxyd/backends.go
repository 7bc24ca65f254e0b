// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sort"
	"strings"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/backend"
	"github.com/socket-proxyd/socket-proxyd/internal/proxy"
)

// checkBackends makes sure every listener has somewhere to go, its own
// backend from --backend NAME=ADDRESS or the default one, and that every
// NAME is a listener's (systemd #15599): a typo in a name would otherwise
// send that socket's clients to the default backend.
func checkBackends(listeners []activation.Listener, def []backend.Address, named map[string][]backend.Address) error {
	have := make(map[string]bool, 2*len(listeners))
	for _, l := range listeners {
		have[l.Name], have[l.Label()] = true, true
		if _, ok := proxy.NamedBackend(named, l); !ok && len(def) == 0 {
			return fmt.Errorf("socket %s has no backend: add --backend %s=ADDRESS, or give a default backend address", describe(l), l.Name)
		}
	}
	var unknown []string
	for name := range named {
		if !have[name] {
			unknown = append(unknown, name)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		var names []string
		for _, l := range listeners {
			names = append(names, describe(l))
		}
		return fmt.Errorf("--backend names no socket %q: the sockets are %s, each known by its name or by NAME/TYPE (set FileDescriptorName= in the .socket unit)",
			unknown[0], strings.Join(names, ", "))
	}
	return nil
}

// describe names a listener the way the user set it up.
func describe(l activation.Listener) string {
	if l.FD < 0 {
		flag := "--listen"
		switch l.Kind {
		case activation.Datagram:
			flag = "--listen-datagram"
		case activation.SequentialPacket:
			flag = "--listen-sequential-packet"
		}
		return fmt.Sprintf("%q (%s)", l.Name, flag)
	}
	return fmt.Sprintf("%q (fd %d)", l.Name, l.FD)
}

// announce logs one line per listener at start-up: what it is (its name,
// and the descriptor systemd passed), where it listens, so that the port
// of --listen 127.0.0.1:0 can be found, and where its clients go.
func announce(log *slog.Logger, listeners []activation.Listener, def []backend.Address, named map[string][]backend.Address, policy proxy.Balance) {
	for _, l := range listeners {
		b, ok := proxy.NamedBackend(named, l)
		if !ok {
			b = def
		}
		attrs := []any{"listener", l.Label()}
		if l.FD >= 0 {
			attrs = append(attrs, "fd", l.FD)
		}
		attrs = append(attrs, "address", l.Addr().String())
		if len(b) == 1 {
			attrs = append(attrs, "backend", b[0].String())
		} else {
			attrs = append(attrs, "backends", names(b), "balance", policy.String())
		}
		log.Info("listening", attrs...)
	}
	warnMissingSockets(log, listeners, def, named)
}

// warnMissingSockets says once, at start-up, which unix socket backends do
// not exist yet: their clients wait for them (up to --connect-timeout,
// then a reset), which is right while the backend is starting and a
// puzzle when its path is wrong.
func warnMissingSockets(log *slog.Logger, listeners []activation.Listener, def []backend.Address, named map[string][]backend.Address) {
	seen := map[string]bool{}
	for _, l := range listeners {
		b, ok := proxy.NamedBackend(named, l)
		if !ok {
			b = def
		}
		for _, a := range b {
			if a.Network != "unix" || strings.HasPrefix(a.Path, "@") || seen[a.Path] {
				continue
			}
			seen[a.Path] = true
			if _, err := os.Stat(a.Path); errors.Is(err, fs.ErrNotExist) {
				log.Warn("backend socket does not exist yet: its clients wait for it up to --connect-timeout, then are reset",
					"backend", a.Path)
			}
		}
	}
}

// names lists backends as log lines and STATUS= name them.
func names(list []backend.Address) []string {
	s := make([]string, len(list))
	for i, b := range list {
		s[i] = b.String()
	}
	return s
}
