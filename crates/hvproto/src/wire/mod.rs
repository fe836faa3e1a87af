//! Bytes ⇄ typed integration-service messages, and framing on a byte stream. No I/O, no clock.
//!
//! Every message on an hv_sock stream is the VMBus pipe header, the IC header and a body (docs/PROTOCOL.md §2;
//! Linux `include/linux/hyperv.h` `struct vmbuspipe_hdr`, `struct icmsg_hdr`). All fields are little-endian
//! and packed:
//!
//! ```text
//!  0               4               8       10      12      14      16      18      20
//!  +---------------+---------------+-------+-------+-------+-------+-------+-------+
//!  | pipe type     | pipe msgsize  | icverframe    |msgtype| icvermsg      |msgsize|
//!  +---------------+---+---+-------+-------+-------+-------+-------+-------+-------+
//!  | status        |tid|flg|rsvd   | body (icmsgsize bytes) ...
//!  +---------------+---+---+-------+-------------------------------------------
//!  20              24  25  26      28
//! ```
//!
//! `pipe msgsize` counts the IC header and the body, so it must equal 20 + icmsgsize. `pipe type` is the VMBus
//! pipe packet type (Linux calls the field `flags`): DATA = 1 is what openvmm's pipe writes and all its pipe
//! reader accepts (`vm/devices/vmbus/vmbus_ring/src/lib.rs` PIPE_PACKET_TYPE_DATA, `vmbus_async/src/pipe.rs`),
//! and what Linux's hv_utils sends back, since it answers in the host's own buffer. We send 1, and accept 1 or
//! 0 (what hvagent sent before, and what a host built from Linux's struct alone may leave); any other value
//! (PARTIAL 2, the GPA-direct types 3 and 4, or garbage) means the stream is not IC messages.

pub mod fcopy;
pub mod heartbeat;
pub mod ipinfo;
pub mod kvp;
pub mod negotiate;
mod reply;
pub mod shutdown;
pub mod timesync;
pub mod vss;

pub use reply::ReplyWriter;

use std::fmt;

/// Byte offsets of the header fields, from the start of a message.
pub mod field {
    use std::ops::Range;
    pub const PIPE_TYPE: Range<usize> = 0..4;
    pub const PIPE_MSGSIZE: Range<usize> = 4..8;
    pub const FRAMEWORK_MAJOR: Range<usize> = 8..10;
    pub const FRAMEWORK_MINOR: Range<usize> = 10..12;
    pub const MSGTYPE: Range<usize> = 12..14;
    pub const MESSAGE_MAJOR: Range<usize> = 14..16;
    pub const MESSAGE_MINOR: Range<usize> = 16..18;
    pub const ICMSGSIZE: Range<usize> = 18..20;
    pub const STATUS: Range<usize> = 20..24;
    pub const TRANSACTION_ID: usize = 24;
    pub const ICFLAGS: usize = 25;
    pub const RESERVED: Range<usize> = 26..28;
    pub const BODY: usize = 28;
}

/// The VMBus pipe packet types a message may carry (see the module documentation).
pub mod pipe_type {
    /// PIPE_PACKET_TYPE_DATA: what we send.
    pub const DATA: u32 = 1;
    /// Accepted on receipt too: earlier hvagent peers and hosts written from Linux's struct send 0.
    pub const LEGACY_ZERO: u32 = 0;
}

/// Length of `vmbuspipe_hdr`.
pub const PIPE_HEADER_LEN: usize = 8;
/// Length of `icmsg_hdr`.
pub const IC_HEADER_LEN: usize = 20;
/// Length of both headers: where the body starts (the kernel's ICMSG_HDR).
pub const HEADER_LEN: usize = PIPE_HEADER_LEN + IC_HEADER_LEN;
/// Largest whole message (both headers and body) we accept or send. A Hyper-V host bounds its IC messages
/// at 13,312 bytes (openvmm `hyperv_ic_protocol` MAX_MESSAGE_SIZE), and one hv_sock packet carries at most 16 KiB.
pub const MAX_MESSAGE_LEN: usize = 16 * 1024;

/// A little-endian u16 at `range`; callers have checked the length. These three are marked inline because
/// at the release profile's opt-level "s" each header field was otherwise a call.
#[inline]
fn le_u16(bytes: &[u8], at: std::ops::Range<usize>) -> u16 {
    u16::from_le_bytes([bytes[at.start], bytes[at.start + 1]])
}

