//! Which [`Logic`] each service kind runs, built from the configuration with the real edges (the system
//! clock, the command runner, the state directory). Tests build logics with fakes instead.

use std::path::Path;
use std::time::Instant;

use log::{error, warn};

use crate::clock::chrony::ChronySink;
use crate::clock::system::{self, SystemClock};
use crate::clock::OffsetSink;
use crate::config::{Config, ServiceConfig, TimeSyncSettings};
use crate::service::heartbeat::HeartbeatLogic;
use crate::service::timesync::{Mode, TimeSyncLogic};
use crate::service::{LinkId, Logic, Refusal, ServiceKind};
use crate::wire::{IcVersion, Message, Status};

/// The logic for one enabled service.
pub(super) fn logic_for(service: &ServiceConfig, config: &Config) -> Box<dyn Logic> {
    match service.kind {
        ServiceKind::Heartbeat => Box::new(HeartbeatLogic::new()),
        ServiceKind::TimeSync => Box::new(timesync_logic(&config.timesync, Path::new("/proc"))),
        other => Box::new(NotInThisBuild(other)),
    }
}

/// Whether a service's own settings (beyond its endpoint) are the same in both configurations.
pub(super) fn same_settings(kind: ServiceKind, old: &Config, new: &Config) -> bool {
    match kind {
        ServiceKind::TimeSync => old.timesync == new.timesync,
        _ => true,
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
                     [timesync] and add 'refclock SOCK {} refid HV' to chrony.conf to make hvagent chronyd's \
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

/// A service that negotiates but refuses its requests: the config refuses to enable such services, so this
/// only answers if that check is ever bypassed.
struct NotInThisBuild(ServiceKind);

impl Logic for NotInThisBuild {
    fn request(
        &mut self,
        _link: LinkId,
        _request: &Message,
        _version: IcVersion,
        _now: Instant,
    ) -> Result<Message, Refusal> {
        Err(Refusal::new(
            Status::FAIL,
            format!("the {} service is not implemented by this build", self.0),
        ))
    }
}
