//! The file-copy (FCOPY, IC message type 7) bodies: Linux `include/uapi/linux/hyperv.h` (`struct
//! hv_fcopy_hdr`, `struct hv_start_fcopy`, `struct hv_do_fcopy`, `enum hv_fcopy_op`, OVER_WRITE,
//! CREATE_PATH, DATA_FRAGMENT, W_MAX_PATH); docs/PROTOCOL.md §11. openvmm's `hyperv_ic_protocol` names
//! message type 7 (`GUEST_INTERFACE`) but defines none of these bodies, so Linux's header is the only
//! public layout. Every body starts with the same header:
//!
//! ```text
//!  0               4                               20                              36
//!  +---------------+-------------------------------+-------------------------------+
//!  | operation u32 | service_id0 (16, unused)      | service_id1 (16, unused)      |
//!  +---------------+-------------------------------+-------------------------------+
//! ```
//!
//! START_FILE_COPY (`hv_start_fcopy`, 1088 bytes):
//!
//! ```text
//!  36                      556                     1076        1080              1088
//!  +-----------------------+-----------------------+-----------+-----------------+
//!  | file_name u16[260]    | path_name u16[260]    | copy_flags| file_size u64   |
//!  +-----------------------+-----------------------+-----------+-----------------+
//! ```
//!
//! WRITE_TO_FILE (`hv_do_fcopy`): the header that defines FCOPY_VERSION_1 has a u32 `pad` after the
//! common header (6196 bytes); the FCOPY_VERSION_0 header had none (6192 bytes). Both are accepted, told
//! apart by the body's length (see [`parse_data`]):
//!
//! ```text
//!  padded:    36 pad u32 | 40 offset u64 | 48 size u32 | 52 data[6144]          (6196)
//!  unpadded:  36 offset u64 | 44 size u32 | 48 data[6144]                       (6192)
//! ```
//!
//! COMPLETE_FCOPY and CANCEL_FCOPY carry the common header alone. The names are UTF-16LE, NUL-terminated
//! within their 260 units; one with no NUL there, or with an unpaired surrogate, is refused rather than
//! cut or replaced (Linux's daemons turn non-ASCII units into 'X', which can name another file).

use std::fmt;
use std::ops::Range;

use super::{is_utf16, le_u32, le_u64, utf16le_units};

/// `W_MAX_PATH`: the UTF-16 units of each name field, the NUL included.
pub const NAME_UNITS: usize = 260;
/// `DATA_FRAGMENT`: the most data one WRITE_TO_FILE carries.
pub const DATA_FRAGMENT: usize = 6 * 1024;
/// `struct hv_fcopy_hdr`: the operation and two unused service ids.
pub const HEADER_LEN: usize = 36;
/// `struct hv_start_fcopy`.
pub const START_LEN: usize = 1088;
/// `struct hv_do_fcopy` with its `pad` word (the current header).
pub const DATA_LEN_PADDED: usize = PADDED_DATA_START + DATA_FRAGMENT;
/// `struct hv_do_fcopy` without it (older headers).
pub const DATA_LEN_UNPADDED: usize = UNPADDED_DATA_START + DATA_FRAGMENT;

/// Byte offsets from the start of the body.
mod field {
    use std::ops::Range;
    pub const OPERATION: Range<usize> = 0..4;
    pub const FILE_NAME: Range<usize> = 36..556;
    pub const PATH_NAME: Range<usize> = 556..1076;
    pub const COPY_FLAGS: Range<usize> = 1076..1080;
    pub const FILE_SIZE: usize = 1080;
    pub const PADDED_OFFSET: usize = 40;
    pub const PADDED_SIZE: Range<usize> = 48..52;
    pub const UNPADDED_OFFSET: usize = 36;
    pub const UNPADDED_SIZE: Range<usize> = 44..48;
}

const PADDED_DATA_START: usize = 52;
const UNPADDED_DATA_START: usize = 48;

/// `enum hv_fcopy_op`; unknown values are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Operation(pub u32);

impl Operation {
    pub const START_FILE_COPY: Operation = Operation(0);
    pub const WRITE_TO_FILE: Operation = Operation(1);
    pub const COMPLETE_FCOPY: Operation = Operation(2);
    pub const CANCEL_FCOPY: Operation = Operation(3);

