//! Process plumbing of hvbench: failures as sentences, a scratch directory and children that are killed
//! and reaped when dropped, and connecting to a server that is still starting.

use std::fmt::Display;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::IO_TIMEOUT;

/// A step that failed, said as a sentence.
pub(crate) struct Failure(pub(crate) String);

pub(crate) trait Context<T> {
    fn context<S: Display>(self, what: impl FnOnce() -> S) -> Result<T, Failure>;
}

impl<T, E: Display> Context<T> for Result<T, E> {
    fn context<S: Display>(self, what: impl FnOnce() -> S) -> Result<T, Failure> {
        self.map_err(|error| Failure(format!("{}: {error}", what())))
    }
}

/// A directory under the system temp dir, removed with everything in it when dropped.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    pub(crate) fn new() -> Result<Scratch, Failure> {
        let dir = std::env::temp_dir().join(format!("hvbench-{}", std::process::id()));
        // A leftover of an earlier run with the same pid is ours to reuse.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).context(|| format!("cannot create {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process, killed and reaped when dropped (std's `kill` does nothing to a child already reaped).
pub(crate) struct Running {
    name: &'static str,
    child: Child,
}

impl Running {
    pub(crate) fn spawn(name: &'static str, command: &mut Command) -> Result<Running, Failure> {
        let program = PathBuf::from(command.get_program());
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .context(|| format!("cannot start the {name} {}", program.display()))?;
        Ok(Running { name, child })
    }

    pub(crate) fn pid(&self) -> i32 {
        // Linux pids fit an i32 (pid_max is at most 2^22).
        self.child.id() as i32
    }

    /// The exit status once the child has exited.
    pub(crate) fn exited(&mut self) -> Result<Option<ExitStatus>, Failure> {
        self.child
            .try_wait()
            .context(|| format!("cannot wait for the {}", self.name))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn exit_text(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// Connects to `server` at `path`, retrying while it starts (no socket file yet, or bound but not listening).
pub(crate) fn connect(path: &Path, server: &mut Running) -> Result<UnixStream, Failure> {
    let deadline = Instant::now() + IO_TIMEOUT;
    let stream = loop {
        let error = match UnixStream::connect(path) {
            Ok(stream) => break stream,
            Err(error) => error,
        };
        if let Some(status) = server.exited()? {
            return Err(Failure(format!(
                "the {} ended ({}) before accepting a connection",
                server.name,
                exit_text(status)
            )));
        }
        let starting = matches!(
            error.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
        );
        if !starting || Instant::now() > deadline {
            return Err(Failure(format!(
                "cannot connect to the {} at {}: {error}",
                server.name,
                path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .context(|| "cannot set socket time-outs")?;
    Ok(stream)
}
