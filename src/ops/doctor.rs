//! `hvagent doctor`: checks the machine and the configuration and explains each problem with its fix.
//!
//! Everything is read below a root directory (`/` normally): `/proc`, `/sys`, `/dev/vsock`, the default
//! config file, and for privilege (doctor/privilege.rs) `/etc/passwd`, the unit and the polkit files, so
//! tests drive the checks against a fake tree. The only sockets it opens are the probes of the configured
//! dialling services, and under a root other than `/` it never probes a vsock address: a fake tree says
//! nothing about this machine's vsock.

use std::fmt::Write as _;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::config::{self, Config, Endpoint, ServiceConfig};
use hvproto::guid::ServiceId;
use hvproto::service::ServiceKind;
use hvtransport::socket::{self, Dial};
use hvtransport::Address;

/// How long a probe waits for the host to answer (vsock gives up after 2 s by itself).
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// CAP_SYS_TIME's bit in the capability sets of /proc/PID/status.
const CAP_SYS_TIME: u32 = 25;
/// Process names (/proc/PID/comm, at most 15 bytes) of other programs that discipline the clock.
const TIME_DAEMONS: [&str; 6] = [
    "chronyd",
    "ntpd",
    "systemd-timesyn",
    "ntp-daemon",
    "openntpd",
    "timemaster",
];

/// How a finding weighs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Ok,
    /// Worth knowing; not a problem.
    Note,
    Problem,
}

/// One checked thing: what was found and, for a problem, how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub topic: String,
    pub text: String,
    pub fix: Option<String>,
}

fn finding(level: Level, topic: &str, text: impl Into<String>) -> Finding {
    Finding {
        level,
        topic: topic.to_string(),
        text: text.into(),
        fix: None,
    }
}

fn problem(topic: &str, text: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        fix: Some(fix.into()),
        ..finding(Level::Problem, topic, text)
    }
}

/// The checks, reading the system below `root`.
pub struct Doctor {
    root: PathBuf,
    config_path: Option<PathBuf>,
}

impl Doctor {
    /// `config_path` is `--config`; without it the default file below `root` is read when it exists.
    pub fn new(root: &Path, config_path: Option<&Path>) -> Doctor {
        Doctor {
            root: root.to_path_buf(),
            config_path: config_path.map(Path::to_path_buf),
        }
    }

