//! Read-only queries over fleet state joined with the registry, for the API.

use std::sync::Arc;
use std::time::Duration;

use hoistway_model::partition::partition_of_str;
use hoistway_model::time::format_micros;
use hoistway_model::{Clock, Direction, DoorState};
use hoistway_registry::{LiftFilter, LiftInfo, Registry};
use parking_lot::{RwLock, RwLockReadGuard};
use serde::{Deserialize, Serialize};

use crate::state::{FleetState, LiftState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LiftStatus {
    /// Registered, no reading ever applied.
    NeverReported,
    /// Reporting, with no active fault and nobody trapped.
    Reporting,
    /// Reporting, with an active fault or an entrapment.
    Faulted,
    /// No reading received for longer than `silent_after`.
    Silent,
}

/// One lift as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LiftView {
    pub lift_id: String,
    pub building: String,
    pub site: String,
    pub customer: String,
    pub model: String,
    pub status: LiftStatus,
    pub epoch: Option<u64>,
    pub last_seq: Option<u64>,
    pub last_ts: Option<String>,
    pub last_received_at: Option<String>,
    pub floor: Option<i16>,
    pub direction: Option<Direction>,
    pub door: Option<DoorState>,
    pub load_kg: Option<f32>,
    pub speed_mps: Option<f32>,
    pub motor_temp_c: Option<f32>,
    pub vibration_mm_s: Option<f32>,
    pub faults: Vec<String>,
    pub entrapped: bool,
    pub in_maintenance: bool,
    pub readings_total: u64,
    /// Registry's initial trip count plus every trip reported since.
    pub trips_total: u64,
    pub door_cycles_total: u64,
    pub events_total: u64,
    /// Accepted `(epoch, [from, to])` seq ranges still inside the dedup window (single-lift view
    /// only): shows exactly which readings were counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq_ranges: Option<Vec<SeqRanges>>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SeqRanges {
    pub epoch: u64,
    pub horizon: u64,
    pub ranges: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FleetSummary {
    pub lifts: u64,
    pub reporting: u64,
    pub faulted: u64,
    pub silent: u64,
    pub never_reported: u64,
    pub entrapped: u64,
    pub in_maintenance: u64,
    /// Readings counted from these lifts since they were first seen: its change over time is
    /// their readings rate.
    pub readings_total: u64,
    /// Lifts with state but no registry entry (removed from the registry after reporting).
    pub unregistered_with_state: u64,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub building: Option<String>,
    pub site: Option<String>,
    pub customer: Option<String>,
    pub status: Option<LiftStatus>,
    pub model: Option<String>,
    /// Lifts whose id or building contains this text, ignoring case.
    pub q: Option<String>,
    /// Return lifts whose id sorts after this one (the previous page's `next_after`).
    pub after: Option<String>,
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = LiftPage)]
pub struct Page {
    pub items: Vec<LiftView>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next_after: Option<String>,
}

/// Shared, read-only handle on fleet state: one [`FleetState`] per partition, each lift looked
/// up in its own.
#[derive(Clone)]
pub struct Fleet {
    parts: Arc<[Arc<RwLock<FleetState>>]>,
    registry: Arc<Registry>,
    clock: Arc<dyn Clock>,
    silent_after_us: i64,
}

pub const MAX_PAGE: usize = 1000;

/// Whether `hay` contains `needle` (already lower case), without allocating for ASCII ids.
fn contains_ignoring_case(hay: &str, needle: &str) -> bool {
    if hay.is_ascii() && needle.is_ascii() {
        let (hay, needle) = (hay.as_bytes(), needle.as_bytes());
        needle.is_empty()
            || hay
                .windows(needle.len())
                .any(|w| w.eq_ignore_ascii_case(needle))
    } else {
        hay.to_lowercase().contains(needle)
    }
}

/// Every partition's state, read-locked together: one consistent look at the fleet.
struct States<'a>(Vec<RwLockReadGuard<'a, FleetState>>);

