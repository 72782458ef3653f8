//! Route table and handlers.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::Method;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hoistway_auth::{Access, Principal, Role};
use hoistway_dlq::{DeadLetter, DlqFile};
use hoistway_ingest::{BodyError, BodyFormat, IngestError, Rejection, decode_body};
use hoistway_model::LiftId;
use hoistway_processor::{FleetSummary, LiftView, ListQuery};
use hoistway_registry::{ImportReport, LiftFilter, LiftInfo, LiftPatch};
use http_body_util::BodyExt;
use serde::Serialize;
use serde_json::json;
use utoipa_axum::router::UtoipaMethodRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::{self, Rules, Staff};

/// Largest body of a registry change.
const ADMIN_BODY_LIMIT: usize = 1 << 20;
/// Largest CSV import (a 200,000-lift registry is ~10 MiB).
const IMPORT_BODY_LIMIT: usize = 64 << 20;
use crate::problem::{ApiResult, FieldProblem, Problem};

/// Adds routes together with the access each needs and their OpenAPI description, so no
/// route exists without a rule or outside the document.
pub(crate) struct Table {
    router: Router<AppState>,
    rules: Rules,
    pub(crate) api: utoipa::openapi::OpenApi,
}

impl Table {
    /// `route` is `utoipa_axum::routes!(handler)`: the handler with the method and path its
    /// `#[utoipa::path]` names.
    fn add(mut self, access: Access, route: UtoipaMethodRouter<AppState>) -> Self {
        let (schemas, mut paths, handler) = route;
        let (path, item) = paths.paths.pop_first().expect("routes! names one path");
        assert!(paths.paths.is_empty(), "one handler per route");
        let mut item = item;
        let (method, op) = [
            (Method::GET, &mut item.get),
            (Method::POST, &mut item.post),
            (Method::PUT, &mut item.put),
            (Method::PATCH, &mut item.patch),
            (Method::DELETE, &mut item.delete),
        ]
        .into_iter()
        .find_map(|(m, op)| op.as_mut().map(|op| (m, op)))
        .expect("the handler names one of GET, POST, PUT, PATCH or DELETE");
        crate::openapi::describe(op, &path, access);
        assert!(
            self.rules
                .entry(method)
                .or_default()
                .insert(path.clone(), access)
                .is_none(),
            "route {path} added twice"
        );
        self.router = self.router.route(&path, handler);
        let components = self.api.components.get_or_insert_with(Default::default);
        for (name, schema) in schemas {
            components.schemas.entry(name).or_insert(schema);
        }
        self.api
            .paths
            .paths
            .entry(path)
            .or_default()
            .merge_operations(item);
        self
    }
}

/// The router, each route's access rule, and the OpenAPI document of them all.
pub(crate) struct Routes {
    pub router: Router<AppState>,
    pub rules: Rules,
    pub api: utoipa::openapi::OpenApi,
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        "this endpoint does not take that method",
    )
}

/// The routes of an ingest node: readings, the device flow, health and metrics (each with the
/// same access as in [`routes`]).
pub(crate) fn ingest_routes() -> Routes {
    use Access::{Device, Public};
    let t = Table {
        router: Router::new(),
        rules: Rules::new(),
        api: crate::openapi::frame(),
    }
    .add(Device, routes!(telemetry))
    .add(Public, routes!(auth::device_authorization))
    .add(Public, routes!(auth::token))
    .add(Public, routes!(healthz))
    .add(Public, routes!(readyz))
    .add(Access::Fleet(Role::Viewer), routes!(metrics_text));
    let router = t
        .router
        .fallback(|| async {
            Problem::not_found(
                "this is an ingest node: it serves POST /v1/telemetry, the device flow (/oauth/device_authorization, /oauth/token), /healthz, /readyz and /metrics; the rest of the API and the UI are on the node that processes",
            )
        })
        .method_not_allowed_fallback(method_not_allowed);
    Routes {
        router,
        rules: t.rules,
        api: t.api,
    }
}

/// A processor node's (`--role processor`): health and metrics.
pub(crate) fn ops_routes() -> Routes {
    let t = Table {
        router: Router::new(),
        rules: Rules::new(),
        api: crate::openapi::frame(),
    }
    .add(Access::Public, routes!(healthz))
    .add(Access::Public, routes!(readyz))
    .add(Access::Fleet(Role::Viewer), routes!(metrics_text));
    let router = t
        .router
        .fallback(|| async {
            Problem::not_found(
                "this is a processor node: it serves /healthz, /readyz and /metrics; readings go to ingest nodes, and the API and the UI are on query nodes",
            )
        })
        .method_not_allowed_fallback(method_not_allowed);
    Routes {
        router,
        rules: t.rules,
        api: t.api,
    }
}

/// Every route, with the access it needs (docs/security.md has the same table in prose).
pub(crate) fn routes() -> Routes {
    routes_taking(true)
}

