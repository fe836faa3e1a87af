//! Service addresses as users write them: `vsock:CID:PORT`, `unix:PATH`, and (host side only)
//! `hybrid:PATH:PORT` for the Unix socket of Firecracker, Cloud Hypervisor or vhost-device-vsock.
//!
//! CID is a number, `host` (2) or `any` (VMADDR_CID_ANY); PORT is decimal, `0x` hex or a template GUID.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use hvproto::guid::{parse_port, ServiceId};

/// VMADDR_CID_ANY: bind to whatever CID this machine has.
pub const CID_ANY: u32 = u32::MAX;
/// VMADDR_CID_HOST: the hypervisor host, the only CID a Hyper-V guest can reach.
pub const CID_HOST: u32 = 2;
/// VMADDR_CID_LOCAL: loopback, where the vsock_loopback module is loaded.
pub const CID_LOCAL: u32 = 1;

/// Where a service connects or listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    Vsock {
        cid: u32,
        port: u32,
    },
    Unix(PathBuf),
    /// A host-side Unix socket that speaks `CONNECT PORT\n` / `OK ...\n` before the stream.
    Hybrid {
        path: PathBuf,
        port: u32,
    },
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

const ACCEPTED: &str =
    "expected vsock:CID:PORT (CID a number, host or any; PORT decimal, 0x-hex or a \
                        template GUID), unix:PATH or hybrid:PATH:PORT";

fn parse_cid(text: &str) -> Result<u32, AddressError> {
    match text {
        "host" => Ok(CID_HOST),
        "any" => Ok(CID_ANY),
        "local" => Ok(CID_LOCAL),
        _ => hvproto::guid::parse_port_number(text).ok_or_else(|| {
            AddressError(format!(
                "'{text}' is not a vsock CID (a number, host, local or any)"
            ))
        }),
    }
}

fn parse_port_of(text: &str, whole: &str) -> Result<u32, AddressError> {
    parse_port(text).map_err(|error| AddressError(format!("in '{whole}': {error}")))
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Address, AddressError> {
        let refuse = || AddressError(format!("'{text}' is not an address: {ACCEPTED}"));
        let (scheme, rest) = text.split_once(':').ok_or_else(refuse)?;
        match scheme {
            "vsock" => {
                let (cid, port) = rest.split_once(':').ok_or_else(refuse)?;
                Ok(Address::Vsock {
                    cid: parse_cid(cid)?,
                    port: parse_port_of(port, text)?,
                })
            }
            "unix" if !rest.is_empty() => Ok(Address::Unix(PathBuf::from(rest))),
            "hybrid" => {
                let (path, port) = rest.rsplit_once(':').ok_or_else(refuse)?;
                if path.is_empty() {
                    return Err(refuse());
                }
                Ok(Address::Hybrid {
                    path: PathBuf::from(path),
                    port: parse_port_of(port, text)?,
                })
            }
            _ => Err(refuse()),
        }
    }
}

impl Address {
    /// The vsock port, for vsock and hybrid addresses.
    pub fn port(&self) -> Option<u32> {
        match self {
            Address::Vsock { port, .. } | Address::Hybrid { port, .. } => Some(*port),
            Address::Unix(_) => None,
        }
    }

    /// The Hyper-V service GUID a host registers for this address, for vsock and hybrid addresses.
    pub fn service_id(&self) -> Option<ServiceId> {
        self.port().map(ServiceId::from_port)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Vsock { cid, port } => {
                f.write_str("vsock:")?;
                match *cid {
                    CID_HOST => f.write_str("host")?,
                    CID_ANY => f.write_str("any")?,
                    CID_LOCAL => f.write_str("local")?,
                    other => write!(f, "{other}")?,
                }
                write!(f, ":{port:#x}")
            }
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
            Address::Hybrid { path, port } => write!(f, "hybrid:{}:{port:#x}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_addresses_parse_every_cid_and_port_form() {
        let cases = [
            ("vsock:host:0x48560001", CID_HOST, 0x4856_0001),
            ("vsock:2:1213595649", CID_HOST, 0x4856_0001),
            (
                "vsock:any:48560001-facb-11e6-bd58-64006a7986d3",
                CID_ANY,
                0x4856_0001,
            ),
            (
                "vsock:local:{00000AC9-FACB-11E6-BD58-64006A7986D3}",
                CID_LOCAL,
                2761,
            ),
            ("vsock:0x10:5000", 16, 5000),
        ];
        for (text, cid, port) in cases {
            assert_eq!(
                text.parse::<Address>(),
                Ok(Address::Vsock { cid, port }),
                "{text}"
            );
        }
    }

    #[test]
    fn unix_and_hybrid_addresses_parse() {
        assert_eq!(
            "unix:/run/x.sock".parse::<Address>(),
            Ok(Address::Unix("/run/x.sock".into()))
        );
        assert_eq!(
            "hybrid:/tmp/v.sock:0x48560001".parse::<Address>(),
            Ok(Address::Hybrid {
                path: "/tmp/v.sock".into(),
                port: 0x4856_0001
            })
        );
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "vsock:host:0x48560001",
            "vsock:any:0xac9",
            "vsock:7:0x10",
            "unix:rel/x",
            "hybrid:/a:b:0x5",
        ] {
            let address: Address = text.parse().unwrap();
            assert_eq!(address.to_string(), text);
            assert_eq!(address.to_string().parse::<Address>().unwrap(), address);
        }
    }

    #[test]
    fn bad_addresses_say_what_is_accepted() {
        for text in [
            "",
            "vsock",
            "vsock:host",
            "tcp:1:2",
            "unix:",
            "hybrid::5",
            "vsock:foo:1",
            "vsock:host:x",
        ] {
            let error = text.parse::<Address>().unwrap_err();
            assert!(!error.0.is_empty(), "{text}");
        }
        let error = "vsock:host:999E53D4-3D5C-4C3E-8779-BED06EC056E1"
            .parse::<Address>()
            .unwrap_err();
        assert!(
            error.0.contains("cannot be reached over hv_sock"),
            "{error}"
        );
        assert!("tcp:1:2"
            .parse::<Address>()
            .unwrap_err()
            .0
            .contains("vsock:CID:PORT"));
    }

    #[test]
    fn service_id_follows_the_port() {
        let address: Address = "vsock:host:0x48560001".parse().unwrap();
        assert_eq!(
            address.service_id().unwrap().to_string(),
            "48560001-facb-11e6-bd58-64006a7986d3"
        );
        assert_eq!("unix:/x".parse::<Address>().unwrap().service_id(), None);
    }
}
