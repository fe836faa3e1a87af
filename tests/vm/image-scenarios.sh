# The vm-test scenarios on the systemd image (sourced by scripts/vm-test.sh; the image: tests/vm/image.sh).
# Like tests/vm/scenarios.sh: one function per scenario, scenario_NAME for "NAME", ending in `pass FIGURE`
# or `fail REASON`; guest halves through `guest SECONDS COMMAND` (bash, with tests/vm/image/guest-lib.sh),
# host halves hvhost on vhost-device-vsock's Unix sockets. The agent here is the installed package, run by
# systemd as hvagent.service with tests/vm/image/hvagent.toml. To add a scenario, write its function
# (starting with `sd_begin || return`) and add its name to IMAGE_SCENARIOS.
# shellcheck shell=bash

# sd-poweroff powers the guest off, so it stays last.
IMAGE_SCENARIOS="sd-ready sd-least-privilege sd-status-doctor sd-health sd-clock-step sd-restart-clock
    sd-stop-frequency sd-guestinfo sd-kvp sd-reload sd-watchdog sd-polkit sd-upgrade sd-poweroff"
CAP_SYS_TIME_ONLY=0000000002000000 # a capability set holding CAP_SYS_TIME (bit 25) alone
NO_CAPABILITY=0000000000000000
GUESTINFO_PORT=$((0x48560002))
IMAGE_CLOCK_LIMIT_US=10000  # a stepped clock must come back within 10 ms of the host's
RESTART_SLACK_US=1000       # defect 1: restarting may add at most 1 ms to the clock's error
FREQ_BEFORE=                # the kernel's frequency (adjtimex, raw) before the agent first started

# ----------------------------------------------------------------------------------- the session

# The host's peers for the whole session: hvhost serve for the heartbeat (whose lines show the application
# state) and for time sync (whose probe lines measure the guest clock).
image_hosts_start() {
    bg_running sd-hb || serve_start sd-hb "$HEARTBEAT_PORT" --interval 0.5 || return
    bg_running sd-ts || serve_start sd-ts "$TIMESYNC_PORT" --service timesync --sample-interval 1
}

# Every scenario starts here: a failed one before it may have stopped the host's peers (stop_leftovers).
sd_begin() {
    image_hosts_start || return
    guest 60 "[ \"\$(prop hvagent ActiveState)\" = active ] || { systemctl reset-failed hvagent; systemctl start hvagent; }" ||
        fail "hvagent.service is not active and did not start: $GUEST_OUT"
}

# show PROPERTY...: hvagent.service's properties into GUEST_OUT as PROPERTY=VALUE lines.
show() {
    local args=() p
    for p in "$@"; do args+=(-p "$p"); done
    guest 20 "systemctl show ${args[*]} hvagent" || fail "systemctl show: $GUEST_OUT"
}

# After the VM boots: the NIC, the drop-ins, the package (the unit starts on install, as a user would see
# it), then the test configuration and a restart. Reads the kernel's frequency before the agent ever ran.
image_session_setup() {
    local start
    guest 20 "net_up $IMAGE_IPV4 && freq_raw" ||
        { say "guest setup failed: $GUEST_OUT"; return 1; }
    FREQ_BEFORE=$(guest_value freq)
    image_hosts_start || { say "$RESULT"; return 1; }
    start=$(now)
    if ! guest 180 "setup_agent && install_package </dev/null"; then
        say "dpkg -i in the guest failed: $(tail -n 5 <<<"$GUEST_OUT")"
        return 1
    fi
    say "dpkg -i of $(basename "$DEB") in the guest took $(elapsed "$start") s"
    guest 60 "cp \$PAYLOAD/hvagent.toml /etc/hvagent/hvagent.toml && systemctl restart hvagent" ||
        { say "restarting hvagent with the test configuration failed: $GUEST_OUT"; return 1; }
}

# ----------------------------------------------------------------------------------------- helpers

# last_state: the application state of hvhost's last heartbeat.
last_state() { grep '^heartbeat ' "$RUN/sd-hb.out" | tail -n 1 | grep -o 'state=[a-z]*' | cut -d= -f2; }

# wait_state STATE SECONDS: until hvhost's heartbeats show STATE.
wait_state() { wait_until "$2" eval "[ \"\$(last_state)\" = $1 ]"; }

