//! One enabled service at run time: its dialler or listener state, its links, and the logging of what
//! happens to them. The poll loop in the parent module drives these.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use log::{info, log, warn, Level};
use nix::errno::Errno;
use nix::poll::PollFlags;

use super::quiet::{Kind, Quiet};
use crate::config::{Endpoint, ServiceConfig};
use hvproto::service::{Channel, ChannelState, Event, LinkId, Logic};
use hvproto::wire::Message;
use hvtransport::backoff::Backoff;
use hvtransport::peer::{self, PeerRules};
use hvtransport::socket::{self, Dial, Peer, CONNECT_TIMEOUT};
use hvtransport::{Address, Closed, Connection};

/// Reads per link when stopping: 64 reads of up to 16 KiB each, more than a socket buffer holds.
const FINAL_READS: usize = 64;

/// A connected channel.
pub(super) struct Link {
    pub(super) connection: Connection,
    pub(super) channel: Channel,
    pub(super) peer: String,
    pub(super) since: Instant,
    /// When bytes last arrived: a partial message older than the idle timeout drops the link.
    last_input: Instant,
    idle_timeout: Duration,
    /// Set when the link must be dropped; swept after each poll round.
    pub(super) closed: Option<Closed>,
}

impl Link {
    pub(super) fn new(
        fd: OwnedFd,
        config: &ServiceConfig,
        id: LinkId,
        peer: String,
        now: Instant,
    ) -> Link {
        Link {
            connection: Connection::new(fd),
            channel: Channel::new(config.kind(), id),
            peer,
            since: now,
            last_input: now,
            idle_timeout: config.limits.idle_timeout,
            closed: None,
        }
    }

    /// When a partial message will have waited too long; none while no message is half received.
    pub(super) fn idle_deadline(&self) -> Option<Instant> {
        (self.closed.is_none() && self.connection.partial_input() > 0)
            .then(|| self.last_input + self.idle_timeout)
    }

    /// Drops the link if its partial message has waited past the idle timeout.
    pub(super) fn check_idle(&mut self, now: Instant) {
        if self.idle_deadline().is_some_and(|at| at <= now) {
            self.closed = Some(Closed::Idle(self.idle_timeout));
        }
    }

    /// Reads what is there, answers it (each answer written into the connection's output queue as the
    /// channel handles its request) and sends what can be sent; returns how many messages were read.
    pub(super) fn read_and_answer(
        &mut self,
        quiet: &mut Quiet,
        logic: &mut dyn Logic,
        now: Instant,
    ) -> usize {
        self.last_input = now;
        let (channel, peer) = (&mut self.channel, &self.peer);
        let count = self
            .connection
            .receive_and_answer(|message, out| {
                let event = channel.handle(message, logic, now, out);
                log_event(quiet, peer, &event, now);
            })
            .unwrap_or_else(|closed| {
                self.closed = Some(closed);
                0
            });
        self.flush();
        logic.after_send(now);
        count
    }

    /// Queues a message and sends what the socket takes.
    pub(super) fn send(&mut self, message: &Message) {
        if let Err(closed) = self.connection.queue(message) {
            self.closed.get_or_insert(closed);
        }
        self.flush();
    }

    /// Sends what is queued. A link about to close for EOF or garbage still gets the answers to the whole
    /// requests that came before, as far as the socket takes them now.
    pub(super) fn flush(&mut self) {
        match &self.closed {
            None => {
                if let Err(closed) = self.connection.flush() {
                    self.closed = Some(closed);
                }
            }
            Some(Closed::Eof) | Some(Closed::Garbage(_)) => {
                let _ = self.connection.flush();
            }
            Some(Closed::Error(_)) | Some(Closed::Stuck) | Some(Closed::Idle(_)) => {}
        }
    }

    /// Whether queued bytes can still go out (the link is open, or closing only because the peer stopped
    /// sending).
    pub(super) fn can_still_send(&self) -> bool {
        matches!(
            self.closed,
            None | Some(Closed::Eof) | Some(Closed::Garbage(_))
        )
    }

    pub(super) fn interest(&self) -> PollFlags {
        if self.connection.wants_write() {
            PollFlags::POLLIN | PollFlags::POLLOUT
        } else {
            PollFlags::POLLIN
        }
    }
}

