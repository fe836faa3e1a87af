//! End to end over Unix sockets: the real agent's file-copy service (FCOPY) against the real `hvhost copy`
//! and against requests written with the wire module alone. Every agent runs under the tests' seccomp
//! guard (`no_vsock`). What each test checks on disk is the allowed directory's whole listing, so a
//! temporary file left behind fails it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{
    agent_log, negotiate_request, no_vsock, text, v, wait_for_log, wait_for_path, write_config,
    Peer, Running,
};
use hvproto::service::filecopy::status;
use hvproto::wire::fcopy::{self, header_body, CopyFlags, Operation, Start};
use hvproto::wire::negotiate::Negotiate;
use hvproto::wire::{Message, MessageType, Status};

/// An agent with only file copy, listening at DIR/fcopy.sock, allowing DIR/in; its log DIR/agent.log.
struct Guest {
    dir: tempfile::TempDir,
    agent: Running,
}

impl Guest {
    fn start(extra: &str) -> Guest {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("in")).unwrap();
        std::fs::create_dir(dir.path().join("out")).unwrap();
        let socket = dir.path().join("fcopy.sock");
        let config = write_config(
            dir.path(),
            "agent.toml",
            &format!(
                "[heartbeat]\nenabled = false\n[filecopy]\nenabled = true\nlisten = \"unix:{}\"\n\
                 allowed_dirs = [\"{}\"]\n{extra}",
                socket.display(),
                dir.path().join("in").display()
            ),
        );
        let agent = common::start_agent_in(&config, dir.path());
        wait_for_path(&socket);
        Guest { dir, agent }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn socket(&self) -> String {
        format!("unix:{}", self.path("fcopy.sock").display())
    }

    /// `hvhost copy` of `local` into `guest_dir` with `flags`.
    fn copy(&self, local: &Path, guest_dir: &Path, flags: &[&str]) -> Output {
        let mut args = vec![
            "copy".to_string(),
            self.socket(),
            local.display().to_string(),
            guest_dir.display().to_string(),
        ];
        args.extend(flags.iter().map(|flag| flag.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::hvhost(&args)
    }

    /// Everything beneath DIR/in, as relative paths, sorted.
    fn listing(&self) -> Vec<String> {
        let mut found = Vec::new();
        walk(&self.path("in"), "", &mut found);
        found.sort();
        found
    }

    fn log(&self) -> String {
        agent_log(self.dir.path())
    }

    /// A connection that negotiated file copy 1.1.
    fn peer(&self) -> Peer {
        let mut peer = Peer::connect(&self.path("fcopy.sock"));
        peer.send(&negotiate_request(&[v(1, 1)]));
        let answer = peer.receive().expect("an answer to NEGOTIATE");
        assert_eq!(
            Negotiate::parse(&answer.body).unwrap().chosen(),
            Some((v(3, 0), v(1, 1)))
        );
        peer
    }
}

fn walk(dir: &Path, prefix: &str, found: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        if entry.file_type().unwrap().is_dir() {
            walk(&entry.path(), &format!("{name}/"), found);
        }
        found.push(name);
    }
}

/// `len` bytes that repeat no short pattern (an xorshift stream), so a misplaced fragment shows.
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

fn write_local(guest: &Guest, name: &str, data: &[u8]) -> PathBuf {
    let path = guest.path(name);
    std::fs::write(&path, data).unwrap();
    path
}

fn request(transaction_id: u8, body: Vec<u8>) -> Message {
    Message::request(MessageType::FCOPY, v(3, 0), v(1, 1), transaction_id, body)
}

fn ask(peer: &mut Peer, transaction_id: u8, body: Vec<u8>) -> Status {
    peer.send(&request(transaction_id, body));
    let answer = peer.receive().expect("an answer");
    assert_eq!(answer.header.transaction_id, transaction_id);
    answer.header.status
}

fn start_body(dir: &Path, name: &str, size: u64) -> Vec<u8> {
    Start {
        file_name: name.to_string(),
        path_name: dir.display().to_string(),
        flags: CopyFlags(0),
        file_size: size,
    }
    .to_body()
    .unwrap()
}

fn data_body(offset: u64, data: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    fcopy::emit_data(offset, data, &mut body).unwrap();
    body
}

#[test]
fn a_100_mib_copy_arrives_byte_identical_and_leaves_no_temporary_file() {
    let guest = Guest::start("");
    let data = pseudo_random(100 << 20);
    let local = write_local(&guest, "big.bin", &data);
    let output = guest.copy(&local, &guest.path("in"), &[]);
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        text(&output.stderr)
    );
    assert!(stdout.contains("copy start answer=HV_S_OK"), "{stdout}");
    assert!(stdout.contains("copy complete answer=HV_S_OK"), "{stdout}");
    assert!(
        !stdout.contains('\r'),
        "no progress when stdout is not a terminal"
    );
    assert!(
        std::fs::read(guest.path("in/big.bin")).unwrap() == data,
        "the bytes differ"
    );
    assert_eq!(guest.listing(), ["big.bin"]);
    assert!(
        guest.log().contains("copied 104857600 bytes to"),
        "{}",
        guest.log()
    );
}

