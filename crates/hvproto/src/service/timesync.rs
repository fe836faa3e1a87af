//! The time-sync service: host samples in, guest probes out (message version 4.1), and the clock kept right
//! through [`crate::clock`].
//!
//! - Host samples (TIMESYNC requests with the SYNC or SAMPLE bit; `ictimesync_ref_data` for message version
//!   4.0 and later, `ictimesync_data` before) are answered HV_S_OK with their own body when they carry
//!   TRANSACTION. The flags are bits: SYNC wins when both are set, reserved bits are ignored. A sample's
//!   offset is `parenttime − receive time`, short of the truth by the one-way delay.
//! - Probes (only when 4.1 was negotiated and `probe_interval` is not zero): a TIMESYNC request with an
//!   `ictimesync_data` body, flags PROBE, childtime = t1, every `probe_interval`, one at a time. The host's
//!   answer carries parenttime (its time when answering) and roundtriptime (how long it held the probe); at
//!   t4: delay = t4 − t1 − roundtriptime, offset = parenttime + delay / 2 − t4.
//! - Mode `adjust` steps beyond `step_threshold` and steers otherwise; `monitor` only measures; `chrony` sends
//!   each fresh best offset to chronyd's SOCK refclock and changes nothing.
//! - A SYNC is short of the truth by a one-way delay it cannot know, and right after a (re)connect that delay
//!   can be 40-150 ms on an emulated transport. So a SYNC within `step_threshold` is never stepped on its own
//!   offset: with probes (4.1) the step waits for the next probe answer, which measures the delay, and is
//!   taken only if that answer is more than [`SYNC_MIN_STEP`] off; without probes the SYNC is a sample, and
//!   samples steer only once two agree. A SYNC beyond `step_threshold` is stepped at once, corrected by half
//!   the smallest probe round trip known, and a probe then takes out what the delay left.
//! - The kernel frequency correction found at start is put back when the service ends (SIGTERM, SIGINT, a
//!   fatal error, a reload that turns time sync off or changes it), as chronyd does, so a stopped agent
//!   never leaves the clock slewing; a correction pegged at ±500 ppm is not trusted at start.
//!
//! Idle cost: with probes off the service has no timer; with probes on, one wake-up per probe interval.

use std::time::{Duration, Instant};

use log::{debug, error, info, warn};

use super::logic::{LinkId, Logic, Refusal, StatusLine};
use crate::clock::discipline::{Discipline, Outcome};
use crate::clock::filter::{Filter, Kind, Measurement, Verdict};
use crate::clock::{
    format_delay, format_offset, Clock, ClockError, OffsetSink, MAX_FREQUENCY_PPM, NANOS,
};
use crate::wire::timesync::{
    ticks_to_unix_nanos, unix_nanos_to_ticks, TimeSyncData, TimeSyncFlags, TimeSyncRef,
};
use crate::wire::{IcVersion, Message, MessageRef, MessageType, ReplyWriter, Status};

mod settings;
pub use settings::{Mode, TimeSyncSettings, DEFAULT_CHRONY_SOCKET};

/// The message version that adds guest probes (hvagent's extension).
pub const PROBE_VERSION: IcVersion = IcVersion::new(4, 1);
/// A SYNC within `step_threshold` leads to a step only when the next probe answer, whose delay is measured,
/// finds the clock more than this far off (seconds); smaller offsets are steered.
pub const SYNC_MIN_STEP: f64 = 10e-3;
/// The most doubt (half the probe's delay, seconds) a probe may carry to step for a pending SYNC.
pub const SYNC_STEP_PRECISION: f64 = 1e-3;
/// The discipline acts on a filter only once it holds this many results: the first after a connect may be
/// late by far more than the later ones (40-150 ms seen on an emulated transport), and with a second one to
/// choose from the filter picks the better.
const MIN_RESULTS_TO_ACT: usize = 2;
/// A frequency correction this close to the kernel's ±500 ppm limit, found at start, is a slew someone left
/// running (an agent killed mid-slew), not a calibration: the discipline starts from zero instead.
const PEGGED_PPM: f64 = MAX_FREQUENCY_PPM - 0.01;
/// Host samples steer the clock only when no probe was answered for this many probe intervals.
const PROBE_STALE_INTERVALS: u32 = 4;
/// The most often the routine summary is logged at info.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(600);

