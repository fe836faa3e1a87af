//! The configuration file: TOML → a validated [`Config`], with errors that name the file, line, key and
//! what is accepted. Nothing here opens a socket, so a bad file stops the agent before it touches the network.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::LevelFilter;
use serde::Deserialize;
use toml::Spanned;

use hvproto::service::ServiceKind;
use hvtransport::address::CID_ANY;
use hvtransport::peer::{AllowedCids, AllowedUids};
use hvtransport::Address;

mod access;
mod options;
mod peers;
pub mod program;
pub use options::ServiceOptions;

/// Where the agent looks when no `--config` is given; a missing file there means built-in defaults.
pub const DEFAULT_PATH: &str = "/etc/hvagent/hvagent.toml";

/// Services configurable in this build, in file order.
pub const SERVICES: [ServiceKind; 4] = [
    ServiceKind::Heartbeat,
    ServiceKind::TimeSync,
    ServiceKind::Shutdown,
    ServiceKind::GuestInfo,
];

/// Whether a service dials out or waits for the host.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// The guest dials the host (the default: a Windows host service listens on its registered GUID).
    Connect(Address),
    /// The host dials the guest.
    Listen(Address),
}

impl Endpoint {
    pub fn address(&self) -> &Address {
        match self {
            Endpoint::Connect(address) | Endpoint::Listen(address) => address,
        }
    }
}

/// One service's settings.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceConfig {
    pub kind: ServiceKind,
    pub enabled: bool,
    pub endpoint: Endpoint,
    /// Listen mode: the vsock CIDs that may connect (default the host, CID 2).
    pub allowed_cids: AllowedCids,
    /// Listen mode on a Unix socket: the uids that may connect beside the agent's own (default root).
    pub allowed_uids: AllowedUids,
    /// Listen mode: most connections kept at once; more are accepted and closed at once.
    pub max_connections: usize,
    /// How the links of this service are paced and bounded (the top-level keys).
    pub limits: Limits,
    /// What the service has beyond its connection (commands, health check, state directory).
    pub options: ServiceOptions,
}

/// Connection pacing and bounds shared by every service (top-level keys of the file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limits {
    /// A peer that sent part of a message and then nothing for this long is dropped.
    pub idle_timeout: Duration,
    /// Redial delays grow from `redial_min` to `redial_max` (with jitter) while the host stays away.
    pub redial_min: Duration,
    pub redial_max: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            idle_timeout: Duration::from_secs(30),
            redial_min: hvtransport::backoff::MIN_DELAY,
            redial_max: hvtransport::backoff::MAX_DELAY,
        }
    }
}

/// The default for `max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

impl ServiceConfig {
    /// The built-in settings of a service.
    pub fn default_for(kind: ServiceKind) -> ServiceConfig {
        ServiceConfig {
            kind,
            // Every service is on by default: a Hyper-V host expects all four of every guest.
            enabled: true,
            endpoint: Endpoint::Connect(Address::Vsock {
                cid: hvtransport::address::CID_HOST,
                port: kind.default_port(),
            }),
            allowed_cids: AllowedCids::default(),
            allowed_uids: AllowedUids::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            limits: Limits::default(),
            options: ServiceOptions::default_for(kind),
        }
    }
}

/// The whole, validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub log_level: LevelFilter,
    pub services: Vec<ServiceConfig>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            log_level: LevelFilter::Info,
            services: SERVICES
                .iter()
                .map(|&kind| ServiceConfig::default_for(kind))
                .collect(),
        }
    }
}

impl Config {
    /// The enabled services.
    /// Makes the built-in commands' programs absolute where `path` has them (the file's own commands are
    /// made absolute by [`parse`], which refuses one it cannot find).
    pub fn resolve_defaults(&mut self, path: &std::ffi::OsStr) {
        for service in &mut self.services {
            if let ServiceOptions::Shutdown(shutdown) = &mut service.options {
                options::resolve_shutdown_defaults(shutdown, path);
            }
        }
    }

