//! The real health [`Checker`]: a child process without a shell, its stdout a non-blocking pipe the poll
//! loop watches; never waited for in the loop.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdout, Command, Stdio};

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use hvproto::service::health::{Checker, Outcome};
use hvproto::service::Watch;

/// How much of a check's stdout is kept (systemctl says one word).
const KEEP: usize = 4096;
/// Reads of the check's stdout per wake-up: a check that writes without end (`yes`) must not hold the loop,
/// which has to come back to kill it at health_timeout.
const READS_PER_WAKE: usize = 16;

/// Runs `argv` as a health check.
pub struct ChildCheck {
    argv: Vec<String>,
    child: Option<Child>,
    stdout: Option<ChildStdout>,
    output: Vec<u8>,
}

impl ChildCheck {
    pub fn new(argv: Vec<String>) -> ChildCheck {
        ChildCheck {
            argv,
            child: None,
            stdout: None,
            output: Vec::new(),
        }
    }

    /// `systemctl is-system-running`.
    pub fn systemd() -> ChildCheck {
        ChildCheck::new(vec![
            "systemctl".to_string(),
            "is-system-running".to_string(),
        ])
    }

    /// Reads what the pipe holds, bounded per wake-up; drops the pipe at EOF or on an error.
    fn drain(&mut self) {
        let Some(stdout) = self.stdout.as_mut() else {
            return;
        };
        if drain_into(stdout, &mut self.output) == Pipe::Closed {
            self.stdout = None;
        }
    }
}

/// Whether a check's stdout is still worth watching.
#[derive(Debug, PartialEq, Eq)]
enum Pipe {
    Open,
    Closed,
}

/// Reads `source` into `output` (keeping at most [`KEEP`] bytes) until it would block, at most
/// [`READS_PER_WAKE`] times: the rest waits for the next wake-up.
fn drain_into(source: &mut impl Read, output: &mut Vec<u8>) -> Pipe {
    let mut buffer = [0u8; 1024];
    for _ in 0..READS_PER_WAKE {
        match source.read(&mut buffer) {
            Ok(0) => return Pipe::Closed,
            Ok(count) => {
                let room = KEEP.saturating_sub(output.len());
                output.extend_from_slice(&buffer[..count.min(room)]);
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Pipe::Open,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Pipe::Closed,
        }
    }
    Pipe::Open
}

impl Checker for ChildCheck {
    fn start(&mut self) -> Result<(), String> {
        self.kill();
        let (program, args) = self.argv.split_first().ok_or("the command is empty")?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| error.to_string())?;
        let stdout = child.stdout.take();
        if let Some(pipe) = &stdout {
            let flags = fcntl(pipe.as_raw_fd(), FcntlArg::F_GETFL).map_err(|e| e.to_string())?;
            fcntl(
                pipe.as_raw_fd(),
                FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
            )
            .map_err(|e| e.to_string())?;
        }
        self.child = Some(child);
        self.stdout = stdout;
        self.output.clear();
        Ok(())
    }

    fn watch(&self) -> Option<Watch> {
        // The loop polls this number while the check runs; the pipe stays open until `ready` drains it or
        // `kill` reaps the child, both of which need `&mut self`, so never while the loop holds it.
        self.stdout
            .as_ref()
            .map(|pipe| Watch(i64::from(pipe.as_raw_fd())))
    }

    fn ready(&mut self) -> Option<Outcome> {
        self.drain();
        if self.stdout.is_some() {
            return None;
        }
        let child = self.child.as_mut()?;
        let status = match child.try_wait() {
            Ok(None) => return None,
            Ok(Some(status)) => status,
            Err(error) => {
                self.child = None;
                return Some(Outcome::SpawnFailed(error.to_string()));
            }
        };
        self.child = None;
        Some(Outcome::Exited {
            code: status.code(),
            stdout: String::from_utf8_lossy(&self.output).into_owned(),
        })
    }

    fn kill(&mut self) {
        self.stdout = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            // After SIGKILL the child is gone at once; this only reaps it.
            let _ = child.wait();
        }
    }

    fn describe(&self) -> String {
        self.argv.join(" ")
    }
}

impl Drop for ChildCheck {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    use super::*;

    /// Polls the check's fd (or retries) until it gives an outcome, up to 5 s.
    fn run(check: &mut ChildCheck) -> Outcome {
        check.start().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            assert!(Instant::now() < deadline, "no outcome within 5 s");
            if let Some(pipe) = check.stdout.as_ref() {
                let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
                poll(&mut fds, PollTimeout::from(100u8)).unwrap();
            } else {
                std::thread::sleep(Duration::from_millis(10));
            }
            if let Some(outcome) = check.ready() {
                return outcome;
            }
        }
    }

    fn sh(script: &str) -> ChildCheck {
        ChildCheck::new(vec!["/bin/sh".into(), "-c".into(), script.into()])
    }

    #[test]
    fn exit_status_and_stdout_are_collected() {
        assert_eq!(
            run(&mut sh("echo degraded; exit 1")),
            Outcome::Exited {
                code: Some(1),
                stdout: "degraded\n".into()
            }
        );
        assert_eq!(
            run(&mut sh("exit 0")),
            Outcome::Exited {
                code: Some(0),
                stdout: String::new()
            }
        );
    }

    #[test]
    fn a_check_that_writes_without_end_returns_to_the_loop_each_wake_up() {
        // A pipe that never runs dry (as `yes` keeps it): each drain must still return, so the loop comes
        // back to kill the check at health_timeout.
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut output = Vec::new();
            let pipe = drain_into(&mut std::io::repeat(b'y'), &mut output);
            done.send((pipe, output.len())).unwrap();
        });
        let drained = finished.recv_timeout(Duration::from_secs(5));
        assert_eq!(
            drained.expect("a drain of an endless pipe did not return within 5 s"),
            (Pipe::Open, KEEP)
        );
        let mut empty: &[u8] = &[];
        assert_eq!(drain_into(&mut empty, &mut Vec::new()), Pipe::Closed);
    }

    #[test]
    fn a_missing_program_fails_to_start() {
        let mut check = ChildCheck::new(vec!["/nonexistent/check".into()]);
        assert!(check.start().is_err());
    }

    #[test]
    fn a_killed_check_leaves_no_child() {
        let mut check = sh("sleep 30");
        check.start().unwrap();
        let pid = check.child.as_ref().unwrap().id();
        assert!(check.ready().is_none());
        check.kill();
        assert!(check.watch().is_none());
        // Reaped: the pid is no longer ours to wait for.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}
