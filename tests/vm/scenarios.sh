# The vm-test scenarios (sourced by scripts/vm-test.sh). One function per scenario, scenario_NAME for the
# scenario "NAME" (dashes become underscores); it ends with `pass FIGURE` or `fail REASON`. To add one,
# write the function and add its name to ALL_SCENARIOS. Guest halves run through `guest SECONDS COMMAND`
# with the helpers of tests/vm/guest-lib.sh; host halves are hvhost (and vsock_echo) on vhost-device-vsock's
# Unix sockets, started with bg_start.
# shellcheck shell=bash

# shutdown powers the guest off, so it stays last.
ALL_SCENARIOS="control-channel guest-dials-host host-dials-guest guid-addressing host-restart agent-restart vsock-faults in-guest-loopback backup filecopy benchmark time shutdown"

HEARTBEAT_PORT=$((0x48560001))
SHUTDOWN_PORT=$((0x48560003))
TIMESYNC_PORT=$((0x48560004))
TIME_LIMIT_US=10000 # scenario time: the guest clock must end within 10 ms of the host's
GUID_PORT=$((0x48560101)) # a port of its own, so that only the GUID can have named it
ECHO_PORT=20000
REDIAL_LIMIT_S=30

# guid_of PORT: the hv_sock service GUID of PORT (docs/PROTOCOL.md §1.2).
guid_of() { printf '%08x-facb-11e6-bd58-64006a7986d3' "$1"; }

# -------------------------------------------------------------------------------------- helpers

# serve_start NAME PORT HVHOST-ARGS...: hvhost serve on the socket where guest connects to CID 2 PORT
# arrive; returns once it listens.
serve_start() {
    local name=$1 uds=$RUN/vsock.uds_$2
    shift 2
    rm -f "$uds"
    bg_start "$name" "$HVHOST" serve "unix:$uds" "$@"
    wait_until 10 test -S "$uds" || fail "hvhost serve did not listen on $uds: $(bg_why "$name")"
}

# agent_up NAME connect|listen ADDRESS: start hvagent in the guest.
agent_up() {
    guest 20 "agent_start $1 $2 $3" || fail "hvagent did not start in the guest: $GUEST_OUT"
}

# agent_down NAME: SIGTERM the guest's agent NAME; it must exit 0. Adds its log to the diagnostics.
agent_down() {
    local status
    guest 20 "daemon_stop $1" || { fail "stopping hvagent: $GUEST_OUT"; return; }
    status=$(guest_value rc)
    [ "$status" = 0 ] || { agent_diag "$1"; fail "hvagent exited $status on SIGTERM (expected 0)"; }
}

# agent_diag NAME: the end of the guest agent's log, as diagnostics.
agent_diag() {
    if guest 10 "tail -n 8 /tmp/$1.log"; then diag "hvagent $1 log (guest):"$'\n'"$GUEST_OUT"; fi
}

# wait_heartbeats NAME N SECONDS: until hvhost NAME has printed N heartbeat lines.
wait_heartbeats() {
    wait_until "$3" eval "[ \"\$(bg_count $1 '^heartbeat seq=')\" -ge $2 ]"
}

# hybrid_heartbeat NAME PORT COUNT: hvhost heartbeat to the guest's PORT through the CONNECT handshake;
# tries again for up to 30 s while the agent is not listening yet (nothing negotiated).
hybrid_heartbeat() {
    local name=$1 deadline=$((SECONDS + 30)) status
    while :; do
        status=0
        bg_start "$name" "$HVHOST" heartbeat "hybrid:$RUN/vsock.uds:$2" --count "$3" --quiet
        bg_wait "$name" 120 || status=$?
        [ "$status" = 0 ] && return 0
        if grep -q '^negotiated' "$RUN/$name.out" || [ "$SECONDS" -ge "$deadline" ]; then
            fail "hvhost heartbeat to port $2 exited $status: $(bg_why "$name")"
            return
        fi
        sleep 0.5
    done
}

# probe_behind NAME N: the median of the last N "host_minus_guest_us" figures hvhost NAME printed (host
# time at a probe's arrival minus the guest time the probe carries: the guest's error plus a one-way delay).
probe_behind() {
    grep '^probe ' "$RUN/$1.out" 2>/dev/null | tail -n "$2" | grep -o 'host_minus_guest_us=[-0-9.]*' |
        cut -d= -f2 | sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'
}

