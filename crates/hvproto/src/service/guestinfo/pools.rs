//! The stored pools in memory, and their coalesced writes.
//!
//! Each pool is kept as it was on disk when last read or written (`base`) and as the host sees it
//! (`view`: the base with the changes not yet written). A Set or Delete changes the view at once and is
//! queued; the pool is written once per `kvp_flush_ms` at most, all queued changes in one [`PoolStore::update`]
//! (which applies them to the file as it is at that moment, under its lock, so another writer's records in
//! between are kept), and only then are the changes answered. So nothing a host was told is stored can be
//! lost, and a stream of Sets costs one write per interval, not one per Set.
//!
//! A pool whose file another process changed is read again before the host reads it ([`Pools::refresh`]);
//! the queued changes are applied on top of what was read.
//!
//! A store may finish a write later ([`Update::Started`]: the fsyncs off the loop's thread): the pool is
//! then not written or read again until [`Pools::take_finished`] takes the end in, and its changes are
//! answered then.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use log::warn;

use super::pair::{apply, Edit, Pair};
use super::{PoolStore, Update};
use crate::service::logic::LinkId;
use crate::wire::kvp::Pool;
use crate::wire::{Message, Status};

/// Changes queued in one pool beyond which it is written at once whatever the interval. Their answers go out
/// together after the write, each as long as its request (about 2.6 KB), and a connection whose peer has
/// more than 256 KiB of answers waiting is dropped (hvtransport's MAX_QUEUED): 64 keep a burst of answers
/// well within that, and bound the memory they hold.
pub const MAX_QUEUED: usize = 64;

/// A change waiting for its write, and its answer when the host wants one.
struct Queued {
    edit: Edit,
    answer: Option<(LinkId, Message)>,
}

/// A write the store finishes later, and what it carries.
struct InFlight {
    changes: Vec<Queued>,
    outcomes: Vec<Result<(), String>>,
}

#[derive(Default)]
struct PoolState {
    base: Vec<Pair>,
    view: Vec<Pair>,
    queued: Vec<Queued>,
    /// The write under way: no other write or read of the pool's file starts until it ends.
    in_flight: Option<InFlight>,
    last_write: Option<Instant>,
    due: Option<Instant>,
}

/// Counters for `hvagent status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteCounts {
    /// Durable writes of a pool file.
    pub writes: u64,
    /// Changes those writes carried.
    pub changes: u64,
    /// Writes that failed (their changes were answered HV_E_FAIL).
    pub failed: u64,
}

/// The stored pools.
pub struct Pools {
    states: BTreeMap<Pool, PoolState>,
    interval: Duration,
    max_bytes: u64,
    pub counts: WriteCounts,
}

impl Pools {
    /// The pools of `pools`, loaded from `store`; one that cannot be loaded starts empty (and says why).
    pub fn load(
        store: &mut dyn PoolStore,
        pools: &[Pool],
        interval: Duration,
        max_bytes: u64,
    ) -> Pools {
        let mut states = BTreeMap::new();
        for &pool in pools {
            let base = store.load(pool).unwrap_or_else(|why| {
                warn!("guestinfo: the {} pool starts empty: {why}", pool.name());
                Vec::new()
            });
            states.insert(
                pool,
                PoolState {
                    view: base.clone(),
                    base,
                    ..PoolState::default()
                },
            );
        }
        Pools {
            states,
            interval,
            max_bytes,
            counts: WriteCounts::default(),
        }
    }

    /// Whether `pool` is one of the stored pools.
    pub fn holds(&self, pool: Pool) -> bool {
        self.states.contains_key(&pool)
    }

    /// The pairs of `pool` as the host sees them.
    pub fn view(&self, pool: Pool) -> &[Pair] {
        self.states.get(&pool).map_or(&[], |state| &state.view)
    }

    /// Changes not yet durable, in every pool: queued, or in a write under way.
    pub fn queued(&self) -> usize {
        self.states
            .values()
            .map(|state| {
                state.queued.len() + state.in_flight.as_ref().map_or(0, |f| f.changes.len())
            })
            .sum()
    }

    /// Whether a write is under way.
    pub fn writing(&self) -> bool {
        self.states.values().any(|state| state.in_flight.is_some())
    }

    /// Reads `pool` again if its file changed since the agent last read or wrote it.
    pub fn refresh(&mut self, store: &mut dyn PoolStore, pool: Pool) {
        let Some(state) = self.states.get_mut(&pool) else {
            return;
        };
        // The agent's own write is landing: the view has it, and the file must not be opened meanwhile.
        if state.in_flight.is_some() {
            return;
        }
        match store.reload_if_changed(pool) {
            Ok(Some(base)) => {
                let mut view = base.clone();
                for queued in &state.queued {
                    // One that no longer fits is refused when the pool is written.
                    let _ = apply(&mut view, &queued.edit, self.max_bytes);
                }
                state.base = base;
                state.view = view;
            }
            Ok(None) => {}
            Err(why) => warn!(
                "guestinfo: cannot read the {} pool again, answering from what was read before: {why}",
                pool.name()
            ),
        }
    }

