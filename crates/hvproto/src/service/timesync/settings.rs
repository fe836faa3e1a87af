//! What `[timesync]` sets: the mode and its bounds, and where chronyd listens for mode chrony.

use std::path::PathBuf;
use std::time::Duration;

/// What the service does with the offsets it measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Step and steer the system clock.
    Adjust,
    /// Measure and report only.
    Monitor,
    /// Hand the offsets to chronyd's SOCK refclock; change nothing.
    Chrony,
}

impl Mode {
    /// Every mode, in the order messages and docs list them.
    pub const ALL: [Mode; 3] = [Mode::Adjust, Mode::Monitor, Mode::Chrony];

    /// The mode's name in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Adjust => "adjust",
            Mode::Monitor => "monitor",
            Mode::Chrony => "chrony",
        }
    }
}

/// Where chronyd's SOCK refclock listens by default (`refclock SOCK /run/chrony.hvagent.sock`).
pub const DEFAULT_CHRONY_SOCKET: &str = "/run/chrony.hvagent.sock";

/// The time-sync service's settings.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TimeSyncSettings {
    pub mode: Mode,
    /// Offsets beyond this are stepped; smaller ones are steered.
    pub step_threshold: Duration,
    /// How often the agent probes the host (message version 4.1); zero turns probes off.
    pub probe_interval: Duration,
    /// chronyd's SOCK refclock socket, for mode chrony (the agent's edge opens it; nothing here does).
    pub chrony_socket: PathBuf,
}

impl Default for TimeSyncSettings {
    fn default() -> TimeSyncSettings {
        TimeSyncSettings {
            mode: Mode::Adjust,
            step_threshold: Duration::from_secs(1),
            probe_interval: Duration::from_secs(2),
            chrony_socket: PathBuf::from(DEFAULT_CHRONY_SOCKET),
        }
    }
}
