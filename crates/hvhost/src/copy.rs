//! `hvhost copy`: puts a local file into the guest through a listening agent's file-copy service (FCOPY),
//! as Hyper-V's `Copy-VMFile` does: START_FILE_COPY, the data in 6 KiB WRITE_TO_FILE fragments with a
//! window of them in flight, COMPLETE_FCOPY. Owns reading the file, the progress shown on a terminal, the
//! step lines and the exit status; the messages and their checks are hvproto's `service::host::filecopy`.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::client::{say, Client, PeerError};
use crate::net::Address;
use crate::requests::open_channel;
use hvproto::service::host::filecopy::{self, CopyAnswer, CopySender, DEFAULT_WINDOW};
use hvproto::service::host::HostError;
use hvproto::wire::fcopy::{CopyFlags, Operation, Start, DATA_FRAGMENT};
use hvproto::wire::Message;

/// How long hvhost waits for each answer by default: a COMPLETE syncs the whole file before it answers.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// What `hvhost copy` was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyRequest {
    pub local: std::path::PathBuf,
    pub guest_dir: String,
    /// The name in the guest; the local file's own name when not given.
    pub name: Option<String>,
    pub overwrite: bool,
    pub create_path: bool,
    pub timeout: Duration,
}

/// How a copy ended; each has its exit status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest confirmed COMPLETE: the file is in place.
    Done,
    /// The guest refused the START: nothing was created.
    StartRefused(String),
    /// The guest refused a write or the COMPLETE: it removed what it had received.
    CopyRefused(String),
}

impl Outcome {
    /// 0 done, 3 START refused, 4 refused during the copy (1 and 2 are hvhost's usual connection and
    /// usage failures; a local file that cannot be read is 1 too).
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Done => 0,
            Outcome::StartRefused(_) => 3,
            Outcome::CopyRefused(_) => 4,
        }
    }

    pub fn problem(&self) -> Option<&str> {
        match self {
            Outcome::Done => None,
            Outcome::StartRefused(why) | Outcome::CopyRefused(why) => Some(why),
        }
    }
}

/// Why a copy could not run at all.
#[derive(Debug)]
pub enum CopyError {
    Peer(PeerError),
    Local(String),
}

impl std::fmt::Display for CopyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CopyError::Peer(error) => write!(f, "{error}"),
            CopyError::Local(why) => f.write_str(why),
        }
    }
}

impl From<PeerError> for CopyError {
    fn from(error: PeerError) -> CopyError {
        CopyError::Peer(error)
    }
}

fn protocol(error: HostError) -> CopyError {
    CopyError::Peer(PeerError::Protocol(error))
}

/// The name the file gets in the guest.
fn guest_name(request: &CopyRequest) -> Result<String, CopyError> {
    if let Some(name) = &request.name {
        return Ok(name.clone());
    }
    request
        .local
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .ok_or_else(|| {
            CopyError::Local(format!(
                "{} has no file name; give one with --name",
                request.local.display()
            ))
        })
}

/// Shows bytes sent and the rate on a terminal, at most five times a second.
struct Progress {
    shown: bool,
    last: Option<Instant>,
    started: Instant,
    total: u64,
}

impl Progress {
    fn new(total: u64) -> Progress {
        Progress {
            shown: std::io::stdout().is_terminal(),
            last: None,
            started: Instant::now(),
            total,
        }
    }

    fn update(&mut self, done: u64, out: &mut dyn Write) {
        let now = Instant::now();
        if !self.shown
            || self
                .last
                .is_some_and(|at| now - at < Duration::from_millis(200))
        {
            return;
        }
        self.last = Some(now);
        let _ = write!(
            out,
            "\r{done} of {} bytes, {:.1} MiB/s   ",
            self.total,
            rate(done, now - self.started)
        );
        let _ = out.flush();
    }

    fn finish(&self, out: &mut dyn Write) {
        if self.shown && self.last.is_some() {
            let _ = writeln!(out);
        }
    }
}

fn rate(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / took.as_secs_f64().max(1e-6)
}

/// `hvhost copy`: one line per step (start, the data, complete) with the guest's answer.
pub fn copy(
    address: &Address,
    request: &CopyRequest,
    out: &mut dyn Write,
) -> Result<Outcome, CopyError> {
    let local = &request.local;
    let file = File::open(local)
        .map_err(|error| CopyError::Local(format!("cannot open {}: {error}", local.display())))?;
    let size = file
        .metadata()
        .map_err(|error| CopyError::Local(format!("cannot read {}: {error}", local.display())))?
        .len();
    let mut flags = 0;
    if request.overwrite {
        flags |= CopyFlags::OVER_WRITE;
    }
    if request.create_path {
        flags |= CopyFlags::CREATE_PATH;
    }
    let start = Start {
        file_name: guest_name(request)?,
        path_name: request.guest_dir.clone(),
        flags: CopyFlags(flags),
        file_size: size,
    };
    let mut client = open_channel(address, filecopy::channel(), out)?;
    let mut sender = CopySender::new(client.channel(), DEFAULT_WINDOW).map_err(protocol)?;
    let message = sender.start(&start, Instant::now()).map_err(protocol)?;
    let answer = ask(&mut client, &mut sender, &message, request.timeout)?;
    line(out, "start", &answer);
    if !answer.is_ok() {
        return Ok(Outcome::StartRefused(format!(
            "the guest refused to create {}/{} ({}); nothing was created",
            start.path_name, start.file_name, answer.status
        )));
    }
    let began = Instant::now();
    if let Some(refused) = send_data(&mut client, &mut sender, &file, local, size, request, out)? {
        return Ok(refused);
    }
    say(
        out,
        &format!(
            "copy data bytes={size} ms={:.1} mib_per_s={:.1}",
            millis(began.elapsed()),
            rate(size, began.elapsed())
        ),
    );
    let message = sender.complete(Instant::now());
    let answer = ask(&mut client, &mut sender, &message, request.timeout)?;
    line(out, "complete", &answer);
    if !answer.is_ok() {
        return Ok(Outcome::CopyRefused(format!(
            "the guest refused the COMPLETE ({}); it removed what it had received",
            answer.status
        )));
    }
    say(
        out,
        &format!(
            "copied {size} bytes to {}/{} in {:.3} s ({:.1} MiB/s)",
            start.path_name,
            start.file_name,
            began.elapsed().as_secs_f64(),
            rate(size, began.elapsed())
        ),
    );
    Ok(Outcome::Done)
}

