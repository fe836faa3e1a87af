//! The agent's [`PoolStore`]: the pools as hv_kvp_daemon's files in `pool_dir` ([`super::pool_file`]).
//!
//! Each pool's file is stamped (device, inode, size, times) when the agent reads or writes it; before the
//! host reads a pool the agent compares the stamp with the file's (one stat(2), no polling) and reads it
//! again when another process changed it. Writes take the files' locks for at most [`LOCK_WAIT`], so a
//! process that holds a lock forever fails the host's change rather than hanging the agent's loop.
//!
//! At start, pools an earlier version kept in its private format (`STATE_DIR/kvp/pool_N`,
//! [`super::kvp_legacy`]) are migrated into the pool files once: their pairs are added (a key the pool file
//! has already keeps its value there) and the old file is removed.
//!
//! A write is done in two halves ([`pool_file::prepare`], [`pool_file::Prepared::commit`]): the loop's thread
//! takes the locks, reads the pool, applies the changes and writes the new file into the page cache (well
//! under a millisecond); a writer thread of the store's own then fsyncs it, renames it over the pool and
//! fsyncs the directory (milliseconds, on a busy disk many), and says so through a pipe the loop watches. So
//! the loop serves heartbeats while the disk works, and a change is still answered only once durable. The
//! logic neither writes nor reads a pool while its write is under way (closing another descriptor of the
//! file would drop the locks the writer still holds).
//!
//! While a backup has the filesystems frozen, writes are refused: one would block until the thaw, which the
//! loop itself must perform.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use log::{info, warn};
use nix::fcntl::OFlag;

use super::kvp_legacy;
use super::pool_file::{self, FaultHook, Prepared, Stamp, Wait};
use hvproto::service::guestinfo::pair::{apply, Edit};
use hvproto::service::guestinfo::{
    Finished, GuestInfoSettings, Pair, PoolStore, Update, STORED_POOLS,
};
use hvproto::service::Watch;
use hvproto::wire::kvp::Pool;

/// How long the agent waits for another process's lock on a pool file.
pub const LOCK_WAIT: Duration = Duration::from_secs(1);

/// The environment variable that makes the agent stop (abort) between writing a pool's temporary file and
/// renaming it, as a crash there would: `HVAGENT_TEST_FAULT=kvp-before-rename`. For the crash-safety test.
pub const FAULT_VARIABLE: &str = "HVAGENT_TEST_FAULT";

/// Pools as hv_kvp_daemon's files in a directory.
pub struct FileStore {
    dir: PathBuf,
    stamps: [Option<Stamp>; 5],
    fault: Option<FaultHook>,
    /// The writer thread, started at the first write; None also when it could not be (writes then finish
    /// on the caller's thread).
    writer: Option<Writer>,
    /// Writes handed to the writer and not yet reported by `finished`.
    pending: usize,
    /// Ends the writer reported, kept until `finished` hands them over.
    landed: Vec<Landed>,
}

/// One write's second half, for the writer thread.
struct Job {
    pool: Pool,
    prepared: Prepared,
    fault: Option<FaultHook>,
}

type Landed = (Pool, std::io::Result<(Vec<Pair>, Stamp)>);

/// The writer thread: jobs in, ends out, a byte on the pipe for each end.
struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    ends: mpsc::Receiver<Landed>,
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    fn start() -> std::io::Result<Writer> {
        let (wake, wake_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (outbox, ends) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("kvp-writer".to_string())
            .spawn(move || {
                for job in inbox {
                    let end = job.prepared.commit(job.fault);
                    if outbox.send((job.pool, end)).is_err() {
                        return;
                    }
                    // A full pipe already wakes the loop; nothing else can go wrong that matters here.
                    let _ = nix::unistd::write(&wake_write, &[1]);
                }
            })?;
        Ok(Writer {
            jobs: Some(jobs),
            ends,
            wake,
            thread: Some(thread),
        })
    }
}

