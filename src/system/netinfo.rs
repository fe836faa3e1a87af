//! The IP-info operations' edge ([`Network`]): an adapter's settings read from plain files, and
//! SET_IP_INFO's command. docs/PROTOCOL.md §9.7 says where each field comes from.
//!
//! The adapter is the interface under `/sys/class/net` whose `address` is the MAC the host names (any case,
//! with `:`, `-` or no separators), or, for SET (whose adapter id Linux's hv_kvp_daemon reads as the VMBus
//! device id), whose `device/device_id` is it. The network is the system's: PID 1's namespace
//! (`/proc/1/net`) when the agent runs in another (the unit's PrivateNetwork=), else its own; no netlink
//! socket (the unit allows none) and no ioctl:
//! - IPv6 addresses, prefix lengths and origins from `if_inet6` (IFA_F_PERMANENT is a static address).
//! - IPv4 addresses from `fib_trie` (the `/32 host LOCAL` entries), each given to the interface whose
//!   `route` entry without a gateway holds it with the longest mask, which is also its netmask: the prefix
//!   route the kernel adds with each address. An address added with `noprefixroute`, or on an interface that
//!   is down, has no such route and is not reported.
//! - Gateways: `route`'s default routes (destination and mask 0, RTF_GATEWAY) and `ipv6_route`'s (::/0 with
//!   a next hop) through the interface.
//! - DNS servers: the `nameserver` lines of /etc/resolv.conf, or of systemd-resolved's
//!   /run/systemd/resolve/resolv.conf when the first names only its local stub (127.0.0.53, 127.0.0.54).
//! - DHCP, best effort: on when a DHCP client keeps a lease for the interface: systemd-networkd
//!   (/run/systemd/netif/leases/IFINDEX), NetworkManager (/var/lib/NetworkManager/*-IFNAME.lease), dhclient
//!   (/var/lib/dhcp/ or /var/lib/dhclient/, a *.leases file naming the interface), dhcpcd
//!   (/var/lib/dhcpcd/IFNAME.lease, dhcpcd-IFNAME.lease). Then the IPv4 addresses' origin is OTHER (dynamic),
//!   else STATIC.
//!
//! SET_IP_INFO runs `set_ip_command` (argv, no shell) with the settings in its environment, its stdout and
//! stdin closed and its stderr the agent's, for at most [`SET_LIMIT`]; the loop polls it while it runs.

use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hvproto::service::guestinfo::ipconfig::{not_supported, unknown_adapter, Network};
use hvproto::service::Refusal;
use hvproto::wire::ipinfo::{
    format_ipv4, format_ipv6, IpInfo, Ipv4Entry, Ipv6Entry, Origin, FAMILY_IPV4, FAMILY_IPV6,
};
use hvproto::wire::Status;

use super::netns;

/// The longest a SET_IP_INFO command may run.
pub const SET_LIMIT: Duration = Duration::from_secs(60);

/// IFA_F_PERMANENT (include/uapi/linux/if_addr.h).
const IFA_F_PERMANENT: u32 = 0x80;
/// RTF_GATEWAY (include/uapi/linux/route.h).
const RTF_GATEWAY: u32 = 0x2;

/// Whether a file name in a DHCP client's directory is a lease of the interface named.
type LeaseName = fn(&str, &str) -> bool;

/// The live system's network, read under `root` (`/` but in tests).
pub struct LiveNetwork {
    root: PathBuf,
    command: Vec<String>,
    running: Option<(Child, Instant)>,
}

/// An interface found by its MAC address or device id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: String,
}

/// A MAC address as 12 upper-case hex digits, from any of the forms hosts and sysfs write; None otherwise.
pub fn normal_mac(text: &str) -> Option<String> {
    let digits: String = text
        .trim()
        .chars()
        .filter(|c| !matches!(c, ':' | '-' | '.'))
        .collect::<String>()
        .to_ascii_uppercase();
    (digits.len() == 12 && digits.bytes().all(|b| b.is_ascii_hexdigit())).then_some(digits)
}

fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_string())
}

impl LiveNetwork {
    pub fn new(root: &Path, command: Vec<String>) -> LiveNetwork {
        LiveNetwork {
            root: root.to_path_buf(),
            command,
            running: None,
        }
    }

