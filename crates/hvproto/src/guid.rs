//! Service addressing: the hv_sock GUID template `<port>-facb-11e6-bd58-64006a7986d3` and the vsock port it
//! carries (docs/PROTOCOL.md §1.2, Linux `net/vmw_vsock/hyperv_transport.c`).
//!
//! On Hyper-V every AF_VSOCK endpoint is a service GUID whose Data1 is the port and whose Data2..Data4 equal
//! the template. The kernel only compares bytes 4..16 of the 16-byte memory layout, so any u32 is a port, and a
//! GUID that does not follow the template can never reach a Linux guest.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// Data2 of the hv_sock template.
const TEMPLATE_DATA2: u16 = 0xfacb;
/// Data3 of the hv_sock template.
const TEMPLATE_DATA3: u16 = 0x11e6;
/// Data4 of the hv_sock template.
const TEMPLATE_DATA4: [u8; 8] = [0xbd, 0x58, 0x64, 0x00, 0x6a, 0x79, 0x86, 0xd3];

/// The template in its string form, for error messages and docs.
pub const TEMPLATE: &str = "<port>-facb-11e6-bd58-64006a7986d3";

/// A Hyper-V service id that an hv_sock endpoint can use: the template GUID with the vsock port in Data1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId {
    port: u32,
}

/// Why a string is not a usable service id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuidError {
    /// The text is not a GUID at all.
    Malformed(String),
    /// A well-formed GUID whose Data2..Data4 differ from the hv_sock template.
    NotTemplate(String),
}

impl fmt::Display for GuidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuidError::Malformed(text) => write!(
                f,
                "'{text}' is not a GUID (expected 8-4-4-4-12 hex digits, braces optional)"
            ),
            GuidError::NotTemplate(text) => write!(
                f,
                "GUID {text} cannot be reached over hv_sock: a Linux guest can only use service GUIDs of the \
                 form {TEMPLATE}, whose first 8 hex digits are the vsock port"
            ),
        }
    }
}

impl std::error::Error for GuidError {}

impl ServiceId {
    /// The service id for a vsock port.
    pub const fn from_port(port: u32) -> Self {
        ServiceId { port }
    }

    /// The vsock port this service id carries.
    pub const fn port(self) -> u32 {
        self.port
    }

    /// The GUID in its usual string form's field order.
    pub fn to_uuid(self) -> Uuid {
        Uuid::from_fields(self.port, TEMPLATE_DATA2, TEMPLATE_DATA3, &TEMPLATE_DATA4)
    }

    /// The 16-byte Windows `GUID` / Linux `guid_t` memory layout (Data1..Data3 little-endian), as the kernel
    /// and a SOCKADDR_HV carry it. Bytes 0..4 are the port, little-endian.
    pub fn to_bytes_le(self) -> [u8; 16] {
        self.to_uuid().to_bytes_le()
    }

    /// The service id for a GUID, if it follows the hv_sock template.
    pub fn from_uuid(uuid: &Uuid) -> Option<Self> {
        let (data1, data2, data3, data4) = uuid.as_fields();
        (data2 == TEMPLATE_DATA2 && data3 == TEMPLATE_DATA3 && *data4 == TEMPLATE_DATA4)
            .then_some(ServiceId { port: data1 })
    }

    /// Parses the memory layout, checking bytes 4..16 as the kernel does.
    pub fn from_bytes_le(bytes: [u8; 16]) -> Option<Self> {
        Self::from_uuid(&Uuid::from_bytes_le(bytes))
    }
}

impl FromStr for ServiceId {
    type Err = GuidError;

    /// Accepts `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in any case, with or without surrounding braces.
    fn from_str(text: &str) -> Result<Self, GuidError> {
        let trimmed = text.trim();
        let inner = trimmed
            .strip_prefix('{')
            .and_then(|rest| rest.strip_suffix('}'))
            .unwrap_or(trimmed);
        // Only the hyphenated form is a GUID in Windows tooling; the uuid crate would also take 32 bare digits.
        if inner.len() != 36 {
            return Err(GuidError::Malformed(text.to_string()));
        }
        let uuid = Uuid::parse_str(inner).map_err(|_| GuidError::Malformed(text.to_string()))?;
        ServiceId::from_uuid(&uuid).ok_or_else(|| GuidError::NotTemplate(text.to_string()))
    }
}

impl fmt::Display for ServiceId {
    /// Lowercase hyphenated form without braces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_uuid().hyphenated())
    }
}

/// Parses a port written in decimal or `0x` hex.
pub fn parse_port_number(text: &str) -> Option<u32> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() => u32::from_str_radix(hex, 16).ok(),
        Some(_) => None,
        None if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => text.parse().ok(),
        None => None,
    }
}