# done_figures NAME: "p50 X us, p99 Y us" from hvhost NAME's closing line.
done_figures() { echo "p50 $(bg_field "$1" p50_us) us, p99 $(bg_field "$1" p99_us) us"; }

# guest_dials_host NAME AGENT-PORT PORT COUNT: the agent connects to CID 2 AGENT-PORT (as the agent's
# config spells it); hvhost serve on PORT's socket must get COUNT heartbeats answered.
guest_dials_host() {
    local name=$1 status=0
    serve_start "$name-host" "$3" --interval 0 --count "$4" --quiet || return
    agent_up "$name" connect "vsock:host:$2" || return
    bg_wait "$name-host" 120 || status=$?
    agent_down "$name" || return
    if [ "$status" != 0 ]; then
        agent_diag "$name"
        fail "hvhost serve exited $status: $(bg_why "$name-host")"
        return
    fi
    [ "$(bg_field "$name-host" heartbeats)" = "$4" ] ||
        fail "hvhost serve ended without $4 heartbeats: $(tail -n 1 "$RUN/$name-host.out")"
}

# host_dials_guest NAME AGENT-PORT HOST-PORT COUNT: the agent listens on AGENT-PORT; hvhost heartbeat
# dials HOST-PORT through vhost-device-vsock and must get COUNT heartbeats answered.
host_dials_guest() {
    local name=$1
    agent_up "$name" listen "vsock:any:$2" || return
    if ! hybrid_heartbeat "$name-host" "$3" "$4"; then
        agent_diag "$name"
        guest 20 "daemon_stop $1" || true
        return 1
    fi
    agent_down "$name" || return
    [ "$(bg_field "$name-host" heartbeats)" = "$4" ] ||
        fail "hvhost heartbeat ended without $4 heartbeats: $(tail -n 1 "$RUN/$name-host.out")"
}

# --------------------------------------------------------------------------------------- scenarios

# The command channel itself: commands keep arriving whole while orphaned processes end in the guest (each
# end signals the guest's PID 1; a half-read command once lost its first bytes that way).
scenario_control_channel() {
    local i
    guest 10 'for i in $(seq 200); do (sleep "$((i % 20)).$((i % 7))" &); done; echo started' ||
        { fail "starting the orphans: $GUEST_OUT"; return; }
    for i in $(seq 200); do
        guest 10 "echo answer$i" || { fail "command $i: $GUEST_OUT"; return; }
        [ "$GUEST_OUT" = "answer$i" ] || { fail "command $i was answered with: $GUEST_OUT"; return; }
    done
    pass "200 commands answered whole while 200 orphaned processes ended"
}

scenario_guest_dials_host() {
    guest_dials_host gdh 0x48560001 "$HEARTBEAT_PORT" 1000 || return
    pass "1000 heartbeats guest -> host, $(done_figures gdh-host)"
}

scenario_host_dials_guest() {
    host_dials_guest hdg 0x48560001 0x48560001 100 || return
    pass "100 heartbeats host -> guest via CONNECT, $(done_figures hdg-host)"
}

scenario_guid_addressing() {
    local guid
    guid=$(guid_of "$GUID_PORT")
    guest_dials_host guid-out "$guid" "$GUID_PORT" 100 || return
    host_dials_guest guid-in "$guid" "$guid" 100 || return
    pass "$guid reached port $GUID_PORT both ways, 100 heartbeats each"
}

