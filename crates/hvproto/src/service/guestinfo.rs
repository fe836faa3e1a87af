//! The guest-info service (KVP exchange, docs/PROTOCOL.md §9): the host enumerates the guest's intrinsic
//! values (the auto pool, 2, read from the system at every request), and gets, sets, deletes and enumerates
//! pairs it stores in the guest: pools 0 (external), 1 (guest), 3 (auto-external, which openvmm's host
//! exposes) and 4 (auto-internal), as Linux's hv_kvp_daemon keeps a file for every pool below
//! KVP_POOL_COUNT. The pools live in files in hv_kvp_daemon's format ([`pair`]), which guest software reads
//! and writes too, through a [`PoolStore`]; [`pools`] keeps them in memory and coalesces their writes. A
//! Set or Delete is answered only once it is written durably (the answer is deferred); one that cannot be
//! stored, or that would pass the bounds, is answered with an error and changes nothing.
//!
//! Every pair a host sets is canonical ([`canonical_key`], [`canonical_value`]): a record openvmm's host
//! parser rejects would fail its whole KVP channel, so a Set that could not be read back is refused with
//! HV_INVALIDARG and a reason; and it must fit a pool file record (HV_INVALIDARG too).
//!
//! Statuses follow Linux's hv_kvp_daemon where it has one: HV_S_CONT past the last item of an enumeration
//! and for a key that is not there; HV_E_FAIL for a full pool, a pool that cannot be written (the auto pool,
//! unknown pools) or a failed write; HV_INVALIDARG for a key or value no host could read back or no record
//! holds. The IP-info operations are [`ipconfig`]'s.
//!
//! [`GuestInfoSettings`] (`[guestinfo]`) say where the agent's [`PoolStore`] keeps the pools and how it
//! writes them.

pub mod ipconfig;
pub mod pair;
pub mod pools;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::info;

use ipconfig::{IpAnswer, IpConfig, Network, NoNetwork};
pub use pair::{Edit, Pair};
use pools::Pools;

use super::logic::{LinkId, Logic, Refusal, StatusLine, Watch};
use crate::wire::kvp::{lossy, KvpBody, KvpMessage, Operation, Pool, ValueRecord};
use crate::wire::{IcVersion, Message, MessageRef, ReplyWriter, Status};

/// The default state directory: where versions before the pool files kept the pools (`kvp/pool_N`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/hvagent";
/// The default directory of the pool files.
pub const DEFAULT_POOL_DIR: &str = "/var/lib/hvagent/kvp";
/// hv_kvp_daemon's directory (KVP_CONFIG_LOC).
pub const HV_KVP_DAEMON_DIR: &str = "/var/lib/hyperv";
/// The default of `kvp_flush_ms`.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// The default of `pool_max_bytes`: 409 records of 2,560 bytes.
pub const DEFAULT_POOL_MAX_BYTES: u64 = 1 << 20;

/// The guest-info service's settings.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GuestInfoSettings {
    /// Where earlier versions kept the pools, `state_dir/kvp/pool_N`: migrated into `pool_dir` once.
    pub state_dir: PathBuf,
    /// The pool files, `.kvp_pool_0` to `.kvp_pool_4`.
    pub pool_dir: PathBuf,
    /// At most one durable write per pool per this interval (`kvp_flush_ms`).
    pub flush_interval: Duration,
    /// The largest a pool file may grow by the host's or the CLI's Sets.
    pub pool_max_bytes: u64,
    /// The command SET_IP_INFO runs; empty: the operation is not supported.
    pub set_ip_command: Vec<String>,
}

impl Default for GuestInfoSettings {
    fn default() -> GuestInfoSettings {
        GuestInfoSettings {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            pool_dir: PathBuf::from(DEFAULT_POOL_DIR),
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            pool_max_bytes: DEFAULT_POOL_MAX_BYTES,
            set_ip_command: Vec::new(),
        }
    }
}

/// The pools the host can write: every pool of Linux's KVP_POOL_COUNT (5) but the auto pool, whose values
/// are the guest's own.
pub const STORED_POOLS: [Pool; 4] = [
    Pool::EXTERNAL,
    Pool::GUEST,
    Pool::AUTO_EXTERNAL,
    Pool::AUTO_INTERNAL,
];

