//! Log lines a peer can repeat at will (refused requests, responses nobody asked for, refused peers), kept
//! to a few a minute: the first of a kind is logged in full, the rest are counted and summed up in one
//! line at most once per [`WINDOW`]. [`Limiter`] is the pure part (the caller passes the time); [`Quiet`]
//! holds one per kind for a service and writes the lines. Nothing here wakes the loop while nothing is
//! counted: [`Limiter::deadline`] is `None` then.

use std::time::{Duration, Instant};

use log::{log, Level};

/// How often a summary may be logged.
pub(super) const WINDOW: Duration = Duration::from_secs(60);

/// What was counted since the line before, to be logged as one line.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Summary {
    pub(super) count: u64,
    /// Since the line before (the full line, or the previous summary).
    pub(super) over: Duration,
    /// The last counted occurrence, in words.
    pub(super) last: String,
}

/// The window that the last logged line opened.
#[derive(Debug)]
struct Window {
    since: Instant,
    count: u64,
    last: String,
}

/// One kind of repeated line: logged in full once, then counted until the window ends.
#[derive(Debug)]
pub(super) struct Limiter {
    window: Duration,
    open: Option<Window>,
}

impl Limiter {
    pub(super) fn new(window: Duration) -> Limiter {
        Limiter { window, open: None }
    }

    /// One more occurrence at `now`: `true` when it is to be logged in full (none was logged within the
    /// window); otherwise it is counted and `detail()` kept as the last one.
    pub(super) fn note(&mut self, now: Instant, detail: impl FnOnce() -> String) -> bool {
        match &mut self.open {
            Some(window) if now < window.since + self.window => {
                window.count += 1;
                window.last = detail();
                false
            }
            _ => {
                self.open = Some(Window {
                    since: now,
                    count: 0,
                    last: String::new(),
                });
                true
            }
        }
    }

    /// The summary due at `now`, if the window has ended with something counted; it opens the next window,
    /// so a flood that goes on is summed up once per window.
    #[inline]
    pub(super) fn due(&mut self, now: Instant) -> Option<Summary> {
        let window = self.open.as_ref()?;
        if window.count == 0 || now < window.since + self.window {
            return None;
        }
        self.take(now)
    }

    /// What is counted, whether or not the window has ended (the service is going away).
    pub(super) fn take(&mut self, now: Instant) -> Option<Summary> {
        let window = self.open.as_mut().filter(|window| window.count > 0)?;
        let summary = Summary {
            count: window.count,
            over: now.saturating_duration_since(window.since),
            last: std::mem::take(&mut window.last),
        };
        *window = Window {
            since: now,
            count: 0,
            last: String::new(),
        };
        Some(summary)
    }

    /// When a summary is due: only while something is counted.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.open
            .as_ref()
            .filter(|window| window.count > 0)
            .map(|window| window.since + self.window)
    }
}

/// The kinds of repeated line, each with its own limiter.
#[derive(Clone, Copy, Debug)]
pub(super) enum Kind {
    /// A request answered with an error status.
    RefusedRequest,
    /// A response to no request of ours, dropped.
    UnexpectedResponse,
    /// A peer that allowed_cids or allowed_uids does not admit.
    RefusedPeer,
    /// A peer beyond max_connections.
    PeerOverCap,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::RefusedRequest,
        Kind::UnexpectedResponse,
        Kind::RefusedPeer,
        Kind::PeerOverCap,
    ];

    /// The level of the full line and of the summaries.
    fn level(self) -> Level {
        match self {
            Kind::RefusedRequest => Level::Info,
            Kind::UnexpectedResponse => Level::Debug,
            Kind::RefusedPeer | Kind::PeerOverCap => Level::Warn,
        }
    }

    /// The level each counted occurrence is still logged at, for whoever debugs: one below the full line's.
    fn repeat_level(self) -> Level {
        match self.level() {
            Level::Error | Level::Warn | Level::Info => Level::Debug,
            _ => Level::Trace,
        }
    }

    /// What is counted, singular and plural.
    fn what(self) -> (&'static str, &'static str) {
        match self {
            Kind::RefusedRequest => ("request refused", "requests refused"),
            Kind::UnexpectedResponse => (
                "response nobody asked for dropped",
                "responses nobody asked for dropped",
            ),
            Kind::RefusedPeer => ("peer refused", "peers refused"),
            Kind::PeerOverCap => (
                "peer refused over max_connections",
                "peers refused over max_connections",
            ),
        }
    }
}

/// The repeated lines of one service.
#[derive(Debug)]
pub(super) struct Quiet {
    service: &'static str,
    limiters: [Limiter; 4],
}

impl Quiet {
    pub(super) fn new(service: &'static str) -> Quiet {
        Quiet {
            service,
            limiters: Kind::ALL.map(|_| Limiter::new(WINDOW)),
        }
    }

