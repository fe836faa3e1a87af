//! The file-copy service's [`CopySink`]: the target's directory opened beneath its allowed directory one
//! component at a time with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (on kernels before 5.6,
//! which answer ENOSYS, `openat` with `O_NOFOLLOW`), so neither a symlink nor a rename that swaps one in
//! can lead a write outside; a temporary file in that directory, unnamed (`O_TMPFILE`, so that an agent
//! killed mid-copy leaves nothing) or hidden where the filesystem cannot; and at COMPLETE fsync, a link or
//! rename into place that refuses to replace a file unless asked (`linkat`, `renameat2(RENAME_NOREPLACE)`),
//! and an fsync of the directory.
//!
//! Writes start their writeback at once (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does not wait),
//! so the fsync at COMPLETE has little left to do; that fsync, the link or rename, the directory's fsync
//! and the close that frees a replaced or abandoned file's blocks run on a thread of the sink's own
//! ([`Worker`]), and COMPLETE is answered once it has put the file in place, so the loop serves heartbeats
//! meanwhile.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;

use log::{debug, warn};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{fstatat, FileStat, Mode, SFlag};

use hvproto::service::filecopy::{Commit, CopySink, SinkError, Target};
use hvproto::service::Watch;

/// Where temporary files start their names: hidden, and recognisably the agent's.
pub const TEMP_PREFIX: &str = ".hvagent-copy.";

/// The copy in progress: its directory, temporary file and final name.
struct Open {
    dir: File,
    temp: File,
    /// The temporary file's name: None for an unnamed one (O_TMPFILE), which nothing can see and which
    /// vanishes with the agent however it ends, SIGKILL included.
    temp_name: Option<CString>,
    name: CString,
    path: String,
}

/// The agent's sink: one copy at a time.
pub struct SystemSink {
    open: Option<Open>,
    /// Whether to try an unnamed temporary file first (tests turn it off to cover the named one).
    unnamed: bool,
    /// The thread that puts copies in place, started at the first need; None also when it could not be
    /// (then that work is done in the loop).
    worker: Option<Worker>,
    worker_failed: bool,
    /// A commit is under way on the worker.
    committing: bool,
}

impl Default for SystemSink {
    fn default() -> SystemSink {
        SystemSink {
            open: None,
            unnamed: true,
            worker: None,
            worker_failed: false,
            committing: false,
        }
    }
}

impl SystemSink {
    pub fn new() -> SystemSink {
        SystemSink::default()
    }

    /// The worker thread, started if need be.
    fn worker(&mut self) -> Option<&Worker> {
        if self.worker.is_none() && !self.worker_failed {
            match Worker::start() {
                Ok(worker) => self.worker = Some(worker),
                Err(why) => {
                    warn!("filecopy: no thread of its own ({why}): copies are synced and renamed in the loop");
                    self.worker_failed = true;
                }
            }
        }
        self.worker.as_ref()
    }

    /// A sink that always names its temporary files, as it does where O_TMPFILE or /proc is missing.
    pub fn named_temp_files() -> SystemSink {
        let mut sink = SystemSink::default();
        sink.unnamed = false;
        sink
    }
}

/// `struct open_how` of openat2(2), laid out as linux/openat2.h has it (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_BENEATH: u64 = 0x08;

/// Whether openat2 is known to be missing (ENOSYS once): then every open takes the fallback.
static NO_OPENAT2: AtomicU64 = AtomicU64::new(0);