# probes_since LINE: the host_minus_guest_us figures of sd-ts's probes after its output's line LINE.
probes_since() {
    tail -n +"$(($1 + 1))" "$RUN/sd-ts.out" | grep '^probe ' | grep -o 'host_minus_guest_us=[-0-9.]*' |
        cut -d= -f2
}

# median_abs: the median of the absolute values of the numbers on stdin (empty when there are none).
median_abs() {
    awk '{ printf "%.1f\n", ($1 < 0) ? -$1 : $1 }' | sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'
}

# below VALUE LIMIT: VALUE is a number less than LIMIT.
below() { awk -v v="$1" -v l="$2" 'BEGIN { exit !(v != "" && v + 0 < l + 0) }'; }

# ts_lines: how many lines sd-ts has printed; ts_last_connect: the line of its last "connected".
ts_lines() { wc -l <"$RUN/sd-ts.out"; }
ts_last_connect() { grep -n '^connected' "$RUN/sd-ts.out" | tail -n 1 | cut -d: -f1; }

# wait_probes LINE N SECONDS: until sd-ts has printed N probes after LINE.
wait_probes() { wait_until "$3" eval "[ \"\$(probes_since $1 | wc -l)\" -ge $2 ]"; }

# clock_error_us: the guest clock's error now, as the median |host - guest| of sd-ts's last 5 probes
# (waits for 5 fresh ones).
clock_error_us() {
    local from
    from=$(ts_lines)
    wait_probes "$from" 5 30 || return 1
    probes_since "$from" | head -n 5 | median_abs
}

# agent_journal: the end of the agent's journal, as diagnostics.
agent_journal() {
    if guest 20 "journalctl -u hvagent -o cat --no-pager | tail -n ${1:-10}"; then
        diag "hvagent journal (guest):"$'\n'"$GUEST_OUT"
    fi
}

# --------------------------------------------------------------------------------------- scenarios

scenario_sd_ready() {
    sd_begin || return
    show Type ActiveState SubState StatusText ExecMainStartTimestampMonotonic ActiveEnterTimestampMonotonic || return
    local type state status start ready
    type=$(guest_value Type)
    state=$(guest_value ActiveState)/$(guest_value SubState)
    status=$(guest_value StatusText)
    start=$(guest_value ExecMainStartTimestampMonotonic)
    ready=$(guest_value ActiveEnterTimestampMonotonic)
    [ "$type" = notify ] || { fail "the unit is Type=$type, not notify"; return; }
    [ "$state" = active/running ] || { agent_journal; fail "hvagent.service is $state"; return; }
    [ -n "$status" ] || { fail "no STATUS= text (StatusText is empty)"; return; }
    pass "active/running (Type=notify), READY $(((ready - start) / 1000)) ms after exec; StatusText \"$status\"; guest booted to its control channel in ${IMAGE_BOOT_SECONDS:-?} s"
}

scenario_sd_status_doctor() {
    sd_begin || return
    local status=0
    guest 30 "hvagent status" || status=$?
    [ "$status" = 0 ] || { diag "$GUEST_OUT"; fail "hvagent status exited $status"; return; }
    grep -q 'heartbeat' <<<"$GUEST_OUT" && grep -q 'connected' <<<"$GUEST_OUT" ||
        { diag "$GUEST_OUT"; fail "hvagent status shows no connected heartbeat"; return; }
    local first
    first=$(head -n 1 <<<"$GUEST_OUT")
    guest 60 "hvagent doctor" || status=$?
    [ "$status" = 0 ] || { diag "$GUEST_OUT"; fail "hvagent doctor exited $status: $(grep -v '^ok' <<<"$GUEST_OUT" | head -n 3 | tr '\n' ' ')"; return; }
    pass "status: \"$first\"; doctor: exit 0, $(wc -l <<<"$GUEST_OUT") lines"
}

