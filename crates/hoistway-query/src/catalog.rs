//! What PostgreSQL clients look at before they run anything: `pg_catalog`, an
//! `information_schema` with PostgreSQL type names, the settings `SHOW` and `current_setting`
//! answer, and `version()`.
//!
//! `pg_catalog` is datafusion-pg-catalog's: its dynamic tables (`pg_class`, `pg_attribute`,
//! `pg_namespace`, `pg_tables`, …) are read from this session's own DataFusion catalog, so they
//! list exactly the tables a query can name, with the PostgreSQL type each column is sent as;
//! the rest (`pg_type`, `pg_proc`, `pg_am`, …) is PostgreSQL's own contents. Tables the caller
//! may not read (`audit` for anyone but an admin) are left out of both catalogs.
//!
//! DataFusion's `information_schema` names Arrow types (`Utf8`, `Timestamp(µs, "UTC")`); the
//! one here names what a PostgreSQL server would (`text`, `timestamp with time zone`), from the
//! same mapping the wire protocol uses.

use std::sync::{Arc, OnceLock};

use arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{CatalogProviderList, MemTable, SchemaProvider, Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionContext, create_udf};
use datafusion::scalar::ScalarValue;
use datafusion_pg_catalog::pg_catalog::catalog_info::CatalogInfo;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::pg_catalog::{PgCatalogSchemaProvider, PgCatalogStaticTables};
use postgres_types::{Kind, Type};

/// The database clients connect to (`current_database()`, `pg_database`, psql's `\l`).
pub const DATABASE: &str = "hoistway";
/// The schema every table is in.
pub const SCHEMA: &str = "public";
/// The PostgreSQL version Hoistway answers as: clients pick their SQL by it.
pub const SERVER_VERSION: &str = "16.0";

/// `version()`: SQLAlchemy and others parse the PostgreSQL version out of it.
pub fn version() -> String {
    format!(
        "PostgreSQL {SERVER_VERSION} (Hoistway {}, Apache DataFusion {}) on {}",
        env!("CARGO_PKG_VERSION"),
        datafusion::DATAFUSION_VERSION,
        std::env::consts::ARCH
    )
}

