//! The file-copy service against a fake sink that keeps the temporary file in memory and records every
//! step, so what reaches the "disk", in which order, and what is left behind are all checked.

use std::cell::RefCell;
use std::rc::Rc;

use super::*;
use crate::service::logic::answer_of;
use crate::wire::fcopy::{emit_data, header_body, CopyFlags};
use crate::wire::{Message, MessageType};

#[derive(Default)]
struct Disk {
    journal: Vec<String>,
    /// The temporary file, while there is one.
    temp: Option<Vec<u8>>,
    /// Files put in place, by path.
    files: Vec<(String, Vec<u8>)>,
    target: Option<String>,
    /// What begin, write_at or commit answers instead of doing it.
    fail_begin: Option<SinkError>,
    fail_write: Option<SinkError>,
    fail_commit: Option<SinkError>,
    /// Commits finish later, as the agent's do: the data waits in `committing` until `finish_commit`.
    later: bool,
    committing: Option<(String, Vec<u8>)>,
    /// The outcome of a later commit that ended, for `finished`.
    ended: Option<Result<(), SinkError>>,
}

#[derive(Clone, Default)]
struct World(Rc<RefCell<Disk>>);

impl World {
    /// Ends the later commit under way: the file in place, or `error`.
    fn finish_commit(&self, error: Option<SinkError>) {
        let mut disk = self.0.borrow_mut();
        let (path, data) = disk.committing.take().expect("a commit under way");
        match error {
            None => {
                disk.files.retain(|(p, _)| *p != path);
                disk.files.push((path, data));
                disk.ended = Some(Ok(()));
            }
            Some(error) => disk.ended = Some(Err(error)),
        }
    }
    fn journal(&self) -> Vec<String> {
        self.0.borrow().journal.clone()
    }
    fn temp(&self) -> Option<Vec<u8>> {
        self.0.borrow().temp.clone()
    }
    fn file(&self, path: &str) -> Option<Vec<u8>> {
        let disk = self.0.borrow();
        disk.files
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, data)| data.clone())
    }
}

struct FakeSink(World);

impl CopySink for FakeSink {
    fn begin(&mut self, target: &Target, overwrite: bool) -> Result<(), SinkError> {
        let mut disk = self.0 .0.borrow_mut();
        disk.journal.push(format!(
            "begin {} dirs={:?} create={} overwrite={overwrite} mode={:o}",
            target.path(),
            target.dirs,
            target.create_path,
            target.mode
        ));
        if let Some(error) = disk.fail_begin.take() {
            return Err(error);
        }
        disk.temp = Some(Vec::new());
        disk.target = Some(target.path());
        Ok(())
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), SinkError> {
        let mut disk = self.0 .0.borrow_mut();
        disk.journal.push(format!("write {offset} {}", data.len()));
        if let Some(error) = disk.fail_write.take() {
            return Err(error);
        }
        let temp = disk.temp.as_mut().expect("a write has a temporary file");
        assert_eq!(temp.len() as u64, offset, "writes arrive in order");
        temp.extend_from_slice(data);
        Ok(())
    }
    fn commit(&mut self, overwrite: bool) -> Result<Commit, SinkError> {
        let mut disk = self.0 .0.borrow_mut();
        disk.journal.push(format!("commit overwrite={overwrite}"));
        if let Some(error) = disk.fail_commit.take() {
            disk.temp = None;
            return Err(error);
        }
        let data = disk.temp.take().expect("a commit has a temporary file");
        let path = disk.target.take().unwrap();
        if disk.later {
            disk.committing = Some((path, data));
            return Ok(Commit::Later);
        }
        disk.files.retain(|(p, _)| *p != path);
        disk.files.push((path, data));
        Ok(Commit::Done)
    }
    fn watched(&self) -> Option<Watch> {
        self.0 .0.borrow().committing.as_ref().map(|_| Watch(7))
    }
    fn finished(&mut self) -> Option<Result<(), SinkError>> {
        self.0 .0.borrow_mut().ended.take()
    }
    fn wait(&mut self) -> Option<Result<(), SinkError>> {
        let mut disk = self.0 .0.borrow_mut();
        disk.ended.take().or_else(|| {
            let (path, data) = disk.committing.take()?;
            disk.files.push((path, data));
            Some(Ok(()))
        })
    }
    fn abort(&mut self) {
        let mut disk = self.0 .0.borrow_mut();
        if disk.temp.take().is_some() {
            disk.journal.push("abort".to_string());
        }
    }
}

