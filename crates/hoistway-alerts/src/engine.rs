//! The rule engine: accepted readings (and the passing of time) in, [`Change`]s out.
//!
//! It is deterministic: the same readings give the same changes with the same keys, whatever
//! order they arrive in, as long as each lift's readings arrive within the reorder wait.
//! - Counter crossings need no state: a reading that counted raised the lifetime counter from
//!   `after - delta` to `after`, and each threshold passed in between fires once, keyed by the
//!   threshold. The processor applies each reading exactly once, so each crossing is seen once
//!   per run, and the key makes a replay after a crash a no-op.
//! - Events fire (and clear) per reading, keyed by the reading's `(epoch, seq)`.
//! - Thresholds and faults follow each lift's `(epoch, seq)` order: a reading that is not the
//!   next one waits (at most `reorder_wait`) for those before it, so a shuffled backlog is
//!   evaluated in the order the lift produced it. Durations are in device time.
//! - Absence is evaluated on [`Engine::tick`] by the injected clock, after a grace period
//!   from start, with a fleet-wide guard.
//!
//! The engine holds no I/O; `crate::Alerts` feeds it and stores what it returns.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use hoistway_model::{EventKind, Reading};
use hoistway_processor::SinkItem;
use hoistway_registry::LiftInfo;
use serde::{Deserialize, Serialize};

use crate::lifecycle::{Change, ChangeKind};
use crate::rule::{Condition, INGEST_OUTAGE, Rule, Severity};

const US: i64 = 1_000_000;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The server's definition of silent (`processor.silent_after_secs`).
    pub silent_after_secs: u64,
    /// No lift is declared offline before this long after start.
    pub grace_secs: u64,
    /// More than this share of reporting lifts going silent at once raises one ingest
    /// outage alert instead of one alert per lift …
    pub outage_fraction: f64,
    /// … provided they are at least this many.
    pub outage_min_lifts: usize,
    /// How long a reading waits for the readings before it (ordered rules).
    pub reorder_wait_secs: u64,
    /// Readings held per lift before the oldest is evaluated anyway.
    pub max_held_per_lift: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            silent_after_secs: 60,
            grace_secs: 60,
            outage_fraction: 0.2,
            outage_min_lifts: 10,
            reorder_wait_secs: 30,
            max_held_per_lift: 64,
        }
    }
}

/// The state of one ordered rule on one lift.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Level {
    /// Consecutive readings beyond the limit, and the device time of the first.
    count: u32,
    since_ts: Option<i64>,
    firing: bool,
    /// Device time since which readings are back past the clearing level.
    clear_since_ts: Option<i64>,
}

struct Held {
    reading: Reading,
    lift: Arc<LiftInfo>,
    arrived_us: i64,
}

/// What the engine keeps of one lift. Looked up once per reading; the per-rule parts are short
/// lists (most lifts have no rule in a non-default state), scanned rather than hashed.
#[derive(Default)]
struct LiftEval {
    last: Option<(u64, u64)>,
    held: BTreeMap<(u64, u64), Held>,
    /// The ordered rules not in their default state.
    levels: Vec<(String, Level)>,
    /// Each rate rule's count this hour.
    rates: Vec<(String, RateCount)>,
    /// The rules whose scope covers the lift (indexes into the engine's rules), worked out
    /// again when the rules or the lift's registry entry change: a scope is a few string
    /// comparisons, a third of the evaluation's time when done for every reading.
    matching: Vec<u32>,
    matching_for: Option<(u64, Arc<LiftInfo>)>,
}

/// What survives a restart (written at every checkpoint with the offset it reflects).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`SNAPSHOT_VERSION`] when written; a newer one is refused.
    #[serde(default = "first_version")]
    pub version: u32,
    /// The log offset the snapshot reflects: records below it were evaluated.
    pub offset: u64,
    pub lifts: Vec<LiftSnapshot>,
    pub offline: Vec<(String, String)>,
    pub maintenance: Vec<String>,
    pub outage: bool,
}

/// One lift in a snapshot: its id, its place in its order, and the state of each ordered rule.
pub type LiftSnapshot = (String, Option<(u64, u64)>, Vec<(String, Level)>);

/// The engine snapshot format this build writes and the newest it reads.
pub const SNAPSHOT_VERSION: u32 = 1;

fn first_version() -> u32 {
    1
}

/// A change with whether it should notify (a lift in maintenance records, but stays quiet).
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluated {
    pub change: Change,
    pub quiet: bool,
}

/// A rate rule's count on one lift in the current hour.
#[derive(Debug, Clone, Default)]
struct RateCount {
    hour_us: i64,
    count: u64,
    firing: bool,
}

/// The baselines of a rate rule for one hour of the week: per lift.
struct Baselines {
    hour_us: i64,
    per_lift: HashMap<String, f64>,
}

pub const HOUR_US: i64 = 3_600 * US;

pub struct Engine {
    config: EngineConfig,
    baselines: HashMap<String, Baselines>,
    rules: Vec<Arc<Rule>>,
    /// Raised whenever the rules change (each lift's `matching` is then worked out again).
    rules_generation: u64,
    started_us: i64,
    lifts: hashbrown::HashMap<String, LiftEval>,
    with_held: BTreeSet<String>,
    /// (rule, lift) with an open absence alert.
    offline: HashSet<(String, String)>,
    /// The lifts in `offline`, so that a reading looks them up without building a key.
    offline_lifts: HashSet<String>,
    maintenance: HashSet<String>,
    outage: bool,
    /// Why no lift is declared offline for now (readings may still be on their way: an edge
    /// region out of contact), if so.
    absence_held: Option<String>,
    /// Lifts newly silent at the last tick of the other engines (on other processor nodes,
    /// each over its own partitions), for the outage guard's minimum.
    silent_elsewhere: usize,
    /// Lifts newly silent at this engine's last tick.
    silent_here: usize,
}

