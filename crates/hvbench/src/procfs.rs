//! What /proc tells about a process: memory, context switches and CPU time.

use std::path::{Path, PathBuf};

use crate::run::{Context, Failure};

/// The first number of a `Key:  value ...` line of a /proc status file.
pub(crate) fn status_field(path: &Path, key: &str) -> Result<u64, Failure> {
    let text =
        std::fs::read_to_string(path).context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .find_map(|value| value.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| Failure(format!("{} has no {key} line", path.display())))
}

/// Memory of a process in KiB.
pub(crate) struct Memory {
    /// VmRSS: resident pages, its share of libc and other mapped files counted in full.
    pub(crate) rss: u64,
    /// VmHWM: the most VmRSS has been.
    pub(crate) peak: u64,
    /// RssAnon: resident pages that are the process's own (heap, stacks, written data).
    pub(crate) anon: u64,
    /// Pss: resident pages with each shared page divided among the processes that map it.
    pub(crate) pss: u64,
}

impl Memory {
    pub(crate) fn of(pid: i32) -> Result<Memory, Failure> {
        let status = PathBuf::from(format!("/proc/{pid}/status"));
        Ok(Memory {
            rss: status_field(&status, "VmRSS")?,
            peak: status_field(&status, "VmHWM")?,
            anon: status_field(&status, "RssAnon")?,
            pss: status_field(Path::new(&format!("/proc/{pid}/smaps_rollup")), "Pss")?,
        })
    }
}

/// Voluntary and involuntary context switches of all of `pid`'s threads: how often it was woken or preempted.
pub(crate) fn context_switches(pid: i32) -> Result<u64, Failure> {
    let tasks = PathBuf::from(format!("/proc/{pid}/task"));
    let entries =
        std::fs::read_dir(&tasks).context(|| format!("cannot list {}", tasks.display()))?;
    let mut total = 0;
    for entry in entries {
        let status = entry
            .context(|| format!("cannot list {}", tasks.display()))?
            .path()
            .join("status");
        total += status_field(&status, "voluntary_ctxt_switches")?;
        total += status_field(&status, "nonvoluntary_ctxt_switches")?;
    }
    Ok(total)
}
