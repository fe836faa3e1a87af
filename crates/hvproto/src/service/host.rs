//! The host side of a service channel, as hvhost plays it: offer versions, check the guest's choice, send
//! heartbeats and check each answer. Sans-I/O like the guest side: messages and `now` in, messages and
//! events out. [`backup`] holds what the host of a backup (VSS) exchange adds on top.

pub mod backup;
pub mod filecopy;

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use super::ServiceKind;
use crate::wire::heartbeat::{AppState, Heartbeat};
use crate::wire::negotiate::Negotiate;
use crate::wire::timesync::{TimeSyncData, TimeSyncFlags, TimeSyncRef};
use crate::wire::{IcFlags, IcVersion, Message, MessageRef, MessageType, Status, WireError};

/// Framework versions a host offers, ascending as a Microsoft host lists them.
pub const HOST_FRAMEWORK_VERSIONS: [IcVersion; 2] = [IcVersion::new(1, 0), IcVersion::new(3, 0)];

/// Where the host side stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostState {
    /// The offer is out (or not yet sent); no answer yet.
    Negotiating,
    Ready {
        framework: IcVersion,
        message: IcVersion,
    },
}

/// What an answer from the guest meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostEvent {
    Negotiated {
        framework: IcVersion,
        message: IcVersion,
    },
    HeartbeatAnswered {
        seq_num: u64,
        round_trip: Duration,
        state: Option<AppState>,
    },
    /// The guest answered a time sample.
    TimeSampleAnswered { number: u64, round_trip: Duration },
    /// The answer to a request of another service (shutdown, KVP): its status and body, which the caller
    /// interprets. A status other than HV_S_OK is an answer, not a protocol error, for these services.
    Answered {
        status: Status,
        body: Vec<u8>,
        round_trip: Duration,
    },
}

/// An answer that breaks the protocol; the host peer reports it and gives up on the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostError {
    NoCommonVersion,
    Unexpected(String),
    Body(WireError),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::NoCommonVersion => {
                f.write_str("the guest found no common version in our offer (it answered counts 0)")
            }
            HostError::Unexpected(what) => write!(f, "wrong answer from the guest: {what}"),
            HostError::Body(error) => write!(f, "malformed answer from the guest: {error}"),
        }
    }
}

impl std::error::Error for HostError {}

#[derive(Debug)]
struct InFlight {
    transaction_id: u8,
    seq_num: u64,
    sent_at: Instant,
}

/// The host side of one channel.
#[derive(Debug)]
pub struct HostChannel {
    /// The message type of this channel's own requests.
    msgtype: MessageType,
    /// The message versions the host accepts, in the guest's preference order (highest first).
    message_versions: &'static [IcVersion],
    state: HostState,
    next_transaction: u8,
    next_seq: u64,
    in_flight: VecDeque<InFlight>,
    /// The transaction id and send time of the one outstanding non-heartbeat request.
    pending: Option<(u8, Instant)>,
}

impl HostChannel {
    pub fn new(kind: ServiceKind) -> HostChannel {
        HostChannel::for_messages(kind.msgtype(), kind.message_versions())
    }

    /// A channel for `msgtype` that offers `message_versions` (highest first): for a service the host
    /// speaks with versions of its own, as [`backup`] does.
    pub fn for_messages(
        msgtype: MessageType,
        message_versions: &'static [IcVersion],
    ) -> HostChannel {
        HostChannel {
            msgtype,
            message_versions,
            state: HostState::Negotiating,
            next_transaction: 1,
            next_seq: 0,
            in_flight: VecDeque::new(),
            pending: None,
        }
    }

    pub fn state(&self) -> HostState {
        self.state
    }

    /// Requests sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The opening NEGOTIATE request: transaction id 0, our versions ascending.
    pub fn offer(&self) -> Message {
        let mut messages = self.message_versions.to_vec();
        messages.reverse();
        let offer = Negotiate {
            framework_versions: HOST_FRAMEWORK_VERSIONS.to_vec(),
            message_versions: messages,
            ..Negotiate::default()
        };
        Message::request(
            MessageType::NEGOTIATE,
            IcVersion::new(1, 0),
            IcVersion::new(1, 0),
            0,
            offer.to_body(),
        )
    }

