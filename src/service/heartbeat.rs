//! What the agent does with a heartbeat: answer seq_num + 1 with HV_S_OK, a body as long as the request's,
//! and the application state filled in where the body has room (UNKNOWN until health checks land).

use crate::wire::heartbeat::{AppState, Heartbeat};
use crate::wire::{Message, Status, WireError};

/// The reply to a heartbeat request and the sequence number it carried.
pub fn answer(request: &Message) -> Result<(Message, u64), WireError> {
    let heartbeat = Heartbeat::parse(&request.body)?;
    let reply = request.reply(Status::OK, heartbeat.answer(AppState::UNKNOWN).to_body());
    Ok((reply, heartbeat.seq_num))
}
