//! The shutdown body (Linux `struct shutdown_msg_data`; docs/PROTOCOL.md §8.1; openvmm `hyperv_ic_protocol/src/shutdown.rs`).
//!
//! ```text
//!  0               4               8               12
//!  +---------------+---------------+---------------+------------------------------
//!  | reason_code   | timeout_secs  | flags         | display_message[2048] (UTF-16?)
//!  +---------------+---------------+---------------+------------------------------
//! ```
//! Flags: 0 shut down, 2 reboot, 4 hibernate, each possibly OR-ed with 1 (force). The fields are required,
//! the display message may be short or absent; its bytes are kept verbatim and never trusted as text.

use super::{le_u32, require_body, WireError};

/// Linux's `display_message` length.
pub const DISPLAY_MESSAGE_LEN: usize = 2048;

/// Shutdown flag bits.
pub mod flags {
    pub const FORCE: u32 = 1;
    pub const REBOOT: u32 = 2;
    pub const HIBERNATE: u32 = 4;
}

/// A shutdown request body.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ShutdownRequest {
    pub reason_code: u32,
    pub timeout_seconds: u32,
    pub flags: u32,
    pub display_message: Vec<u8>,
}

impl ShutdownRequest {
    pub const MIN_LEN: usize = 12;

    pub fn parse(body: &[u8]) -> Result<ShutdownRequest, WireError> {
        require_body("shutdown", body, Self::MIN_LEN)?;
        Ok(ShutdownRequest {
            reason_code: le_u32(body, 0..4),
            timeout_seconds: le_u32(body, 4..8),
            flags: le_u32(body, 8..12),
            display_message: body[Self::MIN_LEN..].to_vec(),
        })
    }

    pub fn to_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::MIN_LEN + self.display_message.len());
        out.extend_from_slice(&self.reason_code.to_le_bytes());
        out.extend_from_slice(&self.timeout_seconds.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.display_message);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_linux_body_round_trips() {
        let request = ShutdownRequest {
            reason_code: 0x8000_0000,
            timeout_seconds: 30,
            flags: flags::REBOOT | flags::FORCE,
            display_message: vec![0; DISPLAY_MESSAGE_LEN],
        };
        let body = request.to_body();
        assert_eq!(body.len(), 2060);
        assert_eq!(&body[8..12], &3u32.to_le_bytes());
        assert_eq!(ShutdownRequest::parse(&body).unwrap(), request);
    }

    #[test]
    fn body_without_the_flags_is_refused() {
        assert!(matches!(
            ShutdownRequest::parse(&[0; 11]),
            Err(WireError::BodyTooShort { needed: 12, .. })
        ));
    }
}
