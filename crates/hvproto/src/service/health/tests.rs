use std::sync::{Arc, Mutex};

use super::*;
use crate::service::heartbeat::HeartbeatLogic;
use crate::service::logic::answer_of;
use crate::service::Logic;
use crate::wire::heartbeat::Heartbeat;
use crate::wire::{IcVersion, Message, MessageType};

fn exited(code: i32, stdout: &str) -> Outcome {
    Outcome::Exited {
        code: Some(code),
        stdout: stdout.to_string(),
    }
}

#[test]
fn systemd_states_map_as_documented() {
    let cases = [
        ("running\n", AppState::HEALTHY),
        ("degraded\n", AppState::CRITICAL),
        ("maintenance\n", AppState::CRITICAL),
        ("stopping\n", AppState::STOPPED),
        ("starting\n", AppState::UNKNOWN),
        ("initializing\n", AppState::UNKNOWN),
        ("offline\n", AppState::UNKNOWN),
        ("", AppState::UNKNOWN),
    ];
    for (stdout, state) in cases {
        // is-system-running exits non-zero for every state but running; the text decides.
        assert_eq!(
            map(Reading::SystemState, &exited(1, stdout)),
            state,
            "{stdout:?}"
        );
    }
    assert_eq!(
        map(Reading::SystemState, &Outcome::TimedOut),
        AppState::UNKNOWN
    );
    assert_eq!(
        map(Reading::SystemState, &Outcome::SpawnFailed("ENOENT".into())),
        AppState::UNKNOWN
    );
}

#[test]
fn command_exit_status_maps_as_documented() {
    assert_eq!(map(Reading::ExitStatus, &exited(0, "")), AppState::HEALTHY);
    assert_eq!(map(Reading::ExitStatus, &exited(1, "")), AppState::CRITICAL);
    assert_eq!(
        map(Reading::ExitStatus, &exited(255, "running")),
        AppState::CRITICAL
    );
    let signalled = Outcome::Exited {
        code: None,
        stdout: String::new(),
    };
    assert_eq!(map(Reading::ExitStatus, &signalled), AppState::CRITICAL);
    assert_eq!(
        map(Reading::ExitStatus, &Outcome::TimedOut),
        AppState::CRITICAL
    );
    assert_eq!(
        map(Reading::ExitStatus, &Outcome::SpawnFailed("ENOENT".into())),
        AppState::CRITICAL
    );
}

#[test]
fn auto_reads_the_system_state_only_where_systemd_booted_and_none_reads_nothing() {
    for booted in [true, false] {
        assert_eq!(Mode::Systemd.reading(booted), Some(Reading::SystemState));
        assert_eq!(Mode::Command.reading(booted), Some(Reading::ExitStatus));
        assert_eq!(Mode::None.reading(booted), None);
    }
    assert_eq!(Mode::Auto.reading(true), Some(Reading::SystemState));
    assert_eq!(Mode::Auto.reading(false), None);
}

/// What the fake checker was asked and will answer.
#[derive(Default)]
struct Script {
    starts: u32,
    kills: u32,
    /// The outcome `ready` gives; None while the check "runs".
    outcome: Option<Outcome>,
    start_fails: bool,
}

struct FakeChecker(Arc<Mutex<Script>>);

impl Checker for FakeChecker {
    fn start(&mut self) -> Result<(), String> {
        let mut script = self.0.lock().unwrap();
        script.starts += 1;
        if script.start_fails {
            Err("No such file or directory".into())
        } else {
            Ok(())
        }
    }
    fn watch(&self) -> Option<Watch> {
        None
    }
    fn ready(&mut self) -> Option<Outcome> {
        self.0.lock().unwrap().outcome.take()
    }
    fn kill(&mut self) {
        self.0.lock().unwrap().kills += 1;
    }
    fn describe(&self) -> String {
        "fake".into()
    }
}

const INTERVAL: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(5);

fn logic(reading: Reading) -> (HeartbeatLogic, Arc<Mutex<Script>>) {
    let script = Arc::new(Mutex::new(Script::default()));
    let check = Check {
        reading,
        checker: Box::new(FakeChecker(script.clone())),
    };
    let health = Health::new(Some(check), INTERVAL, TIMEOUT);
    (HeartbeatLogic::with_health(health), script)
}

/// Answers one heartbeat at `now` and runs what follows the send; the state the reply carried.
fn beat(logic: &mut HeartbeatLogic, now: Instant) -> AppState {
    let request = Message::request(
        MessageType::HEARTBEAT,
        IcVersion::new(3, 0),
        IcVersion::new(3, 0),
        1,
        Heartbeat::new(5, AppState::UNKNOWN).to_body(),
    );
    let reply = answer_of(logic, 1, &request, IcVersion::new(3, 0), now).unwrap();
    logic.after_send(now);
    Heartbeat::parse(&reply.body).unwrap().app_state().unwrap()
}

