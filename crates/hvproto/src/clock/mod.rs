//! Time discipline math, with no I/O: the [`Clock`] a discipline corrects, the filter that turns offset
//! measurements into corrections, and a simulated clock for tests.
//!
//! - [`filter`]: the last 8 probe (or sample) results, the one with the smallest delay, outlier rejection.
//! - [`discipline`]: step or steer a [`Clock`] from filtered offsets (a phase-locked loop on frequency).
//! - [`sim`]: a simulated clock with its own frequency error, for tests; it never touches the real clock.
//!
//! The clocks that change a real system clock are the agent's (its `clock` module). Offsets are
//! `true time − guest time` in seconds: positive means the guest clock is behind.

pub mod discipline;
pub mod filter;
pub mod sim;

use std::fmt;

/// Nanoseconds in a second, as the float the discipline math uses.
pub const NANOS: f64 = 1e9;

/// The largest frequency correction the kernel accepts through `adjtimex` ADJ_FREQUENCY, in ppm.
pub const MAX_FREQUENCY_PPM: f64 = 500.0;

/// A clock the agent may read and correct: the system's realtime clock, or a simulation.
pub trait Clock {
    /// The clock's time: nanoseconds since 1970-01-01 UTC (CLOCK_REALTIME).
    fn now_ns(&self) -> i128;

    /// Steps the clock by `delta_ns` (positive: forwards).
    fn step(&mut self, delta_ns: i128) -> Result<(), ClockError>;

    /// The frequency correction in force, in ppm (positive: the clock runs faster).
    fn frequency_ppm(&self) -> Result<f64, ClockError>;

    /// Sets the frequency correction, in ppm, within ±[`MAX_FREQUENCY_PPM`].
    fn set_frequency_ppm(&mut self, ppm: f64) -> Result<(), ClockError>;
}

/// Where measured offsets go in chrony mode: chronyd's SOCK refclock, or a fake in tests.
pub trait OffsetSink {
    /// Reports one offset (seconds, true − guest) measured when the guest clock read `at_ns`.
    fn send(&mut self, at_ns: i128, offset: f64);
}

/// Why the clock could not be read or changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClockError {
    /// The agent lacks CAP_SYS_TIME (EPERM).
    NotPermitted,
    /// Any other failure of the system call.
    Failed { call: &'static str, errno: i32 },
    /// The clock helper (hvagent-clock.service) could not be asked, or answered nonsense.
    Helper { call: &'static str, reason: String },
}

impl fmt::Display for ClockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClockError::NotPermitted => f.write_str(
                "not permitted (setting the clock needs CAP_SYS_TIME: run the agent as root, or let the clock \
                 helper do it, hvagent-clock.socket, whose hvagent-clock.service holds it)",
            ),
            ClockError::Failed { call, errno } => write!(
                f,
                "{call} failed: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
            ClockError::Helper { call, reason } => write!(
                f,
                "the clock helper did not do {call}: {reason} (check `systemctl status \
                 hvagent-clock.socket hvagent-clock.service`)"
            ),
        }
    }
}

impl std::error::Error for ClockError {}

/// Seconds as whole nanoseconds, rounded.
pub fn seconds_to_nanos(seconds: f64) -> i128 {
    (seconds * NANOS).round() as i128
}

/// A human figure for an offset: `+1.234 s`, `-25.000 ms`, `+12.3 us`.
pub fn format_offset(seconds: f64) -> String {
    let magnitude = seconds.abs();
    if magnitude >= 1.0 {
        format!("{seconds:+.3} s")
    } else if magnitude >= 1e-3 {
        format!("{:+.3} ms", seconds * 1e3)
    } else {
        format!("{:+.1} us", seconds * 1e6)
    }
}

/// A human figure for a delay (no sign): `1.021 ms`, `63.1 us`.
pub fn format_delay(seconds: f64) -> String {
    format_offset(seconds).trim_start_matches('+').to_string()
}

#[cfg(test)]
mod tests;
