//! Read-only SQL (Apache DataFusion) over everything Hoistway keeps.
//!
//! In: a storage [`Snapshot`](hoistway_store::Snapshot) taken per query, the registry and the
//! fleet's latest state. Out: Arrow record batches, and JSON / CSV / Parquet encodings of them.
//! Tables: `readings` (buffer + hot + archive as one table; time and lift predicates skip
//! files, row groups and pages), `rollups_hourly`, `rollups_daily` (views over the stored
//! partials, merged exactly), `rollup_partials`, `lifts`, `lift_state` and `audit` (admins).
//!
//! Every query runs for a [`Caller`]. A customer's caller gets the same table names over
//! filtered views: `readings` of the periods the customer held each lift, rollup hours it
//! held whole, its current lifts and their state, its own users' audit events.
//!
//! Only queries run: DDL, DML, `SET`, `COPY` and file or URL tables are refused with a
//! [`Error::Refused`]. Every query has a row limit, a time limit and a memory limit.

pub mod catalog;
mod output;
pub mod runtime;
pub mod tables;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::error::DataFusionError;
use datafusion::execution::SessionState;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::logical_expr::{ColumnarValue, LogicalPlan, ScalarUDF, Volatility, create_udf};
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::prelude::{DataFrame, SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use hoistway_processor::Fleet;
use hoistway_store::scan::tier_url;
use hoistway_store::{Kind, Stores, Tier};

pub use output::{Format, StreamEncoder, encode};
use tables::{LazyTable, StoredTable};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The statement is not a read-only query.
    #[error("{0}")]
    Refused(String),
    /// The query is not valid SQL or names something that does not exist.
    #[error("{0}")]
    Invalid(String),
    #[error("query ran longer than the limit of {0:?}")]
    Timeout(Duration),
    #[error("query needs more memory than the limit: {0}")]
    ResourcesExhausted(String),
    /// The caller may not read what the query names (the `audit` table without admin).
    #[error("{0}")]
    Forbidden(String),
    #[error("query failed: {0}")]
    Internal(String),
}

/// Marks a refusal raised inside a plan, so that it reaches the caller as
/// [`Error::Forbidden`].
#[derive(Debug)]
struct Denied(String);

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Denied {}

/// Who runs a query, which decides the rows every table shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// `Some(c)`: one of customer `c`'s people; `None`: the lift maker's staff.
    pub customer: Option<String>,
    /// Admins read the `audit` table.
    pub admin: bool,
}

impl Caller {
    /// The whole fleet, audit included (the offline CLI, benchmarks, tests).
    pub fn fleet_admin() -> Self {
        Self {
            customer: None,
            admin: true,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<DataFusionError> for Error {
    fn from(e: DataFusionError) -> Self {
        match e.find_root() {
            DataFusionError::External(inner) if inner.downcast_ref::<Denied>().is_some() => {
                Error::Forbidden(inner.to_string())
            }
            DataFusionError::SQL(..)
            | DataFusionError::Plan(..)
            | DataFusionError::SchemaError(..) => Error::Invalid(with_table_hint(e.find_root())),
            DataFusionError::ResourcesExhausted(m) => Error::ResourcesExhausted(m.clone()),
            DataFusionError::NotImplemented(m) => Error::Invalid(format!("not supported: {m}")),
            _ => Error::Internal(e.to_string()),
        }
    }
}

/// The tables a query can read, named in the error for an unknown table or a file or URL.
const TABLES: &str = "readings, rollups_hourly, rollups_daily, rollup_partials, lifts, lift_state, alerts, alert_events, audit";

/// DataFusion's "table 'x' not found" also answers `FROM '/some/file'` and `read_csv(..)`; say
/// what can be read instead.
fn with_table_hint(e: &DataFusionError) -> String {
    let msg = e.to_string();
    if msg.contains("not found") && (msg.contains("table '") || msg.contains("table function '")) {
        format!("{msg}. The tables are {TABLES}; files and URLs cannot be read")
    } else {
        msg
    }
}

#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// At most this many rows are returned; `truncated` says when there were more.
    pub max_rows: usize,
    pub timeout: Duration,
    /// Memory for all queries together; sorts and aggregates spill or fail beyond it.
    pub memory_bytes: usize,
    /// The least role whose exports (Flight SQL, `POST /v1/sql/export`) stream every row,
    /// past `max_rows`.
    pub export_role: hoistway_auth::Role,
    /// Arrow bytes one export may stream; beyond it the export ends with an error.
    pub export_max_bytes: u64,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            max_rows: 100_000,
            timeout: Duration::from_secs(30),
            memory_bytes: 1 << 30,
            export_role: hoistway_auth::Role::Operator,
            export_max_bytes: 10 << 30,
        }
    }
}