    /// Queues `edit` for `pool` (a stored pool) and applies it to the view; `answer` is sent once it is
    /// written. A Set that would pass the size cap is refused and changes nothing.
    pub fn queue(
        &mut self,
        pool: Pool,
        edit: Edit,
        answer: Option<(LinkId, Message)>,
        now: Instant,
    ) -> Result<(), String> {
        let interval = self.interval;
        let Some(state) = self.states.get_mut(&pool) else {
            return Err(format!("there is no stored pool {}", pool.0));
        };
        apply(&mut state.view, &edit, self.max_bytes)?;
        state.queued.push(Queued { edit, answer });
        let earliest = state.last_write.map_or(now, |at| (at + interval).max(now));
        let due = if state.queued.len() > MAX_QUEUED {
            now
        } else {
            state.due.unwrap_or(earliest)
        };
        state.due = Some(due);
        Ok(())
    }

    /// When the next write is due (a pool being written waits for that write to end).
    pub fn deadline(&self) -> Option<Instant> {
        self.states
            .values()
            .filter(|state| state.in_flight.is_none())
            .filter_map(|state| state.due)
            .min()
    }

    /// Writes every pool whose write is due at `now` (all of them with `everything`), and puts the answers
    /// of the changes written into `out`.
    pub fn write_due(
        &mut self,
        store: &mut dyn PoolStore,
        now: Instant,
        everything: bool,
        out: &mut Vec<(LinkId, Message)>,
    ) {
        let due: Vec<Pool> = self
            .states
            .iter()
            .filter(|(_, state)| state.in_flight.is_none())
            .filter(|(_, state)| state.due.is_some_and(|at| everything || at <= now))
            .map(|(&pool, _)| pool)
            .collect();
        for pool in due {
            self.write(store, pool, now, out);
        }
    }

    fn write(
        &mut self,
        store: &mut dyn PoolStore,
        pool: Pool,
        now: Instant,
        out: &mut Vec<(LinkId, Message)>,
    ) {
        let max_bytes = self.max_bytes;
        let Some(state) = self.states.get_mut(&pool) else {
            return;
        };
        let changes = std::mem::take(&mut state.queued);
        state.due = None;
        state.last_write = Some(now);
        let mut outcomes: Vec<Result<(), String>> = Vec::with_capacity(changes.len());
        let update = store.update(pool, &mut |pairs| {
            outcomes.clear();
            for change in &changes {
                outcomes.push(apply(pairs, &change.edit, max_bytes));
            }
        });
        let flight = InFlight { changes, outcomes };
        match update {
            Update::Done(result) => self.complete(pool, flight, result, out),
            Update::Started => state.in_flight = Some(flight),
        }
    }

    /// Takes in the writes the store finished, and puts their answers into `out`.
    pub fn take_finished(&mut self, store: &mut dyn PoolStore, out: &mut Vec<(LinkId, Message)>) {
        for (pool, result) in store.finished() {
            let flight = self
                .states
                .get_mut(&pool)
                .and_then(|state| state.in_flight.take());
            if let Some(flight) = flight {
                self.complete(pool, flight, result, out);
            }
        }
    }

    /// Writes everything that waits and waits for every write to end (the agent stopping).
    pub fn write_all(
        &mut self,
        store: &mut dyn PoolStore,
        now: Instant,
        out: &mut Vec<(LinkId, Message)>,
    ) {
        // Two rounds at most: what waited behind a write under way goes in the second.
        for _ in 0..2 {
            self.write_due(store, now, true, out);
            if self.writing() {
                store.wait();
                self.take_finished(store, out);
            }
        }
    }

    /// A write ended: the pool is what was written (or, when it failed, what it was), with the changes
    /// queued since applied on top, and every change it carried is answered.
    fn complete(
        &mut self,
        pool: Pool,
        flight: InFlight,
        result: Result<Vec<Pair>, String>,
        out: &mut Vec<(LinkId, Message)>,
    ) {
        let max_bytes = self.max_bytes;
        let Some(state) = self.states.get_mut(&pool) else {
            return;
        };
        let InFlight {
            changes,
            mut outcomes,
        } = flight;
        match result {
            Ok(pairs) => {
                self.counts.writes += 1;
                self.counts.changes += changes.len() as u64;
                state.base = pairs;
            }
            Err(why) => {
                self.counts.failed += 1;
                warn!(
                    "guestinfo: cannot store the {} pool: {why}; {} change(s) answered HV_E_FAIL",
                    pool.name(),
                    changes.len()
                );
                outcomes = vec![Err(why); changes.len()];
            }
        }
        let mut view = state.base.clone();
        for queued in &state.queued {
            // One that no longer fits is refused when the pool is written.
            let _ = apply(&mut view, &queued.edit, max_bytes);
        }
        state.view = view;
        for (change, outcome) in changes.into_iter().zip(outcomes) {
            let status = match &outcome {
                Ok(()) => Status::OK,
                Err(why) => {
                    warn!(
                        "guestinfo: {} pool: {} not stored: {why}",
                        pool.name(),
                        String::from_utf8_lossy(change.edit.key()).escape_debug()
                    );
                    Status::FAIL
                }
            };
            if let Some((link, mut answer)) = change.answer {
                answer.header.status = status;
                out.push((link, answer));
            }
        }
    }

    /// Drops the answers queued for `link`, which is gone; its changes are still written.
    pub fn forget_link(&mut self, link: LinkId) {
        for state in self.states.values_mut() {
            let in_flight = state
                .in_flight
                .iter_mut()
                .flat_map(|flight| flight.changes.iter_mut());
            for queued in state.queued.iter_mut().chain(in_flight) {
                if queued.answer.as_ref().is_some_and(|(to, _)| *to == link) {
                    queued.answer = None;
                }
            }
        }
    }
}
