//! The time-sync bodies (Linux `struct ictimesync_ref_data` and `struct ictimesync_data`; docs/PROTOCOL.md
//! §7.1; openvmm `hyperv_ic_protocol/src/timesync.rs`).
//!
//! Message version 4.0 and later, `ictimesync_ref_data` (22 bytes in Linux, 24 from a Microsoft host):
//! ```text
//!  0               8               16  17  18  19
//!  +---------------+---------------+---+---+---+-----------
//!  | parenttime    | vmreferencetime|flg|lp |str| reserved ...
//!  +---------------+---------------+---+---+---+-----------
//! ```
//! Older versions, and hvagent's 4.1 guest probes, `ictimesync_data` (25 bytes, 28 from a Microsoft host):
//! ```text
//!  0               8               16              24  25
//!  +---------------+---------------+---------------+---+-----------
//!  | parenttime    | childtime     | roundtriptime |flg| reserved ...
//!  +---------------+---------------+---------------+---+-----------
//! ```
//! Times are UTC in 100 ns ticks since 1601-01-01. Only the fields are required; trailing bytes are kept.

use super::{le_u64, require_body, WireError};

/// Ticks between 1601-01-01 and 1970-01-01.
pub const UNIX_EPOCH_TICKS: u64 = 116_444_736_000_000_000;

/// The `flags` byte of a time-sync body. SYNC and SAMPLE are bits, as Linux's `adj_guesttime` tests them
/// (`drivers/hv/hv_util.c`) and openvmm declares them (`hyperv_ic_protocol/src/timesync.rs`, `TimesyncFlags`
/// bitfield: sync bit 0, sample bit 1, six reserved bits). Unknown bits are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TimeSyncFlags(pub u8);

impl TimeSyncFlags {
    /// A guest's probe (hvagent's 4.1 extension): no bit set.
    pub const PROBE: TimeSyncFlags = TimeSyncFlags(0);
    /// A hard request to set the clock (boot, restore, resume).
    pub const SYNC: TimeSyncFlags = TimeSyncFlags(1);
    /// A routine sample, a hint.
    pub const SAMPLE: TimeSyncFlags = TimeSyncFlags(2);
    /// The bits neither Linux nor openvmm gives a meaning.
    pub const RESERVED_BITS: u8 = !(Self::SYNC.0 | Self::SAMPLE.0);

    /// Whether the SYNC bit is set (whatever else is).
    pub const fn is_sync(self) -> bool {
        self.0 & Self::SYNC.0 != 0
    }

    /// Whether the SAMPLE bit is set (whatever else is).
    pub const fn is_sample(self) -> bool {
        self.0 & Self::SAMPLE.0 != 0
    }

    /// The reserved bits that are set.
    pub const fn reserved(self) -> u8 {
        self.0 & Self::RESERVED_BITS
    }
}

/// `ictimesync_ref_data`: message version 4.0 and later.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TimeSyncRef {
    pub parent_time: u64,
    pub vm_reference_time: u64,
    pub flags: TimeSyncFlags,
    pub leap_flags: i8,
    pub stratum: i8,
    /// The reserved bytes and anything after them, kept verbatim.
    pub rest: Vec<u8>,
}

impl TimeSyncRef {
    /// Bytes up to and including Linux's `reserved[3]`.
    pub const MIN_LEN: usize = 22;
    /// Bytes up to and including `stratum`: where `rest` starts.
    const FIELDS_LEN: usize = 19;

    pub fn parse(body: &[u8]) -> Result<TimeSyncRef, WireError> {
        require_body("timesync (v4)", body, Self::MIN_LEN)?;
        Ok(TimeSyncRef {
            parent_time: le_u64(body, 0),
            vm_reference_time: le_u64(body, 8),
            flags: TimeSyncFlags(body[16]),
            leap_flags: body[17] as i8,
            stratum: body[18] as i8,
            rest: body[Self::FIELDS_LEN..].to_vec(),
        })
    }

    pub fn to_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::FIELDS_LEN + self.rest.len());
        out.extend_from_slice(&self.parent_time.to_le_bytes());
        out.extend_from_slice(&self.vm_reference_time.to_le_bytes());
        out.push(self.flags.0);
        out.push(self.leap_flags as u8);
        out.push(self.stratum as u8);
        out.extend_from_slice(&self.rest);
        out
    }
}