impl Engine {
    pub fn new(config: EngineConfig, rules: Vec<Rule>, started_us: i64) -> Self {
        Self {
            config,
            baselines: HashMap::new(),
            rules: rules
                .into_iter()
                .filter(|r| r.enabled)
                .map(Arc::new)
                .collect(),
            rules_generation: 0,
            started_us,
            lifts: hashbrown::HashMap::new(),
            with_held: BTreeSet::new(),
            offline: HashSet::new(),
            offline_lifts: HashSet::new(),
            maintenance: HashSet::new(),
            outage: false,
            absence_held: None,
            silent_elsewhere: 0,
            silent_here: 0,
        }
    }

    /// Tells the outage guard how many lifts the other engines found newly silent at their last
    /// tick (processor nodes that spread the partitions: each engine sees its own lifts). The
    /// guard then fires when this engine's own lifts went silent in the outage fraction and
    /// the fleet as a whole in at least the outage minimum: lifts are spread over partitions by
    /// a hash of their id, so an outage of the whole fleet shows in every engine's share.
    pub fn set_silent_elsewhere(&mut self, lifts: usize) {
        self.silent_elsewhere = lifts;
    }

    /// How many lifts this engine found newly silent at its last tick (for the others' guard).
    pub fn silent_here(&self) -> usize {
        self.silent_here
    }

    /// Forgets everything about the lifts `drop` selects (a partition another engine takes
    /// over): their rule states, offline marks and maintenance.
    pub fn forget(&mut self, drop: impl Fn(&str) -> bool) {
        self.lifts.retain(|id, _| !drop(id));
        self.with_held.retain(|id| !drop(id));
        self.offline.retain(|(_, lift)| !drop(lift));
        self.offline_lifts.retain(|lift| !drop(lift));
        self.maintenance.retain(|lift| !drop(lift));
    }

    /// Holds absence rules (no lift goes offline, an outage neither fires nor clears) while
    /// `why` is given: readings may still be on their way. Other rules go on.
    pub fn hold_absence(&mut self, why: Option<String>) {
        if why != self.absence_held {
            match &why {
                Some(why) => tracing::info!(%why, "absence rules wait"),
                None => tracing::info!("absence rules judge again"),
            }
        }
        metrics::gauge!("hoistway_alerts_absence_held").set(f64::from(u8::from(why.is_some())));
        self.absence_held = why;
    }

    /// Replaces the rules. The state of a rule whose definition changed starts over; an alert
    /// it has open stays open (a fire of the same condition counts as a re-fire).
    /// Whether `rules` (as the store lists them) are the ones this engine evaluates.
    pub fn has_rules(&self, rules: &[Rule]) -> bool {
        let mut enabled = rules.iter().filter(|r| r.enabled);
        self.rules.len() == rules.iter().filter(|r| r.enabled).count()
            && self
                .rules
                .iter()
                .all(|r| enabled.next().is_some_and(|e| **r == *e))
    }

    pub fn set_rules(&mut self, rules: Vec<Rule>) {
        let old: HashMap<String, Arc<Rule>> = self
            .rules
            .iter()
            .map(|r| (r.id.clone(), r.clone()))
            .collect();
        self.rules = rules
            .into_iter()
            .filter(|r| r.enabled)
            .map(Arc::new)
            .collect();
        self.rules_generation += 1;
        let unchanged: HashSet<&str> = self
            .rules
            .iter()
            .filter(|r| old.get(&r.id).is_some_and(|o| **o == ***r))
            .map(|r| r.id.as_str())
            .collect();
        for eval in self.lifts.values_mut() {
            eval.levels
                .retain(|(rule, _)| unchanged.contains(rule.as_str()));
            eval.rates
                .retain(|(rule, _)| unchanged.contains(rule.as_str()));
        }
    }

    /// The rate rules: id, counter and how many weeks their baseline spans.
    pub fn rate_rules(&self) -> Vec<(String, crate::rule::Counter, u32)> {
        self.rules
            .iter()
            .filter_map(|r| match r.when {
                Condition::Rate { counter, weeks, .. } => Some((r.id.clone(), counter, weeks)),
                _ => None,
            })
            .collect()
    }

    /// The hour (start, µs) the baselines of rate rule `rule` were set for.
    pub fn baseline_hour(&self, rule: &str) -> Option<i64> {
        self.baselines.get(rule).map(|b| b.hour_us)
    }

    /// Sets the baselines of rate rule `rule` for the hour starting at `hour_us`.
    pub fn set_baselines(&mut self, rule: &str, hour_us: i64, per_lift: HashMap<String, f64>) {
        self.baselines
            .insert(rule.to_string(), Baselines { hour_us, per_lift });
    }

    /// Marks lifts offline whose absence alert is open (from the store, at start).
    pub fn set_offline(&mut self, rule_and_lift: impl IntoIterator<Item = (String, String)>) {
        for (rule, lift) in rule_and_lift {
            self.offline_lifts.insert(lift.clone());
            self.offline.insert((rule, lift));
        }
    }

    pub fn snapshot(&self, offset: u64) -> Snapshot {
        self.snapshot_of(offset, |_| true)
    }

