//! `hvagent clock-helper` end to end: the real binary on a Unix socket in a temp dir, with `--fake-clock`
//! (a clock in memory), asked by the agent's own [`RemoteClock`]. The helper also runs under a seccomp
//! filter that fails every call able to change this machine's clock, so even a helper that ignored
//! `--fake-clock` could not.

mod common;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{no_vsock, Running, AGENT};
use hvagent::clock::remote::RemoteClock;
use hvproto::clock::{Clock, ClockError};

/// Fails settimeofday, clock_settime, adjtimex and clock_adjtime with EPERM (x86_64; elsewhere the filter
/// refuses to load and the test stops, rather than run unguarded).
fn deny_clock_changes() -> std::io::Result<()> {
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    use common::bpf::{jump, statement, LOAD, RET};
    let mut filter = [
        statement(LOAD, ARCH),
        jump(AUDIT_ARCH_X86_64, 1, 0),
        statement(RET, libc::SECCOMP_RET_KILL_PROCESS),
        statement(LOAD, NR),
        jump(libc::SYS_settimeofday as u32, 4, 0),
        jump(libc::SYS_clock_settime as u32, 3, 0),
        jump(libc::SYS_adjtimex as u32, 2, 0),
        jump(libc::SYS_clock_adjtime as u32, 1, 0),
        statement(RET, libc::SECCOMP_RET_ALLOW),
        statement(RET, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
    ];
    common::install_filter(&mut filter)
}

fn own_uid() -> u32 {
    hvtransport::peer::own_uid()
}

/// `hvagent clock-helper --fake-clock ARGS`, guarded, its stderr to `log`.
fn helper(args: &[&str], log: &Path) -> Command {
    let mut command = Command::new(AGENT);
    no_vsock(&mut command)
        .arg("clock-helper")
        .arg("--fake-clock")
        .args(args)
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    // SAFETY: the closure runs in the forked child before exec and makes only prctl calls.
    unsafe { command.pre_exec(deny_clock_changes) };
    command
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log_text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// A helper with --fake-clock on clock.sock in a new temp dir, for peers of `uid`, logging to helper.log.
fn serving(uid: u32) -> (tempfile::TempDir, Running) {
    let dir = tempfile::tempdir().unwrap();
    let (socket, log) = (dir.path().join("clock.sock"), dir.path().join("helper.log"));
    let uid = uid.to_string();
    let args = ["--socket", socket.to_str().unwrap(), "--peer-uid", &uid];
    let running = Running(helper(&args, &log).spawn().unwrap());
    wait_for("the helper's socket", || socket.exists());
    (dir, running)
}

#[test]
fn helper_reads_sets_and_steps_a_fake_clock_for_an_allowed_peer() {
    let (dir, _helper) = serving(own_uid());
    let (socket, log) = (dir.path().join("clock.sock"), dir.path().join("helper.log"));
    let mut clock = RemoteClock::new(&socket);
    assert_eq!(clock.frequency_ppm(), Ok(0.0));
    clock.set_frequency_ppm(-12.5).unwrap();
    assert_eq!(clock.frequency_ppm(), Ok(-12.5));
    clock.step(3_000_000_000).unwrap();
    wait_for("the step in the helper's log", || {
        log_text(&log).contains("stepped the clock by +3.000 s for uid")
    });
    let before = std::time::SystemTime::now();
    let read = clock.now_ns();
    let now = before.duration_since(std::time::UNIX_EPOCH).unwrap();
    assert!(
        (read - now.as_nanos() as i128).abs() < 1_000_000_000,
        "now_ns reads this machine's clock, which the fake step never moved"
    );
    assert!(
        log_text(&log).contains("--fake-clock"),
        "{}",
        log_text(&log)
    );
}

#[test]
fn helper_refuses_a_peer_of_another_uid() {
    let (dir, _helper) = serving(own_uid().wrapping_add(4242));
    let (socket, log) = (dir.path().join("clock.sock"), dir.path().join("helper.log"));
    let mut clock = RemoteClock::new(&socket);
    assert_eq!(clock.step(1_000_000_000), Err(ClockError::NotPermitted));
    assert_eq!(clock.set_frequency_ppm(1.0), Err(ClockError::NotPermitted));
    wait_for("the refusal in the helper's log", || {
        log_text(&log).contains(&format!("refused a peer of uid {}", own_uid()))
    });
    assert!(!log_text(&log).contains("stepped"));
}

#[test]
fn helper_serves_the_socket_systemd_passes_and_exits_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, log) = (dir.path().join("clock.sock"), dir.path().join("helper.log"));
    let listener = UnixListener::bind(&socket).unwrap();
    let fd = listener.as_raw_fd();
    let uid = own_uid().to_string();
    // As systemd starts it: the socket as fd 3, LISTEN_PID its own pid (the shell's, which it execs).
    let mut command = helper(&[], &log);
    command.arg("--peer-uid").arg(&uid).args(["--idle", "1"]);
    let program = command.get_program().to_owned();
    let args: Vec<_> = command.get_args().map(|arg| arg.to_owned()).collect();
    let mut shell = Command::new("/bin/sh");
    shell
        .arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"")
        .arg(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    no_vsock(&mut shell);
    // SAFETY: the closure runs in the forked child before exec: dup2 and prctl on its own descriptors.
    unsafe {
        shell.pre_exec(move || {
            // dup2 onto itself would keep FD_CLOEXEC, so a listener that is fd 3 already only loses it.
            let moved = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if moved < 0 {
                return Err(std::io::Error::last_os_error());
            }
            deny_clock_changes()
        })
    };
    let mut child = shell.spawn().unwrap();
    drop(listener);
    let mut clock = RemoteClock::new(&socket);
    clock.set_frequency_ppm(42.0).unwrap();
    assert_eq!(clock.frequency_ppm(), Ok(42.0));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("the helper did not exit when idle: {}", log_text(&log));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut text = String::new();
    std::fs::File::open(&log)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert!(status.success(), "{text}");
    assert!(text.contains("idle for 1 s, exiting"), "{text}");
}
