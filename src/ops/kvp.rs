//! `hvagent kvp`: the key-value pools from inside the guest, read and written in their files directly with
//! the locks the agent and hv_kvp_daemon take ([`crate::system::pool_file`]), so it works whether or not
//! the agent runs. A running agent notices a change before the host next reads the pool.
//!
//! `list [--pool P]` (every pool when none is named; auto is the guest's intrinsic values, read from the
//! system as the host is answered), `get KEY [--pool P]` (default external: what the host set),
//! `set KEY VALUE [--pool P]` and `delete KEY [--pool P]` (default guest: what the guest publishes), each
//! with text or `--json` output. What `set` stores follows the rules of a host's Set: a key and value a
//! host reads back whole, within `pool_max_bytes`.

use std::path::Path;

use serde_json::json;

use crate::system::pool_file::{self, Wait};
use crate::system::sysinfo::LiveSystem;
use hvproto::service::guestinfo::pair::{apply, Edit, FILE_KEY_AREA, FILE_VALUE_AREA};
use hvproto::service::guestinfo::{
    GuestInfoSettings, Pair, SystemInfo, INTRINSIC_KEYS, STORED_POOLS,
};
use hvproto::wire::kvp::{Pool, MAX_KEY_SIZE, MAX_VALUE_SIZE};

/// What `hvagent kvp` was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    List,
    Get(String),
    Set(String, String),
    Delete(String),
}

/// Why `hvagent kvp` failed: the exit status (1 runtime, 2 usage) and what to print.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    pub status: u8,
    pub message: String,
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        status: 2,
        message: message.into(),
    }
}

fn runtime(message: impl Into<String>) -> Failure {
    Failure {
        status: 1,
        message: message.into(),
    }
}

/// The action of `kvp ARGS...`.
pub fn parse_action(operands: &[String]) -> Result<Action, Failure> {
    let words: Vec<&str> = operands.iter().map(String::as_str).collect();
    match words[..] {
        ["list"] => Ok(Action::List),
        ["get", key] => Ok(Action::Get(key.to_string())),
        ["set", key, value] => Ok(Action::Set(key.to_string(), value.to_string())),
        ["delete", key] => Ok(Action::Delete(key.to_string())),
        [] => Err(usage(
            "kvp needs list, get KEY, set KEY VALUE or delete KEY",
        )),
        [first, ..] if ["list", "get", "set", "delete"].contains(&first) => Err(usage(format!(
            "wrong arguments for 'kvp {first}': list | get KEY | set KEY VALUE | delete KEY"
        ))),
        [other, ..] => Err(usage(format!(
            "unknown kvp action '{other}' (list, get, set or delete)"
        ))),
    }
}

/// A pool by name, as hvhost names them (external, guest, auto, auto-external, auto-internal), or number.
pub fn parse_pool(text: &str) -> Result<Pool, Failure> {
    match Pool::parse(text) {
        Some(pool) if pool.0 <= 4 => Ok(pool),
        _ => Err(usage(format!(
            "--pool '{text}' is not external, guest, auto, auto-external, auto-internal or 0 to 4"
        ))),
    }
}

/// Runs `action` on the pools of `settings` and returns what to print.
pub fn run(
    settings: &GuestInfoSettings,
    action: &Action,
    pool: Option<Pool>,
    json: bool,
) -> Result<String, Failure> {
    let dir = settings.pool_dir.as_path();
    match action {
        Action::List => {
            let pools = pool.map_or_else(|| STORED_POOLS.to_vec(), |pool| vec![pool]);
            let mut listed = Vec::new();
            for pool in pools {
                for pair in pairs_of(dir, pool)? {
                    listed.push((pool, pair));
                }
            }
            Ok(show_list(&listed, json))
        }
        Action::Get(key) => {
            let pool = pool.unwrap_or(Pool::EXTERNAL);
            let pair = pairs_of(dir, pool)?
                .into_iter()
                .find(|pair| pair.key == key.as_bytes())
                .ok_or_else(|| runtime(format!("no key '{key}' in the {pool} pool")))?;
            Ok(if json {
                format!("{}\n", entry(pool, &pair))
            } else {
                format!("{}\n", pair.value_text())
            })
        }
        Action::Set(key, value) => {
            let pool = writable(pool)?;
            let pair = checked_pair(key, value)?;
            let mut refused = None;
            update(dir, pool, &mut |pairs| {
                refused = apply(pairs, &Edit::Set(pair.clone()), settings.pool_max_bytes).err();
            })?;
            match refused {
                Some(why) => Err(runtime(format!("{key} not set in the {pool} pool: {why}"))),
                None => Ok(done(json, "set", pool, key)),
            }
        }
        Action::Delete(key) => {
            let pool = writable(pool)?;
            let mut found = false;
            update(dir, pool, &mut |pairs| {
                found = pairs.iter().any(|pair| pair.key == key.as_bytes());
                let _ = apply(pairs, &Edit::Delete(key.as_bytes().to_vec()), u64::MAX);
            })?;
            if found {
                Ok(done(json, "deleted", pool, key))
            } else {
                Err(runtime(format!("no key '{key}' in the {pool} pool")))
            }
        }
    }
}

