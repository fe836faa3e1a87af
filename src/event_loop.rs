//! The agent's one poll(2) loop: dials and listens for each enabled service, feeds bytes to the channels,
//! sends their replies, paces redials, and handles SIGTERM/SIGINT (exit) and SIGHUP (reload).
//!
//! The poll timeout is the nearest deadline (a redial or a connect time-out); with every service connected
//! and nothing due it is infinite, so an idle agent is never woken.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{debug, error, info, log, warn, Level};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::config::{self, Config, Endpoint, ServiceConfig};
use crate::service::{Channel, Event};
use crate::transport::backoff::Backoff;
use crate::transport::socket::{self, Dial, Peer, CONNECT_TIMEOUT};
use crate::transport::{Address, Closed, Connection};
use crate::wire::Message;

/// Most connections one listening service keeps at once; more are accepted and closed at once.
pub const MAX_CONNECTIONS: usize = 64;

/// A connected channel.
struct Link {
    connection: Connection,
    channel: Channel,
    peer: String,
    since: Instant,
    /// Set when the link must be dropped; swept after each poll round.
    closed: Option<Closed>,
}

impl Link {
    fn new(fd: OwnedFd, config: &ServiceConfig, peer: String, now: Instant) -> Link {
        Link {
            connection: Connection::new(fd),
            channel: Channel::new(config.kind),
            peer,
            since: now,
            closed: None,
        }
    }

    /// Reads what is there, answers it and sends what can be sent.
    fn service(&mut self, kind: &str, inbox: &mut Vec<Message>, replies: &mut Vec<Message>) {
        if let Err(closed) = self.connection.receive(inbox) {
            self.closed = Some(closed);
        }
        for message in inbox.drain(..) {
            let event = self.channel.handle(&message, replies);
            log_event(kind, &self.peer, &event);
        }
        for reply in replies.drain(..) {
            if let Err(closed) = self.connection.queue(&reply) {
                self.closed.get_or_insert(closed);
            }
        }
        self.flush();
    }

    fn flush(&mut self) {
        if self.closed.is_none() {
            if let Err(closed) = self.connection.flush() {
                self.closed = Some(closed);
            }
        }
    }

    fn interest(&self) -> PollFlags {
        if self.connection.wants_write() {
            PollFlags::POLLIN | PollFlags::POLLOUT
        } else {
            PollFlags::POLLIN
        }
    }
}

fn log_event(kind: &str, peer: &str, event: &Event) {
    match event {
        Event::Negotiated { framework, message } => {
            info!("{kind}: negotiated framework {framework}, message version {message} with {peer}")
        }
        Event::NoCommonVersion {
            offered_frameworks,
            offered_messages,
        } => warn!(
            "{kind}: {peer} offered no version we speak (frameworks {offered_frameworks:?}, messages \
             {offered_messages:?}); answered with counts 0"
        ),
        Event::HeartbeatAnswered { seq_num } => debug!("{kind}: heartbeat {seq_num} answered"),
        Event::Refused {
            msgtype,
            status,
            why,
        } => info!("{kind}: refused a {msgtype} request from {peer} with {status}: {why}"),
        Event::UnexpectedResponse {
            msgtype,
            transaction_id,
        } => debug!(
            "{kind}: dropped a {msgtype} response (transaction {transaction_id}) nobody asked for"
        ),
    }
}

/// Where a dialling service stands.
enum DialState {
    Waiting { retry_at: Instant },
    Connecting { fd: OwnedFd, deadline: Instant },
    Up(Box<Link>),
}

/// Where a listening service stands.
struct Listening {
    listener: Option<OwnedFd>,
    retry_at: Option<Instant>,
    links: Vec<Link>,
}

enum Role {
    Dialer(DialState),
    Listener(Listening),
}

/// One enabled service at run time.
struct Service {
    config: ServiceConfig,
    role: Role,
    backoff: Backoff,
    /// Failed attempts since the last success: the first is logged loudly, the rest quietly.
    failures: u32,
}

impl Service {
    fn new(config: ServiceConfig, now: Instant, seed: u64) -> Service {
        let role = match config.endpoint {
            Endpoint::Connect(_) => Role::Dialer(DialState::Waiting { retry_at: now }),
            Endpoint::Listen(_) => Role::Listener(Listening {
                listener: None,
                retry_at: Some(now),
                links: Vec::new(),
            }),
        };
        Service {
            config,
            role,
            backoff: Backoff::new(seed),
            failures: 0,
        }
    }

