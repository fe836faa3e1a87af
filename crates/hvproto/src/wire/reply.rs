//! The answer to a request, emitted in place at the end of a buffer the caller owns (smoltcp's `emit`
//! style): the headers go first with their sizes left open, the service appends the body, and
//! [`ReplyWriter::finish`] fills in the sizes and the status. A connection's output queue is such a buffer,
//! so answering a heartbeat builds no message and allocates nothing once the queue has grown.
//!
//! A service that can answer only later (guest info, once a pool write is durable) calls
//! [`ReplyWriter::defer`]: nothing is sent now, and the service sends the answer itself when it is due.

use super::{finish_frame, pipe_type, IcHeader, Message, Status, WireError, HEADER_LEN};

/// The answer to one request being written at the end of a caller's buffer. A service sees only the body:
/// it appends to it and may change what it appended, never the bytes before.
#[derive(Debug)]
pub struct ReplyWriter<'a> {
    out: &'a mut Vec<u8>,
    /// Where the answer's headers start in `out`.
    start: usize,
    header: IcHeader,
    /// The service answers later, on its own.
    deferred: bool,
}

impl<'a> ReplyWriter<'a> {
    /// Starts the answer to `request` (the header [`Message::reply_header`] gives) at the end of `out`,
    /// with an empty body.
    pub fn begin<B: AsRef<[u8]>>(request: &Message<B>, out: &'a mut Vec<u8>) -> ReplyWriter<'a> {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_LEN]);
        ReplyWriter {
            out,
            start,
            header: request.reply_header(Status::OK),
            deferred: false,
        }
    }

    /// Says the answer is not sent now: the service keeps what it needs of the request and sends the answer
    /// itself later (through its timers). Whatever was written is dropped.
    pub fn defer(&mut self) {
        self.clear_body();
        self.deferred = true;
    }

    /// Whether [`ReplyWriter::defer`] was called.
    pub fn is_deferred(&self) -> bool {
        self.deferred
    }

    /// Appends `bytes` to the body.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// The body written so far.
    pub fn body(&self) -> &[u8] {
        &self.out[self.start + HEADER_LEN..]
    }

    /// The body written so far, to change in place.
    pub fn body_mut(&mut self) -> &mut [u8] {
        &mut self.out[self.start + HEADER_LEN..]
    }

    /// Drops the body written so far, to write another (an error answer instead of the one begun); an
    /// answer deferred before is sent now after all.
    pub fn clear_body(&mut self) {
        self.out.truncate(self.start + HEADER_LEN);
        self.deferred = false;
    }

    /// Completes the answer with `status`. An answer over [`super::MAX_MESSAGE_LEN`] is refused and taken
    /// out of the buffer, which is then as it was before [`ReplyWriter::begin`].
    pub fn finish(self, status: Status) -> Result<(), WireError> {
        let header = IcHeader {
            status,
            ..self.header
        };
        finish_frame(pipe_type::DATA, &header, self.out, self.start)
    }

    /// Takes the answer out of the buffer again: the request wants none.
    pub fn discard(self) {
        self.out.truncate(self.start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{IcVersion, MessageType, MAX_MESSAGE_LEN};

    fn request() -> Message {
        Message::request(
            MessageType::HEARTBEAT,
            IcVersion::new(3, 0),
            IcVersion::new(3, 0),
            7,
            vec![1, 2, 3],
        )
    }

    #[test]
    fn an_answer_written_in_place_equals_the_one_built_by_reply() {
        let request = request();
        let mut out = b"before".to_vec();
        let mut writer = ReplyWriter::begin(&request, &mut out);
        writer.extend_from_slice(&[9, 9]);
        writer.body_mut()[1] = 8;
        writer.extend_from_slice(&[7]);
        assert_eq!(writer.body(), &[9, 8, 7]);
        writer.finish(Status::FAIL).unwrap();
        let mut expected = b"before".to_vec();
        request
            .reply(Status::FAIL, vec![9, 8, 7])
            .emit(&mut expected)
            .unwrap();
        assert_eq!(out, expected);
    }

    #[test]
    fn a_cleared_body_is_replaced_and_a_discarded_answer_leaves_nothing() {
        let request = request();
        let mut out = vec![0xEE];
        let mut writer = ReplyWriter::begin(&request, &mut out);
        writer.extend_from_slice(&[1; 40]);
        writer.clear_body();
        writer.extend_from_slice(&[5]);
        writer.finish(Status::OK).unwrap();
        assert_eq!(
            Message::parse(&out[1..]).unwrap(),
            request.reply(Status::OK, vec![5])
        );
        let before = out.clone();
        let mut writer = ReplyWriter::begin(&request, &mut out);
        writer.extend_from_slice(&[1; 4]);
        writer.discard();
        assert_eq!(out, before);
    }

    #[test]
    fn an_answer_too_large_is_refused_and_removed() {
        let request = request();
        let mut out = vec![0xEE];
        let mut writer = ReplyWriter::begin(&request, &mut out);
        writer.extend_from_slice(&vec![0; MAX_MESSAGE_LEN]);
        assert!(matches!(
            writer.finish(Status::OK),
            Err(WireError::TooLarge { .. })
        ));
        assert_eq!(out, vec![0xEE]);
    }
}
