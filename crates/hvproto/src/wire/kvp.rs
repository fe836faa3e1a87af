//! The key-value exchange (KVP) body: Linux's `struct hv_kvp_msg` (include/uapi/linux/hyperv.h), which
//! drivers/hv/hv_kvp.c reads straight from the VMBus receive buffer after the IC header and writes back in
//! place as the answer. The same packed struct is used on the host wire and (with UTF-8 strings) between the
//! kernel and hv_kvp_daemon; on the wire keys and string values are UTF-16LE. docs/PROTOCOL.md §9; openvmm
//! `hyperv_ic_protocol/src/kvp.rs`.
//!
//! ```text
//!  body offset
//!  0      operation u8 (GET 0, SET 1, DELETE 2, ENUMERATE 3, GET_IP_INFO 4, SET_IP_INFO 5)
//!  1      pool u8      (EXTERNAL 0, GUEST 1, AUTO 2, AUTO_EXTERNAL 3, AUTO_INTERNAL 4)
//!  2..4   pad
//!  4      GET, SET:    value record (2572 bytes)                          -> body of 2576
//!         DELETE:      u32 key_size; u8 key[512]                          -> body of 520
//!         ENUMERATE:   u32 index; value record                            -> body of 2580
//!
//!  value record (struct hv_kvp_exchg_msg_value):
//!  0      u32 value_type (REG_SZ 1, REG_EXPAND_SZ 2, REG_DWORD 4, REG_QWORD 11; Linux's header says 8)
//!  4      u32 key_size   (bytes, counting the UTF-16 NUL)
//!  8      u32 value_size (bytes)
//!  12     u8 key[512]    (HV_KVP_EXCHANGE_MAX_KEY_SIZE)
//!  524    u8 value[2048] (HV_KVP_EXCHANGE_MAX_VALUE_SIZE; a u32 or u64 for the numeric types)
//! ```
//!
//! The kernel's struct is larger (its body union also holds the 7,426-byte IP-info record), but it only reads
//! the fields above for these operations, so a body must hold the operation's fields and may be longer;
//! the extra bytes are kept and sent back. Parsing never panics; sizes are checked where they are used.

use std::fmt;
use std::ops::Range;

use super::{is_utf16, le_u32, require_body, utf16le_units, WireError};

/// HV_KVP_EXCHANGE_MAX_KEY_SIZE: the key area, in bytes.
pub const MAX_KEY_SIZE: usize = 512;
/// HV_KVP_EXCHANGE_MAX_VALUE_SIZE: the value area, in bytes.
pub const MAX_VALUE_SIZE: usize = 2048;
/// The length of a value record.
pub const RECORD_LEN: usize = 12 + MAX_KEY_SIZE + MAX_VALUE_SIZE;
/// Where an operation's fields start in the body.
const FIELDS: usize = 4;

/// Offsets inside a value record.
mod record {
    use std::ops::Range;
    pub const VALUE_TYPE: Range<usize> = 0..4;
    pub const KEY_SIZE: Range<usize> = 4..8;
    pub const VALUE_SIZE: Range<usize> = 8..12;
    pub const KEY: Range<usize> = 12..524;
    pub const VALUE: Range<usize> = 524..2572;
}

/// `operation`; unknown values are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Operation(pub u8);

impl Operation {
    pub const GET: Operation = Operation(0);
    pub const SET: Operation = Operation(1);
    pub const DELETE: Operation = Operation(2);
    pub const ENUMERATE: Operation = Operation(3);
    pub const GET_IP_INFO: Operation = Operation(4);
    pub const SET_IP_INFO: Operation = Operation(5);

    pub fn name(self) -> &'static str {
        match self {
            Operation::GET => "get",
            Operation::SET => "set",
            Operation::DELETE => "delete",
            Operation::ENUMERATE => "enumerate",
            Operation::GET_IP_INFO => "get-ip-info",
            Operation::SET_IP_INFO => "set-ip-info",
            _ => "unknown",
        }
    }
}

/// `pool`; unknown values are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pool(pub u8);

