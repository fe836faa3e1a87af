//! The keys of each service's own section, read into the service's settings type.

use std::path::Path;
use std::time::Duration;

use crate::config::program::{self, search_path};
use crate::config::{parse, Config, ServiceSettings};
use hvproto::service::backup::BackupSettings;
use hvproto::service::filecopy::FileCopySettings;
use hvproto::service::guestinfo::GuestInfoSettings;
use hvproto::service::shutdown::{is_default_command, ShutdownSettings};
use hvproto::service::timesync::{Mode, TimeSyncSettings};
use hvproto::service::ServiceKind;

fn parse_text(text: &str) -> Result<Config, String> {
    parse(text, Path::new("t.toml")).map_err(|error| error.to_string())
}

fn settings_of(config: &Config, kind: ServiceKind) -> ServiceSettings {
    config
        .services
        .iter()
        .find(|service| service.kind() == kind)
        .map(|service| service.settings.clone())
        .unwrap()
}

#[test]
fn shutdown_commands_take_lines_and_arrays() {
    let config = parse_text(
        "[shutdown]\npoweroff = \"/bin/echo  off now\"\nreboot = [\"/bin/sh\", \"-c\", \"echo 'a b'\"]\n",
    )
    .unwrap();
    let ServiceSettings::Shutdown(shutdown) = settings_of(&config, ServiceKind::Shutdown) else {
        panic!("no shutdown settings");
    };
    assert_eq!(shutdown.poweroff, ["/bin/echo", "off", "now"]);
    assert_eq!(shutdown.reboot, ["/bin/sh", "-c", "echo 'a b'"]);
    assert_eq!(shutdown.hibernate, ["systemctl", "hibernate"]);
}

#[test]
fn commands_are_made_absolute_at_parse_and_a_missing_one_is_an_error() {
    let config = parse_text(
        "[heartbeat]\nhealth = \"command\"\nhealth_command = \"true --quick\"\n[shutdown]\n\
         poweroff = [\"sh\", \"-c\", \"exit 0\"]\nreboot = \"systemctl reboot\"\n",
    )
    .unwrap();
    let found = |name| program::resolve(name, &search_path()).unwrap();
    let ServiceSettings::Heartbeat(health) = settings_of(&config, ServiceKind::Heartbeat) else {
        panic!("no heartbeat settings");
    };
    assert_eq!(health.command, [found("true"), "--quick".into()]);
    assert!(health.command[0].starts_with('/'));
    let ServiceSettings::Shutdown(shutdown) = settings_of(&config, ServiceKind::Shutdown) else {
        panic!("no shutdown settings");
    };
    assert_eq!(
        shutdown.poweroff,
        [found("sh"), "-c".into(), "exit 0".into()]
    );
    // The built-in command, written out: load resolves it, and a guest without systemctl may name it.
    assert_eq!(shutdown.reboot, ["systemctl", "reboot"]);
    let error = parse_text("[shutdown]\nhibernate = \"no-such-program-hv now\"\n").unwrap_err();
    assert!(error.starts_with("t.toml:2:13: "), "{error}");
    assert!(error.contains("shutdown.hibernate"), "{error}");
    assert!(
        error.contains("'no-such-program-hv' is not in PATH ("),
        "{error}"
    );
    let error = parse_text("[heartbeat]\nhealth_command = [\"./check\"]\n").unwrap_err();
    assert!(error.contains("heartbeat.health_command"), "{error}");
    assert!(error.contains("relative path"), "{error}");
}

