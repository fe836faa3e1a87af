use crate::service::logic::answer_of;
use crate::wire::Message;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use super::*;
use crate::wire::kvp::{utf16, utf16_bytes, value_type, MAX_KEY_SIZE, MAX_VALUE_SIZE};
use crate::wire::MessageType;

/// Pools in memory; `fail` makes every save fail.
#[derive(Clone, Default)]
struct MemStore {
    saved: Rc<RefCell<HashMap<u8, Vec<Pair>>>>,
    fail: Rc<RefCell<bool>>,
    saves: Rc<RefCell<u32>>,
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
    fn save(&mut self, pool: Pool, pairs: &[Pair]) -> Result<(), String> {
        *self.saves.borrow_mut() += 1;
        if *self.fail.borrow() {
            return Err("No space left on device".into());
        }
        self.saved.borrow_mut().insert(pool.0, pairs.to_vec());
        Ok(())
    }
}

struct FakeInfo;

impl SystemInfo for FakeInfo {
    fn read(&self, key: &str) -> String {
        format!("fake {key}")
    }
}

fn logic(store: &MemStore) -> GuestInfoLogic {
    GuestInfoLogic::new(Box::new(store.clone()), Box::new(FakeInfo))
}

fn send(logic: &mut GuestInfoLogic, message: &KvpMessage) -> Result<(Status, KvpMessage), Refusal> {
    let request = Message::request(
        MessageType::KVP_EXCHANGE,
        IcVersion::new(3, 0),
        IcVersion::new(5, 0),
        3,
        message.to_body(),
    );
    let reply = answer_of(logic, 1, &request, IcVersion::new(5, 0), Instant::now())?;
    assert_eq!(
        reply.body.len(),
        request.body.len(),
        "an answer is as long as its request"
    );
    Ok((reply.header.status, KvpMessage::parse(&reply.body).unwrap()))
}

fn string_value(text: &str) -> Vec<u8> {
    utf16_bytes(&utf16(text))
}

fn set(pool: Pool, key: &str, value: &str) -> KvpMessage {
    KvpMessage::new(
        Operation::SET,
        pool,
        KvpBody::Value(ValueRecord::new(
            value_type::STRING,
            &utf16(key),
            &string_value(value),
        )),
    )
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
    let (status, _) = send(&mut logic, &enumerate(Pool::AUTO, 10)).unwrap();
    assert_eq!(status, Status::CONTINUE);
    let (status, _) = send(&mut logic, &enumerate(Pool::AUTO, u32::MAX)).unwrap();
    assert_eq!(status, Status::CONTINUE);
}

#[test]
fn set_get_enumerate_delete_on_the_stored_pools() {
    let store = MemStore::default();
    let mut logic = logic(&store);
    for pool in STORED_POOLS {
        assert_eq!(
            send(&mut logic, &set(pool, "Role", "web")).unwrap().0,
            Status::OK
        );
        assert_eq!(
            send(&mut logic, &set(pool, "Zone", "a")).unwrap().0,
            Status::OK
        );
        assert_eq!(
            send(&mut logic, &set(pool, "Role", "db")).unwrap().0,
            Status::OK
        );
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
        assert_eq!(logic.pairs(pool).len(), 1);
    }
    // The pools are separate, and saved: 0, 1, 3 and 4 alike.
    for pool in [0u8, 1, 3, 4] {
        assert_eq!(store.saved.borrow()[&pool].len(), 1, "pool {pool}");
    }
}

#[test]
fn values_are_stored_with_their_type_and_bytes() {
    let store = MemStore::default();
    let mut logic = logic(&store);
    let record = ValueRecord::new(value_type::DWORD, &utf16("Count"), &42u32.to_le_bytes());
    let message = KvpMessage::new(Operation::SET, Pool::EXTERNAL, KvpBody::Value(record));
    assert_eq!(send(&mut logic, &message).unwrap().0, Status::OK);
    let (_, answer) = send(&mut logic, &get(Pool::EXTERNAL, "Count")).unwrap();
    let record = answer.record().unwrap();
    assert_eq!(record.value_type, value_type::DWORD);
    assert_eq!(record.value().unwrap(), &42u32.to_le_bytes());
}

#[test]
fn pools_are_reloaded_at_start() {
    let store = MemStore::default();
    let mut first = logic(&store);
    send(&mut first, &set(Pool::GUEST, "kept", "yes")).unwrap();
    drop(first);
    let mut second = logic(&store);
    let (status, answer) = send(&mut second, &get(Pool::GUEST, "kept")).unwrap();
    assert_eq!(status, Status::OK);
    assert_eq!(shown(&answer).1, "yes");
}

