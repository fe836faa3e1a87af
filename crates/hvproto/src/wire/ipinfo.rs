//! The IP-info bodies of the KVP exchange (GET_IP_INFO 4, SET_IP_INFO 5; docs/PROTOCOL.md §9.7), in the
//! two forms a host uses: Linux's string form up to message version 4.0 and openvmm's binary form for 5.0.
//!
//! String form: Linux's `struct hv_kvp_ip_msg` (include/uapi/linux/hyperv.h), packed, strings UTF-16LE,
//! NUL-terminated, lists separated by `;` (what hv_kvp_daemon's kvp_get_ip_info writes and
//! drivers/hv/hv_kvp.c converts):
//!
//! ```text
//!  body offset
//!  0       u8 operation; 1 u8 pool
//!  2       u16 adapter_id[128]     the MAC address for GET ("00:15:5D:..."), the VMBus device id for SET
//!  258     u8 addr_family          ADDR_FAMILY_IPV4 1 | ADDR_FAMILY_IPV6 2
//!  259     u8 dhcp_enabled
//!  260     u16 ip_addr[1024]       "192.0.2.2;fd00::2"
//!  2308    u16 sub_net[1024]       "255.255.255.0;/64"  (IPv4 masks dotted, IPv6 prefix lengths as /N)
//!  4356    u16 gate_way[512]       "192.0.2.1;fe80::1"
//!  5380    u16 dns_addr[1024]      "192.0.2.53"
//!  7428    end
//! ```
//!
//! Binary form: openvmm's `MessageIpAddressInfoBinary` (vm/devices/hyperv_ic_protocol/src/kvp.rs), aligned
//! to 4 after the two header bytes, so it starts at body offset 4; addresses in network byte order:
//!
//! ```text
//!  struct offset (body offset = 4 + struct offset)
//!  0       u32 ipv4_address_count, ipv6_address_count, ipv4_gateway_count, ipv6_gateway_count,
//!          ipv4_dns_server_count, ipv6_dns_server_count
//!  24      u16 adapter_id[128]
//!  280     u8 address_family (NONE 0, IPV4 1, IPV6 2, IPV4V6 3); 281 u8 dhcp_enabled; 282 u16 padding
//!  284     [u8; 4] ipv4_addresses[64]
//!  540     [u8; 16] ipv6_addresses[64]
//!  1564    [u8; 4] ipv4_subnets[64]       (one mask per IPv4 address)
//!  1820    u32 ipv6_subnets[64]           (one prefix length per IPv6 address)
//!  2076    [u8; 4] ipv4_gateways[5]
//!  2096    [u8; 16] ipv6_gateways[5]
//!  2176    [u8; 4] ipv4_dns_servers[64]
//!  2432    [u8; 16] ipv6_dns_servers[64]
//!  3456    u16 ip_address_origins[128] (IPv4 addresses' then IPv6 addresses', no gap: UNKNOWN 0, OTHER 1,
//!          STATIC 2)
//!  3712    end
//! ```
//!
//! Addresses are plain octets here (the protocol crate uses no `std::net`); [`format_ipv4`] and
//! [`format_ipv6`] write and [`parse_ipv4`]/[`parse_ipv6`] read their text forms. Parsing never panics.

use std::ops::Range;

use super::{le_u32, utf16le_units, WireError};

/// ADDR_FAMILY_IPV4.
pub const FAMILY_IPV4: u8 = 1;
/// ADDR_FAMILY_IPV6.
pub const FAMILY_IPV6: u8 = 2;

/// The body length of the string form.
pub const STRING_FORM_LEN: usize = 7428;
/// The body length the binary form needs.
pub const BINARY_FORM_LEN: usize = BINARY + 3712;

/// Where the binary struct starts in the body.
const BINARY: usize = 4;

/// Offsets of the string form in the body.
mod string {
    use std::ops::Range;
    pub const ADAPTER_ID: Range<usize> = 2..258;
    pub const FAMILY: usize = 258;
    pub const DHCP: usize = 259;
    pub const IP_ADDR: Range<usize> = 260..2308;
    pub const SUB_NET: Range<usize> = 2308..4356;
    pub const GATE_WAY: Range<usize> = 4356..5380;
    pub const DNS_ADDR: Range<usize> = 5380..7428;
}

