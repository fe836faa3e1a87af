#!/usr/bin/env bash
# make static: the agent built fully static for x86_64-unknown-linux-musl (no dynamic loader, no shared
# library: it runs on any x86_64 Linux, Alpine, Fedora, RHEL, Azure Linux or a busybox initramfs alike),
# packed as target/static/hvagent-VERSION-x86_64-linux.tar.gz with what installs it:
#
#   hvagent-VERSION-x86_64-linux/
#     install.sh                    ./install.sh [--prefix /usr/local] [--uninstall]; DESTDIR honoured
#     sbin/hvagent                  the static agent (only the agent: hvhost is not in it)
#     systemd/                      the units (hvagent.service, the clock helper's socket and service, the
#                                   escalation templates), the modules-load and sysusers files
#     polkit/hvagent.rules          the power actions' polkit rule
#     etc/hvagent.toml              the commented default config
#     man/                          hvagent(8), hvagent.toml(5)
#     doc/                          README.md, PROTOCOL.md, copyright, the host-setup scripts, examples/
#
# Installs the rustup target when it is missing. Prints the tarball's path. The tarball is reproducible:
# sorted names, owner root, the mtime of the last commit (or SOURCE_DATE_EPOCH), gzip without a timestamp.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
TARGET=x86_64-unknown-linux-musl
CARGO=${CARGO:-cargo}

say() { echo "build-static: $*" >&2; }

if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    command -v rustup >/dev/null || { say "rustup is missing; install the $TARGET standard library another way"; exit 1; }
    say "installing the rustup target $TARGET"
    rustup target add "$TARGET" >&2
fi
# musl's own static libc comes with the target, and rust-lld links it: no musl-gcc needed. The target
# links statically (crt-static) by default; it is spelled out so that a changed default cannot undo it.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    $CARGO build --release --locked --target "$TARGET" -p hvagent --bin hvagent >&2
binary=${CARGO_TARGET_DIR:-target}/$TARGET/release/hvagent

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
name=hvagent-$version-x86_64-linux
out=target/static
stage=$out/$name
rm -rf "$stage" "$out/$name.tar.gz"
mkdir -p "$stage"/{sbin,systemd,polkit,etc,man,doc/examples}

install -m 0755 "$binary" "$stage/sbin/hvagent"
install -m 0755 packaging/static/install.sh "$stage/install.sh"
install -m 0644 systemd/hvagent.service systemd/hvagent-clock.service systemd/hvagent-clock.socket \
    systemd/hvagent-force-poweroff@.service systemd/hvagent-force-reboot@.service \
    systemd/hvagent-modules.conf systemd/hvagent-sysusers.conf "$stage/systemd/"
install -m 0644 packaging/polkit/hvagent.rules "$stage/polkit/"
install -m 0644 etc/hvagent.toml "$stage/etc/"
install -m 0644 docs/hvagent.8 docs/hvagent.toml.5 "$stage/man/"
install -m 0644 README.md docs/PROTOCOL.md scripts/hvagent-host-setup.ps1 scripts/hvagent-host-setup.reg \
    "$stage/doc/"
install -m 0644 packaging/deb/copyright "$stage/doc/copyright"
install -m 0644 packaging/examples/run-as-root.conf "$stage/doc/examples/"
install -m 0644 packaging/examples/backup-freeze.conf "$stage/doc/examples/"
install -m 0644 packaging/examples/filecopy-dirs.conf "$stage/doc/examples/"

epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" -C "$out" -cf - "$name" |
    gzip -9n >"$out/$name.tar.gz"
rm -rf "$stage"
echo "$out/$name.tar.gz"
