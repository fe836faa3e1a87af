use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use super::pair::file_bytes;
use super::*;
use crate::wire::kvp::{utf16, utf16_bytes, value_type, MAX_KEY_SIZE, MAX_VALUE_SIZE};
use crate::wire::{Message, MessageType};

/// Pools in memory. `fail` makes every update fail; `outside` plays another process that changes a pool
/// file: it is merged into the pool at the next update and reported by the next reload check.
#[derive(Clone, Default)]
struct MemStore {
    saved: Rc<RefCell<HashMap<u8, Vec<Pair>>>>,
    changed: Rc<RefCell<Vec<u8>>>,
    fail: Rc<RefCell<bool>>,
    updates: Rc<RefCell<u32>>,
}

impl MemStore {
    /// Another process adds `pair` to `pool`'s file.
    fn outside_write(&self, pool: Pool, pair: Pair) {
        self.saved
            .borrow_mut()
            .entry(pool.0)
            .or_default()
            .push(pair);
        self.changed.borrow_mut().push(pool.0);
    }
}

impl PoolStore for MemStore {
    fn load(&mut self, pool: Pool) -> Result<Vec<Pair>, String> {
        Ok(self
            .saved
            .borrow()
            .get(&pool.0)
            .cloned()
            .unwrap_or_default())
    }
    fn reload_if_changed(&mut self, pool: Pool) -> Result<Option<Vec<Pair>>, String> {
        let changed = self.changed.borrow().contains(&pool.0);
        self.changed.borrow_mut().retain(|&p| p != pool.0);
        Ok(changed.then(|| {
            self.saved
                .borrow()
                .get(&pool.0)
                .cloned()
                .unwrap_or_default()
        }))
    }
    fn update(&mut self, pool: Pool, edit: &mut dyn FnMut(&mut Vec<Pair>)) -> Update {
        Update::Done(self.update_now(pool, edit))
    }
}

impl MemStore {
    fn update_now(
        &mut self,
        pool: Pool,
        edit: &mut dyn FnMut(&mut Vec<Pair>),
    ) -> Result<Vec<Pair>, String> {
        *self.updates.borrow_mut() += 1;
        if *self.fail.borrow() {
            return Err("No space left on device".into());
        }
        let mut pairs = self.load(pool)?;
        edit(&mut pairs);
        self.saved.borrow_mut().insert(pool.0, pairs.clone());
        self.changed.borrow_mut().retain(|&p| p != pool.0);
        Ok(pairs)
    }
}

/// A store that finishes its writes later, when the test says (as the agent's does on another thread).
#[derive(Clone, Default)]
struct LaterStore {
    now: MemStore,
    done: Rc<RefCell<Vec<Finished>>>,
    finished: Rc<RefCell<Vec<Finished>>>,
    reloads: Rc<RefCell<u32>>,
}

impl LaterStore {
    /// The writes under way reach the disk.
    fn land(&self) {
        let mut landed = self.done.borrow_mut().drain(..).collect();
        self.finished.borrow_mut().append(&mut landed);
    }
}

impl PoolStore for LaterStore {
    fn load(&mut self, pool: Pool) -> Result<Vec<Pair>, String> {
        self.now.load(pool)
    }
    fn reload_if_changed(&mut self, pool: Pool) -> Result<Option<Vec<Pair>>, String> {
        *self.reloads.borrow_mut() += 1;
        self.now.reload_if_changed(pool)
    }
    fn update(&mut self, pool: Pool, edit: &mut dyn FnMut(&mut Vec<Pair>)) -> Update {
        let result = self.now.update_now(pool, edit);
        self.done.borrow_mut().push((pool, result));
        Update::Started
    }
    fn finished(&mut self) -> Vec<Finished> {
        self.finished.borrow_mut().drain(..).collect()
    }
    fn watched(&self) -> Option<Watch> {
        Some(Watch(9))
    }
    fn wait(&mut self) {
        self.land();
    }
}

struct FakeInfo;

impl SystemInfo for FakeInfo {
    fn read(&self, key: &str) -> String {
        format!("fake {key}")
    }
}

fn settings() -> GuestInfoSettings {
    GuestInfoSettings::default()
}

fn logic(store: &MemStore) -> GuestInfoLogic {
    GuestInfoLogic::new(Box::new(store.clone()), Box::new(FakeInfo), &settings())
}

fn request_of(message: &KvpMessage) -> Message {
    Message::request(
        MessageType::KVP_EXCHANGE,
        IcVersion::new(3, 0),
        IcVersion::new(5, 0),
        3,
        message.to_body(),
    )
}

/// What a request got at once: an answer, or a deferral.
enum Got {
    Now(Status, KvpMessage),
    Later,
}

