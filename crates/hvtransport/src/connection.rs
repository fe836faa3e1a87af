//! One established stream: its socket, the decoder for what arrives and a bounded queue for what leaves.
//! Partial reads and writes are normal; a peer that stops reading fills the queue and is dropped.
//!
//! Both buffers live as long as the connection and only grow: a message is handed out borrowed from the
//! decoder's buffer and its answer written straight into the queue ([`Connection::receive_and_answer`]),
//! so a steady exchange allocates nothing.

use std::cell::RefCell;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;

use super::socket;
use hvproto::wire::{Decoder, Message, MessageRef, WireError};

/// Most unsent bytes a connection may hold before its peer counts as stuck.
pub const MAX_QUEUED: usize = 256 * 1024;
/// Bytes read per call.
const READ_CHUNK: usize = 64 * 1024;

thread_local! {
    /// Where every connection of a thread reads into, zeroed once. A fresh array on the stack was zeroed
    /// on every read: 16 KiB of memset per heartbeat, 85% of the agent's instructions (callgrind).
    static READ_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// Why a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// The peer closed its side (or the kernel reported EIO after the peer's FIN).
    Eof,
    /// A socket error such as ECONNRESET or EPIPE.
    Error(Errno),
    /// The peer sent bytes the decoder refuses.
    Garbage(WireError),
    /// The peer does not read and the output queue is full.
    Stuck,
    /// The peer sent part of a message and then nothing for this long.
    Idle(std::time::Duration),
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Closed::Eof => f.write_str("the peer closed the connection"),
            Closed::Error(errno) => write!(f, "{} ({})", errno.desc(), errno),
            Closed::Garbage(error) => write!(f, "the peer sent an invalid message: {error}"),
            Closed::Stuck => write!(
                f,
                "the peer stopped reading ({MAX_QUEUED} bytes queued for it)"
            ),
            Closed::Idle(after) => write!(
                f,
                "the peer sent part of a message and then nothing for {:.1} s (idle_timeout)",
                after.as_secs_f64()
            ),
        }
    }
}

/// An established connection.
#[derive(Debug)]
pub struct Connection {
    fd: OwnedFd,
    decoder: Decoder,
    outbox: Vec<u8>,
    /// Bytes of `outbox` already sent.
    sent: usize,
}

impl Connection {
    pub fn new(fd: OwnedFd) -> Connection {
        Connection {
            fd,
            decoder: Decoder::new(),
            outbox: Vec::new(),
            sent: 0,
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Reads once and hands each message now complete to `answer`, with the output queue to append the
    /// answer's wire form to (as `hvproto::service::Channel::handle` does; [`Connection::flush`] sends it).
    /// Returns how many messages there were: 0 also when the read would block. A queue over
    /// [`MAX_QUEUED`] after an answer ends the connection as [`Closed::Stuck`].
    pub fn receive_and_answer(
        &mut self,
        mut answer: impl FnMut(&MessageRef<'_>, &mut Vec<u8>),
    ) -> Result<usize, Closed> {
        let read = READ_BUFFER.with_borrow_mut(|buffer| {
            let count = socket::recv(self.fd.as_fd(), buffer)?;
            self.decoder.push(&buffer[..count]);
            Ok(count)
        });
        match read {
            Ok(0) | Err(Errno::EIO) => return Err(Closed::Eof),
            Ok(_) => {}
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => return Ok(0),
            Err(error) => return Err(Closed::Error(error)),
        }
        let mut count = 0;
        while let Some(message) = self.decoder.next_message().map_err(Closed::Garbage)? {
            answer(&message, &mut self.outbox);
            count += 1;
            if self.outbox.len() - self.sent > MAX_QUEUED {
                return Err(Closed::Stuck);
            }
        }
        Ok(count)
    }

    /// Reads once and appends the messages now complete to `messages`, as messages of their own (for a
    /// peer that keeps them). Returns `Ok(())` with nothing added when the read would block.
    pub fn receive(&mut self, messages: &mut Vec<Message>) -> Result<(), Closed> {
        self.receive_and_answer(|message, _| messages.push(message.to_owned_message()))
            .map(drop)
    }

    /// Bytes of a message received only in part.
    pub fn partial_input(&self) -> usize {
        self.decoder.pending_len()
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
            match socket::send(self.fd.as_fd(), &self.outbox[self.sent..]) {
                Ok(count) => self.sent += count,
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
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

    /// Whether unsent bytes wait for POLLOUT.
    pub fn wants_write(&self) -> bool {
        self.sent < self.outbox.len()
    }
}
