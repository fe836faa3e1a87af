//! Addresses, sockets and redial pacing: the only code that touches sockets.
pub mod address;
pub use address::{Address, AddressError};