impl Drop for Writer {
    /// The writes handed over are finished before the store goes.
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn crash_before_rename(_temp: &Path) {
    std::process::abort();
}

impl FileStore {
    /// The pools in `settings.pool_dir`, after migrating what `settings.state_dir` holds in the old format.
    pub fn open(settings: &GuestInfoSettings) -> FileStore {
        migrate(&settings.state_dir.join("kvp"), &settings.pool_dir);
        let fault = std::env::var(FAULT_VARIABLE)
            .is_ok_and(|value| value == "kvp-before-rename")
            .then_some(crash_before_rename as FaultHook);
        FileStore::new(&settings.pool_dir, fault)
    }

    pub fn new(dir: &Path, fault: Option<FaultHook>) -> FileStore {
        FileStore {
            dir: dir.to_path_buf(),
            stamps: [None; 5],
            fault,
            writer: None,
            pending: 0,
            landed: Vec::new(),
        }
    }

    pub fn path(&self, pool: Pool) -> PathBuf {
        pool_file::path(&self.dir, pool)
    }

    fn stamp_slot(&mut self, pool: Pool) -> Result<&mut Option<Stamp>, String> {
        self.stamps
            .get_mut(usize::from(pool.0))
            .ok_or_else(|| format!("there is no pool {}", pool.0))
    }
}

impl PoolStore for FileStore {
    fn load(&mut self, pool: Pool) -> Result<Vec<Pair>, String> {
        let path = self.path(pool);
        let (pairs, stamp) = pool_file::read(&self.dir, pool, Wait::AtMost(LOCK_WAIT))
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        *self.stamp_slot(pool)? = stamp;
        Ok(pairs)
    }

    fn reload_if_changed(&mut self, pool: Pool) -> Result<Option<Vec<Pair>>, String> {
        let path = self.path(pool);
        let now = Stamp::now(&path)
            .map_err(|error| format!("cannot stat {}: {error}", path.display()))?;
        if now == *self.stamp_slot(pool)? {
            return Ok(None);
        }
        self.load(pool).map(Some)
    }

    fn update(&mut self, pool: Pool, edit: &mut dyn FnMut(&mut Vec<Pair>)) -> Update {
        if crate::ops::log_hold::frozen() {
            return Update::Done(Err(
                "filesystems are frozen for a backup; nothing is written until the thaw"
                    .to_string(),
            ));
        }
        let path = self.path(pool);
        let failed = |error: std::io::Error| format!("cannot replace {}: {error}", path.display());
        let prepared = match pool_file::prepare(&self.dir, pool, Wait::AtMost(LOCK_WAIT), edit) {
            Ok(prepared) => prepared,
            Err(error) => return Update::Done(Err(failed(error))),
        };
        if self.writer.is_none() {
            match Writer::start() {
                Ok(writer) => self.writer = Some(writer),
                Err(error) => warn!(
                    "guestinfo: no writer thread ({error}): pool writes finish in the loop, which waits for them"
                ),
            }
        }
        let job = Job {
            pool,
            prepared,
            fault: self.fault,
        };
        let Some(jobs) = self.writer.as_ref().and_then(|writer| writer.jobs.as_ref()) else {
            return Update::Done(self.landed_now(pool, job.prepared.commit(job.fault)));
        };
        match jobs.send(job) {
            Ok(()) => {
                self.pending += 1;
                Update::Started
            }
            // The thread is gone (it cannot end otherwise): finish here.
            Err(mpsc::SendError(job)) => {
                Update::Done(self.landed_now(pool, job.prepared.commit(job.fault)))
            }
        }
    }

    fn finished(&mut self) -> Vec<Finished> {
        if let Some(writer) = &self.writer {
            let mut drained = [0u8; 64];
            while matches!(nix::unistd::read(writer.wake.as_raw_fd(), &mut drained), Ok(n) if n > 0)
            {
            }
            while let Ok(end) = writer.ends.try_recv() {
                self.landed.push(end);
            }
        }
        let landed: Vec<Landed> = self.landed.drain(..).collect();
        self.pending -= landed.len().min(self.pending);
        landed
            .into_iter()
            .map(|(pool, end)| (pool, self.landed_now(pool, end)))
            .collect()
    }