    /// `path` (absolute) below the root.
    fn at(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    fn exists(&self, path: &str) -> bool {
        self.at(path).exists()
    }

    fn real_root(&self) -> bool {
        self.root == Path::new("/")
    }

    /// Runs every check.
    pub fn run(&self) -> Vec<Finding> {
        let (config, mut findings) = self.check_config();
        let vsock = self.check_vsock(&mut findings);
        findings.push(self.check_local_cid());
        for service in config.iter().flat_map(Config::enabled) {
            findings.push(self.check_service(service, vsock));
        }
        let timesync = config
            .as_ref()
            .is_some_and(|config| config.enabled().any(|s| s.kind() == ServiceKind::TimeSync));
        findings.push(self.check_cap_sys_time(timesync));
        findings.push(self.check_time_daemons(timesync));
        let shutdown = config
            .as_ref()
            .is_some_and(|config| config.enabled().any(|s| s.kind() == ServiceKind::Shutdown));
        findings.push(self.check_user());
        findings.push(self.check_capabilities());
        findings.push(self.check_polkit(shutdown));
        let backup = config
            .as_ref()
            .is_some_and(|config| config.enabled().any(|s| s.kind() == ServiceKind::Backup));
        findings.extend(self.check_cap_sys_admin(backup));
        let filecopy =
            config
                .iter()
                .flat_map(Config::enabled)
                .find_map(|service| match &service.settings {
                    config::ServiceSettings::FileCopy(settings) => {
                        Some(settings.allowed_dirs.clone())
                    }
                    _ => None,
                });
        findings.extend(self.check_allowed_dirs(&filecopy.unwrap_or_default()));
        let guestinfo = config
            .iter()
            .flat_map(Config::enabled)
            .find_map(|service| match &service.settings {
                crate::config::ServiceSettings::GuestInfo(settings) => Some(settings),
                _ => None,
            });
        if let Some(settings) = guestinfo {
            findings.push(self.check_kvp_daemon(&settings.pool_dir));
        }
        findings
    }

    /// hv_kvp_daemon on the same pool files is a problem; on other files, worth a note.
    fn check_kvp_daemon(&self, pool_dir: &Path) -> Finding {
        use crate::system::kvp_store;
        let daemon_dir = self.at(hvproto::service::guestinfo::HV_KVP_DAEMON_DIR);
        let pool_dir = self.at(&pool_dir.to_string_lossy());
        if let Some(why) = kvp_store::daemon_conflict(&self.at("/proc"), &daemon_dir, &pool_dir) {
            let (text, fix) = why.split_once("; ").unwrap_or((&why, ""));
            return problem("hv_kvp_daemon", text, fix);
        }
        match kvp_store::hv_kvp_daemons(&self.at("/proc"))[..] {
            [] => finding(Level::Ok, "hv_kvp_daemon", "not running: the pool files are the agent's"),
            _ => finding(
                Level::Note,
                "hv_kvp_daemon",
                format!(
                    "runs on its own pool files in {}, beside the agent's in {}: guest software reads \
                     whichever directory it knows",
                    hvproto::service::guestinfo::HV_KVP_DAEMON_DIR,
                    pool_dir.display()
                ),
            ),
        }
    }

    fn check_config(&self) -> (Option<Config>, Vec<Finding>) {
        let default = self.at(config::DEFAULT_PATH);
        let path = match &self.config_path {
            Some(path) => Some(path.clone()),
            None => default.exists().then_some(default),
        };
        let loaded = match &path {
            Some(path) => config::load(Some(path)),
            None => Ok(Config::default()),
        };
        let source = path.map_or("built-in defaults (no config file)".to_string(), |path| {
            path.display().to_string()
        });
        match loaded {
            Ok(config) => {
                let names: Vec<&str> = config.enabled().map(|s| s.kind().name()).collect();
                let text = format!(
                    "{source}: {} service(s) enabled ({})",
                    names.len(),
                    names.join(", ")
                );
                (Some(config), vec![finding(Level::Ok, "config", text)])
            }
            Err(error) => (
                None,
                vec![problem(
                    "config",
                    error.to_string(),
                    "correct the file (hvagent check-config shows what the agent makes of it); the agent \
                     refuses to start with it, so the services were not checked",
                )],
            ),
        }
    }

    /// AF_VSOCK and its transports; true when vsock is usable.
    fn check_vsock(&self, findings: &mut Vec<Finding>) -> bool {
        let protocols = std::fs::read_to_string(self.at("/proc/net/protocols")).unwrap_or_default();
        let af_vsock = protocols.lines().any(|line| line.starts_with("AF_VSOCK"))
            || self.exists("/sys/module/vsock");
        let hyperv = self.exists("/sys/bus/vmbus");
        let loaded = |module: &str| self.exists(&format!("/sys/module/{module}"));
        let mut transports = Vec::new();
        if loaded("hv_sock") {
            transports.push("hv_sock (Hyper-V)");
        }
        if loaded("vmw_vsock_virtio_transport") {
            transports.push("virtio-vsock");
        }
        if loaded("vmw_vsock_vmci_transport") {
            transports.push("vmci (VMware)");
        }
        if loaded("vsock_loopback") {
            transports.push("loopback (CID 1)");
        }
        let machine = if hyperv {
            "Hyper-V guest (/sys/bus/vmbus)"
        } else {
            "not Hyper-V (no /sys/bus/vmbus)"
        };
        if !af_vsock {
            findings.push(problem(
                "AF_VSOCK",
                format!("not available on this {machine}"),
                if hyperv {
                    "modprobe hv_sock (the package's /usr/lib/modules-load.d/hvagent.conf loads it at boot); \
                     the kernel needs CONFIG_HYPERV_VSOCKETS"
                } else {
                    "attach a vsock device to the VM (QEMU: -device vhost-vsock-pci,guest-cid=3) and modprobe \
                     vmw_vsock_virtio_transport"
                },
            ));
            return false;
        }
        findings.push(finding(
            Level::Ok,
            "AF_VSOCK",
            format!("available; {machine}"),
        ));
        let guest_transport = transports.iter().any(|name| !name.starts_with("loopback"));
        findings.push(match (hyperv, guest_transport) {
            (true, _) if !loaded("hv_sock") => problem(
                "transport",
                format!(
                    "hv_sock is not loaded on this Hyper-V guest (loaded: {})",
                    list_or_none(&transports)
                ),
                "modprobe hv_sock; to load it at boot, /usr/lib/modules-load.d/hvagent.conf (installed by the \
                 package) or a line hv_sock in /etc/modules-load.d/hvagent.conf",
            ),
            (true, _) if loaded("vmw_vsock_vmci_transport") => problem(
                "transport",
                "vmw_vsock_vmci_transport is loaded beside hv_sock and may take the guest-to-host transport",
                "echo 'blacklist vmw_vsock_vmci_transport' > /etc/modprobe.d/hvagent-vmci.conf and reboot",
            ),
            (_, false) => problem(
                "transport",
                format!(
                    "no guest-to-host transport is loaded (loaded: {})",
                    list_or_none(&transports)
                ),
                "on Hyper-V modprobe hv_sock; on KVM/QEMU attach a vhost-vsock-pci device and modprobe \
                 vmw_vsock_virtio_transport",
            ),
            _ => finding(Level::Ok, "transport", transports.join(", ")),
        });
        true
    }

    fn check_local_cid(&self) -> Finding {
        match self.local_cid() {
            Ok(u32::MAX) => finding(
                Level::Note,
                "local CID",
                "none (reads as -1, as on Hyper-V: the guest reaches only the host, CID 2)",
            ),
            Ok(cid) => finding(Level::Note, "local CID", cid.to_string()),
            Err(why) => finding(Level::Note, "local CID", format!("unknown: {why}")),
        }
    }

    /// The local CID from /dev/vsock (IOCTL_VM_SOCKETS_GET_LOCAL_CID); in a fake tree, where /dev/vsock is
    /// a plain file, its text.
    fn local_cid(&self) -> Result<u32, String> {
        let path = self.at("/dev/vsock");
        let meta =
            std::fs::metadata(&path).map_err(|error| format!("{}: {error}", path.display()))?;
        if meta.file_type().is_char_device() {
            let file = std::fs::File::open(&path)
                .map_err(|error| format!("{}: {error}", path.display()))?;
            return ioctl_local_cid(&file).map_err(|error| format!("{}: {error}", path.display()));
        }
        let text = std::fs::read_to_string(&path).map_err(|error| error.to_string())?;
        text.trim()
            .parse::<i64>()
            .map(|cid| cid as u32)
            .map_err(|_| format!("{} holds no CID", path.display()))
    }

    fn check_service(&self, service: &ServiceConfig, vsock: bool) -> Finding {
        let topic = service.kind().name();
        let address = match &service.endpoint {
            Endpoint::Listen(address) => {
                return finding(
                    Level::Note,
                    topic,
                    format!("listens on {address}; the host dials it (not probed)"),
                )
            }
            Endpoint::Connect(address) => address,
        };
        if let Address::Vsock { .. } = address {
            if !vsock {
                return problem(
                    topic,
                    format!("cannot dial {address}: AF_VSOCK is not available"),
                    "fix AF_VSOCK first (above)",
                );
            }
            if !self.real_root() {
                return finding(
                    Level::Note,
                    topic,
                    format!("{address} not probed: the checks read a tree other than /"),
                );
            }
        }
        match probe(address) {
            Ok(()) => finding(Level::Ok, topic, format!("the host answers at {address}")),
            Err(error) => problem(
                topic,
                format!("the host does not answer at {address}: {error}"),
                unanswered_fix(address),
            ),
        }
    }

    /// CAP_SYS_TIME, or the clock helper that holds it for the agent (hvagent-clock.socket listening).
    fn check_cap_sys_time(&self, timesync: bool) -> Finding {
        let status = std::fs::read_to_string(self.at("/proc/self/status")).unwrap_or_default();
        let effective = status
            .lines()
            .find_map(|line| line.strip_prefix("CapEff:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok());
        let helper = crate::clock::remote::DEFAULT_SOCKET;
        let helper_listens = self.exists(helper);
        match effective {
            Some(caps) if caps & (1 << CAP_SYS_TIME) != 0 => {
                finding(Level::Ok, "CAP_SYS_TIME", "held: the clock can be set")
            }
            Some(_) if helper_listens => finding(
                Level::Ok,
                "CAP_SYS_TIME",
                format!(
                    "not held by this command, and not needed: the agent sets the clock through the clock \
                     helper (hvagent-clock.socket, {helper}), which holds it"
                ),
            ),
            Some(_) if timesync => problem(
                "CAP_SYS_TIME",
                format!(
                    "not held, and no clock helper listens at {helper}: the time-sync service cannot set the \
                     clock"
                ),
                "systemctl enable --now hvagent-clock.socket (the package ships it; hvagent.service then sets \
                 the clock through it), or run the agent as root",
            ),
            Some(_) => finding(
                Level::Note,
                "CAP_SYS_TIME",
                "not held by this command (the time-sync service is off; hvagent-clock.socket's helper holds it)",
            ),
            None => finding(Level::Note, "CAP_SYS_TIME", "unknown: no CapEff in /proc/self/status"),
        }
    }

    fn check_time_daemons(&self, timesync: bool) -> Finding {
        let mut found = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.at("/proc")) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(pid) = name
                    .to_str()
                    .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                else {
                    continue;
                };
                let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                let comm = comm.trim();
                if TIME_DAEMONS.contains(&comm) {
                    found.push((pid.parse::<u32>().unwrap_or(0), comm.to_string()));
                }
            }
        }
        found.sort();
        let list: Vec<String> = found
            .iter()
            .map(|(pid, comm)| format!("{comm} (pid {pid})"))
            .collect();
        match (found.is_empty(), timesync) {
            (true, _) => finding(Level::Ok, "time daemons", "no other program disciplines the clock"),
            (false, true) => problem(
                "time daemons",
                format!("{} also discipline(s) the clock beside the time-sync service", list.join(", ")),
                "let one program steer the clock: feed chronyd through its SOCK refclock, or stop the \
                 other daemon, or disable [timesync]",
            ),
            (false, false) => finding(
                Level::Note,
                "time daemons",
                format!("{} keep(s) the clock (the time-sync service is off)", list.join(", ")),
            ),
        }
    }
}

