//! Clock discipline: step a [`Clock`] when it is far off, otherwise steer it through its frequency.
//!
//! Steering is a type-II phase-locked loop that only ever sets the kernel's frequency correction
//! (`adjtimex` ADJ_FREQUENCY; the kernel's own PLL is not used): the commanded frequency is the learnt base
//! frequency (what cancels the clock's own error) plus `offset / Tp`, which slews the remaining offset away
//! in about `Tp`; the base frequency integrates `offset × dt / Ti²`. With `Ti = 2 Tp` the loop is critically
//! damped. `Tp` starts at 4 update intervals, so that a new clock's frequency error is learnt quickly, and
//! grows by one interval every 8 updates to 16, where measurement noise is averaged best; a step starts it
//! over. A jump in the offset that no frequency error could explain (more than [`JUMP_PPM`] over an update
//! interval, and at least [`JUMP_MIN`]) is not fed to the loop, whose frequency would wind up: it is slewed
//! away beside it, as fast as the ±500 ppm the kernel allows leaves room for. A steered clock never runs
//! backwards, and small offsets are never stepped.
//!
//! The discipline keeps the total phase it has commanded (the integral of its frequency corrections, and its
//! steps), so that the filter can bring older measurements up to date ([`Discipline::correction_at`]).

use std::time::Instant;

use super::filter::Correction;
use super::{seconds_to_nanos, Clock, ClockError, MAX_FREQUENCY_PPM};

/// `Tp` in update intervals: where it starts, where it stops growing, and the updates per interval of growth.
pub const MIN_PHASE_INTERVALS: f64 = 4.0;
pub const MAX_PHASE_INTERVALS: f64 = 16.0;
pub const UPDATES_PER_GROWTH: f64 = 8.0;
/// An offset change beyond `JUMP_PPM` × the update interval, and beyond `JUMP_MIN` seconds, is a jump.
pub const JUMP_PPM: f64 = 600.0;
pub const JUMP_MIN: f64 = 1e-3;
/// The base frequency learns only from offsets smaller than this (seconds); larger ones are slewed only.
pub const INTEGRATE_LIMIT: f64 = 10e-3;
/// The update interval assumed before two updates were seen, and its bounds (seconds).
pub const DEFAULT_INTERVAL: f64 = 2.0;
pub const MIN_INTERVAL: f64 = 1.0;
pub const MAX_INTERVAL: f64 = 64.0;

/// What an update did to the clock.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    /// Stepped by this many seconds.
    Stepped { by: f64 },
    /// The frequency correction is now this many ppm.
    Steered { ppm: f64 },
}

/// The discipline's state.
#[derive(Clone, Debug)]
pub struct Discipline {
    step_threshold: f64,
    /// Total commanded phase (seconds): the integral of the commanded frequency, and the steps, as of
    /// `corrected_at`.
    phase: f64,
    corrected_at: Option<Instant>,
    base_ppm: f64,
    command_ppm: f64,
    last_update: Option<Instant>,
    interval: f64,
    /// Updates since the last step: how far `Tp` has grown.
    locked: u32,
    /// What is left to slew of the jumps taken out of the loop (seconds), and the frequency (ppm) the
    /// command carries for it.
    slew_left: f64,
    slew_ppm: f64,
    steps: u64,
}

impl Discipline {
    /// A discipline starting from the frequency correction the clock has now (a previous run's, or the one
    /// chronyd left behind).
    pub fn new(step_threshold: f64, frequency_ppm: f64) -> Discipline {
        let ppm = frequency_ppm.clamp(-MAX_FREQUENCY_PPM, MAX_FREQUENCY_PPM);
        Discipline {
            step_threshold,
            phase: 0.0,
            corrected_at: None,
            base_ppm: ppm,
            command_ppm: ppm,
            last_update: None,
            interval: DEFAULT_INTERVAL,
            locked: 0,
            slew_left: 0.0,
            slew_ppm: 0.0,
            steps: 0,
        }
    }