    /// The snapshot of the lifts `keep` selects (one partition's, say): per-lift state of those
    /// only, and the fleet-wide outage flag.
    pub fn snapshot_of(&self, offset: u64, keep: impl Fn(&str) -> bool) -> Snapshot {
        let mut lifts: Vec<_> = self
            .lifts
            .iter()
            .filter(|(id, _)| keep(id))
            .filter(|(_, e)| e.levels.iter().any(|(_, l)| *l != Level::default()))
            .map(|(id, e)| {
                let levels = e
                    .levels
                    .iter()
                    .filter(|(_, l)| *l != Level::default())
                    .map(|(r, l)| (r.clone(), l.clone()))
                    .collect();
                (id.clone(), e.last, levels)
            })
            .collect();
        lifts.sort_by(|a, b| a.0.cmp(&b.0));
        let mut offline: Vec<_> = self
            .offline
            .iter()
            .filter(|(_, lift)| keep(lift))
            .cloned()
            .collect();
        offline.sort();
        let mut maintenance: Vec<_> = self
            .maintenance
            .iter()
            .filter(|lift| keep(lift))
            .cloned()
            .collect();
        maintenance.sort();
        Snapshot {
            version: SNAPSHOT_VERSION,
            offset,
            lifts,
            offline,
            maintenance,
            outage: self.outage,
        }
    }

    /// Takes a snapshot's state in (several, one partition's each, add up; the outage flag is
    /// set if any says so).
    pub fn restore(&mut self, snapshot: Snapshot) {
        for (lift, last, levels) in snapshot.lifts {
            let eval = self.lifts.entry(lift).or_default();
            eval.last = last;
            eval.levels = levels.into_iter().collect();
        }
        self.set_offline(snapshot.offline);
        self.maintenance.extend(snapshot.maintenance);
        self.outage |= snapshot.outage;
    }

    /// Evaluates one accepted reading. `now_us` is the server clock (for the reorder wait).
    pub fn evaluate(&mut self, item: &SinkItem, now_us: i64, out: &mut Vec<Evaluated>) {
        if !item.counted {
            return;
        }
        let r = &item.reading;
        let lift_id = r.lift_id.as_str();
        if r.events.contains(&EventKind::MaintenanceOn) {
            self.maintenance.insert(lift_id.to_string());
        }
        let quiet = self.maintenance.contains(lift_id);
        if r.events.contains(&EventKind::MaintenanceOff) {
            self.maintenance.remove(lift_id);
        }
        let mut ordered = false;
        // The lift is looked up once per reading; its key is allocated only the first time.
        let eval = self.lifts.entry_ref(lift_id).or_default();
        let generation = self.rules_generation;
        if !eval
            .matching_for
            .as_ref()
            .is_some_and(|(g, lift)| *g == generation && Arc::ptr_eq(lift, &item.lift))
        {
            eval.matching = (0..self.rules.len() as u32)
                .filter(|i| self.rules[*i as usize].scope.matches(&item.lift))
                .collect();
            eval.matching_for = Some((generation, item.lift.clone()));
        }
        for &at in &eval.matching {
            let rule = &self.rules[at as usize];
            let change = |kind, key: String, summary: String, value| Evaluated {
                change: change(rule, &item.lift, kind, key, r.received_us, summary, value),
                quiet,
            };
            match &rule.when {
                Condition::CounterCrossing { counter, at, every } => {
                    let (after, delta) = counter.read(&item.counters, r);
                    let index = |v: u64| match v.checked_sub(*at) {
                        None => 0,
                        Some(over) => 1 + every.map_or(0, |e| over / e),
                    };
                    let (k_before, k_after) = (index(after.saturating_sub(delta)), index(after));
                    if k_after > k_before {
                        let passed = at + (k_after - 1) * every.unwrap_or(0);
                        out.push(change(
                            ChangeKind::Fire,
                            format!("{}/{lift_id}/cross/{k_after}", rule.id),
                            format!("{} passed {passed} ({after})", counter.as_str()),
                            Some(after as f64),
                        ));
                    }
                }
                Condition::Event { events, clear_on } => {
                    if let Some(e) = r.events.iter().find(|e| events.contains(e)) {
                        out.push(change(
                            ChangeKind::Fire,
                            format!("{}/{lift_id}/{}.{}/fire", rule.id, r.epoch, r.seq),
                            format!("{} reported", e.as_str()),
                            None,
                        ));
                    }
                    if let Some(e) = r.events.iter().find(|e| clear_on.contains(e)) {
                        out.push(change(
                            ChangeKind::Clear,
                            format!("{}/{lift_id}/{}.{}/clear", rule.id, r.epoch, r.seq),
                            format!("{} reported", e.as_str()),
                            None,
                        ));
                    }
                }
                Condition::Rate {
                    counter,
                    factor,
                    min_count,
                    ..
                } => {
                    let (_, delta) = counter.read(&item.counters, r);
                    let hour = r.ts_us.div_euclid(HOUR_US) * HOUR_US;
                    let at = match eval.rates.iter().position(|(id, _)| *id == rule.id) {
                        Some(at) => at,
                        None => {
                            eval.rates.push((rule.id.clone(), RateCount::default()));
                            eval.rates.len() - 1
                        }
                    };
                    let count = &mut eval.rates[at].1;
                    if hour < count.hour_us {
                        continue; // a late reading of an hour already judged
                    }
                    if hour > count.hour_us {
                        if count.firing {
                            out.push(change(
                                ChangeKind::Clear,
                                format!("{}/{lift_id}/rate/{}/clear", rule.id, count.hour_us),
                                format!("{} back to usual", counter.as_str()),
                                None,
                            ));
                        }
                        *count = RateCount {
                            hour_us: hour,
                            ..RateCount::default()
                        };
                    }
                    count.count += delta;
                    let baseline = self
                        .baselines
                        .get(&rule.id)
                        .filter(|b| b.hour_us == hour)
                        .and_then(|b| b.per_lift.get(lift_id));
                    if let Some(&baseline) = baseline
                        && !count.firing
                        && count.count >= *min_count
                        && count.count as f64 > factor * baseline
                    {
                        count.firing = true;
                        out.push(change(
                            ChangeKind::Fire,
                            format!("{}/{lift_id}/rate/{hour}", rule.id),
                            format!(
                                "{} rose by {} this hour; usual for this hour of the week: {baseline}",
                                counter.as_str(),
                                count.count
                            ),
                            Some(count.count as f64),
                        ));
                    }
                }
                Condition::Absence { .. } => {
                    if self.offline_lifts.contains(lift_id)
                        && self.offline.remove(&(rule.id.clone(), lift_id.to_string()))
                    {
                        let still = self.rules.iter().any(|other| {
                            matches!(other.when, Condition::Absence { .. })
                                && self
                                    .offline
                                    .contains(&(other.id.clone(), lift_id.to_string()))
                        });
                        if !still {
                            self.offline_lifts.remove(lift_id);
                        }
                        out.push(change(
                            ChangeKind::Clear,
                            format!("{}/{lift_id}/back/{}", rule.id, r.received_us),
                            "reporting again".into(),
                            None,
                        ));
                    }
                }
                Condition::Threshold { .. } | Condition::Fault { .. } => ordered = true,
            }
        }
        if !ordered {
            return;
        }
        // Through the lift's reorder buffer to the ordered rules.
        let key = (r.epoch, r.seq);
        if eval.last.is_some_and(|last| key <= last) {
            // Its place in the order has passed (the wait ran out): too late for ordered rules.
            metrics::counter!("hoistway_alerts_late_readings_total").increment(1);
            return;
        }
        if eval.held.is_empty() && (eval.last.is_none() || is_next(eval.last, key)) {
            eval.last = Some(key);
            let rules = eval.matching.iter().map(|at| &self.rules[*at as usize]);
            evaluate_ordered(rules, &mut eval.levels, r, &item.lift, quiet, out);
            return;
        }
        eval.held.insert(
            key,
            Held {
                reading: r.clone(),
                lift: item.lift.clone(),
                arrived_us: now_us,
            },
        );
        let limit = self.config.max_held_per_lift;
        release(&self.rules, &self.maintenance, eval, limit, false, out);
        if eval.held.is_empty() {
            self.with_held.remove(r.lift_id.as_str());
        } else {
            self.with_held.insert(r.lift_id.as_str().to_string());
        }
    }

