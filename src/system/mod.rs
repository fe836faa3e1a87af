//! The edges the services act through: running commands, powering off, the system's identity and the
//! key-value pool files. Everything here touches the real system; the services in `service/` only see the
//! traits these implement, and their tests use fakes.

pub mod filecopy;
pub mod freeze;
pub mod health;
pub mod hooks;
pub mod kvp_legacy;
pub mod kvp_store;
pub mod limits;
pub mod netinfo;
pub mod netns;
pub mod pool_file;
pub mod power;
pub mod sysinfo;

use std::path::Path;

/// Whether the system was booted with systemd as PID 1 (sd_booted(3)).
pub fn systemd_booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}
