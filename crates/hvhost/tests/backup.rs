//! `hvhost backup` against a fake guest: a Unix-socket listener in the test that negotiates the backup
//! service by hand with hvproto's wire types, answers each request as scripted, and records the operations
//! in order, with whether the command's marker file was there when each arrived. It only pretends to
//! freeze. hvhost and the commands it runs are under the tests' no_vsock guard.
// Unix sockets and the no_vsock guard: these run on Linux; hvhost.exe's are tests/windows/e2e.sh.
#![cfg(unix)]

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{encode, no_vsock, v};
use hvproto::service::FRAMEWORK_VERSIONS;
use hvproto::wire::negotiate::Negotiate;
use hvproto::wire::vss::{self, Operation};
use hvproto::wire::{Decoder, Message, MessageType, Status};

/// How the fake guest answers an operation: a status, or none to leave it unanswered.
type Script = fn(Operation) -> Option<Status>;

/// One request the fake guest received: its operation, and whether the marker existed then.
type Seen = (Operation, bool);

fn all_ok(_: Operation) -> Option<Status> {
    Some(Status::OK)
}

/// A fake guest listening in a temp dir; `finish` returns what it received.
struct FakeGuest {
    dir: tempfile::TempDir,
    address: String,
    thread: JoinHandle<Vec<Seen>>,
}

impl FakeGuest {
    fn start(script: Script) -> FakeGuest {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("backup.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let marker = dir.path().join("marker");
        let thread = std::thread::spawn(move || serve(listener, &marker, script));
        FakeGuest {
            address: format!("unix:{}", socket.display()),
            dir,
            thread,
        }
    }

    /// The file the test's command writes while the guest is "frozen".
    fn marker(&self) -> PathBuf {
        self.dir.path().join("marker")
    }

    /// `hvhost backup ADDR` with `args`.
    fn hvhost(&self, args: &[&str]) -> Output {
        no_vsock(&mut Command::new(env!("CARGO_BIN_EXE_hvhost")))
            .args(["backup", &self.address])
            .args(args)
            .output()
            .unwrap()
    }

    fn finish(self) -> Vec<Seen> {
        self.thread.join().unwrap()
    }
}

/// Accepts one connection and answers it until hvhost closes it.
fn serve(listener: UnixListener, marker: &Path, script: Script) -> Vec<Seen> {
    let mut stream = accept(&listener);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut decoder = Decoder::new();
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        while let Some(message) = decoder.next_message().unwrap() {
            let message = message.to_owned_message();
            if let Some(answer) = answer(&message, marker, script, &mut seen) {
                stream.write_all(&encode(&answer)).unwrap();
            }
        }
        match stream.read(&mut buffer) {
            Ok(0) => return seen,
            Ok(count) => decoder.push(&buffer[..count]),
            Err(error) if error.kind() == ErrorKind::ConnectionReset => return seen,
            Err(error) => panic!("the fake guest reading from hvhost: {error}"),
        }
    }
}

/// Waits up to 10 s for hvhost to connect.
fn accept(listener: &UnixListener) -> UnixStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                return stream;
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "hvhost never connected");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(error) => panic!("accept: {error}"),
        }
    }
}

