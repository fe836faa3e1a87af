//! The backup service (the VSS IC, message type 5; docs/PROTOCOL.md §10): on the host's FREEZE, run the
//! freeze hooks, flush, and freeze the chosen filesystems; on THAW, thaw them and run the hooks' thaw halves.
//! Linux's `drivers/hv/hv_snapshot.c` and `tools/hv/hv_vss_daemon.c` do the same between them; the answers
//! to the other operations are theirs (CHECK_HOT_BACKUP: no auto-recovery; GET_DM_INFO: flags 0; the rest:
//! HV_S_OK).
//!
//! **Never left frozen.** A freeze lasts until the first of: THAW, `thaw_after` expiring, the link that
//! froze closing, a reload (SIGHUP), the logic being dropped (the agent stopping), and the next start of the
//! agent, which thaws every candidate whatever an earlier run left ([`thaw_all`], also `hvagent thaw`).
//! Each thaw names its [`Trigger`] in the log.
//!
//! **Never deadlocked on its own writes.** From just before the first FIFREEZE to just after the last
//! FITHAW the logs are held by the [`LogHold`] edge (a line written to journald, which writes to a frozen
//! disk, would block the agent and so the thaw); hooks run outside that window, their output captured by
//! the [`Hooks`] edge.
//!
//! The work is done in the request itself: the answer to FREEZE must follow the freeze, and the hooks have
//! their `hook_timeout` each, so the loop waits at most hooks × hook_timeout plus the freeze (Linux's kernel
//! gives its daemon 15 minutes for a freeze, 30 s for the rest).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{error, info, warn};

use super::logic::{LinkId, Logic, Refusal, StatusLine};
use crate::wire::vss::{self, Operation};
use crate::wire::{IcVersion, MessageRef, ReplyWriter, Status};

/// What the backup service is configured with (`[backup]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BackupSettings {
    /// Executables run with `freeze` before a freeze and with `thaw` after, as qemu-guest-agent's
    /// fsfreeze-hook.d scripts are.
    pub hooks_dir: PathBuf,
    /// The longest a freeze may last before the agent thaws on its own.
    pub thaw_after: Duration,
    /// The longest one hook may run; it is killed after.
    pub hook_timeout: Duration,
    /// The mount points to freeze; none means every candidate (local, writable, able to freeze).
    pub mounts: Option<Vec<String>>,
}

pub const DEFAULT_HOOKS_DIR: &str = "/etc/hvagent/freeze-hook.d";
pub const DEFAULT_THAW_AFTER: Duration = Duration::from_secs(60);
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for BackupSettings {
    fn default() -> BackupSettings {
        BackupSettings {
            hooks_dir: PathBuf::from(DEFAULT_HOOKS_DIR),
            thaw_after: DEFAULT_THAW_AFTER,
            hook_timeout: DEFAULT_HOOK_TIMEOUT,
            mounts: None,
        }
    }
}

/// The filesystems: which may be frozen, and freezing and thawing them (the agent's is FIFREEZE/FITHAW on
/// the mounts of /proc/mounts; tests use fakes, and nothing here may freeze a development machine).
pub trait Freezer {
    /// The mount points that can be frozen, in mount order (parents before what is mounted on them).
    fn candidates(&mut self) -> Result<Vec<String>, String>;
    /// Flushes what is cached (sync(2)), so the freeze itself has little left to write.
    fn sync(&mut self);
    /// Freezes one mount point; a mount frozen already counts as done.
    fn freeze(&mut self, mount: &str) -> Result<(), String>;
    /// Thaws one mount point: true when it was frozen, false when it was not.
    fn thaw(&mut self, mount: &str) -> Result<bool, String>;
}

/// Which half of a hook runs: its argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookPhase {
    Freeze,
    Thaw,
}

impl HookPhase {
    pub fn arg(self) -> &'static str {
        match self {
            HookPhase::Freeze => "freeze",
            HookPhase::Thaw => "thaw",
        }
    }
}