    fn name(&self) -> &'static str {
        self.config.kind.name()
    }

    fn address(&self) -> &Address {
        self.config.endpoint.address()
    }

    /// Logs a failed attempt (loudly the first time, with what to check) and returns when to retry.
    fn failed(&mut self, what: &str, error: &dyn std::fmt::Display, now: Instant) -> Instant {
        let delay = self.backoff.next_delay();
        let level = if self.failures == 0 {
            Level::Warn
        } else {
            Level::Debug
        };
        self.failures += 1;
        log!(
            level,
            "{}: cannot {what} {}: {error}; {}; retrying in {} ms (backoff up to 30 s, further failures logged at debug)",
            self.name(),
            self.address(),
            hint(self.address(), what),
            delay.as_millis()
        );
        now + delay
    }

    /// Runs what is due: redials, connect time-outs, listener retries.
    fn run_timers(&mut self, now: Instant) {
        match &mut self.role {
            Role::Dialer(DialState::Waiting { retry_at }) if *retry_at <= now => self.dial(now),
            Role::Dialer(DialState::Connecting { deadline, .. }) if *deadline <= now => {
                let retry_at = self.failed("connect to", &Errno::ETIMEDOUT, now);
                self.role = Role::Dialer(DialState::Waiting { retry_at });
            }
            Role::Listener(listening) if listening.retry_at.is_some_and(|at| at <= now) => {
                match socket::listen(self.config.endpoint.address(), 64) {
                    Ok(fd) => {
                        info!(
                            "{}: listening on {}",
                            self.config.kind,
                            self.config.endpoint.address()
                        );
                        listening.listener = Some(fd);
                        listening.retry_at = None;
                        self.failures = 0;
                    }
                    Err(error) => {
                        let retry_at = self.failed("listen on", &error, now);
                        if let Role::Listener(listening) = &mut self.role {
                            listening.retry_at = Some(retry_at);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn dial(&mut self, now: Instant) {
        let state = match socket::connect(self.address()) {
            Ok(Dial::Connected(fd)) => self.connected(fd, now),
            Ok(Dial::InProgress(fd)) => DialState::Connecting {
                fd,
                deadline: now + CONNECT_TIMEOUT + Duration::from_secs(1),
            },
            Err(error) => DialState::Waiting {
                retry_at: self.failed("connect to", &error, now),
            },
        };
        self.role = Role::Dialer(state);
    }

    fn connected(&mut self, fd: OwnedFd, now: Instant) -> DialState {
        info!("{}: connected to {}", self.name(), self.address());
        self.failures = 0;
        let peer = self.address().to_string();
        DialState::Up(Box::new(Link::new(fd, &self.config, peer, now)))
    }

    /// The earliest deadline of this service.
    fn deadline(&self) -> Option<Instant> {
        match &self.role {
            Role::Dialer(DialState::Waiting { retry_at }) => Some(*retry_at),
            Role::Dialer(DialState::Connecting { deadline, .. }) => Some(*deadline),
            Role::Dialer(DialState::Up(_)) => None,
            Role::Listener(listening) => listening.retry_at,
        }
    }

    /// Closes links marked closed; a dialler schedules its redial.
    fn sweep(&mut self, now: Instant) {
        let name = self.config.kind.name();
        match &mut self.role {
            Role::Dialer(DialState::Up(link)) => {
                if let Some(closed) = link.closed.take() {
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
                listening.links.retain_mut(|link| match link.closed.take() {
                    Some(closed) => {
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
    fn accept_all(&mut self, now: Instant) {
        let Role::Listener(listening) = &mut self.role else {
            return;
        };
        let Some(listener) = &listening.listener else {
            return;
        };
        loop {
            match socket::accept(listener.as_fd()) {
                Ok(Some((fd, peer))) => {
                    let name = self.config.kind.name();
                    if !socket::peer_allowed(&peer, self.config.allow_any_cid) {
                        warn!(
                            "{name}: refused {peer}: only the host (CID 2) may connect; set allow_any_cid = true \
                             in [{name}] to accept other CIDs"
                        );
                        continue;
                    }
                    if listening.links.len() >= MAX_CONNECTIONS {
                        warn!("{name}: refused {peer}: {MAX_CONNECTIONS} connections are open already");
                        continue;
                    }
                    info!("{name}: accepted {peer}");
                    let label = match peer {
                        Peer::Unix => format!("{} peer", self.config.endpoint.address()),
                        other => other.to_string(),
                    };
                    listening
                        .links
                        .push(Link::new(fd, &self.config, label, now));
                }
                Ok(None) => break,
                Err(Errno::ECONNABORTED) | Err(Errno::EINTR) => continue,
                Err(error) => {
                    warn!("{}: accept failed: {error}", self.config.kind);
                    break;
                }
            }
        }
    }
}

impl Drop for Service {
    /// A Unix listener removes its socket file, so the next start finds no stale one.
    fn drop(&mut self) {
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

/// What to check after a failed attempt, in words a user can act on.
fn hint(address: &Address, what: &str) -> String {
    match address {
        Address::Vsock { port, .. } if what == "connect to" => format!(
            "is the host service running, and on Hyper-V is service GUID {} registered under \
             HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\Virtualization\\GuestCommunicationServices? \
             Is the hv_sock (or vmw_vsock_virtio_transport) module loaded?",
            crate::guid::ServiceId::from_port(*port)
        ),
        Address::Vsock { .. } => {
            "is AF_VSOCK available (module hv_sock on Hyper-V, vmw_vsock_virtio_transport on KVM) and the port free?"
                .to_string()
        }
        Address::Unix(path) if what == "connect to" => {
            format!("is hvhost (or another host peer) listening at {}?", path.display())
        }
        Address::Unix(path) => format!("can this user create {}?", path.display()),
        Address::Hybrid { .. } => "hybrid addresses are for hvhost".to_string(),
    }
}

/// Which file descriptor a poll slot watches.
#[derive(Clone, Copy)]
enum Token {
    Terminate,
    Reload,
    Dialing(usize),
    DialLink(usize),
    Listener(usize),
    ListenLink(usize, usize),
}

/// The running agent.
pub struct Agent {
    config: Config,
    config_path: Option<PathBuf>,
    services: Vec<Service>,
    terminate: UnixStream,
    reload: UnixStream,
    seed: u64,
}

/// Why the agent could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn signal_pipe(signals: &[libc::c_int]) -> Result<UnixStream, StartError> {
    let (reader, writer) = UnixStream::pair()
        .map_err(|error| StartError(format!("cannot create a signal pipe: {error}")))?;
    reader
        .set_nonblocking(true)
        .map_err(|error| StartError(format!("cannot set up the signal pipe: {error}")))?;
    for &signal in signals {
        let writer = writer
            .try_clone()
            .map_err(|error| StartError(format!("cannot set up the signal pipe: {error}")))?;
        signal_hook::low_level::pipe::register(signal, writer)
            .map_err(|error| StartError(format!("cannot handle signal {signal}: {error}")))?;
    }
    Ok(reader)
}

/// Empties a signal pipe; true when a signal arrived.
fn drain(pipe: &mut UnixStream) -> bool {
    use std::io::Read;
    let mut buffer = [0u8; 64];
    let mut any = false;
    while let Ok(count) = pipe.read(&mut buffer) {
        if count == 0 {
            break;
        }
        any = true;
    }
    any
}

impl Agent {
    /// Sets up signal handling and the services of `config`. Opens no socket yet.
    pub fn new(config: Config, config_path: Option<PathBuf>) -> Result<Agent, StartError> {
        let terminate = signal_pipe(&[libc::SIGTERM, libc::SIGINT])?;
        let reload = signal_pipe(&[libc::SIGHUP])?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64)
            ^ u64::from(std::process::id()) << 32;
        let now = Instant::now();
        let services = config
            .enabled()
            .enumerate()
            .map(|(index, service)| {
                Service::new(service.clone(), now, seed.wrapping_add(index as u64))
            })
            .collect();
        Ok(Agent {
            config,
            config_path,
            services,
            terminate,
            reload,
            seed,
        })
    }

    /// Runs until SIGTERM or SIGINT.
    pub fn run(&mut self) -> Result<(), StartError> {
        let mut inbox = Vec::new();
        let mut replies = Vec::new();
        let mut tokens = Vec::new();
        info!(
            "hvagent {} running with {} service(s)",
            env!("CARGO_PKG_VERSION"),
            self.services.len()
        );
        loop {
            let now = Instant::now();
            for service in &mut self.services {
                service.run_timers(now);
            }
            let timeout = self
                .services
                .iter()
                .filter_map(Service::deadline)
                .min()
                .map(|deadline| deadline.saturating_duration_since(Instant::now()));
            let mut fds = Vec::new();
            tokens.clear();
            fds.push(PollFd::new(self.terminate.as_fd(), PollFlags::POLLIN));
            tokens.push(Token::Terminate);
            fds.push(PollFd::new(self.reload.as_fd(), PollFlags::POLLIN));
            tokens.push(Token::Reload);
            for (index, service) in self.services.iter().enumerate() {
                watch(service, index, &mut fds, &mut tokens);
            }
            match poll(&mut fds, poll_timeout(timeout)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(error) => return Err(StartError(format!("poll failed: {error}"))),
            }
            let ready: Vec<(Token, PollFlags)> = fds
                .iter()
                .zip(&tokens)
                .filter_map(|(fd, token)| {
                    fd.revents()
                        .filter(|events| !events.is_empty())
                        .map(|events| (*token, events))
                })
                .collect();
            drop(fds);
            let now = Instant::now();
            for (token, events) in ready {
                match token {
                    Token::Terminate => {
                        if drain(&mut self.terminate) {
                            info!("hvagent: stopping on signal");
                            self.services.clear();
                            return Ok(());
                        }
                    }
                    Token::Reload => {
                        if drain(&mut self.reload) {
                            self.reload_config(now);
                        }
                    }
                    other => self.handle(other, events, now, &mut inbox, &mut replies),
                }
            }
            for service in &mut self.services {
                service.sweep(now);
            }
        }
    }

    fn handle(
        &mut self,
        token: Token,
        events: PollFlags,
        now: Instant,
        inbox: &mut Vec<Message>,
        replies: &mut Vec<Message>,
    ) {
        match token {
            Token::Dialing(index) => {
                let service = &mut self.services[index];
                let Role::Dialer(DialState::Connecting { fd, .. }) = &service.role else {
                    return;
                };
                let state = match socket::finish_connect(fd.as_fd()) {
                    Ok(()) => {
                        let Role::Dialer(DialState::Connecting { fd, .. }) = std::mem::replace(
                            &mut service.role,
                            Role::Dialer(DialState::Waiting { retry_at: now }),
                        ) else {
                            return;
                        };
                        service.connected(fd, now)
                    }
                    Err(error) => DialState::Waiting {
                        retry_at: service.failed("connect to", &error, now),
                    },
                };
                service.role = Role::Dialer(state);
            }
            Token::DialLink(index) => {
                let service = &mut self.services[index];
                let name = service.name();
                if let Role::Dialer(DialState::Up(link)) = &mut service.role {
                    serve_link(link, name, events, inbox, replies);
                }
            }
            Token::Listener(index) => self.services[index].accept_all(now),
            Token::ListenLink(index, slot) => {
                let service = &mut self.services[index];
                let name = service.name();
                if let Role::Listener(listening) = &mut service.role {
                    if let Some(link) = listening.links.get_mut(slot) {
                        serve_link(link, name, events, inbox, replies);
                    }
                }
            }
            Token::Terminate | Token::Reload => {}
        }
    }

    /// Re-reads the config; services whose settings changed are reopened, the others keep their connections.
    fn reload_config(&mut self, now: Instant) {
        let config = match config::load(self.config_path.as_deref()) {
            Ok(config) => config,
            Err(error) => {
                error!("hvagent: reload failed, keeping the running configuration: {error}");
                return;
            }
        };
        if std::env::var_os("RUST_LOG").is_none() {
            log::set_max_level(config.log_level);
        }
        let mut old: Vec<Service> = std::mem::take(&mut self.services);
        for (index, wanted) in config.enabled().enumerate() {
            match old.iter().position(|service| service.config == *wanted) {
                Some(at) => self.services.push(old.swap_remove(at)),
                None => {
                    info!("{}: settings changed, reopening", wanted.kind);
                    let seed = self.seed.wrapping_add(index as u64 + 1000);
                    self.services.push(Service::new(wanted.clone(), now, seed));
                }
            }
        }
        for service in &old {
            info!("{}: no longer configured, closing", service.name());
        }
        drop(old);
        self.config = config;
        info!("hvagent: configuration reloaded");
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

fn serve_link(
    link: &mut Link,
    name: &str,
    events: PollFlags,
    inbox: &mut Vec<Message>,
    replies: &mut Vec<Message>,
) {
    if events.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
        link.service(name, inbox, replies);
    } else if events.contains(PollFlags::POLLOUT) {
        link.flush();
    }
}

fn watch<'a>(
    service: &'a Service,
    index: usize,
    fds: &mut Vec<PollFd<'a>>,
    tokens: &mut Vec<Token>,
) {
    let mut add = |fd: BorrowedFd<'a>, flags: PollFlags, token: Token| {
        fds.push(PollFd::new(fd, flags));
        tokens.push(token);
    };
    match &service.role {
        Role::Dialer(DialState::Connecting { fd, .. }) => {
            add(fd.as_fd(), PollFlags::POLLOUT, Token::Dialing(index))
        }
        Role::Dialer(DialState::Up(link)) => add(
            link.connection.fd(),
            link.interest(),
            Token::DialLink(index),
        ),
        Role::Dialer(DialState::Waiting { .. }) => {}
        Role::Listener(listening) => {
            if let Some(listener) = &listening.listener {
                add(listener.as_fd(), PollFlags::POLLIN, Token::Listener(index));
            }
            for (slot, link) in listening.links.iter().enumerate() {
                add(
                    link.connection.fd(),
                    link.interest(),
                    Token::ListenLink(index, slot),
                );
            }
        }
    }
}

/// Milliseconds for poll, rounded up so a deadline is never missed by waking early; none means forever.
fn poll_timeout(timeout: Option<Duration>) -> PollTimeout {
    match timeout {
        None => PollTimeout::NONE,
        Some(duration) => {
            let millis = duration
                .as_nanos()
                .div_ceil(1_000_000)
                .min(i32::MAX as u128) as i32;
            PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX)
        }
    }
}
