#!/usr/bin/env bash
# The protocol crate on Windows: builds hvproto and its tests for x86_64-pc-windows-gnu and, where wine is
# installed, runs every test program under wine and checks that all of hvproto's tests passed there, as many
# as on Linux. Wine runs quiet (WINEDEBUG=-all), headless (no DISPLAY: console programs need none), each call
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

# The test executables of `cargo test -p hvproto --no-run` for the target given (none: the host's), one a line.
test_executables() {
    "$CARGO" test -q -p hvproto "$@" --no-run --message-format=json-render-diagnostics |
        grep -o '"executable":"[^"]*"' | sed 's/^"executable":"//; s/"$//'
}

scripts/install-windows-test-deps.sh
[ -d "$(rustc --print sysroot)/lib/rustlib/$target" ] || skip "the Rust target $target is not installed"
command -v "$CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER" >/dev/null ||
    skip "no linker for $target ($CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER, package gcc-mingw-w64-x86-64)"

"$CARGO" build -q -p hvproto --target "$target"
list=$(test_executables --target "$target")
[ -n "$list" ] || { say "FAILED: cargo built no test program for $target"; exit 1; }
mapfile -t windows_tests <<<"$list"
say "hvproto and its ${#windows_tests[@]} test program(s) build for $target"

have_wine64() { command -v wine >/dev/null && { [ -x /usr/lib/wine/wine64 ] || command -v wine64 >/dev/null; }; }
have_wine64 ||
    skip "hvproto's tests for $target were built but not run: no 64-bit wine (packages wine and wine64)"

# How many tests hvproto has on Linux: the Windows run must pass every one of them.
list=$(test_executables)
mapfile -t linux_tests <<<"$list"
expected=0
for exe in "${linux_tests[@]}"; do
    expected=$((expected + $("$exe" --list --format terse | grep -c ': test$' || true)))
done
[ "$expected" -gt 0 ] || { say "FAILED: hvproto lists no test on Linux"; exit 1; }

rm -rf "$out"
mkdir -p "$out"
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
for exe in "${windows_tests[@]}"; do
    log="$out/$(basename "$exe" .exe).log"
    run_wine 300 "$log" "$exe"
    summary=$(grep '^test result: ' "$log" || true)
    [ -n "$summary" ] || { say "FAILED: $exe printed no test result under wine (full output: $log)"; exit 1; }
    say "$(basename "$exe") under wine: ${summary#test result: }"
    passed=$((passed + $(sed -n 's/.* \([0-9]*\) passed;.*/\1/p' <<<"$summary")))
    failed=$((failed + $(sed -n 's/.* \([0-9]*\) failed;.*/\1/p' <<<"$summary")))
done

if [ "$failed" != 0 ] || [ "$passed" != "$expected" ]; then
    say "FAILED: $passed passed and $failed failed under wine; hvproto has $expected tests on Linux"
    exit 1
fi
stop_wine
rm -rf "$WINEPREFIX"
say "every one of hvproto's $expected tests passed for $target under wine ($wine_version)"
echo "windows-test: $passed passed, $failed failed"