/// The settings `SHOW` and `current_setting()` answer. Fixed: every query is read-only over a
/// fresh snapshot, so there is no session state to change (`SET` is acknowledged and ignored).
pub fn settings(statement_timeout_ms: u128) -> Vec<(&'static str, String)> {
    let fixed = [
        ("server_version", SERVER_VERSION),
        ("server_version_num", "160000"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("datestyle", "ISO, MDY"),
        ("intervalstyle", "postgres"),
        ("timezone", "UTC"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("search_path", "\"$user\", public"),
        ("transaction_isolation", "repeatable read"),
        ("default_transaction_isolation", "repeatable read"),
        ("transaction_read_only", "on"),
        ("default_transaction_read_only", "on"),
        ("max_identifier_length", "63"),
        ("max_index_keys", "32"),
        ("application_name", ""),
        ("bytea_output", "hex"),
        ("lc_collate", "C.UTF-8"),
        ("lc_ctype", "C.UTF-8"),
        ("is_superuser", "off"),
        ("extra_float_digits", "1"),
    ];
    let mut all: Vec<(&'static str, String)> =
        fixed.into_iter().map(|(k, v)| (k, v.to_string())).collect();
    all.push(("statement_timeout", statement_timeout_ms.to_string()));
    all.sort();
    all
}

/// The value of one setting, by name in any case, as PostgreSQL reports an unknown one.
pub fn setting(name: &str, statement_timeout_ms: u128) -> Result<String> {
    let lower = name.to_ascii_lowercase();
    settings(statement_timeout_ms)
        .into_iter()
        .find(|(k, _)| *k == lower)
        .map(|(_, v)| v)
        .ok_or_else(|| {
            DataFusionError::Plan(format!("unrecognized configuration parameter \"{name}\""))
        })
}

/// The SQL a `SHOW` statement stands for: `SHOW name`, `SHOW ALL` and `SHOW TABLES`. `None`
/// for anything else.
pub fn show_sql(sql: &str, statement_timeout_ms: u128) -> Option<Result<String>> {
    let words: Vec<&str> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .collect();
    if !words.first()?.eq_ignore_ascii_case("show") {
        return None;
    }
    let quote = |s: &str| s.replace('\'', "''");
    Some(match &words[1..] {
        [all] if all.eq_ignore_ascii_case("all") => {
            let rows: Vec<String> = settings(statement_timeout_ms)
                .into_iter()
                .map(|(k, v)| format!("('{k}', '{}')", quote(&v)))
                .collect();
            Ok(format!(
                "SELECT column1 AS name, column2 AS setting FROM (VALUES {})",
                rows.join(", ")
            ))
        }
        [tables] if tables.eq_ignore_ascii_case("tables") => Ok(
            "SELECT table_catalog, table_schema, table_name, table_type \
             FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name"
                .to_string(),
        ),
        [] => return None,
        words => {
            // `SHOW TRANSACTION ISOLATION LEVEL`, `SHOW TIME ZONE`: PostgreSQL's spellings.
            let name = words.join("_").trim_matches('"').to_ascii_lowercase();
            let name = match name.as_str() {
                "transaction_isolation_level" => "transaction_isolation",
                "time_zone" => "timezone",
                other => other,
            };
            setting(name, statement_timeout_ms)
                .map(|v| format!("SELECT '{}' AS \"{}\"", quote(&v), name.replace('"', "")))
        }
    })
}

/// The PostgreSQL types `pg_attribute` reports as themselves (datafusion-pg-catalog reports
/// any other column as `text`).
const CATALOGUED: [Type; 16] = [
    Type::BOOL,
    Type::CHAR,
    Type::INT2,
    Type::INT4,
    Type::INT8,
    Type::FLOAT4,
    Type::FLOAT8,
    Type::TEXT,
    Type::BYTEA,
    Type::DATE,
    Type::TIME,
    Type::TIMESTAMP,
    Type::TIMESTAMPTZ,
    Type::NUMERIC,
    Type::INT4_ARRAY,
    Type::TEXT_ARRAY,
];

/// Whether a column of this Arrow type is sent as its own PostgreSQL type; if not (maps,
/// structs, lists of numbers, …), it is sent as `text` in Arrow's display form, which is
/// also what the catalogs report for it.
pub fn sent_natively(data_type: &DataType) -> bool {
    arrow_pg::datatypes::into_pg_type(data_type).is_ok_and(|t| CATALOGUED.contains(&t))
}

/// The PostgreSQL type an Arrow type is sent as on the wire and reported as in the catalogs.
pub fn pg_type(data_type: &DataType) -> Type {
    match arrow_pg::datatypes::into_pg_type(data_type) {
        Ok(t) if CATALOGUED.contains(&t) => t,
        _ => Type::TEXT,
    }
}

/// `information_schema.columns.data_type` of a PostgreSQL type, as PostgreSQL words it.
fn sql_type_name(t: &Type) -> String {
    match *t {
        Type::BOOL => "boolean",
        Type::INT2 => "smallint",
        Type::INT4 => "integer",
        Type::INT8 => "bigint",
        Type::FLOAT4 => "real",
        Type::FLOAT8 => "double precision",
        Type::NUMERIC => "numeric",
        Type::TEXT => "text",
        Type::VARCHAR => "character varying",
        Type::BYTEA => "bytea",
        Type::DATE => "date",
        Type::TIME => "time without time zone",
        Type::TIMESTAMP => "timestamp without time zone",
        Type::TIMESTAMPTZ => "timestamp with time zone",
        Type::INTERVAL => "interval",
        Type::JSON => "json",
        Type::JSONB => "jsonb",
        _ if matches!(t.kind(), Kind::Array(_)) => "ARRAY",
        _ => "USER-DEFINED",
    }
    .to_string()
}

/// The tables a caller's catalogs leave out: `audit` unless an admin.
pub fn hidden(admin: bool) -> &'static [&'static str] {
    if admin { &[] } else { &["audit"] }
}

/// Installs `pg_catalog`, `information_schema`, `version()` and `current_setting()` into a
/// session whose tables are all registered, leaving `hidden` tables out of both catalogs.
pub fn install(
    ctx: &SessionContext,
    hidden: &'static [&'static str],
    statement_timeout_ms: u128,
) -> Result<()> {
    datafusion_pg_catalog::setup_pg_catalog(ctx, DATABASE, EmptyContextProvider).map_err(|e| *e)?;
    let visible = Visible {
        list: ctx.state().catalog_list().clone(),
        hidden,
    };
    let catalog = ctx
        .catalog(DATABASE)
        .ok_or_else(|| DataFusionError::Internal(format!("no catalog {DATABASE}")))?;
    // Replaces the one setup_pg_catalog registered, so that hidden tables stay hidden.
    let pg_catalog =
        PgCatalogSchemaProvider::try_new(visible.clone(), static_tables()?, EmptyContextProvider)
            .map_err(|e| DataFusionError::Internal(e.to_string()))?;
    catalog.register_schema(
        "pg_catalog",
        Arc::new(PgCatalog {
            inner: Arc::new(pg_catalog),
            empty: empty_catalog_tables()?,
        }),
    )?;
    catalog.register_schema("information_schema", Arc::new(InformationSchema(visible)))?;
    let version = version();
    ctx.register_udf(create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |_| {
            Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
                version.clone(),
            ))))
        }),
    ));
    ctx.register_udf(current_setting_udf(statement_timeout_ms));
    ctx.register_udf(to_regtype_udf(type_oids()?));
    // Asked by SQLAlchemy's reflection about sequences and indexes Hoistway's tables do not
    // have (null, as PostgreSQL answers for a column without a sequence), and collations
    // (every one visible).
    for (name, arities) in [
        ("pg_get_serial_sequence", &[2][..]),
        ("pg_get_indexdef", &[1, 3]),
    ] {
        ctx.register_udf(ScalarUDF::new_from_impl(NoSuchObject::new(name, arities)));
    }
    ctx.register_udf(create_udf(
        "pg_collation_is_visible",
        vec![DataType::Int32],
        DataType::Boolean,
        Volatility::Stable,
        Arc::new(|_: &[ColumnarValue]| Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))))),
    ));
    ctx.register_udf(ScalarUDF::new_from_impl(JsonBuildObject::default()));
    Ok(())
}

