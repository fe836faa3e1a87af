//! The stream decoder on any bytes, cut into reads of sizes taken from the input's first bytes: no panic,
//! and every accepted message (and its body, through every body parser) re-encodes exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte says how many of the next bytes are read sizes; the rest is the stream.
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(count % 8).min(rest.len());
    let (sizes, stream) = rest.split_at(count);
    let chunks: Vec<usize> = sizes
        .iter()
        .map(|&size| usize::from(size) * 16 + 1)
        .collect();
    hvproto::properties::check_stream(stream, &chunks);
});
