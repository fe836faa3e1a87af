//! The doctor against fake /proc, /sys and /dev trees; services use unix: addresses, so no test here opens
//! an AF_VSOCK socket.

use std::os::unix::net::UnixListener;

use super::*;

/// A fake root: a Hyper-V guest with hv_sock loaded, CID -1, CAP_SYS_TIME held, no time daemon, and polkitd
/// with the package's rule.
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn hyperv() -> Tree {
        let tree = Tree {
            dir: tempfile::tempdir().unwrap(),
        };
        tree.file(
            "proc/net/protocols",
            "protocol  size sockets  memory press maxhdr  slab module     cl co di ac io in de sh ss gs se re sp bi br ha uh gp em\n\
             AF_VSOCK  1240      0      -1   NI       0   yes  kernel      y  n  n\n",
        );
        for dir in [
            "sys/bus/vmbus/devices",
            "sys/module/vsock",
            "sys/module/hv_sock",
            "proc/1",
        ] {
            tree.dir(dir);
        }
        tree.file("dev/vsock", "-1\n");
        tree.file(
            "proc/self/status",
            "Name:\thvagent\nCapEff:\t000001ffffffffff\n",
        );
        tree.file("proc/1/comm", "systemd\n");
        tree.file(
            "usr/share/polkit-1/rules.d/hvagent.rules",
            "polkit.addRule(...);\n",
        );
        tree.file("usr/lib/polkit-1/polkitd", "");
        tree
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn dir(&self, relative: &str) {
        std::fs::create_dir_all(self.path(relative)).unwrap();
    }

    fn file(&self, relative: &str, text: &str) {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn remove(&self, relative: &str) {
        let path = self.path(relative);
        if path.is_dir() {
            std::fs::remove_dir_all(path).unwrap();
        } else {
            std::fs::remove_file(path).unwrap();
        }
    }

    /// A config whose heartbeat dials a Unix socket in the tree.
    fn config_dialling(&self, socket: &str) -> PathBuf {
        let text = format!(
            "[heartbeat]\nconnect = \"unix:{}\"\n[timesync]\nenabled = false\n[shutdown]\nenabled = false\n[guestinfo]\nenabled = false\n",
            self.path(socket).display()
        );
        self.file("etc/hvagent/hvagent.toml", &text);
        self.path("etc/hvagent/hvagent.toml")
    }

    fn run(&self) -> Vec<Finding> {
        Doctor::new(self.dir.path(), None).run()
    }
}

fn about<'a>(findings: &'a [Finding], topic: &str) -> &'a Finding {
    findings
        .iter()
        .find(|finding| finding.topic == topic)
        .unwrap_or_else(|| panic!("no finding about {topic}: {findings:?}"))
}

fn problems(findings: &[Finding]) -> Vec<&Finding> {
    findings
        .iter()
        .filter(|finding| finding.level == Level::Problem)
        .collect()
}

#[test]
fn a_well_set_up_hyperv_guest_has_no_problem() {
    let tree = Tree::hyperv();
    tree.config_dialling("host.sock");
    let _host = UnixListener::bind(tree.path("host.sock")).unwrap();
    let findings = tree.run();
    assert!(problems(&findings).is_empty(), "{findings:?}");
    assert_eq!(about(&findings, "transport").text, "hv_sock (Hyper-V)");
    assert!(about(&findings, "AF_VSOCK").text.contains("Hyper-V guest"));
    assert!(about(&findings, "local CID")
        .text
        .starts_with("none (reads as -1"));
    assert!(about(&findings, "heartbeat")
        .text
        .starts_with("the host answers at unix:"));
    assert!(about(&findings, "config")
        .text
        .contains("1 service(s) enabled (heartbeat)"));
    let (text, any) = render(&findings);
    assert!(!any);
    assert!(text.ends_with("no problem found\n"), "{text}");
}

