//! Writes the seed corpora under fuzz/corpus/<target>/: valid messages, bodies, configs and addresses built
//! with hvagent's own encoders, one file per seed. The files are committed; run it again after a codec
//! change (`cargo run --example seeds -- corpus` in fuzz/) and commit what changed.

use std::path::Path;

use hvproto::service::host::HostChannel;
use hvproto::service::ServiceKind;
use hvproto::wire::heartbeat::{AppState, Heartbeat};
use hvproto::wire::negotiate::Negotiate;
use hvproto::wire::kvp::{self, KvpBody, KvpMessage, Operation, Pool, ValueRecord};
use hvproto::wire::shutdown::{self, ShutdownRequest};
use hvproto::wire::timesync::{TimeSyncData, TimeSyncFlags, TimeSyncRef, UNIX_EPOCH_TICKS};
use hvproto::wire::{IcVersion, Message, MessageType, Status};

/// A time near 2026 in ticks since 1601.
const TICKS: u64 = UNIX_EPOCH_TICKS + 17_800_000_000_000_000;

fn negotiate_bodies() -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = ServiceKind::ALL
        .iter()
        .map(|&kind| {
            Message::parse(&HostChannel::new(kind).offer().to_bytes().unwrap())
                .unwrap()
                .body
                .to_vec()
        })
        .collect();
    bodies.push(Negotiate::answer(Some((IcVersion::new(3, 0), IcVersion::new(4, 0)))).to_body());
    bodies.push(Negotiate::answer(None).to_body());
    bodies
}

fn heartbeat_bodies() -> Vec<Vec<u8>> {
    let mut linux = vec![0u8; 40];
    linux[..8].copy_from_slice(&7u64.to_le_bytes());
    vec![
        Heartbeat::new(0, AppState::UNKNOWN).to_body(),
        Heartbeat::new(41, AppState::HEALTHY).to_body(),
        u64::MAX.to_le_bytes().to_vec(),
        linux,
    ]
}

fn timesync_ref_bodies() -> Vec<Vec<u8>> {
    [(TimeSyncFlags::SYNC, 3), (TimeSyncFlags::SAMPLE, 5)]
        .iter()
        .map(|&(flags, reserved)| {
            TimeSyncRef {
                parent_time: TICKS,
                vm_reference_time: 12_345,
                flags,
                leap_flags: 0,
                stratum: 2,
                rest: vec![0; reserved],
            }
            .to_body()
        })
        .collect()
}

fn timesync_data_bodies() -> Vec<Vec<u8>> {
    [(TimeSyncFlags::PROBE, 0), (TimeSyncFlags::SAMPLE, 3)]
        .iter()
        .map(|&(flags, padding)| {
            TimeSyncData {
                parent_time: TICKS,
                child_time: TICKS - 10,
                round_trip_time: 2_000,
                flags,
                rest: vec![0; padding],
            }
            .to_body()
        })
        .collect()
}

fn shutdown_bodies() -> Vec<Vec<u8>> {
    let request = |flags, message: Vec<u8>| {
        ShutdownRequest {
            reason_code: 0x8000_0000,
            timeout_seconds: 30,
            flags,
            display_message: message,
        }
        .to_body()
    };
    vec![
        request(0, Vec::new()),
        request(
            shutdown::flags::REBOOT | shutdown::flags::FORCE,
            b"r\0e\0b\0o\0o\0t\0".to_vec(),
        ),
        request(
            shutdown::flags::HIBERNATE,
            vec![0; shutdown::DISPLAY_MESSAGE_LEN],
        ),
    ]
}

fn kvp_bodies() -> Vec<Vec<u8>> {
    let record = || ValueRecord::string("Role", "web server");
    vec![
        KvpMessage::new(Operation::SET, Pool::EXTERNAL, KvpBody::Value(record())).to_body(),
        KvpMessage::new(Operation::GET, Pool::GUEST, KvpBody::Value(record())).to_body(),
        KvpMessage::new(
            Operation::DELETE,
            Pool::EXTERNAL,
            KvpBody::Delete {
                key_size: 10,
                key_area: kvp::utf16_bytes(&kvp::utf16("Role")),
            },
        )
        .to_body(),
        KvpMessage::new(
            Operation::ENUMERATE,
            Pool::AUTO,
            KvpBody::Enumerate {
                index: 3,
                record: record(),
            },
        )
        .to_body(),
        KvpMessage::new(Operation::GET_IP_INFO, Pool::EXTERNAL, KvpBody::Other(vec![0; 64])).to_body(),
    ]
}