#[test]
fn the_built_in_commands_are_resolved_where_path_has_systemctl_and_kept_where_not() {
    let bin = tempfile::tempdir().unwrap();
    let systemctl = bin.path().join("systemctl");
    std::fs::write(&systemctl, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        &systemctl,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut config = Config::default();
    config.resolve_defaults(bin.path().as_os_str());
    let ServiceSettings::Shutdown(shutdown) = settings_of(&config, ServiceKind::Shutdown) else {
        panic!("no shutdown settings");
    };
    let absolute = systemctl.display().to_string();
    assert_eq!(shutdown.poweroff, [absolute.as_str(), "poweroff"]);
    assert!(is_default_command(&shutdown.poweroff, "poweroff"));
    assert!(!is_default_command(&shutdown.poweroff, "reboot"));
    let mut missing = Config::default();
    missing.resolve_defaults(std::ffi::OsStr::new("/nonexistent"));
    assert_eq!(missing, Config::default());
    assert_eq!(
        settings_of(&missing, ServiceKind::Shutdown),
        ServiceSettings::Shutdown(ShutdownSettings::default())
    );
    assert!(!is_default_command(
        &["systemctl".into(), "reboot".into(), "--now".into()],
        "reboot"
    ));
}

#[test]
fn quoted_command_lines_and_empty_commands_are_refused() {
    let error = parse_text("[shutdown]\n\npoweroff = \"sh -c 'halt'\"\n").unwrap_err();
    assert!(error.starts_with("t.toml:3:12: "), "{error}");
    assert!(error.contains("give an array"), "{error}");
    let error = parse_text("[shutdown]\nreboot = []\n").unwrap_err();
    assert!(error.contains("shutdown.reboot"), "{error}");
    assert!(error.contains("empty"), "{error}");
    let error = parse_text("[shutdown]\nreboot = \"  \"\n").unwrap_err();
    assert!(error.contains("empty"), "{error}");
}

#[test]
fn health_keys_are_validated() {
    let config = parse_text(
        "[heartbeat]\nhealth = \"command\"\nhealth_command = \"/bin/true\"\nhealth_interval = 5\n\
         health_timeout = 0.5\n",
    )
    .unwrap();
    let ServiceSettings::Heartbeat(health) = settings_of(&config, ServiceKind::Heartbeat) else {
        panic!("no heartbeat settings");
    };
    assert_eq!(health.mode, hvproto::service::health::Mode::Command);
    assert_eq!(health.command, ["/bin/true"]);
    assert_eq!(health.interval, Duration::from_secs(5));
    assert_eq!(health.timeout, Duration::from_millis(500));
    let error = parse_text("[heartbeat]\nhealth = \"command\"\n").unwrap_err();
    assert!(error.starts_with("t.toml:2:"), "{error}");
    assert!(error.contains("needs health_command"), "{error}");
    let error = parse_text("[heartbeat]\nhealth = \"sometimes\"\n").unwrap_err();
    assert!(
        error.contains("not auto, systemd, command or none"),
        "{error}"
    );
    let error = parse_text("[heartbeat]\nhealth_interval = 0\n").unwrap_err();
    assert!(error.contains("heartbeat.health_interval"), "{error}");
}

#[test]
fn a_key_in_the_wrong_section_names_its_section() {
    let error = parse_text("[heartbeat]\npoweroff = \"/bin/true\"\n").unwrap_err();
    assert!(error.starts_with("t.toml:2:"), "{error}");
    assert!(error.contains("[shutdown] section"), "{error}");
    let error = parse_text("[shutdown]\nstate_dir = \"/x\"\n").unwrap_err();
    assert!(error.contains("[guestinfo] section"), "{error}");
    let error = parse_text("[heartbeat]\n\nmode = \"monitor\"\n").unwrap_err();
    assert!(error.starts_with("t.toml:3:8: "), "{error}");
    assert!(
        error.contains("'heartbeat.mode': mode is a setting of the [timesync] section"),
        "{error}"
    );
    let error = parse_text("[guestinfo]\nchrony_socket = \"/run/c\"\n").unwrap_err();
    assert!(error.contains("[timesync] section"), "{error}");
    let error = parse_text("[timesync]\nhealth_interval = 5\n").unwrap_err();
    assert!(error.contains("[heartbeat] section"), "{error}");
}

#[test]
fn state_dir_must_be_absolute() {
    let config = parse_text("[guestinfo]\nstate_dir = \"/srv/hv\"\n").unwrap();
    assert_eq!(
        settings_of(&config, ServiceKind::GuestInfo),
        ServiceSettings::GuestInfo(GuestInfoSettings {
            state_dir: "/srv/hv".into(),
            ..GuestInfoSettings::default()
        })
    );
    let error = parse_text("[guestinfo]\nstate_dir = \"var/lib\"\n").unwrap_err();
    assert!(error.contains("not an absolute path"), "{error}");
}

#[test]
fn timesync_keys_set_the_services_own_settings() {
    let config = parse_text("[timesync]\nmode = \"monitor\"\nprobe_interval = 0\n").unwrap();
    assert_eq!(
        settings_of(&config, ServiceKind::TimeSync),
        ServiceSettings::TimeSync(TimeSyncSettings {
            mode: Mode::Monitor,
            probe_interval: Duration::ZERO,
            ..TimeSyncSettings::default()
        })
    );
    assert_eq!(
        settings_of(&Config::default(), ServiceKind::TimeSync),
        ServiceSettings::TimeSync(TimeSyncSettings::default())
    );
}

#[test]
fn backup_is_off_by_default_and_its_keys_set_its_own_settings() {
    let defaults = Config::default();
    let enabled: Vec<ServiceKind> = defaults.enabled().map(|service| service.kind()).collect();
    assert!(!enabled.contains(&ServiceKind::Backup), "{enabled:?}");
    let config = parse_text(
        "[backup]\nenabled = true\nhooks_dir = \"/h\"\nthaw_after = 5\nhook_timeout = 0.5\n\
         mounts = [\"/\", \"/srv/a b\"]\n",
    )
    .unwrap();
    assert!(config
        .enabled()
        .any(|service| service.kind() == ServiceKind::Backup));
    assert_eq!(
        settings_of(&config, ServiceKind::Backup),
        ServiceSettings::Backup(BackupSettings {
            hooks_dir: "/h".into(),
            thaw_after: Duration::from_secs(5),
            hook_timeout: Duration::from_millis(500),
            mounts: Some(vec!["/".to_string(), "/srv/a b".to_string()]),
        })
    );
    assert_eq!(parse_text(&config.to_string()).unwrap(), config);
    let all = parse_text("[backup]\nmounts = \"all\"\n").unwrap();
    assert_eq!(
        settings_of(&all, ServiceKind::Backup),
        ServiceSettings::Backup(BackupSettings::default())
    );
    for (bad, says) in [
        ("mounts = [\"srv\"]", "not an absolute mount point"),
        ("mounts = \"some\"", "\"all\" or an array"),
        ("thaw_after = 0", "thaw_after"),
        ("hooks_dir = \"hooks\"", "hooks_dir"),
    ] {
        let why = parse_text(&format!("[backup]\n{bad}\n")).unwrap_err();
        assert!(why.contains(says), "{bad}: {why}");
    }
}

#[test]
fn filecopy_is_off_by_default_and_refuses_to_start_without_allowed_dirs() {
    let defaults = Config::default();
    assert!(!defaults
        .enabled()
        .any(|service| service.kind() == ServiceKind::FileCopy));
    let why = parse_text("[filecopy]\nenabled = true\n").unwrap_err();
    assert!(
        why.contains("filecopy.allowed_dirs") && why.contains("allowed_dirs = [\"/DIR\"]"),
        "{why}"
    );
    // Off, it needs none.
    parse_text("[filecopy]\nmax_file_size = 10\n").unwrap();
    let config = parse_text(
        "[filecopy]\nenabled = true\nallowed_dirs = [\"/srv/in\", \"/tmp/a b\"]\nmax_file_size = 1024\n\
         file_mode = 0o600\ncopy_timeout = 2.5\n",
    )
    .unwrap();
    assert_eq!(
        settings_of(&config, ServiceKind::FileCopy),
        ServiceSettings::FileCopy(FileCopySettings {
            allowed_dirs: vec!["/srv/in".to_string(), "/tmp/a b".to_string()],
            max_file_size: 1024,
            file_mode: 0o600,
            copy_timeout: Duration::from_millis(2500),
        })
    );
    assert_eq!(parse_text(&config.to_string()).unwrap(), config);
    let string_mode = parse_text("[filecopy]\nfile_mode = \"0644\"\n").unwrap();
    assert!(string_mode.to_string().contains("file_mode = 0o644"));
    for (bad, says) in [
        ("allowed_dirs = [\"srv\"]", "not an absolute directory path"),
        ("allowed_dirs = [\"/srv/../etc\"]", "'..'"),
        ("allowed_dirs = \"/srv\"", "array"),
        ("max_file_size = 0", "1 or more"),
        ("file_mode = 0o1777", "0o777"),
        ("file_mode = \"rw\"", "mode"),
        ("copy_timeout = 0", "copy_timeout"),
    ] {
        let why = parse_text(&format!("[filecopy]\n{bad}\n")).unwrap_err();
        assert!(why.contains(says), "{bad}: {why}");
    }
}

#[test]
fn printed_service_settings_parse_back() {
    let config = parse_text(
        "[heartbeat]\nhealth = \"command\"\nhealth_command = [\"/bin/x\", \"a b\"]\n[shutdown]\n\
         poweroff = \"/bin/true\"\n[guestinfo]\nstate_dir = \"/tmp/s\"\n",
    )
    .unwrap();
    assert_eq!(parse_text(&config.to_string()).unwrap(), config);
    let defaults = Config::default();
    assert_eq!(parse_text(&defaults.to_string()).unwrap(), defaults);
}
