//! `hvbench hostscale`: one `hvhost serve` as the host peer of many agents at once, over Unix sockets.
//!
//! The agents are simulated in this process with the agent's own code: a [`Channel`] with the
//! [`HeartbeatLogic`] on a [`Connection`] per agent, so each negotiates and answers heartbeats exactly as
//! hvagent does. They are served in [`SHARDS`] poll loops on their own threads, so the generator's poll
//! over its own descriptors stays short and is not what the round trips measure. The fleet grows in steps (10, 100, 1000 by default); after each step
//! it settles, then for a window hvbench reads hvhost's CPU time (/proc/PID/schedstat) and RSS, and takes
//! the round trips hvhost itself measured from the `heartbeat ... rtt_us=` lines it printed during the
//! window. At the end every agent hangs up, and the heartbeats hvhost counted in its per-connection
//! summaries must equal the heartbeats the agents answered.
//!
//! Prints one `hostscale:` line per step and a summary line with `dropped=` and `unanswered=` counts, which
//! tests/host_scale.rs checks; the figures are not asserted.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hvhost::client::RoundTrips;
use hvproto::service::heartbeat::HeartbeatLogic;
use hvproto::service::{Channel, ServiceKind};
use hvtransport::Connection;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::resource::{getrlimit, getrusage, setrlimit, Resource, UsageWho};

use crate::procfs::status_field;
use crate::run::{connect, exit_text, Context, Failure, Running, Scratch};
use crate::{figure, say};

/// What `hvbench hostscale` measures.
pub(crate) struct ScaleOptions {
    /// The hvhost binary (default: beside hvbench).
    pub(crate) host: Option<PathBuf>,
    /// Agents connected at each step, ascending.
    pub(crate) steps: Vec<usize>,
    /// Seconds measured at each step.
    pub(crate) window: u64,
    /// Seconds after a step's agents connect before its window starts.
    pub(crate) settle: u64,
}

/// One simulated agent: the agent's own channel code on one connection to hvhost.
struct SimAgent {
    connection: Connection,
    channel: Channel,
    closed: Option<String>,
}

/// Every simulated agent, served by one poll loop.
struct Fleet {
    agents: Vec<SimAgent>,
    logic: HeartbeatLogic,
}

impl Fleet {
    fn new() -> Fleet {
        Fleet {
            agents: Vec::new(),
            logic: HeartbeatLogic::new(),
        }
    }

    fn add(&mut self, stream: UnixStream) -> Result<(), Failure> {
        stream
            .set_nonblocking(true)
            .context(|| "cannot make an agent's socket non-blocking")?;
        let link = self.agents.len() as u64;
        self.agents.push(SimAgent {
            connection: Connection::new(OwnedFd::from(stream)),
            channel: Channel::new(ServiceKind::Heartbeat, link),
            closed: None,
        });
        Ok(())
    }

    /// Serves every agent for `span`: answers what hvhost sends, as hvagent does.
    fn pump(&mut self, span: Duration) -> Result<(), Failure> {
        let end = Instant::now() + span;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            let mut fds: Vec<PollFd> = self
                .agents
                .iter()
                .map(|agent| {
                    let mut flags = PollFlags::POLLIN;
                    if agent.connection.wants_write() {
                        flags |= PollFlags::POLLOUT;
                    }
                    PollFd::new(agent.connection.fd(), flags)
                })
                .collect();
            let millis = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            match poll(
                &mut fds,
                PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(error) => return Err(Failure(format!("poll failed: {error}"))),
            }
            let ready: Vec<bool> = fds
                .iter()
                .map(|fd| fd.revents().is_some_and(|events| !events.is_empty()))
                .collect();
            drop(fds);
            for (index, _) in ready.iter().enumerate().filter(|(_, ready)| **ready) {
                self.serve(index);
            }
        }
    }

    /// Reads what agent `index` has, answers it and sends.
    fn serve(&mut self, index: usize) {
        let agent = &mut self.agents[index];
        if agent.closed.is_some() {
            return;
        }
        let now = Instant::now();
        let (channel, logic) = (&mut agent.channel, &mut self.logic);
        let result = agent
            .connection
            .receive_and_answer(|message, out| {
                channel.handle(message, logic, now, out);
            })
            .map(drop);
        if let Err(closed) = result.and_then(|()| agent.connection.flush()) {
            agent.closed = Some(closed.to_string());
        }
    }

    fn dropped(&self) -> usize {
        self.agents
            .iter()
            .filter(|agent| agent.closed.is_some())
            .count()
    }
}

/// Poll loops (threads) the simulated agents are spread over.
const SHARDS: usize = 4;

/// Every simulated agent, spread round-robin over [`SHARDS`] fleets.
struct Shards(Vec<Fleet>);

impl Shards {
    fn new() -> Shards {
        Shards((0..SHARDS).map(|_| Fleet::new()).collect())
    }

    fn len(&self) -> usize {
        self.0.iter().map(|fleet| fleet.agents.len()).sum()
    }

