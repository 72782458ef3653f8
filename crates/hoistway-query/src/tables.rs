//! DataFusion tables over a storage snapshot (`readings`, `rollup_partials`) and over the
//! registry and latest state (`lifts`, `lift_state`, built only when a query reads them).

use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown, utils::conjunction,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::union::UnionExec;
use hoistway_registry::LiftFilter;
use hoistway_store::scan::{ScanOptions, parquet_scan, tier_url};
use hoistway_store::{FileEntry, Kind, Snapshot, Tier, rollup, schema};

use crate::Caller;

/// `readings` or `rollup_partials`: committed files of both tiers plus the in-memory buffer,
/// as of the [`Snapshot`] the query's session carries (a session config extension), so every
/// table of one query sees the same moment while the table itself is registered once.
pub struct StoredTable {
    kind: Kind,
}

impl StoredTable {
    pub fn new(kind: Kind) -> Self {
        Self { kind }
    }

    fn time_column(&self) -> &'static str {
        match self.kind {
            Kind::Readings => "ts",
            Kind::RollupsHourly => "hour",
        }
    }

    fn buffer(&self, snapshot: &Snapshot) -> Vec<RecordBatch> {
        match self.kind {
            Kind::Readings => snapshot.buffer.clone(),
            Kind::RollupsHourly if snapshot.buffer.is_empty() => Vec::new(),
            Kind::RollupsHourly => vec![rollup::partials_of_readings(&snapshot.buffer)],
        }
    }
}

impl fmt::Debug for StoredTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredTable")
            .field("kind", &self.kind)
            .finish()
    }
}

#[async_trait]
impl TableProvider for StoredTable {
    fn schema(&self) -> SchemaRef {
        match self.kind {
            Kind::Readings => schema::READINGS.clone(),
            Kind::RollupsHourly => schema::ROLLUP_PARTIALS.clone(),
        }
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Used to skip files, row groups and pages; DataFusion still filters the rows.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let snapshot = state.config().get_extension::<Snapshot>().ok_or_else(|| {
            DataFusionError::Internal("the session carries no storage snapshot".into())
        })?;
        let schema = self.schema();
        let bounds = Bounds::from_filters(filters, self.time_column());
        let predicate = match conjunction(filters.iter().cloned()) {
            Some(expr) => {
                let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
                Some(state.create_physical_expr(expr, &df_schema)?)
            }
            None => None,
        };
        let partitions = state.config().target_partitions();
        let runtime = state.runtime_env();
        let mut plans: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        for tier in [Tier::Hot, Tier::Archive] {
            let files: Vec<FileEntry> = snapshot
                .files(tier, self.kind)
                .filter(|f| bounds.may_hold(f))
                .cloned()
                .collect();
            if files.is_empty() {
                continue;
            }
            let reader_factory = Arc::new(CachedParquetFileReaderFactory::new(
                runtime.object_store(tier_url(tier))?,
                runtime.cache_manager.get_file_metadata_cache(),
            ));
            plans.push(parquet_scan(
                tier,
                schema.clone(),
                &files,
                ScanOptions {
                    predicate: predicate.clone(),
                    projection: projection.cloned(),
                    ordering: None,
                    limit,
                    partitions,
                    reader_factory: Some(reader_factory),
                },
            )?);
        }
        let buffer = self.buffer(&snapshot);
        if !buffer.is_empty() || plans.is_empty() {
            plans.push(MemorySourceConfig::try_new_exec(
                &[buffer],
                schema.clone(),
                projection.cloned(),
            )?);
        }
        UnionExec::try_new(plans)
    }
}

/// Time and lift bounds read off a query's filters, to skip whole files.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bounds {
    pub from_us: Option<i64>,
    pub to_us: Option<i64>,
    pub lifts: Option<Vec<String>>,
}

fn timestamp_us(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::TimestampMicrosecond(Some(v), _) => Some(*v),
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(v.div_euclid(1000)),
        ScalarValue::TimestampMillisecond(Some(v), _) => Some(v * 1000),
        ScalarValue::TimestampSecond(Some(v), _) => Some(v * 1_000_000),
        _ => None,
    }
}

fn is_column(expr: &Expr, name: &str) -> bool {
    matches!(expr, Expr::Column(c) if c.name == name)
}

fn literal(expr: &Expr) -> Option<&ScalarValue> {
    match expr {
        Expr::Literal(v, _) => Some(v),
        _ => None,
    }
}

fn string(value: &ScalarValue) -> Option<String> {
    match value {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => Some(s.clone()),
        _ => None,
    }
}

/// The ids of `lift_id IN ('a', 'b', …)` when every item is a string literal.
fn lift_id_list(expr: &Expr) -> Option<Vec<String>> {
    match expr {
        Expr::InList(list) if !list.negated && is_column(&list.expr, "lift_id") => list
            .list
            .iter()
            .map(|e| literal(e).and_then(string))
            .collect(),
        _ => None,
    }
}

impl Bounds {
    pub fn from_filters(filters: &[Expr], time_column: &str) -> Self {
        let mut b = Bounds::default();
        for f in filters {
            b.add(f, time_column);
        }
        b
    }

    fn lower(&mut self, v: i64) {
        self.from_us = Some(self.from_us.map_or(v, |x| x.max(v)));
    }

    fn upper(&mut self, v: i64) {
        self.to_us = Some(self.to_us.map_or(v, |x| x.min(v)));
    }