# The host peer is away 1, 3 and then 6 s, so that the agent redials from deeper and deeper in its backoff.
scenario_host_restart() {
    local name=hr downtimes=(1 3 6) down start took slowest=0 before after
    serve_start hr-host "$HEARTBEAT_PORT" --interval 0.2 || return
    agent_up "$name" connect vsock:host:0x48560001 || return
    if ! wait_heartbeats hr-host 3 30; then
        agent_diag "$name"
        fail "no heartbeats before the first restart: $(bg_why hr-host)"
        return
    fi
    guest 10 "daemon_fds $name" || { fail "counting the agent's fds: $GUEST_OUT"; return; }
    before=$(guest_value fds)
    diag "agent fds before the restarts:"$'\n'"$GUEST_OUT"
    for down in "${downtimes[@]}"; do
        bg_stop hr-host KILL
        sleep "$down"
        serve_start hr-host "$HEARTBEAT_PORT" --interval 0.2 || return
        start=$(now)
        if ! wait_heartbeats hr-host 3 $((REDIAL_LIMIT_S + 5)); then
            agent_diag "$name"
            fail "heartbeats did not resume within $((REDIAL_LIMIT_S + 5)) s of a restart after $down s away"
            return
        fi
        took=$(elapsed "$start")
        slowest=$(awk -v a="$slowest" -v b="$took" 'BEGIN { print (b > a) ? b : a }')
    done
    guest 10 "daemon_fds $name" || { fail "counting the agent's fds: $GUEST_OUT"; return; }
    after=$(guest_value fds)
    diag "agent fds after ${#downtimes[@]} restarts:"$'\n'"$GUEST_OUT"
    bg_stop hr-host
    agent_down "$name" || return
    if [ "$before" != "$after" ]; then
        fail "the agent's open fds went from $before to $after over ${#downtimes[@]} host restarts"
        return
    fi
    awk -v t="$slowest" -v limit="$REDIAL_LIMIT_S" 'BEGIN { exit !(t <= limit) }' ||
        { fail "heartbeats resumed only after $slowest s (limit $REDIAL_LIMIT_S s)"; return; }
    DIAG=
    pass "${#downtimes[@]} host restarts (away ${downtimes[*]} s), heartbeats resumed within $slowest s, agent fds $before -> $after"
}

scenario_agent_restart() {
    local name=ar start status
    serve_start ar-host "$HEARTBEAT_PORT" --interval 0.2 || return
    agent_up "$name" connect vsock:host:0x48560001 || return
    wait_heartbeats ar-host 3 30 || { agent_diag "$name"; fail "no heartbeats before the kill"; return; }
    guest 20 "daemon_stop $name KILL" || { fail "SIGKILL of the agent: $GUEST_OUT"; return; }
    status=$(guest_value rc)
    [ "$status" = 137 ] || { fail "the agent's exit status after SIGKILL was $status, not 137"; return; }
    local seen
    seen=$(bg_count ar-host '^heartbeat seq=')
    start=$(now)
    agent_up "$name" connect vsock:host:0x48560001 || return
    if ! wait_heartbeats ar-host $((seen + 3)) 30; then
        agent_diag "$name"
        fail "heartbeats did not resume within 30 s of starting the agent again: $(bg_why ar-host)"
        return
    fi
    local took
    took=$(elapsed "$start")
    bg_stop ar-host
    agent_down "$name" || return
    pass "SIGKILLed agent started again, heartbeats resumed after $took s"
}

# Over real vsock: 300 host disconnects in the middle of a message leave the agent's descriptors where they
# were, and a host that sends half a header and then nothing is dropped after idle_timeout (1 s here).
scenario_vsock_faults() {
    local name=vf rounds=300 before after dropped
    guest 20 "printf '%s\n' 'redial_min = 0.005' 'redial_max = 0.02' 'idle_timeout = 1' '[heartbeat]' \
        'connect = \"vsock:host:$HEARTBEAT_PORT\"' '[shutdown]' 'enabled = false' '[guestinfo]' \
        'enabled = false' '[timesync]' 'enabled = false' >/tmp/$name.toml &&
        daemon_start $name hvagent --config /tmp/$name.toml" ||
        { fail "hvagent did not start in the guest: $GUEST_OUT"; return; }
    bg_start vf-warm python3 "$VM_DIR/storm.py" "$RUN/vsock.uds_$HEARTBEAT_PORT" 10
    bg_wait vf-warm 60 || { agent_diag "$name"; fail "warm-up storm: $(bg_why vf-warm)"; return; }
    guest 10 "daemon_fds $name" || { fail "counting the agent's fds: $GUEST_OUT"; return; }
    before=$(guest_value fds)
    bg_start vf-storm python3 "$VM_DIR/storm.py" "$RUN/vsock.uds_$HEARTBEAT_PORT" "$rounds"
    bg_wait vf-storm 300 || { agent_diag "$name"; fail "storm: $(bg_why vf-storm)"; return; }
    bg_start vf-stall python3 "$VM_DIR/storm.py" "$RUN/vsock.uds_$HEARTBEAT_PORT" --stall 1
    bg_wait vf-stall 60 || { agent_diag "$name"; fail "stalled peer: $(bg_why vf-stall)"; return; }
    dropped=$(bg_field vf-stall dropped_after_s)
    guest 10 "daemon_fds $name" || { fail "counting the agent's fds: $GUEST_OUT"; return; }
    after=$(guest_value fds)
    agent_down "$name" || return
    [ "$before" = "$after" ] ||
        { fail "the agent's open fds went from $before to $after over $rounds disconnects"; return; }
    awk -v t="$dropped" 'BEGIN { exit !(t >= 1 && t < 5) }' ||
        { fail "the stalled host was dropped after $dropped s (idle_timeout 1 s)"; return; }
    pass "$rounds disconnects mid-message over vsock, agent fds $before -> $after; half a header dropped after $dropped s (idle_timeout 1 s)"
}

