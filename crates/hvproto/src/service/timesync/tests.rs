//! The time-sync service against a simulated world: true time, a guest clock with its own frequency error
//! (steps and frequency corrections applied as the kernel applies them), a host built on [`HostChannel`]
//! sending SYNC and SAMPLE, answering probes, and random one-way delays each way. No real clock is read or
//! changed: the only clock is a [`SimClock`], and `Instant`s are a fixed base plus simulated time.
//!
//! `cargo test --lib service::timesync -- --nocapture` prints the error figures of each scenario.

use crate::service::handle_to_messages;
use crate::service::logic::answer_of;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::*;
use crate::clock::sim::SimClock;
use crate::service::host::{HostChannel, HostEvent};
use crate::service::{Channel, Event, ServiceKind};
use crate::wire::IcFlags;

const MS: i128 = 1_000_000;
const SECOND: i128 = 1_000 * MS;
const LINK: LinkId = 1;
/// True time when a simulation starts: 2023-11-14.
const EPOCH_NS: i128 = 1_700_000_000 * SECOND;

/// splitmix64: a small deterministic generator, so every run sees the same delays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [low, high).
    fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Which way a message travels.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    ToHost,
    ToGuest,
}

enum Happening {
    /// The host sends a time sample; a periodic one schedules the next.
    HostSample(TimeSyncFlags, bool),
    Deliver(Way, Message),
    /// Record the guest clock's error.
    Measure,
}

/// A chrony sink that keeps what it was sent.
#[derive(Clone, Default)]
struct Recorder(Rc<RefCell<Vec<(i128, f64)>>>);

impl OffsetSink for Recorder {
    fn send(&mut self, at_ns: i128, offset: f64) {
        self.0.borrow_mut().push((at_ns, offset));
    }
}

/// How a simulation is set up.
struct Setup {
    mode: Mode,
    /// Guest clock − true time at the start, seconds.
    error: f64,
    drift_ppm: f64,
    probe_interval: Duration,
    /// The host's message versions, highest first (what it offers).
    version: IcVersion,
    /// One-way delays, uniform in this range (µs).
    delay_us: (f64, f64),
    sync_first: bool,
    sample_every: Duration,
    seed: u64,
    /// Extra delay (ms) of the first host → guest message: a SYNC that arrives late after a (re)connect.
    first_to_guest_ms: f64,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            mode: Mode::Adjust,
            error: 0.0,
            drift_ppm: 50.0,
            probe_interval: Duration::from_secs(2),
            version: PROBE_VERSION,
            delay_us: (20.0, 200.0),
            sync_first: true,
            sample_every: Duration::from_secs(5),
            seed: 1,
            first_to_guest_ms: 0.0,
        }
    }
}

/// The simulated world.
struct Sim {
    clock: SimClock,
    guest: Channel,
    logic: TimeSyncLogic,
    host: HostChannel,
    sink: Recorder,
    base: Instant,
    /// Simulated time since the start, ns (true time − EPOCH_NS).
    t: i128,
    queue: BTreeMap<(i128, u64), Happening>,
    sequence: u64,
    rng: Rng,
    delay_us: (f64, f64),
    /// While `t` is in this range, guest → host delays are 2–20 ms (a busy host).
    burst: Option<(i128, i128)>,
    sample_every: Duration,
    /// (simulated seconds, guest − true seconds), every 100 ms.
    errors: Vec<(f64, f64)>,
    samples_answered: u64,
    /// The latest arrival time scheduled each way (to host, to guest).
    last_arrival: [i128; 2],
    /// Added once, to the first message towards the guest (ns).
    first_to_guest_extra: i128,
}

