//! The client side of the round-trip figures: one connection to the agent, to the raw echo server or to
//! qemu-guest-agent, with the same blocking write-then-read loop for each, and the echo server itself.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use hvhost::client::RoundTrips;
use hvproto::service::host::{HostChannel, HostEvent};
use hvproto::service::ServiceKind;
use hvproto::wire::heartbeat::Heartbeat;
use hvproto::wire::{self, Message};

use crate::run::{connect, Context, Failure, Running};
use crate::{BLOCK, WARM_UP};

/// The raw echo server: accepts one connection on `path` and writes back every byte it reads, until EOF.
pub(crate) fn echo(path: &Path) -> Result<(), Failure> {
    let listener =
        UnixListener::bind(path).context(|| format!("cannot listen on {}", path.display()))?;
    let (mut stream, _) = listener.accept().context(|| "cannot accept")?;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match stream.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(Failure(format!("cannot read: {error}"))),
        };
        stream
            .write_all(&buffer[..read])
            .context(|| "cannot write")?;
    }
}

/// What answers at the other end of a [`Peer`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Server {
    /// hvagent: heartbeats, each answer checked by `HostChannel::handle`.
    Agent,
    /// The raw echo: heartbeats, each returned unchanged.
    Echo,
    /// qemu-guest-agent: `guest-ping` commands, one JSON line each way.
    QemuGa,
}

/// qemu-guest-agent's cheapest command and its answer.
const GUEST_PING: &[u8] = b"{\"execute\":\"guest-ping\"}\n";
const GUEST_PING_ANSWER: &[u8] = b"{\"return\": {}}\n";

/// The client side of one connection, doing the same work for the agent and the echo.
pub(crate) struct Peer {
    pub(crate) name: &'static str,
    stream: UnixStream,
    channel: HostChannel,
    server: Server,
    answer: Vec<u8>,
    pub(crate) trips: RoundTrips,
    /// Wall time spent in timed round trips.
    busy: Duration,
}

impl Peer {
    pub(crate) fn new(name: &'static str, stream: UnixStream, server: Server) -> Peer {
        Peer {
            name,
            stream,
            channel: HostChannel::new(ServiceKind::Heartbeat),
            server,
            answer: Vec::new(),
            trips: RoundTrips::default(),
            busy: Duration::ZERO,
        }
    }

    /// A negotiated heartbeat connection to the agent.
    pub(crate) fn agent(path: &Path, agent: &mut Running) -> Result<Peer, Failure> {
        Peer::negotiated(connect(path, agent)?)
    }

    /// Offers versions to the agent at the other end of `stream` and checks its answer.
    pub(crate) fn negotiated(stream: UnixStream) -> Result<Peer, Failure> {
        let mut peer = Peer::new("agent", stream, Server::Agent);
        let offer = encode(&peer.channel.offer())?;
        peer.send(&offer)?;
        peer.receive(0, wire::HEADER_LEN)?;
        let len = wire::frame_len(&peer.answer)
            .context(|| "the agent's negotiation answer has a bad header")?
            .unwrap_or(wire::HEADER_LEN);
        peer.receive(wire::HEADER_LEN, len)?;
        let message = Message::parse(&peer.answer)
            .context(|| "the agent's negotiation answer is malformed")?;
        let event = peer
            .channel
            .handle(&message, Instant::now())
            .context(|| "negotiation with the agent failed")?;
        match event {
            HostEvent::Negotiated { .. } => Ok(peer),
            other => Err(Failure(format!(
                "the agent answered the offer with {other:?}"
            ))),
        }
    }

