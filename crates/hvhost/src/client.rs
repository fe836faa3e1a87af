//! The host side as hvhost plays it: a client that dials a listening agent, and a server that waits for agents
//! to dial in. Both run [`HostChannel`] over [`Connection`]s and print what they see, one line per event.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::net::{self, wait_ready, Address, Closed, Connection, Interest, Socket, Watched};
use hvproto::service::host::{HostChannel, HostError, HostEvent};
use hvproto::service::ServiceKind;
use hvproto::wire::heartbeat::AppState;
use hvproto::wire::{Message, Status};

/// How long the host waits for any one answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a host-side exchange failed.
#[derive(Debug)]
pub enum PeerError {
    Connect(String),
    Closed(Closed),
    Protocol(HostError),
    /// No answer to `what` within the time given.
    Timeout(&'static str, Duration),
}

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerError::Connect(why) => f.write_str(why),
            PeerError::Closed(closed) => write!(f, "connection lost: {closed}"),
            PeerError::Protocol(error) => write!(f, "{error}"),
            PeerError::Timeout(what, limit) => {
                write!(
                    f,
                    "no answer to the {what} within {} s",
                    limit.as_secs_f64()
                )
            }
        }
    }
}

impl std::error::Error for PeerError {}

/// What to check when a dial fails. A Hyper-V host also refuses a connection to a service GUID it has no
/// GuestCommunicationServices key for.
#[cfg(windows)]
const CONNECT_HINT: &str =
    "is the agent in the guest running with listen = \"...\" for this service, and is the \
                            service registered on this host (hvhost register)?";
#[cfg(not(windows))]
const CONNECT_HINT: &str = "is the agent running with listen = \"...\" for this service?";

/// Dials an agent that listens at `address` (on Linux: Unix, vsock or hybrid vsock; on Windows: Hyper-V).
pub fn dial(address: &Address) -> Result<Socket, PeerError> {
    let resolved = net::resolve(address)
        .map_err(|error| PeerError::Connect(format!("cannot connect to {address}: {error}")))?;
    net::dial(&resolved, ANSWER_TIMEOUT).map_err(|error| {
        PeerError::Connect(format!(
            "cannot connect to {address}: {error}; {CONNECT_HINT}"
        ))
    })
}

/// A host-side channel on one connection, driven step by step.
pub struct Client {
    connection: Connection,
    channel: HostChannel,
    inbox: Vec<Message>,
}

impl Client {
    pub fn new(fd: Socket, kind: ServiceKind) -> Client {
        Client::on_channel(fd, HostChannel::new(kind))
    }

    /// A client that runs `channel`, for a service the host speaks with versions of its own (backup).
    pub fn on_channel(fd: Socket, channel: HostChannel) -> Client {
        Client {
            connection: Connection::new(fd),
            channel,
            inbox: Vec::new(),
        }
    }

