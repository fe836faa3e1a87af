//! The control socket: an AF_UNIX stream socket (mode 0600, in the agent's runtime directory) that answers
//! every connection with the agent's status as JSON and closes it. The agent never waits for a client: the
//! answer is one non-blocking write, and a client that does not take it at once is dropped. Unused, the
//! socket costs one descriptor in the poll set and no wake-up.

use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::stat::{umask, Mode};

/// Where the agent listens, and `hvagent status` asks, unless `--control PATH` says otherwise.
pub const DEFAULT_PATH: &str = "/run/hvagent/control.sock";

/// The listening control socket; its file is removed when it is dropped.
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Listens at `path` with mode 0600. A stale socket file from an earlier run is replaced; a live one
    /// (another agent answers there) or a file that is not a socket is an error.
    pub fn bind(path: &Path) -> std::io::Result<ControlSocket> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(std::io::Error::new(
                    ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    ErrorKind::AddrInUse,
                    format!("another hvagent answers at {}", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        // The socket file takes its mode from the umask at bind time; the agent is single-threaded, so
        // nothing else creates files in between.
        let previous = umask(Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        umask(previous);
        let listener = bound?;
        // Again explicitly, in case a thread of an embedding program changed the umask meanwhile.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(ControlSocket {
            listener,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// The clients waiting to be answered.
    pub fn accept_all(&self) -> Vec<UnixStream> {
        let mut clients = Vec::new();
        loop {
            match self.listener.accept() {
                Ok((client, _)) => clients.push(client),
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => {
                    if error.kind() != ErrorKind::WouldBlock {
                        log::debug!("control socket: accept failed: {error}");
                    }
                    return clients;
                }
            }
        }
    }
}

/// Sends `answer` to a client in one non-blocking write and closes the connection; a client that does not
/// take all of it at once gets a cut answer rather than stalling the agent.
pub fn answer(client: UnixStream, answer: &[u8]) {
    if let Err(error) = client.set_nonblocking(true) {
        log::debug!("control socket: {error}");
        return;
    }
    match hvtransport::socket::send(client.as_fd(), answer) {
        Ok(sent) if sent == answer.len() => {}
        Ok(sent) => log::debug!(
            "control socket: a client took {sent} of {} bytes; dropped",
            answer.len()
        ),
        Err(error) => log::debug!("control socket: answering a client failed: {error}"),
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Asks the agent at `path` for its status: the JSON text it sends.
pub fn fetch(path: &Path, timeout: Duration) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The umask is per process: tests that bind take turns.
    static BINDING: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn control_socket_is_private_answers_and_cleans_up() {
        let _turn = BINDING
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let control = ControlSocket::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(control.accept_all().is_empty());
        let client = std::thread::spawn({
            let path = path.clone();
            move || fetch(&path, Duration::from_secs(5))
        });
        let mut served = 0;
        while served == 0 {
            for stream in control.accept_all() {
                answer(stream, b"{}");
                served += 1;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(client.join().unwrap().unwrap(), "{}");
        // A second agent must not take over a live socket.
        assert_eq!(
            ControlSocket::bind(&path).unwrap_err().kind(),
            ErrorKind::AddrInUse
        );
        drop(control);
        assert!(!path.exists());
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_plain_file_is_refused() {
        let _turn = BINDING
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let control = ControlSocket::bind(&path).unwrap();
        drop(control);
        std::fs::write(&path, "not a socket").unwrap();
        assert_eq!(
            ControlSocket::bind(&path).unwrap_err().kind(),
            ErrorKind::AlreadyExists
        );
    }
}
