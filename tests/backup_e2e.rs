//! End to end over Unix sockets: the backup (VSS) service of the real agent, against hvproto-level requests
//! and against the real `hvhost backup`, and `hvagent thaw`.
//!
//! Nothing here may freeze this machine. Every agent and every `hvagent thaw` runs under the tests' seccomp
//! guard (`no_vsock`), which refuses FIFREEZE and FITHAW with EPERM before the kernel looks at them; each
//! test first checks that the guard does so here. The candidates are this machine's real mounts, so a
//! FREEZE really reaches FIFREEZE and is refused: the answer HV_E_FAIL, the log naming the mount and EPERM,
//! and both halves of the hooks run.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{
    agent_log, hvagent, negotiate_request, v, wait_for_log, wait_for_path, wait_until,
    write_config, Peer, Running,
};
use hvproto::wire::negotiate::Negotiate;
use hvproto::wire::vss::{self, Operation};
use hvproto::wire::{Message, MessageType, Status};

/// The mounts this machine's agent would freeze, as it chooses them.
fn candidates() -> Vec<String> {
    let mounts = std::fs::read_to_string("/proc/1/mounts")
        .or_else(|_| std::fs::read_to_string("/proc/self/mounts"))
        .unwrap_or_default();
    hvagent::system::freeze::candidates_from(&mounts)
}

/// FIFREEZE and FITHAW on no file descriptor (EBADF unguarded, harmless either way), and one harmless call.
fn freeze_calls_on_no_file() -> [i32; 3] {
    let errno = |result: libc::c_int| match result {
        -1 => std::io::Error::last_os_error().raw_os_error().unwrap_or(-1),
        _ => 0,
    };
    // SAFETY: ioctl on fd -1 touches no file and no memory; the kernel (or the guard) refuses it.
    unsafe {
        [
            errno(libc::ioctl(-1, 0xc004_5877_u32 as _, 0)),
            errno(libc::ioctl(-1, 0xc004_5878_u32 as _, 0)),
            0,
        ]
    }
}

/// Stops the test unless the guard refuses FIFREEZE and FITHAW here: nothing below runs the agent without it.
fn assert_guard_refuses_freezing() {
    let [freeze, thaw, _] = common::errnos_under_guard(freeze_calls_on_no_file);
    assert_eq!(
        [freeze, thaw],
        [libc::EPERM, libc::EPERM],
        "the seccomp guard must refuse FIFREEZE and FITHAW before any backup test runs the agent"
    );
}

/// A hook in `dir/hooks` that appends its argument to `dir/marker`.
fn marker_hook(dir: &Path) {
    let hooks = dir.join("hooks");
    std::fs::create_dir(&hooks).unwrap();
    let hook = hooks.join("10-marker");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"hook $1\"\necho \"$1\" >>{}\n",
            dir.join("marker").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn marker(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("marker")).unwrap_or_default()
}

/// An agent with only backup, listening at DIR/backup.sock, hooks in DIR/hooks, freezing `mounts`; its
/// control socket DIR/control.sock, its log DIR/agent.log.
fn backup_agent(dir: &Path, mounts: &str) -> (Running, Peer) {
    assert_guard_refuses_freezing();
    marker_hook(dir);
    let socket = dir.join("backup.sock");
    let config = write_config(
        dir,
        "agent.toml",
        &format!(
            "[heartbeat]\nenabled = false\n[backup]\nenabled = true\nlisten = \"unix:{}\"\n\
             hooks_dir = \"{}\"\nmounts = {mounts}\nhook_timeout = 10\n",
            socket.display(),
            dir.join("hooks").display()
        ),
    );
    let agent = common::start_agent_in(&config, dir);
    wait_for_path(&socket);
    let mut peer = None;
    wait_until(
        Duration::from_secs(10),
        || {
            peer = std::os::unix::net::UnixStream::connect(&socket).ok();
            peer.is_some()
        },
        || format!("nothing accepts connections at {}", socket.display()),
    );
    (agent, Peer::new(peer.unwrap()))
}