    /// The service's name, which begins each line.
    pub(super) fn service_name(&self) -> &'static str {
        self.service
    }

    /// Logs one occurrence of `kind`: in full when it is the first in the window, otherwise counted (and
    /// logged one level lower). `line` is what follows the service's name.
    pub(super) fn log(&mut self, kind: Kind, now: Instant, line: impl Fn() -> String) {
        let service = self.service;
        let limiter = &mut self.limiters[kind as usize];
        if let Some(summary) = limiter.due(now) {
            log_summary(service, kind, &summary);
        }
        if limiter.note(now, &line) {
            log!(
                kind.level(),
                "{service}: {}; repeats are counted and logged once a minute",
                line()
            );
        } else {
            log!(kind.repeat_level(), "{service}: {}", line());
        }
    }

    /// Logs the summaries due at `now`.
    pub(super) fn run_timers(&mut self, now: Instant) {
        for kind in Kind::ALL {
            if let Some(summary) = self.limiters[kind as usize].due(now) {
                log_summary(self.service, kind, &summary);
            }
        }
    }

    /// When the next summary is due: none while nothing is counted.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.limiters.iter().filter_map(Limiter::deadline).min()
    }

    /// Logs what is counted, due or not: the service is going away.
    pub(super) fn flush(&mut self, now: Instant) {
        for kind in Kind::ALL {
            if let Some(summary) = self.limiters[kind as usize].take(now) {
                log_summary(self.service, kind, &summary);
            }
        }
    }
}

fn log_summary(service: &str, kind: Kind, summary: &Summary) {
    let (one, many) = kind.what();
    log!(
        kind.level(),
        "{service}: {} more {} in the last {} s (last: {})",
        thousands(summary.count),
        if summary.count == 1 { one } else { many },
        summary.over.as_secs().max(1),
        summary.last
    );
}

/// `n` with commas between groups of three digits: 9,999.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn the_first_is_logged_the_rest_counted_and_summed_up_when_the_window_ends() {
        let start = Instant::now();
        let mut limiter = Limiter::new(WINDOW);
        assert!(limiter.note(start, || "first".into()));
        assert_eq!(limiter.deadline(), None, "nothing counted: no wake-up");
        for n in 1..=9_999u64 {
            let at = start + Duration::from_millis(n);
            assert!(!limiter.note(at, || format!("request {n}")));
        }
        assert_eq!(limiter.deadline(), Some(start + WINDOW));
        assert_eq!(limiter.due(start + secs(59)), None);
        assert_eq!(
            limiter.due(start + WINDOW),
            Some(Summary {
                count: 9_999,
                over: WINDOW,
                last: "request 9999".into()
            })
        );
        assert_eq!(limiter.deadline(), None);
        assert_eq!(limiter.due(start + secs(600)), None, "summed up once");
    }

    #[test]
    fn a_flood_that_goes_on_is_summed_up_once_a_window() {
        let start = Instant::now();
        let mut limiter = Limiter::new(WINDOW);
        let mut full = 0;
        let mut summaries = Vec::new();
        // One occurrence every 10 ms for 10 minutes, and the loop waking at each deadline.
        for tick in 0..60_000u64 {
            let now = start + Duration::from_millis(tick * 10);
            if let Some(summary) = limiter.due(now) {
                summaries.push(summary.count);
            }
            if limiter.note(now, String::new) {
                full += 1;
            }
        }
        assert_eq!(full, 1);
        assert_eq!(summaries.len(), 9, "{summaries:?}");
        assert!(
            summaries.iter().all(|&count| count >= 5_999),
            "{summaries:?}"
        );
    }

    #[test]
    fn after_a_quiet_window_the_next_one_is_logged_in_full_again() {
        let start = Instant::now();
        let mut limiter = Limiter::new(WINDOW);
        assert!(limiter.note(start, String::new));
        assert!(!limiter.note(start + secs(1), || "second".into()));
        assert_eq!(limiter.due(start + secs(61)).map(|s| s.count), Some(1));
        // The summary opened a window: an occurrence within it is counted.
        assert!(!limiter.note(start + secs(62), String::new));
        assert_eq!(limiter.deadline(), Some(start + secs(121)));
        assert_eq!(limiter.due(start + secs(121)).map(|s| s.count), Some(1));
        // Nothing for a window: the next is the first again, with no deadline in between.
        assert_eq!(limiter.deadline(), None);
        assert!(limiter.note(start + secs(300), String::new));
    }

    #[test]
    fn an_idle_limiter_never_asks_to_be_woken() {
        let start = Instant::now();
        let mut limiter = Limiter::new(WINDOW);
        assert_eq!(limiter.deadline(), None);
        assert!(limiter.note(start, String::new));
        assert_eq!(limiter.deadline(), None);
        assert_eq!(limiter.due(start + secs(3600)), None);
        assert_eq!(limiter.take(start + secs(3600)), None);
    }

    #[test]
    fn take_sums_up_early_what_is_counted() {
        let start = Instant::now();
        let mut limiter = Limiter::new(WINDOW);
        limiter.note(start, String::new);
        limiter.note(start + secs(2), || "last".into());
        let summary = limiter.take(start + secs(3)).unwrap();
        assert_eq!((summary.count, summary.over), (1, secs(3)));
        assert_eq!(limiter.take(start + secs(4)), None);
    }

    #[test]
    fn counts_are_written_with_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(9_999), "9,999");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