fn list_or_none(items: &[&str]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

/// What to do when the host does not answer a dialling service.
fn unanswered_fix(address: &Address) -> String {
    match address {
        Address::Vsock { port, .. } => format!(
            "start the host service, and on Hyper-V register service GUID {} on the host: run \
             `hvagent host-setup` here and the script it prints in an elevated PowerShell on the host",
            ServiceId::from_port(*port)
        ),
        Address::Unix(path) => format!("start the host peer listening at {}", path.display()),
        Address::Hybrid { .. } => "hybrid: addresses are for hvhost".to_string(),
    }
}

/// A short connect to `address`, closed at once.
fn probe(address: &Address) -> Result<(), String> {
    let fd = match socket::connect(address).map_err(|errno| errno.desc().to_string())? {
        Dial::Connected(_) => return Ok(()),
        Dial::InProgress(fd) => fd,
    };
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
    let millis = PROBE_TIMEOUT.as_millis() as u16;
    match poll(&mut fds, PollTimeout::from(millis)) {
        Ok(0) => Err(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())),
        Ok(_) => socket::finish_connect(fd.as_fd()).map_err(|errno| errno.desc().to_string()),
        Err(errno) => Err(errno.desc().to_string()),
    }
}

/// IOCTL_VM_SOCKETS_GET_LOCAL_CID (linux/vm_sockets.h: _IO(7, 0xb9)).
const IOCTL_VM_SOCKETS_GET_LOCAL_CID: libc::c_ulong = 0x7b9;

