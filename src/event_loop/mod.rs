//! The agent's one poll(2) loop: dials and listens for each enabled service, feeds bytes to the channels,
//! sends their replies, paces redials, and handles SIGTERM/SIGINT (exit) and SIGHUP (reload).
//!
//! The poll timeout is the nearest deadline (a redial or a connect time-out); with every service connected
//! and nothing due it is infinite, so an idle agent is never woken.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{error, info};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::config::{self, Config};
use crate::service::Logic;
use crate::wire::Message;

mod runtime;
mod services;
use runtime::{DialState, Link, Role, Service};

/// How long a stopping agent spends answering what already arrived and sending what is queued.
const FINISH_LIMIT: Duration = Duration::from_secs(1);

/// Which file descriptor a poll slot watches.
#[derive(Clone, Copy)]
enum Token {
    Terminate,
    Reload,
    Dialing(usize),
    DialLink(usize),
    Listener(usize),
    ListenLink(usize, usize),
    /// The descriptor a service's logic asked to be watched.
    Logic(usize),
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
                let logic = services::logic_for(service, &config);
                Service::new(service.clone(), logic, now, seed.wrapping_add(index as u64))
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
                // A timer may have closed a link (idle timeout): close it now, not after the next event.
                service.sweep(now);
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
                            self.finish(&mut inbox, &mut replies);
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
            Token::Dialing(index) => self.services[index].connect_finished(now),
            Token::DialLink(index) => {
                let service = &mut self.services[index];
                let name = service.name();
                if let Role::Dialer(DialState::Up(link)) = &mut service.role {
                    let logic = &mut *service.logic;
                    serve_link(link, name, logic, events, now, inbox, replies);
                }
            }
            Token::Listener(index) => self.services[index].accept_all(now),
            Token::ListenLink(index, slot) => {
                let service = &mut self.services[index];
                let name = service.name();
                if let Role::Listener(listening) = &mut service.role {
                    if let Some(link) = listening.links.get_mut(slot) {
                        let logic = &mut *service.logic;
                        serve_link(link, name, logic, events, now, inbox, replies);
                    }
                }
            }
            Token::Logic(index) => self.services[index].logic.fd_ready(now),
            Token::Terminate | Token::Reload => {}
        }
    }

    /// Before exiting: answers the requests already received and sends every queued answer, for at most
    /// [`FINISH_LIMIT`], so a peer loses no answer to a request it completed before the signal.
    fn finish(&mut self, inbox: &mut Vec<Message>, replies: &mut Vec<Message>) {
        let until = Instant::now() + FINISH_LIMIT;
        for service in &mut self.services {
            service.answer_waiting(inbox, replies, until);
        }
        loop {
            let now = Instant::now();
            if now >= until {
                break;
            }
            let mut fds: Vec<PollFd> = self
                .services
                .iter()
                .flat_map(Service::links)
                .filter(|link| link.connection.wants_write() && link.can_still_send())
                .map(|link| PollFd::new(link.connection.fd(), PollFlags::POLLOUT))
                .collect();
            if fds.is_empty() {
                break;
            }
            let _ = poll(&mut fds, poll_timeout(Some(until - now)));
            drop(fds);
            for service in &mut self.services {
                for link in service.links_mut() {
                    link.flush();
                }
            }
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
                    let logic = services::logic_for(wanted, &config);
                    self.services
                        .push(Service::new(wanted.clone(), logic, now, seed));
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
    logic: &mut dyn Logic,
    events: PollFlags,
    now: Instant,
    inbox: &mut Vec<Message>,
    replies: &mut Vec<Message>,
) {
    if events.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
        link.service(name, logic, now, inbox, replies);
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
    if let Some(fd) = service.logic_fd() {
        add(fd, PollFlags::POLLIN, Token::Logic(index));
    }
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
