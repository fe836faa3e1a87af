//! The Hyper-V socket address, SOCKADDR_HV, as bytes: what `bind`, `connect` and `accept` of an AF_HYPERV
//! socket take and give.
//!
//! ```text
//!  0      2        4                    20                   36
//!  +------+--------+--------------------+--------------------+
//!  |Family|Reserved| VmId (GUID)        | ServiceId (GUID)   |
//!  | u16  | u16 = 0| Data1..3 LE, Data4 | Data1..3 LE, Data4 |
//!  +------+--------+--------------------+--------------------+
//! ```
//!
//! Family is AF_HYPERV (34), the socket's protocol HV_PROTOCOL_RAW (1). Sources: hvsocket.h of the Windows
//! SDK (as windows-sys's `Win32::System::Hypervisor::SOCKADDR_HV` carries it; a test under wine compares the
//! two) and Microsoft's "Make your own integration services" (Hyper-V on Windows docs), which also lists the
//! well-known VM ids below. Linux's `struct sockaddr_hv` (the hv_sock patches) has the same layout.

use uuid::Uuid;

use hvproto::guid::ServiceId;

/// AF_HYPERV, the address family of Hyper-V sockets.
pub const AF_HYPERV: u16 = 34;
/// HV_PROTOCOL_RAW, the one protocol of an AF_HYPERV stream socket.
pub const HV_PROTOCOL_RAW: i32 = 1;
/// The size of a SOCKADDR_HV.
pub const LEN: usize = 36;

/// HV_GUID_WILDCARD (all zeros): a listener bound to it accepts every partition.
pub const HV_GUID_WILDCARD: Uuid = Uuid::nil();
/// HV_GUID_CHILDREN: a listener bound to it accepts every child VM.
pub const HV_GUID_CHILDREN: Uuid = Uuid::from_u128(0x90db8b89_0d35_4f79_8ce9_49ea0ac8b7cd);
/// HV_GUID_LOOPBACK: the connector's own partition.
pub const HV_GUID_LOOPBACK: Uuid = Uuid::from_u128(0xe0e16197_dd56_4a10_9195_5ee7a155a838);
/// HV_GUID_PARENT: the connector's parent partition (a VM's host).
pub const HV_GUID_PARENT: Uuid = Uuid::from_u128(0xa42e7cda_d03f_480c_9cc2_a4de20abb878);

/// The SOCKADDR_HV for a VM id and an hv_sock service.
pub fn encode(vm: &Uuid, service: ServiceId) -> [u8; LEN] {
    let mut bytes = [0; LEN];
    bytes[0..2].copy_from_slice(&AF_HYPERV.to_le_bytes());
    // bytes 2..4: Reserved, zero.
    bytes[4..20].copy_from_slice(&vm.to_bytes_le());
    bytes[20..36].copy_from_slice(&service.to_bytes_le());
    bytes
}