/// The parameter types a plan infers, in `$1, $2, …` order up to the highest it uses; untyped
/// or unused ones (a rewrite can drop a subquery and its parameters) are text.
pub fn parameter_types(df: &DataFrame) -> Result<Vec<DataType>> {
    let types = df.logical_plan().get_parameter_types()?;
    let numbered: Vec<(usize, DataType)> = types
        .into_iter()
        .filter_map(|(name, t)| {
            let n = name.strip_prefix('$')?.parse().ok()?;
            Some((n, t.unwrap_or(DataType::Utf8)))
        })
        .collect();
    let count = numbered.iter().map(|(n, _)| *n).max().unwrap_or(0);
    let mut types = vec![DataType::Utf8; count];
    for (n, t) in numbered {
        if n >= 1 {
            types[n - 1] = t;
        }
    }
    Ok(types)
}

/// A query's result: the batches and whether the row limit cut it short.
#[derive(Debug)]
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub truncated: bool,
}

impl QueryResult {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

pub struct QueryEngine {
    stores: Stores,
    fleet: Fleet,
    limits: QueryLimits,
    runtime: Arc<RuntimeEnv>,
    audit: Option<Arc<hoistway_auth::Authority>>,
    alerts: Option<Arc<dyn hoistway_alerts::AlertStore>>,
    /// Where queries execute (see [`runtime`]); the caller's runtime when `None`.
    exec: Option<runtime::AnalyticsRuntime>,
    /// Registers `hoistway_test_sleep(ms)`, which blocks its thread (tests of the isolation).
    test_functions: bool,
    /// Tables, views and functions, registered once (see [`QueryEngine::context`]): for the
    /// lift maker's staff, and its admins (whose catalogs also list `audit`).
    base: [tokio::sync::OnceCell<SessionState>; 2],
    /// The same per customer (and admin or not), over that customer's views; built on its
    /// first query.
    scoped: std::sync::Mutex<HashMap<(String, bool), SessionState>>,
}

fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// A planning error, or the refusal of anything but a query.
fn refusal(e: DataFusionError) -> Error {
    let message = e.find_root().to_string();
    if message.contains("not supported") || message.contains("not allowed") {
        Error::Refused(format!(
            "only read-only queries are allowed (SELECT, WITH, VALUES, EXPLAIN, SHOW): {message}"
        ))
    } else {
        Error::from(e)
    }
}

/// Runs a planning step. DataFusion's planner panics on some malformed statements (a scalar
/// subquery with no column, `x > (SELECT FROM t)`, found by fuzzing the guard); such a panic
/// becomes a refusal of the statement instead of a dropped connection.
async fn guarded<T>(planning: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    use futures::FutureExt;
    std::panic::AssertUnwindSafe(planning)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(Error::Invalid(format!(
                "this statement cannot be planned (DataFusion's planner failed: {why})"
            )))
        })
}

/// Customers whose sessions are kept ready; beyond it the cache starts over.
const SCOPED_SESSIONS: usize = 1024;

impl std::fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryEngine")
            .field("limits", &self.limits)
            .finish()
    }
}

/// Rows per record batch in every plan. 16 Ki rows made the full-scan aggregate 3% faster
/// than DataFusion's 8 Ki, steadily over four interleaved rounds; 32 Ki was no faster and
/// 64 Ki slower (docs/BENCHMARKS.md).
const BATCH_ROWS: usize = 16 * 1024;

/// Partials merged per (lift, hour), still as sums and counts so days can be built from hours.
const HOURS_SQL: &str = "SELECT lift_id, hour, \
    sum(readings) AS readings, sum(trips) AS trips, sum(door_cycles) AS door_cycles, \
    min(motor_temp_c_min) AS motor_temp_c_min, max(motor_temp_c_max) AS motor_temp_c_max, \
    sum(motor_temp_c_sum) AS motor_temp_c_sum, sum(motor_temp_c_count) AS motor_temp_c_count, \
    min(vibration_mm_s_min) AS vibration_mm_s_min, max(vibration_mm_s_max) AS vibration_mm_s_max, \
    sum(vibration_mm_s_sum) AS vibration_mm_s_sum, sum(vibration_mm_s_count) AS vibration_mm_s_count, \
    min(load_kg_min) AS load_kg_min, max(load_kg_max) AS load_kg_max, \
    sum(load_kg_sum) AS load_kg_sum, sum(load_kg_count) AS load_kg_count, \
    bit_count(bit_or(minutes_mask)) AS minutes_reporting, \
    sum(fault_readings) AS fault_readings, sum(events) AS events, \
    sum(entrapments) AS entrapments, sum(alarms) AS alarms \
    FROM rollup_partials GROUP BY lift_id, hour";

