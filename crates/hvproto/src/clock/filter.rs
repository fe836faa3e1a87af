//! The measurement filter: keep the last [`WINDOW`] results and use the best one, and keep outliers out.
//!
//! A guest probe measures its own delay, and its offset can be wrong by at most half of it, so the best probe
//! is the one with the smallest delay (the NTP clock filter's choice). A host sample carries no delay: its
//! offset is `parenttime − receive time`, always short of the truth by the one-way delay, so the best sample
//! is the one with the largest offset.
//!
//! Older results are brought up to date before they are compared: each remembers the discipline's commanded
//! phase when it was taken; what the clock was moved since, less what its own frequency error (as the
//! discipline now believes it) did meanwhile, is subtracted from its offset ([`Correction`]).
//!
//! A result whose delay is far above the recent minimum (probes), or whose offset is far below the window's
//! best (samples), is an outlier and is discarded; after [`Kind::max_rejected`] outliers in a row the path
//! itself has changed, and the filter starts over from the new result. A result that disagrees with the
//! window's best by more than their delays allow (the clock jumped: a resume, a step by someone else) also
//! starts the window over.

use std::collections::VecDeque;
use std::time::Instant;

/// How many results the filter keeps.
pub const WINDOW: usize = 8;
/// How many accepted probe delays make up the "recent minimum".
pub const DELAY_HISTORY: usize = 64;
/// A probe is an outlier when its delay exceeds `DELAY_FACTOR × recent minimum + DELAY_MARGIN` seconds.
pub const DELAY_FACTOR: f64 = 3.0;
pub const DELAY_MARGIN: f64 = 500e-6;
/// A sample is an outlier when its offset is this many seconds below the window's best.
pub const SAMPLE_SPREAD: f64 = 1e-3;
/// How far (seconds, beyond what the delays explain) a result may disagree with the window's best.
pub const CONSISTENCY_MARGIN: f64 = 1e-3;
/// The frequency error (fraction) a stored result's offset may have gathered per second of age.
pub const AGE_DRIFT: f64 = 500e-6;

/// How far the discipline has moved the clock: what brings an older offset up to date.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Correction {
    /// Total commanded phase (seconds): the integral of the commanded frequency correction, plus steps.
    pub phase: f64,
    /// The base frequency (ppm): the correction believed to cancel the clock's own frequency error.
    pub base_ppm: f64,
    /// When `phase` holds.
    pub at: Instant,
}

impl Correction {
    /// No correction at all (monitor and chrony modes, and tests).
    pub fn none(at: Instant) -> Correction {
        Correction {
            phase: 0.0,
            base_ppm: 0.0,
            at,
        }
    }

    /// The correction since a measurement taken at `at` when the phase was `phase`: what the clock was moved
    /// beyond cancelling its own frequency error.
    pub fn since(&self, phase: f64, at: Instant) -> f64 {
        (self.phase - phase) - self.base_ppm * 1e-6 * self.age(at)
    }

    fn age(&self, at: Instant) -> f64 {
        self.at.saturating_duration_since(at).as_secs_f64()
    }

    /// How uncertain the correction since a measurement is: the base frequency is only known as well as it
    /// has settled, so its change since then (`base_ppm` then) counts over the measurement's age.
    pub fn doubt(&self, base_ppm: f64, at: Instant) -> f64 {
        (self.base_ppm - base_ppm).abs() * 1e-6 * self.age(at)
    }
}

/// What the filter holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The guest's own probes (message version 4.1): offsets with a measured delay.
    Probes,
    /// Host samples: one-way, no delay.
    Samples,
}

impl Kind {
    /// Outliers in a row after which the filter accepts the next result and starts over.
    pub fn max_rejected(self) -> u32 {
        match self {
            Kind::Probes => 16,
            Kind::Samples => 6,
        }
    }
}

/// One offset measurement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measurement {
    /// When the result arrived (the poll loop's monotonic time).
    pub at: Instant,
    /// The guest clock when the result arrived, ns since the Unix epoch.
    pub guest_ns: i128,
    /// True time − guest time, seconds, as of `at`.
    pub offset: f64,
    /// Probe round trip less the host's holding time, seconds; none for host samples.
    pub delay: Option<f64>,
}

/// What became of a measurement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    Accepted,
    /// Discarded: its delay (or, for samples, its shortfall below the best) exceeded `limit`.
    Outlier {
        excess: f64,
        limit: f64,
    },
    /// Accepted after the window was emptied: the path or the clock changed.
    Restarted,
}

/// The window's best result, brought up to date.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Selected {
    pub measurement: Measurement,
    /// Its offset less the correction applied since it was taken.
    pub offset: f64,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    measurement: Measurement,
    /// The discipline's commanded phase and base frequency when it was taken.
    phase: f64,
    base_ppm: f64,
}

