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

use std::fmt::Display;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hvagent::host_peer::{self, RoundTrips};
use hvagent::service::host::{HostChannel, HostEvent};
use hvagent::service::ServiceKind;
use hvagent::wire::heartbeat::Heartbeat;
use hvagent::wire::{self, Message};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const USAGE: &str = "\
usage: hvbench [--agent PATH] [--count N] [--idle-seconds S]

Benchmarks hvagent over Unix sockets in a temp dir and prints figures (`name: value unit` lines and one
`bench:` summary line); it asserts nothing.
  --agent PATH       the agent binary (default: hvagent beside hvbench)
  --count N          timed heartbeat round trips per server, after 1000 warm-up (default 20000)
  --idle-seconds S   how long to watch a connected, idle agent for wake-ups (default 10)";

/// Untimed round trips per server before the timed ones.
const WARM_UP: usize = 1000;
/// Round trips one server does before the other takes its turn.
const BLOCK: usize = 1000;
/// Requests in flight for the pipelined figure.
const PIPELINE_DEPTH: usize = 16;
/// How long any one read or write, or a server's start, may take before the run counts as failed.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
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
            other => return Err(other.unexpected()),
        }
    }
    if options.count == 0 {
        return Err("--count must be at least 1".into());
    }
    Ok(Invocation::Bench(options))
}