scenario_in_guest_loopback() {
    [ -n "$LIBTESTS" ] || { fail "the lib unit-test binary did not build (see $RUN/build.log)"; return; }
    local status=0 start summary passed failed
    start=$(now)
    guest 300 "grep -q '^vsock_loopback ' /proc/modules && echo loopback=yes;
        timeout 240 hvagent-libtests --ignored --test-threads=1 real_vsock" || status=$?
    [ "$(guest_value loopback)" = yes ] || diag "vsock_loopback is not loaded in the guest"
    summary=$(grep '^test result:' <<<"$GUEST_OUT" | tail -n 1) || true
    if [ -z "$summary" ]; then
        diag "$(tail -n 15 <<<"$GUEST_OUT")"
        fail "no libtest summary from the guest (status $status)"
        return
    fi
    passed=$(grep -o '[0-9]* passed' <<<"$summary" | cut -d' ' -f1)
    failed=$(grep -o '[0-9]* failed' <<<"$summary" | cut -d' ' -f1)
    if [ "$passed" = 0 ] && [ "$failed" = 0 ]; then
        fail "no real_vsock tests found"
        return
    fi
    if [ "$failed" != 0 ] || [ "$status" != 0 ]; then
        diag "$(grep -E '^test .* FAILED$|panicked' <<<"$GUEST_OUT" | head -n 20)"
        fail "$failed of $((passed + failed)) real_vsock tests failed in the guest (status $status)"
        return
    fi
    pass "$passed real_vsock tests passed on CID 1 (vsock_loopback) in $(elapsed "$start") s"
}

FILECOPY_PORT=$((0x48560007))
FILECOPY_RAW_PORT=20001