impl Pool {
    /// Pairs the host stores in the guest (`Add-VMKvpItem`-style HostExchangeItems).
    pub const EXTERNAL: Pool = Pool(0);
    /// Pairs the guest publishes for the host (GuestExchangeItems).
    pub const GUEST: Pool = Pool(1);
    /// The guest's intrinsic values (GuestIntrinsicExchangeItems).
    pub const AUTO: Pool = Pool(2);
    pub const AUTO_EXTERNAL: Pool = Pool(3);
    pub const AUTO_INTERNAL: Pool = Pool(4);

    pub fn name(self) -> &'static str {
        match self {
            Pool::EXTERNAL => "external",
            Pool::GUEST => "guest",
            Pool::AUTO => "auto",
            Pool::AUTO_EXTERNAL => "auto-external",
            Pool::AUTO_INTERNAL => "auto-internal",
            _ => "unknown",
        }
    }
}

impl Pool {
    /// A pool by the name [`Pool::name`] gives it, or by number; None for anything else.
    pub fn parse(text: &str) -> Option<Pool> {
        match text {
            "external" => Some(Pool::EXTERNAL),
            "guest" => Some(Pool::GUEST),
            "auto" => Some(Pool::AUTO),
            "auto-external" => Some(Pool::AUTO_EXTERNAL),
            "auto-internal" => Some(Pool::AUTO_INTERNAL),
            number => number.parse().ok().map(Pool),
        }
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// Registry value types.
pub mod value_type {
    pub const STRING: u32 = 1;
    pub const EXPAND_STRING: u32 = 2;
    pub const DWORD: u32 = 4;
    /// Linux's REG_U64 (include/uapi/linux/hyperv.h); Windows' REG_QWORD is 11.
    pub const LINUX_U64: u32 = 8;
    pub const QWORD: u32 = 11;
}

/// A value record as on the wire: the declared sizes and both areas verbatim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueRecord {
    pub value_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    /// The whole key area, [`MAX_KEY_SIZE`] bytes.
    pub key_area: Vec<u8>,
    /// The whole value area, [`MAX_VALUE_SIZE`] bytes.
    pub value_area: Vec<u8>,
}

/// Why a key or value in a record cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvpError {
    KeySize(u32),
    ValueSize(u32),
    EmptyKey,
    /// No NUL within key_size: the key would come back as another one (cut, or with a NUL added).
    KeyNotTerminated,
    /// The key's units are not valid UTF-16 (an unpaired surrogate).
    KeyNotUtf16,
    /// A value type a host cannot read back.
    ValueType(u32),
    /// A DWORD or QWORD whose value_size is not 4 or 8.
    NumberSize {
        value_type: u32,
        size: u32,
    },
    /// A string whose value_size is odd.
    StringSize(u32),
    /// A string filling all 2048 bytes with no NUL: there is no room for the terminator.
    StringNotTerminated,
    /// A string that is not valid UTF-16.
    StringNotUtf16,
}

impl fmt::Display for KvpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvpError::KeySize(size) => write!(
                f,
                "key_size {size} is not an even number of bytes from 2 to {MAX_KEY_SIZE}"
            ),
            KvpError::ValueSize(size) => {
                write!(f, "value_size {size} exceeds {MAX_VALUE_SIZE} bytes")
            }
            KvpError::EmptyKey => f.write_str("the key is empty"),
            KvpError::KeyNotTerminated => f.write_str(
                "the key has no UTF-16 NUL within key_size (a key is at most 255 units and its NUL)",
            ),
            KvpError::KeyNotUtf16 => f.write_str("the key is not valid UTF-16 (an unpaired surrogate)"),
            KvpError::ValueType(value_type) => write!(
                f,
                "value_type {value_type} is none of REG_SZ 1, REG_EXPAND_SZ 2, REG_DWORD 4, REG_QWORD 11 \
                 (or Linux's REG_U64 8)"
            ),
            KvpError::NumberSize { value_type, size } => write!(
                f,
                "value_size {size} does not fit value_type {value_type} (a DWORD is 4 bytes, a QWORD 8)"
            ),
            KvpError::StringSize(size) => {
                write!(f, "value_size {size} of a string is not an even number of bytes")
            }
            KvpError::StringNotTerminated => f.write_str(
                "the string fills all 2048 bytes without a UTF-16 NUL; at most 1023 units fit with it",
            ),
            KvpError::StringNotUtf16 => {
                f.write_str("the string value is not valid UTF-16 (an unpaired surrogate)")
            }
        }
    }
}

