//! hvhost.exe, the Windows build, run under wine against a real agent (this Linux build, under the no_vsock
//! guard), printing what the Linux hvhost prints for the same agent. Wine has neither AF_HYPERV nor AF_UNIX,
//! so hvhost.exe uses its test-only `tcp:127.0.0.1:PORT` address and the test relays that loopback port to
//! the agent's Unix socket (and, for `serve`, the agent's Unix socket to hvhost.exe's port). Also
//! `register`/`unregister` against wine's registry, read back with `wine reg query`.
//!
//! Ignored in a plain `cargo test`: they need wine and the Windows build. scripts/windows-test.sh runs
//! them with HVAGENT_WINDOWS_HVHOST naming hvhost.exe and WINEPREFIX its throwaway prefix.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hvproto::service::ServiceKind;

use common::{host_bin, no_vsock, start_agent_logging, wait_for_path, write_config, Running};

/// hvhost.exe, as scripts/windows-test.sh names it.
fn exe() -> PathBuf {
    PathBuf::from(
        std::env::var_os("HVAGENT_WINDOWS_HVHOST")
            .expect("HVAGENT_WINDOWS_HVHOST names hvhost.exe (scripts/windows-test.sh sets it)"),
    )
}

/// hvhost.exe under wine with `args`, bounded by `timeout`, quiet and headless.
fn wine_command(args: &[&str]) -> Command {
    let mut command = Command::new("timeout");
    command
        .arg("120")
        .arg("wine")
        .arg(exe())
        .args(args)
        .env("WINEDEBUG", "-all")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .stdin(Stdio::null());
    no_vsock(&mut command);
    command
}

/// hvhost.exe's output under wine. Every hvhost command prints something, on stdout or stderr; a run with
/// neither is wine losing the program's standard handles (seen once in CI: exit status 1, both streams
/// empty, the same call fine before and after), so such a run is tried again, up to three times in all.
fn wine(args: &[&str]) -> Output {
    let mut output = wine_command(args).output().unwrap();
    for _ in 1..3 {
        if !(output.stdout.is_empty() && output.stderr.is_empty()) {
            break;
        }
        eprintln!(
            "wine: hvhost.exe {args:?} printed nothing (status {:?}); again",
            output.status.code()
        );
        output = wine_command(args).output().unwrap();
    }
    output
}

fn linux_hvhost(args: &[&str]) -> Output {
    no_vsock(&mut Command::new(host_bin()))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace("\r\n", "\n")
}

/// A line with its timings and its address taken out: what both hosts must print alike.
fn comparable(line: &str) -> String {
    let words: Vec<String> = line
        .split(' ')
        .map(|word| match word.split_once('=') {
            Some((key, _)) if key.ends_with("_us") || key.ends_with("_ms") => format!("{key}=T"),
            _ => word.to_string(),
        })
        .collect();
    let line = words.join(" ");
    for prefix in ["connected ", "listening on "] {
        if let Some(rest) = line.strip_prefix(prefix) {
            if rest.starts_with("unix:") || rest.starts_with("tcp:") {
                return format!("{prefix}ADDR");
            }
        }
    }
    line
}

fn comparable_lines(stdout: &str) -> Vec<String> {
    stdout.lines().map(comparable).collect()
}

/// One end of a relayed stream.
trait End: Read + Write + Send + Sized + 'static {
    fn another(&self) -> Self;
    fn close_write(&self);
}

impl End for TcpStream {
    fn another(&self) -> Self {
        self.try_clone().unwrap()
    }
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl End for UnixStream {
    fn another(&self) -> Self {
        self.try_clone().unwrap()
    }
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

/// Copies each way between `a` and `b` until each side ends, passing each end on.
fn splice<A: End, B: End>(a: A, b: B) {
    fn copy<R: End, W: End>(mut from: R, mut to: W) {
        let _ = std::io::copy(&mut from, &mut to);
        to.close_write();
    }
    let (a2, b2) = (a.another(), b.another());
    std::thread::spawn(move || copy(a, b2));
    std::thread::spawn(move || copy(b, a2));
}

/// A loopback TCP port whose connections are relayed to the Unix socket `path`.
fn tcp_to_unix(path: &Path) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            if let Ok(unix) = UnixStream::connect(&path) {
                splice(stream, unix);
            }
        }
    });
    port
}