    fn send(&mut self, message: &Message) -> Result<(), PeerError> {
        self.connection.queue(message).map_err(PeerError::Closed)?;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            self.connection.flush().map_err(PeerError::Closed)?;
            if !self.connection.wants_write() {
                return Ok(());
            }
            if !wait_ready(self.connection.fd(), Interest::WRITE, deadline) {
                return Err(PeerError::Timeout("send", ANSWER_TIMEOUT));
            }
        }
    }

    /// The next message from the agent, waiting up to [`ANSWER_TIMEOUT`].
    fn next(&mut self, what: &'static str) -> Result<Message, PeerError> {
        self.next_within(what, ANSWER_TIMEOUT)
    }

    /// The next message from the agent, waiting up to `limit`.
    fn next_within(&mut self, what: &'static str, limit: Duration) -> Result<Message, PeerError> {
        let deadline = Instant::now() + limit;
        while self.inbox.is_empty() {
            if !wait_ready(self.connection.fd(), Interest::READ, deadline) {
                return Err(PeerError::Timeout(what, limit));
            }
            self.connection
                .receive(&mut self.inbox)
                .map_err(PeerError::Closed)?;
        }
        Ok(self.inbox.remove(0))
    }

    /// The message version negotiated, once it is.
    pub fn message_version(&self) -> Option<hvproto::wire::IcVersion> {
        match self.channel.state() {
            hvproto::service::host::HostState::Ready { message, .. } => Some(message),
            hvproto::service::host::HostState::Negotiating => None,
        }
    }

    /// Offers versions and checks the agent's choice.
    pub fn negotiate(&mut self) -> Result<HostEvent, PeerError> {
        let offer = self.channel.offer();
        self.send(&offer)?;
        let answer = self.next("negotiation")?;
        self.channel
            .handle(&answer, Instant::now())
            .map_err(PeerError::Protocol)
    }

    /// Sends `depth` heartbeats back to back, then reads their answers; returns (round trip, state) of each.
    pub fn heartbeats(
        &mut self,
        depth: usize,
    ) -> Result<Vec<(Duration, Option<AppState>)>, PeerError> {
        let now = Instant::now();
        for _ in 0..depth {
            let request = self.channel.heartbeat(now);
            self.connection.queue(&request).map_err(PeerError::Closed)?;
        }
        self.send_queued()?;
        let mut results = Vec::with_capacity(depth);
        while self.channel.in_flight() > 0 {
            let answer = self.next("heartbeat")?;
            match self.channel.handle(&answer, Instant::now()) {
                Ok(HostEvent::HeartbeatAnswered {
                    round_trip, state, ..
                }) => results.push((round_trip, state)),
                Ok(other) => {
                    return Err(PeerError::Protocol(HostError::Unexpected(format!(
                        "{other:?}"
                    ))))
                }
                Err(error) => return Err(PeerError::Protocol(error)),
            }
        }
        Ok(results)
    }

    /// Sends one request of the channel's message type and waits for its answer: (status, body).
    pub fn exchange(&mut self, body: Vec<u8>) -> Result<(Status, Vec<u8>), PeerError> {
        match self.ask(
            |channel, now| channel.request(body, now),
            "request",
            ANSWER_TIMEOUT,
        )? {
            HostEvent::Answered { status, body, .. } => Ok((status, body)),
            other => Err(PeerError::Protocol(HostError::Unexpected(format!(
                "{other:?}"
            )))),
        }
    }

    /// Sends the request `build` makes on the channel and waits up to `limit` for the answer to `what`,
    /// which the channel checks.
    pub fn ask(
        &mut self,
        build: impl FnOnce(&mut HostChannel, Instant) -> Message,
        what: &'static str,
        limit: Duration,
    ) -> Result<HostEvent, PeerError> {
        let request = build(&mut self.channel, Instant::now());
        self.send(&request)?;
        let answer = self.next_within(what, limit)?;
        self.channel
            .handle(&answer, Instant::now())
            .map_err(PeerError::Protocol)
    }

    /// The channel, for what builds its own requests on it once negotiated (a file copy's sender).
    pub fn channel(&self) -> &HostChannel {
        &self.channel
    }

    /// Queues `message` to go out with the next [`Client::pump`], without waiting.
    pub fn queue(&mut self, message: &Message) -> Result<(), PeerError> {
        self.connection.queue(message).map_err(PeerError::Closed)
    }

    /// Sends what the socket takes and moves what arrived to `inbox`, waiting until the deadline for
    /// something to do when neither can go on at once; false when the deadline passed with nothing read.
    pub fn pump(&mut self, inbox: &mut Vec<Message>, deadline: Instant) -> Result<bool, PeerError> {
        inbox.append(&mut self.inbox);
        loop {
            self.connection.flush().map_err(PeerError::Closed)?;
            let interest = Interest {
                read: true,
                write: self.connection.wants_write(),
            };
            if !inbox.is_empty() {
                return Ok(true);
            }
            if !wait_ready(self.connection.fd(), interest, deadline) {
                return Ok(false);
            }
            self.connection.receive(inbox).map_err(PeerError::Closed)?;
            if !inbox.is_empty() {
                return Ok(true);
            }
        }
    }

    fn send_queued(&mut self) -> Result<(), PeerError> {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            self.connection.flush().map_err(PeerError::Closed)?;
            if !self.connection.wants_write() {
                return Ok(());
            }
            // Read answers meanwhile, so an agent blocked on its own sends can make progress.
            let mut watched = [Watched::new(self.connection.fd(), Interest::BOTH)];
            let _ = net::poll(&mut watched, Some(Duration::from_millis(100)));
            if watched[0].ready.read {
                self.connection
                    .receive(&mut self.inbox)
                    .map_err(PeerError::Closed)?;
            }
            if Instant::now() > deadline {
                return Err(PeerError::Timeout("send", ANSWER_TIMEOUT));
            }
        }
    }
}

