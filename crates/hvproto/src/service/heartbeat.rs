//! The heartbeat service: answer seq_num + 1 with HV_S_OK, a body as long as the request's, and the
//! application state filled in where the body has room: the last state the health check found (see
//! [`super::health`]), UNKNOWN with health = "none".

use std::time::Instant;

use log::debug;

use super::health::Health;
use super::logic::{LinkId, Logic, Refusal, StatusLine, Watch};
use crate::wire::heartbeat::{AppState, Heartbeat};
use crate::wire::{IcVersion, Message, Status};

/// The reply to a heartbeat request and the sequence number it carried.
pub fn answer(request: &Message, state: AppState) -> Result<(Message, u64), Refusal> {
    let heartbeat = Heartbeat::parse(&request.body).map_err(Refusal::invalid)?;
    let reply = request.reply(Status::OK, heartbeat.answer(state).to_body());
    Ok((reply, heartbeat.seq_num))
}

/// The heartbeat service's state: how many were answered, when the last one was, and the health.
pub struct HeartbeatLogic {
    answered: u64,
    last: Option<Instant>,
    health: Health,
}

impl Default for HeartbeatLogic {
    fn default() -> HeartbeatLogic {
        HeartbeatLogic::new()
    }
}

impl HeartbeatLogic {
    /// A heartbeat service that reports UNKNOWN.
    pub fn new() -> HeartbeatLogic {
        HeartbeatLogic::with_health(Health::none())
    }

    pub fn with_health(health: Health) -> HeartbeatLogic {
        HeartbeatLogic {
            answered: 0,
            last: None,
            health,
        }
    }

    /// Heartbeats answered since the agent started.
    pub fn answered(&self) -> u64 {
        self.answered
    }
}

impl Logic for HeartbeatLogic {
    fn request(
        &mut self,
        _link: LinkId,
        request: &Message,
        _version: IcVersion,
        now: Instant,
    ) -> Result<Message, Refusal> {
        let (reply, seq_num) = answer(request, self.health.state())?;
        self.answered += 1;
        self.last = Some(now);
        self.health.heartbeat(now);
        debug!("heartbeat: {seq_num} answered");
        Ok(reply)
    }

    fn after_send(&mut self, now: Instant) {
        self.health.after_send(now);
    }

    fn deadline(&self) -> Option<Instant> {
        self.health.deadline()
    }

    fn on_timer(&mut self, now: Instant, _out: &mut Vec<(LinkId, Message)>) {
        self.health.on_timer(now);
    }

    fn watched(&self) -> Option<Watch> {
        self.health.watched()
    }

    fn watch_ready(&mut self, now: Instant) {
        self.health.watch_ready(now);
    }

    fn status(&self, now: Instant) -> Vec<StatusLine> {
        let last = match self.last {
            Some(at) => format!(
                "{:.1} s ago",
                now.saturating_duration_since(at).as_secs_f64()
            ),
            None => "never".to_string(),
        };
        vec![
            ("heartbeats", self.answered.to_string()),
            ("last heartbeat", last),
            ("application state", self.health.state().name().to_string()),
        ]
    }
}
