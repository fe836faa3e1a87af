//! Which [`Logic`] each service kind runs, built from the configuration with the real edges (the system
//! clock, the command runner, the state directory, the filesystems a backup freezes, the directories
//! files are copied into). Tests build logics with fakes instead.

use std::path::Path;

use log::{debug, error, info, warn};

use crate::clock::chrony::ChronySink;
use crate::clock::remote::{self, RemoteClock};
use crate::clock::system::{self, SystemClock};
use crate::config::{ServiceConfig, ServiceSettings};
use crate::ops::log_hold::AgentLogHold;
use crate::system::filecopy::SystemSink;
use crate::system::freeze::{self, SystemFreezer};
use crate::system::health::ChildCheck;
use crate::system::hooks::DirHooks;
use crate::system::kvp_store::{self, FileStore};
use crate::system::netinfo::LiveNetwork;
use crate::system::power::SystemPower;
use crate::system::sysinfo::LiveSystem;
use hvproto::clock::{Clock, OffsetSink};
use hvproto::service::backup::BackupLogic;
use hvproto::service::filecopy::FileCopyLogic;
use hvproto::service::guestinfo::{self, GuestInfoLogic};
use hvproto::service::health::{Check, Health, HealthSettings, Reading};
use hvproto::service::heartbeat::HeartbeatLogic;
use hvproto::service::shutdown::ShutdownLogic;
use hvproto::service::timesync::{Mode, TimeSyncLogic, TimeSyncSettings};
use hvproto::service::Logic;

/// The logic for one enabled service.
pub(super) fn logic_for(service: &ServiceConfig) -> Box<dyn Logic> {
    match &service.settings {
        ServiceSettings::Heartbeat(settings) => {
            Box::new(HeartbeatLogic::with_health(health_for(settings)))
        }
        ServiceSettings::GuestInfo(settings) => {
            let daemon_dir = Path::new(guestinfo::HV_KVP_DAEMON_DIR);
            if let Some(why) =
                kvp_store::daemon_conflict(Path::new("/proc"), daemon_dir, &settings.pool_dir)
            {
                error!("guestinfo: {why}");
            }
            let network = LiveNetwork::new(Path::new("/"), settings.set_ip_command.clone());
            Box::new(
                GuestInfoLogic::new(
                    Box::new(FileStore::open(settings)),
                    Box::new(LiveSystem),
                    settings,
                )
                .with_network(Box::new(network)),
            )
        }
        ServiceSettings::TimeSync(settings) => {
            let helper = Path::new(remote::DEFAULT_SOCKET);
            Box::new(timesync_logic(settings, Path::new("/proc"), helper))
        }
        ServiceSettings::Shutdown(settings) => Box::new(ShutdownLogic::new(
            settings.clone(),
            Box::new(SystemPower::new()),
        )),
        ServiceSettings::Backup(settings) => Box::new(BackupLogic::new(
            settings.clone(),
            Box::new(SystemFreezer::new(freeze::AGENT_HINT)),
            Box::new(DirHooks::new(&settings.hooks_dir)),
            Box::new(AgentLogHold),
        )),
        ServiceSettings::FileCopy(settings) => Box::new(FileCopyLogic::new(
            settings.clone(),
            Box::new(SystemSink::new()),
        )),
    }
}

/// The time-sync logic. Mode adjust changes the clock through the clock helper when its socket `helper`
/// exists (hvagent-clock.socket: the agent under systemd holds no CAP_SYS_TIME), else directly, as a
/// root-run agent without systemd does; directly without CAP_SYS_TIME it falls back to monitor (with one error
/// saying what to grant). With another time daemon running it warns once what to do instead.
fn timesync_logic(settings: &TimeSyncSettings, proc_root: &Path, helper: &Path) -> TimeSyncLogic {
    let mut mode = settings.mode;
    let mut clock: Box<dyn Clock> = Box::new(SystemClock);
    if mode == Mode::Adjust {
        if helper.exists() {
            info!(
                "timesync: changing the clock through the clock helper at {} (hvagent-clock.service)",
                helper.display()
            );
            clock = Box::new(RemoteClock::new(helper));
        } else if system::has_cap_sys_time(proc_root) {
            info!("timesync: changing the clock directly (CAP_SYS_TIME held, no clock helper installed)");
        } else {
            error!(
                "timesync: mode adjust needs CAP_SYS_TIME, which this agent lacks, or the clock helper \
                 (hvagent-clock.socket, {}), which is not there: run it as root, or install the package's \
                 hvagent-clock.socket; measuring only (mode monitor) until then",
                helper.display()
            );
            mode = Mode::Monitor;
        }
    }
    if mode == Mode::Adjust {
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
    let sink = (mode == Mode::Chrony)
        .then(|| Box::new(ChronySink::new(&settings.chrony_socket)) as Box<dyn OffsetSink>);
    TimeSyncLogic::new(
        mode,
        settings.step_threshold,
        settings.probe_interval,
        clock,
        sink,
    )
}

/// The heartbeat's health check from its settings; `auto` is systemd where systemd is PID 1, none elsewhere.
fn health_for(settings: &HealthSettings) -> Health {
    let reading = settings.mode.reading(crate::system::systemd_booted());
    debug!(
        "heartbeat: application health from {}",
        match reading {
            Some(Reading::SystemState) => "systemctl is-system-running".to_string(),
            Some(Reading::ExitStatus) => format!("the command {}", settings.command.join(" ")),
            None => "nowhere (reported as unknown)".to_string(),
        }
    );
    let check = reading.map(|reading| Check {
        reading,
        checker: match reading {
            Reading::SystemState => Box::new(ChildCheck::systemd()),
            Reading::ExitStatus => Box::new(ChildCheck::new(settings.command.clone())),
        },
    });
    Health::new(check, settings.interval, settings.timeout)
}
