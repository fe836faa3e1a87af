//! Settings that only some services have: the shutdown commands, the heartbeat's health check, the time-sync
//! mode and its bounds, and the guest-info state directory. Parsed from the same `[section]` as the service's
//! connection keys; a key given in the wrong section is refused with the section it belongs to.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::program::{self, search_path};
use super::{at, seconds_in_range, toml_string, SpanError};
use hvproto::service::guestinfo::GuestInfoSettings;
use hvproto::service::health::{self, HealthSettings};
use hvproto::service::shutdown::{is_default_command, ShutdownSettings};
use hvproto::service::timesync::{Mode, TimeSyncSettings};
use hvproto::service::ServiceKind;

/// A command as the file spells it: one line split at whitespace, or an argv array.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum CommandValue {
    Line(String),
    Argv(Vec<String>),
}

/// The service-specific keys of a section, as read.
#[derive(Default)]
pub(super) struct RawOptions {
    pub poweroff: Option<Spanned<CommandValue>>,
    pub reboot: Option<Spanned<CommandValue>>,
    pub hibernate: Option<Spanned<CommandValue>>,
    pub force_after: Option<Spanned<toml::Value>>,
    pub health: Option<Spanned<String>>,
    pub health_command: Option<Spanned<CommandValue>>,
    pub health_interval: Option<Spanned<f64>>,
    pub health_timeout: Option<Spanned<f64>>,
    pub state_dir: Option<Spanned<String>>,
    pub mode: Option<Spanned<String>>,
    pub step_threshold: Option<Spanned<toml::Value>>,
    pub probe_interval: Option<Spanned<toml::Value>>,
    pub chrony_socket: Option<Spanned<String>>,
}

/// The longest `force_after`, seconds.
const FORCE_AFTER_MAX: f64 = 86_400.0;

/// Makes a built-in shutdown command's bare `systemctl` absolute where `path` has one; where it has none the
/// name stays, which is no error: the reboot(2) fallback needs no program.
pub fn resolve_shutdown_defaults(settings: &mut ShutdownSettings, path: &std::ffi::OsStr) {
    for argv in [
        &mut settings.poweroff,
        &mut settings.reboot,
        &mut settings.hibernate,
    ] {
        if argv.first().is_some_and(|program| !program.contains('/')) {
            let _ = program::resolve_argv(argv, path);
        }
    }
}

/// Bounds of `probe_interval` when it is not 0 (off), seconds.
const PROBE_INTERVAL_RANGE: (f64, f64) = (0.05, 3600.0);
/// Bounds of `step_threshold`, seconds.
const STEP_THRESHOLD_RANGE: (f64, f64) = (0.001, 86400.0);

/// The settings a service has beyond its connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ServiceOptions {
    Heartbeat(HealthSettings),
    TimeSync(TimeSyncSettings),
    Shutdown(ShutdownSettings),
    GuestInfo(GuestInfoSettings),
}

impl ServiceOptions {
    pub fn default_for(kind: ServiceKind) -> ServiceOptions {
        match kind {
            ServiceKind::Heartbeat => ServiceOptions::Heartbeat(HealthSettings::default()),
            ServiceKind::TimeSync => ServiceOptions::TimeSync(TimeSyncSettings::default()),
            ServiceKind::Shutdown => ServiceOptions::Shutdown(ShutdownSettings::default()),
            ServiceKind::GuestInfo => ServiceOptions::GuestInfo(GuestInfoSettings::default()),
        }
    }
}

/// Every service-specific key and the section it belongs to, in the order messages list them.
const KEYS: [(&str, ServiceKind); 13] = [
    ("health", ServiceKind::Heartbeat),
    ("health_command", ServiceKind::Heartbeat),
    ("health_interval", ServiceKind::Heartbeat),
    ("health_timeout", ServiceKind::Heartbeat),
    ("mode", ServiceKind::TimeSync),
    ("step_threshold", ServiceKind::TimeSync),
    ("probe_interval", ServiceKind::TimeSync),
    ("chrony_socket", ServiceKind::TimeSync),
    ("poweroff", ServiceKind::Shutdown),
    ("reboot", ServiceKind::Shutdown),
    ("hibernate", ServiceKind::Shutdown),
    ("force_after", ServiceKind::Shutdown),
    ("state_dir", ServiceKind::GuestInfo),
];