    pub fn enabled(&self) -> impl Iterator<Item = &ServiceConfig> {
        self.services.iter().filter(|service| service.enabled)
    }
}

/// Why a configuration could not be used.
#[derive(Debug)]
pub enum ConfigError {
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// Someone other than root or the agent's user could have written the file.
    Unsafe { path: PathBuf, why: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, error } => {
                write!(f, "cannot read config file {}: {error}", path.display())
            }
            ConfigError::Invalid {
                path,
                line,
                column,
                message,
            } => write!(f, "{}:{line}:{column}: {message}", path.display()),
            ConfigError::Unsafe { path, why } => {
                write!(f, "refusing config file {}: it {why}", path.display())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Loads the configuration. `explicit` is `--config FILE`: it must exist. Without it the default path is
/// read when present, and built-in defaults apply when it is not.
pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
    let path = explicit.unwrap_or_else(|| Path::new(DEFAULT_PATH));
    let mut config = match read_checked(path) {
        Ok(text) => parse(&text, path)?,
        Err(ConfigError::Read { error, .. })
            if explicit.is_none() && error.kind() == std::io::ErrorKind::NotFound =>
        {
            Config::default()
        }
        Err(error) => return Err(error),
    };
    config.resolve_defaults(&program::search_path());
    Ok(config)
}

/// The file's text, once its owner and mode show only root or the agent's user could have written it.
fn read_checked(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let read_error = |error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    };
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    let metadata = file.metadata().map_err(read_error)?;
    if let Some(why) = access::check(path, &metadata) {
        return Err(ConfigError::Unsafe {
            path: path.to_path_buf(),
            why,
        });
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(read_error)?;
    Ok(text)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    log_level: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<f64>>,
    redial_min: Option<Spanned<f64>>,
    redial_max: Option<Spanned<f64>>,
    heartbeat: Option<RawService>,
    timesync: Option<RawService>,
    shutdown: Option<RawService>,
    guestinfo: Option<RawService>,
}

/// The keys every service section takes, before its own (`options::keys_of`).
const CONNECTION_KEYS: [&str; 6] = [
    "enabled",
    "connect",
    "listen",
    "allowed_cids",
    "allowed_uids",
    "max_connections",
];

/// Every key of any section; `options` refuses the keys of another section by name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    enabled: Option<Spanned<bool>>,
    connect: Option<Spanned<String>>,
    listen: Option<Spanned<String>>,
    allowed_cids: Option<Spanned<Vec<toml::Value>>>,
    allowed_uids: Option<Spanned<Vec<toml::Value>>>,
    max_connections: Option<Spanned<i64>>,
    poweroff: Option<Spanned<options::CommandValue>>,
    reboot: Option<Spanned<options::CommandValue>>,
    hibernate: Option<Spanned<options::CommandValue>>,
    force_after: Option<Spanned<toml::Value>>,
    health: Option<Spanned<String>>,
    health_command: Option<Spanned<options::CommandValue>>,
    health_interval: Option<Spanned<f64>>,
    health_timeout: Option<Spanned<f64>>,
    state_dir: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    step_threshold: Option<Spanned<toml::Value>>,
    probe_interval: Option<Spanned<toml::Value>>,
    chrony_socket: Option<Spanned<String>>,
}

/// A validation failure at a byte span of the file.
struct SpanError {
    span: Range<usize>,
    message: String,
}

fn at<T>(spanned: &Spanned<T>, message: String) -> SpanError {
    SpanError {
        span: spanned.span(),
        message,
    }
}

/// Parses and validates the text of a config file; `path` is only used in messages.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let located = |span: Range<usize>, message: String| {
        let (line, column) = line_and_column(text, span.start);
        ConfigError::Invalid {
            path: path.to_path_buf(),
            line,
            column,
            message,
        }
    };
    let raw: RawConfig = toml::from_str(text).map_err(|error| {
        let span = error.span().unwrap_or(0..0);
        let key = key_at(text, span.start);
        let message = error.message().trim_end().replace('\n', " ");
        let message = key
            .as_deref()
            .and_then(|key| unknown_service_key(key, &message))
            .unwrap_or(message);
        let key = key.map(|key| format!("key '{key}': ")).unwrap_or_default();
        located(span, format!("{key}{message}"))
    })?;
    validate(raw).map_err(|error| located(error.span, error.message))
}