/// A catalog function about objects Hoistway's tables never have: text, always null.
#[derive(Debug, PartialEq, Eq, Hash)]
struct NoSuchObject {
    name: &'static str,
    signature: Signature,
}

impl NoSuchObject {
    fn new(name: &'static str, arities: &[usize]) -> Self {
        let signature = Signature::one_of(
            arities
                .iter()
                .map(|n| datafusion::logical_expr::TypeSignature::Any(*n))
                .collect(),
            Volatility::Stable,
        );
        Self { name, signature }
    }
}

impl ScalarUDFImpl for NoSuchObject {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None)))
    }
}

/// `json_build_object(key, value, …)`: a JSON object as text.
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonBuildObject {
    signature: Signature,
}

impl Default for JsonBuildObject {
    fn default() -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if !args.args.len().is_multiple_of(2) {
            return Err(DataFusionError::Plan(
                "json_build_object takes keys and values in pairs".into(),
            ));
        }
        let columns = ColumnarValue::values_to_arrays(&args.args)?;
        let rows = args.number_rows;
        let mut out = arrow::array::StringBuilder::new();
        for row in 0..rows {
            let mut object = serde_json::Map::new();
            for pair in columns.chunks(2) {
                let key = ScalarValue::try_from_array(&pair[0], row)?;
                let value = ScalarValue::try_from_array(&pair[1], row)?;
                let value = if value.is_null() {
                    serde_json::Value::Null
                } else {
                    match value {
                        ScalarValue::Boolean(Some(b)) => serde_json::Value::Bool(b),
                        v if v.data_type().is_numeric() => serde_json::from_str(&v.to_string())
                            .unwrap_or(serde_json::Value::String(v.to_string())),
                        v => serde_json::Value::String(v.to_string()),
                    }
                };
                object.insert(key.to_string(), value);
            }
            out.append_value(serde_json::Value::Object(object).to_string());
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// Every type of `pg_type` by name, with the SQL spellings `to_regtype` also takes.
fn type_oids() -> Result<Arc<std::collections::HashMap<String, i32>>> {
    static OIDS: OnceLock<Arc<std::collections::HashMap<String, i32>>> = OnceLock::new();
    if let Some(oids) = OIDS.get() {
        return Ok(oids.clone());
    }
    let mut oids = std::collections::HashMap::new();
    for batch in static_tables()?.pg_type.data() {
        let names = arrow::compute::cast(
            batch
                .column_by_name("typname")
                .ok_or_else(|| DataFusionError::Internal("pg_type has no typname".into()))?,
            &DataType::Utf8,
        )?;
        let ids = arrow::compute::cast(
            batch
                .column_by_name("oid")
                .ok_or_else(|| DataFusionError::Internal("pg_type has no oid".into()))?,
            &DataType::Int32,
        )?;
        let names = names.as_any().downcast_ref::<StringArray>();
        let ids = ids.as_any().downcast_ref::<Int32Array>();
        if let (Some(names), Some(ids)) = (names, ids) {
            for (name, id) in names.iter().zip(ids.iter()) {
                if let (Some(name), Some(id)) = (name, id) {
                    oids.insert(name.to_string(), id);
                }
            }
        }
    }
    for (alias, name) in [
        ("integer", "int4"),
        ("int", "int4"),
        ("smallint", "int2"),
        ("bigint", "int8"),
        ("real", "float4"),
        ("double precision", "float8"),
        ("boolean", "bool"),
        ("character varying", "varchar"),
        ("timestamp with time zone", "timestamptz"),
        ("timestamp without time zone", "timestamp"),
        ("time without time zone", "time"),
        ("decimal", "numeric"),
    ] {
        if let Some(id) = oids.get(name).copied() {
            oids.insert(alias.to_string(), id);
        }
    }
    Ok(OIDS.get_or_init(|| Arc::new(oids)).clone())
}

/// `to_regtype(name)`: a type's oid, or null when there is no such type (psycopg looks up
/// optional types such as `hstore` this way while connecting).
fn to_regtype_udf(oids: Arc<std::collections::HashMap<String, i32>>) -> ScalarUDF {
    let lookup = move |name: Option<&str>| {
        let name = name?
            .trim()
            .trim_start_matches("pg_catalog.")
            .to_ascii_lowercase();
        match name.strip_suffix("[]") {
            Some(element) => oids.get(&format!("_{element}")).copied(),
            None => oids.get(&name).copied(),
        }
    };
    create_udf(
        "to_regtype",
        vec![DataType::Utf8],
        DataType::Int32,
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            let names = args[0].to_array(1)?;
            let names = arrow::compute::cast(&names, &DataType::Utf8)?;
            let names = names
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| DataFusionError::Internal("names are not text".into()))?;
            let oids: Int32Array = names.iter().map(&lookup).collect();
            Ok(match &args[0] {
                ColumnarValue::Scalar(_) => {
                    ColumnarValue::Scalar(ScalarValue::try_from_array(&oids, 0)?)
                }
                ColumnarValue::Array(_) => ColumnarValue::Array(Arc::new(oids)),
            })
        }),
    )
}

