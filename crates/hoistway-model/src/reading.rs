//! One telemetry reading, as accepted (validated and normalised) by ingest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::LiftId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Up,
    Down,
    Idle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DoorState {
    Open,
    Closed,
    Opening,
    Closing,
    Obstructed,
}

/// Discrete events a controller reports alongside a reading.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    AlarmButton,
    Entrapment,
    EntrapmentCleared,
    EmergencyStop,
    PowerLoss,
    PowerRestored,
    MaintenanceOn,
    MaintenanceOff,
    Startup,
}

impl EventKind {
    pub const ALL: [EventKind; 9] = [
        EventKind::AlarmButton,
        EventKind::Entrapment,
        EventKind::EntrapmentCleared,
        EventKind::EmergencyStop,
        EventKind::PowerLoss,
        EventKind::PowerRestored,
        EventKind::MaintenanceOn,
        EventKind::MaintenanceOff,
        EventKind::Startup,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::AlarmButton => "alarm_button",
            EventKind::Entrapment => "entrapment",
            EventKind::EntrapmentCleared => "entrapment_cleared",
            EventKind::EmergencyStop => "emergency_stop",
            EventKind::PowerLoss => "power_loss",
            EventKind::PowerRestored => "power_restored",
            EventKind::MaintenanceOn => "maintenance_on",
            EventKind::MaintenanceOff => "maintenance_off",
            EventKind::Startup => "startup",
        }
    }
}

/// The identity of a reading: a lift's controller numbers its readings `seq` within a
/// sequence `epoch`; a new controller (or a reset counter) starts a new, larger epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReadingKey {
    pub lift_id: LiftId,
    pub epoch: u64,
    pub seq: u64,
}

/// A validated reading. Timestamps are microseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reading {
    pub lift_id: LiftId,
    pub epoch: u64,
    pub seq: u64,
    /// Device clock, normalised to UTC.
    pub ts_us: i64,
    /// Server clock when ingest received the reading.
    pub received_us: i64,
    pub floor: i16,
    pub direction: Direction,
    pub door: DoorState,
    pub load_kg: Option<f32>,
    pub speed_mps: Option<f32>,
    pub motor_temp_c: Option<f32>,
    pub vibration_mm_s: Option<f32>,
    pub trips: u32,
    pub door_cycles: u32,
    /// Active fault codes, sorted and without duplicates.
    pub faults: Vec<String>,
    pub events: Vec<EventKind>,
    /// Model-specific numeric metrics.
    pub extra: BTreeMap<String, f64>,
}

impl Reading {
    pub fn key(&self) -> ReadingKey {
        ReadingKey {
            lift_id: self.lift_id.clone(),
            epoch: self.epoch,
            seq: self.seq,
        }
    }

    /// Whether this reading is newer than one stamped `(epoch, seq)` in the controller's order.
    pub fn is_after(&self, epoch: u64, seq: u64) -> bool {
        (self.epoch, self.seq) > (epoch, seq)
    }
}
