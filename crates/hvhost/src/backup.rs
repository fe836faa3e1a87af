//! `hvhost backup`: asks a listening agent's backup service (VSS) to freeze the guest's filesystems, runs a
//! command on the host while they are frozen (a snapshot, say), and asks for the thaw whatever the command
//! did. Owns the order of the steps, the command's run and the exit status; the messages and their checks
//! are hvproto's `service::host::backup`.

use std::ffi::OsString;
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::client::{say, Client, PeerError};
use crate::net::Address;
use crate::requests::open_channel;
use hvproto::service::host::backup::{self, BackupAnswer};
use hvproto::wire::vss::Operation;

/// How long hvhost waits for each answer of the backup service by default: a guest's freeze runs its hooks
/// and syncs before it answers, which can take far longer than a heartbeat.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// What `hvhost backup` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupCommand {
    /// Freeze only. The agent thaws when the connection closes, that is when hvhost exits.
    Freeze,
    /// Thaw only: what an admin runs to end a freeze by hand.
    Thaw,
    /// Freeze, run this argv (no shell) while frozen, thaw.
    Run(Vec<OsString>),
}

/// How a backup ended; each has its exit status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every step answered HV_S_OK and the command exited 0.
    Done,
    /// The guest answered the freeze with an error status: the command did not run.
    FreezeRefused(String),
    /// The command exited non-zero, died of a signal or could not start; the guest was thawed.
    CommandFailed(String),
    /// The thaw was not answered HV_S_OK: refused, unanswered or the connection lost during it.
    ThawFailed(String),
}

impl Outcome {
    /// 0 done, 3 freeze refused, 4 command failed, 5 thaw failed (1 and 2 are hvhost's usual connection and
    /// usage failures).
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Done => 0,
            Outcome::FreezeRefused(_) => 3,
            Outcome::CommandFailed(_) => 4,
            Outcome::ThawFailed(_) => 5,
        }
    }

    /// What went wrong, for stderr.
    pub fn problem(&self) -> Option<&str> {
        match self {
            Outcome::Done => None,
            Outcome::FreezeRefused(why)
            | Outcome::CommandFailed(why)
            | Outcome::ThawFailed(why) => Some(why),
        }
    }
}

/// `hvhost backup`: the steps of `command`, each answer waited for up to `timeout`, one line per step.
/// Errors are failures before the freeze was answered (connection, negotiation, a wrong answer).
pub fn backup(
    address: &Address,
    command: &BackupCommand,
    timeout: Duration,
    out: &mut dyn Write,
) -> Result<Outcome, PeerError> {
    let mut client = open_channel(address, backup::channel(), out)?;
    if *command == BackupCommand::Thaw {
        return Ok(match thaw(&mut client, timeout, out) {
            Ok(_) => Outcome::Done,
            Err(why) => Outcome::ThawFailed(why),
        });
    }
    // CHECK_HOT_BACKUP is informational: the freeze's own answer decides.
    step(&mut client, Operation::HOT_BACKUP, "check", timeout, out)?;
    let freeze = match step(&mut client, Operation::FREEZE, "freeze", timeout, out) {
        Ok(freeze) => freeze,
        Err(error) => {
            // The guest may freeze after all; closing the link (hvhost exiting) is what makes it thaw.
            say(
                out,
                "backup freeze failed: closing the connection, on which the agent thaws",
            );
            return Err(error);
        }
    };
    if !freeze.is_ok() {
        return Ok(Outcome::FreezeRefused(format!(
            "the guest refused the freeze ({}); nothing was run",
            freeze.status
        )));
    }
    let frozen_at = Instant::now();
    let BackupCommand::Run(argv) = command else {
        return Ok(Outcome::Done);
    };
    let ran = run(argv, out);
    // The thaw is asked for whatever the command did.
    let thawed = thaw(&mut client, timeout, out);
    if thawed.is_ok() {
        say(
            out,
            &format!("frozen for {:.1} ms", millis(frozen_at.elapsed())),
        );
    }
    Ok(match (ran, thawed) {
        (_, Err(why)) => Outcome::ThawFailed(why),
        (Err(why), Ok(_)) => Outcome::CommandFailed(format!("{why}; the guest was thawed")),
        (Ok(()), Ok(_)) => Outcome::Done,
    })
}

