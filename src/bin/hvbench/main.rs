//! hvbench: the figures `make bench` prints. It starts the release hvagent listening on a Unix socket in a
//! temp dir and measures, in one run:
//! - heartbeat round trips through the agent against a raw echo server on the same kind of Unix socket, in its
//!   own process like the agent (`hvbench echo PATH`, not listed in --help). The client does the same work
//!   for both (encode a heartbeat, write, read the answer back, decode and check it), and the two servers
//!   take turns in blocks so that drift in CPU speed hits both alike: p50, p99, round trips per second and
//!   the agent/echo ratios (target ≤ 1.5);
//! - the agent's RSS after that run (target ≤ 2 MiB);
//! - pipelined heartbeats per second with 16 and with 1 request in flight;
//! - the agent's context switches while it holds a negotiated connection with no traffic (target 0);
//! - the time from SIGTERM to the agent's exit (target < 1 s), polled every 100 µs, and the binary's size.
//!
//! Figures only; nothing is asserted. Exit status: 0 ok, 1 a measurement failed, 2 usage error.

mod hostscale;
mod peer;
mod procfs;
mod run;

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hvagent::host_peer;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use hostscale::{hostscale, parse_steps, ScaleOptions};
use peer::{echo, round_trips, Peer};
use procfs::{context_switches, Memory};
use run::{connect, exit_text, Context, Failure, Running, Scratch};

const USAGE: &str = "\
usage: hvbench [--agent PATH] [--count N] [--idle-seconds S]
       hvbench hostscale [--host PATH] [--agents 10,100,1000] [--window S] [--settle S]

Benchmarks hvagent over Unix sockets in a temp dir and prints figures (`name: value unit` lines and one
`bench:` summary line); it asserts nothing.
  --agent PATH       the agent binary (default: hvagent beside hvbench)
  --count N          timed heartbeat round trips per server, after 1000 warm-up (default 20000)
  --idle-seconds S   how long to watch a connected, idle agent for wake-ups (default 10)

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
    count: usize,
    idle_seconds: u64,
}

enum Invocation {
    Bench(Options),
    HostScale(ScaleOptions),
    Echo(PathBuf),
    Help,
}

fn parse_args() -> Result<Invocation, lexopt::Error> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut options = Options {
        agent: None,
        count: 20_000,
        idle_seconds: 10,
    };
    while let Some(arg) = parser.next()? {
        match arg {
            Long("agent") => options.agent = Some(parser.value()?.into()),
            Long("count") => options.count = parser.value()?.parse()?,
            Long("idle-seconds") => options.idle_seconds = parser.value()?.parse()?,
            Long("help") | Short('h') => return Ok(Invocation::Help),
            Value(value) if value == "echo" => return Ok(Invocation::Echo(parser.value()?.into())),
            Value(value) if value == "hostscale" => return parse_hostscale(parser),
            other => return Err(other.unexpected()),
        }
    }
    if options.count == 0 {
        return Err("--count must be at least 1".into());
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
        Ok(Invocation::Bench(options)) => bench(&options),
        Ok(Invocation::HostScale(options)) => hostscale(&options),
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
    host_peer::say(&mut std::io::stdout().lock(), line);
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

fn start_agent(agent: &Path, scratch: &Path, socket: &Path) -> Result<Running, Failure> {
    let config = scratch.join("hvagent.toml");
    std::fs::write(
        &config,
        format!("[heartbeat]\nlisten = \"unix:{}\"\n", socket.display()),
    )
    .context(|| format!("cannot write {}", config.display()))?;
    Running::spawn(
        "agent",
        Command::new(agent)
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
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

/// Prints the round-trip table and figures; returns the agent/echo ratios of p50 and p99.
fn report_round_trips(peers: &[Peer; 2]) -> [f64; 2] {
    let quantiles = |peer: &Peer| (peer.trips.quantile(0.5), peer.trips.quantile(0.99));
    say("server         p50 µs    p99 µs   round trips/s");
    for peer in peers {
        let ((p50, p99), rate) = (quantiles(peer), peer.per_second());
        say(&format!(
            "{:<10} {p50:>10.1} {p99:>9.1} {rate:>15.0}",
            peer.name
        ));
    }
    let ((agent_p50, agent_p99), (echo_p50, echo_p99)) =
        (quantiles(&peers[0]), quantiles(&peers[1]));
    let ratios = [agent_p50 / echo_p50, agent_p99 / echo_p99];
    say(&format!("ratio p50 agent/echo = {:.2}", ratios[0]));
    say(&format!("ratio p99 agent/echo = {:.2}", ratios[1]));
    for peer in peers {
        let ((p50, p99), rate, name) = (quantiles(peer), peer.per_second(), peer.name);
        figure(format!("rtt_{name}_p50"), format!("{p50:.1} us"));
        figure(format!("rtt_{name}_p99"), format!("{p99:.1} us"));
        figure(
            format!("rtt_{name}_rate"),
            format!("{rate:.0} round_trips/s"),
        );
    }
    figure(
        "rtt_ratio_p50",
        format!("{:.2} x (target <= 1.5)", ratios[0]),
    );
    figure("rtt_ratio_p99", format!("{:.2} x", ratios[1]));
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
    let mut agent = start_agent(&agent_bin, &scratch.0, &agent_socket)?;
    let mut echo_server = start_echo(&echo_socket)?;
    say(&format!(
        "hvbench: agent {} (pid {}), {} round trips per server after {WARM_UP} warm-up, in turns of {BLOCK}",
        agent_bin.display(),
        agent.pid(),
        options.count
    ));

    let echo_peer = Peer::new("echo", connect(&echo_socket, &mut echo_server)?, true);
    let mut peers = [Peer::agent(&agent_socket, &mut agent)?, echo_peer];
    round_trips(&mut peers, options.count)?;
    let memory = Memory::of(agent.pid())?;
    let echo_memory = Memory::of(echo_server.pid())?;
    let ratios = report_round_trips(&peers);
    drop(peers);
    figure("agent_rss", format!("{} KiB (target <= 2048)", memory.rss));
    figure("agent_rss_anon", format!("{} KiB", memory.anon));
    figure("agent_pss", format!("{} KiB", memory.pss));
    figure("echo_rss", format!("{} KiB", echo_memory.rss));
    figure("echo_rss_anon", format!("{} KiB", echo_memory.anon));

    let mut pipe = Peer::agent(&agent_socket, &mut agent)?;
    let pipelined = pipe.pipelined(PIPELINE_DEPTH, options.count)?;
    figure("pipelined_16", format!("{pipelined:.0} heartbeats/s"));
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
    let size = std::fs::metadata(&agent_bin)
        .context(|| format!("cannot stat {}", agent_bin.display()))?
        .len();
    figure("agent_size", format!("{size} bytes"));
    say(&format!(
        "bench: rtt_ratio_p50={:.2} rtt_ratio_p99={:.2} rss_kib={} rss_anon_kib={} hwm_kib={peak} \
         hb16_per_s={pipelined:.0} idle_wakeups={wakeups} sigterm_ms={sigterm_ms:.1} size_bytes={size}",
        ratios[0], ratios[1], memory.rss, memory.anon
    ));
    Ok(())
}
