//! Framing tests and the no-panic / round-trip properties of every parser.

use super::heartbeat::Heartbeat;
use super::negotiate::Negotiate;
use super::shutdown::ShutdownRequest;
use super::timesync::{TimeSyncData, TimeSyncRef};
use super::*;
use crate::properties::{check_bodies, check_stream};
use proptest::prelude::*;

fn heartbeat_request(seq: u64) -> Message {
    Message::request(
        MessageType::HEARTBEAT,
        IcVersion::new(3, 0),
        IcVersion::new(3, 0),
        7,
        Heartbeat::new(seq, heartbeat::AppState::UNKNOWN).to_body(),
    )
}

#[test]
fn header_fields_sit_at_their_documented_offsets() {
    let mut message = heartbeat_request(5);
    message.header.status = Status::FAIL;
    message.header.reserved = [0xAB, 0xCD];
    let bytes = message.to_bytes().unwrap();
    assert_eq!(bytes.len(), 28 + 16);
    assert_eq!(&bytes[0..4], &[1, 0, 0, 0], "pipe packet type DATA");
    assert_eq!(&bytes[4..8], &36u32.to_le_bytes());
    assert_eq!(&bytes[8..12], &[3, 0, 0, 0]);
    assert_eq!(&bytes[12..14], &[1, 0]);
    assert_eq!(&bytes[14..18], &[3, 0, 0, 0]);
    assert_eq!(&bytes[18..20], &16u16.to_le_bytes());
    assert_eq!(&bytes[20..24], &[0x05, 0x40, 0x00, 0x80]);
    assert_eq!(bytes[24], 7);
    assert_eq!(bytes[25], IcFlags::TRANSACTION | IcFlags::REQUEST);
    assert_eq!(&bytes[26..28], &[0xAB, 0xCD]);
    assert_eq!(&bytes[28..36], &5u64.to_le_bytes());
    assert_eq!(Message::parse(&bytes).unwrap(), message);
}

#[test]
fn every_message_we_build_carries_pipe_type_data() {
    let request = heartbeat_request(1);
    let mut legacy = request.clone();
    legacy.pipe_type = pipe_type::LEGACY_ZERO;
    for message in [
        request.clone(),
        request.reply(Status::OK, vec![]),
        legacy.reply(Status::FAIL, vec![]),
    ] {
        assert_eq!(message.pipe_type, 1);
        assert_eq!(&message.to_bytes().unwrap()[0..4], &1u32.to_le_bytes());
    }
}

#[test]
fn pipe_type_zero_and_one_are_accepted_and_kept() {
    for packet_type in [0u32, 1] {
        let mut bytes = heartbeat_request(3).to_bytes().unwrap();
        bytes[0..4].copy_from_slice(&packet_type.to_le_bytes());
        let message = Message::parse(&bytes).unwrap();
        assert_eq!(message.pipe_type, packet_type);
        assert_eq!(message.to_bytes().unwrap(), bytes);
    }
}

#[test]
fn decoder_refuses_other_pipe_types_as_soon_as_the_word_arrives() {
    for packet_type in [2u32, 3, 4, 0x100, u32::MAX] {
        let mut bytes = heartbeat_request(3).to_bytes().unwrap();
        bytes[0..4].copy_from_slice(&packet_type.to_le_bytes());
        assert_eq!(
            Message::parse(&bytes),
            Err(WireError::PipeType(packet_type))
        );
        let mut decoder = Decoder::new();
        decoder.push(&bytes[..4]);
        assert_eq!(
            decoder.next_message(),
            Err(WireError::PipeType(packet_type))
        );
    }
    let text = WireError::PipeType(2).to_string();
    assert!(
        text.contains("0x2") && text.contains("VMBus pipe DATA"),
        "{text}"
    );
}

#[test]
fn reply_keeps_type_versions_and_transaction_and_sets_response_flags() {
    let request = heartbeat_request(1);
    let reply = request.reply(Status::OK, vec![1, 2]);
    assert_eq!(reply.header.msgtype, MessageType::HEARTBEAT);
    assert_eq!(reply.header.transaction_id, 7);
    assert_eq!(reply.header.framework_version, IcVersion::new(3, 0));
    assert_eq!(
        reply.header.flags.0,
        IcFlags::TRANSACTION | IcFlags::RESPONSE
    );
    assert_eq!(reply.body, vec![1, 2]);
}

#[test]
fn decoder_refuses_msgsize_that_disagrees_with_icmsgsize() {
    let mut bytes = heartbeat_request(1).to_bytes().unwrap();
    bytes[4..8].copy_from_slice(&37u32.to_le_bytes());
    let mut decoder = Decoder::new();
    decoder.push(&bytes);
    assert_eq!(
        decoder.next_message(),
        Err(WireError::LengthMismatch {
            msgsize: 37,
            icmsgsize: 16
        })
    );
}

#[test]
fn decoder_refuses_messages_over_16_kib_before_reading_them() {
    let mut header = heartbeat_request(1).to_bytes().unwrap();
    header.truncate(HEADER_LEN);
    header[4..8].copy_from_slice(&(20u32 + 16_357).to_le_bytes());
    header[18..20].copy_from_slice(&16_357u16.to_le_bytes());
    let mut decoder = Decoder::new();
    decoder.push(&header);
    assert_eq!(
        decoder.next_message(),
        Err(WireError::TooLarge { len: 16_385 })
    );
    // Exactly 16 KiB is fine.
    header[4..8].copy_from_slice(&(20u32 + 16_356).to_le_bytes());
    header[18..20].copy_from_slice(&16_356u16.to_le_bytes());
    let mut decoder = Decoder::new();
    decoder.push(&header);
    assert_eq!(decoder.next_message(), Ok(None));
    decoder.push(&vec![0; 16_356]);
    assert_eq!(decoder.next_message().unwrap().unwrap().body.len(), 16_356);
}

