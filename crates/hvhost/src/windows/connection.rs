//! One established stream for hvhost.exe, over any nonblocking `Read + Write` (a Winsock socket held as a
//! `std::net::TcpStream`, which is a SOCKET and its recv/send whatever the address family): the protocol's
//! decoder for what arrives and a bounded queue for what leaves. The same contract as hvtransport's
//! `Connection` on Linux, which is nix's: partial reads and writes are normal, a peer that stops reading
//! fills the queue and is dropped.

use std::io::{ErrorKind, Read, Write};

use hvproto::wire::{Decoder, Message, WireError};

/// Most unsent bytes a connection may hold before its peer counts as stuck (as on Linux).
pub const MAX_QUEUED: usize = 256 * 1024;
/// Bytes read per call.
const READ_CHUNK: usize = 16 * 1024;

/// Why a connection ended.
#[derive(Debug)]
pub enum Closed {
    /// The peer closed its side.
    Eof,
    /// A socket error such as WSAECONNRESET.
    Error(std::io::Error),
    /// The peer sent bytes the decoder refuses.
    Garbage(WireError),
    /// The peer does not read and the output queue is full.
    Stuck,
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Closed::Eof => f.write_str("the peer closed the connection"),
            Closed::Error(error) => write!(f, "{error}"),
            Closed::Garbage(error) => write!(f, "the peer sent an invalid message: {error}"),
            Closed::Stuck => write!(
                f,
                "the peer stopped reading ({MAX_QUEUED} bytes queued for it)"
            ),
        }
    }
}

/// An established connection over `S`.
#[derive(Debug)]
pub struct Connection<S> {
    stream: S,
    decoder: Decoder,
    outbox: Vec<u8>,
    /// Bytes of `outbox` already sent.
    sent: usize,
    buffer: Vec<u8>,
}

impl<S: Read + Write> Connection<S> {
    pub fn new(stream: S) -> Connection<S> {
        Connection {
            stream,
            decoder: Decoder::new(),
            outbox: Vec::new(),
            sent: 0,
            buffer: vec![0; READ_CHUNK],
        }
    }

    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// Reads once and appends the messages now complete to `messages`. Returns `Ok(())` with nothing added
    /// when the read would block.
    pub fn receive(&mut self, messages: &mut Vec<Message>) -> Result<(), Closed> {
        match self.stream.read(&mut self.buffer) {
            Ok(0) => return Err(Closed::Eof),
            Ok(count) => self.decoder.push(&self.buffer[..count]),
            Err(error) if retry_later(&error) => return Ok(()),
            Err(error) => return Err(Closed::Error(error)),
        }
        while let Some(message) = self.decoder.next_message().map_err(Closed::Garbage)? {
            messages.push(message.to_owned_message());
        }
        Ok(())
    }

    /// Queues a message; [`Connection::flush`] sends it.
    pub fn queue<B: AsRef<[u8]>>(&mut self, message: &Message<B>) -> Result<(), Closed> {
        if self.outbox.len() - self.sent + message.encoded_len() > MAX_QUEUED {
            return Err(Closed::Stuck);
        }
        message.emit(&mut self.outbox).map_err(Closed::Garbage)
    }

    /// Sends as much of the queue as the socket takes now.
    pub fn flush(&mut self) -> Result<(), Closed> {
        while self.sent < self.outbox.len() {
            match self.stream.write(&self.outbox[self.sent..]) {
                Ok(0) => return Err(Closed::Eof),
                Ok(count) => self.sent += count,
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return Err(Closed::Error(error)),
            }
        }
        if self.sent == self.outbox.len() {
            self.outbox.clear();
            self.sent = 0;
        } else if self.sent > MAX_QUEUED / 2 {
            self.outbox.drain(..self.sent);
            self.sent = 0;
        }
        Ok(())
    }

    /// Whether unsent bytes wait for the socket to take them.
    pub fn wants_write(&self) -> bool {
        self.sent < self.outbox.len()
    }
}

fn retry_later(error: &std::io::Error) -> bool {
    matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hvproto::wire::{IcVersion, MessageType};
    use std::collections::VecDeque;

    /// A stream that hands out what `incoming` holds in the chunks given, would block after them, and takes
    /// at most `accept` bytes a write.
    #[derive(Default)]
    struct Scripted {
        incoming: VecDeque<Vec<u8>>,
        eof: bool,
        written: Vec<u8>,
        accept: usize,
    }

    impl Read for Scripted {
        fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
            match self.incoming.pop_front() {
                Some(chunk) => {
                    buffer[..chunk.len()].copy_from_slice(&chunk);
                    Ok(chunk.len())
                }
                None if self.eof => Ok(0),
                None => Err(ErrorKind::WouldBlock.into()),
            }
        }
    }

    impl Write for Scripted {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if self.accept == 0 {
                return Err(ErrorKind::WouldBlock.into());
            }
            let count = bytes.len().min(self.accept);
            self.written.extend_from_slice(&bytes[..count]);
            self.accept -= count;
            Ok(count)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn heartbeat(body: usize) -> Message {
        let version = IcVersion::new(3, 0);
        Message::request(MessageType::HEARTBEAT, version, version, 1, vec![0; body])
    }

    fn heartbeat_bytes() -> Vec<u8> {
        heartbeat(8).to_bytes().unwrap()
    }

    #[test]
    fn a_message_split_over_reads_arrives_whole_and_a_would_block_is_no_error() {
        let bytes = heartbeat_bytes();
        let (head, tail) = bytes.split_at(5);
        let stream = Scripted {
            incoming: VecDeque::from([head.to_vec(), tail.to_vec()]),
            ..Scripted::default()
        };
        let mut connection = Connection::new(stream);
        let mut inbox = Vec::new();
        connection.receive(&mut inbox).unwrap();
        assert!(inbox.is_empty());
        connection.receive(&mut inbox).unwrap();
        assert_eq!(inbox.len(), 1);
        assert_eq!(inbox[0].header.msgtype, MessageType::HEARTBEAT);
        connection.receive(&mut inbox).unwrap();
        assert_eq!(inbox.len(), 1);
    }

    #[test]
    fn the_end_of_the_stream_and_garbage_close_the_connection() {
        let mut connection = Connection::new(Scripted {
            eof: true,
            ..Scripted::default()
        });
        assert!(matches!(
            connection.receive(&mut Vec::new()),
            Err(Closed::Eof)
        ));
        let mut connection = Connection::new(Scripted {
            incoming: VecDeque::from([vec![0xff; 64]]),
            ..Scripted::default()
        });
        assert!(matches!(
            connection.receive(&mut Vec::new()),
            Err(Closed::Garbage(_))
        ));
    }

    #[test]
    fn partial_writes_are_resumed_and_a_full_queue_is_stuck() {
        let message = heartbeat(8);
        let mut connection = Connection::new(Scripted {
            accept: 10,
            ..Scripted::default()
        });
        connection.queue(&message).unwrap();
        connection.flush().unwrap();
        assert!(connection.wants_write());
        connection.stream.accept = 1000;
        connection.flush().unwrap();
        assert!(!connection.wants_write());
        assert_eq!(connection.stream().written, heartbeat_bytes());
        let big = heartbeat(4_000);
        connection.stream.accept = 0;
        let mut result = Ok(());
        for _ in 0..MAX_QUEUED / 4_000 + 1 {
            result = result.and_then(|()| connection.queue(&big));
        }
        assert!(matches!(result, Err(Closed::Stuck)));
    }
}
