//! The system's IP addresses when the agent runs in a network namespace of its own.
//!
//! The unit's `PrivateNetwork=yes` gives the agent a namespace holding only loopback, and
//! `RestrictAddressFamilies=` forbids AF_NETLINK, so getifaddrs there cannot see the guest's interfaces.
//! PID 1's view in procfs can: `/proc/1/net/` shows the namespace PID 1 lives in (the system's), as plain
//! files, with neither a netlink socket nor setns(2):
//! - IPv6 from `/proc/1/net/if_inet6`, one address a line (`%pi6 %02x %02x %02x %02x %8s`: address in 32
//!   hex digits, ifindex, prefix length, scope, flags, interface name, all hex but the name).
//! - IPv4 from `/proc/1/net/fib_trie`, which lists every routing table as a trie: a leaf line `|-- ADDR`
//!   followed by one line per route at that key, `/PREFIXLEN SCOPE TYPE [tos=N]`. Each address the system
//!   holds has a `/32 host LOCAL` route; the Main and Local tables are one trie unless policy rules split
//!   them, so both listings show it, and a VRF's table lists its own interfaces' addresses. The file names
//!   no interface, so loopback is told apart by 127.0.0.0/8 only (an address added to `lo` outside it, or a
//!   `local` /32 route added by hand, is reported), and an address on an interface that is down has no
//!   route there and is not.
//!
//! Under `ProtectProc=invisible` /proc/1 stays visible to the agent: procfs hides a process the reader may
//! not ptrace unless the reader is in the mount's `gid=` group, which systemd leaves at its default, 0, and
//! the agent runs as root:root. `/proc/1/ns/net` is ptrace-checked itself (the agent has fewer capabilities
//! than PID 1 and no CAP_SYS_PTRACE), so when it cannot be read the namespaces are compared by the inode of
//! a per-namespace procfs entry, `net/dev`, which is the same entry exactly when the namespace is.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// One line of /proc/net/if_inet6: an address and the interface holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inet6Address {
    pub address: Ipv6Addr,
    pub ifindex: u32,
    pub ifname: String,
    /// The prefix length.
    pub prefix_len: u32,
    /// IFA_F_* flags (IFA_F_PERMANENT 0x80: configured, not from autoconfiguration or DHCPv6).
    pub flags: u32,
}

fn hex_u32(field: &str) -> Option<u32> {
    if field.is_empty() || !field.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(field, 16).ok()
}

fn parse_if_inet6_line(line: &str) -> Option<Inet6Address> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [hex, ifindex, prefix_len, scope, flags, ifname, ..] = fields[..] else {
        return None;
    };
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let address = Ipv6Addr::from(u128::from_str_radix(hex, 16).ok()?);
    let ifindex = hex_u32(ifindex)?;
    hex_u32(scope)?;
    Some(Inet6Address {
        address,
        ifindex,
        ifname: ifname.to_string(),
        prefix_len: hex_u32(prefix_len)?,
        flags: hex_u32(flags)?,
    })
}

/// Every well-formed line of /proc/net/if_inet6, in file order (the kernel's hash order); other lines are
/// skipped.
pub fn parse_if_inet6(text: &str) -> Vec<Inet6Address> {
    text.lines().filter_map(parse_if_inet6_line).collect()
}

/// The IPv6 addresses to report: all but those on `lo` and `::1`, link-local ones included (as getifaddrs
/// gives them and hv_kvp_daemon reports them), each once, ordered by interface index and then by address,
/// close to getifaddrs' interface order.
pub fn reported_ipv6(mut entries: Vec<Inet6Address>) -> Vec<Ipv6Addr> {
    entries.retain(|entry| entry.ifname != "lo" && !entry.address.is_loopback());
    entries.sort_by_key(|entry| (entry.ifindex, entry.address));
    let mut found: Vec<Ipv6Addr> = Vec::new();
    for entry in entries {
        if !found.contains(&entry.address) {
            found.push(entry.address);
        }
    }
    found
}

