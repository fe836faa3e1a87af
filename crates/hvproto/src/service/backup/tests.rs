//! The backup service against fakes that record every step in one journal, so order is checked: hooks,
//! sync, the log hold, freezes and thaws. Nothing here touches a real filesystem.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use super::*;
use crate::service::logic::answer_of;
use crate::wire::{Message, MessageType};

type Journal = Rc<RefCell<Vec<String>>>;

#[derive(Clone, Default)]
struct World {
    journal: Journal,
    mounts: Rc<RefCell<Vec<String>>>,
    frozen: Rc<RefCell<BTreeSet<String>>>,
    fail_freeze: Rc<RefCell<Option<String>>>,
    fail_thaw: Rc<RefCell<Option<String>>>,
    hooks: Rc<RefCell<Vec<String>>>,
    failing_hook: Rc<RefCell<Option<(String, HookPhase)>>>,
}

impl World {
    fn new(mounts: &[&str], hooks: &[&str]) -> World {
        let world = World::default();
        *world.mounts.borrow_mut() = mounts.iter().map(|m| m.to_string()).collect();
        *world.hooks.borrow_mut() = hooks.iter().map(|h| h.to_string()).collect();
        world
    }

    fn note(&self, what: String) {
        self.journal.borrow_mut().push(what);
    }

    fn journal(&self) -> Vec<String> {
        self.journal.borrow().clone()
    }

    fn clear(&self) {
        self.journal.borrow_mut().clear();
    }

    fn frozen(&self) -> Vec<String> {
        self.frozen.borrow().iter().cloned().collect()
    }
}

struct FakeFreezer(World);

impl Freezer for FakeFreezer {
    fn candidates(&mut self) -> Result<Vec<String>, String> {
        Ok(self.0.mounts.borrow().clone())
    }
    fn sync(&mut self) {
        self.0.note("sync".into());
    }
    fn freeze(&mut self, mount: &str) -> Result<(), String> {
        if self.0.fail_freeze.borrow().as_deref() == Some(mount) {
            self.0.note(format!("freeze {mount} failed"));
            return Err("Operation not supported".into());
        }
        self.0.frozen.borrow_mut().insert(mount.to_string());
        self.0.note(format!("freeze {mount}"));
        Ok(())
    }
    fn thaw(&mut self, mount: &str) -> Result<bool, String> {
        if self.0.fail_thaw.borrow().as_deref() == Some(mount) {
            self.0.note(format!("thaw {mount} failed"));
            return Err("Input/output error".into());
        }
        let was = self.0.frozen.borrow_mut().remove(mount);
        if was {
            self.0.note(format!("thaw {mount}"));
        }
        Ok(was)
    }
}

struct FakeHooks(World);

impl Hooks for FakeHooks {
    fn list(&mut self) -> Vec<String> {
        self.0.hooks.borrow().clone()
    }
    fn run(&mut self, hook: &str, phase: HookPhase, timeout: Duration) -> Result<String, String> {
        assert_eq!(timeout, BackupSettings::default().hook_timeout);
        self.0.note(format!("hook {hook} {}", phase.arg()));
        match &*self.0.failing_hook.borrow() {
            Some((failing, failing_phase)) if failing == hook && *failing_phase == phase => {
                Err("exit status 1".into())
            }
            _ => Ok(format!("{hook} did {}\n", phase.arg())),
        }
    }
}

struct FakeHold(World);

impl LogHold for FakeHold {
    fn hold(&mut self) {
        self.0.note("hold logs".into());
    }
    fn release(&mut self) {
        self.0.note("release logs".into());
    }
}

fn logic(world: &World, settings: BackupSettings) -> BackupLogic {
    BackupLogic::new(
        settings,
        Box::new(FakeFreezer(world.clone())),
        Box::new(FakeHooks(world.clone())),
        Box::new(FakeHold(world.clone())),
    )
}

fn request(operation: Operation) -> Message {
    Message::request(
        MessageType::VSS,
        IcVersion::new(3, 0),
        IcVersion::new(5, 0),
        1,
        vss::request_body(operation),
    )
}

