//! The signals the agent acts on, as one descriptor for the poll set: SIGTERM and SIGINT ask it to stop,
//! SIGHUP to reload. Each signal sets its flag and then writes a byte to a socket pair; the loop wakes on
//! the byte and reads the flags. One descriptor rather than one per kind, because every descriptor in the
//! set costs the kernel work on every wake-up, heartbeats included.

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What the signals that arrived since the last look ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(super) struct Asked {
    pub(super) stop: bool,
    pub(super) reload: bool,
}

/// The read end of the signal pipe and the flags its signals set.
pub(super) struct Signals {
    pipe: UnixStream,
    stop: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
}

impl Signals {
    /// Installs the handlers: SIGTERM and SIGINT set `stop`, SIGHUP `reload`.
    pub(super) fn install() -> std::io::Result<Signals> {
        let (reader, writer) = UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let reload = Arc::new(AtomicBool::new(false));
        for (signal, flag) in [
            (libc::SIGTERM, &stop),
            (libc::SIGINT, &stop),
            (libc::SIGHUP, &reload),
        ] {
            // The flag first: signal-hook runs a signal's actions in the order they were registered, so the
            // loop that the byte wakes finds the flag set.
            signal_hook::flag::register(signal, Arc::clone(flag))?;
            signal_hook::low_level::pipe::register(signal, writer.try_clone()?)?;
        }
        Ok(Signals {
            pipe: reader,
            stop,
            reload,
        })
    }

    /// What the loop polls for input.
    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.pipe.as_fd()
    }

    /// Empties the pipe and takes what the signals asked for.
    pub(super) fn take(&mut self) -> Asked {
        let mut buffer = [0u8; 64];
        while let Ok(count) = self.pipe.read(&mut buffer) {
            if count == 0 {
                break;
            }
        }
        Asked {
            stop: self.stop.swap(false, Ordering::SeqCst),
            reload: self.reload.swap(false, Ordering::SeqCst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The handlers stay for the rest of this test binary: SIGTERM and SIGINT then only set a flag in it.
    #[test]
    fn each_signal_is_read_as_what_it_asks_for_once() {
        let mut signals = Signals::install().unwrap();
        assert_eq!(signals.take(), Asked::default());
        for (signal, asked) in [
            (
                libc::SIGHUP,
                Asked {
                    stop: false,
                    reload: true,
                },
            ),
            (
                libc::SIGINT,
                Asked {
                    stop: true,
                    reload: false,
                },
            ),
            (
                libc::SIGTERM,
                Asked {
                    stop: true,
                    reload: false,
                },
            ),
        ] {
            // SAFETY: raise(3) with a signal this process now handles; the handler only sets a flag and
            // writes a byte.
            assert_eq!(unsafe { libc::raise(signal) }, 0);
            let mut poll = [nix::poll::PollFd::new(
                signals.fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            assert_eq!(
                nix::poll::poll(&mut poll, nix::poll::PollTimeout::ZERO),
                Ok(1),
                "signal {signal} wakes the poll"
            );
            assert_eq!(signals.take(), asked, "signal {signal}");
            assert_eq!(signals.take(), Asked::default());
        }
    }
}