fn send_at(
    logic: &mut GuestInfoLogic,
    link: LinkId,
    message: &KvpMessage,
    now: Instant,
) -> Result<Got, Refusal> {
    let request = request_of(message);
    let mut out = Vec::new();
    let mut reply = ReplyWriter::begin(&request, &mut out);
    let status = logic.request(link, &request.view(), IcVersion::new(5, 0), now, &mut reply)?;
    if reply.is_deferred() {
        reply.discard();
        assert!(out.is_empty());
        return Ok(Got::Later);
    }
    reply.finish(status).unwrap();
    let answer = Message::parse(&out).unwrap();
    assert_eq!(
        answer.body.len(),
        request.body.len(),
        "an answer is as long as its request"
    );
    Ok(Got::Now(status, KvpMessage::parse(answer.body).unwrap()))
}

/// Sends `message` and, when it is deferred, runs the timers until it is answered.
fn send(logic: &mut GuestInfoLogic, message: &KvpMessage) -> Result<(Status, KvpMessage), Refusal> {
    let now = Instant::now();
    match send_at(logic, 1, message, now)? {
        Got::Now(status, answer) => Ok((status, answer)),
        Got::Later => {
            let due = logic.deadline().expect("a deferred answer has a deadline");
            let mut out = Vec::new();
            logic.on_timer(due, &mut out);
            assert_eq!(out.len(), 1, "one answer for one change");
            let (link, answer) = out.pop().unwrap();
            assert_eq!(link, 1);
            assert_eq!(answer.header.transaction_id, 3);
            assert!(answer.header.flags.is_response());
            assert_eq!(
                answer.body,
                message.to_body(),
                "the answer echoes the request"
            );
            Ok((
                answer.header.status,
                KvpMessage::parse(&answer.body).unwrap(),
            ))
        }
    }
}

fn string_value(text: &str) -> Vec<u8> {
    utf16_bytes(&utf16(text))
}

fn set(pool: Pool, key: &str, value: &str) -> KvpMessage {
    set_record_in(
        pool,
        ValueRecord::new(value_type::STRING, &utf16(key), &string_value(value)),
    )
}

fn set_record_in(pool: Pool, record: ValueRecord) -> KvpMessage {
    KvpMessage::new(Operation::SET, pool, KvpBody::Value(record))
}

fn set_record(record: ValueRecord) -> KvpMessage {
    set_record_in(Pool::EXTERNAL, record)
}

fn get(pool: Pool, key: &str) -> KvpMessage {
    KvpMessage::new(
        Operation::GET,
        pool,
        KvpBody::Value(ValueRecord::new(value_type::STRING, &utf16(key), &[])),
    )
}

fn delete(pool: Pool, key: &str) -> KvpMessage {
    let key_area = utf16_bytes(&utf16(key));
    KvpMessage::new(
        Operation::DELETE,
        pool,
        KvpBody::Delete {
            key_size: key_area.len() as u32,
            key_area,
        },
    )
}

fn enumerate(pool: Pool, index: u32) -> KvpMessage {
    KvpMessage::new(
        Operation::ENUMERATE,
        pool,
        KvpBody::Enumerate {
            index,
            record: ValueRecord::new(0, &[], &[]),
        },
    )
}

fn shown(message: &KvpMessage) -> (String, String) {
    let record = message.record().unwrap();
    (
        lossy(&record.key().unwrap()),
        crate::wire::kvp::display_value(record.value_type, record.value().unwrap()),
    )
}

fn got_now(got: Result<Got, Refusal>) -> (Status, KvpMessage) {
    match got.unwrap() {
        Got::Now(status, answer) => (status, answer),
        Got::Later => panic!("answered later"),
    }
}

#[test]
fn enumerate_auto_answers_the_intrinsic_values_then_no_more_items() {
    let store = MemStore::default();
    let mut logic = logic(&store);
    for (index, key) in INTRINSIC_KEYS.iter().enumerate() {
        let (status, answer) = send(&mut logic, &enumerate(Pool::AUTO, index as u32)).unwrap();
        assert_eq!(status, Status::OK);
        let (name, value) = shown(&answer);
        assert_eq!(name, *key);
        let record = answer.record().unwrap();
        assert_eq!(record.value_type, value_type::STRING);
        assert_eq!(record.key_size as usize, 2 * (key.len() + 1));
        if *key == "IntegrationServicesVersion" {
            assert_eq!(value, env!("CARGO_PKG_VERSION"));
        } else {
            assert_eq!(value, format!("fake {key}"));
        }
    }
    for index in [10, u32::MAX] {
        let (status, _) = send(&mut logic, &enumerate(Pool::AUTO, index)).unwrap();
        assert_eq!(status, Status::CONTINUE);
    }
}