/// Which section a service-specific key belongs to; `None` for any other key.
fn owner(key: &str) -> Option<ServiceKind> {
    KEYS.iter()
        .find(|(name, _)| *name == key)
        .map(|&(_, kind)| kind)
}

/// The service-specific keys of `kind`'s section.
pub(super) fn keys_of(kind: ServiceKind) -> impl Iterator<Item = &'static str> {
    KEYS.into_iter()
        .filter(move |&(_, owner)| owner == kind)
        .map(|(name, _)| name)
}

/// Applies the service-specific keys of `kind`'s section to `options`.
pub(super) fn apply(
    kind: ServiceKind,
    raw: RawOptions,
    options: &mut ServiceOptions,
) -> Result<(), SpanError> {
    refuse_foreign(kind, &raw)?;
    match options {
        ServiceOptions::Shutdown(shutdown) => {
            for (key, value, slot) in [
                ("poweroff", &raw.poweroff, &mut shutdown.poweroff),
                ("reboot", &raw.reboot, &mut shutdown.reboot),
                ("hibernate", &raw.hibernate, &mut shutdown.hibernate),
            ] {
                if let Some(value) = value {
                    let name = format!("shutdown.{key}");
                    let argv = command_words(value, &name)?;
                    // The built-in command is resolved by load, and may be missing.
                    *slot = if is_default_command(&argv, key) {
                        argv
                    } else {
                        resolved(argv, value, &name)?
                    };
                }
            }
            if let Some(value) = &raw.force_after {
                let seconds = seconds(value)
                    .filter(|seconds| (0.0..=FORCE_AFTER_MAX).contains(seconds))
                    .ok_or_else(|| {
                        at(
                            value,
                            format!(
                                "key 'shutdown.force_after': {} is not 0 (never force) or a number of \
                                 seconds up to {FORCE_AFTER_MAX}",
                                describe(value.get_ref())
                            ),
                        )
                    })?;
                shutdown.force_after = Duration::from_secs_f64(seconds);
            }
        }
        ServiceOptions::Heartbeat(health) => apply_health(&raw, health)?,
        ServiceOptions::TimeSync(settings) => apply_timesync(&raw, settings)?,
        ServiceOptions::GuestInfo(guestinfo) => {
            if let Some(dir) = &raw.state_dir {
                if !dir.get_ref().starts_with('/') {
                    return Err(at(
                        dir,
                        format!(
                            "key 'guestinfo.state_dir': '{}' is not an absolute path",
                            dir.get_ref()
                        ),
                    ));
                }
                guestinfo.state_dir = PathBuf::from(dir.get_ref());
            }
        }
    }
    Ok(())
}

/// A key of another service's section is an error that names where it belongs.
fn refuse_foreign(kind: ServiceKind, raw: &RawOptions) -> Result<(), SpanError> {
    let spans = [
        ("poweroff", raw.poweroff.as_ref().map(Spanned::span)),
        ("reboot", raw.reboot.as_ref().map(Spanned::span)),
        ("hibernate", raw.hibernate.as_ref().map(Spanned::span)),
        ("force_after", raw.force_after.as_ref().map(Spanned::span)),
        ("health", raw.health.as_ref().map(Spanned::span)),
        (
            "health_command",
            raw.health_command.as_ref().map(Spanned::span),
        ),
        (
            "health_interval",
            raw.health_interval.as_ref().map(Spanned::span),
        ),
        (
            "health_timeout",
            raw.health_timeout.as_ref().map(Spanned::span),
        ),
        ("state_dir", raw.state_dir.as_ref().map(Spanned::span)),
        ("mode", raw.mode.as_ref().map(Spanned::span)),
        (
            "step_threshold",
            raw.step_threshold.as_ref().map(Spanned::span),
        ),
        (
            "probe_interval",
            raw.probe_interval.as_ref().map(Spanned::span),
        ),
        (
            "chrony_socket",
            raw.chrony_socket.as_ref().map(Spanned::span),
        ),
    ];
    for (key, span) in spans {
        if let (Some(span), Some(owner)) = (span, owner(key)) {
            if owner != kind {
                return Err(SpanError {
                    span,
                    message: format!(
                        "key '{kind}.{key}': {key} is a setting of the [{owner}] section"
                    ),
                });
            }
        }
    }
    Ok(())
}