# The agent runs as its own user with no capability at all (CapabilityBoundingSet= empty, ProtectClock=yes),
# and its clock helper, hvagent-clock.service (started by hvagent-clock.socket when the agent asks; probes
# every second keep it running), with CAP_SYS_TIME as its only effective, permitted, ambient and bounding
# capability.
scenario_sd_least_privilege() {
    sd_begin || return
    guest 60 "pid=\$(main_pid); wait_for 30 eval '[ \"\$(prop hvagent-clock MainPID)\" != 0 ]';
        hpid=\$(prop hvagent-clock MainPID); ps -o user,pid,cmd -p \$pid,\$hpid;
        echo user=\$(ps -o user= -p \$pid); echo helper_user=\$(ps -o user= -p \$hpid); caps_of \$pid;
        caps_of \$hpid | sed 's/^/helper_/'; echo protect_clock=\$(prop hvagent ProtectClock)" ||
        { fail "ps or /proc/PID/status: $GUEST_OUT"; return; }
    diag "$GUEST_OUT"
    local user helper set bad=()
    user=$(guest_value user)
    helper=$(guest_value helper_user)
    [ -n "$user" ] && [ "$user" != root ] || { fail "the agent runs as ${user:-nobody knows whom}"; return; }
    [ -n "$helper" ] && [ "$helper" != root ] || { fail "the clock helper runs as ${helper:-nobody knows whom (not running?)}"; return; }
    for set in CapEff CapPrm CapAmb CapBnd; do
        [ "$(guest_value "$set")" = "$NO_CAPABILITY" ] || bad+=("agent $set=$(guest_value "$set") ($(guest_value "${set}_names"))")
        [ "$(guest_value "helper_$set")" = "$CAP_SYS_TIME_ONLY" ] ||
            bad+=("helper $set=$(guest_value "helper_$set") ($(guest_value "helper_${set}_names"))")
    done
    [ "$(guest_value protect_clock)" = yes ] || bad+=("agent ProtectClock=$(guest_value protect_clock)")
    [ ${#bad[@]} = 0 ] || { fail "not as expected: ${bad[*]}"; return; }
    pass "$(grep -m 1 'hvagent run$' <<<"$GUEST_OUT" | tr -s ' '): CapEff=CapPrm=CapAmb=CapBnd=$NO_CAPABILITY, ProtectClock=yes; $(grep -m 1 'hvagent clock-helper$' <<<"$GUEST_OUT" | tr -s ' '): CapEff=CapPrm=CapAmb=CapBnd=$CAP_SYS_TIME_ONLY ($(guest_value helper_CapEff_names))"
}

# health = auto is systemd here: a failed unit makes the system degraded, which the host must see as
# critical, and reset-failed must bring it back to healthy.
scenario_sd_health() {
    sd_begin || return
    local start to_critical to_healthy
    if ! wait_state healthy 30; then
        guest 20 "systemctl is-system-running; systemctl --failed --no-legend" || true
        fail "the host's heartbeats show $(last_state), not healthy, before the test (system: $(tr '\n' ' ' <<<"$GUEST_OUT"))"
        return
    fi
    guest 30 "systemd-run --quiet --unit=hvtest-fail --service-type=oneshot /bin/false; systemctl is-system-running" || true
    [ "$(tail -n 1 <<<"$GUEST_OUT")" = degraded ] ||
        { fail "a failed oneshot did not make the system degraded: $GUEST_OUT"; return; }
    start=$(now)
    wait_state critical 30 || { agent_journal; fail "the host still sees $(last_state) 30 s after a unit failed"; return; }
    to_critical=$(elapsed "$start")
    guest 20 "systemctl reset-failed && systemctl is-system-running" || true
    start=$(now)
    wait_state healthy 30 || { agent_journal; fail "the host still sees $(last_state) 30 s after reset-failed"; return; }
    to_healthy=$(elapsed "$start")
    pass "healthy -> critical ${to_critical} s after a unit failed -> healthy ${to_healthy} s after reset-failed (hvhost heartbeats)"
}

# The guest clock an hour ahead; the agent must step it back through its clock helper (both journals say
# so), and the probes that follow must find it within IMAGE_CLOCK_LIMIT_US of the host's clock.
scenario_sd_clock_step() {
    sd_begin || return
    local from start error step
    start=$(now)
    guest 90 "steps=\$(journalctl -u hvagent -o cat --no-pager | grep -c 'stepped the clock');
        date -s @\$((\$(date +%s) + 3600)) >/dev/null &&
        wait_for 60 eval '[ \$(journalctl -u hvagent -o cat --no-pager | grep -c \"stepped the clock\") -gt \$steps ]' &&
        journalctl -u hvagent -o cat --no-pager | grep 'stepped the clock' | tail -n 1" ||
        { agent_journal; fail "no step by the agent within 60 s of the guest clock jumping an hour ahead: $GUEST_OUT"; return; }
    step=$(tail -n 1 <<<"$GUEST_OUT")
    # The agent holds no CAP_SYS_TIME: the step must have been the clock helper's.
    guest 20 "journalctl -u hvagent-clock -o cat --no-pager | grep 'stepped the clock' | tail -n 1" ||
        { fail "the clock helper's journal shows no step: $GUEST_OUT"; return; }
    local helper_step=$GUEST_OUT
    from=$(ts_lines)
    wait_probes "$from" 3 30 || { fail "fewer than 3 probes in 30 s after the step"; return; }
    error=$(probes_since "$from" | head -n 3 | median_abs)
    below "$error" "$IMAGE_CLOCK_LIMIT_US" ||
        { agent_journal; fail "after the step the guest clock is still $error us off the host's (limit $IMAGE_CLOCK_LIMIT_US us)"; return; }
    pass "an hour ahead, stepped back $(elapsed "$start") s after the jump (\"$step\"; the helper: \"$helper_step\"); error then $error us (median of 3 probes; limit $IMAGE_CLOCK_LIMIT_US us)"
}

# Defect 1: with the clock right, a restart of the agent must not make it worse. Error before: the median
# |host - guest| of 5 probes of the running agent; after: of the first 5 probes of the restarted one.
scenario_sd_restart_clock() {
    sd_begin || return
    local before after worst pid from right=yes
    wait_until 60 eval 'below "$(clock_error_us)" 5000' || right=no
    before=$(clock_error_us) || { fail "no probes from the running agent"; return; }
    guest 20 main_pid || { fail "no main PID: $GUEST_OUT"; return; }
    pid=$GUEST_OUT
    guest 60 "systemctl restart hvagent && wait_for 30 unit_active_with_new_pid $pid" ||
        { agent_journal; fail "systemctl restart hvagent: $GUEST_OUT"; return; }
    wait_until 30 eval '[ "$(ts_last_connect)" -gt 0 ] 2>/dev/null' || true
    from=$(ts_last_connect)
    wait_probes "$from" 5 30 || { agent_journal; fail "fewer than 5 probes from the restarted agent in 30 s"; return; }
    after=$(probes_since "$from" | head -n 5 | median_abs)
    worst=$(probes_since "$from" | head -n 5 | awk '{ v = ($1 < 0) ? -$1 : $1; if (v > m) m = v } END { print m }')
    local figures
    figures=$(awk -v b="$before" -v a="$after" -v w="$worst" 'BEGIN {
        printf "error before %.3f ms, after %.3f ms (worst of 5: %.3f ms)", b / 1000, a / 1000, w / 1000 }')
    if [ "$right" = no ]; then
        agent_journal 6
        fail "the clock was not right before the restart (not within 5 ms of the host's after 60 s): $figures"
        return
    fi
    if ! awk -v b="$before" -v a="$after" -v s="$RESTART_SLACK_US" 'BEGIN { exit !(a <= b + s) }'; then
        agent_journal 6
        fail "restart with the clock right made it worse: $figures; limit before + $((RESTART_SLACK_US / 1000)) ms"
        return
    fi
    pass "$figures"
}

# Defect 2: after systemctl stop, the kernel's frequency must be what it was before the agent first ran.
scenario_sd_stop_frequency() {
    sd_begin || return
    local running after
    guest 20 freq_raw && running=$(guest_value freq)
    guest 30 "systemctl stop hvagent && freq_raw" ||
        { fail "systemctl stop hvagent: $GUEST_OUT"; return; }
    after=$(guest_value freq)
    guest 60 "systemctl start hvagent" || { fail "systemctl start hvagent: $GUEST_OUT"; return; }
    local figures
    figures=$(awk -v b="$FREQ_BEFORE" -v r="$running" -v a="$after" 'BEGIN {
        printf "frequency before the first start %.3f ppm, while running %.3f ppm, after stop %.3f ppm", b / 65536, r / 65536, a / 65536 }')
    awk -v a="$after" 'BEGIN { exit !(a < 500 * 65536 && a > -500 * 65536) }' ||
        { fail "pegged at the limit: $figures"; return; }
    [ "$after" = "$FREQ_BEFORE" ] || { fail "not restored: $figures"; return; }
    pass "$figures"
}

# Under PrivateNetwork= the agent sees only its own loopback; the host must still get the guest's address.
scenario_sd_guestinfo() {
    sd_begin || return
    show PrivateNetwork || return
    [ "$(guest_value PrivateNetwork)" = yes ] || { fail "the unit runs without PrivateNetwork="; return; }
    local deadline=$((SECONDS + 30)) status
    while :; do
        status=0
        bg_start sd-kvp "$HVHOST" kvp "hybrid:$RUN/vsock.uds:$GUESTINFO_PORT" enumerate --pool auto
        bg_wait sd-kvp 60 || status=$?
        [ "$status" = 0 ] && break
        [ "$SECONDS" -lt "$deadline" ] || { agent_journal; fail "hvhost kvp enumerate exited $status: $(bg_why sd-kvp)"; return; }
        sleep 0.5
    done
    local line
    line=$(grep -a 'NetworkAddressIPv4' "$RUN/sd-kvp.out" | head -n 1)
    grep -q "$IMAGE_IPV4" <<<"$line" ||
        { diag "$(cat "$RUN/sd-kvp.out")"; fail "NetworkAddressIPv4 is not $IMAGE_IPV4: ${line:-absent}"; return; }
    pass "PrivateNetwork=yes, pool 2 enumerate: $line"
}

# kvp_host NAME ARGS...: hvhost kvp ARGS to the guest's guest-info service; its output in RUN/NAME.out.
kvp_host() {
    local name=$1 status
    shift
    bg_start "$name" "$HVHOST" kvp "hybrid:$RUN/vsock.uds:$GUESTINFO_PORT" "$@"
    status=0
    bg_wait "$name" 60 || status=$?
    [ "$status" = 0 ] || { agent_journal; fail "hvhost kvp $* exited $status: $(bg_why "$name")"; }
}

# The pool files under the packaged unit: what `hvagent kvp set` (root, on the files) writes the host
# enumerates, what the host sets `hvagent kvp get` reads, and GET_IP_INFO for the guest's own adapter (by
# its MAC) answers its address from inside PrivateNetwork=.
scenario_sd_kvp() {
    sd_begin || return
    guest 30 'hvagent kvp set Role "web server" && hvagent kvp set Stage ready;
        echo owner=$(stat -c %u /var/lib/hvagent/kvp/.kvp_pool_1);
        echo uid=$(id -u hvagent);
        for dev in /sys/class/net/*; do [ "${dev##*/}" = lo ] || { echo mac=$(cat "$dev/address"); break; }; done' ||
        { fail "hvagent kvp set in the guest: $GUEST_OUT"; return; }
    local mac owner uid
    mac=$(guest_value mac)
    owner=$(guest_value owner)
    uid=$(guest_value uid)
    [ "$owner" = "$uid" ] || { fail "the guest pool file made by root is owned by ${owner:-nobody}, not the agent's user ($uid)"; return; }
    kvp_host sd-kvp-enum enumerate --pool guest || return
    grep -q 'key=Role value="web server"' "$RUN/sd-kvp-enum.out" && grep -q 'key=Stage value="ready"' "$RUN/sd-kvp-enum.out" ||
        { diag "$(cat "$RUN/sd-kvp-enum.out")"; fail "the host's enumerate of the guest pool lacks what hvagent kvp set wrote"; return; }
    kvp_host sd-kvp-set set VirtualMachineName vm-under-test || return
    guest 20 'hvagent kvp get VirtualMachineName --pool external' || { fail "hvagent kvp get: $GUEST_OUT"; return; }
    [ "$GUEST_OUT" = vm-under-test ] || { fail "hvagent kvp get VirtualMachineName printed: $GUEST_OUT"; return; }
    kvp_host sd-kvp-ip ip-info "$mac" || return
    grep -q 'answer=HV_S_OK' "$RUN/sd-kvp-ip.out" && grep -q "^address=$IMAGE_IPV4/" "$RUN/sd-kvp-ip.out" ||
        { diag "$(cat "$RUN/sd-kvp-ip.out")"; fail "GET_IP_INFO for $mac did not answer $IMAGE_IPV4"; return; }
    pass "hvagent kvp set -> host enumerate (guest pool, file owned by uid $uid), host set -> hvagent kvp get, ip-info $mac: $(grep '^address=' "$RUN/sd-kvp-ip.out" | head -n 1)"
}

# reload_with DESCRIPTION EDIT: apply the shell EDIT to /etc/hvagent/hvagent.toml in the guest, then
# systemctl reload; GUEST_OUT gets the agent's journal lines since, then "pid=" and "state=".
reload_with() {
    guest 60 "pid=\$(main_pid); cursor=\$(journalctl -u hvagent -n 0 --show-cursor | sed -n 's/^-- cursor: //p');
        $2 && systemctl reload hvagent && sleep 0.5 &&
        journalctl -u hvagent -o cat --no-pager --after-cursor=\"\$cursor\";
        echo old_pid=\$pid; echo pid=\$(main_pid); echo state=\$(prop hvagent ActiveState)" ||
        { fail "$1: systemctl reload: $GUEST_OUT"; return; }
    [ "$(guest_value state)" = active ] && [ "$(guest_value pid)" = "$(guest_value old_pid)" ] ||
        { diag "$GUEST_OUT"; fail "$1: after the reload the unit is $(guest_value state), PID $(guest_value old_pid) -> $(guest_value pid)"; return; }
}

# README: SIGHUP (systemctl reload) re-reads the file; a broken file is logged and the running configuration
# kept. The agent must stay up under the same PID both times, and keep answering heartbeats.
scenario_sd_reload() {
    sd_begin || return
    local good bad seen
    reload_with "good config" "sed -i 's/^log_level = .*/log_level = \"debug\"/' /etc/hvagent/hvagent.toml" || return
    good=$(grep -m 1 'reloaded' <<<"$GUEST_OUT") || { diag "$GUEST_OUT"; fail "no \"reloaded\" in the journal after a good reload"; return; }
    reload_with "broken config" "echo 'no_such_key = 1' >>/etc/hvagent/hvagent.toml" || return
    bad=$(grep -m 1 'reload failed' <<<"$GUEST_OUT") || { diag "$GUEST_OUT"; fail "no \"reload failed\" in the journal after a broken reload"; return; }
    seen=$(bg_count sd-hb '^heartbeat seq=')
    wait_heartbeats sd-hb $((seen + 3)) 20 || { fail "no heartbeats after the broken reload"; return; }
    guest 60 "cp \$PAYLOAD/hvagent.toml /etc/hvagent/hvagent.toml && systemctl reload hvagent" ||
        { fail "restoring the configuration: $GUEST_OUT"; return; }
    pass "good: \"$good\"; broken: same PID, heartbeats go on, \"$(cut -c1-140 <<<"$bad")...\""
}

# A stopped poll loop stops the watchdog pings; systemd must kill and restart the agent. The test's drop-in
# (tests/vm/image/watchdog.conf) lowers WatchdogSec= from 30 s to 5 s.
scenario_sd_watchdog() {
    sd_begin || return
    local pid restarts start
    show MainPID NRestarts WatchdogUSec || return
    pid=$(guest_value MainPID)
    restarts=$(guest_value NRestarts)
    start=$(now)
    guest 90 "kill -STOP $pid && wait_for 80 unit_active_with_new_pid $pid; echo restarts=\$(prop hvagent NRestarts);
        echo pid=\$(main_pid); journalctl -u hvagent -o cat --no-pager | grep -i watchdog | tail -n 1" ||
        { agent_journal; fail "no restart within 80 s of SIGSTOP: $GUEST_OUT"; return; }
    [ "$(guest_value restarts)" = $((restarts + 1)) ] ||
        { fail "NRestarts went from $restarts to $(guest_value restarts)"; return; }
    pass "SIGSTOPped PID $pid replaced by PID $(guest_value pid) after $(elapsed "$start") s (WatchdogSec=5s by the test's drop-in); \"$(tail -n 1 <<<"$GUEST_OUT")\""
}

# kvp OPERATION...: hvhost kvp on the guest's guest-info port into RUN/sd-kvp.out, retried for 30 s while the
# agent is not listening yet.
kvp() {
    local deadline=$((SECONDS + 30)) status
    while :; do
        status=0
        bg_start sd-kvp "$HVHOST" kvp "hybrid:$RUN/vsock.uds:$GUESTINFO_PORT" "$@"
        bg_wait sd-kvp 60 || status=$?
        [ "$status" = 0 ] && return 0
        [ "$SECONDS" -lt "$deadline" ] || { RESULT="hvhost kvp $1 exited $status: $(bg_why sd-kvp)"; return 1; }
        sleep 0.5
    done
}

# An upgrade from a version that ran as root: its state (a pair the host set, in STATE_DIR/kvp/) is
# root's; after dpkg -i of this package all of /var/lib/hvagent must be the agent's user's, and the pair
# still there. dpkg keeps the changed conffile (no prompt: stdin is /dev/null) and restarts the agent.
scenario_sd_upgrade() {
    sd_begin || return
    kvp set vm-test-upgrade kept-across --pool external || { fail "$RESULT"; return; }
    guest 180 "echo '# changed by vm-test' >>/etc/hvagent/hvagent.toml && before=\$(sha256sum </etc/hvagent/hvagent.toml) &&
        pid=\$(main_pid) && systemctl stop hvagent && chown -R root:root /var/lib/hvagent &&
        echo owners_before=\$(find /var/lib/hvagent -printf '%u\\n' | sort -u | paste -sd,) &&
        install_package </dev/null >/dev/null && wait_for 30 unit_active_with_new_pid \$pid;
        echo owners_after=\$(find /var/lib/hvagent -printf '%u:%g\\n' | sort -u | paste -sd,);
        echo files=\$(find /var/lib/hvagent | wc -l);
        echo kept=\$([ \"\$(sha256sum </etc/hvagent/hvagent.toml)\" = \"\$before\" ] && echo yes || echo no);
        echo old_pid=\$pid; echo pid=\$(main_pid); echo state=\$(prop hvagent ActiveState)" ||
        { agent_journal; fail "dpkg -i again: $GUEST_OUT"; return; }
    [ "$(guest_value kept)" = yes ] || { fail "the changed /etc/hvagent/hvagent.toml was not kept"; return; }
    [ "$(guest_value owners_before)" = root ] || { fail "the old install's state was $(guest_value owners_before)'s, not root's"; return; }
    [ "$(guest_value owners_after)" = hvagent:hvagent ] ||
        { agent_journal; fail "after the upgrade /var/lib/hvagent belongs to $(guest_value owners_after)"; return; }
    kvp get vm-test-upgrade --pool external || { fail "$RESULT"; return; }
    grep -aq kept-across "$RUN/sd-kvp.out" || { fail "the pair set before the upgrade is gone: $(cat "$RUN/sd-kvp.out")"; return; }
    pass "root's state ($(guest_value files) paths) handed to hvagent:hvagent, the pair kept; changed hvagent.toml kept; agent restarted, PID $(guest_value old_pid) -> $(guest_value pid), $(guest_value state)"
}

# The package's polkit rule: logind answers the agent's user "yes" for power-off and reboot, also while a
# block inhibitor is held (polkit's -ignore-inhibit actions), and another user (nobody) not "yes".
scenario_sd_polkit() {
    sd_begin || return
    guest 60 "echo off=\$(can hvagent PowerOff); echo reboot=\$(can hvagent Reboot); echo hibernate=\$(can hvagent Hibernate);
        echo nobody_off=\$(can nobody PowerOff);
        block_shutdown && echo blocked_off=\$(can hvagent PowerOff) && echo blocked_reboot=\$(can hvagent Reboot) &&
        echo nobody_blocked_off=\$(can nobody PowerOff); unblock_shutdown;
        ls -l /usr/share/polkit-1/rules.d/hvagent.rules; systemctl is-active polkit" ||
        { fail "logind's Can* as hvagent: $GUEST_OUT"; return; }
    diag "$GUEST_OUT"
    local answer bad=()
    for answer in off reboot blocked_off blocked_reboot; do
        [ "$(guest_value "$answer")" = yes ] || bad+=("$answer=$(guest_value "$answer")")
    done
    for answer in nobody_off nobody_blocked_off; do
        [ "$(guest_value "$answer")" != yes ] || bad+=("$answer=yes")
    done
    [ ${#bad[@]} = 0 ] || { fail "polkit through logind: ${bad[*]}"; return; }
    pass "hvagent: CanPowerOff=yes CanReboot=yes (with a block inhibitor held: yes, yes) CanHibernate=$(guest_value hibernate); nobody: $(guest_value nobody_off), with the inhibitor $(guest_value nobody_blocked_off)"
}

# The escalation units through the polkit rule: the agent's user may start and stop
# hvagent-force-poweroff@SECONDS.service, and stopping it (as the agent does when the orderly command failed)
# must not power off (the unit ends failed: KillSignal=SIGKILL, so SuccessAction= does not fire); starting
# another unit (systemd-tmpfiles-clean.service, harmless) is refused. Prints disarmed=STATE/RESULT and refused=yes.
ESCALATION_CHECK="as_user hvagent systemctl start --no-block hvagent-force-poweroff@600.service &&
    wait_for 10 eval '[ \"\$(prop hvagent-force-poweroff@600.service ActiveState)\" = active ]' &&
    as_user hvagent systemctl stop hvagent-force-poweroff@600.service && sleep 2 &&
    echo disarmed=\$(prop hvagent-force-poweroff@600.service ActiveState)/\$(prop hvagent-force-poweroff@600.service Result) &&
    systemctl reset-failed hvagent-force-poweroff@600.service;
    as_user hvagent systemctl start --no-block systemd-tmpfiles-clean.service 2>&1 | grep -qi 'authenti\\|denied' &&
    echo refused=yes"

# Last: the host asks for a forced power-off while a block inhibitor is held and a service's stop hangs
# (vm-test-hang.service, TimeoutStopSec=infinity). The agent, as its own user, arms the escalation
# (hvagent-force-poweroff@5.service: force_after is 5 s in the test configuration) and runs systemctl
# poweroff --ignore-inhibitors, which logind grants through polkit (power-off-ignore-inhibit); the orderly
# shutdown then hangs, stopping the agent, D-Bus and polkit, and systemd forces the power off 5 s after the
# escalation was armed. QEMU must exit by itself, not before force_after. First, the escalation units
# through the polkit rule (ESCALATION_CHECK), and `systemctl poweroff --force` as the agent's user, which is
# still refused (systemd's bus policy: root only).
scenario_sd_poweroff() {
    sd_begin || return
    local deadline=$((SECONDS + 30)) status start escalation took
    guest 30 "$ESCALATION_CHECK" || { fail "the escalation units as hvagent: $GUEST_OUT"; return; }
    [ "$(guest_value disarmed)" = failed/signal ] && [ "$(guest_value refused)" = yes ] && vm_alive ||
        { fail "the escalation units as hvagent (want disarmed=failed/signal, refused=yes): $GUEST_OUT"; return; }
    local disarmed
    disarmed=$(guest_value disarmed)
    guest 30 "as_user hvagent systemctl poweroff --force 2>&1; echo status=\$?;
        cp \$PAYLOAD/vm-test-hang.service /etc/systemd/system/ && systemctl daemon-reload &&
        systemctl start vm-test-hang.service && block_shutdown && echo blocked=yes" ||
        { fail "the root-only --force as hvagent, the hanging service or the inhibitor: $GUEST_OUT"; return; }
    [ "$(guest_value status)" != 0 ] && vm_alive ||
        { fail "systemctl poweroff --force as hvagent was not refused: $GUEST_OUT"; return; }
    escalation=$(head -n 1 <<<"$GUEST_OUT")
    while :; do
        status=0
        bg_start sd-off "$HVHOST" shutdown "hybrid:$RUN/vsock.uds:$SHUTDOWN_PORT" --force --reason 0x80000000 \
            --message "hvagent vm-test"
        bg_wait sd-off 60 || status=$?
        [ "$status" = 0 ] && break
        if grep -q '^negotiated' "$RUN/sd-off.out" || [ "$SECONDS" -ge "$deadline" ]; then
            agent_journal
            fail "hvhost shutdown exited $status: $(cat "$RUN/sd-off.out") $(bg_why sd-off)"
            return
        fi
        sleep 0.5
    done
    start=$(now)
    wait_until 120 eval '! vm_alive' ||
        { fail "answered HV_S_OK but QEMU was still running 120 s later (the escalation did not force it)"; return; }
    took=$(elapsed "$start")
    grep -aq 'reboot: Power down' "$RUN/image-console.log" ||
        { fail "QEMU exited without the kernel's power-down message: $(tail -n 3 "$RUN/image-console.log")"; return; }
    awk -v t="$took" 'BEGIN { exit !(t >= 4.5) }' ||
        { fail "QEMU exited $took s after the answer, before force_after (5 s): the stop did not hang?"; return; }
    pass "forced, with a block inhibitor held and a stop that hangs: answered HV_S_OK, the escalation forced the power-off, QEMU exited $took s after the answer (force_after 5 s); escalation units as hvagent: disarmed $disarmed, another unit refused; --force as hvagent: \"$escalation\" (exit $(guest_value status))"
}
