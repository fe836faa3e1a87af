# hvagent: make (build), make test (every test), make demo, make bench, make vm-test, make install.
CARGO   ?= cargo
PREFIX  ?= /usr/local
DESTDIR ?=
SBINDIR ?= $(PREFIX)/sbin
BINDIR  ?= $(PREFIX)/bin
DOCDIR  ?= $(PREFIX)/share/doc/hvagent

.PHONY: all build test unit-test interop-test packaging-test vm-test lint demo bench install uninstall clean \
	host-setup-scripts

all: build

build:
	$(CARGO) build --release --bins

# Every test: unit and end-to-end tests, the independent host written from docs/PROTOCOL.md, the systemd unit
# and packages, and the real-vsock VM test (which explains itself and skips when it cannot run, unless
# HVAGENT_REQUIRE_VM=1).
test: lint unit-test interop-test packaging-test vm-test

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

unit-test:
	$(CARGO) test

interop-test:
	$(CARGO) build --bins
	python3 tests/interop/spec_host.py target/debug/hvagent

# The unit's exposure score and `systemd-analyze verify`, the install tree and the .deb's contents.
packaging-test: build
	scripts/packaging-test.sh

vm-test:
	scripts/vm-test.sh

# scripts/hvagent-host-setup.{ps1,reg}: the Windows host's registrations for every service at its default
# port, as `hvagent host-setup --all` prints them (a test checks they are current).
host-setup-scripts:
	$(CARGO) build --bins
	target/debug/hvagent host-setup --all --format powershell >scripts/hvagent-host-setup.ps1
	target/debug/hvagent host-setup --all --format reg >scripts/hvagent-host-setup.reg

demo:
	scripts/demo.sh

bench:
	$(CARGO) build --release --bins
	target/release/hvbench

install: build
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(DOCDIR)
	install -m 0755 target/release/hvagent $(DESTDIR)$(SBINDIR)/hvagent
	install -m 0755 target/release/hvhost $(DESTDIR)$(BINDIR)/hvhost
	install -m 0644 README.md docs/PROTOCOL.md $(DESTDIR)$(DOCDIR)/

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/hvagent $(DESTDIR)$(BINDIR)/hvhost
	rm -rf $(DESTDIR)$(DOCDIR)

clean:
	$(CARGO) clean
