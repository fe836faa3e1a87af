//! Which [`Logic`] each service kind runs, built from the configuration with the real edges (the system
//! clock, the command runner, the state directory). Tests build logics with fakes instead.

use std::time::Instant;

use log::debug;

use crate::config::{Config, HealthConfig, HealthMode, ServiceConfig, ServiceOptions};
use crate::service::guestinfo::GuestInfoLogic;
use crate::service::health::{Checker, Health, Mode};
use crate::service::heartbeat::HeartbeatLogic;
use crate::service::shutdown::ShutdownLogic;
use crate::service::{LinkId, Logic, Refusal, ServiceKind};
use crate::system::health::ChildCheck;
use crate::system::kvp_store::FileStore;
use crate::system::power::SystemPower;
use crate::system::sysinfo::LiveSystem;
use crate::wire::{IcVersion, Message, Status};

/// The logic for one enabled service.
pub(super) fn logic_for(service: &ServiceConfig, _config: &Config) -> Box<dyn Logic> {
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
        ServiceKind::Shutdown => {
            let config = match &service.options {
                ServiceOptions::Shutdown(config) => config.clone(),
                _ => Default::default(),
            };
            Box::new(ShutdownLogic::new(config, Box::new(SystemPower::new())))
        }
        other => Box::new(NotInThisBuild(other)),
    }
}

/// The heartbeat's health check from its settings; `auto` is systemd where systemd is PID 1, none elsewhere.
fn health_for(config: &HealthConfig) -> Health {
    let (mode, checker): (Mode, Option<Box<dyn Checker>>) = match config.mode {
        HealthMode::Auto if crate::system::systemd_booted() => {
            (Mode::Systemd, Some(Box::new(ChildCheck::systemd())))
        }
        HealthMode::Systemd => (Mode::Systemd, Some(Box::new(ChildCheck::systemd()))),
        HealthMode::Command => (
            Mode::Command,
            Some(Box::new(ChildCheck::new(config.command.clone()))),
        ),
        HealthMode::Auto | HealthMode::None => (Mode::None, None),
    };
    debug!(
        "heartbeat: application health from {}",
        match mode {
            Mode::Systemd => "systemctl is-system-running".to_string(),
            Mode::Command => format!("the command {}", config.command.join(" ")),
            Mode::None => "nowhere (reported as unknown)".to_string(),
        }
    );
    Health::new(mode, checker, config.interval, config.timeout)
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
