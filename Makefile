# SPDX-License-Identifier: Apache-2.0
# socket-proxyd: build, test, install, package.
#
#   make                 build ./socket-proxyd (version and commit from git)
#   make test            go test -race ./...   (what the README and .ci/run run)
#   make bench           the benchmark harness: go run ./cmd/proxybench
#   make chaos           seeded chaos: go run ./cmd/proxychaos (DURATION=1h, SEED=N, CHAOSFLAGS=...)
#   make chaos-bites     each defect the chaos harness found, put back by a patch: it must find it (test/chaos/bites.sh)
#   make install         install into $(DESTDIR)$(PREFIX) (PREFIX=/usr/local)
#   make uninstall       remove what make install installed (same PREFIX/DESTDIR)
#   make deb             build/socket-proxyd_VERSION_ARCH.deb  } with nfpm, from one
#   make rpm             build/socket-proxyd-VERSION-1.ARCH.rpm } packaging/nfpm.yaml
#   make package-test    both packages: reproducible, hold what make install installs,
#                        the rpm installs into a scratch root (test/packaging/run.sh)
#   make man-check       the man page renders without warnings, and its options match --help
#   make verify-units    systemd-analyze verify and security (exposure <= 1.0) on contrib/systemd
#   make systemd-test    the units and the .deb under a real systemd in a container (root)
#   make deb-test        only the .deb part of systemd-test (root)
#   make mutants         mutation testing of internal/... with gremlins (slow: see RELIABILITY.md)
#   make mutants-case    the case-expression mutants gremlins never runs (test/mutants/casemutants)
#   make clean
#
# Installed files (PREFIX=/usr/local; the .deb uses PREFIX=/usr):
#   $(BINDIR)/socket-proxyd                        BINDIR=$(PREFIX)/bin
#   $(MANDIR)/man8/socket-proxyd.8                 MANDIR=$(PREFIX)/share/man
#   $(UNITDIR)/*.{socket,service} of contrib/systemd UNITDIR=$(PREFIX)/lib/systemd/system
#   $(PRESETDIR)/90-socket-proxyd.preset           PRESETDIR=$(PREFIX)/lib/systemd/system-preset
#   $(DOCDIR)/examples/nginx/*.conf                DOCDIR=$(PREFIX)/share/doc/socket-proxyd
#   $(BASHCOMPDIR)/socket-proxyd                   BASHCOMPDIR=$(PREFIX)/share/bash-completion/completions
#   $(ZSHCOMPDIR)/_socket-proxyd                   ZSHCOMPDIR=$(PREFIX)/share/zsh/site-functions
#   $(FISHCOMPDIR)/socket-proxyd.fish              FISHCOMPDIR=$(PREFIX)/share/fish/vendor_completions.d
# systemd reads units from /usr/local/lib/systemd/system as well as
# /usr/lib/systemd/system, and presets from both lib/systemd/system-preset.
# The units are installed disabled, and the preset disables every one; their
# ExecStart= is rewritten to $(BINDIR)/socket-proxyd. The completion
# directories are where bash-completion, zsh and fish look (fish under
# /usr/local only when XDG_DATA_DIRS names /usr/local/share, as most sessions do).

GO ?= go
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
UNITDIR ?= $(PREFIX)/lib/systemd/system
DOCDIR ?= $(PREFIX)/share/doc/socket-proxyd
PRESETDIR ?= $(PREFIX)/lib/systemd/system-preset
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR ?= $(PREFIX)/share/zsh/site-functions
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d
DESTDIR ?=

# VERSION: the tag (v1.2.3 -> 1.2.3, with -N-gHASH after it and -dirty when
# the tree has changes), or before the first tag a snapshot version that
# sorts below 0.0.0 and rises with the commit date, as Debian's ~git
# versions do. COMMIT: the commit hash. main.version and main.commit in
# cmd/socket-proxyd are set from them; --version prints both.
ifeq ($(origin COMMIT),undefined)
COMMIT := $(shell git rev-parse --short=12 HEAD 2>/dev/null)$(shell git diff --quiet HEAD -- 2>/dev/null || echo -dirty)
endif
ifeq ($(origin VERSION),undefined)
VERSION := $(shell v=$$(git describe --tags --match 'v[0-9]*' --dirty 2>/dev/null) && echo $${v\#v} || \
	echo 0.0.0~git$$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y%m%d%H%M%S 2>/dev/null || echo 0).$$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown))