    /// The versions to put in a request: the negotiated ones, or 3.0 before negotiation.
    fn versions(&self) -> (IcVersion, IcVersion) {
        match self.state {
            HostState::Ready { framework, message } => (framework, message),
            HostState::Negotiating => (IcVersion::new(3, 0), IcVersion::new(3, 0)),
        }
    }

    fn next_transaction_id(&mut self) -> u8 {
        let transaction_id = self.next_transaction;
        self.next_transaction = self.next_transaction.wrapping_add(1);
        transaction_id
    }

    /// A request of this channel's own message type with `body`; its answer comes back as
    /// [`HostEvent::Answered`]. One is outstanding at a time, as a Hyper-V host keeps it for KVP.
    pub fn request(&mut self, body: Vec<u8>, now: Instant) -> Message {
        let (framework, message) = self.versions();
        let transaction_id = self.next_transaction_id();
        self.pending = Some((transaction_id, now));
        Message::request(self.msgtype, framework, message, transaction_id, body)
    }

    /// The next heartbeat request, in the 16-byte form that carries the application state.
    pub fn heartbeat(&mut self, now: Instant) -> Message {
        let (framework, message) = self.versions();
        let body = Heartbeat::new(self.next_seq, AppState::UNKNOWN).to_body();
        self.track(now, MessageType::HEARTBEAT, framework, message, body)
    }

    /// A time sample, SYNC or SAMPLE, with host time `parent_time` (ticks): `ictimesync_ref_data` for message
    /// version 4.0 and later (vmreferencetime 0: there is no shared reference counter over vsock),
    /// `ictimesync_data` before. It carries TRANSACTION, so the guest answers it.
    pub fn time_sample(&mut self, flags: TimeSyncFlags, parent_time: u64, now: Instant) -> Message {
        let (framework, message) = self.versions();
        let body = if message >= IcVersion::new(4, 0) {
            TimeSyncRef {
                parent_time,
                flags,
                rest: vec![0; 3],
                ..TimeSyncRef::default()
            }
            .to_body()
        } else {
            TimeSyncData {
                parent_time,
                flags,
                ..TimeSyncData::default()
            }
            .to_body()
        };
        self.track(now, MessageType::TIMESYNC, framework, message, body)
    }

    /// Records a heartbeat or time sample in flight and builds it with the next transaction id.
    fn track(
        &mut self,
        now: Instant,
        msgtype: MessageType,
        framework: IcVersion,
        message: IcVersion,
        body: Vec<u8>,
    ) -> Message {
        let transaction_id = self.next_transaction_id();
        let seq_num = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.in_flight.push_back(InFlight {
            transaction_id,
            seq_num,
            sent_at: now,
        });
        Message::request(msgtype, framework, message, transaction_id, body)
    }

    /// The answer to a guest's probe (message version 4.1): parenttime = host time `parent_time` (ticks)
    /// when answering, childtime echoed, roundtriptime = `held` ticks the probe was held.
    pub fn answer_probe(
        &self,
        probe: &Message<impl AsRef<[u8]>>,
        parent_time: u64,
        held: u64,
    ) -> Result<Message, HostError> {
        let header = &probe.header;
        if header.msgtype != MessageType::TIMESYNC || !header.flags.expects_answer() {
            return Err(HostError::Unexpected(format!(
                "a {} request with flags {:#04x} where a time-sync probe was expected",
                header.msgtype, header.flags.0
            )));
        }
        let request = TimeSyncData::parse(probe.body.as_ref()).map_err(HostError::Body)?;
        if request.flags != TimeSyncFlags::PROBE {
            return Err(HostError::Unexpected(format!(
                "a time-sync request with flags {} instead of PROBE (0)",
                request.flags.0
            )));
        }
        let answer = TimeSyncData {
            parent_time,
            round_trip_time: held,
            ..request
        };
        Ok(probe.reply(Status::OK, answer.to_body()))
    }

