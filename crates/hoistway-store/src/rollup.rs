//! Hourly rollup partials: computed from readings batches, merged exactly (sums, minima,
//! maxima and minute masks are all associative), so late readings only add a partial.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float32Array, Float32Builder, Float64Builder, Int64Builder,
    RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::TimestampMicrosecondType;
use arrow::datatypes::{Float32Type, Float64Type, Int32Type, Int64Type};

use crate::schema::{ROLLUP_PARTIALS, col};

const HOUR_US: i64 = 3_600_000_000;
const MINUTE_US: i64 = 60_000_000;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Stat {
    min: Option<f32>,
    max: Option<f32>,
    sum: f64,
    count: i64,
}

impl Stat {
    fn add(&mut self, v: f32) {
        self.min = Some(self.min.map_or(v, |m| m.min(v)));
        self.max = Some(self.max.map_or(v, |m| m.max(v)));
        self.sum += f64::from(v);
        self.count += 1;
    }

    fn merge(&mut self, other: &Stat) {
        if let Some(v) = other.min {
            self.min = Some(self.min.map_or(v, |m| m.min(v)));
        }
        if let Some(v) = other.max {
            self.max = Some(self.max.map_or(v, |m| m.max(v)));
        }
        self.sum += other.sum;
        self.count += other.count;
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Partial {
    readings: i64,
    trips: i64,
    door_cycles: i64,
    stats: [Stat; 3],
    minutes_mask: i64,
    fault_readings: i64,
    events: i64,
    entrapments: i64,
    alarms: i64,
}

impl Partial {
    fn merge(&mut self, o: &Partial) {
        self.readings += o.readings;
        self.trips += o.trips;
        self.door_cycles += o.door_cycles;
        for (s, os) in self.stats.iter_mut().zip(&o.stats) {
            s.merge(os);
        }
        self.minutes_mask |= o.minutes_mask;
        self.fault_readings += o.fault_readings;
        self.events += o.events;
        self.entrapments += o.entrapments;
        self.alarms += o.alarms;
    }
}

type Partials = BTreeMap<(String, i64), Partial>;

fn floats(batch: &RecordBatch, i: usize) -> &Float32Array {
    batch.column(i).as_primitive::<Float32Type>()
}

/// Partials for every (lift, hour) in a readings batch, sorted by (lift, hour).
pub fn partials_of_readings(batches: &[RecordBatch]) -> RecordBatch {
    let mut out = Partials::new();
    for batch in batches {
        let lift = batch.column(col::LIFT_ID).as_string::<i32>();
        let ts = batch
            .column(col::TS)
            .as_primitive::<TimestampMicrosecondType>();
        let trips = batch.column(col::TRIPS).as_primitive::<Int32Type>();
        let doors = batch.column(col::DOOR_CYCLES).as_primitive::<Int32Type>();
        let metrics = [
            floats(batch, col::MOTOR_TEMP),
            floats(batch, col::VIBRATION),
            floats(batch, col::LOAD),
        ];
        let faults = batch.column(col::FAULTS).as_list::<i32>();
        let events = batch.column(col::EVENTS).as_list::<i32>();
        let event_names = events.values().as_string::<i32>();
        for row in 0..batch.num_rows() {
            let t = ts.value(row);
            let hour = t.div_euclid(HOUR_US) * HOUR_US;
            let minute = (t - hour) / MINUTE_US;
            let p = out.entry((lift.value(row).to_owned(), hour)).or_default();
            p.readings += 1;
            p.trips += i64::from(trips.value(row));
            p.door_cycles += i64::from(doors.value(row));
            for (stat, array) in p.stats.iter_mut().zip(&metrics) {
                if array.is_valid(row) {
                    stat.add(array.value(row));
                }
            }
            p.minutes_mask |= 1 << minute;
            if faults.value_length(row) > 0 {
                p.fault_readings += 1;
            }
            let (start, end) = (
                events.value_offsets()[row] as usize,
                events.value_offsets()[row + 1] as usize,
            );
            p.events += (end - start) as i64;
            for e in start..end {
                match event_names.value(e) {
                    "entrapment" => p.entrapments += 1,
                    "alarm_button" => p.alarms += 1,
                    _ => {}
                }
            }
        }
    }
    to_batch(&out)
}

/// Merges partial batches (any order, any overlap) into one partial per (lift, hour).
pub fn merge_partials(batches: &[RecordBatch]) -> RecordBatch {
    let mut out = Partials::new();
    for batch in batches {
        let lift = batch.column(0).as_string::<i32>();
        let hour = batch.column(1).as_primitive::<TimestampMicrosecondType>();
        let int = |i: usize| batch.column(i).as_primitive::<Int64Type>();
        let (readings, trips, doors) = (int(2), int(3), int(4));
        let stat_cols: Vec<_> = (0..3)
            .map(|k| {
                let base = 5 + 4 * k;
                (
                    floats(batch, base),
                    floats(batch, base + 1),
                    batch.column(base + 2).as_primitive::<Float64Type>(),
                    int(base + 3),
                )
            })
            .collect();
        let (mask, faults, events, entrapments, alarms) =
            (int(17), int(18), int(19), int(20), int(21));
        for row in 0..batch.num_rows() {
            let mut p = Partial {
                readings: readings.value(row),
                trips: trips.value(row),
                door_cycles: doors.value(row),
                minutes_mask: mask.value(row),
                fault_readings: faults.value(row),
                events: events.value(row),
                entrapments: entrapments.value(row),
                alarms: alarms.value(row),
                ..Default::default()
            };
            for (stat, (min, max, sum, count)) in p.stats.iter_mut().zip(&stat_cols) {
                *stat = Stat {
                    min: min.is_valid(row).then(|| min.value(row)),
                    max: max.is_valid(row).then(|| max.value(row)),
                    sum: sum.value(row),
                    count: count.value(row),
                };
            }
            out.entry((lift.value(row).to_owned(), hour.value(row)))
                .or_default()
                .merge(&p);
        }
    }
    to_batch(&out)
}

fn to_batch(partials: &Partials) -> RecordBatch {
    let n = partials.len();
    let mut lift = StringBuilder::with_capacity(n, n * 12);
    let mut hour = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut ints: Vec<Int64Builder> = (0..3).map(|_| Int64Builder::with_capacity(n)).collect();
    let mut stat_builders: Vec<(Float32Builder, Float32Builder, Float64Builder, Int64Builder)> = (0
        ..3)
        .map(|_| {
            (
                Float32Builder::with_capacity(n),
                Float32Builder::with_capacity(n),
                Float64Builder::with_capacity(n),
                Int64Builder::with_capacity(n),
            )
        })
        .collect();
    let mut tail: Vec<Int64Builder> = (0..5).map(|_| Int64Builder::with_capacity(n)).collect();
    for ((l, h), p) in partials {
        lift.append_value(l);
        hour.append_value(*h);
        ints[0].append_value(p.readings);
        ints[1].append_value(p.trips);
        ints[2].append_value(p.door_cycles);
        for (b, s) in stat_builders.iter_mut().zip(&p.stats) {
            b.0.append_option(s.min);
            b.1.append_option(s.max);
            b.2.append_value(s.sum);
            b.3.append_value(s.count);
        }
        for (b, v) in tail.iter_mut().zip([
            p.minutes_mask,
            p.fault_readings,
            p.events,
            p.entrapments,
            p.alarms,
        ]) {
            b.append_value(v);
        }
    }
    let mut columns: Vec<ArrayRef> = vec![Arc::new(lift.finish()), Arc::new(hour.finish())];
    columns.extend(ints.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    for (a, b, c, d) in &mut stat_builders {
        columns.push(Arc::new(a.finish()));
        columns.push(Arc::new(b.finish()));
        columns.push(Arc::new(c.finish()));
        columns.push(Arc::new(d.finish()));
    }
    columns.extend(tail.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    RecordBatch::try_new(ROLLUP_PARTIALS.clone(), columns).expect("columns match the rollup schema")
}