#[test]
fn set_get_enumerate_delete_on_the_stored_pools() {
    let store = MemStore::default();
    let mut logic = logic(&store);
    for pool in STORED_POOLS {
        for (key, value) in [("Role", "web"), ("Zone", "a"), ("Role", "db")] {
            assert_eq!(
                send(&mut logic, &set(pool, key, value)).unwrap().0,
                Status::OK
            );
        }
        let (status, answer) = send(&mut logic, &get(pool, "Role")).unwrap();
        assert_eq!(status, Status::OK);
        assert_eq!(shown(&answer), ("Role".to_string(), "db".to_string()));
        let (_, first) = send(&mut logic, &enumerate(pool, 0)).unwrap();
        let (_, second) = send(&mut logic, &enumerate(pool, 1)).unwrap();
        assert_eq!(shown(&first), ("Role".to_string(), "db".to_string()));
        assert_eq!(shown(&second), ("Zone".to_string(), "a".to_string()));
        assert_eq!(
            send(&mut logic, &enumerate(pool, 2)).unwrap().0,
            Status::CONTINUE
        );
        assert_eq!(
            send(&mut logic, &delete(pool, "Role")).unwrap().0,
            Status::OK
        );
        assert_eq!(
            send(&mut logic, &get(pool, "Role")).unwrap().0,
            Status::CONTINUE
        );
        assert_eq!(
            send(&mut logic, &delete(pool, "Role")).unwrap().0,
            Status::CONTINUE
        );
        assert_eq!(logic.pairs(pool), [Pair::text("Zone", "a")]);
    }
    for pool in [0u8, 1, 3, 4] {
        assert_eq!(
            store.saved.borrow()[&pool],
            [Pair::text("Zone", "a")],
            "pool {pool}"
        );
    }
}

#[test]
fn a_set_is_answered_only_once_written_and_a_stream_of_sets_is_one_write_per_interval() {
    let store = MemStore::default();
    let mut logic = logic(&store);
    let start = Instant::now();
    let interval = settings().flush_interval;
    // The first change is due at once: the pool was not written in the last interval.
    assert!(matches!(
        send_at(&mut logic, 7, &set(Pool::GUEST, "k0", "v"), start),
        Ok(Got::Later)
    ));
    assert_eq!(logic.deadline(), Some(start));
    let mut out = Vec::new();
    logic.on_timer(start, &mut out);
    assert_eq!((out.len(), *store.updates.borrow()), (1, 1));
    assert_eq!(out[0].0, 7);
    assert_eq!(out[0].1.header.status, Status::OK);
    // Changes in the next interval wait for its end, and are written together.
    out.clear();
    for n in 1..=50u32 {
        let now = start + Duration::from_millis(u64::from(n));
        let message = set(Pool::GUEST, &format!("k{n}"), "v");
        assert!(matches!(
            send_at(&mut logic, 7, &message, now),
            Ok(Got::Later)
        ));
        // The host sees its changes at once, before they are written.
        assert_eq!(logic.pairs(Pool::GUEST).len(), n as usize + 1);
        logic.on_timer(now, &mut out);
        assert!(out.is_empty(), "nothing is answered before the write");
    }
    assert_eq!(logic.deadline(), Some(start + interval));
    assert_eq!(
        *store.updates.borrow(),
        1,
        "no write before the interval ends"
    );
    logic.on_timer(start + interval, &mut out);
    assert_eq!((out.len(), *store.updates.borrow()), (50, 2));
    assert!(out
        .iter()
        .all(|(_, answer)| answer.header.status == Status::OK));
    assert_eq!(store.saved.borrow()[&1].len(), 51);
    assert_eq!(logic.deadline(), None, "an idle logic wants no timer");
    let status = logic.status(start);
    assert!(status
        .iter()
        .any(|(label, value)| *label == "kvp writes" && value.starts_with("2 (51 changes")));
}

