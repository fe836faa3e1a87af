//! A simulated guest clock, for tests: true time advances only when the test says so, the guest clock runs
//! with its own frequency error plus the correction the discipline commands (clamped as the kernel clamps
//! ADJ_FREQUENCY), and steps move it at once. Nothing here reads or changes a real clock.
//!
//! A [`SimClock`] is a handle: clones share one simulated clock, so a test keeps one to advance time and read
//! the error while the logic under test owns another.

use std::cell::RefCell;
use std::rc::Rc;

use super::{Clock, ClockError, MAX_FREQUENCY_PPM};

#[derive(Debug)]
struct State {
    /// True time, ns since the Unix epoch.
    true_ns: i128,
    /// Guest clock − true time, ns.
    error_ns: f64,
    /// The clock's own frequency error (fraction: 50 ppm = 50e-6).
    drift: f64,
    /// The commanded correction, ppm.
    frequency_ppm: f64,
    /// Every correction commanded, in order.
    frequency_history: Vec<f64>,
    steps: Vec<f64>,
    writable: bool,
}

/// A shared handle on one simulated clock.
#[derive(Clone, Debug)]
pub struct SimClock(Rc<RefCell<State>>);

impl SimClock {
    /// A clock at true time `true_ns`, off by `error_s` seconds, running `drift_ppm` fast.
    pub fn new(true_ns: i128, error_s: f64, drift_ppm: f64) -> SimClock {
        SimClock(Rc::new(RefCell::new(State {
            true_ns,
            error_ns: error_s * 1e9,
            drift: drift_ppm * 1e-6,
            frequency_ppm: 0.0,
            frequency_history: Vec::new(),
            steps: Vec::new(),
            writable: true,
        })))
    }

    /// Advances true time by `ns`; the guest clock follows at its own rate.
    pub fn advance(&self, ns: i128) {
        let mut state = self.0.borrow_mut();
        let rate = state.drift + state.frequency_ppm * 1e-6;
        state.error_ns += rate * ns as f64;
        state.true_ns += ns;
    }

    /// True time, ns since the Unix epoch.
    pub fn true_ns(&self) -> i128 {
        self.0.borrow().true_ns
    }

    /// Guest clock − true time, seconds.
    pub fn error(&self) -> f64 {
        self.0.borrow().error_ns / 1e9
    }

    /// Moves the guest clock by `seconds` without the discipline knowing (a resume, a host restore).
    pub fn jump(&self, seconds: f64) {
        self.0.borrow_mut().error_ns += seconds * 1e9;
    }

    /// The steps applied, in seconds.
    pub fn steps(&self) -> Vec<f64> {
        self.0.borrow().steps.clone()
    }

    /// The commanded frequency correction, ppm.
    pub fn commanded_ppm(&self) -> f64 {
        self.0.borrow().frequency_ppm
    }

    /// Every frequency correction commanded so far, ppm.
    pub fn frequency_history(&self) -> Vec<f64> {
        self.0.borrow().frequency_history.clone()
    }

    /// Sets the correction in force as another program (a previous run, chronyd) left it, ppm.
    pub fn leave_frequency(&self, ppm: f64) {
        self.0.borrow_mut().frequency_ppm = ppm.clamp(-MAX_FREQUENCY_PPM, MAX_FREQUENCY_PPM);
    }

    /// Makes every change fail with EPERM, as for an agent without CAP_SYS_TIME.
    pub fn deny_changes(&self) {
        self.0.borrow_mut().writable = false;
    }

    fn writable(&self) -> Result<(), ClockError> {
        if self.0.borrow().writable {
            Ok(())
        } else {
            Err(ClockError::NotPermitted)
        }
    }
}

impl Clock for SimClock {
    fn now_ns(&self) -> i128 {
        let state = self.0.borrow();
        state.true_ns + state.error_ns.round() as i128
    }

    fn step(&mut self, delta_ns: i128) -> Result<(), ClockError> {
        self.writable()?;
        let mut state = self.0.borrow_mut();
        state.error_ns += delta_ns as f64;
        state.steps.push(delta_ns as f64 / 1e9);
        Ok(())
    }

    fn frequency_ppm(&self) -> Result<f64, ClockError> {
        Ok(self.0.borrow().frequency_ppm)
    }

    fn set_frequency_ppm(&mut self, ppm: f64) -> Result<(), ClockError> {
        self.writable()?;
        let mut state = self.0.borrow_mut();
        state.frequency_ppm = ppm.clamp(-MAX_FREQUENCY_PPM, MAX_FREQUENCY_PPM);
        let ppm = state.frequency_ppm;
        state.frequency_history.push(ppm);
        Ok(())
    }
}
