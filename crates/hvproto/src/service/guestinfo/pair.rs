//! Pairs as the pool files hold them, and their conversions to and from the host's records.
//!
//! A pool file (docs/PROTOCOL.md §9.6) is Linux's hv_kvp_daemon format: records of a 512-byte key and a
//! 2048-byte value, both UTF-8 and NUL-padded (`struct kvp_record` in tools/hv/hv_kvp_daemon.c). What the
//! host sends is converted the way Linux's drivers/hv/hv_kvp.c converts it for the daemon: UTF-16 keys and
//! string values to UTF-8, a REG_DWORD or REG_QWORD to its decimal text; and every answer is a REG_SZ
//! record again ("all our values are strings", kvp_respond_to_host). Unlike Linux, which cuts a key or
//! value that does not fit its record, a Set that does not fit is refused with HV_INVALIDARG, so the pair
//! a host reads back is always the one it stored.

use crate::wire::kvp::{
    canonical_key, canonical_value, key_units, lossy, value_type, KvpError, ValueRecord,
};

/// `HV_KVP_EXCHANGE_MAX_KEY_SIZE`: a record's key area, in bytes.
pub const FILE_KEY_AREA: usize = 512;
/// `HV_KVP_EXCHANGE_MAX_VALUE_SIZE`: a record's value area, in bytes.
pub const FILE_VALUE_AREA: usize = 2048;
/// The length of one record in a pool file.
pub const FILE_RECORD_LEN: usize = FILE_KEY_AREA + FILE_VALUE_AREA;

/// One stored pair as its pool file record holds it: the key's and the value's bytes up to their first NUL
/// (UTF-8 when the guest's software or the agent wrote them; kept verbatim whatever they are, so a rewrite
/// never changes another writer's record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

impl Pair {
    /// A pair from text.
    pub fn text(key: &str, value: &str) -> Pair {
        Pair {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        }
    }

    /// The key as text (bytes that are not UTF-8 become U+FFFD).
    pub fn key_text(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }

    /// The value as text (bytes that are not UTF-8 become U+FFFD).
    pub fn value_text(&self) -> String {
        String::from_utf8_lossy(&self.value).into_owned()
    }

    /// The REG_SZ record a host is answered with.
    pub fn to_record(&self) -> ValueRecord {
        ValueRecord::string(&self.key_text(), &self.value_text())
    }
}

/// A change to a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    Set(Pair),
    Delete(Vec<u8>),
}

impl Edit {
    pub fn key(&self) -> &[u8] {
        match self {
            Edit::Set(pair) => &pair.key,
            Edit::Delete(key) => key,
        }
    }
}

/// Why a host's record cannot be stored in a pool file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PairError {
    /// A record no host could read back (openvmm's rules, [`canonical_key`] and [`canonical_value`]).
    Wire(KvpError),
    /// The key's UTF-8 form is longer than the 511 bytes a record holds before its NUL.
    KeyTooLong(usize),
    /// The value's UTF-8 form (or a number's decimal text) is longer than 2047 bytes.
    ValueTooLong(usize),
}

impl std::fmt::Display for PairError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PairError::Wire(error) => error.fmt(f),
            PairError::KeyTooLong(len) => write!(
                f,
                "the key is {len} bytes as UTF-8; a pool file record holds at most {}",
                FILE_KEY_AREA - 1
            ),
            PairError::ValueTooLong(len) => write!(
                f,
                "the value is {len} bytes as UTF-8; a pool file record holds at most {}",
                FILE_VALUE_AREA - 1
            ),
        }
    }
}

impl From<KvpError> for PairError {
    fn from(error: KvpError) -> PairError {
        PairError::Wire(error)
    }
}

/// The key a host names in a GET or DELETE, as the bytes a record holds (lenient: see [`key_units`]).
pub fn lookup_key(area: &[u8], key_size: u32) -> Result<Vec<u8>, KvpError> {
    Ok(lossy(&key_units(area, key_size)?).into_bytes())
}

/// The pair a host's SET record stores.
pub fn from_record(record: &ValueRecord) -> Result<Pair, PairError> {
    let key = lossy(&canonical_key(&record.key_area, record.key_size)?).into_bytes();
    if key.len() > FILE_KEY_AREA - 1 {
        return Err(PairError::KeyTooLong(key.len()));
    }
    let (kind, bytes) = canonical_value(record.value_type, record.value()?)?;
    let text = match kind {
        value_type::DWORD => {
            u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]).to_string()
        }
        value_type::QWORD => {
            let mut eight = [0; 8];
            eight.copy_from_slice(&bytes[..8]);
            u64::from_le_bytes(eight).to_string()
        }
        // A canonical string is valid UTF-16 ending in one NUL.
        _ => {
            let units: Vec<u16> = crate::wire::utf16le_units(&bytes)
                .take_while(|&unit| unit != 0)
                .collect();
            lossy(&units)
        }
    };
    if text.len() > FILE_VALUE_AREA - 1 {
        return Err(PairError::ValueTooLong(text.len()));
    }
    Ok(Pair {
        key,
        value: text.into_bytes(),
    })
}

