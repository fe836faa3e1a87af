//! One state machine per integration-service channel: (message, now) in, replies and events out. No I/O.
//!
//! A connection is one service channel, as one VMBus channel is on Hyper-V. The host speaks first with a
//! NEGOTIATE request; the channel answers it with the versions it chose (docs/PROTOCOL.md §4) and from then on serves
//! its own message type. Requests of another type, and any request before a successful negotiation, are
//! answered with HV_E_FAIL. A message without the RESPONSE flag is a request: it is answered only when it
//! carries TRANSACTION, and processed silently otherwise (docs/PROTOCOL.md §5.1).

pub mod backup;
pub mod filecopy;
pub mod guestinfo;
pub mod health;
pub mod heartbeat;
pub mod host;
pub mod logic;
pub mod shutdown;
pub mod timesync;

use std::time::Instant;

pub use logic::{LinkId, Logic, Refusal, StatusLine, Watch};

use crate::wire::negotiate::Negotiate;
use crate::wire::{IcVersion, Message, MessageRef, MessageType, ReplyWriter, Status};

/// Framework versions the guest accepts, in preference order.
pub const FRAMEWORK_VERSIONS: [IcVersion; 2] = [IcVersion::new(3, 0), IcVersion::new(1, 0)];

/// The integration services hvagent knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceKind {
    Heartbeat,
    GuestInfo,
    Shutdown,
    TimeSync,
    /// The VSS IC: freeze and thaw for a consistent backup.
    Backup,
    /// The FCOPY IC: files copied into the guest (Copy-VMFile).
    FileCopy,
}

impl ServiceKind {
    pub const ALL: [ServiceKind; 6] = [
        ServiceKind::Heartbeat,
        ServiceKind::GuestInfo,
        ServiceKind::Shutdown,
        ServiceKind::TimeSync,
        ServiceKind::Backup,
        ServiceKind::FileCopy,
    ];

    /// The IC message type this service carries.
    pub fn msgtype(self) -> MessageType {
        match self {
            ServiceKind::Heartbeat => MessageType::HEARTBEAT,
            ServiceKind::GuestInfo => MessageType::KVP_EXCHANGE,
            ServiceKind::Shutdown => MessageType::SHUTDOWN,
            ServiceKind::TimeSync => MessageType::TIMESYNC,
            ServiceKind::Backup => MessageType::VSS,
            ServiceKind::FileCopy => MessageType::FCOPY,
        }
    }

    /// The name used in config sections and logs.
    pub fn name(self) -> &'static str {
        match self {
            ServiceKind::Heartbeat => "heartbeat",
            ServiceKind::GuestInfo => "guestinfo",
            ServiceKind::Shutdown => "shutdown",
            ServiceKind::TimeSync => "timesync",
            ServiceKind::Backup => "backup",
            ServiceKind::FileCopy => "filecopy",
        }
    }

    /// hvagent's default vsock port: 0x48560000 + icmsgtype.
    pub fn default_port(self) -> u32 {
        0x4856_0000 + u32::from(self.msgtype().0)
    }

    /// Whether the agent runs the service when its section does not say: every one but backup, which
    /// freezes filesystems, and file copy, which writes files the host sends; they run only where the
    /// admin asks for them.
    pub fn on_by_default(self) -> bool {
        !matches!(self, ServiceKind::Backup | ServiceKind::FileCopy)
    }

    /// Message versions the guest accepts, in preference order (Linux's lists; time sync adds hvagent's 4.1;
    /// backup is Linux's hv_snapshot.c, which offers 5.0 alone; file copy is Linux's hv_fcopy.c and
    /// hv_fcopy_uio_daemon.c, which offer 1.1 alone, WIN8_SRV_VERSION).
    pub fn message_versions(self) -> &'static [IcVersion] {
        const HEARTBEAT: [IcVersion; 2] = [IcVersion::new(3, 0), IcVersion::new(1, 0)];
        const GUEST_INFO: [IcVersion; 3] = [
            IcVersion::new(5, 0),
            IcVersion::new(4, 0),
            IcVersion::new(3, 0),
        ];
        const SHUTDOWN: [IcVersion; 4] = [
            IcVersion::new(3, 2),
            IcVersion::new(3, 1),
            IcVersion::new(3, 0),
            IcVersion::new(1, 0),
        ];
        const TIME_SYNC: [IcVersion; 4] = [
            IcVersion::new(4, 1),
            IcVersion::new(4, 0),
            IcVersion::new(3, 0),
            IcVersion::new(1, 0),
        ];
        const BACKUP: [IcVersion; 1] = [IcVersion::new(5, 0)];
        const FILE_COPY: [IcVersion; 1] = [IcVersion::new(1, 1)];
        match self {
            ServiceKind::Heartbeat => &HEARTBEAT,
            ServiceKind::GuestInfo => &GUEST_INFO,
            ServiceKind::Shutdown => &SHUTDOWN,
            ServiceKind::TimeSync => &TIME_SYNC,
            ServiceKind::Backup => &BACKUP,
            ServiceKind::FileCopy => &FILE_COPY,
        }
    }
}

