//! hvhost: the host side of hvagent's integration services, on Linux hosts (vsock, Unix and hybrid-vsock
//! sockets) and, as hvhost.exe, on Windows Hyper-V hosts (AF_HYPERV sockets). The protocol is `hvproto`'s;
//! this crate is the host's edges around it.
//!
//! - [`net`]: the sockets of each host under one set of names.
//! - [`client`]: one connection to a guest's service: dialing, negotiating, round trips, printing them.
//! - [`server`]: `hvhost serve`, many agents at once in one poll loop.
//! - [`requests`]: `hvhost shutdown` and `hvhost kvp`, one request each.
//! - [`backup`]: `hvhost backup`, freeze, a command on the host, thaw.
//! - [`copy`]: `hvhost copy`, a local file into the guest (the file-copy service).
//! - [`windows`]: hvhost.exe's addresses, SOCKADDR_HV, registration and transport (pure parts on every
//!   target, so that Linux tests them too).
pub mod backup;
pub mod client;
pub mod copy;
pub mod net;
pub mod requests;
pub mod server;
pub mod windows;
