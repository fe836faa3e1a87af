//! Start-up time of fresh agents, each on a fresh socket: from spawning the agent to its READY=1 on a
//! NOTIFY_SOCKET of our own (as systemd sees it: the config read, every listener open), and to the first
//! moment it does its job, answering a negotiation offer on its listening socket.

use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use hvhost::client::RoundTrips;

use crate::peer::Peer;
use crate::run::{exit_text, Context, Failure, Running};
use crate::{agent_command, IO_TIMEOUT};

/// How often the socket is tried while the agent starts.
const POLL: Duration = Duration::from_micros(50);

/// The start-up times of a number of fresh agents.
pub(crate) struct StartTimes {
    /// Spawn to READY=1.
    pub(crate) ready: RoundTrips,
    /// Spawn to the first negotiation answer.
    pub(crate) answer: RoundTrips,
}

pub(crate) fn start_times(
    agent_bin: &Path,
    scratch: &Path,
    runs: usize,
) -> Result<StartTimes, Failure> {
    let mut times = StartTimes {
        ready: RoundTrips::default(),
        answer: RoundTrips::default(),
    };
    for run in 0..runs {
        let socket = scratch.join(format!("start-{run}.sock"));
        let notify_path = scratch.join(format!("notify-{run}.sock"));
        let notify = UnixDatagram::bind(&notify_path)
            .context(|| format!("cannot bind {}", notify_path.display()))?;
        notify
            .set_read_timeout(Some(IO_TIMEOUT))
            .context(|| "cannot set a read time-out")?;
        let mut command = agent_command(agent_bin, scratch, &socket)?;
        command.env("NOTIFY_SOCKET", &notify_path);
        let start = Instant::now();
        let mut agent = Running::spawn("agent", &mut command)?;
        wait_for_ready(&notify)?;
        times.ready.record(start.elapsed());
        let stream = wait_for_socket(&socket, &mut agent, start)?;
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .context(|| "cannot set a read time-out")?;
        Peer::negotiated(stream)?;
        times.answer.record(start.elapsed());
    }
    Ok(times)
}

/// Reads notifications until one says READY=1.
fn wait_for_ready(notify: &UnixDatagram) -> Result<(), Failure> {
    let mut buffer = [0u8; 4096];
    loop {
        let len = notify
            .recv(&mut buffer)
            .context(|| "no READY=1 from the agent")?;
        if String::from_utf8_lossy(&buffer[..len])
            .lines()
            .any(|line| line == "READY=1")
        {
            return Ok(());
        }
    }
}

fn wait_for_socket(
    socket: &Path,
    agent: &mut Running,
    start: Instant,
) -> Result<UnixStream, Failure> {
    loop {
        if let Ok(stream) = UnixStream::connect(socket) {
            return Ok(stream);
        }
        if let Some(status) = agent.exited()? {
            return Err(Failure(format!(
                "the agent ended ({}) before it listened",
                exit_text(status)
            )));
        }
        if start.elapsed() > IO_TIMEOUT {
            return Err(Failure(format!(
                "the agent did not listen on {} within {} s",
                socket.display(),
                IO_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(POLL);
    }
}