impl Entry {
    fn offset_now(&self, correction: &Correction) -> f64 {
        self.measurement.offset - correction.since(self.phase, self.measurement.at)
    }

    fn delay(&self) -> f64 {
        self.measurement.delay.unwrap_or(0.0).max(0.0)
    }
}

/// The last [`WINDOW`] measurements of one kind.
#[derive(Clone, Debug)]
pub struct Filter {
    kind: Kind,
    window: VecDeque<Entry>,
    delays: VecDeque<f64>,
    rejected_in_row: u32,
}

impl Filter {
    pub fn new(kind: Kind) -> Filter {
        Filter {
            kind,
            window: VecDeque::with_capacity(WINDOW),
            delays: VecDeque::with_capacity(DELAY_HISTORY),
            rejected_in_row: 0,
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn len(&self) -> usize {
        self.window.len()
    }

    pub fn is_empty(&self) -> bool {
        self.window.is_empty()
    }

    /// Forgets every result (after a SYNC, or when the link changes).
    pub fn clear(&mut self) {
        self.window.clear();
        self.delays.clear();
        self.rejected_in_row = 0;
    }

    /// The smallest delay of the recent probes.
    pub fn min_delay(&self) -> Option<f64> {
        self.delays.iter().copied().reduce(f64::min)
    }

    /// Adds a measurement; `correction` is the discipline's as of the measurement.
    pub fn add(&mut self, measurement: Measurement, correction: &Correction) -> Verdict {
        let entry = Entry {
            measurement,
            phase: correction.phase,
            base_ppm: correction.base_ppm,
        };
        let mut verdict = Verdict::Accepted;
        if let Some((excess, limit)) = self.outlier(&entry, correction) {
            self.rejected_in_row += 1;
            if self.rejected_in_row <= self.kind.max_rejected() {
                return Verdict::Outlier { excess, limit };
            }
            self.clear();
            verdict = Verdict::Restarted;
        } else if !self.consistent(&entry, correction) {
            self.window.clear();
            verdict = Verdict::Restarted;
        }
        self.rejected_in_row = 0;
        if self.kind == Kind::Probes {
            if self.delays.len() == DELAY_HISTORY {
                self.delays.pop_front();
            }
            self.delays.push_back(entry.delay());
        }
        if self.window.len() == WINDOW {
            self.window.pop_front();
        }
        self.window.push_back(entry);
        verdict
    }

    /// How far `entry` is beyond the outlier limit, and the limit; none when it is within.
    fn outlier(&self, entry: &Entry, correction: &Correction) -> Option<(f64, f64)> {
        let (excess, limit) = match self.kind {
            Kind::Probes => {
                let min = self.min_delay()?;
                (entry.delay(), DELAY_FACTOR * min + DELAY_MARGIN)
            }
            Kind::Samples => {
                let best = self.best(correction)?;
                (best.offset - entry.measurement.offset, SAMPLE_SPREAD)
            }
        };
        (excess > limit).then_some((excess, limit))
    }

    /// Whether `entry` agrees with the window's best as far as their delays and ages allow.
    fn consistent(&self, entry: &Entry, correction: &Correction) -> bool {
        let Some(best) = self.best_entry(correction) else {
            return true;
        };
        let spread = |e: &Entry| match self.kind {
            Kind::Probes => e.delay() / 2.0,
            Kind::Samples => SAMPLE_SPREAD,
        };
        let age = entry
            .measurement
            .at
            .saturating_duration_since(best.measurement.at)
            .as_secs_f64();
        let allowed = spread(entry) + spread(best) + CONSISTENCY_MARGIN + AGE_DRIFT * age;
        (entry.measurement.offset - best.offset_now(correction)).abs() <= allowed
    }

    /// The best entry: the smallest delay (probes) or the largest offset (samples), each less what is in
    /// doubt about bringing it up to date; among equals the newest.
    fn best_entry(&self, correction: &Correction) -> Option<&Entry> {
        let doubt = |e: &Entry| correction.doubt(e.base_ppm, e.measurement.at);
        match self.kind {
            Kind::Probes => self.window.iter().rev().min_by(|a, b| {
                (a.delay() / 2.0 + doubt(a)).total_cmp(&(b.delay() / 2.0 + doubt(b)))
            }),
            Kind::Samples => self.window.iter().rev().max_by(|a, b| {
                (a.offset_now(correction) - doubt(a))
                    .total_cmp(&(b.offset_now(correction) - doubt(b)))
            }),
        }
    }

    /// The best result, its offset brought up to date by `correction`.
    pub fn best(&self, correction: &Correction) -> Option<Selected> {
        self.best_entry(correction).map(|entry| Selected {
            measurement: entry.measurement,
            offset: entry.offset_now(correction),
        })
    }

    /// The newest result.
    pub fn latest(&self) -> Option<Measurement> {
        self.window.back().map(|entry| entry.measurement)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A correction of `phase` with no base frequency, so that age does not matter.
    fn phase(phase: f64) -> Correction {
        Correction {
            phase,
            base_ppm: 0.0,
            at: Instant::now(),
        }
    }

    #[test]
    fn the_correction_since_leaves_out_what_cancelled_the_clocks_own_error() {
        let then = Instant::now();
        let now = Correction {
            phase: 1e-3,
            base_ppm: 100.0,
            at: then + Duration::from_secs(10),
        };
        assert!(now.since(0.0, then).abs() < 1e-12);
        assert!((now.since(-0.5e-3, then) - 0.5e-3).abs() < 1e-12);
    }

    fn probe(base: Instant, second: u64, offset: f64, delay: f64) -> Measurement {
        Measurement {
            at: base + Duration::from_secs(second),
            guest_ns: 0,
            offset,
            delay: Some(delay),
        }
    }

    #[test]
    fn probes_select_the_smallest_delay_of_the_last_eight() {
        let base = Instant::now();
        let mut filter = Filter::new(Kind::Probes);
        for (second, delay) in [50e-6, 40e-6, 90e-6, 60e-6].into_iter().enumerate() {
            filter.add(probe(base, second as u64, delay, delay), &phase(0.0));
        }
        assert_eq!(
            filter.best(&phase(0.0)).unwrap().measurement.delay,
            Some(40e-6)
        );
        for second in 4..12 {
            filter.add(probe(base, second, 70e-6, 70e-6), &phase(0.0));
        }
        assert_eq!(filter.len(), WINDOW);
        assert_eq!(
            filter.best(&phase(0.0)).unwrap().measurement.delay,
            Some(70e-6)
        );
    }

    #[test]
    fn an_older_result_is_brought_up_to_date_by_the_correction_since() {
        let base = Instant::now();
        let mut filter = Filter::new(Kind::Probes);
        filter.add(probe(base, 0, 1e-3, 40e-6), &phase(0.0));
        filter.add(probe(base, 2, 0.6e-3, 90e-6), &phase(0.5e-3));
        let best = filter.best(&phase(0.75e-3)).unwrap();
        assert_eq!(best.measurement.delay, Some(40e-6));
        assert!((best.offset - 0.25e-3).abs() < 1e-12, "{best:?}");
    }

    #[test]
    fn a_probe_far_slower_than_the_recent_minimum_is_discarded_until_the_path_has_changed() {
        let base = Instant::now();
        let mut filter = Filter::new(Kind::Probes);
        filter.add(probe(base, 0, 0.0, 100e-6), &phase(0.0));
        let limit = DELAY_FACTOR * 100e-6 + DELAY_MARGIN;
        assert_eq!(
            filter.add(probe(base, 1, 0.0, limit * 0.99), &phase(0.0)),
            Verdict::Accepted
        );
        for second in 2..2 + u64::from(Kind::Probes.max_rejected()) {
            assert!(matches!(
                filter.add(probe(base, second, 5e-3, 10e-3), &phase(0.0)),
                Verdict::Outlier { .. }
            ));
        }
        assert_eq!(
            filter.add(probe(base, 30, 5e-3, 10e-3), &phase(0.0)),
            Verdict::Restarted
        );
        assert_eq!(filter.len(), 1);
        assert_eq!(filter.min_delay(), Some(10e-3));
    }

    #[test]
    fn a_probe_that_disagrees_with_the_window_restarts_it() {
        let base = Instant::now();
        let mut filter = Filter::new(Kind::Probes);
        filter.add(probe(base, 0, 0.0, 50e-6), &phase(0.0));
        filter.add(probe(base, 2, 20e-6, 60e-6), &phase(0.0));
        assert_eq!(
            filter.add(probe(base, 4, 30.0, 60e-6), &phase(0.0)),
            Verdict::Restarted
        );
        assert_eq!(filter.best(&phase(0.0)).unwrap().offset, 30.0);
    }

    #[test]
    fn samples_select_the_largest_offset_and_drop_ones_far_below_it() {
        let base = Instant::now();
        let mut filter = Filter::new(Kind::Samples);
        let sample = |second: u64, offset: f64| Measurement {
            at: base + Duration::from_secs(second),
            guest_ns: 0,
            offset,
            delay: None,
        };
        filter.add(sample(0, -150e-6), &phase(0.0));
        filter.add(sample(5, -30e-6), &phase(0.0));
        filter.add(sample(10, -90e-6), &phase(0.0));
        assert_eq!(filter.best(&phase(0.0)).unwrap().offset, -30e-6);
        assert!(matches!(
            filter.add(sample(15, -5e-3), &phase(0.0)),
            Verdict::Outlier { .. }
        ));
        assert_eq!(filter.len(), 3);
    }
}
