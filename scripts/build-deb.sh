#!/usr/bin/env bash
# make deb: target/debian/hvagent_VERSION_ARCH.deb, built with dpkg-deb from a `make install` tree
# (PREFIX=/usr, the unit in /lib/systemd/system, the agent's user in /usr/lib/sysusers.d, its polkit rule in
# /usr/share/polkit-1/rules.d), with /etc/hvagent/hvagent.toml as a conffile (dpkg keeps a changed one on
# upgrade), maintainer scripts that create the user and enable the service, the copyright file and the
# changelog (packaging/deb/). polkitd is recommended, not required: without it the agent's power actions
# are refused (README, "Under systemd"). Prints the path of the package. Needs a release build (make build) and dpkg-deb.
# A native package (no Debian revision), so its changelog is changelog.gz. The version is Cargo.toml's, and
# packaging/deb/changelog's latest entry must be for it; that entry's signature gives the Maintainer.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
command -v dpkg-deb >/dev/null || { echo "build-deb: dpkg-deb is missing (apt-get install dpkg)" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
changelog=packaging/deb/changelog
logged=$(sed -n '1s/^hvagent (\([^)]*\)).*/\1/p' "$changelog")
if [ "$logged" != "$version" ]; then
    echo "build-deb: $changelog's latest entry is ${logged:-unreadable}, Cargo.toml says $version; add an entry" >&2
    exit 1
fi
# The project's own identity, not a person's; example.org is reserved, so no stranger's mailbox is behind it.
maintainer=$(sed -n 's/^ -- \(.*>\)  .*/\1/p' "$changelog" | head -n 1)
arch=$(dpkg --print-architecture)
out=target/debian
root=$out/hvagent_${version}_$arch
rm -rf "$root"
mkdir -p "$root/DEBIAN"

# The same tree `make install` makes; the binaries are already built, so this only copies.
make --no-print-directory -s CARGO="${CARGO:-cargo} -q" install DESTDIR="$REPO/$root" PREFIX=/usr UNITDIR=/lib/systemd/system \
    MODULESLOADDIR=/usr/lib/modules-load.d SYSUSERSDIR=/usr/lib/sysusers.d \
    POLKITRULESDIR=/usr/share/polkit-1/rules.d >/dev/null
# Debian policy: compressed man pages, a copyright file, a compressed changelog.
gzip -9n "$root"/usr/share/man/man*/*
install -m 0644 packaging/deb/copyright "$root/usr/share/doc/hvagent/copyright"
gzip -9n <"$changelog" >"$root/usr/share/doc/hvagent/changelog.gz"
chmod 0644 "$root/usr/share/doc/hvagent/changelog.gz"

# The lowest glibc the binaries need, from their versioned symbols.
glibc=$(objdump -T "$root/usr/sbin/hvagent" "$root/usr/bin/hvhost" 2>/dev/null |
    sed -n 's/.*GLIBC_\([0-9.]*\).*/\1/p' | sort -V | tail -n 1 || true)
depends="libc6${glibc:+ (>= $glibc)}"
installed_size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)

cat >"$root/DEBIAN/control" <<CONTROL
Package: hvagent
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: $depends
Recommends: polkitd | policykit-1
Section: admin
Priority: optional
Description: Hyper-V integration-services guest agent over AF_VSOCK
 hvagent runs inside a Linux virtual machine and speaks Hyper-V
 integration-service messages with its host over raw AF_VSOCK sockets (hv_sock
 on Hyper-V, virtio-vsock on KVM, QEMU, Firecracker and Cloud Hypervisor):
 heartbeat with the application's health, time sync, shutdown, and guest info
 (the key-value exchange: the guest's name, OS and addresses, and pairs the
 host stores in the guest).
 .
 One small binary with a single poll loop, a hardened systemd unit that never
 holds up boot, "hvagent status" for what it is doing and "hvagent host-setup"
 for what the Windows host must register. hvhost is its host-side peer.
CONTROL
echo /etc/hvagent/hvagent.toml >"$root/DEBIAN/conffiles"
for script in postinst prerm postrm; do
    install -m 0755 "packaging/deb/$script" "$root/DEBIAN/$script"
done
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
    >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"

deb=$out/hvagent_${version}_$arch.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
