//! The guest's intrinsic KVP values, read from the system at every request, as hv_kvp_daemon reports them:
//! the host name, the addresses of every interface but loopback (getifaddrs, joined by ';'; under
//! PrivateNetwork= the system's namespace as PID 1's view in procfs shows it, see `netns`), the kernel
//! release, and NAME / VERSION_ID from os-release. No DNS lookup: the name is the host name plus the NIS
//! domain when one is set, so a request never waits on the network.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use nix::net::if_::InterfaceFlags;

use crate::system::netns;
use hvproto::service::guestinfo::SystemInfo;

/// Reads the running system.
#[derive(Default)]
pub struct LiveSystem;

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_string())
        .unwrap_or_default()
}

/// os-release's KEY=VALUE lines, values unquoted (os-release(5)).
pub fn parse_os_release(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.starts_with('#') {
                return None;
            }
            let (key, value) = line.split_once('=')?;
            let value = value.trim();
            let unquoted = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            Some((key.trim().to_string(), unquoted.replace("\\\"", "\"")))
        })
        .collect()
}

/// (major, minor) of a VERSION_ID such as "12" or "22.04".
pub fn split_version(version_id: &str) -> (String, String) {
    match version_id.split_once('.') {
        Some((major, minor)) => (major.to_string(), minor.to_string()),
        None => (version_id.to_string(), String::new()),
    }
}

/// The host name, with the domain name when one is set ("(none)" means none).
pub fn fqdn(hostname: &str, domainname: &str) -> String {
    if domainname.is_empty() || domainname == "(none)" || hostname.contains('.') {
        hostname.to_string()
    } else {
        format!("{hostname}.{domainname}")
    }
}

/// The kernel version without its suffix ("6.1.0-18-amd64" -> "6.1.0"), as hv_kvp_daemon reports OSVersion.
pub fn kernel_version(release: &str) -> String {
    release.split('-').next().unwrap_or(release).to_string()
}

fn os_release() -> HashMap<String, String> {
    ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .map(|text| parse_os_release(&text))
        .unwrap_or_default()
}

/// The addresses of one family getifaddrs shows, on every interface but loopback, each once.
fn own_addresses(v4: bool) -> Vec<IpAddr> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut found: Vec<IpAddr> = Vec::new();
    for interface in interfaces {
        if interface.flags.contains(InterfaceFlags::IFF_LOOPBACK) {
            continue;
        }
        let Some(address) = interface.address else {
            continue;
        };
        let ip = match (address.as_sockaddr_in(), address.as_sockaddr_in6()) {
            (Some(sin), _) if v4 => IpAddr::V4(sin.ip()),
            (_, Some(sin6)) if !v4 => IpAddr::V6(sin6.ip()),
            _ => continue,
        };
        if !found.contains(&ip) {
            found.push(ip);
        }
    }
    found
}

/// The system's addresses of one family, joined by ';': getifaddrs' in the system's network namespace, PID
/// 1's view in procfs when the agent has a namespace of its own (PrivateNetwork=, see `netns`).
fn addresses(v4: bool) -> String {
    let chosen = netns::system_addresses(own_addresses(v4), v4, Path::new("/proc"));
    let texts: Vec<String> = chosen.iter().map(IpAddr::to_string).collect();
    texts.join(";")
}

impl SystemInfo for LiveSystem {
    fn read(&self, key: &str) -> String {
        let release = || read_trimmed("/proc/sys/kernel/osrelease");
        let version_id = || os_release().get("VERSION_ID").cloned().unwrap_or_default();
        match key {
            "FullyQualifiedDomainName" => fqdn(
                &read_trimmed("/proc/sys/kernel/hostname"),
                &read_trimmed("/proc/sys/kernel/domainname"),
            ),
            "NetworkAddressIPv4" => addresses(true),
            "NetworkAddressIPv6" => addresses(false),
            "OSBuildNumber" => release(),
            "OSName" => os_release()
                .get("NAME")
                .cloned()
                .unwrap_or_else(|| "Linux".to_string()),
            "OSMajorVersion" => split_version(&version_id()).0,
            "OSMinorVersion" => split_version(&version_id()).1,
            "OSVersion" => kernel_version(&release()),
            "ProcessorArchitecture" => std::env::consts::ARCH.to_string(),
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_values_are_unquoted() {
        let parsed = parse_os_release(
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME='Debian GNU/Linux'\n# c\nVERSION_ID=12\n\
             ID=debian\nbad line\n",
        );
        assert_eq!(parsed["NAME"], "Debian GNU/Linux");
        assert_eq!(parsed["VERSION_ID"], "12");
        assert_eq!(parsed["PRETTY_NAME"], "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(parsed.len(), 4);
    }

    #[test]
    fn versions_names_and_kernels_split_as_documented() {
        assert_eq!(split_version("22.04"), ("22".into(), "04".into()));
        assert_eq!(split_version("12"), ("12".into(), String::new()));
        assert_eq!(split_version(""), (String::new(), String::new()));
        assert_eq!(fqdn("vm1", "(none)"), "vm1");
        assert_eq!(fqdn("vm1", "corp.example"), "vm1.corp.example");
        assert_eq!(fqdn("vm1.corp", "corp"), "vm1.corp");
        assert_eq!(kernel_version("6.1.0-18-amd64"), "6.1.0");
        assert_eq!(kernel_version("6.8.0"), "6.8.0");
    }

    #[test]
    fn the_live_system_answers_every_key_without_loopback() {
        let system = LiveSystem;
        assert!(!system.read("OSBuildNumber").is_empty());
        assert_eq!(system.read("ProcessorArchitecture"), std::env::consts::ARCH);
        let v4 = system.read("NetworkAddressIPv4");
        assert!(!v4.split(';').any(|a| a == "127.0.0.1"), "{v4}");
        let v6 = system.read("NetworkAddressIPv6");
        assert!(!v6.split(';').any(|a| a == "::1"), "{v6}");
    }
}