/// openat2(dir, name, flags, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS); Err(ENOSYS) on kernels before 5.6.
fn openat2(dir: &File, name: &CString, flags: OFlag) -> Result<OwnedFd, Errno> {
    let how = OpenHow {
        flags: flags.bits() as u64,
        mode: 0,
        resolve: RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS,
    };
    // SAFETY: `name` is a NUL-terminated string and `how` an open_how of the size passed, both alive for
    // the call; the kernel writes nothing back into either.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a descriptor the kernel just returned, owned by nothing else. It fits an i32: fds do.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Opens the directory `name` in `dir`, never through a symlink: openat2 where the kernel has it,
/// `O_NOFOLLOW` (enough for one component, which is all `name` ever is) where it does not.
fn open_dir_beneath(dir: &File, name: &CString) -> Result<File, Errno> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    if NO_OPENAT2.load(Ordering::Relaxed) == 0 {
        match openat2(dir, name, flags) {
            Err(Errno::ENOSYS) => {
                NO_OPENAT2.store(1, Ordering::Relaxed);
                debug!(
                    "filecopy: openat2 is not there (kernel before 5.6): opening with O_NOFOLLOW"
                );
            }
            other => return other.map(File::from),
        }
    }
    let fd = nix::fcntl::openat(Some(dir.as_raw_fd()), name.as_c_str(), flags, Mode::empty())?;
    // SAFETY: a descriptor openat just returned, owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// A name as a C string; a NUL cannot be in one (hvproto refuses them), so the error is unreachable
/// in practice and reported as a failure rather than a panic.
fn c_name(name: &str) -> Result<CString, SinkError> {
    CString::new(name).map_err(|_| SinkError::Failed(format!("{name:?} holds a NUL")))
}

/// What `name` in `dir` is, without following it: None when it does not exist.
fn kind_of(dir: &File, name: &CString) -> Result<Option<FileStat>, Errno> {
    match fstatat(
        Some(dir.as_raw_fd()),
        name.as_c_str(),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(stat) => Ok(Some(stat)),
        Err(Errno::ENOENT) => Ok(None),
        Err(error) => Err(error),
    }
}

fn file_type(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits())
}

/// A failure of a call on `path` as a sink error: ENOSPC and EDQUOT are a full disk, ELOOP a symlink
/// (openat2's answer to one), ENOTDIR a file where a directory was needed.
fn failed(path: &str, what: &str, errno: Errno) -> SinkError {
    let why = format!("{what} {path}: {}", errno.desc());
    match errno {
        Errno::ENOSPC | Errno::EDQUOT => SinkError::NoSpace(why),
        Errno::ELOOP => SinkError::Symlink(format!("{path} is or runs through a symbolic link")),
        Errno::ENOTDIR => SinkError::NotPlain(format!("{path} is not a directory")),
        _ => SinkError::Failed(why),
    }
}

/// Opens (and with `create` makes) each directory of `target` beneath its base; refuses a symlink or
/// anything but a directory on the way.
fn open_target_dir(target: &Target) -> Result<(File, String), SinkError> {
    let base = &target.base;
    let mut dir = File::open(base).map_err(|error| {
        SinkError::Failed(format!("cannot open the allowed directory {base}: {error}"))
    })?;
    let mut path = base.trim_end_matches('/').to_string();
    for part in &target.dirs {
        path.push('/');
        path.push_str(part);
        let name = c_name(part)?;
        match kind_of(&dir, &name).map_err(|errno| failed(&path, "cannot look at", errno))? {
            None if target.create_path => {
                match nix::sys::stat::mkdirat(
                    Some(dir.as_raw_fd()),
                    name.as_c_str(),
                    Mode::from_bits_truncate(0o755),
                ) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(errno) => return Err(failed(&path, "cannot make", errno)),
                }
            }
            None => {
                return Err(SinkError::Missing(format!(
                    "{path} does not exist (the host did not ask to create the path)"
                )))
            }
            Some(stat) => check_dir(&path, &stat)?,
        }
        dir = open_dir_beneath(&dir, &name).map_err(|errno| failed(&path, "cannot open", errno))?;
    }
    Ok((dir, path))
}

