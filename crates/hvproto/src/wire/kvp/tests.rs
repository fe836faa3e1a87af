use proptest::prelude::*;

use super::*;

fn get(pool: Pool, key: &str) -> KvpMessage {
    KvpMessage::new(
        Operation::GET,
        pool,
        KvpBody::Value(ValueRecord::new(value_type::STRING, &utf16(key), &[])),
    )
}

#[test]
fn fields_sit_at_the_kernel_struct_offsets() {
    let mut message = KvpMessage::new(
        Operation::ENUMERATE,
        Pool::AUTO,
        KvpBody::Enumerate {
            index: 7,
            record: ValueRecord::string("OSName", "Debian"),
        },
    );
    message.pad = [0xAA, 0xBB];
    let body = message.to_body();
    assert_eq!(body.len(), 2580);
    assert_eq!(&body[0..4], &[3, 2, 0xAA, 0xBB]);
    assert_eq!(&body[4..8], &7u32.to_le_bytes());
    assert_eq!(&body[8..12], &1u32.to_le_bytes(), "value_type REG_SZ");
    assert_eq!(
        &body[12..16],
        &14u32.to_le_bytes(),
        "key_size: 6 units + NUL"
    );
    assert_eq!(
        &body[16..20],
        &14u32.to_le_bytes(),
        "value_size: 6 units + NUL"
    );
    assert_eq!(&body[20..24], &[b'O', 0, b'S', 0]);
    assert_eq!(&body[532..536], &[b'D', 0, b'e', 0]);
    assert_eq!(KvpMessage::parse(&body).unwrap(), message);

    let body = get(Pool::EXTERNAL, "k").to_body();
    assert_eq!(body.len(), 2576);
    assert_eq!(&body[8..12], &4u32.to_le_bytes(), "key_size at record + 4");
    assert_eq!(&body[16..20], &[b'k', 0, 0, 0], "key at record + 12");

    let delete = KvpMessage::new(
        Operation::DELETE,
        Pool::GUEST,
        KvpBody::Delete {
            key_size: 4,
            key_area: utf16_bytes(&utf16("k")),
        },
    );
    let body = delete.to_body();
    assert_eq!(body.len(), 520);
    assert_eq!(&body[0..2], &[2, 1]);
    assert_eq!(&body[4..8], &4u32.to_le_bytes());
    assert_eq!(&body[8..12], &[b'k', 0, 0, 0]);
}

#[test]
fn short_bodies_are_refused_and_long_ones_keep_their_tail() {
    let body = get(Pool::EXTERNAL, "key").to_body();
    assert!(matches!(
        KvpMessage::parse(&body[..2575]),
        Err(WireError::BodyTooShort { needed: 2576, .. })
    ));
    assert!(KvpMessage::parse(&[3, 2, 0]).is_err());
    let mut long = body.clone();
    long.extend_from_slice(&[9; 100]);
    let parsed = KvpMessage::parse(&long).unwrap();
    assert_eq!(parsed.trailing, vec![9; 100]);
    assert_eq!(parsed.to_body(), long);
    let other = KvpMessage::parse(&[5, 0, 0, 0, 1, 2, 3]).unwrap();
    assert_eq!(other.body, KvpBody::Other(vec![1, 2, 3]));
}

#[test]
fn keys_end_at_the_first_nul_or_at_key_size() {
    let area = utf16_bytes(&utf16("abc"));
    assert_eq!(key_units(&area, 8).unwrap(), utf16("abc"));
    // No terminator within key_size: the key is all of it.
    assert_eq!(key_units(&area, 4).unwrap(), utf16("ab"));
    // Garbage after the terminator is not part of the key.
    let mut padded = area.clone();
    padded.extend_from_slice(&[b'x', 0, b'y', 0]);
    assert_eq!(key_units(&padded, 12).unwrap(), utf16("abc"));
}

#[test]
fn bad_key_sizes_and_empty_keys_are_errors() {
    let area = vec![0x41u8; MAX_KEY_SIZE];
    assert_eq!(key_units(&area, 0), Err(KvpError::KeySize(0)));
    assert_eq!(key_units(&area, 3), Err(KvpError::KeySize(3)));
    assert_eq!(key_units(&area, 514), Err(KvpError::KeySize(514)));
    assert_eq!(key_units(&area, u32::MAX), Err(KvpError::KeySize(u32::MAX)));
    assert_eq!(key_units(&area, 512).unwrap().len(), 256);
    assert_eq!(key_units(&[0, 0, 0x41, 0], 4), Err(KvpError::EmptyKey));
}

#[test]
fn unpaired_surrogates_are_kept_and_shown_replaced() {
    let units = vec![0x0041, 0xD800, 0x0042, 0xDC00];
    let area = utf16_bytes(&units);
    assert_eq!(key_units(&area, 8).unwrap(), units);
    assert_eq!(lossy(&units), "A\u{fffd}B\u{fffd}");
    assert_eq!(
        display_value(value_type::STRING, &area),
        "A\u{fffd}B\u{fffd}"
    );
}

