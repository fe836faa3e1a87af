//! The quick version of `make fuzz` for the text parsers: the config parser and the address parser on
//! random and mutated text never panic, and accepted addresses display and parse back to themselves
//! (the checks live in `hvagent::properties`, shared with the fuzz targets).

use hvagent::properties::{check_address, check_config};
use proptest::prelude::*;

/// Config texts to mutate: every key and form the parser knows.
const CONFIGS: [&str; 3] = [
    "log_level = \"debug\"\n[heartbeat]\nenabled = true\nconnect = \"vsock:host:0x48560001\"\n",
    "[heartbeat]\nlisten = \"unix:/run/hb.sock\"\nallow_any_cid = true\n[timesync]\nenabled = false\n",
    "[shutdown]\nenabled = false\nconnect = \"vsock:2:48560003-facb-11e6-bd58-64006a7986d3\"\n",
];

/// Addresses to mutate, of every scheme and port form.
const ADDRESSES: [&str; 5] = [
    "vsock:host:0x48560001",
    "vsock:any:1213595649",
    "vsock:local:{00000AC9-FACB-11E6-BD58-64006A7986D3}",
    "unix:/run/x.sock",
    "hybrid:/tmp/v.sock:0x5",
];

/// `base` with `edits` applied: each replaces one char (by index, wrapping) with another.
fn mutate(base: &str, edits: &[(prop::sample::Index, char)], cut: prop::sample::Index) -> String {
    let mut chars: Vec<char> = base.chars().collect();
    for (at, with) in edits {
        let index = at.index(chars.len());
        chars[index] = *with;
    }
    chars.truncate(cut.index(chars.len() + 1));
    chars.into_iter().collect()
}

fn edits() -> impl Strategy<Value = Vec<(prop::sample::Index, char)>> {
    proptest::collection::vec(
        (
            any::<prop::sample::Index>(),
            prop_oneof![
                any::<char>(),
                "[:=\"\\[\\]{}x0-9\n#.-]".prop_map(|s| s.chars().next().unwrap_or('x'))
            ],
        ),
        0..4,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn random_text_never_panics_either_parser(text in "\\PC{0,80}") {
        check_config(&text);
        check_address(&text);
    }

    #[test]
    fn mutated_configs_never_panic_the_parser(
        which in 0..CONFIGS.len(), edits in edits(), cut in any::<prop::sample::Index>(),
    ) {
        check_config(&mutate(CONFIGS[which], &edits, cut));
    }

    #[test]
    fn mutated_addresses_never_panic_and_accepted_ones_round_trip(
        which in 0..ADDRESSES.len(), edits in edits(), cut in any::<prop::sample::Index>(),
    ) {
        check_address(&mutate(ADDRESSES[which], &edits, cut));
    }

    #[test]
    fn generated_addresses_display_and_parse_back(
        cid in prop_oneof![Just("host".to_string()), Just("any".to_string()), any::<u32>().prop_map(|c| c.to_string())],
        port in any::<u32>(), path in "[a-z/:._-]{1,20}",
    ) {
        check_address(&format!("vsock:{cid}:{port}"));
        check_address(&format!("vsock:{cid}:{port:#x}"));
        check_address(&format!("unix:{path}"));
        check_address(&format!("hybrid:{path}:{port}"));
    }
}