fn apply_health(raw: &RawOptions, health: &mut HealthSettings) -> Result<(), SpanError> {
    if let Some(command_value) = &raw.health_command {
        health.command = command(command_value, "heartbeat.health_command")?;
    }
    if let Some(interval) = &raw.health_interval {
        health.interval = seconds_in_range(interval, "heartbeat.health_interval", 1.0, 86_400.0)?;
    }
    if let Some(timeout) = &raw.health_timeout {
        health.timeout = seconds_in_range(timeout, "heartbeat.health_timeout", 0.1, 3_600.0)?;
    }
    if let Some(mode) = &raw.health {
        health.mode = match mode.get_ref().as_str() {
            "auto" => health::Mode::Auto,
            "systemd" => health::Mode::Systemd,
            "command" => health::Mode::Command,
            "none" => health::Mode::None,
            other => {
                return Err(at(
                    mode,
                    format!(
                        "key 'heartbeat.health': '{other}' is not auto, systemd, command or none"
                    ),
                ))
            }
        };
        if health.mode == health::Mode::Command && health.command.is_empty() {
            return Err(at(
                mode,
                "key 'heartbeat.health': health = \"command\" needs health_command".to_string(),
            ));
        }
    }
    Ok(())
}

/// The time-sync keys of `[timesync]`, validated.
fn apply_timesync(raw: &RawOptions, settings: &mut TimeSyncSettings) -> Result<(), SpanError> {
    if let Some(mode) = &raw.mode {
        settings.mode = match mode.get_ref().as_str() {
            "adjust" => Mode::Adjust,
            "monitor" => Mode::Monitor,
            "chrony" => Mode::Chrony,
            other => {
                return Err(at(
                    mode,
                    format!(
                        "key 'timesync.mode': '{other}' is not a mode (adjust, monitor or chrony)"
                    ),
                ))
            }
        };
    }
    if let Some(value) = &raw.step_threshold {
        let (low, high) = STEP_THRESHOLD_RANGE;
        let seconds = seconds(value)
            .filter(|seconds| (low..=high).contains(seconds))
            .ok_or_else(|| {
                at(
                    value,
                    format!(
                        "key 'timesync.step_threshold': {} is not a number of seconds from {low} to {high}",
                        describe(value.get_ref())
                    ),
                )
            })?;
        settings.step_threshold = Duration::from_secs_f64(seconds);
    }
    if let Some(value) = &raw.probe_interval {
        let (low, high) = PROBE_INTERVAL_RANGE;
        let seconds = seconds(value)
            .filter(|seconds| *seconds == 0.0 || (low..=high).contains(seconds))
            .ok_or_else(|| {
                at(
                    value,
                    format!(
                        "key 'timesync.probe_interval': {} is not 0 (probes off) or a number of seconds \
                         from {low} to {high}",
                        describe(value.get_ref())
                    ),
                )
            })?;
        settings.probe_interval = Duration::from_secs_f64(seconds);
    }
    if let Some(path) = &raw.chrony_socket {
        if !path.get_ref().starts_with('/') {
            return Err(at(
                path,
                format!(
                    "key 'timesync.chrony_socket': '{}' is not an absolute path (chrony.conf's \
                     'refclock SOCK PATH' names the same one)",
                    path.get_ref()
                ),
            ));
        }
        settings.chrony_socket = PathBuf::from(path.get_ref());
    }
    Ok(())
}