/// Logs what a message did; the refusals and stray responses a peer can repeat at will go through `quiet`.
fn log_event(quiet: &mut Quiet, peer: &str, event: &Event, now: Instant) {
    match event {
        Event::Negotiated { framework, message } => info!(
            "{}: negotiated framework {framework}, message version {message} with {peer}",
            quiet.service_name()
        ),
        Event::NoCommonVersion {
            offered_frameworks,
            offered_messages,
        } => warn!(
            "{}: {peer} offered no version we speak (frameworks {offered_frameworks:?}, messages \
             {offered_messages:?}); answered with counts 0",
            quiet.service_name()
        ),
        Event::Served { .. } | Event::Deferred { .. } | Event::ResponseTaken { .. } => {}
        Event::Refused {
            msgtype,
            status,
            why,
        } => quiet.log(Kind::RefusedRequest, now, || {
            format!("refused a {msgtype} request from {peer} with {status}: {why}")
        }),
        Event::UnexpectedResponse {
            msgtype,
            transaction_id,
        } => quiet.log(Kind::UnexpectedResponse, now, || {
            format!("dropped a {msgtype} response (transaction {transaction_id}) nobody asked for")
        }),
    }
}

/// Where a dialling service stands.
pub(super) enum DialState {
    Waiting { retry_at: Instant },
    Connecting { fd: OwnedFd, deadline: Instant },
    Up(Box<Link>),
}

/// Where a listening service stands.
pub(super) struct Listening {
    pub(super) listener: Option<OwnedFd>,
    pub(super) retry_at: Option<Instant>,
    pub(super) links: Vec<Link>,
    /// Out of descriptors or memory: the listener is not watched until then (or until a link closes).
    pub(super) paused_until: Option<Instant>,
    /// The next pause, doubled per pause in a row; `None` outside an episode of pauses.
    next_pause: Option<Duration>,
}

/// Accepts per wake-up: a flood of connections cannot hold the loop.
const ACCEPTS_PER_WAKE: usize = 64;
/// The first pause after EMFILE, ENFILE, ENOBUFS or ENOMEM, doubled per pause in a row up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// What an accept(2) error means for the listener.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum AcceptError {
    /// The connection went away or was refused by the kernel: try the next one.
    Connection,
    /// Out of descriptors or memory: stop accepting for a while.
    Exhausted,
    /// Anything else: the listener itself is broken and is reopened.
    Listener,
}

pub(super) fn classify(error: Errno) -> AcceptError {
    match error {
        Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM => AcceptError::Exhausted,
        // accept(2): errors of the pending connection, to be treated like EAGAIN and retried.
        Errno::ECONNABORTED
        | Errno::EINTR
        | Errno::EPROTO
        | Errno::EPERM
        | Errno::ENETDOWN
        | Errno::ENOPROTOOPT
        | Errno::EHOSTDOWN
        | Errno::ENONET
        | Errno::EHOSTUNREACH
        | Errno::EOPNOTSUPP
        | Errno::ENETUNREACH => AcceptError::Connection,
        _ => AcceptError::Listener,
    }
}

pub(super) enum Role {
    Dialer(DialState),
    Listener(Listening),
}

impl Role {
    /// The links that are up: a dialler's one, or a listener's.
    pub(super) fn links(&self) -> impl Iterator<Item = &Link> {
        let (one, many): (Option<&Link>, &[Link]) = match self {
            Role::Dialer(DialState::Up(link)) => (Some(&**link), &[]),
            Role::Dialer(_) => (None, &[]),
            Role::Listener(listening) => (None, &listening.links),
        };
        one.into_iter().chain(many)
    }

    /// The links that are up, to act on.
    pub(super) fn links_mut(&mut self) -> impl Iterator<Item = &mut Link> {
        let (one, many): (Option<&mut Link>, &mut [Link]) = match self {
            Role::Dialer(DialState::Up(link)) => (Some(&mut **link), &mut []),
            Role::Dialer(_) => (None, &mut []),
            Role::Listener(listening) => (None, &mut listening.links),
        };
        one.into_iter().chain(many)
    }
}

/// One enabled service as the loop runs it: its listener or dialer, its links and its logic.
pub(super) struct RunningService {
    pub(super) config: ServiceConfig,
    pub(super) logic: Box<dyn Logic>,
    pub(super) role: Role,
    /// The id the next link gets.
    next_link: LinkId,
    pub(super) backoff: Backoff,
    /// Failed attempts since the last success: the first is logged loudly, the rest quietly.
    pub(super) failures: u32,
    /// Refusals and stray responses, counted rather than logged one by one.
    pub(super) quiet: Quiet,
}

