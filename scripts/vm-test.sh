#!/usr/bin/env bash
# vm-test: prove hvagent on real AF_VSOCK by booting Linux guests under QEMU (TCG) whose virtio-vsock
# device is served by vhost-device-vsock, and driving their scenarios:
#   - a busybox initramfs running the static agent of `make static` (its tarball's, musl) by hand:
#     tests/vm/scenarios.sh;
#   - a Debian (bookworm) systemd image with the package of `make deb` installed in it by dpkg -i and the
#     agent run as hvagent.service: tests/vm/image-scenarios.sh (the scenarios named sd-*). The image is
#     built once with mmdebstrap into the cache (rebuilt when its package list or files change), made an
#     ext4 disk with mke2fs -d (no loop mounts) and booted through a fresh qcow2 overlay each run;
#     tests/vm/image.sh has the details.
#
# The host side never opens an AF_VSOCK socket: it reaches the guest only through vhost-device-vsock's
# Unix sockets (RUN/vsock.uds for host -> guest with "CONNECT PORT", RUN/vsock.uds_PORT for guest -> host).
#
# Environment:
#   HVAGENT_VM_CACHE      where the kernel, vhost-device-vsock and the systemd image are kept between runs
#                         (default ${XDG_CACHE_HOME:-$HOME/.cache}/hvagent-vm)
#   HVAGENT_REQUIRE_VM=1  fail (instead of skipping with exit 0) when the VM test cannot run here
#   HVAGENT_SKIP_VM=1     skip on purpose
#   HVAGENT_VM_SCENARIOS  space-separated subset of scenarios to run, of either guest (default: all); a
#                         guest none of whose scenarios is chosen is not booted (nor its image built)
#   HVAGENT_VM_KEEP=1     keep the run directory (logs, console) even when everything passed
#   HVAGENT_VM_KERNEL_PKG Debian cloud kernel package to use instead of the newest one found
#   HVAGENT_VM_DEB        a .deb to install in the systemd image instead of building one with make deb
#
# Output: one "PASS name: figure" or "FAIL name: reason" line per scenario, then
# "vm-test: N passed, M failed". Exit status 0 when none failed (or when skipped).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VM_DIR=$REPO/tests/vm
CACHE=${HVAGENT_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hvagent-vm}
VHOST_VERSION=0.3.0
VHOST_BIN=$CACHE/vhost-device-vsock-$VHOST_VERSION/bin/vhost-device-vsock
# The target of `make static`, whose agent the busybox guest runs: musl links statically by default.
STATIC_TARGET=x86_64-unknown-linux-musl
GUEST_CID=3
# Modules the guest loads, each after the ones it depends on; ones built into the kernel are skipped.
GUEST_MODULES=(virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci vsock
    vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport vsock_loopback
    virtio_blk crc32c_generic ext4) # the last three for the backup scenario's scratch disk
BOOT_TIMEOUT=90    # seconds from QEMU start to the guest's "ready"
QEMU_LIMIT=900     # hard limit on QEMU's whole life
export CARGO_TARGET_DIR=$REPO/target/vm

say() { echo "vm-test: $*"; }

# cannot_run WHY HOW: the VM test cannot run on this machine; say so loudly, then skip (exit 0) or, with
# HVAGENT_REQUIRE_VM=1, fail.
cannot_run() {
    {
        echo "=================================================================="
        echo "vm-test: the real-vsock VM test CANNOT RUN here: $1"
        echo "vm-test: to enable it: $2"
        if [ "${HVAGENT_REQUIRE_VM:-0}" = 1 ]; then
            echo "vm-test: FAILED, because HVAGENT_REQUIRE_VM=1"
        else
            echo "vm-test: SKIPPED (exit 0); set HVAGENT_REQUIRE_VM=1 to make this an error"
        fi
        echo "=================================================================="
    } >&2
    [ "${HVAGENT_REQUIRE_VM:-0}" != 1 ] || exit 1
    exit 0
}

# Run everything under ../shared/tools/novsock when it is there, so that no mistake of ours can open an
# AF_VSOCK socket on this machine.
run_under_novsock() {
    local novsock=${HVAGENT_NOVSOCK:-$REPO/../shared/tools/novsock}
    if [ -n "${HVAGENT_VM_UNDER_NOVSOCK:-}" ]; then
        grep -q '^Seccomp:[[:space:]]*2' /proc/$$/status && say "under novsock: AF_VSOCK sockets are refused here"
        return 0
    fi
    if [ -x "$novsock" ]; then
        export HVAGENT_VM_UNDER_NOVSOCK=1
        exec "$novsock" bash "${BASH_SOURCE[0]}" "$@"
    fi
    say "note: no novsock wrapper at $novsock; the host side opens no AF_VSOCK socket anyway"
}