impl Sim {
    fn new(setup: Setup) -> Sim {
        let clock = SimClock::new(EPOCH_NS, setup.error, setup.drift_ppm);
        let sink = Recorder::default();
        let logic = TimeSyncLogic::new(
            setup.mode,
            Duration::from_secs(1),
            setup.probe_interval,
            Box::new(clock.clone()),
            Some(Box::new(sink.clone())),
        );
        let mut sim = Sim {
            clock,
            guest: Channel::new(ServiceKind::TimeSync, LINK),
            logic,
            host: HostChannel::new(ServiceKind::TimeSync),
            sink,
            base: Instant::now(),
            t: 0,
            queue: BTreeMap::new(),
            sequence: 0,
            rng: Rng(setup.seed),
            delay_us: setup.delay_us,
            burst: None,
            sample_every: setup.sample_every,
            errors: Vec::new(),
            samples_answered: 0,
            last_arrival: [0; 2],
            first_to_guest_extra: (setup.first_to_guest_ms * 1e6) as i128,
        };
        sim.negotiate(setup.version);
        // A host that sends no SYNC sends its first SAMPLE after one interval, so a probe comes first.
        let first = if setup.sync_first {
            (0, TimeSyncFlags::SYNC)
        } else {
            (setup.sample_every.as_nanos() as i128, TimeSyncFlags::SAMPLE)
        };
        sim.at(first.0, Happening::HostSample(first.1, true));
        sim.at(0, Happening::Measure);
        sim
    }

    /// Negotiates as hvhost does, offering versions up to `highest`.
    fn negotiate(&mut self, highest: IcVersion) {
        let mut offer = self.host.offer();
        let mut parsed = crate::wire::negotiate::Negotiate::parse(&offer.body).unwrap();
        parsed
            .message_versions
            .retain(|version| *version <= highest);
        offer.body = parsed.to_body();
        let mut replies = Vec::new();
        let now = self.now();
        let event = handle_to_messages(&mut self.guest, &offer, &mut self.logic, now, &mut replies);
        assert!(matches!(event, Event::Negotiated { message, .. } if message == highest));
        let event = self.host.handle(&replies[0], now).unwrap();
        assert!(matches!(event, HostEvent::Negotiated { .. }));
    }

    fn now(&self) -> Instant {
        self.base + Duration::from_nanos(self.t as u64)
    }

    fn at(&mut self, t: i128, happening: Happening) {
        self.sequence += 1;
        self.queue.insert((t, self.sequence), happening);
    }

    fn delay(&mut self, way: Way) -> i128 {
        let busy = self
            .burst
            .is_some_and(|(from, to)| (from..to).contains(&self.t));
        let (low, high) = if busy && way == Way::ToHost {
            (2_000.0, 20_000.0)
        } else {
            self.delay_us
        };
        (self.rng.uniform(low, high) * 1e3) as i128
    }

    /// Sends `message` `after` ns from now with a random delay; a stream delivers in order, so it never
    /// arrives before what was sent earlier the same way.
    fn send(&mut self, way: Way, after: i128, message: Message) {
        let index = usize::from(way == Way::ToGuest);
        let mut extra = 0;
        if way == Way::ToGuest {
            extra = std::mem::take(&mut self.first_to_guest_extra);
        }
        let at = (self.t + after + extra + self.delay(way)).max(self.last_arrival[index]);
        self.last_arrival[index] = at;
        self.at(at, Happening::Deliver(way, message));
    }

    fn host_ticks(&self) -> u64 {
        crate::wire::timesync::unix_nanos_to_ticks(self.clock.true_ns())
    }

