#!/usr/bin/env bash
# packaging-test: the systemd units' exposure scores (the agent's and its clock helper's), their users and
# capabilities, the escalation units and `systemd-analyze verify`, the man pages (groff -ww, hvhost(1) against `hvhost --help`), the `make install` tree (the commented
# default config, the sysusers.d file and polkit rule, uninstall), and the Debian package's contents, control
# fields, modes, conffile and maintainer scripts (the user created),
# and lintian on it (no error, no warning), and the static tarball of `make static` (scripts/packaging-test-static.sh).
# Needs a release build (`make packaging-test` makes one). Builds nothing into the real root and
# starts nothing.
#
# Output: one "PASS name" or "FAIL name: why" line per check (SKIP where a tool is missing), then
# "packaging-test: N passed, M failed". Exit status 0 when none failed.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
# The agent's unit holds no capability and ProtectClock=yes: the clock helper (hvagent-clock.service)
# changes the clock for it (README, "Under systemd", says which settings hold the rest).
MAX_EXPOSURE=1.0
# The helper holds CAP_SYS_TIME and the @clock calls, which is what is left of its score.
MAX_HELPER_EXPOSURE=1.0
# The units, as in systemd/; hvagent-clock.socket starts hvagent-clock.service. The escalation templates are
# verified as an instance (FORCE_INSTANCE seconds), as the agent starts them.
UNITS=(hvagent.service hvagent-clock.socket hvagent-clock.service hvagent-force-poweroff@.service
    hvagent-force-reboot@.service)
FORCE_INSTANCE=300
passed=0
failed=0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

pass() { echo "PASS $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1: $2"; failed=$((failed + 1)); }
skip() { echo "SKIP $1: $2"; }
have() { command -v "$1" >/dev/null; }

# Unit $2 as installed for a binary at $1, so `verify` can check that ExecStart= exists.
unit_for() {
    sed -e "s|^ExecStart=/usr/sbin/hvagent|ExecStart=$1|" -e "s|^ExecStopPost=+/usr/sbin/hvagent|ExecStopPost=+$1|" "systemd/$2"
}

# check_exposure NAME UNIT MAX: the offline exposure score of systemd/UNIT is at most MAX.
check_exposure() {
    local name=$1 unit=$2 max=$3
    have systemd-analyze || { skip "$name" "systemd-analyze is missing (scripts/install-test-deps.sh installs it)"; return; }
    local out score
    out=$(systemd-analyze security --offline=true "systemd/$unit" 2>&1) || true
    score=$(sed -n "s/.*Overall exposure level for $unit: \\([0-9.]*\\).*/\\1/p" <<<"$out")
    if [ -z "$score" ]; then
        fail "$name" "no score in: $(tail -n 3 <<<"$out")"
    elif awk -v s="$score" -v m="$max" 'BEGIN { exit !(s <= m) }'; then
        pass "$name (score $score)"
    else
        fail "$name" "score $score > $max"
    fi
}

# systemd-analyze verify on the units with ExecStart= at binary $2, man pages looked up in $3 (or not at all).
verify_unit() {
    local name=$1 binary=$2 manpath=${3:-} unit paths=()
    have systemd-analyze || { skip "$name" "systemd-analyze is missing"; return; }
    mkdir -p "$work/verify"
    for unit in "${UNITS[@]}"; do
        local copy=$work/verify/${unit/@./@$FORCE_INSTANCE.}
        unit_for "$binary" "$unit" >"$copy"
        paths+=("$copy")
    done
    local out man=(--man=no)
    if [ -n "$manpath" ] && have man; then man=(--man=yes); fi
    if out=$(MANPATH=$manpath systemd-analyze verify "${man[@]}" "${paths[@]}" 2>&1) && [ -z "$out" ]; then
        pass "$name"
    else
        fail "$name" "$out"
    fi
}

# The agent's unit runs as hvagent with no capability and ProtectClock=yes, pulling in the clock helper's
# socket; the helper's unit holds CAP_SYS_TIME alone. exactly_once UNIT LINE...: each LINE's key appears
# once in systemd/UNIT, with that value.
exactly_once() {
    local unit=systemd/$1 line
    shift
    for line in "$@"; do
        [ "$(grep -c "^${line%%=*}=" "$unit")" = 1 ] && grep -qx "$line" "$unit" || echo "not exactly one $line in $unit"
    done
}

