//! Stored data: SQL, a lift's readings for charts, and storage status and upkeep.

use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use datafusion::prelude::{col, lit};
use datafusion::scalar::ScalarValue;
use futures::StreamExt;
use hoistway_query::{Error as QueryError, Format, QueryResult};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::AppState;
use crate::problem::{ApiResult, Problem};

pub const SQL_BODY_LIMIT: usize = 256 << 10;

fn query_problem(e: QueryError) -> Problem {
    match e {
        QueryError::Refused(m) => Problem::new(
            StatusCode::FORBIDDEN,
            "read-only-sql",
            "Statement refused",
            m,
        ),
        QueryError::Invalid(m) => {
            Problem::new(StatusCode::BAD_REQUEST, "invalid-sql", "Invalid query", m)
        }
        QueryError::Timeout(_) | QueryError::ResourcesExhausted(_) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "query-limit",
            "Query limit exceeded",
            format!("{e}; narrow the time range or the lifts, or aggregate"),
        ),
        QueryError::Forbidden(m) => Problem::forbidden(m),
        QueryError::Internal(_) => Problem::internal(&e),
    }
}

/// A read-only SQL statement.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    /// One `SELECT` (or `WITH … SELECT`, `EXPLAIN`, `SHOW`, `DESCRIBE`).
    sql: String,
    /// `json` (default), `csv` or `parquet`.
    #[serde(default)]
    format: Option<String>,
}

#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FormatQuery {
    /// `json` (default), `csv` or `parquet`.
    format: Option<String>,
}

/// A query's answer as JSON.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct QueryAnswer {
    columns: Vec<Column>,
    /// One object per row, keyed by column name.
    #[schema(value_type = Vec<Object>)]
    rows: Box<RawValue>,
    row_count: usize,
    /// The answer was cut at the row or byte limit (also the `hoistway-truncated` header).
    truncated: bool,
    elapsed_ms: u64,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct Column {
    name: String,
    /// The Arrow type, e.g. `Timestamp(Microsecond, Some("UTC"))`, `Int64`, `Utf8`.
    #[serde(rename = "type")]
    kind: String,
}

fn parse_format(name: Option<&str>) -> ApiResult<Format> {
    match name {
        None => Ok(Format::Json),
        Some(n) => Format::parse(n).ok_or_else(|| {
            Problem::bad_request(format!("unknown format {n:?}; use {}", Format::NAMES))
        }),
    }
}

/// An export: a read-only statement whose whole result is streamed.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ExportRequest {
    /// One `SELECT` (or `WITH … SELECT`).
    sql: String,
    /// `parquet` (default), `csv`, `ndjson` or `arrow` (the Arrow IPC stream).
    #[serde(default)]
    format: Option<String>,
}

/// `POST /v1/sql/export`: every row of a read-only query, streamed as it is read (no row cap),
/// for operators and admins (the route's rule), and only admins when `query.export_role` says so.
#[utoipa::path(post, path = "/v1/sql/export", summary = "Export a read-only SQL query's whole result",
    request_body(content = ExportRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The whole result, streamed (a customer's user gets only its lifts' data). Past `query.export_max_mb` of data, or on a failure while reading, the body ends early without its last chunk (a client sees an incomplete transfer, never a short file that looks whole)", content(
            (Vec<u8> = "application/vnd.apache.parquet"),
            (String = "text/csv"),
            (String = "application/x-ndjson"),
            (Vec<u8> = "application/vnd.apache.arrow.stream"),
        )),
        (status = 403, description = "Not a read-only statement, or the role may not export", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn sql_export(
    State(app): State<AppState>,
    staff: crate::auth::Staff,
    axum::Extension(addr): axum::Extension<crate::auth::ClientAddr>,
    body: Body,
) -> ApiResult<Response> {
    let needed = app.query().limits().export_role;
    if staff.0.allows(hoistway_auth::Access::Role(needed)).is_err() {
        return Err(Problem::forbidden(format!(
            "exports need the {needed} role or above; POST /v1/sql answers up to {} rows",
            app.query().limits().max_rows
        )));
    }
    let bytes = crate::routes::read_limited(body, SQL_BODY_LIMIT).await?;
    let request = crate::routes::json_body::<ExportRequest>(&bytes)?;
    if request.sql.trim().is_empty() {
        return Err(Problem::bad_request("no SQL given"));
    }
    let format = match request.format.as_deref() {
        None => Format::Parquet,
        Some("json") => {
            return Err(Problem::bad_request(
                "an export streams: use ndjson (one object per line) rather than json",
            ));
        }
        Some(n) => parse_format(Some(n))?,
    };
    let text: String = request.sql.chars().take(2000).collect();
    let chunks = app
        .query()
        .export_encoded(&request.sql, &staff.query_caller(), format)
        .await;
    let outcome = if chunks.is_ok() { "ok" } else { "failed" };
    crate::auth::record(
        &app,
        staff.username(),
        "sql.export",
        "",
        outcome,
        addr,
        &text,
    )
    .await;
    let chunks = chunks.map_err(query_problem)?;
    let username = staff.username().to_string();
    let body = chunks.map(move |chunk| {
        chunk.map(bytes::Bytes::from).map_err(|e| {
            // The status is sent already: ending the body early is how the client learns.
            tracing::warn!(user = %username, error = %e, "an export stopped");
            std::io::Error::other(e.to_string())
        })
    });
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        )],
        Body::from_stream(body),
    )
        .into_response())
}