/// `ictimesync_data`: message versions before 4.0, and hvagent's 4.1 probes.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TimeSyncData {
    pub parent_time: u64,
    pub child_time: u64,
    pub round_trip_time: u64,
    pub flags: TimeSyncFlags,
    /// Anything after `flags` (a Microsoft host pads with 3 bytes), kept verbatim.
    pub rest: Vec<u8>,
}

impl TimeSyncData {
    pub const MIN_LEN: usize = 25;

    pub fn parse(body: &[u8]) -> Result<TimeSyncData, WireError> {
        require_body("timesync", body, Self::MIN_LEN)?;
        Ok(TimeSyncData {
            parent_time: le_u64(body, 0),
            child_time: le_u64(body, 8),
            round_trip_time: le_u64(body, 16),
            flags: TimeSyncFlags(body[24]),
            rest: body[Self::MIN_LEN..].to_vec(),
        })
    }

    pub fn to_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::MIN_LEN + self.rest.len());
        out.extend_from_slice(&self.parent_time.to_le_bytes());
        out.extend_from_slice(&self.child_time.to_le_bytes());
        out.extend_from_slice(&self.round_trip_time.to_le_bytes());
        out.push(self.flags.0);
        out.extend_from_slice(&self.rest);
        out
    }
}

/// Unix time in nanoseconds for a tick count, as i128 so no tick value can overflow.
pub fn ticks_to_unix_nanos(ticks: u64) -> i128 {
    (ticks as i128 - UNIX_EPOCH_TICKS as i128) * 100
}

/// The tick count for Unix nanoseconds, saturating outside the u64 range.
pub fn unix_nanos_to_ticks(nanos: i128) -> u64 {
    (nanos.div_euclid(100) + UNIX_EPOCH_TICKS as i128).clamp(0, u64::MAX as i128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_data_parses_linux_and_microsoft_lengths() {
        for len in [22usize, 24] {
            let mut body = vec![0u8; len];
            body[..8].copy_from_slice(&UNIX_EPOCH_TICKS.to_le_bytes());
            body[16] = 1;
            body[17] = 0xff;
            body[18] = 2;
            let parsed = TimeSyncRef::parse(&body).unwrap();
            assert_eq!(parsed.parent_time, UNIX_EPOCH_TICKS);
            assert_eq!(parsed.flags, TimeSyncFlags::SYNC);
            assert_eq!(parsed.leap_flags, -1);
            assert_eq!(parsed.stratum, 2);
            assert_eq!(parsed.to_body(), body);
        }
        assert!(matches!(
            TimeSyncRef::parse(&[0; 21]),
            Err(WireError::BodyTooShort { needed: 22, .. })
        ));
    }

    #[test]
    fn data_parses_linux_and_microsoft_lengths() {
        for len in [25usize, 28] {
            let mut body = vec![0u8; len];
            body[8..16].copy_from_slice(&7u64.to_le_bytes());
            body[16..24].copy_from_slice(&9u64.to_le_bytes());
            body[24] = 2;
            let parsed = TimeSyncData::parse(&body).unwrap();
            assert_eq!((parsed.child_time, parsed.round_trip_time), (7, 9));
            assert_eq!(parsed.flags, TimeSyncFlags::SAMPLE);
            assert_eq!(parsed.to_body(), body);
        }
        assert!(TimeSyncData::parse(&[0; 24]).is_err());
    }

    #[test]
    fn flags_are_bits() {
        let both = TimeSyncFlags(0x03);
        assert!(both.is_sync() && both.is_sample());
        let sync_and_reserved = TimeSyncFlags(0x81);
        assert!(sync_and_reserved.is_sync() && !sync_and_reserved.is_sample());
        assert_eq!(sync_and_reserved.reserved(), 0x80);
        let sample = TimeSyncFlags::SAMPLE;
        assert!(!sample.is_sync() && sample.is_sample() && sample.reserved() == 0);
        assert!(!TimeSyncFlags::PROBE.is_sync() && !TimeSyncFlags::PROBE.is_sample());
    }

    #[test]
    fn tick_conversion_matches_the_unix_epoch() {
        assert_eq!(ticks_to_unix_nanos(UNIX_EPOCH_TICKS), 0);
        assert_eq!(ticks_to_unix_nanos(UNIX_EPOCH_TICKS + 10), 1_000);
        assert_eq!(unix_nanos_to_ticks(1_000), UNIX_EPOCH_TICKS + 10);
        assert_eq!(unix_nanos_to_ticks(i128::MIN / 2), 0);
        assert_eq!(unix_nanos_to_ticks(i128::MAX / 2), u64::MAX);
    }
}
