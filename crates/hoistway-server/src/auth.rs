//! Authentication and authorization at the door, and the endpoints of identities: the OAuth device
//! flow for lifts, logins, second factors, tokens, users, devices and signing keys.
//!
//! Every route is added with the [`Access`] it needs ([`crate::routes`]); [`authorize`] checks it
//! before the handler runs and hands the handler the [`Principal`].

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hoistway_auth::{Access, DeviceMode, Error as AuthError, Principal, Role};
use hoistway_model::LiftId;
use hoistway_registry::LiftInfo;
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::problem::{ApiResult, FieldProblem, Problem};
use crate::routes::{json_body, parse_lift_id, read_limited};

const AUTH_BODY_LIMIT: usize = 64 << 10;

/// The access rule of every route, by method and path pattern.
pub type Rules = HashMap<(Method, &'static str), Access>;

/// What the gate needs: the app and the rule table.
#[derive(Clone)]
pub struct Gate {
    pub app: AppState,
    pub rules: Arc<Rules>,
}

pub fn problem(e: AuthError) -> Problem {
    match e {
        AuthError::Unauthenticated(m) => Problem::unauthenticated(m),
        AuthError::SecondFactorRequired => {
            let mut p = Problem::unauthenticated(e.to_string());
            p.kind = "https://hoistway.dev/problems/second-factor-required".into();
            p
        }
        AuthError::Forbidden(m) => Problem::forbidden(m),
        AuthError::NotFound(m) => Problem::not_found(m),
        AuthError::Conflict(m) => Problem::conflict(m),
        AuthError::Invalid { field, message } => Problem::invalid(
            format!("invalid {field}: {message}"),
            vec![FieldProblem {
                index: None,
                lift_id: None,
                seq: None,
                field,
                message,
            }],
        ),
        AuthError::OAuth { code, description } => Problem::oauth(code, description),
        other @ (AuthError::Storage(_) | AuthError::Format { .. } | AuthError::Keys(_)) => {
            Problem::internal(&other)
        }
    }
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Who sent `token`. Staff tokens are looked up in the store (off the runtime threads); device
/// tokens are verified in memory.
pub async fn authenticate(app: &AppState, token: &str) -> ApiResult<Principal> {
    if token.starts_with(hoistway_auth::authority::SESSION_PREFIX)
        || token.starts_with(hoistway_auth::authority::API_TOKEN_PREFIX)
    {
        let auth = app.auth.clone();
        let token = token.to_string();
        tokio::task::spawn_blocking(move || auth.authenticate(&token))
            .await
            .map_err(|e| Problem::internal(&e))?
            .map_err(problem)
    } else {
        app.auth.authenticate(token).map_err(problem)
    }
}

/// The middleware: finds the route's rule, authenticates the bearer token and checks the rule.
/// Telemetry (`Access::Device`) is checked by its handler, which knows the lifts in the body.
pub async fn authorize(State(gate): State<Gate>, mut req: Request, next: Next) -> Response {
    let Some(path) = req.extensions().get::<MatchedPath>().map(|p| p.as_str()) else {
        return next.run(req).await; // the fallback: 404
    };
    let method = if req.method() == Method::HEAD {
        Method::GET
    } else {
        req.method().clone()
    };
    let Some(access) = gate.rules.get(&(method, path)).copied() else {
        // A route without a rule is a bug; refuse rather than serve it open.
        return Problem::internal(&format!("route {path} has no access rule")).into_response();
    };
    let principal = match bearer(req.headers()) {
        Some(token) => match authenticate(&gate.app, token).await {
            Ok(p) => Some(p),
            Err(p) if access == Access::Public => {
                drop(p);
                None
            }
            Err(p) => return p.into_response(),
        },
        None => None,
    };
    match (access, &principal) {
        (Access::Public, _) | (Access::Device, None) => {}
        (_, None) => {
            return Problem::unauthenticated(
                "this endpoint needs a bearer token: a session from POST /v1/auth/login or an API token",
            )
            .into_response();
        }
        (_, Some(p)) => {
            if let Err(e) = p.allows(access) {
                return problem(e).into_response();
            }
        }
    }
    if let Some(p) = principal {
        req.extensions_mut().insert(p);
    }
    next.run(req).await
}

/// The staff member behind a request (routes that need one always have one).
fn user_of(req_principal: Option<axum::Extension<Principal>>) -> ApiResult<(String, Principal)> {
    match req_principal {
        Some(axum::Extension(p @ Principal::User { .. })) => {
            Ok((p.username().unwrap_or_default().to_string(), p))
        }
        _ => Err(Problem::unauthenticated("sign in first")),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AuthError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Problem::internal(&e))?
        .map_err(problem)
}

// ---- telemetry ----------------------------------------------------------------------------

/// Decides whether the readings of `lifts` may be taken from this request: with a device token,
/// only its own lift; without one, only where the lift's mode allows it.
pub fn check_telemetry(
    app: &AppState,
    principal: Option<&Principal>,
    lifts: &[&str],
) -> ApiResult<()> {
    match principal {
        Some(Principal::Device { lift_id }) => {
            if let Some(other) = lifts.iter().find(|l| **l != lift_id.as_str()) {
                return Err(Problem::forbidden(format!(
                    "this token belongs to lift {lift_id}; it cannot post readings of {other:?}; nothing was accepted"
                )));
            }
            Ok(())
        }
        Some(Principal::User { .. }) => Err(Problem::forbidden(
            "telemetry is posted with a lift's device token, not a staff token",
        )),
        None => {
            if app.auth.config().devices == DeviceMode::Open {
                return Ok(());
            }
            for lift in lifts {
                match app.auth.device_mode(lift) {
                    DeviceMode::Required => {
                        return Err(Problem::unauthenticated(format!(
                            "lift {lift:?} must send its access token (Authorization: Bearer); register it with the device flow at /oauth/device_authorization"
                        )));
                    }
                    DeviceMode::Optional | DeviceMode::Open => {
                        if app.registry.get(lift).is_none() {
                            return Err(Problem::unauthenticated(format!(
                                "lift {lift:?} is not registered and sent no access token"
                            )));
                        }
                    }
                }
            }
            metrics::counter!("hoistway_ingest_unauthenticated_requests_total").increment(1);
            tracing::info!(lifts = ?lifts, "readings accepted without a token (optional mode)");
            Ok(())
        }
    }
}

// ---- OAuth ------------------------------------------------------------------------------------

/// Form (as RFC 6749 says) or JSON, into a map of fields.
async fn oauth_fields(headers: &HeaderMap, body: Body) -> ApiResult<HashMap<String, String>> {
    let bytes = read_limited(body, AUTH_BODY_LIMIT).await?;
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if json {
        let map: HashMap<String, serde_json::Value> = json_body(&bytes)?;
        Ok(map
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
            .collect())
    } else {
        serde_urlencoded_map(&bytes)
    }
}

fn serde_urlencoded_map(bytes: &[u8]) -> ApiResult<HashMap<String, String>> {
    Ok(url::form_urlencoded::parse(bytes).into_owned().collect())
}

fn field<'a>(fields: &'a HashMap<String, String>, name: &str) -> ApiResult<&'a str> {
    fields
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Problem::oauth("invalid_request", format!("{name} is missing")))
}