/// A probe on its way.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    link: LinkId,
    transaction_id: u8,
    /// The guest clock when it was sent, ns.
    t1: i128,
    /// The discipline's step count then: a step in between spoils the measurement.
    steps: u64,
}

/// Counts for the status and the summary.
#[derive(Clone, Debug, Default)]
struct Stats {
    samples: u64,
    syncs: u64,
    probes_sent: u64,
    probes_answered: u64,
    probes_lost: u64,
    outliers: u64,
    last_offset: Option<f64>,
    last_delay: Option<f64>,
    last_sample: Option<Instant>,
    last_summary: Option<Instant>,
}

/// The time-sync service's state, shared by its connections.
pub struct TimeSyncLogic {
    mode: Mode,
    probe_interval: Option<Duration>,
    clock: Box<dyn Clock>,
    sink: Option<Box<dyn OffsetSink>>,
    discipline: Discipline,
    probes: Filter,
    samples: Filter,
    probe_link: Option<LinkId>,
    next_probe: Option<Instant>,
    in_flight: Option<InFlight>,
    next_transaction: u8,
    last_probe_answer: Option<Instant>,
    /// A SYNC whose step waits for the next probe answer (4.1): the probe measures the delay it could not.
    sync_pending: bool,
    /// The frequency correction (ppm) to put back when the service ends; none outside mode adjust.
    restore_ppm: Option<f64>,
    stats: Stats,
}