impl States<'_> {
    fn get(&self, lift_id: &str) -> Option<&LiftState> {
        let part = match self.0.len() {
            1 => 0,
            n => partition_of_str(lift_id, n as u16) as usize,
        };
        self.0[part].lifts.get(lift_id)
    }

    fn lift_ids(&self) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .flat_map(|part| part.lifts.keys().map(|id| id.as_str()))
    }
}

impl Fleet {
    /// The fleet of one partition (a standalone server's).
    pub fn new(
        state: Arc<RwLock<FleetState>>,
        registry: Arc<Registry>,
        clock: Arc<dyn Clock>,
        silent_after: Duration,
    ) -> Self {
        Self::partitioned(vec![state], registry, clock, silent_after)
    }

    /// The fleet over several partitions, `parts[p]` holding the lifts
    /// [`partition_of`](hoistway_model::partition::partition_of) puts in partition `p` of
    /// `parts.len()`.
    pub fn partitioned(
        parts: Vec<Arc<RwLock<FleetState>>>,
        registry: Arc<Registry>,
        clock: Arc<dyn Clock>,
        silent_after: Duration,
    ) -> Self {
        assert!(
            !parts.is_empty()
                && parts.len() <= usize::from(hoistway_model::partition::MAX_PARTITIONS),
            "a fleet has 1 to {} partitions, not {}",
            hoistway_model::partition::MAX_PARTITIONS,
            parts.len()
        );
        Self {
            parts: parts.into(),
            registry,
            clock,
            silent_after_us: silent_after.as_micros() as i64,
        }
    }

    /// How many partitions the fleet is spread over.
    pub fn partitions(&self) -> u16 {
        self.parts.len() as u16
    }

