//! The host side of a file copy (FCOPY, IC message type 7), as `hvhost copy` plays it: START_FILE_COPY,
//! the data as WRITE_TO_FILE fragments, then COMPLETE_FCOPY (or CANCEL_FCOPY), each answer matched to its
//! request. Negotiation is [`HostChannel`]'s; the bodies are [`crate::wire::fcopy`]'s. docs/PROTOCOL.md
//! §11.
//!
//! A Hyper-V host keeps one request outstanding; waiting a round trip for each 6 KiB fragment would
//! bound a copy by latency, so [`CopySender`] keeps up to a window of requests in flight and expects
//! their answers in order (the guest answers each stream in the order it reads it).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{HostChannel, HostError, HostState};
use crate::wire::fcopy::{self, Operation, Start};
use crate::wire::{IcFlags, IcVersion, Message, MessageType, Status};

/// The message versions the host offers: 1.1 only, the one Linux's `hv_fcopy.c` and
/// `hv_fcopy_uio_daemon.c` accept (WIN8_SRV_VERSION).
pub const MESSAGE_VERSIONS: [IcVersion; 1] = [IcVersion::new(1, 1)];

/// Requests in flight at most: 32 fragments, 192 KiB, well inside what a socket buffers.
pub const DEFAULT_WINDOW: usize = 32;

/// A host channel for file copy, offering framework 1.0/3.0 and [`MESSAGE_VERSIONS`].
pub fn channel() -> HostChannel {
    HostChannel::for_messages(MessageType::FCOPY, &MESSAGE_VERSIONS)
}

/// The (offset, length) of each WRITE_TO_FILE for a file of `size` bytes.
pub fn fragments(size: u64) -> impl Iterator<Item = (u64, usize)> {
    let step = fcopy::DATA_FRAGMENT as u64;
    (0..size.div_ceil(step)).map(move |index| {
        let offset = index * step;
        // At most DATA_FRAGMENT: fits usize.
        (offset, (size - offset).min(step) as usize)
    })
}

/// One request sent and not answered yet.
#[derive(Debug)]
struct Sent {
    transaction_id: u8,
    operation: Operation,
    /// WRITE_TO_FILE: the offset and length it carried.
    offset: u64,
    len: usize,
    at: Instant,
}

/// What the guest answered to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyAnswer {
    pub operation: Operation,
    /// HV_S_OK, or the guest's refusal (not a protocol error).
    pub status: Status,
    /// WRITE_TO_FILE: the bytes the answered request carried, and where.
    pub offset: u64,
    pub len: usize,
    pub round_trip: Duration,
}

impl CopyAnswer {
    pub fn is_ok(&self) -> bool {
        self.status == Status::OK
    }
}

/// Builds the requests of one copy and checks their answers, with a window of them in flight.
#[derive(Debug)]
pub struct CopySender {
    framework: IcVersion,
    message: IcVersion,
    next_transaction: u8,
    window: usize,
    in_flight: VecDeque<Sent>,
}

impl CopySender {
    /// A sender on a channel that negotiated; `window` is clamped to 1..=128 so transaction ids (a u8)
    /// never repeat among those in flight.
    pub fn new(channel: &HostChannel, window: usize) -> Result<CopySender, HostError> {
        let HostState::Ready { framework, message } = channel.state() else {
            return Err(HostError::Unexpected(
                "a file copy before negotiation".to_string(),
            ));
        };
        Ok(CopySender {
            framework,
            message,
            next_transaction: 1,
            window: window.clamp(1, 128),
            in_flight: VecDeque::new(),
        })
    }

    /// Whether another request may go out now.
    pub fn can_send(&self) -> bool {
        self.in_flight.len() < self.window
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn request(
        &mut self,
        operation: Operation,
        offset: u64,
        len: usize,
        body: Vec<u8>,
        now: Instant,
    ) -> Message {
        let transaction_id = self.next_transaction;
        self.next_transaction = self.next_transaction.wrapping_add(1);
        self.in_flight.push_back(Sent {
            transaction_id,
            operation,
            offset,
            len,
            at: now,
        });
        Message::request(
            MessageType::FCOPY,
            self.framework,
            self.message,
            transaction_id,
            body,
        )
    }

    /// START_FILE_COPY for `start`; a name too long for its field is refused here.
    pub fn start(&mut self, start: &Start, now: Instant) -> Result<Message, HostError> {
        let body = start
            .to_body()
            .map_err(|error| HostError::Unexpected(error.to_string()))?;
        Ok(self.request(Operation::START_FILE_COPY, 0, 0, body, now))
    }

    /// WRITE_TO_FILE of `data` (at most one fragment) at `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8], now: Instant) -> Result<Message, HostError> {
        let mut body = Vec::with_capacity(fcopy::DATA_LEN_PADDED);
        fcopy::emit_data(offset, data, &mut body)
            .map_err(|error| HostError::Unexpected(error.to_string()))?;
        Ok(self.request(Operation::WRITE_TO_FILE, offset, data.len(), body, now))
    }

    /// COMPLETE_FCOPY.
    pub fn complete(&mut self, now: Instant) -> Message {
        let body = fcopy::header_body(Operation::COMPLETE_FCOPY);
        self.request(Operation::COMPLETE_FCOPY, 0, 0, body, now)
    }

    /// CANCEL_FCOPY.
    pub fn cancel(&mut self, now: Instant) -> Message {
        let body = fcopy::header_body(Operation::CANCEL_FCOPY);
        self.request(Operation::CANCEL_FCOPY, 0, 0, body, now)
    }

    /// Checks one message from the guest: the answer to the oldest request in flight, with its
    /// transaction id and its operation echoed in the body.
    pub fn handle<B: AsRef<[u8]>>(
        &mut self,
        answer: &Message<B>,
        now: Instant,
    ) -> Result<CopyAnswer, HostError> {
        let header = &answer.header;
        let expected = IcFlags::TRANSACTION | IcFlags::RESPONSE;
        if header.flags.0 & expected != expected || header.msgtype != MessageType::FCOPY {
            return Err(HostError::Unexpected(format!(
                "a {} message with flags {:#04x} where a file-copy answer was expected",
                header.msgtype, header.flags.0
            )));
        }
        let sent = self.in_flight.pop_front().ok_or_else(|| {
            HostError::Unexpected("a file-copy answer with no request in flight".to_string())
        })?;
        if header.transaction_id != sent.transaction_id {
            return Err(HostError::Unexpected(format!(
                "file-copy {} answered with transaction id {} instead of {}",
                sent.operation, header.transaction_id, sent.transaction_id
            )));
        }
        let echoed = fcopy::operation(answer.body.as_ref())
            .map_err(|error| HostError::Unexpected(error.to_string()))?;
        if echoed != sent.operation {
            return Err(HostError::Unexpected(format!(
                "a file-copy {} answered for {echoed}",
                sent.operation
            )));
        }
        Ok(CopyAnswer {
            operation: sent.operation,
            status: header.status,
            offset: sent.offset,
            len: sent.len,
            round_trip: now.saturating_duration_since(sent.at),
        })
    }
}

#[cfg(test)]
mod tests;
