use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use super::*;
use crate::wire::kvp::{utf16, utf16_bytes, MAX_KEY_SIZE, MAX_VALUE_SIZE};
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
    let reply = logic.request(1, &request, IcVersion::new(5, 0), Instant::now())?;
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
    // The pools are separate, and saved.
    assert_eq!(store.saved.borrow()[&0].len(), 1);
    assert_eq!(store.saved.borrow()[&1].len(), 1);
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
fn the_auto_pools_cannot_be_written() {
    let store = MemStore::default();
    let mut logic = logic(&store);
    for pool in [Pool::AUTO, Pool::AUTO_EXTERNAL, Pool(9)] {
        let refusal = send(&mut logic, &set(pool, "k", "v")).unwrap_err();
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
    assert_eq!(*store.saves.borrow(), 0);
    // GET on the auto pool finds the intrinsic values by name.
    let (status, answer) = send(&mut logic, &get(Pool::AUTO, "OSName")).unwrap();
    assert_eq!(status, Status::OK);
    assert_eq!(shown(&answer).1, "fake OSName");
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
        let message = KvpMessage::new(
            Operation::SET,
            Pool::EXTERNAL,
            KvpBody::Value(record.clone()),
        );
        let refusal = send(&mut logic, &message).unwrap_err();
        assert_eq!(refusal.status, Status::FAIL, "{record:?}");
    }
    assert!(logic.pairs(Pool::EXTERNAL).is_empty());
    assert_eq!(*store.saves.borrow(), 0);
    // The largest sizes the wire allows are fine.
    let key: Vec<u16> = vec![0x4B; MAX_KEY_SIZE / 2];
    let mut record = ValueRecord::new(value_type::STRING, &key, &vec![7; MAX_VALUE_SIZE]);
    record.key_area = key.iter().flat_map(|u| u.to_le_bytes()).collect();
    record.key_size = MAX_KEY_SIZE as u32;
    let message = KvpMessage::new(Operation::SET, Pool::EXTERNAL, KvpBody::Value(record));
    assert_eq!(send(&mut logic, &message).unwrap().0, Status::OK);
    assert_eq!(logic.pairs(Pool::EXTERNAL)[0].key.len(), 256);
    assert_eq!(logic.pairs(Pool::EXTERNAL)[0].value.len(), MAX_VALUE_SIZE);
}

#[test]
fn keys_with_unpaired_surrogates_or_no_terminator_are_distinct_keys() {
    let store = MemStore::default();
    let mut logic = logic(&store);
    let surrogate = vec![0x41, 0xD800];
    let record = ValueRecord::new(value_type::STRING, &surrogate, &string_value("lone"));
    let message = KvpMessage::new(Operation::SET, Pool::GUEST, KvpBody::Value(record));
    assert_eq!(send(&mut logic, &message).unwrap().0, Status::OK);
    // "A" alone is another key.
    assert_eq!(
        send(&mut logic, &get(Pool::GUEST, "A")).unwrap().0,
        Status::CONTINUE
    );
    // A key without its terminator names the same key as with one.
    let mut record = ValueRecord::new(value_type::STRING, &surrogate, &[]);
    record.key_size = 4;
    let message = KvpMessage::new(Operation::GET, Pool::GUEST, KvpBody::Value(record));
    let (status, answer) = send(&mut logic, &message).unwrap();
    assert_eq!(status, Status::OK);
    assert_eq!(shown(&answer).1, "lone");
    assert_eq!(logic.pairs(Pool::GUEST)[0].key, surrogate);
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
    let refusal = logic
        .request(1, &request, IcVersion::new(5, 0), Instant::now())
        .unwrap_err();
    assert_eq!(refusal.status, Status::INVALID_ARG);
}
