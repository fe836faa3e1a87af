//! hv_kvp_daemon's pool files (`tools/hv/hv_kvp_daemon.c` in Linux; docs/PROTOCOL.md §9.6), read and
//! written by the agent and by `hvagent kvp` alike.
//!
//! **Format.** `DIR/.kvp_pool_N` for pool N (0 to 4) is a sequence of records with no header,
//! `struct kvp_record { char key[512]; char value[2048]; }`: a UTF-8 key and value, each NUL-padded to its
//! area. A short last record (a torn write by some other program) is ignored, as the daemon's `fread` of
//! whole records ignores it; a key or value that fills its area has no NUL and is all of it.
//!
//! **Locks.** hv_kvp_daemon takes an fcntl write lock on the whole file (`F_SETLKW`, `l_len` 0) around each
//! read and write; cloud-init, which appends its reports to `.kvp_pool_1`, takes `flock(LOCK_EX)`. Linux
//! keeps the two kinds apart, so every access here takes both: the fcntl lock, then flock; shared for a
//! read, exclusive for a write.
//!
//! **Crash-safe writes.** A write never changes the file in place: the new pool is written to
//! `.kvp_pool_N.tmp` beside it, fsynced, renamed over the file and the directory fsynced, all while both
//! locks are held on the file being replaced. So a reader sees the old pool or the new one, never half a
//! record, and a crash at any point leaves one of the two whole (a leftover temporary file is overwritten by
//! the next write). The rename gives the pool a new inode, so whoever takes the locks checks, once they are
//! granted, that the file it locked is still the one the name points to, and starts again if not: two
//! writers following this discipline never lose each other's changes. A process that keeps a descriptor of
//! the old file (hv_kvp_daemon keeps one per pool from its start, for its locks) still reads the old
//! pool, whole, through it, and its locks no longer exclude anyone: hence the warning when it runs on the
//! same directory. A writer that appends to the file by its name after waiting for the lock (cloud-init)
//! can append to the replaced file if the agent replaced it while it waited: that record is lost. The agent
//! writes pool 1 only for a host's Set or Delete in it, which Hyper-V's host does not send.
//!
//! The new file keeps the mode and owner of the one it replaces; a new pool file is mode 0644, as
//! hv_kvp_daemon creates them, owned by the directory's owner when the writer may give it away (root), in a
//! directory made mode 0755.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hvproto::service::guestinfo::pair::{FILE_KEY_AREA, FILE_RECORD_LEN, FILE_VALUE_AREA};
use hvproto::service::guestinfo::Pair;
use hvproto::wire::kvp::Pool;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, Flock, FlockArg};

/// The largest pool file read: 64 MiB, 26,214 records. A bigger one is refused rather than read into memory.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// The file of `pool` in `dir`, as hv_kvp_daemon names it.
pub fn path(dir: &Path, pool: Pool) -> PathBuf {
    dir.join(format!(".kvp_pool_{}", pool.0))
}

fn temp_path(dir: &Path, pool: Pool) -> PathBuf {
    dir.join(format!(".kvp_pool_{}.tmp", pool.0))
}

/// The records of a pool file's bytes.
pub fn decode(bytes: &[u8]) -> Vec<Pair> {
    bytes
        .chunks_exact(FILE_RECORD_LEN)
        .map(|record| {
            let (key, value) = record.split_at(FILE_KEY_AREA);
            Pair {
                key: until_nul(key).to_vec(),
                value: until_nul(value).to_vec(),
            }
        })
        .collect()
}

fn until_nul(area: &[u8]) -> &[u8] {
    let end = area.iter().position(|&b| b == 0).unwrap_or(area.len());
    &area[..end]
}

/// The bytes of a pool file holding `pairs` (a key or value longer than its area is cut to it; the logic
/// and the CLI never store one).
pub fn encode(pairs: &[Pair]) -> Vec<u8> {
    let mut out = Vec::with_capacity(pairs.len() * FILE_RECORD_LEN);
    for pair in pairs {
        for (bytes, area) in [(&pair.key, FILE_KEY_AREA), (&pair.value, FILE_VALUE_AREA)] {
            let take = bytes.len().min(area);
            out.extend_from_slice(&bytes[..take]);
            out.resize(out.len() + area - take, 0);
        }
    }
    out
}

/// How long to wait for another process's lock.
#[derive(Clone, Copy, Debug)]
pub enum Wait {
    /// As long as it takes (the CLI, like hv_kvp_daemon).
    Forever,
    /// At most this long, then fail (the agent: its poll loop must not hang on a stuck writer).
    AtMost(Duration),
}

/// What identifies one version of a pool file: a write by anyone changes at least one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }

    /// The stamp of the file at `path` now; None when there is none.
    pub fn now(path: &Path) -> io::Result<Option<Stamp>> {
        match fs::metadata(path) {
            Ok(meta) => Ok(Some(Stamp::of(&meta))),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }
}

