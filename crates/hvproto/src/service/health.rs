//! Application health for the heartbeat: its settings ([`HealthSettings`], the `health*` keys of
//! `[heartbeat]`), which check to run, how its outcome maps to the application state a Hyper-V host shows
//! (docs/PROTOCOL.md §6.4; openvmm `hyperv_ic_protocol/src/heartbeat.rs`), and when a check is due. The
//! check itself runs as a child process behind [`Checker`] (the real one is `crate::system::health`);
//! tests use fakes.
//!
//! A reply never waits for a check: it carries the last known state. A check starts only after a heartbeat
//! was answered and the state is older than the interval, so health costs no wake-ups of its own; a check
//! still running after the time limit is killed.

use std::time::{Duration, Instant};

use log::{info, warn};

use super::logic::Watch;
use crate::wire::heartbeat::AppState;

/// Where the application state comes from: the heartbeat's `health` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `Systemd` where systemd is PID 1, `None` elsewhere.
    Auto,
    /// `systemctl is-system-running`'s answer.
    Systemd,
    /// `HealthSettings::command`'s exit status.
    Command,
    /// No check: always UNKNOWN, as Linux's hv_utils reports.
    None,
}

impl Mode {
    /// Every mode, in the order messages and docs list them.
    pub const ALL: [Mode; 4] = [Mode::Auto, Mode::Systemd, Mode::Command, Mode::None];

    /// The mode's name in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Systemd => "systemd",
            Mode::Command => "command",
            Mode::None => "none",
        }
    }

    /// How this mode's checks are read, on a system booted with systemd or not; `None` when it runs none.
    pub fn reading(self, systemd_booted: bool) -> Option<Reading> {
        match self {
            Mode::Auto if systemd_booted => Some(Reading::SystemState),
            Mode::Systemd => Some(Reading::SystemState),
            Mode::Command => Some(Reading::ExitStatus),
            Mode::Auto | Mode::None => None,
        }
    }
}

/// The heartbeat's health settings (the `health*` keys of `[heartbeat]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HealthSettings {
    pub mode: Mode,
    /// The check of [`Mode::Command`], argv without a shell.
    pub command: Vec<String>,
    /// A check starts when a heartbeat arrives and the state is older than this.
    pub interval: Duration,
    /// A check still running after this is killed.
    pub timeout: Duration,
}

impl Default for HealthSettings {
    fn default() -> HealthSettings {
        HealthSettings {
            mode: Mode::Auto,
            command: Vec::new(),
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        }
    }
}

/// What a finished check's outcome is read as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    /// The system state `systemctl is-system-running` prints.
    SystemState,
    /// The exit status of a command: 0 is healthy.
    ExitStatus,
}

/// How a check ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The child exited: its exit code (None when a signal ended it) and the start of its stdout.
    Exited { code: Option<i32>, stdout: String },
    /// It ran past the time limit and was killed.
    TimedOut,
    /// It could not be started.
    SpawnFailed(String),
}

/// The application state an outcome means, read as `reading`.
pub fn map(reading: Reading, outcome: &Outcome) -> AppState {
    match (reading, outcome) {
        (Reading::ExitStatus, Outcome::Exited { code: Some(0), .. }) => AppState::HEALTHY,
        (Reading::ExitStatus, _) => AppState::CRITICAL,
        (Reading::SystemState, Outcome::Exited { stdout, .. }) => match stdout.trim() {
            "running" => AppState::HEALTHY,
            "degraded" | "maintenance" => AppState::CRITICAL,
            "stopping" => AppState::STOPPED,
            _ => AppState::UNKNOWN,
        },
        (Reading::SystemState, _) => AppState::UNKNOWN,
    }
}

/// A check run as a child process.
pub trait Checker: Send {
    /// Starts a check.
    fn start(&mut self) -> Result<(), String>;
    /// What to watch while the check runs (its stdout); None once there is nothing left to read.
    fn watch(&self) -> Option<Watch>;
    /// Reads what is ready; the outcome once the check has ended.
    fn ready(&mut self) -> Option<Outcome>;
    /// Kills and reaps a check that ran too long.
    fn kill(&mut self);
    /// What runs, for logs.
    fn describe(&self) -> String;
}

/// How soon to look again for a child that closed its stdout but has not been reaped yet (exit closes the
/// descriptors a moment before the process becomes a zombie).
const REAP_RETRY: Duration = Duration::from_millis(10);