#[test]
fn hyperv_without_hv_sock_says_to_load_it() {
    let tree = Tree::hyperv();
    tree.remove("sys/module/hv_sock");
    tree.dir("sys/module/vsock_loopback");
    let findings = tree.run();
    let transport = about(&findings, "transport");
    assert_eq!(transport.level, Level::Problem);
    assert!(
        transport.text.contains("loaded: loopback (CID 1)"),
        "{transport:?}"
    );
    assert!(transport
        .fix
        .as_deref()
        .unwrap()
        .starts_with("modprobe hv_sock"));
}

#[test]
fn no_af_vsock_at_all_on_kvm_says_to_attach_a_device() {
    let tree = Tree::hyperv();
    tree.remove("sys/bus/vmbus");
    tree.remove("sys/module/vsock");
    tree.file("proc/net/protocols", "protocol  size\nUNIX  1024\n");
    let findings = tree.run();
    let vsock = about(&findings, "AF_VSOCK");
    assert_eq!(vsock.level, Level::Problem);
    assert!(vsock.text.contains("not Hyper-V"));
    assert!(vsock.fix.as_deref().unwrap().contains("vhost-vsock-pci"));
    // The default heartbeat dials vsock, which cannot work without AF_VSOCK.
    let heartbeat = about(&findings, "heartbeat");
    assert_eq!(heartbeat.level, Level::Problem);
    assert!(heartbeat.text.contains("AF_VSOCK is not available"));
}

#[test]
fn virtio_guests_report_their_transport_and_cid() {
    let tree = Tree::hyperv();
    tree.remove("sys/bus/vmbus");
    tree.remove("sys/module/hv_sock");
    tree.dir("sys/module/vmw_vsock_virtio_transport");
    tree.file("dev/vsock", "3\n");
    let findings = tree.run();
    assert_eq!(about(&findings, "transport").text, "virtio-vsock");
    assert_eq!(about(&findings, "local CID").text, "3");
}

#[test]
fn vmci_beside_hv_sock_is_a_problem() {
    let tree = Tree::hyperv();
    tree.dir("sys/module/vmw_vsock_vmci_transport");
    let transport = about(&tree.run(), "transport").clone();
    assert_eq!(transport.level, Level::Problem);
    assert!(transport
        .fix
        .unwrap()
        .contains("blacklist vmw_vsock_vmci_transport"));
}

#[test]
fn an_unanswered_host_is_a_problem_with_the_fix() {
    let tree = Tree::hyperv();
    tree.config_dialling("absent.sock");
    let findings = tree.run();
    let heartbeat = about(&findings, "heartbeat");
    assert_eq!(heartbeat.level, Level::Problem);
    assert!(heartbeat.text.contains("does not answer"), "{heartbeat:?}");
    assert!(heartbeat
        .fix
        .as_deref()
        .unwrap()
        .starts_with("start the host peer listening at"));
    let (text, any) = render(&findings);
    assert!(any);
    assert!(
        text.contains("\n         fix: start the host peer"),
        "{text}"
    );
    assert!(text.ends_with("1 problem found\n"), "{text}");
}

#[test]
fn vsock_services_are_not_probed_in_a_fake_tree_and_name_their_guid_when_unanswered() {
    let tree = Tree::hyperv();
    let heartbeat = about(&tree.run(), "heartbeat").clone();
    assert_eq!(heartbeat.level, Level::Note);
    assert!(heartbeat.text.contains("not probed"), "{heartbeat:?}");
    let fix = unanswered_fix(&"vsock:host:0x48560001".parse().unwrap());
    assert!(
        fix.contains("48560001-facb-11e6-bd58-64006a7986d3"),
        "{fix}"
    );
    assert!(fix.contains("hvagent host-setup"), "{fix}");
}

