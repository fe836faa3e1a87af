//! One CPU for the round-trip figures. On a virtual machine the scheduler may put the client on one vCPU
//! and a server on the other, and then every wake-up waits for the host to run a halted vCPU again: the
//! same agent binary measured a p50 of 12 µs in one run and 50–60 µs in the next (either server could be
//! hit), which made the agent/echo ratio a coin toss. With the client and every server on one CPU, a round
//! trip is the same two context switches for each server plus the server's own work, which is what the
//! ratio compares.

use nix::sched::{sched_getaffinity, sched_getcpu, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

use crate::run::{Context, Failure};

/// Threads pinned to one CPU; dropping it gives each back the CPUs it had.
pub(crate) struct Pinned {
    cpu: usize,
    saved: Vec<(Pid, CpuSet)>,
}

impl Pinned {
    /// Pins the calling thread and every thread of the processes `pids` to the CPU the caller runs on.
    pub(crate) fn to_current_cpu(pids: &[i32]) -> Result<Pinned, Failure> {
        let cpu = sched_getcpu().context(|| "cannot tell which CPU hvbench runs on")?;
        let mut one = CpuSet::new();
        one.set(cpu)
            .context(|| format!("CPU {cpu} does not fit a CPU set"))?;
        let mut pinned = Pinned {
            cpu,
            saved: Vec::new(),
        };
        // Pid 0: the calling thread.
        let mut threads = vec![Pid::from_raw(0)];
        for &pid in pids {
            threads.extend(threads_of(pid)?);
        }
        for thread in threads {
            let before = sched_getaffinity(thread)
                .context(|| format!("cannot read the CPU affinity of thread {thread}"))?;
            sched_setaffinity(thread, &one)
                .context(|| format!("cannot pin thread {thread} to CPU {cpu}"))?;
            pinned.saved.push((thread, before));
        }
        Ok(pinned)
    }

    pub(crate) fn cpu(&self) -> usize {
        self.cpu
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        for (thread, before) in &self.saved {
            // A server that has exited since has nothing to give back.
            let _ = sched_setaffinity(*thread, before);
        }
    }
}

/// The thread ids of process `pid` (/proc/PID/task).
fn threads_of(pid: i32) -> Result<Vec<Pid>, Failure> {
    let dir = format!("/proc/{pid}/task");
    let entries = std::fs::read_dir(&dir).context(|| format!("cannot list {dir}"))?;
    Ok(entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .map(Pid::from_raw)
        .collect())
}
