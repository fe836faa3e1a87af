use std::io::Seek;
use std::os::unix::fs::PermissionsExt;

use super::*;

/// One record as hv_kvp_daemon writes it, built from `struct kvp_record` byte by byte: 512 bytes of key,
/// 2048 of value, NUL-padded.
fn c_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut record = vec![0u8; 512 + 2048];
    record[..key.len()].copy_from_slice(key);
    record[512..512 + value.len()].copy_from_slice(value);
    record
}

#[test]
fn a_file_in_hv_kvp_daemons_format_is_read_record_by_record() {
    let mut bytes = c_record(b"VirtualMachineName", b"web-01");
    bytes.extend(c_record("Größe".as_bytes(), "zwölf".as_bytes()));
    // A key filling its whole area has no NUL; so does a value.
    bytes.extend(c_record(&[b'k'; 512], &[b'v'; 2048]));
    // Bytes after a NUL are padding, whatever they are.
    let mut odd = c_record(b"a\0junk", b"1\0junk");
    odd[600] = 0xff;
    bytes.extend(odd);
    // A torn last record is ignored, as fread of whole records ignores it.
    bytes.extend(&c_record(b"torn", b"x")[..100]);
    let pairs = decode(&bytes);
    assert_eq!(
        pairs[..2],
        [
            Pair::text("VirtualMachineName", "web-01"),
            Pair::text("Größe", "zwölf")
        ]
    );
    assert_eq!((pairs[2].key.len(), pairs[2].value.len()), (512, 2048));
    assert_eq!(pairs[3], Pair::text("a", "1"));
    assert_eq!(pairs.len(), 4);
    assert_eq!(encode(&pairs[..2]), bytes[..2 * 2560]);
}

#[test]
fn an_update_reads_the_file_as_it_is_and_replaces_it_whole() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::GUEST;
    assert_eq!(
        read(dir.path(), pool, Wait::Forever).unwrap(),
        (vec![], None)
    );
    let (written, stamp) = update(dir.path(), pool, Wait::Forever, None, &mut |pairs| {
        pairs.push(Pair::text("a", "1"))
    })
    .unwrap();
    assert_eq!(written, [Pair::text("a", "1")]);
    // Someone else appends a record in hv_kvp_daemon's format; the next update keeps it.
    let file = path(dir.path(), pool);
    let mut bytes = fs::read(&file).unwrap();
    bytes.extend(c_record(b"other", b"2"));
    fs::write(&file, &bytes).unwrap();
    assert_ne!(Stamp::now(&file).unwrap(), Some(stamp));
    let (written, _) = update(dir.path(), pool, Wait::Forever, None, &mut |pairs| {
        pairs.push(Pair::text("b", "3"))
    })
    .unwrap();
    assert_eq!(
        written,
        [
            Pair::text("a", "1"),
            Pair::text("other", "2"),
            Pair::text("b", "3")
        ]
    );
    let (read_back, stamp) = read(dir.path(), pool, Wait::Forever).unwrap();
    assert_eq!(read_back, written);
    assert_eq!(Stamp::now(&file).unwrap(), stamp);
    assert_eq!(
        fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert!(!temp_path(dir.path(), pool).exists());
}

#[test]
fn a_reader_holding_the_old_file_sees_it_whole_and_the_name_gives_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::EXTERNAL;
    update(dir.path(), pool, Wait::Forever, None, &mut |pairs| {
        pairs.push(Pair::text("old", "1"))
    })
    .unwrap();
    // As hv_kvp_daemon does: a descriptor opened once and kept.
    let mut kept = File::open(path(dir.path(), pool)).unwrap();
    update(dir.path(), pool, Wait::Forever, None, &mut |pairs| {
        *pairs = vec![Pair::text("new", "2"), Pair::text("more", "3")]
    })
    .unwrap();
    let mut old = Vec::new();
    kept.rewind().unwrap();
    kept.read_to_end(&mut old).unwrap();
    assert_eq!(decode(&old), [Pair::text("old", "1")]);
    assert_eq!(old.len(), 2560, "the old file is never written again");
    let (now, _) = read(dir.path(), pool, Wait::Forever).unwrap();
    assert_eq!(now, [Pair::text("new", "2"), Pair::text("more", "3")]);
}

#[test]
fn a_crash_between_write_and_rename_leaves_the_previous_pool_and_the_next_write_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::AUTO_INTERNAL;
    update(dir.path(), pool, Wait::Forever, None, &mut |pairs| {
        pairs.push(Pair::text("kept", "1"))
    })
    .unwrap();
    fn crash(temp: &Path) {
        assert!(temp.exists(), "the new pool is written before the rename");
        panic!("crashed before the rename");
    }
    let crashed = std::panic::catch_unwind(|| {
        update(dir.path(), pool, Wait::Forever, Some(crash), &mut |pairs| {
            pairs.push(Pair::text("lost", "2"))
        })
    });
    assert!(crashed.is_err());
    let (pairs, _) = read(dir.path(), pool, Wait::Forever).unwrap();
    assert_eq!(pairs, [Pair::text("kept", "1")]);
    // The leftover temporary file is simply written anew.
    assert!(temp_path(dir.path(), pool).exists());
    let (pairs, _) = update(dir.path(), pool, Wait::Forever, None, &mut |pairs| {
        pairs.push(Pair::text("next", "3"))
    })
    .unwrap();
    assert_eq!(pairs, [Pair::text("kept", "1"), Pair::text("next", "3")]);
}