    /// Time passes: held readings whose wait ran out are evaluated; silent lifts go offline.
    /// `presence` lists every registered lift with the server time of its last reading.
    pub fn tick(
        &mut self,
        now_us: i64,
        presence: impl IntoIterator<Item = (Arc<LiftInfo>, Option<i64>)>,
        out: &mut Vec<Evaluated>,
    ) {
        let wait = self.config.reorder_wait_secs as i64 * US;
        let due: Vec<String> = self
            .with_held
            .iter()
            .filter(|id| {
                self.lifts[id.as_str()]
                    .held
                    .values()
                    .any(|h| now_us - h.arrived_us >= wait)
            })
            .cloned()
            .collect();
        for id in due {
            let eval = self.lifts.get_mut(&id).expect("held lift");
            release(&self.rules, &self.maintenance, eval, 0, true, out);
            self.with_held.remove(&id);
        }
        if now_us - self.started_us < self.config.grace_secs as i64 * US
            || self.absence_held.is_some()
        {
            return;
        }
        self.absence(now_us, presence, out);
    }

    fn absence(
        &mut self,
        now_us: i64,
        presence: impl IntoIterator<Item = (Arc<LiftInfo>, Option<i64>)>,
        out: &mut Vec<Evaluated>,
    ) {
        let rules: Vec<(Arc<Rule>, i64)> = self
            .rules
            .iter()
            .filter_map(|r| match r.when {
                Condition::Absence { after_secs } => Some((
                    r.clone(),
                    after_secs.unwrap_or(self.config.silent_after_secs) as i64 * US,
                )),
                _ => None,
            })
            .collect();
        if rules.is_empty() {
            return;
        }
        let mut reporting = 0usize;
        let mut newly = Vec::new();
        for (lift, last) in presence {
            let Some(last) = last else { continue };
            reporting += 1;
            for (rule, after) in &rules {
                if now_us - last > *after
                    && rule.scope.matches(&lift)
                    && !self
                        .offline
                        .contains(&(rule.id.clone(), lift.lift_id.as_str().to_string()))
                {
                    newly.push((rule.clone(), lift.clone(), last));
                }
            }
        }
        // Of this engine's lifts, the outage fraction (at least one); of the fleet's, the
        // minimum (with one engine, the same as "at least the larger of the two").
        let share_limit = ((reporting as f64 * self.config.outage_fraction).ceil() as usize).max(1);
        self.silent_here = newly.len();
        let fleet = LiftInfo::new(hoistway_model::LiftId::new("fleet").expect("a valid id"));
        let outage_rule = Rule {
            id: INGEST_OUTAGE.into(),
            name: "Ingest outage: many lifts silent at once".into(),
            description: String::new(),
            severity: Severity::Critical,
            scope: Default::default(),
            enabled: true,
            hold_secs: 0,
            when: Condition::Absence { after_secs: None },
        };
        let silent = newly.len();
        // The fleet-wide alert: not of any one lift.
        let mut outage = |kind, tag: &str, summary: String| {
            let key = format!("{INGEST_OUTAGE}/{now_us}/{tag}");
            let mut c = change(
                &outage_rule,
                &fleet,
                kind,
                key,
                now_us,
                summary,
                Some(silent as f64),
            );
            c.lift_id.clear();
            out.push(Evaluated {
                change: c,
                quiet: false,
            });
        };
        if silent >= share_limit && silent + self.silent_elsewhere >= self.config.outage_min_lifts {
            if !self.outage {
                self.outage = true;
                outage(
                    ChangeKind::Fire,
                    "fire",
                    format!("{silent} of {reporting} reporting lifts went silent"),
                );
            }
            return;
        }
        if self.outage {
            self.outage = false;
            outage(
                ChangeKind::Clear,
                "clear",
                format!("{silent} lifts newly silent"),
            );
        }
        for (rule, lift, last) in newly {
            let id = lift.lift_id.as_str().to_string();
            self.offline_lifts.insert(id.clone());
            self.offline.insert((rule.id.clone(), id.clone()));
            out.push(Evaluated {
                change: change(
                    &rule,
                    &lift,
                    ChangeKind::Fire,
                    format!("{}/{id}/silent/{last}", rule.id),
                    now_us,
                    format!(
                        "no reading since {}",
                        hoistway_model::time::format_micros(last)
                    ),
                    None,
                ),
                quiet: self.maintenance.contains(&id),
            });
        }
    }
}

