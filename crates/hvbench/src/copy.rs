//! The file-copy figures of `make bench`: one agent serving heartbeat and file copy on Unix sockets in the
//! scratch directory, and in the same run:
//! - copy throughput: `hvhost copy`'s own code (in this process) putting a file into the agent's allowed
//!   directory, against a raw stream of the same bytes on the same kind of path: a Unix socket to a sink in
//!   its own process (`hvbench sink SOCKET FILE`, not listed in --help) that writes them to a file in the
//!   same directory, starting each slice's writeback and fsyncing it before it closes, as the agent's sink
//!   and COMPLETE do; rounds alternate, medians reported (target copy ≥ 0.8× raw);
//! - heartbeat round trips on the same agent while a copy runs, against the same without one (p50, p99).
//!
//! Nothing is pinned here: a copy keeps two processes busy at once, which one CPU would serialise.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hvhost::client::{Client, RoundTrips};
use hvhost::copy::{copy, CopyRequest, Outcome};
use hvproto::service::ServiceKind;
use hvtransport::Address;

use crate::run::{connect, Context, Failure, Running};
use crate::{figure, say};

/// The size of the file copied.
const FILE_BYTES: usize = 64 << 20;
/// Timed rounds of each (copy, raw), alternating.
const ROUNDS: usize = 3;
/// The pause between heartbeats while a copy runs: about 1,000 a second, dense enough for a p99.
const HEARTBEAT_GAP: Duration = Duration::from_millis(1);

/// `hvbench sink SOCKET FILE`: accepts one connection, writes what it sends to FILE, fsyncs, and closes.
pub(crate) fn sink(socket: &Path, file: &Path) -> Result<(), Failure> {
    let listener =
        UnixListener::bind(socket).context(|| format!("cannot listen on {}", socket.display()))?;
    loop {
        let (mut stream, _) = listener.accept().context(|| "cannot accept")?;
        let mut out =
            std::fs::File::create(file).context(|| format!("cannot create {}", file.display()))?;
        let mut buffer = vec![0u8; 256 * 1024];
        let mut written = 0i64;
        loop {
            let read = match stream.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(Failure(format!("cannot read: {error}"))),
            };
            out.write_all(&buffer[..read]).context(|| "cannot write")?;
            start_writeback(&out, written, read);
            written += read as i64;
        }
        out.sync_all().context(|| "cannot fsync")?;
        drop(stream);
    }
}

/// Starts the writeback of what was just written without waiting, as the agent's sink does, so the raw
/// baseline's final fsync is no slower than the copy's.
fn start_writeback(file: &std::fs::File, offset: i64, len: usize) {
    use std::os::fd::AsRawFd;
    // SAFETY: an open descriptor and plain integers; a filesystem that cannot just returns an error.
    let _ = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset,
            len as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
}

/// Sends `data` raw to the sink and waits for it to close: the time to the bytes synced.
fn raw_round(socket: &Path, sink: &mut Running, data: &[u8]) -> Result<Duration, Failure> {
    let mut stream = connect(socket, sink)?;
    let start = Instant::now();
    stream
        .write_all(data)
        .context(|| "cannot write to the sink")?;
    stream
        .shutdown(std::net::Shutdown::Write)
        .context(|| "cannot shut the sink's stream")?;
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .context(|| "cannot read the sink's close")?;
    Ok(start.elapsed())
}

/// One `hvhost copy` of `local` into `dir`, replacing what the last round left.
fn copy_round(socket: &Path, local: &Path, dir: &Path) -> Result<Duration, Failure> {
    let request = CopyRequest {
        local: local.to_path_buf(),
        guest_dir: dir.display().to_string(),
        name: Some("copied.bin".to_string()),
        overwrite: true,
        create_path: false,
        timeout: Duration::from_secs(60),
    };
    let mut lines = Vec::new();
    let start = Instant::now();
    let outcome = copy(&Address::Unix(socket.to_path_buf()), &request, &mut lines)
        .map_err(|error| Failure(format!("hvhost copy failed: {error}")))?;
    let took = start.elapsed();
    if outcome != Outcome::Done {
        return Err(Failure(format!(
            "hvhost copy did not complete: {outcome:?}\n{}",
            String::from_utf8_lossy(&lines)
        )));
    }
    Ok(took)
}

/// Heartbeat round trips on `socket` until `stop`, one every [`HEARTBEAT_GAP`].
fn heartbeats_until(socket: &Path, stop: &AtomicBool) -> Result<RoundTrips, Failure> {
    let stream = UnixStream::connect(socket).context(|| "cannot connect to the heartbeat")?;
    let mut client = Client::new(stream.into(), ServiceKind::Heartbeat);
    client
        .negotiate()
        .map_err(|error| Failure(format!("heartbeat negotiation: {error}")))?;
    let mut trips = RoundTrips::default();
    while !stop.load(Ordering::Relaxed) {
        for (round_trip, _) in client
            .heartbeats(1)
            .map_err(|error| Failure(format!("heartbeat: {error}")))?
        {
            trips.record(round_trip);
        }
        std::thread::sleep(HEARTBEAT_GAP);
    }
    Ok(trips)
}