fn current_setting_udf(statement_timeout_ms: u128) -> ScalarUDF {
    create_udf(
        "current_setting",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| match &args[0] {
            ColumnarValue::Scalar(name) => {
                let name = name.to_string();
                Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(setting(
                    &name,
                    statement_timeout_ms,
                )?))))
            }
            ColumnarValue::Array(names) => {
                let names = arrow::compute::cast(names, &DataType::Utf8)?;
                let names = names
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| DataFusionError::Internal("names are not text".into()))?;
                let values = names
                    .iter()
                    .map(|n| n.map(|n| setting(n, statement_timeout_ms)).transpose())
                    .collect::<Result<StringArray>>()?;
                Ok(ColumnarValue::Array(Arc::new(values)))
            }
        }),
    )
}

/// `pg_index` and `pg_constraint` as Hoistway's tables have them: empty (no index, no key, no
/// constraint), with PostgreSQL's column types. datafusion-pg-catalog's copies hold a
/// PostgreSQL server's system indexes, with vectors (`indkey`, `conkey`) as text, which
/// clients' `unnest(indkey)` cannot read.
fn empty_catalog_tables() -> Result<std::collections::HashMap<&'static str, Arc<dyn TableProvider>>>
{
    let statics = static_tables()?;
    let int2s = DataType::List(Arc::new(Field::new_list_field(DataType::Int16, true)));
    let oids = DataType::List(Arc::new(Field::new_list_field(DataType::Int32, true)));
    let mut out: std::collections::HashMap<&'static str, Arc<dyn TableProvider>> =
        std::collections::HashMap::new();
    for (name, schema, vectors) in [
        (
            "pg_index",
            statics.pg_index.schema(),
            &[
                ("indkey", &int2s),
                ("indcollation", &oids),
                ("indclass", &oids),
                ("indoption", &int2s),
            ][..],
        ),
        (
            "pg_constraint",
            statics.pg_constraint.schema(),
            &[
                ("conkey", &int2s),
                ("confkey", &int2s),
                ("conpfeqop", &oids),
                ("conppeqop", &oids),
                ("conffeqop", &oids),
                ("confdelsetcols", &int2s),
                ("conexclop", &oids),
            ][..],
        ),
    ] {
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .map(|f| match vectors.iter().find(|(n, _)| n == f.name()) {
                Some((_, t)) => Field::new(f.name(), (*t).clone(), true),
                None => f.as_ref().clone(),
            })
            .collect();
        let schema = Arc::new(Schema::new(fields));
        out.insert(name, Arc::new(MemTable::try_new(schema, vec![vec![]])?));
    }
    Ok(out)
}