    pub fn name(self) -> &'static str {
        match self {
            Operation::START_FILE_COPY => "start",
            Operation::WRITE_TO_FILE => "write",
            Operation::COMPLETE_FCOPY => "complete",
            Operation::CANCEL_FCOPY => "cancel",
            _ => "unknown",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// `copy_flags` of START_FILE_COPY; unknown bits are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CopyFlags(pub u32);

impl CopyFlags {
    /// `OVER_WRITE`: an existing file of that name may be replaced.
    pub const OVER_WRITE: u32 = 0x1;
    /// `CREATE_PATH`: missing directories of the path may be made.
    pub const CREATE_PATH: u32 = 0x2;

    pub fn overwrite(self) -> bool {
        self.0 & Self::OVER_WRITE != 0
    }

    pub fn create_path(self) -> bool {
        self.0 & Self::CREATE_PATH != 0
    }
}

/// Why an FCOPY body was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FcopyError {
    /// The body is shorter than its operation needs.
    TooShort {
        what: &'static str,
        needed: usize,
        got: usize,
    },
    /// A name field has no NUL within its 260 units.
    Unterminated(&'static str),
    /// A name field holds an unpaired surrogate.
    InvalidUtf16(&'static str),
    /// A name is too long for its field (when building a request).
    NameTooLong(&'static str, usize),
    /// A WRITE_TO_FILE whose size is over DATA_FRAGMENT or past the end of the body in either layout.
    BadDataSize { size: u32, body: usize },
}

impl fmt::Display for FcopyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FcopyError::TooShort { what, needed, got } => {
                write!(
                    f,
                    "file-copy {what} body needs {needed} bytes but has {got}"
                )
            }
            FcopyError::Unterminated(field) => write!(
                f,
                "the {field} has no NUL within its {NAME_UNITS} UTF-16 units"
            ),
            FcopyError::InvalidUtf16(field) => {
                write!(f, "the {field} is not valid UTF-16 (an unpaired surrogate)")
            }
            FcopyError::NameTooLong(field, units) => write!(
                f,
                "the {field} takes {units} UTF-16 units; at most {} fit with the NUL",
                NAME_UNITS - 1
            ),
            FcopyError::BadDataSize { size, body } => write!(
                f,
                "a write of {size} bytes does not fit a {body}-byte body (at most {DATA_FRAGMENT} bytes, \
                 after the 48- or 52-byte header)"
            ),
        }
    }
}

impl std::error::Error for FcopyError {}

fn require(what: &'static str, body: &[u8], needed: usize) -> Result<(), FcopyError> {
    if body.len() < needed {
        Err(FcopyError::TooShort {
            what,
            needed,
            got: body.len(),
        })
    } else {
        Ok(())
    }
}

/// The operation of a body, which must hold the whole common header (as Linux's uio daemon requires).
pub fn operation(body: &[u8]) -> Result<Operation, FcopyError> {
    require("header", body, HEADER_LEN)?;
    Ok(Operation(le_u32(body, field::OPERATION)))
}

/// START_FILE_COPY: what to create, where, and how large it will be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Start {
    /// The file's name as the host gave it (checked by the edge, not here: it may hold a '/').
    pub file_name: String,
    /// The directory as the host gave it.
    pub path_name: String,
    pub flags: CopyFlags,
    pub file_size: u64,
}

impl Start {
    /// Reads a START_FILE_COPY body; the operation is not checked here.
    pub fn parse(body: &[u8]) -> Result<Start, FcopyError> {
        require("start", body, START_LEN)?;
        Ok(Start {
            file_name: name(&body[field::FILE_NAME], "file name")?,
            path_name: name(&body[field::PATH_NAME], "path name")?,
            flags: CopyFlags(le_u32(body, field::COPY_FLAGS)),
            file_size: le_u64(body, field::FILE_SIZE),
        })
    }

    /// The 1088-byte body, service ids zero.
    pub fn to_body(&self) -> Result<Vec<u8>, FcopyError> {
        let mut body = header_body(Operation::START_FILE_COPY);
        body.resize(START_LEN, 0);
        put_name(&mut body[field::FILE_NAME], &self.file_name, "file name")?;
        put_name(&mut body[field::PATH_NAME], &self.path_name, "path name")?;
        body[field::COPY_FLAGS].copy_from_slice(&self.flags.0.to_le_bytes());
        body[field::FILE_SIZE..START_LEN].copy_from_slice(&self.file_size.to_le_bytes());
        Ok(body)
    }
}

/// The string of a name field: the units before the first NUL.
fn name(field: &[u8], what: &'static str) -> Result<String, FcopyError> {
    let units: Vec<u16> = utf16le_units(field).take_while(|&unit| unit != 0).collect();
    if units.len() == NAME_UNITS {
        return Err(FcopyError::Unterminated(what));
    }
    if !is_utf16(&units) {
        return Err(FcopyError::InvalidUtf16(what));
    }
    Ok(String::from_utf16_lossy(&units))
}

