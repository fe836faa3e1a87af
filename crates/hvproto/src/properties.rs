//! The properties every parser of untrusted input keeps, as checks that panic when one is broken. The
//! proptests of `make test` and the coverage-guided fuzz targets of `make fuzz` (fuzz/) run the same checks,
//! so a finding of one is a regression test for the other.
//!
//! - The stream decoder never panics, whatever the bytes and however they are cut into reads, and every
//!   message it accepts re-encodes to exactly the bytes it came from.
//! - Every body parser never panics, and what it accepts re-encodes exactly (`to_body(parse(b)) == b`).
//!
//! The agent's own parsers (config, addresses) have theirs in the agent's `properties` module.

use crate::wire::heartbeat::{AppState, Heartbeat};
use crate::wire::negotiate::Negotiate;
use crate::wire::shutdown::ShutdownRequest;
use crate::wire::timesync::{TimeSyncData, TimeSyncRef};
use crate::wire::{Decoder, Message};

/// Feeds `stream` to a decoder in reads of the sizes in `chunks` (cycled; 0 counts as 1) and checks every
/// message it accepts, and that message's body with [`check_bodies`]. Returns how many messages it accepted
/// before the end of the stream or a framing error.
pub fn check_stream(stream: &[u8], chunks: &[usize]) -> usize {
    let mut decoder = Decoder::new();
    let mut consumed = 0usize;
    let mut fed = 0usize;
    let mut accepted = 0usize;
    let mut sizes = chunks.iter().copied().chain(std::iter::once(1)).cycle();
    while fed < stream.len() {
        let size = sizes.next().unwrap_or(1).clamp(1, stream.len() - fed);
        decoder.push(&stream[fed..fed + size]);
        fed += size;
        loop {
            match decoder.next_message() {
                Ok(Some(message)) => {
                    let bytes = message.to_bytes().expect("an accepted message re-encodes");
                    assert_eq!(
                        &stream[consumed..consumed + bytes.len()],
                        &bytes[..],
                        "a decoded message re-encodes to other bytes"
                    );
                    consumed += bytes.len();
                    accepted += 1;
                    check_message(&bytes);
                    check_bodies(message.body);
                }
                Ok(None) => break,
                Err(_) => return accepted,
            }
        }
        assert_eq!(
            decoder.pending_len(),
            fed - consumed,
            "the decoder lost or invented bytes"
        );
    }
    accepted
}

/// `Message::parse` on one whole message agrees with the decoder and round-trips.
fn check_message(bytes: &[u8]) {
    let message = Message::parse(bytes).expect("what the decoder accepts, parse accepts");
    assert_eq!(message.to_bytes().ok().as_deref(), Some(bytes));
}

/// Every body parser on `body`: no panic, and what parses re-encodes to the same bytes.
pub fn check_bodies(body: &[u8]) {
    check_negotiate(body);
    check_heartbeat(body);
    check_timesync_ref(body);
    check_timesync_data(body);
    check_shutdown(body);
    check_kvp(body);
}

/// The negotiation body: round trip, and the guest's choice and answer on whatever was offered.
pub fn check_negotiate(body: &[u8]) {
    let Ok(offer) = Negotiate::parse(body) else {
        return;
    };
    assert_eq!(offer.to_body(), body, "negotiate body round trip");
    let ours = crate::service::FRAMEWORK_VERSIONS;
    let answer = Negotiate::answer(offer.choose(&ours, &ours)).to_body();
    assert_eq!(answer.len(), 16, "a negotiation answer is 16 bytes");
    assert!(Negotiate::parse(&answer).is_ok(), "our answer parses");
}

/// The heartbeat body: round trip, and an answer as long as the request.
pub fn check_heartbeat(body: &[u8]) {
    let Ok(request) = Heartbeat::parse(body) else {
        return;
    };
    assert_eq!(request.to_body(), body, "heartbeat body round trip");
    let _ = request.app_state();
    let answer = request.answer(AppState::HEALTHY).to_body();
    assert_eq!(
        answer.len(),
        body.len(),
        "a heartbeat answer keeps the length"
    );
}

/// The time-sync body of message version 4.0 and later: round trip.
pub fn check_timesync_ref(body: &[u8]) {
    if let Ok(parsed) = TimeSyncRef::parse(body) {
        assert_eq!(parsed.to_body(), body, "timesync ref body round trip");
    }
}

/// The time-sync body of older versions: round trip.
pub fn check_timesync_data(body: &[u8]) {
    if let Ok(parsed) = TimeSyncData::parse(body) {
        assert_eq!(parsed.to_body(), body, "timesync data body round trip");
    }
}

/// The shutdown body: round trip.
pub fn check_shutdown(body: &[u8]) {
    if let Ok(parsed) = ShutdownRequest::parse(body) {
        assert_eq!(parsed.to_body(), body, "shutdown body round trip");
    }
}

/// The KVP exchange body (`struct hv_kvp_msg`): round trip.
pub fn check_kvp(body: &[u8]) {
    if let Ok(parsed) = crate::wire::kvp::KvpMessage::parse(body) {
        assert_eq!(parsed.to_body(), body, "kvp body round trip");
    }
}
