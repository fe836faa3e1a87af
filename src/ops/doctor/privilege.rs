//! What the doctor says about privilege: the user and capabilities it runs with (from /proc/self/status,
//! so `systemd-run -p User=hvagent -p CapabilityBoundingSet= hvagent doctor` shows the unit's
//! view), whether the unit's user exists, and whether polkit will grant that user the power actions.

use super::{finding, problem, Doctor, Finding, Level};

/// The user hvagent.service runs as (User= in systemd/hvagent.service, created by its sysusers.d file).
pub const UNIT_USER: &str = "hvagent";
/// Where the unit may be installed (the package, `make install` with PREFIX /usr/local, an admin's copy).
pub(super) const UNIT_PATHS: [&str; 4] = [
    "/lib/systemd/system/hvagent.service",
    "/usr/lib/systemd/system/hvagent.service",
    "/usr/local/lib/systemd/system/hvagent.service",
    "/etc/systemd/system/hvagent.service",
];
/// The package's polkit rule, and where `make install` puts it.
const POLKIT_RULES: [&str; 2] = [
    "/usr/share/polkit-1/rules.d/hvagent.rules",
    "/etc/polkit-1/rules.d/hvagent.rules",
];
/// polkitd's binary: Debian 12 (polkitd), Fedora and newer polkit, Debian 11 (policykit-1).
const POLKITD_PATHS: [&str; 3] = [
    "/usr/lib/polkit-1/polkitd",
    "/usr/libexec/polkitd",
    "/usr/lib/policykit-1/polkitd",
];
/// The drop-in that runs the agent as root again where polkit is missing.
const RUN_AS_ROOT: &str = "/usr/share/doc/hvagent/examples/run-as-root.conf";

/// The drop-in that gives the agent CAP_SYS_ADMIN for the backup service, as shipped and as installed.
const BACKUP_FREEZE: &str = "/usr/share/doc/hvagent/examples/backup-freeze.conf";
const BACKUP_FREEZE_INSTALLED: &str = "/etc/systemd/system/hvagent.service.d/backup-freeze.conf";
/// CAP_SYS_ADMIN's bit: FIFREEZE and FITHAW need it.
const CAP_SYS_ADMIN: u32 = 21;

/// Capability names by bit (linux/capability.h), as /proc/PID/status numbers them.
const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// A capability set as names: "none", "all" for every capability this table knows (and any beyond), or
/// the names joined by commas (unknown bits as cap_N).
pub fn capability_names(set: u64) -> String {
    let known = (1u64 << CAPABILITIES.len()) - 1;
    if set == 0 {
        return "none".to_string();
    }
    if set & known == known {
        return "all".to_string();
    }
    (0..64)
        .filter(|bit| set & (1 << bit) != 0)
        .map(|bit| {
            CAPABILITIES
                .get(bit)
                .map_or(format!("cap_{bit}"), |name| name.to_string())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The value of a `Key:\tvalue` line of a /proc/PID/status text.
fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

/// A capability set of a /proc/PID/status text (CapEff, CapAmb, CapBnd...).
pub fn capability_set(status: &str, key: &str) -> Option<u64> {
    u64::from_str_radix(status_field(status, key)?, 16).ok()
}

/// The name and uid of the first line of a passwd text that `matches` (given its name and uid).
pub(super) fn passwd_entry(
    passwd: &str,
    matches: impl Fn(&str, u32) -> bool,
) -> Option<(&str, u32)> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let uid = fields.nth(1)?.parse().ok()?;
        matches(name, uid).then_some((name, uid))
    })
}