/// A Unix socket at `path` whose connections are relayed to loopback TCP `port`, waiting up to 60 s for
/// the port to listen (hvhost.exe starts slowly under wine; the agent redials meanwhile).
fn unix_to_tcp(path: &Path, port: u16) {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let deadline = Instant::now() + Duration::from_secs(60);
            let tcp = loop {
                match TcpStream::connect(("127.0.0.1", port)) {
                    Ok(tcp) => break Some(tcp),
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    Err(_) => break None,
                }
            };
            if let Some(tcp) = tcp {
                splice(stream, tcp);
            }
        }
    });
}

/// An agent whose `section` listens at DIR/NAME.sock (with `extra` config lines): (agent, its socket).
fn listening_agent(dir: &Path, section: &str, extra: &str) -> (Running, PathBuf) {
    let socket = dir.join(format!("{section}.sock"));
    let config = write_config(
        dir,
        "agent.toml",
        &format!(
            "[{section}]\nlisten = \"unix:{}\"\n{extra}",
            socket.display()
        ),
    );
    let agent = start_agent_logging(&config, dir);
    wait_for_path(&socket);
    (agent, socket)
}

/// Runs the same request through the Linux hvhost (`unix:` to the agent) and hvhost.exe (through the relay):
/// (Linux output, Windows output), each checked to exit with `code`.
fn both(socket: &Path, command: &str, args: &[&str], code: i32) -> (Output, Output) {
    let unix = format!("unix:{}", socket.display());
    let tcp = format!("tcp:127.0.0.1:{}", tcp_to_unix(socket));
    let linux = linux_hvhost(&[&[command, unix.as_str()], args].concat());
    let windows = wine(&[&[command, tcp.as_str()], args].concat());
    for (who, output) in [("hvhost", &linux), ("hvhost.exe", &windows)] {
        assert_eq!(
            output.status.code(),
            Some(code),
            "{who} {command}: {}{}",
            text(&output.stdout),
            text(&output.stderr)
        );
    }
    (linux, windows)
}

/// The round trips of a `done heartbeats=...` summary line.
fn summary(stdout: &str) -> String {
    stdout
        .lines()
        .find(|line| line.starts_with("done "))
        .unwrap_or("no summary")
        .to_string()
}

#[test]
#[ignore = "needs wine and hvhost.exe: scripts/windows-test.sh runs it"]
fn heartbeats_from_hvhost_exe_print_what_linux_hvhost_prints() {
    let dir = tempfile::tempdir().unwrap();
    let (_agent, socket) = listening_agent(dir.path(), "heartbeat", "health = \"none\"\n");
    let args = ["--count", "50", "--interval", "0"];
    let (linux, windows) = both(&socket, "heartbeat", &args, 0);
    let (linux, windows) = (text(&linux.stdout), text(&windows.stdout));
    assert_eq!(comparable_lines(&windows), comparable_lines(&linux));
    assert_eq!(
        windows
            .lines()
            .filter(|line| line.starts_with("heartbeat seq="))
            .count(),
        50,
        "{windows}"
    );
    println!("linux hvhost:          {}", summary(&linux));
    println!("hvhost.exe under wine: {}", summary(&windows));
}

#[test]
#[ignore = "needs wine and hvhost.exe: scripts/windows-test.sh runs it"]
fn a_kvp_enumeration_by_hvhost_exe_prints_what_linux_hvhost_prints() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (_agent, socket) = listening_agent(
        dir.path(),
        "guestinfo",
        &format!("state_dir = \"{}\"\n", state.display()),
    );
    let (linux, windows) = both(&socket, "kvp", &["enumerate"], 0);
    let (linux, windows) = (text(&linux.stdout), text(&windows.stdout));
    assert_eq!(comparable_lines(&windows), comparable_lines(&linux));
    assert!(windows.contains("key=OSName value="), "{windows}");
    assert!(windows.contains("last=HV_S_CONT"), "{windows}");
    // A pair set by hvhost.exe is read back by the Linux hvhost.
    let (_, windows) = both(&socket, "kvp", &["set", "Role", "web ✓"], 0);
    assert!(text(&windows.stdout).contains("value=\"web ✓\" answer=HV_S_OK"));
    let (linux, _) = both(&socket, "kvp", &["get", "Role"], 0);
    assert!(text(&linux.stdout).contains("answer=HV_S_OK (0x00000000) value=\"web ✓\""));
}