#[test]
fn a_write_finished_off_the_loop_is_answered_when_it_lands_and_nothing_else_touches_the_pool_meanwhile(
) {
    let store = LaterStore::default();
    let mut logic = GuestInfoLogic::new(Box::new(store.clone()), Box::new(FakeInfo), &settings());
    assert_eq!(logic.watched(), Some(Watch(9)));
    let start = Instant::now();
    assert!(matches!(
        send_at(&mut logic, 1, &set(Pool::GUEST, "a", "1"), start),
        Ok(Got::Later)
    ));
    let mut out = Vec::new();
    logic.on_timer(start, &mut out);
    assert!(out.is_empty(), "not answered before it is durable");
    assert_eq!(
        logic.deadline(),
        None,
        "no timer while the write is under way"
    );
    // A change while it is under way waits for it; the host sees both, and the file is not read again.
    let reloads = *store.reloads.borrow();
    let later = start + Duration::from_millis(1);
    assert!(matches!(
        send_at(&mut logic, 1, &set(Pool::GUEST, "b", "2"), later),
        Ok(Got::Later)
    ));
    let (_, answer) = got_now(send_at(&mut logic, 1, &get(Pool::GUEST, "a"), later));
    assert_eq!(shown(&answer).1, "1");
    assert_eq!(
        *store.reloads.borrow(),
        reloads,
        "the pool's file is left alone while it is written"
    );
    logic.on_timer(start + Duration::from_secs(1), &mut out);
    assert_eq!(
        *store.now.updates.borrow(),
        1,
        "one write of a pool at a time"
    );
    store.land();
    logic.watch_ready(later);
    assert_eq!(logic.deadline(), Some(later));
    logic.on_timer(later, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.header.status, Status::OK);
    // The next write goes once the interval since the last one ends, and finishing waits for it.
    assert_eq!(logic.deadline(), Some(start + settings().flush_interval));
    out.clear();
    logic.finishing(later, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        store.now.saved.borrow()[&1],
        [Pair::text("a", "1"), Pair::text("b", "2")]
    );
}

#[test]
fn numbers_are_stored_as_their_decimal_text_and_answered_as_strings_as_linux_does() {
    let store = MemStore::default();
    let mut logic = logic(&store);
    let dword = ValueRecord::new(value_type::DWORD, &utf16("Count"), &42u32.to_le_bytes());
    assert_eq!(send(&mut logic, &set_record(dword)).unwrap().0, Status::OK);
    let qword = ValueRecord::new(
        value_type::LINUX_U64,
        &utf16("Big"),
        &(1u64 << 40).to_le_bytes(),
    );
    assert_eq!(send(&mut logic, &set_record(qword)).unwrap().0, Status::OK);
    assert_eq!(
        store.saved.borrow()[&0],
        [
            Pair::text("Count", "42"),
            Pair::text("Big", "1099511627776")
        ]
    );
    let (_, answer) = send(&mut logic, &get(Pool::EXTERNAL, "Count")).unwrap();
    let record = answer.record().unwrap();
    assert_eq!(record.value_type, value_type::STRING);
    assert_eq!(shown(&answer).1, "42");
}

#[test]
fn pools_are_read_at_start() {
    let store = MemStore::default();
    store.outside_write(Pool::AUTO_INTERNAL, Pair::text("kept", "yes"));
    let mut logic = logic(&store);
    let (status, answer) = send(&mut logic, &get(Pool::AUTO_INTERNAL, "kept")).unwrap();
    assert_eq!((status, shown(&answer).1.as_str()), (Status::OK, "yes"));
}

#[test]
fn another_writers_change_is_seen_before_the_next_read_and_kept_by_the_next_write() {
    let store = MemStore::default();
    let mut logic = logic(&store);
    let now = Instant::now();
    // A change of the host's is queued, and then another process adds a record to the file.
    assert!(matches!(
        send_at(&mut logic, 1, &set(Pool::GUEST, "host", "1"), now),
        Ok(Got::Later)
    ));
    store.outside_write(Pool::GUEST, Pair::text("cloud-init", "report"));
    let (status, first) = got_now(send_at(&mut logic, 1, &enumerate(Pool::GUEST, 0), now));
    let (_, second) = got_now(send_at(&mut logic, 1, &enumerate(Pool::GUEST, 1), now));
    assert_eq!(status, Status::OK);
    assert_eq!(shown(&first), ("cloud-init".into(), "report".into()));
    assert_eq!(
        shown(&second),
        ("host".into(), "1".into()),
        "the queued change stays on top"
    );
    let mut out = Vec::new();
    logic.on_timer(now, &mut out);
    assert_eq!(
        store.saved.borrow()[&1],
        [Pair::text("cloud-init", "report"), Pair::text("host", "1")]
    );
}

#[test]
fn only_the_auto_pool_and_unknown_pools_cannot_be_written() {
    let store = MemStore::default();
    let mut logic = logic(&store);
    for pool in [Pool::AUTO, Pool(5), Pool(200)] {
        for message in [set(pool, "k", "v"), delete(pool, "k")] {
            let refusal = send(&mut logic, &message).unwrap_err();
            assert_eq!(refusal.status, Status::FAIL, "{pool:?}");
        }
        assert_eq!(
            send(&mut logic, &get(pool, "k")).unwrap().0,
            Status::CONTINUE
        );
        if pool != Pool::AUTO {
            assert_eq!(
                send(&mut logic, &enumerate(pool, 0)).unwrap().0,
                Status::CONTINUE
            );
        }
    }
    assert_eq!(*store.updates.borrow(), 0);
}