    fn read(&self) -> States<'_> {
        States(self.parts.iter().map(|part| part.read()).collect())
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Every registered lift with the server time of its last reading (`None`: never
    /// reported): what absence rules need, by the same clock the lift status uses.
    pub fn presence(&self) -> Vec<(Arc<LiftInfo>, Option<i64>)> {
        let lifts = self.registry.list(&LiftFilter::default());
        let fleet = self.read();
        lifts
            .into_iter()
            .map(|info| {
                let last = fleet.get(info.lift_id.as_str()).map(|s| s.last_received_us);
                (info, last)
            })
            .collect()
    }

    fn status(&self, state: Option<&LiftState>, now_us: i64) -> LiftStatus {
        match state {
            None => LiftStatus::NeverReported,
            Some(s) if now_us - s.last_received_us > self.silent_after_us => LiftStatus::Silent,
            Some(s) if !s.faults.is_empty() || s.entrapped => LiftStatus::Faulted,
            Some(_) => LiftStatus::Reporting,
        }
    }

    fn view(
        &self,
        info: Option<&LiftInfo>,
        lift_id: &str,
        state: Option<&LiftState>,
        now_us: i64,
    ) -> LiftView {
        let text = |f: fn(&LiftInfo) -> &String| info.map(|i| f(i).clone()).unwrap_or_default();
        LiftView {
            lift_id: lift_id.to_string(),
            building: text(|i| &i.building),
            site: text(|i| &i.site),
            customer: text(|i| &i.customer),
            model: text(|i| &i.model),
            status: self.status(state, now_us),
            epoch: state.map(|s| s.epoch),
            last_seq: state.map(|s| s.last_seq),
            last_ts: state.map(|s| format_micros(s.last_ts_us)),
            last_received_at: state.map(|s| format_micros(s.last_received_us)),
            floor: state.map(|s| s.floor),
            direction: state.map(|s| s.direction),
            door: state.map(|s| s.door),
            load_kg: state.and_then(|s| s.load_kg),
            speed_mps: state.and_then(|s| s.speed_mps),
            motor_temp_c: state.and_then(|s| s.motor_temp_c),
            vibration_mm_s: state.and_then(|s| s.vibration_mm_s),
            faults: state.map(|s| s.faults.clone()).unwrap_or_default(),
            entrapped: state.is_some_and(|s| s.entrapped),
            in_maintenance: state.is_some_and(|s| s.in_maintenance),
            readings_total: state.map_or(0, |s| s.readings_total),
            trips_total: info.map_or(0, |i| i.initial_trips)
                + state.map_or(0, |s| s.trips_reported),
            door_cycles_total: state.map_or(0, |s| s.door_cycles_total),
            events_total: state.map_or(0, |s| s.events_total),
            seq_ranges: None,
        }
    }

    /// One lift, registered or with state, without its dedup ranges: what a live view polls.
    pub fn state_of(&self, lift_id: &str) -> Option<LiftView> {
        self.one(lift_id, false)
    }

    /// One lift, registered or with state; with its dedup ranges.
    pub fn lift(&self, lift_id: &str) -> Option<LiftView> {
        self.one(lift_id, true)
    }

    fn one(&self, lift_id: &str, with_ranges: bool) -> Option<LiftView> {
        let info = self.registry.get(lift_id);
        let fleet = self.read();
        let state = fleet.get(lift_id);
        if info.is_none() && state.is_none() {
            return None;
        }
        let mut view = self.view(info.as_deref(), lift_id, state, self.clock.now_us());
        if with_ranges {
            view.seq_ranges = state.map(|s| {
                s.dedup
                    .epochs()
                    .iter()
                    .map(|(epoch, set)| SeqRanges {
                        epoch: *epoch,
                        horizon: set.horizon(),
                        ranges: set.ranges().to_vec(),
                    })
                    .collect()
            });
        }
        Some(view)
    }

    /// Registered lifts matching the query, sorted by id, one page at a time. The registry is
    /// walked in id order from `after` in chunks, and stops once the page is full, so an early
    /// page costs what the page costs. (The registry and the state are never locked together.)
    pub fn list(&self, q: &ListQuery) -> Page {
        let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE);
        let filter = LiftFilter {
            building: q.building.clone(),
            site: q.site.clone(),
            customer: q.customer.clone(),
        };
        let now = self.clock.now_us();
        let needle = q.q.as_deref().map(str::trim).filter(|n| !n.is_empty());
        let needle = needle.map(str::to_lowercase);
        let model = q.model.as_deref().filter(|m| !m.is_empty());
        let keep = |info: &LiftInfo| {
            model.is_none_or(|m| m == info.model)
                && needle.as_deref().is_none_or(|n| {
                    contains_ignoring_case(info.lift_id.as_str(), n)
                        || contains_ignoring_case(&info.building, n)
                })
        };
        // One more than the page tells whether another page follows. A status filter is
        // decided on the state, so candidates come in larger chunks.
        let chunk = if q.status.is_some() { 4096 } else { limit + 1 };
        let mut items: Vec<LiftView> = Vec::with_capacity(limit + 1);
        let mut cursor = q.after.clone();
        loop {
            let (infos, more) = self.registry.page(&filter, cursor.as_deref(), chunk, keep);
            {
                let fleet = self.read();
                for info in &infos {
                    let state = fleet.get(info.lift_id.as_str());
                    if q.status.is_some_and(|s| s != self.status(state, now)) {
                        continue;
                    }
                    items.push(self.view(Some(info), info.lift_id.as_str(), state, now));
                    if items.len() > limit {
                        break;
                    }
                }
            }
            cursor = infos.last().map(|i| i.lift_id.to_string());
            if items.len() > limit || !more {
                break;
            }
        }
        let next_after = (items.len() > limit).then(|| {
            items.truncate(limit);
            items[limit - 1].lift_id.clone()
        });
        Page { items, next_after }
    }

    /// Registered lifts matching `filter` (and, if given, with one of `lift_ids`), sorted by
    /// id: the SQL `lift_state` table, built for just the lifts a query can return.
    pub fn select(&self, filter: &LiftFilter, lift_ids: Option<&[String]>) -> Vec<LiftView> {
        let now = self.clock.now_us();
        let infos = self.registry.select(filter, lift_ids);
        let fleet = self.read();
        infos
            .iter()
            .map(|info| {
                let state = fleet.get(info.lift_id.as_str());
                self.view(Some(info), info.lift_id.as_str(), state, now)
            })
            .collect()
    }

