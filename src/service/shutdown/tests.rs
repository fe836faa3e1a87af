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

fn fake_config() -> ShutdownConfig {
    ShutdownConfig {
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
    let reply = logic.request(
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
                assert_eq!(argv(&calls[0]), argv_wanted, "flags {flags}");
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
fn resolved_defaults() -> ShutdownConfig {
    let mut config = ShutdownConfig::default();
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
    for config in [ShutdownConfig::default(), resolved_defaults()] {
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
        (ShutdownConfig::default(), "systemctl"),
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
            assert_eq!(argv(&calls[0])[0], program, "flags {flags}");
            assert_eq!(argv(&calls[0])[1..], *wanted, "flags {flags}");
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
    let refusal = logic
        .request(1, &message, IcVersion::new(3, 2), Instant::now())
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

#[test]
fn a_forced_request_escalates_to_force_only_if_the_system_is_still_up_after_force_after() {
    let start = Instant::now();
    for (flags, escalated) in [
        (1u32, Some(&["systemctl", "poweroff", "--force"][..])),
        (3, Some(&["systemctl", "reboot", "--force"])),
        // Not forced, or a hibernation (it resumes into a running system): never escalated.
        (0, None),
        (2, None),
        (5, None),
    ] {
        let fake = FakePower::new(true);
        let mut logic = ShutdownLogic::new(ShutdownConfig::default(), Box::new(fake.clone()));
        logic
            .request(1, &request(flags, b""), IcVersion::new(3, 2), start)
            .unwrap();
        logic.after_send(start);
        let first = fake.calls.borrow_mut().drain(..).collect::<Vec<_>>();
        assert_eq!(first.len(), 1);
        // systemctl returns at once: the job is queued.
        *fake.exit.borrow_mut() = Some(Ok(()));
        let before = run_timers(&mut logic, &fake, start + Duration::from_secs(299));
        assert!(before.is_empty(), "flags {flags}: {before:?}");
        let after = run_timers(&mut logic, &fake, start + Duration::from_secs(301));
        match escalated {
            Some(wanted) => {
                assert_eq!(after.len(), 1, "flags {flags}: {after:?}");
                assert_eq!(argv(&after[0]), wanted, "flags {flags}");
                let Call::Spawn(_, env) = &after[0] else {
                    unreachable!()
                };
                assert!(env.contains(&("HVAGENT_SHUTDOWN_FORCE", "1".to_string())));
            }
            None => {
                assert!(after.is_empty(), "flags {flags}: {after:?}");
                assert_eq!(logic.deadline(), None, "flags {flags}: no timer left");
            }
        }
    }
}

#[test]
fn force_after_zero_custom_commands_and_failed_commands_never_escalate() {
    let start = Instant::now();
    let never = ShutdownConfig {
        force_after: Duration::ZERO,
        ..ShutdownConfig::default()
    };
    // force_after 0; a custom poweroff command (it learns of force from HVAGENT_SHUTDOWN_FORCE).
    for config in [never, fake_config()] {
        let fake = FakePower::new(true);
        let mut logic = ShutdownLogic::new(config, Box::new(fake.clone()));
        logic
            .request(1, &request(1, b""), IcVersion::new(3, 2), start)
            .unwrap();
        logic.after_send(start);
        fake.calls.borrow_mut().clear();
        *fake.exit.borrow_mut() = Some(Ok(()));
        let calls = run_timers(&mut logic, &fake, start + Duration::from_secs(86_400));
        assert!(calls.is_empty(), "{calls:?}");
    }
    // The orderly command failed: nothing is under way, so nothing is forced; a new request may run.
    let fake = FakePower::new(true);
    let mut logic = ShutdownLogic::new(ShutdownConfig::default(), Box::new(fake.clone()));
    logic
        .request(1, &request(3, b""), IcVersion::new(3, 2), start)
        .unwrap();
    logic.after_send(start);
    fake.calls.borrow_mut().clear();
    *fake.exit.borrow_mut() = Some(Err("exit status 1".to_string()));
    let calls = run_timers(&mut logic, &fake, start + Duration::from_secs(86_400));
    assert!(calls.is_empty(), "{calls:?}");
    assert_eq!(logic.status(start)[0].1, "idle");
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