/// Whole messages of every type, as a host and as a guest send them.
fn messages() -> Vec<Message> {
    let version = IcVersion::new(3, 0);
    let mut messages = Vec::new();
    for (msgtype, bodies) in [
        (MessageType::NEGOTIATE, negotiate_bodies()),
        (MessageType::HEARTBEAT, heartbeat_bodies()),
        (MessageType::TIMESYNC, timesync_ref_bodies()),
        (MessageType::TIMESYNC, timesync_data_bodies()),
        (MessageType::SHUTDOWN, shutdown_bodies()),
        (MessageType::KVP_EXCHANGE, kvp_bodies()),
    ] {
        for (index, body) in bodies.into_iter().enumerate() {
            let request = Message::request(msgtype, version, version, index as u8, body);
            messages.push(request.reply(Status::OK, request.body.clone()));
            messages.push(request);
        }
    }
    messages
}

/// Decoder inputs: a read-size prefix (see the decoder target) and a stream of messages.
fn streams() -> Vec<Vec<u8>> {
    let messages = messages();
    let mut streams = Vec::new();
    for (prefix, group) in [
        (&[0u8][..], 1),
        (&[2, 0, 3], 3),
        (&[1, 255], messages.len()),
    ] {
        for chunk in messages.chunks(group) {
            let mut stream = prefix.to_vec();
            for message in chunk {
                message.emit(&mut stream).unwrap();
            }
            streams.push(stream);
        }
    }
    streams
}

const CONFIGS: [&str; 4] = [
    "",
    "log_level = \"debug\"\n\n[heartbeat]\nenabled = true\nconnect = \"vsock:host:0x48560001\"\n",
    "[heartbeat]\nlisten = \"unix:/run/hvagent/hb.sock\"\nallow_any_cid = true\n\n[timesync]\nenabled = false\n\
     connect = \"vsock:host:0x48560004\"\n\n[shutdown]\nenabled = false\n\
     connect = \"vsock:2:48560003-facb-11e6-bd58-64006a7986d3\"\n",
    "# comment\nlog_level = \"warn\"\n[heartbeat]\nlisten = \"vsock:any:{48560001-FACB-11E6-BD58-64006A7986D3}\"\n",
];

const ADDRESSES: [&str; 7] = [
    "vsock:host:0x48560001",
    "vsock:any:1213595649",
    "vsock:local:{00000AC9-FACB-11E6-BD58-64006A7986D3}",
    "vsock:3:48560001-facb-11e6-bd58-64006a7986d3",
    "unix:/run/x.sock",
    "hybrid:/tmp/v.sock:0x48560001",
    "hybrid:/a:b:5",
];

fn write_all(dir: &Path, target: &str, seeds: Vec<Vec<u8>>) {
    let dir = dir.join(target);
    std::fs::create_dir_all(&dir).unwrap();
    for (index, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{index:03}")), seed).unwrap();
    }
    println!("{}: {} seeds", dir.display(), seeds.len());
}

fn main() {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: seeds CORPUS_DIR");
        std::process::exit(2);
    };
    let dir = Path::new(&dir);
    let text = |items: &[&str]| items.iter().map(|item| item.as_bytes().to_vec()).collect();
    write_all(dir, "decoder", streams());
    write_all(dir, "negotiate", negotiate_bodies());
    write_all(dir, "heartbeat", heartbeat_bodies());
    write_all(dir, "timesync_ref", timesync_ref_bodies());
    write_all(dir, "timesync_data", timesync_data_bodies());
    write_all(dir, "shutdown", shutdown_bodies());
    write_all(dir, "kvp", kvp_bodies());
    write_all(dir, "config", text(&CONFIGS));
    write_all(dir, "address", text(&ADDRESSES));
}
