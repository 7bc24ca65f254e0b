// SPDX-License-Identifier: Apache-2.0

package main

import (
	"strings"
	"testing"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/backend"
)

func TestCheckBackends(t *testing.T) {
	web := activation.Listener{Name: "web", FD: 3}
	admin := activation.Listener{Name: "admin", FD: 4}
	local := activation.Listener{Name: "/run/l.sock", FD: -1}
	def, _ := backend.Parse("127.0.0.1:8080")
	other, _ := backend.Parse("/run/admin.sock")
	var none []backend.Address
	defs := []backend.Address{def}
	tests := []struct {
		name      string
		listeners []activation.Listener
		def       []backend.Address
		named     map[string][]backend.Address
		mention   []string // empty: no error
	}{
		{name: "default only", listeners: []activation.Listener{web, admin}, def: defs},
		{name: "named and default", listeners: []activation.Listener{web, admin}, def: defs, named: map[string][]backend.Address{"admin": {other}}},
		{name: "all named", listeners: []activation.Listener{web, admin}, def: none, named: map[string][]backend.Address{"admin": {other}, "web": {def}}},
		{name: "listen address as name", listeners: []activation.Listener{local}, def: none, named: map[string][]backend.Address{"/run/l.sock": {def}}},
		{name: "socket without backend", listeners: []activation.Listener{web, admin}, def: none, named: map[string][]backend.Address{"admin": {other}},
			mention: []string{`"web" (fd 3)`, "--backend web=ADDRESS"}},
		{name: "unknown name", listeners: []activation.Listener{web, local}, def: defs, named: map[string][]backend.Address{"wbe": {other}},
			mention: []string{`"wbe"`, `"web" (fd 3)`, `"/run/l.sock" (--listen)`, "FileDescriptorName="}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkBackends(tt.listeners, tt.def, tt.named)
			if len(tt.mention) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, m := range tt.mention {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not mention %q", err, m)
				}
			}
		})
	}
}
