//! hvhost.exe, the host side on a Windows Hyper-V host. Everything that can be is a pure function compiled on
//! every target, so Linux's `cargo test` and the wine run of `make windows-test` check the same code:
//!
//! - [`address`]: `hv:VMID:SERVICE`, `vm:NAME:SERVICE` and the test-only `tcp:127.0.0.1:PORT`.
//! - [`sockaddr`]: the 36 bytes of a SOCKADDR_HV.
//! - [`vmname`]: a VM's name to its GUID through PowerShell's Get-VM, the name never part of a command line.
//! - [`registry`]: the GuestCommunicationServices keys `hvhost register` writes, as `hvagent host-setup` prints them.
//! - [`connection`]: one nonblocking stream with the protocol's decoder and a bounded output queue.
//!
//! Only `transport` (Winsock: AF_HYPERV sockets and WSAPoll) and `winreg` (the registry's writer) call
//! Windows itself.
pub mod address;
pub mod connection;
pub mod registry;
pub mod sockaddr;
#[cfg(windows)]
pub mod transport;
pub mod vmname;
#[cfg(windows)]
mod winreg;
