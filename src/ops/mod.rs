//! The agent's operations side: what an admin and systemd see of it.
//!
//! - [`control`]: the status socket the running agent answers on.
//! - [`status`]: the agent's state as `hvagent status` shows it (text and JSON).
//! - [`systemd`]: sd_notify (ready, watchdog, status) and logging to the journal.
//! - [`log_hold`]: the agent's log lines held in memory while the backup service has filesystems frozen.
//! - [`doctor`]: `hvagent doctor`, the checks of a guest's setup.
//! - [`host_setup`]: `hvagent host-setup`, the Windows host's registration of each service.
//! - [`kvp`]: `hvagent kvp`, the key-value pool files from inside the guest.
pub mod control;
pub mod doctor;
pub mod host_setup;
pub mod kvp;
pub mod log_hold;
pub mod status;
pub mod systemd;