#[test]
fn only_the_auto_pool_and_unknown_pools_cannot_be_written() {
    let store = MemStore::default();
    let mut logic = logic(&store);
    for pool in [Pool::AUTO, Pool(5), Pool(9)] {
        let refusal = send(&mut logic, &set(pool, "k", "v")).unwrap_err();
        assert_eq!(refusal.status, Status::FAIL, "{pool}");
        let refusal = send(&mut logic, &delete(pool, "OSName")).unwrap_err();
        assert_eq!(refusal.status, Status::FAIL, "{pool}");
        assert_eq!(
            send(&mut logic, &enumerate(pool, 0)).unwrap().0,
            if pool == Pool::AUTO {
                Status::OK
            } else {
                Status::CONTINUE
            }
        );
    }
    let refusal = send(&mut logic, &set(Pool::AUTO, "OSName", "Windows")).unwrap_err();
    assert!(refusal.why.contains("intrinsic"), "{}", refusal.why);
    assert_eq!(*store.saves.borrow(), 0);
    // GET on the auto pool finds the intrinsic values by name, unchanged by the refused Set.
    let (status, answer) = send(&mut logic, &get(Pool::AUTO, "OSName")).unwrap();
    assert_eq!(status, Status::OK);
    assert_eq!(shown(&answer).1, "fake OSName");
    // openvmm's host writes pool 3 (AUTO_EXTERNAL): accepted like pools 0 and 1.
    assert_eq!(
        send(&mut logic, &set(Pool::AUTO_EXTERNAL, "k", "v"))
            .unwrap()
            .0,
        Status::OK
    );
}

#[test]
fn a_full_pool_refuses_new_keys_and_changes_nothing() {
    let store = MemStore::default();
    let mut logic = logic(&store);
    for n in 0..MAX_PAIRS {
        assert_eq!(
            send(&mut logic, &set(Pool::EXTERNAL, &format!("k{n}"), "v"))
                .unwrap()
                .0,
            Status::OK
        );
    }
    let refusal = send(&mut logic, &set(Pool::EXTERNAL, "one-too-many", "v")).unwrap_err();
    assert_eq!(refusal.status, Status::FAIL);
    assert!(refusal.why.contains("1024"), "{}", refusal.why);
    assert_eq!(logic.pairs(Pool::EXTERNAL).len(), MAX_PAIRS);
    assert_eq!(store.saved.borrow()[&0].len(), MAX_PAIRS);
    // Replacing an existing key still works; the other pool is not full.
    assert_eq!(
        send(&mut logic, &set(Pool::EXTERNAL, "k7", "new"))
            .unwrap()
            .0,
        Status::OK
    );
    assert_eq!(
        send(&mut logic, &set(Pool::GUEST, "k", "v")).unwrap().0,
        Status::OK
    );
}

/// A SET of `record` on the external pool.
fn set_record(record: ValueRecord) -> KvpMessage {
    KvpMessage::new(Operation::SET, Pool::EXTERNAL, KvpBody::Value(record))
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
    for record in cases {
        let refusal = send(&mut logic, &set_record(record.clone())).unwrap_err();
        assert_eq!(refusal.status, Status::INVALID_ARG, "{record:?}");
    }
    assert!(logic.pairs(Pool::EXTERNAL).is_empty());
    assert_eq!(*store.saves.borrow(), 0);
    // The largest a host can read back: 255 key units and their NUL, 1023 value units and theirs.
    let key = vec![0x4B; MAX_KEY_SIZE / 2 - 1];
    let value = string_value(&"v".repeat(MAX_VALUE_SIZE / 2 - 1));
    let record = ValueRecord::new(value_type::STRING, &key, &value);
    assert_eq!((record.key_size, record.value_size), (512, 2048));
    assert_eq!(send(&mut logic, &set_record(record)).unwrap().0, Status::OK);
    assert_eq!(logic.pairs(Pool::EXTERNAL)[0].key.len(), 255);
    assert_eq!(logic.pairs(Pool::EXTERNAL)[0].value.len(), MAX_VALUE_SIZE);
}

#[test]
fn records_no_host_could_read_back_are_refused_with_invalidarg_and_a_reason() {
    let store = MemStore::default();
    let mut logic = logic(&store);
    let mut cases: Vec<(&str, ValueRecord)> = Vec::new();
    // 256 key units and no NUL: stored, it would come back cut or as another key.
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
    assert_eq!(*store.saves.borrow(), 0);
}

