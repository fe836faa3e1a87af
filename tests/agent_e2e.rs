//! End to end over Unix sockets: the real hvagent and hvhost binaries in a temp dir.

mod common;
use common::no_vsock;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    agent_log, host_bin, hvagent, hvhost, start_agent, start_agent_logging, text,
    voluntary_switches, wait_for_path, write_config, Running, AGENT,
};

#[test]
fn agent_dials_hvhost_serve_and_answers_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hb.sock");
    let config = write_config(
        dir.path(),
        "a.toml",
        &format!("[heartbeat]\nconnect = \"unix:{}\"\n", socket.display()),
    );
    let _agent = start_agent(&config, None);
    let output = hvhost(&[
        "serve",
        &format!("unix:{}", socket.display()),
        "--interval",
        "0",
        "--count",
        "500",
        "--quiet",
    ]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(
        stdout.contains("negotiated framework=3.0 message=3.0"),
        "{stdout}"
    );
    assert!(stdout.contains("done heartbeats=500 "), "{stdout}");
}

#[test]
fn hvhost_dials_a_listening_agent() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let config = write_config(
        dir.path(),
        "a.toml",
        &format!("[heartbeat]\nlisten = \"unix:{}\"\n", socket.display()),
    );
    let mut agent = start_agent(&config, None);
    wait_for_path(&socket);
    let address = format!("unix:{}", socket.display());
    let output = hvhost(&["heartbeat", &address, "--count", "3"]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert_eq!(stdout.matches("heartbeat seq=").count(), 3, "{stdout}");
    assert!(stdout.contains("state=unknown"), "{stdout}");
    // The agent removes its socket file when it stops.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.pid()),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    assert!(agent.wait_for(Duration::from_secs(2)).unwrap().success());
    assert!(!socket.exists());
}

#[test]
fn sigterm_stops_a_connected_agent_with_status_0_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hb.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let config = write_config(
        dir.path(),
        "a.toml",
        &format!("[heartbeat]\nconnect = \"unix:{}\"\n", socket.display()),
    );
    let mut agent = start_agent(&config, None);
    let (_connection, _) = listener.accept().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.pid()),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    let status = agent
        .wait_for(Duration::from_secs(1))
        .expect("agent exits within 1 s of SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// Lets the agent settle, then checks it does not wake up for 2 s.
fn assert_never_woken(agent: &Running) {
    std::thread::sleep(Duration::from_millis(300));
    let before = voluntary_switches(agent.pid());
    std::thread::sleep(Duration::from_secs(2));
    let after = voluntary_switches(agent.pid());
    assert_eq!(
        after,
        before,
        "the idle agent woke up {} times in 2 s",
        after - before
    );
}

#[test]
fn a_connected_idle_agent_is_never_woken() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hb.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let config = write_config(
        dir.path(),
        "a.toml",
        &format!("[heartbeat]\nconnect = \"unix:{}\"\n", socket.display()),
    );
    let agent = start_agent(&config, None);
    let (_connection, _) = listener.accept().unwrap();
    assert_never_woken(&agent);
}