/// Every route, less `POST /v1/telemetry` unless `readings` (a query node that does not take
/// readings).
pub(crate) fn routes_taking(readings: bool) -> Routes {
    use Access::{Device, Public, Staff};
    const VIEWER: Access = Access::Role(Role::Viewer);
    const OPERATOR: Access = Access::Role(Role::Operator);
    const ADMIN: Access = Access::Role(Role::Admin);
    // The lift maker's staff only: enrolling devices, keys, storage upkeep, fleet metrics, and
    // whatever spans customers (creating lifts, replaying a dead-letter file).
    const FLEET_VIEWER: Access = Access::Fleet(Role::Viewer);
    const FLEET_OPERATOR: Access = Access::Fleet(Role::Operator);
    const FLEET_ADMIN: Access = Access::Fleet(Role::Admin);
    let t = Table {
        router: Router::new(),
        rules: Rules::new(),
        api: crate::openapi::frame(),
    };
    let t = if readings {
        t.add(Device, routes!(telemetry))
    } else {
        t
    };
    let t = t
        .add(Public, routes!(auth::device_authorization))
        .add(Public, routes!(auth::token))
        .add(Public, routes!(auth::login))
        .add(Staff, routes!(auth::logout))
        .add(Staff, routes!(auth::me))
        .add(Staff, routes!(auth::totp_enrol))
        .add(Staff, routes!(auth::totp_confirm))
        .add(Staff, routes!(auth::tokens))
        .add(Staff, routes!(auth::token_create))
        .add(Staff, routes!(auth::token_revoke))
        .add(Staff, routes!(auth::sessions_revoke))
        .add(FLEET_ADMIN, routes!(auth::keys))
        .add(FLEET_ADMIN, routes!(auth::keys_rotate))
        .add(ADMIN, routes!(auth::audit))
        .add(ADMIN, routes!(auth::users))
        .add(ADMIN, routes!(auth::user_create))
        .add(ADMIN, routes!(auth::user_update))
        .add(ADMIN, routes!(auth::user_delete))
        .add(ADMIN, routes!(auth::user_totp_reset))
        .add(ADMIN, routes!(auth::user_sessions_revoke))
        .add(FLEET_OPERATOR, routes!(auth::devices))
        .add(FLEET_OPERATOR, routes!(auth::device_request))
        .add(FLEET_OPERATOR, routes!(auth::device))
        .add(FLEET_OPERATOR, routes!(auth::device_approve))
        .add(FLEET_OPERATOR, routes!(auth::device_deny))
        .add(FLEET_OPERATOR, routes!(auth::device_provision))
        .add(FLEET_OPERATOR, routes!(auth::device_revoke))
        .add(FLEET_ADMIN, routes!(auth::device_mode))
        .add(VIEWER, routes!(list_lifts))
        .add(FLEET_OPERATOR, routes!(create_lift))
        .add(FLEET_OPERATOR, routes!(import_lifts))
        .add(VIEWER, routes!(get_lift))
        .add(VIEWER, routes!(lift_assignments))
        .add(OPERATOR, routes!(put_lift))
        .add(OPERATOR, routes!(patch_lift))
        .add(FLEET_OPERATOR, routes!(delete_lift))
        .add(VIEWER, routes!(lift_state))
        .add(VIEWER, routes!(lift_state_stream))
        .add(VIEWER, routes!(crate::analytics::lift_readings))
        .add(VIEWER, routes!(crate::analytics::sql))
        // Exports need the operator role; `query.export_role = "admin"` raises that in the handler.
        .add(OPERATOR, routes!(crate::analytics::sql_export))
        .add(FLEET_VIEWER, routes!(crate::analytics::storage_status))
        .add(FLEET_ADMIN, routes!(crate::analytics::storage_maintain))
        .add(FLEET_ADMIN, routes!(crate::backup::take))
        .add(VIEWER, routes!(building))
        .add(VIEWER, routes!(fleet_summary))
        .add(VIEWER, routes!(dlq_list))
        .add(VIEWER, routes!(dlq_show))
        .add(FLEET_OPERATOR, routes!(dlq_replay))
        .add(VIEWER, routes!(crate::alerts::list))
        .add(VIEWER, routes!(crate::alerts::show))
        .add(VIEWER, routes!(crate::alerts::counts))
        .add(VIEWER, routes!(crate::alerts::stream))
        .add(OPERATOR, routes!(crate::alerts::acknowledge))
        .add(OPERATOR, routes!(crate::alerts::resolve))
        .add(FLEET_VIEWER, routes!(crate::alerts::rules))
        .add(FLEET_ADMIN, routes!(crate::alerts::put_rule))
        .add(FLEET_ADMIN, routes!(crate::alerts::delete_rule))
        .add(FLEET_VIEWER, routes!(crate::alerts::silences))
        .add(FLEET_OPERATOR, routes!(crate::alerts::add_silence))
        .add(FLEET_OPERATOR, routes!(crate::alerts::delete_silence))
        .add(FLEET_OPERATOR, routes!(crate::alerts::notifications))
        .add(FLEET_OPERATOR, routes!(crate::alerts::replay))
        .add(Public, routes!(healthz))
        .add(Public, routes!(readyz))
        .add(FLEET_VIEWER, routes!(metrics_text))
        .add(Public, routes!(crate::openapi::serve));
    let router = t
        .router
        .fallback(crate::ui::serve)
        .method_not_allowed_fallback(method_not_allowed);
    Routes {
        router,
        rules: t.rules,
        api: t.api,
    }
}

