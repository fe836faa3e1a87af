# hvagent: make (build), make test (every test), make demo, make bench, make fuzz, make vm-test, make install.
CARGO   ?= cargo
PREFIX  ?= /usr/local
DESTDIR ?=
SBINDIR ?= $(PREFIX)/sbin
BINDIR  ?= $(PREFIX)/bin
DOCDIR  ?= $(PREFIX)/share/doc/hvagent

.PHONY: all build test unit-test interop-test vm-test lint demo bench bench-hostscale fuzz install uninstall clean

all: build

build:
	$(CARGO) build --release --bins

# Every test: unit and end-to-end tests, the independent host written from docs/PROTOCOL.md, and the real-vsock
# VM test (which explains itself and skips when it cannot run, unless HVAGENT_REQUIRE_VM=1).
test: lint unit-test interop-test vm-test

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

unit-test:
	$(CARGO) test

interop-test:
	$(CARGO) build --bins
	python3 tests/interop/spec_host.py target/debug/hvagent

vm-test:
	scripts/vm-test.sh

demo:
	scripts/demo.sh

# Every coverage-guided fuzz target for FUZZ_SECONDS each (installs cargo-fuzz when missing). Not part of
# `make test`: the property tests there are its quick version.
FUZZ_SECONDS ?= 30
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

# Figures, not assertions (docs/PERFORMANCE.md). hostscale: one hvhost serving 10, 100 and 1,000 agents.
bench:
	scripts/install-bench-deps.sh
	$(CARGO) build --release --bins
	target/release/hvbench

bench-hostscale:
	$(CARGO) build --release --bins
	target/release/hvbench hostscale

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