#[test]
fn listening_services_are_noted_not_probed() {
    let tree = Tree::hyperv();
    tree.file(
        "etc/hvagent/hvagent.toml",
        "[heartbeat]\nlisten = \"vsock:any:0x48560001\"\n",
    );
    let heartbeat = about(&tree.run(), "heartbeat").clone();
    assert_eq!(heartbeat.level, Level::Note);
    assert!(heartbeat.text.contains("the host dials it"));
}

#[test]
fn a_broken_config_is_a_problem_naming_the_line() {
    let tree = Tree::hyperv();
    tree.file(
        "etc/hvagent/hvagent.toml",
        "[heartbeat]\nconect = \"unix:/x\"\n",
    );
    let findings = tree.run();
    let config = about(&findings, "config");
    assert_eq!(config.level, Level::Problem);
    assert!(config.text.contains("hvagent.toml:2:"), "{config:?}");
    assert!(findings.iter().all(|finding| finding.topic != "heartbeat"));
}

#[test]
fn an_explicit_config_is_used_and_a_missing_one_is_a_problem() {
    let tree = Tree::hyperv();
    let findings = Doctor::new(tree.dir.path(), Some(&tree.path("nope.toml"))).run();
    assert_eq!(about(&findings, "config").level, Level::Problem);
}

#[test]
fn cap_sys_time_and_time_daemons_matter_when_time_sync_runs() {
    let tree = Tree::hyperv();
    tree.file("proc/self/status", "CapEff:\t0000000000000000\n");
    tree.file("proc/412/comm", "chronyd\n");
    let doctor = Doctor::new(tree.dir.path(), None);
    assert_eq!(doctor.check_cap_sys_time(false).level, Level::Note);
    assert_eq!(doctor.check_cap_sys_time(true).level, Level::Problem);
    let daemons = doctor.check_time_daemons(false);
    assert_eq!(daemons.level, Level::Note);
    assert!(daemons.text.starts_with("chronyd (pid 412)"), "{daemons:?}");
    assert_eq!(doctor.check_time_daemons(true).level, Level::Problem);
    tree.file("proc/self/status", "CapEff:\t0000000002000000\n");
    assert_eq!(doctor.check_cap_sys_time(true).level, Level::Ok);
}

#[test]
fn cap_sys_admin_matters_only_when_backup_runs_and_the_drop_in_grants_it() {
    let tree = Tree::hyperv();
    let doctor = Doctor::new(tree.dir.path(), None);
    assert_eq!(doctor.check_cap_sys_admin(false), None);
    let held = doctor.check_cap_sys_admin(true).unwrap();
    assert_eq!(held.level, Level::Ok, "{held:?}");
    tree.file("proc/self/status", "CapEff:\t0000000000000000\n");
    assert_eq!(
        doctor.check_cap_sys_admin(true).unwrap().level,
        Level::Problem
    );
    tree.file("proc/self/status", "CapEff:\t000001ffffffffff\n");
    tree.file("lib/systemd/system/hvagent.service", "[Service]\n");
    let unit = doctor.check_cap_sys_admin(true).unwrap();
    assert_eq!(
        unit.level,
        Level::Problem,
        "root running doctor is not the unit"
    );
    assert!(unit.text.contains("HV_E_FAIL"), "{unit:?}");
    assert!(
        unit.fix.as_deref().unwrap().contains("backup-freeze.conf"),
        "{unit:?}"
    );
    tree.file(
        "etc/systemd/system/hvagent.service.d/backup-freeze.conf",
        "[Service]\n",
    );
    assert_eq!(doctor.check_cap_sys_admin(true).unwrap().level, Level::Ok);
}

#[test]
fn cap_sys_time_is_not_needed_where_the_clock_helper_listens() {
    let tree = Tree::hyperv();
    tree.file("proc/self/status", "CapEff:\t0000000000000000\n");
    let doctor = Doctor::new(tree.dir.path(), None);
    let missing = doctor.check_cap_sys_time(true);
    assert!(missing.text.contains("no clock helper"), "{missing:?}");
    tree.file("run/hvagent-clock.sock", "");
    let finding = doctor.check_cap_sys_time(true);
    assert_eq!(finding.level, Level::Ok);
    assert!(finding.text.contains("hvagent-clock.socket"), "{finding:?}");
}

