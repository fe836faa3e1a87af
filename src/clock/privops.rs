//! The clock helper's wire: the requests the unprivileged agent sends to `hvagent clock-helper` (the one
//! process that holds CAP_SYS_TIME) and its answers, as fixed-size little-endian messages. Sans-I/O: bytes
//! in, typed messages out, and back; the sockets are in [`super::remote`] (the agent's end) and
//! [`super::helper`] (the helper's end).
//!
//! This is chronyd's privilege separation (its `privops.c`: a privileged helper process that applies
//! `adjtimex`, `settimeofday` and a few more on behalf of the daemon, which dropped root) cut down to what
//! hvagent's time sync asks of a `hvproto::clock::Clock`: read the frequency correction, set it, step the clock.
//! Reading the time needs no privilege, so it never crosses this wire.
//!
//! Every message is [`MESSAGE_LEN`] bytes, both ways:
//!
//! ```text
//! request                               answer
//!  0      2      4              8        0      2      4              8
//! +------+------+--------------+        +------+------+--------------+
//! | ver  |  op  |   reserved   |        | ver  |  op  |    status    |
//! +------+------+--------------+        +------+------+--------------+
//! |         value (i64)        |        |         value (i64)        |
//! +----------------------------+        +----------------------------+
//! ```
//!
//! - `ver` (u16) is [`VERSION`]; a message of another version is answered EPROTO, never guessed at.
//! - `op` (u16): 1 READ_FREQUENCY, 2 SET_FREQUENCY, 3 STEP; an answer carries its request's op. Other ops
//!   are kept as [`Request::Unknown`] and answered EOPNOTSUPP.
//! - request `value`: SET_FREQUENCY the correction in adjtimex(2) units (ppm × 2^16, as `struct timex`'s
//!   `freq`: exact, no float on the wire), STEP the delta in nanoseconds (positive: forwards); zero
//!   otherwise.
//! - answer `status` (i32): 0 ok, else the errno of the failed call (EPERM: the helper lacks CAP_SYS_TIME, or
//!   the peer is not allowed; EINVAL: a value out of bounds); answer `value`: READ_FREQUENCY the correction
//!   in the same units, zero otherwise.

use std::fmt;
use std::ops::Range;

/// The wire version this code speaks.
pub const VERSION: u16 = 1;
/// The size of every request and answer.
pub const MESSAGE_LEN: usize = 16;
/// adjtimex(2) gives frequency in ppm with a 16-bit fraction.
pub const FREQUENCY_SCALE: f64 = 65536.0;
/// The largest frequency correction the helper accepts: the kernel's ±500 ppm, in adjtimex units.
pub const MAX_SCALED_FREQUENCY: i64 = 500 << 16;

/// Byte offsets, shared by requests and answers.
mod field {
    use std::ops::Range;
    pub const VERSION: Range<usize> = 0..2;
    pub const OP: Range<usize> = 2..4;
    /// Reserved in a request, the status in an answer.
    pub const WORD: Range<usize> = 4..8;
    pub const VALUE: Range<usize> = 8..16;
}

/// The operation numbers.
pub mod op {
    pub const READ_FREQUENCY: u16 = 1;
    pub const SET_FREQUENCY: u16 = 2;
    pub const STEP: u16 = 3;
}

/// Why bytes are not a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrivopsError {
    /// Fewer or more than [`MESSAGE_LEN`] bytes.
    Length(usize),
    /// A message of a version this code does not speak.
    Version(u16),
}

impl fmt::Display for PrivopsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrivopsError::Length(len) => {
                write!(
                    f,
                    "a clock-helper message is {MESSAGE_LEN} bytes, not {len}"
                )
            }
            PrivopsError::Version(version) => write!(
                f,
                "clock-helper message version {version}, this side speaks {VERSION}"
            ),
        }
    }
}

impl std::error::Error for PrivopsError {}

/// What the agent asks of the helper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    ReadFrequency,
    /// A frequency correction in adjtimex units (ppm × 2^16).
    SetFrequency {
        scaled: i64,
    },
    /// A step of the clock, in nanoseconds.
    Step {
        delta_ns: i64,
    },
    /// An op this version does not know, kept to be answered.
    Unknown {
        op: u16,
        value: i64,
    },
}