#[test]
fn a_replaced_file_keeps_its_mode() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::GUEST;
    update(dir.path(), pool, Wait::Forever, None, &mut |_| {}).unwrap();
    let file = path(dir.path(), pool);
    fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
    update(dir.path(), pool, Wait::Forever, None, &mut |pairs| {
        pairs.push(Pair::text("a", "1"))
    })
    .unwrap();
    assert_eq!(
        fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o640
    );
}

#[test]
fn a_writer_waits_for_a_cloud_init_style_flock_and_gives_up_after_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::GUEST;
    update(dir.path(), pool, Wait::Forever, None, &mut |_| {}).unwrap();
    // flock belongs to an open file, so another descriptor in this process stands for cloud-init.
    let held = Flock::lock(
        File::open(path(dir.path(), pool)).unwrap(),
        FlockArg::LockExclusive,
    )
    .unwrap();
    let started = Instant::now();
    let refused = update(
        dir.path(),
        pool,
        Wait::AtMost(Duration::from_millis(50)),
        None,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert_eq!(refused.kind(), io::ErrorKind::WouldBlock, "{refused}");
    drop(held);
    update(
        dir.path(),
        pool,
        Wait::AtMost(Duration::from_millis(50)),
        None,
        &mut |_| {},
    )
    .unwrap();
}

/// A python3 child holding hv_kvp_daemon's lock (an fcntl write lock on the whole file, which a process
/// never conflicts with itself over), or None when there is no python3.
fn fcntl_holder(file: &Path) -> Option<std::process::Child> {
    let script =
        "import fcntl, sys, time\nf = open(sys.argv[1], 'r+')\nfcntl.lockf(f, fcntl.LOCK_EX)\n\
                  print('locked', flush=True)\ntime.sleep(30)\n";
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(file)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    let mut line = [0u8; 7];
    child.stdout.as_mut()?.read_exact(&mut line).ok()?;
    (&line == b"locked\n").then_some(child)
}

#[test]
fn a_writer_waits_for_hv_kvp_daemons_fcntl_lock() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::EXTERNAL;
    update(dir.path(), pool, Wait::Forever, None, &mut |_| {}).unwrap();
    let Some(mut holder) = fcntl_holder(&path(dir.path(), pool)) else {
        eprintln!("SKIPPED: no python3 to hold an fcntl lock from another process");
        return;
    };
    let refused = read(dir.path(), pool, Wait::AtMost(Duration::from_millis(50))).unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::WouldBlock, "{refused}");
    holder.kill().unwrap();
    holder.wait().unwrap();
    read(dir.path(), pool, Wait::AtMost(Duration::from_millis(500))).unwrap();
}

/// Makes `dir` and, when the test runs as root, gives it to nobody (65534), so that what a writer creates in
/// it can show whose it became; returns the owner a new file there should get: nobody as root (who may
/// give files away), else the writer itself.
fn owned_dir(dir: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    fs::create_dir(dir).unwrap();
    let me = fs::metadata(dir).unwrap();
    if me.uid() != 0 {
        return (me.uid(), me.gid());
    }
    std::os::unix::fs::chown(dir, Some(65_534), Some(65_534)).unwrap();
    (65_534, 65_534)
}

#[test]
fn a_new_pool_file_gets_its_directorys_owner_when_the_writer_may_give_it() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let pools = dir.path().join("pools");
    let owner = owned_dir(&pools);
    for key in ["a", "b"] {
        update(&pools, Pool::GUEST, Wait::Forever, None, &mut |pairs| {
            pairs.push(Pair::text(key, "1"))
        })
        .unwrap();
        let meta = fs::metadata(path(&pools, Pool::GUEST)).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            owner,
            "as root the directory's owner, else the writer"
        );
    }
}

#[test]
fn a_pool_directory_made_by_its_first_writer_belongs_to_the_directory_it_is_made_in() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let owner = owned_dir(&state);
    let pools = state.join("kvp").join("pools");
    update(&pools, Pool::GUEST, Wait::Forever, None, &mut |pairs| {
        pairs.push(Pair::text("k", "v"))
    })
    .unwrap();
    for made in [state.join("kvp"), pools.clone(), path(&pools, Pool::GUEST)] {
        let meta = fs::metadata(&made).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            owner,
            "{}: as root the owner of the directory it was made in, else the writer",
            made.display()
        );
    }
}
