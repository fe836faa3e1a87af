# The machinery of scripts/vm-test.sh (sourced): builds, the initramfs, the VM's life, the command channel
# to the guest, host-side background programs, and the scenario bookkeeping.
# shellcheck shell=bash

PASSED=0
FAILED=0
RESULT=
DIAG=
QEMU_PID=
VHOST_PID=
GUEST_SEQ=0
GUEST_OUT=
GUEST_WEDGED=
# Where the guest's answers to `guest` commands arrive: the busybox guest's console, the image's ttyS1.
GUEST_ANSWERS=
# The guest's console (kernel messages), for the diagnostics of a guest that stopped answering.
GUEST_CONSOLE=
declare -A BG_PIDS=()

now() { date +%s.%N; }

# elapsed START: seconds since START (from now), with one decimal.
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# wait_until SECONDS COMMAND...: poll COMMAND every 0.1 s until it succeeds or SECONDS pass.
wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

# ---------------------------------------------------------------------------------------------- builds

# The guest runs the agent of `make static` (musl, fully static), taken from its tarball as a user would;
# hvhost runs on this machine, an ordinary build.
build_guest_programs() {
    local log=$RUN/build.log tarball
    say "building the static agent (make static) and hvhost (cargo, $CARGO_TARGET_DIR)"
    # make static keeps its own target dir (the tarball goes to REPO/target/static either way).
    if ! tarball=$(cd "$REPO" && env -u CARGO_TARGET_DIR scripts/build-static.sh 2>>"$log") ||
        ! (cd "$REPO" && cargo build --release -p hvhost --bin hvhost) >>"$log" 2>&1; then
        tail -n 30 "$log" | sed 's/^/    | /'
        return 1
    fi
    mkdir -p "$RUN/static"
    tar -xzf "$REPO/$tarball" -C "$RUN/static"
    HVAGENT=$(find "$RUN/static" -path '*/sbin/hvagent' -print -quit)
    HVHOST=$CARGO_TARGET_DIR/release/hvhost
    VSOCK_ECHO=$CARGO_TARGET_DIR/vsock_echo
    cc -O2 -static -Wall -o "$VSOCK_ECHO" "$VM_DIR/vsock_echo.c" >>"$log" 2>&1 || {
        tail -n 30 "$log" | sed 's/^/    | /'
        return 1
    }
    build_libtests
}

# Sets LIBTESTS to hvtransport's lib unit-test executable (its real_vsock tests), built static for the same
# target as the agent, or leaves it empty (scenario in-guest-loopback then reports why).
build_libtests() {
    LIBTESTS=
    say "building the static hvtransport unit-test binary"
    if ! (cd "$REPO" && cargo test -p hvtransport --lib --no-run --release --target "$STATIC_TARGET" \
        --message-format=json) >"$RUN/libtests.json" 2>>"$RUN/build.log"; then
        say "the hvtransport unit tests did not build (see $RUN/build.log)"
        return 0
    fi
    LIBTESTS=$(grep '"test":true' "$RUN/libtests.json" | grep '"name":"hvtransport"' |
        grep -o '"executable":"[^"]*"' | tail -n 1 | cut -d'"' -f4) || true
}

