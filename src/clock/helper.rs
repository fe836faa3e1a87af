//! `hvagent clock-helper`: the one hvagent process that may change the clock. Under systemd it is
//! hvagent-clock.service, started by hvagent-clock.socket when the agent connects, with CAP_SYS_TIME as its
//! only capability; the agent itself runs with none and `ProtectClock=yes` and asks through
//! [`super::remote::RemoteClock`]. This is chronyd's privilege separation (privops) applied to hvagent: the
//! process that parses what the host sends cannot set the clock, and the one that can parses three
//! fixed-size requests ([`super::privops`]) and nothing else.
//!
//! - Listens on the socket systemd passes (LISTEN_PID/LISTEN_FDS, fd 3) or, for tests, on `--socket PATH`.
//! - Accepts only peers whose SO_PEERCRED uid is root or the user hvagent (from /etc/passwd); others get one
//!   EPERM answer and are closed. A peer has [`PEER_TIMEOUT`] per request, then it is dropped.
//! - Bounds what it applies: a frequency correction within ±500 ppm (beyond: EINVAL), a step that fits i64
//!   nanoseconds (the wire cannot carry more). One request at a time.
//! - Exits after `idle` without a connection (60 s by default): socket activation starts it again.
//! - `--fake-clock` applies requests to a clock in memory instead of the system's ([`MemoryClock`]), for
//!   tests: nothing then touches the real clock.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use log::{debug, info, warn};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, sockopt};

use super::privops::{self, op, Answer, Request, MAX_SCALED_FREQUENCY, MESSAGE_LEN};
use super::system::SystemClock;
use hvproto::clock::{format_offset, Clock, ClockError};

/// The user the agent runs as under systemd, whose uid may use the helper beside root.
pub const AGENT_USER: &str = "hvagent";
/// The first descriptor systemd passes (SD_LISTEN_FDS_START).
const LISTEN_FDS_START: RawFd = 3;
/// How long a peer may take to send a request once connected.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the helper waits for a connection before it exits.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(60);

/// What `hvagent clock-helper` was told.
#[derive(Clone, Debug)]
pub struct Options {
    /// Listen here instead of on the socket systemd passes.
    pub socket: Option<PathBuf>,
    /// Apply requests to [`MemoryClock`], never the system's clock.
    pub fake_clock: bool,
    /// The uids that may connect, instead of root and the user hvagent.
    pub peer_uids: Option<Vec<u32>>,
    pub idle: Duration,
}

/// The helper's answer to one request, applied to `clock`.
pub fn apply(request: Request, clock: &mut dyn Clock) -> Answer {
    let op = request.op();
    let answer = |result: Result<i64, ClockError>| match result {
        Ok(value) => Answer::ok(op, value),
        Err(error) => Answer::error(op, errno_of(&error)),
    };
    match request {
        Request::ReadFrequency => answer(clock.frequency_ppm().map(privops::scaled_from_ppm)),
        Request::SetFrequency { scaled }
            if scaled.unsigned_abs() > MAX_SCALED_FREQUENCY.unsigned_abs() =>
        {
            Answer::error(op, libc::EINVAL)
        }
        Request::SetFrequency { scaled } => answer(
            clock
                .set_frequency_ppm(privops::ppm_from_scaled(scaled))
                .map(|()| 0),
        ),
        Request::Step { delta_ns } => answer(clock.step(i128::from(delta_ns)).map(|()| 0)),
        Request::Unknown { .. } => Answer::error(op, libc::EOPNOTSUPP),
    }
}

fn errno_of(error: &ClockError) -> i32 {
    match error {
        ClockError::NotPermitted => libc::EPERM,
        ClockError::Failed { errno, .. } => *errno,
        ClockError::Helper { .. } => libc::EIO,
    }
}

/// A clock in memory, for `--fake-clock`: it reads the real time plus the steps it was given and keeps
/// the frequency it was set to. It changes nothing outside itself.
#[derive(Debug, Default)]
pub struct MemoryClock {
    offset_ns: i128,
    frequency_ppm: f64,
}

impl Clock for MemoryClock {
    fn now_ns(&self) -> i128 {
        SystemClock.now_ns() + self.offset_ns
    }

    fn step(&mut self, delta_ns: i128) -> Result<(), ClockError> {
        self.offset_ns += delta_ns;
        Ok(())
    }

    fn frequency_ppm(&self) -> Result<f64, ClockError> {
        Ok(self.frequency_ppm)
    }

    fn set_frequency_ppm(&mut self, ppm: f64) -> Result<(), ClockError> {
        self.frequency_ppm = ppm;
        Ok(())
    }
}

/// The uid of the user `name` in a passwd text.
pub fn uid_of(passwd: &str, name: &str) -> Option<u32> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

/// The uids allowed by default: root, and the agent's user when /etc/passwd has it.
fn default_peer_uids() -> Vec<u32> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    match uid_of(&passwd, AGENT_USER) {
        Some(uid) => vec![0, uid],
        None => {
            warn!(
                "clock-helper: /etc/passwd has no user {AGENT_USER}; only root may use the helper"
            );
            vec![0]
        }
    }
}