check_unit_user() {
    local name=unit_runs_as_hvagent_with_no_capability_and_protect_clock problems
    problems=$(exactly_once hvagent.service User=hvagent Group=hvagent CapabilityBoundingSet= ProtectClock=yes \
        Wants=hvagent-clock.socket)
    grep -q '^AmbientCapabilities=' systemd/hvagent.service && problems+=" AmbientCapabilities= is set"
    grep -q '^SystemCallFilter=.*@clock' systemd/hvagent.service && problems+=" @clock is allowed"
    if [ -z "$problems" ]; then pass "$name"; else fail "$name" "$problems"; fi
    name=clock_helper_unit_holds_cap_sys_time_alone
    problems=$(exactly_once hvagent-clock.service AmbientCapabilities=CAP_SYS_TIME CapabilityBoundingSet=CAP_SYS_TIME \
        PrivateNetwork=yes RestrictAddressFamilies=AF_UNIX 'ExecStart=/usr/sbin/hvagent clock-helper'
        exactly_once hvagent-clock.socket ListenStream=/run/hvagent-clock.sock SocketGroup=hvagent SocketMode=0660)
    if [ -z "$problems" ]; then pass "$name"; else fail "$name" "$problems"; fi
    check_escalation_units
}

# The escalation units force the action only when sleep ends by itself: outside the shutdown transaction
# (DefaultDependencies=no, system.slice), and a stop (SIGKILL) ends them failed, so SuccessAction= does not
# fire; the polkit rule lets hvagent start and stop exactly these.
check_escalation_units() {
    local name=escalation_units_force_only_when_their_sleep_ends problems= action
    for action in poweroff reboot; do
        problems+=$(exactly_once "hvagent-force-$action@.service" DefaultDependencies=no Slice=system.slice \
            'ExecStart=/bin/sleep %i' KillSignal=SIGKILL "SuccessAction=$action-force")
        grep -q '^\(FailureAction\|Requires\|Wants\|After\|Before\|Conflicts\|BindsTo\|PartOf\)=' \
            "systemd/hvagent-force-$action@.service" && problems+=" hvagent-force-$action@.service has a dependency"
    done
    grep -qF '/^hvagent-force-(poweroff|reboot)@[0-9]+\.service$/' packaging/polkit/hvagent.rules ||
        problems+=" the polkit rule does not name exactly the escalation units"
    if [ -z "$problems" ]; then pass "$name"; else fail "$name" "$problems"; fi
}

# systemd-sysusers on the sysusers.d file, into an empty root below the work directory: it makes the
# hvagent user and group, with no login shell and /var/lib/hvagent as home.
check_sysusers() {
    local name=sysusers_file_creates_the_hvagent_user_and_group
    have systemd-sysusers || { skip "$name" "systemd-sysusers is missing"; return; }
    local root=$work/sysusers-root out
    mkdir -p "$root/etc" "$root/usr/lib/sysusers.d"
    cp systemd/hvagent-sysusers.conf "$root/usr/lib/sysusers.d/hvagent.conf"
    if ! out=$(systemd-sysusers --root="$root" hvagent.conf 2>&1); then
        fail "$name" "$out"
    elif grep -q '^hvagent:x:[0-9]*:[0-9]*:[^:]*:/var/lib/hvagent:/usr/sbin/nologin$' "$root/etc/passwd" &&
        grep -q '^hvagent:x:' "$root/etc/group"; then
        pass "$name"
    else
        fail "$name" "passwd: $(cat "$root/etc/passwd" 2>&1); group: $(cat "$root/etc/group" 2>&1)"
    fi
}

