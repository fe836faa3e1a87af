#!/bin/sh
# install.sh: installs the static hvagent from this directory (the tarball of `make static`) under a
# prefix, as `make install` does from a source tree: the agent to PREFIX/sbin, the systemd units (ExecStart=
# pointing there), the hv_sock modules-load file, the agent's user (sysusers.d), its polkit rule, the
# commented default config (never over one already there), the man pages and the docs.
#
#   ./install.sh [--prefix DIR] [--sysconfdir DIR] [--uninstall]
#
# --prefix defaults to /usr/local (systemd reads units, modules-load.d and sysusers.d there too); /usr is
# the usual choice for an image. The config goes to SYSCONFDIR/hvagent (default /etc), whatever the prefix.
# polkitd reads rules only from /etc/polkit-1/rules.d and /usr/share/polkit-1/rules.d: the rule goes to the
# latter with --prefix /usr, to the former otherwise. DESTDIR (environment) is prepended to every path, for
# building an image or a package; with it nothing is run but the copying. --uninstall removes what was
# installed, except the config file.
#
# POSIX sh and busybox's install, sed and rm are enough: it runs on Alpine as on Fedora.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
prefix=/usr/local
sysconfdir=/etc
action=install

usage() {
    sed -n 's/^#   \(\.\/install\.sh.*\)/usage: \1/p' "$here/install.sh"
}

while [ $# -gt 0 ]; do
    case $1 in
    --prefix) [ $# -ge 2 ] || { usage >&2; exit 2; }; prefix=$2; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    --sysconfdir) [ $# -ge 2 ] || { usage >&2; exit 2; }; sysconfdir=$2; shift 2 ;;
    --sysconfdir=*) sysconfdir=${1#--sysconfdir=}; shift ;;
    --uninstall) action=uninstall; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
case $prefix in
/*) ;;
*) echo "install.sh: --prefix must be an absolute path, not $prefix" >&2; exit 2 ;;
esac
prefix=${prefix%/}
destdir=${DESTDIR:-}

sbindir=$prefix/sbin
unitdir=$prefix/lib/systemd/system
modulesloaddir=$prefix/lib/modules-load.d
sysusersdir=$prefix/lib/sysusers.d
mandir=$prefix/share/man
docdir=$prefix/share/doc/hvagent
if [ "$prefix" = /usr ]; then
    polkitdir=/usr/share/polkit-1/rules.d
else
    polkitdir=$sysconfdir/polkit-1/rules.d
fi
units="hvagent.service hvagent-clock.service hvagent-clock.socket hvagent-force-poweroff@.service
    hvagent-force-reboot@.service"
docs="README.md PROTOCOL.md copyright hvagent-host-setup.ps1 hvagent-host-setup.reg"

uninstall() {
    rm -f "$destdir$sbindir/hvagent" "$destdir$modulesloaddir/hvagent.conf" "$destdir$sysusersdir/hvagent.conf" \
        "$destdir$polkitdir/hvagent.rules" "$destdir$mandir/man8/hvagent.8" "$destdir$mandir/man5/hvagent.toml.5"
    for unit in $units; do
        rm -f "$destdir$unitdir/$unit"
    done
    rm -rf "$destdir$docdir"
    echo "install.sh: removed hvagent from $destdir$prefix; the config $destdir$sysconfdir/hvagent/hvagent.toml is" \
        "left (rm -r $sysconfdir/hvagent removes it)"
}

install_files() {
    install -d "$destdir$sbindir" "$destdir$unitdir" "$destdir$modulesloaddir" "$destdir$sysusersdir" \
        "$destdir$polkitdir" "$destdir$sysconfdir/hvagent" "$destdir$mandir/man8" "$destdir$mandir/man5" \
        "$destdir$docdir/examples"
    install -m 0755 "$here/sbin/hvagent" "$destdir$sbindir/hvagent"
    for unit in $units; do
        sed -e "s|^ExecStart=/usr/sbin/hvagent|ExecStart=$sbindir/hvagent|" \
            -e "s|^ExecStopPost=+/usr/sbin/hvagent|ExecStopPost=+$sbindir/hvagent|" "$here/systemd/$unit" \
            >"$destdir$unitdir/$unit"
        chmod 0644 "$destdir$unitdir/$unit"
    done
    install -m 0644 "$here/systemd/hvagent-modules.conf" "$destdir$modulesloaddir/hvagent.conf"
    install -m 0644 "$here/systemd/hvagent-sysusers.conf" "$destdir$sysusersdir/hvagent.conf"
    install -m 0644 "$here/polkit/hvagent.rules" "$destdir$polkitdir/hvagent.rules"
    [ -e "$destdir$sysconfdir/hvagent/hvagent.toml" ] ||
        install -m 0644 "$here/etc/hvagent.toml" "$destdir$sysconfdir/hvagent/hvagent.toml"
    install -m 0644 "$here/man/hvagent.8" "$destdir$mandir/man8/hvagent.8"
    install -m 0644 "$here/man/hvagent.toml.5" "$destdir$mandir/man5/hvagent.toml.5"
    for doc in $docs; do
        install -m 0644 "$here/doc/$doc" "$destdir$docdir/$doc"
    done
    install -m 0644 "$here/doc/examples/run-as-root.conf" "$destdir$docdir/examples/run-as-root.conf"
    install -m 0644 "$here/doc/examples/backup-freeze.conf" "$destdir$docdir/examples/backup-freeze.conf"
    install -m 0644 "$here/doc/examples/filecopy-dirs.conf" "$destdir$docdir/examples/filecopy-dirs.conf"
    echo "install.sh: installed hvagent under $destdir$prefix (config $destdir$sysconfdir/hvagent/hvagent.toml)"
}

# On the running system (no DESTDIR): the agent's user, and systemd told of the new units. Enabling is
# the admin's call, so it is only said.
activate() {
    [ -z "$destdir" ] || return 0
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers "$sysusersdir/hvagent.conf"
    else
        echo "install.sh: no systemd-sysusers here; to run the agent as its own user, create the system user" \
            "hvagent (home /var/lib/hvagent, no login shell)"
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        echo "install.sh: start it with: systemctl enable --now hvagent-clock.socket hvagent.service"
    else
        echo "install.sh: systemd is not running here; start the agent with: $sbindir/hvagent run"
    fi
}

if [ "$action" = uninstall ]; then
    uninstall
    [ -n "$destdir" ] || [ ! -d /run/systemd/system ] || systemctl daemon-reload
else
    install_files
    activate
fi