fn check_dir(path: &str, stat: &FileStat) -> Result<(), SinkError> {
    match file_type(stat) {
        SFlag::S_IFDIR => Ok(()),
        SFlag::S_IFLNK => Err(SinkError::Symlink(format!("{path} is a symbolic link"))),
        _ => Err(SinkError::NotPlain(format!("{path} is not a directory"))),
    }
}

/// Whether the target may be written: it is missing, or a regular file that `overwrite` allows replacing.
fn check_file(dir: &File, name: &CString, path: &str, overwrite: bool) -> Result<(), SinkError> {
    let Some(stat) = kind_of(dir, name).map_err(|errno| failed(path, "cannot look at", errno))?
    else {
        return Ok(());
    };
    match file_type(&stat) {
        SFlag::S_IFLNK => Err(SinkError::Symlink(format!("{path} is a symbolic link"))),
        SFlag::S_IFREG if overwrite => Ok(()),
        SFlag::S_IFREG => Err(SinkError::Exists(format!(
            "{path} exists (the host did not ask to overwrite it)"
        ))),
        SFlag::S_IFDIR => Err(SinkError::NotPlain(format!("{path} is a directory"))),
        _ => Err(SinkError::NotPlain(format!(
            "{path} is a device, FIFO or socket"
        ))),
    }
}

/// Refuses a copy the filesystem has no room for.
fn check_space(dir: &File, path: &str, size: u64) -> Result<(), SinkError> {
    let stat = nix::sys::statvfs::fstatvfs(dir.as_fd())
        .map_err(|errno| failed(path, "cannot read the free space of", errno))?;
    let free = (stat.blocks_available() as u64).saturating_mul(stat.fragment_size() as u64);
    if size > free {
        return Err(SinkError::NoSpace(format!(
            "{path} needs {size} bytes and its filesystem has {free} free"
        )));
    }
    Ok(())
}

/// A temporary name no other copy uses: the target's name, the agent's pid and a counter.
fn temp_name(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let number = NEXT.fetch_add(1, Ordering::Relaxed);
    let short: String = name.chars().take(64).collect();
    format!("{TEMP_PREFIX}{short}.{}.{number}", std::process::id())
}

/// Creates the temporary file with `mode` (fchmod: the umask does not narrow it).
fn create_temp(dir: &File, name: &CString, path: &str, mode: u32) -> Result<File, SinkError> {
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mode = Mode::from_bits_truncate(mode);
    let fd = nix::fcntl::openat(Some(dir.as_raw_fd()), name.as_c_str(), flags, mode)
        .map_err(|errno| failed(path, "cannot create a temporary file for", errno))?;
    // SAFETY: a descriptor openat just returned, owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    nix::sys::stat::fchmod(file.as_raw_fd(), mode)
        .map_err(|errno| failed(path, "cannot set the mode of", errno))?;
    Ok(file)
}

/// An unnamed temporary file in `dir` (O_TMPFILE) with `mode`, or None where the filesystem cannot make one
/// (EOPNOTSUPP, or EISDIR and EINVAL from kernels and filesystems before it) or /proc, through which it is
/// given its name at COMPLETE, is not mounted.
fn create_unnamed(dir: &File, path: &str, mode: u32) -> Result<Option<File>, SinkError> {
    if !Path::new("/proc/self/fd").is_dir() {
        return Ok(None);
    }
    let mode = Mode::from_bits_truncate(mode);
    let flags = OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
    match nix::fcntl::openat(Some(dir.as_raw_fd()), c".", flags, mode) {
        Ok(fd) => {
            // SAFETY: a descriptor openat just returned, owned by nothing else.
            let file = unsafe { File::from_raw_fd(fd) };
            nix::sys::stat::fchmod(file.as_raw_fd(), mode)
                .map_err(|errno| failed(path, "cannot set the mode of", errno))?;
            Ok(Some(file))
        }
        Err(Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL) => {
            debug!("filecopy: no unnamed temporary files beside {path}: naming them");
            Ok(None)
        }
        Err(errno) => Err(failed(path, "cannot create a temporary file for", errno)),
    }
}