fn ingest_problem(e: IngestError, retry_after: u64) -> Problem {
    match e {
        IngestError::Backlogged { .. } => Problem::unavailable(
            format!("{e}; nothing was accepted from this request, send it again later"),
            retry_after,
        ),
        IngestError::Log(hoistway_log::Error::Write(io)) => Problem::unavailable(
            format!("storage refused the write ({io}); nothing was accepted from this request"),
            retry_after * 6,
        ),
        IngestError::Log(e) => Problem::unavailable(
            format!("ingest is unavailable: {e}; nothing was accepted from this request"),
            retry_after * 6,
        ),
        IngestError::Closed => Problem::unavailable("server is shutting down", retry_after),
    }
}

pub(crate) async fn read_limited(body: Body, limit: usize) -> ApiResult<Bytes> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Body too large",
                format!("request body is larger than {limit} bytes; split the batch"),
            ))
        }
        Err(e) => Err(Problem::bad_request(format!(
            "could not read the body: {e}"
        ))),
    }
}

fn rejection_problem(r: Rejection) -> FieldProblem {
    FieldProblem {
        index: Some(r.index),
        lift_id: r.lift_id,
        seq: r.seq,
        field: r.field,
        message: r.message,
    }
}

/// What became of a telemetry batch.
#[derive(Serialize, utoipa::ToSchema)]
struct TelemetryResponse {
    /// Readings now durable in the log.
    accepted: usize,
    /// Readings seen before (same lift, epoch and seq): acknowledged, counted once.
    duplicates: usize,
    /// Items refused, by position; the others were accepted.
    rejected: Vec<Rejection>,
}

/// A lift's assignment history.
#[derive(Serialize, utoipa::ToSchema)]
struct Assignments {
    lift_id: String,
    items: Vec<Period>,
}

/// One period in which a lift belonged to a customer and stood in a building.
#[derive(Serialize, utoipa::ToSchema)]
struct Period {
    customer: String,
    building: String,
    /// Absent: since the beginning (the first owner owns the lift's whole past).
    valid_from: Option<String>,
    /// Absent: still current.
    valid_to: Option<String>,
}

