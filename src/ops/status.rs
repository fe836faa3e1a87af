//! What `hvagent status` shows: a plain model of the running agent, sent as JSON over the control socket
//! (see [`crate::ops::control`]) and rendered as text by the command line. No I/O here.
//!
//! Times are wall-clock Unix seconds, so a client can show them as dates; the agent converts its monotonic
//! instants when it builds the report.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The whole agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub version: String,
    pub pid: u32,
    /// When the agent started.
    pub started: f64,
    /// When this report was made.
    pub now: f64,
    /// The config file in use, or none for built-in defaults.
    pub config: Option<String>,
    pub services: Vec<ServiceStatus>,
}

/// One enabled service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub mode: Mode,
    pub address: String,
    /// The Hyper-V service GUID, for vsock addresses.
    pub guid: Option<String>,
    pub state: ServiceState,
    pub links: Vec<LinkStatus>,
    /// The service logic's own lines (`Logic::status`): counters, modes, last values.
    pub details: Vec<Detail>,
}

/// Who dials: the JSON says `connect` or `listen`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The guest dials the host.
    Connect,
    /// The guest listens and the host dials.
    Listen,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Connect => "connect",
            Mode::Listen => "listen",
        }
    }
}

/// Where a service stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ServiceState {
    /// Waiting to dial; `failures` attempts failed since the last success.
    Dialling {
        next_retry: f64,
        failures: u32,
    },
    /// A connect is in progress.
    Connecting {
        deadline: f64,
    },
    Connected {
        since: f64,
    },
    Listening {
        peers: usize,
    },
    /// The listening socket could not be opened yet.
    ListenRetry {
        next_retry: f64,
        failures: u32,
    },
}

/// One connection of a service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub peer: String,
    pub since: f64,
    /// `awaiting negotiation`, `negotiated` or `no common version`.
    pub negotiation: String,
    pub framework: Option<String>,
    pub message: Option<String>,
}

/// A label and its value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detail {
    pub label: String,
    pub value: String,
}

impl AgentStatus {
    /// The report as JSON, as the control socket sends it.
    pub fn to_json(&self) -> String {
        // Serializing plain structs of strings and numbers cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<AgentStatus, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The report as text for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "hvagent {}, pid {}, up {} (since {})",
            self.version,
            self.pid,
            span(self.now - self.started),
            utc(self.started)
        );
        let _ = writeln!(
            out,
            "config: {}",
            self.config.as_deref().unwrap_or("built-in defaults")
        );
        if self.services.is_empty() {
            out.push_str("no service is enabled\n");
        }
        for service in &self.services {
            out.push('\n');
            render_service(&mut out, service, self.now);
        }
        out
    }
}

fn render_service(out: &mut String, service: &ServiceStatus, now: f64) {
    let _ = writeln!(
        out,
        "{}: {} {}",
        service.name,
        service.mode.name(),
        service.address
    );
    let mut line = |label: &str, value: &str| {
        let _ = writeln!(out, "  {label:<18} {value}");
    };
    if let Some(guid) = &service.guid {
        line("GUID", guid);
    }
    line("state", &state_text(&service.state, now));
    for link in &service.links {
        let versions = match (&link.framework, &link.message) {
            (Some(framework), Some(message)) => {
                format!("framework {framework}, message {message}")
            }
            _ => link.negotiation.clone(),
        };
        if service.mode == Mode::Connect {
            // The one link of a dialling service is its address, connected since the state says.
            line("versions", &versions);
        } else {
            line(
                "peer",
                &format!("{} since {}: {versions}", link.peer, ago(link.since, now)),
            );
        }
    }
    for detail in &service.details {
        line(&detail.label, &detail.value);
    }
}

fn state_text(state: &ServiceState, now: f64) -> String {
    match state {
        ServiceState::Dialling {
            next_retry,
            failures,
        } => format!(
            "dialling, next attempt in {} at {} ({failures} failed)",
            span(next_retry - now),
            utc(*next_retry)
        ),
        ServiceState::Connecting { deadline } => {
            format!("connecting, gives up in {}", span(deadline - now))
        }
        ServiceState::Connected { since } => format!("connected since {}", ago(*since, now)),
        ServiceState::Listening { peers } => format!(
            "listening with {peers} peer{}",
            if *peers == 1 { "" } else { "s" }
        ),
        ServiceState::ListenRetry {
            next_retry,
            failures,
        } => format!(
            "cannot listen yet, next attempt in {} ({failures} failed)",
            span(next_retry - now)
        ),
    }
}