/// Negotiates, offering what openvmm's host offers beside Linux's 5.0.
fn negotiate(peer: &mut Peer) {
    peer.send(&negotiate_request(&[v(6, 0), v(5, 0), v(4, 0)]));
    let answer = peer.receive().expect("an answer to NEGOTIATE");
    assert_eq!(answer.header.status, Status::OK);
    assert_eq!(
        Negotiate::parse(&answer.body).unwrap().chosen(),
        Some((v(3, 0), v(5, 0)))
    );
}

/// Sends one backup operation and returns the answer.
fn ask(peer: &mut Peer, operation: Operation, transaction_id: u8) -> Message {
    let request = Message::request(
        MessageType::VSS,
        v(3, 0),
        v(5, 0),
        transaction_id,
        vss::request_body(operation),
    );
    peer.send(&request);
    let answer = peer.receive().expect("an answer to a backup request");
    assert_eq!(answer.header.msgtype, MessageType::VSS);
    assert_eq!(answer.header.transaction_id, transaction_id);
    assert_eq!(
        vss::operation(&answer.body),
        Ok(operation),
        "the body is echoed"
    );
    answer
}

#[test]
fn backup_negotiates_5_0_and_answers_the_checks_as_linux_does() {
    let dir = tempfile::tempdir().unwrap();
    let (_agent, mut peer) = backup_agent(dir.path(), "[]");
    negotiate(&mut peer);
    let hot = ask(&mut peer, Operation::HOT_BACKUP, 1);
    assert_eq!(hot.header.status, Status::OK);
    assert_eq!(vss::flags(&hot.body), Some(5), "VSS_HBU_NO_AUTO_RECOVERY");
    let dm = ask(&mut peer, Operation::GET_DM_INFO, 2);
    assert_eq!(dm.header.status, Status::OK);
    assert_eq!(vss::flags(&dm.body), Some(0));
    for (tid, operation) in [(3, Operation::THAW), (4, Operation::BACKUP_COMPLETE)] {
        assert_eq!(ask(&mut peer, operation, tid).header.status, Status::OK);
    }
    assert!(marker(dir.path()).is_empty(), "no freeze, no hook");
}

