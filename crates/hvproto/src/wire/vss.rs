//! The backup (VSS) body: Linux `struct hv_vss_msg` (include/uapi/linux/hyperv.h), openvmm
//! `hyperv_ic_protocol/src/vss.rs`; docs/PROTOCOL.md §10.
//!
//! ```text
//!  0     1                         8               12
//!  +-----+-------------------------+---------------+---------------------------------
//!  | op  | reserved[7]             | flags (u32)   | more, by operation and version ...
//!  +-----+-------------------------+---------------+---------------------------------
//! ```
//!
//! Linux's struct is the 8-byte header and one u32 (`hv_vss_check_feature.flags` or
//! `hv_vss_check_dm_info.flags`), 12 bytes; openvmm's `VssMessage` is 39 bytes and its freeze message
//! (`Message2`) carries the LUNs of the snapshot after the header. Only the operation byte is read; the
//! answer is the request's own body (Linux sends back the whole buffer it received) with the flags written
//! where the operation has them, lengthened to 12 bytes when the request was shorter.

use super::{le_u32, require_body, ReplyWriter, WireError};

/// The header every request has: the operation and seven reserved bytes.
pub const HEADER_LEN: usize = 8;
/// Where the flags of CHECK_HOT_BACKUP and GET_DM_INFO answers sit.
const FLAGS: std::ops::Range<usize> = 8..12;
/// Linux's `struct hv_vss_msg`: the header and the flags.
pub const LINUX_LEN: usize = 12;

/// `VSS_HBU_NO_AUTO_RECOVERY`: what Linux answers to CHECK_HOT_BACKUP (the guest takes part in hot backups,
/// and the host must not ask for the snapshot's auto-recovery, which Linux cannot do).
pub const NO_AUTO_RECOVERY: u32 = 0x0000_0005;

/// A backup operation (`enum hv_vss_op`; openvmm's `Operation`); unknown values are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Operation(pub u8);

impl Operation {
    pub const CREATE: Operation = Operation(0);
    pub const DELETE: Operation = Operation(1);
    pub const HOT_BACKUP: Operation = Operation(2);
    pub const GET_DM_INFO: Operation = Operation(3);
    pub const BACKUP_COMPLETE: Operation = Operation(4);
    /// Message version 5.0 and later.
    pub const FREEZE: Operation = Operation(5);
    pub const THAW: Operation = Operation(6);
    pub const AUTO_RECOVER: Operation = Operation(7);
    /// Message version 6.0 and later (openvmm); Linux does not know it.
    pub const QUERY_GUEST_CLUSTER_INFORMATION: Operation = Operation(8);

    pub fn name(self) -> &'static str {
        match self {
            Operation::CREATE => "create",
            Operation::DELETE => "delete",
            Operation::HOT_BACKUP => "check hot backup",
            Operation::GET_DM_INFO => "get direct-mapped devices",
            Operation::BACKUP_COMPLETE => "backup complete",
            Operation::FREEZE => "freeze",
            Operation::THAW => "thaw",
            Operation::AUTO_RECOVER => "auto-recover",
            Operation::QUERY_GUEST_CLUSTER_INFORMATION => "query guest cluster information",
            _ => "unknown",
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// The operation a request body asks for; the body must hold the whole 8-byte header.
pub fn operation(body: &[u8]) -> Result<Operation, WireError> {
    require_body("backup", body, HEADER_LEN)?;
    Ok(Operation(body[0]))
}

/// The flags of an answer (CHECK_HOT_BACKUP, GET_DM_INFO), when the body has them.
pub fn flags(body: &[u8]) -> Option<u32> {
    (body.len() >= FLAGS.end).then(|| le_u32(body, FLAGS))
}

/// Writes the answer to `request`'s body: the same bytes, with `flags` at offset 8 when given (the body
/// lengthened to [`LINUX_LEN`] first if it was shorter).
pub fn emit_answer(request: &[u8], flags: Option<u32>, reply: &mut ReplyWriter<'_>) {
    reply.extend_from_slice(request);
    if let Some(flags) = flags {
        if request.len() < LINUX_LEN {
            reply.extend_from_slice(&[0; LINUX_LEN][request.len()..]);
        }
        reply.body_mut()[FLAGS].copy_from_slice(&flags.to_le_bytes());
    }
}

/// A request body for `operation`, as a host sends it: Linux's 12 bytes, flags zero.
pub fn request_body(operation: Operation) -> Vec<u8> {
    let mut body = vec![0; LINUX_LEN];
    body[0] = operation.0;
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{IcVersion, Message, MessageType};

    fn answer(request: &[u8], flags: Option<u32>) -> Vec<u8> {
        let message = Message::request(
            MessageType::VSS,
            IcVersion::new(3, 0),
            IcVersion::new(5, 0),
            1,
            request.to_vec(),
        );
        let mut out = Vec::new();
        let mut reply = ReplyWriter::begin(&message, &mut out);
        emit_answer(request, flags, &mut reply);
        reply.body().to_vec()
    }

    #[test]
    fn the_operation_is_the_first_byte_of_a_whole_header() {
        assert_eq!(
            operation(&request_body(Operation::FREEZE)),
            Ok(Operation::FREEZE)
        );
        assert_eq!(operation(&[6, 0, 0, 0, 0, 0, 0, 0]), Ok(Operation::THAW));
        assert_eq!(operation(&[200; 8]).map(Operation::name), Ok("unknown"));
        assert!(operation(&[5, 0, 0]).is_err());
    }

    #[test]
    fn an_answer_echoes_the_body_and_writes_the_flags_where_asked() {
        // Linux's 12 bytes.
        let body = answer(&request_body(Operation::HOT_BACKUP), Some(NO_AUTO_RECOVERY));
        assert_eq!(body, [2, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0]);
        assert_eq!(flags(&body), Some(NO_AUTO_RECOVERY));
        // A header alone gains the flags; a longer body keeps its tail.
        assert_eq!(
            answer(&[3; 8], Some(0)),
            [3, 3, 3, 3, 3, 3, 3, 3, 0, 0, 0, 0]
        );
        let long: Vec<u8> = (0..39).collect();
        let body = answer(&long, Some(0));
        assert_eq!(&body[..8], &long[..8]);
        assert_eq!(&body[8..12], &[0; 4]);
        assert_eq!(&body[12..], &long[12..]);
        // Without flags, the body comes back as it was.
        assert_eq!(answer(&long, None), long);
    }
}