fn ioctl_local_cid(file: &std::fs::File) -> std::io::Result<u32> {
    let mut cid: u32 = 0;
    // SAFETY: file is an open /dev/vsock; this ioctl writes one u32 to the pointer, which lives for the call.
    let result = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            IOCTL_VM_SOCKETS_GET_LOCAL_CID as _,
            &mut cid as *mut u32,
        )
    };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cid)
}

/// The report for people, and whether it found a problem.
pub fn render(findings: &[Finding]) -> (String, bool) {
    let mut out = String::new();
    let problems = findings
        .iter()
        .filter(|f| f.level == Level::Problem)
        .count();
    for item in findings {
        let label = match item.level {
            Level::Ok => "ok",
            Level::Note => "note",
            Level::Problem => "PROBLEM",
        };
        let _ = writeln!(out, "{label:<8} {}: {}", item.topic, item.text);
        if let Some(fix) = &item.fix {
            let _ = writeln!(out, "{:<8} fix: {fix}", "");
        }
    }
    let _ = match problems {
        0 => writeln!(out, "no problem found"),
        1 => writeln!(out, "1 problem found"),
        n => writeln!(out, "{n} problems found"),
    };
    (out, problems > 0)
}

mod filecopy;
mod privilege;

#[cfg(test)]
mod tests;