/// Round-trip figures of a run. [`RoundTrips::default`] keeps every sample, for exact quantiles;
/// [`RoundTrips::bounded`] keeps at most a fixed number, for a server that runs for months.
#[derive(Debug, Default, Clone)]
pub struct RoundTrips {
    micros: Vec<f64>,
    /// Most samples kept; none means all.
    cap: Option<usize>,
    /// Every `stride`-th sample is kept: 1 until the cap is first reached, then doubled each time.
    stride: usize,
    count: usize,
    max: f64,
}

impl RoundTrips {
    /// Keeps at most `cap` samples (at least 2), an evenly spaced subset of all of them: when the cap is
    /// reached every other sample is dropped and from then on only every second one recorded, and so on.
    /// The count and the maximum stay exact; quantiles are those of the subset.
    pub fn bounded(cap: usize) -> RoundTrips {
        RoundTrips {
            cap: Some(cap.max(2)),
            ..RoundTrips::default()
        }
    }

    pub fn record(&mut self, round_trip: Duration) {
        let micros = round_trip.as_secs_f64() * 1e6;
        self.max = self.max.max(micros);
        self.count += 1;
        if (self.count - 1) % self.stride.max(1) != 0 {
            return;
        }
        self.micros.push(micros);
        if self.cap.is_some_and(|cap| self.micros.len() >= cap) {
            let mut index = 0;
            self.micros.retain(|_| {
                index += 1;
                index % 2 == 1
            });
            self.stride = self.stride.max(1) * 2;
        }
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// The `q` quantile (0..=1) in microseconds, by nearest rank; `q` = 1 is the exact maximum.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.micros.is_empty() {
            return 0.0;
        }
        if q >= 1.0 {
            return self.max;
        }
        let mut sorted = self.micros.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    /// `done heartbeats=N p50_us=X p99_us=Y max_us=Z`
    pub fn summary(&self) -> String {
        format!(
            "done heartbeats={} p50_us={:.1} p99_us={:.1} max_us={:.1}",
            self.count(),
            self.quantile(0.5),
            self.quantile(0.99),
            self.quantile(1.0)
        )
    }
}

/// Prints one line and flushes, so a reader of a pipe sees it at once.
pub fn say(out: &mut dyn Write, line: &str) {
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// `heartbeat seq=N rtt_us=X state=S`
pub fn heartbeat_line(seq: u64, round_trip: Duration, state: Option<AppState>) -> String {
    format!(
        "heartbeat seq={seq} rtt_us={:.1} state={}",
        round_trip.as_secs_f64() * 1e6,
        state.map_or("absent", AppState::name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_nearest_rank() {
        let mut trips = RoundTrips::default();
        for micros in 1..=100 {
            trips.record(Duration::from_micros(micros));
        }
        assert_eq!(trips.quantile(0.5), 50.0);
        assert_eq!(trips.quantile(0.99), 99.0);
        assert_eq!(trips.quantile(1.0), 100.0);
        assert_eq!(RoundTrips::default().quantile(0.5), 0.0);
    }

    #[test]
    fn bounded_round_trips_keep_an_even_subset_and_the_exact_count_and_maximum() {
        let mut trips = RoundTrips::bounded(256);
        for micros in 1..=100_000 {
            trips.record(Duration::from_micros(micros));
        }
        assert!(trips.micros.len() <= 256, "{} kept", trips.micros.len());
        assert_eq!(trips.count(), 100_000);
        assert_eq!(trips.quantile(1.0), 100_000.0);
        let p50 = trips.quantile(0.5);
        assert!((45_000.0..=55_000.0).contains(&p50), "p50 {p50}");
    }
}
