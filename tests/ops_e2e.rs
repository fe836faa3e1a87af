//! End to end, the operations side: sd_notify to a datagram socket standing in for systemd, the watchdog,
//! and `hvagent status` over the control socket. Unix sockets only.

mod common;
use common::{
    host_bin, hvagent, no_vsock, text, voluntary_switches, wait_for_path, Running, AGENT,
};

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Writes a file; a config (`*.toml`) gets the default-on services it does not mention turned off.
fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    if name.ends_with(".toml") {
        return common::write_config(dir, name, text);
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The agent with `config`, its control socket at `control`, and extra environment.
fn start_agent(config: &Path, control: &Path, env: &[(&str, String)]) -> Running {
    let mut command = Command::new(AGENT);
    no_vsock(&mut command);
    command
        .arg("run")
        .arg("--config")
        .arg(config)
        .arg("--control")
        .arg(control)
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    Running(command.spawn().unwrap())
}

/// A datagram socket standing in for systemd's notify socket.
struct FakeSystemd(UnixDatagram);

impl FakeSystemd {
    fn bind(path: &std::path::Path) -> FakeSystemd {
        let socket = UnixDatagram::bind(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        FakeSystemd(socket)
    }

    fn next(&self) -> String {
        let mut buffer = [0u8; 1024];
        let count = self.0.recv(&mut buffer).expect("a notification within 5 s");
        text(&buffer[..count])
    }

    /// The next notification that is not a watchdog ping or a status update.
    fn next_event(&self) -> String {
        loop {
            let message = self.next();
            if message != "WATCHDOG=1" && !message.starts_with("STATUS=") {
                return message;
            }
        }
    }
}

/// An agent whose heartbeat dials `hb.sock` in `dir`, started by a stand-in for systemd with `env` added to
/// NOTIFY_SOCKET.
fn start_under_systemd(dir: &Path, env: &[(&str, &str)]) -> (FakeSystemd, Running) {
    let systemd = FakeSystemd::bind(&dir.join("notify"));
    let config = write_file(
        dir,
        "a.toml",
        &format!(
            "[heartbeat]\nconnect = \"unix:{}\"\n",
            dir.join("hb.sock").display()
        ),
    );
    let mut vars = vec![("NOTIFY_SOCKET", dir.join("notify").display().to_string())];
    vars.extend(env.iter().map(|(name, value)| (*name, value.to_string())));
    let agent = start_agent(&config, &dir.join("control.sock"), &vars);
    (systemd, agent)
}

#[test]
fn sd_notify_ready_reloading_stopping_around_signals() {
    let dir = tempfile::tempdir().unwrap();
    let (systemd, mut agent) = start_under_systemd(dir.path(), &[]);
    let ready = systemd.next_event();
    assert!(
        ready.starts_with("READY=1\nSTATUS=heartbeat dialling"),
        "{ready}"
    );
    agent.signal(libc::SIGHUP);
    let reloading = systemd.next_event();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert!(systemd
        .next_event()
        .starts_with("READY=1\nSTATUS=heartbeat"));
    agent.signal(libc::SIGTERM);
    assert_eq!(systemd.next_event(), "STOPPING=1");
    assert!(agent.wait_for(Duration::from_secs(2)).unwrap().success());
}

#[test]
fn status_updates_reach_systemd_when_a_service_connects() {
    let dir = tempfile::tempdir().unwrap();
    let (systemd, _agent) = start_under_systemd(dir.path(), &[]);
    assert!(systemd.next().starts_with("READY=1\n"));
    let _listener = UnixListener::bind(dir.path().join("hb.sock")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let message = systemd.next();
        if message == "STATUS=heartbeat connected" {
            break;
        }
        assert!(Instant::now() < deadline, "last: {message}");
    }
}

#[test]
fn watchdog_pings_come_at_half_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let _listener = UnixListener::bind(dir.path().join("hb.sock")).unwrap();
    let (systemd, _agent) = start_under_systemd(dir.path(), &[("WATCHDOG_USEC", "400000")]);
    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < Duration::from_millis(1100) {
        if systemd.next() == "WATCHDOG=1" {
            pings += 1;
        }
    }
    // One at start, then every 200 ms: about 6 in 1.1 s.
    assert!((3..=9).contains(&pings), "{pings} pings in 1.1 s");
}

#[test]
fn a_watchdog_for_another_pid_is_not_pinged_and_the_idle_agent_sleeps() {
    let dir = tempfile::tempdir().unwrap();
    let listener = UnixListener::bind(dir.path().join("hb.sock")).unwrap();
    let (systemd, agent) = start_under_systemd(
        dir.path(),
        &[("WATCHDOG_USEC", "100000"), ("WATCHDOG_PID", "1")],
    );
    let (_connection, _) = listener.accept().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = voluntary_switches(agent.pid());
    std::thread::sleep(Duration::from_secs(1));
    let after = voluntary_switches(agent.pid());
    assert_eq!(
        after,
        before,
        "the idle agent woke up {} times in 1 s",
        after - before
    );
    systemd.0.set_nonblocking(true).unwrap();
    let mut buffer = [0u8; 256];
    while let Ok(count) = systemd.0.recv(&mut buffer) {
        assert_ne!(&buffer[..count], b"WATCHDOG=1");
    }
}

#[test]
fn status_shows_each_service_its_state_versions_and_counters() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hb.sock");
    let control = dir.path().join("control.sock");
    let config = write_file(
        dir.path(),
        "a.toml",
        &format!("[heartbeat]\nlisten = \"unix:{}\"\n", socket.display()),
    );
    let _agent = start_agent(&config, &control, &[]);
    wait_for_path(&control);
    wait_for_path(&socket);
    let mode = std::fs::metadata(&control).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let host = no_vsock(&mut Command::new(host_bin()))
        .args([
            "heartbeat",
            &format!("unix:{}", socket.display()),
            "--count",
            "3",
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(host.status.success(), "{}", text(&host.stderr));
    let control_arg = control.display().to_string();
    let output = hvagent(&["status", "--control", &control_arg]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(stdout.starts_with("hvagent "), "{stdout}");
    assert!(
        stdout.contains(&format!("heartbeat: listen unix:{}", socket.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains("  state              listening with "),
        "{stdout}"
    );
    assert!(stdout.contains("  heartbeats         3\n"), "{stdout}");

    // The same as JSON, with a host connected and negotiated.
    let stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let mut host =
        hvhost::client::Client::new(stream.into(), hvproto::service::ServiceKind::Heartbeat);
    host.negotiate().unwrap();
    let output = hvagent(&["status", "--json", "--control", &control_arg]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let service = &json["services"][0];
    assert_eq!(service["name"], "heartbeat");
    assert_eq!(service["state"]["state"], "listening");
    assert_eq!(service["state"]["peers"], 1);
    assert_eq!(service["links"][0]["framework"], "3.0");
    assert_eq!(service["links"][0]["message"], "3.0");
    assert_eq!(service["details"][0]["label"], "heartbeats");
}

#[test]
fn status_without_an_agent_fails_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control.sock").display().to_string();
    let output = hvagent(&["status", "--control", &control]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("is hvagent running"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn options_a_command_does_not_take_are_usage_errors() {
    let output = hvagent(&["status", "--config", "/x"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("--config does not apply to 'status'"));
}

#[test]
fn host_setup_scripts_in_scripts_are_current() {
    for (format, file) in [
        ("powershell", "hvagent-host-setup.ps1"),
        ("reg", "hvagent-host-setup.reg"),
    ] {
        let output = hvagent(&["host-setup", "--all", "--format", format]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts")
            .join(file);
        let shipped = std::fs::read(&path).unwrap();
        assert!(
            shipped == output.stdout,
            "{} is out of date: run `make host-setup-scripts`",
            path.display()
        );
    }
}

#[test]
fn host_setup_follows_the_config_and_refuses_unknown_formats() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "a.toml",
        "[heartbeat]\nconnect = \"vsock:host:0x48560101\"\n",
    );
    let config = config.display().to_string();
    let output = hvagent(&["host-setup", "--config", &config, "--format", "reg"]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        stdout.contains("GuestCommunicationServices\\48560101-facb-11e6-bd58-64006a7986d3]"),
        "{stdout}"
    );
    assert!(!stdout.contains("48560001-facb"), "{stdout}");
    let output = hvagent(&["host-setup", "--format", "bat"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("powershell or reg"));
}

/// etc/hvagent.toml with every `#key = value` line uncommented.
fn uncommented_default_config() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/hvagent.toml");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest)
                if rest
                    .split_once(" = ")
                    .is_some_and(|(key, _)| !key.contains(' ')) =>
            {
                rest
            }
            _ => line,
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

#[test]
fn the_shipped_config_shows_every_key_with_its_default() {
    use hvagent::config::{parse, Config};
    let path = std::path::Path::new("etc/hvagent.toml");
    let shipped =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
            .unwrap();
    assert_eq!(
        parse(&shipped, path).unwrap(),
        Config::default(),
        "as shipped it changes nothing"
    );
    let uncommented = uncommented_default_config();
    assert_eq!(
        parse(&uncommented, path).unwrap(),
        Config::default(),
        "its commented values are the defaults"
    );
    // Every key of the effective configuration is in the file: a new key must be documented there.
    for line in Config::default().to_string().lines() {
        let line = line.split("  #").next().unwrap().trim_end();
        assert!(
            uncommented.lines().any(|shipped| shipped == line),
            "etc/hvagent.toml lacks `{line}`"
        );
    }
}

#[test]
fn doctor_exits_1_with_fixes_on_a_machine_without_vsock_and_0_when_all_is_well() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("proc/net")).unwrap();
    let host = dir.path().join("host.sock");
    let config = write_file(
        dir.path(),
        "a.toml",
        &format!("[heartbeat]\nconnect = \"unix:{}\"\n", host.display()),
    );
    let (root_arg, config_arg) = (root.display().to_string(), config.display().to_string());
    let output = hvagent(&["doctor", "--root", &root_arg, "--config", &config_arg]);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("PROBLEM  AF_VSOCK: not available"),
        "{stdout}"
    );
    assert!(
        stdout.contains("PROBLEM  heartbeat: the host does not answer"),
        "{stdout}"
    );
    assert!(stdout.contains("         fix: "), "{stdout}");

    std::fs::write(root.join("proc/net/protocols"), "AF_VSOCK  1240\n").unwrap();
    std::fs::create_dir_all(root.join("sys/module/vmw_vsock_virtio_transport")).unwrap();
    let _listener = UnixListener::bind(&host).unwrap();
    let output = hvagent(&["doctor", "--root", &root_arg, "--config", &config_arg]);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("ok       heartbeat: the host answers"),
        "{stdout}"
    );
    assert!(stdout.ends_with("no problem found\n"), "{stdout}");
}
