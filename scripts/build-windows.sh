#!/usr/bin/env bash
# make windows: target/windows/hvhost-VERSION-x86_64.zip, hvhost.exe for a Windows Hyper-V host with its
# README for Windows admins and the registration scripts of `hvagent host-setup --all`:
#
#   hvhost-VERSION-x86_64/
#     hvhost.exe  README.txt  hvagent-host-setup.ps1  hvagent-host-setup.reg
#
# Installs what it needs when it can (scripts/install-windows-test-deps.sh: the rustup target
# x86_64-pc-windows-gnu and Debian's gcc-mingw-w64-x86-64). Where the target or the linker is still missing it
# says so loudly and skips; HVAGENT_REQUIRE_WINDOWS=1 (CI) fails instead. The zip is made by Python's zipfile
# (no zip program needed): names sorted, each file dated the last commit's time (or SOURCE_DATE_EPOCH), so the
# same tree gives the same bytes.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-pc-windows-gnu
CARGO=${CARGO:-cargo}
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=${CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER:-x86_64-w64-mingw32-gcc}

say() { echo "build-windows: $*" >&2; }
skip() {
    if [ "${HVAGENT_REQUIRE_WINDOWS:-}" = 1 ]; then
        say "FAILED: $* (HVAGENT_REQUIRE_WINDOWS=1 requires it)"
        exit 1
    fi
    say "****************************************************************************************"
    say "SKIPPED: no hvhost.exe: $*"
    say "(scripts/install-windows-test-deps.sh installs it as root; HVAGENT_REQUIRE_WINDOWS=1 fails instead)"
    say "****************************************************************************************"
    exit 0
}

scripts/install-windows-test-deps.sh
[ -d "$(rustc --print sysroot)/lib/rustlib/$target" ] || skip "the Rust target $target is not installed"
command -v "$CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER" >/dev/null ||
    skip "no linker for $target ($CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER, package gcc-mingw-w64-x86-64)"

"$CARGO" build -q --release -p hvhost --target "$target"
exe=target/$target/release/hvhost.exe

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
name=hvhost-$version-x86_64
out=target/windows
zip=$out/$name.zip
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
mkdir -p "$out"
rm -f "$zip"
# The README with Windows line ends, as Notepad before Windows 10 1809 needs them.
python3 - "$zip" "$name" "$epoch" \
    "hvhost.exe=$exe" \
    "README.txt=packaging/windows/README.md" \
    "hvagent-host-setup.ps1=scripts/hvagent-host-setup.ps1" \
    "hvagent-host-setup.reg=scripts/hvagent-host-setup.reg" <<'PY'
import sys, time, zipfile

path, folder, epoch = sys.argv[1], sys.argv[2], int(sys.argv[3])
# Zip dates are local calendar fields from 1980 on: the commit's time in UTC, so every builder agrees.
stamp = time.gmtime(max(epoch, 315532800))[:6]
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
    for name, source in sorted(arg.split("=", 1) for arg in sys.argv[4:]):
        data = open(source, "rb").read()
        if name == "README.txt":
            data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        info = zipfile.ZipInfo(f"{folder}/{name}", stamp)
        info.external_attr = 0o644 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(info, data)
PY
say "$zip: $(stat -c %s "$zip") bytes; hvhost.exe $(stat -c %s "$exe") bytes"
echo "$zip"