#[test]
fn capability_sets_read_as_names() {
    use super::privilege::{capability_names, capability_set};
    assert_eq!(capability_names(0), "none");
    assert_eq!(capability_names(1 << CAP_SYS_TIME), "CAP_SYS_TIME");
    assert_eq!(capability_names(0x0000_01ff_ffff_ffff), "all");
    assert_eq!(
        capability_names(1 | (1 << 21) | (1 << 50)),
        "CAP_CHOWN, CAP_SYS_ADMIN, cap_50"
    );
    let status = "Name:\thvagent\nCapInh:\t0000000002000000\nCapEff:\t0000000002000000\nCapAmb:\t0000000002000000\n";
    assert_eq!(capability_set(status, "CapAmb"), Some(1 << CAP_SYS_TIME));
    assert_eq!(capability_set(status, "CapBnd"), None);
}

#[test]
fn doctor_reports_its_user_and_capabilities_from_proc_self_status() {
    let tree = Tree::hyperv();
    tree.file(
        "proc/self/status",
        "Name:\thvagent\nUid:\t996\t996\t996\t996\nCapEff:\t0000000002000000\n\
         CapBnd:\t0000000002000000\nCapAmb:\t0000000002000000\n",
    );
    tree.file(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\nhvagent:x:996:995:hvagent guest agent:/var/lib/hvagent:/usr/sbin/nologin\n",
    );
    let findings = tree.run();
    let user = about(&findings, "user");
    assert_eq!(user.level, Level::Ok);
    assert_eq!(
        user.text,
        "this runs as uid 996 (hvagent); the unit's user hvagent is uid 996"
    );
    assert_eq!(
        about(&findings, "capabilities").text,
        "effective CAP_SYS_TIME; ambient CAP_SYS_TIME; bounding CAP_SYS_TIME"
    );
}

#[test]
fn an_installed_unit_whose_user_is_missing_is_a_problem() {
    let tree = Tree::hyperv();
    tree.file(
        "proc/self/status",
        "Uid:\t0\t0\t0\t0\nCapEff:\t000001ffffffffff\n",
    );
    tree.file("etc/passwd", "root:x:0:0:root:/root:/bin/bash\n");
    let doctor = Doctor::new(tree.dir.path(), None);
    assert_eq!(doctor.check_user().level, Level::Note);
    assert_eq!(doctor.check_user().text, "this runs as uid 0 (root)");
    tree.file(
        "lib/systemd/system/hvagent.service",
        "[Service]\nUser=hvagent\n",
    );
    let user = doctor.check_user();
    assert_eq!(user.level, Level::Problem);
    assert!(
        user.text
            .contains("runs the agent as user hvagent, which /etc/passwd lacks"),
        "{user:?}"
    );
    assert!(user
        .fix
        .as_deref()
        .unwrap()
        .starts_with("systemd-sysusers hvagent.conf"));
    let caps = doctor.check_capabilities();
    assert_eq!(
        caps.text,
        "effective all; ambient unknown; bounding unknown"
    );
}

