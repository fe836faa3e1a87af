//! One `hvhost serve` holding many agents at once: `hvbench hostscale` at a small scale (200 agents built
//! on the agent's own channel code), checked for behaviour only. The timing figures come from
//! `hvbench hostscale` at 1,000 agents (docs/PERFORMANCE.md).

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::process::Command;

use common::{host_bin, no_vsock};

const BENCH: &str = env!("CARGO_BIN_EXE_hvbench");

/// The `key=value` fields of a line.
fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

#[test]
fn one_hvhost_answers_every_heartbeat_of_200_agents_and_drops_none() {
    let output = no_vsock(&mut Command::new(BENCH))
        .args(["hostscale", "--agents", "200"])
        .arg("--host")
        .arg(host_bin())
        .args(["--settle", "2", "--window", "2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "hvbench hostscale failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = text
        .lines()
        .rfind(|line| line.starts_with("hostscale: ") && line.contains("unanswered="))
        .unwrap_or_else(|| panic!("no summary line in {text}"));
    assert_eq!(field(summary, "agents"), 200, "{summary}");
    assert_eq!(field(summary, "dropped"), 0, "{summary}");
    assert_eq!(field(summary, "summaries"), 200, "{summary}");
    assert_eq!(field(summary, "unanswered"), 0, "{summary}");
    // Every agent is heartbeated every second: over 4 s each answered at least twice.
    assert!(field(summary, "answered_by_agents") >= 400, "{summary}");
}
