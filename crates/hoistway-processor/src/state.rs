//! Per-lift state and the rule that applies one reading to it (pure: no I/O).

use std::collections::HashMap;

use hoistway_model::{
    DedupWindow, Direction, DoorState, EventKind, LiftDedup, LiftId, Reading, Seen,
};
use serde::{Deserialize, Serialize};

/// The latest known state of one lift and its exact lifetime counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiftState {
    pub lift_id: LiftId,
    /// `(epoch, seq)` of the newest reading in the controller's order: "latest" fields below
    /// come from it, so a resent backlog never overwrites newer data.
    pub epoch: u64,
    pub last_seq: u64,
    pub last_ts_us: i64,
    /// When the server last received any reading from this lift (live or backlog).
    pub last_received_us: i64,
    pub floor: i16,
    pub direction: Direction,
    pub door: DoorState,
    pub load_kg: Option<f32>,
    pub speed_mps: Option<f32>,
    pub motor_temp_c: Option<f32>,
    pub vibration_mm_s: Option<f32>,
    pub faults: Vec<String>,
    /// An entrapment was reported and not yet cleared.
    pub entrapped: bool,
    pub in_maintenance: bool,
    pub readings_total: u64,
    /// Trips reported by readings (the registry's initial count is added when shown).
    pub trips_reported: u64,
    pub door_cycles_total: u64,
    pub events_total: u64,
    pub dedup: LiftDedup,
}

/// What applying a reading did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    New,
    Duplicate,
    OutsideWindow,
}

impl LiftState {
    /// The lifetime counters, with the registry's initial trip count added.
    pub fn counters(&self, initial_trips: u64) -> crate::Counters {
        crate::Counters {
            readings_total: self.readings_total,
            trips_total: initial_trips + self.trips_reported,
            door_cycles_total: self.door_cycles_total,
            events_total: self.events_total,
        }
    }

    fn from_first(r: &Reading) -> Self {
        LiftState {
            lift_id: r.lift_id.clone(),
            epoch: r.epoch,
            last_seq: r.seq,
            last_ts_us: r.ts_us,
            last_received_us: r.received_us,
            floor: r.floor,
            direction: r.direction,
            door: r.door,
            load_kg: r.load_kg,
            speed_mps: r.speed_mps,
            motor_temp_c: r.motor_temp_c,
            vibration_mm_s: r.vibration_mm_s,
            faults: Vec::new(),
            entrapped: false,
            in_maintenance: false,
            readings_total: 0,
            trips_reported: 0,
            door_cycles_total: 0,
            events_total: 0,
            dedup: LiftDedup::default(),
        }
    }

    fn apply(&mut self, r: &Reading, window: &DedupWindow) -> Applied {
        match self.dedup.insert(r.epoch, r.seq, window) {
            Seen::Duplicate => return Applied::Duplicate,
            Seen::OutsideWindow => return Applied::OutsideWindow,
            Seen::New => {}
        }
        self.readings_total += 1;
        self.trips_reported += r.trips as u64;
        self.door_cycles_total += r.door_cycles as u64;
        self.events_total += r.events.len() as u64;
        self.last_received_us = self.last_received_us.max(r.received_us);
        if self.readings_total == 1 || r.is_after(self.epoch, self.last_seq) {
            self.epoch = r.epoch;
            self.last_seq = r.seq;
            self.last_ts_us = r.ts_us;
            self.floor = r.floor;
            self.direction = r.direction;
            self.door = r.door;
            self.load_kg = r.load_kg.or(self.load_kg);
            self.speed_mps = r.speed_mps.or(self.speed_mps);
            self.motor_temp_c = r.motor_temp_c.or(self.motor_temp_c);
            self.vibration_mm_s = r.vibration_mm_s.or(self.vibration_mm_s);
            self.faults.clone_from(&r.faults);
            for e in &r.events {
                match e {
                    EventKind::Entrapment => self.entrapped = true,
                    EventKind::EntrapmentCleared => self.entrapped = false,
                    EventKind::MaintenanceOn => self.in_maintenance = true,
                    EventKind::MaintenanceOff => self.in_maintenance = false,
                    _ => {}
                }
            }
        }
        Applied::New
    }
}

/// Every lift's state, as of log offset `offset` (everything below it is applied).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetState {
    pub offset: u64,
    pub lifts: HashMap<LiftId, LiftState>,
}

impl FleetState {
    pub fn apply(&mut self, r: &Reading, window: &DedupWindow) -> Applied {
        match self.lifts.get_mut(&r.lift_id) {
            Some(state) => state.apply(r, window),
            None => {
                let mut state = LiftState::from_first(r);
                let applied = state.apply(r, window);
                self.lifts.insert(r.lift_id.clone(), state);
                applied
            }
        }
    }

    /// A copy of every lift's dedup index (to seed the ingest sequencer).
    pub fn dedup_index(&self) -> HashMap<LiftId, LiftDedup> {
        self.lifts
            .iter()
            .map(|(k, v)| (k.clone(), v.dedup.clone()))
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn reading(seq: u64, trips: u32) -> Reading {
        Reading {
            lift_id: LiftId::new("L1").unwrap(),
            epoch: 0,
            seq,
            ts_us: 1_700_000_000_000_000 + seq as i64 * 10_000_000,
            received_us: 1_700_000_000_000_000 + seq as i64 * 10_000_000,
            floor: seq as i16,
            direction: Direction::Up,
            door: DoorState::Closed,
            load_kg: Some(100.0),
            speed_mps: None,
            motor_temp_c: Some(40.0),
            vibration_mm_s: None,
            trips,
            door_cycles: trips * 2,
            faults: vec![],
            events: vec![],
            extra: Default::default(),
        }
    }

    #[test]
    fn a_resent_backlog_counts_once_and_never_overwrites_latest() {
        let w = DedupWindow::default();
        let mut fleet = FleetState::default();
        for seq in [1, 2, 5, 6] {
            assert_eq!(fleet.apply(&reading(seq, 1), &w), Applied::New);
        }
        // backlog 3, 4 arrives after 6, with a duplicate of 5
        assert_eq!(fleet.apply(&reading(4, 3), &w), Applied::New);
        assert_eq!(fleet.apply(&reading(5, 1), &w), Applied::Duplicate);
        assert_eq!(fleet.apply(&reading(3, 3), &w), Applied::New);
        let s = &fleet.lifts[&LiftId::new("L1").unwrap()];
        assert_eq!(s.readings_total, 6);
        assert_eq!(s.trips_reported, 10);
        assert_eq!(s.door_cycles_total, 20);
        assert_eq!(s.last_seq, 6);
        assert_eq!(s.floor, 6);
    }

    #[test]
    fn entrapment_and_maintenance_follow_the_latest_reading() {
        let w = DedupWindow::default();
        let mut fleet = FleetState::default();
        let mut r = reading(10, 0);
        r.events = vec![EventKind::Entrapment];
        fleet.apply(&r, &w);
        let mut old = reading(5, 0);
        old.events = vec![EventKind::EntrapmentCleared];
        fleet.apply(&old, &w);
        assert!(
            fleet.lifts[&r.lift_id].entrapped,
            "an older clear does not undo a newer entrapment"
        );
        let mut clear = reading(11, 0);
        clear.events = vec![EventKind::EntrapmentCleared, EventKind::MaintenanceOn];
        fleet.apply(&clear, &w);
        let s = &fleet.lifts[&r.lift_id];
        assert!(!s.entrapped && s.in_maintenance);
        assert_eq!(s.events_total, 4);
    }
}