#[test]
fn an_unprivileged_freeze_fails_naming_the_mount_and_eperm_and_runs_both_hook_halves() {
    let Some(mount) = candidates().into_iter().next() else {
        eprintln!(
            "this machine has no mount the backup service would freeze: nothing reaches FIFREEZE"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_agent, mut peer) = backup_agent(dir.path(), &format!("[\"{mount}\"]"));
    // The start's thaw of every candidate was refused too, and said why.
    let log = wait_for_log(
        dir.path(),
        "could not thaw at start",
        Duration::from_secs(10),
    );
    assert!(log.contains("CAP_SYS_ADMIN"), "{log}");
    negotiate(&mut peer);
    let answer = ask(&mut peer, Operation::FREEZE, 7);
    assert_eq!(
        answer.header.status,
        Status::FAIL,
        "{}",
        agent_log(dir.path())
    );
    let log = wait_for_log(
        dir.path(),
        &format!("cannot freeze {mount}: "),
        Duration::from_secs(10),
    );
    let line = log
        .lines()
        .find(|line| line.contains(&format!("cannot freeze {mount}: ")))
        .unwrap();
    assert!(
        line.contains("EPERM") && line.contains("CAP_SYS_ADMIN"),
        "{line}"
    );
    assert!(
        line.contains("backup-freeze.conf"),
        "it says what to install: {line}"
    );
    assert_eq!(marker(dir.path()), "freeze\nthaw\n", "{log}");
    assert!(
        log.contains("hook 10-marker freeze: ok (hook freeze)"),
        "{log}"
    );
    assert!(log.contains("hook 10-marker thaw: ok (hook thaw)"), "{log}");
    // Not frozen: a THAW finds nothing to do, and the hooks do not run again.
    assert_eq!(ask(&mut peer, Operation::THAW, 8).header.status, Status::OK);
    assert_eq!(marker(dir.path()), "freeze\nthaw\n");
}

#[test]
fn a_freeze_with_nothing_to_freeze_runs_the_thaw_hooks_when_the_link_closes() {
    let dir = tempfile::tempdir().unwrap();
    // A directory that is no mount: no candidate, so nothing reaches FIFREEZE.
    let not_a_mount = dir.path().display().to_string();
    let (_agent, mut peer) = backup_agent(dir.path(), &format!("[\"{not_a_mount}\"]"));
    negotiate(&mut peer);
    assert_eq!(
        ask(&mut peer, Operation::FREEZE, 1).header.status,
        Status::OK
    );
    let log = wait_for_log(
        dir.path(),
        "is not a local writable filesystem",
        Duration::from_secs(10),
    );
    assert!(log.contains("FREEZE with no filesystem to freeze"), "{log}");
    assert_eq!(marker(dir.path()), "freeze\n");
    let control = dir.path().join("control.sock").display().to_string();
    let status = hvagent(&["status", "--control", &control]);
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(
        shown.contains("frozen for") && shown.contains("thaws in"),
        "{shown}"
    );
    drop(peer);
    wait_until(
        Duration::from_secs(10),
        || marker(dir.path()) == "freeze\nthaw\n",
        || format!("the thaw half never ran:\n{}", agent_log(dir.path())),
    );
    let log = wait_for_log(
        dir.path(),
        "link closed while frozen",
        Duration::from_secs(10),
    );
    assert!(log.contains("backup: thawed nothing"), "{log}");
}

#[test]
fn thaw_without_the_privilege_says_so_and_fails() {
    assert_guard_refuses_freezing();
    let output = hvagent(&["thaw"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if candidates().is_empty() {
        assert!(output.status.success(), "{stdout}{stderr}");
        assert!(stdout.contains("nothing was frozen"), "{stdout}");
        return;
    }
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("EPERM") && stderr.contains("CAP_SYS_ADMIN"),
        "{stderr}"
    );
    assert!(stderr.contains("run hvagent thaw as root"), "{stderr}");
    assert!(hvagent(&["thaw", "--all"]).status.code() == Some(2));
}

#[test]
fn hvhost_backup_runs_its_command_between_the_agents_freeze_hooks_and_thaw_hooks() {
    let dir = tempfile::tempdir().unwrap();
    // No candidate, so nothing reaches FIFREEZE: the exchange and the hooks' order are what is tested.
    let not_a_mount = dir.path().display().to_string();
    let (_agent, peer) = backup_agent(dir.path(), &format!("[\"{not_a_mount}\"]"));
    drop(peer);
    let address = format!("unix:{}", dir.path().join("backup.sock").display());
    let seen = dir.path().join("seen");
    let copy = format!(
        "cat {} >{}",
        dir.path().join("marker").display(),
        seen.display()
    );
    let output = common::hvhost(&["backup", &address, "--run", "sh", "-c", &copy]);
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap(),
        "freeze\n",
        "the command ran after the freeze hooks, before the thaw hooks"
    );
    assert_eq!(
        marker(dir.path()),
        "freeze\nthaw\n",
        "{}",
        agent_log(dir.path())
    );
    let log = wait_for_log(dir.path(), "(the host's THAW)", Duration::from_secs(10));
    assert!(log.contains("backup: thawed nothing"), "{log}");
}

#[test]
fn hvhost_backup_reports_the_agents_refused_freeze() {
    let Some(mount) = candidates().into_iter().next() else {
        eprintln!(
            "this machine has no mount the backup service would freeze: nothing reaches FIFREEZE"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_agent, peer) = backup_agent(dir.path(), &format!("[\"{mount}\"]"));
    drop(peer);
    let address = format!("unix:{}", dir.path().join("backup.sock").display());
    let output = common::hvhost(&["backup", &address, "--run", "true"]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(3), "freeze refused: {all}");
    assert!(all.contains("HV_E_FAIL"), "{all}");
    assert_eq!(
        marker(dir.path()),
        "freeze\nthaw\n",
        "{}",
        agent_log(dir.path())
    );
}
