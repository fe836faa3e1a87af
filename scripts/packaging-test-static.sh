# The static tarball's part of scripts/packaging-test.sh (sourced; it uses that script's pass, fail,
# check_modes and verify_unit): `make static` (scripts/build-static.sh) builds it, the agent in it has no
# loader and no shared library, it holds exactly the files listed below with their modes, owned by root,
# and its install.sh puts them in place under a DESTDIR, keeps a changed config and removes the rest again.
# shellcheck shell=bash

# The tarball's files below hvagent-VERSION-x86_64-linux/, with their modes.
STATIC_FILES=(install.sh:755 sbin/hvagent:755 systemd/hvagent.service:644 systemd/hvagent-clock.service:644
    systemd/hvagent-clock.socket:644 systemd/hvagent-force-poweroff@.service:644
    systemd/hvagent-force-reboot@.service:644 systemd/hvagent-modules.conf:644 systemd/hvagent-sysusers.conf:644
    polkit/hvagent.rules:644 etc/hvagent.toml:644 man/hvagent.8:644 man/hvagent.toml.5:644 doc/README.md:644
    doc/PROTOCOL.md:644 doc/copyright:644 doc/hvagent-host-setup.ps1:644 doc/hvagent-host-setup.reg:644
    doc/examples/run-as-root.conf:644 doc/examples/backup-freeze.conf:644 doc/examples/filecopy-dirs.conf:644)

# What `install.sh` (default prefix /usr/local) installs, with the modes.
STATIC_INSTALLED=(usr/local/sbin/hvagent:755 usr/local/lib/systemd/system/hvagent.service:644
    usr/local/lib/systemd/system/hvagent-clock.service:644 usr/local/lib/systemd/system/hvagent-clock.socket:644
    usr/local/lib/systemd/system/hvagent-force-poweroff@.service:644
    usr/local/lib/systemd/system/hvagent-force-reboot@.service:644 usr/local/lib/modules-load.d/hvagent.conf:644
    usr/local/lib/sysusers.d/hvagent.conf:644 etc/polkit-1/rules.d/hvagent.rules:644 etc/hvagent/hvagent.toml:644
    usr/local/share/man/man8/hvagent.8:644 usr/local/share/man/man5/hvagent.toml.5:644
    usr/local/share/doc/hvagent/README.md:644 usr/local/share/doc/hvagent/PROTOCOL.md:644
    usr/local/share/doc/hvagent/copyright:644 usr/local/share/doc/hvagent/hvagent-host-setup.ps1:644
    usr/local/share/doc/hvagent/hvagent-host-setup.reg:644 usr/local/share/doc/hvagent/examples/run-as-root.conf:644
    usr/local/share/doc/hvagent/examples/backup-freeze.conf:644 usr/local/share/doc/hvagent/examples/filecopy-dirs.conf:644)

check_static() {
    local tarball version
    if ! tarball=$(scripts/build-static.sh 2>"$work/static.log"); then
        fail make_static_builds_the_tarball "$(tail -n 20 "$work/static.log")"
        return
    fi
    version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
    if [ "$tarball" = "target/static/hvagent-$version-x86_64-linux.tar.gz" ] && [ -f "$tarball" ]; then
        pass make_static_builds_the_tarball
    else
        fail make_static_builds_the_tarball "printed $tarball"
        return
    fi
    local name=hvagent-$version-x86_64-linux dir=$work/static
    mkdir -p "$dir"
    tar -xzf "$tarball" -C "$dir"
    check_static_contents "$tarball" "$name"
    check_modes static_tarball_files_have_their_modes "$dir/$name" "${STATIC_FILES[@]}"
    check_static_binary "$dir/$name"
    check_static_install "$dir/$name"
}

# Exactly the listed files, nothing outside hvagent-VERSION-x86_64-linux/, every entry root's.
check_static_contents() {
    local tarball=$1 name=$2 listed expected owners
    listed=$(tar -tzf "$tarball" | grep -v '/$' | sort)
    expected=$(printf '%s\n' "${STATIC_FILES[@]%:*}" | sed "s|^|$name/|" | sort)
    if [ "$listed" = "$expected" ]; then
        pass static_tarball_holds_exactly_the_agent_units_config_man_pages_docs_and_install_script
    else
        fail static_tarball_holds_exactly_the_agent_units_config_man_pages_docs_and_install_script \
            "$(diff <(echo "$expected") <(echo "$listed") | grep '^[<>]' | tr '\n' ' ')"
    fi
    owners=$(tar -tvzf "$tarball" | awk '$2 != "0/0"')
    if [ -z "$owners" ]; then pass static_tarball_files_belong_to_root; else fail static_tarball_files_belong_to_root "$owners"; fi
}