/// datafusion-pg-catalog's `pg_catalog`, with the tables of [`empty_catalog_tables`].
#[derive(Debug)]
struct PgCatalog {
    inner: Arc<dyn SchemaProvider>,
    empty: std::collections::HashMap<&'static str, Arc<dyn TableProvider>>,
}

#[async_trait]
impl SchemaProvider for PgCatalog {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let name = name.to_ascii_lowercase();
        if let Some(table) = self.empty.get(name.as_str()) {
            return Ok(Some(table.clone()));
        }
        let Some(table) = self.inner.table(&name).await? else {
            return Ok(None);
        };
        if name != "pg_class" {
            return Ok(Some(table));
        }
        // pg_class without options or privileges, as PostgreSQL has them for a table that
        // sets none (SQLAlchemy's index reflection reads `reloptions`).
        use datafusion::logical_expr::{LogicalPlanBuilder, cast, col, lit};
        let texts = DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)));
        let mut columns: Vec<Expr> = table
            .schema()
            .fields()
            .iter()
            .map(|f| col(datafusion::common::Column::new_unqualified(f.name())))
            .collect();
        for extra in ["reloptions", "relacl"] {
            columns.push(cast(lit(ScalarValue::Null), texts.clone()).alias(extra));
        }
        let plan = LogicalPlanBuilder::scan(
            "pg_class",
            datafusion::datasource::provider_as_source(table),
            None,
        )?
        .project(columns)?
        .build()?;
        Ok(Some(Arc::new(datafusion::datasource::ViewTable::new(
            plan, None,
        ))))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }
}

/// PostgreSQL's own catalog contents, read once per process.
fn static_tables() -> Result<Arc<PgCatalogStaticTables>> {
    static TABLES: OnceLock<Arc<PgCatalogStaticTables>> = OnceLock::new();
    if let Some(t) = TABLES.get() {
        return Ok(t.clone());
    }
    let loaded = Arc::new(PgCatalogStaticTables::try_new()?);
    Ok(TABLES.get_or_init(|| loaded).clone())
}

/// The session's catalog without the tables its caller may not read.
#[derive(Clone)]
struct Visible {
    list: Arc<dyn CatalogProviderList>,
    hidden: &'static [&'static str],
}

impl std::fmt::Debug for Visible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Visible")
            .field("hidden", &self.hidden)
            .finish()
    }
}

impl Visible {
    fn shown(&self, schema: &str, table: &str) -> bool {
        !(schema == SCHEMA && self.hidden.contains(&table))
    }

    /// A table the caller may read, by catalog, schema and name.
    async fn table(
        &self,
        catalog: &str,
        schema: &str,
        name: &str,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        if !self.shown(schema, name) {
            return Ok(None);
        }
        match self.list.catalog(catalog).and_then(|c| c.schema(schema)) {
            Some(schema) => schema.table(name).await,
            None => Ok(None),
        }
    }

