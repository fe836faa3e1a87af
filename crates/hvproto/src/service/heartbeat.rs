//! The heartbeat service: answer seq_num + 1 with HV_S_OK, a body as long as the request's, and the
//! application state filled in where the body has room: the last state the health check found (see
//! [`super::health`]), UNKNOWN with health = "none".

use std::time::Instant;

use log::debug;

use super::health::Health;
use super::logic::{LinkId, Logic, Refusal, StatusLine, Watch};
use crate::wire::heartbeat;
use crate::wire::{IcVersion, Message, MessageRef, ReplyWriter, Status};

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
        request: &MessageRef<'_>,
        _version: IcVersion,
        now: Instant,
        reply: &mut ReplyWriter<'_>,
    ) -> Result<Status, Refusal> {
        // Nothing here allocates: a steady stream of heartbeats costs no malloc (tests/no_alloc.rs).
        let seq_num = heartbeat::emit_answer(request.body, self.health.state(), reply)
            .map_err(Refusal::invalid)?;
        self.answered += 1;
        self.last = Some(now);
        self.health.heartbeat(now);
        debug!("heartbeat: {seq_num} answered");
        Ok(Status::OK)
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