/// Offsets of the binary form in its struct, and its array bounds.
mod binary {
    use std::ops::Range;
    pub const COUNTS: usize = 0;
    pub const ADAPTER_ID: Range<usize> = 24..280;
    pub const FAMILY: usize = 280;
    pub const DHCP: usize = 281;
    pub const IPV4_ADDRESSES: usize = 284;
    pub const IPV6_ADDRESSES: usize = 540;
    pub const IPV4_SUBNETS: usize = 1564;
    pub const IPV6_SUBNETS: usize = 1820;
    pub const IPV4_GATEWAYS: usize = 2076;
    pub const IPV6_GATEWAYS: usize = 2096;
    pub const IPV4_DNS: usize = 2176;
    pub const IPV6_DNS: usize = 2432;
    pub const ORIGINS: usize = 3456;
    pub const MAX_ADDRESSES: usize = 64;
    pub const MAX_GATEWAYS: usize = 5;
    pub const MAX_DNS: usize = 64;
}

/// Where an address came from (openvmm's IpAddressOrigin).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Origin(pub u16);

impl Origin {
    pub const UNKNOWN: Origin = Origin(0);
    /// Not static: DHCP, router advertisements.
    pub const OTHER: Origin = Origin(1);
    pub const STATIC: Origin = Origin(2);
}

/// An IPv4 address on the adapter, its mask and origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Entry {
    pub address: [u8; 4],
    pub mask: [u8; 4],
    pub origin: Origin,
}

/// An IPv6 address on the adapter, its prefix length and origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Entry {
    pub address: [u8; 16],
    pub prefix: u32,
    pub origin: Origin,
}

/// One adapter's IP settings, as either form carries them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpInfo {
    /// The MAC address (GET) or the device id (SET) the host names the adapter by.
    pub adapter_id: String,
    /// FAMILY_IPV4 | FAMILY_IPV6 bits.
    pub family: u8,
    pub dhcp_enabled: bool,
    pub ipv4: Vec<Ipv4Entry>,
    pub ipv6: Vec<Ipv6Entry>,
    pub ipv4_gateways: Vec<[u8; 4]>,
    pub ipv6_gateways: Vec<[u8; 16]>,
    pub ipv4_dns: Vec<[u8; 4]>,
    pub ipv6_dns: Vec<[u8; 16]>,
}

/// Which form a negotiated KVP message version uses: binary from 5.0 on.
pub fn binary_form(version: super::IcVersion) -> bool {
    version.major >= 5
}

fn require(body: &[u8], len: usize) -> Result<(), WireError> {
    super::require_body("kvp ip info", body, len)
}

/// A NUL-terminated UTF-16LE string area as text (up to its NUL; lenient: unpaired surrogates become
/// U+FFFD).
fn utf16_text(area: &[u8]) -> String {
    let units: Vec<u16> = utf16le_units(area).take_while(|&unit| unit != 0).collect();
    String::from_utf16_lossy(&units)
}

/// Writes `text` into a UTF-16LE area with its NUL, cut at a `;` boundary when it does not fit (the rest
/// of the area is zeroed).
fn put_utf16(area: &mut [u8], text: &str) {
    area.fill(0);
    let room = area.len() / 2 - 1;
    let mut units: Vec<u16> = text.encode_utf16().collect();
    if units.len() > room {
        let cut = units[..room]
            .iter()
            .rposition(|&unit| unit == u16::from(b';'))
            .unwrap_or(0);
        units.truncate(cut);
    }
    for (slot, unit) in area.chunks_exact_mut(2).zip(units) {
        slot.copy_from_slice(&unit.to_le_bytes());
    }
}

/// The adapter a request names, in whichever form `binary` says.
pub fn adapter_id(body: &[u8], binary: bool) -> Result<String, WireError> {
    if binary {
        require(body, BINARY_FORM_LEN)?;
        Ok(utf16_text(&body[shift(binary::ADAPTER_ID)]))
    } else {
        require(body, STRING_FORM_LEN)?;
        Ok(utf16_text(&body[string::ADAPTER_ID]))
    }
}

fn shift(range: Range<usize>) -> Range<usize> {
    range.start + BINARY..range.end + BINARY
}

/// Reads a SET_IP_INFO request (or an answer, for a host) in either form.
pub fn parse(body: &[u8], binary: bool) -> Result<IpInfo, WireError> {
    if binary {
        parse_binary(body)
    } else {
        parse_string(body)
    }
}

