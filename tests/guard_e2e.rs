//! End-to-end over Unix sockets: who may speak to a listening agent, and inputs that must not stall it
//! (descriptor exhaustion, floods of refusals) or a config file others could write.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod common;
use common::*;

/// An agent whose heartbeat service listens on `dir/hb.sock`, logging to `dir/agent.log`.
fn listening_agent(dir: &Path, service_extra: &str) -> (Running, std::path::PathBuf) {
    let socket = dir.join("hb.sock");
    let text = format!(
        "[heartbeat]\nlisten = \"unix:{}\"\n{service_extra}\n",
        socket.display()
    );
    let config = write_config(dir, "agent.toml", &text);
    let agent = start_agent(&config, Some(&dir.join("agent.log")));
    wait_for_path(&socket);
    (agent, socket)
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
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
    if hvagent::transport::peer::own_uid() != 0 {
        return;
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let other = no_vsock(&mut Command::new(HOST))
        .args(["heartbeat", &address])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!other.status.success(), "uid 65534 was served");
    wait_until(
        Duration::from_secs(5),
        || log_of(dir.path()).contains("refused unix peer (uid 65534"),
        || format!("no refusal logged:\n{}", log_of(dir.path())),
    );
    let log = log_of(dir.path());
    assert!(log.contains("allowed_uids"), "{log}");
}
