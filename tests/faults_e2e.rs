//! Faults and load against the real agent binary over Unix sockets: disconnect storms, stalled and
//! flooding peers, connection floods, malformed input, and signals in the middle of heavy traffic. Each test
//! checks the documented outcome and that the agent keeps serving everyone else.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use hvproto::wire::negotiate::Negotiate;
use hvproto::wire::{IcFlags, Message, MessageType, Status};

/// Starts an agent whose heartbeat service listens on `dir/hb.sock`, with `extra` top-level keys and
/// `service_extra` keys in [heartbeat].
fn listening_agent(dir: &Path, extra: &str, service_extra: &str) -> (Running, std::path::PathBuf) {
    let socket = dir.join("hb.sock");
    let config = write_config(
        dir,
        "agent.toml",
        &format!(
            "{extra}\n[heartbeat]\nlisten = \"unix:{}\"\n{service_extra}\n",
            socket.display()
        ),
    );
    let agent = start_agent_logging(&config, dir);
    wait_for_path(&socket);
    (agent, socket)
}

/// A host listening on `dir/host.sock` and an agent whose heartbeat service dials it, with `extra`
/// top-level keys; the agent logs to `dir/agent.log`.
fn dialling_agent(dir: &Path, extra: &str) -> (Running, UnixListener) {
    let socket = dir.join("host.sock");
    let host = UnixListener::bind(&socket).unwrap();
    let config = write_config(
        dir,
        "agent.toml",
        &format!(
            "{extra}\n[heartbeat]\nconnect = \"unix:{}\"\n",
            socket.display()
        ),
    );
    let agent = start_agent_logging(&config, dir);
    (agent, host)
}

/// Lets this test process hold a few thousand descriptors.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read the one struct we pass.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max.min(8192);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

#[test]
fn a_thousand_host_disconnects_mid_message_leave_fds_and_rss_where_they_started() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, listener) = dialling_agent(dir.path(), "redial_min = 0.001\nredial_max = 0.004");
    let half_heartbeat = encode(&heartbeat_request(7, 7));
    let one_round = |listener: &UnixListener| {
        let (stream, _) = listener.accept().unwrap();
        let mut peer = Peer::new(stream);
        peer.negotiate_heartbeat();
        // Half of a heartbeat, then the host goes away in the middle of the message.
        peer.stream
            .write_all(&half_heartbeat[..half_heartbeat.len() / 2])
            .unwrap();
    };
    // Warm up so the allocator and the log have settled, then measure.
    for _ in 0..20 {
        one_round(&listener);
    }
    std::thread::sleep(Duration::from_millis(100));
    let fds_before = agent.fd_count();
    let rss_before = agent.status_kib("VmRSS");
    for _ in 0..1000 {
        one_round(&listener);
    }
    // The 1,001st connection still serves heartbeats.
    let (stream, _) = listener.accept().unwrap();
    let mut peer = Peer::new(stream);
    peer.negotiate_heartbeat();
    for seq in 1..=10 {
        peer.heartbeat(seq);
    }
    let fds_after = agent.fd_count();
    let rss_after = agent.status_kib("VmRSS");
    assert_eq!(
        fds_after, fds_before,
        "descriptors before and after 1,000 disconnects"
    );
    // A leak of even 64 bytes per connection would show as 64 KiB here.
    assert!(
        rss_after <= rss_before + 64,
        "RSS grew from {rss_before} KiB to {rss_after} KiB over 1,000 disconnects"
    );
    eprintln!("fds {fds_before} -> {fds_after}, RSS {rss_before} -> {rss_after} KiB");
}