#[test]
fn sighup_reopens_a_service_whose_address_changed() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.sock");
    let second = dir.path().join("second.sock");
    let config = write_config(
        dir.path(),
        "a.toml",
        &format!("[heartbeat]\nlisten = \"unix:{}\"\n", first.display()),
    );
    let agent = start_agent(&config, None);
    wait_for_path(&first);
    write_config(
        dir.path(),
        "a.toml",
        &format!("[heartbeat]\nlisten = \"unix:{}\"\n", second.display()),
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.pid()),
        nix::sys::signal::SIGHUP,
    )
    .unwrap();
    wait_for_path(&second);
    let output = hvhost(&["heartbeat", &format!("unix:{}", second.display())]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(!first.exists(), "the old listener's socket is removed");
    // A broken config on reload keeps the running one.
    write_config(dir.path(), "a.toml", "[heartbeat]\nlisten = 5\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.pid()),
        nix::sys::signal::SIGHUP,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let output = hvhost(&["heartbeat", &format!("unix:{}", second.display())]);
    assert!(output.status.success(), "{}", text(&output.stderr));
}

#[test]
fn agent_redials_after_the_host_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hb.sock");
    let config = write_config(
        dir.path(),
        "a.toml",
        &format!("[heartbeat]\nconnect = \"unix:{}\"\n", socket.display()),
    );
    let _agent = start_agent(&config, None);
    let address = format!("unix:{}", socket.display());
    for _ in 0..3 {
        let output = hvhost(&[
            "serve",
            &address,
            "--interval",
            "0",
            "--count",
            "20",
            "--quiet",
        ]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        assert!(text(&output.stdout).contains("done heartbeats=20 "));
    }
}

#[test]
fn bad_config_stops_the_agent_with_status_2_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "bad.toml",
        "log_level = \"info\"\n\n[heartbeat]\nconect = \"unix:/x\"\n",
    );
    let config = config.to_str().unwrap();
    let output = hvagent(&["--config", config]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("bad.toml:4:"), "{stderr}");
    assert!(stderr.contains("conect"), "{stderr}");
    let output = hvagent(&["check-config", "--config", config]);
    assert_eq!(output.status.code(), Some(2));
    let output = hvagent(&["--config", "/nonexistent/hvagent.toml"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("/nonexistent/hvagent.toml"));
}

#[test]
fn check_config_prints_the_effective_config_with_guids() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "a.toml",
        "[heartbeat]\nconnect = \"vsock:host:2761\"\n",
    );
    let output = hvagent(&["check-config", "--config", config.to_str().unwrap()]);
    assert!(output.status.success());
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains(
            "connect = \"vsock:host:0xac9\"  # service GUID 00000ac9-facb-11e6-bd58-64006a7986d3"
        ),
        "{stdout}"
    );
}

