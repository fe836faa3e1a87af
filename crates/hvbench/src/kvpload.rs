//! The cost of a stream of key-value Sets to the rest of the agent: heartbeat round trips on one connection
//! while another sends 10,000 Sets, against the same round trips with no Sets, in one run on one agent
//! (both services listening on Unix sockets, the pool files in the scratch directory).
//!
//! The Sets go `SET_WINDOW` at a time (written back to back, then their answers read), over 100 keys of the
//! guest pool, so they fit `pool_max_bytes`; the agent answers each once its pool is written, and writes each
//! pool at most once per `kvp_flush_ms` (100 ms) unless 64 changes wait, so a window of 64 is one write
//! and the stream runs at about 64 Sets per interval. The figure
//! is heartbeat p99 under the stream over idle p99 (target ≤ 2×), with the Sets' rate and the durable
//! writes they took (from `hvagent status`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hvhost::client::RoundTrips;
use hvproto::service::host::{HostChannel, HostEvent};
use hvproto::service::ServiceKind;
use hvproto::wire::kvp::{
    utf16, utf16_bytes, value_type, KvpBody, KvpMessage, Operation, Pool, ValueRecord,
};
use hvproto::wire::{Decoder, IcVersion, Message, MessageType, Status};

use crate::peer::Peer;
use crate::run::{connect, Context, Failure, Running};
use crate::{figure, say};

/// Sets sent.
const SETS: usize = 10_000;
/// Sets in flight at once: the most the agent queues for one write
/// (hvproto::service::guestinfo::pools::MAX_QUEUED), so each window is one durable write.
const SET_WINDOW: usize = hvproto::service::guestinfo::pools::MAX_QUEUED;
/// Heartbeat round trips timed with no Sets, before the stream and again after it.
const IDLE_TRIPS: usize = 2_000;
/// The pause between two heartbeats: the heartbeats sample the agent's latency rather than compete with
/// the Sets for the CPU (a flat-out client would measure the machine's scheduler).
const PACE: Duration = Duration::from_micros(500);

/// Runs the measurement with the agent binary `agent`, in `scratch`.
pub(crate) fn measure(agent: &Path, scratch: &Path) -> Result<(), Failure> {
    let heartbeat_socket = scratch.join("kvp-heartbeat.sock");
    let kvp_socket = scratch.join("kvp-guestinfo.sock");
    let control = scratch.join("kvp-agent.control");
    let config = scratch.join("kvp-agent.toml");
    std::fs::write(
        &config,
        format!(
            "[heartbeat]\nlisten = \"unix:{}\"\n[timesync]\nenabled = false\n[shutdown]\nenabled = false\n\
             [guestinfo]\nlisten = \"unix:{}\"\npool_dir = \"{}\"\nstate_dir = \"{}\"\n",
            heartbeat_socket.display(),
            kvp_socket.display(),
            scratch.join("pools").display(),
            scratch.join("state").display()
        ),
    )
    .context(|| format!("cannot write {}", config.display()))?;
    let mut running = Running::spawn(
        "kvp agent",
        Command::new(agent)
            .arg("--config")
            .arg(&config)
            .arg("--control")
            .arg(&control)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    let mut heartbeats = Peer::agent(&heartbeat_socket, &mut running)?;
    let kvp = connect(&kvp_socket, &mut running)?;
    heartbeats.run(crate::WARM_UP, false)?;
    let mut idle = RoundTrips::default();
    timed(&mut heartbeats, IDLE_TRIPS, &mut idle)?;

    let done = Arc::new(AtomicBool::new(false));
    let stream = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let result = set_stream(kvp);
            done.store(true, Ordering::SeqCst);
            result
        })
    };
    let mut loaded = RoundTrips::default();
    while !done.load(Ordering::SeqCst) {
        loaded.record(heartbeats.round_trip()?);
        std::thread::sleep(PACE);
    }
    let elapsed = stream
        .join()
        .map_err(|_| Failure("the Set stream's thread panicked".into()))??;
    // Idle again: the machine's load may have changed during the stream; both halves make the idle figure.
    std::thread::sleep(Duration::from_millis(200));
    timed(&mut heartbeats, IDLE_TRIPS, &mut idle)?;
    let status = Command::new(agent)
        .args(["status", "--control"])
        .arg(&control)
        .output()
        .context(|| "cannot run hvagent status")?;
    let writes = String::from_utf8_lossy(&status.stdout)
        .lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix("kvp writes")
                .map(|rest| rest.trim().to_string())
        })
        .unwrap_or_else(|| {
            format!(
                "unknown ({})",
                String::from_utf8_lossy(&status.stderr).trim()
            )
        });
    let (idle_p99, loaded_p99) = (idle.quantile(0.99), loaded.quantile(0.99));
    let ratio = loaded_p99 / idle_p99;
    figure(
        "kvp_sets",
        format!(
            "{SETS} in {:.2} s, {:.0}/s, {SET_WINDOW} in flight; durable writes: {writes}",
            elapsed.as_secs_f64(),
            SETS as f64 / elapsed.as_secs_f64()
        ),
    );
    figure(
        "kvp_heartbeat_p99",
        format!(
            "{loaded_p99:.1} us during the Sets ({} round trips), {idle_p99:.1} us idle ({} before and after); p50 {:.1} / {:.1} us; one every {} us",
            loaded.count(),
            idle.count(),
            loaded.quantile(0.5),
            idle.quantile(0.5),
            PACE.as_micros()
        ),
    );
    figure(
        "kvp_heartbeat_tail",
        format!(
            "p99.9 {:.1} us, max {:.1} us during the Sets; p99.9 {:.1} us, max {:.1} us idle",
            loaded.quantile(0.999),
            loaded.quantile(1.0),
            idle.quantile(0.999),
            idle.quantile(1.0)
        ),
    );
    figure(
        "kvp_heartbeat_p99_ratio",
        format!("{ratio:.2} x during/idle (target <= 2)"),
    );
    let (in_loop, on_writer) = write_times(&scratch.join("timed-pools"))?;
    let write_ms = on_writer.quantile(0.5) / 1e3;
    figure(
        "kvp_write",
        format!(
            "one durable write of a 100-pair pool: p50 {:.3} ms, max {:.3} ms in the loop (locks, read, new file \
             into the page cache), then p50 {write_ms:.2} ms, max {:.2} ms on the writer thread (two fsyncs, \
             rename)",
            in_loop.quantile(0.5) / 1e3,
            in_loop.quantile(1.0) / 1e3,
            on_writer.quantile(1.0) / 1e3
        ),
    );
    say(&format!(
        "bench: kvp_heartbeat_p99_ratio={ratio:.2} kvp_sets_per_s={:.0} kvp_write_ms_p50={write_ms:.2}",
        SETS as f64 / elapsed.as_secs_f64()
    ));
    Ok(())
}

