//! `hvhost serve`: wait for agents to dial in, negotiate with each, and serve one service in one poll loop:
//! heartbeat each every interval, printing every round trip; or time sync, sending a SYNC at once and a
//! SAMPLE every sample interval and answering the agent's probes, printing one line for each.
//!
//! `clock_offset` makes it a host whose clock is off by that much: it shifts the times it reports, never
//! the real clock.

use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use crate::client::{heartbeat_line, say, PeerError, RoundTrips};
use crate::net::{self, Address, Connection, Interest, Listener, Ready, Watched};
use hvproto::service::host::{HostChannel, HostEvent};
use hvproto::service::ServiceKind;
use hvproto::wire::timesync::{unix_nanos_to_ticks, TimeSyncData, TimeSyncFlags};
use hvproto::wire::{Message, MessageType};

/// What `hvhost serve` was asked to do.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Pause between an answer and the next heartbeat; zero sends back to back.
    pub interval: Duration,
    /// Stop after this many heartbeats were answered on one connection.
    pub count: Option<u64>,
    /// Print only negotiations and summaries, not every heartbeat.
    pub quiet: bool,
    /// The service offered: heartbeat or time sync.
    pub service: ServiceKind,
    /// Time sync: pause between SAMPLEs.
    pub sample_interval: Duration,
    /// Time sync: seconds added to the host's clock in everything it reports.
    pub clock_offset: f64,
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            interval: Duration::from_secs(1),
            count: None,
            quiet: false,
            service: ServiceKind::Heartbeat,
            sample_interval: Duration::from_secs(5),
            clock_offset: 0.0,
        }
    }
}

/// What a time-sync host saw of one agent.
#[derive(Debug, Default)]
struct TimeStats {
    /// Samples sent; the first is a SYNC.
    sent: u64,
    samples: u64,
    probes: u64,
    /// Host time − the guest's time at sending, µs, of the probes (the guest's error plus the one-way delay).
    behind_us: Vec<f64>,
}

impl TimeStats {
    /// `done probes=N samples=M p50_behind_us=X min_behind_us=Y` over the last ten probes.
    fn summary(&self) -> String {
        let mut last: Vec<f64> = self.behind_us.iter().rev().take(10).copied().collect();
        last.sort_by(f64::total_cmp);
        let p50 = last.get(last.len() / 2).copied().unwrap_or(0.0);
        let min = last.first().copied().unwrap_or(0.0);
        format!(
            "done probes={} samples={} p50_behind_us={p50:.1} min_behind_us={min:.1}",
            self.probes, self.samples
        )
    }
}

/// One guest's agent connected to the server, as the host side holds it.
struct ServedGuest {
    connection: Connection,
    channel: HostChannel,
    peer: String,
    /// When to send the next heartbeat; `None` while one is out or before negotiation.
    next_at: Option<Instant>,
    trips: RoundTrips,
    time: TimeStats,
    closed: Option<String>,
    /// How long after negotiation the first heartbeat goes out; see [`first_heartbeat_delay`].
    first_delay: Duration,
}

impl ServedGuest {
    fn interest(&self) -> Interest {
        Interest {
            read: true,
            write: self.connection.wants_write(),
        }
    }