fn change(
    rule: &Rule,
    lift: &LiftInfo,
    kind: ChangeKind,
    key: String,
    at_us: i64,
    summary: String,
    value: Option<f64>,
) -> Change {
    Change {
        key,
        kind,
        rule: rule.id.clone(),
        rule_name: rule.name.clone(),
        severity: rule.severity,
        hold_secs: rule.hold_secs,
        lift_id: lift.lift_id.as_str().to_string(),
        customer: lift.customer.clone(),
        building: lift.building.clone(),
        model: lift.model.clone(),
        at_us,
        summary,
        value,
    }
}

/// Whether `key` directly follows `last` in a lift's order. A new epoch starts at seq 0 or 1.
fn is_next(last: Option<(u64, u64)>, (epoch, seq): (u64, u64)) -> bool {
    match last {
        None => seq <= 1,
        Some((le, ls)) => (epoch == le && seq == ls + 1) || (epoch > le && seq <= 1),
    }
}

/// Evaluates held readings that are next in order; with `all`, every held reading (the wait
/// ran out); otherwise also the oldest while more than `limit` are held.
fn release(
    rules: &[Arc<Rule>],
    maintenance: &HashSet<String>,
    eval: &mut LiftEval,
    limit: usize,
    all: bool,
    out: &mut Vec<Evaluated>,
) {
    while let Some((&key, _)) = eval.held.first_key_value() {
        if !(all || is_next(eval.last, key) || (limit > 0 && eval.held.len() > limit)) {
            break;
        }
        let held = eval.held.remove(&key).expect("first key");
        eval.last = Some(key);
        let quiet = maintenance.contains(held.reading.lift_id.as_str());
        let matching = rules.iter().filter(|r| r.scope.matches(&held.lift));
        evaluate_ordered(
            matching,
            &mut eval.levels,
            &held.reading,
            &held.lift,
            quiet,
            out,
        );
    }
}

/// What an ordered rule saw, put into words only when it fires or clears.
enum Describe<'a> {
    Threshold(&'a crate::rule::Metric, f64, &'static str, f64),
    Fault(Option<&'a String>),
}

impl Describe<'_> {
    fn text(&self) -> String {
        match self {
            Describe::Threshold(metric, v, side, limit) => {
                format!("{} {v} {side} {limit}", String::from((*metric).clone()))
            }
            Describe::Fault(Some(code)) => format!("fault {code} active"),
            Describe::Fault(None) => "faults cleared".into(),
        }
    }
}

