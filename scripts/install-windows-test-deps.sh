#!/usr/bin/env bash
# Installs what `make windows-test` needs, when it is missing: the Rust target x86_64-pc-windows-gnu (with
# rustup), its linker (gcc-mingw-w64-x86-64) and wine to run the protocol crate's tests (wine and wine64: the
# 64-bit loader is enough for a 64-bit test program). Debian packages only as root with apt-get. Idempotent and
# quiet: with everything present it asks nothing of the network. What it cannot install it names;
# scripts/windows-test.sh then says which part it skips (or fails, with HVAGENT_REQUIRE_WINDOWS=1).
set -euo pipefail

target=x86_64-pc-windows-gnu
if [ ! -d "$(rustc --print sysroot)/lib/rustlib/$target" ]; then
    if ! command -v rustup >/dev/null; then
        echo "install-windows-test-deps: the Rust target $target is missing and there is no rustup to add it" >&2
    elif ! rustup target add "$target" >/dev/null 2>&1; then
        echo "install-windows-test-deps: 'rustup target add $target' failed; run it to see why" >&2
    fi
fi

wine_ok() { command -v wine >/dev/null && { [ -x /usr/lib/wine/wine64 ] || command -v wine64 >/dev/null; }; }
missing=()
command -v x86_64-w64-mingw32-gcc >/dev/null || missing+=(gcc-mingw-w64-x86-64)
wine_ok || missing+=(wine wine64)
[ ${#missing[@]} = 0 ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install-windows-test-deps: missing ${missing[*]}; install them (apt-get install ${missing[*]}) to test the protocol crate for Windows" >&2
    exit 0
fi
echo "install-windows-test-deps: installing ${missing[*]}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
install_quietly() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >"$log" 2>&1
}
if ! install_quietly "${missing[@]}" && ! { apt-get update -q >"$log" 2>&1 && install_quietly "${missing[@]}"; }; then
    cat "$log" >&2
    echo "install-windows-test-deps: could not install ${missing[*]}" >&2
fi
