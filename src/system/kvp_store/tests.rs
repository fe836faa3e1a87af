use super::*;
use hvproto::wire::kvp::{utf16, utf16_bytes};
use std::os::fd::AsRawFd;

/// An update to its end, as the logic sees it once the writer thread reports it.
fn updated(
    store: &mut FileStore,
    pool: Pool,
    edit: &mut dyn FnMut(&mut Vec<Pair>),
) -> Result<Vec<Pair>, String> {
    match store.update(pool, edit) {
        Update::Done(result) => result,
        Update::Started => {
            store.wait();
            let mut finished = store.finished();
            assert_eq!(finished.len(), 1);
            let (landed, result) = finished.remove(0);
            assert_eq!(landed, pool);
            result
        }
    }
}

fn settings(dir: &Path) -> GuestInfoSettings {
    GuestInfoSettings {
        state_dir: dir.join("state"),
        pool_dir: dir.join("pools"),
        ..GuestInfoSettings::default()
    }
}

#[test]
fn the_old_private_format_is_migrated_once_and_a_key_already_there_keeps_its_value() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let old_dir = settings.state_dir.join("kvp");
    std::fs::create_dir_all(&old_dir).unwrap();
    let old = kvp_legacy::encode(&[
        (1, utf16("Role"), utf16_bytes(&utf16("web"))),
        (4, utf16("Count"), 3u32.to_le_bytes().to_vec()),
    ]);
    std::fs::write(kvp_legacy::path(&old_dir, Pool::EXTERNAL), &old).unwrap();
    std::fs::write(kvp_legacy::path(&old_dir, Pool::GUEST), &old).unwrap();
    // The guest pool file exists already with a Role of its own.
    pool_file::update(
        &settings.pool_dir,
        Pool::GUEST,
        Wait::Forever,
        None,
        &mut |pairs| pairs.push(Pair::text("Role", "db")),
    )
    .unwrap();
    let mut store = FileStore::open(&settings);
    assert_eq!(
        store.load(Pool::EXTERNAL).unwrap(),
        [Pair::text("Role", "web"), Pair::text("Count", "3")]
    );
    assert_eq!(
        store.load(Pool::GUEST).unwrap(),
        [Pair::text("Role", "db"), Pair::text("Count", "3")]
    );
    assert!(!kvp_legacy::path(&old_dir, Pool::EXTERNAL).exists());
    // Once: a second start changes nothing, even after the pool changed.
    updated(&mut store, Pool::EXTERNAL, &mut |pairs| pairs.clear()).unwrap();
    let mut again = FileStore::open(&settings);
    assert_eq!(again.load(Pool::EXTERNAL).unwrap(), []);
}

#[test]
fn a_broken_old_file_is_left_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let old_dir = settings.state_dir.join("kvp");
    std::fs::create_dir_all(&old_dir).unwrap();
    let old = kvp_legacy::path(&old_dir, Pool::AUTO_EXTERNAL);
    std::fs::write(&old, b"not a pool").unwrap();
    let mut store = FileStore::open(&settings);
    assert_eq!(store.load(Pool::AUTO_EXTERNAL).unwrap(), []);
    assert!(old.exists());
}

#[test]
fn another_processs_change_is_noticed_by_its_stamp_and_only_then_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = FileStore::new(dir.path(), None);
    assert_eq!(store.load(Pool::GUEST).unwrap(), []);
    assert_eq!(store.reload_if_changed(Pool::GUEST).unwrap(), None);
    updated(&mut store, Pool::GUEST, &mut |pairs| {
        pairs.push(Pair::text("a", "1"))
    })
    .unwrap();
    assert_eq!(
        store.reload_if_changed(Pool::GUEST).unwrap(),
        None,
        "its own write is known"
    );
    // Another writer (hvagent kvp set, cloud-init) adds a record.
    pool_file::update(dir.path(), Pool::GUEST, Wait::Forever, None, &mut |pairs| {
        pairs.push(Pair::text("b", "2"))
    })
    .unwrap();
    assert_eq!(
        store.reload_if_changed(Pool::GUEST).unwrap(),
        Some(vec![Pair::text("a", "1"), Pair::text("b", "2")])
    );
    assert_eq!(store.reload_if_changed(Pool::GUEST).unwrap(), None);
    assert!(store.reload_if_changed(Pool(9)).is_err());
}

#[test]
fn nothing_is_written_while_filesystems_are_frozen() {
    use crate::ops::log_hold;
    let _serial = log_hold::TEST_HOLD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let mut store = FileStore::new(dir.path(), None);
    log_hold::hold();
    let refused = updated(&mut store, Pool::EXTERNAL, &mut |pairs| {
        pairs.push(Pair::text("a", "1"))
    });
    log_hold::release_into(&mut Vec::new());
    assert!(refused.unwrap_err().contains("frozen"));
    assert!(!store.path(Pool::EXTERNAL).exists());
    updated(&mut store, Pool::EXTERNAL, &mut |pairs| {
        pairs.push(Pair::text("a", "1"))
    })
    .unwrap();
    assert_eq!(store.load(Pool::EXTERNAL).unwrap(), [Pair::text("a", "1")]);
}

#[test]
fn a_write_to_an_unwritable_place_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let mut store = FileStore::new(&file, None);
    let error = updated(&mut store, Pool::EXTERNAL, &mut |_| {}).unwrap_err();
    assert!(error.contains("cannot replace"), "{error}");
}

#[test]
fn the_second_half_of_a_write_runs_on_the_writer_thread_and_wakes_the_loop_through_its_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = FileStore::new(dir.path(), None);
    assert_eq!(store.watched(), None, "no thread before the first write");
    let started = store.update(Pool::GUEST, &mut |pairs| pairs.push(Pair::text("a", "1")));
    assert_eq!(started, Update::Started);
    let Some(Watch(fd)) = store.watched() else {
        panic!("the pipe is watched once a write is under way");
    };
    let mut poll = [nix::poll::PollFd::new(
        wake_end(&store, fd),
        nix::poll::PollFlags::POLLIN,
    )];
    let ready = nix::poll::poll(&mut poll, nix::poll::PollTimeout::from(10_000u16)).unwrap();
    assert_eq!(ready, 1, "the writer wakes the loop");
    let finished = store.finished();
    assert_eq!(finished, [(Pool::GUEST, Ok(vec![Pair::text("a", "1")]))]);
    assert_eq!(
        store.reload_if_changed(Pool::GUEST).unwrap(),
        None,
        "the new file's stamp is known"
    );
    assert_eq!(store.finished(), []);
}

/// The pipe's read end, borrowed from the store that owns it.
fn wake_end(store: &FileStore, fd: i64) -> std::os::fd::BorrowedFd<'_> {
    let writer = store.writer.as_ref().unwrap();
    assert_eq!(i64::from(writer.wake.as_raw_fd()), fd);
    std::os::fd::AsFd::as_fd(&writer.wake)
}