/// `2026-11-25 14:30:01Z (3 min 2 s ago)`.
fn ago(at: f64, now: f64) -> String {
    format!("{} ({} ago)", utc(at), span(now - at))
}

/// A duration in seconds as `850 ms`, `12.5 s`, `3 min 2 s`, `2 h 5 min` or `3 d 4 h`.
pub fn span(seconds: f64) -> String {
    let seconds = seconds.max(0.0);
    let whole = seconds as u64;
    match whole {
        0 => format!("{} ms", (seconds * 1000.0).round() as u64),
        1..=59 => format!("{seconds:.1} s"),
        60..=3599 => format!("{} min {} s", whole / 60, whole % 60),
        3600..=86_399 => format!("{} h {} min", whole / 3600, whole / 60 % 60),
        _ => format!("{} d {} h", whole / 86_400, whole / 3600 % 24),
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SSZ` (UTC).
pub fn utc(unix: f64) -> String {
    let seconds = unix.max(0.0) as i64;
    let (days, time) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        time / 3600,
        time / 60 % 60,
        time % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AgentStatus {
        AgentStatus {
            version: "0.1.0".into(),
            pid: 42,
            started: 1_764_079_200.0,
            now: 1_764_079_200.0 + 125.0,
            config: None,
            services: vec![
                ServiceStatus {
                    name: "heartbeat".into(),
                    mode: Mode::Connect,
                    address: "vsock:host:0x48560001".into(),
                    guid: Some("48560001-facb-11e6-bd58-64006a7986d3".into()),
                    state: ServiceState::Connected {
                        since: 1_764_079_201.0,
                    },
                    links: vec![LinkStatus {
                        peer: "vsock:host:0x48560001".into(),
                        since: 1_764_079_201.0,
                        negotiation: "negotiated".into(),
                        framework: Some("3.0".into()),
                        message: Some("3.0".into()),
                    }],
                    details: vec![Detail {
                        label: "heartbeats".into(),
                        value: "61".into(),
                    }],
                },
                ServiceStatus {
                    name: "timesync".into(),
                    mode: Mode::Connect,
                    address: "unix:/tmp/t".into(),
                    guid: None,
                    state: ServiceState::Dialling {
                        next_retry: 1_764_079_200.0 + 127.5,
                        failures: 3,
                    },
                    links: Vec::new(),
                    details: Vec::new(),
                },
            ],
        }
    }

    #[test]
    fn json_round_trips() {
        let status = sample();
        assert_eq!(AgentStatus::from_json(&status.to_json()).unwrap(), status);
        assert!(status.to_json().contains("\"state\": \"dialling\""));
    }

    #[test]
    fn text_shows_each_service_its_guid_state_versions_and_details() {
        let text = sample().render();
        assert!(
            text.starts_with("hvagent 0.1.0, pid 42, up 2 min 5 s (since 2025-11-25 14:00:00Z)"),
            "{text}"
        );
        assert!(
            text.contains("heartbeat: connect vsock:host:0x48560001\n"),
            "{text}"
        );
        assert!(
            text.contains("  GUID               48560001-facb-11e6-bd58-64006a7986d3\n"),
            "{text}"
        );
        assert!(
            text.contains("connected since 2025-11-25 14:00:01Z (2 min 4 s ago)"),
            "{text}"
        );
        assert!(
            text.contains("  versions           framework 3.0, message 3.0\n"),
            "{text}"
        );
        assert!(text.contains("  heartbeats         61\n"), "{text}");
        assert!(
            text.contains("dialling, next attempt in 2.5 s at 2025-11-25 14:02:07Z (3 failed)"),
            "{text}"
        );
    }

    #[test]
    fn dates_and_spans() {
        assert_eq!(utc(0.0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_782_400.0), "2000-02-29 00:00:00Z");
        assert_eq!(utc(4_102_444_799.0), "2099-12-31 23:59:59Z");
        assert_eq!(span(0.25), "250 ms");
        assert_eq!(span(-3.0), "0 ms");
        assert_eq!(span(90_000.0), "1 d 1 h");
        assert_eq!(span(3_725.0), "1 h 2 min");
    }
}
