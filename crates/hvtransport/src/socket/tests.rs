//! Socket tests. The Unix ones run everywhere; the `real_vsock` ones are ignored by default and run inside
//! the QEMU guest of the VM test against vsock_loopback (CID 1), never on a development machine.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::*;
use crate::address::CID_LOCAL;
use crate::peer::{cid_allowed, AllowedCids};
use crate::{Closed, Connection};
use hvproto::wire::heartbeat::{AppState, Heartbeat};
use hvproto::wire::{IcVersion, Message, MessageType};

fn wait_for(fd: BorrowedFd<'_>, flags: PollFlags) -> PollFlags {
    let mut fds = [PollFd::new(fd, flags)];
    let ready = poll(&mut fds, PollTimeout::from(5000u16)).expect("poll");
    assert_eq!(ready, 1, "socket did not become ready within 5 s");
    fds[0].revents().unwrap_or(PollFlags::empty())
}

fn connected(dial: Dial) -> OwnedFd {
    match dial {
        Dial::Connected(fd) => fd,
        Dial::InProgress(fd) => {
            wait_for(fd.as_fd(), PollFlags::POLLOUT);
            finish_connect(fd.as_fd()).expect("connect completes");
            fd
        }
    }
}

fn accept_one(listener: &OwnedFd) -> (OwnedFd, Peer) {
    wait_for(listener.as_fd(), PollFlags::POLLIN);
    accept(listener.as_fd())
        .unwrap()
        .expect("a pending connection")
}

fn heartbeat(seq: u64) -> Message {
    Message::request(
        MessageType::HEARTBEAT,
        IcVersion::new(3, 0),
        IcVersion::new(3, 0),
        1,
        Heartbeat::new(seq, AppState::UNKNOWN).to_body(),
    )
}

/// Sends `count` messages through a pair of connections, flushing and receiving as poll says, with the
/// sender's socket buffer made small so writes are partial.
fn exchange(client: OwnedFd, server: OwnedFd, count: u64) {
    socket::setsockopt(&client, socket::sockopt::SndBuf, &4096).unwrap();
    let mut sender = Connection::new(client);
    let mut receiver = Connection::new(server);
    for seq in 0..count {
        sender.queue(&heartbeat(seq)).unwrap();
    }
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while (received.len() as u64) < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} arrived",
            received.len()
        );
        sender.flush().unwrap();
        let mut fds = [
            PollFd::new(receiver.fd(), PollFlags::POLLIN),
            PollFd::new(
                sender.fd(),
                if sender.wants_write() {
                    PollFlags::POLLOUT
                } else {
                    PollFlags::empty()
                },
            ),
        ];
        poll(&mut fds, PollTimeout::from(1000u16)).unwrap();
        receiver.receive(&mut received).unwrap();
    }
    for (seq, message) in received.iter().enumerate() {
        assert_eq!(Heartbeat::parse(&message.body).unwrap().seq_num, seq as u64);
    }
    drop(sender);
    let mut rest = Vec::new();
    wait_for(receiver.fd(), PollFlags::POLLIN);
    assert_eq!(receiver.receive(&mut rest), Err(Closed::Eof));
}

#[test]
fn unix_listen_connect_accept_and_partial_writes_deliver_every_message() {
    let dir = tempfile::tempdir().unwrap();
    let address = Address::Unix(dir.path().join("hb.sock"));
    let listener = listen(&address, 8).unwrap();
    let client = connected(connect(&address).unwrap());
    let (server, peer) = accept_one(&listener);
    assert!(
        matches!(peer, Peer::Unix { uid: Some(uid), pid: Some(pid) }
            if uid == crate::peer::own_uid() && pid == std::process::id() as i32),
        "{peer:?}"
    );
    exchange(client, server, 2000);
}

#[test]
fn unix_listen_replaces_a_stale_socket_but_not_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hb.sock");
    let first = listen(&Address::Unix(path.clone()), 8).unwrap();
    drop(first);
    listen(&Address::Unix(path.clone()), 8).expect("stale socket file replaced");
    let file = dir.path().join("plain");
    std::fs::write(&file, b"keep me").unwrap();
    assert_eq!(
        listen(&Address::Unix(file.clone()), 8).unwrap_err(),
        Errno::EEXIST
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

#[test]
fn a_unix_socket_file_appears_only_once_it_accepts_connections() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hb.sock");
    let watcher_path = path.clone();
    // A client that connects the moment the file exists must never be refused.
    let watcher = std::thread::spawn(move || {
        while !watcher_path.exists() {
            std::thread::yield_now();
        }
        std::os::unix::net::UnixStream::connect(&watcher_path).map(|_| ())
    });
    let _listener = listen(&Address::Unix(path.clone()), 8).unwrap();
    watcher
        .join()
        .unwrap()
        .expect("connect as soon as the file exists");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(names, ["hb.sock"], "no staging file left behind");
    // A path too long for a staging name is still served, bound in place.
    let long = dir
        .path()
        .join("x".repeat(100 - dir.path().as_os_str().len().min(90)));
    if long.as_os_str().len() < 108 {
        let _listener = listen(&Address::Unix(long.clone()), 8).unwrap();
        std::os::unix::net::UnixStream::connect(&long).unwrap();
    }
}

#[test]
fn unix_connect_where_nothing_listens_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let error = connect(&Address::Unix(dir.path().join("absent"))).unwrap_err();
    assert_eq!(error, Errno::ENOENT);
}