    /// Runs until simulated time `end` (ns since the start).
    fn run_until(&mut self, end: i128) {
        loop {
            let timer = self
                .logic
                .deadline()
                .map(|at| at.saturating_duration_since(self.base).as_nanos() as i128);
            let next = self.queue.keys().next().map(|key| key.0);
            let when = match (timer, next) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(end),
            };
            if when > end {
                self.clock.advance(end - self.t);
                self.t = end;
                return;
            }
            self.clock.advance(when.max(self.t) - self.t);
            self.t = when.max(self.t);
            if timer == Some(when) {
                self.fire_timer();
            } else if let Some((_, happening)) = self.queue.pop_first() {
                self.happen(happening);
            }
        }
    }

    fn fire_timer(&mut self) {
        let mut out = Vec::new();
        let now = self.now();
        self.logic.on_timer(now, &mut out);
        for (link, probe) in out {
            assert_eq!(link, LINK);
            self.send(Way::ToHost, 0, probe);
        }
    }

    fn happen(&mut self, happening: Happening) {
        let now = self.now();
        match happening {
            Happening::Measure => {
                self.errors.push((self.t as f64 / 1e9, self.clock.error()));
                self.at(self.t + 100 * MS, Happening::Measure);
            }
            Happening::HostSample(flags, periodic) => {
                let sample = self.host.time_sample(flags, self.host_ticks(), now);
                self.send(Way::ToGuest, 0, sample);
                if periodic {
                    let next = self.t + self.sample_every.as_nanos() as i128;
                    self.at(next, Happening::HostSample(TimeSyncFlags::SAMPLE, true));
                }
            }
            Happening::Deliver(Way::ToGuest, message) => {
                let mut replies = Vec::new();
                let event = handle_to_messages(
                    &mut self.guest,
                    &message,
                    &mut self.logic,
                    now,
                    &mut replies,
                );
                assert!(
                    matches!(event, Event::Served { .. } | Event::ResponseTaken { .. }),
                    "{event:?}"
                );
                for reply in replies {
                    self.send(Way::ToHost, 0, reply);
                }
            }
            Happening::Deliver(Way::ToHost, message) => {
                if message.header.flags.is_response() {
                    let event = self.host.handle(&message, now).unwrap();
                    assert!(matches!(event, HostEvent::TimeSampleAnswered { .. }));
                    self.samples_answered += 1;
                    return;
                }
                let held = (self.rng.uniform(1.0, 10.0) * 1e3) as i128;
                let parent =
                    crate::wire::timesync::unix_nanos_to_ticks(self.clock.true_ns() + held);
                let answer = self
                    .host
                    .answer_probe(&message, parent, (held / 100) as u64)
                    .unwrap();
                self.send(Way::ToGuest, held, answer);
            }
        }
    }

    /// |error| figures (µs) over simulated seconds [from, to): p50, p99, max.
    fn figures(&self, from: f64, to: f64) -> (f64, f64, f64) {
        let mut errors: Vec<f64> = self
            .errors
            .iter()
            .filter(|(t, _)| (from..to).contains(t))
            .map(|(_, error)| error.abs() * 1e6)
            .collect();
        assert!(!errors.is_empty());
        errors.sort_by(f64::total_cmp);
        let rank =
            |q: f64| errors[((q * errors.len() as f64).ceil() as usize).clamp(1, errors.len()) - 1];
        (rank(0.5), rank(0.99), rank(1.0))
    }

    fn report(&self, what: &str, from: f64, to: f64) -> (f64, f64, f64) {
        let (p50, p99, max) = self.figures(from, to);
        println!(
            "timesync sim {what}: |error| over {from:.0}..{to:.0} s: p50 {p50:.1} us, p99 {p99:.1} us, \
             max {max:.1} us ({} steps, frequency {:+.3} ppm)",
            self.logic.steps(),
            self.clock.commanded_ppm()
        );
        (p50, p99, max)
    }
}

const MINUTE: i128 = 60 * SECOND;

#[test]
fn an_hour_of_initial_error_is_corrected_by_one_step() {
    for sync_first in [true, false] {
        let mut sim = Sim::new(Setup {
            error: -3600.0,
            sync_first,
            drift_ppm: 10.0,
            ..Setup::default()
        });
        sim.run_until(2 * MINUTE);
        let steps = sim.clock.steps();
        assert_eq!(steps.len(), 1, "sync_first {sync_first}: steps {steps:?}");
        assert!((steps[0] - 3600.0).abs() < 1e-3, "{steps:?}");
        let first = if sync_first { "a SYNC" } else { "a probe" };
        let (_, _, max) = sim.report(
            &format!("3600 s initial error, stepped on {first}"),
            60.0,
            120.0,
        );
        assert!(max < 200.0, "error {max} us a minute after the step");
    }
}