impl std::error::Error for KvpError {}

/// The UTF-16 code units of a key area holding `key_size` bytes: up to the first NUL, or all of them when
/// the terminator is missing. Lenient, for looking keys up (GET, DELETE): a key stored through
/// [`canonical_key`] always has its terminator, so one without cannot match a different stored key.
pub fn key_units(area: &[u8], key_size: u32) -> Result<Vec<u16>, KvpError> {
    let size = key_size as usize;
    if size == 0 || size % 2 != 0 || size > MAX_KEY_SIZE || size > area.len() {
        return Err(KvpError::KeySize(key_size));
    }
    let units: Vec<u16> = utf16le_units(&area[..size])
        .take_while(|&unit| unit != 0)
        .collect();
    if units.is_empty() {
        return Err(KvpError::EmptyKey);
    }
    Ok(units)
}

/// The key of a record the guest will store: the units before the first NUL, which must lie within
/// key_size, and valid UTF-16. These are the rules of openvmm's host parser (`vm/devices/hyperv_ic/src/kvp.rs`,
/// `parse_str`: even size, a NUL at the end, `String::from_utf16`), which fails its whole KVP channel on a
/// record it cannot read; a record built from a canonical key always passes them.
pub fn canonical_key(area: &[u8], key_size: u32) -> Result<Vec<u16>, KvpError> {
    let units = key_units(area, key_size)?;
    if units.len() == key_size as usize / 2 {
        return Err(KvpError::KeyNotTerminated);
    }
    if !is_utf16(&units) {
        return Err(KvpError::KeyNotUtf16);
    }
    Ok(units)
}

/// A value the guest will store, as (value_type, bytes) that openvmm's `parse_enumerate_response` reads:
/// a DWORD of 4 bytes, a QWORD of 8 (Linux's REG_U64 8 is stored as REG_QWORD 11, the number Windows and
/// openvmm know), or a REG_SZ / REG_EXPAND_SZ string of valid UTF-16 ending in exactly one NUL. A string
/// is cut at its first NUL; one sent without a NUL (Linux's hv_kvp.c does not require it) gets one added when
/// it fits.
pub fn canonical_value(value_type: u32, bytes: &[u8]) -> Result<(u32, Vec<u8>), KvpError> {
    if bytes.len() > MAX_VALUE_SIZE {
        return Err(KvpError::ValueSize(bytes.len() as u32));
    }
    let size = bytes.len() as u32;
    match value_type {
        value_type::DWORD if size == 4 => Ok((value_type, bytes.to_vec())),
        value_type::QWORD | value_type::LINUX_U64 if size == 8 => {
            Ok((value_type::QWORD, bytes.to_vec()))
        }
        value_type::DWORD | value_type::QWORD | value_type::LINUX_U64 => {
            Err(KvpError::NumberSize { value_type, size })
        }
        value_type::STRING | value_type::EXPAND_STRING => {
            if size % 2 != 0 {
                return Err(KvpError::StringSize(size));
            }
            let all: Vec<u16> = utf16le_units(bytes).collect();
            let text = match all.iter().position(|&unit| unit == 0) {
                Some(end) => &all[..end],
                None if all.len() < MAX_VALUE_SIZE / 2 => &all[..],
                None => return Err(KvpError::StringNotTerminated),
            };
            if !is_utf16(text) {
                return Err(KvpError::StringNotUtf16);
            }
            Ok((value_type, utf16_bytes(text)))
        }
        other => Err(KvpError::ValueType(other)),
    }
}