/// Where pools persist: files other processes may read and change too.
pub trait PoolStore {
    /// The pairs of `pool` as they are now; empty when there are none.
    fn load(&mut self, pool: Pool) -> Result<Vec<Pair>, String>;
    /// The pairs of `pool` again when its file changed since this store last read or wrote it; None when
    /// it did not. Not called for a pool whose write is under way.
    fn reload_if_changed(&mut self, pool: Pool) -> Result<Option<Vec<Pair>>, String>;
    /// Reads `pool` as it is at this moment, lets `edit` change it, and replaces it with the result so that
    /// no crash leaves it half written and no other writer's change in between is lost. [`Update::Done`]
    /// with the pairs written once they are durable; or [`Update::Started`] when the store makes them
    /// durable later, off the caller's thread, and reports it through [`PoolStore::finished`].
    fn update(&mut self, pool: Pool, edit: &mut dyn FnMut(&mut Vec<Pair>)) -> Update;
    /// The writes started earlier that are now durable, or failed.
    fn finished(&mut self) -> Vec<Finished> {
        Vec::new()
    }
    /// What the loop watches so that it calls [`Logic::watch_ready`] when a write finished.
    fn watched(&self) -> Option<Watch> {
        None
    }
    /// Waits until every write under way has finished (the agent stopping).
    fn wait(&mut self) {}
}

/// The end of a write a store finished later: the pool, and the pairs written or why not.
pub type Finished = (Pool, Result<Vec<Pair>, String>);

/// How a [`PoolStore::update`] went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// Finished: the pairs written, durable, or why not.
    Done(Result<Vec<Pair>, String>),
    /// The pool is written and on its way to the disk; [`PoolStore::finished`] reports the end.
    Started,
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
    pools: Pools,
    store: Box<dyn PoolStore>,
    info: Box<dyn SystemInfo>,
    ip: IpConfig,
    /// Answers of writes the store finished, sent at the next timer, and when they became ready.
    ready: Vec<(LinkId, Message)>,
    ready_at: Option<Instant>,
    served: u64,
}

fn fail(why: impl std::fmt::Display) -> Refusal {
    Refusal::new(Status::FAIL, why)
}

impl GuestInfoLogic {
    /// Loads the stored pools; a pool that cannot be loaded starts empty (and says why).
    pub fn new(
        mut store: Box<dyn PoolStore>,
        info: Box<dyn SystemInfo>,
        settings: &GuestInfoSettings,
    ) -> GuestInfoLogic {
        let pools = Pools::load(
            store.as_mut(),
            &STORED_POOLS,
            settings.flush_interval,
            settings.pool_max_bytes,
        );
        GuestInfoLogic {
            pools,
            store,
            info,
            ip: IpConfig::new(Box::new(NoNetwork)),
            ready: Vec::new(),
            ready_at: None,
            served: 0,
        }
    }

    /// Answers the IP-info operations from `network` (without it, no adapter is known and SET_IP_INFO is
    /// not supported).
    pub fn with_network(mut self, network: Box<dyn Network>) -> GuestInfoLogic {
        self.ip = IpConfig::new(network);
        self
    }

    /// The pairs of a stored pool, as the host sees them (changes not yet written included).
    pub fn pairs(&self, pool: Pool) -> &[Pair] {
        self.pools.view(pool)
    }

