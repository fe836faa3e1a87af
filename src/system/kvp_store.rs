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
//! While a backup has the filesystems frozen, writes are refused: one would block the loop until the thaw,
//! which the loop itself must perform.

use std::path::{Path, PathBuf};
use std::time::Duration;

use log::{info, warn};

use super::kvp_legacy;
use super::pool_file::{self, FaultHook, Stamp, Wait};
use hvproto::service::guestinfo::pair::{apply, Edit};
use hvproto::service::guestinfo::{GuestInfoSettings, Pair, PoolStore, STORED_POOLS};
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

    fn update(
        &mut self,
        pool: Pool,
        edit: &mut dyn FnMut(&mut Vec<Pair>),
    ) -> Result<Vec<Pair>, String> {
        if crate::ops::log_hold::frozen() {
            return Err(
                "filesystems are frozen for a backup; nothing is written until the thaw"
                    .to_string(),
            );
        }
        let path = self.path(pool);
        let (pairs, stamp) =
            pool_file::update(&self.dir, pool, Wait::AtMost(LOCK_WAIT), self.fault, edit)
                .map_err(|error| format!("cannot replace {}: {error}", path.display()))?;
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