# 64 MiB of random bytes from the host into the guest's /tmp/fcin through the agent's file-copy service
# (hvhost copy, host -> guest over real vsock), their sha256 checked in the guest; then the same bytes as a
# raw stream on the same path (vsock_echo send / sink, written and fsynced in the guest), for the ratio.
scenario_filecopy() {
    local deadline status host_sum copy_s raw_ms
    head -c $((64 << 20)) /dev/urandom >"$RUN/fc.bin" || { fail "cannot make the 64 MiB file"; return; }
    host_sum=$(sha256sum "$RUN/fc.bin" | cut -d' ' -f1)
    guest 20 "mkdir -p /tmp/fcin && rm -f /tmp/fcin/* /tmp/fcraw.bin &&
        agent_start fc listen vsock:any:0x48560001 '[filecopy]' 'enabled = true'
        'listen = \"vsock:any:0x48560007\"' 'allowed_dirs = [\"/tmp/fcin\"]'" ||
        { fail "hvagent did not start in the guest: $GUEST_OUT"; return; }
    deadline=$((SECONDS + 30))
    while :; do
        status=0
        bg_start fc-host "$HVHOST" copy "hybrid:$RUN/vsock.uds:$FILECOPY_PORT" "$RUN/fc.bin" /tmp/fcin --timeout 120
        bg_wait fc-host 600 || status=$?
        [ "$status" = 0 ] && break
        if grep -q '^negotiated' "$RUN/fc-host.out" || [ "$SECONDS" -ge "$deadline" ]; then
            agent_diag fc
            fail "hvhost copy exited $status: $(bg_why fc-host)"
            return
        fi
        sleep 0.5
    done
    guest 120 "sha256sum /tmp/fcin/fc.bin; echo \"listing=\$(ls -a /tmp/fcin | tr '\n' ' ')\"" || { fail "hashing in the guest: $GUEST_OUT"; return; }
    grep -q "^$host_sum " <<<"$GUEST_OUT" || { fail "the guest's copy differs: $GUEST_OUT (host $host_sum)"; return; }
    grep -q 'hvagent-copy' <<<"$GUEST_OUT" && { fail "a temporary file was left: $GUEST_OUT"; return; }
    copy_s=$(sed -n 's/^copied [0-9]* bytes .* in \([0-9.]*\) s .*/\1/p' "$RUN/fc-host.out")
    guest 20 "rm -f /tmp/fcin/fc.bin" || true
    agent_down fc || return
    guest 20 "daemon_start fcraw vsock_echo sink $FILECOPY_RAW_PORT /tmp/fcraw.bin >/dev/null &&
        for i in \$(seq 50); do grep -q listening /tmp/fcraw.log && break; sleep 0.1; done; cat /tmp/fcraw.log" ||
        { fail "vsock_echo sink did not start in the guest: $GUEST_OUT"; return; }
    bg_start fc-raw "$VSOCK_ECHO" send "$RUN/vsock.uds" "$FILECOPY_RAW_PORT" "$RUN/fc.bin"
    bg_wait fc-raw 600 || { fail "vsock_echo send failed: $(bg_why fc-raw)"; return; }
    raw_ms=$(sed -n 's/^sent .* ms=\([0-9.]*\) .*/\1/p' "$RUN/fc-raw.out")
    guest 20 "rm -f /tmp/fcraw.bin" || true
    pass "$(awk -v c="$copy_s" -v r="$raw_ms" 'BEGIN {
        printf "64 MiB copied in %.2f s (%.1f MiB/s), sha256 matches; the raw stream %.2f s (%.1f MiB/s): ratio %.2f",
            c, 64 / c, r / 1e3, 64 / (r / 1e3), (r / 1e3) / c }')"
}

# Not asserted: heartbeat round trips through the agent against a raw echo on the same host -> guest
# path, as a ratio of medians. The echo uses messages the size of hvhost's heartbeat (28 bytes of headers
# and a 16-byte body).
scenario_benchmark() {
    local count=2000 agent_p50 echo_p50
    agent_up bench listen vsock:any:0x48560001 || return
    guest 20 "daemon_start echo vsock_echo serve $ECHO_PORT >/dev/null &&
        for i in \$(seq 50); do grep -q listening /tmp/echo.log && break; sleep 0.1; done;
        cat /tmp/echo.log" || { fail "vsock_echo did not start in the guest: $GUEST_OUT"; return; }
    hybrid_heartbeat bench-host 0x48560001 "$count" || return
    bg_start bench-echo "$VSOCK_ECHO" ping "$RUN/vsock.uds" "$ECHO_PORT" "$count" 44
    bg_wait bench-echo 120 || { fail "vsock_echo ping failed: $(bg_why bench-echo)"; return; }
    guest 20 "daemon_stop echo" || true
    agent_down bench || return
    agent_p50=$(bg_field bench-host p50_us)
    echo_p50=$(bg_field bench-echo p50_us)
    pass "$(awk -v a="$agent_p50" -v e="$echo_p50" 'BEGIN {
        printf "heartbeat via agent p50 %s us vs raw vsock echo p50 %s us: ratio %.2f", a, e, a / e }')"
}

