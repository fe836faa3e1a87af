//! The shutdown service: decode the request, answer it, and only after the answer is sent run the action
//! (docs/PROTOCOL.md §8.2). The action goes through [`Power`], so tests use a fake that records what was asked and the
//! real one (`crate::system::power`) never runs in unit tests.
//!
//! What runs: the configured command of the action, argv without a shell. A forced request is still an
//! orderly shutdown, as Linux's hv_utils treats flags 0 and 1 alike (`drivers/hv/hv_util.c`,
//! `shutdown_onchannelcallback`: both `orderly_poweroff`): FORCE means "applications may not veto", so
//! `--ignore-inhibitors` is added when the program is `systemctl`, never `--force`, which skips stopping the
//! services and can lose data. Before the orderly command of a forced power-off or reboot the agent arms an
//! [`Escalation`]: a unit after which systemd forces the action if the system is still up `force_after` later
//! (the same argv as root or not: the unit works for both, and survives the agent, which the shutdown stops).
//! Any command gets the request in its
//! environment (HVAGENT_SHUTDOWN_ACTION, _FORCE, _REASON, _MESSAGE), which is how a custom command learns
//! about force; custom commands are not escalated. When the configured command is the built-in
//! `systemctl VERB` (by name, or made absolute at load) and systemd is not PID 1, the agent falls back to sync(2) and reboot(2) with the matching
//! command (power off, restart, software suspend), which is always forced: nothing stops the services first.

use std::time::{Duration, Instant};

use log::{error, info, warn};

use super::logic::{LinkId, Logic, Refusal, StatusLine};
use crate::wire::shutdown::{flags, ShutdownRequest, DISPLAY_MESSAGE_LEN};
use crate::wire::{IcVersion, Message, MessageRef, ReplyWriter, Status};

/// What the shutdown service runs for each request (argv, no shell).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ShutdownSettings {
    pub poweroff: Vec<String>,
    pub reboot: Vec<String>,
    pub hibernate: Vec<String>,
    /// How long a forced power-off or reboot may take its orderly course before systemd forces it (the
    /// instance of hvagent-force-ACTION@.service, rounded up to seconds); zero never escalates.
    pub force_after: Duration,
}

/// The default `force_after`: five minutes, well beyond systemd's default stop time-outs of 90 s.
pub const DEFAULT_FORCE_AFTER: Duration = Duration::from_secs(300);

/// The built-in shutdown commands, as `Config::default()` holds them; the agent's config loading makes
/// `systemctl` absolute where PATH has it. With these and no systemd as PID 1 the agent falls back to reboot(2).
pub fn default_command(verb: &str) -> Vec<String> {
    vec!["systemctl".to_string(), verb.to_string()]
}

/// Whether `argv` is the built-in command of `verb`: `systemctl VERB`, by that name or any absolute path to
/// a `systemctl` (what load makes of the name). Written in the file or not, it is the default, so a guest
/// without systemctl may name it (and gets the reboot(2) fallback), and its absolute form, as
/// `check-config` prints it, means the same.
pub fn is_default_command(argv: &[String], verb: &str) -> bool {
    match argv {
        [program, arg] => arg == verb && program.rsplit('/').next() == Some("systemctl"),
        _ => false,
    }
}

impl Default for ShutdownSettings {
    fn default() -> ShutdownSettings {
        ShutdownSettings {
            poweroff: default_command("poweroff"),
            reboot: default_command("reboot"),
            hibernate: default_command("hibernate"),
            force_after: DEFAULT_FORCE_AFTER,
        }
    }
}

/// What the host asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerAction {
    PowerOff,
    Reboot,
    Hibernate,
}

impl PowerAction {
    pub fn name(self) -> &'static str {
        match self {
            PowerAction::PowerOff => "poweroff",
            PowerAction::Reboot => "reboot",
            PowerAction::Hibernate => "hibernate",
        }
    }
}

/// A command's extra environment variables.
pub type Env = Vec<(&'static str, String)>;

/// How an action is carried out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Run argv (no shell) with these extra environment variables, without waiting for it; with an
    /// escalation, arm it first.
    Command {
        argv: Vec<String>,
        env: Vec<(&'static str, String)>,
        escalation: Option<Escalation>,
    },
    /// sync(2), then reboot(2) with the action's command.
    Syscall(PowerAction),
}

/// The escalation of a forced power-off or reboot: systemd starts `hvagent-force-ACTION@SECONDS.service`
/// before the orderly command runs; that unit sleeps SECONDS (`force_after`, rounded up) and then has
/// systemd power off or reboot by force (SuccessAction=poweroff-force or reboot-force). Armed in advance
/// because the shutdown stops the agent, D-Bus and polkit at once: nobody could ask for it later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Escalation {
    /// `systemctl start --no-block UNIT`, run before the orderly command.
    pub arm: Vec<String>,
    /// `systemctl stop --no-block UNIT`, run when the orderly command failed: nothing is under way then.
    pub disarm: Vec<String>,
}