/// `POST /v1/sql`: a read-only query, as JSON `{"sql": ..., "format": ...}` or as plain text.
#[utoipa::path(post, path = "/v1/sql", summary = "Run a read-only SQL query", params(FormatQuery),
    request_body(description = "JSON `{\"sql\", \"format\"}` or the statement as plain text", content(
        (SqlRequest = "application/json"),
        (String = "text/plain"),
    )),
    responses(
        (status = 200, description = "The rows (a customer's user sees only its lifts' data); CSV or Parquet when asked", content(
            (QueryAnswer = "application/json"),
            (String = "text/csv"),
            (Vec<u8> = "application/vnd.apache.parquet"),
        )),
        (status = 403, description = "Not a read-only statement", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A time, row or memory limit was hit", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn sql(
    State(app): State<AppState>,
    staff: crate::auth::Staff,
    axum::Extension(addr): axum::Extension<crate::auth::ClientAddr>,
    query: Result<Query<FormatQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let Query(q) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let bytes = crate::routes::read_limited(body, SQL_BODY_LIMIT).await?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let request = if is_json {
        crate::routes::json_body::<SqlRequest>(&bytes)?
    } else {
        SqlRequest {
            sql: String::from_utf8(bytes.to_vec())
                .map_err(|_| Problem::bad_request("the SQL text is not UTF-8"))?,
            format: None,
        }
    };
    if request.sql.trim().is_empty() {
        return Err(Problem::bad_request("no SQL given"));
    }
    let format = parse_format(request.format.as_deref().or(q.format.as_deref()))?;
    let started = Instant::now();
    let text: String = request.sql.chars().take(2000).collect();
    let result = app.query().sql(&request.sql, &staff.query_caller()).await;
    let outcome = if result.is_ok() { "ok" } else { "failed" };
    crate::auth::record(&app, staff.username(), "sql", "", outcome, addr, &text).await;
    let result = result.map_err(query_problem)?;
    metrics::histogram!("hoistway_query_duration_seconds").record(started.elapsed().as_secs_f64());
    respond(format, result, started)
}

fn respond(format: Format, result: QueryResult, started: Instant) -> ApiResult<Response> {
    let encoded =
        hoistway_query::encode(format, &result.schema, &result.batches).map_err(query_problem)?;
    let mut response = if format == Format::Json {
        let rows =
            RawValue::from_string(String::from_utf8(encoded).map_err(|e| Problem::internal(&e))?)
                .map_err(|e| Problem::internal(&e))?;
        let columns = result
            .schema
            .fields()
            .iter()
            .map(|f| Column {
                name: f.name().clone(),
                kind: f.data_type().to_string(),
            })
            .collect();
        Json(QueryAnswer {
            columns,
            rows,
            row_count: result.rows(),
            truncated: result.truncated,
            elapsed_ms: started.elapsed().as_millis() as u64,
        })
        .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            )],
            encoded,
        )
            .into_response()
    };
    response.headers_mut().insert(
        "hoistway-truncated",
        HeaderValue::from_static(if result.truncated { "true" } else { "false" }),
    );
    Ok(response)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReadingsQuery {
    /// RFC 3339 time or a date; default: 24 h before `to`.
    from: Option<String>,
    /// RFC 3339 time or a date (exclusive); default: now.
    to: Option<String>,
    /// Absent: raw readings. `1m`…`59m`: buckets of that many minutes; `1h`, `1d`: the rollups.
    step: Option<String>,
    /// `json` (default), `csv` or `parquet`.
    format: Option<String>,
}

fn parse_time(name: &str, value: &str) -> ApiResult<i64> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_micros())
        .or_else(|_| {
            chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d").map(|d| {
                d.and_hms_opt(0, 0, 0)
                    .expect("midnight exists")
                    .and_utc()
                    .timestamp_micros()
            })
        })
        .map_err(|_| {
            Problem::bad_request(format!(
                "{name} must be an RFC 3339 time (2026-11-23T10:00:00Z) or a date (2026-11-23), got {value:?}"
            ))
        })
}

fn timestamp(us: i64) -> datafusion::prelude::Expr {
    lit(ScalarValue::TimestampMicrosecond(
        Some(us),
        Some("UTC".into()),
    ))
}

/// `GET /v1/lifts/{id}/readings?from=&to=&step=`: raw readings (default: the last 24 h), or
/// hourly / daily rollups with `step=1h|1d`.
#[utoipa::path(get, path = "/v1/lifts/{lift_id}/readings", summary = "Get a lift's readings or buckets for a time range", params(("lift_id" = String, Path), ReadingsQuery),
    responses((status = 200, description = "The readings or buckets, in the SQL answer's shape", content(
        (QueryAnswer = "application/json"),
        (String = "text/csv"),
        (Vec<u8> = "application/vnd.apache.parquet"),
    ))))]