/// Bytes a pool of `records` records takes on disk.
pub fn file_bytes(records: usize) -> u64 {
    (records as u64) * FILE_RECORD_LEN as u64
}

/// Applies `edit` to `pairs`, refusing a new key that would make the pool file larger than `max_bytes`;
/// on a refusal nothing changes. A Set of a key that is there replaces its value in place (the record keeps
/// its position, as hv_kvp_daemon's kvp_key_add_or_modify does); a new key is appended.
pub fn apply(pairs: &mut Vec<Pair>, edit: &Edit, max_bytes: u64) -> Result<(), String> {
    let at = pairs.iter().position(|pair| pair.key == edit.key());
    match (edit, at) {
        (Edit::Set(pair), Some(at)) => pairs[at].value = pair.value.clone(),
        (Edit::Set(pair), None) => {
            if file_bytes(pairs.len() + 1) > max_bytes {
                return Err(format!(
                    "the pool holds {} pairs, {} bytes on disk, and one more would pass pool_max_bytes ({max_bytes})",
                    pairs.len(),
                    file_bytes(pairs.len())
                ));
            }
            pairs.push(pair.clone());
        }
        (Edit::Delete(_), Some(at)) => {
            pairs.remove(at);
        }
        (Edit::Delete(_), None) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::kvp::{utf16, utf16_bytes};

    fn record(value_type: u32, key: &str, value: &[u8]) -> ValueRecord {
        ValueRecord::new(value_type, &utf16(key), value)
    }

    #[test]
    fn strings_become_utf8_and_numbers_their_decimal_text_as_linux_stores_them() {
        let text = from_record(&record(1, "Größe", &utf16_bytes(&utf16("zwölf €")))).unwrap();
        assert_eq!(text, Pair::text("Größe", "zwölf €"));
        let dword = from_record(&record(4, "n", &4_000_000_000u32.to_le_bytes())).unwrap();
        assert_eq!(dword.value, b"4000000000");
        let qword = from_record(&record(11, "n", &u64::MAX.to_le_bytes())).unwrap();
        assert_eq!(qword.value, u64::MAX.to_string().as_bytes());
        let linux_u64 = from_record(&record(8, "n", &7u64.to_le_bytes())).unwrap();
        assert_eq!(linux_u64.value, b"7");
        assert_eq!(text.to_record(), ValueRecord::string("Größe", "zwölf €"));
    }

    #[test]
    fn what_does_not_fit_a_record_is_refused_rather_than_cut() {
        // 255 units of a three-byte character: a valid wire key, 765 bytes as UTF-8.
        let long_key = "€".repeat(255);
        assert_eq!(
            from_record(&record(1, &long_key, &utf16_bytes(&utf16("v")))),
            Err(PairError::KeyTooLong(765))
        );
        let long_value = "€".repeat(700);
        assert_eq!(
            from_record(&record(1, "k", &utf16_bytes(&utf16(&long_value)))),
            Err(PairError::ValueTooLong(2100))
        );
        let fits = "a".repeat(511);
        assert!(from_record(&record(
            1,
            &fits[..255],
            &utf16_bytes(&utf16(&"b".repeat(1023)))
        ))
        .is_ok());
        assert!(matches!(
            from_record(&record(3, "k", &[1, 2])),
            Err(PairError::Wire(KvpError::ValueType(3)))
        ));
    }

    #[test]
    fn edits_replace_in_place_append_delete_and_respect_the_cap() {
        let mut pairs = vec![Pair::text("a", "1"), Pair::text("b", "2")];
        apply(&mut pairs, &Edit::Set(Pair::text("a", "3")), u64::MAX).unwrap();
        assert_eq!(pairs[0], Pair::text("a", "3"));
        let cap = file_bytes(2);
        let refused = apply(&mut pairs, &Edit::Set(Pair::text("c", "4")), cap).unwrap_err();
        assert!(refused.contains("pool_max_bytes"), "{refused}");
        assert_eq!(pairs.len(), 2);
        apply(&mut pairs, &Edit::Set(Pair::text("b", "5")), cap).unwrap();
        apply(&mut pairs, &Edit::Delete(b"a".to_vec()), cap).unwrap();
        apply(&mut pairs, &Edit::Delete(b"zz".to_vec()), cap).unwrap();
        apply(&mut pairs, &Edit::Set(Pair::text("c", "4")), cap).unwrap();
        assert_eq!(pairs, vec![Pair::text("b", "5"), Pair::text("c", "4")]);
    }
}