/// The rollup columns over `source`, grouped by lift and `bucket`. `minutes` is the expression
/// for minutes reporting: a partial's minute mask is per hour, so hours or-merge masks and
/// days add up the hours'.
fn rollup_view_sql(period: &str, bucket: &str, minutes: &str, source: &str) -> String {
    format!(
        "SELECT lift_id, {bucket} AS {period}, \
         sum(readings) AS readings, sum(trips) AS trips, sum(door_cycles) AS door_cycles, \
         min(motor_temp_c_min) AS motor_temp_c_min, \
         sum(motor_temp_c_sum) / nullif(sum(motor_temp_c_count), 0) AS motor_temp_c_avg, \
         max(motor_temp_c_max) AS motor_temp_c_max, \
         min(vibration_mm_s_min) AS vibration_mm_s_min, \
         sum(vibration_mm_s_sum) / nullif(sum(vibration_mm_s_count), 0) AS vibration_mm_s_avg, \
         max(vibration_mm_s_max) AS vibration_mm_s_max, \
         min(load_kg_min) AS load_kg_min, \
         sum(load_kg_sum) / nullif(sum(load_kg_count), 0) AS load_kg_avg, \
         max(load_kg_max) AS load_kg_max, \
         {minutes} AS minutes_reporting, \
         sum(fault_readings) AS fault_readings, sum(events) AS events, \
         sum(entrapments) AS entrapments, sum(alarms) AS alarms \
         FROM {source} GROUP BY lift_id, {bucket}"
    )
}

/// `bit_count(x)`: the number of set bits, as in DuckDB and MySQL.
fn test_sleep_udf() -> ScalarUDF {
    create_udf(
        "hoistway_test_sleep",
        vec![DataType::Int64],
        DataType::Int64,
        // Volatile: never folded into a constant while planning, always run by the executor.
        Volatility::Volatile,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let input = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(
                arrays[0].as_ref(),
            );
            for ms in input.iter().flatten() {
                std::thread::sleep(Duration::from_millis(ms.clamp(0, 60_000) as u64));
            }
            Ok(ColumnarValue::Array(arrays[0].clone()))
        }),
    )
}

fn bit_count_udf() -> ScalarUDF {
    create_udf(
        "bit_count",
        vec![DataType::Int64],
        DataType::Int64,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let input = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(
                arrays[0].as_ref(),
            );
            let out: Int64Array = input
                .iter()
                .map(|v| v.map(|v| i64::from(v.count_ones())))
                .collect();
            Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
        }),
    )
}

fn lifts_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("lift_id", DataType::Utf8, false),
        Field::new("building", DataType::Utf8, false),
        Field::new("site", DataType::Utf8, false),
        Field::new("customer", DataType::Utf8, false),
        Field::new("model", DataType::Utf8, false),
        Field::new("install_date", DataType::Date32, true),
        Field::new("initial_trips", DataType::Int64, false),
    ]))
}

/// Counters are Int64, as in `readings` (PostgreSQL clients see `bigint`; they never near 2^63).
/// `epoch` and `last_seq` are the device's, any u64.
fn lift_state_schema() -> SchemaRef {
    let list = DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)));
    Arc::new(Schema::new(vec![
        Field::new("lift_id", DataType::Utf8, false),
        Field::new("building", DataType::Utf8, false),
        Field::new("site", DataType::Utf8, false),
        Field::new("customer", DataType::Utf8, false),
        Field::new("model", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("epoch", DataType::UInt64, true),
        Field::new("last_seq", DataType::UInt64, true),
        Field::new("last_ts", hoistway_store::schema::timestamp_type(), true),
        Field::new(
            "last_received_at",
            hoistway_store::schema::timestamp_type(),
            true,
        ),
        Field::new("floor", DataType::Int16, true),
        Field::new("direction", DataType::Utf8, true),
        Field::new("door", DataType::Utf8, true),
        Field::new("load_kg", DataType::Float32, true),
        Field::new("speed_mps", DataType::Float32, true),
        Field::new("motor_temp_c", DataType::Float32, true),
        Field::new("vibration_mm_s", DataType::Float32, true),
        Field::new("faults", list, true),
        Field::new("entrapped", DataType::Boolean, false),
        Field::new("in_maintenance", DataType::Boolean, false),
        Field::new("readings_total", DataType::Int64, false),
        Field::new("trips_total", DataType::Int64, false),
        Field::new("door_cycles_total", DataType::Int64, false),
        Field::new("events_total", DataType::Int64, false),
    ]))
}

/// `hoistway_owned(lift_id, time_us, span_us)`: whether the customer held the lift for the
/// whole of `[time, time + span]`.
fn owned_udf(registry: Arc<hoistway_registry::Registry>, customer: String) -> ScalarUDF {
    create_udf(
        "hoistway_owned",
        vec![DataType::Utf8, DataType::Int64, DataType::Int64],
        DataType::Boolean,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            use arrow::array::{Array, AsArray, BooleanArray};
            use arrow::datatypes::Int64Type;
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let ids = arrays[0].as_string::<i32>();
            let times = arrays[1].as_primitive::<Int64Type>();
            let spans = arrays[2].as_primitive::<Int64Type>();
            let out: BooleanArray = registry.with_ownership(|owners| {
                (0..ids.len())
                    .map(|i| {
                        let held = !ids.is_null(i)
                            && !times.is_null(i)
                            && owners.held(
                                &customer,
                                ids.value(i),
                                times.value(i),
                                times
                                    .value(i)
                                    .saturating_add(spans.value(i))
                                    .saturating_add(1),
                            );
                        Some(held)
                    })
                    .collect()
            });
            Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
        }),
    )
}