/// The listening socket systemd passed, when it passed exactly one to this process.
fn activated_listener() -> Result<Option<UnixListener>, String> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    if pid.is_none() && fds.is_none() {
        return Ok(None);
    }
    if pid.as_deref() != Some(std::process::id().to_string().as_str()) {
        return Err(format!(
            "LISTEN_PID is {}, not this process; the sockets are someone else's",
            pid.unwrap_or_default()
        ));
    }
    if fds.as_deref() != Some("1") {
        return Err(format!(
            "LISTEN_FDS is {}; hvagent-clock.socket passes exactly 1",
            fds.unwrap_or_default()
        ));
    }
    // SAFETY: systemd passed fd 3 to this process (LISTEN_PID and LISTEN_FDS say so) and nothing else in
    // the process owns or closes it.
    let fd = unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) };
    match getsockopt(&fd, sockopt::AcceptConn) {
        Ok(true) => {}
        Ok(false) => return Err("fd 3 is a socket that does not listen".to_string()),
        Err(error) => return Err(format!("fd 3 is not a listening socket: {error}")),
    }
    nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|error| format!("cannot set FD_CLOEXEC on fd 3: {error}"))?;
    Ok(Some(UnixListener::from(fd)))
}

/// A listener at `path` (a socket left there by a previous run is replaced). It is bound under a staging
/// name and renamed into place once listening, as the agent's own Unix listeners are, so a socket file at
/// `path` always accepts: a connect between bind and listen would otherwise be refused.
fn bind(path: &PathBuf) -> Result<UnixListener, String> {
    if std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
    let staging = hvtransport::socket::staging_path(path);
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging)
        .map_err(|error| format!("cannot listen on {}: {error}", staging.display()))?;
    std::fs::rename(&staging, path).map_err(|error| {
        let _ = std::fs::remove_file(&staging);
        format!("cannot put the socket at {}: {error}", path.display())
    })?;
    Ok(listener)
}

/// `hvagent clock-helper`: serves until idle; an error is a sentence for the user.
pub fn run(options: &Options) -> Result<(), String> {
    let listener = match &options.socket {
        Some(path) => bind(path)?,
        None => activated_listener()?.ok_or_else(|| {
            "no socket: run by hvagent-clock.socket (systemd passes it as LISTEN_FDS), or give --socket PATH"
                .to_string()
        })?,
    };
    let allowed = options.peer_uids.clone().unwrap_or_else(default_peer_uids);
    let mut system = SystemClock;
    let mut memory = MemoryClock::default();
    let clock: &mut dyn Clock = if options.fake_clock {
        info!("clock-helper: --fake-clock: requests change a clock in memory, not the system's");
        &mut memory
    } else {
        &mut system
    };
    info!(
        "clock-helper: serving uids {allowed:?}; exits after {} s idle",
        options.idle.as_secs()
    );
    serve(&listener, clock, &allowed, options.idle)
        .map_err(|error| format!("the listening socket failed: {error}"))
}

/// Accepts and serves one connection at a time until none came for `idle`.
pub fn serve(
    listener: &UnixListener,
    clock: &mut dyn Clock,
    allowed: &[u32],
    idle: Duration,
) -> io::Result<()> {
    let timeout = PollTimeout::try_from(idle).unwrap_or(PollTimeout::MAX);
    loop {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) => {
                info!("clock-helper: idle for {} s, exiting", idle.as_secs());
                return Ok(());
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
        match listener.accept() {
            Ok((stream, _)) => serve_peer(stream, clock, allowed),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => warn!("clock-helper: accept failed: {error}"),
        }
    }
}

/// One peer: refused with EPERM unless its uid is allowed, else its requests in turn until it closes.
fn serve_peer(mut stream: UnixStream, clock: &mut dyn Clock, allowed: &[u32]) {
    let uid = getsockopt(&stream, sockopt::PeerCredentials)
        .ok()
        .map(|credentials| credentials.uid());
    if let Err(error) = stream
        .set_read_timeout(Some(PEER_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(PEER_TIMEOUT)))
    {
        warn!("clock-helper: cannot set a timeout on a connection: {error}");
        return;
    }
    let mut bytes = [0; MESSAGE_LEN];
    let Some(uid) = uid.filter(|uid| allowed.contains(uid)) else {
        warn!(
            "clock-helper: refused a peer of uid {}: only uids {allowed:?} may change the clock",
            uid.map_or("unknown".to_string(), |uid| uid.to_string())
        );
        // Its request is read first (only for its op), so that the EPERM answer is not lost to a reset.
        let op = stream
            .read_exact(&mut bytes)
            .ok()
            .and_then(|()| Request::parse(&bytes).ok())
            .map_or(0, Request::op);
        let _ = stream.write_all(&Answer::error(op, libc::EPERM).emit());
        return;
    };
    loop {
        if let Err(error) = stream.read_exact(&mut bytes) {
            if error.kind() != io::ErrorKind::UnexpectedEof {
                debug!("clock-helper: uid {uid}: {error}; closing");
            }
            return;
        }
        let answer = match Request::parse(&bytes) {
            Ok(request) => {
                let answer = apply(request, clock);
                log_applied(request, answer, uid);
                answer
            }
            Err(error) => {
                warn!("clock-helper: uid {uid}: {error}; closing");
                let _ = stream.write_all(&Answer::error(0, libc::EPROTO).emit());
                return;
            }
        };
        if stream.write_all(&answer.emit()).is_err() {
            return;
        }
    }
}

fn log_applied(request: Request, answer: Answer, uid: u32) {
    if answer.status != 0 {
        warn!(
            "clock-helper: {request:?} for uid {uid} failed: {}",
            io::Error::from_raw_os_error(answer.status)
        );
        return;
    }
    match request {
        Request::Step { delta_ns } => info!(
            "clock-helper: stepped the clock by {} for uid {uid}",
            format_offset(delta_ns as f64 / hvproto::clock::NANOS)
        ),
        Request::SetFrequency { scaled } => debug!(
            "clock-helper: frequency {:+.3} ppm for uid {uid}",
            privops::ppm_from_scaled(scaled)
        ),
        _ if answer.op == op::READ_FREQUENCY => debug!(
            "clock-helper: read frequency {:+.3} ppm for uid {uid}",
            privops::ppm_from_scaled(answer.value)
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