#[test]
fn power_actions_without_polkitd_or_its_rule_are_a_problem_while_shutdown_runs() {
    let tree = Tree::hyperv();
    let doctor = Doctor::new(tree.dir.path(), None);
    let ok = doctor.check_polkit(true);
    assert_eq!(ok.level, Level::Ok);
    assert!(
        ok.text
            .starts_with("/usr/share/polkit-1/rules.d/hvagent.rules lets user hvagent"),
        "{ok:?}"
    );
    tree.remove("usr/lib/polkit-1/polkitd");
    let missing = doctor.check_polkit(true);
    assert_eq!(missing.level, Level::Problem);
    assert!(missing
        .text
        .starts_with("/usr/share/polkit-1/rules.d/hvagent.rules is installed, but polkitd is not"));
    assert!(missing
        .fix
        .as_deref()
        .unwrap()
        .contains("/usr/share/doc/hvagent/examples/run-as-root.conf"));
    assert_eq!(doctor.check_polkit(false).level, Level::Note);
    tree.remove("usr/share/polkit-1/rules.d/hvagent.rules");
    tree.file("usr/libexec/polkitd", "");
    assert!(doctor
        .check_polkit(true)
        .text
        .starts_with("/usr/libexec/polkitd is installed, but not the rule hvagent.rules"));
    tree.file("etc/polkit-1/rules.d/hvagent.rules", "");
    assert_eq!(doctor.check_polkit(true).level, Level::Ok);
}

#[test]
fn allowed_dirs_must_exist_be_writable_for_the_agents_user_and_be_read_write_under_the_unit() {
    use std::os::unix::fs::PermissionsExt;
    let tree = Tree::hyperv();
    let doctor = Doctor::new(tree.dir.path(), None);
    let dirs = vec!["/srv/in".to_string()];
    let missing = &doctor.check_allowed_dirs(&dirs)[0];
    assert_eq!(missing.level, Level::Problem, "{missing:?}");
    assert!(
        missing.fix.as_deref().unwrap().contains("install -d"),
        "{missing:?}"
    );
    tree.dir("srv/in");
    assert_eq!(
        doctor.check_allowed_dirs(&dirs)[0].level,
        Level::Ok,
        "no unit: the agent runs as root"
    );
    // Under the unit, as a user that does not own the directory, and without a drop-in.
    tree.file("lib/systemd/system/hvagent.service", "[Service]\n");
    tree.file(
        "etc/passwd",
        "root:x:0:0::/root:/bin/sh\nhvagent:x:64999:64999::/var/lib/hvagent:/usr/sbin/nologin\n",
    );
    std::fs::set_permissions(tree.path("srv/in"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let owned = &doctor.check_allowed_dirs(&dirs)[0];
    assert_eq!(owned.level, Level::Problem, "{owned:?}");
    assert!(owned.text.contains("cannot write it"), "{owned:?}");
    std::fs::set_permissions(tree.path("srv/in"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let read_only = &doctor.check_allowed_dirs(&dirs)[0];
    assert!(read_only.text.contains("ReadWritePaths="), "{read_only:?}");
    tree.file(
        "etc/systemd/system/hvagent.service.d/filecopy-dirs.conf",
        "[Service]\nReadWritePaths=-/srv\n",
    );
    assert_eq!(doctor.check_allowed_dirs(&dirs)[0].level, Level::Ok);
}

#[test]
fn hv_kvp_daemon_on_the_same_pool_files_is_a_problem_and_on_its_own_a_note() {
    let tree = Tree::hyperv();
    tree.file("proc/77/comm", "hv_kvp_daemon\n");
    tree.dir("var/lib/hyperv");
    let config = |pool_dir: &str| {
        let text = format!(
            "[heartbeat]\nenabled = false\n[timesync]\nenabled = false\n[shutdown]\nenabled = false\n\
             [guestinfo]\nlisten = \"unix:{}\"\npool_dir = \"{pool_dir}\"\n",
            tree.path("kvp.sock").display()
        );
        tree.file("etc/hvagent/hvagent.toml", &text);
    };
    config("/var/lib/hyperv");
    let findings = tree.run();
    let found = about(&findings, "hv_kvp_daemon");
    assert_eq!(found.level, Level::Problem, "{found:?}");
    assert!(found.text.contains("pid 77"), "{found:?}");
    config("/var/lib/hvagent/kvp");
    assert_eq!(about(&tree.run(), "hv_kvp_daemon").level, Level::Note);
    tree.remove("proc/77");
    assert_eq!(about(&tree.run(), "hv_kvp_daemon").level, Level::Ok);
}