fn validate(raw: RawConfig) -> Result<Config, SpanError> {
    let mut config = Config::default();
    if let Some(level) = &raw.log_level {
        config.log_level = level.get_ref().parse().map_err(|_| {
            at(
                level,
                format!(
                    "key 'log_level': '{}' is not a log level (off, error, warn, info, debug or trace)",
                    level.get_ref()
                ),
            )
        })?;
    }
    let mut limits = Limits::default();
    if let Some(value) = &raw.idle_timeout {
        limits.idle_timeout = seconds_in_range(value, "idle_timeout", 0.001, 86_400.0)?;
    }
    if let Some(value) = &raw.redial_min {
        limits.redial_min = seconds_in_range(value, "redial_min", 0.001, 3_600.0)?;
    }
    if let Some(value) = &raw.redial_max {
        limits.redial_max = seconds_in_range(value, "redial_max", 0.001, 3_600.0)?;
        if limits.redial_max < limits.redial_min {
            return Err(at(
                value,
                "key 'redial_max': must not be below redial_min".to_string(),
            ));
        }
    }
    for service in &mut config.services {
        service.limits = limits;
    }
    let sections = [
        (ServiceKind::Heartbeat, raw.heartbeat),
        (ServiceKind::TimeSync, raw.timesync),
        (ServiceKind::Shutdown, raw.shutdown),
        (ServiceKind::GuestInfo, raw.guestinfo),
    ];
    for (kind, section) in sections {
        if let Some(section) = section {
            let service = config
                .services
                .iter_mut()
                .find(|service| service.kind == kind)
                .expect("every configurable service has a default entry");
            apply_section(service, section)?;
        }
    }
    Ok(config)
}

fn apply_section(service: &mut ServiceConfig, raw: RawService) -> Result<(), SpanError> {
    let kind = service.kind;
    let extra = options::RawOptions {
        poweroff: raw.poweroff,
        reboot: raw.reboot,
        hibernate: raw.hibernate,
        force_after: raw.force_after,
        health: raw.health,
        health_command: raw.health_command,
        health_interval: raw.health_interval,
        health_timeout: raw.health_timeout,
        state_dir: raw.state_dir,
        mode: raw.mode,
        step_threshold: raw.step_threshold,
        probe_interval: raw.probe_interval,
        chrony_socket: raw.chrony_socket,
    };
    options::apply(kind, extra, &mut service.options)?;
    if let Some(enabled) = &raw.enabled {
        service.enabled = *enabled.get_ref();
    }
    if let Some(list) = &raw.allowed_cids {
        service.allowed_cids = peers::allowed_cids(list, kind)?;
    }
    if let Some(list) = &raw.allowed_uids {
        service.allowed_uids = peers::allowed_uids(list, kind)?;
    }
    if let Some(max) = &raw.max_connections {
        service.max_connections = match usize::try_from(*max.get_ref()) {
            Ok(max @ 1..=4096) => max,
            _ => {
                return Err(at(
                    max,
                    format!("key '{kind}.max_connections': must be between 1 and 4096"),
                ))
            }
        };
    }
    match (&raw.connect, &raw.listen) {
        (Some(_), Some(listen)) => Err(at(
            listen,
            format!("key '{kind}.listen': a service either connects or listens; remove connect or listen"),
        )),
        (Some(connect), None) => {
            let address = parse_address(connect, kind, "connect")?;
            if matches!(address, Address::Vsock { cid: CID_ANY, .. }) {
                return Err(at(
                    connect,
                    format!(
                        "key '{kind}.connect': cannot connect to CID any; use vsock:host:PORT to dial the host"
                    ),
                ));
            }
            service.endpoint = Endpoint::Connect(address);
            Ok(())
        }
        (None, Some(listen)) => {
            service.endpoint = Endpoint::Listen(parse_address(listen, kind, "listen")?);
            Ok(())
        }
        (None, None) => Ok(()),
    }
}

