//! chronyd's SOCK refclock (chrony `refclock_sock.c`, docs/PROTOCOL.md §7.5): one datagram per offset, sent to the
//! Unix datagram socket that chronyd binds for `refclock SOCK PATH`.
//!
//! The datagram, in native byte order (40 bytes on 64-bit Linux):
//! ```text
//!  0               8               16              24      28      32      36      40
//!  +---------------+---------------+---------------+-------+-------+-------+-------+
//!  | tv_sec  (i64) | tv_usec (i64) | offset (f64)  | pulse | leap  | _pad  | magic |
//!  +---------------+---------------+---------------+-------+-------+-------+-------+
//! ```
//! `tv` is the system time of the measurement, `offset` true time − system time in seconds, `pulse` 0,
//! `leap` 0 (normal), `magic` 0x534f434b ("SOCK").
//!
//! chronyd creates the socket and may be absent or restarting: the sender uses an unbound, non-blocking
//! socket and a datagram that finds no reader is dropped, logged at warn the first time and at debug after.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use log::{debug, info, warn};

use hvproto::clock::OffsetSink;

/// The datagram's length.
pub const DATAGRAM_LEN: usize = 40;
/// `SOCK_MAGIC`.
pub const MAGIC: i32 = 0x534f_434b;

/// Byte offsets of the datagram's fields.
pub mod field {
    use std::ops::Range;
    pub const TV_SEC: Range<usize> = 0..8;
    pub const TV_USEC: Range<usize> = 8..16;
    pub const OFFSET: Range<usize> = 16..24;
    pub const PULSE: Range<usize> = 24..28;
    pub const LEAP: Range<usize> = 28..32;
    pub const PAD: Range<usize> = 32..36;
    pub const MAGIC: Range<usize> = 36..40;
}

/// The datagram for an offset measured when the system clock read `at_ns` (ns since the Unix epoch).
pub fn datagram(at_ns: i128, offset: f64) -> [u8; DATAGRAM_LEN] {
    let seconds = at_ns.div_euclid(1_000_000_000) as i64;
    let micros = (at_ns.rem_euclid(1_000_000_000) / 1_000) as i64;
    let mut out = [0u8; DATAGRAM_LEN];
    out[field::TV_SEC].copy_from_slice(&seconds.to_ne_bytes());
    out[field::TV_USEC].copy_from_slice(&micros.to_ne_bytes());
    out[field::OFFSET].copy_from_slice(&offset.to_ne_bytes());
    out[field::PULSE].copy_from_slice(&0i32.to_ne_bytes());
    out[field::LEAP].copy_from_slice(&0i32.to_ne_bytes());
    out[field::PAD].copy_from_slice(&0i32.to_ne_bytes());
    out[field::MAGIC].copy_from_slice(&MAGIC.to_ne_bytes());
    out
}

/// Sends offsets to chronyd's refclock socket.
#[derive(Debug)]
pub struct ChronySink {
    path: PathBuf,
    socket: Option<UnixDatagram>,
    /// Sends that failed since the last one that worked.
    failures: u64,
    sent: u64,
}

impl ChronySink {
    pub fn new(path: &Path) -> ChronySink {
        ChronySink {
            path: path.to_path_buf(),
            socket: None,
            failures: 0,
            sent: 0,
        }
    }

    /// Datagrams chronyd took.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.socket.is_none() {
            let socket = UnixDatagram::unbound()?;
            socket.set_nonblocking(true)?;
            self.socket = Some(socket);
        }
        match &self.socket {
            Some(socket) => socket.send_to(bytes, &self.path).map(drop),
            None => Ok(()),
        }
    }
}

impl OffsetSink for ChronySink {
    fn send(&mut self, at_ns: i128, offset: f64) {
        match self.try_send(&datagram(at_ns, offset)) {
            Ok(()) => {
                if self.failures > 0 {
                    info!(
                        "timesync: chronyd takes offsets at {} again (after {} dropped)",
                        self.path.display(),
                        self.failures
                    );
                }
                self.failures = 0;
                self.sent += 1;
            }
            Err(error) => {
                if self.failures == 0 {
                    warn!(
                        "timesync: cannot send the offset to chronyd at {}: {error}; is chronyd running with \
                         'refclock SOCK {} refid HV' in chrony.conf? (further drops logged at debug)",
                        self.path.display(),
                        self.path.display()
                    );
                } else {
                    debug!("timesync: offset for chronyd dropped: {error}");
                }
                self.failures += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagram_has_chronys_layout_and_magic() {
        let bytes = datagram(1_700_000_000_123_456_789, -0.25);
        let i64_at =
            |range: std::ops::Range<usize>| i64::from_ne_bytes(bytes[range].try_into().unwrap());
        let i32_at =
            |range: std::ops::Range<usize>| i32::from_ne_bytes(bytes[range].try_into().unwrap());
        assert_eq!(i64_at(field::TV_SEC), 1_700_000_000);
        assert_eq!(i64_at(field::TV_USEC), 123_456);
        assert_eq!(
            f64::from_ne_bytes(bytes[field::OFFSET].try_into().unwrap()),
            -0.25
        );
        assert_eq!(i32_at(field::PULSE), 0);
        assert_eq!(i32_at(field::LEAP), 0);
        assert_eq!(i32_at(field::MAGIC), 0x534f434b);
        assert_eq!(&bytes[36..40], &MAGIC.to_ne_bytes());
    }

    #[test]
    fn a_missing_chronyd_is_tolerated_and_a_later_one_gets_the_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chrony.sock");
        let mut sink = ChronySink::new(&path);
        sink.send(0, 1.0);
        sink.send(0, 1.0);
        assert_eq!((sink.sent(), sink.failures), (0, 2));
        let chronyd = UnixDatagram::bind(&path).unwrap();
        sink.send(5_000_000_000, 2.5);
        assert_eq!((sink.sent(), sink.failures), (1, 0));
        let mut buffer = [0u8; 64];
        let len = chronyd.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..len], &datagram(5_000_000_000, 2.5));
        // chronyd restarts: the old socket file is gone, a new one appears.
        drop(chronyd);
        std::fs::remove_file(&path).unwrap();
        sink.send(0, 1.0);
        assert_eq!(sink.failures, 1);
        let chronyd = UnixDatagram::bind(&path).unwrap();
        sink.send(6_000_000_000, 2.5);
        assert_eq!(chronyd.recv(&mut buffer).unwrap(), DATAGRAM_LEN);
    }
}
