//! The heartbeat body parser: no panic, accepted bodies re-encode exactly, answers keep the length.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| hvproto::properties::check_heartbeat(body));