/// An agent whose shutdown service listens at DIR/shutdown.sock and whose poweroff appends a line to
/// DIR/marker: (agent, socket, marker).
fn shutdown_agent(dir: &Path) -> (Running, PathBuf, PathBuf) {
    let marker = dir.join("marker");
    let fake = dir.join("fake-power");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho \"$HVAGENT_SHUTDOWN_ACTION force=$HVAGENT_SHUTDOWN_FORCE $*\" >>{}\n",
            marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (agent, socket) = listening_agent(
        dir,
        "shutdown",
        &format!("poweroff = [\"{}\", \"off\"]\n", fake.display()),
    );
    (agent, socket, marker)
}

#[test]
#[ignore = "needs wine and hvhost.exe: scripts/windows-test.sh runs it"]
fn a_shutdown_asked_by_hvhost_exe_is_answered_and_run_as_linux_hvhosts_is() {
    // One agent for each host: an agent runs one power action and answers later requests without running them.
    let (linux_dir, windows_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_linux_agent, linux_socket, linux_marker) = shutdown_agent(linux_dir.path());
    let (_windows_agent, windows_socket, windows_marker) = shutdown_agent(windows_dir.path());
    let args = ["--force", "--message", "planned maintenance"];
    let linux = linux_hvhost(
        &[
            &["shutdown", &format!("unix:{}", linux_socket.display())][..],
            &args,
        ]
        .concat(),
    );
    let tcp = format!("tcp:127.0.0.1:{}", tcp_to_unix(&windows_socket));
    let windows = wine(&[&["shutdown", tcp.as_str()][..], &args].concat());
    assert!(linux.status.success() && windows.status.success());
    let (linux, windows) = (text(&linux.stdout), text(&windows.stdout));
    assert_eq!(comparable_lines(&windows), comparable_lines(&linux));
    assert!(
        windows.contains("message=\"planned maintenance\" answer=HV_S_OK"),
        "{windows}"
    );
    for marker in [&linux_marker, &windows_marker] {
        common::wait_until(
            Duration::from_secs(10),
            || std::fs::read_to_string(marker).is_ok_and(|runs| runs == "poweroff force=1 off\n"),
            || {
                format!(
                    "the fake poweroff did not run once: {:?}",
                    std::fs::read_to_string(marker)
                )
            },
        );
    }
}

/// `serve` on `address` until `count` heartbeats, with an agent dialling `dial` (a Unix socket).
fn serve_lines(serve: Output) -> Vec<String> {
    assert!(
        serve.status.success(),
        "{}{}",
        text(&serve.stdout),
        text(&serve.stderr)
    );
    comparable_lines(&text(&serve.stdout))
}

#[test]
#[ignore = "needs wine and hvhost.exe: scripts/windows-test.sh runs it"]
fn hvhost_exe_serves_a_dialling_agent_as_linux_hvhost_does() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--count", "5", "--interval", "0.05"];
    let dial = |name: &str| {
        let socket = dir.path().join(format!("{name}.sock"));
        let config = write_config(
            dir.path(),
            &format!("{name}.toml"),
            &format!(
                "redial_max = 0.5\n[heartbeat]\nconnect = \"unix:{}\"\nhealth = \"none\"\n",
                socket.display()
            ),
        );
        (socket, config)
    };
    // Linux: hvhost listens on the agent's Unix socket itself.
    let (socket, config) = dial("linux");
    let unix = format!("unix:{}", socket.display());
    let serving = no_vsock(&mut Command::new(host_bin()))
        .args([&["serve", unix.as_str()][..], &args].concat())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_path(&socket);
    let linux_agent = common::start_agent(&config, None);
    let linux = serving.wait_with_output().unwrap();
    drop(linux_agent);
    // Windows: hvhost.exe listens on loopback TCP; the agent dials a Unix socket relayed to it.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (socket, config) = dial("windows");
    unix_to_tcp(&socket, port);
    let tcp = format!("tcp:127.0.0.1:{port}");
    let serving = wine_command(&[&["serve", tcp.as_str()][..], &args].concat())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _windows_agent = common::start_agent(&config, None);
    let windows = serving.wait_with_output().unwrap();
    let linux = serve_lines(linux);
    let windows = serve_lines(windows);
    assert_eq!(windows, linux);
    assert_eq!(
        windows.first().map(String::as_str),
        Some("listening on ADDR")
    );
    assert!(
        windows.contains(&"connected agent #1".to_string()),
        "{windows:?}"
    );
}

