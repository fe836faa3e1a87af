//! `hvhost serve`: wait for agents to dial in, negotiate with each, and heartbeat each every interval, in one
//! poll loop, printing negotiated versions and every round trip.

use std::io::Write;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::host_peer::{heartbeat_line, say, PeerError, RoundTrips};
use crate::service::host::{HostChannel, HostEvent};
use crate::service::ServiceKind;
use crate::transport::socket;
use crate::transport::{Address, Connection};
use crate::wire::Message;

/// What `hvhost serve` was asked to do.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Pause between an answer and the next heartbeat; zero sends back to back.
    pub interval: Duration,
    /// Stop after this many heartbeats were answered on one connection.
    pub count: Option<u64>,
    /// Print only negotiations and summaries, not every heartbeat.
    pub quiet: bool,
}

/// One agent connected to the server.
struct Agent {
    connection: Connection,
    channel: HostChannel,
    peer: String,
    /// When to send the next heartbeat; `None` while one is out or before negotiation.
    next_at: Option<Instant>,
    trips: RoundTrips,
    closed: Option<String>,
    /// How long after negotiation the first heartbeat goes out; see [`first_heartbeat_delay`].
    first_delay: Duration,
}

impl Agent {
    fn interest(&self) -> PollFlags {
        if self.connection.wants_write() {
            PollFlags::POLLIN | PollFlags::POLLOUT
        } else {
            PollFlags::POLLIN
        }
    }

    fn send(&mut self, message: &Message) {
        let result = self
            .connection
            .queue(message)
            .and_then(|()| self.connection.flush());
        if let Err(closed) = result {
            self.closed = Some(closed.to_string());
        }
    }
}

/// Runs the server until `--count` is reached (Ok) or an agent answers wrongly (Err).
pub fn serve(
    address: &Address,
    options: &ServeOptions,
    out: &mut dyn Write,
) -> Result<(), PeerError> {
    let listener = socket::listen(address, 1024).map_err(|error| {
        PeerError::Connect(format!(
            "cannot listen on {address}: {error}; is another hvhost using it?"
        ))
    })?;
    say(out, &format!("listening on {address}"));
    let mut agents: Vec<Agent> = Vec::new();
    let mut inbox = Vec::new();
    let slack = heartbeat_slack(options.interval);
    loop {
        let now = Instant::now();
        for agent in agents.iter_mut() {
            if agent.next_at.is_some_and(|at| at <= now + slack) {
                agent.next_at = None;
                let request = agent.channel.heartbeat(now);
                agent.send(&request);
            }
        }
        let timeout = agents
            .iter()
            .filter_map(|agent| agent.next_at)
            .min()
            .map(|at| at.saturating_duration_since(Instant::now()));
        let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        fds.extend(
            agents
                .iter()
                .map(|agent| PollFd::new(agent.connection.fd(), agent.interest())),
        );
        let millis = timeout.map_or(-1, |left| {
            left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32
        });
        match poll(
            &mut fds,
            PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(error) => return Err(PeerError::Connect(format!("poll failed: {error}"))),
        }
        let events: Vec<PollFlags> = fds
            .iter()
            .map(|fd| fd.revents().unwrap_or(PollFlags::empty()))
            .collect();
        drop(fds);
        if !events[0].is_empty() {
            accept_agents(&listener, &mut agents, options.interval, out);
        }
        for (agent, ready) in agents.iter_mut().zip(&events[1..]) {
            if ready.is_empty() {
                continue;
            }
            if let Err(closed) = agent.connection.flush() {
                agent.closed = Some(closed.to_string());
                continue;
            }
            if !ready.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                continue;
            }
            if let Err(closed) = agent.connection.receive(&mut inbox) {
                agent.closed = Some(closed.to_string());
            }
            for message in inbox.drain(..) {
                if handle_answer(agent, &message, options, out)? {
                    say(out, &agent.trips.summary());
                    return Ok(());
                }
            }
        }
        agents.retain(|agent| match &agent.closed {
            Some(why) => {
                say(out, &format!("disconnected {}: {why}", agent.peer));
                say(out, &agent.trips.summary());
                false
            }
            None => true,
        });
    }
}