    fn summary(&self, service: ServiceKind) -> String {
        match service {
            ServiceKind::TimeSync => self.time.summary(),
            _ => self.trips.summary(),
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
    let resolved = net::resolve(address)
        .map_err(|error| PeerError::Connect(format!("cannot listen on {address}: {error}")))?;
    let listener = net::listen(&resolved).map_err(|error| {
        PeerError::Connect(format!(
            "cannot listen on {address}: {error}; is another hvhost using it?"
        ))
    })?;
    say(out, &format!("listening on {address}"));
    let mut agents: Vec<ServedGuest> = Vec::new();
    let mut inbox = Vec::new();
    let slack = heartbeat_slack(options.interval);
    loop {
        let now = Instant::now();
        for agent in agents.iter_mut() {
            if agent.next_at.is_some_and(|at| at <= now + slack) {
                agent.next_at = None;
                send_next(agent, options, now);
            }
        }
        let timeout = agents
            .iter()
            .filter_map(|agent| agent.next_at)
            .min()
            .map(|at| at.saturating_duration_since(Instant::now()));
        let mut watched = vec![Watched::new(
            net::listener_handle(&listener),
            Interest::READ,
        )];
        watched.extend(
            agents
                .iter()
                .map(|agent| Watched::new(agent.connection.fd(), agent.interest())),
        );
        net::poll(&mut watched, timeout).map_err(PeerError::Connect)?;
        let events: Vec<Ready> = watched.iter().map(|one| one.ready).collect();
        drop(watched);
        if events[0].any() {
            accept_agents(&listener, &mut agents, options, out);
        }
        for (agent, ready) in agents.iter_mut().zip(&events[1..]) {
            if !ready.any() {
                continue;
            }
            if let Err(closed) = agent.connection.flush() {
                agent.closed = Some(closed.to_string());
                continue;
            }
            if !ready.read && !ready.hangup {
                continue;
            }
            if let Err(closed) = agent.connection.receive(&mut inbox) {
                agent.closed = Some(closed.to_string());
            }
            for message in inbox.drain(..) {
                if handle_message(agent, &message, options, out)? {
                    say(out, &agent.summary(options.service));
                    return Ok(());
                }
            }
        }
        agents.retain(|agent| match &agent.closed {
            Some(why) => {
                say(out, &format!("disconnected {}: {why}", agent.peer));
                say(out, &agent.summary(options.service));
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
    listener: &Listener,
    agents: &mut Vec<ServedGuest>,
    options: &ServeOptions,
    out: &mut dyn Write,
) {
    while let Some((fd, peer)) = net::accept(listener) {
        let peer = peer.unwrap_or_else(|| format!("agent #{}", agents.len() + 1));
        say(out, &format!("connected {peer}"));
        let channel = HostChannel::new(options.service);
        let offer = channel.offer();
        let mut agent = ServedGuest {
            connection: Connection::new(fd),
            channel,
            peer,
            next_at: None,
            // hvhost may serve an agent for months: its summary keeps 256 samples (2 KiB), not every one.
            trips: RoundTrips::bounded(256),
            time: TimeStats::default(),
            closed: None,
            // Time sync starts with a SYNC right after negotiation; heartbeats are spread over the interval.
            first_delay: match options.service {
                ServiceKind::TimeSync => Duration::ZERO,
                _ => first_heartbeat_delay(agents.len(), options.interval),
            },
        };
        agent.send(&offer);
        agents.push(agent);
    }
}

/// The host's clock as it reports it: the system's plus `--clock-offset`, in ns since the Unix epoch.
fn host_now_ns(options: &ServeOptions) -> i128 {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as i128);
    now + (options.clock_offset * 1e9).round() as i128
}

/// Sends what is due: the next heartbeat, or the next time sample (the first is a SYNC).
fn send_next(agent: &mut ServedGuest, options: &ServeOptions, now: Instant) {
    match options.service {
        ServiceKind::TimeSync => {
            let flags = if agent.time.sent == 0 {
                TimeSyncFlags::SYNC
            } else {
                TimeSyncFlags::SAMPLE
            };
            let parent = unix_nanos_to_ticks(host_now_ns(options));
            let request = agent.channel.time_sample(flags, parent, now);
            agent.time.sent += 1;
            agent.send(&request);
            agent.next_at = Some(now + options.sample_interval);
        }
        _ => {
            let request = agent.channel.heartbeat(now);
            agent.send(&request);
        }
    }
}

/// Handles one message from an agent; true when `--count` is reached.
fn handle_message(
    agent: &mut ServedGuest,
    message: &Message,
    options: &ServeOptions,
    out: &mut dyn Write,
) -> Result<bool, PeerError> {
    if message.header.flags.is_response() {
        return handle_answer(agent, message, options, out);
    }
    if options.service == ServiceKind::TimeSync && message.header.msgtype == MessageType::TIMESYNC {
        return answer_probe(agent, message, options, out);
    }
    let reply = message.reply(hvproto::wire::Status::FAIL, message.body.clone());
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
    Ok(false)
}

/// Answers a guest's probe with the host's time; true when `--count` probes were answered.
fn answer_probe(
    agent: &mut ServedGuest,
    probe: &Message,
    options: &ServeOptions,
    out: &mut dyn Write,
) -> Result<bool, PeerError> {
    let received = host_now_ns(options);
    let sent = TimeSyncData::parse(&probe.body)
        .map_err(|error| PeerError::Protocol(hvproto::service::host::HostError::Body(error)))?;
    let answered = host_now_ns(options);
    let held = ((answered - received).max(0) / 100) as u64;
    let reply = agent
        .channel
        .answer_probe(probe, unix_nanos_to_ticks(answered), held)
        .map_err(PeerError::Protocol)?;
    agent.send(&reply);
    let behind_us =
        (received - hvproto::wire::timesync::ticks_to_unix_nanos(sent.child_time)) as f64 / 1e3;
    agent.time.probes += 1;
    agent.time.behind_us.push(behind_us);
    if agent.time.behind_us.len() > 1000 {
        agent.time.behind_us.drain(..500);
    }
    if !options.quiet {
        say(
            out,
            &format!(
                "probe id={} host_minus_guest_us={behind_us:.1} held_us={:.1}",
                probe.header.transaction_id,
                held as f64 / 10.0
            ),
        );
    }
    Ok(options
        .count
        .is_some_and(|count| agent.time.probes >= count))
}

/// Handles one answer; true when `--count` is reached.
fn handle_answer(
    agent: &mut ServedGuest,
    message: &Message,
    options: &ServeOptions,
    out: &mut dyn Write,
) -> Result<bool, PeerError> {
    let now = Instant::now();
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
        Ok(HostEvent::TimeSampleAnswered { number, round_trip }) => {
            agent.time.samples += 1;
            if !options.quiet {
                let what = if number == 0 { "SYNC" } else { "SAMPLE" };
                say(
                    out,
                    &format!(
                        "sample n={number} flags={what} rtt_us={:.1}",
                        round_trip.as_secs_f64() * 1e6
                    ),
                );
            }
        }
        Ok(HostEvent::Answered { .. }) => {
            return Err(PeerError::Protocol(
                hvproto::service::host::HostError::Unexpected(
                    "an answer to a request hvhost serve never sends".to_string(),
                ),
            ))
        }
        Err(error) => return Err(PeerError::Protocol(error)),
    }
    Ok(false)
}
