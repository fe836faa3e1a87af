//! The time-sync body parser of message version 4.0 and later: no panic, accepted bodies re-encode exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| hvproto::properties::check_timesync_ref(body));
