//! The private pool format of earlier versions, read once to migrate it ([`super::kvp_store::migrate`]).
//!
//! One file per pool, `STATE_DIR/kvp/pool_N` (little-endian): the magic `HVKVP1\n\0`, u32 pair count, then
//! per pair u32 value_type, u32 key length in UTF-16 units, the units, u32 value length in bytes, the value
//! (UTF-16LE with its NUL for a string, 4 or 8 bytes for a number). A pair becomes what a host's Set of it
//! stores now ([`hvproto::service::guestinfo::pair::from_record`]): UTF-8 text, numbers as decimal text.

use std::path::{Path, PathBuf};

use hvproto::service::guestinfo::pair;
use hvproto::service::guestinfo::Pair;
use hvproto::wire::kvp::{Pool, ValueRecord, MAX_KEY_SIZE, MAX_VALUE_SIZE};

const MAGIC: &[u8; 8] = b"HVKVP1\n\0";
/// The most pairs the old format held.
const MAX_PAIRS: usize = 1024;

/// One pair of the old format: value_type, the key's UTF-16 units, the value's bytes.
pub type OldPair = (u32, Vec<u16>, Vec<u8>);

/// Where the old format kept `pool`.
pub fn path(old_dir: &Path, pool: Pool) -> PathBuf {
    old_dir.join(format!("pool_{}", pool.0))
}

/// The pairs of the old file at `path`, in today's form; None when there is no such file. A pair that no
/// longer fits a pool file record is left out.
pub fn read(path: &Path) -> Option<Result<Vec<Pair>, String>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => return Some(Err(format!("cannot read it: {error}"))),
    };
    let Some(old) = decode(&bytes) else {
        return Some(Err("it is not a pool file of the old format".to_string()));
    };
    Some(Ok(old
        .iter()
        .filter_map(|(value_type, key, value)| {
            pair::from_record(&ValueRecord::new(*value_type, key, value)).ok()
        })
        .collect()))
}

/// The old file form of pairs (value_type, key units, value bytes): for tests, which write old files.
pub fn encode(pairs: &[OldPair]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (value_type, key, value) in pairs {
        out.extend_from_slice(&value_type.to_le_bytes());
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        for unit in key {
            out.extend_from_slice(&unit.to_le_bytes());
        }
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// Reads bytes off the front of a slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        if self.0.len() < len {
            return None;
        }
        let (head, tail) = self.0.split_at(len);
        self.0 = tail;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        let bytes = self.take(4)?;
        Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }
}

/// An old pool from its file form; None unless the bytes are exactly a valid pool within the wire bounds.
fn decode(bytes: &[u8]) -> Option<Vec<OldPair>> {
    let mut reader = Reader(bytes);
    if reader.take(MAGIC.len())? != MAGIC {
        return None;
    }
    let count = reader.u32()? as usize;
    if count > MAX_PAIRS {
        return None;
    }
    let mut pairs = Vec::with_capacity(count);
    for _ in 0..count {
        let value_type = reader.u32()?;
        let key_len = reader.u32()? as usize;
        if key_len == 0 || key_len > MAX_KEY_SIZE / 2 {
            return None;
        }
        let key = hvproto::wire::utf16le_units(reader.take(key_len * 2)?).collect();
        let value_len = reader.u32()? as usize;
        if value_len > MAX_VALUE_SIZE {
            return None;
        }
        let value = reader.take(value_len)?.to_vec();
        pairs.push((value_type, key, value));
    }
    reader.0.is_empty().then_some(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hvproto::wire::kvp::{utf16, utf16_bytes};

    #[test]
    fn old_pairs_read_as_todays_and_anything_but_an_exact_old_pool_is_refused() {
        let old = vec![
            (1, utf16("Role"), utf16_bytes(&utf16("web"))),
            (4, utf16("Count"), 7u32.to_le_bytes().to_vec()),
            (11, utf16("Big"), 9u64.to_le_bytes().to_vec()),
        ];
        let good = encode(&old);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pool_0");
        std::fs::write(&file, &good).unwrap();
        assert_eq!(
            read(&file).unwrap().unwrap(),
            [
                Pair::text("Role", "web"),
                Pair::text("Count", "7"),
                Pair::text("Big", "9")
            ]
        );
        assert!(read(&dir.path().join("pool_1")).is_none());
        let mut extra = good.clone();
        extra.push(0);
        assert!(decode(&extra).is_none());
        assert!(decode(b"HVKVP1\n\0").is_none());
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).is_none());
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_none(), "cut at {cut}");
        }
    }
}