fn settings() -> FileCopySettings {
    FileCopySettings {
        allowed_dirs: vec!["/srv/in".to_string()],
        max_file_size: 1 << 20,
        ..FileCopySettings::default()
    }
}

fn logic(world: &World) -> FileCopyLogic {
    FileCopyLogic::new(settings(), Box::new(FakeSink(world.clone())))
}

const VERSION: IcVersion = IcVersion::new(1, 1);

fn request(body: Vec<u8>) -> Message {
    Message::request(MessageType::FCOPY, IcVersion::new(3, 0), VERSION, 1, body)
}

fn start_body(dir: &str, name: &str, flags: u32, size: u64) -> Vec<u8> {
    Start {
        file_name: name.to_string(),
        path_name: dir.to_string(),
        flags: CopyFlags(flags),
        file_size: size,
    }
    .to_body()
    .unwrap()
}

fn data_body(offset: u64, data: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    emit_data(offset, data, &mut body).unwrap();
    body
}

/// The status `logic` answers `body` with (HV_S_OK, or the refusal's).
fn ask(logic: &mut FileCopyLogic, link: LinkId, body: Vec<u8>, now: Instant) -> Status {
    match answer_of(logic, link, &request(body), VERSION, now) {
        Ok(answer) => answer.header.status,
        Err(refusal) => refusal.status,
    }
}

/// Sends `data` as WRITE_TO_FILE fragments from offset 0.
fn send_all(logic: &mut FileCopyLogic, data: &[u8], now: Instant) {
    for (index, chunk) in data.chunks(fcopy::DATA_FRAGMENT).enumerate() {
        let offset = (index * fcopy::DATA_FRAGMENT) as u64;
        assert_eq!(ask(logic, 1, data_body(offset, chunk), now), Status::OK);
    }
}

fn bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn a_whole_copy_lands_in_place_only_at_complete_and_the_answer_echoes_the_body() {
    let world = World::default();
    let mut logic = logic(&world);
    let now = Instant::now();
    let data = bytes(FLUSH_SLICE + 3 * fcopy::DATA_FRAGMENT + 17);
    let start = start_body("/srv/in/sub", "f.bin", 0, data.len() as u64);
    let answer = answer_of(&mut logic, 1, &request(start.clone()), VERSION, now).unwrap();
    assert_eq!((answer.header.status, answer.body), (Status::OK, start));
    send_all(&mut logic, &data, now);
    assert_eq!(
        world.file("/srv/in/sub/f.bin"),
        None,
        "nothing in place before COMPLETE"
    );
    let complete = header_body(Operation::COMPLETE_FCOPY);
    assert_eq!(ask(&mut logic, 1, complete, now), Status::OK);
    assert_eq!(world.file("/srv/in/sub/f.bin"), Some(data.clone()));
    let journal = world.journal();
    assert_eq!(
        journal[0],
        "begin /srv/in/sub/f.bin dirs=[\"sub\"] create=false overwrite=false mode=640"
    );
    // Gathered into slices: one full one, the rest at COMPLETE.
    let writes: Vec<&String> = journal
        .iter()
        .filter(|line| line.starts_with("write"))
        .collect();
    assert_eq!(writes.len(), 2, "{journal:?}");
    assert_eq!(journal.last().unwrap(), "commit overwrite=false");
    assert!(logic
        .status(now)
        .iter()
        .any(|(label, value)| *label == "copies" && value == "1"));
}

#[test]
fn an_empty_file_is_a_start_and_a_complete() {
    let world = World::default();
    let mut logic = logic(&world);
    let now = Instant::now();
    assert_eq!(
        ask(&mut logic, 1, start_body("/srv/in", "empty", 0, 0), now),
        Status::OK
    );
    assert_eq!(
        ask(&mut logic, 1, header_body(Operation::COMPLETE_FCOPY), now),
        Status::OK
    );
    assert_eq!(world.file("/srv/in/empty"), Some(Vec::new()));
}

