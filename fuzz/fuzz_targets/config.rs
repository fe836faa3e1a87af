//! The config parser on any UTF-8 text: no panic, and an error names a line inside the text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        hvagent::properties::check_config(text);
    }
});
