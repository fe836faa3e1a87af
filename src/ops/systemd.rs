//! Talking to systemd: journald priority prefixes on log lines (sd-daemon(3)) when stderr is the journal, and
//! sd_notify(3) (readiness, status, reload, stop and watchdog pings) without libsystemd.
//!
//! Under systemd, JOURNAL_STREAM is set and each line may start with `<N>` (a syslog priority); journald
//! strips it and keeps the level, and adds its own timestamps, so ours are left out.
//!
//! A `Type=notify` service finds a datagram socket in `NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace) and sends it newline-separated `KEY=VALUE` assignments. With `WatchdogSec=`, systemd sets
//! `WATCHDOG_USEC` (and `WATCHDOG_PID`, the process meant) and restarts a service that does not send
//! `WATCHDOG=1` within that interval.

use std::io::Write;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use log::{Level, LevelFilter};

/// The syslog priority journald reads from a `<N>` prefix.
fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// The current UTC time of day as `HH:MM:SS.mmm`, for foreground logs (the date adds nothing there).
fn utc_time_of_day() -> String {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since_epoch.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60,
        since_epoch.subsec_millis()
    )
}

/// Whether stderr goes to the journal (JOURNAL_STREAM is set by systemd for services).
pub fn logging_to_journal() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some()
}

/// Sets up logging at `level`; RUST_LOG, when set, overrides it.
pub fn init_logging(level: LevelFilter) {
    let mut builder = env_logger::Builder::new();
    let from_env = std::env::var("RUST_LOG").ok();
    match &from_env {
        Some(filters) => {
            builder.parse_filters(filters);
        }
        None => {
            // Everything passes the logger; log::set_max_level does the filtering, so a reload can change it.
            builder.filter_level(LevelFilter::Trace);
        }
    }
    let journal = logging_to_journal();
    if journal {
        builder
            .format(|out, record| writeln!(out, "<{}>{}", priority(record.level()), record.args()));
    } else {
        builder.format(|out, record| {
            writeln!(
                out,
                "{} {:<5} {}",
                utc_time_of_day(),
                record.level(),
                record.args()
            )
        });
    }
    let inner = builder.build();
    let filter = inner.filter();
    // A logger may already be set (tests); keeping the first one is fine.
    if log::set_boxed_logger(Box::new(HoldingLogger { inner, journal })).is_ok() {
        log::set_max_level(filter);
    }
    if from_env.is_none() {
        log::set_max_level(level);
    }
}

/// env_logger's logger, with lines held in memory while the backup service has filesystems frozen
/// ([`crate::ops::log_hold`]).
struct HoldingLogger {
    inner: env_logger::Logger,
    journal: bool,
}

impl HoldingLogger {
    /// A line as it is held: journald stamps it when it is written, after the thaw, so it carries the time
    /// it was logged.
    fn held_line(&self, record: &log::Record<'_>) -> String {
        match self.journal {
            true => format!(
                "<{}>[logged {}] {}\n",
                priority(record.level()),
                utc_time_of_day(),
                record.args()
            ),
            false => format!(
                "{} {:<5} {}\n",
                utc_time_of_day(),
                record.level(),
                record.args()
            ),
        }
    }
}

impl log::Log for HoldingLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.inner.matches(record) && !crate::ops::log_hold::offer(|| self.held_line(record)) {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// The agent's line to systemd; every method does nothing when the agent was not started by systemd.
#[derive(Debug, Default)]
pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID and removes them from the environment, so the
    /// commands the agent runs do not talk to systemd in its name. Call before any thread is started.
    pub fn from_env() -> Notifier {
        let notifier = Notifier::from_values(
            std::env::var_os("NOTIFY_SOCKET").as_deref(),
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(name);
        }
        notifier
    }

    /// The notifier for these variable values; `pid` is this process.
    fn from_values(
        socket: Option<&std::ffi::OsStr>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        pid: u32,
    ) -> Notifier {
        let socket = socket.and_then(|name| match notify_address(name) {
            Ok(address) => UnixDatagram::unbound()
                .map(|socket| (socket, address))
                .map_err(|error| log::warn!("cannot create a socket for sd_notify: {error}"))
                .ok(),
            Err(error) => {
                log::warn!("NOTIFY_SOCKET={name:?} is not usable: {error}");
                None
            }
        });
        let for_us = watchdog_pid.map_or(true, |text| text.trim().parse() == Ok(pid));
        let watchdog = watchdog_usec
            .and_then(|text| text.trim().parse::<u64>().ok())
            .filter(|&usec| usec > 0 && for_us && socket.is_some())
            .map(Duration::from_micros);
        Notifier { socket, watchdog }
    }