/// The pool a set or delete changes: guest unless named; never auto.
fn writable(pool: Option<Pool>) -> Result<Pool, Failure> {
    match pool.unwrap_or(Pool::GUEST) {
        Pool::AUTO => Err(usage(
            "the auto pool holds the guest's intrinsic values, read from the system: it cannot be set",
        )),
        pool => Ok(pool),
    }
}

/// A pair `set` may store: what a host's Set would store, so the host reads it back whole.
fn checked_pair(key: &str, value: &str) -> Result<Pair, Failure> {
    if key.is_empty() || key.contains('\0') || value.contains('\0') {
        return Err(usage("a key must not be empty, and neither may hold a NUL"));
    }
    fits("key", key, FILE_KEY_AREA - 1, MAX_KEY_SIZE / 2 - 1)?;
    fits("value", value, FILE_VALUE_AREA - 1, MAX_VALUE_SIZE / 2 - 1)?;
    Ok(Pair::text(key, value))
}

/// Refuses `text` when it is longer than a record holds (`bytes` as UTF-8) or a host reads back whole
/// (`units` of UTF-16).
fn fits(what: &str, text: &str, bytes: usize, units: usize) -> Result<(), Failure> {
    let count = text.encode_utf16().count();
    if text.len() > bytes || count > units {
        return Err(usage(format!(
            "the {what} is {} bytes ({count} UTF-16 units); at most {bytes} bytes and {units} units fit",
            text.len()
        )));
    }
    Ok(())
}

fn update(dir: &Path, pool: Pool, edit: &mut dyn FnMut(&mut Vec<Pair>)) -> Result<(), Failure> {
    pool_file::update(dir, pool, Wait::Forever, None, edit)
        .map(|_| ())
        .map_err(|error| {
            runtime(format!(
                "cannot write {}: {error}",
                pool_file::path(dir, pool).display()
            ))
        })
}

/// The pairs of `pool`: its file, or for auto the system's intrinsic values.
fn pairs_of(dir: &Path, pool: Pool) -> Result<Vec<Pair>, Failure> {
    if pool == Pool::AUTO {
        let system = LiveSystem;
        return Ok(INTRINSIC_KEYS
            .iter()
            .map(|key| {
                let value = match *key {
                    "IntegrationServicesVersion" => env!("CARGO_PKG_VERSION").to_string(),
                    key => system.read(key),
                };
                Pair::text(key, &value)
            })
            .collect());
    }
    pool_file::read(dir, pool, Wait::Forever)
        .map(|(pairs, _)| pairs)
        .map_err(|error| {
            runtime(format!(
                "cannot read {}: {error}",
                pool_file::path(dir, pool).display()
            ))
        })
}

fn entry(pool: Pool, pair: &Pair) -> serde_json::Value {
    json!({
        "pool": pool.name(),
        "pool_number": pool.0,
        "key": pair.key_text(),
        "value": pair.value_text(),
    })
}

fn show_list(listed: &[(Pool, Pair)], json: bool) -> String {
    if json {
        let entries: Vec<serde_json::Value> = listed
            .iter()
            .map(|(pool, pair)| entry(*pool, pair))
            .collect();
        return format!("{}\n", serde_json::Value::Array(entries));
    }
    listed
        .iter()
        .map(|(pool, pair)| {
            format!(
                "pool={} key=\"{}\" value=\"{}\"\n",
                pool.name(),
                pair.key_text().escape_debug(),
                pair.value_text().escape_debug()
            )
        })
        .collect()
}

fn done(json: bool, what: &str, pool: Pool, key: &str) -> String {
    if json {
        format!(
            "{}\n",
            json!({ "done": what, "pool": pool.name(), "pool_number": pool.0, "key": key })
        )
    } else {
        format!("{what} {key} in the {pool} pool\n")
    }
}

#[cfg(test)]
mod tests;