/// The freeze hooks.
pub trait Hooks {
    /// The hooks there are, in name order.
    fn list(&mut self) -> Vec<String>;
    /// Runs `hook` with its phase as the argument for at most `timeout`; its output (captured, never
    /// written anywhere while it runs) when it exits 0, why otherwise.
    fn run(&mut self, hook: &str, phase: HookPhase, timeout: Duration) -> Result<String, String>;
}

/// Holds the agent's log lines in memory while filesystems are frozen, and emits them after.
pub trait LogHold {
    fn hold(&mut self);
    fn release(&mut self);
}

/// What made a thaw happen, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The host's THAW.
    Request,
    /// `thaw_after` expired.
    Deadline,
    /// The link that froze closed.
    LinkClosed,
    /// The service stopped (the agent stopping, or a reload that reopened it).
    Stopping,
    /// The agent was told to reload (SIGHUP).
    Reload,
    /// The agent started: whatever an earlier run left frozen.
    Start,
    /// A thaw that failed, tried again.
    Retry,
}

impl Trigger {
    fn describe(self) -> &'static str {
        match self {
            Trigger::Request => "the host's THAW",
            Trigger::Deadline => "thaw_after expired",
            Trigger::LinkClosed => "the host's link closed while frozen",
            Trigger::Stopping => "the backup service stopped",
            Trigger::Reload => "the agent was told to reload (SIGHUP)",
            Trigger::Start => "the agent started",
            Trigger::Retry => "a failed thaw tried again",
        }
    }
}

/// How soon a thaw that failed is tried again.
const THAW_RETRY: Duration = Duration::from_secs(1);

/// A freeze in force.
#[derive(Debug)]
struct Frozen {
    /// The link whose FREEZE this is.
    link: LinkId,
    since: Instant,
    /// When it thaws on its own (`thaw_after`, or the next retry of a failed thaw).
    deadline: Instant,
    /// Frozen mount points, in mount order.
    mounts: Vec<String>,
    /// Hooks whose freeze half ran, in the order they ran.
    hooks: Vec<String>,
    /// A thaw failed for `mounts`; the deadline is its retry.
    retrying: bool,
}

/// Thaws every mount `freezer` offers and returns the ones that were frozen: at start, and `hvagent thaw`.
/// Harmless when nothing is frozen.
pub fn thaw_all(freezer: &mut dyn Freezer) -> Result<Vec<String>, String> {
    let mut thawed = Vec::new();
    let mut errors = Vec::new();
    for mount in freezer.candidates()? {
        match freezer.thaw(&mount) {
            Ok(true) => thawed.push(mount),
            Ok(false) => {}
            Err(why) => errors.push(format!("{mount}: {why}")),
        }
    }
    if errors.is_empty() {
        Ok(thawed)
    } else {
        Err(errors.join("; "))
    }
}

/// The backup service's state: idle or one freeze in force.
pub struct BackupLogic {
    settings: BackupSettings,
    freezer: Box<dyn Freezer>,
    hooks: Box<dyn Hooks>,
    logs: Box<dyn LogHold>,
    frozen: Option<Frozen>,
    freezes: u64,
    last_thaw: Option<(Instant, Trigger)>,
}

impl BackupLogic {
    /// The service, after thawing whatever an earlier run of the agent may have left frozen.
    pub fn new(
        settings: BackupSettings,
        mut freezer: Box<dyn Freezer>,
        hooks: Box<dyn Hooks>,
        logs: Box<dyn LogHold>,
    ) -> BackupLogic {
        match thaw_all(freezer.as_mut()) {
            Ok(thawed) if thawed.is_empty() => {}
            Ok(thawed) => warn!(
                "backup: thawed {} at start ({}): an earlier run left them frozen",
                thawed.join(", "),
                Trigger::Start.describe()
            ),
            Err(why) => error!("backup: could not thaw at start: {why}"),
        }
        BackupLogic {
            settings,
            freezer,
            hooks,
            logs,
            frozen: None,
            freezes: 0,
            last_thaw: None,
        }
    }

