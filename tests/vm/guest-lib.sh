# Helpers for the commands the host sends to the vm-test guest (sourced by /init for each command).
# A "daemon" is a background program known by a NAME: its pid in /tmp/NAME.pid, its output in
# /tmp/NAME.log, and, once it has ended, its exit status in /tmp/NAME.rc.
# shellcheck shell=sh

# daemon_start NAME PROGRAM [ARG...]: start PROGRAM in the background and print "pid=PID".
daemon_start() {
    name=$1
    shift
    rm -f "/tmp/$name.pid" "/tmp/$name.rc"
    # The wrapper waits for PROGRAM so that its exit status is kept and it never lingers as a zombie.
    (
        sh -c 'echo $$ >"$0.pid"; exec "$@"' "/tmp/$name" "$@" >"/tmp/$name.log" 2>&1
        echo $? >"/tmp/$name.rc"
    ) &
    for _ in $(seq 50); do
        [ -s "/tmp/$name.pid" ] && break
        sleep 0.1
    done
    [ -s "/tmp/$name.pid" ] || { echo "daemon $name did not start"; return 1; }
    echo "pid=$(cat "/tmp/$name.pid")"
}

daemon_pid() {
    cat "/tmp/$1.pid"
}

# daemon_stop NAME [SIGNAL]: send SIGNAL (default TERM), wait up to 10 s, print "rc=STATUS".
daemon_stop() {
    kill "-${2:-TERM}" "$(daemon_pid "$1")" || return 1
    for _ in $(seq 100); do
        [ -e "/tmp/$1.rc" ] && break
        sleep 0.1
    done
    [ -e "/tmp/$1.rc" ] || { echo "daemon $1 still running 10 s after SIG${2:-TERM}"; return 1; }
    echo "rc=$(cat "/tmp/$1.rc")"
}

# daemon_running NAME: succeeds while the daemon has not ended.
daemon_running() {
    [ -s "/tmp/$1.pid" ] && [ ! -e "/tmp/$1.rc" ]
}

# daemon_kill_all: SIGKILL every daemon still running (what a failed scenario left behind).
daemon_kill_all() {
    for pidfile in /tmp/*.pid; do
        name=$(basename "$pidfile" .pid)
        if daemon_running "$name"; then daemon_stop "$name" KILL; fi
    done
    return 0
}

# daemon_fds NAME: print "fds=N" (entries of /proc/PID/fd) and the list itself.
# shellcheck disable=SC2012 # the names in /proc/PID/fd are numbers
daemon_fds() {
    pid=$(daemon_pid "$1")
    echo "fds=$(ls "/proc/$pid/fd" | wc -l)"
    ls -l "/proc/$pid/fd" | sed 's/^/  /'
}

# agent_start NAME connect|listen ADDRESS [TOML-LINE...]: write /tmp/NAME.toml and start hvagent on it.
agent_start() {
    name=$1
    mode=$2
    address=$3
    shift 3
    {
        echo 'log_level = "info"'
        echo '[heartbeat]'
        echo 'enabled = true'
        echo "$mode = \"$address\""
        for line in "$@"; do echo "$line"; done
        # Services enabled by default that the scenario does not configure stay off.
        for section in timesync shutdown guestinfo; do
            case " $* " in
            *"[$section]"*) ;;
            *) printf '[%s]\nenabled = false\n' "$section" ;;
            esac
        done
    } >"/tmp/$name.toml"
    daemon_start "$name" hvagent --config "/tmp/$name.toml"
}

# timesync_agent_start NAME ADDRESS MODE PROBE_INTERVAL: write /tmp/NAME.toml for the time-sync service
# alone (heartbeat off) and start hvagent on it.
timesync_agent_start() {
    {
        echo 'log_level = "debug"'
        echo '[heartbeat]'
        echo 'enabled = false'
        echo '[timesync]'
        echo "connect = \"$2\""
        echo "mode = \"$3\""
        echo "probe_interval = $4"
        printf '[%s]\nenabled = false\n' shutdown guestinfo
    } >"/tmp/$1.toml"
    daemon_start "$1" hvagent --config "/tmp/$1.toml"
}

# clock_back SECONDS: set the guest clock SECONDS behind where it is, and print "guest_s=NOW".
clock_back() {
    date -s "@$(($(date +%s) - $1))" >/dev/null || return 1
    echo "guest_s=$(date +%s)"
}

# backup_setup HOOKS: mount the scratch ext4 disk (/dev/vda, the second drive QEMU gives the guest) on
# /mnt/backup, and make HOOKS (0, 1 or 2) freeze hooks in /tmp/hooks that append "NAME PHASE" to
# /tmp/hooks.log, which is on the initramfs and never frozen.
backup_setup() {
    mkdir -p /mnt/backup /tmp/hooks
    grep -q ' /mnt/backup ' /proc/mounts || mount -t ext4 /dev/vda /mnt/backup || return 1
    rm -f /tmp/hooks/* /tmp/hooks.log
    for hook in $(seq "$1"); do
        # shellcheck disable=SC2016 # $1 is the hook's own argument, expanded when it runs
        printf '#!/bin/sh\necho "%s $1" >>/tmp/hooks.log\n' "$hook-hook" >"/tmp/hooks/$hook-hook"
        chmod 755 "/tmp/hooks/$hook-hook"
    done
    echo "mounted=$(grep -c ' /mnt/backup ext4 rw' /proc/mounts)"
}

# backup_agent_start NAME THAW_AFTER: hvagent with the backup service listening on vsock port 0x48560005,
# the hooks of /tmp/hooks and the given thaw_after.
backup_agent_start() {
    agent_start "$1" listen vsock:any:0x48560001 '[backup]' 'enabled = true' \
        'listen = "vsock:any:0x48560005"' 'hooks_dir = "/tmp/hooks"' "thaw_after = $2"
}

# writer_start: a process writing to the scratch disk (it stalls while the disk is frozen).
writer_start() {
    daemon_start writer sh -c 'echo data >/mnt/backup/written.$$ && echo wrote'
}

# writer_state: print "writer=running" or "writer=done".
writer_state() {
    if daemon_running writer; then echo writer=running; else echo writer=done; fi
}

# stall_report: why the writer has not finished: its kernel stack and wait channel, the scratch disk's
# mount, and (through sysrq w) every blocked task's stack on the console.
stall_report() {
    pid=$(daemon_pid writer)
    echo "writer pid=$pid state=$(sed -n 's/^State:\t//p' "/proc/$pid/status" 2>/dev/null) wchan=$(cat "/proc/$pid/wchan" 2>/dev/null)"
    sed 's/^/  stack: /' "/proc/$pid/stack" 2>/dev/null
    grep ' /mnt/backup ' /proc/mounts
    echo w >/proc/sysrq-trigger 2>/dev/null || echo "no sysrq"
}
