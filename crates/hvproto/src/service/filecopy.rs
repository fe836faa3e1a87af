//! The file-copy service (the FCOPY IC, message type 7; docs/PROTOCOL.md §11): the host's
//! START_FILE_COPY, WRITE_TO_FILE… and COMPLETE_FCOPY or CANCEL_FCOPY put one file into the guest, as
//! Hyper-V's `Copy-VMFile` does with Linux's `hv_fcopy_daemon` (`tools/hv/hv_fcopy_daemon.c`,
//! `hv_fcopy_uio_daemon.c`). Unlike them it is **confined** and **atomic**:
//!
//! - The target must be beneath one of `allowed_dirs`, named without `..` ([`target`]); the edge opens it
//!   beneath that directory without following symlinks, and refuses device files ([`CopySink`]).
//! - The data goes to a temporary file that only COMPLETE, with every byte START announced received, puts
//!   in place; CANCEL, the link closing, a gap or overlap in the offsets, a failed write, an idle
//!   `copy_timeout` and the service stopping all remove it. A file appears whole or not at all.
//!
//! Each answer echoes the request's body, as Linux answers in the host's own buffer, with the status
//! Linux gives where it has one (HV_ERROR_ALREADY_EXISTS, HV_ERROR_DISK_FULL, HV_E_FAIL) and a Win32
//! HRESULT of the same family where hvagent refuses what Linux never checks ([`status`]).
//!
//! Writes never hold the loop for long: data is gathered into slices of at most [`FLUSH_SLICE`] bytes,
//! each written in one call when full, and the rest when the host pauses ([`FLUSH_DELAY`]) or completes.

pub mod target;

use std::time::{Duration, Instant};

use log::{info, warn};

use super::logic::{LinkId, Logic, Refusal, StatusLine, Watch};
use crate::wire::fcopy::{self, Operation, Start};
use crate::wire::{IcVersion, Message, MessageRef, ReplyWriter, Status};
pub use target::{NameRefusal, Target};

/// The statuses of the answers. Linux defines the first two (`include/uapi/linux/hyperv.h`); the rest
/// are `HRESULT_FROM_WIN32` of the Win32 error codes that say the same, the family those two belong to
/// (ERROR_FILE_EXISTS 80, ERROR_DISK_FULL 112), so each refusal has a status of its own; the codes are
/// mingw-w64's `winerror.h` (docs/PROTOCOL.md §11.4).
pub mod status {
    use crate::wire::Status;
    /// `HV_ERROR_ALREADY_EXISTS`: the file exists and OVER_WRITE was not given.
    pub const ALREADY_EXISTS: Status = Status(0x8007_0050);
    /// `HV_ERROR_DISK_FULL`: not enough free space, or a write failed with ENOSPC.
    pub const DISK_FULL: Status = Status(0x8007_0070);
    /// ERROR_PATH_NOT_FOUND: a directory of the path is missing and CREATE_PATH was not given.
    pub const PATH_NOT_FOUND: Status = Status(0x8007_0003);
    /// ERROR_ACCESS_DENIED: the path is not beneath any allowed directory.
    pub const ACCESS_DENIED: Status = Status(0x8007_0005);
    /// ERROR_INVALID_NAME: a `..` in the path, or a file name that is not one plain name.
    pub const INVALID_NAME: Status = Status(0x8007_007B);
    /// ERROR_BUSY: another link's copy is in progress.
    pub const BUSY: Status = Status(0x8007_00AA);
    /// ERROR_BAD_FILE_TYPE: the target or a directory of its path is a device, FIFO or socket.
    pub const BAD_FILE_TYPE: Status = Status(0x8007_00DE);
    /// ERROR_FILE_TOO_LARGE: the size START announced is over `max_file_size`.
    pub const FILE_TOO_LARGE: Status = Status(0x8007_00DF);
    /// ERROR_STOPPED_ON_SYMLINK: the path runs through a symbolic link.
    pub const STOPPED_ON_SYMLINK: Status = Status(0x8007_02A9);
}

/// What the file-copy service is configured with (`[filecopy]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileCopySettings {
    /// The directories files may be copied into (absolute guest paths); none means the service refuses
    /// to start.
    pub allowed_dirs: Vec<String>,
    /// The largest file START may announce.
    pub max_file_size: u64,
    /// The mode a copied file gets.
    pub file_mode: u32,
    /// A copy with no message for this long is cancelled.
    pub copy_timeout: Duration,
}

