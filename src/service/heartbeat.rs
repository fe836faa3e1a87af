//! The heartbeat service: answer seq_num + 1 with HV_S_OK, a body as long as the request's, and the
//! application state filled in where the body has room (UNKNOWN until health checks land).

use std::time::Instant;

use log::debug;

use super::logic::{LinkId, Logic, Refusal, StatusLine};
use crate::wire::heartbeat::{AppState, Heartbeat};
use crate::wire::{IcVersion, Message, Status};

/// The reply to a heartbeat request and the sequence number it carried.
pub fn answer(request: &Message, state: AppState) -> Result<(Message, u64), Refusal> {
    let heartbeat = Heartbeat::parse(&request.body)
        .map_err(|error| Refusal::new(Status::INVALID_ARG, error))?;
    let reply = request.reply(Status::OK, heartbeat.answer(state).to_body());
    Ok((reply, heartbeat.seq_num))
}

/// The heartbeat service's state: how many were answered, and when the last one was.
#[derive(Debug, Default)]
pub struct HeartbeatLogic {
    answered: u64,
    last: Option<Instant>,
}

impl HeartbeatLogic {
    pub fn new() -> HeartbeatLogic {
        HeartbeatLogic::default()
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
        let (reply, seq_num) = answer(request, AppState::UNKNOWN)?;
        self.answered += 1;
        self.last = Some(now);
        debug!("heartbeat: {seq_num} answered");
        Ok(reply)
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
        ]
    }
}