/// Writes `info` into `body` (a request's body, answered in place), in either form. The adapter id is left
/// as the request has it.
pub fn emit(info: &IpInfo, body: &mut [u8], binary: bool) -> Result<(), WireError> {
    if binary {
        emit_binary(info, body)
    } else {
        emit_string(info, body)
    }
}

fn parse_string(body: &[u8]) -> Result<IpInfo, WireError> {
    require(body, STRING_FORM_LEN)?;
    let list = |range: Range<usize>| -> Vec<String> {
        utf16_text(&body[range])
            .split(';')
            .map(|item| item.trim().to_string())
            .filter(|item| !item.is_empty())
            .collect()
    };
    let mut info = IpInfo {
        adapter_id: utf16_text(&body[string::ADAPTER_ID]),
        family: body[string::FAMILY],
        dhcp_enabled: body[string::DHCP] != 0,
        ..IpInfo::default()
    };
    let subnets = list(string::SUB_NET);
    let (mut v4_masks, mut v6_prefixes) = (Vec::new(), Vec::new());
    for subnet in &subnets {
        if let Some(prefix) = subnet.strip_prefix('/') {
            v6_prefixes.push(prefix.parse::<u32>().unwrap_or(0));
        } else if let Some(mask) = parse_ipv4(subnet) {
            v4_masks.push(mask);
        } else if let Some(mask) = parse_ipv6(subnet) {
            v6_prefixes.push(u128::from_be_bytes(mask).leading_ones());
        }
    }
    for address in list(string::IP_ADDR) {
        if let Some(address) = parse_ipv4(&address) {
            let mask = v4_masks.get(info.ipv4.len()).copied().unwrap_or([0; 4]);
            info.ipv4.push(Ipv4Entry {
                address,
                mask,
                origin: Origin::UNKNOWN,
            });
        } else if let Some(address) = parse_ipv6(&address) {
            let prefix = v6_prefixes.get(info.ipv6.len()).copied().unwrap_or(0);
            info.ipv6.push(Ipv6Entry {
                address,
                prefix,
                origin: Origin::UNKNOWN,
            });
        }
    }
    split_addresses(
        list(string::GATE_WAY),
        &mut info.ipv4_gateways,
        &mut info.ipv6_gateways,
    );
    split_addresses(
        list(string::DNS_ADDR),
        &mut info.ipv4_dns,
        &mut info.ipv6_dns,
    );
    Ok(info)
}

fn split_addresses(items: Vec<String>, v4: &mut Vec<[u8; 4]>, v6: &mut Vec<[u8; 16]>) {
    for item in items {
        if let Some(address) = parse_ipv4(&item) {
            v4.push(address);
        } else if let Some(address) = parse_ipv6(&item) {
            v6.push(address);
        }
    }
}

fn joined(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(";")
}

fn emit_string(info: &IpInfo, body: &mut [u8]) -> Result<(), WireError> {
    require(body, STRING_FORM_LEN)?;
    body[string::FAMILY] = info.family;
    body[string::DHCP] = u8::from(info.dhcp_enabled);
    let addresses = joined(
        info.ipv4
            .iter()
            .map(|entry| format_ipv4(entry.address))
            .chain(info.ipv6.iter().map(|entry| format_ipv6(entry.address))),
    );
    let subnets = joined(
        info.ipv4
            .iter()
            .map(|entry| format_ipv4(entry.mask))
            .chain(info.ipv6.iter().map(|entry| format!("/{}", entry.prefix))),
    );
    let gateways = joined(
        info.ipv4_gateways
            .iter()
            .map(|a| format_ipv4(*a))
            .chain(info.ipv6_gateways.iter().map(|a| format_ipv6(*a))),
    );
    let dns = joined(
        info.ipv4_dns
            .iter()
            .map(|a| format_ipv4(*a))
            .chain(info.ipv6_dns.iter().map(|a| format_ipv6(*a))),
    );
    put_utf16(&mut body[string::IP_ADDR], &addresses);
    put_utf16(&mut body[string::SUB_NET], &subnets);
    put_utf16(&mut body[string::GATE_WAY], &gateways);
    put_utf16(&mut body[string::DNS_ADDR], &dns);
    Ok(())
}

