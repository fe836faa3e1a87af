//! The configuration file: TOML → a validated [`Config`], with errors that name the file, line, key and
//! what is accepted. Nothing here opens a socket, so a bad file stops the agent before it touches the network.
//!
//! Every key is one row of the table in `keys.rs` (how a row works: `setting.rs`), which drives parsing
//! (`parse.rs`), the refusal of a key in the wrong section, the printed config and the docs (`docs.rs`).
//! A service's own keys set its settings type, which the service's module in hvproto owns; the config only
//! parses into it, and what needs the system (programs looked up in PATH, the file's owner) stays here.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::LevelFilter;

use hvproto::service::backup::BackupSettings;
use hvproto::service::filecopy::FileCopySettings;
use hvproto::service::guestinfo::GuestInfoSettings;
use hvproto::service::health::HealthSettings;
use hvproto::service::shutdown::ShutdownSettings;
use hvproto::service::timesync::TimeSyncSettings;
use hvproto::service::ServiceKind;
use hvtransport::peer::{AllowedCids, AllowedUids};
use hvtransport::Address;

mod access;
pub mod docs;
mod keys;
mod parse;
mod peers;
pub mod program;
mod setting;
#[cfg(test)]
mod tests;
mod values;

pub use parse::parse;
use setting::Keys;

/// Where the agent looks when no `--config` is given; a missing file there means built-in defaults.
pub const DEFAULT_PATH: &str = "/etc/hvagent/hvagent.toml";

/// Services configurable in this build, in file order.
pub const SERVICES: [ServiceKind; 6] = [
    ServiceKind::Heartbeat,
    ServiceKind::TimeSync,
    ServiceKind::Shutdown,
    ServiceKind::GuestInfo,
    ServiceKind::Backup,
    ServiceKind::FileCopy,
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

/// A service's own settings; the variant is the service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ServiceSettings {
    Heartbeat(HealthSettings),
    TimeSync(TimeSyncSettings),
    Shutdown(ShutdownSettings),
    GuestInfo(GuestInfoSettings),
    Backup(BackupSettings),
    FileCopy(FileCopySettings),
}

impl ServiceSettings {
    /// The built-in settings of `kind`.
    pub fn default_for(kind: ServiceKind) -> ServiceSettings {
        match kind {
            ServiceKind::Heartbeat => ServiceSettings::Heartbeat(HealthSettings::default()),
            ServiceKind::TimeSync => ServiceSettings::TimeSync(TimeSyncSettings::default()),
            ServiceKind::Shutdown => ServiceSettings::Shutdown(ShutdownSettings::default()),
            ServiceKind::GuestInfo => ServiceSettings::GuestInfo(GuestInfoSettings::default()),
            ServiceKind::Backup => ServiceSettings::Backup(BackupSettings::default()),
            ServiceKind::FileCopy => ServiceSettings::FileCopy(FileCopySettings::default()),
        }
    }

    pub fn kind(&self) -> ServiceKind {
        match self {
            ServiceSettings::Heartbeat(_) => ServiceKind::Heartbeat,
            ServiceSettings::TimeSync(_) => ServiceKind::TimeSync,
            ServiceSettings::Shutdown(_) => ServiceKind::Shutdown,
            ServiceSettings::GuestInfo(_) => ServiceKind::GuestInfo,
            ServiceSettings::Backup(_) => ServiceKind::Backup,
            ServiceSettings::FileCopy(_) => ServiceKind::FileCopy,
        }
    }

    /// Why the service cannot run as configured, when it is enabled: a key that has no default and was
    /// not set.
    pub fn unusable(&self) -> Option<(&'static str, String)> {
        match self {
            ServiceSettings::FileCopy(settings) if settings.allowed_dirs.is_empty() => Some((
                "allowed_dirs",
                "the file-copy service is enabled but allowed_dirs is not set: add allowed_dirs = \
                 [\"/DIR\"] to [filecopy] with the directories the host may copy files into (there \
                 is no default), or set enabled = false"
                    .to_string(),
            )),
            _ => None,
        }
    }

    /// The settings as the table of keys reads and prints them.
    fn keys(&self) -> &dyn Keys {
        match self {
            ServiceSettings::Heartbeat(settings) => settings,
            ServiceSettings::TimeSync(settings) => settings,
            ServiceSettings::Shutdown(settings) => settings,
            ServiceSettings::GuestInfo(settings) => settings,
            ServiceSettings::Backup(settings) => settings,
            ServiceSettings::FileCopy(settings) => settings,
        }
    }

    fn keys_mut(&mut self) -> &mut dyn Keys {
        match self {
            ServiceSettings::Heartbeat(settings) => settings,
            ServiceSettings::TimeSync(settings) => settings,
            ServiceSettings::Shutdown(settings) => settings,
            ServiceSettings::GuestInfo(settings) => settings,
            ServiceSettings::Backup(settings) => settings,
            ServiceSettings::FileCopy(settings) => settings,
        }
    }
}

/// One service's configuration: its connection, and its own settings (which say which service it is).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceConfig {
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
    pub settings: ServiceSettings,
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
    pub fn kind(&self) -> ServiceKind {
        self.settings.kind()
    }

    /// The built-in configuration of a service.
    pub fn default_for(kind: ServiceKind) -> ServiceConfig {
        ServiceConfig {
            // Every service but backup and file copy is on by default: a Hyper-V host expects the four of
            // every guest; backup freezes filesystems and file copy writes the host's files, so a host
            // gets them only where the admin turns them on.
            enabled: kind.on_by_default(),
            endpoint: Endpoint::Connect(Address::Vsock {
                cid: hvtransport::address::CID_HOST,
                port: kind.default_port(),
            }),
            allowed_cids: AllowedCids::default(),
            allowed_uids: AllowedUids::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            limits: Limits::default(),
            settings: ServiceSettings::default_for(kind),
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
    /// Makes the built-in commands' programs absolute where `path` has them (the file's own commands are
    /// made absolute by [`parse`], which refuses one it cannot find).
    pub fn resolve_defaults(&mut self, path: &std::ffi::OsStr) {
        for service in &mut self.services {
            service.settings.keys_mut().resolve_builtin_programs(path);
        }
    }

    /// The top-level pacing keys, which every service holds alike.
    pub fn limits(&self) -> Limits {
        self.services
            .first()
            .map_or_else(Limits::default, |service| service.limits)
    }

    /// Changes the limits of every service alike.
    fn set_limits(&mut self, change: impl Fn(&mut Limits)) {
        for service in &mut self.services {
            change(&mut service.limits);
        }
    }

    /// The enabled services.
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

impl fmt::Display for Config {
    /// The effective configuration as TOML, with each service's GUID as a comment.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_keys(f)?;
        for service in &self.services {
            writeln!(f)?;
            writeln!(f, "[{}]", service.kind())?;
            service.write_keys(f)?;
            service.settings.keys().write_keys(f)?;
        }
        Ok(())
    }
}
