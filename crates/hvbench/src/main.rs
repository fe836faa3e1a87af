//! hvbench: the figures `make bench` prints (docs/PERFORMANCE.md). It starts the release hvagent listening
//! on a Unix socket in a temp dir and measures, in one run:
//! - heartbeat round trips through the agent against a raw echo server on the same kind of Unix socket, in its
//!   own process like the agent (`hvbench echo PATH`, not listed in --help), and against qemu-guest-agent's
//!   `guest-ping` when qemu-ga is installed. The client does the same work for the agent and the echo
//!   (encode a heartbeat, write, read the answer back, decode and check it) and writes a command line and
//!   reads the answer line for qemu-ga; the servers take turns in blocks so that drift in CPU speed hits
//!   all alike, with the client and every server on one CPU (pin.rs says why; `--no-pin` leaves them to
//!   the scheduler): p50, p99, round trips per second and the ratios (targets: ≤ 1.15× echo, ≤ 0.5×
//!   qemu-ga);
//! - the agent's RSS when idle and connected, after those round trips, and after 1,000,000 pipelined
//!   heartbeats (target ≤ 2 MiB and flat);
//! - pipelined heartbeats per second with 16 and with 1 request in flight (target ≥ 100,000/s);
//! - the agent's context switches while it holds a negotiated connection with no traffic (target 0);
//! - the time from SIGTERM to the agent's exit (target < 1 s), polled every 100 µs;
//! - the time from spawning a fresh agent to its READY=1 on a NOTIFY_SOCKET (target ≤ 10 ms) and to its
//!   first negotiation answer, and the size of the binary, which the release profile strips (target ≤ 1 MiB);
//! - heartbeat p99 while another connection sends 10,000 key-value Sets, over idle p99 (kvpload.rs; target
//!   ≤ 2×);
//! - the two builds side by side (builds.rs): the glibc release build and the static musl build of
//!   `make static`, each connected and idle: VmRSS (targets ≤ 2 MiB and ≤ 1 MiB), PSS (glibc ≤ 1 MiB),
//!   binary size (≤ 1 MiB each) and heartbeat p50 against the echo;
//! - file copy (copy.rs): `hvhost copy` throughput against a raw stream of the same bytes on the same path
//!   (target ≥ 0.8×), and heartbeat p50/p99 on the same agent during a copy against without one.
//!
//! `hvbench hostscale` measures hvhost serving many agents (hostscale.rs).
//!
//! Figures only; nothing is asserted. Exit status: 0 ok, 1 a measurement failed, 2 usage error.

mod builds;
mod copy;
mod hostscale;
mod kvpload;
mod peer;
mod pin;
mod procfs;
mod qemu_ga;
mod run;
mod startup;

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hvhost::client::{self, RoundTrips};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use hostscale::{hostscale, parse_steps, ScaleOptions};
use peer::{echo, round_trips, Peer, Server};
use pin::Pinned;
use procfs::{context_switches, Memory};
use run::{connect, exit_text, Context, Failure, Running, Scratch};

const USAGE: &str = "\
usage: hvbench [--agent PATH] [--static-agent PATH] [--count N] [--heartbeats N] [--idle-seconds S] [--starts N] [--qemu-ga PATH]
               [--no-pin]
       hvbench hostscale [--host PATH] [--agents 10,100,1000] [--window S] [--settle S]
       hvbench [--agent PATH] copy
       hvbench [--agent PATH] kvp   only the key-value load figure: heartbeat p99 during 10,000 Sets

Benchmarks hvagent over Unix sockets in a temp dir and prints figures (`name: value unit` lines and one
`bench:` summary line); it asserts nothing.
  --agent PATH       the agent binary (default: hvagent beside hvbench)
  --static-agent PATH  the static build compared with it (default: the musl build of `make static`)
  --count N          timed heartbeat round trips per server, after 1000 warm-up (default 20000)
  --heartbeats N     pipelined heartbeats (16 in flight) before the loaded RSS (default 1000000)
  --starts N         fresh agents timed from spawn to READY=1 and first answer (default 20)
  --qemu-ga PATH     qemu-guest-agent to compare with (default: qemu-ga on PATH or in /usr/sbin)
  --idle-seconds S   how long to watch a connected, idle agent for wake-ups (default 10)
  --no-pin           time the round trips wherever the scheduler puts the client and the servers, not
                     all on one CPU (on a VM the figures then swing with the placement)