/// A little-endian u32 at `range`; callers have checked the length.
#[inline]
fn le_u32(bytes: &[u8], at: std::ops::Range<usize>) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at]);
    u32::from_le_bytes(word)
}

/// A little-endian u64 at `start`; callers have checked the length.
#[inline]
fn le_u64(bytes: &[u8], start: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[start..start + 8]);
    u64::from_le_bytes(word)
}

/// The UTF-16LE code units of `bytes` (a trailing odd byte is not a unit): how keys, string values and
/// display messages travel.
pub fn utf16le_units(bytes: &[u8]) -> impl Iterator<Item = u16> + '_ {
    bytes
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
}

/// Whether `units` are valid UTF-16 (no unpaired surrogate).
pub fn is_utf16(units: &[u16]) -> bool {
    char::decode_utf16(units.iter().copied()).all(|unit| unit.is_ok())
}

/// Why bytes are not a valid message or body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The pipe header's packet type is neither DATA (1) nor 0.
    PipeType(u32),
    /// Pipe msgsize disagrees with the IC header's icmsgsize.
    LengthMismatch { msgsize: u32, icmsgsize: u16 },
    /// The message would exceed [`MAX_MESSAGE_LEN`].
    TooLarge { len: usize },
    /// A buffer handed to [`Message::parse`] is shorter or longer than the message it holds.
    Truncated { needed: usize, got: usize },
    /// A body is shorter than its message type needs.
    BodyTooShort {
        what: &'static str,
        needed: usize,
        got: usize,
    },
    /// A negotiation body lists more than 100 versions of one kind.
    TooManyVersions { framework: u16, message: u16 },
    /// Bytes left over after a message in a buffer that should hold exactly one.
    TrailingBytes { extra: usize },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::PipeType(value) => write!(
                f,
                "pipe header packet type {value:#x} is not 1 (VMBus pipe DATA) or 0; the peer does not \
                 speak IC messages, or the stream is out of step"
            ),
            WireError::LengthMismatch { msgsize, icmsgsize } => write!(
                f,
                "pipe header msgsize {msgsize} is not 20 + icmsgsize {icmsgsize}"
            ),
            WireError::TooLarge { len } => write!(
                f,
                "message of {len} bytes exceeds the {MAX_MESSAGE_LEN}-byte limit"
            ),
            WireError::Truncated { needed, got } => {
                write!(f, "message needs {needed} bytes but {got} were given")
            }
            WireError::BodyTooShort { what, needed, got } => write!(
                f,
                "{what} body needs at least {needed} bytes but has {got}"
            ),
            WireError::TooManyVersions { framework, message } => write!(
                f,
                "negotiation lists {framework} framework and {message} message versions (at most {} \
                 each, and they must fit the body)",
                negotiate::MAX_VERSIONS
            ),
            WireError::TrailingBytes { extra } => {
                write!(f, "{extra} bytes follow the message")
            }
        }
    }
}

impl std::error::Error for WireError {}

/// Checks that `body` holds at least `needed` bytes for a `what` body.
pub(crate) fn require_body(
    what: &'static str,
    body: &[u8],
    needed: usize,
) -> Result<(), WireError> {
    if body.len() < needed {
        Err(WireError::BodyTooShort {
            what,
            needed,
            got: body.len(),
        })
    } else {
        Ok(())
    }
}

/// An IC protocol version (`struct ic_version`): u16 major, u16 minor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct IcVersion {
    pub major: u16,
    pub minor: u16,
}

impl IcVersion {
    pub const fn new(major: u16, minor: u16) -> Self {
        IcVersion { major, minor }
    }
}

impl fmt::Display for IcVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// `icmsgtype`. Unknown values are kept: they are data to answer, not parse failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MessageType(pub u16);

impl MessageType {
    pub const NEGOTIATE: MessageType = MessageType(0);
    pub const HEARTBEAT: MessageType = MessageType(1);
    pub const KVP_EXCHANGE: MessageType = MessageType(2);
    pub const SHUTDOWN: MessageType = MessageType(3);
    pub const TIMESYNC: MessageType = MessageType(4);
    pub const VSS: MessageType = MessageType(5);
    pub const FCOPY: MessageType = MessageType(7);

