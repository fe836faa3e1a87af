//! The addresses hvhost.exe takes: `hv:VMID:SERVICE` (an AF_HYPERV socket), `vm:NAME:SERVICE` (the same,
//! with the VM named as Hyper-V Manager shows it) and `tcp:127.0.0.1:PORT`, loopback TCP for tests only
//! (wine has no AF_HYPERV: the end-to-end test relays such a port to an agent's Unix socket).
//!
//! VMID is a GUID or `wildcard`, `children`, `loopback`, `parent` (the HV_GUID_* of [`super::sockaddr`]).
//! SERVICE is a vsock port (decimal or 0x-hex) or its template GUID `<port>-facb-11e6-bd58-64006a7986d3`:
//! hvagent is a Linux guest, and hv_sock reaches a Linux guest only on template GUIDs, so
//! `hv:VMID:0x48560001` and `hv:VMID:48560001-facb-11e6-bd58-64006a7986d3` are one address.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use uuid::Uuid;

use super::sockaddr::{HV_GUID_CHILDREN, HV_GUID_LOOPBACK, HV_GUID_PARENT, HV_GUID_WILDCARD};
use hvproto::guid::{parse_port, ServiceId};

/// Where hvhost.exe listens or connects.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    /// An AF_HYPERV socket address: a partition and a service.
    HyperV { vm: Uuid, service: ServiceId },
    /// A VM by name, resolved to its GUID ([`super::vmname`]) when the socket is made.
    VmName { name: String, service: ServiceId },
    /// Loopback TCP, for tests.
    Tcp(SocketAddr),
}

/// Why an address string was refused; the text says what is accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressError(pub String);

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AddressError {}

const ACCEPTED: &str = "expected hv:VMID:SERVICE (VMID a VM's GUID, wildcard, children, loopback or \
                        parent), vm:NAME:SERVICE (SERVICE a vsock port, decimal or 0x-hex, or its template \
                        GUID) or, for tests, tcp:127.0.0.1:PORT";

/// The names of the well-known VM ids, as addresses write them.
const VM_NAMES: [(&str, Uuid); 4] = [
    ("wildcard", HV_GUID_WILDCARD),
    ("children", HV_GUID_CHILDREN),
    ("loopback", HV_GUID_LOOPBACK),
    ("parent", HV_GUID_PARENT),
];

/// A VM id: a well-known name or a GUID (braces optional, any case).
fn parse_vm(text: &str) -> Result<Uuid, AddressError> {
    if let Some((_, id)) = VM_NAMES.iter().find(|(name, _)| *name == text) {
        return Ok(*id);
    }
    let inner = text
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
        .unwrap_or(text);
    // Only the hyphenated form, as Get-VM prints it; the uuid crate would also take 32 bare digits.
    if inner.len() != 36 {
        return Err(bad_vm(text));
    }
    Uuid::parse_str(inner).map_err(|_| bad_vm(text))
}

fn bad_vm(text: &str) -> AddressError {
    AddressError(format!(
        "'{text}' is not a VM id (a GUID such as (Get-VM -Name NAME).Id prints, or wildcard, children, \
         loopback or parent)"
    ))
}

