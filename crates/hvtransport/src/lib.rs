//! Addresses, sockets, connections and redial pacing: the only code that touches sockets.
pub mod address;
pub mod backoff;
pub mod connection;
pub mod peer;
pub mod socket;

pub use address::{Address, AddressError};
pub use connection::{Closed, Connection};