# add_module NAME ROOT: put module NAME, after the modules it depends on, into ROOT/lib/modules and its
# load order ROOT/etc/hvtest-modules. A module absent from the kernel package is taken to be built in.
add_module() {
    local name=$1 root=$2 file dep
    grep -qx "$name" "$root/etc/hvtest-modules" && return 0
    file=$(find "$KERNEL_DIR/lib/modules" -name "$name.ko*" -print -quit)
    if [ -z "$file" ]; then
        grep -qs "/$name.ko" "$KERNEL_DIR"/lib/modules/*/modules.builtin ||
            say "note: module $name is neither in the kernel package nor listed as built in"
        return 0
    fi
    case $file in
    *.ko) cp "$file" "$root/lib/modules/$name.ko" ;;
    *.ko.xz) xz -dc "$file" >"$root/lib/modules/$name.ko" ;;
    *.ko.zst) zstd -qdc "$file" >"$root/lib/modules/$name.ko" ;;
    *) say "cannot unpack module $file"; return 1 ;;
    esac
    # The .modinfo section lists what the module needs as "depends=a,b".
    for dep in $(grep -ao 'depends=[A-Za-z0-9_,-]*' "$root/lib/modules/$name.ko" | head -n 1 | cut -d= -f2 |
        tr ',' ' '); do
        add_module "$dep" "$root" || return 1
    done
    echo "$name" >>"$root/etc/hvtest-modules"
}

build_initramfs() {
    local root=$RUN/initramfs module
    mkdir -p "$root"/{bin,dev,etc,lib/modules,lib/hvtest,proc,sys,tmp}
    cp /bin/busybox "$root/bin/busybox"
    install -m 755 "$VM_DIR/init" "$root/init"
    cp "$VM_DIR/guest-lib.sh" "$root/lib/hvtest/"
    cp "$HVAGENT" "$VSOCK_ECHO" "$root/bin/"
    if [ -n "$LIBTESTS" ]; then cp "$LIBTESTS" "$root/bin/hvagent-libtests"; fi
    : >"$root/etc/hvtest-modules"
    for module in "${GUEST_MODULES[@]}"; do
        add_module "$module" "$root" || return 1
    done
    (cd "$root" && find . | cpio -o -H newc --quiet) | gzip -1 >"$RUN/initrd.gz"
}

# ------------------------------------------------------------------------------------------ the VM

vm_alive() { [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; }

start_vm() {
    build_initramfs || return 1
    local kernel
    kernel=$(find "$KERNEL_DIR/boot" -name 'vmlinuz-*' -print -quit)
    : >"$RUN/console.log"
    GUEST_ANSWERS=$RUN/console.log
    start_vhost || return 1
    say "starting QEMU (TCG)"
    # The backup scenario freezes a real ext4 filesystem: a scratch disk of its own, /dev/vda in the guest.
    rm -f "$RUN/scratch.ext4"
    truncate -s 64M "$RUN/scratch.ext4" && mke2fs -q -F -t ext4 "$RUN/scratch.ext4" >>"$RUN/qemu.log" 2>&1 ||
        { say "cannot make the scratch ext4 disk (mke2fs, from e2fsprogs)"; return 1; }
    start_qemu "$RUN/console.log" 512M -kernel "$kernel" -initrd "$RUN/initrd.gz" \
        -drive file="$RUN/scratch.ext4",if=virtio,format=raw \
        -append 'console=ttyS0 quiet panic=-1'
    wait_guest_ready "$RUN/console.log"
}

# start_vhost: vhost-device-vsock for a new guest, on RUN/vhost.sock and RUN/vsock.uds (after stopping
# the one of an earlier guest and removing its sockets).
start_vhost() {
    stop_pid "$VHOST_PID"
    rm -f "$RUN/vhost.sock" "$RUN"/vsock.uds*
    say "starting vhost-device-vsock"
    RUST_LOG=warn "$VHOST_BIN" --guest-cid "$GUEST_CID" --socket "$RUN/vhost.sock" \
        --uds-path "$RUN/vsock.uds" >>"$RUN/vhost.log" 2>&1 &
    VHOST_PID=$!
    wait_until 15 test -S "$RUN/vhost.sock" || {
        say "vhost-device-vsock did not create its socket: $(tail -n 3 "$RUN/vhost.log")"
        return 1
    }
}

# start_qemu CONSOLE MEMORY QEMU-ARGS...: QEMU (TCG) with the vsock device; ttyS0, the console, into the
# file CONSOLE; ttyS1, the command channel, from the FIFO RUN/ctl.in (fd 7) and into RUN/ctl.out.
start_qemu() {
    local console=$1 memory=$2
    shift 2
    GUEST_CONSOLE=$console
    rm -f "$RUN/ctl.in" "$RUN/ctl.out"
    mkfifo "$RUN/ctl.in" "$RUN/ctl.out"
    GUEST_WEDGED=
    timeout "$QEMU_LIMIT" qemu-system-x86_64 -accel tcg -m "$memory" -smp 1 -nodefaults -no-user-config \
        -display none -object memory-backend-memfd,id=mem,size="$memory",share=on -numa node,memdev=mem \
        -chardev socket,id=vhost,path="$RUN/vhost.sock" -device vhost-user-vsock-pci,chardev=vhost \
        -serial "file:$console" -chardev pipe,id=ctl,path="$RUN/ctl" -serial chardev:ctl \
        "$@" -no-reboot >>"$RUN/qemu.log" 2>&1 &
    QEMU_PID=$!
    exec 7<>"$RUN/ctl.in"
}

# wait_guest_ready CONSOLE: wait for the guest's "HVTEST ready" line in GUEST_ANSWERS, then print it and
# the guest's warnings on CONSOLE. Sets BOOT_SECONDS.
wait_guest_ready() {
    local start
    start=$(now)
    if ! wait_console '^HVTEST ready' "$BOOT_TIMEOUT"; then
        tail -n 20 "$1" "$RUN/qemu.log" 2>/dev/null | sed 's/^/    | /'
        return 1
    fi
    BOOT_SECONDS=$(elapsed "$start")
    say "guest ready after $BOOT_SECONDS s: $(grep -a '^HVTEST ready' "$GUEST_ANSWERS" | tr -d '\r')"
    grep -a '^HVTEST warning' "$1" | sed 's/^/    | /' || true
}

stop_vm() {
    vm_alive || return 0
    echo quit >&7 || true
    if ! wait_until 60 eval '! vm_alive'; then
        say "the guest did not power off within 60 s; killing QEMU"
        stop_pid "$QEMU_PID"
    fi
}

# stop_pid PID: SIGTERM, then SIGKILL if it is still there 5 s later.
stop_pid() {
    [ -n "$1" ] || return 0
    kill "$1" 2>/dev/null || return 0
    wait_until 5 eval "! kill -0 $1 2>/dev/null" || kill -KILL "$1" 2>/dev/null || true
}

cleanup() {
    local status=$? name
    for name in "${!BG_PIDS[@]}"; do
        bg_stop "$name" KILL
    done
    stop_pid "$QEMU_PID"
    stop_pid "$VHOST_PID"
    wait 2>/dev/null || true
    if [ "$status" != 0 ] || [ "$FAILED" != 0 ] || [ "${HVAGENT_VM_KEEP:-0}" = 1 ]; then
        say "logs kept in $RUN"
    else
        rm -rf "$RUN"
    fi
}

# wait_console PATTERN SECONDS: wait for a line of GUEST_ANSWERS matching PATTERN (grep basic regexp).
wait_console() {
    local deadline=$((SECONDS + $2))
    until grep -aq -- "$1" "$GUEST_ANSWERS"; do
        vm_alive || { say "QEMU has exited"; return 1; }
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

# guest SECONDS COMMAND: run the shell COMMAND in the guest (with tests/vm/guest-lib.sh), wait at most
# SECONDS; GUEST_OUT gets its output. COMMAND travels as one line: its newlines become spaces, so end its
# lines with ; && or ||. Returns its exit status, or 124 when the guest did not answer (after
# which the guest counts as wedged and later commands fail at once).
guest() {
    if [ -n "$GUEST_WEDGED" ]; then
        GUEST_OUT="the guest stopped answering earlier"
        return 125
    fi
    GUEST_SEQ=$((GUEST_SEQ + 1))
    local id=c$GUEST_SEQ status
    printf '%s %s\n' "$id" "${2//$'\n'/ }" >&7
    if ! wait_console "^@$id/end rc=" "$1"; then
        GUEST_WEDGED=1
        GUEST_OUT="no answer from the guest within $1 s to: $2"
        # What the guest last said (kernel messages included) is the only account of why it went quiet.
        diag "the guest stopped answering; the end of its console:"$'\n'"$(tail -n 40 "$GUEST_CONSOLE" | tr -d '\r')"
        return 124
    fi
    GUEST_OUT=$(grep -a "^@$id " "$GUEST_ANSWERS" | tr -d '\r' | sed "s/^@$id //") || true
    status=$(grep -a "^@$id/end rc=" "$GUEST_ANSWERS" | tr -d '\r' | sed 's/.* rc=//')
    return "$status"
}

# guest_value KEY: the value of the last "KEY=VALUE" in GUEST_OUT.
guest_value() { sed -n "s/^$1=//p" <<<"$GUEST_OUT" | tail -n 1; }

# ------------------------------------------------------------------- host-side background programs

BG_LIMIT=600 # seconds

# Each one runs as: a wrapper subshell (BG_PIDS[NAME]) -> timeout BG_LIMIT -> the program. The wrapper keeps
# the program's exit status in RUN/NAME.rc and swallows the shell's "Killed" notices.

# bg_start NAME COMMAND...: start COMMAND (with a time limit) into RUN/NAME.out and RUN/NAME.err.
bg_start() {
    local name=$1
    shift
    rm -f "$RUN/$name.rc"
    (
        timeout "$BG_LIMIT" "$@" >"$RUN/$name.out" 2>"$RUN/$name.err"
        echo $? >"$RUN/$name.rc"
    ) 2>/dev/null &
    BG_PIDS[$name]=$!
}

bg_running() { [ -n "${BG_PIDS[$1]:-}" ] && [ ! -e "$RUN/$1.rc" ] && kill -0 "${BG_PIDS[$1]}" 2>/dev/null; }

# bg_wait NAME SECONDS: wait for NAME to end and return its status; 124 (after killing it) on time-out.
bg_wait() {
    local pid=${BG_PIDS[$1]}
    if ! wait_until "$2" eval "! bg_running $1"; then
        bg_stop "$1" KILL
        return 124
    fi
    wait "$pid" 2>/dev/null || true
    unset "BG_PIDS[$1]"
    return "$(cat "$RUN/$1.rc" 2>/dev/null || echo 1)"
}

# bg_program NAME: the pid of NAME's program, the last of the wrapper's line of descendants (the wrapper
# itself while it has not forked yet).
bg_program() {
    local pid=${BG_PIDS[$1]} children
    while children=$(cat "/proc/$pid/task/$pid/children" 2>/dev/null) && [ -n "${children%% *}" ]; do
        pid=${children%% *}
    done
    echo "$pid"
}

# bg_stop NAME [SIGNAL]: send SIGNAL (TERM by default) to NAME's program itself and reap the wrapper.
bg_stop() {
    local wrapper=${BG_PIDS[$1]:-} pid
    [ -n "$wrapper" ] || return 0
    pid=$(bg_program "$1")
    if [ "$pid" = "$wrapper" ] && bg_running "$1"; then
        sleep 0.2 # just started: let it reach the program, or the program would outlive its wrapper
        pid=$(bg_program "$1")
    fi
    kill "-${2:-TERM}" "$pid" 2>/dev/null || true
    wait_until 5 eval "! kill -0 $wrapper 2>/dev/null" || kill -KILL "$pid" "$wrapper" 2>/dev/null || true
    wait "$wrapper" 2>/dev/null || true
    unset "BG_PIDS[$1]"
}

# bg_count NAME PATTERN: how many lines of NAME's output match PATTERN.
bg_count() { grep -c -- "$2" "$RUN/$1.out" 2>/dev/null || true; }

# bg_field NAME KEY: the value of KEY=VALUE on NAME's last "done" line.
bg_field() { grep '^done ' "$RUN/$1.out" 2>/dev/null | tail -n 1 | grep -o "$2=[^ ]*" | cut -d= -f2; }

# bg_why NAME: a one-line account of what NAME said on stderr.
bg_why() { tail -n 2 "$RUN/$1.err" 2>/dev/null | tr '\n' ' ' | cut -c1-200; }

# ---------------------------------------------------------------------------------- bookkeeping

# In a scenario: `pass FIGURE; return` or `fail REASON; return` (fail returns 1). `diag TEXT` adds
# lines to print under the scenario's result line.
pass() { RESULT=$1; }
fail() {
    RESULT=$1
    return 1
}
diag() { DIAG+="$1"$'\n'; }

run_scenario() {
    local name=$1 function=scenario_${1//-/_}
    RESULT=
    DIAG=
    if ! declare -F "$function" >/dev/null; then
        echo "FAIL $name: no such scenario (known: $ALL_SCENARIOS)"
        FAILED=$((FAILED + 1))
    elif "$function"; then
        echo "PASS $name: $RESULT"
        PASSED=$((PASSED + 1))
    else
        echo "FAIL $name: ${RESULT:-failed}"
        FAILED=$((FAILED + 1))
        stop_leftovers
    fi
    if [ -n "$DIAG" ]; then printf '%s' "$DIAG" | sed 's/^/    | /'; fi
}

# After a failed scenario: stop what it left running on both sides, so the next one starts clean. Thawing
# comes first: a process writing to a frozen filesystem cannot be killed until the filesystem thaws.
stop_leftovers() {
    local name
    for name in "${!BG_PIDS[@]}"; do
        bg_stop "$name" KILL
    done
    guest 20 'hvagent thaw; daemon_kill_all' || true
}

fail_all() {
    local reason=$1 name
    shift
    for name in "$@"; do
        echo "FAIL $name: $reason"
        FAILED=$((FAILED + 1))
    done
}