/// The lifts of one building.
#[derive(Serialize, utoipa::ToSchema)]
struct Building {
    building_id: String,
    lifts: Vec<LiftView>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct DlqFiles {
    files: Vec<DlqFile>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct DeadLetters {
    items: Vec<DeadLetter>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Replayed {
    /// Readings put back in the log.
    replayed: usize,
    note: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    /// `alive` or `ready`.
    status: &'static str,
    /// What is ready but not as it should be in production (e.g. a log whose durability
    /// could not be verified).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

#[utoipa::path(post, path = "/v1/telemetry", summary = "Send readings",
    request_body(description = "One reading, a JSON array of readings, or NDJSON (one per line); `Content-Encoding: gzip` is accepted", content(
        (Vec<hoistway_ingest::TelemetryReading> = "application/json"),
        (String = "application/x-ndjson"),
    )),
    responses(
        (status = 200, description = "Durable: the accepted readings are in the log; resent ones count once", body = TelemetryResponse),
        (status = 422, description = "Every reading was rejected; `errors` says which field of which item", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Backlogged or storage refused the write; nothing was accepted, send again after `Retry-After`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn telemetry(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match telemetry_inner(app, principal.map(|p| p.0), headers, body).await {
        Ok(r) => r,
        Err(p) => p.into_response(),
    }
}

async fn telemetry_inner(
    app: AppState,
    principal: Option<Principal>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let started = Instant::now();
    if !app.is_accepting() {
        return Err(Problem::unavailable(
            "server is shutting down",
            app.limits.retry_after_secs,
        ));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let format = BodyFormat::from_content_type(content_type).ok_or_else(|| {
        Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            format!(
                "Content-Type {:?} is not accepted; send application/json or application/x-ndjson",
                content_type.unwrap_or("(none)")
            ),
        )
    })?;
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("identity") => false,
        Some("gzip") | Some("x-gzip") => true,
        Some(other) => {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-encoding",
                "Unsupported content encoding",
                format!("Content-Encoding {other:?} is not accepted; send gzip or no encoding"),
            ));
        }
    };
    if let Some(e) = app.ingest.backlogged() {
        return Err(ingest_problem(e, app.limits.retry_after_secs));
    }
    let bytes = read_limited(body, app.limits.max_body_bytes).await?;
    let now = app.clock.now_us();
    let limits = app.limits.decode;
    let decoded = if bytes.len() > 64 << 10 || gzip {
        tokio::task::spawn_blocking(move || decode_body(&bytes, gzip, format, &limits, now))
            .await
            .map_err(|e| Problem::internal(&e))?
    } else {
        decode_body(&bytes, gzip, format, &limits, now)
    };
    let decoded = decoded.map_err(|e| match e {
        BodyError::TooLarge { .. } | BodyError::TooManyItems { .. } => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Body too large",
            e.to_string(),
        ),
        BodyError::Empty => Problem::bad_request("body holds no readings"),
        other => Problem::bad_request(other.to_string()),
    })?;
    // Whose readings these are decides whether they may be taken: before anything is stored or
    // reported as rejected.
    let mut lifts: Vec<&str> = decoded
        .readings
        .iter()
        .map(|r| r.lift_id.as_str())
        .chain(decoded.rejected.iter().filter_map(|r| r.lift_id.as_deref()))
        .collect();
    lifts.sort_unstable();
    lifts.dedup();
    auth::check_telemetry(&app, principal.as_ref(), &lifts)?;
    if let Some(cap) = app.limits.dead_letter_max_bytes
        && app.dlq.pending_bytes() >= cap
        && let Some(unknown) = lifts.iter().find(|l| !app.registry.contains(l))
    {
        metrics::counter!("hoistway_dlq_full_rejections_total").increment(1);
        return Err(Problem::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "dead-letters-full",
            "Dead-letter storage is full",
            format!(
                "lift {unknown:?} is not registered, so its readings would become dead letters, and pending dead letters already take {} bytes (ingest.dead_letter_max_bytes = {cap}); register the lift or replay the dead letters (GET /v1/dlq); nothing was accepted",
                app.dlq.pending_bytes()
            ),
        ));
    }
    crate::meter::ingest(|m| m.rejected.increment(decoded.rejected.len() as u64));
    if decoded.readings.is_empty() {
        let detail = if decoded.single {
            let r = &decoded.rejected[0];
            format!("reading rejected: {} {}", r.field, r.message)
        } else {
            format!(
                "all {} readings were rejected; nothing was accepted",
                decoded.items
            )
        };
        let errors = decoded
            .rejected
            .into_iter()
            .map(rejection_problem)
            .collect();
        return Err(Problem::invalid(detail, errors));
    }
    let outcome = app
        .ingest
        .submit(decoded.readings)
        .await
        .map_err(|e| ingest_problem(e, app.limits.retry_after_secs))?;
    crate::meter::ingest(|m| {
        m.accepted.increment(outcome.accepted as u64);
        m.duplicate.increment(outcome.duplicates as u64);
        m.ack_seconds.record(started.elapsed().as_secs_f64());
    });
    Ok(Json(TelemetryResponse {
        accepted: outcome.accepted,
        duplicates: outcome.duplicates,
        rejected: decoded.rejected,
    })
    .into_response())
}

pub(crate) fn parse_lift_id(raw: &str) -> ApiResult<LiftId> {
    LiftId::new(raw).map_err(|e| {
        Problem::invalid(
            format!("lift_id {raw:?} {e}"),
            vec![FieldProblem {
                index: None,
                lift_id: None,
                seq: None,
                field: "lift_id".into(),
                message: e.to_string(),
            }],
        )
    })
}

fn registry_problem(e: hoistway_registry::Error) -> Problem {
    use hoistway_registry::Error as E;
    match e {
        E::NotFound(_) => Problem::not_found(e.to_string()),
        E::Invalid {
            ref field,
            ref message,
        } => Problem::invalid(
            e.to_string(),
            vec![FieldProblem {
                index: None,
                lift_id: None,
                seq: None,
                field: field.clone(),
                message: message.clone(),
            }],
        ),
        E::Csv { .. } => Problem::invalid(e.to_string(), vec![]),
        E::Unavailable(_) => Problem::unavailable(e.to_string(), 2),
        E::Storage(_) | E::Backend(_) | E::Format { .. } => Problem::internal(&e),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Problem> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Problem::internal(&e))?
}

pub(crate) fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error_free(de)
}

fn serde_path_to_error_free<T: serde::de::DeserializeOwned>(
    de: &mut serde_json::Deserializer<serde_json::de::SliceRead<'_>>,
) -> ApiResult<T> {
    T::deserialize(de).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            Problem::bad_request(format!("body is not valid JSON: {e}"))
        } else {
            Problem::invalid(format!("body does not match the schema: {e}"), vec![])
        }
    })
}

#[utoipa::path(get, path = "/v1/lifts", summary = "List lifts with their state", params(ListQuery),
    responses((status = 200, description = "A page of lifts sorted by id; pass `next_after` as `after` for the next", body = hoistway_processor::Page)))]
async fn list_lifts(
    State(app): State<AppState>,
    staff: Staff,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(mut q) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    if let Some(mine) = staff.customer() {
        if q.customer.as_deref().is_some_and(|c| c != mine) {
            return Err(Problem::forbidden(format!(
                "you see only the lifts of customer {mine:?}"
            )));
        }
        q.customer = Some(mine.to_string());
    }
    Ok(Json(app.fleet().list(&q)).into_response())
}

/// The registered lift `id` if `staff` may see it; otherwise the same 404 as for a lift that
/// does not exist, so a customer learns nothing of another's lifts.
fn visible_lift(app: &AppState, staff: &Staff, id: &str) -> ApiResult<std::sync::Arc<LiftInfo>> {
    app.registry
        .get(id)
        .filter(|info| staff.sees(info))
        .ok_or_else(|| Problem::not_found(format!("lift {id:?} is not registered")))
}

