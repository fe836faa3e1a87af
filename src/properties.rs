//! The properties the agent's own parsers of untrusted input keep, as checks that panic when one is broken
//! (the wire's are `hvproto::properties`). The proptests of `make test` and the fuzz targets of `make fuzz`
//! (fuzz/) run the same checks.
//!
//! - The config parser never panics, and its error text names a line and column inside the text; a config
//!   it accepts prints (`hvagent check-config`) as text that parses to the same config.
//! - The address parser never panics, and an accepted address displays as text that parses to the same
//!   address.

use std::path::Path;

use hvtransport::Address;

/// The config parser on any text: no panic; an error names a line inside the text; an accepted config
/// displays as TOML that parses back to the same config.
pub fn check_config(text: &str) {
    match crate::config::parse(text, Path::new("fuzz.toml")) {
        Ok(config) => {
            let shown = config.to_string();
            match crate::config::parse(&shown, Path::new("shown.toml")) {
                Ok(again) => assert_eq!(
                    again, config,
                    "{text:?} displays as {shown:?}, which parses to another config"
                ),
                Err(error) => {
                    panic!("{text:?} displays as {shown:?}, which does not parse: {error}")
                }
            }
        }
        Err(crate::config::ConfigError::Invalid { line, .. }) => {
            assert!(
                line >= 1 && line <= text.lines().count().max(1) + 1,
                "an error names line {line} of a {}-line text",
                text.lines().count()
            );
        }
        Err(error) => panic!("parse of a text failed as a read: {error}"),
    }
}

/// The address parser on any text: no panic; an accepted address displays and re-parses to itself.
pub fn check_address(text: &str) {
    let Ok(address) = text.parse::<Address>() else {
        return;
    };
    let shown = address.to_string();
    assert_eq!(
        shown.parse::<Address>().ok(),
        Some(address),
        "{text:?} displays as {shown:?}, which does not parse back to it"
    );
}
