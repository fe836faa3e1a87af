//! The agent's end of the clock helper: a [`Clock`] that reads CLOCK_REALTIME itself (reading needs no
//! privilege, and `ProtectClock=` filters only the `@clock` calls that change it, not `clock_gettime`) and
//! asks `hvagent clock-helper` over its Unix socket for everything else ([`super::privops`]).
//!
//! One connection per request, each a blocking write and read bounded by [`TIMEOUT`]: the helper exits when
//! idle and systemd starts it again on the next connection, so there is no connection to keep. Answers map to
//! [`ClockError`] as the local clock's do: EPERM is `NotPermitted`, so time sync falls back to monitoring; a
//! helper that cannot be reached or answers nonsense is `Helper`, which names the units to check.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::privops::{self, Answer, Request, MESSAGE_LEN};
use super::system::SystemClock;
use hvproto::clock::{Clock, ClockError};

/// Where hvagent-clock.socket listens (ListenStream= in systemd/hvagent-clock.socket).
pub const DEFAULT_SOCKET: &str = "/run/hvagent-clock.sock";
/// The longest the agent waits for the helper to take a request or answer it. The first request after the
/// helper exited waits for systemd to start it again, a few ms; a second is slack for a slow guest.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// The clock, changed through the helper at `path`.
#[derive(Clone, Debug)]
pub struct RemoteClock {
    path: PathBuf,
    timeout: Duration,
}

impl RemoteClock {
    pub fn new(path: &Path) -> RemoteClock {
        RemoteClock {
            path: path.to_path_buf(),
            timeout: TIMEOUT,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One request and its answer; `call` names the system call the helper makes, for errors.
    fn exchange(&self, call: &'static str, request: Request) -> Result<Answer, ClockError> {
        let helper = |reason: String| ClockError::Helper { call, reason };
        let mut stream = UnixStream::connect(&self.path).map_err(|error| {
            helper(format!(
                "cannot connect to {}: {error}",
                self.path.display()
            ))
        })?;
        let timeouts = stream
            .set_read_timeout(Some(self.timeout))
            .and_then(|()| stream.set_write_timeout(Some(self.timeout)));
        timeouts.map_err(|error| helper(format!("cannot set a timeout: {error}")))?;
        // A helper that refuses this peer answers EPERM and closes, maybe before the request is sent: its
        // answer is still there to read, so a failed send is reported only when there is none.
        let sent = stream.write_all(&request.emit());
        let mut bytes = [0; MESSAGE_LEN];
        if let Err(error) = stream.read_exact(&mut bytes) {
            let path = self.path.display();
            return Err(helper(match sent {
                Err(send) => format!("cannot send to {path}: {send}"),
                Ok(()) => format!("no answer from {path} within {:?}: {error}", self.timeout),
            }));
        }
        let answer = Answer::parse(&bytes).map_err(|error| helper(error.to_string()))?;
        match answer.status {
            0 if answer.op == request.op() => Ok(answer),
            0 => Err(helper(format!(
                "it answered op {} to op {}",
                answer.op,
                request.op()
            ))),
            libc::EPERM => Err(ClockError::NotPermitted),
            errno => Err(ClockError::Failed { call, errno }),
        }
    }
}

impl Clock for RemoteClock {
    fn now_ns(&self) -> i128 {
        SystemClock.now_ns()
    }

    fn step(&mut self, delta_ns: i128) -> Result<(), ClockError> {
        let Ok(delta_ns) = i64::try_from(delta_ns) else {
            return Err(ClockError::Failed {
                call: "clock_settime",
                errno: libc::EINVAL,
            });
        };
        self.exchange("clock_settime", Request::Step { delta_ns })
            .map(drop)
    }

    fn frequency_ppm(&self) -> Result<f64, ClockError> {
        self.exchange("adjtimex", Request::ReadFrequency)
            .map(|answer| privops::ppm_from_scaled(answer.value))
    }

    fn set_frequency_ppm(&mut self, ppm: f64) -> Result<(), ClockError> {
        let scaled = privops::scaled_from_ppm(ppm);
        self.exchange("adjtimex", Request::SetFrequency { scaled })
            .map(drop)
    }
}
