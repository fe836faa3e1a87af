//! The clock edges of the agent: the real clock and the ways to it. The math they serve is
//! `hvproto::clock`.
//!
//! - [`system`]: the one file that reads and changes the real clock (`clock_gettime`, `clock_settime`,
//!   `adjtimex`), checks CAP_SYS_TIME and looks for other time daemons.
//! - [`privops`], [`remote`], [`helper`]: privilege separation for the clock, as chronyd's privops: the
//!   agent under systemd holds no capability, and `hvagent clock-helper` (hvagent-clock.service, socket
//!   activated, CAP_SYS_TIME alone) steps and steers the clock on its behalf. [`privops`] is the wire (pure),
//!   [`remote::RemoteClock`] the agent's `Clock` over it, [`helper`] the helper's serve loop.
//! - [`chrony`]: the SOCK refclock datagram for chronyd (docs/PROTOCOL.md §7.5) and the socket that sends it.

pub mod chrony;
pub mod helper;
pub mod privops;
pub mod remote;
pub mod system;