/// A customer's operator may change its own lifts, but not hand them to another customer.
fn check_lift_change(
    app: &AppState,
    staff: &Staff,
    id: &str,
    customer: Option<&str>,
) -> ApiResult<()> {
    let Some(mine) = staff.customer() else {
        return Ok(());
    };
    visible_lift(app, staff, id)?;
    if customer.is_some_and(|c| c != mine) {
        return Err(Problem::forbidden(
            "a lift's customer is changed by the lift maker's staff",
        ));
    }
    Ok(())
}

/// Adds or replaces a lift: 201 with the entry when new, 200 when replaced.
async fn upsert_lift(app: &AppState, info: LiftInfo) -> ApiResult<Response> {
    let reg = app.registry.clone();
    let (created, info) = blocking(move || {
        reg.upsert(info.clone())
            .map(|created| (created, info))
            .map_err(registry_problem)
    })
    .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info)).into_response())
}

#[utoipa::path(post, path = "/v1/lifts", summary = "Register a lift", request_body = LiftInfo, responses(
    (status = 201, description = "Registered", body = LiftInfo),
    (status = 200, description = "Replaced an existing entry", body = LiftInfo),
))]
async fn create_lift(State(app): State<AppState>, body: Body) -> ApiResult<Response> {
    let body = read_limited(body, ADMIN_BODY_LIMIT).await?;
    let info: LiftInfo = json_body(&body)?;
    upsert_lift(&app, info).await
}

#[utoipa::path(post, path = "/v1/lifts/import", summary = "Import lifts from CSV",
    request_body(description = "CSV with a header: lift_id, building, site, customer, model, install_date, initial_trips", content((String = "text/csv"))),
    responses((status = 200, description = "How many lifts were created and updated", body = ImportReport)))]
async fn import_lifts(State(app): State<AppState>, body: Body) -> ApiResult<Response> {
    let body = read_limited(body, IMPORT_BODY_LIMIT).await?;
    let reg = app.registry.clone();
    let report = blocking(move || reg.import_csv(&body).map_err(registry_problem)).await?;
    Ok(Json(report).into_response())
}

#[utoipa::path(get, path = "/v1/lifts/{lift_id}", summary = "Get a lift's registry entry", params(("lift_id" = String, Path, description = "The lift's id")),
    responses((status = 200, description = "The registry entry", body = LiftInfo)))]
async fn get_lift(
    State(app): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let info = visible_lift(&app, &staff, &id)?;
    Ok(Json(&*info).into_response())
}

/// `GET /v1/lifts/{id}/assignments`: who held the lift when (a customer sees its own periods).
#[utoipa::path(get, path = "/v1/lifts/{lift_id}/assignments", summary = "Get a lift's customer and building history", params(("lift_id" = String, Path, description = "The lift's id")),
    responses((status = 200, description = "Who held the lift when", body = Assignments)))]
async fn lift_assignments(
    State(app): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let mut periods = app.registry.history(&id);
    if let Some(mine) = staff.customer() {
        periods.retain(|a| a.customer == mine);
    }
    if periods.is_empty() {
        return Err(Problem::not_found(format!("lift {id:?} is not registered")));
    }
    let items = periods
        .into_iter()
        .map(|a| Period {
            customer: a.customer,
            building: a.building,
            valid_from: a.valid_from_us.map(auth::micros_rfc3339),
            valid_to: a.valid_to_us.map(auth::micros_rfc3339),
        })
        .collect();
    Ok(Json(Assignments { lift_id: id, items }).into_response())
}

#[utoipa::path(put, path = "/v1/lifts/{lift_id}", summary = "Register or replace a lift", params(("lift_id" = String, Path, description = "The lift's id")),
    request_body(content = LiftInfo, description = "The entry; `lift_id` is taken from the path"),
    responses(
        (status = 201, description = "Registered", body = LiftInfo),
        (status = 200, description = "Replaced", body = LiftInfo),
    ))]
async fn put_lift(
    State(app): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let body = read_limited(body, ADMIN_BODY_LIMIT).await?;
    let lift_id = parse_lift_id(&id)?;
    let mut patch_fields: serde_json::Value = json_body(&body)?;
    if let Some(obj) = patch_fields.as_object_mut() {
        obj.insert("lift_id".into(), json!(lift_id.as_str()));
    }
    let info: LiftInfo = serde_json::from_value(patch_fields)
        .map_err(|e| Problem::invalid(format!("body does not match the schema: {e}"), vec![]))?;
    check_lift_change(&app, &staff, &id, Some(&info.customer))?;
    upsert_lift(&app, info).await
}

#[utoipa::path(patch, path = "/v1/lifts/{lift_id}", summary = "Change a lift's registry entry", params(("lift_id" = String, Path, description = "The lift's id")), request_body = LiftPatch,
    responses((status = 200, description = "The changed entry", body = LiftInfo)))]
async fn patch_lift(
    State(app): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let body = read_limited(body, ADMIN_BODY_LIMIT).await?;
    let patch: LiftPatch = json_body(&body)?;
    check_lift_change(&app, &staff, &id, patch.customer.as_deref())?;
    let reg = app.registry.clone();
    let info = blocking(move || reg.update(&id, patch).map_err(registry_problem)).await?;
    Ok(Json(&*info).into_response())
}

