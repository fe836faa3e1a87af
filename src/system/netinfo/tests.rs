use super::*;

/// A fake root: eth9 (index 7) holds 192.0.2.2/24 and 198.51.100.7/25, fd00::2/64 (static) and a link-local
/// address from autoconfiguration, with default routes both ways; lo and a second interface are around.
fn tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let file = |path: &str, text: &str| {
        let path = dir.path().join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    };
    file("sys/class/net/eth9/address", "00:15:5d:00:01:02\n");
    file("sys/class/net/eth9/ifindex", "7\n");
    file(
        "sys/class/net/eth9/device/device_id",
        "{f8615163-df3e-46c5-913f-f2d2f965ed0e}\n",
    );
    file("sys/class/net/lo/address", "00:00:00:00:00:00\n");
    file("sys/class/net/lo/ifindex", "1\n");
    file("sys/class/net/eth1/address", "00:15:5d:00:09:09\n");
    file("sys/class/net/eth1/ifindex", "8\n");
    file(
        "proc/self/net/route",
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
         eth9\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
         eth9\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
         eth9\t006433C6\t00000000\t0001\t0\t0\t0\t80FFFFFF\t0\t0\t0\n\
         eth1\t000010AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n",
    );
    file(
        "proc/self/net/fib_trie",
        "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 192.0.2.2\n        /32 host LOCAL\n     |-- 198.51.100.7\n        \
         /32 host LOCAL\n     |-- 172.16.0.9\n        /32 host LOCAL\n     |-- 127.0.0.1\n        /32 host LOCAL\n",
    );
    file(
        "proc/self/net/if_inet6",
        "fd000000000000000000000000000002 07 40 00 80     eth9\n\
         fe800000000000000215 5dfffe000102 07 40 20 00     eth9\n\
         00000000000000000000000000000001 01 80 10 80       lo\n",
    );
    file(
        "proc/self/net/ipv6_route",
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 \
         00000400 00000002 00000000 00000003     eth9\n\
         00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 \
         ffffffff 00000001 00000000 00200200       lo\n",
    );
    file(
        "etc/resolv.conf",
        "# stub\nnameserver 127.0.0.53\noptions edns0\n",
    );
    file(
        "run/systemd/resolve/resolv.conf",
        "nameserver 192.0.2.53\nnameserver 2001:db8::53\n",
    );
    file("run/systemd/netif/leases/7", "ADDRESS=192.0.2.2\n");
    // The if_inet6 line above has a space inside its address on purpose: it is malformed and skipped.
    dir
}

#[test]
fn an_adapters_settings_come_from_sysfs_and_procfs_as_documented() {
    let dir = tree();
    let network = LiveNetwork::new(dir.path(), Vec::new());
    for id in ["00:15:5D:00:01:02", "00-15-5d-00-01-02", "00155D000102"] {
        assert_eq!(network.find(id, false).unwrap().name, "eth9", "{id}");
    }
    assert_eq!(
        network.find("00:00:00:00:00:00", false),
        None,
        "loopback has no MAC to match"
    );
    assert_eq!(
        network.find("f8615163-df3e-46c5-913f-f2d2f965ed0e", false),
        None
    );
    assert_eq!(
        network
            .find("F8615163-DF3E-46C5-913F-F2D2F965ED0E", true)
            .unwrap()
            .name,
        "eth9"
    );
    let info = network.adapter("00:15:5D:00:01:02").unwrap();
    assert_eq!(info.family, FAMILY_IPV4 | FAMILY_IPV6);
    assert!(info.dhcp_enabled, "networkd keeps a lease for index 7");
    let v4: Vec<(String, String)> = info
        .ipv4
        .iter()
        .map(|entry| (format_ipv4(entry.address), format_ipv4(entry.mask)))
        .collect();
    assert_eq!(
        v4,
        [
            ("192.0.2.2".into(), "255.255.255.0".into()),
            ("198.51.100.7".into(), "255.255.255.128".into())
        ]
    );
    assert!(info.ipv4.iter().all(|entry| entry.origin == Origin::OTHER));
    assert_eq!(info.ipv6.len(), 1, "{:?}", info.ipv6);
    assert_eq!(
        (format_ipv6(info.ipv6[0].address), info.ipv6[0].prefix),
        ("fd00::2".into(), 64)
    );
    assert_eq!(info.ipv6[0].origin, Origin::STATIC);
    assert_eq!(info.ipv4_gateways, [[192, 0, 2, 1]]);
    assert_eq!(
        info.ipv6_gateways
            .iter()
            .map(|a| format_ipv6(*a))
            .collect::<Vec<_>>(),
        ["fe80::1"]
    );
    assert_eq!(
        info.ipv4_dns,
        [[192, 0, 2, 53]],
        "the stub's upstream servers"
    );
    assert_eq!(info.ipv6_dns.len(), 1);
    let other = network.adapter("00:15:5d:00:09:09").unwrap();
    assert_eq!(other.ipv4.len(), 1);
    assert!(!other.dhcp_enabled && other.ipv4_gateways.is_empty() && other.ipv6.is_empty());
    assert_eq!(other.family, FAMILY_IPV4);
    assert!(network.adapter("00:15:5d:ff:ff:ff").is_none());
}

