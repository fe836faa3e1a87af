//! hvproto: the Hyper-V integration-service protocol as hvagent and hvhost speak it, with no I/O of its own.
//!
//! - [`guid`]: service GUIDs ⇄ vsock ports (the hv_sock template).
//! - [`wire`]: bytes ⇄ typed messages and stream framing; no I/O, no clock.
//! - [`service`]: one state machine per integration service, guest side (heartbeat and health, time sync,
//!   shutdown, guest info) and host side ([`service::host`]), with the edges they act through as traits.
//! - [`clock`]: the time discipline math and a simulated clock.
//! - [`properties`]: the properties the wire parsers keep, shared by proptests and fuzz targets.
//!
//! Nothing here opens a file or a socket, or calls the OS beyond `std::time`: the crate builds and tests
//! on every target, Windows included.
pub mod clock;
pub mod guid;
pub mod properties;
pub mod service;
pub mod wire;