# check_modes NAME ROOT PATH:MODE...: every PATH under ROOT is a regular file with octal MODE.
check_modes() {
    local name=$1 root=$2 problems=()
    shift 2
    local entry path mode actual
    for entry in "$@"; do
        path=${entry%:*}
        mode=${entry##*:}
        if [ ! -f "$root/$path" ]; then
            problems+=("$path is missing")
        elif actual=$(stat -c %a "$root/$path") && [ "$actual" != "$mode" ]; then
            problems+=("$path has mode $actual, not $mode")
        fi
    done
    if [ ${#problems[@]} = 0 ]; then pass "$name"; else fail "$name" "${problems[*]}"; fi
}

# The files of an install with PREFIX=/usr and the unit in /lib/systemd/system, as the .deb has them.
USR_FILES=(usr/sbin/hvagent:755 usr/bin/hvhost:755 lib/systemd/system/hvagent.service:644
    lib/systemd/system/hvagent-clock.service:644 lib/systemd/system/hvagent-clock.socket:644
    lib/systemd/system/hvagent-force-poweroff@.service:644 lib/systemd/system/hvagent-force-reboot@.service:644
    usr/lib/modules-load.d/hvagent.conf:644 etc/hvagent/hvagent.toml:644 usr/lib/sysusers.d/hvagent.conf:644
    usr/share/polkit-1/rules.d/hvagent.rules:644 usr/share/doc/hvagent/examples/run-as-root.conf:644
    usr/share/doc/hvagent/examples/backup-freeze.conf:644 usr/share/doc/hvagent/examples/filecopy-dirs.conf:644
    usr/share/doc/hvagent/README.md:644 usr/share/doc/hvagent/hvagent-host-setup.ps1:644)

check_install_tree() {
    local tree=$work/install-usr-local
    make --no-print-directory -s CARGO="cargo -q" install DESTDIR="$tree" >/dev/null
    check_modes install_puts_every_file_in_place_with_its_mode "$tree" \
        usr/local/sbin/hvagent:755 usr/local/bin/hvhost:755 usr/local/lib/systemd/system/hvagent.service:644 \
        usr/local/lib/systemd/system/hvagent-clock.service:644 usr/local/lib/systemd/system/hvagent-clock.socket:644 \
        usr/local/lib/systemd/system/hvagent-force-poweroff@.service:644 \
        usr/local/lib/systemd/system/hvagent-force-reboot@.service:644 \
        usr/local/lib/modules-load.d/hvagent.conf:644 etc/hvagent/hvagent.toml:644 \
        usr/local/lib/sysusers.d/hvagent.conf:644 etc/polkit-1/rules.d/hvagent.rules:644 \
        usr/local/share/doc/hvagent/examples/run-as-root.conf:644 \
        usr/local/share/doc/hvagent/examples/backup-freeze.conf:644 \
        usr/local/share/doc/hvagent/examples/filecopy-dirs.conf:644 \
        usr/local/share/man/man8/hvagent.8:644 usr/local/share/man/man5/hvagent.toml.5:644 \
        usr/local/share/man/man1/hvhost.1:644 usr/local/share/doc/hvagent/README.md:644 \
        usr/local/share/doc/hvagent/hvagent-host-setup.reg:644
    local units=$tree/usr/local/lib/systemd/system
    if grep -qx 'ExecStart=/usr/local/sbin/hvagent run' "$units/hvagent.service" &&
        grep -qx 'ExecStopPost=+/usr/local/sbin/hvagent thaw' "$units/hvagent.service" &&
        grep -qx 'ExecStart=/usr/local/sbin/hvagent clock-helper' "$units/hvagent-clock.service"; then
        pass install_points_the_units_at_the_installed_binary
    else
        fail install_points_the_units_at_the_installed_binary "$(grep -h -e ExecStart= -e ExecStopPost= "$units"/hvagent*.service)"
    fi
    if cmp -s etc/hvagent.toml "$tree/etc/hvagent/hvagent.toml" &&
        "$tree/usr/local/sbin/hvagent" check-config --config "$tree/etc/hvagent/hvagent.toml" >/dev/null; then
        pass install_ships_the_commented_default_config
    else
        fail install_ships_the_commented_default_config "differs from etc/hvagent.toml or does not parse"
    fi
    verify_unit installed_unit_passes_systemd_analyze_verify_with_its_man_pages \
        "$tree/usr/local/sbin/hvagent" "$tree/usr/local/share/man"
    echo 'log_level = "debug"' >"$tree/etc/hvagent/hvagent.toml"
    make --no-print-directory -s CARGO="cargo -q" install DESTDIR="$tree" >/dev/null
    if grep -q debug "$tree/etc/hvagent/hvagent.toml"; then
        pass install_keeps_a_changed_config
    else
        fail install_keeps_a_changed_config "make install overwrote etc/hvagent/hvagent.toml"
    fi
    make --no-print-directory -s CARGO="cargo -q" uninstall DESTDIR="$tree" >/dev/null
    local left
    left=$(cd "$tree" && find . -type f | sort)
    if [ "$left" = ./etc/hvagent/hvagent.toml ]; then
        pass uninstall_removes_all_but_the_config
    else
        fail uninstall_removes_all_but_the_config "left: $left"
    fi
    tree=$work/install-usr
    make --no-print-directory -s CARGO="cargo -q" install DESTDIR="$tree" PREFIX=/usr UNITDIR=/lib/systemd/system \
        MODULESLOADDIR=/usr/lib/modules-load.d SYSUSERSDIR=/usr/lib/sysusers.d \
        POLKITRULESDIR=/usr/share/polkit-1/rules.d >/dev/null
    check_modes install_honours_prefix_usr "$tree" "${USR_FILES[@]}" usr/share/man/man8/hvagent.8:644
}

MAN_PAGES=(docs/hvagent.8 docs/hvagent.toml.5 docs/hvhost.1)

check_man_pages() {
    check_hvhost_man_page
    have groff || { skip man_pages_format_without_warnings "groff is missing"; return; }
    local out
    if out=$(groff -man -ww -z "${MAN_PAGES[@]}" 2>&1) && [ -z "$out" ]; then
        pass man_pages_format_without_warnings
    else
        fail man_pages_format_without_warnings "$out"
    fi
}

# hvhost(1) names every command, kvp operation and option that `hvhost --help` shows.
check_hvhost_man_page() {
    local name=hvhost_man_page_documents_every_command_and_option
    [ -f docs/hvhost.1 ] || { fail "$name" "docs/hvhost.1 is missing"; return; }
    local usage word missing=()
    usage=$(target/release/hvhost --help)
    for word in serve heartbeat shutdown kvp enumerate get set delete \
        $(grep -o -- '--[a-z][a-z-]*' <<<"$usage" | sort -u); do
        # roff spells a '-' of an option \-
        grep -qF -- "${word//-/\\-}" docs/hvhost.1 || missing+=("$word")
    done
    if [ ${#missing[@]} = 0 ]; then pass "$name"; else fail "$name" "not in docs/hvhost.1: ${missing[*]}"; fi
}

check_deb() {
    have dpkg-deb || { skip deb_package "dpkg-deb is missing (scripts/install-test-deps.sh installs it)"; return; }
    local deb
    if ! deb=$(scripts/build-deb.sh 2>"$work/deb.log"); then
        fail make_deb_builds_a_package "$(cat "$work/deb.log")"
        return
    fi
    pass make_deb_builds_a_package
    local info
    info=$(dpkg-deb -f "$deb" Package Version Architecture Depends Recommends Section)
    # polkitd only recommended: without it the agent runs, and only its power actions are refused.
    if grep -qx 'Package: hvagent' <<<"$info" && grep -q '^Depends: libc6' <<<"$info" &&
        ! grep -q '^Depends:.*polkit' <<<"$info" && grep -q '^Recommends: polkitd' <<<"$info" &&
        grep -qx "Architecture: $(dpkg --print-architecture)" <<<"$info"; then
        pass deb_control_fields
    else
        fail deb_control_fields "$info"
    fi
    check_description "$deb"
    local control=$work/control
    dpkg-deb -e "$deb" "$control"
    if [ "$(cat "$control/conffiles")" = /etc/hvagent/hvagent.toml ]; then
        pass deb_keeps_the_config_as_a_conffile
    else
        fail deb_keeps_the_config_as_a_conffile "conffiles: $(cat "$control/conffiles")"
    fi
    check_modes deb_maintainer_scripts_are_executable "$control" postinst:755 prerm:755 postrm:755
    local owners
    owners=$(dpkg-deb -c "$deb" | awk '$2 != "root/root"')
    if [ -z "$owners" ]; then pass deb_files_belong_to_root; else fail deb_files_belong_to_root "$owners"; fi
    local root=$work/deb-root
    dpkg-deb -x "$deb" "$root"
    check_modes deb_installs_every_file_with_its_mode "$root" "${USR_FILES[@]}" \
        usr/share/man/man8/hvagent.8.gz:644 usr/share/man/man5/hvagent.toml.5.gz:644 \
        usr/share/man/man1/hvhost.1.gz:644 usr/share/doc/hvagent/copyright:644 \
        usr/share/doc/hvagent/changelog.gz:644
    if "$root/usr/sbin/hvagent" --version | grep -q '^hvagent '; then
        pass deb_binary_runs
    else
        fail deb_binary_runs "$root/usr/sbin/hvagent --version failed"
    fi
    check_postinst "$control/postinst"
    check_lintian "$deb"
}

# The Description names each of the four services (the words may wrap across its lines).
check_description() {
    local name=deb_description_names_every_service description service missing=()
    description=$(dpkg-deb -f "$1" Description | tr -s ' \n' '  ')
    for service in heartbeat "time sync" shutdown "guest info"; do
        grep -qi -- "$service" <<<"$description" || missing+=("'$service'")
    done
    if [ ${#missing[@]} = 0 ]; then pass "$name"; else fail "$name" "no ${missing[*]} in: $description"; fi
}

# lintian with its default profile: any error or warning fails (info and pedantic tags are not shown).
check_lintian() {
    local name=deb_is_lintian_clean
    have lintian || { skip "$name" "lintian is missing (scripts/install-test-deps.sh installs it)"; return; }
    local out status=0
    # Tags go to stdout; stderr has only lintian's own complaints (such as running as root).
    out=$(lintian --fail-on error,warning "$1" 2>"$work/lintian.log") || status=$?
    if [ "$status" = 0 ] && ! grep -q '^[EW]: ' <<<"$out"; then
        pass "$name"
    else
        fail "$name" "exit status $status; $(tr '\n' ';' <<<"$out") $(tr '\n' ';' <"$work/lintian.log")"
    fi
}

# Runs postinst with stand-ins for every tool it may call (PATH holds nothing else), recording the calls.
check_postinst() {
    local fake=$work/fakebin log=$work/calls
    mkdir -p "$fake"
    : >"$log"
    local tool
    for tool in deb-systemd-helper deb-systemd-invoke systemctl modprobe systemd-sysusers; do
        printf '#!/bin/sh\necho "%s $*" >>"%s"\n' "$tool" "$log" >"$fake/$tool"
        chmod +x "$fake/$tool"
    done
    # was-enabled answers yes, as on a first install.
    if ! PATH=$fake /bin/sh "$1" configure >/dev/null 2>&1; then
        fail postinst_enables_the_service_on_first_install "postinst failed"
        return
    fi
    if grep -qx 'deb-systemd-helper enable hvagent.service' "$log" &&
        grep -qx 'deb-systemd-helper enable hvagent-clock.socket' "$log"; then
        pass postinst_enables_the_service_on_first_install
    else
        fail postinst_enables_the_service_on_first_install "calls: $(tr '\n' ';' <"$log")"
    fi
    if grep -qx 'systemd-sysusers hvagent.conf' "$log"; then
        pass postinst_creates_the_user_with_systemd_sysusers
    else
        fail postinst_creates_the_user_with_systemd_sysusers "calls: $(tr '\n' ';' <"$log")"
    fi
    check_postinst_into_dpkg_root "$1" "$fake" "$log"
    rm "$fake/deb-systemd-helper" "$fake/deb-systemd-invoke"
    : >"$log"
    PATH=$fake /bin/sh "$1" configure 0.0.9 >/dev/null 2>&1 || true
    if ! grep -q 'systemctl enable' "$log"; then
        pass postinst_without_helpers_leaves_enablement_alone_on_upgrade
    else
        fail postinst_without_helpers_leaves_enablement_alone_on_upgrade "calls: $(tr '\n' ';' <"$log")"
    fi
    # Enabling and starting are the helpers' (init-system-helpers is essential); without them postinst
    # succeeds, says nothing and calls systemctl for nothing but daemon-reload.
    : >"$log"
    local name=postinst_without_helpers_succeeds_quietly_and_leaves_systemctl_alone errors
    if ! errors=$(PATH=$fake /bin/sh "$1" configure 2>&1 >/dev/null) || [ -n "$errors" ]; then
        fail "$name" "postinst failed or complained: $errors"
    elif grep -v '^systemctl --system daemon-reload$' "$log" | grep -q '^systemctl'; then
        fail "$name" "calls: $(tr '\n' ';' <"$log")"
    else
        pass "$name"
    fi
}

# An install into DPKG_ROOT (a directory below the work directory) creates the user there and starts nothing.
check_postinst_into_dpkg_root() {
    local postinst=$1 fake=$2 log=$3 name=postinst_creates_the_user_inside_dpkg_root
    : >"$log"
    if ! DPKG_ROOT=$work/dpkg-root PATH=$fake /bin/sh "$postinst" configure >/dev/null 2>&1; then
        fail "$name" "postinst failed"
    elif grep -qx "systemd-sysusers --root=$work/dpkg-root hvagent.conf" "$log" && ! grep -q '^systemctl' "$log"; then
        pass "$name"
    else
        fail "$name" "calls: $(tr '\n' ';' <"$log")"
    fi
}

# shellcheck source=SCRIPTDIR/packaging-test-static.sh
source "$REPO/scripts/packaging-test-static.sh"

check_exposure unit_exposure_score_is_at_most_$MAX_EXPOSURE hvagent.service "$MAX_EXPOSURE"
check_exposure clock_helper_exposure_score_is_at_most_$MAX_HELPER_EXPOSURE hvagent-clock.service "$MAX_HELPER_EXPOSURE"
check_unit_user
check_sysusers
verify_unit unit_passes_systemd_analyze_verify "$REPO/target/release/hvagent"
check_man_pages
check_install_tree
check_deb
check_static

echo "packaging-test: $passed passed, $failed failed"
[ "$failed" = 0 ]