# No PT_INTERP (no dynamic loader), no DT_NEEDED (no shared library); it runs and reads its own config.
check_static_binary() {
    local dir=$1 binary=$1/sbin/hvagent name=static_binary_has_no_interpreter_and_no_needed_library problems=
    if have readelf; then
        readelf -lW "$binary" | grep -q INTERP && problems+=" it has a PT_INTERP (a dynamic loader)"
        readelf -dW "$binary" | grep -q NEEDED && problems+=" it needs: $(readelf -dW "$binary" | grep NEEDED | tr '\n' ' ')"
    else
        problems=" readelf is missing"
    fi
    file "$binary" | grep -q 'static' || problems+=" file says: $(file -b "$binary")"
    if [ -z "$problems" ]; then pass "$name"; else fail "$name" "$problems"; fi
    if "$binary" --version | grep -q '^hvagent ' &&
        "$binary" check-config --config "$dir/etc/hvagent.toml" >/dev/null; then
        pass static_binary_runs_and_reads_the_shipped_config
    else
        fail static_binary_runs_and_reads_the_shipped_config "--version or check-config failed"
    fi
}

# install.sh under /bin/sh into a DESTDIR: every file with its mode, units at the installed binary,
# `systemd-analyze verify` with its man pages, a changed config kept, --uninstall leaving only the config,
# and --prefix /usr putting the polkit rule where polkitd reads it.
check_static_install() {
    local dir=$1 root=$work/static-root out
    if ! out=$(DESTDIR=$root sh "$dir/install.sh" 2>&1); then
        fail static_install_puts_every_file_in_place_with_its_mode "install.sh failed: $out"
        return
    fi
    check_modes static_install_puts_every_file_in_place_with_its_mode "$root" "${STATIC_INSTALLED[@]}"
    local units=$root/usr/local/lib/systemd/system
    if grep -qx 'ExecStart=/usr/local/sbin/hvagent run' "$units/hvagent.service" &&
        grep -qx 'ExecStopPost=+/usr/local/sbin/hvagent thaw' "$units/hvagent.service" &&
        grep -qx 'ExecStart=/usr/local/sbin/hvagent clock-helper' "$units/hvagent-clock.service" &&
        cmp -s etc/hvagent.toml "$root/etc/hvagent/hvagent.toml"; then
        pass static_install_points_the_units_at_the_installed_binary_and_ships_the_default_config
    else
        fail static_install_points_the_units_at_the_installed_binary_and_ships_the_default_config \
            "$(grep -h -e ExecStart= -e ExecStopPost= "$units"/hvagent*.service)"
    fi
    verify_unit static_installed_unit_passes_systemd_analyze_verify_with_its_man_pages \
        "$root/usr/local/sbin/hvagent" "$root/usr/local/share/man"
    echo 'log_level = "debug"' >"$root/etc/hvagent/hvagent.toml"
    DESTDIR=$root sh "$dir/install.sh" >/dev/null
    DESTDIR=$root sh "$dir/install.sh" --uninstall >/dev/null
    local left
    left=$(cd "$root" && find . -type f | sort)
    if [ "$left" = ./etc/hvagent/hvagent.toml ] && grep -q debug "$root/etc/hvagent/hvagent.toml"; then
        pass static_install_keeps_a_changed_config_and_uninstall_removes_the_rest
    else
        fail static_install_keeps_a_changed_config_and_uninstall_removes_the_rest "left: $left"
    fi
    root=$work/static-root-usr
    DESTDIR=$root sh "$dir/install.sh" --prefix /usr >/dev/null
    check_modes static_install_with_prefix_usr_uses_the_distribution_paths "$root" usr/sbin/hvagent:755 \
        usr/lib/systemd/system/hvagent.service:644 usr/lib/sysusers.d/hvagent.conf:644 \
        usr/share/polkit-1/rules.d/hvagent.rules:644 usr/share/man/man8/hvagent.8:644 etc/hvagent/hvagent.toml:644
}
