//! The agent's state as a [`crate::ops::status`] report (for the control socket) and as the one-line summary
//! systemd shows (`STATUS=`).

use std::fmt::Write;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::runtime::{DialState, Link, Role, RunningService};
use crate::config::Endpoint;
use crate::ops::status::{AgentStatus, Detail, LinkStatus, Mode, ServiceState, ServiceStatus};
use hvproto::service::ChannelState;

/// Turns monotonic instants into wall-clock Unix seconds, as of one moment.
pub(super) struct WallClock {
    now: Instant,
    unix_now: f64,
}

impl WallClock {
    pub(super) fn at(now: Instant) -> WallClock {
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |elapsed| elapsed.as_secs_f64());
        WallClock { now, unix_now }
    }

    pub(super) fn unix(&self, at: Instant) -> f64 {
        if at >= self.now {
            self.unix_now + (at - self.now).as_secs_f64()
        } else {
            self.unix_now - (self.now - at).as_secs_f64()
        }
    }
}

/// The report of all services.
pub(super) fn agent_status(
    services: &[RunningService],
    started: Instant,
    config: Option<String>,
    now: Instant,
) -> AgentStatus {
    let clock = WallClock::at(now);
    AgentStatus {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        started: clock.unix(started),
        now: clock.unix_now,
        config,
        services: services
            .iter()
            .map(|service| service_status(service, &clock))
            .collect(),
    }
}

fn service_status(service: &RunningService, clock: &WallClock) -> ServiceStatus {
    let (mode, address) = match &service.config.endpoint {
        Endpoint::Connect(address) => (Mode::Connect, address),
        Endpoint::Listen(address) => (Mode::Listen, address),
    };
    let state = match &service.role {
        Role::Dialer(DialState::Waiting { retry_at }) => ServiceState::Dialling {
            next_retry: clock.unix(*retry_at),
            failures: service.failures,
        },
        Role::Dialer(DialState::Connecting { deadline, .. }) => ServiceState::Connecting {
            deadline: clock.unix(*deadline),
        },
        Role::Dialer(DialState::Up(link)) => ServiceState::Connected {
            since: clock.unix(link.since),
        },
        Role::Listener(listening) => match (listening.listener.is_some(), listening.retry_at) {
            (false, Some(retry_at)) => ServiceState::ListenRetry {
                next_retry: clock.unix(retry_at),
                failures: service.failures,
            },
            _ => ServiceState::Listening {
                peers: listening.links.len(),
            },
        },
    };
    ServiceStatus {
        name: service.name().to_string(),
        mode,
        address: address.to_string(),
        guid: address.service_id().map(|id| id.to_string()),
        state,
        links: service
            .links()
            .map(|link| link_status(link, clock))
            .collect(),
        details: service
            .logic
            .status(clock.now)
            .into_iter()
            .map(|(label, value)| Detail {
                label: label.to_string(),
                value,
            })
            .collect(),
    }
}

fn link_status(link: &Link, clock: &WallClock) -> LinkStatus {
    let (negotiation, framework, message) = match link.channel.state() {
        ChannelState::AwaitingNegotiation => ("awaiting negotiation", None, None),
        ChannelState::NoCommonVersion => ("no common version", None, None),
        ChannelState::Ready { framework, message } => (
            "negotiated",
            Some(framework.to_string()),
            Some(message.to_string()),
        ),
    };
    LinkStatus {
        peer: link.peer.clone(),
        since: clock.unix(link.since),
        negotiation: negotiation.to_string(),
        framework,
        message,
    }
}

/// `heartbeat connected, timesync dialling`: what `systemctl status` shows.
pub(super) fn summary(services: &[RunningService]) -> String {
    let mut line = String::new();
    write_summary(services, &mut line);
    line
}

/// Writes [`summary`] over `line`, reusing its storage: the loop compares it with what systemd has every
/// turn.
pub(super) fn write_summary(services: &[RunningService], line: &mut String) {
    line.clear();
    if services.is_empty() {
        line.push_str("no service enabled");
        return;
    }
    for (index, service) in services.iter().enumerate() {
        if index > 0 {
            line.push_str(", ");
        }
        line.push_str(service.name());
        line.push(' ');
        match &service.role {
            Role::Dialer(DialState::Waiting { .. }) => line.push_str("dialling"),
            Role::Dialer(DialState::Connecting { .. }) => line.push_str("connecting"),
            Role::Dialer(DialState::Up(_)) => line.push_str("connected"),
            Role::Listener(listening) if listening.listener.is_none() => {
                line.push_str("cannot listen yet")
            }
            Role::Listener(listening) => {
                // Writing to a String cannot fail.
                let _ = write!(line, "listening with {} peer(s)", listening.links.len());
            }
        }
    }
}
