//! Hoistway's domain: the vocabulary every other crate speaks.
//!
//! In: nothing — this crate has no I/O, no async and depends on nothing in the workspace.
//! Out: [`LiftId`], [`Reading`] and its enums, the documented limits of the device contract
//! ([`limits`]), and the per-lift deduplication window ([`dedup`]).
//!
//! It is *not* where readings are parsed from the wire (that is `hoistway-ingest`) nor where
//! state is kept (that is `hoistway-processor`).

pub mod dedup;
pub mod lift_id;
pub mod limits;
pub mod partition;
pub mod reading;
pub mod time;

pub use dedup::{DedupWindow, LiftDedup, Seen, SeqSet};
pub use lift_id::{LiftId, LiftIdError};
pub use partition::partition_of;
pub use reading::{Direction, DoorState, EventKind, Reading, ReadingKey};
pub use time::{Clock, ManualClock, SystemClock};
