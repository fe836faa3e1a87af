//! The sockets hvhost runs on, under one set of names on both hosts, so that the client, the server and the
//! requests are the same code on Linux and on Windows:
//!
//! - Linux (`net/unix.rs`): hvtransport's vsock, Unix and hybrid-vsock sockets and its `Connection`, poll(2).
//! - Windows (`windows/transport.rs`): AF_HYPERV sockets (and loopback TCP for tests), WSAPoll.
//!
//! Each provides `Address`, `Connection`, `Closed`, `Socket`, `Listener`, `Handle` and the functions `resolve`
//! (a name to the address it stands for), `dial`, `listen`, `accept`, `listener_handle` and `poll` over the [`Watched`] handles below.

#[cfg(unix)]
mod unix;
#[cfg(windows)]
pub use crate::windows::transport::*;
#[cfg(unix)]
pub use unix::*;

/// What a poll waits for on one socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interest {
    pub read: bool,
    pub write: bool,
}

impl Interest {
    pub const READ: Interest = Interest {
        read: true,
        write: false,
    };
    pub const WRITE: Interest = Interest {
        read: false,
        write: true,
    };
    pub const BOTH: Interest = Interest {
        read: true,
        write: true,
    };
}

/// What a poll found on one socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    pub read: bool,
    pub write: bool,
    /// Hung up, an error pending, or not a socket: a read or write says which.
    pub hangup: bool,
}

impl Ready {
    pub fn any(&self) -> bool {
        self.read || self.write || self.hangup
    }
}

/// One socket of a poll: what to wait for, and after the poll what happened.
#[derive(Clone, Copy, Debug)]
pub struct Watched<H> {
    pub handle: H,
    pub interest: Interest,
    pub ready: Ready,
}

impl<H> Watched<H> {
    pub fn new(handle: H, interest: Interest) -> Watched<H> {
        Watched {
            handle,
            interest,
            ready: Ready::default(),
        }
    }
}

/// A poll timeout in whole milliseconds, rounded up (a deadline is never woken for early), -1 for none.
pub fn timeout_millis(timeout: Option<std::time::Duration>) -> i32 {
    timeout.map_or(-1, |left| {
        left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32
    })
}

/// Waits until `handle` is ready for `interest` or `deadline` passes; true when it is (or hung up).
pub fn wait_ready(handle: Handle<'_>, interest: Interest, deadline: std::time::Instant) -> bool {
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut watched = [Watched::new(handle, interest)];
        match poll(&mut watched, Some(left)) {
            Ok(()) if watched[0].ready.any() => return true,
            Ok(()) if left.is_zero() => return false,
            Ok(()) => continue,
            Err(_) => return false,
        }
    }
}