fn audit_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("at", hoistway_store::schema::timestamp_type(), false),
        Field::new("actor", DataType::Utf8, false),
        Field::new("action", DataType::Utf8, false),
        Field::new("target", DataType::Utf8, false),
        Field::new("outcome", DataType::Utf8, false),
        Field::new("address", DataType::Utf8, true),
        Field::new("detail", DataType::Utf8, false),
        Field::new("customer", DataType::Utf8, true),
    ]))
}

/// The audit events `caller` may read: all for the lift maker's admins, its own users' for a
/// customer's admin, none (an error that says so) for anyone else.
fn audit_rows(
    auth: Option<&hoistway_auth::Authority>,
    caller: &Caller,
) -> datafusion::error::Result<RecordBatch> {
    if !caller.admin {
        return Err(DataFusionError::External(Box::new(Denied(
            "permission denied for table audit: it is for admins".into(),
        ))));
    }
    let Some(auth) = auth else {
        return Ok(RecordBatch::new_empty(audit_schema()));
    };
    #[derive(serde::Serialize)]
    struct Row {
        id: i64,
        at: i64,
        actor: String,
        action: String,
        target: String,
        outcome: String,
        address: Option<String>,
        detail: String,
        customer: Option<String>,
    }
    let mut rows = Vec::new();
    let mut query = hoistway_auth::AuditQuery {
        customer: caller.customer.clone(),
        limit: 10_000,
        ..Default::default()
    };
    loop {
        let page = auth
            .audit(&query)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let Some(last) = page.last() else { break };
        query.after_id = Some(last.id);
        rows.extend(page.into_iter().map(|e| Row {
            id: e.id,
            at: e.at_us,
            actor: e.actor,
            action: e.action,
            target: e.target,
            outcome: e.outcome,
            address: e.address,
            detail: e.detail,
            customer: e.customer,
        }));
    }
    rows_to_batch(audit_schema(), &rows)
}

fn alerts_schema() -> SchemaRef {
    let ts = hoistway_store::schema::timestamp_type;
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("rule", DataType::Utf8, false),
        Field::new("rule_name", DataType::Utf8, false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("lift_id", DataType::Utf8, false),
        Field::new("customer", DataType::Utf8, false),
        Field::new("building", DataType::Utf8, false),
        Field::new("model", DataType::Utf8, false),
        Field::new("summary", DataType::Utf8, false),
        Field::new("value", DataType::Float64, true),
        Field::new("fired_at", ts(), false),
        Field::new("last_fired_at", ts(), false),
        Field::new("refires", DataType::Int64, false),
        Field::new("acknowledged_by", DataType::Utf8, true),
        Field::new("acknowledged_at", ts(), true),
        Field::new("resolved_by", DataType::Utf8, true),
        Field::new("resolved_at", ts(), true),
        Field::new("resolve_note", DataType::Utf8, true),
    ]))
}

fn alert_events_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("alert_id", DataType::Int64, false),
        Field::new("lift_id", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("at", hoistway_store::schema::timestamp_type(), false),
        Field::new("by", DataType::Utf8, false),
        Field::new("note", DataType::Utf8, false),
    ]))
}

/// Every alert `caller` may see (a customer's people: that customer's), newest first.
fn visible_alerts(
    store: &dyn hoistway_alerts::AlertStore,
    caller: &Caller,
) -> datafusion::error::Result<Vec<hoistway_alerts::Alert>> {
    let mut all = Vec::new();
    let mut query = hoistway_alerts::AlertQuery {
        customer: caller.customer.clone(),
        limit: Some(1000),
        ..Default::default()
    };
    loop {
        let page = store
            .list(&query)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let Some(last) = page.last() else { break };
        query.before = Some(last.id);
        all.extend(page);
    }
    Ok(all)
}

fn alert_rows(
    store: Option<&dyn hoistway_alerts::AlertStore>,
    caller: &Caller,
) -> datafusion::error::Result<RecordBatch> {
    let Some(store) = store else {
        return Ok(RecordBatch::new_empty(alerts_schema()));
    };
    #[derive(serde::Serialize)]
    struct Row {
        id: i64,
        rule: String,
        rule_name: String,
        severity: &'static str,
        state: &'static str,
        lift_id: String,
        customer: String,
        building: String,
        model: String,
        summary: String,
        value: Option<f64>,
        fired_at: i64,
        last_fired_at: i64,
        refires: u32,
        acknowledged_by: Option<String>,
        acknowledged_at: Option<i64>,
        resolved_by: Option<String>,
        resolved_at: Option<i64>,
        resolve_note: Option<String>,
    }
    let rows: Vec<Row> = visible_alerts(store, caller)?
        .into_iter()
        .map(|a| Row {
            id: a.id,
            severity: a.severity.as_str(),
            state: a.state.as_str(),
            value: a.value,
            fired_at: a.fired_us,
            last_fired_at: a.last_fired_us,
            refires: a.refires,
            acknowledged_by: a.acknowledged.as_ref().map(|s| s.by.clone()),
            acknowledged_at: a.acknowledged.as_ref().map(|s| s.at_us),
            resolved_by: a.resolved.as_ref().map(|s| s.by.clone()),
            resolved_at: a.resolved.as_ref().map(|s| s.at_us),
            resolve_note: a.resolved.map(|s| s.note),
            rule: a.rule,
            rule_name: a.rule_name,
            lift_id: a.lift_id,
            customer: a.customer,
            building: a.building,
            model: a.model,
            summary: a.summary,
        })
        .collect();
    rows_to_batch(alerts_schema(), &rows)
}