    pub(crate) fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        let name = self.name;
        self.stream
            .write_all(bytes)
            .context(|| format!("cannot write to the {name}"))
    }

    /// Reads bytes `from..to` of an answer into `self.answer`.
    pub(crate) fn receive(&mut self, from: usize, to: usize) -> Result<(), Failure> {
        self.answer.resize(to, 0);
        let name = self.name;
        self.stream
            .read_exact(&mut self.answer[from..to])
            .context(|| format!("no whole answer from the {name}"))
    }

    /// Reads one answer line of qemu-guest-agent into `self.answer`.
    fn receive_line(&mut self) -> Result<(), Failure> {
        self.answer.clear();
        let mut chunk = [0u8; 256];
        while self.answer.last() != Some(&b'\n') {
            let read = self
                .stream
                .read(&mut chunk)
                .context(|| format!("no whole answer from the {}", self.name))?;
            if read == 0 {
                return Err(Failure(format!("the {} closed the connection", self.name)));
            }
            self.answer.extend_from_slice(&chunk[..read]);
        }
        Ok(())
    }

    /// One `guest-ping` there and back, its answer checked.
    fn ping(&mut self) -> Result<Duration, Failure> {
        let start = Instant::now();
        self.send(GUEST_PING)?;
        self.receive_line()?;
        if self.answer != GUEST_PING_ANSWER {
            return Err(Failure(format!(
                "qemu-ga answered guest-ping with {:?}",
                String::from_utf8_lossy(&self.answer)
            )));
        }
        Ok(start.elapsed())
    }

    /// One request there and back; the time from encoding the request to having checked the answer.
    pub(crate) fn round_trip(&mut self) -> Result<Duration, Failure> {
        if self.server == Server::QemuGa {
            return self.ping();
        }
        if self.server == Server::Echo && self.channel.in_flight() >= BLOCK {
            // The echo's requests are never answered, so the channel's list of them only grows; start over.
            self.channel = HostChannel::new(ServiceKind::Heartbeat);
        }
        let start = Instant::now();
        let request = encode(&self.channel.heartbeat(start))?;
        self.send(&request)?;
        self.receive(0, request.len())?;
        self.check(&request, 0, Instant::now())?;
        Ok(start.elapsed())
    }

    /// Checks the answer at `at` in `self.answer` to `request`.
    pub(crate) fn check(&mut self, request: &[u8], at: usize, now: Instant) -> Result<(), Failure> {
        let bytes = &self.answer[at..at + request.len()];
        let message =
            Message::parse(bytes).context(|| format!("malformed answer from the {}", self.name))?;
        if self.server == Server::Echo {
            Heartbeat::parse(message.body).context(|| "the echo returned a malformed heartbeat")?;
            if bytes != request {
                return Err(Failure("the echo returned other bytes than it got".into()));
            }
            return Ok(());
        }
        match self.channel.handle(&message, now) {
            Ok(HostEvent::HeartbeatAnswered { .. }) => Ok(()),
            Ok(other) => Err(Failure(format!(
                "the agent answered a heartbeat with {other:?}"
            ))),
            Err(error) => Err(Failure(error.to_string())),
        }
    }

    /// `count` round trips, recorded unless this is the warm-up.
    pub(crate) fn run(&mut self, count: usize, record: bool) -> Result<(), Failure> {
        let start = Instant::now();
        for _ in 0..count {
            let round_trip = self.round_trip()?;
            if record {
                self.trips.record(round_trip);
            }
        }
        if record {
            self.busy += start.elapsed();
        }
        Ok(())
    }

    pub(crate) fn per_second(&self) -> f64 {
        self.trips.count() as f64 / self.busy.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// Heartbeats per second with `depth` requests written back to back before their answers are read.
    pub(crate) fn pipelined(&mut self, depth: usize, total: usize) -> Result<f64, Failure> {
        let rounds = total.div_ceil(depth);
        let mut batch = Vec::new();
        let start = Instant::now();
        for _ in 0..rounds {
            batch.clear();
            let now = Instant::now();
            for _ in 0..depth {
                let request = self.channel.heartbeat(now);
                request.emit(&mut batch).context(|| "cannot encode")?;
            }
            self.send(&batch)?;
            self.receive(0, batch.len())?;
            let now = Instant::now();
            let each = batch.len() / depth;
            for (index, request) in batch.chunks(each).enumerate() {
                self.check(request, index * each, now)?;
            }
        }
        Ok((rounds * depth) as f64 / start.elapsed().as_secs_f64())
    }
}

pub(crate) fn encode(message: &Message) -> Result<Vec<u8>, Failure> {
    message.to_bytes().context(|| "cannot encode a request")
}

/// Timed round trips on every peer, taking turns by blocks and rotating who goes first each block, so that
/// drift in CPU speed or load hits all alike.
pub(crate) fn round_trips(peers: &mut [Peer], count: usize) -> Result<(), Failure> {
    for peer in peers.iter_mut() {
        peer.run(WARM_UP, false)?;
    }
    for (block, done) in (0..count).step_by(BLOCK).enumerate() {
        for turn in 0..peers.len() {
            let index = (block + turn) % peers.len();
            peers[index].run((count - done).min(BLOCK), true)?;
        }
    }
    Ok(())
}