#[test]
fn a_sync_after_a_resume_steps_at_once() {
    let mut sim = Sim::new(Setup::default());
    sim.run_until(5 * MINUTE);
    assert_eq!(
        sim.clock.steps().len(),
        0,
        "no step for a start within 10 ms"
    );
    // The guest slept 30 s: its clock stood still while true time ran on. The host sends a SYNC at once.
    sim.clock.jump(-30.0);
    let resumed = sim.t;
    sim.at(resumed, Happening::HostSample(TimeSyncFlags::SYNC, false));
    sim.run_until(resumed + MS);
    let steps = sim.clock.steps();
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert!((steps[0] - 30.0).abs() < 1e-3, "{steps:?}");
    assert!(sim.clock.error().abs() < 300e-6, "{}", sim.clock.error());
    sim.run_until(resumed + 2 * MINUTE);
    assert_eq!(sim.clock.steps().len(), 1);
    let (_, p99, _) = sim.report(
        "resume, SYNC",
        (resumed / SECOND + 60) as f64,
        (resumed / SECOND + 120) as f64,
    );
    assert!(p99 < 50.0, "{p99} us after the resume");
}

#[test]
fn a_sync_bit_beside_sample_or_reserved_bits_still_steps() {
    // Linux's adj_guesttime and openvmm's TimesyncFlags treat SYNC as a bit: 0x03 and 0x81 are SYNCs.
    // A 4.0 host as openvmm is (no probes); the SYNC comes between two periodic samples, so only it can step.
    for flags in [0x03u8, 0x81, 0xFF] {
        let mut sim = Sim::new(Setup {
            version: IcVersion::new(4, 0),
            drift_ppm: 0.0,
            ..Setup::default()
        });
        sim.run_until(MINUTE + 2 * SECOND);
        sim.clock.jump(-30.0);
        let at = sim.t;
        sim.at(at, Happening::HostSample(TimeSyncFlags(flags), false));
        sim.run_until(at + MS);
        let steps = sim.clock.steps();
        assert_eq!(steps.len(), 1, "flags {flags:#04x}: {steps:?}");
        assert!(
            (steps[0] - 30.0).abs() < 1e-3,
            "flags {flags:#04x}: {steps:?}"
        );
    }
}

/// The largest |frequency correction| (ppm) the guest clock was set to over the run.
fn peak_ppm(sim: &Sim) -> f64 {
    sim.clock
        .frequency_history()
        .iter()
        .fold(0.0f64, |peak, ppm| peak.max(ppm.abs()))
}

#[test]
fn a_restart_with_the_clock_right_never_makes_it_worse_whatever_the_sync_delay() {
    // An agent restarted with the guest clock 0.4-15 ms from the host's; the SYNC after connecting arrives
    // 40-150 ms late (a slow emulated transport), later messages in 20-200 us. Probing (4.1) and sample-only
    // (4.0, openvmm) hosts alike: the error never grows by more than 1 ms, and a step is taken only where a
    // probe measured an error beyond 10 ms.
    for version in [PROBE_VERSION, IcVersion::new(4, 0)] {
        for (error, late_ms) in [
            (0.4e-3, 40.0),
            (-0.4e-3, 150.0),
            (15e-3, 150.0),
            (-15e-3, 40.0),
            (0.0, 100.0),
        ] {
            let mut sim = Sim::new(Setup {
                error,
                drift_ppm: 0.0,
                version,
                first_to_guest_ms: late_ms,
                ..Setup::default()
            });
            sim.run_until(3 * MINUTE);
            let what = format!(
                "{version} host, clock {:+.1} ms off, SYNC {late_ms} ms late",
                error * 1e3
            );
            let (_, _, max) = sim.report(&what, 0.0, 180.0);
            assert!(
                max <= error.abs() * 1e6 + 1000.0,
                "{what}: error reached {max} us (steps {:?})",
                sim.clock.steps()
            );
            let steps = sim.clock.steps();
            if version == PROBE_VERSION && error.abs() > SYNC_MIN_STEP {
                assert_eq!(steps.len(), 1, "{what}: {steps:?}");
                assert!((steps[0] + error).abs() < 1e-3, "{what}: {steps:?}");
            } else {
                assert!(steps.is_empty(), "{what}: {steps:?}");
            }
            let (_, _, late_max) = sim.report(&what, 150.0, 180.0);
            assert!(
                late_max < 1000.0,
                "{what}: still {late_max} us off after 150 s"
            );
            if error.abs() < 1e-3 {
                assert!(
                    peak_ppm(&sim) < 400.0,
                    "{what}: frequency reached {} ppm",
                    peak_ppm(&sim)
                );
            }
        }
    }
}