#[test]
fn value_sizes_beyond_the_area_are_errors() {
    let mut record = ValueRecord::string("k", "v");
    record.value_size = 2049;
    assert_eq!(record.value(), Err(KvpError::ValueSize(2049)));
    record.value_size = 2048;
    assert_eq!(record.value().unwrap().len(), 2048);
}

#[test]
fn values_display_by_type() {
    assert_eq!(display_value(value_type::DWORD, &7u32.to_le_bytes()), "7");
    assert_eq!(
        display_value(value_type::QWORD, &(1u64 << 40).to_le_bytes()),
        "1099511627776"
    );
    assert_eq!(display_value(99, &[0xde, 0xad]), "dead");
    assert_eq!(display_value(value_type::DWORD, &[1]), "01");
}

#[test]
fn long_strings_are_cut_to_fit_with_their_terminator() {
    let long = "x".repeat(5000);
    let record = ValueRecord::string(&long, &long);
    assert_eq!(record.key_size as usize, MAX_KEY_SIZE);
    assert_eq!(record.value_size as usize, MAX_VALUE_SIZE);
    assert_eq!(record.key().unwrap().len(), MAX_KEY_SIZE / 2 - 1);
    assert_eq!(&record.value().unwrap()[MAX_VALUE_SIZE - 2..], &[0, 0]);
}

#[test]
fn long_strings_are_never_cut_inside_a_surrogate_pair_or_after_a_nul() {
    // 1022 units of 'x' then an emoji (two units): the pair does not fit beside the NUL, so it is left out.
    let text = format!("{}\u{1F600}", "x".repeat(MAX_VALUE_SIZE / 2 - 2));
    let record = ValueRecord::string("k", &text);
    let value = record.value().unwrap();
    assert_eq!(value.len(), MAX_VALUE_SIZE - 2);
    assert_eq!(
        canonical_value(value_type::STRING, value),
        Ok((value_type::STRING, value.to_vec()))
    );
    let record = ValueRecord::string("k", "before\0after");
    assert_eq!(
        display_value(record.value_type, record.value().unwrap()),
        "before"
    );
    assert_eq!(record.value_size, 14);
}

#[test]
fn canonical_rules_are_openvmms_record_checks() {
    let key = utf16_bytes(&utf16("key"));
    assert_eq!(canonical_key(&key, 8), Ok(utf16("key")));
    assert_eq!(canonical_key(&key, 6), Err(KvpError::KeyNotTerminated));
    assert_eq!(
        canonical_key(&utf16_bytes(&[0xD800]), 4),
        Err(KvpError::KeyNotUtf16)
    );
    assert_eq!(canonical_value(1, &[0x41, 0]), Ok((1, vec![0x41, 0, 0, 0])));
    assert_eq!(canonical_value(1, &[0x41]), Err(KvpError::StringSize(1)));
    assert_eq!(canonical_value(5, &[0; 4]), Err(KvpError::ValueType(5)));
    assert_eq!(
        canonical_value(value_type::DWORD, &[0; 8]),
        Err(KvpError::NumberSize {
            value_type: 4,
            size: 8
        })
    );
    assert_eq!(
        canonical_value(value_type::LINUX_U64, &[1; 8]),
        Ok((11, vec![1; 8]))
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn random_bodies_never_panic_and_round_trip(
        operation in 0u8..7,
        pool in any::<u8>(),
        rest in proptest::collection::vec(any::<u8>(), 0..2700),
    ) {
        let mut body = vec![operation, pool, 0, 0];
        body.extend_from_slice(&rest);
        if let Ok(message) = KvpMessage::parse(&body) {
            prop_assert_eq!(message.to_body(), body);
            if let Some(record) = message.record() {
                let _ = record.key();
                let _ = record.value();
                let _ = display_value(record.value_type, &record.value_area);
            }
            if let KvpBody::Delete { key_size, key_area } = &message.body {
                let _ = key_units(key_area, *key_size);
            }
        }
    }

    #[test]
    fn records_round_trip(
        value_type in any::<u32>(),
        key in proptest::collection::vec(1u16.., 1..255),
        value in proptest::collection::vec(any::<u8>(), 0..2048),
        index in any::<u32>(),
    ) {
        let record = ValueRecord::new(value_type, &key, &value);
        prop_assert_eq!(record.key().unwrap(), key);
        prop_assert_eq!(record.value().unwrap(), &value[..]);
        let message = KvpMessage::new(Operation::ENUMERATE, Pool::GUEST, KvpBody::Enumerate { index, record });
        prop_assert_eq!(KvpMessage::parse(&message.to_body()).unwrap(), message);
    }
}
