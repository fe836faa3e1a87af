//! Every key of the file, once: its name, the section it is written in, what it takes and how it is read
//! and printed, and what it does. Parsing, the refusal of a key in the wrong section, the printed config
//! (`check-config`), `check-config --keys` and the man page's key headers all come from here. Each
//! service's keys set that service's own settings type (in hvproto); the connection keys, which every
//! service section takes, set the agent's [`ServiceConfig`].

use std::time::Duration;

use super::setting::{docs_of, names_of, KeyDoc, Parser, Setting, Table};
use super::values::{self, choice, choices, typed, Seconds};
use super::{peers, Config, Endpoint, ServiceConfig, ServiceSettings, SERVICES};
use hvproto::service::backup::BackupSettings;
use hvproto::service::filecopy::FileCopySettings;
use hvproto::service::guestinfo::GuestInfoSettings;
use hvproto::service::health::{self, HealthSettings};
use hvproto::service::shutdown::ShutdownSettings;
use hvproto::service::timesync::{self, TimeSyncSettings};
use hvproto::service::ServiceKind;
use hvtransport::address::CID_ANY;

/// Where a key is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Above the first section.
    Top,
    /// In each service's section.
    EveryService,
    /// In one service's section.
    Service(ServiceKind),
}

impl Place {
    /// Every place, in file order.
    pub fn all() -> Vec<Place> {
        let services = SERVICES.into_iter().map(Place::Service);
        [Place::Top, Place::EveryService]
            .into_iter()
            .chain(services)
            .collect()
    }

    pub fn names(self) -> Vec<&'static str> {
        match self {
            Place::Top => names_of::<Config>(),
            Place::EveryService => names_of::<ServiceConfig>(),
            Place::Service(kind) => ServiceSettings::default_for(kind).keys().names(),
        }
    }

    pub fn docs(self) -> Vec<KeyDoc> {
        match self {
            Place::Top => docs_of::<Config>(),
            Place::EveryService => docs_of::<ServiceConfig>(),
            Place::Service(kind) => ServiceSettings::default_for(kind).keys().docs(),
        }
    }

    /// How a message names the place.
    pub fn describe(self) -> String {
        match self {
            Place::Top => "the top level (above the first [section])".to_string(),
            Place::EveryService => "each service's section".to_string(),
            Place::Service(kind) => format!("the [{kind}] section"),
        }
    }
}

/// Where `key` is written; None for a key the file does not have.
pub fn owner(key: &str) -> Option<Place> {
    Place::all()
        .into_iter()
        .find(|place| place.names().contains(&key))
}

/// Why a key that was removed is refused in a service's section, with what to write instead.
pub fn removed(key: &str, kind: ServiceKind) -> Option<String> {
    (key == "allow_any_cid").then(|| peers::replaced_allow_any_cid(kind))
}

/// The service a top-level key of that name is the section of.
pub fn section(name: &str) -> Option<ServiceKind> {
    SERVICES.into_iter().find(|kind| kind.name() == name)
}

const LOG_LEVELS: &str = "off, error, warn, info, debug or trace";

type TopKey = Setting<Config>;

static TOP: [TopKey; 4] = [
    TopKey::new(
        "log_level",
        "How much to log; the RUST_LOG environment variable overrides it.",
        Parser::Other {
            takes: || LOG_LEVELS.to_string(),
            read: |config, value| {
                let level: String = typed(value)?;
                config.log_level = level
                    .parse()
                    .map_err(|_| format!("'{level}' is not a log level ({LOG_LEVELS})"))?;
                Ok(())
            },
            show: |config| {
                Some(values::toml_string(
                    &config.log_level.as_str().to_lowercase(),
                ))
            },
        },
    ),
    TopKey::new(
        "idle_timeout",
        "A peer that sent part of a message and then nothing for this long is dropped.",
        Parser::Seconds {
            range: Seconds {
                min: 0.001,
                max: 86_400.0,
                zero: None,
            },
            get: |config| config.limits().idle_timeout,
            set: |config, value| config.set_limits(|limits| limits.idle_timeout = value),
        },
    ),
    TopKey::new(
        "redial_min",
        "The first redial delay of a service that cannot reach its host; each failure doubles it.",
        Parser::Seconds {
            range: Seconds {
                min: 0.001,
                max: 3_600.0,
                zero: None,
            },
            get: |config| config.limits().redial_min,
            set: |config, value| config.set_limits(|limits| limits.redial_min = value),
        },
    ),
    TopKey::new(
        "redial_max",
        "The longest redial delay; each delay is drawn with jitter between half and all of it.",
        Parser::Seconds {
            range: Seconds {
                min: 0.001,
                max: 3_600.0,
                zero: None,
            },
            get: |config| config.limits().redial_max,
            set: |config, value| config.set_limits(|limits| limits.redial_max = value),
        },
    )
    .checked(|config, _| {
        let limits = config.limits();
        match limits.redial_max < limits.redial_min {
            true => Err("must not be below redial_min".to_string()),
            false => Ok(()),
        }
    }),
];

