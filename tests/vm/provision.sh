# Provisioning for scripts/vm-test.sh (sourced): system packages, a Debian cloud kernel unpacked into the
# cache, and vhost-device-vsock built into the cache. Idempotent: a warm cache asks nothing of the network.
# shellcheck shell=bash

APT_UPDATED=

is_root() { [ "$(id -u)" = 0 ]; }

apt_update_once() {
    [ -n "$APT_UPDATED" ] && return 0
    is_root || return 1
    say "apt-get update"
    apt-get update -q >>"$CACHE/apt.log" 2>&1 || return 1
    APT_UPDATED=1
}

apt_install() {
    local quiet=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends)
    "${quiet[@]}" "$@" >>"$CACHE/apt.log" 2>&1 && return 0
    apt_update_once && "${quiet[@]}" "$@" >>"$CACHE/apt.log" 2>&1
}

package_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

ensure_packages() {
    local missing=()
    command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
    command -v cpio >/dev/null || missing+=(cpio)
    # The guest needs a static busybox; Debian's plain "busybox" package is dynamically linked.
    package_installed busybox-static || missing+=(busybox-static)
    [ ${#missing[@]} = 0 ] && return 0
    command -v apt-get >/dev/null ||
        cannot_run "missing ${missing[*]} and no apt-get to install them" \
            "install QEMU (x86_64), cpio and a static busybox at /bin/busybox"
    is_root ||
        cannot_run "missing packages ${missing[*]} and not root to install them" \
            "sudo apt-get install ${missing[*]} (or run the test once as root)"
    say "installing ${missing[*]} with apt-get (once)"
    apt_install "${missing[@]}" ||
        cannot_run "apt-get install ${missing[*]} failed (see $CACHE/apt.log)" \
            "check that the Debian package archive is reachable, then retry"
}

# The newest Debian cloud kernel that apt knows of, preferring the unsigned image of the distribution's
# own kernel series (plain .ko modules) over backports.
pick_kernel_package() {
    local found
    found=$(apt-cache search --names-only 'linux-image-.*-cloud-amd64' 2>/dev/null | cut -d' ' -f1) || true
    local pattern
    for pattern in '^linux-image-[0-9.]+-[0-9]+-cloud-amd64-unsigned$' '^linux-image-.*-cloud-amd64-unsigned$' \
        '^linux-image-[0-9.]+-[0-9]+-cloud-amd64$'; do
        if grep -E "$pattern" <<<"$found" | sort -V | tail -n 1 | grep .; then
            return 0
        fi
    done
    return 1
}

# apt_download PACKAGE DIR: fetch PACKAGE's .deb into DIR (no root needed, nothing is installed).
apt_download() { (cd "$2" && apt-get download "$1" >>"$CACHE/apt.log" 2>&1); }

# Sets KERNEL_DIR to an unpacked kernel package: KERNEL_DIR/boot/vmlinuz-*, KERNEL_DIR/lib/modules/*.
ensure_kernel() {
    local wanted=${HVAGENT_VM_KERNEL_PKG:-}
    if [ -z "$wanted" ]; then
        KERNEL_DIR=$(find "$CACHE/kernel" -mindepth 2 -maxdepth 2 -name .complete -printf '%h\n' 2>/dev/null |
            sort -V | tail -n 1) || true
        [ -n "$KERNEL_DIR" ] && return 0
        command -v apt-get >/dev/null ||
            cannot_run "no guest kernel in $CACHE/kernel and no apt-get to fetch one" \
                "unpack a Debian linux-image-*-cloud-amd64 package into $CACHE/kernel/NAME/ and touch NAME/.complete"
        wanted=$(pick_kernel_package) || { apt_update_once && wanted=$(pick_kernel_package); } ||
            cannot_run "apt-cache knows no linux-image-*-cloud-amd64 package" \
                "run 'apt-get update' as root (or set HVAGENT_VM_KERNEL_PKG)"
    fi
    KERNEL_DIR=$CACHE/kernel/$wanted
    [ -e "$KERNEL_DIR/.complete" ] && return 0

    say "fetching guest kernel $wanted with apt-get download (once; it is not installed)"
    local download=$CACHE/kernel/.download
    rm -rf "$download" "$KERNEL_DIR.tmp"
    mkdir -p "$download"
    if ! apt_download "$wanted" "$download" && ! { apt_update_once && apt_download "$wanted" "$download"; }; then
        cannot_run "apt-get download $wanted failed (see $CACHE/apt.log)" \
            "check that the Debian package archive is reachable, then retry"
    fi
    dpkg-deb -x "$download"/*.deb "$KERNEL_DIR.tmp"
    compgen -G "$KERNEL_DIR.tmp/boot/vmlinuz-*" >/dev/null || {
        say "$wanted holds no boot/vmlinuz-*"
        exit 1
    }
    rm -rf "$download"
    mv "$KERNEL_DIR.tmp" "$KERNEL_DIR"
    touch "$KERNEL_DIR/.complete"
}

# vhost-device-vsock, used only with --uds-path: it then bridges the guest to Unix sockets and opens no
# AF_VSOCK socket of its own (that happens only with --forward-cid/--forward-listen). Its
# --no-default-features build, which would leave that code out, does not compile in 0.3.0.
ensure_vhost_device_vsock() {
    [ -x "$VHOST_BIN" ] && return 0
    local root=${VHOST_BIN%/bin/*}
    say "building vhost-device-vsock $VHOST_VERSION into $root (once, about a minute)"
    rm -rf "$root.tmp"
    if ! env -u CARGO_TARGET_DIR cargo install vhost-device-vsock --version "=$VHOST_VERSION" --locked \
        --root "$root.tmp" >"$CACHE/vhost-device-vsock-build.log" 2>&1; then
        tail -n 20 "$CACHE/vhost-device-vsock-build.log" >&2
        cannot_run "cargo install vhost-device-vsock $VHOST_VERSION failed (see $CACHE/vhost-device-vsock-build.log)" \
            "fix what the log shows (is the crate registry reachable?), then retry"
    fi
    rm -rf "$root"
    mv "$root.tmp" "$root"
}

provision() {
    # Two runs at once (make test beside make vm-test) must not fetch into the same cache together.
    exec 8>"$CACHE/.lock"
    if command -v flock >/dev/null; then
        flock 8
    fi
    ensure_packages
    ensure_kernel
    ensure_vhost_device_vsock
    if [ -n "${WANT_IMAGE:-}" ]; then ensure_image; fi
    exec 8>&-
    say "cache $CACHE: kernel $(basename "$KERNEL_DIR"), vhost-device-vsock $VHOST_VERSION${WANT_IMAGE:+, systemd image $(basename "$IMAGE_DIR")}"
}
