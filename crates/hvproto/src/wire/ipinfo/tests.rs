use super::*;

fn sample() -> IpInfo {
    IpInfo {
        adapter_id: "00:15:5D:00:01:02".into(),
        family: FAMILY_IPV4 | FAMILY_IPV6,
        dhcp_enabled: true,
        ipv4: vec![Ipv4Entry {
            address: [192, 0, 2, 2],
            mask: [255, 255, 255, 0],
            origin: Origin::OTHER,
        }],
        ipv6: vec![
            Ipv6Entry {
                address: parse_ipv6("fd00::2").unwrap(),
                prefix: 64,
                origin: Origin::STATIC,
            },
            Ipv6Entry {
                address: parse_ipv6("fe80::fc:ff:fe00:1").unwrap(),
                prefix: 64,
                origin: Origin::OTHER,
            },
        ],
        ipv4_gateways: vec![[192, 0, 2, 1]],
        ipv6_gateways: vec![parse_ipv6("fe80::1").unwrap()],
        ipv4_dns: vec![[192, 0, 2, 53], [198, 51, 100, 1]],
        ipv6_dns: vec![parse_ipv6("2001:db8::53").unwrap()],
    }
}

fn utf16_at(body: &[u8], at: usize, len: usize) -> String {
    utf16_text(&body[at..at + len])
}

#[test]
fn the_string_form_is_linuxs_struct_hv_kvp_ip_msg_at_its_offsets() {
    let mut body = vec![0u8; STRING_FORM_LEN];
    body[0] = 4;
    put_utf16(&mut body[2..258], "00:15:5D:00:01:02");
    assert_eq!(adapter_id(&body, false).unwrap(), "00:15:5D:00:01:02");
    emit(&sample(), &mut body, false).unwrap();
    assert_eq!(body[0], 4, "the header is the request's");
    assert_eq!((body[258], body[259]), (3, 1));
    assert_eq!(
        utf16_at(&body, 260, 2048),
        "192.0.2.2;fd00::2;fe80::fc:ff:fe00:1"
    );
    assert_eq!(utf16_at(&body, 2308, 2048), "255.255.255.0;/64;/64");
    assert_eq!(utf16_at(&body, 4356, 1024), "192.0.2.1;fe80::1");
    assert_eq!(
        utf16_at(&body, 5380, 2048),
        "192.0.2.53;198.51.100.1;2001:db8::53"
    );
    let back = parse(&body, false).unwrap();
    let mut expected = sample();
    for entry in &mut expected.ipv4 {
        entry.origin = Origin::UNKNOWN;
    }
    for entry in &mut expected.ipv6 {
        entry.origin = Origin::UNKNOWN;
    }
    assert_eq!(back, expected, "the string form has no origins");
}

#[test]
fn the_binary_form_is_openvmms_message_ip_address_info_binary_at_body_offset_4() {
    let mut body = vec![0u8; 2 + 0x1d02];
    body[0] = 4;
    put_utf16(&mut body[4 + 24..4 + 280], "00-15-5D-00-01-02");
    assert_eq!(adapter_id(&body, true).unwrap(), "00-15-5D-00-01-02");
    emit(&sample(), &mut body, true).unwrap();
    let u32_at = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().unwrap());
    assert_eq!([4, 8, 12, 16, 20, 24].map(u32_at), [1, 2, 1, 1, 2, 1]);
    assert_eq!(
        utf16_at(&body, 28, 256),
        "00-15-5D-00-01-02",
        "the adapter id stays"
    );
    assert_eq!((body[284], body[285]), (3, 1));
    assert_eq!(body[288..292], [192, 0, 2, 2]);
    assert_eq!(body[544..560], parse_ipv6("fd00::2").unwrap());
    assert_eq!(body[1568..1572], [255, 255, 255, 0]);
    assert_eq!((u32_at(1824), u32_at(1828)), (64, 64));
    assert_eq!(body[2080..2084], [192, 0, 2, 1]);
    assert_eq!(body[2100..2116], parse_ipv6("fe80::1").unwrap());
    assert_eq!(body[2180..2188], [192, 0, 2, 53, 198, 51, 100, 1]);
    assert_eq!(body[2436..2452], parse_ipv6("2001:db8::53").unwrap());
    // Origins: the IPv4 address's, then the IPv6 addresses', no gap.
    assert_eq!(body[3460..3466], [1, 0, 2, 0, 1, 0]);
    let mut expected = sample();
    expected.adapter_id = "00-15-5D-00-01-02".into();
    assert_eq!(parse(&body, true).unwrap(), expected);
}

