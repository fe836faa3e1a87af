use super::*;
use hvproto::service::guestinfo::pair::file_bytes;

fn settings(dir: &Path) -> GuestInfoSettings {
    GuestInfoSettings {
        pool_dir: dir.to_path_buf(),
        ..GuestInfoSettings::default()
    }
}

fn words(text: &str) -> Vec<String> {
    text.split(' ').map(String::from).collect()
}

#[test]
fn actions_and_pools_parse_and_anything_else_is_a_usage_error() {
    assert_eq!(parse_action(&words("list")), Ok(Action::List));
    assert_eq!(parse_action(&words("get k")), Ok(Action::Get("k".into())));
    assert_eq!(
        parse_action(&words("set k v")),
        Ok(Action::Set("k".into(), "v".into()))
    );
    assert_eq!(
        parse_action(&words("delete k")),
        Ok(Action::Delete("k".into()))
    );
    for wrong in ["set k", "get", "list x", "frob", "delete a b"] {
        assert_eq!(
            parse_action(&words(wrong)).unwrap_err().status,
            2,
            "{wrong}"
        );
    }
    assert_eq!(parse_action(&[]).unwrap_err().status, 2);
    assert_eq!(parse_pool("guest"), Ok(Pool::GUEST));
    assert_eq!(parse_pool("auto-internal"), Ok(Pool::AUTO_INTERNAL));
    assert_eq!(parse_pool("3"), Ok(Pool::AUTO_EXTERNAL));
    assert_eq!(parse_pool("5").unwrap_err().status, 2);
    assert_eq!(parse_pool("hosts").unwrap_err().status, 2);
}

#[test]
fn set_get_list_delete_work_on_the_files_with_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let set = Action::Set("Role".into(), "web \"1\"".into());
    assert_eq!(
        run(&settings, &set, None, false).unwrap(),
        "set Role in the guest (1) pool\n"
    );
    let get = Action::Get("Role".into());
    assert_eq!(
        run(&settings, &get, Some(Pool::GUEST), false).unwrap(),
        "web \"1\"\n"
    );
    // get reads the external pool unless told otherwise.
    assert_eq!(run(&settings, &get, None, false).unwrap_err().status, 1);
    let listed = run(&settings, &Action::List, None, false).unwrap();
    assert_eq!(listed, "pool=guest key=\"Role\" value=\"web \\\"1\\\"\"\n");
    let json: serde_json::Value =
        serde_json::from_str(&run(&settings, &Action::List, None, true).unwrap()).unwrap();
    assert_eq!(json[0]["value"], "web \"1\"");
    assert_eq!(json[0]["pool_number"], 1);
    let (pairs, _) = pool_file::read(dir.path(), Pool::GUEST, Wait::Forever).unwrap();
    assert_eq!(pairs, [Pair::text("Role", "web \"1\"")]);
    let delete = Action::Delete("Role".into());
    assert!(run(&settings, &delete, None, true)
        .unwrap()
        .contains("\"done\":\"deleted\""));
    assert_eq!(run(&settings, &delete, None, false).unwrap_err().status, 1);
}

#[test]
fn set_refuses_what_a_host_could_not_read_back_the_auto_pool_and_a_full_pool() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path());
    for (key, value) in [
        ("", "v"),
        ("k\0", "v"),
        ("k", "v\0"),
        (&*"k".repeat(256), "v"),
        ("k", &*"é".repeat(1024)),
    ] {
        let refused = run(
            &settings,
            &Action::Set(key.into(), value.into()),
            None,
            false,
        );
        assert_eq!(refused.unwrap_err().status, 2, "{key:?}");
    }
    let refused = run(
        &settings,
        &Action::Set("k".into(), "v".into()),
        Some(Pool::AUTO),
        false,
    );
    assert_eq!(refused.unwrap_err().status, 2);
    settings.pool_max_bytes = file_bytes(1);
    run(&settings, &Action::Set("a".into(), "1".into()), None, false).unwrap();
    let full = run(&settings, &Action::Set("b".into(), "1".into()), None, false).unwrap_err();
    assert_eq!(full.status, 1);
    assert!(full.message.contains("pool_max_bytes"), "{}", full.message);
    run(&settings, &Action::Set("a".into(), "2".into()), None, false).unwrap();
}

#[test]
fn the_auto_pool_lists_the_intrinsic_values() {
    let dir = tempfile::tempdir().unwrap();
    let listed = run(
        &settings(dir.path()),
        &Action::List,
        Some(Pool::AUTO),
        false,
    )
    .unwrap();
    assert_eq!(listed.lines().count(), INTRINSIC_KEYS.len());
    assert!(
        listed.contains("key=\"IntegrationServicesVersion\""),
        "{listed}"
    );
}