#[test]
fn a_late_sync_far_off_steps_and_a_probe_then_takes_out_the_delay() {
    // A resume 30 s behind, with the SYNC 120 ms late: the SYNC steps at once (it cannot know its delay),
    // and the first probe, which measures the delay, steps the 120 ms it left, so nothing is slewed for
    // minutes at the ±500 ppm limit.
    let mut sim = Sim::new(Setup {
        error: -30.0,
        drift_ppm: 0.0,
        first_to_guest_ms: 120.0,
        ..Setup::default()
    });
    sim.run_until(10 * SECOND);
    let steps = sim.clock.steps();
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert!((steps[0] - 29.88).abs() < 2e-3, "{steps:?}");
    assert!((steps[1] - 0.12).abs() < 2e-3, "{steps:?}");
    let (_, _, max) = sim.report("30 s behind, SYNC 120 ms late", 5.0, 10.0);
    assert!(max < 500.0, "{max} us");
    assert!(
        peak_ppm(&sim) < 400.0,
        "frequency reached {} ppm",
        peak_ppm(&sim)
    );
}

#[test]
fn a_sync_a_few_milliseconds_off_steers_instead_of_stepping() {
    let mut sim = Sim::new(Setup::default());
    sim.run_until(5 * MINUTE);
    // The guest clock gains 4 ms (as after a slow host, or a probe that stepped just before): a SYNC finds it.
    sim.clock.jump(4e-3);
    let at = sim.t;
    sim.at(at, Happening::HostSample(TimeSyncFlags::SYNC, false));
    sim.run_until(at + 3 * MINUTE);
    assert!(sim.clock.steps().is_empty(), "{:?}", sim.clock.steps());
    let (_, _, max) = sim.report(
        "4 ms off at a SYNC, steered",
        (at / SECOND + 120) as f64,
        (at / SECOND + 180) as f64,
    );
    assert!(max < 50.0, "still {max} us off 2 minutes after a 4 ms SYNC");
}

#[test]
fn probes_hold_a_50_ppm_clock_within_50_us_at_the_99th_percentile() {
    for seed in 1..=3 {
        let mut sim = Sim::new(Setup {
            error: 0.3,
            seed,
            ..Setup::default()
        });
        sim.run_until(30 * MINUTE);
        let what = format!("probes every 2 s, 50 ppm, delays 20-200 us (seed {seed})");
        let (_, p99, _) = sim.report(&what, 600.0, 1800.0);
        assert!(p99 < 50.0, "{what}: p99 {p99} us");
        assert_eq!(sim.clock.steps().len(), 1, "only the SYNC stepped");
        assert!(sim.samples_answered > 300, "{}", sim.samples_answered);
    }
}

#[test]
fn samples_alone_keep_the_clock_within_the_delay_bound() {
    for (what, setup) in [
        (
            "samples only (version 4.0)",
            Setup {
                version: IcVersion::new(4, 0),
                ..Setup::default()
            },
        ),
        (
            "samples only (probe_interval 0)",
            Setup {
                probe_interval: Duration::ZERO,
                seed: 7,
                ..Setup::default()
            },
        ),
    ] {
        let mut sim = Sim::new(setup);
        sim.run_until(30 * MINUTE);
        let (_, _, max) = sim.report(what, 600.0, 1800.0);
        assert!(
            max <= 200.0,
            "{what}: max {max} us beyond the 200 us delay bound"
        );
    }
}