/// Heartbeat figures while `during` runs.
fn heartbeats_during<T>(
    socket: &Path,
    during: impl FnOnce() -> Result<T, Failure>,
) -> Result<(RoundTrips, T), Failure> {
    let stop = Arc::new(AtomicBool::new(false));
    let (socket, flag) = (socket.to_path_buf(), stop.clone());
    let beating = std::thread::spawn(move || heartbeats_until(&socket, &flag));
    // A few beats before the work starts, so the client is connected when it does.
    std::thread::sleep(Duration::from_millis(50));
    let result = during();
    stop.store(true, Ordering::Relaxed);
    let trips = beating
        .join()
        .map_err(|_| Failure("the heartbeat thread panicked".to_string()))??;
    Ok((trips, result?))
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn mib_per_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / took.as_secs_f64().max(1e-9)
}

/// The data to copy: no short repeats, so nothing along the way can shortcut it.
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// The file-copy figures; `agent` is the release hvagent.
pub(crate) fn bench_copy(agent: &Path, scratch: &Path) -> Result<(), Failure> {
    let allowed = scratch.join("copy-in");
    std::fs::create_dir_all(&allowed).context(|| "cannot make the copy directory")?;
    let (heartbeat, filecopy) = (scratch.join("copy-hb.sock"), scratch.join("copy-fc.sock"));
    let config = scratch.join("copy.toml");
    std::fs::write(
        &config,
        format!(
            "[heartbeat]\nlisten = \"unix:{}\"\n[timesync]\nenabled = false\n[shutdown]\nenabled = false\n\
             [guestinfo]\nenabled = false\n[filecopy]\nenabled = true\nlisten = \"unix:{}\"\n\
             allowed_dirs = [\"{}\"]\n",
            heartbeat.display(),
            filecopy.display(),
            allowed.display()
        ),
    )
    .context(|| "cannot write the copy config")?;
    let mut server = Running::spawn(
        "agent (file copy)",
        Command::new(agent)
            .arg("--config")
            .arg(&config)
            .arg("--control")
            .arg(scratch.join("copy.control"))
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    drop(connect(&filecopy, &mut server)?);
    let raw_socket = scratch.join("sink.sock");
    let exe = std::env::current_exe().context(|| "cannot find hvbench's own path")?;
    let mut sink_server = Running::spawn(
        "sink",
        Command::new(exe)
            .arg("sink")
            .arg(&raw_socket)
            .arg(allowed.join("raw.bin"))
            .stdout(Stdio::null()),
    )?;
    let data = pseudo_random(FILE_BYTES);
    let local = scratch.join("copy-source.bin");
    std::fs::write(&local, &data).context(|| "cannot write the file to copy")?;
    say(&format!(
        "hvbench: file copy of {} MiB, {ROUNDS} rounds each of hvhost copy and a raw stream into the same \
         directory, alternating",
        FILE_BYTES >> 20
    ));
    let (mut copies, mut raws) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        raws.push(raw_round(&raw_socket, &mut sink_server, &data)?);
        copies.push(copy_round(&filecopy, &local, &allowed)?);
    }
    if std::fs::read(allowed.join("copied.bin")).ok().as_deref() != Some(&data[..]) {
        return Err(Failure(
            "the copied file differs from the source".to_string(),
        ));
    }
    let (copy_time, raw_time) = (median(copies), median(raws));
    let ratio = raw_time.as_secs_f64() / copy_time.as_secs_f64();
    figure(
        "copy_throughput",
        format!(
            "{:.0} MiB/s via the agent vs {:.0} MiB/s raw: ratio {ratio:.2} (target >= 0.8)",
            mib_per_s(FILE_BYTES, copy_time),
            mib_per_s(FILE_BYTES, raw_time)
        ),
    );
    let (quiet, ()) = heartbeats_during(&heartbeat, || {
        std::thread::sleep(copy_time * ROUNDS as u32);
        Ok(())
    })?;
    let (busy, _) = heartbeats_during(&heartbeat, || {
        (0..ROUNDS).try_for_each(|_| copy_round(&filecopy, &local, &allowed).map(drop))
    })?;
    let us = |trips: &RoundTrips, q: f64| trips.quantile(q);
    figure(
        "heartbeat_during_copy",
        format!(
            "p50 {:.0} us, p99 {:.0} us, max {:.0} us over {} beats; without a copy p50 {:.0} us, p99 {:.0} us",
            us(&busy, 0.5),
            us(&busy, 0.99),
            us(&busy, 1.0),
            busy.count(),
            us(&quiet, 0.5),
            us(&quiet, 0.99)
        ),
    );
    say(&format!(
        "bench: copy_mib_per_s={:.0} raw_mib_per_s={:.0} copy_ratio={ratio:.2} hb_during_copy_p99_us={:.0} \
         hb_quiet_p99_us={:.0}",
        mib_per_s(FILE_BYTES, copy_time),
        mib_per_s(FILE_BYTES, raw_time),
        us(&busy, 0.99),
        us(&quiet, 0.99)
    ));
    Ok(())
}