impl std::fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a channel stands in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelState {
    /// Connected; the host has not negotiated yet.
    AwaitingNegotiation,
    /// Versions agreed.
    Ready {
        framework: IcVersion,
        message: IcVersion,
    },
    /// The host offered nothing we speak; it may negotiate again.
    NoCommonVersion,
}

/// What happened on a channel, for logs and status; the edge decides how loud each is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Negotiated {
        framework: IcVersion,
        message: IcVersion,
    },
    NoCommonVersion {
        offered_frameworks: Vec<IcVersion>,
        offered_messages: Vec<IcVersion>,
    },
    /// A request of the service's own type was handed to its logic and answered with HV_S_OK.
    Served { msgtype: MessageType },
    /// A request answered with an error status.
    Refused {
        msgtype: MessageType,
        status: Status,
        why: String,
    },
    /// A request its logic will answer later (a key-value Set, once stored durably).
    Deferred { msgtype: MessageType },
    /// A response to a request the service's logic sent.
    ResponseTaken { msgtype: MessageType },
    /// A response nobody asked for, dropped.
    UnexpectedResponse {
        msgtype: MessageType,
        transaction_id: u8,
    },
}

/// The guest side of one service channel: negotiation and the IC rules; the rest is the service's logic.
#[derive(Debug)]
pub struct Channel {
    kind: ServiceKind,
    link: LinkId,
    state: ChannelState,
}

impl Channel {
    pub fn new(kind: ServiceKind, link: LinkId) -> Channel {
        Channel {
            kind,
            link,
            state: ChannelState::AwaitingNegotiation,
        }
    }

    pub fn kind(&self) -> ServiceKind {
        self.kind
    }

    pub fn link(&self) -> LinkId {
        self.link
    }

    pub fn state(&self) -> ChannelState {
        self.state
    }

    /// The message version agreed, once negotiated.
    pub fn version(&self) -> Option<IcVersion> {
        match self.state {
            ChannelState::Ready { message, .. } => Some(message),
            _ => None,
        }
    }