#[test]
fn a_burst_of_outlier_delays_does_not_move_the_clock() {
    let mut sim = Sim::new(Setup::default());
    sim.run_until(15 * MINUTE);
    sim.report("before the burst", 600.0, 900.0);
    // For 24 s (12 probes, more than the window holds) the host is slow to hear the guest: 2-20 ms.
    sim.burst = Some((15 * MINUTE, 15 * MINUTE + 24 * SECOND));
    sim.run_until(17 * MINUTE);
    let (_, _, max) = sim.report("burst of 2-20 ms delays for 24 s, and after", 900.0, 1020.0);
    assert!(max < 50.0, "max {max} us during and after the burst");
    assert_eq!(sim.clock.steps().len(), 0);
    assert!(
        sim.logic.stats.outliers >= 10,
        "{}",
        sim.logic.stats.outliers
    );
}

#[test]
fn monitor_mode_measures_and_never_changes_the_clock() {
    let mut sim = Sim::new(Setup {
        mode: Mode::Monitor,
        error: 2.0,
        ..Setup::default()
    });
    sim.run_until(MINUTE);
    assert!(sim.clock.steps().is_empty());
    assert_eq!(sim.clock.commanded_ppm(), 0.0);
    let offset = sim.logic.stats.last_offset.unwrap();
    assert!((offset + 2.0).abs() < 0.01, "{offset}");
}

#[test]
fn chrony_mode_sends_fresh_best_offsets_and_changes_nothing() {
    let mut sim = Sim::new(Setup {
        mode: Mode::Chrony,
        error: -2.5,
        drift_ppm: 0.0,
        ..Setup::default()
    });
    sim.run_until(MINUTE);
    assert!(sim.clock.steps().is_empty());
    assert_eq!(sim.clock.commanded_ppm(), 0.0);
    let sent = sim.sink.0.borrow().clone();
    assert!(sent.len() >= 3, "{sent:?}");
    for (at_ns, offset) in sent {
        assert!((offset - 2.5).abs() < 200e-6, "{offset}");
        assert!(at_ns > EPOCH_NS - 3 * SECOND);
    }
}

#[test]
fn without_cap_sys_time_adjust_falls_back_to_monitoring() {
    let mut sim = Sim::new(Setup {
        error: 5.0,
        ..Setup::default()
    });
    sim.clock.deny_changes();
    sim.run_until(10 * SECOND);
    assert_eq!(sim.logic.mode(), Mode::Monitor);
    assert_eq!(sim.clock.error(), 5.0 + 50e-6 * 10.0);
}

#[test]
fn probes_are_4_1_requests_with_their_own_ids_one_per_interval() {
    let clock = SimClock::new(EPOCH_NS, 0.0, 0.0);
    let interval = Duration::from_millis(1500);
    let mut logic = TimeSyncLogic::new(
        Mode::Monitor,
        Duration::from_secs(1),
        interval,
        Box::new(clock.clone()),
        None,
    );
    let start = Instant::now();
    assert_eq!(logic.deadline(), None, "no link, no timer");
    logic.negotiated(LINK, IcVersion::new(4, 0), start);
    assert_eq!(logic.deadline(), None, "4.0: no probes");
    logic.negotiated(LINK, PROBE_VERSION, start);
    assert_eq!(logic.deadline(), Some(start));
    let mut out = Vec::new();
    logic.on_timer(start, &mut out);
    assert_eq!(logic.deadline(), Some(start + interval));
    let (link, probe) = out.pop().unwrap();
    assert_eq!(link, LINK);
    assert_eq!(probe.header.msgtype, MessageType::TIMESYNC);
    assert_eq!(probe.header.message_version, PROBE_VERSION);
    assert_eq!(
        probe.header.flags,
        IcFlags(IcFlags::TRANSACTION | IcFlags::REQUEST)
    );
    assert_eq!(probe.body.len(), TimeSyncData::MIN_LEN);
    let body = TimeSyncData::parse(&probe.body).unwrap();
    assert_eq!(body.flags, TimeSyncFlags::PROBE);
    assert_eq!(body.child_time, unix_nanos_to_ticks(EPOCH_NS));
    assert_eq!((body.parent_time, body.round_trip_time), (0, 0));
    // An answer with another id is not ours; the right one is taken once.
    let mut answer = probe.reply(Status::OK, probe.body.clone());
    answer.header.transaction_id = probe.header.transaction_id.wrapping_add(1);
    assert!(!logic.response(LINK, &answer.view(), start));
    answer.header.transaction_id = probe.header.transaction_id;
    assert!(logic.response(LINK, &answer.view(), start));
    assert!(!logic.response(LINK, &answer.view(), start));
    logic.on_timer(start + interval, &mut out);
    assert_ne!(out[0].1.header.transaction_id, probe.header.transaction_id);
    logic.closed(LINK);
    assert_eq!(logic.deadline(), None, "link gone: no timer");
    let quiet = TimeSyncLogic::new(
        Mode::Monitor,
        Duration::from_secs(1),
        Duration::ZERO,
        Box::new(clock),
        None,
    );
    let mut quiet = quiet;
    quiet.negotiated(LINK, PROBE_VERSION, start);
    assert_eq!(quiet.deadline(), None, "probe_interval 0: no timer");
}