    /// Answers one parsed request: the answer's status and body, or that the answer comes later.
    fn serve(
        &mut self,
        message: &mut KvpMessage,
        link: LinkId,
        request: &MessageRef<'_>,
        now: Instant,
    ) -> Result<Served, Refusal> {
        let pool = message.pool;
        if self.pools.holds(pool) {
            self.pools.refresh(self.store.as_mut(), pool);
        }
        match (message.operation, &mut message.body) {
            (Operation::ENUMERATE, KvpBody::Enumerate { index, record }) => {
                Ok(Served::Now(self.enumerate(pool, *index, record)))
            }
            (Operation::GET, KvpBody::Value(record)) => self.get(pool, record).map(Served::Now),
            (Operation::SET, KvpBody::Value(record)) => {
                let pair = pair::from_record(record).map_err(Refusal::invalid)?;
                self.change(pool, Edit::Set(pair), (link, request), now)
            }
            (Operation::DELETE, KvpBody::Delete { key_size, key_area }) => {
                let key = pair::lookup_key(key_area, *key_size).map_err(fail)?;
                self.writable(pool)?;
                if !self.pairs(pool).iter().any(|pair| pair.key == key) {
                    return Ok(Served::Now(Status::CONTINUE));
                }
                self.change(pool, Edit::Delete(key), (link, request), now)
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
                *record = pair.to_record();
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
        let key = lossy(&key).into_bytes();
        match self.pairs(pool).iter().find(|pair| pair.key == key) {
            Some(pair) => {
                *record = pair.to_record();
                Ok(Status::OK)
            }
            None => Ok(Status::CONTINUE),
        }
    }

    /// Refuses a change to a pool the host cannot write.
    fn writable(&self, pool: Pool) -> Result<(), Refusal> {
        if pool == Pool::AUTO {
            return Err(fail(
                "the auto pool (2) holds the guest's intrinsic values, read from the system at every \
                 request; a host cannot set or delete them",
            ));
        }
        if !self.pools.holds(pool) {
            return Err(fail(format!(
                "there is no pool {} (pools are 0 to 4)",
                pool.0
            )));
        }
        Ok(())
    }

    /// Queues a change, to be answered once it is written.
    fn change(
        &mut self,
        pool: Pool,
        edit: Edit,
        (link, request): (LinkId, &MessageRef<'_>),
        now: Instant,
    ) -> Result<Served, Refusal> {
        self.writable(pool)?;
        let what = match &edit {
            Edit::Set(pair) => format!(
                "set {} ({} bytes)",
                pair.key_text().escape_debug(),
                pair.value.len()
            ),
            Edit::Delete(key) => format!("deleted {}", String::from_utf8_lossy(key).escape_debug()),
        };
        // The answer is the request's own bytes with the status, as Linux answers in place.
        let answer = request
            .header
            .flags
            .expects_answer()
            .then(|| request.reply(Status::OK, request.body.to_vec()));
        self.pools
            .queue(pool, edit, answer.map(|answer| (link, answer)), now)
            .map_err(|why| fail(format!("the {pool} pool is full: {why}")))?;
        info!("guestinfo: {} pool: {what}", pool.name());
        Ok(Served::Later)
    }
}

/// How a request was answered.
enum Served {
    Now(Status),
    /// Its answer is sent once its change is written.
    Later,
}

impl Logic for GuestInfoLogic {
    fn request(
        &mut self,
        link: LinkId,
        request: &MessageRef<'_>,
        version: IcVersion,
        now: Instant,
        reply: &mut ReplyWriter<'_>,
    ) -> Result<Status, Refusal> {
        let operation = request.body.first().copied().map(Operation);
        let ip = match operation {
            Some(Operation::GET_IP_INFO) => Some(self.ip.get(request, version)?),
            Some(Operation::SET_IP_INFO) => Some(self.ip.set(link, request, version, now)?),
            _ => None,
        };
        match ip {
            Some(IpAnswer::Now(body)) => {
                self.served += 1;
                reply.extend_from_slice(&body);
                return Ok(Status::OK);
            }
            Some(IpAnswer::Later) => {
                self.served += 1;
                reply.defer();
                return Ok(Status::OK);
            }
            None => {}
        }
        let mut message = KvpMessage::parse(request.body).map_err(Refusal::invalid)?;
        let served = self.serve(&mut message, link, request, now)?;
        self.served += 1;
        match served {
            Served::Now(status) => {
                reply.extend_from_slice(&message.to_body());
                Ok(status)
            }
            Served::Later => {
                reply.defer();
                Ok(Status::OK)
            }
        }
    }

    fn closed(&mut self, link: LinkId) {
        self.pools.forget_link(link);
        self.ip.forget_link(link);
    }

    fn deadline(&self) -> Option<Instant> {
        [self.pools.deadline(), self.ip.deadline(), self.ready_at]
            .into_iter()
            .flatten()
            .min()
    }

    fn on_timer(&mut self, now: Instant, out: &mut Vec<(LinkId, Message)>) {
        out.append(&mut self.ready);
        self.ready_at = None;
        self.pools.write_due(self.store.as_mut(), now, false, out);
        self.ip.on_timer(now, out);
    }

    fn watched(&self) -> Option<Watch> {
        self.store.watched()
    }

    /// A write the store finished: its answers go out at the next timer, which is due at once.
    fn watch_ready(&mut self, now: Instant) {
        self.pools
            .take_finished(self.store.as_mut(), &mut self.ready);
        if !self.ready.is_empty() {
            self.ready_at = Some(now);
        }
    }

    fn finishing(&mut self, now: Instant, out: &mut Vec<(LinkId, Message)>) {
        out.append(&mut self.ready);
        self.pools.write_all(self.store.as_mut(), now, out);
    }

    fn status(&self, _now: Instant) -> Vec<StatusLine> {
        let counts = self.pools.counts;
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
            (
                "kvp writes",
                format!(
                    "{} ({} changes, {} failed, {} waiting)",
                    counts.writes,
                    counts.changes,
                    counts.failed,
                    self.pools.queued()
                ),
            ),
        ]
    }
}

impl Drop for GuestInfoLogic {
    /// A logic dropped with changes queued (a reload that reopens the service) still writes them; their
    /// answers have no link left to go to.
    fn drop(&mut self) {
        if self.pools.queued() > 0 {
            self.pools
                .write_all(self.store.as_mut(), Instant::now(), &mut Vec::new());
        }
    }
}

#[cfg(test)]
mod tests;