# The guest clock starts an hour behind; the agent (mode adjust, probes every second) with hvhost serve as its
# time source must bring it within TIME_LIMIT_US of the host's clock. The figure is measured by hvhost, not
# by the agent: for each probe, host time at arrival minus the guest time the probe carries.
scenario_time() {
    local name=ts host_s guest_s before after steps
    serve_start ts-host "$TIMESYNC_PORT" --service timesync --sample-interval 1 || return
    guest 10 "clock_back 3600" || { fail "cannot set the guest clock back: $GUEST_OUT"; return; }
    host_s=$(date +%s)
    guest_s=$(guest_value guest_s)
    before=$((host_s - guest_s))
    if [ "$before" -lt 3590 ] || [ "$before" -gt 3610 ]; then
        fail "after setting it back an hour the guest clock is $before s behind the host's"
        return
    fi
    guest 20 "timesync_agent_start $name vsock:host:0x48560004 adjust 1" ||
        { fail "hvagent did not start in the guest: $GUEST_OUT"; return; }
    if ! wait_until 90 eval "[ \"\$(bg_count ts-host '^probe ')\" -ge 30 ]"; then
        agent_diag "$name"
        fail "fewer than 30 probes reached hvhost in 90 s: $(bg_why ts-host)"
        return
    fi
    after=$(probe_behind ts-host 10)
    guest 10 "grep -c 'stepped the clock' /tmp/$name.log" || true
    steps=$(tail -n 1 <<<"$GUEST_OUT")
    agent_down "$name" || return
    bg_stop ts-host
    diag "hvhost's last probes: $(grep '^probe ' "$RUN/ts-host.out" | tail -n 3 | tr '\n' ' ')"
    if ! awk -v a="$after" -v limit="$TIME_LIMIT_US" 'BEGIN { exit !(a < limit && a > -limit) }'; then
        agent_diag "$name"
        fail "the guest clock is still ${after} us behind the host's (limit $TIME_LIMIT_US us)"
        return
    fi
    [ "$steps" = 1 ] || { agent_diag "$name"; fail "the agent stepped the clock $steps times, not once"; return; }
    DIAG=
    pass "guest clock ${before} s behind; stepped once by the agent; host - guest at probe arrival now ${after} us (median of 10, one-way delay included; limit $TIME_LIMIT_US us)"
}

# Last, since it powers the guest off. The guest's init is a busybox script, not systemd, so the agent's
# default poweroff command ("systemctl poweroff") falls back to sync + reboot(2) (it runs as root, with
# CAP_SYS_BOOT). The kernel's "reboot: Power down" on the console, without init's own "HVTEST poweroff",
# shows that the agent powered the guest off; QEMU must then exit by itself.
scenario_shutdown() {
    local deadline=$((SECONDS + 30)) status start
    guest 20 "agent_start sd listen vsock:any:0x48560001 '[shutdown]' 'listen = \"vsock:any:0x48560003\"'" ||
        { fail "hvagent did not start in the guest: $GUEST_OUT"; return; }
    while :; do
        status=0
        bg_start sd-host "$HVHOST" shutdown "hybrid:$RUN/vsock.uds:$SHUTDOWN_PORT" --reason 0x80000000 \
            --message "hvagent vm-test"
        bg_wait sd-host 60 || status=$?
        [ "$status" = 0 ] && break
        if grep -q '^negotiated' "$RUN/sd-host.out" || [ "$SECONDS" -ge "$deadline" ]; then
            agent_diag sd
            fail "hvhost shutdown exited $status: $(cat "$RUN/sd-host.out") $(bg_why sd-host)"
            return
        fi
        sleep 0.5
    done
    grep -q 'answer=HV_S_OK' "$RUN/sd-host.out" ||
        { fail "the guest did not answer HV_S_OK: $(cat "$RUN/sd-host.out")"; return; }
    start=$(now)
    if ! wait_until 60 eval '! vm_alive'; then
        fail "the guest answered HV_S_OK but QEMU was still running 60 s later"
        return
    fi
    if grep -aq '^HVTEST poweroff' "$RUN/console.log"; then
        fail "the guest's init powered off, not the agent"
        return
    fi
    grep -aq 'reboot: Power down' "$RUN/console.log" ||
        { fail "QEMU exited without the kernel's power-down message: $(tail -n 3 "$RUN/console.log")"; return; }
    pass "answered HV_S_OK, the agent powered the guest off (reboot(2), no systemd), QEMU exited $(elapsed "$start") s after the answer"
}

# -------------------------------------------------------------------------------------------- backup

BACKUP_PORT=$((0x48560005))

