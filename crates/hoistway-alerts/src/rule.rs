//! Alert rules: what to watch, where, and how loud. Rules are plain data (JSON over the API,
//! TOML in a rules file); [`Rule::validate`] says what is wrong with one, field by field.

use hoistway_model::EventKind;
use hoistway_model::Reading;
use hoistway_registry::LiftInfo;
use serde::{Deserialize, Serialize};

/// How urgent an alert is. Ordered: `info < warning < major < critical`.
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
pub enum Severity {
    Info,
    Warning,
    Major,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 4] = [
        Severity::Info,
        Severity::Warning,
        Severity::Major,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Major => "major",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// Which lifts a rule watches. Every field given must match; none given: the whole fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub building: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lift: Option<String>,
}

impl Scope {
    pub fn matches(&self, lift: &LiftInfo) -> bool {
        self.matches_parts(
            lift.lift_id.as_str(),
            &lift.customer,
            &lift.building,
            &lift.model,
        )
    }

    pub fn matches_parts(
        &self,
        lift_id: &str,
        customer: &str,
        building: &str,
        model: &str,
    ) -> bool {
        fn eq(want: &Option<String>, have: &str) -> bool {
            want.as_deref().is_none_or(|w| w == have)
        }
        eq(&self.customer, customer)
            && eq(&self.building, building)
            && eq(&self.model, model)
            && eq(&self.lift, lift_id)
    }
}

/// A lifetime counter of a lift (the processor's exact counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Counter {
    TripsTotal,
    DoorCyclesTotal,
    ReadingsTotal,
    EventsTotal,
}

impl Counter {
    /// The column of `rollups_hourly` that holds the counter's rise in an hour.
    pub fn rollup_column(self) -> Option<&'static str> {
        match self {
            Counter::TripsTotal => Some("trips"),
            Counter::DoorCyclesTotal => Some("door_cycles"),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Counter::TripsTotal => "trips_total",
            Counter::DoorCyclesTotal => "door_cycles_total",
            Counter::ReadingsTotal => "readings_total",
            Counter::EventsTotal => "events_total",
        }
    }

    /// The counter's value after the reading, and by how much the reading raised it.
    pub fn read(self, counters: &hoistway_processor::Counters, r: &Reading) -> (u64, u64) {
        match self {
            Counter::TripsTotal => (counters.trips_total, r.trips as u64),
            Counter::DoorCyclesTotal => (counters.door_cycles_total, r.door_cycles as u64),
            Counter::ReadingsTotal => (counters.readings_total, 1),
            Counter::EventsTotal => (counters.events_total, r.events.len() as u64),
        }
    }
}

/// A number carried by a reading.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Metric {
    MotorTempC,
    VibrationMmS,
    LoadKg,
    SpeedMps,
    /// A model-specific metric from the reading's `extra` map.
    Extra(String),
}

impl Metric {
    pub fn value(&self, r: &Reading) -> Option<f64> {
        match self {
            Metric::MotorTempC => r.motor_temp_c.map(f64::from),
            Metric::VibrationMmS => r.vibration_mm_s.map(f64::from),
            Metric::LoadKg => r.load_kg.map(f64::from),
            Metric::SpeedMps => r.speed_mps.map(f64::from),
            Metric::Extra(name) => r.extra.get(name).copied(),
        }
    }
}

impl TryFrom<String> for Metric {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Ok(match s.as_str() {
            "motor_temp_c" => Metric::MotorTempC,
            "vibration_mm_s" => Metric::VibrationMmS,
            "load_kg" => Metric::LoadKg,
            "speed_mps" => Metric::SpeedMps,
            other => match other.strip_prefix("extra.") {
                Some(name) if !name.is_empty() => Metric::Extra(name.to_string()),
                _ => {
                    return Err(format!(
                        "unknown metric {other:?}; use motor_temp_c, vibration_mm_s, load_kg, speed_mps or extra.<name>"
                    ));
                }
            },
        })
    }
}

impl From<Metric> for String {
    fn from(m: Metric) -> String {
        match m {
            Metric::MotorTempC => "motor_temp_c".into(),
            Metric::VibrationMmS => "vibration_mm_s".into(),
            Metric::LoadKg => "load_kg".into(),
            Metric::SpeedMps => "speed_mps".into(),
            Metric::Extra(name) => format!("extra.{name}"),
        }
    }
}

