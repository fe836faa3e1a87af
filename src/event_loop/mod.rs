//! The agent's one poll(2) loop: dials and listens for each enabled service, feeds bytes to the channels,
//! sends their replies, paces redials, answers the control socket, tells systemd how it goes, and handles
//! SIGTERM/SIGINT (exit) and SIGHUP (reload).
//!
//! The poll timeout is the nearest deadline (a redial, a connect time-out, a logic's timer, or the systemd
//! watchdog ping when systemd asked for one); with every service connected and nothing due it is infinite,
//! so an idle agent is never woken.
//!
//! A turn of a busy loop allocates nothing: the poll set and the status line are kept between turns,
//! messages are read where they arrived and answered into the connection's output queue
//! (tests/no_alloc.rs counts).

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::config::{self, Config};
use crate::ops::control::{self, ControlSocket};
use crate::ops::systemd::Notifier;
use hvproto::service::Logic;

mod edges;
mod poll_set;
mod quiet;
mod report;
mod runtime;
mod signals;
use poll_set::PollSet;
use quiet::Quiet;
use runtime::{DialState, Link, Role, RunningService};
use signals::Signals;

/// How long a stopping agent waits for its peers to take the answers queued for them.
const FINISH_LIMIT: Duration = Duration::from_secs(1);

/// Which file descriptor a poll slot watches.
#[derive(Clone, Copy)]
enum Token {
    /// SIGTERM, SIGINT or SIGHUP arrived.
    Signal,
    Dialing(usize),
    DialLink(usize),
    Listener(usize),
    ListenLink(usize, usize),
    /// The descriptor a service's logic asked to be watched.
    Logic(usize),
    /// The control socket (`hvagent status`).
    Control,
}

/// The guest side: the running agent's poll loop over its services, control socket and signals.
pub struct GuestLoop {
    config: Config,
    config_path: Option<PathBuf>,
    services: Vec<RunningService>,
    signals: Signals,
    seed: u64,
    notifier: Notifier,
    /// Where to open the control socket, and whether it was asked for (rather than the default).
    control_path: Option<(PathBuf, bool)>,
    control: Option<ControlSocket>,
    started: Instant,
    /// When the next WATCHDOG=1 is due; none when systemd watches nothing.
    watchdog_at: Option<Instant>,
    /// The STATUS= text systemd has, sent again only when it changes.
    shown_status: String,
    /// Where each turn writes the status text to compare it with `shown_status`.
    next_status: String,
    /// What the loop waits on, refilled each turn.
    poll_set: PollSet<Token>,
}