/// The VM id and service GUID of a SOCKADDR_HV (an accepted peer's), if `bytes` is one. The service may be
/// any GUID: a peer is reported as it is, not checked against the hv_sock template.
pub fn decode(bytes: &[u8]) -> Option<(Uuid, Uuid)> {
    let bytes: &[u8; LEN] = bytes.get(..LEN)?.try_into().ok()?;
    if u16::from_le_bytes([bytes[0], bytes[1]]) != AF_HYPERV {
        return None;
    }
    let guid = |range: std::ops::Range<usize>| {
        let mut raw = [0; 16];
        raw.copy_from_slice(&bytes[range]);
        Uuid::from_bytes_le(raw)
    };
    Some((guid(4..20), guid(20..36)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sockaddr_hv_is_family_reserved_and_two_mixed_endian_guids() {
        let vm = Uuid::parse_str("01234567-89ab-cdef-0011-223344556677").unwrap();
        let bytes = encode(&vm, ServiceId::from_port(0x4856_0001));
        let expected: [u8; LEN] = [
            34, 0, 0, 0, // Family AF_HYPERV, Reserved
            0x67, 0x45, 0x23, 0x01, 0xab, 0x89, 0xef,
            0xcd, // VmId Data1..Data3, little-endian
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, // VmId Data4, as written
            0x01, 0x00, 0x56, 0x48, 0xcb, 0xfa, 0xe6,
            0x11, // ServiceId: the port, then the template
            0xbd, 0x58, 0x64, 0x00, 0x6a, 0x79, 0x86, 0xd3,
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn decoding_gives_back_what_was_encoded_and_refuses_other_families_and_short_buffers() {
        let service = ServiceId::from_port(0x4856_0003);
        let bytes = encode(&HV_GUID_CHILDREN, service);
        assert_eq!(decode(&bytes), Some((HV_GUID_CHILDREN, service.to_uuid())));
        assert_eq!(decode(&bytes[..35]), None);
        let mut other = bytes;
        other[0] = 2;
        assert_eq!(decode(&other), None);
    }

    #[test]
    fn the_well_known_vm_ids_are_microsofts() {
        assert_eq!(
            HV_GUID_WILDCARD.to_string(),
            "00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(
            HV_GUID_CHILDREN.to_string(),
            "90db8b89-0d35-4f79-8ce9-49ea0ac8b7cd"
        );
        assert_eq!(
            HV_GUID_LOOPBACK.to_string(),
            "e0e16197-dd56-4a10-9195-5ee7a155a838"
        );
        assert_eq!(
            HV_GUID_PARENT.to_string(),
            "a42e7cda-d03f-480c-9cc2-a4de20abb878"
        );
    }

    /// windows-sys's SOCKADDR_HV and constants come from the Windows SDK's metadata: the layout here must be
    /// theirs, byte for byte.
    #[cfg(windows)]
    #[test]
    fn the_layout_is_the_windows_sdks() {
        use windows_sys::core::GUID;
        use windows_sys::Win32::System::Hypervisor as hv;
        assert_eq!(std::mem::size_of::<hv::SOCKADDR_HV>(), LEN);
        assert_eq!(
            windows_sys::Win32::Networking::WinSock::AF_HYPERV,
            AF_HYPERV
        );
        assert_eq!(hv::HV_PROTOCOL_RAW as i32, HV_PROTOCOL_RAW);
        for (ours, sdk) in [
            (HV_GUID_WILDCARD, hv::HV_GUID_ZERO),
            (HV_GUID_CHILDREN, hv::HV_GUID_CHILDREN),
            (HV_GUID_LOOPBACK, hv::HV_GUID_LOOPBACK),
            (HV_GUID_PARENT, hv::HV_GUID_PARENT),
        ] {
            assert_eq!(ours.as_u128(), guid_u128(&sdk));
        }
        let vm = Uuid::parse_str("01234567-89ab-cdef-0011-223344556677").unwrap();
        let service = ServiceId::from_port(0x4856_0001);
        let sdk = hv::SOCKADDR_HV {
            Family: AF_HYPERV,
            Reserved: 0,
            VmId: GUID::from_u128(vm.as_u128()),
            ServiceId: GUID::from_u128(service.to_uuid().as_u128()),
        };
        // SAFETY: SOCKADDR_HV is repr(C), 36 bytes (checked above) with no padding (u16, u16, then two
        // 16-byte GUIDs of 4-byte alignment at offsets 4 and 20), so each of its bytes is initialised, and
        // the slice lives no longer than `sdk`.
        let sdk_bytes =
            unsafe { std::slice::from_raw_parts(std::ptr::addr_of!(sdk).cast::<u8>(), LEN) };
        assert_eq!(sdk_bytes, encode(&vm, service));
    }

    #[cfg(windows)]
    fn guid_u128(guid: &windows_sys::core::GUID) -> u128 {
        let mut value = u128::from(guid.data1) << 96
            | u128::from(guid.data2) << 80
            | u128::from(guid.data3) << 64;
        for (index, byte) in guid.data4.iter().enumerate() {
            value |= u128::from(*byte) << (56 - 8 * index);
        }
        value
    }
}