# shellcheck source=SCRIPTDIR/../tests/vm/provision.sh
source "$VM_DIR/provision.sh"
# shellcheck source=SCRIPTDIR/../tests/vm/harness.sh
source "$VM_DIR/harness.sh"
# shellcheck source=SCRIPTDIR/../tests/vm/scenarios.sh
source "$VM_DIR/scenarios.sh"
# shellcheck source=SCRIPTDIR/../tests/vm/image.sh
source "$VM_DIR/image.sh"
# shellcheck source=SCRIPTDIR/../tests/vm/image-scenarios.sh
source "$VM_DIR/image-scenarios.sh"

# split_scenarios NAME...: BUSYBOX_RUN gets the busybox guest's scenarios, IMAGE_RUN the systemd image's.
split_scenarios() {
    BUSYBOX_RUN=()
    IMAGE_RUN=()
    local name
    for name in "$@"; do
        case " $(echo $IMAGE_SCENARIOS) " in
        *" $name "*) IMAGE_RUN+=("$name") ;;
        *) BUSYBOX_RUN+=("$name") ;;
        esac
    done
}

# run_busybox_guest: the busybox initramfs guest and its scenarios.
run_busybox_guest() {
    [ ${#BUSYBOX_RUN[@]} != 0 ] || return 0
    if ! start_vm; then
        fail_all "the guest did not boot (see $RUN/console.log, $RUN/qemu.log)" "${BUSYBOX_RUN[@]}"
        return
    fi
    local name
    for name in "${BUSYBOX_RUN[@]}"; do
        run_scenario "$name"
    done
    stop_vm
}

# run_image_guest: the systemd image, the package installed in it, and its scenarios.
run_image_guest() {
    [ ${#IMAGE_RUN[@]} != 0 ] || return 0
    local start
    start=$(now)
    if ! start_image_vm; then
        fail_all "the systemd image did not boot (see $RUN/image-console.log, $RUN/qemu.log)" "${IMAGE_RUN[@]}"
        return
    fi
    IMAGE_BOOT_SECONDS=$BOOT_SECONDS
    if ! image_session_setup; then
        fail_all "installing hvagent in the systemd image failed (see $RUN/image-ctl.log)" "${IMAGE_RUN[@]}"
        stop_vm
        return
    fi
    say "systemd image: QEMU start to the control channel ${IMAGE_BOOT_SECONDS} s, to hvagent configured and READY $(elapsed "$start") s"
    local name
    for name in "${IMAGE_RUN[@]}"; do
        run_scenario "$name"
    done
    stop_vm
}

main() {
    run_under_novsock "$@"
    if [ "${HVAGENT_SKIP_VM:-0}" = 1 ]; then
        cannot_run "HVAGENT_SKIP_VM=1" "unset HVAGENT_SKIP_VM"
    fi
    [ "$(uname -s)/$(uname -m)" = Linux/x86_64 ] ||
        cannot_run "this is $(uname -s)/$(uname -m), the guest build needs Linux/x86_64" "run it on an x86_64 Linux machine"
    command -v cargo >/dev/null || cannot_run "cargo is not on PATH" "install Rust (rustup) and retry"

    local scenarios
    # shellcheck disable=SC2086 # the lists are space-separated names
    read -r -a scenarios <<<"$(echo ${HVAGENT_VM_SCENARIOS:-$ALL_SCENARIOS $IMAGE_SCENARIOS})"
    split_scenarios "${scenarios[@]}"
    [ ${#IMAGE_RUN[@]} = 0 ] || WANT_IMAGE=1

    mkdir -p "$CACHE" || cannot_run "cannot create the cache directory $CACHE" "set HVAGENT_VM_CACHE to a writable directory"
    provision
    RUN=$(mktemp -d "${TMPDIR:-/tmp}/hvagent-vm.XXXXXX")
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    if ! build_guest_programs; then
        fail_all "build failed (see $RUN/build.log)" "${scenarios[@]}"
    else
        run_busybox_guest
        run_image_guest
    fi
    say "wall time ${SECONDS} s"
    echo "vm-test: $PASSED passed, $FAILED failed"
    [ "$FAILED" = 0 ]
}

main "$@"