/// Why the agent could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl GuestLoop {
    /// Sets up signal handling and the services of `config`. Opens no socket yet.
    pub fn new(config: Config, config_path: Option<PathBuf>) -> Result<GuestLoop, StartError> {
        let signals = Signals::install()
            .map_err(|error| StartError(format!("cannot handle signals: {error}")))?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64)
            ^ u64::from(std::process::id()) << 32;
        let now = Instant::now();
        let services = config
            .enabled()
            .enumerate()
            .map(|(index, service)| {
                let logic = edges::logic_for(service);
                RunningService::new(service.clone(), logic, now, seed.wrapping_add(index as u64))
            })
            .collect();
        Ok(GuestLoop {
            config,
            config_path,
            services,
            signals,
            seed,
            notifier: Notifier::default(),
            control_path: None,
            control: None,
            started: now,
            watchdog_at: None,
            shown_status: String::new(),
            next_status: String::new(),
            poll_set: PollSet::new(),
        })
    }

    /// Tells systemd through `notifier` (READY=1, STATUS=, RELOADING=1, STOPPING=1, WATCHDOG=1).
    pub fn with_notifier(mut self, notifier: Notifier) -> GuestLoop {
        self.notifier = notifier;
        self
    }

    /// Answers `hvagent status` on a Unix socket at `path` (opened when the agent runs). `explicit` says
    /// the user asked for this path; the default one is skipped quietly when its directory (systemd's
    /// RuntimeDirectory=) does not exist, as when the agent is run by hand.
    pub fn with_control_socket(mut self, path: PathBuf, explicit: bool) -> GuestLoop {
        self.control_path = Some((path, explicit));
        self
    }

    /// Opens the control socket; the agent runs on without it when that fails.
    fn open_control_socket(&mut self) {
        let Some((path, explicit)) = &self.control_path else {
            return;
        };
        match ControlSocket::bind(path) {
            Ok(socket) => {
                debug!("hvagent: status on {}", path.display());
                self.control = Some(socket);
            }
            Err(error) if !explicit && error.kind() == std::io::ErrorKind::NotFound => debug!(
                "hvagent: no control socket: {} has no directory (systemd creates it; or use --control PATH)",
                path.display()
            ),
            Err(error) => warn!(
                "hvagent: no control socket, so `hvagent status` will not answer: cannot listen on {}: {error}",
                path.display()
            ),
        }
    }

    /// Answers every waiting `hvagent status` client.
    fn answer_control_clients(&self, now: Instant) {
        let Some(control) = &self.control else {
            return;
        };
        let clients = control.accept_all();
        if clients.is_empty() {
            return;
        }
        let config = self
            .config_path
            .as_deref()
            .or_else(|| {
                let default = std::path::Path::new(config::DEFAULT_PATH);
                default.exists().then_some(default)
            })
            .map(|path| path.display().to_string());
        let json = report::agent_status(&self.services, self.started, config, now).to_json();
        for client in clients {
            control::answer(client, json.as_bytes());
        }
    }

    /// Sends STATUS= when the summary changed since systemd last heard it.
    fn show_status(&mut self) {
        if !self.notifier.enabled() {
            return;
        }
        report::write_summary(&self.services, &mut self.next_status);
        if self.next_status != self.shown_status {
            self.notifier.status(&self.next_status);
            std::mem::swap(&mut self.next_status, &mut self.shown_status);
        }
    }

    /// Pings the systemd watchdog when due and sets when the next ping is.
    fn ping_watchdog(&mut self, now: Instant) {
        let Some(interval) = self.notifier.watchdog_interval() else {
            return;
        };
        match self.watchdog_at {
            Some(at) if at > now => {}
            _ => {
                self.notifier.watchdog();
                self.watchdog_at = Some(now + interval);
            }
        }
    }

    /// Runs until SIGTERM or SIGINT.
    pub fn run(&mut self) -> Result<(), StartError> {
        info!(
            "hvagent {} running with {} service(s)",
            env!("CARGO_PKG_VERSION"),
            self.services.len()
        );
        self.open_control_socket();
        let mut ready = false;
        loop {
            let now = Instant::now();
            for service in &mut self.services {
                service.run_timers(now);
                // A timer may have closed a link (idle timeout): close it now, not after the next event.
                service.sweep(now);
            }
            if !ready {
                // Every service has dialled or opened its listener by now.
                self.shown_status = report::summary(&self.services);
                self.notifier.ready(&self.shown_status);
                ready = true;
            } else {
                self.show_status();
            }
            self.ping_watchdog(now);
            let timeout = self
                .services
                .iter()
                .filter_map(RunningService::deadline)
                .chain(self.watchdog_at)
                .min()
                .map(|deadline| deadline.saturating_duration_since(Instant::now()));
            self.fill_poll_set();
            if let Err(error) = self.poll_set.wait(poll_timeout(timeout)) {
                return Err(StartError(format!("poll failed: {error}")));
            }
            let now = Instant::now();
            for slot in 0..self.poll_set.len() {
                let (token, events) = self.poll_set.ready(slot);
                if events.is_empty() {
                    continue;
                }
                match token {
                    Token::Signal => {
                        let asked = self.signals.take();
                        if asked.stop {
                            info!("hvagent: stopping on signal");
                            self.notifier.stopping();
                            self.finish();
                            self.services.clear();
                            self.control = None;
                            return Ok(());
                        }
                        if asked.reload {
                            self.notifier.reloading();
                            self.reload_config(now);
                            self.shown_status = report::summary(&self.services);
                            self.notifier.ready(&self.shown_status);
                            // The rest of the set names services of the old configuration; what is still
                            // ready is reported again by the next wait.
                            break;
                        }
                    }
                    Token::Control => self.answer_control_clients(now),
                    other => self.handle(other, events, now),
                }
            }
            for service in &mut self.services {
                service.sweep(now);
            }
        }
    }

    /// Puts what to wait on into the poll set: the signal pipe, the control socket, and each service's
    /// dialler, listener, links and watched descriptor.
    fn fill_poll_set(&mut self) {
        let set = &mut self.poll_set;
        set.clear();
        set.add(self.signals.fd(), PollFlags::POLLIN, Token::Signal);
        if let Some(control) = &self.control {
            set.add(control.fd(), PollFlags::POLLIN, Token::Control);
        }
        for (index, service) in self.services.iter().enumerate() {
            watch(service, index, set);
        }
    }

    fn handle(&mut self, token: Token, events: PollFlags, now: Instant) {
        match token {
            Token::Dialing(index) => self.services[index].connect_finished(now),
            Token::DialLink(index) => {
                let service = &mut self.services[index];
                if let Role::Dialer(DialState::Up(link)) = &mut service.role {
                    let logic = &mut *service.logic;
                    let quiet = &mut service.quiet;
                    serve_link(link, quiet, logic, events, now);
                }
            }
            Token::Listener(index) => self.services[index].accept_all(now),
            Token::ListenLink(index, slot) => {
                let service = &mut self.services[index];
                if let Role::Listener(listening) = &mut service.role {
                    if let Some(link) = listening.links.get_mut(slot) {
                        let logic = &mut *service.logic;
                        let quiet = &mut service.quiet;
                        serve_link(link, quiet, logic, events, now);
                    }
                }
            }
            Token::Logic(index) => self.services[index].logic.watch_ready(now),
            Token::Signal | Token::Control => {}
        }
    }

    /// Before exiting: answers the requests already received, then sends every queued answer, waiting at
    /// most [`FINISH_LIMIT`] for peers to take them, so a peer loses no answer to a request it completed
    /// before the signal.
    fn finish(&mut self) {
        for service in &mut self.services {
            service.answer_waiting();
        }
        let until = Instant::now() + FINISH_LIMIT;
        loop {
            let now = Instant::now();
            if now >= until {
                break;
            }
            let mut fds: Vec<PollFd> = self
                .services
                .iter()
                .flat_map(RunningService::links)
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
        // First of all, whatever the file now says: a reload ends a freeze of the backup service.
        for service in &mut self.services {
            service.logic.reloading(now);
        }
        let config = match config::load(self.config_path.as_deref()) {
            Ok(config) => config,
            Err(error) => {
                error!("hvagent: reload failed, keeping the running configuration: {error}");
                return;
            }
        };
        if let Err(why) = crate::system::limits::fit(&config) {
            error!("hvagent: reload failed, keeping the running configuration: {why}");
            return;
        }
        if std::env::var_os("RUST_LOG").is_none() {
            log::set_max_level(config.log_level);
        }
        // A service's whole settings (endpoint, limits and its own options) are its ServiceConfig. The ones
        // that changed or went close before their successors open, so that what a closing service puts back
        // (time sync's frequency correction) is in place when the new one reads it.
        let (mut kept, gone): (Vec<RunningService>, Vec<RunningService>) =
            std::mem::take(&mut self.services)
                .into_iter()
                .partition(|service| config.enabled().any(|wanted| *wanted == service.config));
        let mut reopened = Vec::new();
        for service in &gone {
            if config
                .enabled()
                .any(|wanted| wanted.kind() == service.config.kind())
            {
                info!("{}: settings changed, reopening", service.name());
                reopened.push(service.config.kind());
            } else {
                info!("{}: no longer configured, closing", service.name());
            }
        }
        drop(gone);
        for (index, wanted) in config.enabled().enumerate() {
            match kept.iter().position(|service| service.config == *wanted) {
                Some(at) => self.services.push(kept.swap_remove(at)),
                None => {
                    if !reopened.contains(&wanted.kind()) {
                        info!("{}: now configured, opening", wanted.kind());
                    }
                    let seed = self.seed.wrapping_add(index as u64 + 1000);
                    let logic = edges::logic_for(wanted);
                    self.services
                        .push(RunningService::new(wanted.clone(), logic, now, seed));
                }
            }
        }
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
    quiet: &mut Quiet,
    logic: &mut dyn Logic,
    events: PollFlags,
    now: Instant,
) {
    if events.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
        link.read_and_answer(quiet, logic, now);
    } else if events.contains(PollFlags::POLLOUT) {
        link.flush();
    }
}

fn watch(service: &RunningService, index: usize, set: &mut PollSet<Token>) {
    if let Some(fd) = service.logic_fd() {
        set.add(fd, PollFlags::POLLIN, Token::Logic(index));
    }
    match &service.role {
        Role::Dialer(DialState::Connecting { fd, .. }) => {
            set.add(fd.as_fd(), PollFlags::POLLOUT, Token::Dialing(index))
        }
        Role::Dialer(DialState::Up(link)) => set.add(
            link.connection.fd(),
            link.interest(),
            Token::DialLink(index),
        ),
        Role::Dialer(DialState::Waiting { .. }) => {}
        Role::Listener(listening) => {
            if let (Some(listener), None) = (&listening.listener, listening.paused_until) {
                set.add(listener.as_fd(), PollFlags::POLLIN, Token::Listener(index));
            }
            for (slot, link) in listening.links.iter().enumerate() {
                set.add(
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