    fn at(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// The interface whose MAC address (or, with `device_id`, VMBus device id) is `id`.
    pub fn find(&self, id: &str, device_id: bool) -> Option<Interface> {
        let wanted_mac = normal_mac(id);
        let wanted_device = id.trim().trim_matches(['{', '}']).to_ascii_lowercase();
        let entries = fs::read_dir(self.at("/sys/class/net")).ok()?;
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .collect();
        names.sort();
        names.into_iter().find_map(|name| {
            let dir = self.at("/sys/class/net").join(&name);
            let mac = read_trimmed(&dir.join("address")).and_then(|text| normal_mac(&text))?;
            let by_mac = wanted_mac.as_deref() == Some(mac.as_str()) && mac != "000000000000";
            let by_device = device_id
                && read_trimmed(&dir.join("device/device_id")).is_some_and(|text| {
                    text.trim_matches(['{', '}']).to_ascii_lowercase() == wanted_device
                });
            let index = read_trimmed(&dir.join("ifindex"))?.parse().ok()?;
            (by_mac || by_device).then_some(Interface { name, index, mac })
        })
    }

    /// The procfs network directory of the system's namespace.
    fn net_dir(&self) -> PathBuf {
        let proc_root = self.at("/proc");
        match netns::same_netns_as_pid1(&proc_root) {
            Some(false) => proc_root.join("1/net"),
            _ => proc_root.join("self/net"),
        }
    }

    /// The settings of `interface`.
    pub fn settings(&self, interface: &Interface, adapter_id: &str) -> IpInfo {
        let net = self.net_dir();
        let read = |name: &str| fs::read_to_string(net.join(name)).unwrap_or_default();
        let routes = parse_route(&read("route"));
        let dhcp = self.dhcp(interface);
        let ipv4: Vec<Ipv4Entry> = netns::parse_fib_trie_local(&read("fib_trie"))
            .into_iter()
            .filter_map(|address| {
                let mask = prefix_route(&routes, &interface.name, address)?;
                Some(Ipv4Entry {
                    address: address.octets(),
                    mask: mask.octets(),
                    origin: if dhcp { Origin::OTHER } else { Origin::STATIC },
                })
            })
            .collect();
        let mut ipv6: Vec<Ipv6Entry> = netns::parse_if_inet6(&read("if_inet6"))
            .into_iter()
            .filter(|entry| entry.ifname == interface.name)
            .map(|entry| Ipv6Entry {
                address: entry.address.octets(),
                prefix: entry.prefix_len,
                origin: if entry.flags & IFA_F_PERMANENT != 0 {
                    Origin::STATIC
                } else {
                    Origin::OTHER
                },
            })
            .collect();
        ipv6.sort_by_key(|entry| entry.address);
        let ipv4_gateways = routes
            .iter()
            .filter(|route| {
                route.iface == interface.name
                    && route.destination.is_unspecified()
                    && route.mask.is_unspecified()
                    && route.flags & RTF_GATEWAY != 0
            })
            .map(|route| route.gateway.octets())
            .collect();
        let ipv6_gateways = ipv6_default_gateways(&read("ipv6_route"), &interface.name)
            .into_iter()
            .map(|address| address.octets())
            .collect();
        let (ipv4_dns, ipv6_dns) = self.dns();
        let mut family = 0;
        if !ipv4.is_empty() {
            family |= FAMILY_IPV4;
        }
        if !ipv6.is_empty() {
            family |= FAMILY_IPV6;
        }
        IpInfo {
            adapter_id: adapter_id.to_string(),
            family,
            dhcp_enabled: dhcp,
            ipv4,
            ipv6,
            ipv4_gateways,
            ipv6_gateways,
            ipv4_dns,
            ipv6_dns,
        }
    }

    fn dns(&self) -> (Vec<[u8; 4]>, Vec<[u8; 16]>) {
        let servers = |path: &str| -> Vec<String> {
            fs::read_to_string(self.at(path))
                .unwrap_or_default()
                .lines()
                .filter_map(|line| {
                    let mut words = line.split_whitespace();
                    (words.next() == Some("nameserver")).then(|| words.next().map(String::from))?
                })
                .collect()
        };
        let mut found = servers("/etc/resolv.conf");
        if !found.is_empty()
            && found
                .iter()
                .all(|server| ["127.0.0.53", "127.0.0.54"].contains(&server.as_str()))
        {
            let upstream = servers("/run/systemd/resolve/resolv.conf");
            if !upstream.is_empty() {
                found = upstream;
            }
        }
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for server in found {
            // A link-local server may carry its zone ("fe80::1%eth0").
            let server = server.split('%').next().unwrap_or_default();
            if let Ok(address) = server.parse::<Ipv4Addr>() {
                v4.push(address.octets());
            } else if let Ok(address) = server.parse::<Ipv6Addr>() {
                v6.push(address.octets());
            }
        }
        (v4, v6)
    }

    /// Whether a DHCP client keeps a lease for `interface` (see the module documentation).
    fn dhcp(&self, interface: &Interface) -> bool {
        let name = interface.name.as_str();
        if self
            .at(&format!("/run/systemd/netif/leases/{}", interface.index))
            .exists()
        {
            return true;
        }
        let dirs: [(&str, LeaseName); 4] = [
            ("/var/lib/NetworkManager", |file, name| {
                file.ends_with(&format!("-{name}.lease"))
            }),
            ("/var/lib/dhcp", |file, name| {
                file.ends_with(".leases") && file.contains(name)
            }),
            ("/var/lib/dhclient", |file, name| {
                file.ends_with(".leases") && file.contains(name)
            }),
            ("/var/lib/dhcpcd", |file, name| {
                file == format!("{name}.lease") || file == format!("dhcpcd-{name}.lease")
            }),
        ];
        dirs.iter().any(|(dir, matches)| {
            fs::read_dir(self.at(dir)).is_ok_and(|entries| {
                entries.flatten().any(|entry| {
                    entry
                        .file_name()
                        .to_str()
                        .is_some_and(|file| matches(file, name))
                        && entry.metadata().is_ok_and(|meta| meta.len() > 0)
                })
            })
        })
    }

    /// The environment a SET_IP_INFO command gets.
    pub fn set_environment(info: &IpInfo, interface: &Interface) -> Vec<(String, String)> {
        let addresses: Vec<String> = info
            .ipv4
            .iter()
            .map(|entry| {
                format!(
                    "{}/{}",
                    format_ipv4(entry.address),
                    u32::from_be_bytes(entry.mask).leading_ones()
                )
            })
            .chain(
                info.ipv6
                    .iter()
                    .map(|entry| format!("{}/{}", format_ipv6(entry.address), entry.prefix)),
            )
            .collect();
        let gateways: Vec<String> = info
            .ipv4_gateways
            .iter()
            .map(|address| format_ipv4(*address))
            .chain(
                info.ipv6_gateways
                    .iter()
                    .map(|address| format_ipv6(*address)),
            )
            .collect();
        let dns: Vec<String> = info
            .ipv4_dns
            .iter()
            .map(|address| format_ipv4(*address))
            .chain(info.ipv6_dns.iter().map(|address| format_ipv6(*address)))
            .collect();
        let family = match (
            info.family & FAMILY_IPV4 != 0,
            info.family & FAMILY_IPV6 != 0,
        ) {
            (true, true) => "ipv4 ipv6",
            (true, false) => "ipv4",
            (false, true) => "ipv6",
            (false, false) => "",
        };
        [
            ("HVAGENT_IP_ADAPTER_ID", info.adapter_id.clone()),
            ("HVAGENT_IP_INTERFACE", interface.name.clone()),
            ("HVAGENT_IP_MAC", interface.mac.clone()),
            ("HVAGENT_IP_FAMILY", family.to_string()),
            (
                "HVAGENT_IP_DHCP",
                if info.dhcp_enabled { "1" } else { "0" }.to_string(),
            ),
            ("HVAGENT_IP_ADDRESSES", addresses.join(" ")),
            ("HVAGENT_IP_GATEWAYS", gateways.join(" ")),
            ("HVAGENT_IP_DNS", dns.join(" ")),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect()
    }
}

impl Network for LiveNetwork {
    fn adapter(&self, id: &str) -> Option<IpInfo> {
        let interface = self.find(id, false)?;
        Some(self.settings(&interface, id))
    }

    fn start_set(&mut self, info: &IpInfo) -> Result<(), Refusal> {
        let Some((program, args)) = self.command.split_first() else {
            return Err(not_supported());
        };
        let interface = self
            .find(&info.adapter_id, true)
            .ok_or_else(|| unknown_adapter(&info.adapter_id))?;
        let child = Command::new(program)
            .args(args)
            .envs(LiveNetwork::set_environment(info, &interface))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|error| {
                Refusal::new(Status::FAIL, format!("cannot run {program}: {error}"))
            })?;
        log::info!(
            "guestinfo: SET_IP_INFO for {} ({}): running {}",
            interface.name,
            info.adapter_id.escape_debug(),
            self.command.join(" ")
        );
        self.running = Some((child, Instant::now()));
        Ok(())
    }

    fn poll_set(&mut self, now: Instant) -> Option<Result<(), String>> {
        let Some((child, started)) = &mut self.running else {
            return Some(Err("no command runs".to_string()));
        };
        let outcome = match child.try_wait() {
            Ok(Some(status)) if status.success() => Ok(()),
            Ok(Some(status)) => Err(format!("{} ended with {status}", self.command.join(" "))),
            Ok(None) if now.saturating_duration_since(*started) < SET_LIMIT => return None,
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!(
                    "{} ran longer than {} s and was killed",
                    self.command.join(" "),
                    SET_LIMIT.as_secs()
                ))
            }
            Err(error) => Err(format!(
                "cannot wait for {}: {error}",
                self.command.join(" ")
            )),
        };
        self.running = None;
        Some(outcome)
    }
}

