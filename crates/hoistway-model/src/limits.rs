//! Valid ranges of the device contract (docs/device-api.md repeats them for firmware authors).
//! A value outside its range is rejected with the field named; nothing is clamped silently.

/// How far ahead of the server clock a device timestamp may be.
pub const MAX_FUTURE_SKEW_SECONDS: i64 = 5 * 60;
/// Readings stamped before this instant (2000-01-01T00:00:00Z) are rejected: a device clock that
/// was never set reports 1970.
pub const MIN_TS_MICROS: i64 = 946_684_800_000_000;

pub const FLOOR: (i64, i64) = (-100, 300);
pub const LOAD_KG: (f64, f64) = (0.0, 20_000.0);
pub const SPEED_MPS: (f64, f64) = (0.0, 25.0);
pub const MOTOR_TEMP_C: (f64, f64) = (-50.0, 250.0);
pub const VIBRATION_MM_S: (f64, f64) = (0.0, 1_000.0);
/// Trips (or door cycles) since the previous reading. Generous so a controller that reports
/// after a long gap is not rejected, but low enough to catch a lifetime total sent by mistake.
pub const TRIPS_PER_READING_MAX: u32 = 10_000;
pub const DOOR_CYCLES_PER_READING_MAX: u32 = 20_000;
pub const FAULTS_MAX: usize = 32;
pub const FAULT_CODE_MAX_LEN: usize = 32;
pub const EVENTS_MAX: usize = 32;
pub const EXTRA_MAX: usize = 32;
pub const EXTRA_KEY_MAX_LEN: usize = 64;
