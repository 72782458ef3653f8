//! The fleet simulator: realistic lifts driving a Hoistway server over HTTP, and a ledger of what
//! the server acknowledged.
//!
//! In: a [`SimConfig`] and a server address. Out: readings sent as lifts send them (one per
//! request by default), power cuts during which lifts buffer and afterwards resend their backlog
//! out of order interleaved with live readings, occasional duplicate sends; a [`Ledger`] of the
//! per-lift totals the server must show. A reading stays in its lift's buffer until the server
//! acknowledges it, so a server killed mid-request loses nothing the simulator counts.
//!
//! This crate is also the load generator of `hoistway bench`; it does not start servers.

pub mod client;
pub mod device;
pub mod lift;
mod run;

pub use run::{Ledger, LiftTotals, SimConfig, SimStats, Simulator, verify};
