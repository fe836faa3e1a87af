//! Shared by the end-to-end tests: the agent binary as a child killed at the end of the test, config files
//! in a temp dir, and a raw host-side peer that speaks IC messages over a Unix socket.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hvproto::wire::heartbeat::Heartbeat;
use hvproto::wire::negotiate::Negotiate;
use hvproto::wire::{Decoder, IcVersion, Message, MessageType, Status};

/// The agent binary, for the agent's own tests (the other crates' tests that share this file use `HOST`).
pub const AGENT: &str = match option_env!("CARGO_BIN_EXE_hvagent") {
    Some(path) => path,
    None => "",
};

/// A binary of another package of the workspace, built beside this test's own (`target/PROFILE/NAME`).
/// Cargo builds a package's binaries before its integration tests run, and hvhost's and hvbench's packages
/// have integration tests, so `cargo test --workspace` builds them.
pub fn workspace_bin(name: &str) -> PathBuf {
    let test = std::env::current_exe().expect("the test's own path");
    // target/PROFILE/deps/TEST → target/PROFILE/NAME
    let path = test
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/PROFILE/deps")
        .join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo test --workspace` (or `cargo build --workspace --bins`) first",
        path.display()
    );
    path
}

/// The hvhost binary (the host crate's).
pub fn host_bin() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_hvhost") {
        Some(path) => PathBuf::from(path),
        None => workspace_bin("hvhost"),
    }
}

/// Runs hvagent to the end with `args` (its commands other than `run`, or a config it must refuse).
pub fn hvagent(args: &[&str]) -> std::process::Output {
    no_vsock(&mut Command::new(AGENT))
        .args(args)
        .output()
        .unwrap()
}

/// Runs hvhost to the end with `args`.
pub fn hvhost(args: &[&str]) -> std::process::Output {
    no_vsock(&mut Command::new(host_bin()))
        .args(args)
        .output()
        .unwrap()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The voluntary context switches of a process so far: how often it went to sleep and was woken.
pub fn voluntary_switches(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

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

/// Services enabled by default that a test must turn off unless it configures them: left on, they would dial
/// the host over AF_VSOCK, which tests on a development machine must never do.
pub const DEFAULT_ON: [&str; 3] = ["timesync", "shutdown", "guestinfo"];

/// `text` with every default-on service it does not mention turned off.
pub fn config_text(text: &str) -> String {
    let mut text = text.to_string();
    for service in DEFAULT_ON {
        if !text.contains(&format!("[{service}]")) {
            text.push_str(&format!("\n[{service}]\nenabled = false\n"));
        }
    }
    text
}

/// Writes a config file for a test: `text`, with the default-on services it does not mention turned off.
pub fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, config_text(text)).unwrap();
    // The agent refuses a config others may write: whatever the umask, this one is the test user's alone.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

/// Makes `command` unable to create AF_VSOCK sockets (socket(2) and socketpair(2) fail with EACCES), by a
/// seccomp filter installed in the child before exec. Every program a test starts gets it: a development
/// machine's vsock belongs to its infrastructure, and a mistake in a test config must fail, not reach it.
pub fn no_vsock(command: &mut Command) -> &mut Command {
    // SAFETY: the closure runs in the forked child before exec and only makes two prctl calls on data
    // that lives on its own stack.
    unsafe { command.pre_exec(deny_vsock) }
}

/// The guard's filter: AF_VSOCK sockets fail with EACCES, reboot(2) and the FIFREEZE/FITHAW ioctls with
/// EPERM, as `novsock` refuses them (x86_64; another architecture's numbers mean other calls, so there every
/// call is refused rather than guessed at). It holds for the calling thread and the threads it starts, so a
/// test that runs the agent's code in a thread of its own installs it there.
pub fn deny_vsock() -> std::io::Result<()> {
    // Offsets in struct seccomp_data: nr at 0, arch at 4, args[0] at 16, args[1] at 24 (low halves).
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    const ARG0: u32 = 16;
    const ARG1: u32 = 24;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const AF_VSOCK: u32 = 40;
    // _IOWR('X', 119, int) and _IOWR('X', 120, int), include/uapi/linux/fs.h.
    const FIFREEZE: u32 = 0xc004_5877;
    const FITHAW: u32 = 0xc004_5878;
    use bpf::{jump, statement, LOAD as load, RET as ret};
    // Jumps only go forwards; each offset counts the statements skipped.
    let mut filter = [
        /* 0 */ statement(load, ARCH),
        /* 1 */ jump(AUDIT_ARCH_X86_64, 1, 0),
        /* 2 */ statement(ret, libc::SECCOMP_RET_KILL_PROCESS),
        /* 3 */ statement(load, NR),
        /* 4 */ jump(libc::SYS_socket as u32, 4, 0), // to 9
        /* 5 */ jump(libc::SYS_socketpair as u32, 3, 0), // to 9
        /* 6 */ jump(libc::SYS_reboot as u32, 9, 0), // to 16
        /* 7 */ jump(libc::SYS_ioctl as u32, 5, 0), // to 13
        /* 8 */ statement(ret, libc::SECCOMP_RET_ALLOW),
        /* 9 */ statement(load, ARG0),
        /* 10 */ jump(AF_VSOCK, 0, 1),
        /* 11 */ statement(ret, libc::SECCOMP_RET_ERRNO | libc::EACCES as u32),
        /* 12 */ statement(ret, libc::SECCOMP_RET_ALLOW),
        /* 13 */ statement(load, ARG1),
        /* 14 */ jump(FIFREEZE, 1, 0), // to 16
        /* 15 */ jump(FITHAW, 0, 1), // to 16, else 17
        /* 16 */ statement(ret, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        /* 17 */ statement(ret, libc::SECCOMP_RET_ALLOW),
    ];
    install_filter(&mut filter)
}

/// The two classic-BPF instructions the test filters are made of.
pub mod bpf {
    /// Loads the 32-bit word at an offset of `struct seccomp_data`.
    pub const LOAD: u32 = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    /// Returns a SECCOMP_RET_* value.
    pub const RET: u32 = libc::BPF_RET | libc::BPF_K;

    /// An instruction that does not jump.
    pub fn statement(code: u32, k: u32) -> libc::sock_filter {
        libc::sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        }
    }

    /// Skips `jt` instructions when the loaded word equals `k`, else `jf`.
    pub fn jump(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt,
            jf,
            k,
        }
    }
}

/// Installs a seccomp filter program in the calling process, after PR_SET_NO_NEW_PRIVS. Only prctl calls on
/// the caller's own data: safe between fork and exec.
pub fn install_filter(filter: &mut [libc::sock_filter]) -> std::io::Result<()> {
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: prctl with a valid, live filter program; no memory is handed over.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &program as *const libc::sock_fprog,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs `calls` in a forked child under the guard and returns the errno each call failed with (0 when it
/// succeeded). Only calls harmless whatever the guard does may be passed (see guard_e2e).
pub fn errnos_under_guard(calls: fn() -> [i32; 3]) -> [i32; 3] {
    let mut pipe = [0; 2];
    // SAFETY: a pipe into a local array; fork, then the child only installs the filter (prctl), makes the
    // calls, writes 12 bytes and _exits, all async-signal-safe.
    unsafe {
        assert_eq!(libc::pipe(pipe.as_mut_ptr()), 0);
        let pid = libc::fork();
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let result = match deny_vsock() {
                Ok(()) => calls(),
                Err(_) => [-1; 3],
            };
            let mut bytes = [0u8; 12];
            for (at, errno) in result.iter().enumerate() {
                bytes[at * 4..at * 4 + 4].copy_from_slice(&errno.to_le_bytes());
            }
            libc::write(pipe[1], bytes.as_ptr().cast(), bytes.len());
            libc::_exit(0);
        }
        libc::close(pipe[1]);
        let mut bytes = [0u8; 12];
        let read = libc::read(pipe[0], bytes.as_mut_ptr().cast(), bytes.len());
        libc::close(pipe[0]);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        assert_eq!(read, 12, "the guarded child did not report");
        let mut errnos = [0; 3];
        for (at, errno) in errnos.iter_mut().enumerate() {
            *errno = i32::from_le_bytes(bytes[at * 4..at * 4 + 4].try_into().unwrap());
        }
        errnos
    }
}

/// The agent's log in a test's directory, as `start_agent_logging` writes it.
pub const AGENT_LOG: &str = "agent.log";

/// Starts the agent with `config`, its log going to `dir/agent.log` (read it with `agent_log`).
pub fn start_agent_logging(config: &Path, dir: &Path) -> Running {
    start_agent(config, Some(&dir.join(AGENT_LOG)))
}

/// What the agent started by `start_agent_logging(_, dir)` logged so far (empty before its first line).
pub fn agent_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(AGENT_LOG)).unwrap_or_default()
}

/// Waits up to `limit` for the agent's log in `dir` to contain `needle`, and returns the log; the test fails
/// with the log when it does not.
pub fn wait_for_log(dir: &Path, needle: &str, limit: Duration) -> String {
    wait_until(
        limit,
        || agent_log(dir).contains(needle),
        || {
            format!(
                "no {needle:?} in the agent's log within {limit:?}:\n{}",
                agent_log(dir)
            )
        },
    );
    agent_log(dir)
}

/// Starts the agent with `config`; its log goes to `log` when given.
pub fn start_agent(config: &Path, log: Option<&Path>) -> Running {
    start_agent_with(&[], config, log)
}

/// Starts `hvagent run` with `config`, its control socket at DIR/control.sock and its log in DIR/agent.log
/// (read with [`agent_log`]): for the tests that ask it for its status.
pub fn start_agent_in(config: &Path, dir: &Path) -> Running {
    let control = dir.join("control.sock");
    let args = [
        OsStr::new("run"),
        OsStr::new("--control"),
        control.as_os_str(),
    ];
    start_agent_with(&args, config, Some(&dir.join(AGENT_LOG)))
}

fn start_agent_with(args: &[&OsStr], config: &Path, log: Option<&Path>) -> Running {
    let stderr = match log {
        Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
        None => Stdio::null(),
    };
    Running(
        no_vsock(&mut Command::new(AGENT))
            .args(args)
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
    let body = Heartbeat::new(seq, hvproto::wire::heartbeat::AppState::UNKNOWN).to_body();
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
                return Some(message.to_owned_message());
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