#[test]
fn accepted_values_are_stored_in_the_form_a_host_reads_back() {
    let store = MemStore::default();
    let mut logic = logic(&store);
    // (key, type sent, bytes sent, type kept, bytes kept)
    type Case = (&'static str, u32, Vec<u8>, u32, Vec<u8>);
    let cases: [Case; 5] = [
        // A string without its NUL gets one; one with bytes after its NUL is cut there.
        (
            "no-nul",
            1,
            utf16_bytes(&utf16("ab"))[..4].to_vec(),
            1,
            string_value("ab"),
        ),
        (
            "cut",
            2,
            [string_value("ab"), string_value("zz")].concat(),
            2,
            string_value("ab"),
        ),
        ("empty", 1, Vec::new(), 1, string_value("")),
        // Linux's REG_U64 (8) is kept as REG_QWORD (11), the number openvmm and Windows read.
        (
            "u64",
            8,
            7u64.to_le_bytes().to_vec(),
            11,
            7u64.to_le_bytes().to_vec(),
        ),
        (
            "dword",
            4,
            9u32.to_le_bytes().to_vec(),
            4,
            9u32.to_le_bytes().to_vec(),
        ),
    ];
    for (key, sent_type, sent, kept_type, kept) in &cases {
        let record = ValueRecord::new(*sent_type, &utf16(key), sent);
        assert_eq!(
            send(&mut logic, &set_record(record)).unwrap().0,
            Status::OK,
            "{key}"
        );
        let (_, answer) = send(&mut logic, &get(Pool::EXTERNAL, key)).unwrap();
        let record = answer.record().unwrap();
        assert_eq!(
            (record.value_type, record.value().unwrap()),
            (*kept_type, &kept[..]),
            "{key}"
        );
        assert_eq!(record.key_size as usize, 2 * (key.len() + 1), "{key}");
    }
    // Every enumerated record passes the checks openvmm's host makes before it accepts one.
    for index in 0..cases.len() as u32 {
        let (status, answer) = send(&mut logic, &enumerate(Pool::EXTERNAL, index)).unwrap();
        assert_eq!(status, Status::OK);
        let record = answer.record().unwrap();
        assert!(crate::wire::kvp::canonical_key(&record.key_area, record.key_size).is_ok());
        let value = record.value().unwrap();
        assert_eq!(
            crate::wire::kvp::canonical_value(record.value_type, value),
            Ok((record.value_type, value.to_vec()))
        );
    }
}

#[test]
fn stored_pairs_no_host_could_read_are_dropped_at_start() {
    let store = MemStore::default();
    store.saved.borrow_mut().insert(
        0,
        vec![
            Pair {
                key: utf16("good"),
                value_type: value_type::STRING,
                value: string_value("yes"),
            },
            Pair {
                key: utf16("bad-type"),
                value_type: 3,
                value: vec![1, 2],
            },
            Pair {
                key: vec![0x41, 0xDC00],
                value_type: value_type::STRING,
                value: string_value("lone surrogate key"),
            },
            Pair {
                key: utf16("unterminated"),
                value_type: value_type::STRING,
                value: utf16_bytes(&utf16("x"))[..2].to_vec(),
            },
        ],
    );
    let logic = logic(&store);
    let keys: Vec<String> = logic
        .pairs(Pool::EXTERNAL)
        .iter()
        .map(|pair| lossy(&pair.key))
        .collect();
    assert_eq!(keys, ["good", "unterminated"]);
    assert_eq!(logic.pairs(Pool::EXTERNAL)[1].value, string_value("x"));
}

#[test]
fn a_key_without_its_terminator_finds_the_same_stored_key() {
    let store = MemStore::default();
    let mut logic = logic(&store);
    send(&mut logic, &set(Pool::GUEST, "AB", "found")).unwrap();
    // GET and DELETE look keys up leniently: "AB" with key_size 4 (no NUL) is "AB".
    let mut record = ValueRecord::new(value_type::STRING, &utf16("AB"), &[]);
    record.key_size = 4;
    let message = KvpMessage::new(Operation::GET, Pool::GUEST, KvpBody::Value(record));
    let (status, answer) = send(&mut logic, &message).unwrap();
    assert_eq!(status, Status::OK);
    assert_eq!(shown(&answer).1, "found");
    assert_eq!(
        answer.record().unwrap().key_size,
        6,
        "the answer's key is canonical"
    );
    // "A" is another key.
    assert_eq!(
        send(&mut logic, &get(Pool::GUEST, "A")).unwrap().0,
        Status::CONTINUE
    );
}

#[test]
fn a_failed_save_answers_an_error_and_keeps_the_pool() {
    let store = MemStore::default();
    let mut logic = logic(&store);
    send(&mut logic, &set(Pool::EXTERNAL, "a", "1")).unwrap();
    *store.fail.borrow_mut() = true;
    let refusal = send(&mut logic, &set(Pool::EXTERNAL, "a", "2")).unwrap_err();
    assert_eq!(refusal.status, Status::FAIL);
    assert!(refusal.why.contains("No space left"), "{}", refusal.why);
    assert_eq!(
        send(&mut logic, &delete(Pool::EXTERNAL, "a"))
            .unwrap_err()
            .status,
        Status::FAIL
    );
    *store.fail.borrow_mut() = false;
    let (_, answer) = send(&mut logic, &get(Pool::EXTERNAL, "a")).unwrap();
    assert_eq!(shown(&answer).1, "1");
}

#[test]
fn ip_operations_and_short_bodies_are_refused() {
    let store = MemStore::default();
    let mut logic = logic(&store);
    let ip = KvpMessage::new(
        Operation::SET_IP_INFO,
        Pool::AUTO,
        KvpBody::Other(vec![0; 100]),
    );
    assert_eq!(
        send(&mut logic, &ip).unwrap_err().status,
        Status::NOT_SUPPORTED
    );
    let request = Message::request(
        MessageType::KVP_EXCHANGE,
        IcVersion::new(3, 0),
        IcVersion::new(5, 0),
        3,
        vec![0, 0, 0, 0, 1, 2],
    );
    let refusal = answer_of(
        &mut logic,
        1,
        &request,
        IcVersion::new(5, 0),
        Instant::now(),
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
            // Mostly the size the key's units and a NUL take, sometimes any size at all.
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