/// A key as UTF-16 units without a terminator, from text.
pub fn utf16(text: &str) -> Vec<u16> {
    text.encode_utf16().collect()
}

/// UTF-16LE bytes of `units` followed by a NUL: the wire form of a string key or REG_SZ value.
pub fn utf16_bytes(units: &[u16]) -> Vec<u8> {
    units
        .iter()
        .chain(std::iter::once(&0))
        .flat_map(|unit| unit.to_le_bytes())
        .collect()
}

/// Text for logs and hvhost from UTF-16 units (unpaired surrogates become U+FFFD).
pub fn lossy(units: &[u16]) -> String {
    String::from_utf16_lossy(units)
}

/// A value for display: strings decoded from UTF-16LE up to the first NUL, numbers as numbers, anything else
/// as hex.
pub fn display_value(value_type: u32, bytes: &[u8]) -> String {
    match value_type {
        value_type::STRING | value_type::EXPAND_STRING => {
            let units: Vec<u16> = utf16le_units(bytes).take_while(|&unit| unit != 0).collect();
            lossy(&units)
        }
        value_type::DWORD if bytes.len() >= 4 => le_u32(bytes, 0..4).to_string(),
        value_type::QWORD | value_type::LINUX_U64 if bytes.len() >= 8 => {
            super::le_u64(bytes, 0).to_string()
        }
        _ => bytes.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

impl ValueRecord {
    /// A record with a NUL-terminated UTF-16 key and `value` (at most [`MAX_VALUE_SIZE`] bytes, cut there).
    pub fn new(value_type: u32, key: &[u16], value: &[u8]) -> ValueRecord {
        let mut key_area = utf16_bytes(&key[..key.len().min(MAX_KEY_SIZE / 2 - 1)]);
        let key_size = key_area.len() as u32;
        key_area.resize(MAX_KEY_SIZE, 0);
        let mut value_area = value[..value.len().min(MAX_VALUE_SIZE)].to_vec();
        let value_size = value_area.len() as u32;
        value_area.resize(MAX_VALUE_SIZE, 0);
        ValueRecord {
            value_type,
            key_size,
            value_size,
            key_area,
            value_area,
        }
    }

    /// A REG_SZ record: key and value as NUL-terminated UTF-16LE, as the host expects (hv_kvp.c). The value
    /// is cut at a NUL and to 1023 units, never inside a surrogate pair, so the record stays valid UTF-16.
    pub fn string(key: &str, value: &str) -> ValueRecord {
        let value = value.split('\0').next().unwrap_or_default();
        let mut units = Vec::with_capacity(value.len().min(MAX_VALUE_SIZE / 2));
        for c in value.chars() {
            if units.len() + c.len_utf16() > MAX_VALUE_SIZE / 2 - 1 {
                break;
            }
            let mut pair = [0u16; 2];
            units.extend_from_slice(c.encode_utf16(&mut pair));
        }
        ValueRecord::new(value_type::STRING, &utf16(key), &utf16_bytes(&units))
    }

    fn parse(bytes: &[u8]) -> ValueRecord {
        ValueRecord {
            value_type: le_u32(bytes, record::VALUE_TYPE),
            key_size: le_u32(bytes, record::KEY_SIZE),
            value_size: le_u32(bytes, record::VALUE_SIZE),
            key_area: bytes[record::KEY].to_vec(),
            value_area: bytes[record::VALUE].to_vec(),
        }
    }

    fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.value_type.to_le_bytes());
        out.extend_from_slice(&self.key_size.to_le_bytes());
        out.extend_from_slice(&self.value_size.to_le_bytes());
        area(out, &self.key_area, MAX_KEY_SIZE);
        area(out, &self.value_area, MAX_VALUE_SIZE);
    }

    /// The key's code units (see [`key_units`]).
    pub fn key(&self) -> Result<Vec<u16>, KvpError> {
        key_units(&self.key_area, self.key_size)
    }

    /// The value's bytes, as many as value_size says.
    pub fn value(&self) -> Result<&[u8], KvpError> {
        let size = self.value_size as usize;
        if size > MAX_VALUE_SIZE || size > self.value_area.len() {
            return Err(KvpError::ValueSize(self.value_size));
        }
        Ok(&self.value_area[..size])
    }
}

