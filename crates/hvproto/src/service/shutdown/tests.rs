use crate::service::logic::answer_of;
use std::cell::RefCell;
use std::rc::Rc;

use std::time::Duration;

use super::*;
use crate::wire::{MessageType, Status};

/// What the fake was asked to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Spawn(Vec<String>, Vec<(&'static str, String)>),
    Reboot(PowerAction),
}

#[derive(Clone)]
struct FakePower {
    systemd: bool,
    hibernate: bool,
    spawn_fails: bool,
    exit: Rc<RefCell<Option<Result<(), String>>>>,
    calls: Rc<RefCell<Vec<Call>>>,
}

impl FakePower {
    fn new(systemd: bool) -> FakePower {
        FakePower {
            systemd,
            hibernate: true,
            spawn_fails: false,
            exit: Rc::new(RefCell::new(None)),
            calls: Rc::new(RefCell::new(Vec::new())),
        }
    }
}

impl Power for FakePower {
    fn systemd_booted(&self) -> bool {
        self.systemd
    }
    fn can_hibernate(&self) -> bool {
        self.hibernate
    }
    fn spawn(&mut self, argv: &[String], env: &[(&'static str, String)]) -> Result<(), String> {
        self.calls
            .borrow_mut()
            .push(Call::Spawn(argv.to_vec(), env.to_vec()));
        if self.spawn_fails {
            Err("No such file or directory".to_string())
        } else {
            Ok(())
        }
    }
    fn try_wait(&mut self) -> Option<Result<(), String>> {
        self.exit.borrow_mut().take()
    }
    fn reboot_now(&mut self, action: PowerAction) -> String {
        self.calls.borrow_mut().push(Call::Reboot(action));
        "EPERM (fake)".to_string()
    }
}

fn request(flags: u32, message: &[u8]) -> Message {
    let body = ShutdownRequest {
        reason_code: 0x8000_0000,
        timeout_seconds: 30,
        flags,
        display_message: message.to_vec(),
    };
    Message::request(
        MessageType::SHUTDOWN,
        IcVersion::new(3, 0),
        IcVersion::new(3, 2),
        7,
        body.to_body(),
    )
}

fn fake_config() -> ShutdownSettings {
    ShutdownSettings {
        poweroff: vec!["/bin/fake-off".into()],
        reboot: vec!["/usr/bin/systemctl".into(), "reboot".into()],
        hibernate: vec!["/bin/fake-hibernate".into(), "now".into()],
        force_after: Duration::from_secs(300),
    }
}

fn argv(call: &Call) -> Vec<String> {
    match call {
        Call::Spawn(argv, _) => argv.clone(),
        Call::Reboot(action) => vec![format!("reboot(2) {}", action.name())],
    }
}

/// Sends one request and runs what follows the answer; the reply and the calls made.
fn exchange(
    logic: &mut ShutdownLogic,
    fake: &FakePower,
    flags: u32,
) -> (Result<Message, Refusal>, Vec<Call>) {
    let now = Instant::now();
    let reply = answer_of(
        logic,
        1,
        &request(flags, b"planned\0junk"),
        IcVersion::new(3, 2),
        now,
    );
    assert!(
        fake.calls.borrow().is_empty(),
        "nothing may run before the answer is sent"
    );
    logic.after_send(now);
    let calls = fake.calls.borrow_mut().drain(..).collect();
    (reply, calls)
}

/// The orderly command of what `exchange` started: the first call, or, when that armed the escalation,
/// the command that runs once the arming has ended.
fn orderly(logic: &mut ShutdownLogic, fake: &FakePower, calls: &[Call]) -> Vec<String> {
    let first = argv(&calls[0]);
    if first.get(1).map(String::as_str) != Some("start") {
        return first;
    }
    *fake.exit.borrow_mut() = Some(Ok(()));
    let next = run_timers(logic, fake, Instant::now() + Duration::from_secs(1));
    assert_eq!(next.len(), 1, "{next:?}");
    argv(&next[0])
}

#[test]
fn every_flag_value_maps_to_its_action_or_a_refusal() {
    let expected: [(u32, Option<&[&str]>); 8] = [
        (0, Some(&["/bin/fake-off"])),
        (1, Some(&["/bin/fake-off"])),
        (2, Some(&["/usr/bin/systemctl", "reboot"])),
        (
            3,
            Some(&["/usr/bin/systemctl", "reboot", "--ignore-inhibitors"]),
        ),
        (4, Some(&["/bin/fake-hibernate", "now"])),
        (5, Some(&["/bin/fake-hibernate", "now"])),
        (6, None),
        (8, None),
    ];
    for (flags, want) in expected {
        let fake = FakePower::new(true);
        let mut logic = ShutdownLogic::new(fake_config(), Box::new(fake.clone()));
        let (reply, calls) = exchange(&mut logic, &fake, flags);
        match want {
            Some(argv_wanted) => {
                let reply = reply.unwrap_or_else(|r| panic!("flags {flags}: refused {r:?}"));
                assert_eq!(reply.header.status, Status::OK);
                assert_eq!(calls.len(), 1, "flags {flags}");
                assert_eq!(
                    orderly(&mut logic, &fake, &calls),
                    argv_wanted,
                    "flags {flags}"
                );
            }
            None => {
                assert_eq!(reply.unwrap_err().status, Status::FAIL, "flags {flags}");
                assert!(calls.is_empty(), "flags {flags}: {calls:?}");
            }
        }
    }
    for flags in [7u32, 0x10, 0xFFFF_FFFF, 0x8000_0000] {
        assert_eq!(decode_flags(flags), None, "flags {flags:#x}");
    }
}

#[test]
fn the_command_gets_the_request_in_its_environment() {
    let fake = FakePower::new(true);
    let mut logic = ShutdownLogic::new(fake_config(), Box::new(fake.clone()));
    let (_, calls) = exchange(&mut logic, &fake, flags::FORCE);
    let Call::Spawn(_, env) = &calls[0] else {
        panic!("{calls:?}")
    };
    assert!(env.contains(&("HVAGENT_SHUTDOWN_ACTION", "poweroff".to_string())));
    assert!(env.contains(&("HVAGENT_SHUTDOWN_FORCE", "1".to_string())));
    assert!(env.contains(&("HVAGENT_SHUTDOWN_REASON", "0x80000000".to_string())));
    assert!(env.contains(&("HVAGENT_SHUTDOWN_MESSAGE", "planned".to_string())));
}

#[test]
fn hibernate_is_refused_where_the_guest_cannot_hibernate() {
    let mut fake = FakePower::new(true);
    fake.hibernate = false;
    let mut logic = ShutdownLogic::new(fake_config(), Box::new(fake.clone()));
    for flags in [4, 5] {
        let (reply, calls) = exchange(&mut logic, &fake, flags);
        let refusal = reply.unwrap_err();
        assert_eq!(refusal.status, Status::FAIL);
        assert!(refusal.why.contains("cannot hibernate"), "{}", refusal.why);
        assert!(calls.is_empty());
    }
    // Power off still works.
    let (reply, calls) = exchange(&mut logic, &fake, 0);
    assert!(reply.is_ok());
    assert_eq!(calls.len(), 1);
}

/// The defaults as `config::load` leaves them where PATH has systemctl in /usr/bin.
fn resolved_defaults() -> ShutdownSettings {
    let mut config = ShutdownSettings::default();
    for argv in [
        &mut config.poweroff,
        &mut config.reboot,
        &mut config.hibernate,
    ] {
        argv[0] = "/usr/bin/systemctl".into();
    }
    config
}

#[test]
fn reboot_syscall_only_with_the_default_command_and_no_systemd() {
    // Defaults without systemd, by name (no systemctl in PATH) or made absolute at load: reboot(2) with
    // the matching command, forced or not.
    for config in [ShutdownSettings::default(), resolved_defaults()] {
        for (flags, action) in [
            (0, PowerAction::PowerOff),
            (3, PowerAction::Reboot),
            (4, PowerAction::Hibernate),
        ] {
            let fake = FakePower::new(false);
            let mut logic = ShutdownLogic::new(config.clone(), Box::new(fake.clone()));
            let (reply, calls) = exchange(&mut logic, &fake, flags);
            assert!(reply.is_ok());
            assert!(calls.is_empty(), "reboot(2) waits for the answer to leave");
            let at = logic.deadline().expect("the reboot is scheduled");
            logic.on_timer(at - SYSCALL_GRACE / 2, &mut Vec::new());
            assert!(fake.calls.borrow().is_empty(), "not before the grace");
            logic.on_timer(at, &mut Vec::new());
            assert_eq!(*fake.calls.borrow(), [Call::Reboot(action)]);
            assert_eq!(logic.deadline(), None);
        }
    }
    // Defaults with systemd: systemctl as load left it, ignoring inhibitors when forced (never --force at
    // first).
    for (config, program) in [
        (ShutdownSettings::default(), "systemctl"),
        (resolved_defaults(), "/usr/bin/systemctl"),
    ] {
        for (flags, wanted) in [
            (0, &["poweroff"][..]),
            (1, &["poweroff", "--ignore-inhibitors"]),
            (3, &["reboot", "--ignore-inhibitors"]),
            (5, &["hibernate", "--ignore-inhibitors"]),
        ] {
            let fake = FakePower::new(true);
            let mut logic = ShutdownLogic::new(config.clone(), Box::new(fake.clone()));
            let (_, calls) = exchange(&mut logic, &fake, flags);
            let orderly = orderly(&mut logic, &fake, &calls);
            assert_eq!(orderly[0], program, "flags {flags}");
            assert_eq!(orderly[1..], *wanted, "flags {flags}");
        }
    }
    // A configured command without systemd, even one running systemctl with more arguments: the command,
    // never the syscall.
    let fake = FakePower::new(false);
    let mut config = fake_config();
    config.reboot.push("--no-wall".into());
    let mut logic = ShutdownLogic::new(config, Box::new(fake.clone()));
    for flags in [0, 1, 2, 3, 4, 5] {
        let (_, calls) = exchange(&mut logic, &fake, flags);
        assert!(
            !calls.is_empty() && calls.iter().all(|call| matches!(call, Call::Spawn(..))),
            "flags {flags}: {calls:?}"
        );
        logic.phase = Phase::Idle;
    }
}

#[test]
fn a_second_request_while_one_runs_is_answered_and_ignored() {
    let fake = FakePower::new(true);
    let mut logic = ShutdownLogic::new(fake_config(), Box::new(fake.clone()));
    let (reply, calls) = exchange(&mut logic, &fake, 0);
    assert!(reply.is_ok());
    assert_eq!(calls.len(), 1);
    let (reply, calls) = exchange(&mut logic, &fake, 2);
    assert_eq!(reply.unwrap().header.status, Status::OK);
    assert!(calls.is_empty(), "{calls:?}");
    assert_eq!(logic.status(Instant::now())[0].1, "poweroff in progress");
}

#[test]
fn a_failed_command_lets_the_next_request_run() {
    let fake = FakePower::new(true);
    let mut logic = ShutdownLogic::new(fake_config(), Box::new(fake.clone()));
    let (_, calls) = exchange(&mut logic, &fake, 0);
    assert_eq!(calls.len(), 1);
    let at = logic.deadline().expect("the running command is looked at");
    logic.on_timer(at, &mut Vec::new());
    let at = logic.deadline().expect("still running: look again");
    *fake.exit.borrow_mut() = Some(Err("exit status 1".to_string()));
    logic.on_timer(at, &mut Vec::new());
    assert_eq!(logic.deadline(), None);
    let (_, calls) = exchange(&mut logic, &fake, 2);
    assert_eq!(calls.len(), 1);
}

#[test]
fn a_spawn_failure_is_not_an_action_in_progress() {
    let mut fake = FakePower::new(true);
    fake.spawn_fails = true;
    let mut logic = ShutdownLogic::new(fake_config(), Box::new(fake.clone()));
    let (reply, calls) = exchange(&mut logic, &fake, 0);
    assert!(reply.is_ok());
    assert_eq!(calls.len(), 1);
    assert_eq!(logic.status(Instant::now())[0].1, "idle");
}

#[test]
fn a_body_without_flags_is_refused_as_invalid() {
    let fake = FakePower::new(true);
    let mut logic = ShutdownLogic::new(fake_config(), Box::new(fake.clone()));
    let mut message = request(0, b"");
    message.body.truncate(11);
    let refusal = answer_of(
        &mut logic,
        1,
        &message,
        IcVersion::new(3, 2),
        Instant::now(),
    )
    .unwrap_err();
    assert_eq!(refusal.status, Status::INVALID_ARG);
    logic.after_send(Instant::now());
    assert!(fake.calls.borrow().is_empty());
}

/// Runs the timer at every deadline up to `until`; the calls made.
fn run_timers(logic: &mut ShutdownLogic, fake: &FakePower, until: Instant) -> Vec<Call> {
    while let Some(at) = logic.deadline().filter(|at| *at <= until) {
        logic.on_timer(at, &mut Vec::new());
    }
    fake.calls.borrow_mut().drain(..).collect()
}

/// Sends a request at `start` and runs what follows the answer; the calls made.
fn send(logic: &mut ShutdownLogic, fake: &FakePower, flags: u32, start: Instant) -> Vec<Call> {
    answer_of(logic, 1, &request(flags, b""), IcVersion::new(3, 2), start).unwrap();
    logic.after_send(start);
    fake.calls.borrow_mut().drain(..).collect()
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|word| word.to_string()).collect()
}

#[test]
fn a_forced_request_arms_the_escalation_unit_before_its_orderly_command() {
    let start = Instant::now();
    for (flags, unit, orderly) in [
        (
            1u32,
            Some("hvagent-force-poweroff@300.service"),
            &["systemctl", "poweroff", "--ignore-inhibitors"][..],
        ),
        (
            3,
            Some("hvagent-force-reboot@300.service"),
            &["systemctl", "reboot", "--ignore-inhibitors"],
        ),
        // Not forced, or a hibernation (it resumes into a running system): never escalated.
        (0, None, &["systemctl", "poweroff"]),
        (2, None, &["systemctl", "reboot"]),
        (5, None, &["systemctl", "hibernate", "--ignore-inhibitors"]),
    ] {
        let fake = FakePower::new(true);
        let mut logic = ShutdownLogic::new(ShutdownSettings::default(), Box::new(fake.clone()));
        let first = send(&mut logic, &fake, flags, start);
        assert_eq!(first.len(), 1, "flags {flags}: {first:?}");
        let Some(unit) = unit else {
            assert_eq!(argv(&first[0]), orderly, "flags {flags}");
            continue;
        };
        // The same argv whether the agent runs as root or not: systemd forces the action either way.
        assert_eq!(
            argv(&first[0]),
            strings(&["systemctl", "start", "--no-block", unit]),
            "flags {flags}"
        );
        let Call::Spawn(_, env) = &first[0] else {
            unreachable!()
        };
        assert!(env.contains(&("HVAGENT_SHUTDOWN_FORCE", "1".to_string())));
        assert!(logic.status(start)[0].1.ends_with("arming its escalation"));
        // The orderly command waits for the arming; systemctl start --no-block returns at once.
        let waiting = run_timers(&mut logic, &fake, start + Duration::from_millis(200));
        assert!(waiting.is_empty(), "flags {flags}: {waiting:?}");
        *fake.exit.borrow_mut() = Some(Ok(()));
        let next = run_timers(&mut logic, &fake, start + Duration::from_millis(300));
        assert_eq!(next.len(), 1, "flags {flags}: {next:?}");
        assert_eq!(argv(&next[0]), orderly, "flags {flags}");
        // The orderly command queued its job; nothing more is run, ever: systemd forces it if need be.
        *fake.exit.borrow_mut() = Some(Ok(()));
        let after = run_timers(&mut logic, &fake, start + Duration::from_secs(86_400));
        assert!(after.is_empty(), "flags {flags}: {after:?}");
        assert_eq!(logic.deadline(), None, "flags {flags}: no timer left");
    }
}

#[test]
fn the_escalation_unit_names_force_after_in_whole_seconds_and_the_configured_systemctl() {
    let fake = FakePower::new(true);
    let config = ShutdownSettings {
        force_after: Duration::from_secs_f64(2.5),
        ..resolved_defaults()
    };
    let mut logic = ShutdownLogic::new(config, Box::new(fake.clone()));
    let calls = send(&mut logic, &fake, 1, Instant::now());
    assert_eq!(
        argv(&calls[0]),
        strings(&[
            "/usr/bin/systemctl",
            "start",
            "--no-block",
            "hvagent-force-poweroff@3.service"
        ])
    );
}

#[test]
fn force_after_zero_and_custom_commands_never_arm_an_escalation() {
    let start = Instant::now();
    let never = ShutdownSettings {
        force_after: Duration::ZERO,
        ..ShutdownSettings::default()
    };
    // force_after 0; a custom poweroff command (it learns of force from HVAGENT_SHUTDOWN_FORCE).
    for (config, program) in [(never, "systemctl"), (fake_config(), "/bin/fake-off")] {
        let fake = FakePower::new(true);
        let mut logic = ShutdownLogic::new(config, Box::new(fake.clone()));
        let calls = send(&mut logic, &fake, 1, start);
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(argv(&calls[0])[0], program);
        assert_ne!(argv(&calls[0]).get(1).map(String::as_str), Some("start"));
        *fake.exit.borrow_mut() = Some(Ok(()));
        let calls = run_timers(&mut logic, &fake, start + Duration::from_secs(86_400));
        assert!(calls.is_empty(), "{calls:?}");
    }
}

#[test]
fn a_failed_orderly_command_disarms_the_escalation_and_lets_a_new_request_run() {
    let start = Instant::now();
    let fake = FakePower::new(true);
    let mut logic = ShutdownLogic::new(ShutdownSettings::default(), Box::new(fake.clone()));
    send(&mut logic, &fake, 3, start);
    *fake.exit.borrow_mut() = Some(Ok(()));
    let orderly = run_timers(&mut logic, &fake, start + Duration::from_millis(100));
    assert_eq!(orderly.len(), 1, "{orderly:?}");
    // logind refused: nothing is under way, so nothing may be forced later.
    *fake.exit.borrow_mut() = Some(Err("exit status 1".to_string()));
    let calls = run_timers(&mut logic, &fake, start + Duration::from_secs(86_400));
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(
        argv(&calls[0]),
        strings(&[
            "systemctl",
            "stop",
            "--no-block",
            "hvagent-force-reboot@300.service"
        ])
    );
    assert_eq!(logic.status(start)[0].1, "idle");
    assert_eq!(logic.deadline(), None);
}

#[test]
fn an_escalation_that_cannot_be_armed_does_not_hold_up_the_orderly_command() {
    let start = Instant::now();
    // Arming failed (no unit, no polkit rule): the orderly command runs; should it fail too, there is
    // nothing to disarm.
    let fake = FakePower::new(true);
    let mut logic = ShutdownLogic::new(ShutdownSettings::default(), Box::new(fake.clone()));
    send(&mut logic, &fake, 1, start);
    *fake.exit.borrow_mut() = Some(Err("exit status 4".to_string()));
    let orderly = run_timers(&mut logic, &fake, start + Duration::from_millis(100));
    assert_eq!(
        argv(&orderly[0]),
        strings(&["systemctl", "poweroff", "--ignore-inhibitors"])
    );
    *fake.exit.borrow_mut() = Some(Err("exit status 1".to_string()));
    let calls = run_timers(&mut logic, &fake, start + Duration::from_secs(86_400));
    assert!(calls.is_empty(), "{calls:?}");
    // Arming that never ends: the orderly command runs after ARM_WAIT, not before.
    let fake = FakePower::new(true);
    let mut logic = ShutdownLogic::new(ShutdownSettings::default(), Box::new(fake.clone()));
    send(&mut logic, &fake, 1, start);
    let before = run_timers(
        &mut logic,
        &fake,
        start + ARM_WAIT - Duration::from_millis(100),
    );
    assert!(before.is_empty(), "{before:?}");
    let after = run_timers(
        &mut logic,
        &fake,
        start + ARM_WAIT + Duration::from_millis(100),
    );
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(argv(&after[0])[1], "poweroff");
}

#[test]
fn display_messages_are_decoded_and_never_trusted() {
    assert_eq!(
        display_text(b"Planned maintenance\0\xff\xfe"),
        "Planned maintenance"
    );
    let utf16: Vec<u8> = "Host reboot"
        .encode_utf16()
        .chain([0, 0x41])
        .flat_map(u16::to_le_bytes)
        .collect();
    assert_eq!(display_text(&utf16), "Host reboot");
    assert_eq!(display_text(b"bad \xc3\x28 utf8"), "bad \u{fffd}( utf8");
    // Decoded as sent; escaped wherever it is shown (the log uses escape_debug).
    let hostile = "line\nbreak\x1b[31m \u{202e}txt.exe \u{2028}next";
    assert_eq!(display_text(hostile.as_bytes()), hostile);
    assert_eq!(
        display_text(hostile.as_bytes()).escape_debug().to_string(),
        "line\\nbreak\\u{1b}[31m \\u{202e}txt.exe \\u{2028}next"
    );
    assert_eq!(display_text(b""), "");
    assert_eq!(display_text(&[0; 2048]), "");
    // At most the 2048 bytes of the field: whatever follows in a longer body is not part of the message.
    let long = [vec![b'a'; 2048], b"beyond".to_vec()].concat();
    assert_eq!(display_text(&long), "a".repeat(2048));
    let long_utf16: Vec<u8> = "b"
        .repeat(1100)
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    assert_eq!(display_text(&long_utf16), "b".repeat(1024));
}
