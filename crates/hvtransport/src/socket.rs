//! Non-blocking stream sockets for [`Address`]es: create, connect, listen, accept, and the hybrid-vsock
//! handshake. Everything here is a thin wrapper over the system calls; the poll loop decides when to call.
//!
//! On vsock a non-blocking connect returns EINPROGRESS and completes as POLLOUT (failure read with
//! SO_ERROR); where nothing listens it ends in ETIMEDOUT after SO_VM_SOCKETS_CONNECT_TIMEOUT, never
//! ECONNREFUSED (docs/PROTOCOL.md §1.5).

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, Backlog, SockFlag, SockType, SockaddrLike, SockaddrStorage, UnixAddr,
    VsockAddr,
};

use super::address::Address;

/// Socket options of AF_VSOCK that libc does not name (linux/vm_sockets.h).
const SO_VM_SOCKETS_CONNECT_TIMEOUT: libc::c_int = 6;

/// How long a vsock connect may take before the kernel gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub use super::peer::Peer;

/// How a connect attempt began.
#[derive(Debug)]
pub enum Dial {
    /// Connected already (Unix sockets connect at once).
    Connected(OwnedFd),
    /// Wait for POLLOUT, then call [`finish_connect`].
    InProgress(OwnedFd),
}

fn stream_socket(family: AddressFamily) -> Result<OwnedFd, Errno> {
    socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
}

/// Sets SO_VM_SOCKETS_CONNECT_TIMEOUT, which nix does not wrap.
fn set_vsock_connect_timeout(fd: BorrowedFd<'_>, timeout: Duration) -> Result<(), Errno> {
    // The field types (time_t, suseconds_t) are inferred rather than named: libc marks their names
    // deprecated on musl, and a timeout too long for time_t is refused rather than cut.
    let value = libc::timeval {
        tv_sec: timeout.as_secs().try_into().map_err(|_| Errno::EINVAL)?,
        tv_usec: timeout.subsec_micros().into(),
    };
    // SAFETY: fd is a live socket; the kernel reads size_of::<timeval>() bytes from &value, which lives for
    // the call. The level of vsock options is the address family (linux/vm_sockets.h).
    let result = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::AF_VSOCK,
            SO_VM_SOCKETS_CONNECT_TIMEOUT,
            (&value as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    Errno::result(result).map(drop)
}

fn start_connect(fd: OwnedFd, target: &dyn SockaddrLike) -> Result<Dial, Errno> {
    match socket::connect(fd.as_raw_fd(), target) {
        Ok(()) => Ok(Dial::Connected(fd)),
        Err(Errno::EINPROGRESS) | Err(Errno::EAGAIN) => Ok(Dial::InProgress(fd)),
        Err(error) => Err(error),
    }
}

/// Starts a non-blocking connect to a vsock or Unix address. Hybrid addresses are host-side only and use
/// [`connect_hybrid`].
pub fn connect(address: &Address) -> Result<Dial, Errno> {
    match address {
        Address::Vsock { cid, port } => {
            let fd = stream_socket(AddressFamily::Vsock)?;
            set_vsock_connect_timeout(fd.as_fd(), CONNECT_TIMEOUT)?;
            start_connect(fd, &VsockAddr::new(*cid, *port))
        }
        Address::Unix(path) => {
            let fd = stream_socket(AddressFamily::Unix)?;
            start_connect(fd, &UnixAddr::new(path.as_path())?)
        }
        Address::Hybrid { .. } => Err(Errno::EAFNOSUPPORT),
    }
}

/// The outcome of a connect that was in progress, once the socket polled writable or failed.
pub fn finish_connect(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    match socket::getsockopt(&fd, socket::sockopt::SocketError)? {
        0 => Ok(()),
        code => Err(Errno::from_raw(code)),
    }
}

/// Removes a stale Unix socket file left by an earlier run, but nothing that is not a socket.
fn remove_stale_socket(path: &Path) -> Result<(), Errno> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path).map_err(io_errno),
        Ok(_) => Err(Errno::EEXIST),
        Err(_) => Ok(()),
    }
}

/// A listening, non-blocking socket.
pub fn listen(address: &Address, backlog: i32) -> Result<OwnedFd, Errno> {
    let backlog = Backlog::new(backlog).unwrap_or(Backlog::MAXCONN);
    let fd = match address {
        Address::Vsock { cid, port } => {
            let fd = stream_socket(AddressFamily::Vsock)?;
            socket::bind(fd.as_raw_fd(), &VsockAddr::new(*cid, *port))?;
            fd
        }
        Address::Unix(path) => {
            remove_stale_socket(path)?;
            let fd = stream_socket(AddressFamily::Unix)?;
            // Bound under a temporary name and renamed into place once listening, so that whoever sees
            // the socket file can connect at once (between bind and listen a connect would be refused).
            let staging = staging_path(path);
            if staging.as_os_str().len() >= UNIX_PATH_MAX {
                // No room for the temporary name: bind in place, as most servers do.
                socket::bind(fd.as_raw_fd(), &UnixAddr::new(path.as_path())?)?;
                owner_only(path)?;
                socket::listen(&fd, backlog)?;
                return Ok(fd);
            }
            let _ = std::fs::remove_file(&staging);
            socket::bind(fd.as_raw_fd(), &UnixAddr::new(staging.as_path())?)?;
            let placed = owner_only(&staging)
                .and_then(|()| socket::listen(&fd, backlog))
                .and_then(|()| std::fs::rename(&staging, path).map_err(io_errno));
            if let Err(error) = placed {
                let _ = std::fs::remove_file(&staging);
                return Err(error);
            }
            return Ok(fd);
        }
        Address::Hybrid { .. } => return Err(Errno::EAFNOSUPPORT),
    };
    socket::listen(&fd, backlog)?;
    Ok(fd)
}