#[test]
fn decoder_assembles_messages_fed_one_byte_at_a_time() {
    let mut stream = Vec::new();
    for seq in 0..3 {
        heartbeat_request(seq).emit(&mut stream).unwrap();
    }
    let mut decoder = Decoder::new();
    let mut seen = Vec::new();
    for byte in &stream {
        decoder.push(std::slice::from_ref(byte));
        while let Some(message) = decoder.next_message().unwrap() {
            seen.push(Heartbeat::parse(message.body).unwrap().seq_num);
        }
    }
    assert_eq!(seen, vec![0, 1, 2]);
    assert_eq!(decoder.pending_len(), 0);
}

#[test]
fn decoder_keeps_a_partial_message_pending() {
    let bytes = heartbeat_request(9).to_bytes().unwrap();
    let mut decoder = Decoder::new();
    decoder.push(&bytes[..30]);
    assert_eq!(decoder.next_message(), Ok(None));
    assert_eq!(decoder.pending_len(), 30);
    decoder.push(&bytes[30..]);
    assert!(decoder.next_message().unwrap().is_some());
}

#[test]
fn parse_refuses_short_and_long_buffers() {
    let bytes = heartbeat_request(1).to_bytes().unwrap();
    assert!(matches!(
        Message::parse(&bytes[..27]),
        Err(WireError::Truncated { .. })
    ));
    assert!(matches!(
        Message::parse(&bytes[..40]),
        Err(WireError::Truncated {
            needed: 44,
            got: 40
        })
    ));
    let mut long = bytes.clone();
    long.push(0);
    assert_eq!(
        Message::parse(&long),
        Err(WireError::TrailingBytes { extra: 1 })
    );
}

#[test]
fn emit_refuses_a_body_that_does_not_fit() {
    let mut message = heartbeat_request(1);
    message.body = vec![0; MAX_MESSAGE_LEN];
    assert!(matches!(
        message.to_bytes(),
        Err(WireError::TooLarge { .. })
    ));
}

/// A stream of valid messages of every kind, to mutate.
fn valid_stream() -> Vec<u8> {
    let offer = Negotiate {
        framework_versions: vec![IcVersion::new(1, 0), IcVersion::new(3, 0)],
        message_versions: vec![IcVersion::new(3, 0), IcVersion::new(4, 0)],
        ..Negotiate::default()
    };
    let bodies: [(MessageType, Vec<u8>); 5] = [
        (MessageType::NEGOTIATE, offer.to_body()),
        (
            MessageType::HEARTBEAT,
            Heartbeat::new(3, heartbeat::AppState::HEALTHY).to_body(),
        ),
        (
            MessageType::TIMESYNC,
            TimeSyncRef {
                rest: vec![0; 5],
                ..TimeSyncRef::default()
            }
            .to_body(),
        ),
        (
            MessageType::TIMESYNC,
            TimeSyncData {
                rest: vec![0; 3],
                ..TimeSyncData::default()
            }
            .to_body(),
        ),
        (
            MessageType::SHUTDOWN,
            ShutdownRequest {
                display_message: vec![b'x'; 64],
                ..ShutdownRequest::default()
            }
            .to_body(),
        ),
    ];
    let mut stream = Vec::new();
    for (msgtype, body) in bodies {
        Message::request(msgtype, IcVersion::new(3, 0), IcVersion::new(3, 0), 1, body)
            .emit(&mut stream)
            .unwrap();
    }
    stream
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_streams_never_panic_and_accepted_messages_round_trip(
        stream in proptest::collection::vec(any::<u8>(), 0..600),
        chunks in proptest::collection::vec(1usize..64, 1..8),
    ) {
        check_stream(&stream, &chunks);
        check_bodies(&stream);
    }

    #[test]
    fn mutated_valid_streams_never_panic_and_accepted_messages_round_trip(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
        chunks in proptest::collection::vec(1usize..200, 1..8),
    ) {
        let mut stream = valid_stream();
        for (at, value) in flips {
            let index = at.index(stream.len());
            stream[index] = value;
        }
        stream.truncate(cut.index(stream.len() + 1));
        check_stream(&stream, &chunks);
    }

    #[test]
    fn header_fields_round_trip(
        pipe_type in 0u32..=1, fw in any::<(u16, u16)>(), msgtype in any::<u16>(),
        mv in any::<(u16, u16)>(), status in any::<u32>(), tid in any::<u8>(), flags in any::<u8>(),
        reserved in any::<[u8; 2]>(), body in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        let message = Message {
            pipe_type,
            header: IcHeader {
                framework_version: IcVersion::new(fw.0, fw.1),
                msgtype: MessageType(msgtype),
                message_version: IcVersion::new(mv.0, mv.1),
                status: Status(status),
                transaction_id: tid,
                flags: IcFlags(flags),
                reserved,
            },
            body,
        };
        let bytes = message.to_bytes().unwrap();
        prop_assert_eq!(Message::parse(&bytes).unwrap(), message);
    }
}