    /// Checks one message from the guest.
    pub fn handle<B: AsRef<[u8]>>(
        &mut self,
        message: &Message<B>,
        now: Instant,
    ) -> Result<HostEvent, HostError> {
        let message = &message.view();
        let header = &message.header;
        let expected_flags = IcFlags::TRANSACTION | IcFlags::RESPONSE;
        if header.flags.0 & expected_flags != expected_flags {
            return Err(HostError::Unexpected(format!(
                "a {} message with flags {:#04x}, not a TRANSACTION|RESPONSE answer",
                header.msgtype, header.flags.0
            )));
        }
        if let (HostState::Ready { .. }, Some((transaction_id, sent_at))) =
            (self.state, self.pending)
        {
            if header.msgtype == self.msgtype {
                if header.transaction_id != transaction_id {
                    return Err(HostError::Unexpected(format!(
                        "answered with transaction id {} instead of {transaction_id}",
                        header.transaction_id
                    )));
                }
                self.pending = None;
                return Ok(HostEvent::Answered {
                    status: header.status,
                    body: message.body.to_vec(),
                    round_trip: now.saturating_duration_since(sent_at),
                });
            }
        }
        if header.status != Status::OK {
            return Err(HostError::Unexpected(format!(
                "status {} to our {} request",
                header.status, header.msgtype
            )));
        }
        match (self.state, header.msgtype) {
            (HostState::Negotiating, MessageType::NEGOTIATE) => self.negotiated(message),
            (HostState::Ready { .. }, MessageType::HEARTBEAT) => {
                self.heartbeat_answered(message, now)
            }
            (HostState::Ready { .. }, MessageType::TIMESYNC) => self.sample_answered(message, now),
            (_, msgtype) => Err(HostError::Unexpected(format!(
                "a {msgtype} answer while {:?}",
                self.state
            ))),
        }
    }

    fn negotiated(&mut self, message: &MessageRef<'_>) -> Result<HostEvent, HostError> {
        if message.header.transaction_id != 0 {
            return Err(HostError::Unexpected(format!(
                "negotiation answered with transaction id {} instead of 0",
                message.header.transaction_id
            )));
        }
        let answer = Negotiate::parse(message.body).map_err(HostError::Body)?;
        let (framework, chosen) = answer.chosen().ok_or(HostError::NoCommonVersion)?;
        if !HOST_FRAMEWORK_VERSIONS.contains(&framework) || !self.message_versions.contains(&chosen)
        {
            return Err(HostError::Unexpected(format!(
                "the guest chose framework {framework} and message {chosen}, which we did not offer"
            )));
        }
        self.state = HostState::Ready {
            framework,
            message: chosen,
        };
        Ok(HostEvent::Negotiated {
            framework,
            message: chosen,
        })
    }

    /// The request sent longest ago and not yet answered, which `what` answers: one at a time, in order.
    fn oldest_outstanding(&mut self, what: &str) -> Result<InFlight, HostError> {
        self.in_flight
            .pop_front()
            .ok_or_else(|| HostError::Unexpected(format!("{what} with none outstanding")))
    }

    fn sample_answered(
        &mut self,
        message: &MessageRef<'_>,
        now: Instant,
    ) -> Result<HostEvent, HostError> {
        let sent = self.oldest_outstanding("a time-sync answer")?;
        if message.header.transaction_id != sent.transaction_id {
            return Err(HostError::Unexpected(format!(
                "time sample answered with transaction id {} instead of {}",
                message.header.transaction_id, sent.transaction_id
            )));
        }
        Ok(HostEvent::TimeSampleAnswered {
            number: sent.seq_num,
            round_trip: now.saturating_duration_since(sent.sent_at),
        })
    }

    fn heartbeat_answered(
        &mut self,
        message: &MessageRef<'_>,
        now: Instant,
    ) -> Result<HostEvent, HostError> {
        let sent = self.oldest_outstanding("a heartbeat answer")?;
        let answer = Heartbeat::parse(message.body).map_err(HostError::Body)?;
        if message.header.transaction_id != sent.transaction_id {
            return Err(HostError::Unexpected(format!(
                "heartbeat answered with transaction id {} instead of {}",
                message.header.transaction_id, sent.transaction_id
            )));
        }
        if answer.seq_num != sent.seq_num.wrapping_add(1) {
            return Err(HostError::Unexpected(format!(
                "heartbeat {} answered with sequence {} instead of {}",
                sent.seq_num,
                answer.seq_num,
                sent.seq_num.wrapping_add(1)
            )));
        }
        if message.body.len() != Heartbeat::new(0, AppState::UNKNOWN).to_body().len() {
            return Err(HostError::Unexpected(format!(
                "heartbeat answer body is {} bytes, not as long as the 16-byte request",
                message.body.len()
            )));
        }
        Ok(HostEvent::HeartbeatAnswered {
            seq_num: sent.seq_num,
            round_trip: now.saturating_duration_since(sent.sent_at),
            state: answer.app_state(),
        })
    }
}
