//! hvagent: a Linux guest agent that speaks Hyper-V integration-service (IC) messages over AF_VSOCK
//! (hv_sock on Hyper-V, virtio-vsock elsewhere), and the building blocks of its host-side peer, hvhost.
//!
//! Module map:
//! - [`guid`]: service GUIDs ⇄ vsock ports (the hv_sock template).
//! - [`wire`]: bytes ⇄ typed messages and stream framing; no I/O, no clock.
//! - [`service`]: one state machine per service (heartbeat and health, time sync, shutdown, guest info),
//!   sans-I/O.
//! - [`clock`]: time discipline math (pure), the simulated clock, and the one file that changes the real clock.
//! - [`system`]: the edges the services act through: commands, reboot(2), health checks, pool files, identity.
//! - [`transport`]: addresses, vsock/unix/hybrid sockets, connections, redial backoff.
//! - [`event_loop`]: the poll(2) loop that wires the above together; [`config`] and [`status`] feed it.
//! - [`control`], [`systemd`], [`doctor`], [`host_setup`]: operations (status socket, sd_notify, checks,
//!   Windows host registration).
//! - [`host_peer`], [`host_server`], [`host_requests`]: hvhost, the host side.
pub mod clock;
pub mod config;
pub mod control;
pub mod doctor;
pub mod event_loop;
pub mod guid;
pub mod host_peer;
pub mod host_requests;
pub mod host_server;
pub mod host_setup;
pub mod properties;
pub mod service;
pub mod status;
pub mod system;
pub mod systemd;
pub mod transport;
pub mod wire;