#[test]
fn host_samples_of_every_version_and_length_are_answered_with_their_body() {
    let clock = SimClock::new(EPOCH_NS, 0.0, 0.0);
    let mut logic = TimeSyncLogic::new(
        Mode::Monitor,
        Duration::from_secs(1),
        Duration::ZERO,
        Box::new(clock),
        None,
    );
    let parent = unix_nanos_to_ticks(EPOCH_NS + SECOND);
    let now = Instant::now();
    for (version, body) in [
        (
            IcVersion::new(4, 0),
            TimeSyncRef {
                parent_time: parent,
                flags: TimeSyncFlags::SAMPLE,
                rest: vec![0; 5],
                ..Default::default()
            }
            .to_body(),
        ),
        (
            IcVersion::new(4, 1),
            TimeSyncRef {
                parent_time: parent,
                flags: TimeSyncFlags::SAMPLE,
                rest: vec![0; 3],
                ..Default::default()
            }
            .to_body(),
        ),
        (
            IcVersion::new(3, 0),
            TimeSyncData {
                parent_time: parent,
                flags: TimeSyncFlags::SAMPLE,
                rest: vec![0; 3],
                ..Default::default()
            }
            .to_body(),
        ),
        (
            IcVersion::new(1, 0),
            TimeSyncData {
                parent_time: parent,
                flags: TimeSyncFlags::SAMPLE,
                ..Default::default()
            }
            .to_body(),
        ),
    ] {
        let request = Message::request(
            MessageType::TIMESYNC,
            IcVersion::new(3, 0),
            version,
            9,
            body.clone(),
        );
        let reply = answer_of(&mut logic, LINK, &request, version, now).unwrap();
        assert_eq!(reply.header.status, Status::OK);
        assert_eq!(reply.body, body);
        let offset = logic.stats.last_offset.unwrap();
        assert!((offset - 1.0).abs() < 1e-6, "{version}: {offset}");
    }
    // A reserved bit beside SAMPLE is still a sample; reserved bits alone are answered and ignored.
    for (flags, counted) in [(0x82u8, true), (0x80, false), (0x00, false)] {
        let before = logic.stats.samples;
        logic.stats.last_offset = None;
        let body = TimeSyncRef {
            parent_time: parent,
            flags: TimeSyncFlags(flags),
            rest: vec![0; 5],
            ..Default::default()
        }
        .to_body();
        let request = Message::request(
            MessageType::TIMESYNC,
            IcVersion::new(3, 0),
            IcVersion::new(4, 0),
            10,
            body.clone(),
        );
        let reply = answer_of(&mut logic, LINK, &request, IcVersion::new(4, 0), now).unwrap();
        assert_eq!((reply.header.status, reply.body), (Status::OK, body));
        assert_eq!(
            logic.stats.samples - before,
            u64::from(counted),
            "{flags:#04x}"
        );
        assert_eq!(logic.stats.last_offset.is_some(), counted, "{flags:#04x}");
    }
    let short = Message::request(
        MessageType::TIMESYNC,
        IcVersion::new(3, 0),
        IcVersion::new(3, 0),
        9,
        vec![0; 24],
    );
    let refusal = answer_of(&mut logic, LINK, &short, IcVersion::new(3, 0), now).unwrap_err();
    assert_eq!(refusal.status, Status::INVALID_ARG);
}

