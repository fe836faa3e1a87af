//! hvhost's sockets on Linux: hvtransport's addresses, sockets and connections, and poll(2).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::{timeout_millis, wait_ready, Interest, Ready, Watched};
use hvtransport::socket::{self, Dial};
pub use hvtransport::{Address, Closed, Connection};

/// An established stream.
pub type Socket = OwnedFd;
/// A listening socket.
pub type Listener = OwnedFd;
/// What a poll watches.
pub type Handle<'a> = BorrowedFd<'a>;

/// The address to open: on Linux every address names its socket already.
pub fn resolve(address: &Address) -> Result<Address, String> {
    Ok(address.clone())
}

/// Connects to `address` within `timeout`: Unix, vsock (a KVM host to its guest) or hybrid vsock.
pub fn dial(address: &Address, timeout: Duration) -> Result<Socket, String> {
    match address {
        Address::Hybrid { path, port } => {
            let stream =
                socket::connect_hybrid(path, *port, timeout).map_err(|error| error.to_string())?;
            stream
                .set_nonblocking(true)
                .map_err(|error| error.to_string())?;
            Ok(OwnedFd::from(stream))
        }
        _ => match socket::connect(address).map_err(|error| error.to_string())? {
            Dial::Connected(fd) => Ok(fd),
            Dial::InProgress(fd) => {
                if !wait_ready(fd.as_fd(), Interest::WRITE, Instant::now() + timeout) {
                    return Err("timed out".to_string());
                }
                socket::finish_connect(fd.as_fd()).map_err(|error| error.to_string())?;
                Ok(fd)
            }
        },
    }
}

/// Listens on `address`.
pub fn listen(address: &Address) -> Result<Listener, String> {
    socket::listen(address, 1024).map_err(|error| error.to_string())
}

/// The next waiting connection and its peer's address where it has one worth showing (vsock); None when
/// none waits.
pub fn accept(listener: &Listener) -> Option<(Socket, Option<String>)> {
    match socket::accept(listener.as_fd()) {
        Ok(Some((fd, peer))) => {
            let shown = match peer {
                socket::Peer::Unix { .. } | socket::Peer::Unknown(_) => None,
                other => Some(other.to_string()),
            };
            Some((fd, shown))
        }
        _ => None,
    }
}

pub fn listener_handle(listener: &Listener) -> Handle<'_> {
    listener.as_fd()
}

/// poll(2) over `watched`, up to `timeout` (None: until something happens). EINTR is a poll that found
/// nothing.
pub fn poll(watched: &mut [Watched<Handle<'_>>], timeout: Option<Duration>) -> Result<(), String> {
    let mut fds: Vec<PollFd> = watched
        .iter()
        .map(|one| {
            let mut flags = PollFlags::empty();
            flags.set(PollFlags::POLLIN, one.interest.read);
            flags.set(PollFlags::POLLOUT, one.interest.write);
            PollFd::new(one.handle, flags)
        })
        .collect();
    let timeout = PollTimeout::try_from(timeout_millis(timeout)).unwrap_or(PollTimeout::MAX);
    match nix::poll::poll(&mut fds, timeout) {
        Ok(_) | Err(Errno::EINTR) => {}
        Err(error) => return Err(format!("poll failed: {error}")),
    }
    for (one, fd) in watched.iter_mut().zip(&fds) {
        let events = fd.revents().unwrap_or(PollFlags::empty());
        one.ready = Ready {
            read: events.contains(PollFlags::POLLIN),
            write: events.contains(PollFlags::POLLOUT),
            hangup: events
                .intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL),
        };
    }
    Ok(())
}