    /// A short lowercase name for logs.
    pub fn name(self) -> &'static str {
        match self {
            MessageType::NEGOTIATE => "negotiate",
            MessageType::HEARTBEAT => "heartbeat",
            MessageType::KVP_EXCHANGE => "kvp",
            MessageType::SHUTDOWN => "shutdown",
            MessageType::TIMESYNC => "timesync",
            MessageType::VSS => "vss",
            MessageType::FCOPY => "fcopy",
            _ => "unknown",
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// `icflags` bits. Unknown bits are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IcFlags(pub u8);

impl IcFlags {
    /// The sender expects a response.
    pub const TRANSACTION: u8 = 1;
    pub const REQUEST: u8 = 2;
    pub const RESPONSE: u8 = 4;

    pub const fn contains(self, bits: u8) -> bool {
        self.0 & bits == bits
    }

    /// A message is a response when it says so; anything else is a request (docs/PROTOCOL.md §5.1).
    pub const fn is_response(self) -> bool {
        self.contains(Self::RESPONSE)
    }

    /// Whether the sender waits for an answer.
    pub const fn expects_answer(self) -> bool {
        self.contains(Self::TRANSACTION)
    }
}

/// The `status` field: an HRESULT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Status(pub u32);

impl Status {
    pub const OK: Status = Status(0);
    pub const FAIL: Status = Status(0x8000_4005);
    pub const CONTINUE: Status = Status(0x8007_0103);
    pub const NOT_SUPPORTED: Status = Status(0x8007_0032);
    pub const INVALID_ARG: Status = Status(0x8007_0057);
    pub const DEVICE_NOT_CONNECTED: Status = Status(0x8007_048F);
    /// HV_GUID_NOTFOUND (include/uapi/linux/hyperv.h): the IP-info operations' answer for an adapter the
    /// guest does not have.
    pub const GUID_NOT_FOUND: Status = Status(0x8004_1002);
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            Status::OK => "HV_S_OK",
            Status::FAIL => "HV_E_FAIL",
            Status::CONTINUE => "HV_S_CONT",
            Status::NOT_SUPPORTED => "HV_ERROR_NOT_SUPPORTED",
            Status::INVALID_ARG => "HV_INVALIDARG",
            Status::DEVICE_NOT_CONNECTED => "HV_ERROR_DEVICE_NOT_CONNECTED",
            // The file-copy service's (service::filecopy::status): Linux's two, then Win32 HRESULTs.
            Status(0x8007_0050) => "HV_ERROR_ALREADY_EXISTS",
            Status(0x8007_0070) => "HV_ERROR_DISK_FULL",
            Status(0x8007_0003) => "ERROR_PATH_NOT_FOUND",
            Status(0x8007_0005) => "ERROR_ACCESS_DENIED",
            Status(0x8007_007B) => "ERROR_INVALID_NAME",
            Status(0x8007_00AA) => "ERROR_BUSY",
            Status(0x8007_00DE) => "ERROR_BAD_FILE_TYPE",
            Status(0x8007_00DF) => "ERROR_FILE_TOO_LARGE",
            Status(0x8007_02A9) => "ERROR_STOPPED_ON_SYMLINK",
            Status::GUID_NOT_FOUND => "HV_GUID_NOTFOUND",
            _ => return write!(f, "{:#010x}", self.0),
        };
        write!(f, "{name} ({:#010x})", self.0)
    }
}

/// The IC header (`struct icmsg_hdr`) less `icmsgsize`, which is the body's length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IcHeader {
    pub framework_version: IcVersion,
    pub msgtype: MessageType,
    pub message_version: IcVersion,
    pub status: Status,
    pub transaction_id: u8,
    pub flags: IcFlags,
    pub reserved: [u8; 2],
}

impl Default for MessageType {
    fn default() -> Self {
        MessageType::NEGOTIATE
    }
}

/// One whole message: pipe packet type, IC header and body. The body is a `Vec<u8>` for a message built to
/// be sent or kept, and a slice borrowed from the read buffer for one just decoded ([`Decoder::next_message`],
/// [`Message::parse`]): answering a message needs no copy of it.
#[derive(Clone, Copy, Debug)]
pub struct Message<B = Vec<u8>> {
    /// `vmbuspipe_hdr.flags`, the pipe packet type: [`pipe_type::DATA`] when we send, kept as received.
    pub pipe_type: u32,
    pub header: IcHeader,
    pub body: B,
}

/// A message whose body is borrowed.
pub type MessageRef<'a> = Message<&'a [u8]>;

impl<A: AsRef<[u8]>, B: AsRef<[u8]>> PartialEq<Message<B>> for Message<A> {
    /// Equal when the bytes on the wire would be, whoever owns the body.
    fn eq(&self, other: &Message<B>) -> bool {
        self.pipe_type == other.pipe_type
            && self.header == other.header
            && self.body.as_ref() == other.body.as_ref()
    }
}

