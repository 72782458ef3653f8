//! The rules' cost per reading: the eight default rules plus the twelve of `hoistway bench`
//! evaluated over in-order readings of 10,000 lifts, the shape of a steady fleet.
//!
//! `cargo bench -p hoistway-alerts --bench evaluate`

use std::cell::Cell;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hoistway_alerts::{Engine, EngineConfig, rule};
use hoistway_model::{Direction, DoorState, LiftId, Reading};
use hoistway_processor::{Counters, SinkItem};
use hoistway_registry::LiftInfo;

const LIFTS: usize = 10_000;
const T0: i64 = 1_700_000_000_000_000;

fn lifts() -> Vec<Arc<LiftInfo>> {
    (0..LIFTS)
        .map(|i| {
            let mut info = LiftInfo::new(LiftId::new(&format!("BENCH-{i:06}")).expect("an id"));
            info.building = format!("BB{:05}", i % 100);
            info.customer = format!("C{}", i % 7);
            Arc::new(info)
        })
        .collect()
}

/// One reading of every lift, the `seq`th of each.
fn batch(lifts: &[Arc<LiftInfo>], seq: u64) -> Vec<SinkItem> {
    lifts
        .iter()
        .map(|lift| {
            let ts_us = T0 + seq as i64 * 10_000_000;
            SinkItem {
                reading: Reading {
                    lift_id: lift.lift_id.clone(),
                    epoch: 1,
                    seq,
                    ts_us,
                    received_us: ts_us,
                    floor: 3,
                    direction: Direction::Up,
                    door: DoorState::Closed,
                    load_kg: Some(240.0),
                    speed_mps: Some(1.6),
                    motor_temp_c: Some(41.5),
                    vibration_mm_s: Some(0.8),
                    trips: 1,
                    door_cycles: 2,
                    faults: vec![],
                    events: vec![],
                    extra: Default::default(),
                },
                counted: true,
                counters: Counters {
                    readings_total: seq,
                    trips_total: seq,
                    door_cycles_total: 2 * seq,
                    events_total: 0,
                },
                lift: lift.clone(),
            }
        })
        .collect()
}

fn evaluate(c: &mut Criterion) {
    let lifts = lifts();
    let mut rules = rule::default_rules();
    rules.extend(rule::parse_rule_file(&rule::benchmark_rules()).expect("the bench rules"));
    let mut group = c.benchmark_group("evaluate");
    group.throughput(Throughput::Elements(LIFTS as u64));
    group.sample_size(20);
    for (name, rules) in [("no rules", vec![]), ("20 rules", rules)] {
        let mut engine = Engine::new(EngineConfig::default(), rules, T0);
        let seq = Cell::new(0u64);
        let mut out = Vec::new();
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || {
                    seq.set(seq.get() + 1);
                    batch(&lifts, seq.get())
                },
                |items| {
                    for item in items.iter() {
                        engine.evaluate(item, T0, &mut out);
                    }
                    out.clear();
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, evaluate);
criterion_main!(benches);