#[utoipa::path(delete, path = "/v1/lifts/{lift_id}", summary = "Remove a lift from the registry", params(("lift_id" = String, Path, description = "The lift's id")),
    responses((status = 204, description = "Removed from the registry; its readings stay")))]
async fn delete_lift(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let reg = app.registry.clone();
    let missing = id.clone();
    let removed = blocking(move || reg.remove(&id).map_err(registry_problem)).await?;
    if removed {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Problem::not_found(format!(
            "lift {missing:?} is not registered"
        )))
    }
}

#[utoipa::path(get, path = "/v1/lifts/{lift_id}/state", summary = "Get a lift's latest state and counters", params(("lift_id" = String, Path, description = "The lift's id")),
    responses((status = 200, description = "Latest state and exact lifetime counters, with the seq ranges counted", body = LiftView)))]
async fn lift_state(
    State(app): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    parse_lift_id(&id)?;
    if staff.customer().is_some() {
        visible_lift(&app, &staff, &id)?;
    }
    match app.fleet().lift(&id) {
        Some(view) => Ok(Json(view).into_response()),
        None => Err(Problem::not_found(format!(
            "lift {id:?} is neither registered nor reporting"
        ))),
    }
}

/// How often a lift's state stream looks for a change.
const STATE_STREAM_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// `GET /v1/lifts/{lift_id}/state/stream`: server-sent events, `state` with the lift's view (as
/// `/state`, without `seq_ranges`) at once and whenever it changes. Ends when the server shuts
/// down or the caller may no longer see the lift.
#[utoipa::path(get, path = "/v1/lifts/{lift_id}/state/stream", summary = "Follow a lift's state (server-sent events)", params(("lift_id" = String, Path, description = "The lift's id")),
    responses((status = 200, description = "Server-sent events: `state`, data a `LiftView`", content_type = "text/event-stream", body = String)))]
async fn lift_state_stream(
    State(app): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    parse_lift_id(&id)?;
    let sees = move |app: &AppState, id: &str| {
        staff.customer().is_none() || visible_lift(app, &staff, id).is_ok()
    };
    if !sees(&app, &id) || app.fleet().state_of(&id).is_none() {
        return Err(Problem::not_found(format!(
            "lift {id:?} is neither registered nor reporting"
        )));
    }
    let mut tick = tokio::time::interval(STATE_STREAM_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let events = futures::stream::unfold(
        (app, id, String::new(), tick),
        move |(app, id, mut last, mut tick)| {
            let sees = sees.clone();
            async move {
                loop {
                    tick.tick().await;
                    if !app.is_accepting() || !sees(&app, &id) {
                        return None;
                    }
                    let view = app.fleet().state_of(&id)?;
                    let json = serde_json::to_string(&view).ok()?;
                    if json != last {
                        last.clone_from(&json);
                        let event = Event::default().event("state").data(json);
                        return Some((
                            Ok::<_, std::convert::Infallible>(event),
                            (app, id, last, tick),
                        ));
                    }
                }
            }
        },
    );
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[utoipa::path(get, path = "/v1/buildings/{building_id}", summary = "Get a building's lifts", params(("building_id" = String, Path)),
    responses((status = 200, description = "Every lift of the building", body = Building)))]
async fn building(
    State(app): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let filter = LiftFilter {
        building: Some(id.clone()),
        customer: staff.customer().map(str::to_string),
        ..Default::default()
    };
    let views = app.fleet().select(&filter, None);
    if views.is_empty() {
        return Err(Problem::not_found(format!(
            "no registered lift is in building {id:?}"
        )));
    }
    Ok(Json(Building {
        building_id: id,
        lifts: views,
    })
    .into_response())
}

#[utoipa::path(get, path = "/v1/fleet/summary", summary = "Count lifts by status",
    responses((status = 200, description = "Lifts by status and the readings counted (the caller's customer's only)", body = FleetSummary)))]
async fn fleet_summary(State(app): State<AppState>, staff: Staff) -> ApiResult<Response> {
    let filter = LiftFilter {
        customer: staff.customer().map(str::to_string),
        ..Default::default()
    };
    Ok(Json(app.fleet().summary(&filter)).into_response())
}

fn dlq_problem(e: hoistway_dlq::Error) -> Problem {
    match e {
        hoistway_dlq::Error::NotFound(_) => Problem::not_found(e.to_string()),
        hoistway_dlq::Error::Unavailable(_) => Problem::unavailable(e.to_string(), 5),
        other => Problem::internal(&other),
    }
}

/// Keeps the dead letters of readings taken while `customer` held their lift.
fn own_letters(app: &AppState, customer: &str, letters: &mut Vec<DeadLetter>) {
    app.registry.with_ownership(|owners| {
        letters.retain(|l| {
            let ts = l.reading.ts_us;
            owners.held(
                customer,
                l.reading.lift_id.as_str(),
                ts,
                ts.saturating_add(1),
            )
        })
    });
}