impl Table for Config {
    fn settings() -> &'static [Setting<Config>] {
        &TOP
    }
    fn defaults() -> Vec<Config> {
        vec![Config::default()]
    }
}

const ADDRESS: &str = "an address: vsock:CID:PORT or unix:PATH";

/// The service GUID of an endpoint's vsock port, for the printed config.
fn guid_note(service: &ServiceConfig) -> Option<String> {
    let id = service.endpoint.address().service_id()?;
    Some(format!("service GUID {id}"))
}

type ConnectionKey = Setting<ServiceConfig>;

static CONNECTION: [ConnectionKey; 6] = [
    ConnectionKey::new(
        "enabled",
        "Whether the service runs.",
        Parser::Other {
            takes: || "true or false".to_string(),
            read: |service, value| {
                service.enabled = typed(value)?;
                Ok(())
            },
            show: |service| Some(service.enabled.to_string()),
        },
    )
    .default_doc("true; false for [backup] and [filecopy]"),
    ConnectionKey::new(
        "connect",
        "The guest dials this address: the default, since a Windows host service listens on its GUID.",
        Parser::Other {
            takes: || ADDRESS.to_string(),
            read: |service, value| {
                let address = values::address(value)?;
                if matches!(address, hvtransport::Address::Vsock { cid: CID_ANY, .. }) {
                    return Err(
                        "cannot connect to CID any; use vsock:host:PORT to dial the host".to_string(),
                    );
                }
                service.endpoint = Endpoint::Connect(address);
                Ok(())
            },
            show: |service| match &service.endpoint {
                Endpoint::Connect(address) => Some(values::toml_string(&address.to_string())),
                Endpoint::Listen(_) => None,
            },
        },
    )
    .default_doc("vsock:host:PORT with the service's default port")
    .noted(guid_note),
    ConnectionKey::new(
        "listen",
        "The guest listens at this address and the host dials it.",
        Parser::Other {
            takes: || ADDRESS.to_string(),
            read: |service, value| {
                service.endpoint = Endpoint::Listen(values::address(value)?);
                Ok(())
            },
            show: |service| match &service.endpoint {
                Endpoint::Listen(address) => Some(values::toml_string(&address.to_string())),
                Endpoint::Connect(_) => None,
            },
        },
    )
    .checked(|_, given| match given.has("connect") {
        true => Err("a service either connects or listens; remove connect or listen".to_string()),
        false => Ok(()),
    })
    .noted(guid_note),
    ConnectionKey::new(
        "allowed_cids",
        "Listen mode: the vsock CIDs that may connect.",
        Parser::Other {
            takes: || "an array of CIDs: numbers, \"host\", \"local\" or \"any\"".to_string(),
            read: |service, value| {
                service.allowed_cids = peers::allowed_cids(value)?;
                Ok(())
            },
            show: |service| Some(peers::show_cids(&service.allowed_cids)),
        },
    ),
    ConnectionKey::new(
        "allowed_uids",
        "Listen mode on a unix: address: the uids that may connect beside the agent's own.",
        Parser::Other {
            takes: || "an array of uids".to_string(),
            read: |service, value| {
                service.allowed_uids = peers::allowed_uids(value)?;
                Ok(())
            },
            show: |service| Some(format!("{:?}", service.allowed_uids.0)),
        },
    ),
    ConnectionKey::new(
        "max_connections",
        "Listen mode: the connections kept at once; more are accepted and closed at once.",
        Parser::Other {
            takes: || "a number from 1 to 4096".to_string(),
            read: |service, value| {
                service.max_connections = match usize::try_from(typed::<i64>(value)?) {
                    Ok(max @ 1..=4096) => max,
                    _ => return Err("must be between 1 and 4096".to_string()),
                };
                Ok(())
            },
            show: |service| Some(service.max_connections.to_string()),
        },
    ),
];

