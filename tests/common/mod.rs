//! Shared by the end-to-end tests: the agent binary as a child killed at the end of the test, config files
//! in a temp dir, and a raw host-side peer that speaks IC messages over a Unix socket.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hvagent::wire::heartbeat::Heartbeat;
use hvagent::wire::negotiate::Negotiate;
use hvagent::wire::{Decoder, IcVersion, Message, MessageType, Status};

pub const AGENT: &str = env!("CARGO_BIN_EXE_hvagent");

/// A child process killed when the test ends, pass or fail.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Waits for exit up to `limit`; the status, or None on time-out.
    pub fn wait_for(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.0.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// Open file descriptors of the process, from /proc.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// A `kB` field of /proc/PID/status, such as VmRSS.
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
            .trim()
            .trim_end_matches(" kB")
            .parse()
            .unwrap()
    }
}

pub fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts the agent with `config`; its log goes to `log` when given.
pub fn start_agent(config: &Path, log: Option<&Path>) -> Running {
    let stderr = match log {
        Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
        None => Stdio::null(),
    };
    Running(
        Command::new(AGENT)
            .arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap(),
    )
}

pub fn wait_for_path(path: &Path) {
    wait_until(
        Duration::from_secs(10),
        || path.exists(),
        || format!("{} never appeared", path.display()),
    );
}

/// Polls `done` every few milliseconds until it holds; panics with `what()` after `limit`.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool, what: impl Fn() -> String) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{}", what());
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn v(major: u16, minor: u16) -> IcVersion {
    IcVersion::new(major, minor)
}

pub fn negotiate_request(messages: &[IcVersion]) -> Message {
    let body = Negotiate {
        framework_versions: vec![v(3, 0)],
        message_versions: messages.to_vec(),
        ..Negotiate::default()
    }
    .to_body();
    Message::request(MessageType::NEGOTIATE, v(1, 0), v(1, 0), 0, body)
}

pub fn heartbeat_request(seq: u64, transaction_id: u8) -> Message {
    let body = Heartbeat::new(seq, hvagent::wire::heartbeat::AppState::UNKNOWN).to_body();
    Message::request(
        MessageType::HEARTBEAT,
        v(3, 0),
        v(3, 0),
        transaction_id,
        body,
    )
}

pub fn encode(message: &Message) -> Vec<u8> {
    let mut bytes = Vec::new();
    message.emit(&mut bytes).unwrap();
    bytes
}

/// The host side of one connection, written against the wire module only.
pub struct Peer {
    pub stream: UnixStream,
    decoder: Decoder,
}

impl Peer {
    pub fn new(stream: UnixStream) -> Peer {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Peer {
            stream,
            decoder: Decoder::new(),
        }
    }

    pub fn connect(path: &Path) -> Peer {
        Peer::new(UnixStream::connect(path).unwrap())
    }

    pub fn send(&mut self, message: &Message) {
        self.stream.write_all(&encode(message)).unwrap();
    }

    /// The next message, or None at EOF (or a reset); panics after the read time-out.
    pub fn receive(&mut self) -> Option<Message> {
        loop {
            if let Some(message) = self.decoder.next_message().unwrap() {
                return Some(message);
            }
            let mut buffer = [0u8; 4096];
            match self.stream.read(&mut buffer) {
                Ok(0) => return None,
                Ok(count) => self.decoder.push(&buffer[..count]),
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(error) => panic!("reading from the agent: {error}"),
            }
        }
    }

    /// Bytes received but not yet a whole message.
    pub fn leftover(&self) -> usize {
        self.decoder.pending_len()
    }

    /// Negotiates heartbeat 3.0 and checks the answer.
    pub fn negotiate_heartbeat(&mut self) {
        self.send(&negotiate_request(&[v(3, 0)]));
        let answer = self.receive().expect("an answer to NEGOTIATE");
        assert_eq!(answer.header.status, Status::OK);
        assert_eq!(
            Negotiate::parse(&answer.body).unwrap().chosen(),
            Some((v(3, 0), v(3, 0)))
        );
    }

    /// Sends one heartbeat and checks its answer.
    pub fn heartbeat(&mut self, seq: u64) {
        self.send(&heartbeat_request(seq, (seq % 256) as u8));
        let answer = self.receive().expect("an answer to a heartbeat");
        assert_heartbeat_answer(&answer, seq);
    }
}

pub fn assert_heartbeat_answer(answer: &Message, seq: u64) {
    assert_eq!(answer.header.status, Status::OK, "{answer:?}");
    assert_eq!(answer.header.msgtype, MessageType::HEARTBEAT);
    assert_eq!(answer.header.transaction_id, (seq % 256) as u8);
    assert_eq!(Heartbeat::parse(&answer.body).unwrap().seq_num, seq + 1);
}
