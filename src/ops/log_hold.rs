//! The backup service's [`LogHold`]: while filesystems are frozen, the agent's log lines are formatted
//! (with the time they were logged) into memory instead of written, and emitted in order once the last
//! mount is thawed. A line written to journald's stream while journald waits on a frozen disk would block
//! the agent, and with it the thaw (hv_vss_daemon deadlocked this way through syslog).

use std::io::Write;
use std::sync::{Mutex, PoisonError};

use hvproto::service::backup::LogHold;

/// The most lines held; later ones are counted and dropped.
pub const CAP: usize = 1000;

/// Lines held while frozen.
#[derive(Debug, Default, PartialEq, Eq)]
struct Held {
    lines: Vec<String>,
    dropped: u64,
}

impl Held {
    fn push(&mut self, line: String) {
        if self.lines.len() < CAP {
            self.lines.push(line);
        } else {
            self.dropped += 1;
        }
    }

    /// The lines to write, in the order they were logged, and one saying how many were dropped.
    fn into_lines(mut self) -> Vec<String> {
        if self.dropped > 0 {
            self.lines.push(format!(
                "hvagent: {} log line(s) dropped while filesystems were frozen (at most {CAP} are held)\n",
                self.dropped
            ));
        }
        self.lines
    }
}

/// None while lines go out as they come; Some while held.
static HELD: Mutex<Option<Held>> = Mutex::new(None);

/// Offers a line to the hold: true when it was held (`line` formats it, only then), false when it should be
/// written now.
pub fn offer(line: impl FnOnce() -> String) -> bool {
    let mut held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
    match held.as_mut() {
        Some(held) => {
            held.push(line());
            true
        }
        None => false,
    }
}

/// Whether lines are held, that is whether the backup service has filesystems frozen: nothing the agent
/// writes may touch a filesystem then (a write to a frozen one blocks the loop, and with it the thaw).
pub fn frozen() -> bool {
    HELD.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .is_some()
}

/// Serializes the tests that use the process-wide hold.
#[cfg(test)]
pub static TEST_HOLD: Mutex<()> = Mutex::new(());

/// Starts holding lines (a second call keeps what is held).
pub fn hold() {
    let mut held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
    held.get_or_insert_with(Held::default);
}

/// Stops holding and writes what was held to `out`.
pub fn release_into(out: &mut dyn Write) {
    let held = HELD.lock().unwrap_or_else(PoisonError::into_inner).take();
    for line in held.map(Held::into_lines).unwrap_or_default() {
        let _ = out.write_all(line.as_bytes());
    }
    let _ = out.flush();
}

/// The agent's log hold: its logger writes to stderr (the journal's stream under systemd).
pub struct AgentLogHold;

impl LogHold for AgentLogHold {
    fn hold(&mut self) {
        hold();
    }

    fn release(&mut self) {
        release_into(&mut std::io::stderr().lock());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_lines_are_kept_in_order_up_to_the_cap_and_the_rest_counted() {
        let mut held = Held::default();
        for n in 0..CAP + 5 {
            held.push(format!("line {n}\n"));
        }
        let lines = held.into_lines();
        assert_eq!(lines.len(), CAP + 1);
        assert_eq!(lines[0], "line 0\n");
        assert_eq!(lines[CAP - 1], format!("line {}\n", CAP - 1));
        assert!(
            lines[CAP].contains("5 log line(s) dropped"),
            "{}",
            lines[CAP]
        );
        assert_eq!(Held::default().into_lines(), Vec::<String>::new());
    }

    #[test]
    fn lines_offered_while_held_come_out_at_release_and_not_before() {
        let _serial = TEST_HOLD.lock().unwrap_or_else(PoisonError::into_inner);
        let mut formatted = 0;
        assert!(!offer(|| {
            formatted += 1;
            String::new()
        }));
        assert_eq!(
            formatted, 0,
            "a line written now is not formatted for the hold"
        );
        assert!(!frozen());
        hold();
        assert!(frozen());
        assert!(offer(|| "12:00:00.000Z INFO  first\n".to_string()));
        hold();
        assert!(offer(|| "12:00:00.001Z INFO  second\n".to_string()));
        let mut out = Vec::new();
        release_into(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "12:00:00.000Z INFO  first\n12:00:00.001Z INFO  second\n"
        );
        assert!(!offer(String::new), "released: lines go out again");
        assert!(!frozen());
        let mut out = Vec::new();
        release_into(&mut out);
        assert!(out.is_empty(), "a release without a hold writes nothing");
    }
}
