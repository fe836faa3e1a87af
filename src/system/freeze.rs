//! The backup service's filesystems: which mounts may be frozen (from PID 1's /proc/1/mounts, chosen as Linux's
//! `tools/hv/hv_vss_daemon.c` chooses them), and FIFREEZE/FITHAW on them (ioctl_fsfreeze(2)).
//!
//! Both ioctls need CAP_SYS_ADMIN; the agent under systemd has none, so a freeze there fails with EPERM and
//! the error says what to grant. Tests never freeze: they check the parsing and the errno mapping alone.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use hvproto::service::backup::Freezer;
use nix::errno::Errno;

/// `_IOWR('X', 119, int)` (include/uapi/linux/fs.h).
const FIFREEZE: u32 = 0xc004_5877;
/// `_IOWR('X', 120, int)`.
const FITHAW: u32 = 0xc004_5878;

/// Filesystem types that cannot freeze or that hold nothing a backup wants (Linux's daemon skips them).
const SKIPPED_TYPES: [&str; 2] = ["vfat", "iso9660"];

/// The mounts of `/proc/mounts` text that can be frozen, in mount order: on a `/dev/` device that is not
/// a loop device, not read-only, not vfat or iso9660; each mount point once.
pub fn candidates_from(mounts: &str) -> Vec<String> {
    let mut chosen: Vec<String> = Vec::new();
    for line in mounts.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(device), Some(point), Some(fstype), Some(options)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let device = unescape(device);
        let read_only = options.split(',').any(|option| option == "ro");
        if !device.starts_with("/dev/")
            || device.starts_with("/dev/loop")
            || read_only
            || SKIPPED_TYPES.contains(&fstype)
        {
            continue;
        }
        let point = unescape(point);
        if !chosen.contains(&point) {
            chosen.push(point);
        }
    }
    chosen
}

/// A field of /proc/mounts with its octal escapes (`\040` for a space, `\011`, `\012`, `\134`) undone.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|digits| {
            bytes[i] == b'\\' && digits.iter().all(|digit| (b'0'..=b'7').contains(digit))
        });
        match octal {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |value, digit| value * 8 + u32::from(digit - b'0'));
                // Three octal digits above \377 do not fit a byte; keep such text as it was.
                match u8::try_from(value) {
                    Ok(byte) => out.push(byte),
                    Err(_) => out.extend_from_slice(&bytes[i..i + 4]),
                }
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What FIFREEZE's result means: EBUSY is a mount frozen already, which counts as done.
fn freeze_result(result: Result<(), Errno>, hint: &str) -> Result<(), String> {
    match result {
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(errno) => Err(describe(errno, hint)),
    }
}

/// What FITHAW's result means: EINVAL is a mount that was not frozen.
fn thaw_result(result: Result<(), Errno>, hint: &str) -> Result<bool, String> {
    match result {
        Ok(()) => Ok(true),
        Err(Errno::EINVAL) => Ok(false),
        Err(errno) => Err(describe(errno, hint)),
    }
}

/// An ioctl's error as a sentence; EPERM says what the process lacks, and `hint` how to get it.
fn describe(errno: Errno, hint: &str) -> String {
    match errno {
        Errno::EPERM => format!(
            "{} ({errno:?}): freezing and thawing need CAP_SYS_ADMIN, which this process lacks; {hint}",
            errno.desc()
        ),
        Errno::EOPNOTSUPP => format!("the filesystem cannot freeze ({errno:?})"),
        _ => format!("{} ({errno:?})", errno.desc()),
    }
}

/// How the agent gets CAP_SYS_ADMIN.
pub const AGENT_HINT: &str =
    "run the agent as root with CAP_SYS_ADMIN (under systemd: the drop-in backup-freeze.conf in the \
     package's examples; a privilege-separated freeze helper is future work)";
/// How `hvagent thaw` gets it.
pub const COMMAND_HINT: &str = "run hvagent thaw as root";

/// Opens `mount` read-only and applies the ioctl `request` to it.
fn fs_ioctl(mount: &str, request: u32) -> Result<(), Errno> {
    let file = File::open(mount)
        .map_err(|error| Errno::from_raw(error.raw_os_error().unwrap_or(libc::EIO)))?;
    // SAFETY: FIFREEZE and FITHAW take no argument (the kernel ignores it), and the descriptor is open for
    // the whole call.
    let result = unsafe { libc::ioctl(file.as_raw_fd(), request as _, 0) };
    Errno::result(result).map(drop)
}

/// The real filesystems.
pub struct SystemFreezer {
    mounts: PathBuf,
    /// How to get the privilege, for an EPERM's error.
    hint: &'static str,
}

