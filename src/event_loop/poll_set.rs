//! The descriptors the loop waits on with poll(2) and what each one is for, kept from one turn to the next
//! so that waiting allocates nothing once the set has reached its size.
//!
//! The loop refills the set at the start of every turn from the services' current state and waits on it at
//! once. Refilling is a walk over a few services into storage that is already there; patching the set only
//! when a descriptor comes or goes would need every change of state (a connect, an accept, a close, queued
//! output wanting POLLOUT, a health check's pipe) to report itself, and one that did not would be an event
//! never seen.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::poll::{PollFlags, PollTimeout};

/// The pollfd array and, slot for slot, the token saying what each descriptor is.
pub(super) struct PollSet<T> {
    fds: Vec<libc::pollfd>,
    tokens: Vec<T>,
}

impl<T: Copy> PollSet<T> {
    pub(super) fn new() -> PollSet<T> {
        PollSet {
            fds: Vec::new(),
            tokens: Vec::new(),
        }
    }

    /// Empties the set, keeping its storage.
    pub(super) fn clear(&mut self) {
        self.fds.clear();
        self.tokens.clear();
    }

    /// Watches `fd` for `interest` as `token`. The descriptor must stay open until the next
    /// [`PollSet::wait`] returns: the loop fills the set and waits in the same turn.
    #[inline]
    pub(super) fn add(&mut self, fd: BorrowedFd<'_>, interest: PollFlags, token: T) {
        self.fds.push(libc::pollfd {
            fd: fd.as_raw_fd(),
            events: interest.bits(),
            revents: 0,
        });
        self.tokens.push(token);
    }

    /// Waits until a descriptor is ready or `timeout` passes. A signal that interrupts the wait counts as
    /// a wake-up with nothing ready.
    pub(super) fn wait(&mut self, timeout: PollTimeout) -> Result<(), Errno> {
        for fd in &mut self.fds {
            fd.revents = 0;
        }
        // SAFETY: the pointer and length describe `self.fds`, an initialised array of pollfd that lives
        // for the call; poll(2) writes only their revents fields. nix's `poll` takes `PollFd`s that borrow
        // their descriptors, which a set kept between turns cannot hold.
        let result = unsafe {
            libc::poll(
                self.fds.as_mut_ptr(),
                self.fds.len() as libc::nfds_t,
                i32::from(timeout),
            )
        };
        match Errno::result(result) {
            Ok(_) | Err(Errno::EINTR) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Slots in the set.
    pub(super) fn len(&self) -> usize {
        self.fds.len()
    }

    /// What slot `index` is for and what the last wait found on it (empty: nothing).
    pub(super) fn ready(&self, index: usize) -> (T, PollFlags) {
        (
            self.tokens[index],
            PollFlags::from_bits_truncate(self.fds[index].revents),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_kept_set_reports_each_wait_afresh() {
        let (mut writer, reader) = UnixStream::pair().unwrap();
        let (_idle_writer, idle) = UnixStream::pair().unwrap();
        let mut set = PollSet::new();
        set.add(reader.as_fd(), PollFlags::POLLIN, 'r');
        set.add(idle.as_fd(), PollFlags::POLLIN, 'i');
        set.wait(PollTimeout::ZERO).unwrap();
        assert!(set.ready(0).1.is_empty() && set.ready(1).1.is_empty());
        writer.write_all(b"x").unwrap();
        set.wait(PollTimeout::ZERO).unwrap();
        assert_eq!(set.ready(0), ('r', PollFlags::POLLIN));
        assert_eq!(set.ready(1), ('i', PollFlags::empty()));
        set.clear();
        set.add(idle.as_fd(), PollFlags::POLLIN, 'i');
        set.wait(PollTimeout::ZERO).unwrap();
        assert_eq!((set.len(), set.ready(0)), (1, ('i', PollFlags::empty())));
    }
}
