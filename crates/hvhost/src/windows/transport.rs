//! hvhost.exe's sockets: AF_HYPERV streams (socket, bind, listen, accept, connect through Winsock, as
//! Microsoft's "Make your own integration services" shows them), loopback TCP for tests, and WSAPoll for
//! the serve loop and the client's waits.
//!
//! An accepted or connected AF_HYPERV socket is held as a `std::net::TcpStream`: on Windows that type is a
//! SOCKET whose reads and writes are recv and send, which is all an established Hyper-V socket needs, and
//! it closes the socket when dropped. Only what std cannot do for another address family is done here, each
//! unsafe call in a small function of its own.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::windows::io::{AsSocket, BorrowedSocket, FromRawSocket, OwnedSocket, RawSocket};
use std::time::Duration;

use uuid::Uuid;
use windows_sys::Win32::Networking::WinSock as ws;

pub use super::address::Address;
pub use super::connection::Closed;
use super::sockaddr::{self, AF_HYPERV, HV_PROTOCOL_RAW};
use super::vmname;
use crate::net::{timeout_millis, Ready, Watched};
use hvproto::guid::ServiceId;

/// An established stream: a Hyper-V socket or, for tests, a TCP one.
pub type Socket = TcpStream;
/// One established connection with its decoder and output queue.
pub type Connection = super::connection::Connection<TcpStream>;
/// What a poll watches.
pub type Handle<'a> = BorrowedSocket<'a>;

/// HVSOCKET_CONNECT_TIMEOUT (hvsocket.h): how long a connect waits for the other side, in milliseconds, at
/// most 300,000. Set so that a connect to a VM whose service is not listening fails instead of hanging.
const HVSOCKET_CONNECT_TIMEOUT: i32 = 1;
/// The longest HVSOCKET_CONNECT_TIMEOUT accepts.
const MAX_CONNECT_TIMEOUT_MS: u32 = 300_000;

impl Connection {
    pub fn fd(&self) -> Handle<'_> {
        self.stream().as_socket()
    }
}

/// A listening socket.
#[derive(Debug)]
pub enum Listener {
    HyperV(OwnedSocket),
    Tcp(TcpListener),
}

/// The address to open: `vm:NAME` looked up (Get-VM), the others as they are.
pub fn resolve(address: &Address) -> Result<Address, String> {
    match address {
        Address::VmName { name, service } => Ok(Address::HyperV {
            vm: vmname::resolve(name)?,
            service: *service,
        }),
        other => Ok(other.clone()),
    }
}

/// Connects to `address` within `timeout`; the stream is nonblocking.
pub fn dial(address: &Address, timeout: Duration) -> Result<Socket, String> {
    let stream = match address {
        Address::HyperV { vm, service } => connect_hyperv(vm, *service, timeout),
        Address::VmName { name, service } => {
            connect_hyperv(&vmname::resolve(name)?, *service, timeout)
        }
        Address::Tcp(socket) => TcpStream::connect_timeout(socket, timeout),
    }
    .map_err(|error| error.to_string())?;
    stream
        .set_nonblocking(true)
        .map_err(|error| error.to_string())?;
    Ok(stream)
}

/// Listens on `address`, nonblocking.
pub fn listen(address: &Address) -> Result<Listener, String> {
    match address {
        Address::HyperV { vm, service } => listen_hyperv(vm, *service).map(Listener::HyperV),
        Address::VmName { name, service } => {
            listen_hyperv(&vmname::resolve(name)?, *service).map(Listener::HyperV)
        }
        Address::Tcp(socket) => TcpListener::bind(socket).and_then(|listener| {
            listener.set_nonblocking(true)?;
            Ok(Listener::Tcp(listener))
        }),
    }
    .map_err(|error| error.to_string())
}

/// The next waiting connection (nonblocking) and its peer's address where it has one worth showing (a
/// Hyper-V peer's VM and service); None when none waits.
pub fn accept(listener: &Listener) -> Option<(Socket, Option<String>)> {
    let (stream, peer) = match listener {
        Listener::Tcp(listener) => (listener.accept().ok()?.0, None),
        Listener::HyperV(socket) => {
            let (accepted, peer) = accept_hyperv(socket).ok()?;
            (accepted, Some(peer))
        }
    };
    stream.set_nonblocking(true).ok()?;
    Some((stream, peer))
}