fn alert_event_rows(
    store: Option<&dyn hoistway_alerts::AlertStore>,
    caller: &Caller,
) -> datafusion::error::Result<RecordBatch> {
    let Some(store) = store else {
        return Ok(RecordBatch::new_empty(alert_events_schema()));
    };
    #[derive(serde::Serialize)]
    struct Row {
        alert_id: i64,
        lift_id: String,
        kind: &'static str,
        at: i64,
        by: String,
        note: String,
    }
    let mut rows = Vec::new();
    for alert in visible_alerts(store, caller)?.iter().rev() {
        let events = store
            .events(alert.id)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        rows.extend(events.into_iter().map(|e| Row {
            alert_id: e.alert_id,
            lift_id: alert.lift_id.clone(),
            kind: e.kind.as_str(),
            at: e.at_us,
            by: e.by,
            note: e.note,
        }));
    }
    rows_to_batch(alert_events_schema(), &rows)
}

fn rows_to_batch<T: serde::Serialize>(
    schema: SchemaRef,
    rows: &[T],
) -> datafusion::error::Result<RecordBatch> {
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone()).build_decoder()?;
    decoder.serialize(rows)?;
    Ok(decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(schema)))
}

impl QueryEngine {
    /// The engine over `stores` (one store, or every partition's of a node) and `fleet`.
    pub fn new(stores: impl Into<Stores>, fleet: Fleet, limits: QueryLimits) -> Result<Self> {
        let stores = stores.into();
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(limits.memory_bytes)))
            .build_arc()?;
        for tier in [Tier::Hot, Tier::Archive] {
            runtime.register_object_store(tier_url(tier).as_ref(), stores.tier(tier).store.clone());
        }
        Ok(Self {
            stores,
            fleet,
            limits,
            runtime,
            audit: None,
            alerts: None,
            exec: None,
            test_functions: false,
            base: Default::default(),
            scoped: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Serves the `audit` table from this authority's log.
    pub fn with_audit(mut self, auth: Arc<hoistway_auth::Authority>) -> Self {
        self.audit = Some(auth);
        self
    }

    /// Serves the `alerts` and `alert_events` tables from this store.
    pub fn with_alerts(mut self, store: Arc<dyn hoistway_alerts::AlertStore>) -> Self {
        self.alerts = Some(store);
        self
    }

    /// Runs every query's execution on `runtime` instead of the caller's.
    pub fn with_runtime(mut self, runtime: runtime::AnalyticsRuntime) -> Self {
        self.exec = Some(runtime);
        self
    }

    /// Adds `hoistway_test_sleep(ms)`: blocks the thread that evaluates it for `ms`
    /// milliseconds and returns `ms`. For tests that prove queries cannot stall ingest; never
    /// enable it in production (any reader could hold an analytics thread).
    pub fn with_test_functions(mut self, on: bool) -> Self {
        self.test_functions = on;
        self
    }

    pub fn limits(&self) -> &QueryLimits {
        &self.limits
    }

    /// A session over a fresh snapshot: every table a query sees is from the same moment.
    /// Tables, views and functions are set up once; a query only clones that session state
    /// (a fresh DataFusion session costs milliseconds, more than a small query).
    pub async fn context(&self, caller: &Caller) -> Result<SessionContext> {
        let mut state = match &caller.customer {
            None => self.base[caller.admin as usize]
                .get_or_try_init(|| self.base_state(None, caller.admin))
                .await?
                .clone(),
            Some(customer) => self.scoped_state(customer, caller.admin).await?,
        };
        state
            .config_mut()
            .set_extension(Arc::new(self.stores.snapshot()));
        state.config_mut().set_extension(Arc::new(caller.clone()));
        Ok(SessionContext::new_with_state(state))
    }

    async fn scoped_state(&self, customer: &str, admin: bool) -> Result<SessionState> {
        let key = (customer.to_string(), admin);
        let cached = self
            .scoped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        if let Some(state) = cached {
            return Ok(state);
        }
        let state = self.base_state(Some(customer), admin).await?;
        let mut scoped = self.scoped.lock().unwrap_or_else(|p| p.into_inner());
        if scoped.len() >= SCOPED_SESSIONS {
            scoped.clear();
        }
        scoped.insert(key, state.clone());
        Ok(state)
    }

    /// `readings` or `rollup_partials` for `customer`: the stored table filtered to rows of
    /// the periods it held each lift (`span_us` after the row's time included: an hour of
    /// rollups counts only when held whole). The stored table itself is not registered, so
    /// no name reaches it unfiltered.
    fn owned_view(
        &self,
        kind: Kind,
        name: &str,
        time_column: &str,
        span_us: i64,
        customer: &str,
    ) -> Result<Arc<dyn datafusion::catalog::TableProvider>> {
        use datafusion::logical_expr::{LogicalPlanBuilder, cast, col, lit};
        let owned = owned_udf(self.fleet.registry().clone(), customer.to_string());
        let plan = LogicalPlanBuilder::scan(
            name,
            datafusion::datasource::provider_as_source(Arc::new(StoredTable::new(kind))),
            None,
        )?
        .filter(owned.call(vec![
            cast(col("lift_id"), DataType::Utf8),
            cast(col(time_column), DataType::Int64),
            lit(span_us),
        ]))?
        .build()?;
        Ok(Arc::new(catalog::AsTable(Arc::new(
            datafusion::datasource::ViewTable::new(plan, None),
        ))))
    }

    async fn base_state(&self, customer: Option<&str>, admin: bool) -> Result<SessionState> {
        // DataFusion's own information_schema names Arrow types; `catalog` installs one with
        // PostgreSQL's names, and `pg_catalog`.
        let config = SessionConfig::new()
            .with_information_schema(false)
            .with_default_catalog_and_schema(catalog::DATABASE, catalog::SCHEMA)
            .with_batch_size(BATCH_ROWS);
        let ctx = SessionContext::new_with_config_rt(config, self.runtime.clone());
        ctx.register_udf(bit_count_udf());
        if self.test_functions {
            ctx.register_udf(test_sleep_udf());
        }
        match customer {
            None => {
                ctx.register_table("readings", Arc::new(StoredTable::new(Kind::Readings)))?;
                ctx.register_table(
                    "rollup_partials",
                    Arc::new(StoredTable::new(Kind::RollupsHourly)),
                )?;
            }
            Some(customer) => {
                ctx.register_table(
                    "readings",
                    self.owned_view(Kind::Readings, "readings", "ts", 0, customer)?,
                )?;
                ctx.register_table(
                    "rollup_partials",
                    self.owned_view(
                        Kind::RollupsHourly,
                        "rollup_partials",
                        "hour",
                        hoistway_store::HOUR_US - 1,
                        customer,
                    )?,
                )?;
            }
        }
        let registry = self.fleet.registry().clone();
        ctx.register_table(
            "lifts",
            Arc::new(LazyTable::new(lifts_schema(), move |selection, caller| {
                let Some(selection) = selection.for_caller(caller) else {
                    return Ok(RecordBatch::new_empty(lifts_schema()));
                };
                let infos = registry.select(&selection.filter, selection.lift_ids.as_deref());
                let rows: Vec<&hoistway_registry::LiftInfo> =
                    infos.iter().map(|i| i.as_ref()).collect();
                rows_to_batch(lifts_schema(), &rows)
            })),
        )?;
        let fleet = self.fleet.clone();
        ctx.register_table(
            "lift_state",
            Arc::new(LazyTable::new(
                lift_state_schema(),
                move |selection, caller| {
                    let Some(selection) = selection.for_caller(caller) else {
                        return Ok(RecordBatch::new_empty(lift_state_schema()));
                    };
                    let views = fleet.select(&selection.filter, selection.lift_ids.as_deref());
                    rows_to_batch(lift_state_schema(), &views)
                },
            )),
        )?;
        let alerts = self.alerts.clone();
        ctx.register_table(
            "alerts",
            Arc::new(LazyTable::new(alerts_schema(), move |_, caller| {
                alert_rows(alerts.as_deref(), caller)
            })),
        )?;
        let alerts = self.alerts.clone();
        ctx.register_table(
            "alert_events",
            Arc::new(LazyTable::new(alert_events_schema(), move |_, caller| {
                alert_event_rows(alerts.as_deref(), caller)
            })),
        )?;
        let audit = self.audit.clone();
        ctx.register_table(
            "audit",
            Arc::new(LazyTable::new(audit_schema(), move |_, caller| {
                audit_rows(audit.as_deref(), caller)
            })),
        )?;
        for (name, sql) in [
            // One aggregation: a small query plans and runs in a fraction of two.
            (
                "rollups_hourly",
                rollup_view_sql(
                    "hour",
                    "hour",
                    "bit_count(bit_or(minutes_mask))",
                    "rollup_partials",
                ),
            ),
            (
                "rollups_daily",
                rollup_view_sql(
                    "day",
                    "date_trunc('day', hour)",
                    "sum(minutes_reporting)",
                    &format!("({HOURS_SQL})"),
                ),
            ),
        ] {
            let plan = ctx.sql(&sql).await?.into_unoptimized_plan();
            ctx.register_table(
                name,
                Arc::new(datafusion::datasource::ViewTable::new(plan, Some(sql))),
            )?;
        }
        catalog::install(
            &ctx,
            catalog::hidden(admin),
            self.limits.timeout.as_millis(),
        )?;
        Ok(ctx.state())
    }

    /// Plans a read-only statement; anything else is refused before it runs. `SHOW` answers
    /// the settings a PostgreSQL client asks for ([`catalog::show_sql`]).
    pub async fn plan(&self, sql: &str, caller: &Caller) -> Result<DataFrame> {
        let shown;
        let sql = match catalog::show_sql(sql, self.limits.timeout.as_millis()) {
            Some(rewritten) => {
                shown = rewritten?;
                shown.as_str()
            }
            None => sql,
        };
        let ctx = self.context(caller).await?;
        guarded(async {
            ctx.sql_with_options(sql, read_only())
                .await
                .map_err(refusal)
        })
        .await
    }

    /// The tables and views `caller` may read, by name: (name, `TABLE` or `VIEW`, schema).
    pub async fn tables(&self, caller: &Caller) -> Result<Vec<(String, String, SchemaRef)>> {
        let ctx = self.context(caller).await?;
        let hidden = catalog::hidden(caller.admin);
        let Some(schema) = ctx
            .catalog(catalog::DATABASE)
            .and_then(|c| c.schema(catalog::SCHEMA))
        else {
            return Ok(Vec::new());
        };
        let mut names = schema.table_names();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            if hidden.contains(&name.as_str()) {
                continue;
            }
            if let Some(table) = schema.table(&name).await? {
                let kind = match table.table_type() {
                    datafusion::datasource::TableType::View => "VIEW",
                    _ => "TABLE",
                };
                out.push((name, kind.to_string(), table.schema()));
            }
        }
        Ok(out)
    }

    /// Plans a parsed statement (the PostgreSQL endpoint parses with PostgreSQL's dialect and
    /// rewrites what clients send to their catalogs), with the same refusals as [`Self::plan`].
    pub async fn plan_statement(
        &self,
        statement: datafusion::sql::sqlparser::ast::Statement,
        caller: &Caller,
    ) -> Result<DataFrame> {
        let ctx = self.context(caller).await?;
        let state = ctx.state();
        let plan = guarded(async {
            state
                .statement_to_plan(datafusion::sql::parser::Statement::Statement(Box::new(
                    statement,
                )))
                .await
                .map_err(refusal)
        })
        .await?;
        read_only().verify_plan(&plan).map_err(refusal)?;
        Ok(DataFrame::new(state, plan))
    }

    /// The baselines of a rate rule: per lift, the median of `column` of `rollups_hourly`
    /// (`trips` or `door_cycles`) in the same hour of the week as `hour_us` over the `weeks`
    /// weeks before it. Every lift is read (no row limit); hours a lift did not report are not
    /// counted.
    pub async fn hourly_baselines(
        &self,
        column: &str,
        hour_us: i64,
        weeks: u32,
    ) -> Result<HashMap<String, f64>> {
        if !matches!(column, "trips" | "door_cycles") {
            return Err(Error::Invalid(format!("no hourly baseline of {column:?}")));
        }
        let week_us = 7 * 24 * 3_600 * 1_000_000;
        let hours: Vec<String> = (1..=weeks as i64)
            .map(|w| {
                format!(
                    "TIMESTAMP '{}'",
                    hoistway_model::time::format_micros(hour_us - w * week_us)
                )
            })
            .collect();
        let sql = format!(
            "SELECT lift_id, median(CAST({column} AS DOUBLE)) AS baseline FROM rollups_hourly \
             WHERE hour IN ({}) GROUP BY lift_id",
            hours.join(", ")
        );
        let (_, mut stream) = self.stream(&sql, &Caller::fleet_admin()).await?;
        let mut out = HashMap::new();
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(Error::from)?;
            let ids = arrow::compute::cast(batch.column(0), &DataType::Utf8)
                .map_err(|e| Error::Internal(e.to_string()))?;
            let ids = ids
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .ok_or_else(|| Error::Internal("lift_id is not text".into()))?;
            let values = batch
                .column(1)
                .as_any()
                .downcast_ref::<arrow::array::Float64Array>()
                .ok_or_else(|| Error::Internal("the baseline is not a double".into()))?;
            for i in 0..batch.num_rows() {
                if !arrow::array::Array::is_null(values, i) {
                    out.insert(ids.value(i).to_string(), values.value(i));
                }
            }
        }
        Ok(out)
    }

    /// Runs a query with the row and time limits.
    pub async fn sql(&self, sql: &str, caller: &Caller) -> Result<QueryResult> {
        let df = self.plan(sql, caller).await?;
        self.collect(df).await
    }

    /// Collects at most `max_rows` rows, within the time limit, on the analytics runtime.
    pub async fn collect(&self, df: DataFrame) -> Result<QueryResult> {
        let max_rows = self.limits.max_rows;
        let limit = self.limits.timeout;
        let run = async move {
            // EXPLAIN [ANALYZE] must stay the root of its plan; its output is small anyway.
            let df = match df.logical_plan() {
                LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) => df,
                _ => df.limit(0, Some(max_rows + 1))?,
            };
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let mut stream = df.execute_stream().await?;
            let mut batches = Vec::new();
            let mut rows = 0;
            let mut truncated = false;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                let take = batch.num_rows().min(max_rows - rows);
                if take < batch.num_rows() {
                    truncated = true;
                }
                if take > 0 {
                    batches.push(batch.slice(0, take));
                }
                rows += take;
                if truncated {
                    break;
                }
            }
            Ok::<_, Error>(QueryResult {
                schema,
                batches,
                truncated,
            })
        };
        let limited = async move {
            tokio::time::timeout(limit, run)
                .await
                .map_err(|_| Error::Timeout(limit))?
        };
        match &self.exec {
            None => limited.await,
            Some(exec) => {
                let mut task = runtime::AbortOnDrop(exec.handle().spawn(limited));
                (&mut task.0)
                    .await
                    .map_err(|e| Error::Internal(format!("query task failed: {e}")))?
            }
        }
    }

    /// Streams every row of an export, up to `export_max_bytes` of Arrow data: past it the
    /// stream ends with [`Error::ResourcesExhausted`]. Whether the caller may export (its role
    /// reaches `export_role`) is for the caller to check.
    pub async fn export(
        &self,
        sql: &str,
        caller: &Caller,
    ) -> Result<(
        SchemaRef,
        impl futures::Stream<Item = Result<RecordBatch>> + Send + 'static,
    )> {
        self.export_frame(self.plan(sql, caller).await?).await
    }

    /// [`export`](Self::export) of a planned query (one with its parameters bound, say).
    pub async fn export_frame(
        &self,
        df: DataFrame,
    ) -> Result<(
        SchemaRef,
        impl futures::Stream<Item = Result<RecordBatch>> + Send + 'static,
    )> {
        let (schema, stream) = self.stream_frame(df).await?;
        let max = self.limits.export_max_bytes;
        let mut sent = 0u64;
        let mut over = false;
        let capped = stream.map(move |batch| {
            if over {
                return None;
            }
            let batch = match batch {
                Ok(batch) => batch,
                Err(e) => return Some(Err(Error::from(e))),
            };
            sent += batch.get_array_memory_size() as u64;
            if sent > max {
                over = true;
                return Some(Err(Error::ResourcesExhausted(format!(
                    "the export passed query.export_max_mb ({} MiB of Arrow data); narrow the query",
                    max >> 20
                ))));
            }
            Some(Ok(batch))
        });
        Ok((
            schema,
            capped
                .take_while(|b| std::future::ready(b.is_some()))
                .filter_map(std::future::ready),
        ))
    }

    /// An export encoded in `format` (not the JSON array), chunk by chunk. Scanning and
    /// encoding both run on the analytics runtime; a reader that leaves stops them.
    pub async fn export_encoded(
        &self,
        sql: &str,
        caller: &Caller,
        format: Format,
    ) -> Result<impl futures::Stream<Item = Result<Vec<u8>>> + Send + 'static> {
        let (schema, batches) = self.export(sql, caller).await?;
        let mut encoder = StreamEncoder::new(format, &schema)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>>>(2);
        let encode = async move {
            let mut batches = std::pin::pin!(batches);
            while let Some(batch) = batches.next().await {
                match batch.and_then(|b| encoder.push(&b)) {
                    Ok(chunk) if chunk.is_empty() => {}
                    Ok(chunk) => {
                        if tx.send(Ok(chunk)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
            let _ = tx.send(encoder.finish()).await;
        };
        let task = runtime::AbortOnDrop(match &self.exec {
            Some(exec) => exec.handle().spawn(encode),
            None => tokio::spawn(encode),
        });
        Ok(futures::stream::unfold(
            (rx, task),
            |(mut rx, task)| async move { rx.recv().await.map(|chunk| (chunk, (rx, task))) },
        ))
    }

    /// Streams every row, for exports; the caller bounds how long it reads.
    pub async fn stream(
        &self,
        sql: &str,
        caller: &Caller,
    ) -> Result<(SchemaRef, SendableRecordBatchStream)> {
        self.stream_frame(self.plan(sql, caller).await?).await
    }

    /// [`stream`](Self::stream) of a planned query.
    pub async fn stream_frame(
        &self,
        df: DataFrame,
    ) -> Result<(SchemaRef, SendableRecordBatchStream)> {
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let Some(exec) = &self.exec else {
            return Ok((schema, df.execute_stream().await?));
        };
        // Executed on the analytics runtime; batches cross over a small channel, so a slow
        // reader holds back the scan and a reader that leaves stops it at the next batch.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let started = exec.handle().spawn(async move {
            let mut stream = df.execute_stream().await?;
            Ok::<_, DataFusionError>(tokio::spawn(async move {
                while let Some(batch) = stream.next().await {
                    if tx.send(batch).await.is_err() {
                        break;
                    }
                }
            }))
        });
        let pump = runtime::AbortOnDrop(
            started
                .await
                .map_err(|e| Error::Internal(format!("query task failed: {e}")))??,
        );
        let batches = futures::stream::unfold((rx, pump), |(mut rx, pump)| async move {
            rx.recv().await.map(|batch| (batch, (rx, pump)))
        });
        Ok((
            schema.clone(),
            Box::pin(
                datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, batches),
            ),
        ))
    }
}