#[test]
fn replies_carry_the_last_state_and_checks_start_only_when_stale() {
    let (mut logic, script) = logic(Reading::ExitStatus);
    let t0 = Instant::now();
    assert_eq!(logic.deadline(), None, "no check, no wake-up");
    assert_eq!(beat(&mut logic, t0), AppState::UNKNOWN);
    assert_eq!(
        script.lock().unwrap().starts,
        1,
        "the first heartbeat starts a check"
    );
    // The check finishes healthy; the next reply says so.
    script.lock().unwrap().outcome = Some(exited(0, ""));
    logic.watch_ready(t0 + Duration::from_millis(20));
    assert_eq!(logic.deadline(), None);
    assert_eq!(
        beat(&mut logic, t0 + Duration::from_secs(2)),
        AppState::HEALTHY
    );
    assert_eq!(
        script.lock().unwrap().starts,
        1,
        "state younger than the interval"
    );
    // Once the state is older than the interval, a heartbeat starts a new one.
    let later = t0 + Duration::from_millis(20) + INTERVAL;
    assert_eq!(beat(&mut logic, later), AppState::HEALTHY);
    assert_eq!(script.lock().unwrap().starts, 2);
    script.lock().unwrap().outcome = Some(exited(3, ""));
    logic.watch_ready(later);
    assert_eq!(beat(&mut logic, later), AppState::CRITICAL);
}

#[test]
fn a_hanging_check_is_killed_at_the_limit_while_heartbeats_are_answered() {
    let (mut logic, script) = logic(Reading::ExitStatus);
    let t0 = Instant::now();
    beat(&mut logic, t0);
    assert_eq!(logic.deadline(), Some(t0 + TIMEOUT));
    // Heartbeats during the check are answered at once with the old state and start nothing new.
    for second in 1..5 {
        let now = t0 + Duration::from_secs(second);
        assert_eq!(beat(&mut logic, now), AppState::UNKNOWN);
        logic.on_timer(now, &mut Vec::new());
    }
    assert_eq!(script.lock().unwrap().starts, 1);
    assert_eq!(script.lock().unwrap().kills, 0);
    logic.on_timer(t0 + TIMEOUT, &mut Vec::new());
    assert_eq!(script.lock().unwrap().kills, 1);
    assert_eq!(logic.deadline(), None);
    assert_eq!(beat(&mut logic, t0 + TIMEOUT), AppState::CRITICAL);
}

#[test]
fn a_hanging_systemctl_means_unknown() {
    let (mut logic, script) = logic(Reading::SystemState);
    let t0 = Instant::now();
    beat(&mut logic, t0);
    script.lock().unwrap().outcome = Some(exited(1, "degraded\n"));
    logic.watch_ready(t0);
    assert_eq!(beat(&mut logic, t0 + INTERVAL), AppState::CRITICAL);
    logic.on_timer(t0 + INTERVAL + TIMEOUT, &mut Vec::new());
    assert_eq!(script.lock().unwrap().kills, 1);
    assert_eq!(beat(&mut logic, t0 + INTERVAL + TIMEOUT), AppState::UNKNOWN);
}

#[test]
fn a_check_that_cannot_start_is_not_retried_on_every_heartbeat() {
    let (mut logic, script) = logic(Reading::ExitStatus);
    script.lock().unwrap().start_fails = true;
    let t0 = Instant::now();
    assert_eq!(beat(&mut logic, t0), AppState::UNKNOWN);
    assert_eq!(
        beat(&mut logic, t0 + Duration::from_secs(1)),
        AppState::CRITICAL
    );
    assert_eq!(script.lock().unwrap().starts, 1);
    assert_eq!(logic.deadline(), None);
}

#[test]
fn a_child_reaped_late_is_looked_at_again_soon() {
    let (mut logic, script) = logic(Reading::ExitStatus);
    let t0 = Instant::now();
    beat(&mut logic, t0);
    // Stdout closed (the fake has no fd) but the child is not reaped yet.
    logic.watch_ready(t0);
    let retry = logic.deadline().unwrap();
    assert!(retry < t0 + TIMEOUT, "retried before the time limit");
    script.lock().unwrap().outcome = Some(exited(0, ""));
    logic.on_timer(retry, &mut Vec::new());
    assert_eq!(script.lock().unwrap().kills, 0);
    assert_eq!(beat(&mut logic, retry), AppState::HEALTHY);
}

#[test]
fn mode_none_never_checks() {
    let mut logic = HeartbeatLogic::new();
    let t0 = Instant::now();
    for second in 0..3 {
        assert_eq!(beat(&mut logic, t0 + INTERVAL * second), AppState::UNKNOWN);
        assert_eq!(logic.deadline(), None);
    }
}

#[test]
fn a_readiness_report_without_a_running_check_schedules_nothing() {
    let (mut logic, script) = logic(Reading::ExitStatus);
    let t0 = Instant::now();
    logic.watch_ready(t0);
    assert_eq!(logic.deadline(), None, "nothing runs: no wake-up");
    beat(&mut logic, t0);
    script.lock().unwrap().outcome = Some(exited(0, ""));
    logic.watch_ready(t0);
    // A stale report after the check finished.
    logic.watch_ready(t0);
    assert_eq!(logic.deadline(), None);
    assert_eq!(beat(&mut logic, t0), AppState::HEALTHY);
}