/// Sends one request and prints its answer: `backup WORD answer=STATUS [flags=0xN] rtt_ms=X`.
fn step(
    client: &mut Client,
    operation: Operation,
    word: &'static str,
    timeout: Duration,
    out: &mut dyn Write,
) -> Result<BackupAnswer, PeerError> {
    let event = client.ask(
        |channel, now| backup::request(channel, operation, now),
        word,
        timeout,
    )?;
    let answer = BackupAnswer::read(operation, event).map_err(PeerError::Protocol)?;
    let flags = answer
        .flags
        .filter(|_| operation == Operation::HOT_BACKUP)
        .map_or(String::new(), |flags| format!(" flags={flags:#x}"));
    say(
        out,
        &format!(
            "backup {word} answer={}{flags} rtt_ms={:.1}",
            answer.status,
            millis(answer.round_trip)
        ),
    );
    Ok(answer)
}

/// The thaw step; Err says why it did not end in HV_S_OK.
fn thaw(
    client: &mut Client,
    timeout: Duration,
    out: &mut dyn Write,
) -> Result<BackupAnswer, String> {
    match step(client, Operation::THAW, "thaw", timeout, out) {
        Ok(answer) if answer.is_ok() => Ok(answer),
        Ok(answer) => Err(format!(
            "the guest refused the thaw ({}); check the guest's log and run hvagent thaw there",
            answer.status
        )),
        Err(error) => Err(format!(
            "the thaw failed: {error}; the agent thaws when the connection closes, check its log"
        )),
    }
}

/// Runs `argv` with hvhost's own stdin, stdout and stderr; Err says how it failed.
fn run(argv: &[OsString], out: &mut dyn Write) -> Result<(), String> {
    let shown = argv
        .iter()
        .map(|arg| arg.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    say(out, &format!("run command=\"{}\"", shown.escape_debug()));
    let Some((program, args)) = argv.split_first() else {
        return Err("no command was given".to_string());
    };
    let started = Instant::now();
    let status = match Command::new(program).args(args).status() {
        Ok(status) => status,
        Err(error) => {
            say(out, &format!("run failed to start: {error}"));
            return Err(format!("the command could not start: {error}"));
        }
    };
    let took = millis(started.elapsed());
    match (status.code(), signal_of(&status)) {
        (Some(0), _) => {
            say(out, &format!("run exit=0 ms={took:.1}"));
            Ok(())
        }
        (Some(code), _) => {
            say(out, &format!("run exit={code} ms={took:.1}"));
            Err(format!("the command exited with status {code}"))
        }
        (None, signal) => {
            let signal = signal.map_or("?".to_string(), |number| number.to_string());
            say(out, &format!("run signal={signal} ms={took:.1}"));
            Err(format!("the command was killed by signal {signal}"))
        }
    }
}

/// The signal that killed the command (Unix only: on Windows every end has an exit code).
#[cfg(unix)]
fn signal_of(status: &std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.signal()
}

#[cfg(not(unix))]
fn signal_of(_: &std::process::ExitStatus) -> Option<i32> {
    None
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_has_its_own_exit_status_and_only_done_is_0() {
        let outcomes = [
            Outcome::Done,
            Outcome::FreezeRefused(String::new()),
            Outcome::CommandFailed(String::new()),
            Outcome::ThawFailed(String::new()),
        ];
        let codes: Vec<u8> = outcomes.iter().map(Outcome::exit_code).collect();
        assert_eq!(codes, [0, 3, 4, 5]);
        assert!(outcomes[0].problem().is_none());
    }
}