    /// Connects agents until there are `count`. A Unix connect completes at once while hvhost's backlog
    /// has room, which 1024 leaves for any step up to 1000.
    fn grow(&mut self, path: &Path, count: usize, host: &mut Running) -> Result<(), Failure> {
        while self.len() < count {
            let shard = self.len() % self.0.len();
            self.0[shard].add(connect(path, host)?)?;
        }
        Ok(())
    }

    /// Serves every agent for `span`, each shard on its own thread.
    fn pump(&mut self, span: Duration) -> Result<(), Failure> {
        std::thread::scope(|scope| {
            let running: Vec<_> = self
                .0
                .iter_mut()
                .map(|fleet| scope.spawn(move || fleet.pump(span)))
                .collect();
            running.into_iter().try_for_each(|thread| {
                thread
                    .join()
                    .map_err(|_| Failure("a generator thread panicked".into()))?
            })
        })
    }

    fn answered(&self) -> u64 {
        self.0.iter().map(|fleet| fleet.logic.answered()).sum()
    }

    fn dropped(&self) -> usize {
        self.0.iter().map(Fleet::dropped).sum()
    }
}

/// CPU time of this whole process (every generator thread), in ns.
fn own_cpu_ns() -> Result<u64, Failure> {
    let usage =
        getrusage(UsageWho::RUSAGE_SELF).context(|| "cannot read this process's CPU time")?;
    let ns = |time: nix::sys::time::TimeVal| {
        time.tv_sec() as u64 * 1_000_000_000 + time.tv_usec() as u64 * 1000
    };
    Ok(ns(usage.user_time()) + ns(usage.system_time()))
}

/// hvhost's CPU time in ns, its RSS in KiB, and the length of what it printed, at one moment.
struct Reading {
    at: Instant,
    host_cpu_ns: u64,
    own_cpu_ns: u64,
    rss_kib: u64,
    printed: u64,
    answered: u64,
}

/// Time a task has run on a CPU, in ns: the first field of /proc/PID/schedstat (one thread).
fn cpu_ns(pid: &str) -> Result<u64, Failure> {
    let path = format!("/proc/{pid}/schedstat");
    let text = std::fs::read_to_string(&path).context(|| format!("cannot read {path}"))?;
    text.split_whitespace()
        .next()
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| Failure(format!("{path} does not start with a number")))
}

fn read(host: &Running, out: &Path, fleet: &Shards) -> Result<Reading, Failure> {
    let pid = host.pid().to_string();
    Ok(Reading {
        at: Instant::now(),
        host_cpu_ns: cpu_ns(&pid)?,
        own_cpu_ns: own_cpu_ns()?,
        rss_kib: status_field(Path::new(&format!("/proc/{pid}/status")), "VmRSS")?,
        printed: std::fs::metadata(out).map_or(0, |meta| meta.len()),
        answered: fleet.answered(),
    })
}

/// The round trips hvhost printed between two lengths of its output.
fn printed_round_trips(out: &Path, from: u64, to: u64) -> Result<RoundTrips, Failure> {
    let text = std::fs::read(out).context(|| format!("cannot read {}", out.display()))?;
    let window = &text[(from as usize).min(text.len())..(to as usize).min(text.len())];
    let mut trips = RoundTrips::default();
    for line in String::from_utf8_lossy(window).lines() {
        let micros = line
            .strip_prefix("heartbeat ")
            .and_then(|rest| {
                rest.split_whitespace()
                    .find_map(|f| f.strip_prefix("rtt_us="))
            })
            .and_then(|value| value.parse::<f64>().ok());
        if let Some(micros) = micros {
            trips.record(Duration::from_secs_f64(micros / 1e6));
        }
    }
    Ok(trips)
}

/// Raises the soft open-file limit to `needed` when it is lower (never past the hard limit); hvhost
/// inherits it.
fn raise_fd_limit(needed: usize) -> Result<(), Failure> {
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).context(|| "cannot read RLIMIT_NOFILE")?;
    let needed = needed as u64;
    if hard < needed {
        return Err(Failure(format!(
            "{needed} open files are needed but at most {hard} are allowed; raise it (ulimit -Hn)"
        )));
    }
    if soft < needed {
        setrlimit(Resource::RLIMIT_NOFILE, needed, hard)
            .context(|| "cannot raise RLIMIT_NOFILE")?;
    }
    Ok(())
}

fn host_path(options: &ScaleOptions) -> Result<PathBuf, Failure> {
    crate::beside_hvbench(options.host.as_deref(), "hvhost")
}