fn put_name(field: &mut [u8], text: &str, what: &'static str) -> Result<(), FcopyError> {
    let units: Vec<u16> = text.encode_utf16().collect();
    if units.len() >= NAME_UNITS {
        return Err(FcopyError::NameTooLong(what, units.len()));
    }
    for (slot, unit) in field.chunks_exact_mut(2).zip(units) {
        slot.copy_from_slice(&unit.to_le_bytes());
    }
    Ok(())
}

/// Which `hv_do_fcopy` a WRITE_TO_FILE body was read as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataLayout {
    /// The current header: a u32 `pad` before the offset.
    Padded,
    /// Older headers: the offset right after the common header.
    Unpadded,
}

/// One WRITE_TO_FILE: `data` goes at `offset`. The data borrows the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Data<'a> {
    pub offset: u64,
    pub data: &'a [u8],
    pub layout: DataLayout,
}

/// Where a layout's fields sit.
struct Layout {
    offset: usize,
    size: Range<usize>,
    data: usize,
}

const PADDED: Layout = Layout {
    offset: field::PADDED_OFFSET,
    size: field::PADDED_SIZE,
    data: PADDED_DATA_START,
};
const UNPADDED: Layout = Layout {
    offset: field::UNPADDED_OFFSET,
    size: field::UNPADDED_SIZE,
    data: UNPADDED_DATA_START,
};

/// The write a body holds when read as `layout`, if its size fits the fragment and the body.
fn read_as<'a>(body: &'a [u8], layout: &Layout) -> Result<(u64, &'a [u8]), u32> {
    if body.len() < layout.data {
        return Err(0);
    }
    let size = le_u32(body, layout.size.clone());
    let end = layout.data + size as usize;
    if size as usize > DATA_FRAGMENT || end > body.len() {
        return Err(size);
    }
    Ok((le_u64(body, layout.offset), &body[layout.data..end]))
}

/// Reads a WRITE_TO_FILE body in whichever `hv_do_fcopy` it is. A whole struct tells by its length:
/// 6192 bytes is the unpadded one, 6196 or more the padded one. A shorter body (a host that sends only
/// the data it has) is the padded one when its size field says exactly how much follows, else the
/// unpadded one when that one's does; any other is refused.
pub fn parse_data(body: &[u8]) -> Result<Data<'_>, FcopyError> {
    require("write", body, UNPADDED_DATA_START)?;
    let bad = |size| FcopyError::BadDataSize {
        size,
        body: body.len(),
    };
    let exact = |layout: &Layout| {
        read_as(body, layout)
            .ok()
            .filter(|(_, data)| layout.data + data.len() == body.len())
    };
    let (layout, read) = if body.len() == DATA_LEN_UNPADDED {
        (DataLayout::Unpadded, read_as(body, &UNPADDED))
    } else if body.len() >= DATA_LEN_PADDED {
        (DataLayout::Padded, read_as(body, &PADDED))
    } else if let Some(read) = exact(&PADDED) {
        (DataLayout::Padded, Ok(read))
    } else if let Some(read) = exact(&UNPADDED) {
        (DataLayout::Unpadded, Ok(read))
    } else {
        (DataLayout::Padded, read_as(body, &PADDED))
    };
    let (offset, data) = read.map_err(bad)?;
    Ok(Data {
        offset,
        data,
        layout,
    })
}

/// Appends a WRITE_TO_FILE body to `out`: the padded (current) struct, whole (6196 bytes) as Linux's
/// `sizeof(struct hv_do_fcopy)`, the data's tail zero. `data` is at most [`DATA_FRAGMENT`] bytes.
pub fn emit_data(offset: u64, data: &[u8], out: &mut Vec<u8>) -> Result<(), FcopyError> {
    if data.len() > DATA_FRAGMENT {
        return Err(FcopyError::BadDataSize {
            size: data.len() as u32,
            body: DATA_LEN_PADDED,
        });
    }
    let start = out.len();
    out.extend_from_slice(&Operation::WRITE_TO_FILE.0.to_le_bytes());
    out.resize(start + PADDED_DATA_START, 0);
    let body = &mut out[start..];
    body[field::PADDED_OFFSET..field::PADDED_OFFSET + 8].copy_from_slice(&offset.to_le_bytes());
    // Cannot truncate: checked against DATA_FRAGMENT above.
    body[field::PADDED_SIZE].copy_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    out.resize(start + DATA_LEN_PADDED, 0);
    Ok(())
}

/// The common header alone with `operation`: COMPLETE_FCOPY and CANCEL_FCOPY bodies.
pub fn header_body(operation: Operation) -> Vec<u8> {
    let mut body = vec![0; HEADER_LEN];
    body[field::OPERATION].copy_from_slice(&operation.0.to_le_bytes());
    body
}

#[cfg(test)]
mod tests;
