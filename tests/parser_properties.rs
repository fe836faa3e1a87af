//! The quick version of `make fuzz` for the text parsers: the config parser and the address parser on
//! random and mutated text never panic, accepted configs print as text that parses back to them, and
//! accepted addresses display and parse back to themselves (the checks live in `hvagent::properties`,
//! shared with the fuzz targets).

use std::path::Path;

use hvagent::properties::{check_address, check_config};
use proptest::prelude::*;

/// Config texts to mutate: every key and form the parser knows.
const CONFIGS: [&str; 5] = [
    "log_level = \"debug\"\n[heartbeat]\nenabled = true\nconnect = \"vsock:host:0x48560001\"\n",
    "[heartbeat]\nlisten = \"unix:/run/hb.sock\"\nallowed_cids = [2, \"any\"]\nallowed_uids = [0, 1000]\n[timesync]\nenabled = false\n",
    "[shutdown]\nenabled = false\nconnect = \"vsock:2:48560003-facb-11e6-bd58-64006a7986d3\"\n",
    "idle_timeout = 0.5\n[heartbeat]\nhealth = \"command\"\nhealth_command = [\"/bin/x\", \"a\\\"b\"]\n\
     health_interval = 5\n[timesync]\nmode = \"chrony\"\nstep_threshold = 0.5\nprobe_interval = 0\n\
     chrony_socket = \"/run/c\\\\d.sock\"\n",
    "[shutdown]\npoweroff = \"/bin/echo off\"\nreboot = ['/bin/r', 'x\"y']\n[guestinfo]\n\
     state_dir = '/var/lib/a\\b'\nmax_connections = 7\n",
];

/// `text` as a TOML basic string with every character but ASCII letters, digits and `/` as a \u escape (a
/// different spelling from the one the agent prints).
fn escaped(text: &str) -> String {
    let mut quoted = String::from("\"");
    for c in text.chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '/' => quoted.push(c),
            c if u32::from(c) <= 0xFFFF => quoted.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => quoted.push_str(&format!("\\U{:08X}", u32::from(c))),
        }
    }
    quoted.push('"');
    quoted
}

fn any_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            any::<char>(),
            "[\"\\\\'\n\t\r\x00-\x1f\x7f #=\\[\\]]".prop_map(|s| s.chars().next().unwrap_or('x'))
        ],
        0..12,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

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
    fn generated_configs_with_any_strings_print_and_parse_back(
        socket in any_text(), chrony in any_text(), dir in any_text(), arg in any_text(),
        idle in 0.001f64..86_400.0, step in 0.001f64..86_400.0, probe in 0.05f64..3_600.0,
        interval in 1.0f64..86_400.0, timeout in 0.1f64..3_600.0,
        mode in prop::sample::select(vec!["adjust", "monitor", "chrony"]),
    ) {
        let text = format!(
            "idle_timeout = {idle:?}\n[heartbeat]\nlisten = {}\nhealth_command = [\"/bin/x\", {}]\n\
             health_interval = {interval:?}\nhealth_timeout = {timeout:?}\n[timesync]\nmode = \"{mode}\"\n\
             step_threshold = {step:?}\nprobe_interval = {probe:?}\nchrony_socket = {}\n\
             [shutdown]\nreboot = [{}]\n[guestinfo]\nstate_dir = {}\n",
            escaped(&format!("unix:/{socket}")),
            escaped(&arg),
            escaped(&format!("/{chrony}")),
            escaped(&format!("/{arg}")),
            escaped(&format!("/{dir}")),
        );
        let parsed = hvagent::config::parse(&text, Path::new("generated.toml"));
        prop_assert!(parsed.is_ok(), "{text:?}: {}", parsed.unwrap_err());
        check_config(&text);
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

/// The seeds are accepted as written, so mutation starts from configs that reach every key's validation.
#[test]
fn every_seed_config_is_accepted() {
    for seed in CONFIGS {
        hvagent::config::parse(seed, Path::new("seed.toml")).unwrap();
    }
}
