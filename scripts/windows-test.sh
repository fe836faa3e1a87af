#!/usr/bin/env bash
# The protocol crate and hvhost.exe on Windows: builds hvproto, hvhost and their tests for
# x86_64-pc-windows-gnu and, where wine is installed, runs every test program under wine and checks that all
# of their tests passed there (every test Linux has, and the Windows-only ones); then the end-to-end tests of
# tests/windows_e2e.rs: hvhost.exe under wine against a real agent through a loopback relay, and its
# register/unregister against wine's registry; last, the zip of `make windows` (scripts/build-windows.sh).
# Wine runs quiet (WINEDEBUG=-all), headless (no DISPLAY: console programs need none), each call
# bounded by `timeout`, in a throwaway prefix made afresh under target/windows-test/ and removed after a pass.
#
# Debian's wine 8 has no bcryptprimitives.dll, whose ProcessPrng Rust's std for this target imports; the
# prefix gets a stand-in built here from tests/windows/bcryptprimitives.c. It is for this test only: nothing
# installs, packages or ships it.
#
# scripts/install-windows-test-deps.sh installs what is missing when it can. Where the target, the linker or
# wine is still missing, this says so loudly and skips that part; HVAGENT_REQUIRE_WINDOWS=1 (CI) fails instead.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-pc-windows-gnu
CARGO=${CARGO:-cargo}
out=target/windows-test
# rustc's own default for this target, named here so that the build does not depend on that default.
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=${CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER:-x86_64-w64-mingw32-gcc}

say() { echo "windows-test: $*" >&2; }
skip() {
    if [ "${HVAGENT_REQUIRE_WINDOWS:-}" = 1 ]; then
        say "FAILED: $* (HVAGENT_REQUIRE_WINDOWS=1 requires it)"
        exit 1
    fi
    say "****************************************************************************************"
    say "SKIPPED: $*"
    say "(scripts/install-windows-test-deps.sh installs it as root; HVAGENT_REQUIRE_WINDOWS=1 fails instead)"
    say "****************************************************************************************"
    exit 0
}

# The unit-test programs of the packages Windows runs: hvproto's (all its test targets) and hvhost's library.
packages=(-p hvproto)
hvhost_tests=(-p hvhost --lib)
# The test executables of `cargo test ARGS --no-run` for the target given (none: the host's), one a line.
test_executables() {
    "$CARGO" test -q "$@" --no-run --message-format=json-render-diagnostics |
        grep -o '"executable":"[^"]*"' | sed 's/^"executable":"//; s/"$//'
}

scripts/install-windows-test-deps.sh
[ -d "$(rustc --print sysroot)/lib/rustlib/$target" ] || skip "the Rust target $target is not installed"
command -v "$CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER" >/dev/null ||
    skip "no linker for $target ($CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER, package gcc-mingw-w64-x86-64)"

"$CARGO" build -q "${packages[@]}" -p hvhost --target "$target"
list=$(test_executables "${packages[@]}" --target "$target"; test_executables "${hvhost_tests[@]}" --target "$target")
[ -n "$list" ] || { say "FAILED: cargo built no test program for $target"; exit 1; }
mapfile -t windows_tests <<<"$list"
hvhost_exe=target/$target/debug/hvhost.exe
[ -f "$hvhost_exe" ] || { say "FAILED: no $hvhost_exe was built"; exit 1; }
say "hvproto, hvhost.exe and ${#windows_tests[@]} test program(s) build for $target"

have_wine64() { command -v wine >/dev/null && { [ -x /usr/lib/wine/wine64 ] || command -v wine64 >/dev/null; }; }
have_wine64 ||
    skip "hvproto's tests for $target were built but not run: no 64-bit wine (packages wine and wine64)"

# The tests hvproto and hvhost have on Linux: the Windows run must list and pass every one of them.
list=$(test_executables "${packages[@]}"; test_executables "${hvhost_tests[@]}")
mapfile -t linux_tests <<<"$list"
mkdir -p "$out"
for exe in "${linux_tests[@]}"; do
    "$exe" --list --format terse | sed -n 's/: test$//p'
done | sort >"$out/linux-tests.txt"
expected=$(wc -l <"$out/linux-tests.txt")
[ "$expected" -gt 0 ] || { say "FAILED: hvproto and hvhost list no test on Linux"; exit 1; }

rm -rf "$out/wineprefix"
mingw_cc=(x86_64-w64-mingw32-gcc -O2 -Wall -Wextra -Werror -s)
"${mingw_cc[@]}" -shared -o "$out/bcryptprimitives.dll" tests/windows/bcryptprimitives.c -ladvapi32
"${mingw_cc[@]}" -o "$out/prng-check.exe" tests/windows/prng-check.c "$out/bcryptprimitives.dll"