#[test]
fn check_config_keys_lists_every_section_and_key_without_reading_a_file() {
    let output = hvagent(&["check-config", "--keys"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    for line in [
        "In [heartbeat]:",
        "  idle_timeout     a number of seconds from 0.001 to 86400; default 30",
        "  force_after      0 (never force) or a number of seconds up to 86400; default 300",
    ] {
        assert!(stdout.contains(line), "{line:?} missing:\n{stdout}");
    }
    let output = hvagent(&["check-config", "--keys", "--config", "/nonexistent"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("--keys and --config exclude each other"));
}

#[test]
fn guid_and_port_commands_print_the_known_vectors() {
    let output = hvagent(&["guid", "2761"]);
    assert_eq!(
        text(&output.stdout),
        "00000ac9-facb-11e6-bd58-64006a7986d3\n"
    );
    let output = hvagent(&["guid", "0x48560001"]);
    assert_eq!(
        text(&output.stdout),
        "48560001-facb-11e6-bd58-64006a7986d3\n"
    );
    let output = hvagent(&["port", "{48560001-FACB-11E6-BD58-64006A7986D3}"]);
    assert_eq!(text(&output.stdout), "1213595649\n");
    let output = hvagent(&["port", "999E53D4-3D5C-4C3E-8779-BED06EC056E1"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("cannot be reached over hv_sock"),
        "{stderr}"
    );
    assert!(
        stderr.contains("<port>-facb-11e6-bd58-64006a7986d3"),
        "{stderr}"
    );
    assert_eq!(hvagent(&["guid", "banana"]).status.code(), Some(2));
    assert_eq!(hvagent(&["frobnicate"]).status.code(), Some(2));
}

#[test]
fn journal_stream_gives_priority_prefixes_without_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "a.toml",
        &format!(
            "[heartbeat]\nconnect = \"unix:{}\"\n",
            dir.path().join("absent.sock").display()
        ),
    );
    let mut child = no_vsock(&mut Command::new(AGENT))
        .arg("--config")
        .arg(&config)
        .env("JOURNAL_STREAM", "8:12345")
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let second = lines.next().unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(first.starts_with("<6>hvagent "), "{first}");
    assert!(
        second.starts_with("<4>heartbeat: cannot connect to unix:"),
        "{second}"
    );
    assert!(
        second.contains("is hvhost (or another host peer) listening"),
        "{second}"
    );
}

/// Reads datagrams from a stand-in chronyd until `count` arrived or 20 s passed.
fn chrony_datagrams(chronyd: &std::os::unix::net::UnixDatagram, count: usize) -> Vec<Vec<u8>> {
    chronyd
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut datagrams = Vec::new();
    let mut buffer = [0u8; 128];
    while datagrams.len() < count {
        match chronyd.recv(&mut buffer) {
            Ok(len) => datagrams.push(buffer[..len].to_vec()),
            Err(error) => panic!("{} datagrams, then: {error}", datagrams.len()),
        }
    }
    datagrams
}

/// hvhost serving time on `socket` with `args` (after `--service timesync`), its output to `out`; returns
/// once it listens.
fn timesync_host(socket: &Path, args: &[&str], out: Stdio) -> Running {
    let host = Running(
        no_vsock(&mut Command::new(host_bin()))
            .args(["serve", &format!("unix:{}", socket.display())])
            .args(["--service", "timesync"])
            .args(args)
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_path(socket);
    host
}

/// An agent serving time sync alone on `socket`, in chrony mode with its refclock at `chrony`, probing
/// every 0.1 s.
fn chrony_agent(dir: &Path, socket: &Path, chrony: &Path) -> Running {
    let config = write_config(
        dir,
        "a.toml",
        &format!(
            "[heartbeat]\nenabled = false\n[timesync]\nconnect = \"unix:{}\"\nmode = \"chrony\"\n\
             probe_interval = 0.1\nchrony_socket = \"{}\"\n",
            socket.display(),
            chrony.display()
        ),
    );
    start_agent(&config, None)
}

#[test]
fn chrony_mode_sends_the_host_offset_to_a_sock_refclock() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ts.sock");
    let chrony_path = dir.path().join("chrony.sock");
    let chronyd = std::os::unix::net::UnixDatagram::bind(&chrony_path).unwrap();
    let host_out = std::fs::File::create(dir.path().join("host.out")).unwrap();
    let args = ["--clock-offset", "2.5", "--sample-interval", "0.5"];
    let _host = timesync_host(&socket, &args, Stdio::from(host_out));
    let _agent = chrony_agent(dir.path(), &socket, &chrony_path);
    let datagrams = chrony_datagrams(&chronyd, 5);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut worst: f64 = 0.0;
    for datagram in &datagrams {
        assert_eq!(datagram.len(), 40, "{datagram:?}");
        let i64_at = |at: usize| i64::from_ne_bytes(datagram[at..at + 8].try_into().unwrap());
        let i32_at = |at: usize| i32::from_ne_bytes(datagram[at..at + 4].try_into().unwrap());
        let offset = f64::from_ne_bytes(datagram[16..24].try_into().unwrap());
        let measured_at = i64_at(0) as f64 + i64_at(8) as f64 / 1e6;
        assert!((0..1_000_000).contains(&i64_at(8)), "tv_usec {}", i64_at(8));
        assert!(
            (now - measured_at).abs() < 30.0,
            "tv {measured_at} vs now {now}"
        );
        assert_eq!(
            (i32_at(24), i32_at(28), i32_at(32)),
            (0, 0, 0),
            "pulse, leap, pad"
        );
        assert_eq!(i32_at(36), 0x534f434b, "magic");
        worst = worst.max((offset - 2.5).abs());
    }
    println!(
        "chrony e2e: {} datagrams, worst |offset - 2.5 s| = {:.1} us",
        datagrams.len(),
        worst * 1e6
    );
    assert!(worst < 5e-3, "an offset was {worst} s away from +2.5 s");
    let host = std::fs::read_to_string(dir.path().join("host.out")).unwrap();
    assert!(
        host.contains("negotiated framework=3.0 message=4.1"),
        "{host}"
    );
    assert!(host.contains("sample n=0 flags=SYNC"), "{host}");
    assert!(host.contains("probe id=1 "), "{host}");
}

#[test]
fn chrony_mode_tolerates_chronyd_starting_late() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ts.sock");
    let chrony_path = dir.path().join("chrony.sock");
    let _host = timesync_host(&socket, &["--clock-offset", "-1", "--quiet"], Stdio::null());
    let mut agent = chrony_agent(dir.path(), &socket, &chrony_path);
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        agent.0.try_wait().unwrap().is_none(),
        "the agent died without chronyd"
    );
    let chronyd = std::os::unix::net::UnixDatagram::bind(&chrony_path).unwrap();
    for datagram in chrony_datagrams(&chronyd, 2) {
        let offset = f64::from_ne_bytes(datagram[16..24].try_into().unwrap());
        assert!((offset + 1.0).abs() < 5e-3, "{offset}");
    }
}