/// A check to run and how to read its outcome.
pub struct Check {
    pub reading: Reading,
    pub checker: Box<dyn Checker>,
}

/// The health state of the heartbeat service.
pub struct Health {
    /// None: no check runs and the state stays UNKNOWN.
    check: Option<Check>,
    interval: Duration,
    timeout: Duration,
    state: AppState,
    /// When the state was last determined.
    checked_at: Option<Instant>,
    /// When the running check started.
    running_since: Option<Instant>,
    /// A heartbeat found the state stale: start a check once the answer is sent.
    due: bool,
    /// When to look again for a check that closed its stdout.
    retry_at: Option<Instant>,
}

impl Health {
    /// Health from `check` (none: always UNKNOWN), run at most every `interval` and killed after `timeout`.
    pub fn new(check: Option<Check>, interval: Duration, timeout: Duration) -> Health {
        Health {
            check,
            interval,
            timeout,
            state: AppState::UNKNOWN,
            checked_at: None,
            running_since: None,
            due: false,
            retry_at: None,
        }
    }

    /// Health that always reports UNKNOWN.
    pub fn none() -> Health {
        Health::new(None, Duration::MAX, Duration::MAX)
    }

    /// The last known state, for the reply.
    pub fn state(&self) -> AppState {
        self.state
    }

    pub fn running(&self) -> bool {
        self.running_since.is_some()
    }

    /// A heartbeat was answered at `now`: note whether a check is due.
    pub fn heartbeat(&mut self, now: Instant) {
        let stale = self.checked_at.map_or(true, |at| {
            now.saturating_duration_since(at) >= self.interval
        });
        if self.check.is_some() && !self.running() && stale {
            self.due = true;
        }
    }

    /// The answers are sent: start a check if one is due.
    pub fn after_send(&mut self, now: Instant) {
        if !std::mem::take(&mut self.due) {
            return;
        }
        let Some(check) = self.check.as_mut() else {
            return;
        };
        match check.checker.start() {
            Ok(()) => self.running_since = Some(now),
            Err(why) => {
                let what = check.checker.describe();
                if self.checked_at.is_none() {
                    warn!("heartbeat: cannot run the health check {what}: {why}");
                }
                self.finish(Outcome::SpawnFailed(why), now);
            }
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        let limit = self.running_since.map(|since| since + self.timeout);
        match (limit, self.retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn on_timer(&mut self, now: Instant) {
        let (Some(since), Some(check)) = (self.running_since, self.check.as_mut()) else {
            self.retry_at = None;
            return;
        };
        if now >= since + self.timeout {
            check.checker.kill();
            self.finish(Outcome::TimedOut, now);
        } else if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_at = None;
            self.watch_ready(now);
        }
    }

    pub fn watched(&self) -> Option<Watch> {
        self.running_since?;
        self.check.as_ref()?.checker.watch()
    }

    pub fn watch_ready(&mut self, now: Instant) {
        let Some(check) = self.check.as_mut().filter(|_| self.running_since.is_some()) else {
            return;
        };
        match check.checker.ready() {
            Some(outcome) => self.finish(outcome, now),
            None if check.checker.watch().is_none() => self.retry_at = Some(now + REAP_RETRY),
            None => {}
        }
    }

    /// A check ended with `outcome`: the state it means from now on.
    fn finish(&mut self, outcome: Outcome, now: Instant) {
        if let Some(check) = &self.check {
            let state = map(check.reading, &outcome);
            if state != self.state {
                info!(
                    "heartbeat: application state {} -> {} ({}: {})",
                    self.state.name(),
                    state.name(),
                    check.checker.describe(),
                    describe(&outcome)
                );
            }
            self.state = state;
        }
        self.checked_at = Some(now);
        self.running_since = None;
        self.retry_at = None;
    }
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Exited {
            code: Some(code),
            stdout,
        } if stdout.trim().is_empty() => {
            format!("exit status {code}")
        }
        Outcome::Exited {
            code: Some(code),
            stdout,
        } => {
            format!(
                "exit status {code}, said \"{}\"",
                stdout.trim().escape_debug()
            )
        }
        Outcome::Exited { code: None, .. } => "ended by a signal".to_string(),
        Outcome::TimedOut => "ran past its time limit and was killed".to_string(),
        Outcome::SpawnFailed(why) => format!("could not start: {why}"),
    }
}

#[cfg(test)]
mod tests;