    /// Counts over the lifts `filter` selects (all: the default filter).
    pub fn summary(&self, filter: &LiftFilter) -> FleetSummary {
        let now = self.clock.now_us();
        let infos = self.registry.all(filter);
        let fleet = self.read();
        let mut s = FleetSummary {
            lifts: infos.len() as u64,
            ..Default::default()
        };
        for info in &infos {
            let state = fleet.get(info.lift_id.as_str());
            match self.status(state, now) {
                LiftStatus::NeverReported => s.never_reported += 1,
                LiftStatus::Reporting => s.reporting += 1,
                LiftStatus::Faulted => s.faulted += 1,
                LiftStatus::Silent => s.silent += 1,
            }
            s.entrapped += state.is_some_and(|s| s.entrapped) as u64;
            s.in_maintenance += state.is_some_and(|s| s.in_maintenance) as u64;
            s.readings_total += state.map_or(0, |s| s.readings_total);
        }
        let whole_fleet =
            filter.building.is_none() && filter.site.is_none() && filter.customer.is_none();
        if whole_fleet {
            s.unregistered_with_state = fleet
                .lift_ids()
                .filter(|id| !self.registry.contains(id))
                .count() as u64;
        }
        s
    }

    /// Number of lifts with state.
    pub fn lifts_with_state(&self) -> usize {
        self.parts.iter().map(|part| part.read().lifts.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use hoistway_model::partition::partition_of;
    use hoistway_model::{DedupWindow, LiftId, ManualClock};

    use super::*;
    use crate::state::tests::reading;

    /// With several partitions each lift is looked up in its own partition's state, and the
    /// lists and counts cover all of them.
    #[test]
    fn a_fleet_over_several_partitions_finds_each_lift_in_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::open(dir.path().join("registry.sqlite3")).unwrap());
        let parts: Vec<_> = (0..4)
            .map(|_| Arc::new(RwLock::new(FleetState::default())))
            .collect();
        let ids: Vec<String> = (0..40).map(|i| format!("L-{i}")).collect();
        for (i, id) in ids.iter().enumerate() {
            let lift = LiftId::new(id).unwrap();
            registry.upsert(LiftInfo::new(lift.clone())).unwrap();
            // Every other lift has reported, into its partition's state.
            if i % 2 == 0 {
                let part = partition_of(&lift, 4) as usize;
                let mut r = reading(1, 1);
                r.lift_id = lift.clone();
                parts[part].write().apply(&r, &DedupWindow::default());
            }
        }
        let used: std::collections::HashSet<_> = ids
            .iter()
            .map(|id| partition_of(&LiftId::new(id).unwrap(), 4))
            .collect();
        assert_eq!(used.len(), 4, "the ids spread over every partition");
        let clock = Arc::new(ManualClock::new(0));
        let fleet = Fleet::partitioned(parts, registry, clock, Duration::from_secs(3600));
        assert_eq!(fleet.partitions(), 4);
        assert_eq!(fleet.lifts_with_state(), 20);
        for (i, id) in ids.iter().enumerate() {
            let view = fleet.lift(id).unwrap();
            assert_eq!(view.readings_total, u64::from(i % 2 == 0), "{id}");
        }
        let summary = fleet.summary(&LiftFilter::default());
        assert_eq!(
            (
                summary.lifts,
                summary.readings_total,
                summary.never_reported
            ),
            (40, 20, 20)
        );
        let page = fleet.list(&ListQuery {
            status: Some(LiftStatus::NeverReported),
            ..Default::default()
        });
        assert_eq!(page.items.len(), 20);
        let presence = fleet.presence();
        assert_eq!(
            presence.iter().filter(|(_, last)| last.is_some()).count(),
            20
        );
    }
}
