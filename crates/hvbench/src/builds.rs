//! The two builds side by side: the glibc release build (`make build`, what the .deb ships) and the fully
//! static musl build (`make static`, the tarball's). For each, a fresh agent connected and idle: VmRSS,
//! PSS (/proc/PID/smaps_rollup) and the binary's size, each against its target, and its heartbeat round
//! trips, taking turns with the raw echo (on one CPU unless `--no-pin`) as the main figures do, so the two
//! builds' p50 compare in one run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::peer::{round_trips, Peer, Server};
use crate::pin::Pinned;
use crate::procfs::Memory;
use crate::run::{connect, Context, Failure, Running};
use crate::{figure, say, start_agent, start_echo};

/// What `make static` builds, relative to the directory holding hvbench (target/release).
const STATIC_AGENT: &str = "../x86_64-unknown-linux-musl/release/hvagent";
/// A binary's target, either build: 1 MiB.
const SIZE_TARGET: u64 = 1024 * 1024;
/// Quiet time between connecting and reading the memory figures.
const SETTLE: Duration = Duration::from_millis(200);

/// One build and its targets in KiB (PSS has none for the static build: it shares no page).
struct Build {
    name: &'static str,
    path: PathBuf,
    rss_target: u64,
    pss_target: Option<u64>,
}

/// What one build measured.
struct Measured {
    memory: Memory,
    size: u64,
    p50: f64,
}

/// The glibc build (`agent`) and the static one (`given`, or the musl build beside target/release), or
/// only the glibc build, said so, when the static one is not built.
fn builds(agent: &Path, given: Option<&Path>) -> Result<Vec<Build>, Failure> {
    let mut builds = vec![Build {
        name: "glibc",
        path: agent.to_path_buf(),
        rss_target: 2048,
        pss_target: Some(1024),
    }];
    let path = match given {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()
            .context(|| "cannot find hvbench's own path")?
            .with_file_name(STATIC_AGENT),
    };
    if path.exists() {
        builds.push(Build {
            name: "static",
            path,
            rss_target: 1024,
            pss_target: None,
        });
    } else {
        say(&format!(
            "builds: no static agent at {}; `make static` builds it (its figures are skipped)",
            path.display()
        ));
    }
    Ok(builds)
}

/// Starts one agent of each build, measures each connected and idle, then times `count` heartbeat round
/// trips on each against the raw echo; prints the table, the `footprint_*` figures and a `builds:` line.
pub(crate) fn compare(
    agent: &Path,
    static_agent: Option<&Path>,
    scratch: &Path,
    count: usize,
    pin: bool,
) -> Result<(), Failure> {
    let builds = builds(agent, static_agent)?;
    // The agents live until the figures are read (dropping one kills it).
    let mut running: Vec<Running> = Vec::new();
    let mut peers = Vec::new();
    let mut memories = Vec::new();
    for build in &builds {
        let socket = scratch.join(format!("build-{}.sock", build.name));
        let mut agent = start_agent(&build.path, scratch, &socket)?;
        let mut peer = Peer::agent(&socket, &mut agent)?;
        peer.name = build.name;
        std::thread::sleep(SETTLE);
        memories.push(Memory::of(agent.pid())?);
        peers.push(peer);
        running.push(agent);
    }
    let echo_socket = scratch.join("build-echo.sock");
    let mut echo = start_echo(&echo_socket)?;
    peers.push(Peer::new(
        "echo",
        connect(&echo_socket, &mut echo)?,
        Server::Echo,
    ));
    let mut servers: Vec<i32> = running.iter().map(Running::pid).collect();
    servers.push(echo.pid());
    let pinned = pin.then(|| Pinned::to_current_cpu(&servers)).transpose()?;
    round_trips(&mut peers, count)?;
    drop(pinned);
    let echo_p50 = peers[builds.len()].trips.quantile(0.5);
    let mut measured = Vec::new();
    for ((build, memory), peer) in builds.iter().zip(memories).zip(&peers) {
        let size = std::fs::metadata(&build.path)
            .context(|| format!("cannot stat {}", build.path.display()))?
            .len();
        measured.push(Measured {
            memory,
            size,
            p50: peer.trips.quantile(0.5),
        });
    }
    report(&builds, &measured, echo_p50);
    Ok(())
}

fn report(builds: &[Build], measured: &[Measured], echo_p50: f64) {
    say("build      VmRSS KiB   PSS KiB   RssAnon KiB   binary bytes   heartbeat p50 µs (agent/echo)");
    for (build, m) in builds.iter().zip(measured) {
        say(&format!(
            "{:<10} {:>9} {:>9} {:>13} {:>14} {:>10.1} ({:.2}x)",
            build.name,
            m.memory.rss,
            m.memory.pss,
            m.memory.anon,
            m.size,
            m.p50,
            m.p50 / echo_p50
        ));
    }
    let mut line = String::from("builds:");
    for (build, m) in builds.iter().zip(measured) {
        let name = build.name;
        figure(
            format!("footprint_{name}_rss"),
            format!(
                "{} KiB connected and idle (target <= {})",
                m.memory.rss, build.rss_target
            ),
        );
        let pss_target = build
            .pss_target
            .map_or(String::new(), |target| format!(" (target <= {target})"));
        figure(
            format!("footprint_{name}_pss"),
            format!("{} KiB{pss_target}", m.memory.pss),
        );
        figure(
            format!("footprint_{name}_size"),
            format!("{} bytes (target <= {SIZE_TARGET})", m.size),
        );
        figure(
            format!("footprint_{name}_rtt_p50"),
            format!(
                "{:.1} us, {:.2} x the echo's {echo_p50:.1} us",
                m.p50,
                m.p50 / echo_p50
            ),
        );
        line.push_str(&format!(
            " {name}_rss_kib={} {name}_pss_kib={} {name}_size_bytes={} {name}_rtt_ratio_echo_p50={:.2}",
            m.memory.rss,
            m.memory.pss,
            m.size,
            m.p50 / echo_p50
        ));
    }
    say(&line);
}