#[utoipa::path(get, path = "/v1/dlq", summary = "List dead-letter files",
    responses((status = 200, description = "Dead-letter files waiting for replay", body = DlqFiles)))]
async fn dlq_list(State(app): State<AppState>, staff: Staff) -> ApiResult<Response> {
    let dlq = app.dlq.clone();
    let mut files = blocking(move || dlq.list().map_err(dlq_problem)).await?;
    if let Some(mine) = staff.customer().map(str::to_string) {
        // A file holds a batch of many lifts: a customer sees the files with its letters,
        // counted as its own.
        let (reader, app2) = (app.dlq.clone(), app.clone());
        files = blocking(move || {
            let mut kept = Vec::new();
            for mut f in files {
                let mut letters = reader.read(&f.id).map_err(dlq_problem)?;
                own_letters(&app2, &mine, &mut letters);
                if !letters.is_empty() {
                    f.items = letters.len() as u64;
                    f.reasons.clear();
                    for l in &letters {
                        *f.reasons.entry(l.reason).or_default() += 1;
                    }
                    f.bytes = 0; // the file's size would count other customers' letters
                    kept.push(f);
                }
            }
            Ok(kept)
        })
        .await?;
    }
    Ok(Json(DlqFiles { files }).into_response())
}

#[utoipa::path(get, path = "/v1/dlq/{id}", summary = "Read a dead-letter file", params(("id" = String, Path, description = "A dead-letter file's id")),
    responses((status = 200, description = "The file's dead letters", body = DeadLetters)))]
async fn dlq_show(
    State(app): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let dlq = app.dlq.clone();
    let file = id.clone();
    let mut letters: Vec<DeadLetter> =
        blocking(move || dlq.read(&file).map_err(dlq_problem)).await?;
    if let Some(mine) = staff.customer() {
        own_letters(&app, mine, &mut letters);
        if letters.is_empty() {
            return Err(Problem::not_found(format!("no dead-letter file {id:?}")));
        }
    }
    Ok(Json(DeadLetters { items: letters }).into_response())
}

#[utoipa::path(post, path = "/v1/dlq/{id}/replay", summary = "Replay a dead-letter file", params(("id" = String, Path, description = "A dead-letter file's id")),
    responses((status = 200, description = "The readings are back in the log", body = Replayed)))]
async fn dlq_replay(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    axum::Extension(addr): axum::Extension<auth::ClientAddr>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let dlq = app.dlq.clone();
    let file_id = id.clone();
    let letters: Vec<DeadLetter> =
        blocking(move || dlq.read(&file_id).map_err(dlq_problem)).await?;
    let readings: Vec<_> = letters.into_iter().map(|l| l.reading).collect();
    let outcome = app
        .ingest
        .replay(readings)
        .await
        .map_err(|e| ingest_problem(e, app.limits.retry_after_secs))?;
    // The readings are durable in the log again; only now does the file leave the queue.
    let dlq = app.dlq.clone();
    let file = id.clone();
    blocking(move || dlq.mark_replayed(&id).map_err(dlq_problem)).await?;
    let who = principal
        .as_ref()
        .and_then(|p| p.username().map(str::to_string))
        .unwrap_or_default();
    let detail = format!("{} readings", outcome.accepted);
    auth::record(&app, &who, "dlq.replay", &file, "ok", addr, &detail).await;
    Ok(Json(Replayed {
        replayed: outcome.accepted,
        note: "readings are back in the log; the processor applies them, or dead-letters them again if the cause remains",
    })
    .into_response())
}

#[utoipa::path(get, path = "/healthz", summary = "Liveness", responses((status = 200, description = "The process is alive", body = Health)))]
async fn healthz() -> impl IntoResponse {
    Json(Health {
        status: "alive",
        warnings: Vec::new(),
    })
}

/// Why checkpoints look stuck, if none succeeded for three intervals (a full disk, PostgreSQL
/// out of reach): readings are still taken, but the log keeps everything since the last one.
fn checkpoints_behind(app: &AppState) -> Option<String> {
    let p = app.processing.as_ref()?;
    let since = p
        .progress
        .iter()
        .map(|progress| progress.borrow().last_checkpoint_at.elapsed())
        .max()?;
    (since > p.checkpoint_interval * 3).then(|| {
        format!(
            "no checkpoint for {} s (one is due every {} s): the log keeps everything since the last one, and ingest answers 503 once it reaches log.max_bytes; hoistway_processor_checkpoint_failures_total and the server's log say why",
            since.as_secs(),
            p.checkpoint_interval.as_secs()
        )
    })
}