    /// The mount points a freeze takes, in mount order.
    fn chosen(&mut self) -> Result<Vec<String>, String> {
        let candidates = self.freezer.candidates()?;
        let Some(wanted) = &self.settings.mounts else {
            return Ok(candidates);
        };
        for mount in wanted {
            if !candidates.contains(mount) {
                warn!("backup: mount {mount} (in mounts) is not a local writable filesystem that can freeze; skipped");
            }
        }
        Ok(candidates
            .into_iter()
            .filter(|mount| wanted.contains(mount))
            .collect())
    }

    /// Runs the thaw halves of `hooks`, last first.
    fn thaw_hooks(&mut self, hooks: &[String]) {
        for hook in hooks.iter().rev() {
            match self
                .hooks
                .run(hook, HookPhase::Thaw, self.settings.hook_timeout)
            {
                Ok(output) => info!("backup: hook {hook} thaw: ok{}", shown(&output)),
                Err(why) => error!("backup: hook {hook} thaw failed: {why}"),
            }
        }
    }

    fn freeze(&mut self, link: LinkId, now: Instant) -> Result<(), Refusal> {
        if let Some(frozen) = &self.frozen {
            info!(
                "backup: FREEZE while frozen for {:.1} s: answered OK, the thaw deadline stays",
                now.saturating_duration_since(frozen.since).as_secs_f64()
            );
            return Ok(());
        }
        let mounts = self
            .chosen()
            .map_err(|why| Refusal::new(Status::FAIL, format!("cannot list the mounts: {why}")))?;
        if mounts.is_empty() {
            warn!("backup: FREEZE with no filesystem to freeze: answered OK, nothing frozen");
        }
        let mut ran = Vec::new();
        for hook in self.hooks.list() {
            match self
                .hooks
                .run(&hook, HookPhase::Freeze, self.settings.hook_timeout)
            {
                Ok(output) => {
                    info!("backup: hook {hook} freeze: ok{}", shown(&output));
                    ran.push(hook);
                }
                Err(why) => {
                    self.thaw_hooks(&ran);
                    return Err(Refusal::new(
                        Status::FAIL,
                        format!("freeze hook {hook} failed: {why}; nothing was frozen"),
                    ));
                }
            }
        }
        self.freezer.sync();
        self.logs.hold();
        // Mounted-on before what they are mounted on: a parent frozen first would block its children's flush.
        let mut frozen: Vec<String> = Vec::new();
        for mount in mounts.iter().rev() {
            if let Err(why) = self.freezer.freeze(mount) {
                for done in &frozen {
                    let _ = self.freezer.thaw(done);
                }
                self.logs.release();
                self.thaw_hooks(&ran);
                return Err(Refusal::new(
                    Status::FAIL,
                    format!(
                        "cannot freeze {mount}: {why}; thawed what was frozen ({})",
                        list(&frozen)
                    ),
                ));
            }
            frozen.push(mount.clone());
        }
        frozen.reverse();
        info!(
            "backup: froze {} after {} hook(s); thaws by {:.0} s at the latest",
            list(&frozen),
            ran.len(),
            self.settings.thaw_after.as_secs_f64()
        );
        self.freezes += 1;
        self.frozen = Some(Frozen {
            link,
            since: now,
            deadline: now + self.settings.thaw_after,
            mounts: frozen,
            hooks: ran,
            retrying: false,
        });
        Ok(())
    }

    /// Ends the freeze in force, if any. A mount that will not thaw keeps the logs held and is tried again
    /// in a second; the hooks' thaw halves run once every mount is thawed.
    fn thaw(&mut self, trigger: Trigger, now: Instant) -> Result<(), String> {
        let Some(mut frozen) = self.frozen.take() else {
            if trigger == Trigger::Request {
                info!("backup: THAW while not frozen: answered OK");
            }
            return Ok(());
        };
        let mut stuck = Vec::new();
        let mut errors = Vec::new();
        for mount in &frozen.mounts {
            if let Err(why) = self.freezer.thaw(mount) {
                errors.push(format!("{mount}: {why}"));
                stuck.push(mount.clone());
            }
        }
        if !stuck.is_empty() {
            error!(
                "backup: could not thaw {} ({}); trying again in {} s",
                errors.join("; "),
                trigger.describe(),
                THAW_RETRY.as_secs()
            );
            frozen.mounts = stuck;
            frozen.deadline = now + THAW_RETRY;
            frozen.retrying = true;
            self.frozen = Some(frozen);
            return Err(errors.join("; "));
        }
        self.logs.release();
        info!(
            "backup: thawed {} after {:.3} s frozen ({})",
            list(&frozen.mounts),
            now.saturating_duration_since(frozen.since).as_secs_f64(),
            trigger.describe()
        );
        self.thaw_hooks(&frozen.hooks);
        self.last_thaw = Some((now, trigger));
        Ok(())
    }
}