# backup_host NAME HVHOST-BACKUP-ARGS...: hvhost backup to the guest's backup port, in the background, tried
# again for up to 30 s while the agent is not listening yet (nothing answered).
backup_host() {
    local name=$1 deadline=$((SECONDS + 30))
    shift
    while :; do
        bg_start "$name" "$HVHOST" backup "hybrid:$RUN/vsock.uds:$BACKUP_PORT" "$@"
        wait_until 10 eval "grep -qs '^backup ' '$RUN/$name.out' || ! bg_running $name"
        grep -qs '^backup ' "$RUN/$name.out" && return 0
        [ "$SECONDS" -lt "$deadline" ] || { fail "hvhost backup never got an answer: $(bg_why "$name")"; return 1; }
        bg_stop "$name" KILL
        sleep 0.5
    done
}

# writer_is STATE SECONDS: until the guest's writer is STATE (running or done).
writer_is() {
    local deadline=$((SECONDS + $2))
    while :; do
        guest 10 writer_state || return 1
        [ "$(guest_value writer)" = "$1" ] && return 0
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

# stall_diag NAME: diagnostics for a writer that did not finish: guest agent NAME's log, the writer's
# kernel stack and the blocked tasks (on the console, shown by the harness when the guest wedges).
stall_diag() {
    agent_diag "$1"
    if guest 10 stall_report; then diag "the stalled writer (guest):"$'\n'"$GUEST_OUT"; fi
    diag "the end of the guest console:"$'\n'"$(tail -n 60 "$GUEST_CONSOLE" | tr -d '\r' | grep -v '^@')"
}

# rtt NAME WORD: the round trip hvhost NAME printed for its WORD step (check, freeze, thaw), in ms.
rtt() { sed -n "s/^backup $2 answer=HV_S_OK.* rtt_ms=\([0-9.]*\).*/\1/p" "$RUN/$1.out" | tail -n 1; }

# A real ext4 filesystem on the guest's second disk: frozen while hvhost runs its command (a writer stalls
# and finishes after the thaw; both halves of the hooks run), thawed when the host's link drops, when
# thaw_after expires, and by the next start of an agent that was SIGKILLed while frozen.
scenario_backup() {
    local figures=() hooks name status
    for hooks in 0 2; do
        name=bk$hooks
        guest 20 "backup_setup $hooks" || { fail "setting up the scratch disk: $GUEST_OUT"; return; }
        [ "$(guest_value mounted)" = 1 ] || { fail "the scratch ext4 disk is not mounted read-write: $GUEST_OUT"; return; }
        guest 20 "backup_agent_start $name 30" || { fail "hvagent did not start: $GUEST_OUT"; return; }
        backup_host "$name-host" --run sleep 3 || { agent_diag "$name"; return 1; }
        wait_until 10 grep -q '^run command=' "$RUN/$name-host.out" ||
            { agent_diag "$name"; fail "hvhost never froze the guest: $(bg_why "$name-host")"; return; }
        guest 10 writer_start || { fail "starting the writer: $GUEST_OUT"; return; }
        sleep 1
        writer_is "running" 0 || { agent_diag "$name"; fail "a writer went through while frozen"; return; }
        status=0
        bg_wait "$name-host" 30 || status=$?
        [ "$status" = 0 ] || { agent_diag "$name"; fail "hvhost backup --run exited $status: $(bg_why "$name-host")"; return; }
        writer_is "done" 5 || { stall_diag "$name"; fail "the writer still stalls after the thaw"; return; }
        grep -q '^frozen for ' "$RUN/$name-host.out" || { fail "no 'frozen for' line: $(bg_why "$name-host")"; return; }
        if [ "$hooks" = 2 ]; then
            guest 10 'cat /tmp/hooks.log' || { fail "reading the hooks' log: $GUEST_OUT"; return; }
            [ "$(tr '\n' ' ' <<<"$GUEST_OUT")" = "1-hook freeze 2-hook freeze 2-hook thaw 1-hook thaw " ] ||
                { fail "hooks ran as: $GUEST_OUT"; return; }
        fi
        figures+=("$hooks hooks: freeze $(rtt "$name-host" freeze) ms, thaw $(rtt "$name-host" thaw) ms")
        agent_down "$name" || return
    done

    # The host's link drops while frozen: thawed within 1 s.
    guest 20 "backup_setup 0 && backup_agent_start bkdrop 30" || { fail "hvagent did not start: $GUEST_OUT"; return; }
    backup_host bkdrop-host --run sleep 30 || return
    wait_until 10 grep -q '^run command=' "$RUN/bkdrop-host.out" || { fail "not frozen: $(bg_why bkdrop-host)"; return; }
    guest 10 writer_start || { fail "starting the writer: $GUEST_OUT"; return; }
    writer_is "running" 0 || { fail "a writer went through while frozen"; return; }
    bg_stop bkdrop-host KILL
    writer_is "done" 1 || { stall_diag bkdrop; fail "not thawed within 1 s of the host's link dropping"; return; }
    agent_down bkdrop || return

    # thaw_after: the host keeps the link and never thaws; the agent thaws after 2 s on its own.
    guest 20 "backup_agent_start bkafter 2" || { fail "hvagent did not start: $GUEST_OUT"; return; }
    backup_host bkafter-host --run sleep 8 || return
    wait_until 10 grep -q '^run command=' "$RUN/bkafter-host.out" || { fail "not frozen: $(bg_why bkafter-host)"; return; }
    guest 10 writer_start || { fail "starting the writer: $GUEST_OUT"; return; }
    writer_is "done" 4 || { stall_diag bkafter; fail "thaw_after = 2 did not thaw within 4 s"; return; }
    bg_wait bkafter-host 20 || true
    agent_down bkafter || return

    # SIGHUP (a reload) and SIGTERM each thaw, the first with the agent still running.
    guest 20 "backup_agent_start bksig 30" || { fail "hvagent did not start: $GUEST_OUT"; return; }
    backup_host bkhup-host --run sleep 30 || return
    wait_until 10 grep -q '^run command=' "$RUN/bkhup-host.out" || { fail "not frozen: $(bg_why bkhup-host)"; return; }
    guest 10 writer_start || { fail "starting the writer: $GUEST_OUT"; return; }
    writer_is "running" 0 || { fail "a writer went through while frozen"; return; }
    guest 10 'kill -HUP "$(daemon_pid bksig)"' || { fail "SIGHUP: $GUEST_OUT"; return; }
    writer_is "done" 1 || { stall_diag bksig; fail "SIGHUP did not thaw within 1 s"; return; }
    bg_stop bkhup-host KILL
    backup_host bkterm-host --run sleep 30 || return
    wait_until 10 grep -q '^run command=' "$RUN/bkterm-host.out" || { fail "not frozen: $(bg_why bkterm-host)"; return; }
    guest 10 writer_start || { fail "starting the writer: $GUEST_OUT"; return; }
    writer_is "running" 0 || { fail "a writer went through while frozen"; return; }
    agent_down bksig || return
    writer_is "done" 1 || { stall_diag bksig; fail "SIGTERM did not thaw within 1 s"; return; }
    bg_stop bkterm-host KILL

    # A SIGKILLed agent leaves the disk frozen; its next start thaws it.
    guest 20 "backup_agent_start bkkill 30" || { fail "hvagent did not start: $GUEST_OUT"; return; }
    backup_host bkkill-host --run sleep 30 || return
    wait_until 10 grep -q '^run command=' "$RUN/bkkill-host.out" || { fail "not frozen: $(bg_why bkkill-host)"; return; }
    guest 10 "daemon_stop bkkill KILL" || { fail "killing the agent: $GUEST_OUT"; return; }
    bg_stop bkkill-host KILL
    guest 10 writer_start || { fail "starting the writer: $GUEST_OUT"; return; }
    sleep 1
    writer_is "running" 0 || { fail "the disk was not left frozen by the SIGKILLed agent (the test proves nothing)"; return; }
    guest 20 "backup_agent_start bkkill2 30" || { fail "hvagent did not restart: $GUEST_OUT"; return; }
    writer_is "done" 5 || { stall_diag bkkill2; fail "the next start did not thaw"; return; }
    guest 10 "grep -c 'at start' /tmp/bkkill2.log" || true
    agent_down bkkill2 || return
    pass "writer stalled while frozen and finished after the thaw; link drop, thaw_after, SIGHUP, SIGTERM and restart thawed; ${figures[*]}"
}