/// How early a heartbeat may go out: 0.3% of the interval, at most 3 ms. Each wake-up then sends every
/// heartbeat due within the slack, instead of waking once per agent. hvbench hostscale, 1,000 agents on a
/// quiet machine: no slack 21% of a core, p99 1.75 ms; 3 ms 10.5%, p99 1.74 ms; 10 ms 6.5%, p99 2.4 ms
/// (and 5-6 ms on a busy one, answers queueing behind batches of ten).
fn heartbeat_slack(interval: Duration) -> Duration {
    (interval / 300).min(Duration::from_millis(3))
}

/// Where in the interval the first heartbeat of the agent accepted as number `serial` (from 0) goes. Agents
/// that connect together, as all of a host's guests do when hvhost restarts, are spread evenly over the
/// interval by the golden ratio instead of being heartbeated at one instant: a burst of 1,000 requests
/// queues each answer behind the others (p99 15 ms at 1,000 agents before, hvbench hostscale).
fn first_heartbeat_delay(serial: usize, interval: Duration) -> Duration {
    const GOLDEN_FRACTION: f64 = 0.618_033_988_749_895;
    interval.mul_f64((serial as f64 * GOLDEN_FRACTION).fract())
}

fn accept_agents(
    listener: &std::os::fd::OwnedFd,
    agents: &mut Vec<Agent>,
    interval: Duration,
    out: &mut dyn Write,
) {
    while let Ok(Some((fd, peer))) = socket::accept(listener.as_fd()) {
        let peer = match peer {
            socket::Peer::Unix => format!("agent #{}", agents.len() + 1),
            other => other.to_string(),
        };
        say(out, &format!("connected {peer}"));
        let channel = HostChannel::new(ServiceKind::Heartbeat);
        let offer = channel.offer();
        let mut agent = Agent {
            connection: Connection::new(fd),
            channel,
            peer,
            next_at: None,
            // hvhost may serve an agent for months: its summary keeps 256 samples (2 KiB), not every one.
            trips: RoundTrips::bounded(256),
            closed: None,
            first_delay: first_heartbeat_delay(agents.len(), interval),
        };
        agent.send(&offer);
        agents.push(agent);
    }
}

/// Handles one answer; true when `--count` is reached.
fn handle_answer(
    agent: &mut Agent,
    message: &Message,
    options: &ServeOptions,
    out: &mut dyn Write,
) -> Result<bool, PeerError> {
    let now = Instant::now();
    if !message.header.flags.is_response() {
        let reply = message.reply(crate::wire::Status::FAIL, message.body.clone());
        if message.header.flags.expects_answer() {
            agent.send(&reply);
        }
        say(
            out,
            &format!(
                "ignored a {} request from {}",
                message.header.msgtype, agent.peer
            ),
        );
        return Ok(false);
    }
    match agent.channel.handle(message, now) {
        Ok(HostEvent::Negotiated { framework, message }) => {
            say(
                out,
                &format!("negotiated framework={framework} message={message}"),
            );
            agent.next_at = Some(now + agent.first_delay);
        }
        Ok(HostEvent::HeartbeatAnswered {
            seq_num,
            round_trip,
            state,
        }) => {
            agent.trips.record(round_trip);
            if !options.quiet {
                say(out, &heartbeat_line(seq_num, round_trip, state));
            }
            if options
                .count
                .is_some_and(|count| agent.trips.count() as u64 >= count)
            {
                return Ok(true);
            }
            agent.next_at = Some(now + options.interval);
        }
        Err(error) => return Err(PeerError::Protocol(error)),
    }
    Ok(false)
}