#[test]
fn names_outside_the_allowed_dirs_are_refused_each_with_its_own_status_before_anything_is_opened() {
    let world = World::default();
    let mut logic = logic(&world);
    let now = Instant::now();
    let cases = [
        ("/srv/in/../etc", "passwd", status::INVALID_NAME),
        ("/srv/in", "..", status::INVALID_NAME),
        ("/srv/in", "a/b", status::INVALID_NAME),
        ("/etc", "passwd", status::ACCESS_DENIED),
        ("srv/in", "f", status::ACCESS_DENIED),
    ];
    for (dir, name, expected) in cases {
        assert_eq!(
            ask(&mut logic, 1, start_body(dir, name, 0, 1), now),
            expected,
            "{dir} {name}"
        );
    }
    assert_eq!(world.journal(), Vec::<String>::new());
}

#[test]
fn a_file_over_max_file_size_is_refused_at_start() {
    let world = World::default();
    let mut logic = logic(&world);
    let body = start_body("/srv/in", "big", 0, (1 << 20) + 1);
    assert_eq!(
        ask(&mut logic, 1, body, Instant::now()),
        status::FILE_TOO_LARGE
    );
    assert!(world.journal().is_empty());
}

#[test]
fn what_the_sink_finds_on_disk_picks_the_status() {
    let cases = [
        (SinkError::Symlink("s".into()), status::STOPPED_ON_SYMLINK),
        (SinkError::NotPlain("d".into()), status::BAD_FILE_TYPE),
        (SinkError::Missing("m".into()), status::PATH_NOT_FOUND),
        (SinkError::Exists("e".into()), status::ALREADY_EXISTS),
        (SinkError::NoSpace("n".into()), status::DISK_FULL),
        (SinkError::Failed("f".into()), Status::FAIL),
    ];
    for (error, expected) in cases {
        let world = World::default();
        world.0.borrow_mut().fail_begin = Some(error);
        let mut logic = logic(&world);
        let now = Instant::now();
        assert_eq!(
            ask(&mut logic, 1, start_body("/srv/in", "f", 0, 5), now),
            expected
        );
        // No copy began: a write finds none.
        assert_eq!(
            ask(&mut logic, 1, data_body(0, b"hello"), now),
            Status::FAIL
        );
    }
}

#[test]
fn flags_reach_the_sink_and_overwrite_reaches_the_commit() {
    let world = World::default();
    let mut logic = logic(&world);
    let now = Instant::now();
    let flags = CopyFlags::OVER_WRITE | CopyFlags::CREATE_PATH;
    assert_eq!(
        ask(&mut logic, 1, start_body("/srv/in/a/b", "f", flags, 2), now),
        Status::OK
    );
    send_all(&mut logic, b"hi", now);
    assert_eq!(
        ask(&mut logic, 1, header_body(Operation::COMPLETE_FCOPY), now),
        Status::OK
    );
    let journal = world.journal();
    assert!(
        journal[0].contains("create=true overwrite=true"),
        "{journal:?}"
    );
    assert_eq!(journal.last().unwrap(), "commit overwrite=true");
}

#[test]
fn a_commit_refused_because_the_file_appeared_answers_already_exists_and_leaves_nothing() {
    let world = World::default();
    world.0.borrow_mut().fail_commit = Some(SinkError::Exists("appeared".into()));
    let mut logic = logic(&world);
    let now = Instant::now();
    assert_eq!(
        ask(&mut logic, 1, start_body("/srv/in", "f", 0, 2), now),
        Status::OK
    );
    send_all(&mut logic, b"hi", now);
    assert_eq!(
        ask(&mut logic, 1, header_body(Operation::COMPLETE_FCOPY), now),
        status::ALREADY_EXISTS
    );
    // A commit that fails removes its temporary file (the sink's part of the contract).
    assert_eq!(world.temp(), None);
    assert_eq!(world.file("/srv/in/f"), None);
}

