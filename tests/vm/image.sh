# The systemd guest of scripts/vm-test.sh (sourced): a Debian root filesystem built once with mmdebstrap
# into the cache, its ext4 disk image (mke2fs -d: no loop mounts), and the VM that boots it. Each run boots
# a fresh qcow2 overlay of the cached image, plus a small payload disk with this run's hvagent .deb, the
# test configuration and tests/vm/image/guest-lib.sh.
#
# Boot: the Debian cloud kernel has virtio_blk and the vsock transport as modules and the image carries no
# modules, so a busybox initramfs (tests/vm/image/init) loads them, mounts the disk and switch_roots to
# systemd. The image's hvtest-ctl.service (tests/vm/image/rootfs/) then runs the host's commands from ttyS1
# and answers on ttyS1 (RUN/image-ctl.log here), as the busybox guest's /init does on its console.
# shellcheck shell=bash

IMAGE_SUITE=bookworm
# What the image holds besides Debian's essential packages and apt; a change here rebuilds it. polkitd
# grants the agent's user the power actions (the package's rule); libcap2-bin's capsh decodes capability
# sets for sd-least-privilege.
IMAGE_PACKAGES=(systemd systemd-sysv dbus udev iproute2 kmod procps busybox polkitd libcap2-bin)
# Units that would fire on a fresh image (daily timers that want the network, first-boot prompts).
IMAGE_MASKED=(apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer
    systemd-firstboot.service)
IMAGE_SIZE=1G
IMAGE_MEMORY=768M
IMAGE_MODULES=("${GUEST_MODULES[@]}" virtio_blk virtio_net)
IMAGE_BOOT_TIMEOUT=180 # seconds from QEMU start to the control channel's "ready"
# The guest's address on its NIC (QEMU user networking with restrict=on: no way out of the VM).
IMAGE_IPV4=10.0.2.15

# image_key: what the cached image depends on: the suite, the package and mask lists, and the files
# copied into it.
image_key() {
    {
        echo "format 1 $IMAGE_SUITE ${IMAGE_PACKAGES[*]} masked ${IMAGE_MASKED[*]} $IMAGE_SIZE"
        (cd "$VM_DIR/image/rootfs" && find . -printf '%p %l\n' | sort && find . -type f -print0 | sort -z |
            xargs -0 sha256sum)
    } | sha256sum | cut -c1-16
}