/// Appends `bytes` as an area of exactly `len` bytes (zero-padded or cut).
fn area(out: &mut Vec<u8>, bytes: &[u8], len: usize) {
    let take = bytes.len().min(len);
    out.extend_from_slice(&bytes[..take]);
    out.resize(out.len() + (len - take), 0);
}

/// The operation's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvpBody {
    /// GET or SET: one value record.
    Value(ValueRecord),
    Delete {
        key_size: u32,
        key_area: Vec<u8>,
    },
    Enumerate {
        index: u32,
        record: ValueRecord,
    },
    /// Another operation (the IP-info ones, unknown ones): the bytes after the header, verbatim.
    Other(Vec<u8>),
}

/// A KVP message body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvpMessage {
    pub operation: Operation,
    pub pool: Pool,
    pub pad: [u8; 2],
    pub body: KvpBody,
    /// Bytes after the operation's fields, kept so that an answer is as long as its request.
    pub trailing: Vec<u8>,
}

impl KvpMessage {
    /// A message with no trailing bytes.
    pub fn new(operation: Operation, pool: Pool, body: KvpBody) -> KvpMessage {
        KvpMessage {
            operation,
            pool,
            pad: [0; 2],
            body,
            trailing: Vec::new(),
        }
    }

    pub fn parse(body: &[u8]) -> Result<KvpMessage, WireError> {
        require_body("kvp", body, FIELDS)?;
        let operation = Operation(body[0]);
        let fields = |len: usize| -> Result<Range<usize>, WireError> {
            require_body("kvp", body, FIELDS + len)?;
            Ok(FIELDS..FIELDS + len)
        };
        let (parsed, end) = match operation {
            Operation::GET | Operation::SET => {
                let at = fields(RECORD_LEN)?;
                (
                    KvpBody::Value(ValueRecord::parse(&body[at.clone()])),
                    at.end,
                )
            }
            Operation::DELETE => {
                let at = fields(4 + MAX_KEY_SIZE)?;
                let key_size = le_u32(body, FIELDS..FIELDS + 4);
                let key_area = body[FIELDS + 4..at.end].to_vec();
                (KvpBody::Delete { key_size, key_area }, at.end)
            }
            Operation::ENUMERATE => {
                let at = fields(4 + RECORD_LEN)?;
                let index = le_u32(body, FIELDS..FIELDS + 4);
                let record = ValueRecord::parse(&body[FIELDS + 4..at.end]);
                (KvpBody::Enumerate { index, record }, at.end)
            }
            _ => (KvpBody::Other(body[FIELDS..].to_vec()), body.len()),
        };
        Ok(KvpMessage {
            operation,
            pool: Pool(body[1]),
            pad: [body[2], body[3]],
            body: parsed,
            trailing: body[end..].to_vec(),
        })
    }

    pub fn to_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIELDS + 4 + RECORD_LEN + self.trailing.len());
        out.push(self.operation.0);
        out.push(self.pool.0);
        out.extend_from_slice(&self.pad);
        match &self.body {
            KvpBody::Value(record) => record.emit(&mut out),
            KvpBody::Delete { key_size, key_area } => {
                out.extend_from_slice(&key_size.to_le_bytes());
                area(&mut out, key_area, MAX_KEY_SIZE);
            }
            KvpBody::Enumerate { index, record } => {
                out.extend_from_slice(&index.to_le_bytes());
                record.emit(&mut out);
            }
            KvpBody::Other(bytes) => out.extend_from_slice(bytes),
        }
        out.extend_from_slice(&self.trailing);
        out
    }

    /// The value record of a GET, SET or ENUMERATE.
    pub fn record(&self) -> Option<&ValueRecord> {
        match &self.body {
            KvpBody::Value(record) | KvpBody::Enumerate { record, .. } => Some(record),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
