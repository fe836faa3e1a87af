//! End-to-end over Unix sockets: who may speak to a listening agent, and inputs that must not stall it
//! (descriptor exhaustion, floods of refusals) or a config file others could write.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod common;
use common::*;
use hvproto::wire::Status;

/// An agent whose heartbeat service listens on `dir/hb.sock`, logging to `dir/agent.log`.
fn listening_agent(dir: &Path, service_extra: &str) -> (Running, std::path::PathBuf) {
    let socket = dir.join("hb.sock");
    let text = format!(
        "[heartbeat]\nlisten = \"unix:{}\"\n{service_extra}\n",
        socket.display()
    );
    let config = write_config(dir, "agent.toml", &text);
    let agent = start_agent_logging(&config, dir);
    wait_for_path(&socket);
    (agent, socket)
}

#[test]
fn a_unix_listener_is_0600_and_refuses_uids_it_does_not_allow() {
    let dir = tempfile::tempdir().unwrap();
    let (_agent, socket) = listening_agent(dir.path(), "");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    let address = format!("unix:{}", socket.display());
    let own = hvhost(&["heartbeat", &address]);
    assert!(own.status.success(), "{}", text(&own.stderr));
    // Another user reaches the socket only if someone widened its mode; the agent still refuses it.
    // As an ordinary user the test cannot become another one: the mode alone then keeps others out.
    if hvtransport::peer::own_uid() != 0 {
        return;
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let other = no_vsock(&mut Command::new(host_bin()))
        .args(["heartbeat", &address])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!other.status.success(), "uid 65534 was served");
    wait_until(
        Duration::from_secs(5),
        || agent_log(dir.path()).contains("refused unix peer (uid 65534"),
        || format!("no refusal logged:\n{}", agent_log(dir.path())),
    );
    let log = agent_log(dir.path());
    assert!(log.contains("allowed_uids"), "{log}");
}

/// CPU time (user + system) of a process so far, in clock ticks, from /proc/PID/stat.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The EMFILE run: an agent started with few free descriptors (a low RLIMIT_NOFILE, most of it taken by
/// descriptors it inherited) is flooded with connections. It must neither spin on the readable listener nor
/// die, and must serve again once descriptors are free.
#[test]
fn out_of_descriptors_the_agent_pauses_accepting_without_spinning_and_recovers() {
    const LIMIT: u64 = 64;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hb.sock");
    let config = write_config(
        dir.path(),
        "agent.toml",
        &format!(
            "[heartbeat]\nlisten = \"unix:{}\"\nmax_connections = 16\n",
            socket.display()
        ),
    );
    let filler = std::fs::File::open("/dev/null").unwrap();
    let filler_fd = std::os::fd::AsRawFd::as_raw_fd(&filler);
    let mut command = Command::new(AGENT);
    no_vsock(&mut command)
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join(AGENT_LOG)).unwrap());
    // SAFETY: runs in the forked child before exec; setrlimit and dup2 are async-signal-safe and touch only
    // a stack value.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: LIMIT,
                rlim_max: LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Inherited descriptors (no close-on-exec) take 24..64: the agent keeps a dozen or so for itself.
            for fd in 24..LIMIT as i32 {
                if libc::dup2(filler_fd, fd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut agent = Running(command.spawn().unwrap());
    wait_for_path(&socket);
    let peers: Vec<std::os::unix::net::UnixStream> = (0..48)
        .map(|_| std::os::unix::net::UnixStream::connect(&socket).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_ticks(agent.pid());
    std::thread::sleep(Duration::from_secs(3));
    let spent = cpu_ticks(agent.pid()) - before;
    let log = agent_log(dir.path());
    let pauses = log.matches("cannot accept").count();
    println!(
        "EMFILE run: limit {LIMIT}, {} descriptors open, 48 peers; CPU over 3 s: {spent} ticks; \
         'cannot accept' lines: {pauses}; log lines: {}",
        agent.fd_count(),
        log.lines().count()
    );
    assert!(
        agent.0.try_wait().unwrap().is_none(),
        "the agent died:\n{log}"
    );
    assert!(
        log.contains("Too many open files"),
        "no EMFILE seen:\n{log}"
    );
    assert_eq!(pauses, 1, "the pause is logged once:\n{log}");
    // 3 s of a busy loop are about 300 ticks; a paused listener costs a few wake-ups a second.
    assert!(
        spent <= 30,
        "the agent spent {spent} ticks of CPU in 3 s: it spins"
    );
    drop(peers);
    // The closed peers free their descriptors: a new peer is served (within the Peer's 10 s read time-out).
    let mut peer = Peer::connect(&socket);
    peer.negotiate_heartbeat();
    peer.heartbeat(7);
    assert!(agent.0.try_wait().unwrap().is_none());
    drop(filler);
}

#[test]
fn connections_that_cannot_fit_the_hard_file_limit_are_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let config_text = format!(
        "[heartbeat]\nlisten = \"unix:{}\"\nmax_connections = 4096\n",
        dir.path().join("hb.sock").display()
    );
    let config = write_config(dir.path(), "agent.toml", &config_text);
    let mut command = Command::new(AGENT);
    no_vsock(&mut command).arg("--config").arg(&config);
    // SAFETY: runs in the forked child before exec; setrlimit is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 256,
                rlim_max: 1024,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = command.output().unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("max_connections") && stderr.contains("1024"),
        "{stderr}"
    );
}

