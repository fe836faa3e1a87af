//! Closing files off the poll loop. The last close of a file that is no longer linked (the temporary file
//! of a cancelled copy, the file a copy replaced) frees its blocks, and the kernel does that inside
//! close(2): 16–21 ms for a 64 MiB file on ext4 where it was measured, all of it time a heartbeat would
//! wait behind. One thread, started at the first such close, does them; the loop itself stays the only
//! thread that reads, answers or decides anything.

use std::os::fd::OwnedFd;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, PoisonError};

use log::warn;

/// The closing thread's queue; None until the first use, and again if the thread could not be started.
static QUEUE: Mutex<Option<Sender<OwnedFd>>> = Mutex::new(None);

/// Closes `file` on the closing thread, or here when that thread cannot be had (then the loop waits once,
/// as it would have without this module).
pub fn close_later(file: impl Into<OwnedFd>) {
    let file = file.into();
    let mut queue = QUEUE.lock().unwrap_or_else(PoisonError::into_inner);
    if queue.is_none() {
        *queue = start();
    }
    let Some(sender) = queue.as_ref() else {
        return; // `file` is dropped, and so closed, here.
    };
    if let Err(unsent) = sender.send(file) {
        // The thread is gone (it never panics, but a send can still fail): close here, start again next
        // time.
        *queue = None;
        drop(unsent.0);
    }
}

fn start() -> Option<Sender<OwnedFd>> {
    let (sender, receiver) = channel::<OwnedFd>();
    let started = std::thread::Builder::new()
        .name("hvagent-close".to_string())
        .spawn(move || receiver.into_iter().for_each(drop));
    match started {
        Ok(_) => Some(sender),
        Err(error) => {
            warn!("cannot start the thread that closes replaced files ({error}); closing them in the loop");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::{Duration, Instant};

    #[test]
    fn a_file_given_to_close_later_is_closed() {
        for _ in 0..3 {
            let (reader, writer) = nix::unistd::pipe().unwrap();
            let mut reader = std::fs::File::from(reader);
            close_later(writer);
            // The pipe reads as ended only once its one write end is closed.
            let start = Instant::now();
            let mut rest = Vec::new();
            reader.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty());
            assert!(start.elapsed() < Duration::from_secs(5));
        }
    }
}
