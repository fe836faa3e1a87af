# hvagent: make (release build), make test (lint, unit-test, windows-test, interop-test, packaging-test, vm-test),
# make demo, make status-demo, make bench, make bench-hostscale, make fuzz, make vm-test, make packaging-test,
# make windows-test, make windows,
# make host-setup-scripts, make man-keys, make install, make uninstall, make deb, make static, make clean.
CARGO   ?= cargo
PREFIX  ?= /usr/local
DESTDIR ?=
SBINDIR ?= $(PREFIX)/sbin
BINDIR  ?= $(PREFIX)/bin
DOCDIR  ?= $(PREFIX)/share/doc/hvagent
MANDIR  ?= $(PREFIX)/share/man
# systemd reads units and modules-load.d files under /usr/local/lib too; the .deb uses /lib/systemd/system.
UNITDIR ?= $(PREFIX)/lib/systemd/system
MODULESLOADDIR ?= $(PREFIX)/lib/modules-load.d
# The agent's user (systemd-sysusers reads /usr/local/lib/sysusers.d too) and its polkit rule (polkitd reads
# only /etc/polkit-1/rules.d and /usr/share/polkit-1/rules.d; the .deb uses the latter).
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
POLKITRULESDIR ?= $(SYSCONFDIR)/polkit-1/rules.d
# The agent reads /etc/hvagent/hvagent.toml whatever the PREFIX.
SYSCONFDIR ?= /etc

.PHONY: all build test unit-test interop-test packaging-test vm-test lint demo bench bench-hostscale fuzz install \
	uninstall deb clean host-setup-scripts man-keys status-demo
.PHONY: windows-test windows
.PHONY: static

all: build

build:
	$(CARGO) build --workspace --release --bins

# Every test: format and clippy, unit and end-to-end tests, the protocol crate for Windows, the two independent
# hosts (tests/interop), the systemd unit and packages, and the real-vsock VM test (which explains itself and skips
# when it cannot run, unless HVAGENT_REQUIRE_VM=1).
test: lint unit-test windows-test interop-test packaging-test vm-test

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit-test:
	$(CARGO) test --workspace

# hvproto and hvhost built for x86_64-pc-windows-gnu, their unit tests and hvhost.exe's end-to-end tests
# (tests/windows_e2e.rs) run under wine where wine is installed (all must pass);
# skipped loudly when the target, mingw or wine is missing, unless HVAGENT_REQUIRE_WINDOWS=1.
windows-test:
	CARGO="$(CARGO)" scripts/windows-test.sh

# target/windows/hvhost-VERSION-x86_64.zip: hvhost.exe (release, x86_64-pc-windows-gnu), a README for Windows
# admins and the registration scripts; installs the rustup target and mingw when missing, skips loudly when it
# cannot (HVAGENT_REQUIRE_WINDOWS=1 fails). windows-test builds it too, so `make test` does.
windows:
	CARGO="$(CARGO)" scripts/build-windows.sh

# Two independent hosts: spec_host.py written from docs/PROTOCOL.md, openvmm_host.py from the public openvmm and
# Linux sources alone (openvmm's host devices: their headers, flags, body sizes, version lists and parsers).
interop-test:
	$(CARGO) build --workspace --bins
	python3 tests/interop/spec_host.py target/debug/hvagent
	python3 tests/interop/openvmm_host.py target/debug/hvagent

# The unit's exposure score and `systemd-analyze verify`, the install tree and the .deb's contents.
packaging-test: build
	scripts/packaging-test.sh

vm-test:
	scripts/vm-test.sh

# scripts/hvagent-host-setup.{ps1,reg}: the Windows host's registrations for every service at its default
# port, as `hvagent host-setup --all` prints them (a test checks they are current).
host-setup-scripts:
	$(CARGO) build --workspace --bins
	target/debug/hvagent host-setup --all --format powershell >scripts/hvagent-host-setup.ps1
	target/debug/hvagent host-setup --all --format reg >scripts/hvagent-host-setup.reg

# docs/hvagent.toml.5's key headers (what each key takes, its default), written from the config's table of
# keys by the test that otherwise fails while they differ from it.
man-keys:
	HVAGENT_WRITE_MAN=1 $(CARGO) test -p hvagent --lib config::tests::docs::the_man_page_documents_every_key

demo:
	scripts/demo.sh

# The operations side: sd_notify to a stand-in for systemd, hvagent status, hvagent doctor on a fake tree.
status-demo:
	scripts/status-demo.sh

# Every coverage-guided fuzz target for FUZZ_SECONDS each (installs cargo-fuzz when missing). Not part of
# `make test`: the property tests there are its quick version.
FUZZ_SECONDS ?= 30
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

# Figures, not assertions (docs/PERFORMANCE.md). hostscale: one hvhost serving 10, 100 and 1,000 agents.
# The glibc release build and the static one of `make static` side by side (memory, size, heartbeat p50).
bench:
	scripts/install-bench-deps.sh
	$(CARGO) build --workspace --release --bins
	scripts/build-static.sh >/dev/null
	target/release/hvbench --static-agent target/x86_64-unknown-linux-musl/release/hvagent

bench-hostscale:
	$(CARGO) build --workspace --release --bins
	target/release/hvbench hostscale