#[test]
fn a_pool_at_its_size_cap_refuses_new_keys_and_changes_nothing() {
    let store = MemStore::default();
    let settings = GuestInfoSettings {
        pool_max_bytes: file_bytes(2),
        ..settings()
    };
    let mut logic = GuestInfoLogic::new(Box::new(store.clone()), Box::new(FakeInfo), &settings);
    for key in ["a", "b"] {
        assert_eq!(
            send(&mut logic, &set(Pool::EXTERNAL, key, "1")).unwrap().0,
            Status::OK
        );
    }
    let refusal = send(&mut logic, &set(Pool::EXTERNAL, "c", "1")).unwrap_err();
    assert_eq!(refusal.status, Status::FAIL);
    assert!(refusal.why.contains("pool_max_bytes"), "{}", refusal.why);
    assert_eq!(
        send(&mut logic, &set(Pool::EXTERNAL, "a", "2")).unwrap().0,
        Status::OK
    );
    assert_eq!(
        store.saved.borrow()[&0],
        [Pair::text("a", "2"), Pair::text("b", "1")]
    );
    // Another writer filling the file in the meantime makes the queued change fail at the write.
    let now = Instant::now();
    assert_eq!(
        send(&mut logic, &delete(Pool::EXTERNAL, "b")).unwrap().0,
        Status::OK
    );
    assert!(matches!(
        send_at(&mut logic, 1, &set(Pool::EXTERNAL, "c", "1"), now),
        Ok(Got::Later)
    ));
    store
        .saved
        .borrow_mut()
        .get_mut(&0)
        .unwrap()
        .push(Pair::text("other", "x"));
    let mut out = Vec::new();
    logic.finishing(now, &mut out);
    assert_eq!(out[0].1.header.status, Status::FAIL);
    assert_eq!(
        logic.pairs(Pool::EXTERNAL),
        [Pair::text("a", "2"), Pair::text("other", "x")]
    );
}

#[test]
fn sizes_beyond_the_wire_bounds_are_refused_and_change_nothing() {
    let store = MemStore::default();
    let mut logic = logic(&store);
    let mut cases = Vec::new();
    for key_size in [0u32, 3, 514, u32::MAX] {
        let mut record = ValueRecord::new(value_type::STRING, &utf16("k"), &string_value("v"));
        record.key_size = key_size;
        cases.push(record);
    }
    let mut record = ValueRecord::new(value_type::STRING, &utf16("k"), &string_value("v"));
    record.value_size = MAX_VALUE_SIZE as u32 + 1;
    cases.push(record);
    // A key of NULs only is empty.
    let mut record = ValueRecord::new(value_type::STRING, &utf16("k"), &string_value("v"));
    record.key_area = vec![0; MAX_KEY_SIZE];
    cases.push(record);
    // 1023 units of a two-byte character: a valid wire value, 2046 bytes... and one more does not fit.
    cases.push(ValueRecord::new(
        value_type::STRING,
        &utf16("k"),
        &string_value(&"é".repeat(1024)),
    ));
    for record in cases {
        let refusal = send(&mut logic, &set_record(record.clone())).unwrap_err();
        assert_eq!(refusal.status, Status::INVALID_ARG, "{record:?}");
    }
    assert!(logic.pairs(Pool::EXTERNAL).is_empty());
    assert_eq!(*store.updates.borrow(), 0);
    // The largest a host can read back: 255 key units and their NUL, 1023 value units and theirs.
    let key = vec![0x4B; MAX_KEY_SIZE / 2 - 1];
    let value = string_value(&"v".repeat(MAX_VALUE_SIZE / 2 - 1));
    let record = ValueRecord::new(value_type::STRING, &key, &value);
    assert_eq!((record.key_size, record.value_size), (512, 2048));
    assert_eq!(send(&mut logic, &set_record(record)).unwrap().0, Status::OK);
    assert_eq!(logic.pairs(Pool::EXTERNAL)[0].key.len(), 255);
    assert_eq!(logic.pairs(Pool::EXTERNAL)[0].value.len(), 1023);
}