/// The guest's answer: the negotiation as Linux chooses (framework 3.0, message 5.0 only), a backup
/// request as scripted, its body echoed with the flags Linux writes.
fn answer(
    message: &Message,
    marker: &Path,
    script: Script,
    seen: &mut Vec<Seen>,
) -> Option<Message> {
    match message.header.msgtype {
        MessageType::NEGOTIATE => {
            let offer = Negotiate::parse(&message.body).unwrap();
            let chosen = offer.choose(&FRAMEWORK_VERSIONS, &[v(5, 0)]);
            Some(message.reply(Status::OK, Negotiate::answer(chosen).to_body()))
        }
        MessageType::VSS => {
            let operation = vss::operation(&message.body).unwrap();
            seen.push((operation, marker.exists()));
            let status = script(operation)?;
            let mut body = message.body.clone();
            if operation == Operation::HOT_BACKUP {
                body[8..12].copy_from_slice(&vss::NO_AUTO_RECOVERY.to_le_bytes());
            }
            Some(message.reply(status, body))
        }
        other => panic!("hvhost sent a {other} request to the backup service"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The arguments of `--run` for a command that writes the marker and exits with `code`.
fn marker_command(marker: &Path, code: u8) -> Vec<String> {
    let script = format!("echo written > \"$1\"; exit {code}");
    vec![
        "--run".into(),
        "sh".into(),
        "-c".into(),
        script,
        "sh".into(),
        marker.display().to_string(),
    ]
}

fn run_with_marker(guest: &FakeGuest, code: u8) -> Output {
    let args = marker_command(&guest.marker(), code);
    guest.hvhost(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

const CHECK: Seen = (Operation::HOT_BACKUP, false);
const FREEZE: Seen = (Operation::FREEZE, false);

#[test]
fn run_checks_freezes_runs_the_command_while_frozen_then_thaws_and_exits_0() {
    let guest = FakeGuest::start(all_ok);
    let output = run_with_marker(&guest, 0);
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        text(&output.stderr)
    );
    assert!(guest.marker().exists(), "{stdout}");
    assert_eq!(
        guest.finish(),
        [CHECK, FREEZE, (Operation::THAW, true)],
        "the marker is written after the freeze and before the thaw"
    );
    for line in [
        "negotiated framework=3.0 message=5.0",
        "backup check answer=HV_S_OK (0x00000000) flags=0x5 rtt_ms=",
        "backup freeze answer=HV_S_OK (0x00000000) rtt_ms=",
        "run command=\"sh -c",
        "run exit=0 ms=",
        "backup thaw answer=HV_S_OK (0x00000000) rtt_ms=",
        "frozen for ",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
}

#[test]
fn a_failing_command_is_still_followed_by_the_thaw_and_exits_4() {
    let guest = FakeGuest::start(all_ok);
    let output = run_with_marker(&guest, 3);
    assert_eq!(output.status.code(), Some(4), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("exited with status 3; the guest was thawed"));
    assert!(text(&output.stdout).contains("frozen for "));
    assert_eq!(guest.finish(), [CHECK, FREEZE, (Operation::THAW, true)]);
}

#[test]
fn a_command_that_cannot_start_is_still_followed_by_the_thaw_and_exits_4() {
    let guest = FakeGuest::start(all_ok);
    let missing = guest.dir.path().join("no-such-program");
    let output = guest.hvhost(&["--run", &missing.display().to_string()]);
    assert_eq!(output.status.code(), Some(4), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("could not start"));
    assert_eq!(guest.finish(), [CHECK, FREEZE, (Operation::THAW, false)]);
}

#[test]
fn a_refused_freeze_runs_nothing_asks_no_thaw_and_exits_3() {
    let guest = FakeGuest::start(|operation| {
        Some(match operation {
            Operation::FREEZE => Status::FAIL,
            _ => Status::OK,
        })
    });
    let output = run_with_marker(&guest, 0);
    assert_eq!(output.status.code(), Some(3), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("refused the freeze (HV_E_FAIL"));
    assert!(!guest.marker().exists(), "the command ran");
    assert_eq!(guest.finish(), [CHECK, FREEZE]);
}

#[test]
fn a_refused_thaw_exits_5_even_after_a_good_command() {
    let guest = FakeGuest::start(|operation| {
        Some(match operation {
            Operation::THAW => Status::FAIL,
            _ => Status::OK,
        })
    });
    let output = run_with_marker(&guest, 0);
    assert_eq!(output.status.code(), Some(5), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("refused the thaw"));
    assert!(!text(&output.stdout).contains("frozen for "));
    assert_eq!(guest.finish(), [CHECK, FREEZE, (Operation::THAW, true)]);
}

#[test]
fn freeze_alone_checks_and_freezes_and_thaw_alone_only_thaws() {
    let guest = FakeGuest::start(all_ok);
    let output = guest.hvhost(&["--freeze"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(guest.finish(), [CHECK, FREEZE]);

    let guest = FakeGuest::start(all_ok);
    let output = guest.hvhost(&["--thaw"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(guest.finish(), [(Operation::THAW, false)]);
}

#[test]
fn an_unanswered_freeze_gives_up_after_the_timeout_runs_nothing_and_exits_1() {
    let guest =
        FakeGuest::start(|operation| (operation != Operation::FREEZE).then_some(Status::OK));
    let mut args = vec!["--timeout".to_string(), "0.3".to_string()];
    args.extend(marker_command(&guest.marker(), 0));
    let started = Instant::now();
    let output = guest.hvhost(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("no answer to the freeze within 0.3 s"),
        "{}",
        text(&output.stderr)
    );
    assert!(text(&output.stdout).contains("closing the connection, on which the agent thaws"));
    assert!(!guest.marker().exists(), "the command ran");
    assert_eq!(guest.finish(), [CHECK, FREEZE]);
}