    /// Whether systemd listens.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// How often to send WATCHDOG=1: half the watchdog time-out, as sd_watchdog_enabled(3) advises; none
    /// when systemd watches nothing.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|timeout| timeout / 2)
    }

    /// Sends newline-separated assignments. Failures are logged at debug: systemd may be gone at shutdown.
    pub fn notify(&self, state: &str) {
        if let Some((socket, address)) = &self.socket {
            if let Err(error) = socket.send_to_addr(state.as_bytes(), address) {
                log::debug!("sd_notify failed: {error}");
            }
        }
    }

    /// The agent is up, with a one-line summary for `systemctl status`.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={}", one_line(status)));
    }

    /// A reload starts; `ready` ends it. MONOTONIC_USEC is what Type=notify-reload (systemd 253) expects.
    pub fn reloading(&self) {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|time| time.tv_sec() as u64 * 1_000_000 + time.tv_nsec() as u64 / 1_000)
            .unwrap_or(0);
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={now}"));
    }

    pub fn stopping(&self) {
        self.notify("STOPPING=1");
    }

    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }
}

/// Status text stays on one line: a newline would start a new assignment.
fn one_line(text: &str) -> String {
    text.replace('\n', " ")
}

/// The socket address in NOTIFY_SOCKET: an absolute path, or `@name` in the abstract namespace.
fn notify_address(name: &std::ffi::OsStr) -> std::io::Result<SocketAddr> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = name.as_bytes();
    match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(name),
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(&bytes[1..])
        }
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "neither an absolute path nor an @abstract name",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    fn received(socket: &UnixDatagram) -> String {
        let mut buffer = [0u8; 512];
        let count = socket.recv(&mut buffer).unwrap();
        String::from_utf8_lossy(&buffer[..count]).into_owned()
    }

    #[test]
    fn notifier_sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let systemd = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::from_values(Some(path.as_os_str()), None, None, 7);
        assert!(notifier.enabled());
        notifier.ready("heartbeat: connected\nsecond line");
        assert_eq!(
            received(&systemd),
            "READY=1\nSTATUS=heartbeat: connected second line"
        );
        notifier.reloading();
        assert!(received(&systemd).starts_with("RELOADING=1\nMONOTONIC_USEC="));
    }

    #[test]
    fn notifier_sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("hvagent-test-{}", std::process::id());
        let systemd =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let notifier = Notifier::from_values(Some(OsStr::new(&format!("@{name}"))), None, None, 7);
        notifier.stopping();
        assert_eq!(received(&systemd), "STOPPING=1");
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout_and_only_for_our_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let _systemd = UnixDatagram::bind(&path).unwrap();
        let socket = Some(path.as_os_str());
        let ours = Notifier::from_values(socket, Some("4000000"), Some("7"), 7);
        assert_eq!(ours.watchdog_interval(), Some(Duration::from_secs(2)));
        let any_pid = Notifier::from_values(socket, Some("4000000"), None, 7);
        assert_eq!(any_pid.watchdog_interval(), Some(Duration::from_secs(2)));
        let other = Notifier::from_values(socket, Some("4000000"), Some("8"), 7);
        assert_eq!(other.watchdog_interval(), None);
        let zero = Notifier::from_values(socket, Some("0"), None, 7);
        assert_eq!(zero.watchdog_interval(), None);
        let unset = Notifier::from_values(None, Some("4000000"), None, 7);
        assert!(!unset.enabled());
        assert_eq!(unset.watchdog_interval(), None);
    }

    #[test]
    fn notify_socket_must_be_a_path_or_abstract_name() {
        assert!(notify_address(OsStr::new("relative")).is_err());
        assert!(notify_address(OsStr::new("")).is_err());
        assert!(notify_address(OsStr::new("/run/systemd/notify")).is_ok());
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(Level::Error), 3);
        assert_eq!(priority(Level::Warn), 4);
        assert_eq!(priority(Level::Info), 6);
        assert_eq!(priority(Level::Debug), 7);
    }
}
