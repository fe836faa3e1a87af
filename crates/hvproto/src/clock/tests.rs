//! The discipline against a simulated clock, without the protocol: steps, steering, and never backwards.

use std::time::{Duration, Instant};

use super::discipline::{Discipline, Outcome};
use super::sim::SimClock;
use super::Clock;

const SECOND: i128 = 1_000_000_000;

#[test]
fn offsets_beyond_the_threshold_step_and_smaller_ones_steer() {
    let mut clock = SimClock::new(1_700_000_000 * SECOND, -5.0, 0.0);
    let mut discipline = Discipline::new(1.0, 0.0);
    let now = Instant::now();
    let outcome = discipline.update(&mut clock, 5.0, now).unwrap();
    assert_eq!(outcome, Outcome::Stepped { by: 5.0 });
    assert!(clock.error().abs() < 1e-9);
    let outcome = discipline
        .update(&mut clock, 0.9, now + Duration::from_secs(2))
        .unwrap();
    assert!(
        matches!(outcome, Outcome::Steered { ppm } if ppm == 500.0),
        "{outcome:?}"
    );
    assert_eq!(clock.steps(), vec![5.0]);
    assert_eq!(discipline.steps(), 1);
}

#[test]
fn steering_never_runs_the_clock_backwards_and_books_its_correction() {
    let mut clock = SimClock::new(0, 0.0, 0.0);
    let mut discipline = Discipline::new(1.0, 0.0);
    let start = Instant::now();
    discipline.update(&mut clock, -0.5, start).unwrap();
    let before = clock.now_ns();
    clock.advance(SECOND);
    let after = clock.now_ns();
    assert!(after > before, "the clock went from {before} to {after}");
    assert_eq!(clock.commanded_ppm(), -500.0);
    let later = start + Duration::from_secs(1);
    let correction = discipline.correction_at(later).since(0.0, start);
    assert!((correction + 500e-6).abs() < 1e-9, "{correction}");
}

#[test]
fn a_clock_that_may_not_be_changed_reports_not_permitted() {
    let mut clock = SimClock::new(0, 3.0, 0.0);
    clock.deny_changes();
    let mut discipline = Discipline::new(1.0, 0.0);
    assert_eq!(
        discipline.update(&mut clock, -3.0, Instant::now()),
        Err(super::ClockError::NotPermitted)
    );
    assert_eq!(clock.error(), 3.0);
}