/// Gives the unnamed file `temp` the name `name` in `dir` (linkat through /proc/self/fd, which needs no
/// privilege for a file made with O_TMPFILE); EEXIST when the name is taken: it never replaces.
fn link_unnamed(temp: &File, dir: &File, name: &CString) -> Result<(), Errno> {
    let source = CString::new(format!("/proc/self/fd/{}", temp.as_raw_fd()))
        .expect("a path of digits has no NUL");
    nix::unistd::linkat(
        None,
        source.as_c_str(),
        Some(dir.as_raw_fd()),
        name.as_c_str(),
        nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
    )
}

/// renameat within `dir`, replacing what `to` names.
fn rename_over(dir: &File, from: &CString, to: &CString) -> Result<(), Errno> {
    nix::fcntl::renameat(
        Some(dir.as_raw_fd()),
        from.as_c_str(),
        Some(dir.as_raw_fd()),
        to.as_c_str(),
    )
}

/// A file name back as text, for a temporary name made from it.
fn self_name(name: &CString) -> String {
    OsStr::from_bytes(name.as_bytes())
        .to_string_lossy()
        .into_owned()
}

/// renameat2(RENAME_NOREPLACE) within `dir`; where the filesystem lacks it (EINVAL), link and unlink,
/// which refuse to replace too.
fn rename_noreplace(dir: &File, from: &CString, to: &CString) -> Result<(), Errno> {
    // SAFETY: both names are NUL-terminated strings alive for the call; the descriptors are open.
    let result = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            dir.as_raw_fd(),
            from.as_ptr(),
            dir.as_raw_fd(),
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    match result {
        0 => Ok(()),
        _ => match Errno::last() {
            Errno::EINVAL | Errno::ENOSYS => {
                let raw = Some(dir.as_raw_fd());
                nix::unistd::linkat(
                    raw,
                    from.as_c_str(),
                    raw,
                    to.as_c_str(),
                    nix::fcntl::AtFlags::empty(),
                )?;
                let _ = nix::unistd::unlinkat(
                    raw,
                    from.as_c_str(),
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                );
                Ok(())
            }
            errno => Err(errno),
        },
    }
}

