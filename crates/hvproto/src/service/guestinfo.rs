//! The guest-info service (KVP exchange, docs/PROTOCOL.md §9): the host enumerates the guest's intrinsic
//! values (the auto pool, 2, read from the system at every request), and gets, sets, deletes and enumerates
//! pairs it stores in the guest: pools 0 (external), 1 (guest), 3 (auto-external, which openvmm's host
//! exposes) and 4 (auto-internal), as Linux's hv_kvp_daemon keeps a file for every pool below
//! KVP_POOL_COUNT. Pools are kept in memory and written through a [`PoolStore`] before a change is answered;
//! a change that cannot be stored, or that would exceed the bounds, is answered with an error and changes
//! nothing.
//!
//! Every stored pair is canonical ([`canonical_key`], [`canonical_value`]): a record openvmm's host parser
//! rejects would fail its whole KVP channel, so a Set that could not be read back is refused with
//! HV_INVALIDARG and a reason, and pairs loaded from disk that break the rules are dropped with a warning.
//!
//! Statuses follow Linux's hv_kvp_daemon where it has one: HV_S_CONT past the last item of an enumeration
//! and for a key that is not there; HV_E_FAIL for a full pool, a pool that cannot be written (the auto pool,
//! unknown pools) or a failed write; HV_INVALIDARG for a key or value no host could read back;
//! HV_ERROR_NOT_SUPPORTED for the IP-injection operations.
//!
//! [`GuestInfoSettings`] (`[guestinfo]`) say where the agent's [`PoolStore`] keeps the pools.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use log::{info, warn};

use super::logic::{LinkId, Logic, Refusal, StatusLine};
use crate::wire::kvp::{
    canonical_key, canonical_value, key_units, lossy, KvpBody, KvpError, KvpMessage, Operation,
    Pool, ValueRecord,
};
use crate::wire::{IcVersion, MessageRef, ReplyWriter, Status};

/// The default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/hvagent";

/// The guest-info service's settings.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GuestInfoSettings {
    /// The agent's [`PoolStore`] keeps the pools in `state_dir/kvp/`.
    pub state_dir: PathBuf,
}

impl Default for GuestInfoSettings {
    fn default() -> GuestInfoSettings {
        GuestInfoSettings {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
        }
    }
}

/// Most pairs one pool holds.
pub const MAX_PAIRS: usize = 1024;

/// The pools the host can write: every pool of Linux's KVP_POOL_COUNT (5) but the auto pool, whose values
/// are the guest's own.
pub const STORED_POOLS: [Pool; 4] = [
    Pool::EXTERNAL,
    Pool::GUEST,
    Pool::AUTO_EXTERNAL,
    Pool::AUTO_INTERNAL,
];

/// One stored pair: the key as UTF-16 units (no terminator), the value's type and bytes as the host sent them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub key: Vec<u16>,
    pub value_type: u32,
    pub value: Vec<u8>,
}

/// Where pools persist.
pub trait PoolStore {
    /// The pairs of `pool` as last saved; empty when there are none.
    fn load(&mut self, pool: Pool) -> Result<Vec<Pair>, String>;
    /// Replaces `pool` as a whole, so that no crash leaves it half written.
    fn save(&mut self, pool: Pool, pairs: &[Pair]) -> Result<(), String>;
}

/// The guest's intrinsic values, in the host's index order (include/uapi/linux/hyperv.h).
pub const INTRINSIC_KEYS: [&str; 10] = [
    "FullyQualifiedDomainName",
    "IntegrationServicesVersion",
    "NetworkAddressIPv4",
    "NetworkAddressIPv6",
    "OSBuildNumber",
    "OSName",
    "OSMajorVersion",
    "OSMinorVersion",
    "OSVersion",
    "ProcessorArchitecture",
];

/// Reads the guest's intrinsic values from the system.
pub trait SystemInfo {
    /// The value of one of [`INTRINSIC_KEYS`] other than IntegrationServicesVersion, read now.
    fn read(&self, key: &str) -> String;
}