/// In the API document a metric is its name.
impl utoipa::PartialSchema for Metric {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(
                "^(motor_temp_c|vibration_mm_s|load_kg|speed_mps|extra\\..+)$",
            ))
            .description(Some(
                "motor_temp_c, vibration_mm_s, load_kg, speed_mps or extra.<name>",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Metric {}

/// What makes a rule fire, and what clears it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Condition {
    /// A lifetime counter reaches `at`, then (with `every`) `at + every`, `at + 2 × every`, …
    /// Fires once per value passed; resolved by hand (the service was done).
    CounterCrossing {
        counter: Counter,
        at: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        every: Option<u64>,
    },
    /// A metric beyond a limit: fires once `for_readings` consecutive readings (in the lift's
    /// own order) and at least `for_secs` of device time were beyond it; clears once readings
    /// are back past `clear_at` (default: the limit) for `clear_after_secs` of device time.
    Threshold {
        metric: Metric,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        above: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        below: Option<f64>,
        #[serde(default = "one")]
        for_readings: u32,
        #[serde(default)]
        for_secs: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        clear_at: Option<f64>,
        #[serde(default)]
        clear_after_secs: u64,
    },
    /// Any of `events` in a reading fires; any of `clear_on` clears.
    Event {
        events: Vec<EventKind>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        clear_on: Vec<EventKind>,
    },
    /// Any of the fault `codes` active fires (in the lift's order); a later reading with none
    /// of them clears.
    Fault { codes: Vec<String> },
    /// A lifetime counter rising faster than the lift's own baseline: within one hour (device
    /// time) it rose by more than `factor` × the baseline and by at least `min_count`. The
    /// baseline is the median of the counter's rise in the same hour of the week over the
    /// previous `weeks` weeks (from the stored hourly rollups); a lift without one is not judged.
    /// Clears at the end of an hour that stayed under.
    Rate {
        counter: Counter,
        #[serde(default = "three")]
        factor: f64,
        #[serde(default = "fifty")]
        min_count: u64,
        #[serde(default = "four")]
        weeks: u32,
    },
    /// A registered lift that sent nothing for `after_secs` (default: the server's
    /// `processor.silent_after_secs`, the same "silent" the lift status uses); clears when it
    /// reports again.
    Absence {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_secs: Option<u64>,
    },
}

fn one() -> u32 {
    1
}

fn three() -> f64 {
    3.0
}

fn fifty() -> u64 {
    50
}

fn four() -> u32 {
    4
}

fn yes() -> bool {
    true
}

impl Condition {
    pub fn kind(&self) -> &'static str {
        match self {
            Condition::CounterCrossing { .. } => "counter_crossing",
            Condition::Threshold { .. } => "threshold",
            Condition::Event { .. } => "event",
            Condition::Fault { .. } => "fault",
            Condition::Absence { .. } => "absence",
            Condition::Rate { .. } => "rate",
        }
    }

    /// Whether the rule follows each lift's (epoch, seq) order (it has state across readings).
    pub fn is_ordered(&self) -> bool {
        matches!(self, Condition::Threshold { .. } | Condition::Fault { .. })
    }
}

/// One alert rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Lower-case letters, digits, `-` and `_`; at most 64.
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub severity: Severity,
    #[serde(default)]
    pub scope: Scope,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Flapping guard: a re-fire within this many seconds of the alert's automatic resolution
    /// reopens that alert and counts a re-fire, without a new alert or notification.
    #[serde(default)]
    pub hold_secs: u64,
    pub when: Condition,
}

/// A field of a rule and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RuleProblem {
    pub field: String,
    pub message: String,
}