/// Runs the ordered rules among `rules` (those whose scope covers the lift) on the reading
/// next in the lift's order, keeping their state in `levels`.
fn evaluate_ordered<'a>(
    rules: impl Iterator<Item = &'a Arc<Rule>>,
    levels: &mut Vec<(String, Level)>,
    r: &Reading,
    lift: &Arc<LiftInfo>,
    quiet: bool,
    out: &mut Vec<Evaluated>,
) {
    for rule in rules {
        if !rule.when.is_ordered() {
            continue;
        }
        let (breach, recovered, value, for_readings, for_secs, clear_after, what) = match &rule.when
        {
            Condition::Threshold {
                metric,
                above,
                below,
                for_readings,
                for_secs,
                clear_at,
                clear_after_secs,
            } => {
                let Some(v) = metric.value(r) else { continue };
                let (breach, recovered, what) = match (above, below) {
                    (Some(a), _) => (
                        v > *a,
                        clear_at.map_or(v <= *a, |c| v < c),
                        Describe::Threshold(metric, v, "above", *a),
                    ),
                    (None, Some(b)) => (
                        v < *b,
                        clear_at.map_or(v >= *b, |c| v > c),
                        Describe::Threshold(metric, v, "below", *b),
                    ),
                    (None, None) => continue,
                };
                (
                    breach,
                    recovered,
                    Some(v),
                    *for_readings,
                    *for_secs,
                    *clear_after_secs,
                    what,
                )
            }
            Condition::Fault { codes } => {
                let active = r.faults.iter().find(|f| codes.contains(f));
                (
                    active.is_some(),
                    active.is_none(),
                    None,
                    1,
                    0,
                    0,
                    Describe::Fault(active),
                )
            }
            _ => continue,
        };
        // A copy: the list gets an entry (an allocation) only when a rule's state becomes
        // non-default.
        let at = levels.iter().position(|(id, _)| *id == rule.id);
        let mut state = at.map(|at| levels[at].1.clone()).unwrap_or_default();
        let level = &mut state;
        let ts = r.ts_us;
        let key = |tag: &str| {
            format!(
                "{}/{}/{}.{}/{tag}",
                rule.id,
                r.lift_id.as_str(),
                r.epoch,
                r.seq
            )
        };
        if !level.firing {
            if breach {
                level.count += 1;
                let since = *level.since_ts.get_or_insert(ts);
                if level.count >= for_readings && ts - since >= for_secs as i64 * US {
                    level.firing = true;
                    level.clear_since_ts = None;
                    let summary = if for_readings > 1 {
                        format!("{} for {} readings", what.text(), level.count)
                    } else {
                        what.text()
                    };
                    out.push(Evaluated {
                        change: change(
                            rule,
                            lift,
                            ChangeKind::Fire,
                            key("fire"),
                            r.received_us,
                            summary,
                            value,
                        ),
                        quiet,
                    });
                }
            } else {
                level.count = 0;
                level.since_ts = None;
            }
        } else if recovered {
            let since = *level.clear_since_ts.get_or_insert(ts);
            if ts - since >= clear_after as i64 * US {
                *level = Level::default();
                out.push(Evaluated {
                    change: change(
                        rule,
                        lift,
                        ChangeKind::Clear,
                        key("clear"),
                        r.received_us,
                        what.text(),
                        value,
                    ),
                    quiet,
                });
            }
        } else {
            level.clear_since_ts = None;
        }
        match (at, state == Level::default()) {
            (Some(at), true) => {
                levels.remove(at);
            }
            (Some(at), false) => levels[at].1 = state,
            (None, false) => levels.push((rule.id.clone(), state)),
            (None, true) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hoistway_model::EventKind;
    use hoistway_registry::LiftInfo;
    use proptest::prelude::*;

    use super::*;
    use crate::rule::{Counter, Metric, Scope};
    use crate::test_support::{T0, item, lift, reading};

    fn rule(id: &str, when: Condition) -> Rule {
        Rule {
            id: id.into(),
            name: id.into(),
            description: String::new(),
            severity: Severity::Major,
            scope: Scope::default(),
            enabled: true,
            hold_secs: 0,
            when,
        }
    }

    fn hot() -> Rule {
        rule(
            "hot",
            Condition::Threshold {
                metric: Metric::MotorTempC,
                above: Some(90.0),
                below: None,
                for_readings: 3,
                for_secs: 0,
                clear_at: Some(85.0),
                clear_after_secs: 60,
            },
        )
    }

    fn keys(out: &[Evaluated]) -> Vec<(String, ChangeKind)> {
        out.iter()
            .map(|e| (e.change.key.clone(), e.change.kind))
            .collect()
    }

    #[test]
    fn a_threshold_fires_after_three_readings_and_clears_after_a_minute_below_the_lower_level() {
        let l1 = lift("L1", "acme");
        let mut engine = Engine::new(EngineConfig::default(), vec![hot()], T0);
        let temps = [
            95.0, 95.0, 80.0, 91.0, 92.0, 93.0, 94.0, 88.0, 84.0, 84.0, 84.0, 84.0, 84.0, 84.0,
            84.0,
        ];
        let mut out = Vec::new();
        for (i, t) in temps.iter().enumerate() {
            engine.evaluate(&item(reading("L1", i as u64 + 1, *t), &l1), T0, &mut out);
        }
        // Fires on the third consecutive reading above 90 (seq 6); 88 is not below 85, so the
        // minute below 85 starts at seq 9 (device time) and ends at seq 15.
        assert_eq!(
            keys(&out),
            vec![
                ("hot/L1/1.6/fire".to_string(), ChangeKind::Fire),
                ("hot/L1/1.15/clear".to_string(), ChangeKind::Clear)
            ]
        );
        assert_eq!(
            out[0].change.summary,
            "motor_temp_c 93 above 90 for 3 readings"
        );
    }

    fn run_in_order(temps: &[f32], order: &[usize]) -> Vec<(String, ChangeKind)> {
        let l1 = lift("L1", "acme");
        let mut engine = Engine::new(EngineConfig::default(), vec![hot()], T0);
        let mut out = Vec::new();
        for &i in order {
            engine.evaluate(
                &item(reading("L1", i as u64 + 1, temps[i]), &l1),
                T0,
                &mut out,
            );
        }
        // Whatever still waits for a reading that never came is evaluated when the wait ends.
        engine.tick(T0 + 31 * US, Vec::new(), &mut out);
        keys(&out)
    }

    proptest! {
        #[test]
        fn shuffled_or_backlogged_readings_give_the_same_alerts(
            (temps, order) in prop::collection::vec(prop::sample::select(vec![80.0f32, 86.0, 91.0, 99.0]), 1..40)
                .prop_flat_map(|temps| {
                    let rest: Vec<usize> = (1..temps.len()).collect();
                    (Just(temps), Just(rest).prop_shuffle())
                })
        ) {
            // A lift's order starts at the first reading the engine sees; everything after it
            // arrives shuffled (a backlog resent out of order).
            let order: Vec<usize> = std::iter::once(0).chain(order).collect();
            let in_order: Vec<usize> = (0..temps.len()).collect();
            prop_assert_eq!(run_in_order(&temps, &order), run_in_order(&temps, &in_order));
        }
    }

    #[test]
    fn a_counter_crossing_fires_once_per_threshold_and_never_for_a_resend() {
        let l1 = lift("L1", "acme");
        let when = Condition::CounterCrossing {
            counter: Counter::TripsTotal,
            at: 1_000_000,
            every: Some(1_000_000),
        };
        let mut engine = Engine::new(EngineConfig::default(), vec![rule("due", when)], T0);
        let mut out = Vec::new();
        let step = |engine: &mut Engine, seq, trips, total, counted, out: &mut Vec<Evaluated>| {
            let mut r = reading("L1", seq, 20.0);
            r.trips = trips;
            let mut it = item(r, &l1);
            it.counted = counted;
            it.counters.trips_total = total;
            engine.evaluate(&it, T0, out);
        };
        step(&mut engine, 1, 5, 999_998, true, &mut out);
        step(&mut engine, 2, 5, 1_000_003, true, &mut out);
        step(&mut engine, 2, 5, 1_000_003, false, &mut out); // a resend: did not count
        step(&mut engine, 3, 5, 1_000_008, true, &mut out);
        // A backlog jump across two thresholds fires each once.
        step(&mut engine, 4, 2_000_000, 3_000_008, true, &mut out);
        assert_eq!(
            keys(&out),
            vec![
                ("due/L1/cross/1".to_string(), ChangeKind::Fire),
                ("due/L1/cross/3".to_string(), ChangeKind::Fire)
            ]
        );
        assert_eq!(
            out[0].change.summary,
            "trips_total passed 1000000 (1000003)"
        );
    }

    #[test]
    fn absence_waits_for_the_grace_period_and_a_fleet_wide_silence_is_one_alert() {
        let config = EngineConfig {
            silent_after_secs: 60,
            grace_secs: 120,
            outage_min_lifts: 3,
            ..EngineConfig::default()
        };
        let offline = rule("offline", Condition::Absence { after_secs: None });
        let lifts: Vec<Arc<LiftInfo>> = (0..10).map(|i| lift(&format!("L{i}"), "acme")).collect();
        let mut engine = Engine::new(config, vec![offline], T0);
        // After a restart everyone looks silent: within the grace period nothing fires.
        let stale =
            |lifts: &[Arc<LiftInfo>], n: usize, at: i64| -> Vec<(Arc<LiftInfo>, Option<i64>)> {
                lifts
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (l.clone(), Some(if i < n { at - 600 * US } else { at })))
                    .collect()
            };
        let mut out = Vec::new();
        engine.tick(T0 + 60 * US, stale(&lifts, 10, T0 + 60 * US), &mut out);
        assert!(out.is_empty(), "{out:?}");
        // While readings may be on their way (an edge region out of contact), nothing fires.
        let now = T0 + 200 * US;
        engine.hold_absence(Some("edge region eu: out of contact".into()));
        engine.tick(now, stale(&lifts, 2, now), &mut out);
        assert!(out.is_empty(), "{out:?}");
        engine.hold_absence(None);
        // After it, two lifts silent: one alert each.
        engine.tick(now, stale(&lifts, 2, now), &mut out);
        assert_eq!(out.len(), 2);
        assert!(
            out.iter()
                .all(|e| e.change.rule == "offline" && e.change.kind == ChangeKind::Fire)
        );
        // Already offline: no second alert.
        engine.tick(now + 5 * US, stale(&lifts, 2, now + 5 * US), &mut out);
        assert_eq!(out.len(), 2);
        // Eight more at once (8 of 10 reporting lifts): one ingest outage alert.
        let now = now + 10 * US;
        engine.tick(now, stale(&lifts, 10, now), &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(out[2].change.rule, INGEST_OUTAGE);
        assert_eq!(out[2].change.lift_id, "");
        // They come back: the outage clears; L0 reports again: its alert clears.
        let now = now + 10 * US;
        engine.tick(now, stale(&lifts, 2, now), &mut out);
        assert_eq!(out[3].change.rule, INGEST_OUTAGE);
        assert_eq!(out[3].change.kind, ChangeKind::Clear);
        engine.evaluate(&item(reading("L0", 1, 20.0), &lifts[0]), now, &mut out);
        assert_eq!(out.len(), 5);
        assert_eq!(out[4].change.kind, ChangeKind::Clear);
        assert_eq!(out[4].change.lift_id, "L0");
    }

    #[test]
    fn the_outage_guard_adds_up_what_other_engines_found_silent() {
        let config = EngineConfig {
            silent_after_secs: 60,
            grace_secs: 0,
            outage_min_lifts: 10,
            ..EngineConfig::default()
        };
        let offline = rule("offline", Condition::Absence { after_secs: None });
        // One node's share of the fleet: 10 lifts, 4 of them silent (over the outage fraction
        // of its own lifts, under the fleet's minimum by itself).
        let lifts: Vec<Arc<LiftInfo>> = (0..10).map(|i| lift(&format!("L{i}"), "acme")).collect();
        let now = T0 + 600 * US;
        let presence: Vec<_> = lifts
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), Some(if i < 4 { now - 120 * US } else { now })))
            .collect();
        let alone = {
            let mut engine = Engine::new(config.clone(), vec![offline.clone()], T0);
            let mut out = Vec::new();
            engine.tick(now, presence.clone(), &mut out);
            assert_eq!(engine.silent_here(), 4);
            out
        };
        assert_eq!(alone.len(), 4, "alone, one alert per lift: {alone:?}");
        assert!(alone.iter().all(|e| e.change.rule == "offline"));
        // The other nodes found 30 of their lifts newly silent too: one outage alert instead.
        let mut engine = Engine::new(config, vec![offline], T0);
        engine.set_silent_elsewhere(30);
        let mut out = Vec::new();
        engine.tick(now, presence, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].change.rule, INGEST_OUTAGE);
        assert_eq!(engine.silent_here(), 4);
        // A partition that goes to another node: its lifts are forgotten here.
        engine.evaluate(&item(reading("L1", 1, 20.0), &lifts[1]), now, &mut out);
        engine.forget(|lift| lift == "L1");
        assert!(engine.snapshot(0).lifts.iter().all(|(id, _, _)| id != "L1"));
    }

    #[test]
    fn events_fire_and_clear_and_a_lift_in_maintenance_stays_quiet() {
        let l1 = lift("L1", "acme");
        let trapped = rule(
            "trapped",
            Condition::Event {
                events: vec![EventKind::Entrapment],
                clear_on: vec![EventKind::EntrapmentCleared],
            },
        );
        let mut engine = Engine::new(EngineConfig::default(), vec![trapped], T0);
        let mut out = Vec::new();
        let with = |seq, events: Vec<EventKind>| {
            let mut r = reading("L1", seq, 20.0);
            r.events = events;
            item(r, &l1)
        };
        engine.evaluate(&with(1, vec![EventKind::Entrapment]), T0, &mut out);
        engine.evaluate(&with(2, vec![EventKind::EntrapmentCleared]), T0, &mut out);
        engine.evaluate(&with(3, vec![EventKind::MaintenanceOn]), T0, &mut out);
        engine.evaluate(&with(4, vec![EventKind::Entrapment]), T0, &mut out);
        engine.evaluate(&with(5, vec![EventKind::MaintenanceOff]), T0, &mut out);
        engine.evaluate(&with(6, vec![EventKind::Entrapment]), T0, &mut out);
        let seen: Vec<(ChangeKind, bool)> = out.iter().map(|e| (e.change.kind, e.quiet)).collect();
        assert_eq!(
            seen,
            vec![
                (ChangeKind::Fire, false),
                (ChangeKind::Clear, false),
                (ChangeKind::Fire, true),
                (ChangeKind::Fire, false)
            ]
        );
    }

    #[test]
    fn a_rate_rule_judges_each_lift_against_its_own_baseline() {
        let busy = lift("BUSY", "acme");
        let quiet = lift("QUIET", "acme");
        let when = Condition::Rate {
            counter: crate::rule::Counter::DoorCyclesTotal,
            factor: 3.0,
            min_count: 50,
            weeks: 4,
        };
        let mut engine = Engine::new(EngineConfig::default(), vec![rule("doors", when)], T0);
        let hour = (T0 + 10 * US).div_euclid(HOUR_US) * HOUR_US;
        // The busy lift usually does 100 cycles in this hour of the week, the quiet one 10.
        engine.set_baselines(
            "doors",
            hour,
            HashMap::from([("BUSY".to_string(), 100.0), ("QUIET".to_string(), 10.0)]),
        );
        let mut out = Vec::new();
        // Both do 80 cycles this hour (8 readings of 10), inside the same hour.
        for seq in 1..=8 {
            for l in [&busy, &quiet] {
                let mut r = reading(l.lift_id.as_str(), seq, 20.0);
                r.ts_us = hour + seq as i64 * US;
                r.door_cycles = 10;
                engine.evaluate(&item(r, l), T0, &mut out);
            }
        }
        // 80 > 3 × 10 for the quiet lift (after 50, the minimum); 80 < 3 × 100 for the busy one.
        assert_eq!(
            keys(&out),
            vec![(format!("doors/QUIET/rate/{hour}"), ChangeKind::Fire)]
        );
        // The next hour: the quiet lift is back to usual (no baseline set: not judged).
        let mut r = reading("QUIET", 9, 20.0);
        r.ts_us = hour + HOUR_US + US;
        r.door_cycles = 1;
        engine.evaluate(&item(r, &quiet), T0, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].change.kind, ChangeKind::Clear);
    }

    #[test]
    fn the_snapshot_format_is_pinned() {
        // Version 1 as written; a change to the format is a new version (docs/operations.md).
        let golden = r#"{"version":1,"offset":7,"lifts":[["L1",[1,2],[["hot",{"count":2,"since_ts":1700000010000000,"firing":false,"clear_since_ts":null}]]]],"offline":[["lift-offline","L9"]],"maintenance":["L3"],"outage":false}"#;
        let l1 = lift("L1", "acme");
        let mut engine = Engine::new(EngineConfig::default(), vec![hot()], T0);
        let mut out = Vec::new();
        for seq in 1..=2 {
            engine.evaluate(&item(reading("L1", seq, 95.0), &l1), T0, &mut out);
        }
        engine.set_offline([("lift-offline".to_string(), "L9".to_string())]);
        let mut r = reading("L3", 1, 20.0);
        r.events = vec![EventKind::MaintenanceOn];
        engine.evaluate(&item(r, &lift("L3", "acme")), T0, &mut out);
        assert_eq!(serde_json::to_string(&engine.snapshot(7)).unwrap(), golden);
        let read: Snapshot = serde_json::from_str(golden).unwrap();
        assert_eq!(read.version, SNAPSHOT_VERSION);
    }

    #[test]
    fn a_snapshot_carries_threshold_state_across_a_restart() {
        let l1 = lift("L1", "acme");
        let mut engine = Engine::new(EngineConfig::default(), vec![hot()], T0);
        let mut out = Vec::new();
        for seq in 1..=2 {
            engine.evaluate(&item(reading("L1", seq, 95.0), &l1), T0, &mut out);
        }
        let snapshot = engine.snapshot(7);
        let json = serde_json::to_vec(&snapshot).unwrap();
        let mut restarted = Engine::new(EngineConfig::default(), vec![hot()], T0);
        restarted.restore(serde_json::from_slice(&json).unwrap());
        restarted.evaluate(&item(reading("L1", 3, 95.0), &l1), T0, &mut out);
        assert_eq!(
            keys(&out),
            vec![("hot/L1/1.3/fire".to_string(), ChangeKind::Fire)]
        );
    }
}
