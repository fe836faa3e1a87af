//! The time-sync body parser of older versions: no panic, accepted bodies re-encode exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| hvproto::properties::check_timesync_data(body));