    /// Handles one decoded message, appending the wire form of its answer, when one is due, to `out` (a
    /// connection's output queue): bytes already in `out` are left alone.
    pub fn handle<B: AsRef<[u8]>>(
        &mut self,
        message: &Message<B>,
        logic: &mut dyn Logic,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Event {
        let message = message.view();
        let header = &message.header;
        if header.flags.is_response() {
            if header.msgtype == self.kind.msgtype()
                && self.version().is_some()
                && logic.response(self.link, &message, now)
            {
                return Event::ResponseTaken {
                    msgtype: header.msgtype,
                };
            }
            return Event::UnexpectedResponse {
                msgtype: header.msgtype,
                transaction_id: header.transaction_id,
            };
        }
        let mut reply = ReplyWriter::begin(&message, out);
        let (status, event) = self.answer(&message, logic, now, &mut reply);
        if reply.is_deferred() {
            reply.discard();
            return match event {
                Event::Served { msgtype } => Event::Deferred { msgtype },
                other => other,
            };
        }
        if !header.flags.expects_answer() {
            reply.discard();
            return event;
        }
        match reply.finish(status) {
            Ok(()) => event,
            // A logic's answer that does not fit a message is a bug; the host gets HV_E_FAIL instead.
            Err(error) => {
                let mut reply = ReplyWriter::begin(&message, out);
                let refusal = Refusal::new(
                    Status::FAIL,
                    format!("the {} answer could not be sent: {error}", self.kind),
                );
                let (status, event) = refuse(&message, &refusal, &mut reply);
                // The request's own body fitted, so its echo does too.
                let _ = reply.finish(status);
                event
            }
        }
    }

    /// Writes the answer to a request into `reply`, whether or not the host wants it, and says what it
    /// means; returns the answer's status.
    fn answer(
        &mut self,
        request: &MessageRef<'_>,
        logic: &mut dyn Logic,
        now: Instant,
        reply: &mut ReplyWriter<'_>,
    ) -> (Status, Event) {
        let msgtype = request.header.msgtype;
        if msgtype == MessageType::NEGOTIATE {
            return match Negotiate::parse(request.body) {
                Ok(offer) => {
                    let event = self.negotiate(&offer, reply);
                    if let Event::Negotiated { message, .. } = event {
                        logic.negotiated(self.link, message, now);
                    }
                    (Status::OK, event)
                }
                Err(error) => refuse(request, &Refusal::invalid(error), reply),
            };
        }
        if msgtype != self.kind.msgtype() {
            let why = format!(
                "the {} channel does not serve {msgtype} requests",
                self.kind
            );
            return refuse(request, &Refusal::new(Status::FAIL, why), reply);
        }
        let Some(version) = self.version() else {
            return refuse(
                request,
                &Refusal::new(Status::FAIL, "no versions were negotiated yet"),
                reply,
            );
        };
        match logic.request(self.link, request, version, now, reply) {
            Ok(status) => (status, Event::Served { msgtype }),
            Err(refusal) => refuse(request, &refusal, reply),
        }
    }

    fn negotiate(&mut self, offer: &Negotiate, reply: &mut ReplyWriter<'_>) -> Event {
        let chosen = offer.choose(&FRAMEWORK_VERSIONS, self.kind.message_versions());
        reply.extend_from_slice(&Negotiate::answer(chosen).to_body());
        match chosen {
            Some((framework, message)) => {
                self.state = ChannelState::Ready { framework, message };
                Event::Negotiated { framework, message }
            }
            None => {
                self.state = ChannelState::NoCommonVersion;
                Event::NoCommonVersion {
                    offered_frameworks: offer.framework_versions.clone(),
                    offered_messages: offer.message_versions.clone(),
                }
            }
        }
    }
}

/// An error answer: the request's body echoed with the refusal's status, as Linux's hv_utils answers in
/// place. Whatever the logic wrote is replaced.
fn refuse(
    request: &MessageRef<'_>,
    refusal: &Refusal,
    reply: &mut ReplyWriter<'_>,
) -> (Status, Event) {
    let event = Event::Refused {
        msgtype: request.header.msgtype,
        status: refusal.status,
        why: refusal.why.clone(),
    };
    reply.clear_body();
    reply.extend_from_slice(request.body);
    (refusal.status, event)
}

/// The answers `channel` gives to `message`, as messages of their own: for tests, which look at them one by
/// one.
#[cfg(test)]
pub(crate) fn handle_to_messages(
    channel: &mut Channel,
    message: &Message,
    logic: &mut dyn Logic,
    now: Instant,
    replies: &mut Vec<Message>,
) -> Event {
    let mut out = Vec::new();
    let event = channel.handle(message, logic, now, &mut out);
    let mut decoder = crate::wire::Decoder::new();
    decoder.push(&out);
    while let Some(reply) = decoder
        .next_message()
        .expect("a channel emits whole messages")
    {
        replies.push(reply.to_owned_message());
    }
    assert_eq!(decoder.pending_len(), 0, "a channel emits whole messages");
    event
}

#[cfg(test)]
mod tests;