pub const DEFAULT_MAX_FILE_SIZE: u64 = 4 << 30;
pub const DEFAULT_FILE_MODE: u32 = 0o640;
pub const DEFAULT_COPY_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for FileCopySettings {
    fn default() -> FileCopySettings {
        FileCopySettings {
            allowed_dirs: Vec::new(),
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            file_mode: DEFAULT_FILE_MODE,
            copy_timeout: DEFAULT_COPY_TIMEOUT,
        }
    }
}

/// Data gathered before one write: 256 KiB, about 42 fragments, is one write of well under a millisecond
/// to the page cache, so a heartbeat waits at most that long behind a copy.
pub const FLUSH_SLICE: usize = 256 * 1024;
/// How long gathered data waits for more when the host pauses.
pub const FLUSH_DELAY: Duration = Duration::from_millis(20);

/// Why the edge could not do what was asked; the logic picks the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkError {
    /// A component of the path, or the file itself, is a symbolic link.
    Symlink(String),
    /// A component of the path, or the file, is a device, FIFO, socket, or a file where a directory is
    /// needed.
    NotPlain(String),
    /// A directory of the path is missing (and CREATE_PATH was not given).
    Missing(String),
    /// The target exists and may not be replaced.
    Exists(String),
    /// Not enough space, or ENOSPC on a write.
    NoSpace(String),
    /// Anything else: permissions, I/O errors.
    Failed(String),
}

impl SinkError {
    fn status(&self) -> Status {
        match self {
            SinkError::Symlink(_) => status::STOPPED_ON_SYMLINK,
            SinkError::NotPlain(_) => status::BAD_FILE_TYPE,
            SinkError::Missing(_) => status::PATH_NOT_FOUND,
            SinkError::Exists(_) => status::ALREADY_EXISTS,
            SinkError::NoSpace(_) => status::DISK_FULL,
            SinkError::Failed(_) => Status::FAIL,
        }
    }

    fn why(&self) -> &str {
        match self {
            SinkError::Symlink(why)
            | SinkError::NotPlain(why)
            | SinkError::Missing(why)
            | SinkError::Exists(why)
            | SinkError::NoSpace(why)
            | SinkError::Failed(why) => why,
        }
    }
}

/// What [`CopySink::commit`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commit {
    /// The file is in place.
    Done,
    /// The edge finishes it off the loop: [`CopySink::watched`] wakes the loop when it has, and
    /// [`CopySink::finished`] tells how it went. COMPLETE is answered then.
    Later,
}

/// The filesystem side of one copy at a time: a temporary file beside the target, written, then put in
/// place or removed. The agent's opens beneath the allowed directory without following symlinks, and
/// syncs and renames on a thread of its own; tests use a fake.
pub trait CopySink {
    /// Checks the target (its directories made when `create_path`, none of them a symlink or device,
    /// enough free space, no existing file unless `overwrite`) and creates the temporary file.
    fn begin(&mut self, target: &Target, overwrite: bool) -> Result<(), SinkError>;
    /// Writes `data` at `offset` of the temporary file.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), SinkError>;
    /// Syncs the temporary file, renames it to the target (refusing to replace an existing one unless
    /// `overwrite`) and syncs the directory, now or later ([`Commit`]). A commit that fails removes the
    /// temporary file itself.
    fn commit(&mut self, overwrite: bool) -> Result<Commit, SinkError>;
    /// What the loop watches while a [`Commit::Later`] is under way.
    fn watched(&self) -> Option<Watch> {
        None
    }
    /// The outcome of the commit under way once it has ended; None while it has not.
    fn finished(&mut self) -> Option<Result<(), SinkError>> {
        None
    }
    /// Waits for the commit under way to end and returns its outcome (the agent stopping).
    fn wait(&mut self) -> Option<Result<(), SinkError>> {
        None
    }
    /// Removes the temporary file, if there is one; harmless when there is none.
    fn abort(&mut self);
}

/// What ended the copy in progress without putting the file in place, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    Cancel,
    LinkClosed,
    Timeout,
    Failure,
    Restart,
    Stopping,
}

impl Ending {
    fn describe(self) -> &'static str {
        match self {
            Ending::Cancel => "the host's CANCEL",
            Ending::LinkClosed => "the host's link closed",
            Ending::Timeout => "no message within copy_timeout",
            Ending::Failure => "a refused message",
            Ending::Restart => "a new START on the same link",
            Ending::Stopping => "the file-copy service stopped",
        }
    }
}

/// The copy in progress.
#[derive(Debug)]
struct Copy {
    link: LinkId,
    path: String,
    size: u64,
    overwrite: bool,
    /// Bytes received: where the next write must start.
    received: u64,
    /// Data received and not yet written, which goes at `received - pending.len()`.
    pending: Vec<u8>,
    started: Instant,
    last: Instant,
}