/// Parses a port given as decimal, `0x` hex or a template GUID.
pub fn parse_port(text: &str) -> Result<u32, GuidError> {
    if let Some(port) = parse_port_number(text) {
        return Ok(port);
    }
    text.parse::<ServiceId>().map(ServiceId::port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_2761_maps_to_its_known_guid_and_back() {
        let id = ServiceId::from_port(2761);
        assert_eq!(id.to_string(), "00000ac9-facb-11e6-bd58-64006a7986d3");
        assert_eq!(
            "00000ac9-facb-11e6-bd58-64006a7986d3"
                .parse::<ServiceId>()
                .unwrap()
                .port(),
            2761
        );
    }

    #[test]
    fn heartbeat_port_maps_to_its_known_guid_and_back() {
        let id = ServiceId::from_port(0x4856_0001);
        assert_eq!(id.to_string(), "48560001-facb-11e6-bd58-64006a7986d3");
        let back: ServiceId = "48560001-FACB-11E6-BD58-64006A7986D3".parse().unwrap();
        assert_eq!(back.port(), 0x4856_0001);
    }

    #[test]
    fn memory_layout_starts_with_the_port_little_endian_then_the_template() {
        let bytes = ServiceId::from_port(0x4856_0001).to_bytes_le();
        assert_eq!(&bytes[0..4], &0x4856_0001u32.to_le_bytes());
        assert_eq!(&bytes[4..8], &[0xcb, 0xfa, 0xe6, 0x11]);
        assert_eq!(&bytes[8..16], &TEMPLATE_DATA4);
        assert_eq!(
            ServiceId::from_bytes_le(bytes),
            Some(ServiceId::from_port(0x4856_0001))
        );
    }

    #[test]
    fn memory_layout_with_a_foreign_tail_is_refused() {
        let mut bytes = ServiceId::from_port(1).to_bytes_le();
        bytes[15] ^= 1;
        assert_eq!(ServiceId::from_bytes_le(bytes), None);
    }

    #[test]
    fn braces_and_case_are_accepted() {
        for text in [
            "{00000AC9-FACB-11E6-BD58-64006A7986D3}",
            "{00000ac9-facb-11e6-bd58-64006a7986d3}",
            " 00000Ac9-FaCb-11e6-bD58-64006a7986d3 ",
        ] {
            assert_eq!(text.parse::<ServiceId>().unwrap().port(), 2761, "{text}");
        }
    }

    #[test]
    fn vm_session_service_guid_is_refused_naming_the_template() {
        let err = "999E53D4-3D5C-4C3E-8779-BED06EC056E1"
            .parse::<ServiceId>()
            .unwrap_err();
        assert!(matches!(err, GuidError::NotTemplate(_)));
        let text = err.to_string();
        assert!(text.contains("facb-11e6-bd58-64006a7986d3"), "{text}");
        assert!(text.contains("cannot be reached over hv_sock"), "{text}");
    }

    #[test]
    fn malformed_guids_are_refused() {
        for text in [
            "",
            "{}",
            "00000ac9facb11e6bd5864006a7986d3",
            "00000ac9-facb-11e6-bd58-64006a7986d",
            "{00000ac9-facb-11e6-bd58-64006a7986d3",
            "g0000ac9-facb-11e6-bd58-64006a7986d3",
        ] {
            assert!(
                matches!(text.parse::<ServiceId>(), Err(GuidError::Malformed(_))),
                "{text}"
            );
        }
    }

    #[test]
    fn ports_parse_from_decimal_hex_and_guid() {
        assert_eq!(parse_port("2761"), Ok(2761));
        assert_eq!(parse_port("0x48560001"), Ok(0x4856_0001));
        assert_eq!(parse_port("0XACB"), Ok(0xacb));
        assert_eq!(
            parse_port("48560004-facb-11e6-bd58-64006a7986d3"),
            Ok(0x4856_0004)
        );
        assert!(parse_port("0x").is_err());
        assert!(parse_port("4294967296").is_err());
        assert!(parse_port("-1").is_err());
        assert!(parse_port("+5").is_err());
    }

    #[test]
    fn every_u32_port_round_trips_through_text_and_memory_layout() {
        for port in [0, 1, 1023, 1024, 0x7fff_ffff, 0x8000_0000, u32::MAX] {
            let id = ServiceId::from_port(port);
            assert_eq!(id.to_string().parse::<ServiceId>(), Ok(id));
            assert_eq!(ServiceId::from_bytes_le(id.to_bytes_le()), Some(id));
        }
    }
}