/// The unit that forces `action` `force_after` after it started.
pub fn escalation_unit(action: PowerAction, force_after: Duration) -> String {
    format!(
        "hvagent-force-{}@{}.service",
        action.name(),
        force_after.as_secs_f64().ceil() as u64
    )
}

/// The system side of the shutdown service.
pub trait Power {
    /// Whether the system was booted with systemd (sd_booted(3): /run/systemd/system exists).
    fn systemd_booted(&self) -> bool;
    /// Whether the guest can hibernate: "disk" in /sys/power/state and some swap active.
    fn can_hibernate(&self) -> bool;
    /// Starts argv without a shell and without waiting for it.
    fn spawn(&mut self, argv: &[String], env: &[(&'static str, String)]) -> Result<(), String>;
    /// Whether the command started last has ended: None while it runs (or when none was started),
    /// Some(Ok) for exit status 0, Some(Err) with why otherwise.
    fn try_wait(&mut self) -> Option<Result<(), String>>;
    /// sync(2) then reboot(2); returns only when that failed, with why (for hibernation also after the
    /// resume, saying so).
    fn reboot_now(&mut self, action: PowerAction) -> String;
}

/// The action a flags value asks for, and whether it is forced; None for a value docs/PROTOCOL.md §8.1 does not list.
pub fn decode_flags(value: u32) -> Option<(PowerAction, bool)> {
    let force = value & flags::FORCE != 0;
    let action = match value & !flags::FORCE {
        0 => PowerAction::PowerOff,
        flags::REBOOT => PowerAction::Reboot,
        flags::HIBERNATE => PowerAction::Hibernate,
        _ => return None,
    };
    Some((action, force))
}

/// The display message as text: at most its 2048 bytes, UTF-16LE when it looks like it (a host writes
/// Windows strings), bytes otherwise; cut at the first NUL, invalid sequences replaced (never an error). It
/// comes from the host and is untrusted: escape it ([`str::escape_debug`]) wherever it is shown.
pub fn display_text(bytes: &[u8]) -> String {
    let bytes = &bytes[..bytes.len().min(DISPLAY_MESSAGE_LEN)];
    let looks_utf16 = bytes.len() >= 2 && bytes[0] != 0 && bytes[1] == 0;
    if looks_utf16 {
        let units: Vec<u16> = crate::wire::utf16le_units(bytes)
            .take_while(|&unit| unit != 0)
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        String::from_utf8_lossy(&bytes[..end]).into_owned()
    }
}

/// Whether a program is systemctl, to which the agent adds its own options.
fn is_systemctl(argv: &[String]) -> bool {
    argv.first()
        .is_some_and(|program| program.rsplit('/').next() == Some("systemctl"))
}

/// Decides what a request means: the action and how to carry it out, or the refusal to answer with.
pub fn plan(
    request: &ShutdownRequest,
    config: &ShutdownSettings,
    power: &dyn Power,
) -> Result<(PowerAction, Plan), Refusal> {
    let Some((action, force)) = decode_flags(request.flags) else {
        return Err(Refusal::new(
            Status::FAIL,
            format!(
                "flags {:#x} are none of 0 (power off), 2 (reboot), 4 (hibernate), each with or without 1 (force)",
                request.flags
            ),
        ));
    };
    if action == PowerAction::Hibernate && !power.can_hibernate() {
        return Err(Refusal::new(
            Status::FAIL,
            "hibernation was asked for, but this guest cannot hibernate (no \"disk\" in /sys/power/state or no \
             active swap)",
        ));
    }
    let configured = match action {
        PowerAction::PowerOff => &config.poweroff,
        PowerAction::Reboot => &config.reboot,
        PowerAction::Hibernate => &config.hibernate,
    };
    if is_default_command(configured, action.name()) && !power.systemd_booted() {
        return Ok((action, Plan::Syscall(action)));
    }
    let mut argv = configured.clone();
    let mut escalation = None;
    if force && is_systemctl(&argv) {
        // A hibernation resumes into a running system, so "still up later" says nothing about it.
        if action != PowerAction::Hibernate && !config.force_after.is_zero() {
            let unit = escalation_unit(action, config.force_after);
            let systemctl = |verb: &str| {
                [argv[0].as_str(), verb, "--no-block", &unit]
                    .map(String::from)
                    .to_vec()
            };
            escalation = Some(Escalation {
                arm: systemctl("start"),
                disarm: systemctl("stop"),
            });
        }
        argv.push("--ignore-inhibitors".to_string());
    }
    let env = vec![
        ("HVAGENT_SHUTDOWN_ACTION", action.name().to_string()),
        ("HVAGENT_SHUTDOWN_FORCE", u8::from(force).to_string()),
        (
            "HVAGENT_SHUTDOWN_REASON",
            format!("{:#010x}", request.reason_code),
        ),
        (
            "HVAGENT_SHUTDOWN_MESSAGE",
            display_text(&request.display_message),
        ),
    ];
    Ok((
        action,
        Plan::Command {
            argv,
            env,
            escalation,
        },
    ))
}

/// Where the service stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    /// Answered; the action runs once the answer is sent.
    Queued(PowerAction, Plan),
    /// The escalation's unit is being started (`arm`); the orderly command runs once that has ended.
    Arming {
        action: PowerAction,
        argv: Vec<String>,
        env: Vec<(&'static str, String)>,
        disarm: Vec<String>,
        since: Instant,
    },
    /// The action is under way; further requests are answered and ignored.
    InProgress(PowerAction),
}

/// The shutdown service's state.
pub struct ShutdownLogic {
    config: ShutdownSettings,
    power: Box<dyn Power>,
    phase: Phase,
    /// When to look whether the command has ended (only while one runs).
    check_at: Option<Instant>,
    /// When to call reboot(2), for the fallback.
    reboot_at: Option<(Instant, PowerAction)>,
    /// How to disarm the escalation armed for the orderly command under way, should that command fail.
    disarm: Option<(Vec<String>, Env)>,
}

/// How long the reboot(2) fallback waits after the answer was handed to the socket, so that it leaves the
/// guest before the power goes (a vsock transport sends from a kernel worker, after write(2) returned).
pub const SYSCALL_GRACE: Duration = Duration::from_millis(500);

/// How often a running shutdown command is looked at; only while one runs.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often the arming command is looked at: the orderly command waits for it.
const ARM_CHECK_EVERY: Duration = Duration::from_millis(50);
/// How long the orderly command waits for the arming command at most (`systemctl start --no-block` returns
/// in milliseconds; polkit may take longer); after that it runs anyway.
const ARM_WAIT: Duration = Duration::from_secs(5);

impl ShutdownLogic {
    pub fn new(config: ShutdownSettings, power: Box<dyn Power>) -> ShutdownLogic {
        ShutdownLogic {
            config,
            power,
            phase: Phase::Idle,
            check_at: None,
            reboot_at: None,
            disarm: None,
        }
    }

    fn run(&mut self, action: PowerAction, plan: Plan, now: Instant) {
        match plan {
            Plan::Command {
                argv,
                env,
                escalation: Some(escalation),
            } => match self.power.spawn(&escalation.arm, &env) {
                Ok(()) => {
                    info!(
                        "shutdown: arming the escalation for {}: {}",
                        action.name(),
                        escalation.arm.join(" ")
                    );
                    self.phase = Phase::Arming {
                        action,
                        argv,
                        env,
                        disarm: escalation.disarm,
                        since: now,
                    };
                    self.check_at = Some(now + ARM_CHECK_EVERY);
                }
                Err(why) => {
                    warn!(
                        "shutdown: cannot run {}: {why}; the {} goes on without an escalation",
                        escalation.arm.join(" "),
                        action.name()
                    );
                    self.start_command(action, argv, env, now);
                }
            },
            Plan::Command { argv, env, .. } => self.start_command(action, argv, env, now),
            Plan::Syscall(action) => {
                info!(
                    "shutdown: systemd is not PID 1; sync and reboot(2) for {} in {} ms",
                    action.name(),
                    SYSCALL_GRACE.as_millis()
                );
                self.phase = Phase::InProgress(action);
                self.reboot_at = Some((now + SYSCALL_GRACE, action));
            }
        }
    }

    /// Runs the action's own command.
    fn start_command(
        &mut self,
        action: PowerAction,
        argv: Vec<String>,
        env: Vec<(&'static str, String)>,
        now: Instant,
    ) {
        match self.power.spawn(&argv, &env) {
            Ok(()) => {
                info!("shutdown: {} started: {}", action.name(), argv.join(" "));
                self.phase = Phase::InProgress(action);
                self.check_at = Some(now + CHECK_EVERY);
            }
            Err(why) => {
                error!(
                    "shutdown: cannot run {} for {}: {why}; check [shutdown] {} in the config",
                    argv.join(" "),
                    action.name(),
                    action.name()
                );
                self.phase = Phase::Idle;
                self.disarm();
            }
        }
    }

    /// The arming command was looked at: once it has ended (or after ARM_WAIT), the orderly command runs.
    fn check_arming(&mut self, now: Instant) {
        let Phase::Arming { since, .. } = &self.phase else {
            return;
        };
        let outcome = self.power.try_wait();
        if outcome.is_none() && now < *since + ARM_WAIT {
            self.check_at = Some(now + ARM_CHECK_EVERY);
            return;
        }
        let Phase::Arming {
            action,
            argv,
            env,
            disarm,
            ..
        } = std::mem::replace(&mut self.phase, Phase::Idle)
        else {
            unreachable!("matched above")
        };
        match outcome {
            Some(Ok(())) => {
                info!(
                    "shutdown: escalation armed: systemd forces the {} if the system is still up in {} s",
                    action.name(),
                    self.config.force_after.as_secs_f64().ceil()
                );
                self.disarm = Some((disarm, env.clone()));
            }
            Some(Err(why)) => warn!(
                "shutdown: arming the escalation failed: {why}; the {} goes on without one (are \
                 hvagent-force-{}@.service and the polkit rule installed?)",
                action.name(),
                action.name()
            ),
            None => {
                warn!(
                    "shutdown: arming the escalation has not ended after {} s; the {} goes on",
                    ARM_WAIT.as_secs(),
                    action.name()
                );
                // It may still arm: disarm it too should the command fail.
                self.disarm = Some((disarm, env.clone()));
            }
        }
        self.start_command(action, argv, env, now);
    }

    /// The orderly command failed or could not run: stop the escalation armed for it, if any.
    fn disarm(&mut self) {
        let Some((argv, env)) = self.disarm.take() else {
            return;
        };
        warn!(
            "shutdown: nothing is under way, so the escalation goes: {}",
            argv.join(" ")
        );
        if let Err(why) = self.power.spawn(&argv, &env) {
            error!("shutdown: cannot run {}: {why}", argv.join(" "));
        }
    }

    fn reboot(&mut self, action: PowerAction) {
        self.reboot_at = None;
        let why = self.power.reboot_now(action);
        if action == PowerAction::Hibernate {
            info!("shutdown: reboot(2) for hibernate returned: {why}");
        } else {
            error!("shutdown: reboot(2) for {} failed: {why}", action.name());
        }
        self.phase = Phase::Idle;
    }
}

impl Logic for ShutdownLogic {
    fn request(
        &mut self,
        _link: LinkId,
        request: &MessageRef<'_>,
        _version: IcVersion,
        _now: Instant,
        reply: &mut ReplyWriter<'_>,
    ) -> Result<Status, Refusal> {
        let body = ShutdownRequest::parse(request.body).map_err(Refusal::invalid)?;
        info!(
            "shutdown: request flags {:#x}, reason {:#010x}, timeout {} s (not waited for), message \"{}\"",
            body.flags,
            body.reason_code,
            body.timeout_seconds,
            display_text(&body.display_message).escape_debug()
        );
        if let Phase::Queued(action, _) | Phase::Arming { action, .. } | Phase::InProgress(action) =
            &self.phase
        {
            info!(
                "shutdown: a {} is already in progress; answered and ignored",
                action.name()
            );
            reply.extend_from_slice(request.body);
            return Ok(Status::OK);
        }
        let (action, plan) = plan(&body, &self.config, self.power.as_ref())?;
        self.phase = Phase::Queued(action, plan);
        reply.extend_from_slice(request.body);
        Ok(Status::OK)
    }

    fn after_send(&mut self, now: Instant) {
        if let Phase::Queued(action, plan) = &self.phase {
            let (action, plan) = (*action, plan.clone());
            self.run(action, plan, now);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        [self.check_at, self.reboot_at.map(|(at, _)| at)]
            .into_iter()
            .flatten()
            .min()
    }

    fn on_timer(&mut self, now: Instant, _out: &mut Vec<(LinkId, Message)>) {
        if let Some((at, action)) = self.reboot_at {
            if at <= now {
                self.reboot(action);
            }
            return;
        }
        if self.check_at.map_or(true, |at| at > now) {
            return;
        }
        self.check_at = None;
        if matches!(self.phase, Phase::Arming { .. }) {
            self.check_arming(now);
            return;
        }
        match self.power.try_wait() {
            None => self.check_at = Some(now + CHECK_EVERY),
            Some(Ok(())) => {
                info!("shutdown: the command finished; the system is going down");
                // The disarming command, if any, needs no watching: its failure changes nothing here.
                self.disarm = None;
            }
            Some(Err(why)) => {
                warn!("shutdown: the command failed: {why}; a new request will be carried out");
                self.phase = Phase::Idle;
                self.disarm();
            }
        }
    }

    fn status(&self, _now: Instant) -> Vec<StatusLine> {
        let state = match &self.phase {
            Phase::Idle => "idle".to_string(),
            Phase::Queued(action, _) => format!("{} queued", action.name()),
            Phase::Arming { action, .. } => format!("{} arming its escalation", action.name()),
            Phase::InProgress(action) => format!("{} in progress", action.name()),
        };
        vec![("shutdown", state)]
    }
}

#[cfg(test)]
mod tests;