impl Table for ServiceConfig {
    fn settings() -> &'static [Setting<ServiceConfig>] {
        &CONNECTION
    }
    fn defaults() -> Vec<ServiceConfig> {
        SERVICES.map(ServiceConfig::default_for).to_vec()
    }
}

type HeartbeatKey = Setting<HealthSettings>;

static HEARTBEAT: [HeartbeatKey; 4] = [
    HeartbeatKey::new(
        "health",
        "Where the application state in each heartbeat reply comes from.",
        Parser::Other {
            takes: || choices(&health::Mode::ALL, health::Mode::name),
            read: |settings, value| {
                settings.mode = choice(value, "", &health::Mode::ALL, health::Mode::name)?;
                Ok(())
            },
            show: |settings| Some(values::toml_string(settings.mode.name())),
        },
    )
    .checked(|settings, _| {
        match settings.mode == health::Mode::Command && settings.command.is_empty() {
            true => Err("health = \"command\" needs health_command".to_string()),
            false => Ok(()),
        }
    }),
    HeartbeatKey::new(
        "health_command",
        "The check of health = \"command\": exit 0 is healthy, anything else critical.",
        Parser::Command {
            get: |settings| &settings.command,
            set: |settings, argv| settings.command = argv,
        },
    ),
    HeartbeatKey::new(
        "health_interval",
        "A check starts when a heartbeat finds the last result older than this.",
        Parser::Seconds {
            range: Seconds {
                min: 1.0,
                max: 86_400.0,
                zero: None,
            },
            get: |settings| settings.interval,
            set: |settings, value| settings.interval = value,
        },
    ),
    HeartbeatKey::new(
        "health_timeout",
        "A check still running after this is killed (for a command: critical).",
        Parser::Seconds {
            range: Seconds {
                min: 0.1,
                max: 3_600.0,
                zero: None,
            },
            get: |settings| settings.timeout,
            set: |settings, value| settings.timeout = value,
        },
    ),
];

type TimeSyncKey = Setting<TimeSyncSettings>;

static TIMESYNC: [TimeSyncKey; 4] = [
    TimeSyncKey::new(
        "mode",
        "adjust steps and steers the clock, monitor only measures, chrony feeds chronyd.",
        Parser::Other {
            takes: || choices(&timesync::Mode::ALL, timesync::Mode::name),
            read: |settings, value| {
                settings.mode =
                    choice(value, "a mode", &timesync::Mode::ALL, timesync::Mode::name)?;
                Ok(())
            },
            show: |settings| Some(values::toml_string(settings.mode.name())),
        },
    ),
    TimeSyncKey::new(
        "step_threshold",
        "Offsets beyond this are stepped; smaller ones are steered.",
        Parser::Seconds {
            range: Seconds {
                min: 0.001,
                max: 86_400.0,
                zero: None,
            },
            get: |settings| settings.step_threshold,
            set: |settings, value| settings.step_threshold = value,
        },
    ),
    TimeSyncKey::new(
        "probe_interval",
        "How often the agent probes the host (message version 4.1), measuring the round trip.",
        Parser::Seconds {
            range: Seconds {
                min: 0.05,
                max: 3_600.0,
                zero: Some("probes off"),
            },
            get: |settings| settings.probe_interval,
            set: |settings, value| settings.probe_interval = value,
        },
    ),
    TimeSyncKey::new(
        "chrony_socket",
        "chronyd's SOCK refclock socket, for mode chrony.",
        Parser::Path {
            hint: " (chrony.conf's 'refclock SOCK PATH' names the same one)",
            get: |settings| &settings.chrony_socket,
            set: |settings, path| settings.chrony_socket = path,
        },
    ),
];

type ShutdownKey = Setting<ShutdownSettings>;

static SHUTDOWN: [ShutdownKey; 4] = [
    ShutdownKey::new(
        "poweroff",
        "The command run when the host asks the guest to power off.",
        Parser::Command {
            get: |settings| &settings.poweroff,
            set: |settings, argv| settings.poweroff = argv,
        },
    ),
    ShutdownKey::new(
        "reboot",
        "The command run when the host asks the guest to reboot.",
        Parser::Command {
            get: |settings| &settings.reboot,
            set: |settings, argv| settings.reboot = argv,
        },
    ),
    ShutdownKey::new(
        "hibernate",
        "The command run when the host asks the guest to hibernate.",
        Parser::Command {
            get: |settings| &settings.hibernate,
            set: |settings, argv| settings.hibernate = argv,
        },
    ),
    ShutdownKey::new(
        "force_after",
        "How long a forced power-off or reboot may take its orderly course before systemd forces it.",
        Parser::Seconds {
            range: Seconds { min: 0.0, max: 86_400.0, zero: Some("never force") },
            get: |settings| settings.force_after,
            set: |settings, value| settings.force_after = value,
        },
    ),
];