/// Voluntary context switches in 2 s of an agent whose time-sync service negotiated 4.1 with an hvhost that
/// sends no samples after its SYNC, with `probe_interval` seconds between probes.
fn timesync_wake_ups(probe_interval: &str) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ts.sock");
    let _host = timesync_host(
        &socket,
        &["--sample-interval", "1000", "--quiet"],
        Stdio::null(),
    );
    let config = write_config(
        dir.path(),
        "a.toml",
        &format!(
            "[heartbeat]\nenabled = false\n[timesync]\nconnect = \"unix:{}\"\nmode = \"monitor\"\n\
             probe_interval = {probe_interval}\n",
            socket.display()
        ),
    );
    let agent = start_agent(&config, None);
    std::thread::sleep(Duration::from_millis(500));
    let before = voluntary_switches(agent.pid());
    std::thread::sleep(Duration::from_secs(2));
    voluntary_switches(agent.pid()) - before
}

#[test]
fn timesync_costs_no_wake_ups_with_probes_off_and_one_round_per_probe_with_them_on() {
    assert_eq!(timesync_wake_ups("0"), 0, "probes off");
    // A probe wakes the agent twice: its timer, then the answer.
    let woken = timesync_wake_ups("0.5");
    println!("timesync wake-ups in 2 s: {woken} with a probe every 0.5 s");
    assert!(
        (6..=12).contains(&woken),
        "{woken} wake-ups in 2 s with a probe every 0.5 s"
    );
}

#[test]
fn sighup_reopens_only_the_service_whose_own_settings_changed() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let heartbeat = dir.path().join("hb.sock");
    let timesync = dir.path().join("ts.sock");
    let host = std::os::unix::net::UnixListener::bind(&timesync).unwrap();
    let text_with = |probe_interval: &str| {
        format!(
            "[heartbeat]\nlisten = \"unix:{}\"\n[timesync]\nconnect = \"unix:{}\"\nmode = \"monitor\"\n\
             probe_interval = {probe_interval}\n",
            heartbeat.display(),
            timesync.display()
        )
    };
    let config = write_config(dir.path(), "a.toml", &text_with("0"));
    let agent = start_agent_logging(&config, dir.path());
    wait_for_path(&heartbeat);
    let mut peer = common::Peer::connect(&heartbeat);
    peer.negotiate_heartbeat();
    peer.heartbeat(1);
    let (mut first, _) = host.accept().unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Only a time-sync setting changes: that service is reopened, the heartbeat link is kept.
    write_config(dir.path(), "a.toml", &text_with("5"));
    agent.signal(libc::SIGHUP);
    let mut buffer = [0u8; 64];
    assert_eq!(
        first.read(&mut buffer).unwrap(),
        0,
        "the old time-sync link is closed"
    );
    let (_second, _) = host.accept().unwrap();
    peer.heartbeat(2);
    let log = agent_log(dir.path());
    assert!(
        log.contains("timesync: settings changed, reopening"),
        "{log}"
    );
    assert!(!log.contains("heartbeat: settings changed"), "{log}");
}