/// The value of intrinsic item `key`: hvagent's version, or what the system says.
fn intrinsic(info: &dyn SystemInfo, key: &str) -> String {
    if key == "IntegrationServicesVersion" {
        env!("CARGO_PKG_VERSION").to_string()
    } else {
        info.read(key)
    }
}

/// The guest-info service's state: the stored pools and the edges.
pub struct GuestInfoLogic {
    pools: BTreeMap<Pool, Vec<Pair>>,
    store: Box<dyn PoolStore>,
    info: Box<dyn SystemInfo>,
    served: u64,
}

fn fail(why: impl std::fmt::Display) -> Refusal {
    Refusal::new(Status::FAIL, why)
}

fn invalid(why: KvpError) -> Refusal {
    Refusal::invalid(why)
}

/// A pair in its canonical form, or why it has none.
fn canonical_pair(pair: &Pair) -> Result<Pair, KvpError> {
    let key_area = crate::wire::kvp::utf16_bytes(&pair.key);
    let key = canonical_key(&key_area, key_area.len() as u32)?;
    let (value_type, value) = canonical_value(pair.value_type, &pair.value)?;
    Ok(Pair {
        key,
        value_type,
        value,
    })
}

impl GuestInfoLogic {
    /// Loads the stored pools; a pool that cannot be loaded starts empty (and says why).
    pub fn new(mut store: Box<dyn PoolStore>, info: Box<dyn SystemInfo>) -> GuestInfoLogic {
        let mut pools = BTreeMap::new();
        for pool in STORED_POOLS {
            let pairs = store.load(pool).unwrap_or_else(|why| {
                warn!("guestinfo: the {} pool starts empty: {why}", pool.name());
                Vec::new()
            });
            let pairs = pairs
                .iter()
                .filter_map(|pair| match canonical_pair(pair) {
                    Ok(canonical) => Some(canonical),
                    Err(why) => {
                        warn!(
                            "guestinfo: {} pool: dropped the stored pair {}: {why}; no host could read it \
                             back (the pool file is rewritten at the next change)",
                            pool.name(),
                            lossy(&pair.key).escape_debug()
                        );
                        None
                    }
                })
                .collect();
            pools.insert(pool, pairs);
        }
        GuestInfoLogic {
            pools,
            store,
            info,
            served: 0,
        }
    }

    /// The pairs of a stored pool.
    pub fn pairs(&self, pool: Pool) -> &[Pair] {
        self.pools.get(&pool).map_or(&[], Vec::as_slice)
    }

    /// Answers one parsed request: the answer's status and body.
    fn serve(&mut self, message: &mut KvpMessage) -> Result<Status, Refusal> {
        let pool = message.pool;
        match (message.operation, &mut message.body) {
            (Operation::ENUMERATE, KvpBody::Enumerate { index, record }) => {
                Ok(self.enumerate(pool, *index, record))
            }
            (Operation::GET, KvpBody::Value(record)) => self.get(pool, record),
            (Operation::SET, KvpBody::Value(record)) => self.set(pool, record),
            (Operation::DELETE, KvpBody::Delete { key_size, key_area }) => {
                let key = key_units(key_area, *key_size).map_err(fail)?;
                self.delete(pool, &key)
            }
            (operation, _) => Err(Refusal::new(
                Status::NOT_SUPPORTED,
                format!(
                    "operation {} ({}) is not supported",
                    operation.name(),
                    operation.0
                ),
            )),
        }
    }

    fn enumerate(&self, pool: Pool, index: u32, record: &mut ValueRecord) -> Status {
        let index = index as usize;
        if pool == Pool::AUTO {
            let Some(key) = INTRINSIC_KEYS.get(index) else {
                return Status::CONTINUE;
            };
            *record = ValueRecord::string(key, &intrinsic(self.info.as_ref(), key));
            return Status::OK;
        }
        match self.pairs(pool).get(index) {
            Some(pair) => {
                *record = ValueRecord::new(pair.value_type, &pair.key, &pair.value);
                Status::OK
            }
            None => Status::CONTINUE,
        }
    }

