//! Start-up time: from spawning the agent to its first answer. Until the agent tells systemd READY=1, the
//! honest end point is the first moment it does its job: its listening socket accepts a connection and
//! answers a negotiation offer. Each run starts a fresh agent on a fresh socket and polls for the socket
//! every 50 µs.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use hvagent::host_peer::RoundTrips;

use crate::peer::Peer;
use crate::run::{exit_text, Context, Failure, Running};
use crate::{start_agent, IO_TIMEOUT};

/// How often the socket is tried while the agent starts.
const POLL: Duration = Duration::from_micros(50);

/// Start-to-first-answer times of `runs` fresh agents.
pub(crate) fn start_to_answer(
    agent_bin: &Path,
    scratch: &Path,
    runs: usize,
) -> Result<RoundTrips, Failure> {
    let mut times = RoundTrips::default();
    for run in 0..runs {
        let socket = scratch.join(format!("start-{run}.sock"));
        let start = Instant::now();
        let mut agent = start_agent(agent_bin, scratch, &socket)?;
        let stream = wait_for_socket(&socket, &mut agent, start)?;
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .context(|| "cannot set a read time-out")?;
        Peer::negotiated(stream)?;
        times.record(start.elapsed());
    }
    Ok(times)
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