impl Request {
    pub fn op(self) -> u16 {
        match self {
            Request::ReadFrequency => op::READ_FREQUENCY,
            Request::SetFrequency { .. } => op::SET_FREQUENCY,
            Request::Step { .. } => op::STEP,
            Request::Unknown { op, .. } => op,
        }
    }

    fn value(self) -> i64 {
        match self {
            Request::ReadFrequency => 0,
            Request::SetFrequency { scaled } => scaled,
            Request::Step { delta_ns } => delta_ns,
            Request::Unknown { value, .. } => value,
        }
    }

    /// The request in `bytes`; never panics, whatever they hold.
    pub fn parse(bytes: &[u8]) -> Result<Request, PrivopsError> {
        let (op, _reserved, value) = split(bytes)?;
        Ok(match op {
            op::READ_FREQUENCY => Request::ReadFrequency,
            op::SET_FREQUENCY => Request::SetFrequency { scaled: value },
            op::STEP => Request::Step { delta_ns: value },
            op => Request::Unknown { op, value },
        })
    }

    /// The request's bytes.
    pub fn emit(self) -> [u8; MESSAGE_LEN] {
        join(self.op(), 0, self.value())
    }
}

/// The helper's answer to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The op of the request answered (0 when refused before any request was read).
    pub op: u16,
    /// 0 ok, else an errno.
    pub status: i32,
    /// READ_FREQUENCY: the correction in adjtimex units.
    pub value: i64,
}

impl Answer {
    pub fn ok(op: u16, value: i64) -> Answer {
        Answer {
            op,
            status: 0,
            value,
        }
    }

    pub fn error(op: u16, errno: i32) -> Answer {
        Answer {
            op,
            status: errno,
            value: 0,
        }
    }

    /// The answer in `bytes`; never panics, whatever they hold.
    pub fn parse(bytes: &[u8]) -> Result<Answer, PrivopsError> {
        let (op, word, value) = split(bytes)?;
        Ok(Answer {
            op,
            status: word as i32,
            value,
        })
    }

    /// The answer's bytes.
    pub fn emit(self) -> [u8; MESSAGE_LEN] {
        join(self.op, self.status as u32, self.value)
    }
}

/// ppm as adjtimex units, rounded and clamped to ±500 ppm.
pub fn scaled_from_ppm(ppm: f64) -> i64 {
    let scaled = (ppm * FREQUENCY_SCALE).round();
    if scaled.is_nan() {
        return 0;
    }
    (scaled as i64).clamp(-MAX_SCALED_FREQUENCY, MAX_SCALED_FREQUENCY)
}

/// adjtimex units as ppm.
pub fn ppm_from_scaled(scaled: i64) -> f64 {
    scaled as f64 / FREQUENCY_SCALE
}

fn read<const N: usize>(bytes: &[u8], range: Range<usize>) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[range]);
    out
}

/// (op, word, value) of a message whose length and version are right.
fn split(bytes: &[u8]) -> Result<(u16, u32, i64), PrivopsError> {
    if bytes.len() != MESSAGE_LEN {
        return Err(PrivopsError::Length(bytes.len()));
    }
    // The length is checked: every range below lies inside the buffer.
    let version = u16::from_le_bytes(read(bytes, field::VERSION));
    if version != VERSION {
        return Err(PrivopsError::Version(version));
    }
    Ok((
        u16::from_le_bytes(read(bytes, field::OP)),
        u32::from_le_bytes(read(bytes, field::WORD)),
        i64::from_le_bytes(read(bytes, field::VALUE)),
    ))
}