fn ask(
    logic: &mut BackupLogic,
    link: LinkId,
    operation: Operation,
    now: Instant,
) -> Result<Message, Refusal> {
    answer_of(logic, link, &request(operation), IcVersion::new(5, 0), now)
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| item.to_string()).collect()
}

#[test]
fn freeze_runs_hooks_in_name_order_then_freezes_children_first_with_the_logs_held() {
    let world = World::new(&["/", "/var", "/var/lib/db"], &["10-db", "20-app"]);
    let mut backup = logic(&world, BackupSettings::default());
    let now = Instant::now();
    let answer = ask(&mut backup, 1, Operation::FREEZE, now).unwrap();
    assert_eq!(answer.header.status, Status::OK);
    assert_eq!(answer.body, vss::request_body(Operation::FREEZE));
    assert_eq!(
        world.journal(),
        strings(&[
            "hook 10-db freeze",
            "hook 20-app freeze",
            "sync",
            "hold logs",
            "freeze /var/lib/db",
            "freeze /var",
            "freeze /",
        ])
    );
    assert_eq!(world.frozen(), strings(&["/", "/var", "/var/lib/db"]));
    world.clear();
    let answer = ask(
        &mut backup,
        1,
        Operation::THAW,
        now + Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(answer.header.status, Status::OK);
    assert_eq!(
        world.journal(),
        strings(&[
            "thaw /",
            "thaw /var",
            "thaw /var/lib/db",
            "release logs",
            "hook 20-app thaw",
            "hook 10-db thaw",
        ])
    );
    assert!(world.frozen().is_empty());
    assert_eq!(backup.deadline(), None);
}

#[test]
fn the_other_operations_are_answered_as_linux_answers_them() {
    let world = World::new(&["/"], &[]);
    let mut backup = logic(&world, BackupSettings::default());
    let now = Instant::now();
    let answer = ask(&mut backup, 1, Operation::HOT_BACKUP, now).unwrap();
    assert_eq!(answer.header.status, Status::OK);
    assert_eq!(vss::flags(&answer.body), Some(vss::NO_AUTO_RECOVERY));
    let answer = ask(&mut backup, 1, Operation::GET_DM_INFO, now).unwrap();
    assert_eq!(vss::flags(&answer.body), Some(0));
    for operation in [
        Operation::CREATE,
        Operation::DELETE,
        Operation::BACKUP_COMPLETE,
        Operation::AUTO_RECOVER,
        Operation(42),
    ] {
        let answer = ask(&mut backup, 1, operation, now).unwrap();
        assert_eq!(answer.header.status, Status::OK, "{operation}");
        assert_eq!(answer.body, vss::request_body(operation), "{operation}");
    }
    // THAW with nothing frozen is no error (Linux's daemon takes FITHAW's EINVAL as done).
    assert_eq!(
        ask(&mut backup, 1, Operation::THAW, now)
            .unwrap()
            .header
            .status,
        Status::OK
    );
    assert!(world.frozen().is_empty());
    // A body shorter than the header is refused.
    let short = Message::request(
        MessageType::VSS,
        IcVersion::new(3, 0),
        IcVersion::new(5, 0),
        2,
        vec![5, 0],
    );
    let refusal = answer_of(&mut backup, 1, &short, IcVersion::new(5, 0), now).unwrap_err();
    assert_eq!(refusal.status, Status::INVALID_ARG);
    assert!(
        world.frozen().is_empty(),
        "a refused short FREEZE froze nothing"
    );
}

#[test]
fn thaw_after_thaws_on_its_own() {
    let world = World::new(&["/data"], &["hook"]);
    let settings = BackupSettings {
        thaw_after: Duration::from_secs(5),
        ..BackupSettings::default()
    };
    let mut backup = logic(&world, settings);
    let now = Instant::now();
    ask(&mut backup, 1, Operation::FREEZE, now).unwrap();
    assert_eq!(backup.deadline(), Some(now + Duration::from_secs(5)));
    let mut out = Vec::new();
    backup.on_timer(now + Duration::from_secs(4), &mut out);
    assert_eq!(
        world.frozen(),
        strings(&["/data"]),
        "not before the deadline"
    );
    backup.on_timer(now + Duration::from_secs(5), &mut out);
    assert!(world.frozen().is_empty());
    assert!(out.is_empty());
    assert!(world
        .journal()
        .ends_with(&strings(&["thaw /data", "release logs", "hook hook thaw"])));
    assert_eq!(
        backup.last_thaw.map(|(_, trigger)| trigger),
        Some(Trigger::Deadline)
    );
}

#[test]
fn the_freezing_link_closing_thaws_and_another_link_closing_does_not() {
    let world = World::new(&["/data"], &[]);
    let mut backup = logic(&world, BackupSettings::default());
    ask(&mut backup, 7, Operation::FREEZE, Instant::now()).unwrap();
    backup.closed(8);
    assert_eq!(world.frozen(), strings(&["/data"]));
    backup.closed(7);
    assert!(world.frozen().is_empty());
    assert_eq!(
        backup.last_thaw.map(|(_, trigger)| trigger),
        Some(Trigger::LinkClosed)
    );
}

#[test]
fn a_reload_thaws() {
    let world = World::new(&["/data"], &["hook"]);
    let mut backup = logic(&world, BackupSettings::default());
    let now = Instant::now();
    ask(&mut backup, 1, Operation::FREEZE, now).unwrap();
    backup.reloading(now + Duration::from_secs(1));
    assert!(world.frozen().is_empty());
    assert!(world
        .journal()
        .ends_with(&strings(&["thaw /data", "release logs", "hook hook thaw"])));
    assert_eq!(
        backup.last_thaw.map(|(_, trigger)| trigger),
        Some(Trigger::Reload)
    );
}

#[test]
fn dropping_the_service_thaws_and_a_new_start_thaws_what_an_earlier_run_left() {
    let world = World::new(&["/", "/data"], &["hook"]);
    let mut backup = logic(&world, BackupSettings::default());
    ask(&mut backup, 1, Operation::FREEZE, Instant::now()).unwrap();
    world.clear();
    drop(backup);
    assert!(world.frozen().is_empty());
    assert_eq!(
        world.journal(),
        strings(&["thaw /", "thaw /data", "release logs", "hook hook thaw"])
    );
    // A killed agent runs no Drop: the next start finds the mounts frozen and thaws them.
    world.frozen.borrow_mut().insert("/data".to_string());
    world.clear();
    let _backup = logic(&world, BackupSettings::default());
    assert!(world.frozen().is_empty());
    assert_eq!(world.journal(), strings(&["thaw /data"]));
    // thaw_all, as `hvagent thaw` runs it, says what it thawed.
    world.frozen.borrow_mut().insert("/".to_string());
    let mut freezer = FakeFreezer(world.clone());
    assert_eq!(thaw_all(&mut freezer), Ok(strings(&["/"])));
    assert_eq!(thaw_all(&mut freezer), Ok(Vec::new()));
}

#[test]
fn a_failing_freeze_hook_aborts_and_the_hooks_that_ran_get_their_thaw_half() {
    let world = World::new(&["/data"], &["10-a", "20-b", "30-c"]);
    *world.failing_hook.borrow_mut() = Some(("20-b".to_string(), HookPhase::Freeze));
    let mut backup = logic(&world, BackupSettings::default());
    let refusal = ask(&mut backup, 1, Operation::FREEZE, Instant::now()).unwrap_err();
    assert_eq!(refusal.status, Status::FAIL);
    assert!(
        refusal.why.contains("freeze hook 20-b failed"),
        "{}",
        refusal.why
    );
    assert_eq!(
        world.journal(),
        strings(&["hook 10-a freeze", "hook 20-b freeze", "hook 10-a thaw"])
    );
    assert!(world.frozen().is_empty());
    assert_eq!(backup.deadline(), None);
}

#[test]
fn a_mount_that_will_not_freeze_thaws_the_others_and_runs_every_thaw_half() {
    let world = World::new(&["/", "/var", "/data"], &["10-a", "20-b"]);
    *world.fail_freeze.borrow_mut() = Some("/var".to_string());
    let mut backup = logic(&world, BackupSettings::default());
    let refusal = ask(&mut backup, 1, Operation::FREEZE, Instant::now()).unwrap_err();
    assert_eq!(refusal.status, Status::FAIL);
    assert!(
        refusal.why.contains("cannot freeze /var"),
        "{}",
        refusal.why
    );
    assert_eq!(
        world.journal(),
        strings(&[
            "hook 10-a freeze",
            "hook 20-b freeze",
            "sync",
            "hold logs",
            "freeze /data",
            "freeze /var failed",
            "thaw /data",
            "release logs",
            "hook 20-b thaw",
            "hook 10-a thaw",
        ])
    );
    assert!(world.frozen().is_empty());
}

#[test]
fn a_failing_thaw_hook_is_logged_and_the_other_hooks_still_thaw() {
    let world = World::new(&["/data"], &["10-a", "20-b"]);
    *world.failing_hook.borrow_mut() = Some(("20-b".to_string(), HookPhase::Thaw));
    let mut backup = logic(&world, BackupSettings::default());
    ask(&mut backup, 1, Operation::FREEZE, Instant::now()).unwrap();
    let answer = ask(&mut backup, 1, Operation::THAW, Instant::now()).unwrap();
    assert_eq!(answer.header.status, Status::OK, "the filesystems thawed");
    assert!(world
        .journal()
        .ends_with(&strings(&["hook 20-b thaw", "hook 10-a thaw"])));
}

#[test]
fn a_mount_that_will_not_thaw_keeps_the_logs_held_and_is_tried_again() {
    let world = World::new(&["/", "/data"], &["hook"]);
    let mut backup = logic(&world, BackupSettings::default());
    let now = Instant::now();
    ask(&mut backup, 1, Operation::FREEZE, now).unwrap();
    *world.fail_thaw.borrow_mut() = Some("/data".to_string());
    world.clear();
    let refusal = ask(&mut backup, 1, Operation::THAW, now).unwrap_err();
    assert_eq!(refusal.status, Status::FAIL);
    assert_eq!(world.journal(), strings(&["thaw /", "thaw /data failed"]));
    assert_eq!(backup.deadline(), Some(now + THAW_RETRY));
    *world.fail_thaw.borrow_mut() = None;
    world.clear();
    backup.on_timer(now + THAW_RETRY, &mut Vec::new());
    assert_eq!(
        world.journal(),
        strings(&["thaw /data", "release logs", "hook hook thaw"])
    );
    assert_eq!(
        backup.last_thaw.map(|(_, trigger)| trigger),
        Some(Trigger::Retry)
    );
    assert_eq!(backup.deadline(), None);
}

#[test]
fn a_second_freeze_keeps_the_first_deadline_and_mounts_limits_what_freezes() {
    let world = World::new(&["/", "/data", "/scratch"], &[]);
    let settings = BackupSettings {
        mounts: Some(strings(&["/data", "/nowhere"])),
        ..BackupSettings::default()
    };
    let mut backup = logic(&world, settings);
    let now = Instant::now();
    ask(&mut backup, 1, Operation::FREEZE, now).unwrap();
    assert_eq!(world.frozen(), strings(&["/data"]));
    let deadline = backup.deadline();
    ask(
        &mut backup,
        1,
        Operation::FREEZE,
        now + Duration::from_secs(3),
    )
    .unwrap();
    assert_eq!(backup.deadline(), deadline);
    let lines = backup.status(now + Duration::from_secs(4));
    assert_eq!(lines[0].0, "backup");
    assert!(
        lines[0]
            .1
            .starts_with("frozen for 4.0 s: /data; thaws in 56.0 s"),
        "{lines:?}"
    );
}
