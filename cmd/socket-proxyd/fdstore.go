// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/socket-proxyd/socket-proxyd/internal/activation"
	"github.com/socket-proxyd/socket-proxyd/internal/handoff"
	"github.com/socket-proxyd/socket-proxyd/internal/notify"
)

// --fdstore: on SIGTERM, hand every open connection to systemd's
// fd store instead of draining it, and take them back at the next start;
// always: also put each connection in the store as it opens, so that a
// crash followed by a restart loses none either.

// fdstoreMode is --fdstore's value.
type fdstoreMode string

const (
	fdstoreNo     fdstoreMode = "no"
	fdstoreOnStop fdstoreMode = "on-stop"
	fdstoreAlways fdstoreMode = "always"
)

func fdstore(p *fdstoreMode) func(string) error {
	return func(s string) error {
		switch fdstoreMode(s) {
		case fdstoreNo, fdstoreOnStop, fdstoreAlways:
			*p = fdstoreMode(s)
			return nil
		}
		return errors.New("must be no, on-stop or always")
	}
}

// storer is proxy.Config.Store: the record, in a memfd, under
// handoff.RecordName, then the descriptors under handoff.StoreName. The
// record goes first: a store too small for all (systemd 252 does not say
// its size, and closes what does not fit, the last ones first) then keeps
// the record, and the next instance resets only the connections whose
// descriptors are missing, instead of all of them for want of a record.
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

// storeFunc is proxy.Config.Store for the mode: nil unless on-stop or
// always.
func storeFunc(mode fdstoreMode, socket, capacity string) func([]byte, []int) error {
	if mode == fdstoreNo {
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
	if err := notify.StoreFDs(s.socket, handoff.RecordName, []int{mfd}); err != nil {
		notify.RemoveFDs(s.socket, handoff.RecordName)
		return err
	}
	if err := notify.StoreFDs(s.socket, handoff.StoreName, fds); err != nil {
		notify.RemoveFDs(s.socket, handoff.StoreName) // no half a store
		notify.RemoveFDs(s.socket, handoff.RecordName)
		return err
	}
	return nil
}

// keeper is proxy.Config.Keep and Forget for --fdstore=always: each kept
// connection goes to the store as one capsule (handoff.Capsule) under its
// own name, over one socket to NOTIFY_SOCKET for the proxy's life; the
// count of capsules is held against $FDSTORE when systemd tells it (>= 254;
// systemd 252 would close what does not fit, and say nothing).
type keeper struct {
	conn     *notify.Conn
	capacity int
	held     int
	log      *slog.Logger
}

func newKeeper(socket, capacity string, recovered int, log *slog.Logger) (*keeper, error) {
	c, err := notify.Dial(socket)
	if err != nil {
		return nil, err
	}
	return &keeper{conn: c, capacity: storeCapacity(capacity), held: recovered, log: log}, nil
}

func (k *keeper) keep(name string, fds []int) error {
	if k.capacity > 0 && k.held+1 > k.capacity {
		return fmt.Errorf("the fd store holds at most %d descriptors (FileDescriptorStoreMax=), one per kept connection, and is full: raise it", k.capacity)
	}
	capsule, err := handoff.Capsule(name, fds)
	if err != nil {
		return err
	}
	defer unix.Close(capsule) // the store's copy holds it
	if err := k.conn.Store(name, []int{capsule}); err != nil {
		return err
	}
	k.held++
	return nil
}

func (k *keeper) forget(name string) {
	k.held = max(k.held-1, 0)
	if err := k.conn.Remove(name); err != nil {
		k.log.Warn("cannot take a closed connection out of the fd store", "name", name, "error", err.Error())
	}
}

// takeOver returns the listeners to serve and, after a reload in place
// (carried names the record's memfd) or a restart through the fd store,
// the record of the connections to resume; after a crash with
// --fdstore=always, the kept connections found in the store, by name. A
// store whose record cannot be read costs its connections (reset, and
// logged), not the service.
func takeOver(carried string, resuming bool, files map[string]activation.FileID, notifySocket string, log *slog.Logger) ([]activation.Listener, *handoff.Record, map[string][]int, error) {
	if resuming {
		rec, listeners, err := resume(carried, files)
		return listeners, rec, nil, err
	}
	listeners, stored, err := activation.InheritedWithStored(handoff.IsStored, handoff.MaxFDs)
	if err != nil || len(stored) == 0 {
		return listeners, nil, nil, err
	}
	rec, kept, err := fromStore(notifySocket, stored)
	var more []activation.Listener
	if err == nil && rec != nil {
		more, err = carriedListeners(rec, false, nil)
	}
	if err != nil {
		log.Error(err.Error())
		return listeners, nil, nil, nil
	}
	return append(listeners, more...), rec, kept, nil
}

// fromStore takes back what a previous instance stored: the record and
// the descriptors it names, matched by identity, then empties the store of
// them (a copy left there would keep a connection open after this instance
// closed it). Without a readable record, every stored descriptor is reset,
// but those of kept connections (--fdstore=always), which are returned by
// name for the proxy to recover, and stay in the store.
func fromStore(socket string, stored []activation.Stored) (*handoff.Record, map[string][]int, error) {
	record := -1
	var fds, plain []int
	kept := map[string][]int{}
	for _, s := range stored {
		switch {
		case s.Name == handoff.RecordName && record < 0:
			record = s.FD
		case handoff.IsKept(s.Name):
			label, inside, err := handoff.OpenCapsule(s.FD)
			switch {
			case err != nil:
				notify.RemoveFDs(socket, s.Name)
			case label != s.Name || kept[s.Name] != nil:
				handoff.Reset(inside) // not ours, or a second capsule of the name
			default:
				kept[s.Name] = inside
				fds = append(fds, inside...)
			}
		default:
			plain = append(plain, s.FD)
			fds = append(fds, s.FD)
		}
	}
	defer func() {
		notify.RemoveFDs(socket, handoff.StoreName)
		notify.RemoveFDs(socket, handoff.RecordName)
	}()
	if record < 0 {
		if len(plain) > 0 {
			handoff.Reset(plain)
			return nil, kept, fmt.Errorf("the fd store holds %d descriptors but no record of them: they were reset (was FileDescriptorStoreMax= too small? a connection needs up to 6, and the record 1)", len(plain))
		}
		return nil, kept, nil // a crash: only kept connections
	}
	b, resolve, left, err := handoff.Stored(record, fds)
	var rec *handoff.Record
	var unused []int
	if err == nil {
		rec, unused, err = handoff.Decode(b, resolve)
	}
	if err != nil {
		handoff.Reset(fds)
		for name := range kept {
			notify.RemoveFDs(socket, name)
		}
		return nil, nil, fmt.Errorf("cannot resume from the fd store, its connections were reset: %v", err)
	}
	unused = append(unused, left()...)
	handoff.Reset(unused)
	reset := make(map[int]bool, len(unused))
	for _, fd := range unused {
		reset[fd] = true
	}
	for name, group := range kept {
		if slices.ContainsFunc(group, func(fd int) bool { return reset[fd] }) {
			notify.RemoveFDs(socket, name) // the record did not have it whole
		}
	}
	return rec, nil, nil
}
