#!/usr/bin/env bash
# make status-demo: the operations side over Unix sockets, with no root, no VM and no systemd: the agent under a
# stand-in for systemd's notify socket (READY, STATUS, WATCHDOG, RELOADING, STOPPING), `hvagent status` in text
# and JSON while hvhost serves heartbeats, and `hvagent doctor` on a fake /proc and /sys tree.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --release --bins
dir=$(mktemp -d)
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        if kill "$pid" 2>/dev/null; then wait "$pid" 2>/dev/null || true; fi
    done
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM
agent=target/release/hvagent

# systemd's notify socket, played by Python: prints each datagram it gets.
python3 -u - "$dir/notify" >"$dir/notify.log" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
while True:
    print(s.recv(4096).decode().replace("\n", " | "))
PY
pids+=($!)
# Heartbeat and time sync (measuring only, against a host 0.25 s fast) over Unix sockets; the services
# without a host peer here are off, so nothing dials vsock.
cat >"$dir/hvagent.toml" <<TOML
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
timeout 30 target/release/hvhost serve "unix:$dir/heartbeat.sock" --interval 0.5 --quiet &
pids+=($!)
timeout 30 target/release/hvhost serve "unix:$dir/timesync.sock" --service timesync --sample-interval 1 \
    --clock-offset 0.25 --quiet &
pids+=($!)
for _ in $(seq 100); do
    [ -S "$dir/heartbeat.sock" ] && [ -S "$dir/timesync.sock" ] && [ -S "$dir/notify" ] && break
    sleep 0.05
done
NOTIFY_SOCKET=$dir/notify WATCHDOG_USEC=2000000 "$agent" run --config "$dir/hvagent.toml" \
    --control "$dir/control.sock" 2>"$dir/agent.log" &
agent_pid=$!
pids+=("$agent_pid")
sleep 2.2
echo "== hvagent status (control socket $(stat -c '%A' "$dir/control.sock"))"
"$agent" status --control "$dir/control.sock"
echo
echo "== hvagent status --json"
"$agent" status --json --control "$dir/control.sock"
kill -HUP "$agent_pid"
sleep 0.3
kill -TERM "$agent_pid"
wait "$agent_pid" && echo "(agent exited 0 on SIGTERM)"
echo
echo "== what systemd heard (WATCHDOG_USEC=2 s: a ping every second)"
cat "$dir/notify.log"
echo
echo "== hvagent doctor on a fake Hyper-V tree without hv_sock (--root; no vsock is probed)"
fake=$dir/root
mkdir -p "$fake/proc/net" "$fake/proc/self" "$fake/sys/bus/vmbus" "$fake/sys/module/vsock" "$fake/dev"
echo "AF_VSOCK  1240      0      -1   NI       0   yes  kernel" >"$fake/proc/net/protocols"
printf 'CapEff:\t000001ffffffffff\n' >"$fake/proc/self/status"
echo -1 >"$fake/dev/vsock"
"$agent" doctor --root "$fake" || echo "(doctor exit status $?)"