/// One step's figures, from the readings at the start and end of its window.
fn report_step(agents: usize, start: &Reading, end: &Reading, trips: &RoundTrips) -> (f64, u64) {
    let seconds = end.at.duration_since(start.at).as_secs_f64();
    let host_cpu = (end.host_cpu_ns - start.host_cpu_ns) as f64 / 1e9 / seconds * 100.0;
    let own_cpu = (end.own_cpu_ns - start.own_cpu_ns) as f64 / 1e9 / seconds * 100.0;
    let answered = end.answered - start.answered;
    let per_agent = answered as f64 / agents as f64 / seconds;
    say(&format!(
        "hostscale: agents={agents} window_s={seconds:.1} answered={answered} per_agent_per_s={per_agent:.2} \
         host_rtts={} p50_us={:.1} p99_us={:.1} max_us={:.1} host_cpu_pct={host_cpu:.2} \
         host_rss_kib={} rss_growth_in_window_kib={} generator_cpu_pct={own_cpu:.1} (all {SHARDS} threads)",
        trips.count(),
        trips.quantile(0.5),
        trips.quantile(0.99),
        trips.quantile(1.0),
        end.rss_kib,
        end.rss_kib as i64 - start.rss_kib as i64,
    ));
    (host_cpu, end.rss_kib)
}

/// Hangs up every agent and waits for hvhost's per-connection summaries; the heartbeats they count.
fn hang_up(fleet: Shards, host: &mut Running, out: &Path) -> Result<(usize, u64), Failure> {
    let agents = fleet.len();
    drop(fleet);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text =
            std::fs::read_to_string(out).context(|| format!("cannot read {}", out.display()))?;
        let counts: Vec<u64> = text
            .lines()
            .filter_map(|line| line.strip_prefix("done heartbeats="))
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .collect();
        if counts.len() >= agents {
            return Ok((counts.len(), counts.iter().sum()));
        }
        if let Some(status) = host.exited()? {
            return Err(Failure(format!(
                "hvhost ended ({}) while agents hung up",
                exit_text(status)
            )));
        }
        if Instant::now() > deadline {
            return Ok((counts.len(), counts.iter().sum()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn hostscale(options: &ScaleOptions) -> Result<(), Failure> {
    let host_bin = host_path(options)?;
    let most = options.steps.iter().copied().max().unwrap_or(0);
    raise_fd_limit(most + 64)?;
    let scratch = Scratch::new()?;
    let socket = scratch.0.join("host.sock");
    let out = scratch.0.join("hvhost.out");
    let log = File::create(&out).context(|| format!("cannot create {}", out.display()))?;
    let mut host = Running::spawn(
        "hvhost",
        Command::new(&host_bin)
            .arg("serve")
            .arg(format!("unix:{}", socket.display()))
            .args(["--interval", "1"])
            .stdout(log)
            .stderr(Stdio::inherit()),
    )?;
    say(&format!(
        "hvbench hostscale: {} (pid {}) serving {:?} simulated agents, {} s settle and {} s window per step; \
         hvhost prints every round trip (one write(2) each), which its CPU figure includes",
        host_bin.display(),
        host.pid(),
        options.steps,
        options.settle,
        options.window
    ));
    let mut fleet = Shards::new();
    let mut results = Vec::new();
    for &agents in &options.steps {
        fleet.grow(&socket, agents, &mut host)?;
        fleet.pump(Duration::from_secs(options.settle))?;
        let start = read(&host, &out, &fleet)?;
        fleet.pump(Duration::from_secs(options.window))?;
        let end = read(&host, &out, &fleet)?;
        let trips = printed_round_trips(&out, start.printed, end.printed)?;
        let (cpu, rss) = report_step(agents, &start, &end, &trips);
        results.push((agents, cpu, rss, trips.quantile(0.99)));
    }
    let dropped = fleet.dropped();
    let answered = fleet.answered();
    let (summaries, counted) = hang_up(fleet, &mut host, &out)?;
    report_totals(&results, most, dropped, summaries, answered, counted);
    Ok(())
}

/// The figures over all steps: CPU growth, bytes per agent, and whether every heartbeat was answered.
fn report_totals(
    results: &[(usize, f64, u64, f64)],
    agents: usize,
    dropped: usize,
    summaries: usize,
    answered: u64,
    counted: u64,
) {
    for (count, cpu, rss, p99) in results {
        figure(
            format!("hostscale_{count}"),
            format!("host_cpu={cpu:.2} % of one core, rss={rss} KiB, p99={p99:.1} us"),
        );
    }
    if let (Some(first), Some(last)) = (results.first(), results.last()) {
        if last.0 > first.0 {
            let per_agent = (last.2 as f64 - first.2 as f64) * 1024.0 / (last.0 - first.0) as f64;
            figure("hostscale_bytes_per_agent", format!("{per_agent:.0} bytes"));
        }
    }
    say(&format!(
        "hostscale: agents={agents} dropped={dropped} summaries={summaries} answered_by_agents={answered} \
         counted_by_host={counted} unanswered={}",
        answered.abs_diff(counted)
    ));
}

/// `--agents 10,100,1000`
pub(crate) fn parse_steps(text: &str) -> Result<Vec<usize>, String> {
    let mut steps = text
        .split(',')
        .map(|step| step.trim().parse::<usize>().ok().filter(|&n| n > 0))
        .collect::<Option<Vec<usize>>>()
        .ok_or(format!(
            "--agents '{text}' is not a list of counts like 10,100,1000"
        ))?;
    steps.sort_unstable();
    Ok(steps)
}