fn parse_service(text: &str, whole: &str) -> Result<ServiceId, AddressError> {
    parse_port(text)
        .map(ServiceId::from_port)
        .map_err(|error| AddressError(format!("in '{whole}': {error}")))
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Address, AddressError> {
        let refuse = || AddressError(format!("'{text}' is not an address: {ACCEPTED}"));
        let (scheme, rest) = text.split_once(':').ok_or_else(refuse)?;
        match scheme {
            "hv" => {
                let (vm, service) = rest.split_once(':').ok_or_else(refuse)?;
                Ok(Address::HyperV {
                    vm: parse_vm(vm)?,
                    service: parse_service(service, text)?,
                })
            }
            "vm" => {
                // A VM's name may hold colons; the service is after the last.
                let (name, service) = rest.rsplit_once(':').ok_or_else(refuse)?;
                if name.trim().is_empty() {
                    return Err(AddressError(format!("'{text}' names no VM: {ACCEPTED}")));
                }
                Ok(Address::VmName {
                    name: name.to_string(),
                    service: parse_service(service, text)?,
                })
            }
            "tcp" => {
                let socket: SocketAddr = rest.parse().map_err(|_| refuse())?;
                if !socket.ip().is_loopback() {
                    return Err(AddressError(format!(
                        "'{text}': tcp: addresses are for tests and only loopback (127.0.0.1, [::1]); a guest \
                         is reached with hv:VMID:SERVICE or vm:NAME:SERVICE"
                    )));
                }
                Ok(Address::Tcp(socket))
            }
            _ => Err(refuse()),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::HyperV { vm, service } => {
                f.write_str("hv:")?;
                match VM_NAMES.iter().find(|(_, id)| id == vm) {
                    Some((name, _)) => f.write_str(name)?,
                    None => write!(f, "{}", vm.hyphenated())?,
                }
                write!(f, ":{:#x}", service.port())
            }
            Address::VmName { name, service } => write!(f, "vm:{name}:{:#x}", service.port()),
            Address::Tcp(socket) => write!(f, "tcp:{socket}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: &str = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";

    fn hv(vm: Uuid, port: u32) -> Address {
        Address::HyperV {
            vm,
            service: ServiceId::from_port(port),
        }
    }

    #[test]
    fn hv_addresses_take_every_vm_id_form_and_every_service_form() {
        let id = Uuid::parse_str(VM).unwrap();
        let cases = [
            (format!("hv:{VM}:0x48560001"), hv(id, 0x4856_0001)),
            (
                format!("hv:{{{}}}:1213595649", VM.to_uppercase()),
                hv(id, 0x4856_0001),
            ),
            (
                "hv:wildcard:48560001-facb-11e6-bd58-64006a7986d3".to_string(),
                hv(HV_GUID_WILDCARD, 0x4856_0001),
            ),
            (
                "hv:children:{48560003-FACB-11E6-BD58-64006A7986D3}".to_string(),
                hv(HV_GUID_CHILDREN, 0x4856_0003),
            ),
            ("hv:loopback:0x10".to_string(), hv(HV_GUID_LOOPBACK, 0x10)),
            ("hv:parent:5000".to_string(), hv(HV_GUID_PARENT, 5000)),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<Address>(), Ok(expected), "{text}");
        }
    }

    #[test]
    fn a_port_and_its_template_guid_are_the_same_address() {
        let by_port: Address = format!("hv:{VM}:0x48560001").parse().unwrap();
        let by_guid: Address = format!("hv:{VM}:48560001-facb-11e6-bd58-64006a7986d3")
            .parse()
            .unwrap();
        assert_eq!(by_port, by_guid);
    }

    #[test]
    fn vm_names_keep_their_colons_and_spaces_and_tcp_is_loopback_only() {
        assert_eq!(
            "vm:web 01:db:0x48560002".parse::<Address>(),
            Ok(Address::VmName {
                name: "web 01:db".to_string(),
                service: ServiceId::from_port(0x4856_0002)
            })
        );
        assert_eq!(
            "tcp:127.0.0.1:4000".parse::<Address>(),
            Ok(Address::Tcp("127.0.0.1:4000".parse().unwrap()))
        );
        assert_eq!(
            "tcp:[::1]:4000".parse::<Address>(),
            Ok(Address::Tcp("[::1]:4000".parse().unwrap()))
        );
        let error = "tcp:10.0.0.1:4000".parse::<Address>().unwrap_err();
        assert!(error.0.contains("only loopback"), "{error}");
    }

    #[test]
    fn display_round_trips_with_the_well_known_names() {
        for text in [
            format!("hv:{VM}:0x48560001"),
            "hv:children:0x48560001".to_string(),
            "hv:wildcard:0x5".to_string(),
            "hv:loopback:0x5".to_string(),
            "hv:parent:0x5".to_string(),
            "vm:my vm:0x48560003".to_string(),
            "tcp:127.0.0.1:4000".to_string(),
        ] {
            let address: Address = text.parse().unwrap();
            assert_eq!(address.to_string(), text);
        }
        let zero: Address = "hv:00000000-0000-0000-0000-000000000000:1".parse().unwrap();
        assert_eq!(zero.to_string(), "hv:wildcard:0x1");
    }

    #[test]
    fn bad_addresses_say_what_is_accepted() {
        for text in [
            "",
            "hv",
            "hv:children",
            "hv:kids:1",
            "hv:3f2504e04f8911d39a0c0305e82c3301:1",
            "hv:children:x",
            "vm::1",
            "vm: :1",
            "vm:name",
            "tcp:localhost:1",
            "unix:/run/x.sock",
            "vsock:host:1",
        ] {
            let error = text.parse::<Address>().unwrap_err();
            assert!(!error.0.is_empty(), "{text}");
        }
        let error = "hv:children:999E53D4-3D5C-4C3E-8779-BED06EC056E1"
            .parse::<Address>()
            .unwrap_err();
        assert!(
            error.0.contains("cannot be reached over hv_sock"),
            "{error}"
        );
        assert!("vsock:host:1"
            .parse::<Address>()
            .unwrap_err()
            .0
            .contains("hv:VMID:SERVICE"));
    }
}