/// A TOML value as a message shows it.
fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::Integer(whole) => whole.to_string(),
        toml::Value::Float(number) => number.to_string(),
        toml::Value::String(text) => format!("'{text}'"),
        other => format!("a {}", other.type_str()),
    }
}

/// A TOML integer or float as seconds.
fn seconds(value: &Spanned<toml::Value>) -> Option<f64> {
    match value.get_ref() {
        toml::Value::Integer(whole) => Some(*whole as f64),
        toml::Value::Float(seconds) if seconds.is_finite() => Some(*seconds),
        _ => None,
    }
}

/// An argv from a command value, its program made absolute (looked up in the agent's PATH once, now).
fn command(value: &Spanned<CommandValue>, key: &str) -> Result<Vec<String>, SpanError> {
    resolved(command_words(value, key)?, value, key)
}

/// `argv` with its program made absolute, or the error naming `key`, the program and the PATH searched.
fn resolved(
    mut argv: Vec<String>,
    value: &Spanned<CommandValue>,
    key: &str,
) -> Result<Vec<String>, SpanError> {
    program::resolve_argv(&mut argv, &search_path())
        .map_err(|error| at(value, error.message(key)))?;
    Ok(argv)
}

/// An argv from a command value. A line is split at whitespace with no quoting at all, so a line with
/// quotes or backslashes is refused: an array says exactly which arguments are meant.
fn command_words(value: &Spanned<CommandValue>, key: &str) -> Result<Vec<String>, SpanError> {
    let argv: Vec<String> = match value.get_ref() {
        CommandValue::Line(line) => {
            if line.contains(['"', '\'', '\\']) {
                return Err(at(
                    value,
                    format!(
                        "key '{key}': a command line is split at spaces without a shell, so quotes and \
                         backslashes are not understood; give an array such as [\"prog\", \"an argument\"]"
                    ),
                ));
            }
            line.split_whitespace().map(str::to_string).collect()
        }
        CommandValue::Argv(argv) => argv.clone(),
    };
    if argv.first().map_or(true, String::is_empty) {
        return Err(at(value, format!("key '{key}': the command is empty")));
    }
    Ok(argv)
}

/// A TOML array of strings.
fn toml_argv(argv: &[String]) -> String {
    let items: Vec<String> = argv.iter().map(|arg| toml_string(arg)).collect();
    format!("[{}]", items.join(", "))
}