type GuestInfoKey = Setting<GuestInfoSettings>;

static GUESTINFO: [GuestInfoKey; 5] = [
    GuestInfoKey::new(
        "pool_dir",
        "The pool files, .kvp_pool_0 to .kvp_pool_4 in hv_kvp_daemon's format; /var/lib/hyperv is where existing software looks.",
        Parser::Path {
            hint: "",
            get: |settings| &settings.pool_dir,
            set: |settings, path| settings.pool_dir = path,
        },
    ),
    GuestInfoKey::new(
        "kvp_flush_ms",
        "At most one durable write per pool in this many milliseconds; a Set is answered once written.",
        Parser::Other {
            takes: || "a number of milliseconds from 0 to 10000".to_string(),
            read: |settings, value| {
                settings.flush_interval = match u64::try_from(typed::<i64>(value)?) {
                    Ok(ms @ 0..=10_000) => Duration::from_millis(ms),
                    _ => return Err("must be between 0 and 10000".to_string()),
                };
                Ok(())
            },
            show: |settings| Some(settings.flush_interval.as_millis().to_string()),
        },
    ),
    GuestInfoKey::new(
        "pool_max_bytes",
        "The largest a pool file may grow by Sets (each pair takes 2,560 bytes); a Set past it is refused.",
        Parser::Other {
            takes: || "a number of bytes from 2560 to 67108864".to_string(),
            read: |settings, value| {
                settings.pool_max_bytes = match u64::try_from(typed::<i64>(value)?) {
                    Ok(bytes @ 2560..=67_108_864) => bytes,
                    _ => return Err("must be between 2560 and 67108864".to_string()),
                };
                Ok(())
            },
            show: |settings| Some(settings.pool_max_bytes.to_string()),
        },
    ),
    GuestInfoKey::new(
        "set_ip_command",
        "The command a host's SET_IP_INFO runs, with the settings in its environment; none: not supported.",
        Parser::Command {
            get: |settings| &settings.set_ip_command,
            set: |settings, argv| settings.set_ip_command = argv,
        },
    ),
    GuestInfoKey::new(
        "state_dir",
        "Where earlier versions kept the pools (state_dir/kvp/pool_N): migrated into pool_dir once, at start.",
        Parser::Path {
            hint: "",
            get: |settings| &settings.state_dir,
            set: |settings, path| settings.state_dir = path,
        },
    ),
];

type BackupKey = Setting<BackupSettings>;

/// `mounts = "all"`: every candidate.
const ALL_MOUNTS: &str = "all";

static BACKUP: [BackupKey; 4] = [
    BackupKey::new(
        "hooks_dir",
        "Executables here run with freeze before a freeze and with thaw after it, in name order (thaw: reverse).",
        Parser::Path {
            hint: " (qemu-guest-agent's fsfreeze-hook.d scripts work here)",
            get: |settings| &settings.hooks_dir,
            set: |settings, path| settings.hooks_dir = path,
        },
    ),
    BackupKey::new(
        "thaw_after",
        "The longest a freeze may last: the agent thaws on its own after it.",
        Parser::Seconds {
            range: Seconds { min: 1.0, max: 3_600.0, zero: None },
            get: |settings| settings.thaw_after,
            set: |settings, value| settings.thaw_after = value,
        },
    ),
    BackupKey::new(
        "hook_timeout",
        "The longest one hook may run before it is killed (a freeze hook killed fails the freeze).",
        Parser::Seconds {
            range: Seconds { min: 0.1, max: 3_600.0, zero: None },
            get: |settings| settings.hook_timeout,
            set: |settings, value| settings.hook_timeout = value,
        },
    ),
    BackupKey::new(
        "mounts",
        "The mount points a freeze takes, of the candidates; one that is no candidate is skipped with a warning.",
        Parser::Other {
            takes: || "\"all\" (every candidate) or an array of absolute mount points".to_string(),
            read: |settings, value| {
                if value.as_str() == Some(ALL_MOUNTS) {
                    settings.mounts = None;
                    return Ok(());
                }
                let mounts: Vec<String> = typed(value)
                    .map_err(|_| format!("must be \"{ALL_MOUNTS}\" or an array of mount points"))?;
                if let Some(relative) = mounts.iter().find(|mount| !mount.starts_with('/')) {
                    return Err(format!("'{relative}' is not an absolute mount point"));
                }
                settings.mounts = Some(mounts);
                Ok(())
            },
            show: |settings| match &settings.mounts {
                None => Some(values::toml_string(ALL_MOUNTS)),
                Some(mounts) => {
                    let quoted: Vec<String> = mounts.iter().map(|m| values::toml_string(m)).collect();
                    Some(format!("[{}]", quoted.join(", ")))
                }
            },
        },
    ),
];