#[test]
fn records_no_host_could_read_back_are_refused_with_invalidarg_and_a_reason() {
    let store = MemStore::default();
    let mut logic = logic(&store);
    let mut cases: Vec<(&str, ValueRecord)> = Vec::new();
    let mut record = ValueRecord::new(value_type::STRING, &utf16("k"), &string_value("v"));
    record.key_area = [0x4B, 0].repeat(MAX_KEY_SIZE / 2);
    record.key_size = MAX_KEY_SIZE as u32;
    cases.push(("NUL within key_size", record));
    let mut record = ValueRecord::new(value_type::STRING, &[0x41, 0xD800], &string_value("v"));
    record.key_size = 6;
    cases.push(("UTF-16", record));
    for value_type in [0u32, 3, 7, 12, u32::MAX] {
        cases.push((
            "value_type",
            ValueRecord::new(value_type, &utf16("k"), b"abcd"),
        ));
    }
    cases.push((
        "DWORD",
        ValueRecord::new(value_type::DWORD, &utf16("k"), &[1, 2, 3]),
    ));
    cases.push((
        "QWORD",
        ValueRecord::new(value_type::QWORD, &utf16("k"), &[1; 4]),
    ));
    cases.push((
        "even",
        ValueRecord::new(value_type::STRING, &utf16("k"), b"abc"),
    ));
    cases.push((
        "2048",
        ValueRecord::new(value_type::STRING, &utf16("k"), &[0x41; 2048]),
    ));
    let lone = [0x41, 0, 0x00, 0xD8, 0, 0];
    cases.push((
        "UTF-16",
        ValueRecord::new(value_type::EXPAND_STRING, &utf16("k"), &lone),
    ));
    for (reason, record) in cases {
        let refusal = send(&mut logic, &set_record(record.clone())).unwrap_err();
        assert_eq!(refusal.status, Status::INVALID_ARG, "{record:?}");
        assert!(refusal.why.contains(reason), "{reason}: {}", refusal.why);
    }
    assert!(logic.pairs(Pool::EXTERNAL).is_empty());
}

#[test]
fn a_key_without_its_terminator_finds_the_same_stored_key() {
    let store = MemStore::default();
    let mut logic = logic(&store);
    assert_eq!(
        send(&mut logic, &set(Pool::EXTERNAL, "Role", "web"))
            .unwrap()
            .0,
        Status::OK
    );
    let mut message = get(Pool::EXTERNAL, "Role");
    if let KvpBody::Value(record) = &mut message.body {
        record.key_size = 8;
    }
    let (status, answer) = send(&mut logic, &message).unwrap();
    assert_eq!((status, shown(&answer).1.as_str()), (Status::OK, "web"));
}

#[test]
fn a_failed_write_answers_an_error_and_the_host_sees_the_pool_as_it_was() {
    let store = MemStore::default();
    let mut logic = logic(&store);
    assert_eq!(
        send(&mut logic, &set(Pool::EXTERNAL, "a", "1")).unwrap().0,
        Status::OK
    );
    *store.fail.borrow_mut() = true;
    let (status, _) = send(&mut logic, &set(Pool::EXTERNAL, "b", "2")).unwrap();
    assert_eq!(status, Status::FAIL);
    assert_eq!(logic.pairs(Pool::EXTERNAL), [Pair::text("a", "1")]);
    *store.fail.borrow_mut() = false;
    assert_eq!(
        send(&mut logic, &set(Pool::EXTERNAL, "b", "2")).unwrap().0,
        Status::OK
    );
}

#[test]
fn changes_of_a_closed_link_or_without_transaction_are_written_but_not_answered() {
    let store = MemStore::default();
    let mut logic = logic(&store);
    let now = Instant::now();
    assert!(matches!(
        send_at(&mut logic, 4, &set(Pool::GUEST, "a", "1"), now),
        Ok(Got::Later)
    ));
    logic.closed(4);
    let mut request = request_of(&set(Pool::GUEST, "b", "2"));
    request.header.flags = crate::wire::IcFlags(crate::wire::IcFlags::REQUEST);
    let mut out = Vec::new();
    let mut reply = ReplyWriter::begin(&request, &mut out);
    logic
        .request(5, &request.view(), IcVersion::new(5, 0), now, &mut reply)
        .unwrap();
    assert!(reply.is_deferred());
    reply.discard();
    let mut answers = Vec::new();
    logic.on_timer(now, &mut answers);
    assert!(answers.is_empty());
    assert_eq!(
        store.saved.borrow()[&1],
        [Pair::text("a", "1"), Pair::text("b", "2")]
    );
}