impl TimeSyncLogic {
    /// A service in `mode` (chrony mode needs `sink`); `probe_interval` zero turns probes off.
    pub fn new(
        mode: Mode,
        step_threshold: Duration,
        probe_interval: Duration,
        clock: Box<dyn Clock>,
        sink: Option<Box<dyn OffsetSink>>,
    ) -> TimeSyncLogic {
        let found = match mode {
            Mode::Adjust => clock.frequency_ppm().ok(),
            Mode::Monitor | Mode::Chrony => None,
        };
        let trusted = found.map(|ppm| {
            if ppm.abs() >= PEGGED_PPM {
                warn!(
                    "timesync: the clock's frequency correction is {ppm:+.3} ppm, pegged at the kernel's limit: \
                     a slew left running (an agent killed mid-slew?), not a calibration; starting from 0 ppm \
                     and leaving 0 ppm behind at exit"
                );
                0.0
            } else {
                ppm
            }
        });
        let frequency = trusted.unwrap_or(0.0);
        TimeSyncLogic {
            mode,
            probe_interval: (!probe_interval.is_zero()).then_some(probe_interval),
            clock,
            sink,
            discipline: Discipline::new(step_threshold.as_secs_f64(), frequency),
            probes: Filter::new(Kind::Probes),
            samples: Filter::new(Kind::Samples),
            probe_link: None,
            next_probe: None,
            in_flight: None,
            next_transaction: 1,
            last_probe_answer: None,
            sync_pending: false,
            restore_ppm: trusted,
            stats: Stats::default(),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.discipline.steps()
    }

    /// Whether probes answer often enough that host samples only inform.
    fn probes_lead(&self, now: Instant) -> bool {
        match (self.probe_interval, self.last_probe_answer) {
            (Some(interval), Some(at)) => {
                now.saturating_duration_since(at) < interval * PROBE_STALE_INTERVALS
            }
            _ => false,
        }
    }

    fn handle_sample(&mut self, flags: TimeSyncFlags, parent_time: u64, now: Instant) {
        let t = self.clock.now_ns();
        let mut offset = (ticks_to_unix_nanos(parent_time) - t) as f64 / NANOS;
        // The sample is short by its one-way delay; half the probes' smallest round trip estimates it.
        if let Some(min) = self.probes.min_delay() {
            offset += min / 2.0;
        }
        self.stats.last_sample = Some(now);
        self.stats.last_offset = Some(offset);
        let measurement = Measurement {
            at: now,
            guest_ns: t,
            offset,
            delay: None,
        };
        if flags.is_sync() {
            self.stats.syncs += 1;
            if self.sync(offset, now) {
                return;
            }
        } else {
            self.stats.samples += 1;
            debug!("timesync: sample offset {}", format_offset(offset));
        }
        if self.probes_lead(now) {
            return;
        }
        let verdict = self
            .samples
            .add(measurement, &self.discipline.correction_at(now));
        self.filtered(Kind::Samples, verdict, now);
    }

    /// A SYNC: the host asks for the clock to be set (boot, restore, resume). True when it needs nothing more:
    /// it stepped the clock, or its step waits for a probe; otherwise the SYNC counts as a sample.
    fn sync(&mut self, offset: f64, now: Instant) -> bool {
        info!(
            "timesync: SYNC from the host, offset {}",
            format_offset(offset)
        );
        if self.mode != Mode::Adjust {
            return false;
        }
        // Probes answer on a 4.1 link: the next answer measures what the SYNC's delay hid.
        let probing = self.probe_link.is_some();
        self.sync_pending = probing;
        if offset.abs() <= self.discipline.step_threshold() {
            if probing {
                debug!("timesync: the SYNC's step, if any, waits for the next probe, which measures the delay");
            }
            return probing;
        }
        self.probes.clear();
        self.samples.clear();
        let result = self.discipline.step(&mut *self.clock, offset, now);
        self.applied(result, "SYNC");
        true
    }

    /// Acts on the filter after a measurement of `kind` was offered to it.
    fn filtered(&mut self, kind: Kind, verdict: Verdict, now: Instant) {
        if let Verdict::Outlier { excess, limit } = verdict {
            self.stats.outliers += 1;
            let what = match kind {
                Kind::Probes => "probe (delay",
                Kind::Samples => "sample (below the best by",
            };
            debug!(
                "timesync: discarded an outlier {what} {}, limit {})",
                format_delay(excess),
                format_delay(limit)
            );
            return;
        }
        let filter = match kind {
            Kind::Probes => &self.probes,
            Kind::Samples => &self.samples,
        };
        let correction = self.discipline.correction_at(now);
        let (Some(best), Some(latest)) = (filter.best(&correction), filter.latest()) else {
            return;
        };
        let results = filter.len();
        self.maybe_summarise(best.offset, now);
        match self.mode {
            Mode::Monitor => {}
            Mode::Chrony => {
                if best.measurement == latest {
                    if let Some(sink) = &mut self.sink {
                        sink.send(latest.guest_ns, latest.offset);
                    }
                }
            }
            Mode::Adjust if results < MIN_RESULTS_TO_ACT => {
                debug!("timesync: a first result after a connect does not move the clock; waiting for another");
            }
            Mode::Adjust => {
                let result = self.discipline.update(&mut *self.clock, best.offset, now);
                self.applied(
                    result,
                    if kind == Kind::Probes {
                        "probe"
                    } else {
                        "sample"
                    },
                );
            }
        }
    }

    /// Logs what the discipline did, and falls back to monitoring when the clock may not be changed.
    fn applied(&mut self, result: Result<Outcome, ClockError>, source: &str) {
        match result {
            Ok(Outcome::Stepped { by }) => {
                info!(
                    "timesync: stepped the clock by {} ({source}; step {})",
                    format_offset(by),
                    self.discipline.steps()
                );
            }
            Ok(Outcome::Steered { ppm }) => debug!("timesync: frequency {ppm:+.3} ppm"),
            Err(error @ ClockError::NotPermitted) => {
                error!(
                    "timesync: cannot adjust the clock: {error}; measuring only (mode monitor) from now on"
                );
                self.mode = Mode::Monitor;
            }
            Err(error) => warn!("timesync: cannot adjust the clock: {error}"),
        }
    }

    fn maybe_summarise(&mut self, offset: f64, now: Instant) {
        if self
            .stats
            .last_summary
            .is_some_and(|at| now.saturating_duration_since(at) < SUMMARY_EVERY)
        {
            return;
        }
        self.stats.last_summary = Some(now);
        let delay = self
            .probes
            .min_delay()
            .map_or("unmeasured".to_string(), format_delay);
        let sample_age = self.stats.last_sample.map_or("none".to_string(), |at| {
            format!(
                "{:.1} s ago",
                now.saturating_duration_since(at).as_secs_f64()
            )
        });
        info!(
            "timesync: offset {}, min delay {delay}, last host sample {sample_age}, {} samples, {} SYNCs, {} \
             probes answered ({} lost, {} outliers), frequency {:+.3} ppm, {} steps (mode {})",
            format_offset(offset),
            self.stats.samples,
            self.stats.syncs,
            self.stats.probes_answered,
            self.stats.probes_lost,
            self.stats.outliers,
            self.discipline.command_ppm(),
            self.discipline.steps(),
            self.mode.name()
        );
    }

    fn probe(&mut self, link: LinkId) -> Message {
        let transaction_id = self.next_transaction;
        self.next_transaction = self.next_transaction.checked_add(1).unwrap_or(1);
        let t1 = self.clock.now_ns();
        self.in_flight = Some(InFlight {
            link,
            transaction_id,
            t1,
            steps: self.discipline.steps(),
        });
        self.stats.probes_sent += 1;
        let body = TimeSyncData {
            child_time: unix_nanos_to_ticks(t1),
            flags: TimeSyncFlags::PROBE,
            ..TimeSyncData::default()
        };
        // The runtime puts the link's negotiated framework and message versions in the header.
        Message::request(
            MessageType::TIMESYNC,
            IcVersion::new(3, 0),
            PROBE_VERSION,
            transaction_id,
            body.to_body(),
        )
    }

    fn probe_answered(&mut self, sent: InFlight, answer: &TimeSyncData, now: Instant) {
        let t4 = self.clock.now_ns();
        if sent.steps != self.discipline.steps() {
            debug!("timesync: probe answer spoilt by a step in between; ignored");
            return;
        }
        let held = i128::from(answer.round_trip_time.min(i64::MAX as u64)) * 100;
        let delay_ns = (t4 - sent.t1 - held).max(0);
        let offset_ns = ticks_to_unix_nanos(answer.parent_time) + delay_ns / 2 - t4;
        let (offset, delay) = (offset_ns as f64 / NANOS, delay_ns as f64 / NANOS);
        self.stats.probes_answered += 1;
        self.stats.last_offset = Some(offset);
        self.stats.last_delay = Some(delay);
        self.last_probe_answer = Some(now);
        debug!(
            "timesync: probe offset {} delay {}",
            format_offset(offset),
            format_delay(delay)
        );
        // A pending SYNC is settled by the first probe precise enough to act on: one off by more than
        // SYNC_MIN_STEP with at most SYNC_STEP_PRECISION of doubt steps, one off by less whatever its delay
        // hides settles it with no step; a slow one (the first after a connect often is) waits for the next.
        if self.sync_pending && self.mode == Mode::Adjust {
            if offset.abs() > SYNC_MIN_STEP && delay / 2.0 <= SYNC_STEP_PRECISION {
                self.sync_pending = false;
                self.probes.clear();
                self.samples.clear();
                let result = self.discipline.step(&mut *self.clock, offset, now);
                self.applied(result, "SYNC, its delay measured by a probe");
                return;
            }
            if offset.abs() + delay / 2.0 <= SYNC_MIN_STEP {
                self.sync_pending = false;
            }
        }
        let measurement = Measurement {
            at: now,
            guest_ns: t4,
            offset,
            delay: Some(delay),
        };
        let verdict = self
            .probes
            .add(measurement, &self.discipline.correction_at(now));
        self.filtered(Kind::Probes, verdict, now);
    }
}

impl Drop for TimeSyncLogic {
    /// Puts back the frequency correction found at start, so that a stopped agent leaves no slew running.
    fn drop(&mut self) {
        let Some(ppm) = self.restore_ppm else {
            return;
        };
        if self.mode != Mode::Adjust {
            return; // it fell back to monitoring: it could not change the clock
        }
        match self.clock.set_frequency_ppm(ppm) {
            Ok(()) => info!(
                "timesync: stopping; the clock's frequency correction is back at {ppm:+.3} ppm, as found at \
                 start (it was {:+.3} ppm)",
                self.discipline.command_ppm()
            ),
            Err(error) => warn!(
                "timesync: stopping; cannot put the frequency correction back at {ppm:+.3} ppm: {error}"
            ),
        }
    }
}

/// The sample in a host request: its flags and parenttime, from the body the version calls for.
fn parse_sample(body: &[u8], version: IcVersion) -> Result<(TimeSyncFlags, u64), Refusal> {
    let invalid = Refusal::invalid;
    if version >= IcVersion::new(4, 0) {
        let sample = TimeSyncRef::parse(body).map_err(invalid)?;
        Ok((sample.flags, sample.parent_time))
    } else {
        let sample = TimeSyncData::parse(body).map_err(invalid)?;
        Ok((sample.flags, sample.parent_time))
    }
}

impl Logic for TimeSyncLogic {
    fn request(
        &mut self,
        _link: LinkId,
        request: &MessageRef<'_>,
        version: IcVersion,
        now: Instant,
        reply: &mut ReplyWriter<'_>,
    ) -> Result<Status, Refusal> {
        let (flags, parent_time) = parse_sample(request.body, version)?;
        if flags.reserved() != 0 {
            debug!(
                "timesync: host sample flags {:#04x} carry reserved bits {:#04x}; they are ignored",
                flags.0,
                flags.reserved()
            );
        }
        // SYNC and SAMPLE are bits (Linux's adj_guesttime tests SYNC first): a host that sets both asks for
        // a SYNC, and one that sets reserved bits beside either still gets it acted on.
        if flags.is_sync() || flags.is_sample() {
            self.handle_sample(flags, parent_time, now);
        } else {
            debug!(
                "timesync: host request with flags {:#04x} (neither SYNC nor SAMPLE) ignored",
                flags.0
            );
        }
        reply.extend_from_slice(request.body);
        Ok(Status::OK)
    }

