use proptest::prelude::*;

use super::*;

fn start(file: &str, path: &str, flags: u32, size: u64) -> Start {
    Start {
        file_name: file.to_string(),
        path_name: path.to_string(),
        flags: CopyFlags(flags),
        file_size: size,
    }
}

#[test]
fn start_fields_sit_at_the_kernel_struct_offsets() {
    let body = start(
        "a.txt",
        "/srv/in",
        CopyFlags::OVER_WRITE | CopyFlags::CREATE_PATH,
        0x0102_0304_0506,
    )
    .to_body()
    .unwrap();
    assert_eq!(body.len(), START_LEN);
    assert_eq!(&body[0..4], &[0, 0, 0, 0], "START_FILE_COPY");
    assert_eq!(&body[4..36], &[0; 32], "service ids");
    assert_eq!(&body[36..42], &[b'a', 0, b'.', 0, b't', 0]);
    assert_eq!(&body[46..48], &[0, 0], "the file name's NUL");
    assert_eq!(&body[556..560], &[b'/', 0, b's', 0]);
    assert_eq!(&body[1076..1080], &3u32.to_le_bytes());
    assert_eq!(&body[1080..1088], &0x0102_0304_0506u64.to_le_bytes());
    assert_eq!(operation(&body), Ok(Operation::START_FILE_COPY));
    assert_eq!(
        Start::parse(&body).unwrap(),
        start("a.txt", "/srv/in", 3, 0x0102_0304_0506)
    );
}

#[test]
fn a_name_with_no_nul_in_its_260_units_is_refused() {
    let mut body = start("x", "/d", 0, 1).to_body().unwrap();
    for unit in body[field::FILE_NAME].chunks_exact_mut(2) {
        unit.copy_from_slice(&(b'a' as u16).to_le_bytes());
    }
    assert_eq!(
        Start::parse(&body),
        Err(FcopyError::Unterminated("file name"))
    );
    // 259 units and the NUL fit; 260 do not.
    let long = "b".repeat(NAME_UNITS - 1);
    assert_eq!(
        Start::parse(&start(&long, "/d", 0, 1).to_body().unwrap())
            .unwrap()
            .file_name,
        long
    );
    assert_eq!(
        start(&"b".repeat(NAME_UNITS), "/d", 0, 1).to_body(),
        Err(FcopyError::NameTooLong("file name", NAME_UNITS))
    );
}

#[test]
fn a_name_with_an_unpaired_surrogate_is_refused_not_replaced() {
    let mut body = start("x", "/d", 0, 1).to_body().unwrap();
    body[556..558].copy_from_slice(&0xD800u16.to_le_bytes());
    assert_eq!(
        Start::parse(&body),
        Err(FcopyError::InvalidUtf16("path name"))
    );
    // A pair is fine: names are UTF-16, not UCS-2.
    let parsed = Start::parse(&start("\u{1F600}é", "/d", 0, 1).to_body().unwrap()).unwrap();
    assert_eq!(parsed.file_name, "\u{1F600}é");
}

#[test]
fn short_bodies_are_refused_not_read_past() {
    assert!(operation(&[1, 0, 0]).is_err());
    assert!(Start::parse(&[0; START_LEN - 1]).is_err());
    assert!(parse_data(&[1; 47]).is_err());
    assert_eq!(
        operation(&header_body(Operation::CANCEL_FCOPY)),
        Ok(Operation::CANCEL_FCOPY)
    );
    assert_eq!(
        operation(&header_body(Operation(9))).map(Operation::name),
        Ok("unknown")
    );
}

/// A WRITE_TO_FILE body in the unpadded (FCOPY_VERSION_0) layout, whole.
fn unpadded(offset: u64, data: &[u8]) -> Vec<u8> {
    let mut body = header_body(Operation::WRITE_TO_FILE);
    body.extend_from_slice(&offset.to_le_bytes());
    body.extend_from_slice(&(data.len() as u32).to_le_bytes());
    body.extend_from_slice(data);
    body.resize(DATA_LEN_UNPADDED, 0);
    body
}