impl<B: AsRef<[u8]>> Eq for Message<B> {}

impl Message {
    /// A new request of `msgtype` that expects an answer.
    pub fn request(
        msgtype: MessageType,
        framework_version: IcVersion,
        message_version: IcVersion,
        transaction_id: u8,
        body: Vec<u8>,
    ) -> Message {
        Message {
            pipe_type: pipe_type::DATA,
            header: IcHeader {
                framework_version,
                msgtype,
                message_version,
                status: Status::OK,
                transaction_id,
                flags: IcFlags(IcFlags::TRANSACTION | IcFlags::REQUEST),
                reserved: [0; 2],
            },
            body,
        }
    }
}

impl<B: AsRef<[u8]>> Message<B> {
    /// The same message with its body borrowed.
    pub fn view(&self) -> MessageRef<'_> {
        Message {
            pipe_type: self.pipe_type,
            header: self.header,
            body: self.body.as_ref(),
        }
    }

    /// A copy that owns its body, to keep after the buffer it was read from is reused.
    pub fn to_owned_message(&self) -> Message {
        Message {
            pipe_type: self.pipe_type,
            header: self.header,
            body: self.body.as_ref().to_vec(),
        }
    }

    /// The header of the answer to this message: same type, versions and transaction id,
    /// TRANSACTION|RESPONSE, and `status`.
    pub fn reply_header(&self, status: Status) -> IcHeader {
        IcHeader {
            status,
            flags: IcFlags(IcFlags::TRANSACTION | IcFlags::RESPONSE),
            reserved: [0; 2],
            ..self.header
        }
    }

    /// The answer to this message with `body` (see [`Message::reply_header`]). [`ReplyWriter`] emits one
    /// without building it.
    pub fn reply(&self, status: Status, body: Vec<u8>) -> Message {
        Message {
            pipe_type: pipe_type::DATA,
            header: self.reply_header(status),
            body,
        }
    }

    /// Bytes this message takes on the wire.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body.as_ref().len()
    }

    /// Appends the wire form to `out`. The body must fit the u16 icmsgsize and [`MAX_MESSAGE_LEN`]; every
    /// message this crate builds does, and one that does not is a bug, refused rather than truncated.
    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let body = self.body.as_ref();
        let start = out.len();
        out.reserve(HEADER_LEN + body.len());
        out.extend_from_slice(&[0; HEADER_LEN]);
        out.extend_from_slice(body);
        finish_frame(self.pipe_type, &self.header, out, start)
    }

    /// The wire form as a new vector.
    pub fn to_bytes(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.emit(&mut out)?;
        Ok(out)
    }
}

impl<'a> Message<&'a [u8]> {
    /// Parses a buffer that holds exactly one message; the body stays in `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<MessageRef<'a>, WireError> {
        let len = frame_len(bytes)?.ok_or(WireError::Truncated {
            needed: HEADER_LEN,
            got: bytes.len(),
        })?;
        if bytes.len() < len {
            return Err(WireError::Truncated {
                needed: len,
                got: bytes.len(),
            });
        }
        if bytes.len() > len {
            return Err(WireError::TrailingBytes {
                extra: bytes.len() - len,
            });
        }
        Ok(Self::from_frame(bytes))
    }

    /// The message in a frame whose length [`frame_len`] has validated.
    fn from_frame(frame: &'a [u8]) -> MessageRef<'a> {
        Message {
            pipe_type: le_u32(frame, field::PIPE_TYPE),
            header: IcHeader {
                framework_version: IcVersion::new(
                    le_u16(frame, field::FRAMEWORK_MAJOR),
                    le_u16(frame, field::FRAMEWORK_MINOR),
                ),
                msgtype: MessageType(le_u16(frame, field::MSGTYPE)),
                message_version: IcVersion::new(
                    le_u16(frame, field::MESSAGE_MAJOR),
                    le_u16(frame, field::MESSAGE_MINOR),
                ),
                status: Status(le_u32(frame, field::STATUS)),
                transaction_id: frame[field::TRANSACTION_ID],
                flags: IcFlags(frame[field::ICFLAGS]),
                reserved: [
                    frame[field::RESERVED.start],
                    frame[field::RESERVED.start + 1],
                ],
            },
            body: &frame[field::BODY..],
        }
    }
}