fn fib_trie_local<S: AsRef<str>>(lines: impl Iterator<Item = S>) -> Vec<Ipv4Addr> {
    let mut found = BTreeSet::new();
    let mut leaf: Option<Ipv4Addr> = None;
    for line in lines {
        let line = line.as_ref().trim_start();
        if let Some(key) = line.strip_prefix("|--") {
            leaf = key.trim().parse().ok();
        } else if let Some(route) = line.strip_prefix('/') {
            let mut words = route.split_whitespace();
            let local = (words.next(), words.next(), words.next())
                == (Some("32"), Some("host"), Some("LOCAL"));
            match leaf {
                Some(address) if local && !address.is_loopback() => {
                    found.insert(address);
                }
                _ => {}
            }
        } else {
            // An inner node (`+--`), a table's heading (`Main:`, `Local:`, `Id 100:`) or anything else ends
            // the leaf.
            leaf = None;
        }
    }
    found.into_iter().collect()
}

/// The addresses /proc/net/fib_trie lists as `/32 host LOCAL`, outside 127.0.0.0/8, each once, in numeric
/// order: the file names no interface and lists each table in key order, so numeric is the one order that
/// does not depend on how the tables are laid out. Malformed lines are skipped.
pub fn parse_fib_trie_local(text: &str) -> Vec<Ipv4Addr> {
    fib_trie_local(text.lines())
}

/// Whether the agent shares PID 1's network namespace: `Some` when it could tell, from the namespace links
/// or, when those are refused, from the per-namespace `net/dev` entries; `None` when neither is readable.
pub fn same_netns_as_pid1(proc_root: &Path) -> Option<bool> {
    let own = fs::read_link(proc_root.join("self/ns/net"));
    let init = fs::read_link(proc_root.join("1/ns/net"));
    if let (Ok(own), Ok(init)) = (own, init) {
        return Some(own == init);
    }
    let own = fs::metadata(proc_root.join("self/net/dev")).ok()?;
    let init = fs::metadata(proc_root.join("1/net/dev")).ok()?;
    Some(own.dev() == init.dev() && own.ino() == init.ino())
}

/// The system's addresses of one family as PID 1's namespace shows them, or `None` when the file cannot be
/// read (no /proc/1, or IPv6 disabled).
pub fn pid1_addresses(proc_root: &Path, v4: bool) -> Option<Vec<IpAddr>> {
    let net = proc_root.join("1/net");
    if v4 {
        // Streamed line by line: a router's tables can run to many megabytes.
        let file = fs::File::open(net.join("fib_trie")).ok()?;
        let lines = BufReader::new(file).lines().map_while(Result::ok);
        Some(fib_trie_local(lines).into_iter().map(IpAddr::V4).collect())
    } else {
        let text = fs::read_to_string(net.join("if_inet6")).ok()?;
        Some(
            reported_ipv6(parse_if_inet6(&text))
                .into_iter()
                .map(IpAddr::V6)
                .collect(),
        )
    }
}

