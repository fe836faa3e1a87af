//! The sink on a real temporary directory: what it refuses, what it leaves, and both ways of opening.

use super::*;

fn target(base: &std::path::Path, dirs: &[&str], name: &str, create_path: bool) -> Target {
    Target {
        base: base.display().to_string(),
        dirs: dirs.iter().map(|d| d.to_string()).collect(),
        name: name.to_string(),
        create_path,
        size: 5,
        mode: 0o640,
    }
}

/// Commits and waits for the worker thread to finish it, as the loop does when the pipe wakes it.
fn commit(sink: &mut SystemSink, overwrite: bool) -> Result<(), SinkError> {
    match sink.commit(overwrite)? {
        Commit::Done => Ok(()),
        Commit::Later => {
            let watch = sink.watched().expect("a later commit is watched");
            // SAFETY: the sink keeps the pipe open for as long as it reports it.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(watch.0 as i32) };
            let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
            let woken = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(10_000u16)).unwrap();
            assert_eq!(woken, 1, "the pipe wakes the loop within 10 s");
            sink.finished()
                .expect("the outcome once the pipe woke the loop")
        }
    }
}

#[test]
fn the_worker_waits_out_a_commit_when_asked() {
    let root = tempfile::tempdir().unwrap();
    let mut sink = SystemSink::new();
    sink.begin(&target(root.path(), &[], "w", false), false)
        .unwrap();
    sink.write_at(0, b"hello").unwrap();
    assert_eq!(sink.commit(false).unwrap(), Commit::Later);
    assert_eq!(sink.wait().expect("an outcome"), Ok(()));
    assert!(sink.watched().is_none() && sink.finished().is_none() && sink.wait().is_none());
    assert_eq!(std::fs::read(root.path().join("w")).unwrap(), b"hello");
}

/// The names in `dir`, sorted.
fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Both kinds of sink: the unnamed temporary file (O_TMPFILE, this machine's filesystems have it) and the
/// named one of filesystems without it; with the number of entries a copy in progress adds to its directory.
fn both_sinks() -> [(SystemSink, usize); 2] {
    [(SystemSink::new(), 0), (SystemSink::named_temp_files(), 1)]
}

#[test]
fn a_copy_appears_only_at_commit_with_its_mode_and_abort_leaves_nothing() {
    use std::os::unix::fs::PermissionsExt;
    for (mut sink, visible) in both_sinks() {
        let root = tempfile::tempdir().unwrap();
        sink.begin(&target(root.path(), &[], "f", false), false)
            .unwrap();
        sink.write_at(0, b"hello").unwrap();
        assert!(!root.path().join("f").exists());
        let during = listing(root.path());
        assert_eq!(during.len(), visible, "entries during the copy: {during:?}");
        assert!(during.iter().all(|name| name.starts_with(TEMP_PREFIX)));
        commit(&mut sink, false).unwrap();
        assert_eq!(std::fs::read(root.path().join("f")).unwrap(), b"hello");
        let mode = std::fs::metadata(root.path().join("f"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
        assert_eq!(listing(root.path()), ["f"]);

        sink.begin(&target(root.path(), &[], "g", false), false)
            .unwrap();
        sink.write_at(0, b"part").unwrap();
        sink.abort();
        assert_eq!(listing(root.path()), ["f"]);
    }
}

#[test]
fn an_existing_file_is_refused_unless_overwrite_and_then_replaced() {
    for (mut sink, _) in both_sinks() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("f"), b"old").unwrap();
        let refused = sink.begin(&target(root.path(), &[], "f", false), false);
        assert!(matches!(refused, Err(SinkError::Exists(_))), "{refused:?}");
        sink.begin(&target(root.path(), &[], "f", false), true)
            .unwrap();
        sink.write_at(0, b"new!!").unwrap();
        commit(&mut sink, true).unwrap();
        assert_eq!(std::fs::read(root.path().join("f")).unwrap(), b"new!!");
        assert_eq!(listing(root.path()), ["f"], "no temporary name left");
    }
}

#[test]
fn a_file_that_appears_during_the_copy_is_not_replaced() {
    for (mut sink, _) in both_sinks() {
        let root = tempfile::tempdir().unwrap();
        sink.begin(&target(root.path(), &[], "f", false), false)
            .unwrap();
        sink.write_at(0, b"mine!").unwrap();
        std::fs::write(root.path().join("f"), b"theirs").unwrap();
        assert!(matches!(
            commit(&mut sink, false),
            Err(SinkError::Exists(_))
        ));
        sink.abort();
        assert_eq!(std::fs::read(root.path().join("f")).unwrap(), b"theirs");
        assert_eq!(listing(root.path()), ["f"]);
    }
}

fn refuses_symlinks() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("x"), root.path().join("file-link")).unwrap();
    let mut sink = SystemSink::new();
    for (dirs, name) in [(&["link"][..], "f"), (&[][..], "file-link")] {
        let refused = sink.begin(&target(root.path(), dirs, name, true), true);
        assert!(
            matches!(refused, Err(SinkError::Symlink(_))),
            "{dirs:?} {name}: {refused:?}"
        );
    }
    assert_eq!(listing(outside.path()), Vec::<String>::new());
}

#[test]
fn symlinks_in_the_path_or_as_the_file_are_refused() {
    refuses_symlinks();
}

#[test]
fn the_o_nofollow_walk_refuses_symlinks_too() {
    NO_OPENAT2.store(1, Ordering::Relaxed);
    refuses_symlinks();
    NO_OPENAT2.store(0, Ordering::Relaxed);
}

#[test]
fn a_fifo_or_a_file_in_the_path_is_not_plain_and_a_missing_dir_needs_create_path() {
    let root = tempfile::tempdir().unwrap();
    nix::unistd::mkfifo(&root.path().join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
    std::fs::write(root.path().join("plain"), b"").unwrap();
    let mut sink = SystemSink::new();
    let fifo = sink.begin(&target(root.path(), &[], "fifo", false), true);
    assert!(matches!(fifo, Err(SinkError::NotPlain(_))), "{fifo:?}");
    let through = sink.begin(&target(root.path(), &["plain"], "f", false), false);
    assert!(
        matches!(through, Err(SinkError::NotPlain(_))),
        "{through:?}"
    );
    let missing = sink.begin(&target(root.path(), &["a", "b"], "f", false), false);
    assert!(matches!(missing, Err(SinkError::Missing(_))), "{missing:?}");
    sink.begin(&target(root.path(), &["a", "b"], "f", true), false)
        .unwrap();
    sink.write_at(0, b"deep!").unwrap();
    commit(&mut sink, false).unwrap();
    assert_eq!(std::fs::read(root.path().join("a/b/f")).unwrap(), b"deep!");
}

#[test]
fn a_file_larger_than_the_free_space_is_refused_at_begin() {
    let root = tempfile::tempdir().unwrap();
    let mut sink = SystemSink::new();
    let mut huge = target(root.path(), &[], "f", false);
    huge.size = u64::MAX;
    assert!(matches!(
        sink.begin(&huge, false),
        Err(SinkError::NoSpace(_))
    ));
    assert_eq!(listing(root.path()), Vec::<String>::new());
}