/// Writes both headers over the [`HEADER_LEN`] bytes at `out[start..]`, with the sizes of the body that
/// follows them to the end of `out`. A message over [`MAX_MESSAGE_LEN`] is refused and taken out of `out`
/// again.
fn finish_frame(
    pipe_type: u32,
    header: &IcHeader,
    out: &mut Vec<u8>,
    start: usize,
) -> Result<(), WireError> {
    let len = out.len() - start;
    if len > MAX_MESSAGE_LEN {
        out.truncate(start);
        return Err(WireError::TooLarge { len });
    }
    // Cannot overflow: len <= 16 KiB.
    let icmsgsize = (len - HEADER_LEN) as u16;
    let msgsize = (len - PIPE_HEADER_LEN) as u32;
    let frame = &mut out[start..start + HEADER_LEN];
    frame[field::TRANSACTION_ID] = header.transaction_id;
    frame[field::ICFLAGS] = header.flags.0;
    let mut put = |at: std::ops::Range<usize>, bytes: &[u8]| frame[at].copy_from_slice(bytes);
    put(field::PIPE_TYPE, &pipe_type.to_le_bytes());
    put(field::PIPE_MSGSIZE, &msgsize.to_le_bytes());
    put(
        field::FRAMEWORK_MAJOR,
        &header.framework_version.major.to_le_bytes(),
    );
    put(
        field::FRAMEWORK_MINOR,
        &header.framework_version.minor.to_le_bytes(),
    );
    put(field::MSGTYPE, &header.msgtype.0.to_le_bytes());
    put(
        field::MESSAGE_MAJOR,
        &header.message_version.major.to_le_bytes(),
    );
    put(
        field::MESSAGE_MINOR,
        &header.message_version.minor.to_le_bytes(),
    );
    put(field::ICMSGSIZE, &icmsgsize.to_le_bytes());
    put(field::STATUS, &header.status.0.to_le_bytes());
    put(field::RESERVED, &header.reserved);
    Ok(())
}

/// The length of the message at the start of `bytes`, once both headers are there (`Ok(None)` before), after
/// checking the pipe packet type, that the two size fields agree and that the message fits
/// [`MAX_MESSAGE_LEN`]. The packet type is checked as soon as its four bytes are there.
pub fn frame_len(bytes: &[u8]) -> Result<Option<usize>, WireError> {
    if bytes.len() >= PIPE_HEADER_LEN / 2 {
        let packet_type = le_u32(bytes, field::PIPE_TYPE);
        if packet_type != pipe_type::DATA && packet_type != pipe_type::LEGACY_ZERO {
            return Err(WireError::PipeType(packet_type));
        }
    }
    if bytes.len() < HEADER_LEN {
        return Ok(None);
    }
    let msgsize = le_u32(bytes, field::PIPE_MSGSIZE);
    let icmsgsize = le_u16(bytes, field::ICMSGSIZE);
    if msgsize as usize > MAX_MESSAGE_LEN - PIPE_HEADER_LEN {
        return Err(WireError::TooLarge {
            len: PIPE_HEADER_LEN.saturating_add(msgsize as usize),
        });
    }
    if msgsize as usize != IC_HEADER_LEN + icmsgsize as usize {
        return Err(WireError::LengthMismatch { msgsize, icmsgsize });
    }
    Ok(Some(PIPE_HEADER_LEN + msgsize as usize))
}

/// Turns arbitrary chunks of a byte stream into messages. Feed it with [`Decoder::push`], drain it with
/// [`Decoder::next_message`]. After an error the stream is out of step and the connection must be closed.
#[derive(Debug, Default)]
pub struct Decoder {
    buffer: Vec<u8>,
    /// Where the next undecoded byte is in `buffer`; bytes before it are consumed.
    start: usize,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        } else if self.start > MAX_MESSAGE_LEN {
            // Keep the buffer from growing: drop what has been consumed.
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` when more bytes are needed. Its body borrows the decoder's
    /// buffer until the next call.
    pub fn next_message(&mut self) -> Result<Option<MessageRef<'_>>, WireError> {
        let pending = &self.buffer[self.start..];
        let Some(len) = frame_len(pending)? else {
            return Ok(None);
        };
        if pending.len() < len {
            return Ok(None);
        }
        self.start += len;
        Ok(Some(Message::from_frame(&pending[..len])))
    }

    /// Bytes received but not yet part of a whole message.
    pub fn pending_len(&self) -> usize {
        self.buffer.len() - self.start
    }
}

#[cfg(test)]
mod tests;