pub async fn lift_readings(
    State(app): State<AppState>,
    staff: crate::auth::Staff,
    Path(id): Path<String>,
    query: Result<Query<ReadingsQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    crate::routes::parse_lift_id(&id)?;
    if let Some(mine) = staff.customer()
        && !app.registry.with_ownership(|o| o.ever_held(mine, &id))
    {
        return Err(Problem::not_found(format!("lift {id:?} is not registered")));
    }
    let format = parse_format(q.format.as_deref())?;
    let now = app.clock.now_us();
    let to =
        q.to.as_deref()
            .map(|v| parse_time("to", v))
            .transpose()?
            .unwrap_or(now);
    let from = q
        .from
        .as_deref()
        .map(|v| parse_time("from", v))
        .transpose()?
        .unwrap_or(to - 24 * 3_600_000_000);
    if from > to {
        return Err(Problem::bad_request("from is after to"));
    }
    let bucket_minutes = q.step.as_deref().and_then(minutes_step);
    let (table, time) = match q.step.as_deref() {
        None | Some("raw") => ("readings", "ts"),
        Some("1h") => ("rollups_hourly", "hour"),
        Some("1d") => ("rollups_daily", "day"),
        Some(_) if bucket_minutes.is_some() => ("readings", "ts"),
        Some(other) => {
            return Err(Problem::bad_request(format!(
                "unknown step {other:?}; use raw, 1m to 59m, 1h or 1d"
            )));
        }
    };
    let started = Instant::now();
    let ctx = app
        .query()
        .context(&staff.query_caller())
        .await
        .map_err(query_problem)?;
    let df = ctx
        .table(table)
        .await
        .map_err(|e| query_problem(e.into()))?
        .filter(
            col("lift_id")
                .eq(lit(id.as_str()))
                .and(col(time).gt_eq(timestamp(from)))
                .and(col(time).lt(timestamp(to))),
        )
        .and_then(|df| match bucket_minutes {
            Some(minutes) => buckets(df, minutes),
            None => df.sort(vec![col(time).sort(true, false)]),
        })
        .map_err(|e| query_problem(e.into()))?;
    let result = app.query().collect(df).await.map_err(query_problem)?;
    respond(format, result, started)
}

/// `Nm` for 1 to 59 minutes.
fn minutes_step(step: &str) -> Option<i64> {
    step.strip_suffix('m')
        .and_then(|m| m.parse::<i64>().ok())
        .filter(|m| (1..60).contains(m))
}

/// Raw readings aggregated into buckets of `minutes` (aligned to the epoch), named as the
/// rollups name theirs: `time`, `readings`, `trips`, `door_cycles`, and `_avg` / `_max` of each
/// sensor. What a chart of a day or a week reads: about as many points as it has pixels.
fn buckets(
    df: datafusion::dataframe::DataFrame,
    minutes: i64,
) -> datafusion::error::Result<datafusion::dataframe::DataFrame> {
    use datafusion::arrow::datatypes::IntervalMonthDayNano;
    use datafusion::functions::expr_fn::date_bin;
    use datafusion::functions_aggregate::expr_fn::{avg, count, max, sum};
    let stride = lit(ScalarValue::IntervalMonthDayNano(Some(
        IntervalMonthDayNano::new(0, 0, minutes * 60_000_000_000),
    )));
    let mut aggregates = vec![
        count(col("ts")).alias("readings"),
        sum(col("trips")).alias("trips"),
        sum(col("door_cycles")).alias("door_cycles"),
    ];
    for sensor in ["motor_temp_c", "vibration_mm_s", "load_kg", "speed_mps"] {
        aggregates.push(avg(col(sensor)).alias(format!("{sensor}_avg")));
        aggregates.push(max(col(sensor)).alias(format!("{sensor}_max")));
    }
    df.aggregate(
        vec![date_bin(stride, col("ts"), timestamp(0)).alias("time")],
        aggregates,
    )?
    .sort(vec![col("time").sort(true, false)])
}

/// `GET /v1/storage/status`: rows, bytes and files per tier.
#[utoipa::path(get, path = "/v1/storage/status", summary = "Get storage status per tier",
    responses((status = 200, description = "Rows, bytes and files per tier", body = hoistway_store::StoreStatus)))]
pub async fn storage_status(State(app): State<AppState>) -> ApiResult<Response> {
    Ok(Json(app.stores().status()).into_response())
}

/// `POST /v1/storage/maintain`: run compaction, tier moves and retention now.
#[utoipa::path(post, path = "/v1/storage/maintain", summary = "Run storage upkeep now",
    responses(
        (status = 200, description = "What compaction, tier moves and retention did", body = hoistway_store::MaintenanceReport),
        (status = 409, description = "Upkeep runs on the node that holds the partition, not on a query node", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn storage_maintain(State(app): State<AppState>) -> ApiResult<Response> {
    let report = app.stores().maintain().await.map_err(|e| match e {
        // A query node's store, or another writer committed first.
        hoistway_store::Error::Conflict(m) => Problem::conflict(m),
        e => Problem::internal(&e),
    })?;
    Ok(Json(report).into_response())
}
