# Helpers for the commands the host sends to the vm-test systemd image (sourced by hvtest-ctl for each
# command, from the payload disk on /run/hvtest).
# shellcheck shell=bash

PAYLOAD=/run/hvtest
DROPIN_DIR=/etc/systemd/system/hvagent.service.d

# wait_for SECONDS COMMAND...: poll COMMAND every 0.1 s until it succeeds; fails after SECONDS.
wait_for() {
    local tries=$(($1 * 10))
    shift
    until "$@"; do
        tries=$((tries - 1))
        [ "$tries" -gt 0 ] || return 1
        sleep 0.1
    done
}

# prop UNIT PROPERTY: the value of a unit property.
prop() { systemctl show -p "$2" --value "$1"; }

main_pid() { prop hvagent MainPID; }

# unit_active_with_new_pid OLD: hvagent is active under a main PID other than OLD (and not 0).
unit_active_with_new_pid() {
    local pid
    pid=$(main_pid)
    [ "$(prop hvagent ActiveState)" = active ] && [ "$pid" != 0 ] && [ "$pid" != "$1" ]
}

# freq_raw: "freq=N", the kernel's frequency correction (adjtimex) in units of 2^-16 ppm.
freq_raw() {
    busybox adjtimex | awk '/freq.adjust/ { print "freq=" $3 }'
}

# net_up: the NIC at its static address (QEMU user networking, restricted: it leads nowhere).
net_up() {
    ip link set lo up && ip link set eth0 up && ip addr replace "$1/24" dev eth0
}

# setup_agent: the drop-ins (README's ConditionVirtualization= one, the test's short watchdog), before
# the package goes in. (The configuration comes after it: a file already there would make dpkg ask.)
setup_agent() {
    mkdir -p "$DROPIN_DIR" && cp "$PAYLOAD/vm.conf" "$PAYLOAD/watchdog.conf" "$DROPIN_DIR/"
}

# install_package: dpkg -i of the run's package, non-interactively; prints its output.
install_package() {
    DEBIAN_FRONTEND=noninteractive dpkg -i "$@" "$PAYLOAD/hvagent.deb"
}

# journal_since CURSOR-FILE: the agent's journal since the cursor saved in CURSOR-FILE (all of it when there
# is none), and a new cursor saved there.
journal_since() {
    local args=(-u hvagent -o cat --no-pager --cursor-file="$1")
    journalctl "${args[@]}"
}

# daemon_kill_all: what the host asks for after a failed scenario: a stopped agent continued, the failed
# units forgotten.
daemon_kill_all() {
    local pid
    pid=$(main_pid)
    [ "$pid" = 0 ] || kill -CONT "$pid"
    systemctl reset-failed
    return 0
}

# caps_of PID: the capability lines of /proc/PID/status, each as "CapXxx=HEX", and decoded by capsh as
# "CapXxx_names=..." (empty for none).
caps_of() {
    local set hex
    for set in CapInh CapPrm CapEff CapBnd CapAmb; do
        hex=$(awk -v s="$set:" '$1 == s { print $2 }' "/proc/$1/status")
        echo "$set=$hex"
        echo "${set}_names=$(capsh --decode="$hex" | sed 's/^0x[0-9a-f]*=//')"
    done
}

# as_user USER COMMAND...: COMMAND as USER (its group, no supplementary groups, no capabilities).
as_user() {
    local user=$1
    shift
    setpriv --reuid="$user" --regid="$(id -g "$user")" --clear-groups --inh-caps=-all "$@"
}

# can USER WHAT: logind's answer to USER for CanPowerOff, CanReboot or CanHibernate (yes, challenge, no, na),
# which is polkit's for the action WHAT needs (its -ignore-inhibit variant while a block inhibitor is held).
can() {
    as_user "$1" busctl call --system org.freedesktop.login1 /org/freedesktop/login1 \
        org.freedesktop.login1.Manager "Can$2" | sed 's/^s "\(.*\)"$/\1/'
}

# block_shutdown: a block inhibitor on shutdown held by root, until unblock_shutdown (or 10 minutes).
block_shutdown() {
    setsid systemd-inhibit --what=shutdown --mode=block --who=vm-test --why="vm-test holds it" sleep 600 \
        </dev/null >/dev/null 2>&1 &
    echo $! >/run/vm-test-inhibitor.pid
    wait_for 10 eval 'systemd-inhibit --list --no-legend --no-pager | grep -q vm-test'
}
unblock_shutdown() {
    [ -e /run/vm-test-inhibitor.pid ] && kill "$(cat /run/vm-test-inhibitor.pid)" 2>/dev/null
    rm -f /run/vm-test-inhibitor.pid
    return 0
}