#[test]
fn set_ip_info_runs_the_command_with_the_settings_in_its_environment_and_without_a_shell() {
    let dir = tree();
    let out = dir.path().join("env.out");
    let script = dir.path().join("set-ip");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nenv | grep ^HVAGENT_IP_ | sort > {}\nexit 0\n",
            out.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let mut network = LiveNetwork::new(
        dir.path(),
        vec![script.display().to_string(), "$(reboot)".into()],
    );
    let info = IpInfo {
        adapter_id: "{f8615163-df3e-46c5-913f-f2d2f965ed0e}".into(),
        family: 3,
        dhcp_enabled: false,
        ipv4: vec![Ipv4Entry {
            address: [10, 1, 2, 3],
            mask: [255, 255, 0, 0],
            origin: Origin::STATIC,
        }],
        ipv6: vec![Ipv6Entry {
            address: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
            prefix: 48,
            origin: Origin::STATIC,
        }],
        ipv4_gateways: vec![[10, 1, 0, 1]],
        ipv6_gateways: vec![],
        ipv4_dns: vec![[10, 1, 0, 53], [10, 1, 0, 54]],
        ipv6_dns: vec![],
    };
    network.start_set(&info).unwrap();
    let started = Instant::now();
    let outcome = loop {
        if let Some(outcome) = network.poll_set(Instant::now()) {
            break outcome;
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(outcome, Ok(()));
    assert_eq!(
        fs::read_to_string(&out).unwrap(),
        "HVAGENT_IP_ADAPTER_ID={f8615163-df3e-46c5-913f-f2d2f965ed0e}\nHVAGENT_IP_ADDRESSES=10.1.2.3/16 fd00::9/48\n\
         HVAGENT_IP_DHCP=0\nHVAGENT_IP_DNS=10.1.0.53 10.1.0.54\nHVAGENT_IP_FAMILY=ipv4 ipv6\n\
         HVAGENT_IP_GATEWAYS=10.1.0.1\nHVAGENT_IP_INTERFACE=eth9\nHVAGENT_IP_MAC=00155D000102\n"
    );
    let unknown = IpInfo {
        adapter_id: "nope".into(),
        ..info.clone()
    };
    assert_eq!(
        network.start_set(&unknown).unwrap_err().status,
        Status::GUID_NOT_FOUND
    );
    fs::write(&script, "#!/bin/sh\nexit 3\n").unwrap();
    network.start_set(&info).unwrap();
    let outcome = loop {
        if let Some(outcome) = network.poll_set(Instant::now()) {
            break outcome;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(outcome.unwrap_err().contains("exit status: 3"));
    let mut none = LiveNetwork::new(dir.path(), Vec::new());
    assert_eq!(
        none.start_set(&info).unwrap_err().status,
        Status::NOT_SUPPORTED
    );
}

/// The test machine's own adapters against `ip -o addr`: every global address `ip` lists for an interface
/// with a MAC is in GET_IP_INFO's answer, and nothing else is.
#[test]
fn the_live_systems_adapters_match_ip_addr() {
    let Ok(output) = Command::new("ip").args(["-o", "addr", "show"]).output() else {
        eprintln!("SKIPPED: no ip(8) to compare with");
        return;
    };
    let network = LiveNetwork::new(Path::new("/"), Vec::new());
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut compared = 0;
    let names: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .collect();
    for name in names {
        let Some(mac) = read_trimmed(&Path::new("/sys/class/net").join(name).join("address"))
        else {
            continue;
        };
        let Some(info) = network.adapter(&mac) else {
            continue;
        };
        let mut expected: Vec<String> = text
            .lines()
            .filter(|line| line.split_whitespace().nth(1) == Some(name))
            .filter_map(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                let at = words.iter().position(|w| *w == "inet" || *w == "inet6")?;
                Some(words.get(at + 1)?.to_string())
            })
            .collect();
        let mut got: Vec<String> = info
            .ipv4
            .iter()
            .map(|e| {
                format!(
                    "{}/{}",
                    format_ipv4(e.address),
                    u32::from_be_bytes(e.mask).leading_ones()
                )
            })
            .chain(
                info.ipv6
                    .iter()
                    .map(|e| format!("{}/{}", format_ipv6(e.address), e.prefix)),
            )
            .collect();
        expected.sort();
        got.sort();
        if expected.is_empty() {
            continue;
        }
        assert_eq!(got, expected, "{name} ({mac})");
        compared += 1;
    }
    if compared == 0 {
        eprintln!("SKIPPED: this machine has no adapter with a MAC and an address to compare");
    }
}