/// Sends one request and waits for its answer.
fn ask(
    client: &mut Client,
    sender: &mut CopySender,
    message: &Message,
    timeout: Duration,
) -> Result<CopyAnswer, CopyError> {
    client.queue(message)?;
    let mut inbox = Vec::new();
    let deadline = Instant::now() + timeout;
    if !client.pump(&mut inbox, deadline)? {
        let what = if message.body.len() > DATA_FRAGMENT {
            "write"
        } else {
            "file-copy request"
        };
        return Err(PeerError::Timeout(what, timeout).into());
    }
    let answer = inbox.remove(0);
    sender.handle(&answer, Instant::now()).map_err(protocol)
}

/// Sends the file's data with a window of writes in flight; the refusal, when the guest answered one with
/// an error (it then removed what it had; hvhost sends no more).
fn send_data(
    client: &mut Client,
    sender: &mut CopySender,
    file: &File,
    local: &Path,
    size: u64,
    request: &CopyRequest,
    out: &mut dyn Write,
) -> Result<Option<Outcome>, CopyError> {
    let mut fragments = filecopy::fragments(size).peekable();
    let mut buffer = vec![0u8; DATA_FRAGMENT];
    let mut inbox = Vec::new();
    let mut acknowledged = 0u64;
    let mut progress = Progress::new(size);
    while fragments.peek().is_some() || sender.in_flight() > 0 {
        while sender.can_send() {
            let Some((offset, len)) = fragments.next() else {
                break;
            };
            if let Err(error) = read_exact_at(file, &mut buffer[..len], offset) {
                // The file shrank or failed under us: the guest must not keep a part of it.
                client.queue(&sender.cancel(Instant::now()))?;
                let _ = client.pump(&mut inbox, Instant::now() + Duration::from_millis(100));
                return Err(CopyError::Local(format!(
                    "cannot read {} at offset {offset}: {error}; the copy was cancelled",
                    local.display()
                )));
            }
            let message = sender
                .write(offset, &buffer[..len], Instant::now())
                .map_err(protocol)?;
            client.queue(&message)?;
        }
        if !client.pump(&mut inbox, Instant::now() + request.timeout)? {
            return Err(PeerError::Timeout("write", request.timeout).into());
        }
        for message in inbox.drain(..) {
            let answer = sender.handle(&message, Instant::now()).map_err(protocol)?;
            if answer.operation == Operation::CANCEL_FCOPY {
                continue;
            }
            if !answer.is_ok() {
                progress.finish(out);
                line(out, "write", &answer);
                return Ok(Some(Outcome::CopyRefused(format!(
                    "the guest refused the write at offset {} ({}); it removed what it had received",
                    answer.offset, answer.status
                ))));
            }
            acknowledged += answer.len as u64;
        }
        progress.update(acknowledged, out);
    }
    progress.finish(out);
    Ok(None)
}

/// `copy WORD answer=STATUS rtt_ms=X`.
fn line(out: &mut dyn Write, word: &str, answer: &CopyAnswer) {
    say(
        out,
        &format!(
            "copy {word} answer={} rtt_ms={:.1}",
            answer.status,
            millis(answer.round_trip)
        ),
    );
}

/// Fills `buffer` from `file` at `offset`: pread(2) on Unix; on Windows (hvhost.exe) a seek and a read, the
/// file being read by this loop alone.
#[cfg(unix)]
fn read_exact_at(file: &File, buffer: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buffer, offset)
}

#[cfg(not(unix))]
fn read_exact_at(mut file: &File, buffer: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buffer)
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_has_its_own_exit_status_and_only_done_is_0() {
        let codes: Vec<u8> = [
            Outcome::Done,
            Outcome::StartRefused(String::new()),
            Outcome::CopyRefused(String::new()),
        ]
        .iter()
        .map(Outcome::exit_code)
        .collect();
        assert_eq!(codes, [0, 3, 4]);
    }

    #[test]
    fn the_guest_name_is_the_local_name_unless_given() {
        let mut request = CopyRequest {
            local: "/tmp/dir/a.bin".into(),
            guest_dir: "/srv".to_string(),
            name: None,
            overwrite: false,
            create_path: false,
            timeout: DEFAULT_TIMEOUT,
        };
        assert_eq!(guest_name(&request).unwrap(), "a.bin");
        request.name = Some("b".to_string());
        assert_eq!(guest_name(&request).unwrap(), "b");
        request.name = None;
        request.local = "/".into();
        assert!(guest_name(&request).is_err());
    }
}