#[test]
fn every_refusal_has_its_own_status_a_log_line_naming_the_path_and_leaves_nothing() {
    let guest = Guest::start(&format!("max_file_size = {}\n", 1 << 20));
    let local = write_local(&guest, "small", b"payload");
    std::os::unix::fs::symlink(guest.path("out"), guest.path("in/link")).unwrap();
    std::fs::write(guest.path("in/taken"), b"old").unwrap();
    nix::unistd::mkfifo(
        &guest.path("in/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let big = guest.path("big");
    std::fs::File::create(&big)
        .unwrap()
        .set_len((1 << 20) + 1)
        .unwrap();
    let inside = guest.path("in");
    let cases: [(&Path, PathBuf, &[&str], Status, &str); 7] = [
        (
            &local,
            guest.path("in/../out"),
            &[],
            status::INVALID_NAME,
            "climbs out",
        ),
        (
            &local,
            guest.path("out"),
            &[],
            status::ACCESS_DENIED,
            "not beneath",
        ),
        (
            &local,
            guest.path("in/link"),
            &[],
            status::STOPPED_ON_SYMLINK,
            "in/link is a symbolic link",
        ),
        (
            &local,
            inside.clone(),
            &["--name", "taken"],
            status::ALREADY_EXISTS,
            "in/taken exists",
        ),
        (
            &local,
            inside.clone(),
            &["--name", "fifo", "--overwrite"],
            status::BAD_FILE_TYPE,
            "in/fifo is a device",
        ),
        (
            &big,
            inside.clone(),
            &[],
            status::FILE_TOO_LARGE,
            "over max_file_size",
        ),
        (
            &local,
            guest.path("in/a/b"),
            &[],
            status::PATH_NOT_FOUND,
            "in/a does not exist",
        ),
    ];
    for (file, dir, flags, expected, logged) in cases {
        let output = guest.copy(file, &dir, flags);
        let stdout = text(&output.stdout);
        assert_eq!(output.status.code(), Some(3), "{dir:?} {flags:?}: {stdout}");
        assert!(
            stdout.contains(&format!("copy start answer={expected}")),
            "{dir:?} {flags:?}: {stdout}"
        );
        assert!(text(&output.stderr).contains("nothing was created"));
        wait_for_log(guest.dir.path(), logged, Duration::from_secs(5));
    }
    assert_eq!(guest.listing(), ["fifo", "link", "taken"]);
    assert_eq!(std::fs::read(guest.path("in/taken")).unwrap(), b"old");
    assert_eq!(std::fs::read_dir(guest.path("out")).unwrap().count(), 0);
}

#[test]
fn overwrite_replaces_an_existing_file_and_create_path_makes_directories_beneath() {
    let guest = Guest::start("");
    std::fs::write(guest.path("in/f"), b"old").unwrap();
    let local = write_local(&guest, "f", b"new contents");
    let output = guest.copy(&local, &guest.path("in"), &["--overwrite"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stdout));
    assert_eq!(std::fs::read(guest.path("in/f")).unwrap(), b"new contents");
    let output = guest.copy(
        &local,
        &guest.path("in/a/b"),
        &["--create-path", "--name", "g"],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stdout));
    assert_eq!(
        std::fs::read(guest.path("in/a/b/g")).unwrap(),
        b"new contents"
    );
    assert_eq!(guest.listing(), ["a", "a/b", "a/b/g", "f"]);
}

#[test]
fn cancel_a_gap_and_a_cut_off_link_each_leave_nothing_behind() {
    let guest = Guest::start("");
    let inside = guest.path("in");
    let mut peer = guest.peer();
    assert_eq!(
        ask(&mut peer, 1, start_body(&inside, "c", 20_000)),
        Status::OK
    );
    assert_eq!(ask(&mut peer, 2, data_body(0, &[1; 6144])), Status::OK);
    assert_eq!(
        guest.listing(),
        Vec::<String>::new(),
        "the temporary file has no name while copying"
    );
    assert_eq!(
        ask(&mut peer, 3, header_body(Operation::CANCEL_FCOPY)),
        Status::OK
    );
    assert_eq!(guest.listing(), Vec::<String>::new());

    assert_eq!(
        ask(&mut peer, 4, start_body(&inside, "g", 20_000)),
        Status::OK
    );
    assert_eq!(
        ask(&mut peer, 5, data_body(6144, &[1; 6144])),
        Status::INVALID_ARG
    );
    assert_eq!(guest.listing(), Vec::<String>::new());
    wait_for_log(guest.dir.path(), "a gap in", Duration::from_secs(5));

    assert_eq!(
        ask(&mut peer, 6, start_body(&inside, "cut", 20_000)),
        Status::OK
    );
    assert_eq!(ask(&mut peer, 7, data_body(0, &[1; 6144])), Status::OK);
    drop(peer);
    wait_for_log(
        guest.dir.path(),
        "the host's link closed",
        Duration::from_secs(5),
    );
    assert_eq!(guest.listing(), Vec::<String>::new());
}

#[test]
fn a_sigkilled_agent_leaves_nothing_of_its_copy() {
    // SIGKILL removes nothing and closes nothing in order: the unnamed temporary file goes with the process.
    let mut guest = Guest::start("");
    let mut peer = guest.peer();
    assert_eq!(
        ask(
            &mut peer,
            1,
            start_body(&guest.path("in"), "killed", 20_000)
        ),
        Status::OK
    );
    assert_eq!(ask(&mut peer, 2, data_body(0, &[7; 6144])), Status::OK);
    guest.agent.0.kill().unwrap();
    guest.agent.0.wait().unwrap();
    assert_eq!(guest.listing(), Vec::<String>::new());
}

#[test]
fn a_copy_silent_for_copy_timeout_is_abandoned_and_removed() {
    let guest = Guest::start("copy_timeout = 1\n");
    let mut peer = guest.peer();
    assert_eq!(
        ask(&mut peer, 1, start_body(&guest.path("in"), "slow", 10)),
        Status::OK
    );
    assert_eq!(ask(&mut peer, 2, data_body(0, b"12345")), Status::OK);
    wait_for_log(
        guest.dir.path(),
        "no message within copy_timeout",
        Duration::from_secs(5),
    );
    assert_eq!(guest.listing(), Vec::<String>::new());
    assert_eq!(
        ask(&mut peer, 3, header_body(Operation::COMPLETE_FCOPY)),
        Status::FAIL
    );
}

#[test]
fn an_enabled_service_without_allowed_dirs_refuses_to_start_saying_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "agent.toml",
        "[heartbeat]\nenabled = false\n[filecopy]\nenabled = true\nlisten = \"unix:/nonexistent/x\"\n",
    );
    let output = no_vsock(&mut Command::new(common::AGENT))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("allowed_dirs = [\"/DIR\"]"), "{stderr}");
}

#[test]
fn status_shows_the_copy_in_progress_and_the_last_one() {
    let guest = Guest::start("");
    let local = write_local(&guest, "s", b"x");
    assert_eq!(
        guest.copy(&local, &guest.path("in"), &[]).status.code(),
        Some(0)
    );
    let mut peer = guest.peer();
    assert_eq!(
        ask(&mut peer, 1, start_body(&guest.path("in"), "t", 100)),
        Status::OK
    );
    assert_eq!(ask(&mut peer, 2, data_body(0, &[7; 40])), Status::OK);
    let control = guest.path("control.sock").display().to_string();
    let output = common::hvagent(&["status", "--control", &control]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(stdout.contains("copying "), "{stdout}");
    assert!(stdout.contains("in/t: 40 of 100 bytes"), "{stdout}");
    assert!(stdout.contains("in/s (1 bytes)"), "{stdout}");
}