export WINEPREFIX="$PWD/$out/wineprefix" WINEDEBUG=-all
# No Mono or Gecko: nothing for wine to offer to download or install, no dialog.
export WINEDLLOVERRIDES="mscoree,mshtml="
unset DISPLAY WAYLAND_DISPLAY
wine_version=$(wine --version)
stop_wine() {
    if [ -d "$WINEPREFIX" ]; then timeout 30 wineserver -k 2>/dev/null || true; fi
}
trap stop_wine EXIT

# run_wine SECONDS LOG PROGRAM [ARG...]: PROGRAM under wine, its output to LOG, shown when it fails.
run_wine() {
    local seconds=$1 log=$2 rc=0
    shift 2
    timeout "$seconds" wine "$@" </dev/null >"$log" 2>&1 || rc=$?
    if [ "$rc" != 0 ]; then
        tail -n 40 "$log" >&2
        if [ "$rc" = 124 ]; then
            say "FAILED: $1 did not finish within ${seconds}s under wine (its output: $log)"
        else
            say "FAILED: $1 exited with status $rc under wine (its output: $log)"
        fi
        exit 1
    fi
}

run_wine 120 "$out/wineboot.log" wineboot -i
cp "$out/bcryptprimitives.dll" "$WINEPREFIX/drive_c/windows/system32/"
run_wine 60 "$out/prng-check.log" "$out/prng-check.exe"

passed=0
failed=0
: >"$out/windows-tests.txt"
for exe in "${windows_tests[@]}"; do
    log="$out/$(basename "$exe" .exe).log"
    run_wine 60 "$log.list" "$exe" --list --format terse
    sed -n 's/: test\r\?$//p' "$log.list" >>"$out/windows-tests.txt"
    run_wine 300 "$log" "$exe"
    summary=$(grep '^test result: ' "$log" || true)
    [ -n "$summary" ] || { say "FAILED: $exe printed no test result under wine (full output: $log)"; exit 1; }
    say "$(basename "$exe") under wine: ${summary#test result: }"
    passed=$((passed + $(sed -n 's/.* \([0-9]*\) passed;.*/\1/p' <<<"$summary")))
    failed=$((failed + $(sed -n 's/.* \([0-9]*\) failed;.*/\1/p' <<<"$summary")))
done
sort -o "$out/windows-tests.txt" "$out/windows-tests.txt"
missing=$(comm -23 "$out/linux-tests.txt" "$out/windows-tests.txt")
if [ -n "$missing" ]; then
    say "FAILED: tests that Linux has and the Windows build does not:"
    echo "$missing" >&2
    exit 1
fi
listed=$(wc -l <"$out/windows-tests.txt")
if [ "$failed" != 0 ] || [ "$passed" != "$listed" ]; then
    say "FAILED: $passed passed and $failed failed under wine of the $listed tests the Windows build lists"
    exit 1
fi
say "every one of hvproto's and hvhost's $listed tests passed for $target under wine ($wine_version):" \
    "the $expected Linux has, and $((listed - expected)) of Windows only"

# hvhost.exe end to end: the agent and the Linux hvhost are this machine's debug builds (the tests start
# them under the no_vsock guard); hvhost.exe runs under wine in the same prefix.
"$CARGO" build -q -p hvagent -p hvhost --bins
e2e_log="$out/windows-e2e.log"
e2e_rc=0
HVAGENT_WINDOWS_HVHOST="$PWD/$hvhost_exe" timeout 900 "$CARGO" test -q -p hvagent --test windows_e2e -- \
    --ignored --test-threads=1 --nocapture >"$e2e_log" 2>&1 || e2e_rc=$?
e2e_summary=$(grep '^test result: ' "$e2e_log" || true)
if [ "$e2e_rc" != 0 ] || ! grep -q '^test result: ok\. [1-9][0-9]* passed; 0 failed' <<<"$e2e_summary"; then
    tail -n 60 "$e2e_log" >&2
    say "FAILED: hvhost.exe's end-to-end tests under wine (status $e2e_rc; full output: $e2e_log)"
    exit 1
fi
grep -oE '(linux hvhost|hvhost.exe under wine|hv: under wine|vm: under wine):.*' "$e2e_log" | sed 's/^/windows-test: /' >&2
e2e_passed=$(sed -n 's/.* \([0-9]*\) passed;.*/\1/p' <<<"$e2e_summary")
say "hvhost.exe end to end under wine: ${e2e_summary#test result: }"
stop_wine
rm -rf "$WINEPREFIX"

# The package of `make windows`, built and its contents checked.
zip=$(CARGO="$CARGO" scripts/build-windows.sh)
contents=$(python3 -c 'import sys, zipfile; print("\n".join(zipfile.ZipFile(sys.argv[1]).namelist()))' "$zip")
folder=$(basename "$zip" .zip)
for file in hvhost.exe README.txt hvagent-host-setup.ps1 hvagent-host-setup.reg; do
    grep -qx "$folder/$file" <<<"$contents" || { say "FAILED: $zip has no $folder/$file"; exit 1; }
done
say "$zip holds $(wc -l <<<"$contents") files"
echo "windows-test: $((passed + e2e_passed)) passed, $failed failed"
