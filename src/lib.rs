//! hvagent: a Linux guest agent that speaks Hyper-V integration-service (IC) messages over AF_VSOCK
//! (hv_sock on Hyper-V, virtio-vsock elsewhere), and the building blocks of its host-side peer, hvhost.
//!
//! Module map:
//! - [`guid`]: service GUIDs ⇄ vsock ports (the hv_sock template).
//! - [`wire`]: bytes ⇄ typed messages and stream framing; no I/O, no clock.
pub mod config;
pub mod control;
pub mod doctor;
pub mod event_loop;
pub mod guid;
pub mod host_peer;
pub mod host_server;
pub mod host_setup;
pub mod properties;
pub mod service;
pub mod status;
pub mod systemd;
pub mod transport;
pub mod wire;