    /// The answer record is rebuilt from the stored pair, so it is canonical whatever the request's key
    /// area held beyond its key.
    fn get(&self, pool: Pool, record: &mut ValueRecord) -> Result<Status, Refusal> {
        let key = record.key().map_err(fail)?;
        if pool == Pool::AUTO {
            let name = lossy(&key);
            return Ok(match INTRINSIC_KEYS.iter().find(|k| **k == name) {
                Some(key) => {
                    *record = ValueRecord::string(key, &intrinsic(self.info.as_ref(), key));
                    Status::OK
                }
                None => Status::CONTINUE,
            });
        }
        match self.pairs(pool).iter().find(|pair| pair.key == key) {
            Some(pair) => {
                *record = ValueRecord::new(pair.value_type, &pair.key, &pair.value);
                Ok(Status::OK)
            }
            None => Ok(Status::CONTINUE),
        }
    }

    fn stored_pool(&self, pool: Pool) -> Result<Vec<Pair>, Refusal> {
        if pool == Pool::AUTO {
            return Err(fail(
                "the auto pool (2) holds the guest's intrinsic values, read from the system at every \
                 request; a host cannot set or delete them",
            ));
        }
        self.pools
            .get(&pool)
            .cloned()
            .ok_or_else(|| fail(format!("there is no pool {} (pools are 0 to 4)", pool.0)))
    }

    fn set(&mut self, pool: Pool, record: &ValueRecord) -> Result<Status, Refusal> {
        let key = canonical_key(&record.key_area, record.key_size).map_err(invalid)?;
        let value = record.value().map_err(invalid)?;
        let (value_type, value) = canonical_value(record.value_type, value).map_err(invalid)?;
        let mut pairs = self.stored_pool(pool)?;
        let pair = Pair {
            key,
            value_type,
            value,
        };
        match pairs.iter().position(|old| old.key == pair.key) {
            Some(at) => pairs[at] = pair.clone(),
            None if pairs.len() >= MAX_PAIRS => {
                return Err(fail(format!(
                    "the {pool} pool holds {MAX_PAIRS} pairs already"
                )))
            }
            None => pairs.push(pair.clone()),
        }
        self.commit(pool, pairs)?;
        info!(
            "guestinfo: {} pool: set {} ({} bytes)",
            pool.name(),
            lossy(&pair.key).escape_debug(),
            pair.value.len()
        );
        Ok(Status::OK)
    }

    fn delete(&mut self, pool: Pool, key: &[u16]) -> Result<Status, Refusal> {
        let mut pairs = self.stored_pool(pool)?;
        let Some(at) = pairs.iter().position(|pair| pair.key == key) else {
            return Ok(Status::CONTINUE);
        };
        pairs.remove(at);
        self.commit(pool, pairs)?;
        info!(
            "guestinfo: {} pool: deleted {}",
            pool.name(),
            lossy(key).escape_debug()
        );
        Ok(Status::OK)
    }

    /// Stores `pairs` as `pool`, and only then takes them into memory.
    fn commit(&mut self, pool: Pool, pairs: Vec<Pair>) -> Result<(), Refusal> {
        self.store.save(pool, &pairs).map_err(|why| {
            warn!("guestinfo: cannot store the {} pool: {why}", pool.name());
            fail(format!("the {pool} pool could not be stored: {why}"))
        })?;
        self.pools.insert(pool, pairs);
        Ok(())
    }
}

impl Logic for GuestInfoLogic {
    fn request(
        &mut self,
        _link: LinkId,
        request: &MessageRef<'_>,
        _version: IcVersion,
        _now: Instant,
        reply: &mut ReplyWriter<'_>,
    ) -> Result<Status, Refusal> {
        let mut message = KvpMessage::parse(request.body).map_err(Refusal::invalid)?;
        let status = self.serve(&mut message)?;
        self.served += 1;
        reply.extend_from_slice(&message.to_body());
        Ok(status)
    }

    fn status(&self, _now: Instant) -> Vec<StatusLine> {
        vec![
            ("kvp requests", self.served.to_string()),
            (
                "kvp pairs",
                STORED_POOLS
                    .iter()
                    .map(|&pool| format!("{} {}", pool.name(), self.pairs(pool).len()))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        ]
    }
}

#[cfg(test)]
mod tests;