fn parse_binary(body: &[u8]) -> Result<IpInfo, WireError> {
    require(body, BINARY_FORM_LEN)?;
    let s = &body[BINARY..BINARY_FORM_LEN];
    let count = |index: usize, max: usize| {
        let at = binary::COUNTS + index * 4;
        (le_u32(s, at..at + 4) as usize).min(max)
    };
    let v4_at = |base: usize, i: usize| -> [u8; 4] {
        let mut out = [0; 4];
        out.copy_from_slice(&s[base + 4 * i..base + 4 * i + 4]);
        out
    };
    let v6_at = |base: usize, i: usize| -> [u8; 16] {
        let mut out = [0; 16];
        out.copy_from_slice(&s[base + 16 * i..base + 16 * i + 16]);
        out
    };
    let origin = |i: usize| {
        let at = binary::ORIGINS + 2 * i;
        Origin(u16::from_le_bytes([s[at], s[at + 1]]))
    };
    let (n4, n6) = (
        count(0, binary::MAX_ADDRESSES),
        count(1, binary::MAX_ADDRESSES),
    );
    Ok(IpInfo {
        adapter_id: utf16_text(&s[binary::ADAPTER_ID]),
        family: s[binary::FAMILY],
        dhcp_enabled: s[binary::DHCP] != 0,
        ipv4: (0..n4)
            .map(|i| Ipv4Entry {
                address: v4_at(binary::IPV4_ADDRESSES, i),
                mask: v4_at(binary::IPV4_SUBNETS, i),
                origin: origin(i),
            })
            .collect(),
        ipv6: (0..n6)
            .map(|i| Ipv6Entry {
                address: v6_at(binary::IPV6_ADDRESSES, i),
                prefix: le_u32(
                    s,
                    binary::IPV6_SUBNETS + 4 * i..binary::IPV6_SUBNETS + 4 * i + 4,
                ),
                origin: origin(n4 + i),
            })
            .collect(),
        ipv4_gateways: (0..count(2, binary::MAX_GATEWAYS))
            .map(|i| v4_at(binary::IPV4_GATEWAYS, i))
            .collect(),
        ipv6_gateways: (0..count(3, binary::MAX_GATEWAYS))
            .map(|i| v6_at(binary::IPV6_GATEWAYS, i))
            .collect(),
        ipv4_dns: (0..count(4, binary::MAX_DNS))
            .map(|i| v4_at(binary::IPV4_DNS, i))
            .collect(),
        ipv6_dns: (0..count(5, binary::MAX_DNS))
            .map(|i| v6_at(binary::IPV6_DNS, i))
            .collect(),
    })
}

fn emit_binary(info: &IpInfo, body: &mut [u8]) -> Result<(), WireError> {
    require(body, BINARY_FORM_LEN)?;
    let s = &mut body[BINARY..BINARY_FORM_LEN];
    // The adapter id stays; everything after it is written anew.
    s[binary::FAMILY..].fill(0);
    s[..binary::ADAPTER_ID.start].fill(0);
    s[binary::FAMILY] = info.family;
    s[binary::DHCP] = u8::from(info.dhcp_enabled);
    let ipv4 = &info.ipv4[..info.ipv4.len().min(binary::MAX_ADDRESSES)];
    let ipv6 = &info.ipv6[..info.ipv6.len().min(binary::MAX_ADDRESSES)];
    let gw4 = &info.ipv4_gateways[..info.ipv4_gateways.len().min(binary::MAX_GATEWAYS)];
    let gw6 = &info.ipv6_gateways[..info.ipv6_gateways.len().min(binary::MAX_GATEWAYS)];
    let dns4 = &info.ipv4_dns[..info.ipv4_dns.len().min(binary::MAX_DNS)];
    let dns6 = &info.ipv6_dns[..info.ipv6_dns.len().min(binary::MAX_DNS)];
    let counts = [
        ipv4.len(),
        ipv6.len(),
        gw4.len(),
        gw6.len(),
        dns4.len(),
        dns6.len(),
    ];
    for (index, count) in counts.iter().enumerate() {
        let at = binary::COUNTS + index * 4;
        s[at..at + 4].copy_from_slice(&(*count as u32).to_le_bytes());
    }
    let mut put = |at: usize, bytes: &[u8]| s[at..at + bytes.len()].copy_from_slice(bytes);
    for (i, entry) in ipv4.iter().enumerate() {
        put(binary::IPV4_ADDRESSES + 4 * i, &entry.address);
        put(binary::IPV4_SUBNETS + 4 * i, &entry.mask);
        put(binary::ORIGINS + 2 * i, &entry.origin.0.to_le_bytes());
    }
    for (i, entry) in ipv6.iter().enumerate() {
        put(binary::IPV6_ADDRESSES + 16 * i, &entry.address);
        put(binary::IPV6_SUBNETS + 4 * i, &entry.prefix.to_le_bytes());
        put(
            binary::ORIGINS + 2 * (ipv4.len() + i),
            &entry.origin.0.to_le_bytes(),
        );
    }
    for (i, address) in gw4.iter().enumerate() {
        put(binary::IPV4_GATEWAYS + 4 * i, address);
    }
    for (i, address) in gw6.iter().enumerate() {
        put(binary::IPV6_GATEWAYS + 16 * i, address);
    }
    for (i, address) in dns4.iter().enumerate() {
        put(binary::IPV4_DNS + 4 * i, address);
    }
    for (i, address) in dns6.iter().enumerate() {
        put(binary::IPV6_DNS + 16 * i, address);
    }
    Ok(())
}