/// A copy whose COMPLETE arrived and whose file the edge is still putting in place.
#[derive(Debug)]
struct Committing {
    link: LinkId,
    copy: Copy,
    /// COMPLETE's answer, its status set when the commit ends; None when the host wants none or its link
    /// is gone.
    answer: Option<Message>,
}

/// The file-copy service's state: idle, one copy in progress, or one being put in place.
pub struct FileCopyLogic {
    settings: FileCopySettings,
    sink: Box<dyn CopySink>,
    copy: Option<Copy>,
    committing: Option<Committing>,
    /// Deferred answers due at the next timer, and since when (the timer is then due at once).
    ready: Vec<(LinkId, Message)>,
    ready_at: Option<Instant>,
    copies: u64,
    last: Option<(Instant, String)>,
}

impl FileCopyLogic {
    pub fn new(settings: FileCopySettings, sink: Box<dyn CopySink>) -> FileCopyLogic {
        FileCopyLogic {
            settings,
            sink,
            copy: None,
            committing: None,
            ready: Vec::new(),
            ready_at: None,
            copies: 0,
            last: None,
        }
    }

    fn start(&mut self, link: LinkId, request: &Start, now: Instant) -> Result<(), Refusal> {
        if let Some(committing) = &self.committing {
            return Err(Refusal::new(
                status::BUSY,
                format!("{} is still being put in place", committing.copy.path),
            ));
        }
        if let Some(copy) = &self.copy {
            if copy.link != link {
                return Err(Refusal::new(
                    status::BUSY,
                    format!("a copy to {} is in progress on another link", copy.path),
                ));
            }
            self.end(Ending::Restart, now);
        }
        let shown = format!("{}/{}", request.path_name, request.file_name);
        let (base, dirs, name) = target::resolve(
            &self.settings.allowed_dirs,
            &request.path_name,
            &request.file_name,
        )
        .map_err(|refusal| {
            let status = match refusal {
                NameRefusal::Traversal(_) | NameRefusal::BadName(_) => status::INVALID_NAME,
                NameRefusal::Outside(_) => status::ACCESS_DENIED,
            };
            Refusal::new(status, format!("refused {shown:?}: {refusal}"))
        })?;
        if request.file_size > self.settings.max_file_size {
            return Err(Refusal::new(
                status::FILE_TOO_LARGE,
                format!(
                    "refused {shown:?}: {} bytes is over max_file_size ({} bytes)",
                    request.file_size, self.settings.max_file_size
                ),
            ));
        }
        let target = Target {
            base,
            dirs,
            name,
            create_path: request.flags.create_path(),
            size: request.file_size,
            mode: self.settings.file_mode,
        };
        let path = target.path();
        let overwrite = request.flags.overwrite();
        self.sink.begin(&target, overwrite).map_err(|error| {
            Refusal::new(error.status(), format!("refused {path}: {}", error.why()))
        })?;
        info!(
            "filecopy: copying {} bytes to {path}{}",
            request.file_size,
            if overwrite { " (may replace it)" } else { "" }
        );
        self.copy = Some(Copy {
            link,
            path,
            size: request.file_size,
            overwrite,
            received: 0,
            pending: Vec::new(),
            started: now,
            last: now,
        });
        Ok(())
    }

    /// The copy `link` has in progress, or the refusal of a message that needs one.
    fn copy_of(&mut self, link: LinkId, what: Operation) -> Result<&mut Copy, Refusal> {
        match &mut self.copy {
            Some(copy) if copy.link == link => Ok(copy),
            _ => Err(Refusal::new(
                Status::FAIL,
                format!("{} with no copy in progress on this link", what.name()),
            )),
        }
    }

