//! The file-copy service's directories: each of `allowed_dirs` must exist, be a directory the agent's user
//! can write, and, under the packaged unit (ProtectSystem=strict), be listed in a ReadWritePaths= drop-in.

use std::os::unix::fs::MetadataExt;

use super::privilege::{passwd_entry, UNIT_PATHS, UNIT_USER};
use super::{finding, problem, Doctor, Finding, Level};

const TOPIC: &str = "filecopy";
/// Where an admin's drop-ins for the unit live.
const DROP_IN_DIR: &str = "/etc/systemd/system/hvagent.service.d";
const EXAMPLE: &str = "/usr/share/doc/hvagent/examples/filecopy-dirs.conf";

impl Doctor {
    /// One finding per allowed directory.
    pub(super) fn check_allowed_dirs(&self, dirs: &[String]) -> Vec<Finding> {
        let passwd = self.read("/etc/passwd").unwrap_or_default();
        let unit = self.first_existing(&UNIT_PATHS);
        // The unit runs the agent as its user; without the unit it runs as whoever starts it (root here).
        let agent = match (unit, passwd_entry(&passwd, |name, _| name == UNIT_USER)) {
            (Some(_), Some((_, uid))) => Some(uid),
            _ => None,
        };
        let drop_ins = self.read_write_paths();
        dirs.iter()
            .map(|dir| self.check_allowed_dir(dir, agent, unit.is_some(), &drop_ins))
            .collect()
    }

    fn check_allowed_dir(
        &self,
        dir: &str,
        agent: Option<u32>,
        unit: bool,
        drop_ins: &[String],
    ) -> Finding {
        let make = format!("install -d -o {UNIT_USER} -g {UNIT_USER} -m 0750 {dir}");
        let metadata = match std::fs::metadata(self.at(dir)) {
            Ok(metadata) => metadata,
            Err(error) => {
                return problem(
                    TOPIC,
                    format!("allowed directory {dir} cannot be used: {error}"),
                    make,
                )
            }
        };
        if !metadata.is_dir() {
            return problem(
                TOPIC,
                format!("allowed directory {dir} is not a directory"),
                make,
            );
        }
        if let Some(uid) = agent {
            let mode = metadata.mode();
            let writable =
                uid == 0 || (metadata.uid() == uid && mode & 0o200 != 0) || mode & 0o002 != 0;
            if !writable {
                return problem(
                    TOPIC,
                    format!(
                        "allowed directory {dir} is owned by uid {} with mode {:o}: the agent's user {UNIT_USER} \
                         (uid {uid}) cannot write it",
                        metadata.uid(),
                        mode & 0o7777
                    ),
                    format!("chown {UNIT_USER}: {dir} && chmod u+rwx {dir}"),
                );
            }
        }
        let listed = drop_ins.iter().any(|path| {
            let path = path.trim_end_matches('/');
            dir == path || dir.starts_with(&format!("{path}/"))
        });
        if unit && !listed {
            return problem(
                TOPIC,
                format!(
                    "allowed directory {dir} is read-only for the agent: the unit's ProtectSystem=strict \
                     allows writes only where ReadWritePaths= says, and no drop-in in {DROP_IN_DIR} lists it"
                ),
                format!(
                    "install {EXAMPLE} as {DROP_IN_DIR}/filecopy-dirs.conf with ReadWritePaths={dir}, then \
                     systemctl daemon-reload && systemctl restart hvagent"
                ),
            );
        }
        finding(
            Level::Ok,
            TOPIC,
            format!("allowed directory {dir} is writable for the agent"),
        )
    }

    /// The paths the admin's drop-ins give the unit with ReadWritePaths= (prefixes '-' and '+' dropped).
    fn read_write_paths(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.at(DROP_IN_DIR)) else {
            return Vec::new();
        };
        let mut paths = Vec::new();
        for entry in entries.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            for line in text.lines() {
                if let Some(value) = line.trim().strip_prefix("ReadWritePaths=") {
                    paths.extend(
                        value
                            .split_whitespace()
                            .map(|path| path.trim_start_matches(['-', '+']).to_string()),
                    );
                }
            }
        }
        paths
    }
}