#[test]
fn a_gap_or_an_overlap_in_the_offsets_ends_the_copy_and_removes_the_file() {
    for offset in [fcopy::DATA_FRAGMENT as u64 * 2, 0] {
        let world = World::default();
        let mut logic = logic(&world);
        let now = Instant::now();
        assert_eq!(
            ask(&mut logic, 1, start_body("/srv/in", "f", 0, 100_000), now),
            Status::OK
        );
        send_all(&mut logic, &bytes(fcopy::DATA_FRAGMENT), now);
        assert_eq!(
            ask(&mut logic, 1, data_body(offset, b"x"), now),
            Status::INVALID_ARG
        );
        assert_eq!(world.temp(), None, "offset {offset}");
        assert_eq!(
            ask(&mut logic, 1, header_body(Operation::COMPLETE_FCOPY), now),
            Status::FAIL
        );
        assert!(world.0.borrow().files.is_empty());
    }
}

#[test]
fn a_write_past_the_announced_size_and_a_short_complete_are_refused() {
    let world = World::default();
    let mut logic = logic(&world);
    let now = Instant::now();
    assert_eq!(
        ask(&mut logic, 1, start_body("/srv/in", "f", 0, 3), now),
        Status::OK
    );
    assert_eq!(
        ask(&mut logic, 1, data_body(0, b"four"), now),
        Status::INVALID_ARG
    );
    assert_eq!(world.temp(), None);
    assert_eq!(
        ask(&mut logic, 1, start_body("/srv/in", "f", 0, 3), now),
        Status::OK
    );
    send_all(&mut logic, b"ab", now);
    assert_eq!(
        ask(&mut logic, 1, header_body(Operation::COMPLETE_FCOPY), now),
        Status::INVALID_ARG
    );
    assert_eq!(world.temp(), None);
    assert!(world.0.borrow().files.is_empty());
}

#[test]
fn cancel_removes_the_temporary_file_and_is_answered_ok() {
    let world = World::default();
    let mut logic = logic(&world);
    let now = Instant::now();
    assert_eq!(
        ask(&mut logic, 1, start_body("/srv/in", "f", 0, 10), now),
        Status::OK
    );
    send_all(&mut logic, b"hello", now);
    assert_eq!(
        ask(&mut logic, 1, header_body(Operation::CANCEL_FCOPY), now),
        Status::OK
    );
    assert_eq!(world.temp(), None);
    assert_eq!(world.journal().last().unwrap(), "abort");
    // A CANCEL with nothing in progress is answered OK too, as Linux's daemon does.
    assert_eq!(
        ask(&mut logic, 1, header_body(Operation::CANCEL_FCOPY), now),
        Status::OK
    );
}

#[test]
fn the_link_closing_and_the_logic_dropping_remove_the_temporary_file() {
    let world = World::default();
    let mut logic = logic(&world);
    let now = Instant::now();
    assert_eq!(
        ask(&mut logic, 1, start_body("/srv/in", "f", 0, 10), now),
        Status::OK
    );
    logic.closed(2);
    assert!(world.temp().is_some(), "another link's close leaves it");
    logic.closed(1);
    assert_eq!(world.temp(), None);
    assert_eq!(
        ask(&mut logic, 1, start_body("/srv/in", "g", 0, 10), now),
        Status::OK
    );
    drop(logic);
    assert_eq!(world.temp(), None);
}

#[test]
fn a_copy_with_no_message_within_copy_timeout_is_removed_and_pending_data_is_flushed_first() {
    let world = World::default();
    let mut logic = logic(&world);
    let now = Instant::now();
    assert_eq!(logic.deadline(), None, "an idle service sets no timer");
    assert_eq!(
        ask(&mut logic, 1, start_body("/srv/in", "f", 0, 10), now),
        Status::OK
    );
    assert_eq!(logic.deadline(), Some(now + DEFAULT_COPY_TIMEOUT));
    send_all(&mut logic, b"hello", now);
    assert_eq!(logic.deadline(), Some(now + FLUSH_DELAY));
    logic.on_timer(now + FLUSH_DELAY, &mut Vec::new());
    assert_eq!(world.temp(), Some(b"hello".to_vec()));
    assert_eq!(logic.deadline(), Some(now + DEFAULT_COPY_TIMEOUT));
    logic.on_timer(
        now + DEFAULT_COPY_TIMEOUT - Duration::from_millis(1),
        &mut Vec::new(),
    );
    assert!(world.temp().is_some());
    logic.on_timer(now + DEFAULT_COPY_TIMEOUT, &mut Vec::new());
    assert_eq!(world.temp(), None);
    assert_eq!(logic.deadline(), None);
}

