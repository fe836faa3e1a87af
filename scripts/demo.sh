#!/usr/bin/env bash
# make demo: the agent dials hvhost over a Unix socket for a few seconds, with no root and no VM.
# Prints hvhost's view (negotiation and heartbeat round trips), then the agent's log.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${DEMO_SECONDS:-4}"
cargo build --quiet --release --bins
dir=$(mktemp -d)
agent_pid=""
host_pid=""
cleanup() {
    for pid in $host_pid $agent_pid; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM
cat >"$dir/hvagent.toml" <<TOML
log_level = "info"
[heartbeat]
connect = "unix:$dir/heartbeat.sock"
[shutdown]
enabled = false
[guestinfo]
enabled = false
TOML
echo "== agent config ($dir/hvagent.toml)"
target/release/hvagent check-config --config "$dir/hvagent.toml" | sed -n '1,5p'
echo
echo "== hvhost serve: the host side, one heartbeat every 0.5 s for ${seconds} s"
count=$((seconds * 2))
timeout 30 target/release/hvhost serve "unix:$dir/heartbeat.sock" --interval 0.5 --count "$count" &
host_pid=$!
for _ in $(seq 100); do [ -S "$dir/heartbeat.sock" ] && break; sleep 0.05; done
target/release/hvagent --config "$dir/hvagent.toml" 2>"$dir/agent.log" &
agent_pid=$!
wait "$host_pid"
host_pid=""
echo
echo "== a burst of 1000 back-to-back heartbeats"
timeout 30 target/release/hvhost serve "unix:$dir/heartbeat.sock" --interval 0 --count 1000 --quiet
kill -TERM "$agent_pid"
wait "$agent_pid" && echo "agent exited 0 on SIGTERM"
agent_pid=""
echo
echo "== the agent's log"
cat "$dir/agent.log"