impl fmt::Display for ServiceOptions {
    /// The options as TOML lines of the service's section.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceOptions::Shutdown(shutdown) => {
                writeln!(f, "poweroff = {}", toml_argv(&shutdown.poweroff))?;
                writeln!(f, "reboot = {}", toml_argv(&shutdown.reboot))?;
                writeln!(f, "hibernate = {}", toml_argv(&shutdown.hibernate))?;
                writeln!(f, "force_after = {}", shutdown.force_after.as_secs_f64())
            }
            ServiceOptions::Heartbeat(health) => {
                writeln!(f, "health = {}", toml_string(health.mode.name()))?;
                if !health.command.is_empty() {
                    writeln!(f, "health_command = {}", toml_argv(&health.command))?;
                }
                writeln!(f, "health_interval = {}", health.interval.as_secs_f64())?;
                writeln!(f, "health_timeout = {}", health.timeout.as_secs_f64())
            }
            ServiceOptions::GuestInfo(guestinfo) => {
                writeln!(
                    f,
                    "state_dir = {}",
                    toml_string(&guestinfo.state_dir.display().to_string())
                )
            }
            ServiceOptions::TimeSync(settings) => {
                writeln!(f, "mode = {}", toml_string(settings.mode.name()))?;
                writeln!(
                    f,
                    "step_threshold = {}",
                    settings.step_threshold.as_secs_f64()
                )?;
                writeln!(
                    f,
                    "probe_interval = {}",
                    settings.probe_interval.as_secs_f64()
                )?;
                writeln!(
                    f,
                    "chrony_socket = {}",
                    toml_string(&settings.chrony_socket.display().to_string())
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{parse, Config};

    fn parse_text(text: &str) -> Result<Config, String> {
        parse(text, Path::new("t.toml")).map_err(|error| error.to_string())
    }

    fn options_of(config: &Config, kind: ServiceKind) -> ServiceOptions {
        config
            .services
            .iter()
            .find(|service| service.kind == kind)
            .map(|service| service.options.clone())
            .unwrap()
    }

    #[test]
    fn shutdown_commands_take_lines_and_arrays() {
        let config = parse_text(
            "[shutdown]\npoweroff = \"/bin/echo  off now\"\nreboot = [\"/bin/sh\", \"-c\", \"echo 'a b'\"]\n",
        )
        .unwrap();
        let ServiceOptions::Shutdown(shutdown) = options_of(&config, ServiceKind::Shutdown) else {
            panic!("no shutdown options");
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
        let ServiceOptions::Heartbeat(health) = options_of(&config, ServiceKind::Heartbeat) else {
            panic!("no heartbeat options");
        };
        assert_eq!(health.command, [found("true"), "--quick".into()]);
        assert!(health.command[0].starts_with('/'));
        let ServiceOptions::Shutdown(shutdown) = options_of(&config, ServiceKind::Shutdown) else {
            panic!("no shutdown options");
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
        let mut shutdown = ShutdownSettings::default();
        resolve_shutdown_defaults(&mut shutdown, bin.path().as_os_str());
        let absolute = systemctl.display().to_string();
        assert_eq!(shutdown.poweroff, [absolute.as_str(), "poweroff"]);
        assert!(is_default_command(&shutdown.poweroff, "poweroff"));
        assert!(!is_default_command(&shutdown.poweroff, "reboot"));
        let mut missing = ShutdownSettings::default();
        resolve_shutdown_defaults(&mut missing, std::ffi::OsStr::new("/nonexistent"));
        assert_eq!(missing, ShutdownSettings::default());
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
        let ServiceOptions::Heartbeat(health) = options_of(&config, ServiceKind::Heartbeat) else {
            panic!("no heartbeat options");
        };
        assert_eq!(health.mode, health::Mode::Command);
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
            options_of(&config, ServiceKind::GuestInfo),
            ServiceOptions::GuestInfo(GuestInfoSettings {
                state_dir: "/srv/hv".into()
            })
        );
        let error = parse_text("[guestinfo]\nstate_dir = \"var/lib\"\n").unwrap_err();
        assert!(error.contains("not an absolute path"), "{error}");
    }

    #[test]
    fn timesync_settings_are_the_services_options() {
        let config = parse_text("[timesync]\nmode = \"monitor\"\nprobe_interval = 0\n").unwrap();
        assert_eq!(
            options_of(&config, ServiceKind::TimeSync),
            ServiceOptions::TimeSync(TimeSyncSettings {
                mode: Mode::Monitor,
                probe_interval: Duration::ZERO,
                ..TimeSyncSettings::default()
            })
        );
        assert_eq!(
            options_of(&Config::default(), ServiceKind::TimeSync),
            ServiceOptions::TimeSync(TimeSyncSettings::default())
        );
    }

    #[test]
    fn printed_options_parse_back() {
        let config = parse_text(
            "[heartbeat]\nhealth = \"command\"\nhealth_command = [\"/bin/x\", \"a b\"]\n[shutdown]\n\
             poweroff = \"/bin/true\"\n[guestinfo]\nstate_dir = \"/tmp/s\"\n",
        )
        .unwrap();
        assert_eq!(parse_text(&config.to_string()).unwrap(), config);
        let defaults = Config::default();
        assert_eq!(parse_text(&defaults.to_string()).unwrap(), defaults);
    }
}