    fn add(&mut self, expr: &Expr, time_column: &str) {
        match expr {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                if *op == Operator::And {
                    self.add(left, time_column);
                    self.add(right, time_column);
                    return;
                }
                let (column, op, value) = if let Some(v) = literal(right) {
                    (left.as_ref(), *op, v)
                } else if let (Some(v), Some(swapped)) = (literal(left), op.swap()) {
                    (right.as_ref(), swapped, v)
                } else {
                    return;
                };
                if is_column(column, "lift_id") {
                    if op == Operator::Eq
                        && let Some(s) = string(value)
                    {
                        self.lifts = Some(vec![s]);
                    }
                    return;
                }
                if !is_column(column, time_column) {
                    return;
                }
                let Some(t) = timestamp_us(value) else { return };
                match op {
                    Operator::Gt | Operator::GtEq => self.lower(t),
                    Operator::Lt | Operator::LtEq => self.upper(t),
                    Operator::Eq => {
                        self.lower(t);
                        self.upper(t);
                    }
                    _ => {}
                }
            }
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) if is_column(expr, time_column) => {
                if let Some(t) = literal(low).and_then(timestamp_us) {
                    self.lower(t);
                }
                if let Some(t) = literal(high).and_then(timestamp_us) {
                    self.upper(t);
                }
            }
            Expr::InList(_) => {
                if let Some(values) = lift_id_list(expr) {
                    self.lifts = Some(values);
                }
            }
            _ => {}
        }
    }

    /// Whether a file may hold rows inside the bounds (its min/max say otherwise).
    pub fn may_hold(&self, f: &FileEntry) -> bool {
        if self.from_us.is_some_and(|from| f.max_ts_us < from) {
            return false;
        }
        if self.to_us.is_some_and(|to| f.min_ts_us > to) {
            return false;
        }
        if let Some(lifts) = &self.lifts {
            return lifts
                .iter()
                .any(|l| f.min_lift.as_str() <= l.as_str() && l.as_str() <= f.max_lift.as_str());
        }
        true
    }
}

/// Equality filters on a lift's id and registry fields, read off a query's filters so that the
/// registry and latest-state tables build only the lifts the query can return.
#[derive(Debug, Clone, Default)]
pub struct LiftSelection {
    pub filter: LiftFilter,
    pub lift_ids: Option<Vec<String>>,
}

impl LiftSelection {
    pub fn from_filters(filters: &[Expr]) -> Self {
        let mut s = Self::default();
        for f in filters {
            s.add(f);
        }
        s
    }

    fn add(&mut self, expr: &Expr) {
        match expr {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::And,
                right,
            }) => {
                self.add(left);
                self.add(right);
            }
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) => {
                let (column, value) = match (literal(right), literal(left)) {
                    (Some(v), _) => (left.as_ref(), v),
                    (None, Some(v)) => (right.as_ref(), v),
                    _ => return,
                };
                let (Expr::Column(c), Some(v)) = (column, string(value)) else {
                    return;
                };
                // A second, different equality on one column selects nothing; DataFusion's own
                // filter (the pushdown is inexact) returns the right empty answer either way.
                match c.name.as_str() {
                    "lift_id" => self.lift_ids = Some(vec![v]),
                    "building" => self.filter.building = Some(v),
                    "site" => self.filter.site = Some(v),
                    "customer" => self.filter.customer = Some(v),
                    _ => {}
                }
            }
            Expr::InList(_) => {
                if let Some(values) = lift_id_list(expr) {
                    self.lift_ids = Some(values);
                }
            }
            _ => {}
        }
    }
}

type BuildRows = dyn Fn(&LiftSelection, &Caller) -> Result<RecordBatch> + Send + Sync;

/// The caller a session was made for ([`crate::QueryEngine::context`] sets it).
pub fn caller(state: &dyn Session) -> Result<Arc<Caller>> {
    state
        .config()
        .get_extension::<Caller>()
        .ok_or_else(|| DataFusionError::Internal("the session has no caller".into()))
}

impl LiftSelection {
    /// This selection narrowed to the lifts `caller` may see now; `None` when that is none.
    pub fn for_caller(&self, caller: &Caller) -> Option<LiftSelection> {
        let Some(customer) = &caller.customer else {
            return Some(self.clone());
        };
        if self.filter.customer.as_ref().is_some_and(|c| c != customer) {
            return None;
        }
        let mut s = self.clone();
        s.filter.customer = Some(customer.clone());
        Some(s)
    }
}

/// A table whose rows are computed only when a query scans it, for just the lifts its filters
/// select (the registry and latest state are in memory; turning 200,000 lifts into Arrow is
/// only worth it when asked for).
pub struct LazyTable {
    schema: SchemaRef,
    build: Box<BuildRows>,
}

impl LazyTable {
    pub fn new(
        schema: SchemaRef,
        build: impl Fn(&LiftSelection, &Caller) -> Result<RecordBatch> + Send + Sync + 'static,
    ) -> Self {
        Self {
            schema,
            build: Box::new(build),
        }
    }
}

impl fmt::Debug for LazyTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LazyTable").finish_non_exhaustive()
    }
}

#[async_trait]
impl TableProvider for LazyTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Used to build fewer rows; DataFusion still filters them.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let caller = caller(state)?;
        let batch = (self.build)(&LiftSelection::from_filters(filters), &caller)?;
        let plan: Arc<dyn ExecutionPlan> = MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.schema.clone(),
            projection.cloned(),
        )?;
        Ok(plan)
    }
}