/// Dotted-quad text.
pub fn format_ipv4(address: [u8; 4]) -> String {
    format!(
        "{}.{}.{}.{}",
        address[0], address[1], address[2], address[3]
    )
}

/// RFC 5952 text: lower-case hex, the longest run of two or more zero groups (the first of equal ones) as
/// `::`, an IPv4-mapped address with its last 32 bits dotted.
pub fn format_ipv6(address: [u8; 16]) -> String {
    let groups: Vec<u16> = address
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
        .collect();
    if groups[..5].iter().all(|&g| g == 0) && groups[5] == 0xffff {
        return format!(
            "::ffff:{}",
            format_ipv4([address[12], address[13], address[14], address[15]])
        );
    }
    let (mut best, mut run) = ((0usize, 0usize), (0usize, 0usize));
    for (i, &group) in groups.iter().enumerate() {
        if group == 0 {
            run = if run.1 == 0 {
                (i, 1)
            } else {
                (run.0, run.1 + 1)
            };
            if run.1 > best.1 {
                best = run;
            }
        } else {
            run = (0, 0);
        }
    }
    let hex = |range: &[u16]| {
        range
            .iter()
            .map(|g| format!("{g:x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    if best.1 < 2 {
        return hex(&groups);
    }
    format!(
        "{}::{}",
        hex(&groups[..best.0]),
        hex(&groups[best.0 + best.1..])
    )
}

/// A dotted quad; None unless `text` is exactly one.
pub fn parse_ipv4(text: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = text.split('.');
    for slot in &mut out {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *slot = part.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// An IPv6 address in any RFC 4291 text form (a trailing dotted quad included); None otherwise.
pub fn parse_ipv6(text: &str) -> Option<[u8; 16]> {
    fn groups(part: &str) -> Option<Vec<u16>> {
        if part.is_empty() {
            return Some(Vec::new());
        }
        let mut out = Vec::new();
        let pieces: Vec<&str> = part.split(':').collect();
        for (i, piece) in pieces.iter().enumerate() {
            if i == pieces.len() - 1 && piece.contains('.') {
                let v4 = parse_ipv4(piece)?;
                out.push(u16::from_be_bytes([v4[0], v4[1]]));
                out.push(u16::from_be_bytes([v4[2], v4[3]]));
            } else {
                if piece.is_empty()
                    || piece.len() > 4
                    || !piece.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return None;
                }
                out.push(u16::from_str_radix(piece, 16).ok()?);
            }
        }
        Some(out)
    }
    let all: Vec<u16> = match text.split_once("::") {
        Some((head, tail)) => {
            let (head, tail) = (groups(head)?, groups(tail)?);
            if head.len() + tail.len() > 7 {
                return None;
            }
            let mut all = head;
            all.resize(8 - tail.len(), 0);
            all.extend(tail);
            all
        }
        None => groups(text)?,
    };
    if all.len() != 8 {
        return None;
    }
    let mut out = [0u8; 16];
    for (slot, group) in out.chunks_exact_mut(2).zip(all) {
        slot.copy_from_slice(&group.to_be_bytes());
    }
    Some(out)
}

#[cfg(test)]
mod tests;