fn join(op: u16, word: u32, value: i64) -> [u8; MESSAGE_LEN] {
    let mut out = [0; MESSAGE_LEN];
    out[field::VERSION].copy_from_slice(&VERSION.to_le_bytes());
    out[field::OP].copy_from_slice(&op.to_le_bytes());
    out[field::WORD].copy_from_slice(&word.to_le_bytes());
    out[field::VALUE].copy_from_slice(&value.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_layout_is_version_op_reserved_value_little_endian() {
        let bytes = Request::Step {
            delta_ns: -3_600_000_000_000,
        }
        .emit();
        assert_eq!(&bytes[0..2], &[1, 0]);
        assert_eq!(&bytes[2..4], &[3, 0]);
        assert_eq!(&bytes[4..8], &[0; 4]);
        assert_eq!(&bytes[8..16], &(-3_600_000_000_000i64).to_le_bytes());
        assert_eq!(
            Request::parse(&bytes),
            Ok(Request::Step {
                delta_ns: -3_600_000_000_000
            })
        );
    }

    #[test]
    fn answer_carries_errno_and_value() {
        let bytes = Answer::error(op::SET_FREQUENCY, libc::EPERM).emit();
        assert_eq!(&bytes[4..8], &1u32.to_le_bytes());
        assert_eq!(
            Answer::parse(&bytes),
            Ok(Answer::error(op::SET_FREQUENCY, 1))
        );
        let read = Answer::ok(op::READ_FREQUENCY, -12 << 16);
        assert_eq!(Answer::parse(&read.emit()), Ok(read));
    }

    #[test]
    fn unknown_op_is_kept_not_refused() {
        let mut bytes = Request::ReadFrequency.emit();
        bytes[2] = 77;
        bytes[8] = 5;
        assert_eq!(
            Request::parse(&bytes),
            Ok(Request::Unknown { op: 77, value: 5 })
        );
    }

    #[test]
    fn reserved_and_unused_fields_are_ignored() {
        let mut bytes = Request::ReadFrequency.emit();
        bytes[4..8].fill(0xff);
        bytes[8..16].fill(0x5a);
        assert_eq!(Request::parse(&bytes), Ok(Request::ReadFrequency));
        let mut bytes = Request::Step { delta_ns: -7 }.emit();
        bytes[4..8].fill(0xff);
        assert_eq!(Request::parse(&bytes), Ok(Request::Step { delta_ns: -7 }));
    }

    #[test]
    fn wrong_length_and_version_are_errors() {
        assert_eq!(Request::parse(&[]), Err(PrivopsError::Length(0)));
        assert_eq!(Answer::parse(&[1; 17]), Err(PrivopsError::Length(17)));
        let mut bytes = Request::ReadFrequency.emit();
        bytes[0] = 2;
        assert_eq!(Request::parse(&bytes), Err(PrivopsError::Version(2)));
    }

    #[test]
    fn ppm_scaling_rounds_and_clamps_to_the_kernel_limit() {
        assert_eq!(scaled_from_ppm(1.0), 65536);
        assert_eq!(scaled_from_ppm(-12.5), -819_200);
        assert_eq!(scaled_from_ppm(900.0), MAX_SCALED_FREQUENCY);
        assert_eq!(scaled_from_ppm(f64::NEG_INFINITY), -MAX_SCALED_FREQUENCY);
        assert_eq!(scaled_from_ppm(f64::NAN), 0);
        assert_eq!(ppm_from_scaled(scaled_from_ppm(-12.5)), -12.5);
    }

    proptest! {
        #[test]
        fn parsing_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = Request::parse(&bytes);
            let _ = Answer::parse(&bytes);
        }

        #[test]
        fn requests_round_trip(bytes in proptest::array::uniform16(any::<u8>())) {
            let mut bytes = bytes;
            bytes[0..2].copy_from_slice(&VERSION.to_le_bytes());
            // The canonical form: reserved zero, and READ_FREQUENCY, which has no value, with zero there
            // (parse ignores both; `reserved_and_unused_fields_are_ignored` checks that).
            bytes[4..8].fill(0);
            if u16::from_le_bytes([bytes[2], bytes[3]]) == op::READ_FREQUENCY {
                bytes[8..16].fill(0);
            }
            let request = Request::parse(&bytes).unwrap();
            prop_assert_eq!(request.emit(), bytes);
        }

        #[test]
        fn answers_round_trip(bytes in proptest::array::uniform16(any::<u8>())) {
            let mut bytes = bytes;
            bytes[0..2].copy_from_slice(&VERSION.to_le_bytes());
            prop_assert_eq!(Answer::parse(&bytes).unwrap().emit(), bytes);
        }
    }
}