# The binaries, the systemd units (hvagent.service and its clock helper, hvagent-clock.socket and .service;
# ExecStart= and ExecStopPost= pointing at SBINDIR; the escalation templates hvagent-force-poweroff@ and -reboot@), the hv_sock
# modules-load file, the agent's
# user (sysusers.d; `systemd-sysusers` creates it, or the next boot does), its polkit rule, the commented
# default config (never over one already there), the man pages and the docs (with the run-as-root, backup-freeze and filecopy-dirs drop-ins).
install: build
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(DOCDIR) $(DESTDIR)$(UNITDIR) \
		$(DESTDIR)$(MODULESLOADDIR) $(DESTDIR)$(SYSCONFDIR)/hvagent $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(MANDIR)/man5 \
		$(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(POLKITRULESDIR) $(DESTDIR)$(DOCDIR)/examples
	install -m 0755 target/release/hvagent $(DESTDIR)$(SBINDIR)/hvagent
	install -m 0755 target/release/hvhost $(DESTDIR)$(BINDIR)/hvhost
	sed -e 's|^ExecStart=/usr/sbin/hvagent|ExecStart=$(SBINDIR)/hvagent|' \
		-e 's|^ExecStopPost=+/usr/sbin/hvagent|ExecStopPost=+$(SBINDIR)/hvagent|' systemd/hvagent.service \
		>$(DESTDIR)$(UNITDIR)/hvagent.service
	sed 's|^ExecStart=/usr/sbin/hvagent|ExecStart=$(SBINDIR)/hvagent|' systemd/hvagent-clock.service \
		>$(DESTDIR)$(UNITDIR)/hvagent-clock.service
	install -m 0644 systemd/hvagent-clock.socket $(DESTDIR)$(UNITDIR)/hvagent-clock.socket
	install -m 0644 systemd/hvagent-force-poweroff@.service systemd/hvagent-force-reboot@.service $(DESTDIR)$(UNITDIR)/
	chmod 0644 $(DESTDIR)$(UNITDIR)/hvagent.service $(DESTDIR)$(UNITDIR)/hvagent-clock.service
	install -m 0644 systemd/hvagent-modules.conf $(DESTDIR)$(MODULESLOADDIR)/hvagent.conf
	install -m 0644 systemd/hvagent-sysusers.conf $(DESTDIR)$(SYSUSERSDIR)/hvagent.conf
	install -m 0644 packaging/polkit/hvagent.rules $(DESTDIR)$(POLKITRULESDIR)/hvagent.rules
	install -m 0644 packaging/examples/run-as-root.conf $(DESTDIR)$(DOCDIR)/examples/run-as-root.conf
	install -m 0644 packaging/examples/backup-freeze.conf $(DESTDIR)$(DOCDIR)/examples/backup-freeze.conf
	install -m 0644 packaging/examples/filecopy-dirs.conf $(DESTDIR)$(DOCDIR)/examples/filecopy-dirs.conf
	[ -e $(DESTDIR)$(SYSCONFDIR)/hvagent/hvagent.toml ] || \
		install -m 0644 etc/hvagent.toml $(DESTDIR)$(SYSCONFDIR)/hvagent/hvagent.toml
	install -m 0644 docs/hvagent.8 $(DESTDIR)$(MANDIR)/man8/hvagent.8
	install -m 0644 docs/hvagent.toml.5 $(DESTDIR)$(MANDIR)/man5/hvagent.toml.5
	install -m 0644 docs/hvhost.1 $(DESTDIR)$(MANDIR)/man1/hvhost.1
	install -m 0644 README.md docs/PROTOCOL.md scripts/hvagent-host-setup.ps1 scripts/hvagent-host-setup.reg \
		$(DESTDIR)$(DOCDIR)/

# Removes what install put there, except the config file (yours now); `rm -r /etc/hvagent` removes that too.
uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/hvagent $(DESTDIR)$(BINDIR)/hvhost $(DESTDIR)$(UNITDIR)/hvagent.service \
		$(DESTDIR)$(UNITDIR)/hvagent-clock.service $(DESTDIR)$(UNITDIR)/hvagent-clock.socket \
		$(DESTDIR)$(UNITDIR)/hvagent-force-poweroff@.service $(DESTDIR)$(UNITDIR)/hvagent-force-reboot@.service \
		$(DESTDIR)$(MODULESLOADDIR)/hvagent.conf $(DESTDIR)$(MANDIR)/man8/hvagent.8 \
		$(DESTDIR)$(MANDIR)/man5/hvagent.toml.5 $(DESTDIR)$(MANDIR)/man1/hvhost.1 \
		$(DESTDIR)$(SYSUSERSDIR)/hvagent.conf $(DESTDIR)$(POLKITRULESDIR)/hvagent.rules
	rm -rf $(DESTDIR)$(DOCDIR)

# target/debian/hvagent_VERSION_ARCH.deb, built with dpkg-deb from a `make install` tree.
deb: build
	scripts/build-deb.sh

# target/static/hvagent-VERSION-x86_64-linux.tar.gz: the agent built fully static (x86_64-unknown-linux-musl;
# the rustup target is installed when missing), its units, config, man pages and an install.sh, for images
# that are not Debian.
static:
	scripts/build-static.sh

clean:
	$(CARGO) clean