#[test]
fn half_a_header_then_nothing_is_dropped_after_the_idle_timeout_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let (_agent, socket) = listening_agent(dir.path(), "idle_timeout = 0.4", "");
    let mut healthy = Peer::connect(&socket);
    healthy.negotiate_heartbeat();
    // A peer that negotiated and then stays silent without a partial message is not idle in that sense.
    let mut quiet = Peer::connect(&socket);
    quiet.negotiate_heartbeat();
    let mut stalled = Peer::connect(&socket);
    stalled.stream.write_all(&[0u8; 10]).unwrap();
    let sent_at = Instant::now();
    stalled
        .stream
        .set_nonblocking(true)
        .expect("non-blocking stalled peer");
    let mut seq = 0;
    let dropped_after = loop {
        seq += 1;
        healthy.heartbeat(seq);
        let mut byte = [0u8; 1];
        match stalled.stream.read(&mut byte) {
            Ok(0) => break sent_at.elapsed(),
            Ok(_) => panic!("the agent answered half a header"),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => panic!("stalled peer: {error}"),
        }
        assert!(
            sent_at.elapsed() < Duration::from_secs(5),
            "the stalled peer was never dropped"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        dropped_after >= Duration::from_millis(400),
        "dropped after {dropped_after:?}, before the 0.4 s idle timeout"
    );
    assert!(seq > 10, "the healthy peer was served meanwhile ({seq})");
    quiet.heartbeat(1);
    healthy.heartbeat(seq + 1);
    let log = agent_log(dir.path());
    assert!(log.contains("idle_timeout"), "{log}");
}

#[test]
fn a_stalled_host_alone_is_dropped_and_redialled_in_connect_mode() {
    let dir = tempfile::tempdir().unwrap();
    let (_agent, listener) = dialling_agent(dir.path(), "idle_timeout = 0.3");
    let (stream, _) = listener.accept().unwrap();
    let mut stalled = Peer::new(stream);
    stalled.negotiate_heartbeat();
    stalled.stream.write_all(&[0u8; 10]).unwrap();
    let sent_at = Instant::now();
    // Nothing else happens in the agent: the time-out alone must close the link.
    assert_eq!(stalled.receive(), None, "the stalled link was answered");
    let dropped_after = sent_at.elapsed();
    assert!(
        dropped_after >= Duration::from_millis(300) && dropped_after < Duration::from_secs(5),
        "dropped after {dropped_after:?} (idle_timeout 0.3 s)"
    );
    let (stream, _) = listener.accept().unwrap();
    let mut peer = Peer::new(stream);
    peer.negotiate_heartbeat();
    peer.heartbeat(1);
}

#[test]
fn a_thousand_peers_at_once_are_capped_at_max_connections_and_the_rest_refused() {
    raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let (agent, socket) = listening_agent(dir.path(), "", "max_connections = 64");
    let rss_before = agent.status_kib("VmRSS");
    let streams: Vec<UnixStream> = (0..1000)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    for stream in &streams {
        stream.set_nonblocking(true).unwrap();
    }
    // Every connection is accepted at once; those beyond the cap are closed without a word.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut open = Vec::new();
    for (index, mut stream) in streams.into_iter().enumerate() {
        let mut byte = [0u8; 1];
        loop {
            match stream.read(&mut byte) {
                Ok(0) => break,
                Ok(_) => panic!("connection {index} got bytes it did not ask for"),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    if open.len() < 64 {
                        open.push(stream);
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "connection {index} (beyond the 64 kept) was never closed"
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(error) => panic!("connection {index}: {error}"),
            }
        }
    }
    assert_eq!(open.len(), 64);
    for stream in open {
        stream.set_nonblocking(false).unwrap();
        let mut peer = Peer::new(stream);
        peer.negotiate_heartbeat();
        peer.heartbeat(1);
    }
    let rss_after = agent.status_kib("VmRSS");
    assert!(
        rss_after <= rss_before + 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB holding 64 connections after a flood of 1,000"
    );
    let log = agent_log(dir.path());
    assert!(log.contains("max_connections"), "{log}");
}

/// A negotiate body listing `count` message versions (3.0 last), built by hand so counts over the codec's
/// limit can be sent.
fn negotiate_body_with(count: u16) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&1u16.to_le_bytes());
    body.extend_from_slice(&count.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&3u16.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    for index in 0..count {
        let major: u16 = if index + 1 == count { 3 } else { 9 };
        body.extend_from_slice(&major.to_le_bytes());
        body.extend_from_slice(&index.to_le_bytes());
    }
    if count > 0 {
        let last = body.len() - 2;
        body[last..].copy_from_slice(&0u16.to_le_bytes());
    }
    body
}

