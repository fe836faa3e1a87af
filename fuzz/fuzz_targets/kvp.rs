//! The KVP exchange body parser (`struct hv_kvp_msg`): no panic, accepted bodies re-encode exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| hvproto::properties::check_kvp(body));