    fn write(&mut self, link: LinkId, body: &[u8], now: Instant) -> Result<(), Refusal> {
        let data = fcopy::parse_data(body).map_err(Refusal::invalid)?;
        let copy = self.copy_of(link, Operation::WRITE_TO_FILE)?;
        copy.last = now;
        if data.offset != copy.received {
            let what = if data.offset > copy.received {
                "a gap"
            } else {
                "an overlap"
            };
            let why = format!(
                "{what} in {}: a write at offset {} where {} was next",
                copy.path, data.offset, copy.received
            );
            return Err(Refusal::invalid(why));
        }
        let end = copy.received + data.data.len() as u64;
        if end > copy.size {
            let why = format!(
                "a write past the {} bytes START announced for {} (to {end})",
                copy.size, copy.path
            );
            return Err(Refusal::invalid(why));
        }
        copy.received = end;
        copy.pending.extend_from_slice(data.data);
        if copy.pending.len() >= FLUSH_SLICE {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the gathered data.
    fn flush(&mut self) -> Result<(), Refusal> {
        let Some(copy) = &mut self.copy else {
            return Ok(());
        };
        if copy.pending.is_empty() {
            return Ok(());
        }
        let at = copy.received - copy.pending.len() as u64;
        let written = self.sink.write_at(at, &copy.pending);
        copy.pending.clear();
        written.map_err(|error| {
            Refusal::new(
                error.status(),
                format!("writing {} failed: {}", copy.path, error.why()),
            )
        })
    }

    /// COMPLETE: the file put in place now (Ok(true)), or by the edge later (Ok(false): the answer waits).
    fn complete(
        &mut self,
        link: LinkId,
        request: &MessageRef<'_>,
        now: Instant,
    ) -> Result<bool, Refusal> {
        let copy = self.copy_of(link, Operation::COMPLETE_FCOPY)?;
        if copy.received != copy.size {
            let why = format!(
                "COMPLETE after {} of the {} bytes START announced for {}",
                copy.received, copy.size, copy.path
            );
            return Err(Refusal::invalid(why));
        }
        let overwrite = copy.overwrite;
        self.flush()?;
        // The copy stays in progress until the commit is under way, so a failed one is ended like any
        // other refusal.
        let commit = self.sink.commit(overwrite).map_err(|error| {
            let path = self.copy.as_ref().map_or("", |copy| copy.path.as_str());
            let why = format!("could not put {path} in place: {}", error.why());
            Refusal::new(error.status(), why)
        })?;
        let Some(copy) = self.copy.take() else {
            return Ok(true);
        };
        match commit {
            Commit::Done => {
                self.copied(copy, now);
                Ok(true)
            }
            Commit::Later => {
                // The answer is the request's own bytes, as every answer of this service.
                let answer = request
                    .header
                    .flags
                    .expects_answer()
                    .then(|| request.reply(Status::OK, request.body.to_vec()));
                self.committing = Some(Committing { link, copy, answer });
                Ok(false)
            }
        }
    }

    /// A copy is in place.
    fn copied(&mut self, copy: Copy, now: Instant) {
        let took = now.saturating_duration_since(copy.started).as_secs_f64();
        info!(
            "filecopy: copied {} bytes to {} in {took:.2} s ({:.1} MiB/s)",
            copy.size,
            copy.path,
            copy.size as f64 / (1 << 20) as f64 / took.max(1e-6)
        );
        self.copies += 1;
        self.last = Some((now, format!("{} ({} bytes)", copy.path, copy.size)));
    }

    /// The commit under way ended with `outcome`: its COMPLETE is answered at the next timer.
    fn committed(&mut self, outcome: Result<(), SinkError>, now: Instant) {
        let Some(Committing {
            link,
            copy,
            mut answer,
        }) = self.committing.take()
        else {
            return;
        };
        let status = match outcome {
            Ok(()) => {
                self.copied(copy, now);
                Status::OK
            }
            Err(error) => {
                warn!(
                    "filecopy: could not put {} in place: {}; nothing was left behind",
                    copy.path,
                    error.why()
                );
                self.last = Some((now, format!("{} not put in place", copy.path)));
                error.status()
            }
        };
        if let Some(mut answer) = answer.take() {
            answer.header.status = status;
            self.ready.push((link, answer));
            self.ready_at = Some(now);
        }
    }

    /// Ends the copy in progress without putting the file in place.
    fn end(&mut self, ending: Ending, now: Instant) {
        let Some(copy) = self.copy.take() else {
            return;
        };
        self.sink.abort();
        let line = format!(
            "filecopy: abandoned {} after {} of {} bytes ({}); nothing was left behind",
            copy.path,
            copy.received,
            copy.size,
            ending.describe()
        );
        match ending {
            Ending::Cancel => info!("{line}"),
            _ => warn!("{line}"),
        }
        self.last = Some((
            now,
            format!("{} abandoned ({})", copy.path, ending.describe()),
        ));
    }
}

impl Logic for FileCopyLogic {
    fn request(
        &mut self,
        link: LinkId,
        request: &MessageRef<'_>,
        _version: IcVersion,
        now: Instant,
        reply: &mut ReplyWriter<'_>,
    ) -> Result<Status, Refusal> {
        let body = request.body;
        let operation = fcopy::operation(body).map_err(Refusal::invalid)?;
        let done = match operation {
            Operation::START_FILE_COPY => Start::parse(body)
                .map_err(Refusal::invalid)
                .and_then(|start| self.start(link, &start, now)),
            Operation::WRITE_TO_FILE => self.write(link, body, now),
            Operation::COMPLETE_FCOPY => match self.complete(link, request, now) {
                Ok(true) => Ok(()),
                Ok(false) => {
                    reply.defer();
                    return Ok(Status::OK);
                }
                Err(refusal) => Err(refusal),
            },
            Operation::CANCEL_FCOPY => {
                if self.copy.as_ref().is_some_and(|copy| copy.link == link) {
                    self.end(Ending::Cancel, now);
                }
                Ok(())
            }
            other => Err(Refusal::new(
                Status::FAIL,
                format!("unknown file-copy operation {}", other.0),
            )),
        };
        if let Err(refusal) = &done {
            // Each refusal names its path here, whatever the channel's log of repeats keeps quiet.
            warn!("filecopy: {}", refusal.why);
            // A refused message ends this link's copy: the host cannot make a whole file of it any more.
            if self.copy.as_ref().is_some_and(|copy| copy.link == link) {
                self.end(Ending::Failure, now);
            }
        }
        done?;
        reply.extend_from_slice(body);
        Ok(Status::OK)
    }

    fn closed(&mut self, link: LinkId) {
        if self.copy.as_ref().is_some_and(|copy| copy.link == link) {
            self.end(Ending::LinkClosed, Instant::now());
        }
        // A file whose every byte arrived is still put in place; only its answer has nowhere to go.
        if let Some(committing) = self.committing.as_mut().filter(|c| c.link == link) {
            committing.answer = None;
        }
        self.ready.retain(|(to, _)| *to != link);
    }

    fn deadline(&self) -> Option<Instant> {
        if let Some(at) = self.ready_at.filter(|_| !self.ready.is_empty()) {
            return Some(at);
        }
        let copy = self.copy.as_ref()?;
        let idle = copy.last + self.settings.copy_timeout;
        if copy.pending.is_empty() {
            Some(idle)
        } else {
            Some(idle.min(copy.last + FLUSH_DELAY))
        }
    }

    fn watched(&self) -> Option<Watch> {
        self.committing.as_ref().and_then(|_| self.sink.watched())
    }

    fn watch_ready(&mut self, now: Instant) {
        if self.committing.is_some() {
            if let Some(outcome) = self.sink.finished() {
                self.committed(outcome, now);
            }
        }
    }

    fn finishing(&mut self, now: Instant, out: &mut Vec<(LinkId, Message)>) {
        if self.committing.is_some() {
            if let Some(outcome) = self.sink.wait() {
                self.committed(outcome, now);
            }
        }
        out.append(&mut self.ready);
    }

    fn on_timer(&mut self, now: Instant, out: &mut Vec<(LinkId, Message)>) {
        out.append(&mut self.ready);
        self.ready_at = None;
        let Some(copy) = &self.copy else {
            return;
        };
        if now >= copy.last + self.settings.copy_timeout {
            self.end(Ending::Timeout, now);
        } else if now >= copy.last + FLUSH_DELAY {
            if let Err(refusal) = self.flush() {
                // The host hears of it at its next message, which finds no copy.
                warn!("filecopy: {}", refusal.why);
                self.end(Ending::Failure, now);
            }
        }
    }

    fn status(&self, now: Instant) -> Vec<StatusLine> {
        let state = match &self.copy {
            None if self.committing.is_some() => {
                let path = self
                    .committing
                    .as_ref()
                    .map_or("", |c| c.copy.path.as_str());
                format!("putting {path} in place (syncing it)")
            }
            None => "idle".to_string(),
            Some(copy) => {
                let took = now.saturating_duration_since(copy.started).as_secs_f64();
                format!(
                    "copying {}: {} of {} bytes in {took:.1} s ({:.1} MiB/s)",
                    copy.path,
                    copy.received,
                    copy.size,
                    copy.received as f64 / (1 << 20) as f64 / took.max(1e-3)
                )
            }
        };
        let mut lines = vec![("filecopy", state), ("copies", self.copies.to_string())];
        if let Some((at, what)) = &self.last {
            lines.push((
                "last copy",
                format!(
                    "{what}, {:.1} s ago",
                    now.saturating_duration_since(*at).as_secs_f64()
                ),
            ));
        }
        lines
    }
}

impl Drop for FileCopyLogic {
    /// A stopping or reloading agent leaves no temporary file behind.
    fn drop(&mut self) {
        self.end(Ending::Stopping, Instant::now());
    }
}

#[cfg(test)]
mod tests;
