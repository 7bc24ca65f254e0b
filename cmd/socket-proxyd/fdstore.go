// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/handoff"
	"github.com/socket-proxyd/socket-proxyd/internal/notify"
)

// --fdstore (issue 10): on SIGTERM, hand every open connection to systemd's
// fd store instead of draining it, and take them back at the next start.

// fdstoreMode is --fdstore's value.
type fdstoreMode string

const (
	fdstoreNo     fdstoreMode = "no"
	fdstoreOnStop fdstoreMode = "on-stop"
)

func fdstore(p *fdstoreMode) func(string) error {
	return func(s string) error {
		switch fdstoreMode(s) {
		case fdstoreNo, fdstoreOnStop:
			*p = fdstoreMode(s)
			return nil
		case "always":
			return errors.New("always is not supported yet: use on-stop, which keeps every connection across a restart but not a crash")
		}
		return errors.New("must be no or on-stop")
	}
}

// storer is proxy.Config.Store: the descriptors under handoff.StoreName,
// then the record, in a memfd, under handoff.RecordName, so that a record
// in the store always comes with its descriptors.
type storer struct {
	socket string // NOTIFY_SOCKET
	// capacity is FileDescriptorStoreMax= as systemd >= 254 tells it
	// ($FDSTORE); 0 when not told. Past it systemd would close the
	// descriptors it has no room for, so nothing is stored and the
	// connections drain instead.
	capacity int
}

// storeCapacity reads $FDSTORE (systemd >= 254).
func storeCapacity(v string) int {
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// storeFunc is proxy.Config.Store for the mode: nil unless on-stop.
func storeFunc(mode fdstoreMode, socket, capacity string) func([]byte, []int) error {
	if mode != fdstoreOnStop {
		return nil
	}
	return (&storer{socket: socket, capacity: storeCapacity(capacity)}).store
}

func (s *storer) store(rec []byte, fds []int) error {
	if s.capacity > 0 && len(fds)+1 > s.capacity {
		return fmt.Errorf("the fd store holds %d descriptors (FileDescriptorStoreMax=), %d are needed: raise it", s.capacity, len(fds)+1)
	}
	mfd, err := handoff.Memfd(rec)
	if err != nil {
		return err
	}
	defer unix.Close(mfd)
	if err := notify.StoreFDs(s.socket, handoff.StoreName, fds); err != nil {
		notify.RemoveFDs(s.socket, handoff.StoreName) // no half a store
		return err
	}
	if err := notify.StoreFDs(s.socket, handoff.RecordName, []int{mfd}); err != nil {
		notify.RemoveFDs(s.socket, handoff.StoreName)
		return err
	}
	return nil
}

// takeOver returns the listeners to serve and, after a reload in place
// (carried names the record's memfd) or a restart through the fd store,
// the record of the connections to resume. A store whose record cannot be
// read costs its connections (reset, and logged), not the service.
func takeOver(carried string, resuming bool, notifySocket string, log *slog.Logger) ([]activation.Listener, *handoff.Record, error) {
	if resuming {
		rec, listeners, err := resume(carried)
		return listeners, rec, err
	}
	listeners, stored, err := activation.InheritedWithStored(handoff.IsStored, handoff.MaxFDs)
	if err != nil || len(stored) == 0 {
		return listeners, nil, err
	}
	rec, err := fromStore(notifySocket, stored)
	var more []activation.Listener
	if err == nil {
		more, err = carriedListeners(rec, false)
	}
	if err != nil {
		log.Error(err.Error())
		return listeners, nil, nil
	}
	return append(listeners, more...), rec, nil
}

// fromStore takes back what a previous instance stored: the record and
// the descriptors it names, matched by identity, then empties the store
// (a copy left there would keep a connection open after this instance
// closed it). Without a readable record, every stored descriptor is reset.
func fromStore(socket string, stored []activation.Stored) (*handoff.Record, error) {
	record := -1
	var fds []int
	for _, s := range stored {
		if s.Name == handoff.RecordName && record < 0 {
			record = s.FD
		} else {
			fds = append(fds, s.FD)
		}
	}
	defer func() {
		notify.RemoveFDs(socket, handoff.StoreName)
		notify.RemoveFDs(socket, handoff.RecordName)
	}()
	if record < 0 {
		handoff.Reset(fds)
		return nil, fmt.Errorf("the fd store holds %d descriptors but no record of them: they were reset", len(fds))
	}
	b, resolve, left, err := handoff.Stored(record, fds)
	var rec *handoff.Record
	var unused []int
	if err == nil {
		rec, unused, err = handoff.Decode(b, resolve)
	}
	if err != nil {
		handoff.Reset(fds)
		return nil, fmt.Errorf("cannot resume from the fd store, its connections were reset: %v", err)
	}
	handoff.Reset(unused)
	handoff.Reset(left())
	return rec, nil
}
