//! A steady stream of heartbeats allocates nothing in the agent. The agent's own poll loop (`GuestLoop`, with
//! sd_notify and a watchdog as under systemd) runs in a thread of this test, listening on a Unix socket; a
//! counting global allocator counts every allocation and free made by that thread. After a warm-up, in which
//! the buffers grow to their size, heartbeats arrive one at a time, sixteen in one write and split across
//! two writes, and each is checked; between the two moments the agent thread is found waiting in poll(2),
//! it must not have allocated or freed once.
//!
//! Its own test binary: the allocator and its counters are this file's alone.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::{assert_heartbeat_answer, encode, heartbeat_request, write_config, Peer};
use hvagent::event_loop::GuestLoop;
use hvagent::ops::systemd::Notifier;

/// Counts the allocations and frees of the threads that ask for it, and passes everything to the system.
struct Counting;

thread_local! {
    /// Whether this thread's allocations are counted. Const-initialised and without a destructor, so reading
    /// it from inside the allocator never allocates.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static FREES: AtomicU64 = AtomicU64::new(0);

fn counted() -> bool {
    COUNTED.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: every call goes to the system allocator with the caller's own arguments; counting touches only
// atomics and a const thread-local.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counted() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if counted() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counted() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if counted() {
            FREES.fetch_add(1, Ordering::Relaxed);
        }
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Formats every line it is given, as the agent's logger does, and throws it away: a line logged in the
/// steady state shows up as an allocation.
struct FormattingLogger;

impl log::Log for FormattingLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        std::hint::black_box(record.args().to_string());
    }

    fn flush(&self) {}
}

static LOGGER: FormattingLogger = FormattingLogger;

/// (allocations, frees) counted so far.
fn counts() -> (u64, u64) {
    (
        ALLOCATIONS.load(Ordering::Relaxed),
        FREES.load(Ordering::Relaxed),
    )
}

/// The system call a thread waits in (libc's poll() is poll(2) on x86_64, ppoll(2) where there is none).
#[cfg(target_arch = "x86_64")]
const POLL: libc::c_long = libc::SYS_poll;
#[cfg(not(target_arch = "x86_64"))]
const POLL: libc::c_long = libc::SYS_ppoll;

/// Waits until thread `tid` of this process is blocked in poll: the loop has finished its turn.
fn wait_until_polling(tid: libc::pid_t) {
    let path = format!("/proc/self/task/{tid}/syscall");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&path).expect("the agent thread's syscall file");
        if text.split_whitespace().next() == Some(&POLL.to_string()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the agent thread never went back to poll: {text}"
        );
        std::thread::yield_now();
    }
}

/// One round of traffic: `count` heartbeats one at a time, then `count` in bursts of sixteen per write,
/// then `count / 16` each split across two writes with the agent back in poll between them.
fn heartbeats(peer: &mut Peer, tid: libc::pid_t, first: u64, count: u64) -> u64 {
    let mut seq = first;
    for _ in 0..count {
        peer.heartbeat(seq);
        seq += 1;
    }
    for _ in 0..count / 16 {
        let burst: Vec<u8> = (seq..seq + 16)
            .flat_map(|n| encode(&heartbeat_request(n, (n % 256) as u8)))
            .collect();
        peer.stream.write_all(&burst).unwrap();
        for n in seq..seq + 16 {
            assert_heartbeat_answer(&peer.receive().expect("an answer in the burst"), n);
        }
        seq += 16;
    }
    for _ in 0..count / 16 {
        let bytes = encode(&heartbeat_request(seq, (seq % 256) as u8));
        peer.stream.write_all(&bytes[..30]).unwrap();
        wait_until_polling(tid);
        peer.stream.write_all(&bytes[30..]).unwrap();
        assert_heartbeat_answer(
            &peer.receive().expect("an answer to a split heartbeat"),
            seq,
        );
        seq += 1;
    }
    seq
}

#[test]
fn a_steady_stream_of_heartbeats_allocates_nothing_in_the_agent() {
    log::set_logger(&LOGGER).unwrap();
    log::set_max_level(log::LevelFilter::Info);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hb.sock");
    let config = write_config(
        dir.path(),
        "hvagent.toml",
        &format!(
            "[heartbeat]\nlisten = \"unix:{}\"\nhealth = \"none\"\n",
            socket.display()
        ),
    );
    let config = hvagent::config::load(Some(&config)).unwrap();

    // systemd's side: READY=1, STATUS= and a watchdog ping every 50 ms, drained as they come.
    let notify_path = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&notify_path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    std::env::set_var("NOTIFY_SOCKET", &notify_path);
    std::env::set_var("WATCHDOG_USEC", "100000");
    let notifier = Notifier::from_env();
    let pings = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let drain = {
        let (pings, stop) = (pings.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(count) = systemd.recv(&mut buffer) {
                    if &buffer[..count] == b"WATCHDOG=1" {
                        pings.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };

    let (tid_to_test, tid) = mpsc::channel();
    let agent = std::thread::spawn(move || {
        common::deny_vsock().expect("the vsock guard");
        // SAFETY: gettid(2) has no arguments and cannot fail.
        tid_to_test.send(unsafe { libc::gettid() }).unwrap();
        COUNTED.set(true);
        GuestLoop::new(config, None)
            .expect("the agent starts")
            .with_notifier(notifier)
            .run()
    });
    let tid = tid.recv().unwrap();
    common::wait_for_path(&socket);
    let mut peer = Peer::connect(&socket);
    peer.negotiate_heartbeat();

    let next = heartbeats(&mut peer, tid, 0, 2000);
    wait_until_polling(tid);
    let (before, pings_before) = (counts(), pings.load(Ordering::Relaxed));
    let last = heartbeats(&mut peer, tid, next, 20_000);
    wait_until_polling(tid);
    let after = counts();
    let answered = last - next;
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (0, 0),
        "(allocations, frees) in the agent thread over {answered} heartbeats"
    );
    assert!(
        pings.load(Ordering::Relaxed) > pings_before,
        "the watchdog was pinged while the heartbeats were counted"
    );

    // SAFETY: kill(2) on this process with SIGTERM, which the agent's signal pipe takes.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGTERM) }, 0);
    agent.join().unwrap().expect("the agent stops cleanly");
    stop.store(true, Ordering::Relaxed);
    drain.join().unwrap();
}
