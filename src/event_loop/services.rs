//! Which [`Logic`] each service kind runs, built from the configuration with the real edges (the system
//! clock, the command runner, the state directory). Tests build logics with fakes instead.

use std::time::Instant;

use crate::config::{Config, ServiceConfig, ServiceOptions};
use crate::service::heartbeat::HeartbeatLogic;
use crate::service::shutdown::ShutdownLogic;
use crate::service::{LinkId, Logic, Refusal, ServiceKind};
use crate::system::power::SystemPower;
use crate::wire::{IcVersion, Message, Status};

/// The logic for one enabled service.
pub(super) fn logic_for(service: &ServiceConfig, _config: &Config) -> Box<dyn Logic> {
    match service.kind {
        ServiceKind::Heartbeat => Box::new(HeartbeatLogic::new()),
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