#[test]
fn a_config_file_others_may_write_is_refused_by_run_and_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "agent.toml", "[heartbeat]\nenabled = false\n");
    let path = config.to_str().unwrap();
    let fine = hvagent(&["check-config", "--config", path]);
    assert!(fine.status.success(), "{}", text(&fine.stderr));
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    for args in [&["check-config", "--config", path][..], &["--config", path]] {
        let output = hvagent(args);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("writable by everyone"), "{stderr}");
        assert!(stderr.contains(&format!("chmod go-w {path}")), "{stderr}");
    }
}

/// Connects to `socket` `count` times as uid 65534 from a child process, closing each connection at once.
/// The connections are made in the child between fork and exec (after its setuid), so no helper binary is
/// needed; it then execs `true`.
fn connect_as_nobody(socket: &Path, count: usize) {
    let path = std::ffi::CString::new(socket.as_os_str().as_encoded_bytes()).unwrap();
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (to, from) in address.sun_path.iter_mut().zip(path.as_bytes()) {
        *to = *from as libc::c_char;
    }
    let mut command = Command::new("true");
    command.uid(65534).gid(65534);
    // SAFETY: runs in the forked child before exec, after its setuid; socket, connect and close are
    // async-signal-safe and touch only the copied address.
    unsafe {
        command.pre_exec(move || {
            for _ in 0..count {
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let length = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
                let done = libc::connect(fd, &address as *const _ as *const libc::sockaddr, length);
                libc::close(fd);
                if done != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let status = command.status().unwrap();
    assert!(
        status.success(),
        "the refused peer's connects failed: {status}"
    );
}

/// The flood run: 10,000 requests refused (heartbeats before negotiation) and, as root, 1,000 peers refused
/// by allowed_uids. The log holds the first of each kind and a count of the rest, not a line each, and the
/// agent still answers normally.
#[test]
fn a_flood_of_refused_requests_and_peers_logs_a_count_not_a_line_each() {
    const REQUESTS: u64 = 10_000;
    const PEERS: usize = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, socket) = listening_agent(dir.path(), "");
    let lines_at_start = agent_log(dir.path()).lines().count();
    let mut peer = Peer::connect(&socket);
    for batch in 0..REQUESTS / 100 {
        let bytes: Vec<u8> = (0..100)
            .flat_map(|seq| encode(&heartbeat_request(batch * 100 + seq, 1)))
            .collect();
        std::io::Write::write_all(&mut peer.stream, &bytes).unwrap();
        for _ in 0..100 {
            let answer = peer.receive().expect("an answer to a refused heartbeat");
            assert_eq!(answer.header.status, Status::FAIL, "{answer:?}");
        }
    }
    let as_root = hvtransport::peer::own_uid() == 0;
    if as_root {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        connect_as_nobody(&socket, PEERS);
    }
    // Still answering: the same link negotiates and is served, and so is a new one.
    peer.negotiate_heartbeat();
    peer.heartbeat(1);
    let mut fresh = Peer::connect(&socket);
    fresh.negotiate_heartbeat();
    fresh.heartbeat(2);
    if as_root {
        wait_until(
            Duration::from_secs(10),
            || agent_log(dir.path()).contains("refused unix peer (uid 65534"),
            || format!("no refused peer logged:\n{}", agent_log(dir.path())),
        );
        // Let the agent accept and refuse every one of them before it is stopped.
        std::thread::sleep(Duration::from_millis(500));
    }
    let running = agent_log(dir.path()).lines().count();
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_for(Duration::from_secs(10)).is_some());
    let log = agent_log(dir.path());
    let refusals = log.matches("heartbeat: refused a ").count();
    let refused_peers = log.matches("heartbeat: refused unix peer").count();
    println!(
        "flood run: {REQUESTS} refused requests and {} refused peers sent; agent log: {} lines at start, {} \
         after the flood, {} at exit; lines naming a refused request: {refusals}, a refused peer: \
         {refused_peers}",
        if as_root { PEERS } else { 0 },
        lines_at_start,
        running,
        log.lines().count()
    );
    assert!(log.lines().count() <= lines_at_start + 20, "{log}");
    assert_eq!(refusals, 1, "{log}");
    assert!(
        log.contains(&format!(
            "heartbeat: {} more requests refused in the last",
            "9,999"
        )),
        "{log}"
    );
    if as_root {
        assert_eq!(refused_peers, 1, "{log}");
        assert!(log.contains("heartbeat: 999 more peers refused"), "{log}");
    }
}

/// check-config with the config at `path` and `PATH` set to `search`.
fn check_config_with_path(path: &str, search: &std::ffi::OsStr) -> std::process::Output {
    no_vsock(&mut Command::new(AGENT))
        .args(["check-config", "--config", path])
        .env("PATH", search)
        .output()
        .unwrap()
}

#[test]
fn commands_are_resolved_once_at_load_and_one_not_found_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for name in ["systemctl", "app-check"] {
        std::fs::write(bin.join(name), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(bin.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let config = write_config(
        dir.path(),
        "agent.toml",
        "[heartbeat]\nhealth = \"command\"\nhealth_command = \"app-check --quick\"\n",
    );
    let path = config.to_str().unwrap();
    let output = check_config_with_path(path, bin.as_os_str());
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let bin_text = bin.display().to_string();
    assert!(
        stdout.contains(&format!(
            "health_command = [\"{bin_text}/app-check\", \"--quick\"]"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "poweroff = [\"{bin_text}/systemctl\", \"poweroff\"]"
        )),
        "{stdout}"
    );
    // Not in PATH: the command the file names is an error naming the key, the program and the PATH; the
    // built-in systemctl is not (the reboot(2) fallback needs none).
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let output = check_config_with_path(path, empty.as_os_str());
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("heartbeat.health_command")
            && stderr.contains("'app-check'")
            && stderr.contains(&empty.display().to_string()),
        "{stderr}"
    );
    let defaults = write_config(dir.path(), "defaults.toml", "[heartbeat]\nenabled = true\n");
    let output = check_config_with_path(defaults.to_str().unwrap(), empty.as_os_str());
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("poweroff = [\"systemctl\", \"poweroff\"]"),
        "{}",
        text(&output.stdout)
    );
}

/// The calls the guard must refuse, each made so that it cannot do harm whatever the guard does: reboot(2)
/// with no valid magic (the kernel answers EINVAL), FIFREEZE and FITHAW on no file descriptor (EBADF). The
/// AF_VSOCK refusal is proven without creating any socket here, by faults_e2e's agent that must fail to dial.
fn harmless_guarded_calls() -> [i32; 3] {
    let errno = |result: libc::c_long| {
        if result < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        } else {
            0
        }
    };
    // SAFETY: raw system calls with arguments that select no action (see above).
    unsafe {
        [
            errno(libc::syscall(libc::SYS_reboot, 0, 0, 0, 0)),
            errno(libc::ioctl(-1, 0xc004_5877, 0).into()),
            errno(libc::ioctl(-1, 0xc004_5878, 0).into()),
        ]
    }
}

/// The seccomp guard every test program runs under refuses what `novsock` refuses: reboot(2) and
/// FIFREEZE/FITHAW with EPERM before the kernel looks at the arguments (unguarded they fail with EINVAL and
/// EBADF).
#[test]
fn the_test_guard_refuses_reboot_freeze_and_thaw() {
    let [reboot, freeze, thaw] = common::errnos_under_guard(harmless_guarded_calls);
    assert_eq!(reboot, libc::EPERM, "reboot(2)");
    assert_eq!(freeze, libc::EPERM, "FIFREEZE");
    assert_eq!(thaw, libc::EPERM, "FITHAW");
}