endif

GOBUILDFLAGS ?= -trimpath
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)
# A static binary: it runs in any container or chroot, and the pure Go
# resolver needs no NSS modules under ProtectSystem=strict.
export CGO_ENABLED ?= 0

SOURCES := $(shell find cmd/socket-proxyd internal -name '*.go' ! -name '*_test.go' 2>/dev/null) go.mod go.sum
UNITS := $(notdir $(wildcard contrib/systemd/*.socket contrib/systemd/*.service))
NGINX_EXAMPLES := $(notdir $(wildcard contrib/systemd/nginx/*.conf))

# The packages' time stamps: the commit's time, so that builds repeat.
ifeq ($(origin SOURCE_DATE_EPOCH),undefined)
SOURCE_DATE_EPOCH := $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
endif
export SOURCE_DATE_EPOCH

.PHONY: all build test bench chaos chaos-bites vet mutants mutants-case fmt-check man-check verify-units install uninstall deb rpm package-test deb-test systemd-test clean

all: build

build: socket-proxyd

# The version and commit the binary is stamped with: a change of either
# (a new commit, a dirty tree) rebuilds it, as no source file may have
# changed. Left alone when git cannot tell (root in another user's clone).
VERSION_STAMP := build/version.stamp
ifneq ($(COMMIT),)
$(shell mkdir -p build && (echo '$(VERSION) $(COMMIT)' | cmp -s - $(VERSION_STAMP) || echo '$(VERSION) $(COMMIT)' >$(VERSION_STAMP)))
endif

# A file target, so "make && sudo make install" does not build again as root.
socket-proxyd: $(SOURCES) $(wildcard $(VERSION_STAMP))
	$(GO) build $(GOBUILDFLAGS) -ldflags '$(LDFLAGS)' -o $@ ./cmd/socket-proxyd

test:
	$(GO) test -race ./...

bench:
	$(GO) run ./cmd/proxybench $(BENCHFLAGS)

# Mutation testing: gremlins mutates each covered statement of a
# package in turn and runs its tests; a mutant no test kills is a gap or an
# equivalent change (docs/RELIABILITY.md lists the survivors and why). A tool,
# pinned, run with go run: not a dependency of the program. One worker by
# default: the tests are timing-sensitive and the machines small.
# MUTANTS_PKGS=./internal/proxy for one package; MUTANTS_FLAGS='... -E
# (^|/)flow\.go$$' leaves a file out. Not --test-cpu: gremlins v0.6.0 hands
# go test "-cpu N" as one argument, go test fails at setup, and every mutant
# counts as killed (use -cpu=N in MUTANTS_GOFLAGS). -count=1: each mutant's
# time limit is a multiple of the first (coverage) run, which a cached test
# result makes instant, and every mutant then times out. -short skips
# TestManyConnections (9000 connections), too slow per mutant.
GREMLINS ?= github.com/go-gremlins/gremlins/cmd/gremlins@v0.6.0
MUTANTS_PKGS ?= $(shell $(GO) list -f '{{.Dir}}' ./internal/... | sed 's|^$(CURDIR)|.|')
MUTANTS_FLAGS ?= --workers 1 --timeout-coefficient 3
MUTANTS_GOFLAGS ?= -short -count=1
mutants:
	@for p in $(MUTANTS_PKGS); do echo "=== gremlins $$p"; GOFLAGS='$(MUTANTS_GOFLAGS)' $(GO) run $(GREMLINS) unleash $(MUTANTS_FLAGS) $$p || exit 1; done

# gremlins v0.6.0 counts an operator in a case clause's expression as not
# covered and never runs it (docs/RELIABILITY.md): this runs those.
mutants-case:
	@for p in $(MUTANTS_PKGS); do echo "=== casemutants $$p"; $(GO) run ./test/mutants/casemutants -run $$p || exit 1; done

# Seeded chaos against the built proxy (docs/RELIABILITY.md, "Chaos"): the
# seed is printed first; SEED=N replays it (SEED=0, the default, takes
# one from the clock).
DURATION ?= 10m
SEED ?= 0
chaos:
	$(GO) run ./cmd/proxychaos -duration $(DURATION) -seed $(SEED) $(CHAOSFLAGS)

# Proof that the harness bites: each patch in test/chaos/ puts back one
# defect it found; with the patch the focused run must fail, without it
# pass. A temporary copy of the tree, never this checkout; about 2 minutes.
chaos-bites:
	GO=$(GO) test/chaos/bites.sh

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

# groff's own warnings (-ww), then the Go test that compares the man page's
# OPTIONS with --help.
man-check:
	@out=$$(groff -man -ww -z docs/socket-proxyd.8 2>&1); \
	if [ -n "$$out" ]; then echo "$$out"; echo "man-check: groff warns about docs/socket-proxyd.8"; exit 1; fi
	@out=$$(MANWIDTH=80 man --warnings -l docs/socket-proxyd.8 2>&1 >/dev/null); \
	if [ -n "$$out" ]; then echo "$$out"; echo "man-check: man warns about docs/socket-proxyd.8"; exit 1; fi
	$(GO) test -count=1 ./docs/

verify-units: socket-proxyd
	test/systemd/verify-units.sh ./socket-proxyd

install: socket-proxyd
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(UNITDIR) $(DESTDIR)$(PRESETDIR) \
		$(DESTDIR)$(DOCDIR)/examples/nginx $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR)
	install -m 0755 socket-proxyd $(DESTDIR)$(BINDIR)/socket-proxyd
	install -m 0644 docs/socket-proxyd.8 $(DESTDIR)$(MANDIR)/man8/socket-proxyd.8
	for u in $(UNITS); do \
		sed 's|/usr/bin/socket-proxyd|$(BINDIR)/socket-proxyd|g' contrib/systemd/$$u >$(DESTDIR)$(UNITDIR)/$$u && \
		chmod 0644 $(DESTDIR)$(UNITDIR)/$$u || exit 1; \
	done
	install -m 0644 contrib/systemd/90-socket-proxyd.preset $(DESTDIR)$(PRESETDIR)/90-socket-proxyd.preset
	for f in $(NGINX_EXAMPLES); do install -m 0644 contrib/systemd/nginx/$$f $(DESTDIR)$(DOCDIR)/examples/nginx/$$f || exit 1; done
	install -m 0644 contrib/completion/socket-proxyd.bash $(DESTDIR)$(BASHCOMPDIR)/socket-proxyd
	install -m 0644 contrib/completion/_socket-proxyd $(DESTDIR)$(ZSHCOMPDIR)/_socket-proxyd
	install -m 0644 contrib/completion/socket-proxyd.fish $(DESTDIR)$(FISHCOMPDIR)/socket-proxyd.fish
	@echo "installed; units are not enabled (see socket-proxyd(8), EXAMPLES); run systemctl daemon-reload"

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/socket-proxyd $(DESTDIR)$(MANDIR)/man8/socket-proxyd.8
	rm -f $(addprefix $(DESTDIR)$(UNITDIR)/,$(UNITS)) $(DESTDIR)$(PRESETDIR)/90-socket-proxyd.preset
	rm -f $(DESTDIR)$(BASHCOMPDIR)/socket-proxyd $(DESTDIR)$(ZSHCOMPDIR)/_socket-proxyd $(DESTDIR)$(FISHCOMPDIR)/socket-proxyd.fish
	rm -f $(addprefix $(DESTDIR)$(DOCDIR)/examples/nginx/,$(NGINX_EXAMPLES))
	-rmdir $(DESTDIR)$(DOCDIR)/examples/nginx $(DESTDIR)$(DOCDIR)/examples $(DESTDIR)$(DOCDIR) 2>/dev/null

# The .deb and the .rpm: make install with PREFIX=/usr into a staging tree,
# then nfpm with packaging/nfpm.yaml (see packaging/build.sh).
deb: socket-proxyd
	packaging/build.sh deb "$(VERSION)" build

rpm: socket-proxyd
	packaging/build.sh rpm "$(VERSION)" build

package-test: socket-proxyd
	test/packaging/run.sh

deb-test: deb
	SOCKET_PROXYD_BIN=$(CURDIR)/socket-proxyd SOCKET_PROXYD_DEB=$$(cat build/deb-path) test/systemd/run.sh deb

# Boots Debian bookworm under systemd-nspawn once per scenario (needs root,
# debootstrap and systemd-container; the root is cached, see test/systemd/run.sh).
systemd-test: socket-proxyd deb
	SOCKET_PROXYD_BIN=$(CURDIR)/socket-proxyd SOCKET_PROXYD_DEB=$$(cat build/deb-path) test/systemd/run.sh

clean:
	rm -f socket-proxyd
	rm -rf build