fn negotiate_with(body: Vec<u8>) -> Message {
    Message::request(MessageType::NEGOTIATE, v(1, 0), v(1, 0), 3, body)
}

/// Expects the agent to close the connection without answering.
fn expect_closed_without_answer(peer: &mut Peer, what: &str) {
    assert_eq!(peer.receive(), None, "{what}: answered instead of closed");
}

#[test]
fn bad_inputs_get_their_documented_answers_and_disturb_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_agent, socket) = listening_agent(dir.path(), "", "");
    let mut healthy = Peer::connect(&socket);
    healthy.negotiate_heartbeat();
    let mut seq = 0;
    let mut check_healthy = |healthy: &mut Peer| {
        seq += 1;
        healthy.heartbeat(seq);
    };

    // Garbage: a pipe header whose sizes disagree; closed, nothing sent back.
    let mut peer = Peer::connect(&socket);
    peer.stream.write_all(&[0xff; 64]).unwrap();
    expect_closed_without_answer(&mut peer, "garbage");
    check_healthy(&mut healthy);

    // An oversized length: a message claiming 20,000 bytes of body.
    let mut peer = Peer::connect(&socket);
    let mut header = encode(&heartbeat_request(1, 1));
    header[4..8].copy_from_slice(&(20u32 + 20_000).to_le_bytes());
    header[18..20].copy_from_slice(&20_000u16.to_le_bytes());
    peer.stream.write_all(&header[..28]).unwrap();
    expect_closed_without_answer(&mut peer, "oversized length");
    check_healthy(&mut healthy);

    // 100 message versions are accepted; 101 are refused with HV_INVALIDARG and the body echoed, and the
    // connection stays usable.
    let mut peer = Peer::connect(&socket);
    let body_101 = negotiate_body_with(101);
    peer.send(&negotiate_with(body_101.clone()));
    let answer = peer.receive().unwrap();
    assert_eq!(answer.header.status, Status::INVALID_ARG);
    assert_eq!(answer.body, body_101);
    peer.send(&negotiate_with(negotiate_body_with(100)));
    let answer = peer.receive().unwrap();
    assert_eq!(answer.header.status, Status::OK);
    assert_eq!(
        Negotiate::parse(&answer.body).unwrap().chosen(),
        Some((v(3, 0), v(3, 0)))
    );
    peer.heartbeat(1);
    check_healthy(&mut healthy);

    // A request before negotiation: HV_E_FAIL with the body echoed.
    let mut peer = Peer::connect(&socket);
    let request = heartbeat_request(5, 5);
    peer.send(&request);
    let answer = peer.receive().unwrap();
    assert_eq!(answer.header.status, Status::FAIL);
    assert_eq!(answer.body, request.body);

    // A truncated body: HV_INVALIDARG with the body echoed.
    peer.negotiate_heartbeat();
    let short = Message::request(MessageType::HEARTBEAT, v(3, 0), v(3, 0), 6, vec![1, 2, 3]);
    peer.send(&short);
    let answer = peer.receive().unwrap();
    assert_eq!(answer.header.status, Status::INVALID_ARG);
    assert_eq!(answer.body, vec![1, 2, 3]);

    // A response nobody asked for: dropped without an answer; the next request is the next answer.
    let mut response = heartbeat_request(40, 40);
    response.header.flags = IcFlags(IcFlags::TRANSACTION | IcFlags::RESPONSE);
    peer.send(&response);
    peer.heartbeat(41);
    check_healthy(&mut healthy);
}

#[test]
fn a_peer_that_never_reads_is_dropped_with_its_queue_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, socket) = listening_agent(dir.path(), "", "");
    let rss_before = agent.status_kib("VmRSS");
    let mut healthy = Peer::connect(&socket);
    healthy.negotiate_heartbeat();
    let mut flooder = Peer::connect(&socket);
    flooder.negotiate_heartbeat();
    flooder.stream.set_nonblocking(true).unwrap();
    let batch: Vec<u8> = (0..100)
        .flat_map(|seq| encode(&heartbeat_request(seq, seq as u8)))
        .collect();
    let started = Instant::now();
    let mut written = 0usize;
    let mut seq = 0;
    let outcome = loop {
        match flooder.stream.write(&batch) {
            Ok(count) => written += count,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                seq += 1;
                healthy.heartbeat(seq);
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(error) => break error,
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the agent kept a peer that never reads after {written} bytes"
        );
    };
    assert!(
        matches!(
            outcome.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ),
        "{outcome}"
    );
    let rss_after = agent.status_kib("VmRSS");
    assert!(
        rss_after <= rss_before + 2048,
        "RSS grew from {rss_before} KiB to {rss_after} KiB for a peer that never reads"
    );
    healthy.heartbeat(seq + 1);
    let log = agent_log(dir.path());
    assert!(log.contains("stopped reading"), "{log}");
}

