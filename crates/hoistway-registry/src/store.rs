//! The seam to where the registry lives: lifts and their assignment periods, with a revision
//! that lets every node's in-memory copy follow the writes of others.
//!
//! Every write takes a new revision, greater than every earlier one, and a revision is visible
//! only once every smaller one is: a reader that remembers the newest revision it saw and asks
//! for what changed after it misses nothing. Calls block: async callers use `spawn_blocking`.

use hoistway_model::LiftId;

use crate::{Assignment, LiftInfo, Result};

/// Everything stored.
#[derive(Debug, Default)]
pub struct Stored {
    pub lifts: Vec<LiftInfo>,
    /// Every lift's periods, oldest first (by lift; removed lifts too).
    pub history: Vec<(LiftId, Vec<Assignment>)>,
    /// The newest revision (0 for a store never written).
    pub rev: i64,
}

/// A lift written after some revision: as it is now (`None`: removed) and its whole history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub lift_id: LiftId,
    pub info: Option<LiftInfo>,
    pub history: Vec<Assignment>,
}

pub trait RegistryStore: Send + Sync + 'static {
    fn load(&self) -> Result<Stored>;
    /// Adds or replaces `infos` (distinct ids) in one transaction, ordered after every other
    /// write: for each lift whose customer or building differs from its open period, or that has
    /// none, the open period closes at `now_us` and a new one opens then ([`plan_period`]).
    /// Returns, for each lift, whether it was registered before. Durable when it returns.
    fn upsert(&self, infos: &[LiftInfo], now_us: i64) -> Result<Vec<bool>>;
    /// Removes a lift and closes its open period at `now_us`; `false` if it was not registered.
    fn remove(&self, lift_id: &str, now_us: i64) -> Result<bool>;
    /// The lifts written after revision `after`, and the newest revision.
    fn changed_since(&self, after: i64) -> Result<(Vec<Changed>, i64)>;
}

/// The period a write of `info` opens, given the lift's open period (customer, building), if
/// any, and whether it has any period at all: none when customer and building stay; else one
/// from `now_us`, or from the beginning for a lift never seen (its first owner owns its past).
pub fn plan_period(
    info: &LiftInfo,
    open: Option<(&str, &str)>,
    has_history: bool,
    now_us: i64,
) -> Option<Assignment> {
    let moved = open
        .is_none_or(|(customer, building)| customer != info.customer || building != info.building);
    moved.then(|| Assignment {
        customer: info.customer.clone(),
        building: info.building.clone(),
        valid_from_us: has_history.then_some(now_us),
        valid_to_us: None,
    })
}
