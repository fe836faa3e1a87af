//! The client side of the round-trip figures: one connection to the agent or to the raw echo server,
//! doing the same work for both, and the echo server itself.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use hvagent::host_peer::RoundTrips;
use hvagent::service::host::{HostChannel, HostEvent};
use hvagent::service::ServiceKind;
use hvagent::wire::heartbeat::Heartbeat;
use hvagent::wire::{self, Message};

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

/// The client side of one connection, doing the same work for the agent and the echo.
pub(crate) struct Peer {
    pub(crate) name: &'static str,
    stream: UnixStream,
    channel: HostChannel,
    /// The agent answers and `HostChannel::handle` checks it; the echo returns each request unchanged.
    is_echo: bool,
    answer: Vec<u8>,
    pub(crate) trips: RoundTrips,
    /// Wall time spent in timed round trips.
    busy: Duration,
}

impl Peer {
    pub(crate) fn new(name: &'static str, stream: UnixStream, is_echo: bool) -> Peer {
        Peer {
            name,
            stream,
            channel: HostChannel::new(ServiceKind::Heartbeat),
            is_echo,
            answer: Vec::new(),
            trips: RoundTrips::default(),
            busy: Duration::ZERO,
        }
    }

    /// A negotiated heartbeat connection to the agent.
    pub(crate) fn agent(path: &Path, agent: &mut Running) -> Result<Peer, Failure> {
        let mut peer = Peer::new("agent", connect(path, agent)?, false);
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

    /// One heartbeat there and back; the time from encoding the request to having checked the answer.
    pub(crate) fn round_trip(&mut self) -> Result<Duration, Failure> {
        if self.is_echo && self.channel.in_flight() >= BLOCK {
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
        if self.is_echo {
            Heartbeat::parse(&message.body)
                .context(|| "the echo returned a malformed heartbeat")?;
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

/// Timed round trips on both peers, taking turns by blocks and swapping who goes first each block.
pub(crate) fn round_trips(peers: &mut [Peer; 2], count: usize) -> Result<(), Failure> {
    for peer in peers.iter_mut() {
        peer.run(WARM_UP, false)?;
    }
    for (block, done) in (0..count).step_by(BLOCK).enumerate() {
        let order = if block % 2 == 0 { [0, 1] } else { [1, 0] };
        for index in order {
            peers[index].run((count - done).min(BLOCK), true)?;
        }
    }
    Ok(())
}