#[test]
fn a_failed_write_answers_disk_full_and_removes_the_file() {
    let world = World::default();
    world.0.borrow_mut().fail_write = Some(SinkError::NoSpace("ENOSPC".into()));
    let mut logic = logic(&world);
    let now = Instant::now();
    let data = bytes(FLUSH_SLICE);
    assert_eq!(
        ask(
            &mut logic,
            1,
            start_body("/srv/in", "f", 0, data.len() as u64),
            now
        ),
        Status::OK
    );
    let mut statuses = Vec::new();
    for (index, chunk) in data.chunks(fcopy::DATA_FRAGMENT).enumerate() {
        let offset = (index * fcopy::DATA_FRAGMENT) as u64;
        statuses.push(ask(&mut logic, 1, data_body(offset, chunk), now));
    }
    assert_eq!(statuses.last(), Some(&status::DISK_FULL));
    assert_eq!(world.temp(), None);
}

#[test]
fn another_links_start_is_busy_and_the_same_links_new_start_replaces_its_copy() {
    let world = World::default();
    let mut logic = logic(&world);
    let now = Instant::now();
    assert_eq!(
        ask(&mut logic, 1, start_body("/srv/in", "f", 0, 10), now),
        Status::OK
    );
    assert_eq!(
        ask(&mut logic, 2, start_body("/srv/in", "g", 0, 10), now),
        status::BUSY
    );
    assert_eq!(ask(&mut logic, 2, data_body(0, b"x"), now), Status::FAIL);
    assert_eq!(
        ask(&mut logic, 1, start_body("/srv/in", "h", 0, 1), now),
        Status::OK
    );
    assert!(world.journal().contains(&"abort".to_string()));
    send_all(&mut logic, b"z", now);
    assert_eq!(
        ask(&mut logic, 1, header_body(Operation::COMPLETE_FCOPY), now),
        Status::OK
    );
    assert_eq!(world.file("/srv/in/h"), Some(b"z".to_vec()));
}

#[test]
fn bad_bodies_and_unknown_operations_are_refused_without_panicking() {
    let world = World::default();
    let mut logic = logic(&world);
    let now = Instant::now();
    assert_eq!(ask(&mut logic, 1, vec![0; 3], now), Status::INVALID_ARG);
    assert_eq!(
        ask(&mut logic, 1, header_body(Operation::START_FILE_COPY), now),
        Status::INVALID_ARG
    );
    assert_eq!(
        ask(&mut logic, 1, header_body(Operation(42)), now),
        Status::FAIL
    );
    assert_eq!(
        ask(&mut logic, 1, header_body(Operation::COMPLETE_FCOPY), now),
        Status::FAIL
    );
}

#[test]
fn the_older_unpadded_write_layout_is_accepted() {
    let world = World::default();
    let mut logic = logic(&world);
    let now = Instant::now();
    assert_eq!(
        ask(&mut logic, 1, start_body("/srv/in", "old", 0, 3), now),
        Status::OK
    );
    let mut body = header_body(Operation::WRITE_TO_FILE);
    body.extend_from_slice(&0u64.to_le_bytes());
    body.extend_from_slice(&3u32.to_le_bytes());
    body.extend_from_slice(b"abc");
    body.resize(fcopy::DATA_LEN_UNPADDED, 0);
    assert_eq!(ask(&mut logic, 1, body, now), Status::OK);
    assert_eq!(
        ask(&mut logic, 1, header_body(Operation::COMPLETE_FCOPY), now),
        Status::OK
    );
    assert_eq!(world.file("/srv/in/old"), Some(b"abc".to_vec()));
}

