//! The behaviour of one service beyond negotiation, shared by all of the service's connections.
//!
//! A [`Channel`](super::Channel) owns negotiation and the IC rules common to every service (which requests
//! are answered, refusals before negotiation, responses nobody asked for). Once a request of the service's
//! own message type arrives on a negotiated channel, the channel hands it to the service's [`Logic`], which
//! lives as long as the service (not the connection): time-sync filters, the key-value pools, the health
//! state and a shutdown in progress survive a host reconnecting.
//!
//! A logic is sans-I/O towards the poll loop: it is given the time and bytes and writes bytes. It reads a
//! request where it was received and writes its answer's body where the answer is sent from (a
//! [`ReplyWriter`] at the end of the connection's output queue), so a logic that keeps nothing of a request
//! answers it without allocating. What it must
//! do to the system (set the clock, run a command) goes through the small edge traits it was built with, so
//! tests drive it with fakes. The loop calls, in order: `negotiated` when a link agrees versions, `request`
//! and `response` per message, `after_send` once the replies of a read were queued and flushed, `on_timer`
//! when `deadline` has passed, `watch_ready` when `watched` has input, `closed` when a link goes, and
//! `finishing` once when the agent stops. A logic may answer a request later ([`ReplyWriter::defer`]):
//! it then sends the answer from `on_timer` (or `finishing`) as a message of its own.

use std::time::Instant;

use crate::wire::{IcVersion, Message, MessageRef, ReplyWriter, Status};

/// Names one connection of a service for as long as the agent runs; never reused.
pub type LinkId = u64;

/// Why a request gets an error answer: the status, and words for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: Status,
    pub why: String,
}

impl Refusal {
    pub fn new(status: Status, why: impl std::fmt::Display) -> Refusal {
        Refusal {
            status,
            why: why.to_string(),
        }
    }

    /// HV_E_INVALIDARG: a body that does not parse, or a value the service cannot take.
    pub fn invalid(why: impl std::fmt::Display) -> Refusal {
        Refusal::new(Status::INVALID_ARG, why)
    }
}

/// Something an edge asks the loop to watch for input on a logic's behalf (a child's stdout, say), in the
/// platform's own terms: on Unix, the number of a descriptor the edge keeps open for as long as it reports
/// it and is not changed. The protocol never looks inside; the loop that owns the edge does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Watch(pub i64);

/// One line of `hvagent status`: a label and its value.
pub type StatusLine = (&'static str, String);

/// The behaviour of one service; see the module documentation for when each method is called.
pub trait Logic {
    /// Answers a request of the service's own message type on a channel that negotiated `version`: writes
    /// the answer's body to `reply` (empty when called) and returns its status. On a refusal the channel
    /// replaces whatever was written with the request's own body. The answer is sent only when the request
    /// carries TRANSACTION; the logic acts on the request either way.
    fn request(
        &mut self,
        link: LinkId,
        request: &MessageRef<'_>,
        version: IcVersion,
        now: Instant,
        reply: &mut ReplyWriter<'_>,
    ) -> Result<Status, Refusal>;

    /// A response on `link`; true when it answers a request this logic sent, false to have it logged as
    /// unexpected and dropped.
    fn response(&mut self, _link: LinkId, _response: &MessageRef<'_>, _now: Instant) -> bool {
        false
    }

    /// `link` agreed on `version` (it may negotiate again later).
    fn negotiated(&mut self, _link: LinkId, _version: IcVersion, _now: Instant) {}

    /// `link` is gone.
    fn closed(&mut self, _link: LinkId) {}

    /// The agent was told to reload its configuration (SIGHUP); called on every running service before the
    /// file is read again, whether the service is then kept or reopened.
    fn reloading(&mut self, _now: Instant) {}

    /// When `on_timer` wants to run next; none means never (an idle agent must not be woken).
    fn deadline(&self) -> Option<Instant> {
        None
    }

    /// Runs what is due; requests the logic sends go to `out` with the link each is for. The loop stamps each
    /// with its link's negotiated framework and message versions.
    fn on_timer(&mut self, _now: Instant, _out: &mut Vec<(LinkId, Message)>) {}

    /// The agent is stopping: complete what the logic put off (deferred answers, coalesced writes) now, with
    /// the answers going to `out` as from [`Logic::on_timer`]. Called once, after the last requests were read.
    fn finishing(&mut self, _now: Instant, _out: &mut Vec<(LinkId, Message)>) {}

    /// What the loop watches for input on the logic's behalf (a child's pipe, say).
    fn watched(&self) -> Option<Watch> {
        None
    }

    /// `watched` has input (or hung up).
    fn watch_ready(&mut self, _now: Instant) {}

    /// The replies to what was just read are queued and as much as the socket takes is sent: the place for
    /// actions that must follow their answer, such as a shutdown.
    fn after_send(&mut self, _now: Instant) {}

    /// What `hvagent status` shows for this service beyond its connection state.
    fn status(&self, _now: Instant) -> Vec<StatusLine> {
        Vec::new()
    }
}

/// The answer `logic` gives to `request`, as a message of its own: for tests, which look at answers one by
/// one.
#[cfg(test)]
pub(crate) fn answer_of(
    logic: &mut dyn Logic,
    link: LinkId,
    request: &Message,
    version: IcVersion,
    now: Instant,
) -> Result<Message, Refusal> {
    let mut out = Vec::new();
    let mut reply = ReplyWriter::begin(request, &mut out);
    let status = logic.request(link, &request.view(), version, now, &mut reply)?;
    reply.finish(status).expect("a test answer fits a message");
    Ok(Message::parse(&out)
        .expect("what a writer emits parses")
        .to_owned_message())
}
