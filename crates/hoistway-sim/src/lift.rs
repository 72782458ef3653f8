//! One simulated lift: what it does between two readings.

use rand::Rng;
use rand::rngs::SmallRng;
use serde_json::{Value, json};

/// A reading as the lift sends it (JSON), with what the ledger needs.
#[derive(Debug, Clone)]
pub struct SimReading {
    pub seq: u64,
    pub trips: u64,
    pub door_cycles: u64,
    pub json: Value,
}

pub struct SimLift {
    pub id: String,
    pub epoch: u64,
    pub seq: u64,
    floors: i16,
    floor: i16,
    motor_temp_c: f64,
    fault_left: u32,
    fault_code: &'static str,
    trapped_left: u32,
    /// Device-time (µs) until which the lift has no power.
    pub power_off_until_us: Option<i64>,
    pub just_restored: bool,
}

/// Relative traffic by hour of day: morning, lunch and evening peaks, quiet nights.
fn traffic(hour: u32) -> f64 {
    match hour {
        0..=5 => 0.05,
        6 => 0.3,
        7..=9 => 1.0,
        10..=11 => 0.5,
        12..=13 => 0.8,
        14..=16 => 0.5,
        17..=18 => 1.0,
        19..=21 => 0.35,
        _ => 0.15,
    }
}

impl SimLift {
    pub fn new(id: String, rng: &mut SmallRng, epoch: u64) -> Self {
        let floors = rng.random_range(4..40);
        Self {
            id,
            epoch,
            seq: 0,
            floors,
            floor: rng.random_range(0..floors),
            motor_temp_c: rng.random_range(25.0..35.0),
            fault_left: 0,
            fault_code: "",
            trapped_left: 0,
            power_off_until_us: None,
            just_restored: false,
        }
    }

    /// The next reading at device time `ts_us`, covering `interval_s` seconds.
    pub fn next_reading(&mut self, ts_us: i64, interval_s: f64, rng: &mut SmallRng) -> SimReading {
        self.seq += 1;
        let hour = ((ts_us / 3_600_000_000).rem_euclid(24)) as u32;
        // ~1 trip a minute at peak for a 10 s interval
        let expected = traffic(hour) * interval_s / 60.0 * 1.2;
        let mut trips = 0u64;
        let mut p = expected;
        while p > 0.0 {
            if rng.random_bool(p.min(1.0)) {
                trips += 1;
            }
            p -= 1.0;
        }
        let door_cycles = trips
            + if trips > 0 {
                rng.random_range(0..=trips)
            } else {
                0
            };
        let direction = if trips == 0 {
            "idle"
        } else {
            let target = rng.random_range(0..self.floors);
            let dir = if target >= self.floor { "up" } else { "down" };
            self.floor = target;
            dir
        };
        // motor warms with use, cools toward ambient
        self.motor_temp_c += trips as f64 * 0.8 - (self.motor_temp_c - 28.0) * 0.05;
        self.motor_temp_c = self.motor_temp_c.clamp(-20.0, 120.0);
        let load = if direction == "idle" {
            0.0
        } else {
            (rng.random_range(0.0..8.0f64)).floor() * 75.0
        };
        let mut events = Vec::new();
        if self.seq == 1 {
            events.push("startup");
        }
        if self.just_restored {
            events.push("power_restored");
            self.just_restored = false;
        }
        if self.fault_left > 0 {
            self.fault_left -= 1;
        } else if rng.random_bool(0.0005) {
            self.fault_left = rng.random_range(3..30);
            self.fault_code =
                ["E101", "E205", "DOOR_SENSOR", "OVERSPEED", "E330"][rng.random_range(0..5)];
        }
        if self.trapped_left > 0 {
            self.trapped_left -= 1;
            if self.trapped_left == 0 {
                events.push("entrapment_cleared");
            }
        } else if rng.random_bool(0.00005) {
            self.trapped_left = rng.random_range(2..20);
            events.push("entrapment");
            events.push("alarm_button");
        } else if rng.random_bool(0.0002) {
            events.push("alarm_button");
        }
        let faults: Vec<&str> = if self.fault_left > 0 {
            vec![self.fault_code]
        } else {
            vec![]
        };
        let ts = hoistway_model::time::format_micros(ts_us);
        let door = if trips > 0 && rng.random_bool(0.3) {
            ["open", "opening", "closing"][rng.random_range(0..3)]
        } else {
            "closed"
        };
        let json = json!({
            "lift_id": self.id,
            "epoch": self.epoch,
            "seq": self.seq,
            "ts": ts,
            "floor": self.floor,
            "direction": direction,
            "door": door,
            "load_kg": load,
            "speed_mps": if direction == "idle" { 0.0 } else { rng.random_range(0.8..2.5f64) },
            "motor_temp_c": (self.motor_temp_c * 10.0).round() / 10.0,
            "vibration_mm_s": (rng.random_range(0.2..2.0f64) * 100.0).round() / 100.0,
            "trips": trips,
            "door_cycles": door_cycles,
            "faults": faults,
            "events": events,
        });
        SimReading {
            seq: self.seq,
            trips,
            door_cycles,
            json,
        }
    }
}