fn main() -> ExitCode {
    let result = match parse_args() {
        Ok(Invocation::Help) => {
            say(USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::Echo(path)) => echo(&path),
        Ok(Invocation::Bench(options)) => bench(&options),
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

/// A step that failed, said as a sentence.
struct Failure(String);

trait Context<T> {
    fn context<S: Display>(self, what: impl FnOnce() -> S) -> Result<T, Failure>;
}

impl<T, E: Display> Context<T> for Result<T, E> {
    fn context<S: Display>(self, what: impl FnOnce() -> S) -> Result<T, Failure> {
        self.map_err(|error| Failure(format!("{}: {error}", what())))
    }
}

/// Prints a line; a closed stdout must not abort the run before its children are cleaned up.
fn say(line: &str) {
    host_peer::say(&mut std::io::stdout().lock(), line);
}

/// The raw echo server: accepts one connection on `path` and writes back every byte it reads, until EOF.
fn echo(path: &Path) -> Result<(), Failure> {
    let listener =
        UnixListener::bind(path).context(|| format!("cannot listen on {}", path.display()))?;
    let (mut stream, _) = listener.accept().context(|| "cannot accept")?;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match stream.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(Failure(format!("cannot read: {error}"))),
        };
        stream
            .write_all(&buffer[..read])
            .context(|| "cannot write")?;
    }
}

/// A directory under the system temp dir, removed with everything in it when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch, Failure> {
        let dir = std::env::temp_dir().join(format!("hvbench-{}", std::process::id()));
        // A leftover of an earlier run with the same pid is ours to reuse.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).context(|| format!("cannot create {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process, killed and reaped when dropped (std's `kill` does nothing to a child already reaped).
struct Running {
    name: &'static str,
    child: Child,
}

impl Running {
    fn spawn(name: &'static str, command: &mut Command) -> Result<Running, Failure> {
        let program = PathBuf::from(command.get_program());
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context(|| format!("cannot start the {name} {}", program.display()))?;
        Ok(Running { name, child })
    }

    fn pid(&self) -> i32 {
        // Linux pids fit an i32 (pid_max is at most 2^22).
        self.child.id() as i32
    }

    /// The exit status once the child has exited.
    fn exited(&mut self) -> Result<Option<ExitStatus>, Failure> {
        self.child
            .try_wait()
            .context(|| format!("cannot wait for the {}", self.name))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn exit_text(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// Connects to `server` at `path`, retrying while it starts (no socket file yet, or bound but not listening).
fn connect(path: &Path, server: &mut Running) -> Result<UnixStream, Failure> {
    let deadline = Instant::now() + IO_TIMEOUT;
    let stream = loop {
        let error = match UnixStream::connect(path) {
            Ok(stream) => break stream,
            Err(error) => error,
        };
        if let Some(status) = server.exited()? {
            return Err(Failure(format!(
                "the {} ended ({}) before accepting a connection",
                server.name,
                exit_text(status)
            )));
        }
        let starting = matches!(
            error.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
        );
        if !starting || Instant::now() > deadline {
            return Err(Failure(format!(
                "cannot connect to the {} at {}: {error}",
                server.name,
                path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .context(|| "cannot set socket time-outs")?;
    Ok(stream)
}

/// The client side of one connection, doing the same work for the agent and the echo.
struct Peer {
    name: &'static str,
    stream: UnixStream,
    channel: HostChannel,
    /// The agent answers and `HostChannel::handle` checks it; the echo returns each request unchanged.
    is_echo: bool,
    answer: Vec<u8>,
    trips: RoundTrips,
    /// Wall time spent in timed round trips.
    busy: Duration,
}

impl Peer {
    fn new(name: &'static str, stream: UnixStream, is_echo: bool) -> Peer {
        Peer {
            name,
            stream,
            channel: HostChannel::new(ServiceKind::Heartbeat),
            is_echo,
            answer: Vec::new(),
            trips: RoundTrips::default(),
            busy: Duration::ZERO,
        }
    }

    /// A negotiated heartbeat connection to the agent.
    fn agent(path: &Path, agent: &mut Running) -> Result<Peer, Failure> {
        let mut peer = Peer::new("agent", connect(path, agent)?, false);
        let offer = encode(&peer.channel.offer())?;
        peer.send(&offer)?;
        peer.receive(0, wire::HEADER_LEN)?;
        let len = wire::frame_len(&peer.answer)
            .context(|| "the agent's negotiation answer has a bad header")?
            .unwrap_or(wire::HEADER_LEN);
        peer.receive(wire::HEADER_LEN, len)?;
        let message = Message::parse(&peer.answer)
            .context(|| "the agent's negotiation answer is malformed")?;
        let event = peer
            .channel
            .handle(&message, Instant::now())
            .context(|| "negotiation with the agent failed")?;
        match event {
            HostEvent::Negotiated { .. } => Ok(peer),
            other => Err(Failure(format!(
                "the agent answered the offer with {other:?}"
            ))),
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        let name = self.name;
        self.stream
            .write_all(bytes)
            .context(|| format!("cannot write to the {name}"))
    }

    /// Reads bytes `from..to` of an answer into `self.answer`.
    fn receive(&mut self, from: usize, to: usize) -> Result<(), Failure> {
        self.answer.resize(to, 0);
        let name = self.name;
        self.stream
            .read_exact(&mut self.answer[from..to])
            .context(|| format!("no whole answer from the {name}"))
    }

    /// One heartbeat there and back; the time from encoding the request to having checked the answer.
    fn round_trip(&mut self) -> Result<Duration, Failure> {
        if self.is_echo && self.channel.in_flight() >= BLOCK {
            // The echo's requests are never answered, so the channel's list of them only grows; start over.
            self.channel = HostChannel::new(ServiceKind::Heartbeat);
        }
        let start = Instant::now();
        let request = encode(&self.channel.heartbeat(start))?;
        self.send(&request)?;
        self.receive(0, request.len())?;
        self.check(&request, 0, Instant::now())?;
        Ok(start.elapsed())
    }

    /// Checks the answer at `at` in `self.answer` to `request`.
    fn check(&mut self, request: &[u8], at: usize, now: Instant) -> Result<(), Failure> {
        let bytes = &self.answer[at..at + request.len()];
        let message =
            Message::parse(bytes).context(|| format!("malformed answer from the {}", self.name))?;
        if self.is_echo {
            Heartbeat::parse(&message.body)
                .context(|| "the echo returned a malformed heartbeat")?;
            if bytes != request {
                return Err(Failure("the echo returned other bytes than it got".into()));
            }
            return Ok(());
        }
        match self.channel.handle(&message, now) {
            Ok(HostEvent::HeartbeatAnswered { .. }) => Ok(()),
            Ok(other) => Err(Failure(format!(
                "the agent answered a heartbeat with {other:?}"
            ))),
            Err(error) => Err(Failure(error.to_string())),
        }
    }

    /// `count` round trips, recorded unless this is the warm-up.
    fn run(&mut self, count: usize, record: bool) -> Result<(), Failure> {
        let start = Instant::now();
        for _ in 0..count {
            let round_trip = self.round_trip()?;
            if record {
                self.trips.record(round_trip);
            }
        }
        if record {
            self.busy += start.elapsed();
        }
        Ok(())
    }

    fn per_second(&self) -> f64 {
        self.trips.count() as f64 / self.busy.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// Heartbeats per second with `depth` requests written back to back before their answers are read.
    fn pipelined(&mut self, depth: usize, total: usize) -> Result<f64, Failure> {
        let rounds = total.div_ceil(depth);
        let mut batch = Vec::new();
        let start = Instant::now();
        for _ in 0..rounds {
            batch.clear();
            let now = Instant::now();
            for _ in 0..depth {
                let request = self.channel.heartbeat(now);
                request.emit(&mut batch).context(|| "cannot encode")?;
            }
            self.send(&batch)?;
            self.receive(0, batch.len())?;
            let now = Instant::now();
            let each = batch.len() / depth;
            for (index, request) in batch.chunks(each).enumerate() {
                self.check(request, index * each, now)?;
            }
        }
        Ok((rounds * depth) as f64 / start.elapsed().as_secs_f64())
    }
}

fn encode(message: &Message) -> Result<Vec<u8>, Failure> {
    message.to_bytes().context(|| "cannot encode a request")
}

/// Timed round trips on both peers, taking turns by blocks and swapping who goes first each block.
fn round_trips(peers: &mut [Peer; 2], count: usize) -> Result<(), Failure> {
    for peer in peers.iter_mut() {
        peer.run(WARM_UP, false)?;
    }
    for (block, done) in (0..count).step_by(BLOCK).enumerate() {
        let order = if block % 2 == 0 { [0, 1] } else { [1, 0] };
        for index in order {
            peers[index].run((count - done).min(BLOCK), true)?;
        }
    }
    Ok(())
}

/// The first number of a `Key:  value ...` line of a /proc status file.
fn status_field(path: &Path, key: &str) -> Result<u64, Failure> {
    let text =
        std::fs::read_to_string(path).context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .find_map(|value| value.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| Failure(format!("{} has no {key} line", path.display())))
}

/// Memory of a process in KiB.
struct Memory {
    /// VmRSS: resident pages, its share of libc and other mapped files counted in full.
    rss: u64,
    /// VmHWM: the most VmRSS has been.
    peak: u64,
    /// RssAnon: resident pages that are the process's own (heap, stacks, written data).
    anon: u64,
    /// Pss: resident pages with each shared page divided among the processes that map it.
    pss: u64,
}

impl Memory {
    fn of(pid: i32) -> Result<Memory, Failure> {
        let status = PathBuf::from(format!("/proc/{pid}/status"));
        Ok(Memory {
            rss: status_field(&status, "VmRSS")?,
            peak: status_field(&status, "VmHWM")?,
            anon: status_field(&status, "RssAnon")?,
            pss: status_field(Path::new(&format!("/proc/{pid}/smaps_rollup")), "Pss")?,
        })
    }
}

/// Voluntary and involuntary context switches of all of `pid`'s threads: how often it was woken or preempted.
fn context_switches(pid: i32) -> Result<u64, Failure> {
    let tasks = PathBuf::from(format!("/proc/{pid}/task"));
    let entries =
        std::fs::read_dir(&tasks).context(|| format!("cannot list {}", tasks.display()))?;
    let mut total = 0;
    for entry in entries {
        let status = entry
            .context(|| format!("cannot list {}", tasks.display()))?
            .path()
            .join("status");
        total += status_field(&status, "voluntary_ctxt_switches")?;
        total += status_field(&status, "nonvoluntary_ctxt_switches")?;
    }
    Ok(total)
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

fn agent_path(options: &Options) -> Result<PathBuf, Failure> {
    if let Some(path) = &options.agent {
        return Ok(path.clone());
    }
    let exe = std::env::current_exe().context(|| "cannot find hvbench's own path")?;
    let path = exe.with_file_name("hvagent");
    if !path.exists() {
        return Err(Failure(format!(
            "{} does not exist; build it with `cargo build --release --bins` or pass --agent PATH",
            path.display()
        )));
    }
    Ok(path)
}

fn start_agent(agent: &Path, scratch: &Path, socket: &Path) -> Result<Running, Failure> {
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
    Running::spawn(
        "agent",
        Command::new(agent)
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .stderr(Stdio::null()),
    )
}

fn start_echo(socket: &Path) -> Result<Running, Failure> {
    let exe = std::env::current_exe().context(|| "cannot find hvbench's own path")?;
    Running::spawn("echo server", Command::new(exe).arg("echo").arg(socket))
}

/// Prints `name: value unit`.
fn figure(name: impl Display, value: impl Display) {
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
    let agent_bin = agent_path(options)?;
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