    fn response(&mut self, link: LinkId, response: &MessageRef<'_>, now: Instant) -> bool {
        let Some(sent) = self.in_flight else {
            return false;
        };
        if sent.link != link || sent.transaction_id != response.header.transaction_id {
            return false;
        }
        self.in_flight = None;
        if response.header.status != Status::OK {
            warn!(
                "timesync: the host refused a probe with {}; does it speak message version 4.1?",
                response.header.status
            );
            return true;
        }
        match TimeSyncData::parse(response.body) {
            Ok(answer) => self.probe_answered(sent, &answer, now),
            Err(error) => warn!("timesync: malformed probe answer: {error}"),
        }
        true
    }

    fn negotiated(&mut self, link: LinkId, version: IcVersion, now: Instant) {
        if version == PROBE_VERSION && self.probe_interval.is_some() {
            self.probe_link = Some(link);
            self.next_probe = Some(now);
            self.probes.clear();
        } else if self.probe_link == Some(link) {
            self.probe_link = None;
            self.next_probe = None;
        }
    }

    fn closed(&mut self, link: LinkId) {
        if self.probe_link == Some(link) {
            self.probe_link = None;
            self.next_probe = None;
            self.sync_pending = false;
        }
        if self.in_flight.is_some_and(|sent| sent.link == link) {
            self.in_flight = None;
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.probe_link.and(self.next_probe)
    }

    fn on_timer(&mut self, now: Instant, out: &mut Vec<(LinkId, Message)>) {
        let (Some(link), Some(interval)) = (self.probe_link, self.probe_interval) else {
            return;
        };
        if self.in_flight.take().is_some() {
            self.stats.probes_lost += 1;
            debug!(
                "timesync: a probe went unanswered for {} ms",
                interval.as_millis()
            );
        }
        out.push((link, self.probe(link)));
        self.next_probe = Some(now + interval);
    }

    fn status(&self, now: Instant) -> Vec<StatusLine> {
        let age = |at: Option<Instant>| match at {
            Some(at) => format!(
                "{:.1} s ago",
                now.saturating_duration_since(at).as_secs_f64()
            ),
            None => "never".to_string(),
        };
        vec![
            ("mode", self.mode.name().to_string()),
            (
                "last offset",
                self.stats
                    .last_offset
                    .map_or("none".to_string(), format_offset),
            ),
            (
                "last delay",
                self.stats
                    .last_delay
                    .map_or("none".to_string(), format_delay),
            ),
            ("last sample", age(self.stats.last_sample)),
            (
                "probes",
                format!(
                    "{} sent, {} answered, {} outliers",
                    self.stats.probes_sent, self.stats.probes_answered, self.stats.outliers
                ),
            ),
            (
                "frequency",
                format!("{:+.3} ppm", self.discipline.command_ppm()),
            ),
            ("steps", self.discipline.steps().to_string()),
        ]
    }
}

#[cfg(test)]
mod tests;
