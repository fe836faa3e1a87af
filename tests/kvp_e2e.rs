//! End to end: the key-value pools as hv_kvp_daemon's files, through the real hvagent (its guest-info
//! service and its `kvp` command) and hvhost over Unix sockets. Every agent runs under the no_vsock guard.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    agent_log, host_bin, hvagent, no_vsock, start_agent_logging, text, wait_for_path, wait_until,
    write_config, Running, AGENT,
};

/// One record as hv_kvp_daemon writes it, from `struct kvp_record { char key[512]; char value[2048]; }`.
fn c_record(key: &str, value: &str) -> Vec<u8> {
    let mut record = vec![0u8; 512 + 2048];
    record[..key.len()].copy_from_slice(key.as_bytes());
    record[512..512 + value.len()].copy_from_slice(value.as_bytes());
    record
}

struct Guest {
    dir: PathBuf,
    config: PathBuf,
    socket: PathBuf,
}

impl Guest {
    fn new(dir: &Path) -> Guest {
        let socket = dir.join("kvp.sock");
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
        Guest {
            dir: dir.to_path_buf(),
            config,
            socket,
        }
    }

    fn pool_file(&self, pool: u8) -> PathBuf {
        self.dir.join("pools").join(format!(".kvp_pool_{pool}"))
    }

    fn start(&self) -> Running {
        let _ = std::fs::remove_file(&self.socket);
        let agent = start_agent_logging(&self.config, &self.dir);
        self.wait_for_listener();
        agent
    }

    fn wait_for_listener(&self) {
        wait_for_path(&self.socket);
        wait_until(
            Duration::from_secs(10),
            || std::os::unix::net::UnixStream::connect(&self.socket).is_ok(),
            || format!("nothing accepts connections at {}", self.socket.display()),
        );
    }

