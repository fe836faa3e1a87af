//! Talking to systemd: journald priority prefixes on log lines (sd-daemon(3)) when stderr is the journal.
//!
//! Under systemd, JOURNAL_STREAM is set and each line may start with `<N>` (a syslog priority); journald
//! strips it and keeps the level, and adds its own timestamps, so ours are left out.

use std::io::Write;

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
    if logging_to_journal() {
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
    // A logger may already be set (tests); keeping the first one is fine.
    let _ = builder.try_init();
    if from_env.is_none() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(Level::Error), 3);
        assert_eq!(priority(Level::Warn), 4);
        assert_eq!(priority(Level::Info), 6);
        assert_eq!(priority(Level::Debug), 7);
    }
}