/// The addresses to report, given `own`, those getifaddrs shows the agent (loopback left out): PID 1's when
/// the agent is in another network namespace (or, when that cannot be told, when `own` is empty); `own`
/// when they share it, or when PID 1's cannot be read.
pub fn system_addresses(own: Vec<IpAddr>, v4: bool, proc_root: &Path) -> Vec<IpAddr> {
    let elsewhere = match same_netns_as_pid1(proc_root) {
        Some(same) => !same,
        None => own.is_empty(),
    };
    if !elsewhere {
        return own;
    }
    pid1_addresses(proc_root, v4).unwrap_or(own)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A guest with eth0 (ifindex 2), eth1 (3), docker0 (10) and a veth (31), written as the kernel writes
    /// the file (hash order, names right-aligned in 8 columns), with a few lines no kernel writes.
    const IF_INET6: &str = "\
fe80000000000000021dd8fffeb70a01 02 40 20 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
fe80000000000000004200fffe1c7d2e 0a 40 20 80  docker0
20010db8000000000000000000000010 02 40 00 00     eth0
fd000000000000000000000000000002 03 40 00 80     eth1
fe800000000000000000000000000001 1f 40 20 80 veth1a2b3c
20010db8000000000000000000000010 03 40 00 80     eth1
fe80000000000000000000000000abcd 01 40 20 80       lo
20010db80000000000000000000000100 02 40 00 80     eth0
+0010db8000000000000000000000010 02 40 00 80     eth0
20010db8000000000000000000000011 zz 40 00 80     eth0
20010db8000000000000000000000012 02 40 00
garbage

fe80000000000000021dd8fffeb70a01 02 40 20 80     eth0 extra-column
";

    /// lo 127.0.0.1/8, eth0 192.168.1.20/24 with the secondary 192.168.1.21, eth1 10.0.0.5/8, docker0
    /// 172.17.0.1/16, one route with a TOS, and a VRF table (Id 100) holding 10.9.0.1; Main and Local are
    /// one trie, so both listings show every route.
    const FIB_TRIE_MERGED: &str = "\
Id 100:
  +-- 0.0.0.0/0 2 0 2
     +-- 10.9.0.0/30 2 0 2
        |-- 10.9.0.0
           /24 link UNICAST
        |-- 10.9.0.1
           /32 host LOCAL
     |-- 127.0.0.1
        /32 host LOCAL
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.0.0.0/8 2 0 2
        |-- 10.0.0.0
           /8 link UNICAST
        |-- 10.0.0.5
           /32 host LOCAL
        |-- 10.255.255.255
           /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 172.17.0.0/16 2 0 2
        |-- 172.17.0.0
           /16 link UNICAST
        |-- 172.17.0.1
           /32 host LOCAL
        |-- 172.17.255.255
           /32 link BROADCAST
     +-- 192.168.1.0/24 2 1 2
        +-- 192.168.1.0/27 2 0 2
           |-- 192.168.1.0
              /24 link UNICAST
              /24 link UNICAST tos=16
           +-- 192.168.1.20/31 1 2 0
              |-- 192.168.1.20
                 /32 host LOCAL
              |-- 192.168.1.21
                 /32 host LOCAL
        |-- 192.168.1.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.0.0.0/8 2 0 2
        |-- 10.0.0.5
           /32 host LOCAL
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
     +-- 172.17.0.0/16 2 0 2
        |-- 172.17.0.1
           /32 host LOCAL
     +-- 192.168.1.0/24 2 1 2
        +-- 192.168.1.20/31 1 2 0
           |-- 192.168.1.20
              /32 host LOCAL
           |-- 192.168.1.21
              /32 host LOCAL
";

    fn v4(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    fn v6(text: &str) -> Ipv6Addr {
        text.parse().unwrap()
    }

    #[test]
    fn if_inet6_lines_parse_and_malformed_ones_are_skipped() {
        let entries = parse_if_inet6(IF_INET6);
        let seen: Vec<(String, u32, &str)> = entries
            .iter()
            .map(|e| (e.address.to_string(), e.ifindex, e.ifname.as_str()))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("fe80::21d:d8ff:feb7:a01".to_string(), 2, "eth0"),
                ("::1".to_string(), 1, "lo"),
                ("fe80::42:ff:fe1c:7d2e".to_string(), 10, "docker0"),
                ("2001:db8::10".to_string(), 2, "eth0"),
                ("fd00::2".to_string(), 3, "eth1"),
                ("fe80::1".to_string(), 31, "veth1a2b3c"),
                ("2001:db8::10".to_string(), 3, "eth1"),
                ("fe80::abcd".to_string(), 1, "lo"),
                ("fe80::21d:d8ff:feb7:a01".to_string(), 2, "eth0"),
            ]
        );
    }

    #[test]
    fn reported_ipv6_leaves_out_loopback_keeps_link_local_and_orders_by_interface() {
        let reported = reported_ipv6(parse_if_inet6(IF_INET6));
        assert_eq!(
            reported,
            vec![
                v6("2001:db8::10"),
                v6("fe80::21d:d8ff:feb7:a01"),
                v6("fd00::2"),
                v6("fe80::42:ff:fe1c:7d2e"),
                v6("fe80::1"),
            ]
        );
        assert!(reported_ipv6(parse_if_inet6("")).is_empty());
    }

    #[test]
    fn fib_trie_gives_each_local_address_once_without_loopback() {
        assert_eq!(
            parse_fib_trie_local(FIB_TRIE_MERGED),
            vec![
                v4("10.0.0.5"),
                v4("10.9.0.1"),
                v4("172.17.0.1"),
                v4("192.168.1.20"),
                v4("192.168.1.21")
            ]
        );
    }

    #[test]
    fn fib_trie_split_tables_and_a_single_leaf_trie_parse_too() {
        // After `ip rule add`, Main and Local are separate tries: Main has no LOCAL routes.
        let split = "\
Main:
  +-- 0.0.0.0/0 2 0 2
     |-- 0.0.0.0
        /0 universe UNICAST
     |-- 192.0.2.0
        /24 link UNICAST
Local:
  +-- 0.0.0.0/0 2 0 2
     |-- 127.0.0.1
        /32 host LOCAL
     |-- 192.0.2.2
        /32 host LOCAL
";
        assert_eq!(parse_fib_trie_local(split), vec![v4("192.0.2.2")]);
        // A table holding one route is a lone leaf, at depth 0.
        let lone = "Local:\n  |-- 198.51.100.7\n     /32 host LOCAL\n";
        assert_eq!(parse_fib_trie_local(lone), vec![v4("198.51.100.7")]);
    }

    #[test]
    fn fib_trie_routes_that_are_not_addresses_and_malformed_lines_give_nothing() {
        let text = "\
Main:
     /32 host LOCAL
  +-- 10.0.0.0/8 2 0 2
     /32 host LOCAL
     |-- 10.0.0.255
        /32 link BROADCAST
     |-- 10.1.0.0
        /16 host LOCAL
        /32 universe UNICAST
     |-- 10.2.0.1
        /32 host
        /32
        /
     |-- 300.1.2.3
        /32 host LOCAL
     |--
        /32 host LOCAL
     |-- 10.3.0.1
garbage
        /32 host LOCAL
     |-- 127.1.2.3
        /32 host LOCAL
\u{0}\u{fffd}|-- 10.4.0.1
        /32 host LOCAL
";
        assert_eq!(parse_fib_trie_local(text), Vec::<Ipv4Addr>::new());
        assert!(parse_fib_trie_local("").is_empty());
    }

    /// A proc tree with PID 1's network files.
    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("1/net")).unwrap();
        fs::create_dir_all(dir.path().join("1/ns")).unwrap();
        fs::create_dir_all(dir.path().join("self/net")).unwrap();
        fs::create_dir_all(dir.path().join("self/ns")).unwrap();
        fs::write(dir.path().join("1/net/fib_trie"), FIB_TRIE_MERGED).unwrap();
        fs::write(dir.path().join("1/net/if_inet6"), IF_INET6).unwrap();
        dir
    }

    fn ns_links(dir: &Path, own: &str, init: &str) {
        symlink(own, dir.join("self/ns/net")).unwrap();
        symlink(init, dir.join("1/ns/net")).unwrap();
    }

    fn own() -> Vec<IpAddr> {
        vec![IpAddr::V4(v4("203.0.113.9"))]
    }

    fn system_v4() -> Vec<IpAddr> {
        parse_fib_trie_local(FIB_TRIE_MERGED)
            .into_iter()
            .map(IpAddr::V4)
            .collect()
    }

    #[test]
    fn another_namespace_reports_pid1s_addresses_even_when_the_agent_has_some() {
        let dir = tree();
        ns_links(dir.path(), "net:[4026532237]", "net:[4026531833]");
        assert_eq!(same_netns_as_pid1(dir.path()), Some(false));
        assert_eq!(system_addresses(own(), true, dir.path()), system_v4());
        let v6: Vec<IpAddr> = reported_ipv6(parse_if_inet6(IF_INET6))
            .into_iter()
            .map(IpAddr::V6)
            .collect();
        assert_eq!(system_addresses(Vec::new(), false, dir.path()), v6);
    }

    #[test]
    fn the_same_namespace_reports_getifaddrs_even_when_empty() {
        let dir = tree();
        ns_links(dir.path(), "net:[4026531833]", "net:[4026531833]");
        assert_eq!(same_netns_as_pid1(dir.path()), Some(true));
        assert_eq!(system_addresses(own(), true, dir.path()), own());
        assert_eq!(
            system_addresses(Vec::new(), false, dir.path()),
            Vec::<IpAddr>::new()
        );
    }

    #[test]
    fn refused_namespace_links_fall_back_to_the_net_dev_entries() {
        // The links are absent (as unreadable as the unit's /proc/1/ns/net); one net/dev entry for both
        // means one namespace.
        let dir = tree();
        fs::write(dir.path().join("1/net/dev"), "").unwrap();
        fs::hard_link(
            dir.path().join("1/net/dev"),
            dir.path().join("self/net/dev"),
        )
        .unwrap();
        assert_eq!(same_netns_as_pid1(dir.path()), Some(true));
        assert_eq!(system_addresses(own(), true, dir.path()), own());

        let dir = tree();
        fs::write(dir.path().join("1/net/dev"), "").unwrap();
        fs::write(dir.path().join("self/net/dev"), "").unwrap();
        assert_eq!(same_netns_as_pid1(dir.path()), Some(false));
        assert_eq!(system_addresses(own(), true, dir.path()), system_v4());

        // One readable link is not enough to compare.
        let dir = tree();
        symlink("net:[1]", dir.path().join("self/ns/net")).unwrap();
        fs::write(dir.path().join("1/net/dev"), "").unwrap();
        fs::write(dir.path().join("self/net/dev"), "").unwrap();
        assert_eq!(same_netns_as_pid1(dir.path()), Some(false));
    }

    #[test]
    fn when_nothing_tells_the_namespaces_apart_pid1_is_read_only_if_getifaddrs_found_nothing() {
        let dir = tree();
        assert_eq!(same_netns_as_pid1(dir.path()), None);
        assert_eq!(system_addresses(own(), true, dir.path()), own());
        assert_eq!(system_addresses(Vec::new(), true, dir.path()), system_v4());
    }

    #[test]
    fn unreadable_pid1_files_keep_getifaddrs() {
        let dir = tree();
        ns_links(dir.path(), "net:[1]", "net:[2]");
        fs::remove_file(dir.path().join("1/net/if_inet6")).unwrap(); // IPv6 disabled
        fs::remove_file(dir.path().join("1/net/fib_trie")).unwrap();
        assert_eq!(system_addresses(own(), true, dir.path()), own());
        assert_eq!(
            system_addresses(Vec::new(), false, dir.path()),
            Vec::<IpAddr>::new()
        );
        let missing = dir.path().join("nowhere");
        assert_eq!(system_addresses(own(), true, &missing), own());
        assert_eq!(pid1_addresses(&missing, true), None);
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_without_panicking(text in ".{0,400}", lines in proptest::collection::vec("[ |+/a-fA-F0-9.:-]{0,40}", 0..20)) {
            let _ = parse_if_inet6(&text);
            let _ = parse_fib_trie_local(&text);
            let joined = lines.join("\n");
            let _ = reported_ipv6(parse_if_inet6(&joined));
            for address in parse_fib_trie_local(&joined) {
                proptest::prop_assert!(!address.is_loopback());
            }
        }
    }

    #[test]
    fn the_live_proc_parses_and_leaves_out_loopback() {
        let root = Path::new("/proc");
        let v4s = pid1_addresses(root, true).unwrap_or_default();
        assert!(v4s.iter().all(|a| !a.is_loopback()), "{v4s:?}");
        let v6s = pid1_addresses(root, false).unwrap_or_default();
        assert!(v6s.iter().all(|a| !a.is_loopback()), "{v6s:?}");
        let _ = same_netns_as_pid1(root);
    }
}