impl RunningService {
    pub(super) fn new(
        config: ServiceConfig,
        logic: Box<dyn Logic>,
        now: Instant,
        seed: u64,
    ) -> RunningService {
        let role = match config.endpoint {
            Endpoint::Connect(_) => Role::Dialer(DialState::Waiting { retry_at: now }),
            Endpoint::Listen(_) => Role::Listener(Listening {
                listener: None,
                retry_at: Some(now),
                links: Vec::new(),
                paused_until: None,
                next_pause: None,
            }),
        };
        let limits = config.limits;
        let quiet = Quiet::new(config.kind().name());
        RunningService {
            config,
            logic,
            role,
            next_link: 1,
            backoff: Backoff::with_limits(seed, limits.redial_min, limits.redial_max),
            failures: 0,
            quiet,
        }
    }

    pub(super) fn name(&self) -> &'static str {
        self.config.kind().name()
    }

    pub(super) fn address(&self) -> &Address {
        self.config.endpoint.address()
    }

    /// Logs a failed attempt (loudly the first time, with what to check) and returns when to retry.
    pub(super) fn failed(
        &mut self,
        what: Attempt,
        error: &dyn std::fmt::Display,
        now: Instant,
    ) -> Instant {
        let delay = self.backoff.next_delay();
        let level = if self.failures == 0 {
            Level::Warn
        } else {
            Level::Debug
        };
        self.failures += 1;
        log!(
            level,
            "{}: cannot {} {}: {error}; {}; retrying in {} ms (backoff up to 30 s, further failures logged at debug)",
            self.name(),
            what.verb(),
            self.address(),
            hint(self.address(), what),
            delay.as_millis()
        );
        now + delay
    }

    fn new_link_id(&mut self) -> LinkId {
        let id = self.next_link;
        self.next_link += 1;
        id
    }

    /// The links that are up.
    pub(super) fn links_mut(&mut self) -> impl Iterator<Item = &mut Link> {
        self.role.links_mut()
    }

    /// Runs the logic's timers and sends what it wants sent on the links it names.
    fn run_logic_timers(&mut self, now: Instant) {
        if !self.logic.deadline().is_some_and(|at| at <= now) {
            return;
        }
        let mut out = Vec::new();
        self.logic.on_timer(now, &mut out);
        self.send_from_logic(out);
    }

    /// Sends what the logic wants sent, each message on the link it names (gone links are skipped).
    fn send_from_logic(&mut self, out: Vec<(LinkId, Message)>) {
        for (id, mut message) in out {
            if let Some(link) = self.links_mut().find(|link| link.channel.link() == id) {
                // A request carries the versions its link negotiated.
                if let ChannelState::Ready {
                    framework,
                    message: version,
                } = link.channel.state()
                {
                    message.header.framework_version = framework;
                    message.header.message_version = version;
                }
                link.send(&message);
            }
        }
    }

    /// The links that are up, for reading.
    pub(super) fn links(&self) -> impl Iterator<Item = &Link> {
        self.role.links()
    }

    /// On the way out: answers the requests already waiting in the sockets, so a peer loses no answer to a
    /// request it completed before the agent was told to stop. Bounded by work, not time: at most
    /// [`FINAL_READS`] reads per link, which covers everything a socket buffer holds.
    pub(super) fn answer_waiting(&mut self) {
        let logic = &mut *self.logic;
        let quiet = &mut self.quiet;
        for link in self.role.links_mut() {
            for _ in 0..FINAL_READS {
                if link.closed.is_some() || link.read_and_answer(quiet, logic, Instant::now()) == 0
                {
                    break;
                }
            }
        }
        // What the logic put off (a coalesced pool write and its answers) is done now, and answered.
        let mut out = Vec::new();
        self.logic.finishing(Instant::now(), &mut out);
        self.send_from_logic(out);
    }

    /// The descriptor the logic wants watched, if any.
    pub(super) fn logic_fd(&self) -> Option<BorrowedFd<'_>> {
        let watch = self.logic.watched()?;
        let fd = RawFd::try_from(watch.0).ok()?;
        // SAFETY: a logic's edges report the number of a descriptor they keep open until they are next
        // changed (`Watch`); the borrow of `self` keeps the logic, and so its edges, unchanged for as long
        // as the loop holds this.
        Some(unsafe { BorrowedFd::borrow_raw(fd) })
    }

    /// Runs what is due: the logic's timers, idle links, redials, connect time-outs, listener retries.
    pub(super) fn run_timers(&mut self, now: Instant) {
        self.run_logic_timers(now);
        self.quiet.run_timers(now);
        for link in self.links_mut() {
            link.check_idle(now);
        }
        match &mut self.role {
            Role::Dialer(DialState::Waiting { retry_at }) if *retry_at <= now => self.dial(now),
            Role::Dialer(DialState::Connecting { deadline, .. }) if *deadline <= now => {
                let retry_at = self.failed(Attempt::Connect, &Errno::ETIMEDOUT, now);
                self.role = Role::Dialer(DialState::Waiting { retry_at });
            }
            Role::Listener(listening) if listening.paused_until.is_some_and(|at| at <= now) => {
                listening.paused_until = None;
            }
            Role::Listener(listening) if listening.retry_at.is_some_and(|at| at <= now) => {
                match socket::listen(self.config.endpoint.address(), 64) {
                    Ok(fd) => {
                        info!(
                            "{}: listening on {}",
                            self.config.kind(),
                            self.config.endpoint.address()
                        );
                        listening.listener = Some(fd);
                        listening.retry_at = None;
                        self.failures = 0;
                    }
                    Err(error) => {
                        let retry_at = self.failed(Attempt::Listen, &error, now);
                        if let Role::Listener(listening) = &mut self.role {
                            listening.retry_at = Some(retry_at);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    pub(super) fn dial(&mut self, now: Instant) {
        let state = match socket::connect(self.address()) {
            Ok(Dial::Connected(fd)) => self.connected(fd, now),
            Ok(Dial::InProgress(fd)) => DialState::Connecting {
                fd,
                deadline: now + CONNECT_TIMEOUT + Duration::from_secs(1),
            },
            Err(error) => DialState::Waiting {
                retry_at: self.failed(Attempt::Connect, &error, now),
            },
        };
        self.role = Role::Dialer(state);
    }

    /// A connect in progress polled writable (or failed): see how it went.
    pub(super) fn connect_finished(&mut self, now: Instant) {
        let Role::Dialer(DialState::Connecting { fd, .. }) = &self.role else {
            return;
        };
        let state = match socket::finish_connect(fd.as_fd()) {
            Ok(()) => {
                let previous = std::mem::replace(
                    &mut self.role,
                    Role::Dialer(DialState::Waiting { retry_at: now }),
                );
                let Role::Dialer(DialState::Connecting { fd, .. }) = previous else {
                    return;
                };
                self.connected(fd, now)
            }
            Err(error) => DialState::Waiting {
                retry_at: self.failed(Attempt::Connect, &error, now),
            },
        };
        self.role = Role::Dialer(state);
    }

    pub(super) fn connected(&mut self, fd: OwnedFd, now: Instant) -> DialState {
        info!("{}: connected to {}", self.name(), self.address());
        self.failures = 0;
        let peer = self.address().to_string();
        let id = self.new_link_id();
        DialState::Up(Box::new(Link::new(fd, &self.config, id, peer, now)))
    }

    /// The earliest deadline of this service and its logic.
    pub(super) fn deadline(&self) -> Option<Instant> {
        let own = match &self.role {
            Role::Dialer(DialState::Waiting { retry_at }) => Some(*retry_at),
            Role::Dialer(DialState::Connecting { deadline, .. }) => Some(*deadline),
            Role::Dialer(DialState::Up(link)) => link.idle_deadline(),
            Role::Listener(listening) => {
                let idle = listening.links.iter().filter_map(Link::idle_deadline).min();
                earliest(earliest(listening.retry_at, idle), listening.paused_until)
            }
        };
        earliest(earliest(own, self.logic.deadline()), self.quiet.deadline())
    }

    /// Closes links marked closed; a dialler schedules its redial.
    pub(super) fn sweep(&mut self, now: Instant) {
        let name = self.config.kind().name();
        match &mut self.role {
            Role::Dialer(DialState::Up(link)) => {
                if let Some(closed) = link.closed.take() {
                    self.logic.closed(link.channel.link());
                    self.backoff
                        .connection_ended(now.saturating_duration_since(link.since));
                    let delay = self.backoff.next_delay();
                    info!(
                        "{name}: connection to {} closed: {closed}; redialling in {} ms",
                        link.peer,
                        delay.as_millis()
                    );
                    self.role = Role::Dialer(DialState::Waiting {
                        retry_at: now + delay,
                    });
                }
            }
            Role::Listener(listening) => {
                let logic = &mut self.logic;
                let paused = &mut listening.paused_until;
                listening.links.retain_mut(|link| match link.closed.take() {
                    Some(closed) => {
                        // Its descriptor is free again: accept at once rather than at the pause's end.
                        *paused = None;
                        logic.closed(link.channel.link());
                        info!("{name}: connection from {} closed: {closed}", link.peer);
                        false
                    }
                    None => true,
                })
            }
            _ => {}
        }
    }

    /// Accepts every waiting connection, refusing peers the config does not allow and any beyond the cap.
    pub(super) fn accept_all(&mut self, now: Instant) {
        let Role::Listener(listening) = &mut self.role else {
            return;
        };
        let Some(listener) = &listening.listener else {
            return;
        };
        for _ in 0..ACCEPTS_PER_WAKE {
            match socket::accept(listener.as_fd()) {
                Ok(Some((fd, peer))) => {
                    if listening.next_pause.take().is_some() {
                        info!("{}: accepting connections again", self.config.kind());
                    }
                    let name = self.config.kind().name();
                    let rules = PeerRules {
                        cids: &self.config.allowed_cids,
                        uids: &self.config.allowed_uids,
                        own_uid: peer::own_uid(),
                    };
                    if let Some(why) = peer::refusal(&peer, rules) {
                        self.quiet.log(Kind::RefusedPeer, now, || {
                            format!(
                                "refused {peer}: {why}; allowed_cids and allowed_uids in [{name}] say who may \
                                 connect"
                            )
                        });
                        continue;
                    }
                    let max = self.config.max_connections;
                    if listening.links.len() >= max {
                        self.quiet.log(Kind::PeerOverCap, now, || {
                            format!("refused {peer}: {max} connections are open already (max_connections)")
                        });
                        continue;
                    }
                    info!("{name}: accepted {peer}");
                    let label = match peer {
                        Peer::Unix { .. } => format!("{} peer", self.config.endpoint.address()),
                        other => other.to_string(),
                    };
                    let id = self.next_link;
                    self.next_link += 1;
                    listening
                        .links
                        .push(Link::new(fd, &self.config, id, label, now));
                }
                Ok(None) => break,
                Err(error) => match classify(error) {
                    AcceptError::Connection => continue,
                    AcceptError::Exhausted => {
                        let pause = listening.next_pause.unwrap_or(FIRST_PAUSE);
                        let level = if pause == FIRST_PAUSE {
                            Level::Warn
                        } else {
                            Level::Debug
                        };
                        log!(
                            level,
                            "{}: cannot accept: {error}; not accepting for {} ms (doubling up to {} s while it \
                             lasts, logged at debug), or until a connection closes; check the open-file limit \
                             (LimitNOFILE=) and max_connections",
                            self.config.kind(),
                            pause.as_millis(),
                            MAX_PAUSE.as_secs()
                        );
                        listening.paused_until = Some(now + pause);
                        listening.next_pause = Some((pause * 2).min(MAX_PAUSE));
                        return;
                    }
                    AcceptError::Listener => {
                        listening.listener = None;
                        let retry_at = self.failed(Attempt::Accept, &error, now);
                        if let Role::Listener(listening) = &mut self.role {
                            listening.retry_at = Some(retry_at);
                        }
                        return;
                    }
                },
            }
        }
    }
}

impl Drop for RunningService {
    /// Logs what is still counted, and a Unix listener removes its socket file, so the next start finds no
    /// stale one.
    fn drop(&mut self) {
        self.quiet.flush(Instant::now());
        if let (
            Role::Listener(Listening {
                listener: Some(_), ..
            }),
            Address::Unix(path),
        ) = (&self.role, self.config.endpoint.address())
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What a service tried when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Attempt {
    Connect,
    Listen,
    Accept,
}

impl Attempt {
    /// The words of the log line: "cannot connect to ADDRESS".
    fn verb(self) -> &'static str {
        match self {
            Attempt::Connect => "connect to",
            Attempt::Listen => "listen on",
            Attempt::Accept => "accept on",
        }
    }
}

/// What to check after a failed attempt, in words a user can act on.
fn hint(address: &Address, what: Attempt) -> String {
    match address {
        Address::Vsock { port, .. } if what == Attempt::Connect => format!(
            "is the host service running, and on Hyper-V is service GUID {} registered under \
             HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\Virtualization\\GuestCommunicationServices? \
             Is the hv_sock (or vmw_vsock_virtio_transport) module loaded?",
            hvproto::guid::ServiceId::from_port(*port)
        ),
        Address::Vsock { .. } => {
            "is AF_VSOCK available (module hv_sock on Hyper-V, vmw_vsock_virtio_transport on KVM) and the port free?"
                .to_string()
        }
        Address::Unix(path) if what == Attempt::Connect => {
            format!("is hvhost (or another host peer) listening at {}?", path.display())
        }
        Address::Unix(path) => format!("can this user create {}?", path.display()),
        Address::Hybrid { .. } => "hybrid addresses are for hvhost".to_string(),
    }
}

#[cfg(test)]
mod tests;
