#!/bin/sh
# Installs what `make bench` compares hvagent with: qemu-guest-agent (Debian's package qemu-guest-agent,
# /usr/sbin/qemu-ga). Idempotent; without root and without the package it says so and exits 0, and the
# benchmark skips that comparison.
set -eu

if command -v qemu-ga >/dev/null 2>&1 || [ -x /usr/sbin/qemu-ga ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-bench-deps: qemu-ga is missing and this is not root; install Debian's qemu-guest-agent" \
        "to compare with it (make bench skips that figure)" >&2
    exit 0
fi
echo "install-bench-deps: installing qemu-guest-agent" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends qemu-guest-agent >/dev/null