impl Doctor {
    pub(super) fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.at(path)).ok()
    }

    pub(super) fn first_existing(&self, paths: &[&'static str]) -> Option<&'static str> {
        paths.iter().copied().find(|path| self.exists(path))
    }

    /// The user this command runs as, and whether the unit's user exists where the unit is installed.
    pub(super) fn check_user(&self) -> Finding {
        let status = self.read("/proc/self/status").unwrap_or_default();
        let passwd = self.read("/etc/passwd").unwrap_or_default();
        let uid = status_field(&status, "Uid")
            .and_then(|ids| ids.split_whitespace().nth(1))
            .and_then(|euid| euid.parse::<u32>().ok());
        let me = match uid {
            Some(uid) => match passwd_entry(&passwd, |_, id| id == uid) {
                Some((name, _)) => format!("uid {uid} ({name})"),
                None => format!("uid {uid}"),
            },
            None => "unknown (no Uid in /proc/self/status)".to_string(),
        };
        let unit_user = passwd_entry(&passwd, |name, _| name == UNIT_USER);
        match (self.first_existing(&UNIT_PATHS), unit_user) {
            (Some(unit), None) => problem(
                "user",
                format!("this runs as {me}; {unit} runs the agent as user {UNIT_USER}, which /etc/passwd lacks"),
                "systemd-sysusers hvagent.conf (the package's postinst runs it; its sysusers.d file makes the \
                 user at every boot too)",
            ),
            (_, Some((_, id))) => finding(
                Level::Ok,
                "user",
                format!("this runs as {me}; the unit's user {UNIT_USER} is uid {id}"),
            ),
            (None, None) => finding(Level::Note, "user", format!("this runs as {me}")),
        }
    }

    /// The effective, ambient and bounding capability sets of this command, by name.
    pub(super) fn check_capabilities(&self) -> Finding {
        let status = self.read("/proc/self/status").unwrap_or_default();
        let sets: Vec<String> = [
            ("effective", "CapEff"),
            ("ambient", "CapAmb"),
            ("bounding", "CapBnd"),
        ]
        .iter()
        .map(|(label, key)| {
            let names =
                capability_set(&status, key).map_or("unknown".to_string(), capability_names);
            format!("{label} {names}")
        })
        .collect();
        finding(Level::Note, "capabilities", sets.join("; "))
    }

    /// Whether the backup service can freeze: CAP_SYS_ADMIN, which the unit grants the agent only through
    /// the backup-freeze drop-in. Nothing to say while the service is off.
    pub(super) fn check_cap_sys_admin(&self, backup: bool) -> Option<Finding> {
        if !backup {
            return None;
        }
        const TOPIC: &str = "CAP_SYS_ADMIN";
        if self.exists(BACKUP_FREEZE_INSTALLED) {
            return Some(finding(
                Level::Ok,
                TOPIC,
                format!("{BACKUP_FREEZE_INSTALLED} gives the agent CAP_SYS_ADMIN: the backup service can freeze"),
            ));
        }
        let status = self.read("/proc/self/status").unwrap_or_default();
        let held =
            capability_set(&status, "CapEff").is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0);
        let fix = format!(
            "install -D -m 0644 {BACKUP_FREEZE} {BACKUP_FREEZE_INSTALLED} && systemctl daemon-reload && \
             systemctl restart hvagent (it runs the agent as root with CAP_SYS_ADMIN alone; a privilege-separated \
             freeze helper is future work), or set enabled = false in [backup]"
        );
        Some(match self.first_existing(&UNIT_PATHS) {
            None if held => finding(Level::Ok, TOPIC, "held: the backup service can freeze filesystems"),
            None => problem(
                TOPIC,
                "not held: the backup service cannot freeze (FIFREEZE fails with EPERM, and every FREEZE is \
                 answered HV_E_FAIL)",
                "run the agent as root",
            ),
            Some(unit) => problem(
                TOPIC,
                format!(
                    "{unit} runs the agent without capabilities, and the backup service needs CAP_SYS_ADMIN to \
                     freeze: every FREEZE is answered HV_E_FAIL"
                ),
                fix,
            ),
        })
    }

    /// Whether polkit will let the unit's user power the guest off: the package's rule and polkitd. A
    /// problem only while the shutdown service is enabled.
    pub(super) fn check_polkit(&self, shutdown: bool) -> Finding {
        let rule = self.first_existing(&POLKIT_RULES);
        let polkitd = self.first_existing(&POLKITD_PATHS);
        let missing = match (rule, polkitd) {
            (Some(rule), Some(polkitd)) => {
                return finding(
                    Level::Ok,
                    "polkit",
                    format!(
                    "{rule} lets user {UNIT_USER} power off, reboot and hibernate through logind \
                         ({polkitd} is installed)"
                ),
                )
            }
            (Some(rule), None) => format!("{rule} is installed, but polkitd is not"),
            (None, Some(polkitd)) => {
                format!("{polkitd} is installed, but not the rule hvagent.rules")
            }
            (None, None) => "neither polkitd nor the rule hvagent.rules is installed".to_string(),
        };
        let consequence = "so logind refuses the unit's user the power actions the host asks for";
        if !shutdown {
            return finding(
                Level::Note,
                "polkit",
                format!("{missing} (the shutdown service is off)"),
            );
        }
        problem(
            "polkit",
            format!("{missing}, {consequence}"),
            format!(
                "apt install polkitd (the package ships the rule in /usr/share/polkit-1/rules.d), or run the \
                 agent as root with the drop-in {RUN_AS_ROOT} in /etc/systemd/system/hvagent.service.d/"
            ),
        )
    }
}