copy: the file-copy figures alone (the whole run ends with them too): hvhost copy of 64 MiB against a
raw stream into the same directory, and heartbeat round trips during a copy.

hostscale: one `hvhost serve --interval 1` as the host peer of many simulated agents (the agent's own
channel code, in one poll loop): per step, hvhost's CPU, RSS and round trips; then whether every
heartbeat was answered.
  --host PATH        the hvhost binary (default: hvhost beside hvbench)
  --agents LIST      agents connected at each step (default 10,100,1000)
  --window S         seconds measured at each step (default 20)
  --settle S         seconds between a step's connects and its window (default 3)";

/// Untimed round trips per server before the timed ones.
pub(crate) const WARM_UP: usize = 1000;
/// Round trips one server does before the other takes its turn.
pub(crate) const BLOCK: usize = 1000;
/// Requests in flight for the pipelined figure.
const PIPELINE_DEPTH: usize = 16;
/// How long any one read or write, or a server's start, may take before the run counts as failed.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the agent may take to exit after SIGTERM before it is killed and the run counts as failed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Quiet time after the idle connection is set up and before wake-ups are counted.
const SETTLE: Duration = Duration::from_millis(200);

/// What one run measures.
struct Options {
    agent: Option<PathBuf>,
    static_agent: Option<PathBuf>,
    count: usize,
    heartbeats: usize,
    idle_seconds: u64,
    starts: usize,
    qemu_ga: Option<PathBuf>,
    /// Whether the round trips run with the client and the servers on one CPU.
    pin: bool,
}

enum Invocation {
    Bench(Options),
    HostScale(ScaleOptions),
    /// Only the key-value load figure (kvpload.rs), with this agent.
    Kvp(Option<PathBuf>),
    Echo(PathBuf),
    Sink(PathBuf, PathBuf),
    /// `hvbench copy [--agent PATH]`: the file-copy figures alone.
    Copy(Option<PathBuf>),
    Help,
}

fn parse_args() -> Result<Invocation, lexopt::Error> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut options = Options {
        agent: None,
        static_agent: None,
        count: 20_000,
        heartbeats: 1_000_000,
        idle_seconds: 10,
        starts: 20,
        qemu_ga: None,
        pin: true,
    };
    while let Some(arg) = parser.next()? {
        match arg {
            Long("no-pin") => options.pin = false,
            Long("agent") => options.agent = Some(parser.value()?.into()),
            Long("static-agent") => options.static_agent = Some(parser.value()?.into()),
            Long("count") => options.count = parser.value()?.parse()?,
            Long("heartbeats") => options.heartbeats = parser.value()?.parse()?,
            Long("idle-seconds") => options.idle_seconds = parser.value()?.parse()?,
            Long("starts") => options.starts = parser.value()?.parse()?,
            Long("qemu-ga") => options.qemu_ga = Some(parser.value()?.into()),
            Long("help") | Short('h') => return Ok(Invocation::Help),
            Value(value) if value == "echo" => return Ok(Invocation::Echo(parser.value()?.into())),
            Value(value) if value == "copy" => return Ok(Invocation::Copy(options.agent)),
            Value(value) if value == "sink" => {
                let socket = parser.value()?.into();
                return Ok(Invocation::Sink(socket, parser.value()?.into()));
            }
            Value(value) if value == "hostscale" => return parse_hostscale(parser),
            Value(value) if value == "kvp" => return Ok(Invocation::Kvp(options.agent)),
            other => return Err(other.unexpected()),
        }
    }
    if options.count == 0 || options.heartbeats == 0 || options.starts == 0 {
        return Err("--count, --heartbeats and --starts must be at least 1".into());
    }
    Ok(Invocation::Bench(options))
}

fn parse_hostscale(mut parser: lexopt::Parser) -> Result<Invocation, lexopt::Error> {
    use lexopt::prelude::*;
    let mut options = ScaleOptions {
        host: None,
        steps: vec![10, 100, 1000],
        window: 20,
        settle: 3,
    };
    while let Some(arg) = parser.next()? {
        match arg {
            Long("host") => options.host = Some(parser.value()?.into()),
            Long("agents") => options.steps = parse_steps(&parser.value()?.string()?)?,
            Long("window") => options.window = parser.value()?.parse()?,
            Long("settle") => options.settle = parser.value()?.parse()?,
            Long("help") | Short('h') => return Ok(Invocation::Help),
            other => return Err(other.unexpected()),
        }
    }
    if options.window == 0 {
        return Err("--window must be at least 1".into());
    }
    Ok(Invocation::HostScale(options))
}