impl Rule {
    /// Every problem of the rule; empty when it is valid.
    pub fn validate(&self) -> Vec<RuleProblem> {
        let mut problems = Vec::new();
        let mut bad = |field: &str, message: String| {
            problems.push(RuleProblem {
                field: field.to_string(),
                message,
            })
        };
        if !valid_id(&self.id) {
            bad(
                "id",
                format!(
                    "{:?} is not a rule id: use 1 to 64 lower-case letters, digits, '-' and '_'",
                    self.id
                ),
            );
        }
        if self.name.trim().is_empty() || self.name.len() > 200 {
            bad("name", "give a name of 1 to 200 characters".into());
        }
        match &self.when {
            Condition::CounterCrossing { at, every, .. } => {
                if *at == 0 {
                    bad("when.at", "must be above 0".into());
                }
                if *every == Some(0) {
                    bad("when.every", "must be above 0 when given".into());
                }
            }
            Condition::Threshold {
                above,
                below,
                for_readings,
                clear_at,
                ..
            } => {
                match (above, below) {
                    (Some(_), Some(_)) | (None, None) => {
                        bad("when", "give exactly one of `above` and `below`".into())
                    }
                    (Some(a), None) if clear_at.is_some_and(|c| c > *a) => bad(
                        "when.clear_at",
                        format!("must not be above the limit {a} (it is the level that clears)"),
                    ),
                    (None, Some(b)) if clear_at.is_some_and(|c| c < *b) => bad(
                        "when.clear_at",
                        format!("must not be below the limit {b} (it is the level that clears)"),
                    ),
                    _ => {}
                }
                for (name, v) in [("when.above", above), ("when.below", below)] {
                    if v.is_some_and(|v| !v.is_finite()) {
                        bad(name, "must be a finite number".into());
                    }
                }
                if *for_readings == 0 {
                    bad("when.for_readings", "must be at least 1".into());
                }
            }
            Condition::Event { events, clear_on } => {
                if events.is_empty() {
                    bad("when.events", "name at least one event".into());
                }
                if let Some(e) = events.iter().find(|e| clear_on.contains(e)) {
                    bad(
                        "when.clear_on",
                        format!("{} both fires and clears", e.as_str()),
                    );
                }
            }
            Condition::Fault { codes } => {
                if codes.is_empty() || codes.iter().any(|c| c.trim().is_empty()) {
                    bad("when.codes", "name at least one fault code".into());
                }
            }
            Condition::Rate {
                counter,
                factor,
                weeks,
                ..
            } => {
                if !factor.is_finite() || *factor <= 1.0 {
                    bad("when.factor", "must be a number above 1".into());
                }
                if *weeks == 0 || *weeks > 12 {
                    bad("when.weeks", "must be 1 to 12".into());
                }
                if !matches!(counter, Counter::TripsTotal | Counter::DoorCyclesTotal) {
                    bad(
                        "when.counter",
                        "rates are kept for trips_total and door_cycles_total".into(),
                    );
                }
            }
            Condition::Absence { after_secs } => {
                if *after_secs == Some(0) {
                    bad("when.after_secs", "must be above 0 when given".into());
                }
            }
        }
        problems
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// A rules file: `[[rule]]` tables.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    #[serde(default)]
    pub rule: Vec<Rule>,
}

/// Parses and validates a rules file; the error names the rule and field.
pub fn parse_rule_file(text: &str) -> Result<Vec<Rule>, String> {
    let file: RuleFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut seen = std::collections::HashSet::new();
    for rule in &file.rule {
        if let Some(p) = rule.validate().first() {
            return Err(format!("rule {:?}: {}: {}", rule.id, p.field, p.message));
        }
        if !seen.insert(rule.id.as_str()) {
            return Err(format!("rule {:?} is defined twice", rule.id));
        }
    }
    Ok(file.rule)
}

/// The rules file the benchmarks add to the eight defaults (20 rules in all): thresholds,
/// counter crossings and faults, some scoped to a building (`BB00000`, `BB00003`, …), the rest
/// fleet-wide. `hoistway bench` and the engine's criterion bench use the same set.
pub fn benchmark_rules() -> String {
    let mut s = String::new();
    for i in 0..12 {
        let when = match i % 4 {
            0 => format!(
                r#"{{ kind = "threshold", metric = "vibration_mm_s", above = {}.0, for_readings = 3 }}"#,
                8 + i
            ),
            1 => format!(
                r#"{{ kind = "threshold", metric = "load_kg", above = {}.0, for_readings = 2, clear_at = 800.0 }}"#,
                900 + i
            ),
            2 => format!(
                r#"{{ kind = "counter_crossing", counter = "door_cycles_total", at = {} }}"#,
                5_000_000 + i
            ),
            _ => format!(r#"{{ kind = "fault", codes = ["E9{i}"] }}"#),
        };
        let scope = if i % 3 == 0 {
            format!("scope = {{ building = \"BB{:05}\" }}\n", i)
        } else {
            String::new()
        };
        s.push_str(&format!(
            "[[rule]]\nid = \"bench-{i}\"\nname = \"Bench rule {i}\"\nseverity = \"warning\"\n{scope}when = {when}\n\n"
        ));
    }
    s
}

/// The rule the fleet-wide guard of absence raises instead of one alert per silent lift.
pub const INGEST_OUTAGE: &str = "ingest-outage";

/// The rules a new data dir starts with (edited or removed like any other).
pub fn default_rules() -> Vec<Rule> {
    let rule = |id: &str, name: &str, severity, when| Rule {
        id: id.into(),
        name: name.into(),
        description: String::new(),
        severity,
        scope: Scope::default(),
        enabled: true,
        hold_secs: 0,
        when,
    };
    vec![
        rule(
            "service-due",
            "Service due: one million trips",
            Severity::Warning,
            Condition::CounterCrossing {
                counter: Counter::TripsTotal,
                at: 1_000_000,
                every: Some(1_000_000),
            },
        ),
        rule(
            "entrapment",
            "Passenger trapped",
            Severity::Critical,
            Condition::Event {
                events: vec![EventKind::Entrapment],
                clear_on: vec![EventKind::EntrapmentCleared],
            },
        ),
        rule(
            "alarm-button",
            "Alarm button pressed",
            Severity::Major,
            Condition::Event {
                events: vec![EventKind::AlarmButton],
                clear_on: vec![],
            },
        ),
        rule(
            "emergency-stop",
            "Emergency stop",
            Severity::Major,
            Condition::Event {
                events: vec![EventKind::EmergencyStop],
                clear_on: vec![],
            },
        ),
        rule(
            "lift-started",
            "Lift started",
            Severity::Info,
            Condition::Event {
                events: vec![EventKind::Startup],
                clear_on: vec![],
            },
        ),
        Rule {
            hold_secs: 300,
            ..rule(
                "motor-hot",
                "Motor temperature high",
                Severity::Major,
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
        },
        rule(
            "door-cycles-unusual",
            "Door cycles far above this lift's usual for the hour",
            Severity::Warning,
            Condition::Rate {
                counter: Counter::DoorCyclesTotal,
                factor: 3.0,
                min_count: 50,
                weeks: 4,
            },
        ),
        rule(
            "lift-offline",
            "Lift offline",
            Severity::Major,
            Condition::Absence { after_secs: None },
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rules_file_parses_and_its_mistakes_are_named() {
        let rules = parse_rule_file(
            r#"
            [[rule]]
            id = "vibration"
            name = "Vibration high"
            severity = "warning"
            scope = { building = "B1" }
            when = { kind = "threshold", metric = "vibration_mm_s", above = 6.0, for_readings = 2 }
            "#,
        )
        .unwrap();
        assert_eq!(rules[0].scope.building.as_deref(), Some("B1"));
        let err = parse_rule_file(
            r#"
            [[rule]]
            id = "x"
            name = "X"
            severity = "warning"
            when = { kind = "threshold", metric = "motor_temp_c", above = 90, below = 10 }
            "#,
        )
        .unwrap_err();
        assert!(err.contains("exactly one of"), "{err}");
        let err = parse_rule_file(
            "[[rule]]\nid = \"x\"\nname = \"X\"\nseverity = \"loud\"\nwhen = { kind = \"absence\" }\n",
        )
        .unwrap_err();
        assert!(err.contains("loud"), "{err}");
        let err = parse_rule_file(
            "[[rule]]\nid = \"x\"\nname = \"X\"\nseverity = \"info\"\nwhen = { kind = \"threshold\", metric = \"heat\", above = 1 }\n",
        )
        .unwrap_err();
        assert!(err.contains("unknown metric"), "{err}");
        for rule in default_rules() {
            assert!(rule.validate().is_empty(), "{rule:?}");
        }
    }
}
