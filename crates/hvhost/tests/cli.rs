//! hvhost's command line on its own, without an agent: what it refuses and how it says so. (The exchanges
//! with a real agent are the agent's end-to-end tests, tests/*.rs at the top of the workspace.) Having
//! integration tests also makes `cargo test --workspace` build the hvhost binary those tests run.
// Unix sockets and the no_vsock guard: these run on Linux; hvhost.exe's are tests/windows/e2e.sh.
#![cfg(unix)]

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::process::{Command, Output};

use common::no_vsock;

fn hvhost(args: &[&str]) -> Output {
    no_vsock(&mut Command::new(env!("CARGO_BIN_EXE_hvhost")))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn help_lists_every_command_and_exits_0() {
    let output = hvhost(&["--help"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let usage = String::from_utf8_lossy(&output.stdout);
    for command in [
        "serve ADDR",
        "heartbeat ADDR",
        "shutdown ADDR",
        "kvp ADDR",
        "backup ADDR",
    ] {
        assert!(usage.contains(&format!("hvhost {command}")), "{usage}");
    }
}

#[test]
fn usage_errors_exit_2_and_name_what_was_wrong() {
    for (args, says) in [
        (&["frobnicate"][..], "expected a command and an address"),
        (
            &["heartbeat", "bogus:addr"][..],
            "'bogus:addr' is not an address",
        ),
        (
            &["kvp", "unix:/nonexistent", "enumerate", "--pool", "9x"][..],
            "--pool '9x' is not external, guest",
        ),
        (
            &["backup", "unix:/nonexistent"][..],
            "backup needs one of --freeze",
        ),
        (
            &["backup", "unix:/nonexistent", "--freeze", "--thaw"][..],
            "exclude each other",
        ),
        (
            &["backup", "unix:/nonexistent", "--run"][..],
            "--run needs a command",
        ),
        (
            &["heartbeat", "unix:/nonexistent", "--thaw"][..],
            "are for backup",
        ),
        (
            &["backup", "unix:/nonexistent", "--timeout", "soon", "--thaw"][..],
            "--timeout 'soon' is not a number of seconds",
        ),
    ] {
        let output = hvhost(args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(says),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn an_agent_that_is_not_there_exits_1_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("unix:{}", dir.path().join("absent.sock").display());
    let output = hvhost(&["heartbeat", &address]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(
        text.contains("cannot connect to") && text.contains("ENOENT"),
        "{text}"
    );
    assert!(text.contains("is the agent running"), "{text}");
}
