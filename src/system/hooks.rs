//! The backup service's freeze hooks: the executables of `hooks_dir`, run in name order with `freeze` or
//! `thaw` as qemu-guest-agent runs its fsfreeze-hook.d scripts. A hook's stdin is /dev/null and its stdout
//! and stderr one pipe read into memory, never inherited (the agent's own output may be held while
//! filesystems are frozen); it runs in its own process group, all of which is killed at the time limit.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hvproto::service::backup::{HookPhase, Hooks};
use log::debug;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// How much of a hook's output is kept.
const KEEP: usize = 8192;
/// How often a running hook is looked at when it writes nothing.
const TICK: Duration = Duration::from_millis(20);

/// Whether a file name is one a package manager or an editor leaves beside a hook, or hidden.
fn ignored(name: &str) -> bool {
    const LEFTOVERS: [&str; 5] = [".dpkg-", ".rpmnew", ".rpmsave", ".orig", ".bak"];
    name.starts_with('.') || name.ends_with('~') || LEFTOVERS.iter().any(|tail| name.contains(tail))
}

/// The hooks of a directory.
pub struct DirHooks {
    dir: PathBuf,
}

impl DirHooks {
    pub fn new(dir: &Path) -> DirHooks {
        DirHooks {
            dir: dir.to_path_buf(),
        }
    }
}

impl Hooks for DirHooks {
    fn list(&mut self) -> Vec<String> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(error) => {
                debug!(
                    "backup: no hooks: cannot read {}: {error}",
                    self.dir.display()
                );
                return Vec::new();
            }
        };
        let mut hooks: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| !ignored(name))
            .filter(|name| {
                std::fs::metadata(self.dir.join(name))
                    .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
            })
            .collect();
        hooks.sort();
        hooks
    }

    fn run(&mut self, hook: &str, phase: HookPhase, timeout: Duration) -> Result<String, String> {
        run_hook(&self.dir.join(hook), phase.arg(), timeout)
    }
}

/// Runs `program arg` for at most `timeout`: its output when it exits 0, why otherwise.
fn run_hook(program: &Path, arg: &str, timeout: Duration) -> Result<String, String> {
    let (reader, writer) = nix::unistd::pipe().map_err(|errno| format!("no pipe: {errno}"))?;
    let error_writer = writer
        .try_clone()
        .map_err(|error| format!("no pipe: {error}"))?;
    let mut child = Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(error_writer))
        .process_group(0)
        .spawn()
        .map_err(|error| format!("cannot start it: {error}"))?;
    // The Command and its copies of the write end are gone: the pipe ends when the hook's side closes.
    let (output, outcome) = watch(&mut child, reader, Instant::now() + timeout);
    let output = String::from_utf8_lossy(&output).into_owned();
    match outcome {
        Outcome::Exited(Ok(status)) if status.success() => Ok(output),
        Outcome::Exited(Ok(status)) => Err(format!("{status}{}", tail(&output))),
        Outcome::Exited(Err(error)) => Err(format!("cannot wait for it: {error}")),
        Outcome::TimedOut => Err(format!(
            "still running after {:.1} s, killed{}",
            timeout.as_secs_f64(),
            tail(&output)
        )),
    }
}

enum Outcome {
    Exited(std::io::Result<std::process::ExitStatus>),
    TimedOut,
}

/// Reads the hook's output until it exits or `deadline` passes (then kills its process group).
fn watch(child: &mut Child, reader: OwnedFd, deadline: Instant) -> (Vec<u8>, Outcome) {
    let _ = fcntl(reader.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    let mut pipe = Some(std::fs::File::from(reader));
    let mut output = Vec::new();
    loop {
        if let Some(file) = pipe.as_mut() {
            let wait = TICK.min(deadline.saturating_duration_since(Instant::now()));
            let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
            let millis = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
            let _ = poll(&mut fds, PollTimeout::from(millis));
            if !drain(file, &mut output) {
                pipe = None;
            }
        } else {
            std::thread::sleep(TICK.min(deadline.saturating_duration_since(Instant::now())));
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                if let Some(file) = pipe.as_mut() {
                    drain(file, &mut output);
                }
                return (output, Outcome::Exited(Ok(status)));
            }
            Ok(None) if Instant::now() >= deadline => {
                // A process group id is the hook's pid (process_group(0)); the hook itself is reaped below.
                if let Ok(pid) = i32::try_from(child.id()) {
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                return (output, Outcome::TimedOut);
            }
            Ok(None) => {}
            Err(error) => return (output, Outcome::Exited(Err(error))),
        }
    }
}

/// Reads what the pipe holds into `output` (kept to [`KEEP`] bytes); false at its end or on an error.
fn drain(file: &mut std::fs::File, output: &mut Vec<u8>) -> bool {
    let mut buffer = [0u8; 1024];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => return false,
            Ok(count) => {
                let room = KEEP.saturating_sub(output.len());
                output.extend_from_slice(&buffer[..count.min(room)]);
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// The last line a failed hook printed, for its error.
fn tail(output: &str) -> String {
    match output.lines().rev().find(|line| !line.trim().is_empty()) {
        Some(line) => format!(": {}", line.trim().escape_debug()),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, name: &str, body: &str, mode: u32) {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn hooks_are_the_executables_in_name_order_without_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "20-db",
            "10-web",
            ".hidden",
            "30-old~",
            "40-x.dpkg-old",
            "50-y.rpmnew",
        ] {
            script(dir.path(), name, "true", 0o755);
        }
        script(dir.path(), "15-not-executable", "true", 0o644);
        std::fs::create_dir(dir.path().join("17-dir")).unwrap();
        let mut hooks = DirHooks::new(dir.path());
        assert_eq!(hooks.list(), ["10-web", "20-db"]);
        assert!(DirHooks::new(&dir.path().join("missing")).list().is_empty());
    }

    #[test]
    fn a_hook_gets_its_phase_and_its_output_is_captured() {
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "hook",
            "echo \"out $1\"; echo \"err $1\" >&2; read line || echo eof",
            0o755,
        );
        let mut hooks = DirHooks::new(dir.path());
        let output = hooks
            .run("hook", HookPhase::Freeze, Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            output, "out freeze\nerr freeze\neof\n",
            "stdin is /dev/null"
        );
        let output = hooks
            .run("hook", HookPhase::Thaw, Duration::from_secs(10))
            .unwrap();
        assert!(output.starts_with("out thaw"), "{output}");
    }

    #[test]
    fn a_failing_hook_says_how_and_what_it_printed_last() {
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "fails",
            "echo first; echo 'database busy'; exit 3",
            0o755,
        );
        let why = DirHooks::new(dir.path())
            .run("fails", HookPhase::Freeze, Duration::from_secs(10))
            .unwrap_err();
        assert!(why.contains("3") && why.contains("database busy"), "{why}");
    }

    #[test]
    fn a_hook_past_its_time_limit_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "slow",
            "echo started; sleep 30; echo never",
            0o755,
        );
        let started = Instant::now();
        let why = DirHooks::new(dir.path())
            .run("slow", HookPhase::Freeze, Duration::from_millis(300))
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(why.contains("killed") && why.contains("started"), "{why}");
    }

    #[test]
    fn a_hook_that_cannot_start_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let why = DirHooks::new(dir.path())
            .run("absent", HookPhase::Thaw, Duration::from_secs(1))
            .unwrap_err();
        assert!(why.contains("cannot start"), "{why}");
    }
}