impl SystemFreezer {
    /// The mounts of /proc/self/mounts; `hint` says how to get CAP_SYS_ADMIN ([`AGENT_HINT`],
    /// [`COMMAND_HINT`]).
    ///
    /// The mounts are PID 1's (/proc/1/mounts), the system's own: the unit's ProtectSystem=strict shows the
    /// agent every mount read-only in its private namespace, which would leave no candidate, while the
    /// mount points are the same paths to the same filesystems. Where PID 1's cannot be read, its own.
    pub fn new(hint: &'static str) -> SystemFreezer {
        let system = Path::new("/proc/1/mounts");
        let mounts = match std::fs::File::open(system) {
            Ok(_) => system,
            Err(_) => Path::new("/proc/self/mounts"),
        };
        SystemFreezer::reading(mounts, hint)
    }

    /// A freezer choosing its candidates from another mounts file.
    pub fn reading(mounts: &Path, hint: &'static str) -> SystemFreezer {
        SystemFreezer {
            mounts: mounts.to_path_buf(),
            hint,
        }
    }
}

impl Freezer for SystemFreezer {
    fn candidates(&mut self) -> Result<Vec<String>, String> {
        let text = std::fs::read_to_string(&self.mounts)
            .map_err(|error| format!("cannot read {}: {error}", self.mounts.display()))?;
        Ok(candidates_from(&text))
    }

    fn sync(&mut self) {
        nix::unistd::sync();
    }

    fn freeze(&mut self, mount: &str) -> Result<(), String> {
        freeze_result(fs_ioctl(mount, FIFREEZE), self.hint)
    }

    fn thaw(&mut self, mount: &str) -> Result<bool, String> {
        thaw_result(fs_ioctl(mount, FITHAW), self.hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
/dev/sda1 / ext4 rw,relatime 0 0
tmpfs /run tmpfs rw,nosuid,nodev,size=815484k,mode=755 0 0
/dev/sda15 /boot/efi vfat rw,relatime,fmask=0077 0 0
/dev/sdb1 /srv/my\\040data xfs rw,relatime,attr2 0 0
/dev/sr0 /media/cdrom iso9660 ro,relatime 0 0
/dev/sdc1 /mnt/archive ext4 ro,relatime 0 0
/dev/loop3 /snap/core/1234 squashfs ro,nodev,relatime 0 0
/dev/loop4 /mnt/image ext4 rw,relatime 0 0
/dev/mapper/vg-home /home ext4 rw,relatime,errors=remount-ro 0 0
/dev/sda1 / ext4 rw,relatime 0 0
broken line
";

    #[test]
    fn candidates_are_local_writable_freezable_mounts_in_mount_order() {
        assert_eq!(
            candidates_from(SAMPLE),
            ["/", "/srv/my data", "/home"],
            "errors=remount-ro is not ro; a mount point seen twice is listed once"
        );
        assert!(candidates_from("").is_empty());
    }

    #[test]
    fn octal_escapes_in_mount_points_are_undone() {
        assert_eq!(unescape("/a\\040b\\011c\\012d\\134e"), "/a b\tc\nd\\e");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/short\\04"), "/short\\04");
        assert_eq!(unescape("/not\\0a9"), "/not\\0a9");
        assert_eq!(unescape("/big\\777"), "/big\\777");
    }

    #[test]
    fn a_busy_freeze_is_frozen_already_and_an_invalid_thaw_was_not_frozen() {
        assert_eq!(freeze_result(Ok(()), ""), Ok(()));
        assert_eq!(freeze_result(Err(Errno::EBUSY), ""), Ok(()));
        assert_eq!(thaw_result(Ok(()), ""), Ok(true));
        assert_eq!(thaw_result(Err(Errno::EINVAL), ""), Ok(false));
    }

    #[test]
    fn a_refused_freeze_says_which_capability_it_needs() {
        let why = freeze_result(Err(Errno::EPERM), AGENT_HINT).unwrap_err();
        assert!(
            why.contains("EPERM") && why.contains("CAP_SYS_ADMIN"),
            "{why}"
        );
        assert!(why.contains("the package's examples"), "{why}");
        let why = thaw_result(Err(Errno::EPERM), COMMAND_HINT).unwrap_err();
        assert!(
            why.contains("CAP_SYS_ADMIN") && why.ends_with("run hvagent thaw as root"),
            "{why}"
        );
        let why = freeze_result(Err(Errno::EOPNOTSUPP), AGENT_HINT).unwrap_err();
        assert!(
            why.contains("cannot freeze") && !why.contains("CAP_SYS_ADMIN"),
            "{why}"
        );
    }

    #[test]
    fn candidates_come_from_the_mounts_file_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mounts");
        std::fs::write(&path, SAMPLE).unwrap();
        let mut freezer = SystemFreezer::reading(&path, AGENT_HINT);
        assert_eq!(freezer.candidates().unwrap().len(), 3);
        let mut missing = SystemFreezer::reading(&dir.path().join("none"), AGENT_HINT);
        assert!(missing.candidates().unwrap_err().contains("cannot read"));
    }
}