#[test]
fn a_whole_padded_write_is_read_with_its_pad_word() {
    let mut body = Vec::new();
    emit_data(0x1_0000_0000, b"hello", &mut body).unwrap();
    assert_eq!(body.len(), DATA_LEN_PADDED);
    assert_eq!(&body[36..40], &[0; 4], "pad");
    assert_eq!(&body[40..48], &0x1_0000_0000u64.to_le_bytes());
    assert_eq!(&body[48..52], &5u32.to_le_bytes());
    assert_eq!(&body[52..57], b"hello");
    let data = parse_data(&body).unwrap();
    assert_eq!(
        (data.offset, data.data, data.layout),
        (0x1_0000_0000, &b"hello"[..], DataLayout::Padded)
    );
}

#[test]
fn a_whole_unpadded_write_is_told_apart_by_its_length() {
    let body = unpadded(6144 * 3, b"older host");
    let data = parse_data(&body).unwrap();
    assert_eq!(
        (data.offset, data.data, data.layout),
        (6144 * 3, &b"older host"[..], DataLayout::Unpadded)
    );
    // Full fragments in both layouts.
    let full = vec![7u8; DATA_FRAGMENT];
    assert_eq!(parse_data(&unpadded(0, &full)).unwrap().data, &full[..]);
    let mut body = Vec::new();
    emit_data(0, &full, &mut body).unwrap();
    assert_eq!(parse_data(&body).unwrap().data, &full[..]);
}

#[test]
fn a_short_write_body_is_the_layout_whose_size_field_fits_it_exactly() {
    let mut padded = Vec::new();
    emit_data(12, b"abc", &mut padded).unwrap();
    padded.truncate(PADDED_DATA_START + 3);
    assert_eq!(parse_data(&padded).unwrap().layout, DataLayout::Padded);
    let mut old = unpadded(12, b"abc");
    old.truncate(UNPADDED_DATA_START + 3);
    let data = parse_data(&old).unwrap();
    assert_eq!(
        (data.layout, data.offset, data.data),
        (DataLayout::Unpadded, 12, &b"abc"[..])
    );
}

#[test]
fn a_write_whose_size_does_not_fit_is_refused() {
    let mut body = Vec::new();
    emit_data(0, b"x", &mut body).unwrap();
    body[48..52].copy_from_slice(&(DATA_FRAGMENT as u32 + 1).to_le_bytes());
    assert!(matches!(
        parse_data(&body),
        Err(FcopyError::BadDataSize { .. })
    ));
    body[48..52].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(parse_data(&body).is_err());
    assert!(emit_data(0, &[0; DATA_FRAGMENT + 1], &mut Vec::new()).is_err());
}

proptest! {
    #[test]
    fn parsing_any_body_never_panics(body in proptest::collection::vec(any::<u8>(), 0..7000)) {
        let _ = operation(&body);
        let _ = Start::parse(&body);
        let _ = parse_data(&body);
    }

    #[test]
    fn a_write_round_trips(offset in any::<u64>(), data in proptest::collection::vec(any::<u8>(), 0..=DATA_FRAGMENT)) {
        let mut body = Vec::new();
        emit_data(offset, &data, &mut body).unwrap();
        let parsed = parse_data(&body).unwrap();
        prop_assert_eq!(parsed.offset, offset);
        prop_assert_eq!(parsed.data, &data[..]);
        let mut again = Vec::new();
        emit_data(parsed.offset, parsed.data, &mut again).unwrap();
        prop_assert_eq!(again, body);
    }

    #[test]
    fn a_start_round_trips(file in "[^\u{0}]{0,80}", path in "[^\u{0}]{0,80}", flags in any::<u32>(), size in any::<u64>()) {
        let request = start(&file, &path, flags, size);
        let body = request.to_body().unwrap();
        let parsed = Start::parse(&body).unwrap();
        prop_assert_eq!(&parsed, &request);
        prop_assert_eq!(parsed.to_body().unwrap(), body);
    }
}