/// Mount points for a log line.
fn list(mounts: &[String]) -> String {
    if mounts.is_empty() {
        "nothing".to_string()
    } else {
        mounts.join(", ")
    }
}

/// A hook's output for a log line: its first line, when it printed anything.
fn shown(output: &str) -> String {
    match output.lines().find(|line| !line.trim().is_empty()) {
        Some(line) => format!(" ({})", line.trim().escape_debug()),
        None => String::new(),
    }
}

impl Logic for BackupLogic {
    fn request(
        &mut self,
        link: LinkId,
        request: &MessageRef<'_>,
        _version: IcVersion,
        now: Instant,
        reply: &mut ReplyWriter<'_>,
    ) -> Result<Status, Refusal> {
        let operation = vss::operation(request.body).map_err(Refusal::invalid)?;
        let flags = match operation {
            Operation::HOT_BACKUP => Some(vss::NO_AUTO_RECOVERY),
            Operation::GET_DM_INFO => Some(0),
            Operation::FREEZE => {
                self.freeze(link, now)?;
                None
            }
            Operation::THAW => {
                self.thaw(Trigger::Request, now)
                    .map_err(|why| Refusal::new(Status::FAIL, format!("thaw failed: {why}")))?;
                None
            }
            _ => None,
        };
        vss::emit_answer(request.body, flags, reply);
        Ok(Status::OK)
    }

    fn closed(&mut self, link: LinkId) {
        if self
            .frozen
            .as_ref()
            .is_some_and(|frozen| frozen.link == link)
        {
            let _ = self.thaw(Trigger::LinkClosed, Instant::now());
        }
    }

    fn reloading(&mut self, now: Instant) {
        let _ = self.thaw(Trigger::Reload, now);
    }

    fn deadline(&self) -> Option<Instant> {
        self.frozen.as_ref().map(|frozen| frozen.deadline)
    }

    fn on_timer(&mut self, now: Instant, _out: &mut Vec<(LinkId, crate::wire::Message)>) {
        let Some(frozen) = &self.frozen else {
            return;
        };
        if now >= frozen.deadline {
            let trigger = if frozen.retrying {
                Trigger::Retry
            } else {
                Trigger::Deadline
            };
            let _ = self.thaw(trigger, now);
        }
    }

    fn status(&self, now: Instant) -> Vec<StatusLine> {
        let state = match &self.frozen {
            None => "idle".to_string(),
            Some(frozen) => format!(
                "frozen for {:.1} s: {}; thaws in {:.1} s at the latest",
                now.saturating_duration_since(frozen.since).as_secs_f64(),
                list(&frozen.mounts),
                frozen.deadline.saturating_duration_since(now).as_secs_f64()
            ),
        };
        let mut lines = vec![("backup", state), ("freezes", self.freezes.to_string())];
        if let Some((at, trigger)) = self.last_thaw {
            lines.push((
                "last thaw",
                format!(
                    "{:.1} s ago ({})",
                    now.saturating_duration_since(at).as_secs_f64(),
                    trigger.describe()
                ),
            ));
        }
        lines
    }
}

impl Drop for BackupLogic {
    /// A stopping or reloading agent leaves nothing frozen.
    fn drop(&mut self) {
        let _ = self.thaw(Trigger::Stopping, Instant::now());
    }
}

#[cfg(test)]
mod tests;