/// A pool file with both locks held; they go when it is dropped.
struct Locked {
    file: Flock<File>,
}

/// Takes the fcntl record lock on the whole of `file`, waiting as `wait` says.
fn record_lock(file: &File, exclusive: bool, wait: Wait) -> io::Result<()> {
    let lock = libc::flock {
        l_type: if exclusive {
            libc::F_WRLCK
        } else {
            libc::F_RDLCK
        } as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    let fd = file.as_raw_fd();
    match wait {
        Wait::Forever => loop {
            match fcntl(fd, FcntlArg::F_SETLKW(&lock)) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(error) => return Err(error.into()),
            }
        },
        Wait::AtMost(limit) => {
            let until = Instant::now() + limit;
            let mut pause = Duration::from_micros(200);
            loop {
                match fcntl(fd, FcntlArg::F_SETLK(&lock)) {
                    Ok(_) => return Ok(()),
                    Err(Errno::EACCES | Errno::EAGAIN | Errno::EINTR) if Instant::now() < until => {
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(20));
                    }
                    Err(Errno::EACCES | Errno::EAGAIN) => {
                        return Err(io::Error::new(
                            io::ErrorKind::WouldBlock,
                            format!("another process held its lock for {} ms", limit.as_millis()),
                        ))
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        }
    }
}

/// flock(2) on the whole of `file`, waiting as `wait` says.
fn flock(file: File, exclusive: bool, wait: Wait) -> io::Result<Flock<File>> {
    let (blocking, nonblocking) = if exclusive {
        (FlockArg::LockExclusive, FlockArg::LockExclusiveNonblock)
    } else {
        (FlockArg::LockShared, FlockArg::LockSharedNonblock)
    };
    let mut file = file;
    let until = match wait {
        Wait::Forever => None,
        Wait::AtMost(limit) => Some(Instant::now() + limit),
    };
    loop {
        let arg = if until.is_some() {
            nonblocking
        } else {
            blocking
        };
        match Flock::lock(file, arg) {
            Ok(locked) => return Ok(locked),
            Err((back, Errno::EINTR)) => file = back,
            Err((back, Errno::EWOULDBLOCK)) if until.is_some_and(|at| Instant::now() < at) => {
                std::thread::sleep(Duration::from_millis(1));
                file = back;
            }
            Err((_, error)) => return Err(error.into()),
        }
    }
}

/// Opens the pool file at `path` read-write, creating it when there is none. A file it creates is given
/// the owner of its directory (when the caller may: root), so that `hvagent kvp set` run by root on the
/// agent's directory does not leave a pool the agent's own user cannot write.
fn open_for_writing(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).mode(0o644);
    match options.clone().create_new(true).open(path) {
        Ok(file) => {
            if let Some(dir) = path.parent().and_then(|dir| fs::metadata(dir).ok()) {
                let own = file.metadata()?;
                if (own.uid(), own.gid()) != (dir.uid(), dir.gid()) {
                    let _ = std::os::unix::fs::fchown(&file, Some(dir.uid()), Some(dir.gid()));
                }
            }
            Ok(file)
        }
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => options.open(path),
        Err(error) => Err(error),
    }
}

/// Opens and locks the pool file at `path`, again and again until the file locked is the one the name
/// points to (a writer may have renamed a new one over it while this waited). A read of a file that does
/// not exist gives None; a write creates it.
fn lock(path: &Path, exclusive: bool, wait: Wait) -> io::Result<Option<Locked>> {
    loop {
        let opened = if exclusive {
            open_for_writing(path)
        } else {
            File::open(path)
        };
        let file = match opened {
            Ok(file) => file,
            Err(error) if !exclusive && error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        record_lock(&file, exclusive, wait)?;
        let file = flock(file, exclusive, wait)?;
        let held = file.metadata()?;
        match fs::metadata(path) {
            Ok(named) if named.dev() == held.dev() && named.ino() == held.ino() => {
                return Ok(Some(Locked { file }))
            }
            // Replaced or removed while this waited: lock whatever is there now.
            Ok(_) => continue,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        }
    }
}

/// Reads the whole locked file.
fn read_locked(locked: &mut Locked) -> io::Result<(Vec<Pair>, Stamp)> {
    let meta = locked.file.metadata()?;
    if meta.size() > MAX_FILE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "it is {} bytes, more than the {MAX_FILE_BYTES} read",
                meta.size()
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.size() as usize);
    (&*locked.file).read_to_end(&mut bytes)?;
    Ok((decode(&bytes), Stamp::of(&meta)))
}

/// The pairs of `pool` in `dir` and the stamp of the file they were read from (empty and None when there is
/// no file), read under a shared lock.
pub fn read(dir: &Path, pool: Pool, wait: Wait) -> io::Result<(Vec<Pair>, Option<Stamp>)> {
    match lock(&path(dir, pool), false, wait)? {
        None => Ok((Vec::new(), None)),
        Some(mut locked) => {
            let (pairs, stamp) = read_locked(&mut locked)?;
            Ok((pairs, Some(stamp)))
        }
    }
}

/// A test's way to stop between the two halves of a write, as a crash there would.
pub type FaultHook = fn(&Path);

/// Replaces `pool` in `dir` by what `edit` makes of it, under the exclusive locks: reads the file as it is
/// now, writes the result to the temporary file, fsyncs it, renames it over the pool and fsyncs the
/// directory. `before_rename`, when given, runs between the fsync and the rename. Returns the pairs written
/// and the new file's stamp.
pub fn update(
    dir: &Path,
    pool: Pool,
    wait: Wait,
    before_rename: Option<FaultHook>,
    edit: &mut dyn FnMut(&mut Vec<Pair>),
) -> io::Result<(Vec<Pair>, Stamp)> {
    prepare(dir, pool, wait, edit)?.commit(before_rename)
}

/// The first half of an [`update`]: the new pool written (not yet synced) to the temporary file, with the
/// locks on the file it replaces still held. [`Prepared::commit`] finishes it, on any thread; until then
/// this process must open no other descriptor of that pool file, since closing one would drop its fcntl
/// lock (POSIX record locks belong to the process).
pub struct Prepared {
    locked: Locked,
    temp: File,
    temp_path: PathBuf,
    target: PathBuf,
    dir: PathBuf,
    /// The pairs written.
    pub pairs: Vec<Pair>,
}

/// Creates `dir` and the directories missing above it (mode 0755), each given the owner of the directory
/// it is made in when the caller may (root), as a pool file is: `hvagent kvp set` run by root before the
/// agent ever wrote a pool must not leave a directory the agent's own user cannot write in.
fn create_dirs_like_parent(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut existing = dir;
    while !existing.exists() {
        missing.push(existing);
        existing = match existing.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
    }
    let owner = fs::metadata(existing)?;
    for made in missing.into_iter().rev() {
        match fs::DirBuilder::new().mode(0o755).create(made) {
            Ok(()) => {}
            // Another writer made it first: theirs stands.
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(error),
        }
        let own = fs::metadata(made)?;
        if (own.uid(), own.gid()) != (owner.uid(), owner.gid()) {
            let _ = std::os::unix::fs::chown(made, Some(owner.uid()), Some(owner.gid()));
        }
    }
    Ok(())
}

/// Takes the locks, reads the pool, applies `edit` and writes the result to the temporary file.
pub fn prepare(
    dir: &Path,
    pool: Pool,
    wait: Wait,
    edit: &mut dyn FnMut(&mut Vec<Pair>),
) -> io::Result<Prepared> {
    if !dir.exists() {
        create_dirs_like_parent(dir)?;
    }
    let target = path(dir, pool);
    let Some(mut locked) = lock(&target, true, wait)? else {
        return Err(io::Error::other("a write lock opened no file"));
    };
    let (mut pairs, _) = read_locked(&mut locked)?;
    edit(&mut pairs);
    let held = locked.file.metadata()?;
    let temp_path = temp_path(dir, pool);
    let mut temp = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp_path)?;
    // The pool keeps the owner and mode it had: root running `hvagent kvp set` must not leave a file the
    // agent's own user can no longer write. Changing the owner needs CAP_CHOWN, which only such a caller has.
    let own = temp.metadata()?;
    if (own.uid(), own.gid()) != (held.uid(), held.gid()) {
        let _ = std::os::unix::fs::fchown(&temp, Some(held.uid()), Some(held.gid()));
    }
    temp.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
        held.mode() & 0o7777,
    ))?;
    temp.write_all(&encode(&pairs))?;
    Ok(Prepared {
        locked,
        temp,
        temp_path,
        target,
        dir: dir.to_path_buf(),
        pairs,
    })
}

impl Prepared {
    /// The second half: fsyncs the new pool, renames it over the old one and fsyncs the directory, then lets
    /// go of the locks. `before_rename`, when given, runs between the fsync and the rename.
    pub fn commit(self, before_rename: Option<FaultHook>) -> io::Result<(Vec<Pair>, Stamp)> {
        self.temp.sync_all()?;
        if let Some(hook) = before_rename {
            hook(&self.temp_path);
        }
        fs::rename(&self.temp_path, &self.target)?;
        File::open(&self.dir)?.sync_all()?;
        let stamp = Stamp::of(&self.temp.metadata()?);
        drop(self.locked);
        Ok((self.pairs, stamp))
    }
}

#[cfg(test)]
mod tests;