    fn address(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// `hvhost kvp ADDR ARGS...`: (exit code, stdout and stderr).
    fn host(&self, args: &[&str]) -> (Option<i32>, String) {
        let address = self.address();
        let mut all = vec!["kvp", address.as_str()];
        all.extend_from_slice(args);
        let output = no_vsock(&mut Command::new(host_bin()))
            .args(&all)
            .output()
            .unwrap();
        (
            output.status.code(),
            text(&output.stdout) + &text(&output.stderr),
        )
    }

    /// `hvagent kvp ARGS... --config CONFIG`: (exit code, stdout, stderr).
    fn cli(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let config = self.config.to_str().unwrap();
        let mut all = vec!["kvp"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--config", config]);
        let output = hvagent(&all);
        (
            output.status.code(),
            text(&output.stdout),
            text(&output.stderr),
        )
    }
}

#[test]
fn the_hosts_set_appears_in_hvagent_kvp_get_and_what_hvagent_kvp_set_wrote_in_the_hosts_enumerate()
{
    let dir = tempfile::tempdir().unwrap();
    let guest = Guest::new(dir.path());
    let _agent = guest.start();
    let (code, out) = guest.host(&["set", "VirtualMachineName", "web-01 ✓"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("answer=HV_S_OK"), "{out}");
    // Answered only once durable: the file holds it when the host has its answer.
    let (code, value, err) = guest.cli(&["get", "VirtualMachineName"]);
    assert_eq!((code, value.as_str()), (Some(0), "web-01 ✓\n"), "{err}");
    // The guest publishes; the host's next enumerate of the guest pool lists it.
    for (key, value) in [("ProvisioningState", "done"), ("Role", "web")] {
        let (code, out, err) = guest.cli(&["set", key, value]);
        assert_eq!(code, Some(0), "{out}{err}");
    }
    let (code, out) = guest.host(&["enumerate", "--pool", "guest"]);
    assert_eq!(code, Some(0), "{out}");
    println!(
        "$ hvhost kvp {} enumerate --pool guest\n{out}",
        guest.address()
    );
    assert!(
        out.contains("kvp pool=guest index=0 key=ProvisioningState value=\"done\""),
        "{out}"
    );
    assert!(
        out.contains("kvp pool=guest index=1 key=Role value=\"web\""),
        "{out}"
    );
    assert!(out.contains("done items=2 pool=guest"), "{out}");
    // A delete by the guest is seen too.
    assert_eq!(guest.cli(&["delete", "Role"]).0, Some(0));
    let (_, out) = guest.host(&["get", "Role", "--pool", "guest"]);
    assert!(out.contains("answer=HV_S_CONT"), "{out}");
}

#[test]
fn a_record_another_process_appends_under_the_lock_is_in_the_hosts_next_enumerate() {
    let dir = tempfile::tempdir().unwrap();
    let guest = Guest::new(dir.path());
    let _agent = guest.start();
    assert_eq!(
        guest.host(&["set", "fromhost", "1", "--pool", "guest"]).0,
        Some(0)
    );
    let (_, out) = guest.host(&["enumerate", "--pool", "guest"]);
    assert!(out.contains("done items=1"), "{out}");
    // As cloud-init's KVP reporting does, but with hv_kvp_daemon's fcntl lock: open, lock, append a record.
    let script = "import fcntl, sys\nf = open(sys.argv[1], 'ab')\nfcntl.lockf(f, fcntl.LOCK_EX)\n\
                  key = b'PROVISIONING_REPORT'; value = b'result=success'\n\
                  f.write(key + b'\\0' * (512 - len(key)) + value + b'\\0' * (2048 - len(value)))\n\
                  f.flush()\nfcntl.lockf(f, fcntl.LOCK_UN)\n";
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(guest.pool_file(1))
        .status();
    match status {
        Ok(status) => assert!(status.success()),
        Err(error) => {
            eprintln!("SKIPPED: python3 could not run ({error}); another writer is covered by the unit tests");
            return;
        }
    }
    let (code, out) = guest.host(&["enumerate", "--pool", "guest"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("index=0 key=fromhost value=\"1\""), "{out}");
    assert!(
        out.contains("index=1 key=PROVISIONING_REPORT value=\"result=success\""),
        "{out}"
    );
}

#[test]
fn a_pool_file_in_hv_kvp_daemons_format_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let guest = Guest::new(dir.path());
    std::fs::create_dir_all(dir.path().join("pools")).unwrap();
    let mut fixture = c_record("VirtualMachineId", "4c4c4544-0042");
    fixture.extend(c_record("Größe", "zwölf"));
    std::fs::write(guest.pool_file(0), &fixture).unwrap();
    let _agent = guest.start();
    let (code, out) = guest.host(&["get", "Größe"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("answer=HV_S_OK (0x00000000) value=\"zwölf\""),
        "{out}"
    );
    let (_, out) = guest.host(&["enumerate", "--pool", "external"]);
    assert!(
        out.contains("index=0 key=VirtualMachineId value=\"4c4c4544-0042\""),
        "{out}"
    );
    // The agent's write keeps the format: the host's Set is one more record of 2,560 bytes.
    assert_eq!(guest.host(&["set", "k", "v"]).0, Some(0));
    let bytes = std::fs::read(guest.pool_file(0)).unwrap();
    assert_eq!(bytes.len(), 3 * 2560);
    assert_eq!(&bytes[..2 * 2560], &fixture[..]);
    assert_eq!(&bytes[2 * 2560..2 * 2560 + 2], b"k\0");
    assert_eq!(&bytes[2 * 2560 + 512..2 * 2560 + 514], b"v\0");
}

#[test]
fn a_crash_between_write_and_rename_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let guest = Guest::new(dir.path());
    let agent = guest.start();
    for key in ["first", "second"] {
        let (code, out) = guest.host(&["set", key, "acknowledged"]);
        assert!(code == Some(0) && out.contains("HV_S_OK"), "{out}");
    }
    drop(agent);
    // This agent dies after writing the new pool and before renaming it over the old one.
    let _ = std::fs::remove_file(&guest.socket);
    let log = std::fs::File::create(dir.path().join("crash.log")).unwrap();
    let mut crashing = Running(
        no_vsock(&mut Command::new(AGENT))
            .arg("--config")
            .arg(&guest.config)
            .env("HVAGENT_TEST_FAULT", "kvp-before-rename")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    guest.wait_for_listener();
    let (_, out) = guest.host(&["set", "third", "never acknowledged"]);
    assert!(
        !out.contains("HV_S_OK"),
        "the crashed write was acknowledged: {out}"
    );
    let status = crashing
        .wait_for(Duration::from_secs(10))
        .expect("the agent died");
    assert!(!status.success());
    assert!(
        dir.path().join("pools/.kvp_pool_0.tmp").exists(),
        "it died after writing the new pool"
    );
    // Everything acknowledged is there, for the CLI and for the next agent.
    let (code, out, _) = guest.cli(&["list", "--pool", "external"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        out,
        "pool=external key=\"first\" value=\"acknowledged\"\npool=external key=\"second\" value=\"acknowledged\"\n"
    );
    let _agent = guest.start();
    let (_, out) = guest.host(&["enumerate", "--pool", "external"]);
    assert!(
        out.contains("done items=2"),
        "{out}\n{}",
        agent_log(dir.path())
    );
    assert_eq!(guest.host(&["set", "third", "now"]).0, Some(0));
    assert_eq!(guest.cli(&["get", "third"]).1, "now\n");
}

/// The first interface of this machine with a MAC address and addresses `ip` lists: (name, MAC, the
/// addresses as ADDRESS/PREFIX, sorted).
fn adapter_with_addresses() -> Option<(String, String, Vec<String>)> {
    let output = Command::new("ip")
        .args(["-o", "addr", "show"])
        .output()
        .ok()?;
    let listing = text(&output.stdout);
    let mut names: Vec<&str> = listing
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .collect();
    names.dedup();
    names.into_iter().find_map(|name| {
        let mac = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).ok()?;
        let mac = mac.trim().to_string();
        if mac.is_empty() || mac == "00:00:00:00:00:00" {
            return None;
        }
        let mut addresses: Vec<String> = listing
            .lines()
            .filter(|line| line.split_whitespace().nth(1) == Some(name))
            .filter_map(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                let at = words.iter().position(|w| *w == "inet" || *w == "inet6")?;
                words.get(at + 1).map(|address| address.to_string())
            })
            .collect();
        addresses.sort();
        (!addresses.is_empty()).then(|| (name.to_string(), mac, addresses))
    })
}

#[test]
fn get_ip_info_for_this_guests_adapter_matches_ip_addr_in_both_forms() {
    let dir = tempfile::tempdir().unwrap();
    let guest = Guest::new(dir.path());
    let _agent = guest.start();
    let (code, out) = guest.host(&["ip-info", "00:15:5D:FF:FF:FE"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("answer=HV_GUID_NOTFOUND (0x80041002)"),
        "{out}"
    );
    let Some((name, mac, expected)) = adapter_with_addresses() else {
        eprintln!(
            "SKIPPED (loudly): this machine has no adapter with a MAC address and an address; \
             GET_IP_INFO is compared with ip addr only where one exists (the unit tests use a fake tree)"
        );
        return;
    };
    for (command, form) in [("ip-info", "binary"), ("ip-info-strings", "string")] {
        let (code, out) = guest.host(&[command, &mac.to_uppercase()]);
        assert_eq!(code, Some(0), "{out}\n{}", agent_log(dir.path()));
        assert!(
            out.contains(&format!("form={form} answer=HV_S_OK")),
            "{out}"
        );
        let mut got: Vec<String> = out
            .lines()
            .filter_map(|line| line.strip_prefix("address="))
            .map(|rest| rest.split(' ').next().unwrap_or_default().to_string())
            .collect();
        got.sort();
        assert_eq!(got, expected, "{name} {mac}: {out}");
        println!("$ hvhost kvp ADDR {command} {mac}   ({name})\n{out}");
    }
}

#[test]
fn set_ip_info_runs_the_configured_command_with_the_settings_in_its_environment() {
    use common::{negotiate_request, v, Peer};
    use hvproto::wire::ipinfo::{self, IpInfo, Ipv4Entry, Origin};
    use hvproto::wire::{Message, MessageType, Status};
    let Some((name, mac, _)) = adapter_with_addresses() else {
        eprintln!("SKIPPED (loudly): no adapter with a MAC address to name in SET_IP_INFO");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("set-ip.env");
    let script = dir.path().join("set-ip");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nenv | grep ^HVAGENT_IP_ | sort > {}\n",
            record.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("kvp.sock");
    let config = write_config(
        dir.path(),
        "agent.toml",
        &format!(
            "[heartbeat]\nenabled = false\n[guestinfo]\nlisten = \"unix:{}\"\npool_dir = \"{}\"\n\
             set_ip_command = [\"{}\"]\n",
            socket.display(),
            dir.path().join("pools").display(),
            script.display()
        ),
    );
    let _agent = start_agent_logging(&config, dir.path());
    wait_for_path(&socket);
    wait_until(
        Duration::from_secs(10),
        || std::os::unix::net::UnixStream::connect(&socket).is_ok(),
        || "the agent never listened".to_string(),
    );
    let mut peer = Peer::connect(&socket);
    peer.send(&negotiate_request(&[v(5, 0)]));
    peer.receive().expect("a negotiation answer");
    let mut body = vec![0u8; ipinfo::STRING_FORM_LEN];
    body[0] = 5;
    let info = IpInfo {
        adapter_id: mac.clone(),
        family: 1,
        dhcp_enabled: false,
        ipv4: vec![Ipv4Entry {
            address: [10, 9, 8, 7],
            mask: [255, 255, 255, 0],
            origin: Origin::STATIC,
        }],
        ipv4_gateways: vec![[10, 9, 8, 1]],
        ipv4_dns: vec![[10, 9, 8, 53]],
        ..IpInfo::default()
    };
    ipinfo::emit(&info, &mut body, true).unwrap();
    for (slot, unit) in body[28..284].chunks_exact_mut(2).zip(mac.encode_utf16()) {
        slot.copy_from_slice(&unit.to_le_bytes());
    }
    peer.send(&Message::request(
        MessageType::KVP_EXCHANGE,
        v(3, 0),
        v(5, 0),
        9,
        body,
    ));
    let answer = peer.receive().expect("an answer once the command ended");
    assert_eq!(
        answer.header.status,
        Status::OK,
        "{}",
        agent_log(dir.path())
    );
    assert_eq!(answer.header.transaction_id, 9);
    let env = std::fs::read_to_string(&record).unwrap();
    assert!(
        env.contains(&format!("HVAGENT_IP_INTERFACE={name}\n")),
        "{env}"
    );
    assert!(env.contains("HVAGENT_IP_ADDRESSES=10.9.8.7/24\n"), "{env}");
    assert!(env.contains("HVAGENT_IP_GATEWAYS=10.9.8.1\n"), "{env}");
    assert!(env.contains("HVAGENT_IP_DHCP=0\n"), "{env}");
    assert!(env.contains("HVAGENT_IP_DNS=10.9.8.53\n"), "{env}");
}