#[test]
fn finishing_writes_and_answers_what_waits_and_a_dropped_logic_still_writes() {
    let store = MemStore::default();
    let mut logic = logic(&store);
    let now = Instant::now();
    send(&mut logic, &set(Pool::GUEST, "a", "1")).unwrap();
    // Within the interval after that write: the next one waits.
    assert!(matches!(
        send_at(&mut logic, 2, &set(Pool::GUEST, "b", "2"), now),
        Ok(Got::Later)
    ));
    let mut out = Vec::new();
    logic.on_timer(now, &mut out);
    assert!(out.is_empty());
    logic.finishing(now, &mut out);
    assert_eq!(out.len(), 1);
    assert!(matches!(
        send_at(
            &mut logic,
            2,
            &set(Pool::GUEST, "c", "3"),
            now + Duration::from_millis(1)
        ),
        Ok(Got::Later)
    ));
    drop(logic);
    assert_eq!(store.saved.borrow()[&1].len(), 3);
}

fn ip_request(operation: Operation, body: Vec<u8>, version: IcVersion) -> Message {
    let mut request = request_of(&KvpMessage::new(
        operation,
        Pool::GUEST,
        KvpBody::Other(Vec::new()),
    ));
    request.body = body;
    request.body[0] = operation.0;
    request.header.message_version = version;
    request
}

fn ip_send(
    logic: &mut GuestInfoLogic,
    request: &Message,
    now: Instant,
) -> Result<Option<(Status, Vec<u8>)>, Refusal> {
    let mut out = Vec::new();
    let mut reply = ReplyWriter::begin(request, &mut out);
    let status = logic.request(
        1,
        &request.view(),
        request.header.message_version,
        now,
        &mut reply,
    )?;
    if reply.is_deferred() {
        reply.discard();
        return Ok(None);
    }
    reply.finish(status).unwrap();
    let answer = Message::parse(&out).unwrap();
    Ok(Some((status, answer.body.to_vec())))
}

/// A network of one adapter; SET runs "a command" that ends at the second look.
#[derive(Clone, Default)]
struct FakeNetwork {
    set: Rc<RefCell<Vec<crate::wire::ipinfo::IpInfo>>>,
    looks: Rc<RefCell<u32>>,
}

impl ipconfig::Network for FakeNetwork {
    fn adapter(&self, id: &str) -> Option<crate::wire::ipinfo::IpInfo> {
        (id == "00:15:5D:00:01:02").then(|| crate::wire::ipinfo::IpInfo {
            adapter_id: id.into(),
            family: 1,
            dhcp_enabled: true,
            ipv4: vec![crate::wire::ipinfo::Ipv4Entry {
                address: [192, 0, 2, 2],
                mask: [255, 255, 255, 0],
                origin: crate::wire::ipinfo::Origin::OTHER,
            }],
            ..Default::default()
        })
    }
    fn start_set(&mut self, info: &crate::wire::ipinfo::IpInfo) -> Result<(), Refusal> {
        if info.adapter_id != "00:15:5D:00:01:02" {
            return Err(ipconfig::unknown_adapter(&info.adapter_id));
        }
        self.set.borrow_mut().push(info.clone());
        Ok(())
    }
    fn poll_set(&mut self, _now: Instant) -> Option<Result<(), String>> {
        *self.looks.borrow_mut() += 1;
        (*self.looks.borrow() >= 2).then_some(Ok(()))
    }
}

fn ip_body(binary: bool, adapter: &str) -> Vec<u8> {
    use crate::wire::ipinfo;
    let mut body = vec![0u8; ipinfo::STRING_FORM_LEN];
    let info = ipinfo::IpInfo {
        adapter_id: adapter.into(),
        ..Default::default()
    };
    ipinfo::emit(&info, &mut body, binary).unwrap();
    let area = if binary { 28..284 } else { 2..258 };
    for (slot, unit) in body[area].chunks_exact_mut(2).zip(adapter.encode_utf16()) {
        slot.copy_from_slice(&unit.to_le_bytes());
    }
    body
}

#[test]
fn get_ip_info_is_answered_in_the_negotiated_form_and_an_unknown_adapter_is_guid_not_found() {
    use crate::wire::ipinfo;
    let store = MemStore::default();
    let mut logic = logic(&store).with_network(Box::new(FakeNetwork::default()));
    for (version, binary) in [(IcVersion::new(4, 0), false), (IcVersion::new(5, 0), true)] {
        let request = ip_request(
            Operation::GET_IP_INFO,
            ip_body(binary, "00:15:5D:00:01:02"),
            version,
        );
        let (status, body) = ip_send(&mut logic, &request, Instant::now())
            .unwrap()
            .unwrap();
        assert_eq!(status, Status::OK);
        assert_eq!(body.len(), request.body.len());
        let info = ipinfo::parse(&body, binary).unwrap();
        assert_eq!(info.ipv4[0].address, [192, 0, 2, 2]);
        assert!(info.dhcp_enabled);
        let request = ip_request(
            Operation::GET_IP_INFO,
            ip_body(binary, "00:15:5D:FF:FF:FF"),
            version,
        );
        let refusal = ip_send(&mut logic, &request, Instant::now()).unwrap_err();
        assert_eq!(refusal.status, Status::GUID_NOT_FOUND);
        assert_eq!(refusal.status.0, 0x8004_1002);
    }
    let short = ip_request(
        Operation::GET_IP_INFO,
        vec![4, 0, 0, 0, 1, 2],
        IcVersion::new(4, 0),
    );
    assert_eq!(
        ip_send(&mut logic, &short, Instant::now())
            .unwrap_err()
            .status,
        Status::INVALID_ARG
    );
}