#[utoipa::path(get, path = "/readyz", summary = "Readiness", responses(
    (status = 200, description = "Ready to accept readings", body = Health),
    (status = 503, description = "Not ready; `detail` says why", body = Problem, content_type = "application/problem+json"),
))]
async fn readyz(State(app): State<AppState>) -> Response {
    let mut problems = Vec::new();
    let mut log_problems = Vec::new();
    if !app.accepting.load(Ordering::Acquire) {
        problems.push("shutting down".to_string());
    }
    for (partition, log) in app.logs.iter().enumerate() {
        if let Some(why) = log.poisoned().or_else(|| log.unavailable()) {
            log_problems.push(match app.logs.len() {
                1 => format!("log: {why}"),
                _ => format!("partition {partition}'s log: {why}"),
            });
        }
    }
    if let Some(e) = app.ingest.backlogged() {
        log_problems.push(e.to_string());
    }
    if app.takes_readings {
        problems.append(&mut log_problems);
    }
    if problems.is_empty() {
        Json(Health {
            status: "ready",
            warnings: log_problems
                .into_iter()
                // Every partition's stream is set up alike: the first one's says it.
                .chain(app.logs[0].durability_unverified())
                .chain(app.auth.stale_shared_state())
                .chain(checkpoints_behind(&app))
                .chain(edges(&app).filter_map(|s| s.out_of_contact(app.limits.edge_quiet)))
                .collect(),
        })
        .into_response()
    } else {
        Problem::unavailable(problems.join("; "), app.limits.retry_after_secs).into_response()
    }
}

#[utoipa::path(get, path = "/metrics", summary = "Prometheus metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
async fn metrics_text(State(app): State<AppState>) -> Response {
    let Some(handle) = &app.metrics else {
        return Problem::not_found("metrics are disabled").into_response();
    };
    let bytes: u64 = app.logs.iter().map(|log| log.size_bytes()).sum();
    metrics::gauge!("hoistway_log_bytes").set(bytes as f64);
    for (partition, log) in app.logs.iter().enumerate() {
        partition_gauge(app.logs.len(), partition, "hoistway_log_durable_end_offset")
            .set(log.durable_end() as f64);
    }
    metrics::gauge!("hoistway_lifts_registered").set(app.registry.len() as f64);
    metrics::gauge!("hoistway_uptime_seconds").set(app.started.elapsed().as_secs_f64());
    for edge in edges(&app) {
        let labels = [("region", edge.region)];
        metrics::gauge!("hoistway_edge_backlog_messages", &labels).set(edge.backlog as f64);
        if let Some(ago) = edge.last_contact {
            metrics::gauge!("hoistway_edge_last_contact_seconds", &labels).set(ago.as_secs_f64());
        }
    }
    if let Some(p) = &app.processing {
        processing_gauges(&app, p).await;
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

/// The edge regions, over every partition (each partition's stream takes in that partition's
/// stream of every edge region): a region's backlog is its partitions' together, its last
/// contact the longest ago.
fn edges(app: &AppState) -> impl Iterator<Item = hoistway_log::Source> + use<> {
    let mut regions: std::collections::BTreeMap<String, hoistway_log::Source> = Default::default();
    for source in app.logs.iter().flat_map(|log| log.sources()) {
        match regions.get_mut(&source.region) {
            None => {
                regions.insert(source.region.clone(), source);
            }
            Some(seen) => {
                seen.backlog += source.backlog;
                seen.last_contact = match (seen.last_contact, source.last_contact) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
            }
        }
    }
    regions.into_values()
}

/// A gauge of one partition: labelled `partition` where there are several.
fn partition_gauge(partitions: usize, partition: usize, name: &'static str) -> metrics::Gauge {
    if partitions == 1 {
        metrics::gauge!(name)
    } else {
        metrics::gauge!(name, "partition" => partition.to_string())
    }
}

/// The gauges of a node that processes: its progress, dead letters, lifts and storage.
async fn processing_gauges(app: &AppState, p: &crate::Processing) {
    let partitions = p.progress.len();
    for (partition, (progress, log)) in p.progress.iter().zip(&app.logs).enumerate() {
        let progress = *progress.borrow();
        partition_gauge(partitions, partition, "hoistway_processor_lag_records")
            .set(log.entries_behind(progress.offset) as f64);
        partition_gauge(partitions, partition, "hoistway_processor_offset")
            .set(progress.offset as f64);
        partition_gauge(
            partitions,
            partition,
            "hoistway_processor_checkpoint_age_seconds",
        )
        .set(progress.last_checkpoint_at.elapsed().as_secs_f64());
    }
    let dlq = app.dlq.clone();
    if let Ok((files, bytes)) = tokio::task::spawn_blocking(move || dlq.size()).await {
        metrics::gauge!("hoistway_dlq_files").set(files as f64);
        metrics::gauge!("hoistway_dlq_bytes").set(bytes as f64);
    }
    metrics::gauge!("hoistway_lifts_with_state").set(p.fleet.lifts_with_state() as f64);
    let status = p.stores.status();
    metrics::gauge!("hoistway_store_buffered_rows").set(status.buffered_rows as f64);
    metrics::gauge!("hoistway_store_move_backlog_files").set(status.move_backlog.files as f64);
    metrics::gauge!("hoistway_store_move_backlog_bytes").set(status.move_backlog.bytes as f64);
    for t in status.tiers {
        let labels = [("tier", t.tier.as_str()), ("kind", t.kind.dir())];
        metrics::gauge!("hoistway_store_bytes", &labels).set(t.bytes as f64);
        metrics::gauge!("hoistway_store_rows", &labels).set(t.rows as f64);
        metrics::gauge!("hoistway_store_files", &labels).set(t.files as f64);
    }
}