/// One line of /proc/net/route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub iface: String,
    pub destination: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub flags: u32,
    pub mask: Ipv4Addr,
}

/// /proc/net/route: `Iface Destination Gateway Flags RefCnt Use Metric Mask ...`, addresses as the hex of
/// the kernel's network-order u32 printed as a host (little-endian) number; malformed lines are skipped.
pub fn parse_route(text: &str) -> Vec<Route> {
    let address = |field: &str| {
        u32::from_str_radix(field, 16)
            .ok()
            .map(|n| Ipv4Addr::from(n.to_le_bytes()))
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [iface, destination, gateway, flags, _, _, _, mask, ..] = fields[..] else {
                return None;
            };
            Some(Route {
                iface: iface.to_string(),
                destination: address(destination)?,
                gateway: address(gateway)?,
                flags: u32::from_str_radix(flags, 16).ok()?,
                mask: address(mask)?,
            })
        })
        .collect()
}

/// The mask of the longest route without a gateway through `iface` that holds `address`.
fn prefix_route(routes: &[Route], iface: &str, address: Ipv4Addr) -> Option<Ipv4Addr> {
    routes
        .iter()
        .filter(|route| {
            let mask = u32::from(route.mask);
            route.iface == iface
                && route.flags & RTF_GATEWAY == 0
                && mask != 0
                && u32::from(address) & mask == u32::from(route.destination) & mask
        })
        .map(|route| route.mask)
        .max_by_key(|mask| u32::from(*mask).count_ones())
}

/// The next hops of /proc/net/ipv6_route's default routes (`::/0`, a next hop that is not `::`) through
/// `iface`: `dest plen src plen next_hop metric refcnt use flags iface`, all hex but the name.
pub fn ipv6_default_gateways(text: &str, iface: &str) -> Vec<Ipv6Addr> {
    let mut found: Vec<Ipv6Addr> = text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [destination, plen, _, _, next_hop, _, _, _, flags, name] = fields[..] else {
                return None;
            };
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let hop = Ipv6Addr::from(u128::from_str_radix(next_hop, 16).ok()?);
            let default = u128::from_str_radix(destination, 16).ok()? == 0 && plen == "00";
            (default && name == iface && flags & RTF_GATEWAY != 0 && !hop.is_unspecified())
                .then_some(hop)
        })
        .collect();
    found.dedup();
    found
}

#[cfg(test)]
mod tests;
