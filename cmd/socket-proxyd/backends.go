package main

import (
	"fmt"
	"sort"
	"strings"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/backend"
)

// checkBackends makes sure every listener has somewhere to go, its own
// backend from --backend NAME=ADDRESS or the default one, and that every
// NAME is a listener's (systemd #15599): a typo in a name would otherwise
// send that socket's clients to the default backend.
func checkBackends(listeners []activation.Listener, def backend.Address, named map[string]backend.Address) error {
	have := make(map[string]bool, len(listeners))
	for _, l := range listeners {
		have[l.Name] = true
		if _, ok := named[l.Name]; !ok && def.Network == "" {
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
		return fmt.Errorf("--backend names no socket %q: the sockets are %s (set FileDescriptorName= in the .socket unit)",
			unknown[0], strings.Join(names, ", "))
	}
	return nil
}

// describe names a listener the way the user set it up.
func describe(l activation.Listener) string {
	if l.FD < 0 {
		return fmt.Sprintf("%q (--listen)", l.Name)
	}
	return fmt.Sprintf("%q (fd %d)", l.Name, l.FD)
}
