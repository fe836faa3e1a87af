//! qemu-guest-agent as a reference point: the round trip of its cheapest command, `guest-ping`, over a Unix
//! socket (`qemu-ga -m unix-listen`), in the same run and the same client loop as hvagent's heartbeat.
//! Debian's package `qemu-guest-agent` provides it (scripts/install-bench-deps.sh); without it the
//! comparison is skipped and said so.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::run::{Failure, Running};
use crate::say;

/// `given`, or qemu-ga on PATH or in /usr/sbin (where Debian puts it, often not on a user's PATH).
fn find(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = given {
        return Some(path.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("qemu-ga"))
        .find(|candidate| candidate.is_file())
}

/// Starts qemu-ga listening on `socket`, its pid file and state in `scratch`; `None` when it is not
/// installed.
pub(crate) fn start(
    given: Option<&Path>,
    scratch: &Path,
    socket: &Path,
) -> Result<Option<Running>, Failure> {
    let Some(binary) = find(given) else {
        say("qemu-ga: not installed (scripts/install-bench-deps.sh installs Debian's qemu-guest-agent); \
             its comparison is skipped");
        return Ok(None);
    };
    Running::spawn(
        "qemu-ga",
        Command::new(binary)
            .args(["-m", "unix-listen", "-p"])
            .arg(socket)
            .arg("-f")
            .arg(scratch.join("qemu-ga.pid"))
            .arg("-t")
            .arg(scratch)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .map(Some)
}

/// qemu-ga's version line, for the report.
pub(crate) fn version(given: Option<&Path>) -> Option<String> {
    let output = Command::new(find(given)?).arg("-V").output().ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .map(str::to_string)
}