pub fn listener_handle(listener: &Listener) -> Handle<'_> {
    match listener {
        Listener::HyperV(socket) => socket.as_socket(),
        Listener::Tcp(listener) => listener.as_socket(),
    }
}

/// WSAPoll over `watched`, up to `timeout` (None: until something happens).
pub fn poll(watched: &mut [Watched<Handle<'_>>], timeout: Option<Duration>) -> Result<(), String> {
    let mut fds: Vec<ws::WSAPOLLFD> = watched
        .iter()
        .map(|one| {
            let mut events = 0;
            if one.interest.read {
                events |= ws::POLLRDNORM;
            }
            if one.interest.write {
                events |= ws::POLLWRNORM;
            }
            ws::WSAPOLLFD {
                fd: raw(one.handle),
                events,
                revents: 0,
            }
        })
        .collect();
    wsa_poll(&mut fds, timeout_millis(timeout))
        .map_err(|error| format!("WSAPoll failed: {error}"))?;
    for (one, fd) in watched.iter_mut().zip(&fds) {
        one.ready = Ready {
            read: fd.revents & ws::POLLRDNORM != 0,
            write: fd.revents & ws::POLLWRNORM != 0,
            hangup: fd.revents & (ws::POLLHUP | ws::POLLERR | ws::POLLNVAL) != 0,
        };
    }
    Ok(())
}

fn raw(handle: Handle<'_>) -> ws::SOCKET {
    use std::os::windows::io::AsRawSocket;
    handle.as_raw_socket() as ws::SOCKET
}

/// Winsock's last error as an io::Error.
fn last_error() -> io::Error {
    // SAFETY: WSAGetLastError only reads the calling thread's last Winsock error.
    io::Error::from_raw_os_error(unsafe { ws::WSAGetLastError() })
}

/// Starts Winsock once for the process. std starts it only for its own socket types, and the first
/// AF_HYPERV socket may come before any of those.
fn start_winsock() -> io::Result<()> {
    static STARTED: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    let code = *STARTED.get_or_init(|| {
        // SAFETY: WSADATA is plain data that WSAStartup fills in; all zeros is a valid value for it.
        let mut data: ws::WSADATA = unsafe { std::mem::zeroed() };
        // SAFETY: `data` is a valid, writable WSADATA for the call's duration. Never cleaned up: the
        // process keeps Winsock until it exits.
        unsafe { ws::WSAStartup(0x0202, &mut data) }
    });
    match code {
        0 => Ok(()),
        code => Err(io::Error::from_raw_os_error(code)),
    }
}

/// A new AF_HYPERV stream socket.
fn hyperv_socket() -> io::Result<OwnedSocket> {
    start_winsock()?;
    // SAFETY: socket takes plain integers and returns a new handle or INVALID_SOCKET.
    let socket = unsafe { ws::socket(i32::from(AF_HYPERV), ws::SOCK_STREAM, HV_PROTOCOL_RAW) };
    if socket == ws::INVALID_SOCKET {
        let error = last_error();
        if error.raw_os_error() == Some(ws::WSAEAFNOSUPPORT) {
            return Err(io::Error::new(
                error.kind(),
                "this Windows has no Hyper-V sockets (AF_HYPERV: WSAEAFNOSUPPORT); hvhost.exe needs a \
                 Hyper-V host, Windows 10 or Server 2016 or later",
            ));
        }
        return Err(error);
    }
    // SAFETY: `socket` was just created and is owned by nothing else.
    Ok(unsafe { OwnedSocket::from_raw_socket(socket as RawSocket) })
}

/// A SOCKADDR_HV in memory aligned as the struct is (its GUIDs are 4-byte aligned).
#[repr(C, align(4))]
struct RawAddress([u8; sockaddr::LEN]);

fn connect_hyperv(vm: &Uuid, service: ServiceId, timeout: Duration) -> io::Result<TcpStream> {
    let socket = hyperv_socket()?;
    let millis = (timeout.as_millis() as u32).clamp(1, MAX_CONNECT_TIMEOUT_MS);
    set_option(&socket, HVSOCKET_CONNECT_TIMEOUT, millis)?;
    let address = RawAddress(sockaddr::encode(vm, service));
    // SAFETY: `address` is a SOCKADDR_HV of the length passed, alive for the call; the socket is valid.
    let result = unsafe {
        ws::connect(
            raw(socket.as_socket()),
            address.0.as_ptr().cast(),
            sockaddr::LEN as i32,
        )
    };
    if result != 0 {
        return Err(last_error());
    }
    Ok(TcpStream::from(socket))
}

fn set_option(socket: &OwnedSocket, option: i32, value: u32) -> io::Result<()> {
    let bytes = value.to_ne_bytes();
    // SAFETY: the option value is the 4 bytes of a ULONG, alive for the call; the socket is valid.
    let result = unsafe {
        ws::setsockopt(
            raw(socket.as_socket()),
            HV_PROTOCOL_RAW,
            option,
            bytes.as_ptr(),
            bytes.len() as i32,
        )
    };
    if result != 0 {
        return Err(last_error());
    }
    Ok(())
}

fn listen_hyperv(vm: &Uuid, service: ServiceId) -> io::Result<OwnedSocket> {
    let socket = hyperv_socket()?;
    let address = RawAddress(sockaddr::encode(vm, service));
    // SAFETY: as in connect_hyperv.
    let bound = unsafe {
        ws::bind(
            raw(socket.as_socket()),
            address.0.as_ptr().cast(),
            sockaddr::LEN as i32,
        )
    };
    if bound != 0 {
        return Err(last_error());
    }
    // SAFETY: a valid, bound socket; SOMAXCONN asks for the provider's largest backlog.
    if unsafe { ws::listen(raw(socket.as_socket()), ws::SOMAXCONN as i32) } != 0 {
        return Err(last_error());
    }
    let mut nonblocking = 1u32;
    // SAFETY: FIONBIO reads the u32 given, alive for the call.
    if unsafe { ws::ioctlsocket(raw(socket.as_socket()), ws::FIONBIO, &mut nonblocking) } != 0 {
        return Err(last_error());
    }
    Ok(socket)
}

/// Accepts one connection and names its peer as an address: `hv:VMID:SERVICE`.
fn accept_hyperv(listener: &OwnedSocket) -> io::Result<(TcpStream, String)> {
    let mut peer = RawAddress([0; sockaddr::LEN]);
    let mut length = sockaddr::LEN as i32;
    // SAFETY: `peer` has room for `length` bytes and both outlive the call; the socket is valid.
    let socket = unsafe {
        ws::accept(
            raw(listener.as_socket()),
            peer.0.as_mut_ptr().cast(),
            &mut length,
        )
    };
    if socket == ws::INVALID_SOCKET {
        return Err(last_error());
    }
    // SAFETY: `socket` was just accepted and is owned by nothing else.
    let stream = unsafe { TcpStream::from_raw_socket(socket as RawSocket) };
    let shown = match sockaddr::decode(&peer.0[..(length.max(0) as usize).min(sockaddr::LEN)]) {
        Some((vm, service)) => match ServiceId::from_uuid(&service) {
            Some(service) => Address::HyperV { vm, service }.to_string(),
            None => format!("hv:{vm}:{service}"),
        },
        None => "an AF_HYPERV peer".to_string(),
    };
    Ok((stream, shown))
}

fn wsa_poll(fds: &mut [ws::WSAPOLLFD], millis: i32) -> io::Result<i32> {
    // SAFETY: `fds` is a valid array of the length passed, alive and exclusively borrowed for the call.
    let count = unsafe { ws::WSAPoll(fds.as_mut_ptr(), fds.len() as u32, millis) };
    if count == ws::SOCKET_ERROR {
        return Err(last_error());
    }
    Ok(count)
}
