#!/usr/bin/env bash
# Installs the system tools the tests need (systemd-analyze, dpkg-deb, man, lintian; python3 for the interop
# test; file and readelf for the static tarball's), when they are missing and we are root with apt-get. Idempotent: with everything present it asks nothing of the network.
# The VM test provisions its own packages (tests/vm/provision.sh).
set -euo pipefail

# The Windows target, mingw and wine, for the protocol crate's Windows test.
"$(dirname "$0")/install-windows-test-deps.sh"

missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v dpkg-deb >/dev/null || missing+=(dpkg)
command -v man >/dev/null || missing+=(man-db)
command -v lintian >/dev/null || missing+=(lintian)
command -v python3 >/dev/null || missing+=(python3)
# The static tarball's check (scripts/packaging-test-static.sh): is the agent static?
command -v file >/dev/null || missing+=(file)
command -v readelf >/dev/null || missing+=(binutils)
[ ${#missing[@]} = 0 ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install-test-deps: missing ${missing[*]}; install them (apt-get install ${missing[*]}) to run every test" >&2
    exit 0
fi
echo "install-test-deps: installing ${missing[*]}"
install_quietly() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null
}
install_quietly "${missing[@]}" || { apt-get update -q >/dev/null && install_quietly "${missing[@]}"; }
