//! The address parser on any UTF-8 text: no panic, and an accepted address displays as text that parses
//! back to the same address.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        hvagent::properties::check_address(text);
    }
});