#[test]
fn a_unix_listener_is_mode_0600_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hb.sock");
    // The umask is process-wide: other tests creating files meanwhile only get narrower modes.
    let previous = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let listener = listen(&Address::Unix(path.clone()), 8);
    nix::sys::stat::umask(previous);
    let _listener = listener.unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
}

#[test]
fn a_peer_of_another_family_is_unknown() {
    // A TCP socket's peer is of family AF_INET: no listener here speaks it, so it is refused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let peer = peer_of(server.as_fd());
    assert!(
        matches!(&peer, Peer::Unknown(what) if what.contains("Inet")),
        "{peer:?}"
    );
    // A socket with no peer at all: its address cannot be read.
    let unbound = stream_socket(AddressFamily::Unix).unwrap();
    assert!(matches!(peer_of(unbound.as_fd()), Peer::Unknown(_)));
}

#[test]
fn hybrid_handshake_reads_only_its_own_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vsock.uds");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0u8; 16];
        let count = stream.read(&mut request).unwrap();
        assert_eq!(&request[..count], b"CONNECT 2761\n");
        stream.write_all(b"OK 1073741824\nSTREAM").unwrap();
    });
    let mut stream = connect_hybrid(&path, 2761, Duration::from_secs(5)).unwrap();
    let mut rest = [0u8; 6];
    stream.read_exact(&mut rest).unwrap();
    assert_eq!(&rest, b"STREAM");
    server.join().unwrap();
}

#[test]
fn hybrid_refusal_says_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vsock.uds");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        drop(stream);
    });
    let error = connect_hybrid(&path, 5, Duration::from_secs(5)).unwrap_err();
    assert!(
        error.to_string().contains("is a guest service listening"),
        "{error}"
    );
    server.join().unwrap();
}

// Real AF_VSOCK, loopback CID 1: only inside the VM test's guest (scripts/vm-test.sh runs them with
// `--ignored real_vsock`). Never remove the #[ignore]: a development machine's vsock is not ours to use.

const LOOPBACK_PORT_BASE: u32 = 0x4856_1000;

/// A connected client and server over vsock loopback (CID 1) on `port`, and the peer the server saw.
fn vsock_loopback_pair(port: u32) -> (OwnedFd, OwnedFd, Peer) {
    let address = Address::Vsock {
        cid: CID_LOCAL,
        port,
    };
    let listener = listen(&address, 8).unwrap();
    let client = connected(connect(&address).unwrap());
    let (server, peer) = accept_one(&listener);
    (client, server, peer)
}

#[test]
#[ignore = "needs real AF_VSOCK with vsock_loopback: run by the VM test inside the guest"]
fn real_vsock_listen_connect_accept_reports_the_peer_cid() {
    let (client, server, peer) = vsock_loopback_pair(LOOPBACK_PORT_BASE + 1);
    assert!(
        matches!(peer, Peer::Vsock { cid: CID_LOCAL, .. }),
        "{peer:?}"
    );
    let Peer::Vsock { local_cid, .. } = peer else {
        unreachable!()
    };
    assert_eq!(local_cid, Some(CID_LOCAL));
    // Loopback is this guest itself: refused by default and even with "any", accepted when listed.
    let any = AllowedCids {
        any: true,
        cids: vec![],
    };
    assert!(!cid_allowed(CID_LOCAL, local_cid, &AllowedCids::default()));
    assert!(!cid_allowed(CID_LOCAL, local_cid, &any));
    let listed = AllowedCids {
        any: false,
        cids: vec![CID_LOCAL],
    };
    assert!(cid_allowed(CID_LOCAL, local_cid, &listed));
    exchange(client, server, 10);
}

#[test]
#[ignore = "needs real AF_VSOCK with vsock_loopback: run by the VM test inside the guest"]
fn real_vsock_partial_writes_with_a_small_buffer_deliver_every_message() {
    let (client, server, _) = vsock_loopback_pair(LOOPBACK_PORT_BASE + 2);
    exchange(client, server, 5000);
}

#[test]
#[ignore = "needs real AF_VSOCK with vsock_loopback: run by the VM test inside the guest"]
fn real_vsock_connect_where_nothing_listens_fails_without_blocking() {
    let started = Instant::now();
    let result = match connect(&Address::Vsock {
        cid: CID_LOCAL,
        port: LOOPBACK_PORT_BASE + 3,
    }) {
        Ok(Dial::InProgress(fd)) => {
            wait_for(fd.as_fd(), PollFlags::POLLOUT);
            finish_connect(fd.as_fd())
        }
        Ok(Dial::Connected(_)) => Ok(()),
        Err(error) => Err(error),
    };
    let error = result.expect_err("nothing listens there");
    assert!(
        matches!(
            error,
            Errno::ECONNRESET | Errno::ECONNREFUSED | Errno::ETIMEDOUT
        ),
        "{error}"
    );
    assert!(started.elapsed() <= CONNECT_TIMEOUT + Duration::from_secs(1));
}

#[test]
#[ignore = "needs real AF_VSOCK with vsock_loopback: run by the VM test inside the guest"]
fn real_vsock_peer_close_reads_as_eof() {
    let (client, server, _) = vsock_loopback_pair(LOOPBACK_PORT_BASE + 4);
    drop(client);
    let mut connection = Connection::new(server);
    wait_for(connection.fd(), PollFlags::POLLIN);
    assert_eq!(connection.receive(&mut Vec::new()), Err(Closed::Eof));
}