type FileCopyKey = Setting<FileCopySettings>;

static FILECOPY: [FileCopyKey; 4] = [
    FileCopyKey::new(
        "allowed_dirs",
        "The directories the host may copy files into, and beneath (required: no default). The agent's \
         user must be able to write them (a ReadWritePaths= drop-in under systemd).",
        Parser::Other {
            takes: || "an array of absolute directory paths".to_string(),
            read: |settings, value| {
                let dirs: Vec<String> =
                    typed(value).map_err(|_| "must be an array of absolute directory paths".to_string())?;
                if let Some(relative) = dirs.iter().find(|dir| !dir.starts_with('/')) {
                    return Err(format!("'{relative}' is not an absolute directory path"));
                }
                if let Some(climbing) = dirs.iter().find(|dir| dir.split('/').any(|part| part == "..")) {
                    return Err(format!("'{climbing}' holds '..': name the directory itself"));
                }
                settings.allowed_dirs = dirs;
                Ok(())
            },
            show: |settings| {
                let quoted: Vec<String> =
                    settings.allowed_dirs.iter().map(|dir| values::toml_string(dir)).collect();
                Some(format!("[{}]", quoted.join(", ")))
            },
        },
    )
    .default_doc("none: the service refuses to start until it is set"),
    FileCopyKey::new(
        "max_file_size",
        "The largest file the host may copy, in bytes; a START announcing more is refused.",
        Parser::Other {
            takes: || "a number of bytes, 1 or more".to_string(),
            read: |settings, value| {
                let bytes: i64 = typed(value)?;
                if bytes < 1 {
                    return Err(format!("{bytes} is not a number of bytes of 1 or more"));
                }
                // Positive: the cast keeps the value.
                settings.max_file_size = bytes as u64;
                Ok(())
            },
            show: |settings| Some(settings.max_file_size.to_string()),
        },
    ),
    FileCopyKey::new(
        "file_mode",
        "The mode of a copied file (the owner is the agent's user).",
        Parser::Other {
            takes: || "an octal mode such as 0o640 or \"0640\", at most 0o777".to_string(),
            read: |settings, value| {
                let mode = match value {
                    toml::Value::Integer(mode) => u32::try_from(*mode).ok(),
                    toml::Value::String(text) => u32::from_str_radix(text.trim_start_matches("0o"), 8).ok(),
                    _ => None,
                };
                settings.file_mode = mode
                    .filter(|mode| *mode <= 0o777)
                    .ok_or_else(|| format!("{} is not a mode from 0o000 to 0o777", values::describe(value)))?;
                Ok(())
            },
            show: |settings| Some(format!("0o{:03o}", settings.file_mode)),
        },
    ),
    FileCopyKey::new(
        "copy_timeout",
        "A copy with no message from the host for this long is abandoned and its temporary file removed.",
        Parser::Seconds {
            range: Seconds { min: 1.0, max: 86_400.0, zero: None },
            get: |settings| settings.copy_timeout,
            set: |settings, value| settings.copy_timeout = value,
        },
    ),
];

/// A service's settings type and its keys.
macro_rules! service_table {
    ($settings:ty, $table:ident) => {
        impl Table for $settings {
            fn settings() -> &'static [Setting<$settings>] {
                &$table
            }
            fn defaults() -> Vec<$settings> {
                vec![<$settings>::default()]
            }
        }
    };
}

service_table!(HealthSettings, HEARTBEAT);
service_table!(TimeSyncSettings, TIMESYNC);
service_table!(ShutdownSettings, SHUTDOWN);
service_table!(GuestInfoSettings, GUESTINFO);
service_table!(BackupSettings, BACKUP);
service_table!(FileCopySettings, FILECOPY);
