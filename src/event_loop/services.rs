//! Which [`Logic`] each service kind runs, built from the configuration with the real edges (the system
//! clock, the command runner, the state directory). Tests build logics with fakes instead.

use std::path::Path;

use log::{debug, error, warn};

use crate::clock::chrony::ChronySink;
use crate::clock::system::{self, SystemClock};
use crate::clock::OffsetSink;
use crate::config::{HealthConfig, HealthMode, ServiceConfig, ServiceOptions, TimeSyncSettings};
use crate::service::guestinfo::GuestInfoLogic;
use crate::service::health::{self, Checker, Health};
use crate::service::heartbeat::HeartbeatLogic;
use crate::service::shutdown::ShutdownLogic;
use crate::service::timesync::{Mode, TimeSyncLogic};
use crate::service::{Logic, ServiceKind};
use crate::system::health::ChildCheck;
use crate::system::kvp_store::FileStore;
use crate::system::power::SystemPower;
use crate::system::sysinfo::LiveSystem;

/// The logic for one enabled service.
pub(super) fn logic_for(service: &ServiceConfig) -> Box<dyn Logic> {
    match service.kind {
        ServiceKind::Heartbeat => match &service.options {
            ServiceOptions::Heartbeat(health) => {
                Box::new(HeartbeatLogic::with_health(health_for(health)))
            }
            _ => Box::new(HeartbeatLogic::new()),
        },
        ServiceKind::GuestInfo => {
            let config = match &service.options {
                ServiceOptions::GuestInfo(config) => config.clone(),
                _ => Default::default(),
            };
            Box::new(GuestInfoLogic::new(
                Box::new(FileStore::new(&config.state_dir)),
                Box::new(LiveSystem),
            ))
        }
        ServiceKind::TimeSync => {
            let settings = match &service.options {
                ServiceOptions::TimeSync(settings) => settings.clone(),
                _ => Default::default(),
            };
            Box::new(timesync_logic(&settings, Path::new("/proc")))
        }
        ServiceKind::Shutdown => {
            let config = match &service.options {
                ServiceOptions::Shutdown(config) => config.clone(),
                _ => Default::default(),
            };
            Box::new(ShutdownLogic::new(config, Box::new(SystemPower::new())))
        }
    }
}

/// The time-sync logic on the system clock. Mode adjust without CAP_SYS_TIME falls back to monitor (with one
/// error saying what to grant); with another time daemon running it warns once what to do instead.
fn timesync_logic(settings: &TimeSyncSettings, proc_root: &Path) -> TimeSyncLogic {
    let mut mode = settings.mode;
    if mode == Mode::Adjust {
        if !system::has_cap_sys_time(proc_root) {
            error!(
                "timesync: mode adjust needs CAP_SYS_TIME, which this agent lacks: run it as root, or add \
                 AmbientCapabilities=CAP_SYS_TIME and CapabilityBoundingSet=CAP_SYS_TIME to its systemd unit; \
                 measuring only (mode monitor) until then"
            );
            mode = Mode::Monitor;
        } else {
            let others = system::other_time_daemons(proc_root);
            if !others.is_empty() {
                warn!(
                    "timesync: {} also sets this clock, and two disciplines fight; set mode = \"chrony\" in \
                     [timesync] and add 'refclock SOCK {} refid HV precision 1e-6' to chrony.conf to make hvagent chronyd's \
                     source, or disable {}",
                    others.join(" and "),
                    settings.chrony_socket.display(),
                    others.join(" and ")
                );
            }
        }
    }
    let sink = (mode == Mode::Chrony)
        .then(|| Box::new(ChronySink::new(&settings.chrony_socket)) as Box<dyn OffsetSink>);
    TimeSyncLogic::new(
        mode,
        settings.step_threshold,
        settings.probe_interval,
        Box::new(SystemClock),
        sink,
    )
}

/// The heartbeat's health check from its settings; `auto` is systemd where systemd is PID 1, none elsewhere.
fn health_for(config: &HealthConfig) -> Health {
    let (mode, checker): (health::Mode, Option<Box<dyn Checker>>) = match config.mode {
        HealthMode::Auto if crate::system::systemd_booted() => {
            (health::Mode::Systemd, Some(Box::new(ChildCheck::systemd())))
        }
        HealthMode::Systemd => (health::Mode::Systemd, Some(Box::new(ChildCheck::systemd()))),
        HealthMode::Command => (
            health::Mode::Command,
            Some(Box::new(ChildCheck::new(config.command.clone()))),
        ),
        HealthMode::Auto | HealthMode::None => (health::Mode::None, None),
    };
    debug!(
        "heartbeat: application health from {}",
        match mode {
            health::Mode::Systemd => "systemctl is-system-running".to_string(),
            health::Mode::Command => format!("the command {}", config.command.join(" ")),
            health::Mode::None => "nowhere (reported as unknown)".to_string(),
        }
    );
    Health::new(mode, checker, config.interval, config.timeout)
}