    /// Every (schema, table name, provider) a caller may read, in name order.
    async fn tables(&self) -> Result<Vec<(String, String, Arc<dyn TableProvider>)>> {
        let mut out = Vec::new();
        let Some(catalog) = self.list.catalog(DATABASE) else {
            return Ok(out);
        };
        let mut schemas = catalog.schema_names();
        schemas.sort();
        for schema_name in schemas {
            // Itself and pg_catalog are PostgreSQL's, not the data's.
            if schema_name == "information_schema" || schema_name == "pg_catalog" {
                continue;
            }
            let Some(schema) = catalog.schema(&schema_name) else {
                continue;
            };
            let mut names = schema.table_names();
            names.sort();
            for name in names {
                if !self.shown(&schema_name, &name) {
                    continue;
                }
                if let Some(table) = schema.table(&name).await? {
                    out.push((schema_name.clone(), name, table));
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl CatalogInfo for Visible {
    async fn catalog_names(&self) -> Result<Vec<String>> {
        Ok(vec![DATABASE.to_string()])
    }

    /// Without `information_schema`: its tables are not on the search path, and a client that
    /// lists tables with `pg_table_is_visible` (which cannot tell schemas apart here) would
    /// take them for Hoistway's. It is still there to query.
    async fn schema_names(&self, catalog_name: &str) -> Result<Option<Vec<String>>> {
        Ok(self.list.catalog(catalog_name).map(|c| {
            c.schema_names()
                .into_iter()
                .filter(|s| s != "information_schema")
                .collect()
        }))
    }

    async fn table_names(
        &self,
        catalog_name: &str,
        schema_name: &str,
    ) -> Result<Option<Vec<String>>> {
        Ok(self
            .list
            .catalog(catalog_name)
            .and_then(|c| c.schema(schema_name))
            .map(|s| {
                s.table_names()
                    .into_iter()
                    .filter(|t| self.shown(schema_name, t))
                    .collect()
            }))
    }

    async fn table_schema(
        &self,
        catalog_name: &str,
        schema_name: &str,
        table_name: &str,
    ) -> Result<Option<SchemaRef>> {
        let table = self.table(catalog_name, schema_name, table_name).await?;
        Ok(table.map(|t| t.schema()))
    }

    async fn table_type(
        &self,
        catalog_name: &str,
        schema_name: &str,
        table_name: &str,
    ) -> Result<Option<TableType>> {
        let table = self.table(catalog_name, schema_name, table_name).await?;
        Ok(table.map(|t| t.table_type()))
    }
}

/// `information_schema`: `tables`, `columns`, `schemata` and `views`, with PostgreSQL names.
#[derive(Debug)]
struct InformationSchema(Visible);

const INFORMATION_SCHEMA_TABLES: [&str; 4] = ["columns", "schemata", "tables", "views"];

fn text(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

fn strings(values: Vec<Option<String>>) -> ArrayRef {
    Arc::new(StringArray::from(values))
}

/// A batch of text columns, by name.
fn text_batch(columns: Vec<(&str, Vec<Option<String>>)>) -> Result<RecordBatch> {
    let schema = Schema::new(
        columns
            .iter()
            .map(|(name, _)| text(name))
            .collect::<Vec<_>>(),
    );
    let arrays = columns.into_iter().map(|(_, v)| strings(v)).collect();
    Ok(RecordBatch::try_new(Arc::new(schema), arrays)?)
}

impl InformationSchema {
    async fn batch(&self, name: &str) -> Result<Option<RecordBatch>> {
        let tables = self.0.tables().await?;
        let s = |v: &str| Some(v.to_string());
        let batch = match name {
            "tables" => {
                let n = tables.len();
                let kind = |t: &Arc<dyn TableProvider>| match t.table_type() {
                    TableType::View => "VIEW",
                    TableType::Temporary => "LOCAL TEMPORARY",
                    TableType::Base => "BASE TABLE",
                };
                text_batch(vec![
                    ("table_catalog", vec![s(DATABASE); n]),
                    ("table_schema", tables.iter().map(|t| s(&t.0)).collect()),
                    ("table_name", tables.iter().map(|t| s(&t.1)).collect()),
                    ("table_type", tables.iter().map(|t| s(kind(&t.2))).collect()),
                    ("is_insertable_into", vec![s("NO"); n]),
                    ("is_typed", vec![s("NO"); n]),
                ])?
            }
            "views" => {
                let views: Vec<_> = tables
                    .iter()
                    .filter(|t| t.2.table_type() == TableType::View)
                    .collect();
                let n = views.len();
                let definition =
                    |t: &Arc<dyn TableProvider>| t.get_table_definition().map(str::to_string);
                text_batch(vec![
                    ("table_catalog", vec![s(DATABASE); n]),
                    ("table_schema", views.iter().map(|t| s(&t.0)).collect()),
                    ("table_name", views.iter().map(|t| s(&t.1)).collect()),
                    (
                        "view_definition",
                        views.iter().map(|t| definition(&t.2)).collect(),
                    ),
                    ("check_option", vec![s("NONE"); n]),
                    ("is_updatable", vec![s("NO"); n]),
                    ("is_insertable_into", vec![s("NO"); n]),
                ])?
            }
            "schemata" => {
                let names = ["information_schema", "pg_catalog", SCHEMA];
                text_batch(vec![
                    ("catalog_name", vec![s(DATABASE); names.len()]),
                    ("schema_name", names.iter().map(|n| s(n)).collect()),
                    ("schema_owner", vec![s("hoistway"); names.len()]),
                ])?
            }
            "columns" => {
                let schema = Arc::new(Schema::new(vec![
                    text("table_catalog"),
                    text("table_schema"),
                    text("table_name"),
                    text("column_name"),
                    Field::new("ordinal_position", DataType::Int32, false),
                    text("column_default"),
                    text("is_nullable"),
                    text("data_type"),
                    text("udt_catalog"),
                    text("udt_schema"),
                    text("udt_name"),
                    text("is_updatable"),
                ]));
                let mut c: [Vec<Option<String>>; 10] = Default::default();
                let mut ordinal = Vec::new();
                for (schema_name, table_name, table) in &tables {
                    for (i, field) in table.schema().fields().iter().enumerate() {
                        let pg = pg_type(field.data_type());
                        c[0].push(s(DATABASE));
                        c[1].push(s(schema_name));
                        c[2].push(s(table_name));
                        c[3].push(s(field.name()));
                        ordinal.push(i as i32 + 1);
                        c[4].push(None);
                        c[5].push(s(if field.is_nullable() { "YES" } else { "NO" }));
                        c[6].push(Some(sql_type_name(&pg)));
                        c[7].push(s(DATABASE));
                        c[8].push(s("pg_catalog"));
                        c[9].push(s(pg.name()));
                    }
                }
                let n = ordinal.len();
                let [c0, c1, c2, c3, c4, c5, c6, c7, c8, c9] = c;
                RecordBatch::try_new(
                    schema,
                    vec![
                        strings(c0),
                        strings(c1),
                        strings(c2),
                        strings(c3),
                        Arc::new(Int32Array::from(ordinal)),
                        strings(c4),
                        strings(c5),
                        strings(c6),
                        strings(c7),
                        strings(c8),
                        strings(c9),
                        strings(vec![s("NO"); n]),
                    ],
                )?
            }
            _ => return Ok(None),
        };
        Ok(Some(batch))
    }
}

#[async_trait]
impl SchemaProvider for InformationSchema {
    fn table_names(&self) -> Vec<String> {
        INFORMATION_SCHEMA_TABLES
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(batch) = self.batch(&name.to_ascii_lowercase()).await? else {
            return Ok(None);
        };
        let table = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
        Ok(Some(Arc::new(table)))
    }

    fn table_exist(&self, name: &str) -> bool {
        INFORMATION_SCHEMA_TABLES.contains(&name.to_ascii_lowercase().as_str())
    }
}

/// A view that the catalogs list as a table: a customer's `readings` is a filtered view of the
/// stored table, but to the customer it is their table (psql's `\dt` lists tables only).
#[derive(Debug)]
pub struct AsTable(pub Arc<dyn TableProvider>);

#[async_trait]
impl TableProvider for AsTable {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn get_logical_plan(&'_ self) -> Option<std::borrow::Cow<'_, LogicalPlan>> {
        self.0.get_logical_plan()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.0.scan(state, projection, filters, limit).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<datafusion::logical_expr::TableProviderFilterPushDown>> {
        self.0.supports_filters_pushdown(filters)
    }
}