#[test]
fn sigterm_answers_every_request_already_sent_then_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, socket) = listening_agent(dir.path(), "", "");
    let mut peer = Peer::connect(&socket);
    peer.negotiate_heartbeat();
    // 3,000 requests (132,000 bytes) fit in the socket's buffers; all are sent before the signal, and every
    // one must be answered before the agent exits.
    let requests: Vec<u8> = (1..=3000u64)
        .flat_map(|seq| encode(&heartbeat_request(seq, seq as u8)))
        .collect();
    peer.stream.write_all(&requests).unwrap();
    agent.signal(libc::SIGTERM);
    let mut answered = 0u64;
    while let Some(answer) = peer.receive() {
        answered += 1;
        assert_heartbeat_answer(&answer, answered);
    }
    assert_eq!(answered, 3000, "answers before the agent closed");
    assert_eq!(peer.leftover(), 0, "a torn answer at the end");
    let status = agent.wait_for(Duration::from_secs(5)).expect("exit");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn signals_in_the_middle_of_heavy_traffic_lose_no_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, socket) = listening_agent(dir.path(), "", "");
    let mut peer = Peer::connect(&socket);
    peer.negotiate_heartbeat();
    let total = 20_000u64;
    let mut writer = peer.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        for chunk in (1..=total).collect::<Vec<_>>().chunks(100) {
            let bytes: Vec<u8> = chunk
                .iter()
                .flat_map(|&seq| encode(&heartbeat_request(seq, seq as u8)))
                .collect();
            if writer.write_all(&bytes).is_err() {
                break;
            }
        }
    });
    // SIGHUP (the config is unchanged) keeps the connection; every answer arrives, in order.
    let mut answered = 0u64;
    while answered < total {
        let answer = peer.receive().expect("the connection survives SIGHUP");
        answered += 1;
        assert_heartbeat_answer(&answer, answered);
        if answered % 5000 == 0 {
            agent.signal(libc::SIGHUP);
        }
    }
    sender.join().unwrap();
    // SIGTERM while a second stream of requests flows: whatever arrives is whole and in order, then EOF.
    let mut writer = peer.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        for chunk in (total + 1..=2 * total).collect::<Vec<_>>().chunks(100) {
            let bytes: Vec<u8> = chunk
                .iter()
                .flat_map(|&seq| encode(&heartbeat_request(seq, seq as u8)))
                .collect();
            if writer.write_all(&bytes).is_err() {
                break;
            }
        }
    });
    while let Some(answer) = peer.receive() {
        answered += 1;
        assert_heartbeat_answer(&answer, answered);
        if answered == total + 1000 {
            agent.signal(libc::SIGTERM);
        }
    }
    assert!(answered >= total + 1000);
    assert_eq!(peer.leftover(), 0, "a torn answer at the end");
    let status = agent.wait_for(Duration::from_secs(5)).expect("exit");
    assert_eq!(status.code(), Some(0));
    sender.join().unwrap();
}

#[test]
fn test_agents_cannot_open_vsock_sockets() {
    // The guard every test agent runs under: a config that would dial the host over vsock must fail with
    // EACCES inside the agent, never reach this machine's vsock.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "agent.toml",
        "[heartbeat]\nconnect = \"vsock:host:0x48560101\"\n",
    );
    let _agent = start_agent_logging(&config, dir.path());
    let text = wait_for_log(dir.path(), "cannot connect", Duration::from_secs(10));
    assert!(text.contains("EACCES"), "{text}");
}