const KEY: &str = r"HKEY_LOCAL_MACHINE\SOFTWARE\Microsoft\Windows NT\CurrentVersion\Virtualization\GuestCommunicationServices";

/// `wine reg query` of one service's ElementName: Some(value) when the key is there.
fn element_name(guid: &str) -> Option<String> {
    let output = Command::new("timeout")
        .args(["60", "wine", "reg", "query"])
        .arg(format!(r"{KEY}\{guid}"))
        .args(["/v", "ElementName"])
        .env("WINEDEBUG", "-all")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if !output.status.success() {
        return None;
    }
    let stdout = text(&output.stdout);
    let line = stdout.lines().find(|line| line.contains("ElementName"))?;
    Some(line.split("REG_SZ").nth(1)?.trim().to_string())
}

#[test]
#[ignore = "needs wine and hvhost.exe: scripts/windows-test.sh runs it"]
fn register_and_unregister_write_wines_registry_as_host_setup_prints_it() {
    let heartbeat = "48560001-facb-11e6-bd58-64006a7986d3";
    let backup = "48560005-facb-11e6-bd58-64006a7986d3";
    let output = wine(&["register", "--all"]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert_eq!(stdout.lines().count(), ServiceKind::ALL.len(), "{stdout}");
    assert!(stdout.contains(&format!(
        "registered {heartbeat} ElementName=\"hvagent heartbeat\""
    )));
    assert_eq!(
        element_name(heartbeat).as_deref(),
        Some("hvagent heartbeat")
    );
    assert_eq!(element_name(backup).as_deref(), Some("hvagent backup"));
    // Again: an update, not an error.
    assert!(wine(&["register", "heartbeat"]).status.success());

    let output = wine(&["unregister", "heartbeat"]);
    assert!(output.status.success());
    assert_eq!(
        text(&output.stdout).trim(),
        format!("unregistered {heartbeat} ElementName=\"hvagent heartbeat\"")
    );
    assert_eq!(element_name(heartbeat), None);
    assert_eq!(element_name(backup).as_deref(), Some("hvagent backup"));
    let output = wine(&["unregister", "heartbeat"]);
    assert!(text(&output.stdout).starts_with("not registered "));
    assert!(wine(&["unregister", "--all"]).status.success());
    assert_eq!(element_name(backup), None);

    let output = wine(&["register", "kvp"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("'kvp' is not a service"));
}

#[test]
#[ignore = "needs wine and hvhost.exe: scripts/windows-test.sh runs it"]
fn hvhost_exe_refuses_linux_addresses_and_says_why_it_cannot_connect() {
    let output = wine(&["heartbeat", "unix:/run/x.sock"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("hv:VMID:SERVICE"));
    // Wine has no AF_HYPERV: the socket call itself fails, and hvhost.exe says so with the address.
    let output = wine(&["heartbeat", "hv:loopback:0x48560001"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("cannot connect to hv:loopback:0x48560001: "),
        "{stderr}"
    );
    println!("hv: under wine: {}", stderr.trim());
    let output = wine(&["heartbeat", "vm:no such vm:0x48560001"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("cannot connect to vm:no such vm:0x48560001: ")
            && stderr.contains("'no such vm'"),
        "{stderr}"
    );
    println!("vm: under wine: {}", stderr.trim());
}