/// A duration in seconds within `min..=max` (whole or fractional).
fn seconds_in_range(
    value: &Spanned<f64>,
    key: &str,
    min: f64,
    max: f64,
) -> Result<Duration, SpanError> {
    let seconds = *value.get_ref();
    if !(min..=max).contains(&seconds) {
        return Err(at(
            value,
            format!("key '{key}': {seconds} is out of range; give seconds from {min} to {max}"),
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_address(
    text: &Spanned<String>,
    kind: ServiceKind,
    key: &str,
) -> Result<Address, SpanError> {
    let address: Address = text
        .get_ref()
        .parse()
        .map_err(|error| at(text, format!("key '{kind}.{key}': {error}")))?;
    if let Address::Hybrid { .. } = address {
        return Err(at(
            text,
            format!(
                "key '{kind}.{key}': hybrid: addresses are for hvhost on the host side; the agent uses \
                 vsock:CID:PORT or unix:PATH"
            ),
        ));
    }
    Ok(address)
}

/// 1-based line and column of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(0, |tail| tail.chars().count())
        + 1;
    (line, column)
}

/// The dotted key (`section.key`) written on the line that holds `offset`, for messages about values.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |at| at + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line.split_once('=')?.0.trim();
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
        return None;
    }
    let section = text[..line_start].lines().rev().find_map(|previous| {
        let previous = previous.trim();
        previous
            .strip_prefix('[')
            .and_then(|rest| rest.split(']').next())
            .map(|name| name.trim().to_string())
    });
    Some(match section {
        Some(section) => format!("{section}.{key}"),
        None => key.to_string(),
    })
}

/// serde refuses an unknown key of a service section listing the keys of every section (`RawService` has
/// them all); this says which keys `dotted`'s own section takes. `None` for any other message.
fn unknown_service_key(dotted: &str, message: &str) -> Option<String> {
    let name = message.strip_prefix("unknown field `")?.split('`').next()?;
    let section = dotted.split('.').next()?;
    let kind = SERVICES.into_iter().find(|kind| kind.name() == section)?;
    if name == "allow_any_cid" {
        return Some(peers::replaced_allow_any_cid(kind));
    }
    let keys: Vec<&str> = CONNECTION_KEYS
        .into_iter()
        .chain(options::keys_of(kind))
        .collect();
    Some(format!(
        "unknown key '{name}'; [{kind}] takes {}",
        keys.join(", ")
    ))
}

/// `text` as a TOML basic string: quoted, with `\`, `"` and every control character escaped, so whatever a
/// path or argument holds, the printed config parses back to the same string.
fn toml_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\t' => quoted.push_str("\\t"),
            '\r' => quoted.push_str("\\r"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

impl fmt::Display for Config {
    /// The effective configuration as TOML, with each service's GUID as a comment.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "log_level = {}",
            toml_string(&self.log_level.as_str().to_lowercase())
        )?;
        let limits = self
            .services
            .first()
            .map(|service| service.limits)
            .unwrap_or_default();
        writeln!(f, "idle_timeout = {}", limits.idle_timeout.as_secs_f64())?;
        writeln!(f, "redial_min = {}", limits.redial_min.as_secs_f64())?;
        writeln!(f, "redial_max = {}", limits.redial_max.as_secs_f64())?;
        for service in &self.services {
            writeln!(f)?;
            writeln!(f, "[{}]", service.kind)?;
            writeln!(f, "enabled = {}", service.enabled)?;
            let (key, address) = match &service.endpoint {
                Endpoint::Connect(address) => ("connect", address),
                Endpoint::Listen(address) => ("listen", address),
            };
            write!(f, "{key} = {}", toml_string(&address.to_string()))?;
            match address.service_id() {
                Some(id) => writeln!(f, "  # service GUID {id}")?,
                None => writeln!(f)?,
            }
            writeln!(
                f,
                "allowed_cids = {}",
                peers::show_cids(&service.allowed_cids)
            )?;
            writeln!(f, "allowed_uids = {:?}", service.allowed_uids.0)?;
            writeln!(f, "max_connections = {}", service.max_connections)?;
            write!(f, "{}", service.options)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hvproto::service::guestinfo::GuestInfoSettings;
    use hvproto::service::timesync::{Mode, TimeSyncSettings};

    /// The `[timesync]` settings of a parsed config.
    fn timesync_of(config: &Config) -> TimeSyncSettings {
        match &config.services[1].options {
            ServiceOptions::TimeSync(settings) => settings.clone(),
            other => panic!("the second service has {other:?}, not time-sync settings"),
        }
    }

    fn parse_text(text: &str) -> Result<Config, ConfigError> {
        parse(text, Path::new("test.toml"))
    }

    fn error_text(text: &str) -> String {
        parse_text(text).unwrap_err().to_string()
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        let config = parse_text("").unwrap();
        assert_eq!(config, Config::default());
        let heartbeat = config.enabled().next().unwrap();
        assert_eq!(heartbeat.kind, ServiceKind::Heartbeat);
        assert_eq!(
            heartbeat.endpoint,
            Endpoint::Connect("vsock:host:0x48560001".parse().unwrap())
        );
        let enabled: Vec<ServiceKind> = config.enabled().map(|service| service.kind).collect();
        assert_eq!(
            enabled,
            [
                ServiceKind::Heartbeat,
                ServiceKind::TimeSync,
                ServiceKind::Shutdown,
                ServiceKind::GuestInfo
            ]
        );
        assert_eq!(timesync_of(&config), TimeSyncSettings::default());
        assert_eq!(timesync_of(&config).mode, Mode::Adjust);
    }

    #[test]
    fn timesync_keys_are_applied() {
        let config = parse_text(
            "[timesync]\nmode = \"chrony\"\nstep_threshold = 0.5\nprobe_interval = 0\n\
             chrony_socket = \"/run/c.sock\"\n",
        )
        .unwrap();
        assert_eq!(
            timesync_of(&config),
            TimeSyncSettings {
                mode: Mode::Chrony,
                step_threshold: Duration::from_millis(500),
                probe_interval: Duration::ZERO,
                chrony_socket: PathBuf::from("/run/c.sock"),
            }
        );
        let config = parse_text("[timesync]\nstep_threshold = 2\nprobe_interval = 0.25\n").unwrap();
        assert_eq!(timesync_of(&config).step_threshold, Duration::from_secs(2));
        assert_eq!(
            timesync_of(&config).probe_interval,
            Duration::from_millis(250)
        );
        assert_eq!(parse_text(&config.to_string()).unwrap(), config);
    }

    #[test]
    fn bad_timesync_values_name_the_line_key_and_what_is_accepted() {
        let text = error_text("[timesync]\nmode = \"slew\"\n");
        assert!(text.starts_with("test.toml:2:8: "), "{text}");
        assert!(text.contains("timesync.mode"), "{text}");
        assert!(text.contains("adjust, monitor or chrony"), "{text}");
        let text = error_text("[timesync]\n\nstep_threshold = 0\n");
        assert!(text.starts_with("test.toml:3:"), "{text}");
        assert!(text.contains("timesync.step_threshold"), "{text}");
        let text = error_text("[timesync]\nprobe_interval = 0.01\n");
        assert!(text.contains("timesync.probe_interval"), "{text}");
        assert!(text.contains("0 (probes off)"), "{text}");
        assert!(error_text("[timesync]\nprobe_interval = \"2s\"\n").contains("probe_interval"));
        let text = error_text("[timesync]\nchrony_socket = \"chrony.sock\"\n");
        assert!(text.contains("not an absolute path"), "{text}");
        let text = error_text("[heartbeat]\nmode = \"monitor\"\n");
        assert!(text.contains("mode"), "{text}");
    }

    #[test]
    fn a_full_file_is_applied() {
        let config = parse_text(
            "log_level = \"debug\"\n[heartbeat]\nlisten = \"vsock:any:48560001-facb-11e6-bd58-64006a7986d3\"\n\
             allowed_cids = [2, 5]\n[timesync]\nenabled = false\nconnect = \"unix:/tmp/t\"\n",
        )
        .unwrap();
        assert_eq!(config.log_level, LevelFilter::Debug);
        let heartbeat = &config.services[0];
        assert_eq!(
            heartbeat.endpoint,
            Endpoint::Listen(Address::Vsock {
                cid: CID_ANY,
                port: 0x4856_0001
            })
        );
        assert_eq!(heartbeat.allowed_cids.cids, [2, 5]);
        assert_eq!(
            config.services[1].endpoint,
            Endpoint::Connect(Address::Unix("/tmp/t".into()))
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = error_text("log_level = \"info\"\n[heartbeat]\nconect = \"unix:/x\"\n");
        assert!(text.starts_with("test.toml:3:1: "), "{text}");
        assert!(text.contains("conect"), "{text}");
        assert!(text.contains("connect"), "{text}");
    }

    #[test]
    fn unknown_key_lists_only_the_keys_of_its_own_section() {
        let text = error_text("[heartbeat]\nenabled = true\n[guestinfo]\n\nstat_dir = \"/x\"\n");
        assert!(text.starts_with("test.toml:5:1: "), "{text}");
        assert!(text.contains("key 'guestinfo.stat_dir'"), "{text}");
        let keys = [
            "enabled",
            "connect",
            "listen",
            "allowed_cids",
            "allowed_uids",
            "max_connections",
            "state_dir",
        ];
        for key in keys {
            assert!(text.contains(key), "{key} missing: {text}");
        }
        assert!(!text.contains("poweroff"), "{text}");
        assert!(!text.contains("chrony_socket"), "{text}");
        let text = error_text("[shutdown]\nforce = 1\n");
        assert!(text.contains("force_after"), "{text}");
        assert!(!text.contains("state_dir"), "{text}");
    }

    #[test]
    fn the_keys_messages_list_are_every_key_a_section_accepts() {
        let Err(error) = toml::from_str::<RawConfig>("[heartbeat]\nx = 1\n") else {
            panic!("an unknown key parsed");
        };
        // serde's own list: "unknown field `x`, expected one of `enabled`, `connect`, ..."
        let mut accepted: Vec<&str> = error.message().split('`').skip(3).step_by(2).collect();
        let mut listed: Vec<&str> = SERVICES
            .into_iter()
            .flat_map(options::keys_of)
            .chain(CONNECTION_KEYS)
            .collect();
        accepted.sort_unstable();
        listed.sort_unstable();
        assert_eq!(listed, accepted);
    }

    #[test]
    fn unknown_section_is_refused() {
        let text = error_text("[hearbeat]\nenabled = true\n");
        assert!(text.starts_with("test.toml:1:"), "{text}");
        assert!(text.contains("hearbeat"), "{text}");
    }

    #[test]
    fn bad_address_names_the_line_key_and_accepted_forms() {
        let text = error_text("\n[heartbeat]\nconnect = \"tcp:1:2\"\n");
        assert!(text.starts_with("test.toml:3:11: "), "{text}");
        assert!(text.contains("heartbeat.connect"), "{text}");
        assert!(text.contains("vsock:CID:PORT"), "{text}");
    }

    #[test]
    fn non_template_guid_is_refused_naming_the_template() {
        let text = error_text(
            "[heartbeat]\nconnect = \"vsock:host:999E53D4-3D5C-4C3E-8779-BED06EC056E1\"\n",
        );
        assert!(text.contains("test.toml:2:"), "{text}");
        assert!(text.contains("facb-11e6-bd58-64006a7986d3"), "{text}");
    }

    #[test]
    fn wrong_types_and_values_are_refused_with_the_key() {
        let text = error_text("[heartbeat]\nenabled = \"yes\"\n");
        assert!(text.starts_with("test.toml:2:"), "{text}");
        assert!(text.contains("heartbeat.enabled"), "{text}");
        let text = error_text("log_level = \"loud\"\n");
        assert!(text.starts_with("test.toml:1:13: "), "{text}");
        assert!(
            text.contains("off, error, warn, info, debug or trace"),
            "{text}"
        );
    }

    #[test]
    fn connect_and_listen_together_are_refused() {
        let text = error_text("[heartbeat]\nconnect = \"unix:/a\"\nlisten = \"unix:/b\"\n");
        assert!(text.starts_with("test.toml:3:"), "{text}");
        assert!(text.contains("either connects or listens"), "{text}");
    }

    #[test]
    fn connect_to_any_and_hybrid_addresses_are_refused() {
        assert!(error_text("[heartbeat]\nconnect = \"vsock:any:5\"\n").contains("CID any"));
        assert!(error_text("[heartbeat]\nlisten = \"hybrid:/x:5\"\n").contains("hvhost"));
    }

    #[test]
    fn limits_apply_to_every_service_and_are_checked() {
        let config = parse_text(
            "idle_timeout = 0.5\nredial_min = 0.01\nredial_max = 2\n[heartbeat]\nmax_connections = 3\n",
        )
        .unwrap();
        for service in &config.services {
            assert_eq!(service.limits.idle_timeout, Duration::from_millis(500));
            assert_eq!(service.limits.redial_min, Duration::from_millis(10));
            assert_eq!(service.limits.redial_max, Duration::from_secs(2));
        }
        assert_eq!(config.services[0].max_connections, 3);
        assert_eq!(config.services[1].max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(parse_text(&config.to_string()).unwrap(), config);
        let text = error_text("idle_timeout = 0\n");
        assert!(text.starts_with("test.toml:1:"), "{text}");
        assert!(text.contains("idle_timeout"), "{text}");
        assert!(error_text("redial_min = 5\nredial_max = 1\n").contains("redial_max"));
        let text = error_text("[heartbeat]\nmax_connections = 0\n");
        assert!(text.contains("heartbeat.max_connections"), "{text}");
    }

    #[test]
    fn printed_strings_are_escaped_and_parse_back() {
        let config = parse_text(
            "[heartbeat]\nlisten = \"unix:/tmp/a\\\"b\\\\c.sock\"\nhealth = \"command\"\n\
             health_command = [\"/bin/sh\", \"-c\", \"echo \\\"ok\\\" \\\\ done\\u0001\\t\"]\n\
             [timesync]\nconnect = 'unix:C:\\x\\y'\nchrony_socket = \"/run/\\\"c\\\"\\n.sock\"\n\
             [shutdown]\npoweroff = [\"/sbin/halt\", \"--why=\\\"host\\\"\"]\n\
             [guestinfo]\nstate_dir = \"/var/lib/hv\\\"agent\\u007f\"\n",
        )
        .unwrap();
        assert_eq!(
            config.services[0].endpoint,
            Endpoint::Listen(Address::Unix("/tmp/a\"b\\c.sock".into()))
        );
        assert_eq!(
            config.services[3].options,
            ServiceOptions::GuestInfo(GuestInfoSettings {
                state_dir: "/var/lib/hv\"agent\u{7f}".into()
            })
        );
        let printed = config.to_string();
        assert!(
            printed.contains(r#"listen = "unix:/tmp/a\"b\\c.sock""#),
            "{printed}"
        );
        assert!(
            printed.contains(r#"state_dir = "/var/lib/hv\"agent\u007F""#),
            "{printed}"
        );
        assert_eq!(parse_text(&printed).unwrap(), config, "{printed}");
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let text = error_text("[heartbeat\n");
        assert!(text.starts_with("test.toml:1:"), "{text}");
    }

    #[test]
    fn missing_explicit_file_is_an_error_and_printed_config_parses_back() {
        assert!(matches!(
            load(Some(Path::new("/nonexistent/hvagent.toml"))),
            Err(ConfigError::Read { .. })
        ));
        let config = parse_text("[heartbeat]\nlisten = \"unix:/tmp/hb\"\n").unwrap();
        assert_eq!(parse_text(&config.to_string()).unwrap(), config);
    }
}