#[test]
fn set_ip_info_runs_the_command_and_is_answered_when_it_ends() {
    let store = MemStore::default();
    let network = FakeNetwork::default();
    let mut logic = logic(&store).with_network(Box::new(network.clone()));
    let now = Instant::now();
    let request = ip_request(
        Operation::SET_IP_INFO,
        ip_body(true, "00:15:5D:00:01:02"),
        IcVersion::new(5, 0),
    );
    assert_eq!(
        ip_send(&mut logic, &request, now).unwrap(),
        None,
        "deferred"
    );
    assert_eq!(network.set.borrow().len(), 1);
    // One at a time.
    assert_eq!(
        ip_send(&mut logic, &request, now).unwrap_err().status,
        Status::FAIL
    );
    let mut out = Vec::new();
    let first = logic.deadline().unwrap();
    logic.on_timer(first, &mut out);
    assert!(out.is_empty(), "still running");
    logic.on_timer(logic.deadline().unwrap(), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.header.status, Status::OK);
    assert_eq!(logic.deadline(), None, "nothing polls once it ended");
    let unknown = ip_request(
        Operation::SET_IP_INFO,
        ip_body(true, "nope"),
        IcVersion::new(5, 0),
    );
    assert_eq!(
        ip_send(&mut logic, &unknown, now).unwrap_err().status,
        Status::GUID_NOT_FOUND
    );
}

#[test]
fn without_a_network_set_ip_info_is_not_supported_and_short_bodies_are_refused() {
    let store = MemStore::default();
    let mut logic = logic(&store);
    let set = ip_request(
        Operation::SET_IP_INFO,
        ip_body(false, "x"),
        IcVersion::new(4, 0),
    );
    assert_eq!(
        ip_send(&mut logic, &set, Instant::now())
            .unwrap_err()
            .status,
        Status::NOT_SUPPORTED
    );
    let request = Message::request(
        MessageType::KVP_EXCHANGE,
        IcVersion::new(3, 0),
        IcVersion::new(5, 0),
        3,
        vec![0, 0, 0, 0, 1, 2],
    );
    let mut out = Vec::new();
    let mut reply = ReplyWriter::begin(&request, &mut out);
    let refusal = logic
        .request(
            1,
            &request.view(),
            IcVersion::new(5, 0),
            Instant::now(),
            &mut reply,
        )
        .unwrap_err();
    assert_eq!(refusal.status, Status::INVALID_ARG);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

    /// Whatever a host sets, everything enumerated afterwards is a record openvmm's host parser accepts.
    #[test]
    fn every_enumerated_record_is_one_a_host_can_read(
        sets in proptest::collection::vec(
            (0u32..13, proptest::collection::vec(proptest::prelude::any::<u16>(), 0..260),
             proptest::option::of(0u32..600),
             proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2100)),
            1..8,
        ),
    ) {
        let store = MemStore::default();
        let mut logic = logic(&store);
        let mut accepted = 0;
        for (value_type, key, key_size, value) in sets {
            let mut record = ValueRecord::new(value_type, &key, &value);
            record.key_area = key.iter().flat_map(|unit| unit.to_le_bytes()).collect();
            record.key_area.resize(MAX_KEY_SIZE, 0);
            record.key_size = key_size.unwrap_or(2 * key.len() as u32 + 2);
            if send(&mut logic, &set_record(record)).is_ok() {
                accepted += 1;
            }
        }
        for index in 0.. {
            let (status, answer) = send(&mut logic, &enumerate(Pool::EXTERNAL, index)).unwrap();
            if status != Status::OK {
                proptest::prop_assert_eq!(status, Status::CONTINUE);
                proptest::prop_assert!(index <= accepted);
                break;
            }
            let record = answer.record().unwrap();
            proptest::prop_assert!(
                crate::wire::kvp::canonical_key(&record.key_area, record.key_size).is_ok()
            );
            let value = record.value().unwrap();
            proptest::prop_assert_eq!(
                crate::wire::kvp::canonical_value(record.value_type, value),
                Ok((record.value_type, value.to_vec()))
            );
        }
    }
}
