//! `allowed_cids` and `allowed_uids`: who may connect to a listening service.

use super::values::typed;
use hvproto::service::ServiceKind;
use hvtransport::address::{CID_HOST, CID_LOCAL};
use hvtransport::peer::{AllowedCids, AllowedUids};

/// The error for the key `allowed_cids` replaced. Not an alias for "any": any CID would include loopback
/// and the guest's own CID, which must now be listed to be accepted, so an old file is stopped with the fix
/// rather than silently keeping the hole.
pub(super) fn replaced_allow_any_cid(kind: ServiceKind) -> String {
    format!(
        "allow_any_cid was replaced by allowed_cids; in [{kind}] write allowed_cids = [2, ...] with the CIDs \
         that may connect (\"any\" for every CID but loopback and the guest's own), or delete the line for \
         the default [2] (the host)"
    )
}

/// `allowed_cids = [2, 5, "local", "any"]`.
pub(super) fn allowed_cids(list: &toml::Value) -> Result<AllowedCids, String> {
    let mut allowed = AllowedCids {
        any: false,
        cids: Vec::new(),
    };
    for value in &typed::<Vec<toml::Value>>(list)? {
        match value {
            toml::Value::String(name) if name == "any" => allowed.any = true,
            toml::Value::String(name) if name == "host" => allowed.cids.push(CID_HOST),
            toml::Value::String(name) if name == "local" => allowed.cids.push(CID_LOCAL),
            toml::Value::Integer(cid) if u32::try_from(*cid).is_ok_and(|cid| cid != u32::MAX) => {
                allowed.cids.push(*cid as u32)
            }
            other => {
                return Err(format!(
                    "{} is not a CID (a number below 4294967295, \"host\", \"local\" or \"any\")",
                    show(other)
                ))
            }
        }
    }
    Ok(allowed)
}

/// `allowed_uids = [0, 1000]`.
pub(super) fn allowed_uids(list: &toml::Value) -> Result<AllowedUids, String> {
    typed::<Vec<toml::Value>>(list)?
        .iter()
        .map(|value| match value {
            toml::Value::Integer(uid) if u32::try_from(*uid).is_ok_and(|uid| uid != u32::MAX) => {
                Ok(*uid as u32)
            }
            other => Err(format!(
                "{} is not a uid (a number below 4294967295)",
                show(other)
            )),
        })
        .collect::<Result<Vec<u32>, String>>()
        .map(AllowedUids)
}

/// A list entry as a message shows it.
fn show(value: &toml::Value) -> String {
    match value {
        toml::Value::String(text) => format!("'{text}'"),
        toml::Value::Integer(number) => number.to_string(),
        other => format!("a {}", other.type_str()),
    }
}

/// `allowed_cids` as the printed config writes it.
pub(super) fn show_cids(allowed: &AllowedCids) -> String {
    let mut items: Vec<String> = allowed.cids.iter().map(u32::to_string).collect();
    if allowed.any {
        items.push("\"any\"".to_string());
    }
    format!("[{}]", items.join(", "))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::parse;

    fn heartbeat_of(text: &str) -> Result<crate::config::ServiceConfig, String> {
        parse(text, Path::new("t.toml"))
            .map(|config| config.services[0].clone())
            .map_err(|error| error.to_string())
    }

    #[test]
    fn allowed_cids_take_numbers_and_names_and_print_back() {
        let heartbeat = heartbeat_of(
            "[heartbeat]\nallowed_cids = [2, \"local\", 7, \"any\"]\nallowed_uids = [0, 1000]\n",
        )
        .unwrap();
        assert!(heartbeat.allowed_cids.any);
        assert_eq!(heartbeat.allowed_cids.cids, [2, 1, 7]);
        assert_eq!(heartbeat.allowed_uids.0, [0, 1000]);
        let config = parse(
            "[heartbeat]\nallowed_cids = [2, \"any\"]\nallowed_uids = [5]\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let printed = config.to_string();
        assert!(printed.contains("allowed_cids = [2, \"any\"]"), "{printed}");
        assert_eq!(parse(&printed, Path::new("t.toml")).unwrap(), config);
        let defaults = heartbeat_of("").unwrap();
        assert_eq!(defaults.allowed_cids.cids, [2]);
        assert!(!defaults.allowed_cids.any);
        assert_eq!(defaults.allowed_uids.0, [0]);
    }

    #[test]
    fn bad_entries_are_refused_with_the_key() {
        let error = heartbeat_of("[heartbeat]\nallowed_cids = [\"all\"]\n").unwrap_err();
        assert!(error.contains("heartbeat.allowed_cids"), "{error}");
        let error = heartbeat_of("[heartbeat]\nallowed_cids = [-1]\n").unwrap_err();
        assert!(error.contains("not a CID"), "{error}");
        let error = heartbeat_of("[heartbeat]\nallowed_uids = [\"root\"]\n").unwrap_err();
        assert!(error.contains("heartbeat.allowed_uids"), "{error}");
    }

    #[test]
    fn allow_any_cid_is_refused_naming_its_replacement() {
        for value in ["true", "false"] {
            let error =
                heartbeat_of(&format!("[heartbeat]\nallow_any_cid = {value}\n")).unwrap_err();
            assert!(error.starts_with("t.toml:2:"), "{error}");
            assert!(error.contains("replaced by allowed_cids"), "{error}");
            assert!(error.contains("\"any\""), "{error}");
        }
    }
}