#[test]
fn short_bodies_are_refused_and_counts_beyond_the_arrays_are_bounded() {
    assert!(adapter_id(&[4, 0, 0], false).is_err());
    assert!(parse(&vec![0; BINARY_FORM_LEN - 1], true).is_err());
    assert!(emit(&sample(), &mut vec![0; STRING_FORM_LEN - 1], false).is_err());
    let mut body = vec![0u8; BINARY_FORM_LEN];
    body[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    body[12..16].copy_from_slice(&1000u32.to_le_bytes());
    let info = parse(&body, true).unwrap();
    assert_eq!((info.ipv4.len(), info.ipv4_gateways.len()), (64, 5));
}

#[test]
fn a_list_too_long_for_its_area_is_cut_between_items() {
    let mut info = sample();
    info.ipv4_gateways = vec![[203, 0, 113, 254]; 200];
    let mut body = vec![0u8; STRING_FORM_LEN];
    emit(&info, &mut body, false).unwrap();
    let gateways = utf16_at(&body, 4356, 1024);
    assert!(
        gateways.len() < 512 && gateways.ends_with("203.0.113.254"),
        "{gateways}"
    );
}

#[test]
fn addresses_format_and_parse_as_rfc_5952_writes_them() {
    for (text, canonical) in [
        ("::", "::"),
        ("::1", "::1"),
        ("fe80::fc:ff:fe00:1", "fe80::fc:ff:fe00:1"),
        ("2001:DB8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
        ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),
        ("1:0:0:2:0:0:0:3", "1:0:0:2::3"),
        ("::ffff:192.0.2.1", "::ffff:192.0.2.1"),
        ("fd00:0:0:0:0:0:0:2", "fd00::2"),
    ] {
        assert_eq!(format_ipv6(parse_ipv6(text).unwrap()), canonical, "{text}");
    }
    for bad in [
        "",
        ":",
        "1::2::3",
        "12345::",
        "1:2:3:4:5:6:7:8:9",
        "g::",
        "1:2:3:4:5:6:7",
        "::1.2.3",
    ] {
        assert_eq!(parse_ipv6(bad), None, "{bad}");
    }
    assert_eq!(parse_ipv4("192.0.2.255"), Some([192, 0, 2, 255]));
    for bad in [
        "",
        "1.2.3",
        "1.2.3.4.5",
        "256.1.1.1",
        "1..2.3",
        "+1.2.3.4",
        " 1.2.3.4",
    ] {
        assert_eq!(parse_ipv4(bad), None, "{bad}");
    }
    assert_eq!(format_ipv4([10, 0, 0, 1]), "10.0.0.1");
}

proptest::proptest! {
    #[test]
    fn parsing_any_body_never_panics_and_what_is_emitted_parses_back(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8000),
        octets in proptest::collection::vec(proptest::prelude::any::<[u8; 16]>(), 0..8),
        binary in proptest::prelude::any::<bool>(),
    ) {
        let _ = parse(&bytes, binary);
        let _ = adapter_id(&bytes, binary);
        let text = format_ipv6(octets.first().copied().unwrap_or([0; 16]));
        proptest::prop_assert_eq!(parse_ipv6(&text), Some(octets.first().copied().unwrap_or([0; 16])));
        let info = IpInfo {
            adapter_id: String::new(),
            family: 2,
            dhcp_enabled: false,
            ipv6: octets.iter().map(|&address| Ipv6Entry { address, prefix: 64, origin: Origin::STATIC }).collect(),
            ..IpInfo::default()
        };
        let mut body = vec![0u8; STRING_FORM_LEN];
        emit(&info, &mut body, binary).unwrap();
        let mut back = parse(&body, binary).unwrap();
        if !binary {
            for entry in &mut back.ipv6 {
                entry.origin = Origin::STATIC;
            }
        }
        proptest::prop_assert_eq!(back, info);
    }
}