    fn watched(&self) -> Option<Watch> {
        self.writer
            .as_ref()
            .map(|writer| Watch(i64::from(writer.wake.as_raw_fd())))
    }

    fn wait(&mut self) {
        let Some(writer) = &self.writer else {
            return;
        };
        while self.landed.len() < self.pending {
            match writer.ends.recv() {
                Ok(end) => self.landed.push(end),
                Err(_) => break,
            }
        }
    }
}

impl FileStore {
    /// The end of a write, as the logic takes it: the stamp of the new file noted.
    fn landed_now(
        &mut self,
        pool: Pool,
        end: std::io::Result<(Vec<Pair>, Stamp)>,
    ) -> Result<Vec<Pair>, String> {
        let path = self.path(pool);
        let (pairs, stamp) =
            end.map_err(|error| format!("cannot replace {}: {error}", path.display()))?;
        *self.stamp_slot(pool)? = Some(stamp);
        Ok(pairs)
    }
}

/// Moves the pools of the old private format in `old_dir` into the pool files in `pool_dir`, once.
pub fn migrate(old_dir: &Path, pool_dir: &Path) {
    for pool in STORED_POOLS {
        let old = kvp_legacy::path(old_dir, pool);
        let Some(legacy) = kvp_legacy::read(&old) else {
            continue;
        };
        let pairs = match legacy {
            Ok(pairs) => pairs,
            Err(why) => {
                warn!("guestinfo: not migrating {}: {why}", old.display());
                continue;
            }
        };
        let mut added = 0;
        let result = pool_file::update(pool_dir, pool, Wait::AtMost(LOCK_WAIT), None, &mut |now| {
            added = 0;
            for pair in &pairs {
                if !now.iter().any(|there| there.key == pair.key)
                    && apply(now, &Edit::Set(pair.clone()), u64::MAX).is_ok()
                {
                    added += 1;
                }
            }
        });
        match result.and_then(|_| std::fs::remove_file(&old)) {
            Ok(()) => info!(
                "guestinfo: migrated the {} pool from {} into {} ({added} of {} pairs; the others' keys were \
                 there already)",
                pool.name(),
                old.display(),
                pool_file::path(pool_dir, pool).display(),
                pairs.len()
            ),
            Err(error) => warn!(
                "guestinfo: cannot migrate {} into {}: {error}; trying again at the next start",
                old.display(),
                pool_dir.display()
            ),
        }
    }
}

/// The pids of the hv_kvp_daemon processes under `proc_root` (normally /proc), by their comm.
pub fn hv_kvp_daemons(proc_root: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            (comm.trim_end() == "hv_kvp_daemon").then_some(pid)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Whether `pool_dir` is `daemon_dir` (hv_kvp_daemon's /var/lib/hyperv, under a test's root): the same
/// path, or the same directory reached another way.
pub fn is_daemon_dir(pool_dir: &Path, daemon_dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if pool_dir == daemon_dir {
        return true;
    }
    match (std::fs::metadata(pool_dir), std::fs::metadata(daemon_dir)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Why the agent and hv_kvp_daemon would fight over `pool_dir`, when they would.
pub fn daemon_conflict(proc_root: &Path, daemon_dir: &Path, pool_dir: &Path) -> Option<String> {
    let pids = hv_kvp_daemons(proc_root);
    if pids.is_empty() || !is_daemon_dir(pool_dir, daemon_dir) {
        return None;
    }
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    Some(format!(
        "hv_kvp_daemon (pid {}) serves the same pool files in {}: it keeps its own copy of each pool and \
         writes it back whole, so the two overwrite each other's changes (and its locks do not hold once \
         the agent replaced a file); stop and disable hv_kvp_daemon (hv-kvp-daemon.service), or set \
         pool_dir in [guestinfo] to a directory of the agent's own",
        pids.join(", "),
        pool_dir.display()
    ))
}

#[cfg(test)]
mod tests;