fn main() -> ExitCode {
    let result = match parse_args() {
        Ok(Invocation::Help) => {
            say(USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::Echo(path)) => echo(&path),
        Ok(Invocation::Sink(socket, file)) => copy::sink(&socket, &file),
        Ok(Invocation::Copy(agent)) => {
            beside_hvbench(agent.as_deref(), "hvagent").and_then(|agent| {
                let scratch = Scratch::new()?;
                copy::bench_copy(&agent, &scratch.0)
            })
        }
        Ok(Invocation::Bench(options)) => bench(&options),
        Ok(Invocation::HostScale(options)) => hostscale(&options),
        Ok(Invocation::Kvp(agent)) => {
            beside_hvbench(agent.as_deref(), "hvagent").and_then(|agent| {
                let scratch = Scratch::new()?;
                kvpload::measure(&agent, &scratch.0)
            })
        }
        Err(error) => {
            eprintln!("hvbench: {error}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(why)) => {
            eprintln!("hvbench: {why}");
            ExitCode::from(1)
        }
    }
}

/// Prints a line; a closed stdout must not abort the run before its children are cleaned up.
pub(crate) fn say(line: &str) {
    client::say(&mut std::io::stdout().lock(), line);
}

/// Sends SIGTERM and polls for the exit; (time to exit, status).
fn sigterm_to_exit(agent: &mut Running) -> Result<(Duration, ExitStatus), Failure> {
    let start = Instant::now();
    kill(Pid::from_raw(agent.pid()), Signal::SIGTERM)
        .context(|| "cannot send SIGTERM to the agent")?;
    loop {
        if let Some(status) = agent.exited()? {
            return Ok((start.elapsed(), status));
        }
        if start.elapsed() > EXIT_TIMEOUT {
            return Err(Failure(format!(
                "the agent did not exit within {} s of SIGTERM",
                EXIT_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// `given`, or the binary `name` in hvbench's own directory.
pub(crate) fn beside_hvbench(given: Option<&Path>, name: &str) -> Result<PathBuf, Failure> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    let exe = std::env::current_exe().context(|| "cannot find hvbench's own path")?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        return Err(Failure(format!(
            "{} does not exist; build it with `cargo build --release --bins` or pass its path",
            path.display()
        )));
    }
    Ok(path)
}

/// The command that runs the agent with one heartbeat service listening on `socket`, its config in
/// `scratch` and its control socket beside `socket` (not in /run, which a host's real agent may use).
pub(crate) fn agent_command(
    agent: &Path,
    scratch: &Path,
    socket: &Path,
) -> Result<Command, Failure> {
    let config = scratch.join("hvagent.toml");
    std::fs::write(
        &config,
        // Only the heartbeat: the benchmark is about heartbeats, and must not set the clock or dial vsock.
        format!(
            "[heartbeat]\nlisten = \"unix:{}\"\n[timesync]\nenabled = false\n[shutdown]\nenabled = false\n\
             [guestinfo]\nenabled = false\n",
            socket.display()
        ),
    )
    .context(|| format!("cannot write {}", config.display()))?;
    let mut command = Command::new(agent);
    command
        .arg("--config")
        .arg(&config)
        .arg("--control")
        .arg(socket.with_extension("control"))
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Ok(command)
}

fn start_agent(agent: &Path, scratch: &Path, socket: &Path) -> Result<Running, Failure> {
    Running::spawn("agent", &mut agent_command(agent, scratch, socket)?)
}

fn start_echo(socket: &Path) -> Result<Running, Failure> {
    let exe = std::env::current_exe().context(|| "cannot find hvbench's own path")?;
    Running::spawn(
        "echo server",
        Command::new(exe)
            .arg("echo")
            .arg(socket)
            .stdout(Stdio::null()),
    )
}

/// Prints `name: value unit`.
pub(crate) fn figure(name: impl Display, value: impl Display) {
    say(&format!("{name}: {value}"));
}

/// Prints the round-trip table and figures; returns the ratios of p50 and p99 of the agent to each other
/// server, in the order of `peers[1..]`.
fn report_round_trips(peers: &[Peer]) -> Vec<[f64; 2]> {
    let quantiles = |peer: &Peer| [peer.trips.quantile(0.5), peer.trips.quantile(0.99)];
    say("server         p50 µs    p99 µs   round trips/s");
    for peer in peers {
        let ([p50, p99], rate) = (quantiles(peer), peer.per_second());
        say(&format!(
            "{:<10} {p50:>10.1} {p99:>9.1} {rate:>15.0}",
            peer.name
        ));
    }
    for peer in peers {
        let ([p50, p99], rate) = (quantiles(peer), peer.per_second());
        let name = peer.name.replace('-', "_");
        figure(format!("rtt_{name}_p50"), format!("{p50:.1} us"));
        figure(format!("rtt_{name}_p99"), format!("{p99:.1} us"));
        figure(
            format!("rtt_{name}_rate"),
            format!("{rate:.0} round_trips/s"),
        );
    }
    let agent = quantiles(&peers[0]);
    let mut ratios = Vec::new();
    for other in &peers[1..] {
        let [p50, p99] = quantiles(other);
        let ratio = [agent[0] / p50, agent[1] / p99];
        let (name, target) = match other.name {
            "echo" => ("echo", "<= 1.15"),
            _ => ("qemu_ga", "<= 0.5"),
        };
        figure(
            format!("rtt_ratio_{name}_p50"),
            format!("{:.2} x agent/{name} (target {target})", ratio[0]),
        );
        figure(
            format!("rtt_ratio_{name}_p99"),
            format!("{:.2} x agent/{name}", ratio[1]),
        );
        ratios.push(ratio);
    }
    ratios
}

/// Context switches of the agent while it holds a negotiated connection with no traffic for `seconds`.
fn idle_wakeups(agent: &mut Running, seconds: u64) -> Result<u64, Failure> {
    std::thread::sleep(SETTLE);
    let before = context_switches(agent.pid())?;
    std::thread::sleep(Duration::from_secs(seconds));
    let after = context_switches(agent.pid())?;
    if let Some(status) = agent.exited()? {
        return Err(Failure(format!(
            "the agent ended ({}) while idle",
            exit_text(status)
        )));
    }
    Ok(after.saturating_sub(before))
}

fn bench(options: &Options) -> Result<(), Failure> {
    let agent_bin = beside_hvbench(options.agent.as_deref(), "hvagent")?;
    // Declared before the children, so dropped after them.
    let scratch = Scratch::new()?;
    let agent_socket = scratch.0.join("agent.sock");
    let echo_socket = scratch.0.join("echo.sock");
    let qemu_ga_socket = scratch.0.join("qemu-ga.sock");
    let mut agent = start_agent(&agent_bin, &scratch.0, &agent_socket)?;
    let mut echo_server = start_echo(&echo_socket)?;
    let mut qemu_ga = qemu_ga::start(options.qemu_ga.as_deref(), &scratch.0, &qemu_ga_socket)?;
    say(&format!(
        "hvbench: agent {} (pid {}), {} round trips per server after {WARM_UP} warm-up, in turns of {BLOCK}",
        agent_bin.display(),
        agent.pid(),
        options.count
    ));
    if let Some(version) = qemu_ga::version(options.qemu_ga.as_deref()) {
        say(&format!("hvbench: compared with {version}"));
    }

    let mut peers = vec![Peer::agent(&agent_socket, &mut agent)?];
    let idle_memory = Memory::of(agent.pid())?;
    let echo_stream = connect(&echo_socket, &mut echo_server)?;
    peers.push(Peer::new("echo", echo_stream, Server::Echo));
    if let Some(server) = qemu_ga.as_mut() {
        let stream = connect(&qemu_ga_socket, server)?;
        peers.push(Peer::new("qemu-ga", stream, Server::QemuGa));
    }
    let mut servers = vec![agent.pid(), echo_server.pid()];
    servers.extend(qemu_ga.as_ref().map(|server| server.pid()));
    let pinned = options
        .pin
        .then(|| Pinned::to_current_cpu(&servers))
        .transpose()?;
    match &pinned {
        Some(pinned) => say(&format!(
            "hvbench: round trips with the client and the servers on CPU {}",
            pinned.cpu()
        )),
        None => say("hvbench: round trips wherever the scheduler puts them (--no-pin)"),
    }
    round_trips(&mut peers, options.count)?;
    drop(pinned);
    let memory = Memory::of(agent.pid())?;
    // The echo exits when its connection closes: read the servers' memory first.
    let echo_memory = Memory::of(echo_server.pid())?;
    let qemu_ga_memory = qemu_ga
        .as_ref()
        .map(|server| Memory::of(server.pid()))
        .transpose()?;
    let ratios = report_round_trips(&peers);
    drop(peers);
    report_memory("echo", &echo_memory);
    if let Some(memory) = &qemu_ga_memory {
        report_memory("qemu_ga", memory);
    }
    figure(
        "agent_rss_idle",
        format!(
            "{} KiB connected, before any heartbeat (target <= 2048)",
            idle_memory.rss
        ),
    );
    report_memory("agent", &memory);

    let mut pipe = Peer::agent(&agent_socket, &mut agent)?;
    let pipelined = pipe.pipelined(PIPELINE_DEPTH, options.heartbeats)?;
    figure(
        "pipelined_16",
        format!(
            "{pipelined:.0} heartbeats/s over {} (target >= 100000)",
            options.heartbeats
        ),
    );
    let loaded = Memory::of(agent.pid())?;
    figure(
        "agent_rss_loaded",
        format!(
            "{} KiB after {} more heartbeats (target <= 2048 and flat: {:+} KiB)",
            loaded.rss,
            options.heartbeats,
            loaded.rss as i64 - memory.rss as i64
        ),
    );
    let serial = pipe.pipelined(1, options.count)?;
    figure("pipelined_1", format!("{serial:.0} heartbeats/s"));

    let idle = Peer::agent(&agent_socket, &mut agent)?;
    drop(pipe);
    let wakeups = idle_wakeups(&mut agent, options.idle_seconds)?;
    let idle_seconds = options.idle_seconds;
    figure(
        "idle_wakeups",
        format!("{wakeups} switches in {idle_seconds} s (target 0)"),
    );
    let peak = Memory::of(agent.pid())?.peak;
    figure("agent_hwm", format!("{peak} KiB"));

    let (sigterm, exit) = sigterm_to_exit(&mut agent)?;
    drop(idle);
    let sigterm_ms = sigterm.as_secs_f64() * 1e3;
    figure(
        "sigterm_exit",
        format!("{sigterm_ms:.1} ms (target < 1000)"),
    );
    figure("agent_exit_status", exit_text(exit));

    let starts = startup::start_times(&agent_bin, &scratch.0, options.starts)?;
    let ms = |times: &RoundTrips, q: f64| times.quantile(q) / 1e3;
    let (ready_p50, ready_max) = (ms(&starts.ready, 0.5), ms(&starts.ready, 1.0));
    let (answer_p50, answer_max) = (ms(&starts.answer, 0.5), ms(&starts.answer, 1.0));
    figure(
        "start_to_ready",
        format!(
            "p50 {ready_p50:.2} ms, max {ready_max:.2} ms to READY=1 over {} starts (target <= 10)",
            starts.ready.count()
        ),
    );
    figure(
        "start_to_first_answer",
        format!("p50 {answer_p50:.2} ms, max {answer_max:.2} ms to the first negotiation answer"),
    );
    let size = std::fs::metadata(&agent_bin)
        .context(|| format!("cannot stat {}", agent_bin.display()))?
        .len();
    figure(
        "agent_size",
        format!("{size} bytes, stripped by the release profile (target <= 1048576)"),
    );
    let qemu_ga_ratio = ratios
        .get(1)
        .map_or("none".to_string(), |r| format!("{:.2}", r[0]));
    say(&format!(
        "bench: rtt_ratio_echo_p50={:.2} rtt_ratio_echo_p99={:.2} rtt_ratio_qemu_ga_p50={qemu_ga_ratio} \
         rss_idle_kib={} rss_kib={} rss_loaded_kib={} hwm_kib={peak} hb16_per_s={pipelined:.0} \
         hb1_per_s={serial:.0} idle_wakeups={wakeups} sigterm_ms={sigterm_ms:.1} \
         ready_ms_p50={ready_p50:.2} ready_ms_max={ready_max:.2} answer_ms_p50={answer_p50:.2} \
         size_bytes={size}",
        ratios[0][0], ratios[0][1], idle_memory.rss, memory.rss, loaded.rss
    ));
    kvpload::measure(&agent_bin, &scratch.0)?;
    builds::compare(
        &agent_bin,
        options.static_agent.as_deref(),
        &scratch.0,
        options.count,
        options.pin,
    )?;
    copy::bench_copy(&agent_bin, &scratch.0)
}

/// Prints a server's memory figures.
fn report_memory(name: &str, memory: &Memory) {
    figure(format!("{name}_rss"), format!("{} KiB", memory.rss));
    figure(format!("{name}_rss_anon"), format!("{} KiB", memory.anon));
    figure(format!("{name}_pss"), format!("{} KiB", memory.pss));
}