impl CopySink for SystemSink {
    fn begin(&mut self, target: &Target, overwrite: bool) -> Result<(), SinkError> {
        self.abort();
        let (dir, dir_path) = open_target_dir(target)?;
        let path = format!("{dir_path}/{}", target.name);
        let name = c_name(&target.name)?;
        check_file(&dir, &name, &path, overwrite)?;
        check_space(&dir, &path, target.size)?;
        let unnamed = match self.unnamed {
            true => create_unnamed(&dir, &path, target.mode)?,
            false => None,
        };
        let (temp, temp_name) = match unnamed {
            Some(temp) => (temp, None),
            None => {
                let temp_name = c_name(&temp_name(&target.name))?;
                let temp = create_temp(&dir, &temp_name, &path, target.mode)?;
                (temp, Some(temp_name))
            }
        };
        self.open = Some(Open {
            dir,
            temp,
            temp_name,
            name,
            path,
        });
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), SinkError> {
        let Some(open) = &self.open else {
            return Err(SinkError::Failed("no temporary file is open".to_string()));
        };
        open.temp.write_all_at(data, offset).map_err(|error| {
            let errno = Errno::from_raw(error.raw_os_error().unwrap_or(libc::EIO));
            failed(&open.path, "cannot write", errno)
        })?;
        // Start the writeback now without waiting for it; a filesystem that cannot (EINVAL, ESPIPE)
        // simply leaves it for the fsync.
        // SAFETY: an open descriptor and plain integers.
        let _ = unsafe {
            libc::sync_file_range(
                open.temp.as_raw_fd(),
                offset as libc::off64_t,
                data.len() as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        Ok(())
    }

    fn commit(&mut self, overwrite: bool) -> Result<Commit, SinkError> {
        let Some(open) = self.open.take() else {
            return Err(SinkError::Failed("no temporary file is open".to_string()));
        };
        let open = match self.worker() {
            Some(worker) => match worker.send(Job::Commit(open, overwrite)) {
                Ok(()) => {
                    self.committing = true;
                    return Ok(Commit::Later);
                }
                Err(unsent) => unsent,
            },
            None => open,
        };
        put_in_place(open, overwrite).map(|()| Commit::Done)
    }

    fn watched(&self) -> Option<Watch> {
        let worker = self.worker.as_ref().filter(|_| self.committing)?;
        Some(Watch(i64::from(worker.wake.as_raw_fd())))
    }

    fn finished(&mut self) -> Option<Result<(), SinkError>> {
        let worker = self.worker.as_ref().filter(|_| self.committing)?;
        let mut drained = [0u8; 16];
        while matches!(nix::unistd::read(worker.wake.as_raw_fd(), &mut drained), Ok(n) if n > 0) {}
        let outcome = match worker.outcomes.try_recv() {
            Ok(outcome) => outcome,
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => Err(worker_gone()),
        };
        self.committing = false;
        Some(outcome)
    }

    fn wait(&mut self) -> Option<Result<(), SinkError>> {
        let worker = self.worker.as_ref().filter(|_| self.committing)?;
        let outcome = worker
            .outcomes
            .recv()
            .unwrap_or_else(|_| Err(worker_gone()));
        self.committing = false;
        Some(outcome)
    }

    fn abort(&mut self) {
        let Some(open) = self.open.take() else {
            return;
        };
        remove_temp(&open);
        // A large file's blocks are freed at its last close, which would hold the loop.
        if let Some(worker) = self.worker() {
            let _ = worker.send(Job::Close(open.temp));
        }
    }
}

impl Drop for SystemSink {
    /// A commit under way is finished before the agent goes on stopping.
    fn drop(&mut self) {
        if let Some(mut worker) = self.worker.take() {
            worker.jobs = None;
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// What the worker thread does.
enum Job {
    /// Put a whole copy in place (`overwrite` as the host asked).
    Commit(Open, bool),
    /// Close a file whose last close frees its blocks.
    Close(File),
}

/// The file-copy edge's thread: it syncs and renames each finished copy and closes what is freed, the calls
/// that take milliseconds (tens of them on a busy disk, or for the blocks of a large file a rename
/// replaces), so that the loop goes on serving heartbeats meanwhile. A commit's end is a byte on `wake`,
/// the pipe the loop watches, and its outcome on `outcomes`.
struct Worker {
    jobs: Option<Sender<Job>>,
    outcomes: Receiver<Result<(), SinkError>>,
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn start() -> Result<Worker, String> {
        let (wake, wake_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .map_err(|errno| format!("cannot make its pipe: {}", errno.desc()))?;
        let (jobs, queue) = channel::<Job>();
        let (ends, outcomes) = channel();
        let thread = std::thread::Builder::new()
            .name("hvagent-filecopy".to_string())
            .spawn(move || {
                for job in queue {
                    match job {
                        Job::Commit(open, overwrite) => {
                            let _ = ends.send(put_in_place(open, overwrite));
                            // A full pipe wakes the loop already.
                            let _ = nix::unistd::write(&wake_write, &[1]);
                        }
                        Job::Close(file) => drop(file),
                    }
                }
            })
            .map_err(|error| error.to_string())?;
        Ok(Worker {
            jobs: Some(jobs),
            outcomes,
            wake,
            thread: Some(thread),
        })
    }

    /// Hands `job` to the thread; when the thread is gone, gives back the copy a commit carried (a close's
    /// file is closed here instead).
    fn send(&self, job: Job) -> Result<(), Open> {
        let unsent = match &self.jobs {
            Some(jobs) => match jobs.send(job) {
                Ok(()) => return Ok(()),
                Err(unsent) => unsent.0,
            },
            None => job,
        };
        match unsent {
            Job::Commit(open, _) => Err(open),
            Job::Close(file) => {
                drop(file);
                Ok(())
            }
        }
    }
}

fn worker_gone() -> SinkError {
    SinkError::Failed("the file-copy thread ended before the copy was in place".to_string())
}

/// Removes a named temporary file (an unnamed one goes with its descriptor).
fn remove_temp(open: &Open) {
    let Some(temp_name) = &open.temp_name else {
        return;
    };
    if let Err(errno) = nix::unistd::unlinkat(
        Some(open.dir.as_raw_fd()),
        temp_name.as_c_str(),
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    ) {
        warn!(
            "filecopy: cannot remove the temporary file {} beside {}: {}",
            OsStr::from_bytes(temp_name.as_bytes()).to_string_lossy(),
            open.path,
            errno.desc()
        );
    }
}

/// Syncs the copy, gives it its name (replacing a file only when `overwrite`) and syncs the directory; a
/// copy that cannot be put in place is removed. Runs on the worker thread, or in the loop where there is
/// none.
fn put_in_place(open: Open, overwrite: bool) -> Result<(), SinkError> {
    let placed = link_or_rename(&open, overwrite);
    if placed.is_err() {
        remove_temp(&open);
        return placed.map(drop);
    }
    // The file is in place; an fsync of the directory that fails leaves it there but says so.
    if let Err(error) = open.dir.sync_all() {
        warn!(
            "filecopy: {} is in place, but syncing its directory failed: {error}",
            open.path
        );
    }
    // Dropped here, last: the replaced file's blocks are freed at this close.
    drop(placed);
    Ok(())
}

/// The fsync and the link or rename of [`put_in_place`]; Ok holds the file it replaced, if any.
fn link_or_rename(open: &Open, overwrite: bool) -> Result<Option<OwnedFd>, SinkError> {
    let path = &open.path;
    open.temp
        .sync_all()
        .map_err(|error| SinkError::Failed(format!("cannot sync the copy of {path}: {error}")))?;
    // The file this copy replaces, held (O_PATH opens nothing, not even a FIFO), so that its blocks are
    // freed at the close of this descriptor rather than inside the rename.
    let replaced = overwrite
        .then(|| {
            nix::fcntl::openat(
                Some(open.dir.as_raw_fd()),
                open.name.as_c_str(),
                OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .ok()
        })
        .flatten()
        // SAFETY: openat returned this descriptor, and nothing else owns it.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    let renamed = match (&open.temp_name, overwrite) {
        (Some(temp_name), true) => rename_over(&open.dir, temp_name, &open.name),
        (Some(temp_name), false) => rename_noreplace(&open.dir, temp_name, &open.name),
        (None, false) => link_unnamed(&open.temp, &open.dir, &open.name),
        // A link never replaces: the file gets a hidden name first, for the rename over the old one.
        (None, true) => {
            let temp_name = c_name(&temp_name(&self_name(&open.name)))?;
            link_unnamed(&open.temp, &open.dir, &temp_name).and_then(|()| {
                let renamed = rename_over(&open.dir, &temp_name, &open.name);
                if renamed.is_err() {
                    let _ = nix::unistd::unlinkat(
                        Some(open.dir.as_raw_fd()),
                        temp_name.as_c_str(),
                        nix::unistd::UnlinkatFlags::NoRemoveDir,
                    );
                }
                renamed
            })
        }
    };
    match renamed {
        Ok(()) => Ok(replaced),
        Err(Errno::EEXIST) => Err(SinkError::Exists(format!(
            "{path} appeared during the copy (the host did not ask to overwrite it)"
        ))),
        Err(errno) => Err(failed(path, "cannot rename the copy to", errno)),
    }
}

#[cfg(test)]
mod tests;