/// How long the two halves of one durable write of a 100-pair pool take here, 50 times (after 100 that grow
/// it): the loop's (locks, read, changes, the new file into the page cache) and the writer thread's (two
/// fsyncs and the rename).
fn write_times(dir: &Path) -> Result<(RoundTrips, RoundTrips), Failure> {
    use hvagent::system::pool_file::{self, Wait};
    use hvproto::service::guestinfo::Pair;
    let (mut in_loop, mut on_writer) = (RoundTrips::default(), RoundTrips::default());
    for n in 0..150 {
        let start = Instant::now();
        let prepared = pool_file::prepare(dir, Pool::GUEST, Wait::Forever, &mut |pairs| {
            let pair = Pair::text(&format!("bench-{}", n % 100), &format!("value {n}"));
            match pairs.iter_mut().find(|there| there.key == pair.key) {
                Some(there) => there.value = pair.value,
                None => pairs.push(pair),
            }
        })
        .context(|| format!("cannot write a pool in {}", dir.display()))?;
        let prepared_at = Instant::now();
        prepared
            .commit(None)
            .context(|| format!("cannot write a pool in {}", dir.display()))?;
        if n >= 100 {
            in_loop.record(prepared_at - start);
            on_writer.record(prepared_at.elapsed());
        }
    }
    Ok((in_loop, on_writer))
}

/// `count` paced heartbeat round trips, recorded in `trips`.
fn timed(peer: &mut Peer, count: usize, trips: &mut RoundTrips) -> Result<(), Failure> {
    for _ in 0..count {
        trips.record(peer.round_trip()?);
        std::thread::sleep(PACE);
    }
    Ok(())
}

/// Negotiates KVP on `stream` and sends [`SETS`] Sets, [`SET_WINDOW`] at a time, checking every answer;
/// returns how long the Sets took.
fn set_stream(mut stream: UnixStream) -> Result<Duration, Failure> {
    stream
        .set_read_timeout(Some(crate::IO_TIMEOUT))
        .context(|| "cannot set a read timeout")?;
    let mut channel = HostChannel::new(ServiceKind::GuestInfo);
    let mut decoder = Decoder::new();
    let mut buffer = vec![0u8; 65536];
    stream
        .write_all(&channel.offer().to_bytes().context(|| "cannot encode")?)
        .context(|| "cannot send the KVP offer")?;
    let version = loop {
        let read = stream
            .read(&mut buffer)
            .context(|| "no KVP negotiation answer")?;
        if read == 0 {
            return Err(Failure("the agent closed the KVP connection".into()));
        }
        decoder.push(&buffer[..read]);
        if let Some(answer) = decoder
            .next_message()
            .context(|| "a malformed negotiation answer")?
        {
            match channel.handle(&answer, Instant::now()) {
                Ok(HostEvent::Negotiated { message, .. }) => break message,
                other => return Err(Failure(format!("KVP negotiation failed: {other:?}"))),
            }
        }
    };
    let start = Instant::now();
    let mut sent = 0;
    let mut batch = Vec::new();
    while sent < SETS {
        batch.clear();
        let this = SET_WINDOW.min(SETS - sent);
        for n in sent..sent + this {
            set_request(n, version)
                .emit(&mut batch)
                .context(|| "cannot encode a Set")?;
        }
        stream.write_all(&batch).context(|| "cannot send Sets")?;
        let mut answered = 0;
        while answered < this {
            while let Some(answer) = decoder
                .next_message()
                .context(|| "a malformed Set answer")?
            {
                if answer.header.status != Status::OK {
                    return Err(Failure(format!(
                        "a Set was answered {}",
                        answer.header.status
                    )));
                }
                answered += 1;
            }
            if answered < this {
                let read = stream.read(&mut buffer).context(|| "no answer to a Set")?;
                if read == 0 {
                    return Err(Failure("the agent closed the KVP connection".into()));
                }
                decoder.push(&buffer[..read]);
            }
        }
        sent += this;
    }
    Ok(start.elapsed())
}

fn set_request(n: usize, version: IcVersion) -> Message {
    let key = utf16(&format!("bench-{}", n % 100));
    let value = utf16_bytes(&utf16(&format!("value {n}")));
    let body = KvpMessage::new(
        Operation::SET,
        Pool::GUEST,
        KvpBody::Value(ValueRecord::new(value_type::STRING, &key, &value)),
    )
    .to_body();
    Message::request(
        MessageType::KVP_EXCHANGE,
        IcVersion::new(3, 0),
        version,
        n as u8,
        body,
    )
}