/// A logic whose sink finishes commits later, with a 5-byte copy of "hello" to /srv/in/f received whole.
fn received_whole(world: &World, now: Instant) -> FileCopyLogic {
    world.0.borrow_mut().later = true;
    let mut logic = logic(world);
    assert_eq!(
        ask(&mut logic, 1, start_body("/srv/in", "f", 0, 5), now),
        Status::OK
    );
    assert_eq!(ask(&mut logic, 1, data_body(0, b"hello"), now), Status::OK);
    logic
}

/// COMPLETE asked on link 1: whether it was answered at once.
fn complete_now(logic: &mut FileCopyLogic, now: Instant) -> bool {
    let request = request(header_body(Operation::COMPLETE_FCOPY));
    let mut out = Vec::new();
    let mut reply = ReplyWriter::begin(&request, &mut out);
    let status = logic
        .request(1, &request.view(), VERSION, now, &mut reply)
        .unwrap();
    assert_eq!(status, Status::OK);
    !reply.is_deferred()
}

#[test]
fn a_commit_finished_off_the_loop_answers_complete_only_once_the_file_is_in_place() {
    let world = World::default();
    let now = Instant::now();
    let mut logic = received_whole(&world, now);
    assert!(
        !complete_now(&mut logic, now),
        "COMPLETE waits for the commit"
    );
    assert!(logic.watched().is_some(), "the loop watches the commit");
    let mut out = Vec::new();
    logic.watch_ready(now);
    logic.on_timer(now, &mut out);
    assert!(out.is_empty(), "nothing answered while the commit runs");
    assert_eq!(
        ask(&mut logic, 2, start_body("/srv/in", "g", 0, 1), now),
        status::BUSY,
        "no other copy starts meanwhile"
    );
    world.finish_commit(None);
    logic.watch_ready(now);
    assert_eq!(logic.deadline(), Some(now), "the answer is due at once");
    logic.on_timer(now, &mut out);
    assert_eq!(out.len(), 1);
    let (link, answer) = &out[0];
    assert_eq!(*link, 1);
    assert_eq!(answer.header.status, Status::OK);
    assert_eq!(answer.body, header_body(Operation::COMPLETE_FCOPY));
    assert_eq!(world.file("/srv/in/f"), Some(b"hello".to_vec()));
    assert!(logic.watched().is_none());
    assert!(logic
        .status(now)
        .iter()
        .any(|(label, value)| *label == "copies" && value == "1"));
}

#[test]
fn a_commit_that_fails_off_the_loop_answers_complete_with_its_status() {
    let world = World::default();
    let now = Instant::now();
    let mut logic = received_whole(&world, now);
    assert!(!complete_now(&mut logic, now));
    world.finish_commit(Some(SinkError::Exists("/srv/in/f appeared".to_string())));
    logic.watch_ready(now);
    let mut out = Vec::new();
    logic.on_timer(now, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.header.status, status::ALREADY_EXISTS);
    assert_eq!(world.file("/srv/in/f"), None);
    // The service is free again.
    assert_eq!(
        ask(&mut logic, 1, start_body("/srv/in", "g", 0, 0), now),
        Status::OK
    );
}

#[test]
fn a_link_gone_during_the_commit_still_gets_its_file_but_no_answer() {
    let world = World::default();
    let now = Instant::now();
    let mut logic = received_whole(&world, now);
    assert!(!complete_now(&mut logic, now));
    logic.closed(1);
    world.finish_commit(None);
    logic.watch_ready(now);
    let mut out = Vec::new();
    logic.on_timer(now, &mut out);
    assert!(out.is_empty());
    assert_eq!(world.file("/srv/in/f"), Some(b"hello".to_vec()));
}

#[test]
fn a_stopping_agent_waits_for_the_commit_and_sends_its_answer() {
    let world = World::default();
    let now = Instant::now();
    let mut logic = received_whole(&world, now);
    assert!(!complete_now(&mut logic, now));
    let mut out = Vec::new();
    logic.finishing(now, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.header.status, Status::OK);
    assert_eq!(world.file("/srv/in/f"), Some(b"hello".to_vec()));
}
