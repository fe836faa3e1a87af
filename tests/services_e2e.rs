//! End to end over Unix sockets: shutdown, guest info (KVP) and application health through the real hvagent
//! and hvhost binaries. Shutdown commands here are always fake scripts: nothing here powers anything off.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{
    agent_log, host_bin, no_vsock, start_agent, start_agent_logging, wait_for_path, wait_until,
    write_config, Peer, Running,
};
use hvproto::wire::shutdown::ShutdownRequest;
use hvproto::wire::{IcVersion, Message, MessageType, Status};

/// Waits until the agent accepts connections at `socket`: the file appears at bind(2), a moment before
/// listen(2), and a connect in between is refused.
fn wait_for_listener(socket: &Path) {
    wait_for_path(socket);
    wait_until(
        Duration::from_secs(10),
        || std::os::unix::net::UnixStream::connect(socket).is_ok(),
        || format!("nothing accepts connections at {}", socket.display()),
    );
}

fn hvhost(args: &[&str]) -> Output {
    no_vsock(&mut Command::new(host_bin()))
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// An executable script in `dir` that appends its environment's shutdown request and its arguments to
/// `marker`.
fn fake_command(dir: &Path, marker: &Path) -> PathBuf {
    let path = dir.join("fake-power");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"$HVAGENT_SHUTDOWN_ACTION force=$HVAGENT_SHUTDOWN_FORCE \
             reason=$HVAGENT_SHUTDOWN_REASON message=$HVAGENT_SHUTDOWN_MESSAGE args=$*\" >>{}\n",
            marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// An agent whose shutdown service listens at DIR/shutdown.sock and runs the fake command.
fn shutdown_agent(dir: &Path, marker: &Path) -> (Running, String) {
    let socket = dir.join("shutdown.sock");
    let fake = fake_command(dir, marker);
    let config = write_config(
        dir,
        "agent.toml",
        &format!(
            "[heartbeat]\nenabled = false\n[shutdown]\nlisten = \"unix:{}\"\npoweroff = [\"{fake}\", \"off\"]\n\
             reboot = [\"{fake}\", \"reboot\"]\nhibernate = [\"{fake}\", \"hibernate\"]\n",
            socket.display(),
            fake = fake.display()
        ),
    );
    let agent = start_agent_logging(&config, dir);
    wait_for_listener(&socket);
    (agent, format!("unix:{}", socket.display()))
}

fn marker_lines(marker: &Path) -> Vec<String> {
    std::fs::read_to_string(marker)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn shutdown_is_answered_then_runs_the_command_once() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let (_agent, address) = shutdown_agent(dir.path(), &marker);
    let output = hvhost(&[
        "shutdown",
        &address,
        "--force",
        "--reason",
        "0x80000000",
        "--message",
        "planned maintenance",
    ]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(
        stdout.contains("negotiated framework=3.0 message=3.2"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "shutdown flags=0x1 reason=0x80000000 message=\"planned maintenance\" answer=HV_S_OK"
        ),
        "{stdout}"
    );
    wait_until(
        Duration::from_secs(10),
        || !marker_lines(&marker).is_empty(),
        || "the fake poweroff command never ran".to_string(),
    );
    assert_eq!(
        marker_lines(&marker),
        ["poweroff force=1 reason=0x80000000 message=planned maintenance args=off"]
    );
    // The system is going down: a second request is answered and ignored.
    let output = hvhost(&["shutdown", &address, "--reboot"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("answer=HV_S_OK"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        marker_lines(&marker).len(),
        1,
        "{:?}",
        marker_lines(&marker)
    );
}

#[test]
fn reboot_runs_the_reboot_command() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let (_agent, address) = shutdown_agent(dir.path(), &marker);
    let output = hvhost(&["shutdown", &address, "--reboot"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    wait_until(
        Duration::from_secs(10),
        || !marker_lines(&marker).is_empty(),
        || "the fake reboot command never ran".to_string(),
    );
    assert_eq!(
        marker_lines(&marker),
        ["reboot force=0 reason=0x00000000 message= args=reboot"]
    );
}

#[test]
fn unknown_flags_and_impossible_hibernation_are_refused_and_run_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let (_agent, address) = shutdown_agent(dir.path(), &marker);
    let path = address.strip_prefix("unix:").unwrap();
    let mut peer = Peer::connect(Path::new(path));
    peer.send(&common::negotiate_request(&[IcVersion::new(3, 2)]));
    assert_eq!(peer.receive().unwrap().header.status, Status::OK);
    let body = ShutdownRequest {
        flags: 6,
        ..ShutdownRequest::default()
    };
    peer.send(&Message::request(
        MessageType::SHUTDOWN,
        IcVersion::new(3, 0),
        IcVersion::new(3, 2),
        4,
        body.to_body(),
    ));
    let answer = peer.receive().unwrap();
    assert_eq!(answer.header.status, Status::FAIL);
    assert_eq!(answer.header.transaction_id, 4);
    let read = |path| std::fs::read_to_string(path).unwrap_or_default();
    let can_hibernate = hvagent::system::power::hibernation_possible(
        &read("/sys/power/state"),
        &read("/proc/swaps"),
    );
    let output = hvhost(&["shutdown", &address, "--hibernate"]);
    let stdout = text(&output.stdout);
    if can_hibernate {
        assert!(stdout.contains("answer=HV_S_OK"), "{stdout}");
    } else {
        assert_eq!(output.status.code(), Some(1), "{stdout}");
        assert!(stdout.contains("answer=HV_E_FAIL"), "{stdout}");
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            marker_lines(&marker).is_empty(),
            "{:?}",
            marker_lines(&marker)
        );
    }
}

/// An agent whose heartbeat listens at DIR/hb.sock with health = "command" running `argv`.
fn health_agent(dir: &Path, argv: &[&str], timeout: &str) -> (Running, String) {
    let socket = dir.join("hb.sock");
    let argv: Vec<String> = argv.iter().map(|arg| format!("{arg:?}")).collect();
    let config = write_config(
        dir,
        "agent.toml",
        &format!(
            "[heartbeat]\nlisten = \"unix:{}\"\nhealth = \"command\"\nhealth_command = [{}]\n\
             health_interval = 1\nhealth_timeout = {timeout}\n",
            socket.display(),
            argv.join(", ")
        ),
    );
    let agent = start_agent_logging(&config, dir);
    wait_for_listener(&socket);
    (agent, format!("unix:{}", socket.display()))
}

/// (round trip in µs, state) of every `heartbeat seq=` line.
fn heartbeat_lines(stdout: &str) -> Vec<(f64, String)> {
    stdout
        .lines()
        .filter(|line| line.starts_with("heartbeat seq="))
        .map(|line| {
            let field = |key: &str| {
                line.split_whitespace()
                    .find_map(|word| word.strip_prefix(key))
                    .unwrap()
                    .to_string()
            };
            (field("rtt_us=").parse().unwrap(), field("state="))
        })
        .collect()
}

#[test]
fn health_command_exit_0_reports_healthy_after_the_first_check() {
    let dir = tempfile::tempdir().unwrap();
    let (_agent, address) = health_agent(dir.path(), &["/bin/sh", "-c", "exit 0"], "5");
    let output = hvhost(&["heartbeat", &address, "--count", "6", "--interval", "0.2"]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    let lines = heartbeat_lines(&stdout);
    assert_eq!(lines.len(), 6, "{stdout}");
    assert_eq!(
        lines[0].1, "unknown",
        "the first reply cannot wait for a check: {stdout}"
    );
    assert_eq!(lines[5].1, "healthy", "{stdout}");
    let log = agent_log(dir.path());
    assert!(
        log.contains("application state unknown -> healthy"),
        "the change is logged at info: {log}"
    );
}

#[test]
fn health_command_failure_reports_critical() {
    let dir = tempfile::tempdir().unwrap();
    let (_agent, address) = health_agent(dir.path(), &["/bin/sh", "-c", "exit 3"], "5");
    let output = hvhost(&["heartbeat", &address, "--count", "6", "--interval", "0.2"]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert_eq!(heartbeat_lines(&stdout)[5].1, "critical", "{stdout}");
}

#[test]
fn a_hanging_health_check_never_delays_a_heartbeat_and_ends_critical() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, address) = health_agent(dir.path(), &["/bin/sleep", "30"], "0.5");
    // Six heartbeats span 1 s: the check is killed at 0.5 s, and the next is due only 1 s after that.
    let output = hvhost(&["heartbeat", &address, "--count", "6", "--interval", "0.2"]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    let lines = heartbeat_lines(&stdout);
    assert_eq!(lines.len(), 6, "{stdout}");
    for (rtt_us, _) in &lines {
        assert!(
            *rtt_us < 100_000.0,
            "a heartbeat waited for the check: {stdout}"
        );
    }
    assert_eq!(
        lines[1].1, "unknown",
        "the check is still running: {stdout}"
    );
    assert_eq!(lines[5].1, "critical", "killed after 0.5 s: {stdout}");
    // The killed check left no child behind.
    let children = std::fs::read_to_string(format!(
        "/proc/{pid}/task/{pid}/children",
        pid = agent.pid()
    ))
    .unwrap();
    assert!(children.trim().is_empty(), "children left: {children}");
}

#[test]
fn hvhost_serve_prints_the_state_of_each_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hb.sock");
    let config = write_config(
        dir.path(),
        "agent.toml",
        &format!(
            "[heartbeat]\nconnect = \"unix:{}\"\nhealth = \"command\"\nhealth_command = \"/bin/true\"\n",
            socket.display()
        ),
    );
    let _agent = start_agent(&config, None);
    let output = hvhost(&[
        "serve",
        &format!("unix:{}", socket.display()),
        "--interval",
        "0.2",
        "--count",
        "4",
    ]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    let states: Vec<String> = heartbeat_lines(&stdout)
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_eq!(
        states.first().map(String::as_str),
        Some("unknown"),
        "{stdout}"
    );
    assert_eq!(
        states.last().map(String::as_str),
        Some("healthy"),
        "{stdout}"
    );
}

/// An agent whose guest-info service listens at DIR/kvp.sock with its pool files in DIR/pools.
fn kvp_agent(dir: &Path) -> (Running, String) {
    let socket = dir.join("kvp.sock");
    let _ = std::fs::remove_file(&socket);
    let config = write_config(
        dir,
        "agent.toml",
        &format!(
            "[heartbeat]\nenabled = false\n[guestinfo]\nlisten = \"unix:{}\"\nstate_dir = \"{}\"\n\
             pool_dir = \"{}\"\n",
            socket.display(),
            dir.join("state").display(),
            dir.join("pools").display()
        ),
    );
    let agent = start_agent_logging(&config, dir);
    wait_for_listener(&socket);
    (agent, format!("unix:{}", socket.display()))
}

/// hvhost kvp ADDR ARGS...: (exit code, stdout).
fn kvp(address: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["kvp", address];
    all.extend_from_slice(args);
    let output = hvhost(&all);
    (
        output.status.code(),
        text(&output.stdout) + &text(&output.stderr),
    )
}

#[test]
fn kvp_enumerate_answers_the_intrinsic_values() {
    let dir = tempfile::tempdir().unwrap();
    let (_agent, address) = kvp_agent(dir.path());
    let (code, stdout) = kvp(&address, &["enumerate"]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("negotiated framework=3.0 message=5.0"),
        "{stdout}"
    );
    for (index, key) in hvproto::service::guestinfo::INTRINSIC_KEYS
        .iter()
        .enumerate()
    {
        assert!(
            stdout.contains(&format!("kvp pool=auto index={index} key={key} value=")),
            "{key}: {stdout}"
        );
    }
    assert!(
        stdout.contains(&format!(
            "key=IntegrationServicesVersion value=\"{}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "key=ProcessorArchitecture value=\"{}\"",
            std::env::consts::ARCH
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("done items=10 pool=auto last=HV_S_CONT"),
        "{stdout}"
    );
}

#[test]
fn kvp_set_get_delete_and_values_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, address) = kvp_agent(dir.path());
    let (code, out) = kvp(&address, &["set", "Role", "web server ✓"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("kvp set pool=external key=Role value=\"web server ✓\" answer=HV_S_OK"),
        "{out}"
    );
    let (code, out) = kvp(&address, &["set", "Owner", "ops", "--pool", "guest"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = kvp(&address, &["set", "Temp", "x"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = kvp(&address, &["delete", "Temp"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("kvp delete pool=external key=Temp answer=HV_S_OK"),
        "{out}"
    );
    let (code, out) = kvp(&address, &["delete", "Temp"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("answer=HV_S_CONT"), "{out}");
    // A SIGKILL gives the agent no chance to write anything more: what was answered is on disk.
    drop(agent);
    let (_agent, address) = kvp_agent(dir.path());
    let (code, out) = kvp(&address, &["get", "Role"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(
            "kvp get pool=external key=Role answer=HV_S_OK (0x00000000) value=\"web server ✓\""
        ),
        "{out}"
    );
    let (code, out) = kvp(&address, &["get", "Owner", "--pool", "guest"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("value=\"ops\""), "{out}");
    let (code, out) = kvp(&address, &["get", "Owner"]);
    assert_eq!(code, Some(1), "the pools are separate: {out}");
    let (code, out) = kvp(&address, &["get", "Temp"]);
    assert_eq!(code, Some(1), "{out}");
    let (code, out) = kvp(&address, &["enumerate", "--pool", "external"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("kvp pool=external index=0 key=Role"), "{out}");
    assert!(out.contains("done items=1 pool=external"), "{out}");
}

#[test]
fn kvp_refuses_writes_to_the_auto_pool_and_bad_usage() {
    let dir = tempfile::tempdir().unwrap();
    let (_agent, address) = kvp_agent(dir.path());
    let (code, out) = kvp(&address, &["set", "OSName", "Windows", "--pool", "auto"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("answer=HV_E_FAIL"), "{out}");
    let (code, out) = kvp(&address, &["get", "OSName", "--pool", "auto"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(kvp(&address, &["frobnicate"]).0, Some(2));
    assert_eq!(kvp(&address, &["get", "k", "--pool", "nowhere"]).0, Some(2));
}

#[test]
fn hvhost_shutdown_usage_errors_exit_2() {
    let run = |args: &[&str]| hvhost(args).status.code();
    assert_eq!(
        run(&["shutdown", "unix:/nonexistent", "--reboot", "--hibernate"]),
        Some(2)
    );
    assert_eq!(
        run(&["shutdown", "unix:/nonexistent", "--reason", "soon"]),
        Some(2)
    );
    assert_eq!(run(&["shutdown", "unix:/nonexistent", "extra"]), Some(2));
    // Nothing listens there: a runtime failure, not a usage error.
    assert_eq!(run(&["shutdown", "unix:/nonexistent/sd.sock"]), Some(1));
}
