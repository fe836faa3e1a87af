//! hvagent: a Linux guest agent that speaks Hyper-V integration-service (IC) messages over AF_VSOCK
//! (hv_sock on Hyper-V, virtio-vsock elsewhere). The protocol itself (GUIDs, wire, the services' state
//! machines, the clock math) is the `hvproto` crate and the sockets are `hvtransport`; this crate is the
//! agent around them.
//!
//! Module map:
//! - [`config`]: the configuration file, each setting named once.
//! - [`clock`]: the clock edges: the real clock, the privilege-separated clock helper, chronyd's socket.
//! - [`system`]: the edges the services act through: commands, reboot(2), health checks, pool files, identity.
//! - [`event_loop`]: the poll(2) loop that wires the services and edges together.
//! - [`ops`]: operations: the status socket and `hvagent status`, sd_notify, `hvagent doctor`, and
//!   `hvagent host-setup` (the Windows host's registration).
//! - [`properties`]: the properties the config and address parsers keep (proptests and fuzz targets).
pub mod clock;
pub mod config;
pub mod event_loop;
pub mod ops;
pub mod properties;
pub mod system;