/// Mode 0600 on a freshly bound socket file, whatever the umask made it. Called before listen(2), while a
/// connect is still refused, so the socket is never reachable with a wider mode.
fn owner_only(path: &Path) -> Result<(), Errno> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_errno)
}

/// sun_path's size: a socket path must be shorter.
const UNIX_PATH_MAX: usize = 108;

/// `PATH.listening.PID` beside `path`: where a Unix listener is bound before it is renamed to `path`.
pub fn staging_path(path: &std::path::Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".listening.{}", std::process::id()));
    path.with_file_name(name)
}

fn io_errno(error: std::io::Error) -> Errno {
    Errno::from_raw(error.raw_os_error().unwrap_or(libc::EIO))
}

/// Accepts one pending connection, non-blocking. `Ok(None)` when none is waiting.
pub fn accept(listener: BorrowedFd<'_>) -> Result<Option<(OwnedFd, Peer)>, Errno> {
    let raw = match socket::accept4(
        listener.as_raw_fd(),
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    ) {
        Ok(raw) => raw,
        Err(Errno::EAGAIN) => return Ok(None),
        Err(error) => return Err(error),
    };
    // SAFETY: accept4 just returned this descriptor and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let peer = peer_of(fd.as_fd());
    Ok(Some((fd, peer)))
}

/// Who is at the other end of an accepted socket: its vsock CID and ours, or its Unix credentials. An
/// address that cannot be read or of another family is [`Peer::Unknown`], which no listener accepts.
fn peer_of(fd: BorrowedFd<'_>) -> Peer {
    let address = match socket::getpeername::<SockaddrStorage>(fd.as_raw_fd()) {
        Ok(address) => address,
        Err(error) => return Peer::Unknown(format!("cannot be read ({error})")),
    };
    match address.family() {
        Some(AddressFamily::Vsock) => {
            let Some(vsock) = address.as_vsock_addr() else {
                return Peer::Unknown("is a short vsock address".to_string());
            };
            let local_cid = socket::getsockname::<SockaddrStorage>(fd.as_raw_fd())
                .ok()
                .and_then(|local| local.as_vsock_addr().map(VsockAddr::cid));
            Peer::Vsock {
                cid: vsock.cid(),
                port: vsock.port(),
                local_cid,
            }
        }
        Some(AddressFamily::Unix) => {
            match socket::getsockopt(&fd, socket::sockopt::PeerCredentials) {
                Ok(credentials) => Peer::Unix {
                    uid: Some(credentials.uid()),
                    pid: Some(credentials.pid()),
                },
                Err(_) => Peer::Unix {
                    uid: None,
                    pid: None,
                },
            }
        }
        other => Peer::Unknown(format!("is of family {other:?}, neither vsock nor unix")),
    }
}

/// Sends without raising SIGPIPE on a closed peer.
pub fn send(fd: BorrowedFd<'_>, bytes: &[u8]) -> Result<usize, Errno> {
    socket::send(fd.as_raw_fd(), bytes, socket::MsgFlags::MSG_NOSIGNAL)
}

/// Reads what is available.
pub fn recv(fd: BorrowedFd<'_>, buffer: &mut [u8]) -> Result<usize, Errno> {
    nix::unistd::read(fd.as_raw_fd(), buffer)
}

/// Connects (blocking) to a hybrid-vsock Unix socket and asks for `port` with `CONNECT PORT\n`; returns
/// the stream once the other side answered `OK ...\n`. Used by hvhost on hosts whose VMM serves vsock from
/// user space (Firecracker, Cloud Hypervisor, vhost-device-vsock).
pub fn connect_hybrid(path: &Path, port: u32, timeout: Duration) -> std::io::Result<UnixStream> {
    let mut stream = UnixStream::connect(path)?;
    let refused = |answer: &str| {
        std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!(
                "{} answered {answer} to CONNECT {port}: is a guest service listening on that port?",
                path.display()
            ),
        )
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // Read byte by byte so nothing of the stream after the answer line is consumed.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 64 {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(error) => return Err(refused(&format!("with an error ({error})"))),
        }
    }
    stream.set_read_timeout(None)?;
    let answer = String::from_utf8_lossy(&line);
    if answer.starts_with("OK ") {
        Ok(stream)
    } else {
        Err(refused(&format!("'{answer}'")))
    }
}

#[cfg(test)]
mod tests;
