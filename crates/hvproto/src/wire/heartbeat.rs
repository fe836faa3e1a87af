//! The heartbeat body (Linux `struct heartbeat_msg_data`; OpenVMM's heartbeat with application state;
//! docs/PROTOCOL.md §6.1; openvmm `hyperv_ic_protocol/src/heartbeat.rs`).
//!
//! ```text
//!  0                               8               12
//!  +-------------------------------+---------------+-------------------------
//!  | seq_num (u64)                 | app state u32 | reserved ...
//!  +-------------------------------+---------------+-------------------------
//! ```
//!
//! Linux declares 40 bytes (`u64 seq_num; u32 reserved[8]`), OpenVMM 16 (`u64; u32 application_state;
//! u8 reserved[4]`): the same bytes with the application state as `reserved[0]`. Only the first 8 are
//! required; a reply is as long as its request.

use super::{le_u32, le_u64, require_body, ReplyWriter, WireError};

/// The minimum heartbeat body: the sequence number.
pub const MIN_LEN: usize = 8;
/// Where the application state sits when the body is long enough.
const APP_STATE: std::ops::Range<usize> = 8..12;

/// The guest's application health as a Hyper-V host shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AppState(pub u32);

impl AppState {
    pub const UNKNOWN: AppState = AppState(0);
    pub const HEALTHY: AppState = AppState(1);
    pub const CRITICAL: AppState = AppState(2);
    pub const STOPPED: AppState = AppState(3);

    pub fn name(self) -> &'static str {
        match self {
            AppState::UNKNOWN => "unknown",
            AppState::HEALTHY => "healthy",
            AppState::CRITICAL => "critical",
            AppState::STOPPED => "stopped",
            _ => "other",
        }
    }
}

/// A heartbeat body: the sequence number and the rest of the bytes as they came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub seq_num: u64,
    /// Bytes after the sequence number (application state and reserved), kept verbatim.
    pub rest: Vec<u8>,
}

impl Heartbeat {
    /// A heartbeat of the 16-byte form with the given sequence number and state.
    pub fn new(seq_num: u64, state: AppState) -> Heartbeat {
        let mut rest = vec![0; 8];
        rest[..4].copy_from_slice(&state.0.to_le_bytes());
        Heartbeat { seq_num, rest }
    }

    pub fn parse(body: &[u8]) -> Result<Heartbeat, WireError> {
        require_body("heartbeat", body, MIN_LEN)?;
        Ok(Heartbeat {
            seq_num: le_u64(body, 0),
            rest: body[MIN_LEN..].to_vec(),
        })
    }

    pub fn to_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MIN_LEN + self.rest.len());
        out.extend_from_slice(&self.seq_num.to_le_bytes());
        out.extend_from_slice(&self.rest);
        out
    }

    /// The application state, when the body is long enough to carry one.
    pub fn app_state(&self) -> Option<AppState> {
        let body_at =
            |range: std::ops::Range<usize>| (range.start - MIN_LEN)..(range.end - MIN_LEN);
        (self.rest.len() >= APP_STATE.end - MIN_LEN)
            .then(|| AppState(le_u32(&self.rest, body_at(APP_STATE))))
    }

    /// The guest's answer: seq_num + 1 (wrapping, as the kernel's u64 arithmetic does), the request's length,
    /// and `state` filled in where the body has room for it.
    pub fn answer(&self, state: AppState) -> Heartbeat {
        let mut rest = self.rest.clone();
        if rest.len() >= 4 {
            rest[..4].copy_from_slice(&state.0.to_le_bytes());
        }
        Heartbeat {
            seq_num: self.seq_num.wrapping_add(1),
            rest,
        }
    }
}

/// Writes the guest's answer to the heartbeat body `request` into `reply`: the bytes of
/// `Heartbeat::parse(request)?.answer(state).to_body()`, without building either. Returns the request's
/// sequence number.
pub fn emit_answer(
    request: &[u8],
    state: AppState,
    reply: &mut ReplyWriter<'_>,
) -> Result<u64, WireError> {
    require_body("heartbeat", request, MIN_LEN)?;
    let seq_num = le_u64(request, 0);
    reply.extend_from_slice(&seq_num.wrapping_add(1).to_le_bytes());
    reply.extend_from_slice(&request[MIN_LEN..]);
    if let Some(app_state) = reply.body_mut().get_mut(APP_STATE) {
        app_state.copy_from_slice(&state.0.to_le_bytes());
    }
    Ok(seq_num)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_increments_the_sequence_and_keeps_the_length() {
        for len in [8usize, 12, 16, 40] {
            let mut body = vec![0xAA; len];
            body[..8].copy_from_slice(&41u64.to_le_bytes());
            let request = Heartbeat::parse(&body).unwrap();
            let answer = request.answer(AppState::HEALTHY).to_body();
            assert_eq!(answer.len(), len);
            assert_eq!(u64::from_le_bytes(answer[..8].try_into().unwrap()), 42);
            if len >= 12 {
                assert_eq!(&answer[8..12], &1u32.to_le_bytes());
                assert!(answer[12..].iter().all(|&b| b == 0xAA));
            }
        }
    }

    #[test]
    fn the_answer_written_in_place_is_the_answer_built() {
        let request_of = |body: Vec<u8>| {
            crate::wire::Message::request(
                crate::wire::MessageType::HEARTBEAT,
                crate::wire::IcVersion::new(3, 0),
                crate::wire::IcVersion::new(3, 0),
                1,
                body,
            )
        };
        for len in [8usize, 9, 11, 12, 13, 16, 40] {
            let mut body: Vec<u8> = (0..len as u8).map(|byte| byte.wrapping_mul(37)).collect();
            body[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            let request = request_of(body);
            let mut out = Vec::new();
            let mut reply = ReplyWriter::begin(&request, &mut out);
            let seq_num = emit_answer(&request.body, AppState::CRITICAL, &mut reply).unwrap();
            assert_eq!(seq_num, u64::MAX);
            let built = Heartbeat::parse(&request.body)
                .unwrap()
                .answer(AppState::CRITICAL)
                .to_body();
            assert_eq!(reply.body(), &built[..], "length {len}");
        }
        let short = request_of(vec![0; 7]);
        let mut out = Vec::new();
        let mut reply = ReplyWriter::begin(&short, &mut out);
        assert!(emit_answer(&short.body, AppState::HEALTHY, &mut reply).is_err());
    }

    #[test]
    fn sequence_wraps_instead_of_overflowing() {
        let request = Heartbeat::new(u64::MAX, AppState::UNKNOWN);
        assert_eq!(request.answer(AppState::UNKNOWN).seq_num, 0);
    }

    #[test]
    fn app_state_is_read_only_when_present() {
        assert_eq!(Heartbeat::parse(&[0; 8]).unwrap().app_state(), None);
        let hb = Heartbeat::new(1, AppState::CRITICAL);
        assert_eq!(
            Heartbeat::parse(&hb.to_body()).unwrap().app_state(),
            Some(AppState::CRITICAL)
        );
    }

    #[test]
    fn short_body_is_refused() {
        assert_eq!(
            Heartbeat::parse(&[0; 7]),
            Err(WireError::BodyTooShort {
                what: "heartbeat",
                needed: 8,
                got: 7
            })
        );
    }
}