# Sets IMAGE_RAW to the cached ext4 image of the systemd guest, building it when the key changed.
ensure_image() {
    IMAGE_DIR=$CACHE/image/$IMAGE_SUITE-$(image_key)
    IMAGE_RAW=$IMAGE_DIR/root.ext4
    [ -e "$IMAGE_DIR/.complete" ] && return 0
    local missing=()
    command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
    command -v qemu-img >/dev/null || missing+=(qemu-utils)
    command -v mke2fs >/dev/null || missing+=(e2fsprogs)
    if [ ${#missing[@]} != 0 ]; then
        is_root || cannot_run "the systemd image needs ${missing[*]}, and this is not root" \
            "sudo apt-get install ${missing[*]} (or run the test once as root)"
        say "installing ${missing[*]} with apt-get (once)"
        apt_install "${missing[@]}" || cannot_run "apt-get install ${missing[*]} failed (see $CACHE/apt.log)" \
            "check that the Debian package archive is reachable, then retry"
    fi
    # mmdebstrap's chroot mode needs root; it runs the packages' maintainer scripts inside the new tree
    # only, with a policy-rc.d that forbids starting services (its default).
    is_root || cannot_run "no cached systemd image in $IMAGE_DIR, and building one needs root" \
        "run the test once as root"
    say "building the $IMAGE_SUITE systemd image with mmdebstrap (once per package list)"
    local start tmp=$IMAGE_DIR.tmp
    start=$(now)
    rm -rf "$tmp"
    mkdir -p "$tmp"
    local excludes=() path
    for path in doc man locale info; do
        excludes+=(--dpkgopt="path-exclude=/usr/share/$path/*")
    done
    if ! mmdebstrap --variant=apt --include="$(
        IFS=,
        echo "${IMAGE_PACKAGES[*]}"
    )" "${excludes[@]}" "$IMAGE_SUITE" "$tmp/root" >"$CACHE/image-build.log" 2>&1; then
        tail -n 20 "$CACHE/image-build.log" >&2
        cannot_run "mmdebstrap failed (see $CACHE/image-build.log)" \
            "check that the Debian package archive is reachable, then retry"
    fi
    customize_image "$tmp/root"
    mke2fs -q -t ext4 -L hvroot -d "$tmp/root" "$tmp/root.ext4" "$IMAGE_SIZE" >>"$CACHE/image-build.log" 2>&1 ||
        cannot_run "mke2fs -d failed (see $CACHE/image-build.log)" "check e2fsprogs (mke2fs -d needs 1.43 or later)"
    rm -rf "$tmp/root" "$IMAGE_DIR"
    mv "$tmp" "$IMAGE_DIR"
    touch "$IMAGE_DIR/.complete"
    say "systemd image built in $(elapsed "$start") s: $IMAGE_RAW"
}

# customize_image ROOT: the test's files and settings, written from outside (nothing runs in the tree).
customize_image() {
    local root=$1 unit
    cp -a "$VM_DIR/image/rootfs/." "$root/"
    for unit in "${IMAGE_MASKED[@]}"; do
        ln -sf /dev/null "$root/etc/systemd/system/$unit"
    done
    echo hvtest >"$root/etc/hostname"
    # A machine ID of its own, so that systemd does not treat every boot as the first one.
    echo 6876746573742d696d6167652d766d31 >"$root/etc/machine-id"
    : >"$root/etc/fstab"
}

# The payload disk: this run's package, the test configuration, drop-ins and units, and the guest helpers (mounted read-only
# on /run/hvtest by hvtest-ctl).
build_payload() {
    local dir=$RUN/payload
    mkdir -p "$dir"
    cp "$DEB" "$dir/hvagent.deb"
    cp "$VM_DIR/image/guest-lib.sh" "$VM_DIR/image/hvagent.toml" "$VM_DIR/image/"*.conf "$VM_DIR/image/"*.service "$dir/"
    mke2fs -q -t ext4 -L hvpayload -d "$dir" "$RUN/payload.ext4" 32M >>"$RUN/build.log" 2>&1
}

build_image_initramfs() {
    local root=$RUN/image-initramfs module
    mkdir -p "$root"/{bin,dev,etc,lib/modules,newroot,proc,sys,tmp}
    cp /bin/busybox "$root/bin/busybox"
    install -m 755 "$VM_DIR/image/init" "$root/init"
    : >"$root/etc/hvtest-modules"
    for module in "${IMAGE_MODULES[@]}"; do
        add_module "$module" "$root" || return 1
    done
    (cd "$root" && find . | cpio -o -H newc --quiet) | gzip -1 >"$RUN/image-initrd.gz"
}

# build_deb: the package as `make deb` builds it (scripts/build-deb.sh), or HVAGENT_VM_DEB; sets DEB.
build_deb() {
    if [ -n "${HVAGENT_VM_DEB:-}" ]; then
        DEB=$(realpath "$HVAGENT_VM_DEB") && [ -f "$DEB" ] || { say "HVAGENT_VM_DEB=$HVAGENT_VM_DEB is no file"; return 1; }
        say "using the package $DEB (HVAGENT_VM_DEB)"
        return 0
    fi
    say "building the .deb (make deb)"
    (cd "$REPO" && env -u CARGO_TARGET_DIR make deb) >>"$RUN/build.log" 2>&1 || {
        tail -n 30 "$RUN/build.log" | sed 's/^/    | /'
        return 1
    }
    DEB=$(find "$REPO/target/debian" -maxdepth 1 -name 'hvagent_*.deb' -newer "$RUN" -print | sort -V | tail -n 1)
    [ -n "$DEB" ] || { say "make deb left no new target/debian/hvagent_*.deb"; return 1; }
}

# start_image_vm: boot the systemd image (after the busybox guest, if any, has gone) until its control
# channel answers. The host's heartbeat and time-sync peers stay up for the whole session.
start_image_vm() {
    build_deb && build_payload && build_image_initramfs || return 1
    local kernel
    kernel=$(find "$KERNEL_DIR/boot" -name 'vmlinuz-*' -print -quit)
    qemu-img create -q -f qcow2 -b "$IMAGE_RAW" -F raw "$RUN/image-root.qcow2" || return 1
    : >"$RUN/image-console.log"
    : >"$RUN/image-ctl.log"
    GUEST_ANSWERS=$RUN/image-ctl.log
    start_vhost || return 1
    say "starting QEMU (TCG) with the systemd image"
    start_qemu "$RUN/image-console.log" "$IMAGE_MEMORY" -kernel "$kernel" -initrd "$RUN/image-initrd.gz" \
        -append 'console=ttyS0 quiet panic=-1 net.ifnames=0' \
        -drive file="$RUN/image-root.qcow2",if=virtio,format=qcow2 \
        -drive file="$RUN/payload.ext4",if=virtio,format=raw,readonly=on \
        -netdev user,id=net0,restrict=on -device virtio-net-pci,netdev=net0
    # The guest's answers on ttyS1; cat ends by itself when QEMU closes the FIFO.
    cat "$RUN/ctl.out" >"$RUN/image-ctl.log" &
    local saved=$BOOT_TIMEOUT status=0
    BOOT_TIMEOUT=$IMAGE_BOOT_TIMEOUT
    wait_guest_ready "$RUN/image-console.log" || status=1
    BOOT_TIMEOUT=$saved
    return "$status"
}
