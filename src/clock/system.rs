//! The real clock: the only file that reads or changes the system's time (`clock_gettime`,
//! `clock_settime`, `adjtimex`), plus the checks the agent makes before it tries: does it hold CAP_SYS_TIME,
//! and does another time daemon run.

use std::path::Path;

use nix::errno::Errno;
use nix::time::{clock_gettime, clock_settime, ClockId};

use hvproto::clock::{Clock, ClockError, MAX_FREQUENCY_PPM};

/// `adjtimex` expresses frequency in ppm with a 16-bit fraction.
const FREQUENCY_SCALE: f64 = 65536.0;
/// The capability bit of CAP_SYS_TIME (linux/capability.h).
const CAP_SYS_TIME: u32 = 25;
/// Other time daemons, by the name the kernel shows in /proc/PID/comm (cut to 15 characters).
pub const TIME_DAEMONS: [&str; 4] = ["chronyd", "ntpd", "systemd-timesyn", "ntp-daemon"];

/// The system's CLOCK_REALTIME.
#[derive(Debug, Default)]
pub struct SystemClock;

fn clock_error(call: &'static str, errno: Errno) -> ClockError {
    match errno {
        Errno::EPERM => ClockError::NotPermitted,
        other => ClockError::Failed {
            call,
            errno: other as i32,
        },
    }
}

/// Calls adjtimex with `modes` and `freq`; returns the kernel's frequency afterwards.
fn adjtimex(modes: u32, freq: libc::c_long) -> Result<libc::c_long, ClockError> {
    // SAFETY: timex is plain old data; all zeroes is a valid value that asks for no change but `modes`.
    let mut timex: libc::timex = unsafe { std::mem::zeroed() };
    timex.modes = modes;
    timex.freq = freq;
    // SAFETY: `timex` is a valid, exclusively borrowed timex for the duration of the call.
    let result = unsafe { libc::adjtimex(&mut timex) };
    if result < 0 {
        return Err(clock_error("adjtimex", Errno::last()));
    }
    Ok(timex.freq)
}

impl Clock for SystemClock {
    fn now_ns(&self) -> i128 {
        // CLOCK_REALTIME cannot fail to be read on Linux; 0 would show as a huge offset, never silently.
        clock_gettime(ClockId::CLOCK_REALTIME).map_or(0, |now| {
            i128::from(now.tv_sec()) * 1_000_000_000 + i128::from(now.tv_nsec())
        })
    }

    fn step(&mut self, delta_ns: i128) -> Result<(), ClockError> {
        let target = self.now_ns() + delta_ns;
        // time_t is inferred rather than named (libc marks the name deprecated on musl); a time it cannot
        // hold is refused as EOVERFLOW, never wrapped.
        let overflow = || clock_error("clock_settime", Errno::EOVERFLOW);
        let seconds = target
            .div_euclid(1_000_000_000)
            .try_into()
            .map_err(|_| overflow())?;
        let nanos = target
            .rem_euclid(1_000_000_000)
            .try_into()
            .map_err(|_| overflow())?;
        let spec = nix::sys::time::TimeSpec::new(seconds, nanos);
        clock_settime(ClockId::CLOCK_REALTIME, spec)
            .map_err(|errno| clock_error("clock_settime", errno))
    }

    fn frequency_ppm(&self) -> Result<f64, ClockError> {
        adjtimex(0, 0).map(|freq| freq as f64 / FREQUENCY_SCALE)
    }

    fn set_frequency_ppm(&mut self, ppm: f64) -> Result<(), ClockError> {
        let scaled = (ppm.clamp(-MAX_FREQUENCY_PPM, MAX_FREQUENCY_PPM) * FREQUENCY_SCALE).round();
        adjtimex(libc::ADJ_FREQUENCY, scaled as libc::c_long).map(drop)
    }
}

/// Whether a /proc/PID/status text shows CAP_SYS_TIME in the effective set; none when it has no CapEff.
pub fn status_has_cap_sys_time(status: &str) -> Option<bool> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?
        .trim();
    let bits = u64::from_str_radix(hex, 16).ok()?;
    Some(bits & (1 << CAP_SYS_TIME) != 0)
}

/// Whether this process may set the clock; assumed yes when /proc cannot tell (a later EPERM still says).
pub fn has_cap_sys_time(proc_root: &Path) -> bool {
    std::fs::read_to_string(proc_root.join("self/status"))
        .ok()
        .and_then(|status| status_has_cap_sys_time(&status))
        .unwrap_or(true)
}

/// The other time daemons running, by name, from the processes under `proc_root` (normally /proc).
pub fn other_time_daemons(proc_root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut found: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_str().is_some_and(is_pid))
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("comm")).ok())
        .map(|comm| comm.trim_end().to_string())
        .filter(|comm| TIME_DAEMONS.contains(&comm.as_str()))
        .map(|comm| match comm.as_str() {
            "systemd-timesyn" => "systemd-timesyncd".to_string(),
            _ => comm,
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

fn is_pid(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|byte| byte.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_sys_time_is_bit_25_of_cap_eff() {
        let status = "Name:\thvagent\nCapEff:\t000001fffeffffff\n";
        assert_eq!(status_has_cap_sys_time(status), Some(true));
        let status = "Name:\thvagent\nCapEff:\t000001fffcffffff\n";
        assert_eq!(status_has_cap_sys_time(status), Some(false));
        assert_eq!(
            status_has_cap_sys_time("CapEff:\t0000000002000000\n"),
            Some(true)
        );
        assert_eq!(status_has_cap_sys_time("Name:\tx\n"), None);
    }

    #[test]
    fn time_daemons_are_found_by_process_name() {
        let root = tempfile::tempdir().unwrap();
        let process = |pid: &str, comm: &str| {
            let dir = root.path().join(pid);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
        };
        process("1", "systemd");
        process("412", "systemd-timesyn");
        process("977", "chronyd");
        process("978", "chronyd");
        process("self", "chronyd");
        process("1200", "ntpdate");
        assert_eq!(
            other_time_daemons(root.path()),
            vec!["chronyd".to_string(), "systemd-timesyncd".to_string()]
        );
        assert!(other_time_daemons(&root.path().join("absent")).is_empty());
    }
}