/// RFC 8628 §3.1.
pub async fn device_authorization(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let fields = oauth_fields(&headers, body).await?;
    let client_id = field(&fields, "client_id")?.to_string();
    let auth = app.auth.clone();
    let answer = blocking(move || auth.device_authorization(&client_id)).await?;
    Ok(no_store(Json(answer).into_response()))
}

pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// RFC 8628 §3.4 (device code) and RFC 6749 §6 (refresh token).
pub async fn token(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let fields = oauth_fields(&headers, body).await?;
    let grant_type = field(&fields, "grant_type")?.to_string();
    let auth = app.auth.clone();
    let pair = match grant_type.as_str() {
        DEVICE_CODE_GRANT => {
            let device_code = field(&fields, "device_code")?.to_string();
            let client_id = field(&fields, "client_id")?.to_string();
            blocking(move || auth.poll(&device_code, &client_id)).await?
        }
        "refresh_token" => {
            let refresh = field(&fields, "refresh_token")?.to_string();
            let client_id = fields.get("client_id").cloned();
            blocking(move || auth.refresh(&refresh, client_id.as_deref())).await?
        }
        other => {
            return Err(Problem::oauth(
                "unsupported_grant_type",
                format!(
                    "grant_type {other:?} is not supported; use {DEVICE_CODE_GRANT} or refresh_token"
                ),
            ));
        }
    };
    Ok(no_store(Json(pair).into_response()))
}

