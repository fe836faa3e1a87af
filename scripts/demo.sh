#!/usr/bin/env bash
# make demo: the agent dials hvhost over Unix sockets for a few seconds, with no root and no VM.
# Prints hvhost's view (negotiation, heartbeat round trips, time samples and probes), then the agent's log.
# The time-sync service runs in mode "monitor": it measures the host's (deliberately 0.25 s fast) clock and
# never changes this machine's.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${DEMO_SECONDS:-4}"
cargo build --quiet --release --bins
dir=$(mktemp -d)
agent_pid=""
host_pids=""
cleanup() {
    for pid in $host_pids $agent_pid; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM
cat >"$dir/hvagent.toml" <<TOML
log_level = "info"
[heartbeat]
connect = "unix:$dir/heartbeat.sock"
[timesync]
connect = "unix:$dir/timesync.sock"
mode = "monitor"
probe_interval = 0.5
[shutdown]
enabled = false
[guestinfo]
enabled = false
TOML
# The agent refuses a config others may write: under umask 002 the file would be group-writable.
chmod 600 "$dir/hvagent.toml"
echo "== agent config ($dir/hvagent.toml)"
# The effective config without the disabled sections (paragraphs) and the listen-only keys.
target/release/hvagent check-config --config "$dir/hvagent.toml" |
    awk -v RS= -v ORS='\n\n' '!/\nenabled = false/' | grep -v '^allowed_cids\|^allowed_uids'
echo
echo "== hvhost serve, two services for ${seconds} s: a heartbeat every 0.5 s (hb), and time (ts): a SYNC, a"
echo "   SAMPLE every second, and the agent's probes every 0.5 s answered by a host whose clock is 0.25 s fast"
count=$((seconds * 2))
timeout 30 target/release/hvhost serve "unix:$dir/heartbeat.sock" --interval 0.5 --count "$count" |
    sed -u 's/^/hb | /' &
host_pids="$!"
timeout 30 target/release/hvhost serve "unix:$dir/timesync.sock" --service timesync --sample-interval 1 \
    --clock-offset 0.25 --count "$count" | sed -u 's/^/ts | /' &
host_pids="$host_pids $!"
for _ in $(seq 100); do [ -S "$dir/heartbeat.sock" ] && [ -S "$dir/timesync.sock" ] && break; sleep 0.05; done
# The time-sync service's routine offsets are debug lines: show them, and the rest at info.
RUST_LOG=info,hvproto::service::timesync=debug target/release/hvagent --config "$dir/hvagent.toml" \
    2>"$dir/agent.log" &
agent_pid=$!
for pid in $host_pids; do wait "$pid"; done
host_pids=""
echo
echo "== a burst of 1000 back-to-back heartbeats"
timeout 30 target/release/hvhost serve "unix:$dir/heartbeat.sock" --interval 0 --count 1000 --quiet
kill -TERM "$agent_pid"
wait "$agent_pid" && echo "agent exited 0 on SIGTERM"
agent_pid=""
echo
echo "== the agent's log"
cat "$dir/agent.log"