    pub fn step_threshold(&self) -> f64 {
        self.step_threshold
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The learnt base frequency (ppm): what cancels the clock's own frequency error.
    pub fn base_ppm(&self) -> f64 {
        self.base_ppm
    }

    /// The frequency correction in force (ppm).
    pub fn command_ppm(&self) -> f64 {
        self.command_ppm
    }

    /// The commanded phase up to `now` and the base frequency: what brings older offsets up to date.
    pub fn correction_at(&self, now: Instant) -> Correction {
        Correction {
            phase: self.phase_at(now),
            base_ppm: self.base_ppm,
            at: now,
        }
    }

    fn phase_at(&self, now: Instant) -> f64 {
        let elapsed = self
            .corrected_at
            .map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64());
        self.phase + self.command_ppm * 1e-6 * elapsed
    }

    fn fold(&mut self, now: Instant) {
        let elapsed = self
            .corrected_at
            .map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64());
        self.slew_left -= self.slew_ppm * 1e-6 * elapsed;
        self.phase = self.phase_at(now);
        self.corrected_at = Some(now);
    }

    /// Acts on an up-to-date `offset` (seconds, true − guest): steps beyond the threshold, steers otherwise.
    pub fn update(
        &mut self,
        clock: &mut dyn Clock,
        offset: f64,
        now: Instant,
    ) -> Result<Outcome, ClockError> {
        if offset.abs() > self.step_threshold {
            self.step(clock, offset, now)
        } else {
            self.steer(clock, offset, now)
        }
    }

    /// Steps the clock by `offset` at once, and stops slewing.
    pub fn step(
        &mut self,
        clock: &mut dyn Clock,
        offset: f64,
        now: Instant,
    ) -> Result<Outcome, ClockError> {
        self.fold(now);
        clock.step(seconds_to_nanos(offset))?;
        self.phase += offset;
        self.steps += 1;
        self.locked = 0;
        self.slew_left = 0.0;
        self.slew_ppm = 0.0;
        self.last_update = Some(now);
        if self.command_ppm != self.base_ppm {
            clock.set_frequency_ppm(self.base_ppm)?;
            self.command_ppm = self.base_ppm;
        }
        Ok(Outcome::Stepped { by: offset })
    }

    /// Steers the clock towards `offset` through its frequency.
    pub fn steer(
        &mut self,
        clock: &mut dyn Clock,
        offset: f64,
        now: Instant,
    ) -> Result<Outcome, ClockError> {
        self.fold(now);
        let dt = self
            .last_update
            .map(|at| now.saturating_duration_since(at).as_secs_f64());
        if let Some(dt) = dt {
            self.interval = dt.clamp(MIN_INTERVAL, MAX_INTERVAL);
        }
        self.last_update = Some(now);
        let mut offset = offset - self.slew_left;
        if offset.abs() > JUMP_MIN.max(JUMP_PPM * 1e-6 * self.interval) {
            self.slew_left += offset;
            offset = 0.0;
        }
        let intervals = (MIN_PHASE_INTERVALS + f64::from(self.locked) / UPDATES_PER_GROWTH)
            .min(MAX_PHASE_INTERVALS);
        self.locked = self.locked.saturating_add(1);
        let phase_time = intervals * self.interval;
        let integral_time = 2.0 * phase_time;
        let phase_ppm = offset / phase_time * 1e6;
        let mut base = self.base_ppm;
        if let Some(dt) = dt {
            if offset.abs() < INTEGRATE_LIMIT {
                base += offset * dt.min(MAX_INTERVAL) / (integral_time * integral_time) * 1e6;
            }
        }
        // Anti-windup: the base frequency does not grow while the command is pinned at the limit.
        if (base + phase_ppm).abs() > MAX_FREQUENCY_PPM && base.abs() > self.base_ppm.abs() {
            base = self.base_ppm;
        }
        let room = (MAX_FREQUENCY_PPM - (base + phase_ppm).abs()).max(0.0);
        let slew_ppm = (self.slew_left / self.interval * 1e6).clamp(-room, room);
        let command = (base + phase_ppm + slew_ppm).clamp(-MAX_FREQUENCY_PPM, MAX_FREQUENCY_PPM);
        clock.set_frequency_ppm(command)?;
        self.base_ppm = base.clamp(-MAX_FREQUENCY_PPM, MAX_FREQUENCY_PPM);
        self.command_ppm = command;
        self.slew_ppm = slew_ppm;
        Ok(Outcome::Steered { ppm: command })
    }
}