fn no_store(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

// ---- devices ----------------------------------------------------------------------------------

pub async fn device_request(
    State(app): State<AppState>,
    Path(code): Path<String>,
) -> ApiResult<Response> {
    let auth = app.auth.clone();
    let grant = blocking(move || auth.pending_grant(&code)).await?;
    let registered = app.registry.get(grant.lift_id.as_str()).is_some();
    Ok(Json(json!({
        "lift_id": grant.lift_id,
        "user_code": hoistway_auth::secret::display_user_code(&grant.user_code),
        "requested_at": micros_rfc3339(grant.created_us),
        "expires_at": micros_rfc3339(grant.expires_us),
        "registered": registered,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Decision {
    user_code: String,
    /// Required to approve a lift that is not registered yet.
    #[serde(default)]
    building: Option<String>,
    #[serde(default)]
    site: Option<String>,
    #[serde(default)]
    customer: Option<String>,
}

/// An operator approves a user code: the lift is registered (or moved) into the building and
/// may collect its tokens.
pub async fn device_approve(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    body: Body,
) -> ApiResult<Response> {
    let (by, _) = user_of(principal)?;
    let d: Decision = json_body(&read_limited(body, AUTH_BODY_LIMIT).await?)?;
    let auth = app.auth.clone();
    let code = d.user_code.clone();
    let grant = blocking(move || auth.pending_grant(&code)).await?;
    let existing = app.registry.get(grant.lift_id.as_str());
    let building = match (&d.building, &existing) {
        (Some(b), _) if !b.trim().is_empty() => b.trim().to_string(),
        (_, Some(info)) if !info.building.is_empty() => info.building.clone(),
        _ => {
            return Err(Problem::invalid(
                "building is required to approve a lift that has none",
                vec![FieldProblem {
                    index: None,
                    lift_id: Some(grant.lift_id.to_string()),
                    seq: None,
                    field: "building".into(),
                    message: "required".into(),
                }],
            ));
        }
    };
    let mut info = existing.map(|i| (*i).clone()).unwrap_or(LiftInfo {
        lift_id: grant.lift_id.clone(),
        building: String::new(),
        site: String::new(),
        customer: String::new(),
        model: String::new(),
        install_date: None,
        initial_trips: 0,
    });
    info.building = building.clone();
    if let Some(site) = d.site {
        info.site = site;
    }
    if let Some(customer) = d.customer {
        info.customer = customer;
    }
    // Registered first: a lift that gets tokens is always in the registry.
    let reg = app.registry.clone();
    tokio::task::spawn_blocking(move || reg.upsert(info))
        .await
        .map_err(|e| Problem::internal(&e))?
        .map_err(|e| Problem::invalid(e.to_string(), vec![]))?;
    let auth = app.auth.clone();
    let code = d.user_code.clone();
    let by2 = by.clone();
    let grant = blocking(move || auth.decide(&code, Some(&building), &by2)).await?;
    tracing::info!(lift_id = %grant.lift_id, by, "device approved");
    Ok(Json(json!({ "lift_id": grant.lift_id, "approved": true })).into_response())
}

pub async fn device_deny(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    body: Body,
) -> ApiResult<Response> {
    let (by, _) = user_of(principal)?;
    let d: Decision = json_body(&read_limited(body, AUTH_BODY_LIMIT).await?)?;
    let auth = app.auth.clone();
    let grant = blocking(move || auth.decide(&d.user_code, None, &by)).await?;
    Ok(Json(json!({ "lift_id": grant.lift_id, "approved": false })).into_response())
}

pub async fn devices(State(app): State<AppState>) -> ApiResult<Response> {
    let auth = app.auth.clone();
    let devices = blocking(move || auth.devices()).await?;
    Ok(
        Json(json!({ "default_mode": app.auth.config().devices, "items": devices }))
            .into_response(),
    )
}

pub async fn device_revoke(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (by, _) = user_of(principal)?;
    let lift = parse_lift_id(&id)?;
    let auth = app.auth.clone();
    let device = blocking(move || auth.revoke_device(&lift, &by)).await?;
    Ok(Json(device).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModeBody {
    /// `required`, `optional`, or null for the fleet default.
    mode: Option<DeviceMode>,
}

pub async fn device_mode(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let lift: LiftId = parse_lift_id(&id)?;
    let m: ModeBody = json_body(&read_limited(body, AUTH_BODY_LIMIT).await?)?;
    if m.mode == Some(DeviceMode::Open) {
        return Err(Problem::invalid(
            "a single lift cannot be open; use required or optional",
            vec![],
        ));
    }
    let auth = app.auth.clone();
    let device = blocking(move || auth.set_device_mode(&lift, m.mode)).await?;
    Ok(Json(device).into_response())
}

// ---- staff ------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    username: String,
    password: String,
    /// TOTP or recovery code.
    #[serde(default)]
    code: Option<String>,
}

pub async fn login(State(app): State<AppState>, body: Body) -> ApiResult<Response> {
    let l: Login = json_body(&read_limited(body, AUTH_BODY_LIMIT).await?)?;
    let auth = app.auth.clone();
    let username = l.username.clone();
    let result = blocking(move || auth.login(&l.username, &l.password, l.code.as_deref())).await;
    let issued = match result {
        Ok(t) => t,
        Err(p) => {
            metrics::counter!("hoistway_auth_login_failures_total").increment(1);
            tracing::info!(username, status = p.status, "login refused");
            return Err(p);
        }
    };
    let auth = app.auth.clone();
    let owner = issued.record.owner.clone();
    let user = blocking(move || auth.user(&owner)).await?;
    let enrol = user.role.needs_second_factor() && !issued.record.second_factor;
    Ok(no_store(
        Json(json!({
            "token": issued.token,
            "username": user.username,
            "role": user.role,
            "expires_at": issued.record.expires_us.map(micros_rfc3339),
            "second_factor": issued.record.second_factor,
            "enrolment_required": enrol,
        }))
        .into_response(),
    ))
}

pub async fn logout(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
) -> ApiResult<Response> {
    let (username, p) = user_of(principal)?;
    let Principal::User { token_id, .. } = p else {
        unreachable!("user_of returns users")
    };
    let auth = app.auth.clone();
    blocking(move || auth.revoke_token(&username, &token_id)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn me(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
) -> ApiResult<Response> {
    let (username, p) = user_of(principal)?;
    let auth = app.auth.clone();
    let user = blocking(move || auth.user(&username)).await?;
    let Principal::User { second_factor, .. } = p else {
        unreachable!("user_of returns users")
    };
    Ok(Json(json!({
        "username": user.username,
        "role": user.role,
        "totp_enrolled": user.has_second_factor(),
        "second_factor": second_factor,
        "recovery_codes_left": user.recovery_codes.len(),
    }))
    .into_response())
}

pub async fn totp_enrol(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
) -> ApiResult<Response> {
    let (username, _) = user_of(principal)?;
    let auth = app.auth.clone();
    let e = blocking(move || auth.enrol_totp(&username)).await?;
    Ok(no_store(Json(e).into_response()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeBody {
    code: String,
}

pub async fn totp_confirm(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    body: Body,
) -> ApiResult<Response> {
    let (username, p) = user_of(principal)?;
    let Principal::User { token_id, .. } = p else {
        unreachable!("user_of returns users")
    };
    let c: CodeBody = json_body(&read_limited(body, AUTH_BODY_LIMIT).await?)?;
    let auth = app.auth.clone();
    let codes = blocking(move || auth.confirm_totp(&username, &c.code, &token_id)).await?;
    Ok(no_store(
        Json(json!({
            "recovery_codes": codes,
            "note": "each recovery code logs in once in place of a TOTP code; keep them offline",
        }))
        .into_response(),
    ))
}

pub async fn tokens(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
) -> ApiResult<Response> {
    let (username, _) = user_of(principal)?;
    let auth = app.auth.clone();
    let tokens = blocking(move || auth.tokens(&username)).await?;
    Ok(Json(json!({ "items": tokens })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    #[serde(default)]
    expires_days: Option<i64>,
}

pub async fn token_create(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    body: Body,
) -> ApiResult<Response> {
    let (_, p) = user_of(principal)?;
    let t: NewToken = json_body(&read_limited(body, AUTH_BODY_LIMIT).await?)?;
    let auth = app.auth.clone();
    let issued = blocking(move || auth.create_api_token(&p, &t.name, t.expires_days)).await?;
    Ok(no_store(
        (StatusCode::CREATED, Json(issued)).into_response(),
    ))
}

pub async fn token_revoke(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (username, _) = user_of(principal)?;
    let auth = app.auth.clone();
    blocking(move || auth.revoke_token(&username, &id)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn sessions_revoke(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
) -> ApiResult<Response> {
    let (username, _) = user_of(principal)?;
    let auth = app.auth.clone();
    let n = blocking(move || auth.revoke_sessions(&username)).await?;
    Ok(Json(json!({ "revoked": n })).into_response())
}

// ---- users (admin) ----------------------------------------------------------------------------

fn user_json(u: &hoistway_auth::User) -> serde_json::Value {
    json!({
        "username": u.username,
        "role": u.role,
        "totp_enrolled": u.has_second_factor(),
        "created_at": micros_rfc3339(u.created_us),
    })
}

pub async fn users(State(app): State<AppState>) -> ApiResult<Response> {
    let auth = app.auth.clone();
    let users = blocking(move || auth.users()).await?;
    Ok(Json(json!({ "items": users.iter().map(user_json).collect::<Vec<_>>() })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    username: String,
    password: String,
    role: Role,
}

pub async fn user_create(State(app): State<AppState>, body: Body) -> ApiResult<Response> {
    let u: NewUser = json_body(&read_limited(body, AUTH_BODY_LIMIT).await?)?;
    let auth = app.auth.clone();
    let user = blocking(move || auth.create_user(&u.username, &u.password, u.role)).await?;
    Ok((StatusCode::CREATED, Json(user_json(&user))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPatch {
    #[serde(default)]
    role: Option<Role>,
    #[serde(default)]
    password: Option<String>,
}

pub async fn user_update(
    State(app): State<AppState>,
    Path(name): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let patch: UserPatch = json_body(&read_limited(body, AUTH_BODY_LIMIT).await?)?;
    let auth = app.auth.clone();
    let user = blocking(move || {
        if let Some(p) = &patch.password {
            auth.set_password(&name, p)?;
        }
        if let Some(role) = patch.role {
            auth.set_role(&name, role)?;
        }
        auth.user(&name)
    })
    .await?;
    Ok(Json(user_json(&user)).into_response())
}

pub async fn user_delete(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let (me, _) = user_of(principal)?;
    if me == name {
        return Err(Problem::conflict("you cannot delete your own account"));
    }
    let auth = app.auth.clone();
    blocking(move || auth.delete_user(&name)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn user_totp_reset(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let auth = app.auth.clone();
    blocking(move || auth.reset_totp(&name)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn user_sessions_revoke(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let auth = app.auth.clone();
    let n = blocking(move || {
        auth.user(&name)?;
        auth.revoke_sessions(&name)
    })
    .await?;
    Ok(Json(json!({ "revoked": n })).into_response())
}

pub async fn keys(State(app): State<AppState>) -> ApiResult<Response> {
    Ok(Json(json!({ "items": app.auth.keys() })).into_response())
}

pub async fn keys_rotate(State(app): State<AppState>) -> ApiResult<Response> {
    let auth = app.auth.clone();
    let kid = blocking(move || auth.rotate_keys()).await?;
    Ok(Json(json!({ "signing": kid, "items": app.auth.keys() })).into_response())
}

pub fn micros_rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}
