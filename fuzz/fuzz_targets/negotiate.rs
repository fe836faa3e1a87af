//! The negotiation body parser: no panic, accepted bodies re-encode exactly, and the guest's choice and
//! answer on any offer are a valid 16-byte body.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| hvproto::properties::check_negotiate(body));