/// A TIMESYNC 4.0 sample request carrying `parent`.
fn sample_request(parent: u64) -> Message {
    let body = TimeSyncRef {
        parent_time: parent,
        flags: TimeSyncFlags::SAMPLE,
        rest: vec![0; 5],
        ..Default::default()
    }
    .to_body();
    Message::request(
        MessageType::TIMESYNC,
        IcVersion::new(3, 0),
        IcVersion::new(4, 0),
        0,
        body,
    )
}

/// A logic in `mode` on `clock` (probes off) that has been fed three host samples 50 ms ahead of it, so that
/// it is slewing at the ±500 ppm limit.
fn slewing_logic(mode: Mode, clock: &SimClock) -> TimeSyncLogic {
    let mut logic = TimeSyncLogic::new(
        mode,
        Duration::from_secs(1),
        Duration::ZERO,
        Box::new(clock.clone()),
        None,
    );
    let start = Instant::now();
    for n in 0..3u64 {
        clock.advance(5 * SECOND);
        let parent = unix_nanos_to_ticks(clock.true_ns() + 50 * MS);
        let now = start + Duration::from_secs(5 * (n + 1));
        answer_of(
            &mut logic,
            LINK,
            &sample_request(parent),
            IcVersion::new(4, 0),
            now,
        )
        .unwrap();
    }
    logic
}

#[test]
fn a_stopped_service_puts_back_the_frequency_it_found_at_start() {
    let clock = SimClock::new(EPOCH_NS, 0.0, 0.0);
    clock.leave_frequency(12.5);
    let logic = slewing_logic(Mode::Adjust, &clock);
    assert_eq!(clock.commanded_ppm(), 500.0, "the 50 ms are being slewed");
    drop(logic);
    assert_eq!(
        clock.commanded_ppm(),
        12.5,
        "back as found, as chronyd leaves it"
    );
    // Monitor mode never changed the clock, and leaves it alone on the way out too.
    let clock = SimClock::new(EPOCH_NS, 0.0, 0.0);
    clock.leave_frequency(-3.0);
    drop(slewing_logic(Mode::Monitor, &clock));
    assert_eq!(clock.commanded_ppm(), -3.0);
    assert!(clock.frequency_history().is_empty());
}

#[test]
fn a_frequency_pegged_at_the_limit_is_not_trusted_at_start() {
    for pegged in [500.0, -500.0] {
        let clock = SimClock::new(EPOCH_NS, 0.0, 0.0);
        clock.leave_frequency(pegged);
        let logic = TimeSyncLogic::new(
            Mode::Adjust,
            Duration::from_secs(1),
            Duration::ZERO,
            Box::new(clock.clone()),
            None,
        );
        assert_eq!(logic.discipline.base_ppm(), 0.0, "{pegged}: not adopted");
        drop(logic);
        assert_eq!(
            clock.commanded_ppm(),
            0.0,
            "{pegged}: not left behind either"
        );
    }
    // Just inside the limit is a calibration like any other.
    let clock = SimClock::new(EPOCH_NS, 0.0, 0.0);
    clock.leave_frequency(499.0);
    let logic = TimeSyncLogic::new(
        Mode::Adjust,
        Duration::from_secs(1),
        Duration::ZERO,
        Box::new(clock.clone()),
        None,
    );
    assert_eq!(logic.discipline.base_ppm(), 499.0);
}
