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
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::problem::{ApiResult, FieldProblem, Problem};
use crate::routes::{json_body, parse_lift_id, read_limited};

const AUTH_BODY_LIMIT: usize = 64 << 10;

/// The address a request came from (for rate limits and the audit log).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<std::net::IpAddr>);

impl ClientAddr {
    fn text(self) -> Option<String> {
        self.0.map(|ip| ip.to_string())
    }
}

/// Records an audit event off the runtime threads.
pub async fn record(
    app: &AppState,
    actor: &str,
    action: &'static str,
    target: &str,
    outcome: &'static str,
    address: ClientAddr,
    detail: &str,
) {
    let auth = app.auth.clone();
    let (actor, target, detail) = (actor.to_string(), target.to_string(), detail.to_string());
    let _ = tokio::task::spawn_blocking(move || {
        auth.record(&actor, action, &target, outcome, address.text(), &detail)
    })
    .await;
}

/// The access rule of every route, by method and path pattern.
pub type Rules = HashMap<Method, HashMap<String, Access>>;

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
        AuthError::Unavailable(_) => Problem::unavailable(e.to_string(), 2),
        other @ (AuthError::Storage(_) | AuthError::Format { .. } | AuthError::Keys(_)) => {
            Problem::internal(&other)
        }
    }
}

/// The browser's session: the token in an `HttpOnly` cookie, and a CSRF token in a cookie the
/// page reads and echoes in [`CSRF_HEADER`] on every request that changes something.
pub const SESSION_COOKIE: &str = "hoistway_session";
pub const CSRF_COOKIE: &str = "hoistway_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The value of cookie `name`, if the request has it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// Whether a cookie-authenticated request carries the CSRF token of its session (compared in
/// constant time).
fn csrf_ok(headers: &HeaderMap) -> bool {
    let (Some(expected), Some(sent)) = (
        cookie(headers, CSRF_COOKIE),
        headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    expected.len() == sent.len()
        && expected
            .bytes()
            .zip(sent.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// `Set-Cookie` values for a new session (or, with `None`, ones that clear it).
fn session_cookies(session: Option<(&str, &str)>, max_age_secs: i64, secure: bool) -> [String; 2] {
    let secure = if secure { "; Secure" } else { "" };
    let (token, csrf, age) = match session {
        Some((token, csrf)) => (token, csrf, max_age_secs),
        None => ("", "", 0),
    };
    [
        format!(
            "{SESSION_COOKIE}={token}; Path=/; Max-Age={age}; HttpOnly; SameSite=Strict{secure}"
        ),
        format!("{CSRF_COOKIE}={csrf}; Path=/; Max-Age={age}; SameSite=Strict{secure}"),
    ]
}

fn with_cookies(mut resp: Response, cookies: [String; 2]) -> Response {
    for c in cookies {
        if let Ok(v) = header::HeaderValue::from_str(&c) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
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

/// The client's address: the peer's, or, when the peer is a trusted reverse proxy, the last
/// address in `X-Forwarded-For` that is not itself a trusted proxy (the ones before it are
/// whatever the client claimed).
pub fn client_address(
    peer: Option<std::net::IpAddr>,
    headers: &HeaderMap,
    trusted: &[std::net::IpAddr],
) -> Option<std::net::IpAddr> {
    let peer = peer?;
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .collect::<Vec<_>>();
    Some(
        forwarded
            .into_iter()
            .rev()
            .find(|a| !trusted.contains(a))
            .unwrap_or(peer),
    )
}

/// The middleware: finds the route's rule, authenticates the bearer token and checks the rule.
/// Telemetry (`Access::Device`) is checked by its handler, which knows the lifts in the body.
pub async fn authorize(State(gate): State<Gate>, mut req: Request, next: Next) -> Response {
    let peer = crate::listen::remote_addr(&req).map(|a| a.ip());
    let address = client_address(peer, req.headers(), &gate.app.trusted_proxies);
    req.extensions_mut().insert(ClientAddr(address));
    let Some(path) = req.extensions().get::<MatchedPath>().map(|p| p.as_str()) else {
        return next.run(req).await; // the fallback: 404
    };
    let method = if req.method() == Method::HEAD {
        Method::GET
    } else {
        req.method().clone()
    };
    let Some(access) = gate.rules.get(&method).and_then(|r| r.get(path)).copied() else {
        // A route without a rule is a bug; refuse rather than serve it open.
        return Problem::internal(&format!("route {path} has no access rule")).into_response();
    };
    // A browser signs in with its session cookie; scripts and lifts with a bearer token, which
    // wins when both are sent. A cookie-signed request that changes something must prove it
    // comes from our page (CSRF).
    let token = match bearer(req.headers()) {
        Some(t) => Some(t),
        None if access == Access::Device => None,
        None => {
            let from_cookie = cookie(req.headers(), SESSION_COOKIE);
            let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
            if from_cookie.is_some() && !safe && !csrf_ok(req.headers()) {
                let mut p = Problem::forbidden(format!(
                    "a request signed in by the session cookie must send the {CSRF_HEADER} header with the value of the {CSRF_COOKIE} cookie"
                ));
                p.kind = "https://hoistway.dev/problems/csrf".into();
                return p.into_response();
            }
            from_cookie
        }
    };
    let principal = match token {
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

/// The staff member behind a request, for handlers that scope what they show: present on every
/// route that needs a role (the gate put it there).
#[derive(Clone)]
pub struct Staff(pub Principal);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Staff {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Problem> {
        match parts.extensions.get::<Principal>() {
            Some(p @ Principal::User { .. }) => Ok(Staff(p.clone())),
            _ => Err(Problem::unauthenticated("sign in first")),
        }
    }
}

impl Staff {
    pub fn username(&self) -> &str {
        self.0.username().unwrap_or_default()
    }

    /// `Some(c)` for one of customer `c`'s people.
    pub fn customer(&self) -> Option<&str> {
        self.0.customer()
    }

    /// Whether this user sees `lift` (a customer's people: only its current lifts).
    pub fn sees(&self, lift: &LiftInfo) -> bool {
        self.customer().is_none_or(|c| lift.customer == c)
    }

    /// Whether this user may manage `user` (a customer's admin: only that customer's users).
    pub fn manages(&self, user: &hoistway_auth::User) -> bool {
        self.customer()
            .is_none_or(|c| user.customer.as_deref() == Some(c))
    }

    /// What the query engine shows this user.
    pub fn query_caller(&self) -> hoistway_query::Caller {
        hoistway_query::Caller {
            customer: self.customer().map(str::to_string),
            admin: self.0.has_role(Role::Admin),
        }
    }
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

/// Runs `f` on the authority off the runtime threads.
async fn with_auth<T: Send + 'static>(
    app: &AppState,
    f: impl FnOnce(&hoistway_auth::Authority) -> Result<T, AuthError> + Send + 'static,
) -> ApiResult<T> {
    let auth = app.auth.clone();
    blocking(move || f(&auth)).await
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
            app.rate.ingest(lift_id.as_str())
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
            if let Some(first) = lifts.first() {
                app.rate.ingest(first)?;
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
#[utoipa::path(post, path = "/oauth/device_authorization", summary = "Start the device flow (RFC 8628)", request_body(description = "Form fields (RFC 6749) or the same as a JSON object", content(
        (HashMap<String, String> = "application/x-www-form-urlencoded"),
        (HashMap<String, String> = "application/json"),
    )),
    responses((status = 200, description = "RFC 8628 §3.2: show `user_code` to an operator, poll `/oauth/token` with `device_code`", body = hoistway_auth::DeviceAuthorization)))]
pub async fn device_authorization(
    State(app): State<AppState>,
    axum::Extension(addr): axum::Extension<ClientAddr>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let fields = oauth_fields(&headers, body).await?;
    let client_id = field(&fields, "client_id")?.to_string();
    app.rate.device(addr.0, &client_id)?;
    let answer = with_auth(&app, move |auth| auth.device_authorization(&client_id)).await?;
    Ok(no_store(Json(answer).into_response()))
}

pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// RFC 8628 §3.4 (device code) and RFC 6749 §6 (refresh token).
#[utoipa::path(post, path = "/oauth/token", summary = "Get or refresh a lift's tokens", request_body(description = "Form fields (RFC 6749) or the same as a JSON object", content(
        (HashMap<String, String> = "application/x-www-form-urlencoded"),
        (HashMap<String, String> = "application/json"),
    )),
    responses(
        (status = 200, description = "Tokens for the lift (RFC 6749 §5.1)", body = hoistway_auth::TokenPair),
        (status = 400, description = "RFC 6749 §5.2 / RFC 8628 §3.5 `error`: `authorization_pending`, `slow_down`, `access_denied`, `expired_token`, `invalid_grant`, …", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn token(
    State(app): State<AppState>,
    axum::Extension(addr): axum::Extension<ClientAddr>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let fields = oauth_fields(&headers, body).await?;
    let grant_type = field(&fields, "grant_type")?.to_string();
    if grant_type == "refresh_token" {
        // Device-code polls are paced by slow_down; refreshes by this.
        app.rate
            .device(addr.0, fields.get("client_id").map_or("", String::as_str))?;
    }
    let pair = match grant_type.as_str() {
        DEVICE_CODE_GRANT => {
            let device_code = field(&fields, "device_code")?.to_string();
            let client_id = field(&fields, "client_id")?.to_string();
            with_auth(&app, move |auth| auth.poll(&device_code, &client_id)).await?
        }
        hoistway_auth::authority::REGISTRATION_CODE_GRANT => {
            let code = field(&fields, "code")?.to_string();
            let client_id = field(&fields, "client_id")?.to_string();
            app.rate.device(addr.0, &client_id)?;
            with_auth(&app, move |auth| auth.redeem(&code, &client_id)).await?
        }
        "refresh_token" => {
            let refresh = field(&fields, "refresh_token")?.to_string();
            let client_id = fields.get("client_id").cloned();
            with_auth(&app, move |auth| {
                auth.refresh(&refresh, client_id.as_deref())
            })
            .await?
        }
        other => {
            return Err(Problem::oauth(
                "unsupported_grant_type",
                format!(
                    "grant_type {other:?} is not supported; use {DEVICE_CODE_GRANT}, {} or refresh_token",
                    hoistway_auth::authority::REGISTRATION_CODE_GRANT
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

#[utoipa::path(get, path = "/v1/devices/requests/{user_code}", summary = "Look up a device request by its user code", params(("user_code" = String, Path, description = "The code the lift shows")),
    responses((status = 200, description = "The pending request", body = DeviceRequest)))]
pub async fn device_request(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    Path(code): Path<String>,
) -> ApiResult<Response> {
    let (by, _) = user_of(principal)?;
    app.rate.code_entry(&by)?;
    let grant = with_auth(&app, move |auth| auth.pending_grant(&code)).await?;
    let registered = app.registry.get(grant.lift_id.as_str()).is_some();
    Ok(Json(DeviceRequest {
        user_code: hoistway_auth::secret::display_user_code(&grant.user_code),
        requested_at: micros_rfc3339(grant.created_us),
        expires_at: micros_rfc3339(grant.expires_us),
        lift_id: grant.lift_id,
        registered,
    })
    .into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
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
#[utoipa::path(post, path = "/v1/devices/approve", summary = "Approve a device request", request_body = Decision,
    responses((status = 200, description = "Approved: the lift collects its tokens at its next poll", body = Decided)))]
pub async fn device_approve(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    axum::Extension(addr): axum::Extension<ClientAddr>,
    body: Body,
) -> ApiResult<Response> {
    let (by, _) = user_of(principal)?;
    app.rate.code_entry(&by)?;
    let d: Decision = json_body(&read_limited(body, AUTH_BODY_LIMIT).await?)?;
    let code = d.user_code.clone();
    let grant = with_auth(&app, move |auth| auth.pending_grant(&code)).await?;
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
    let mut info = existing
        .map(|i| (*i).clone())
        .unwrap_or_else(|| LiftInfo::new(grant.lift_id.clone()));
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
    let code = d.user_code.clone();
    let by2 = by.clone();
    let grant = with_auth(&app, move |auth| auth.decide(&code, Some(&building), &by2)).await?;
    tracing::info!(lift_id = %grant.lift_id, by, "device approved");
    record(
        &app,
        &by,
        "device.approve",
        grant.lift_id.as_str(),
        "ok",
        addr,
        "",
    )
    .await;
    Ok(Json(Decided {
        lift_id: grant.lift_id,
        approved: true,
    })
    .into_response())
}

#[utoipa::path(post, path = "/v1/devices/deny", summary = "Deny a device request", request_body = Decision,
    responses((status = 200, description = "Denied", body = Decided)))]
pub async fn device_deny(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    axum::Extension(addr): axum::Extension<ClientAddr>,
    body: Body,
) -> ApiResult<Response> {
    let (by, _) = user_of(principal)?;
    app.rate.code_entry(&by)?;
    let d: Decision = json_body(&read_limited(body, AUTH_BODY_LIMIT).await?)?;
    let who = by.clone();
    let grant = with_auth(&app, move |auth| auth.decide(&d.user_code, None, &who)).await?;
    record(
        &app,
        &by,
        "device.deny",
        grant.lift_id.as_str(),
        "ok",
        addr,
        "",
    )
    .await;
    Ok(Json(Decided {
        lift_id: grant.lift_id,
        approved: false,
    })
    .into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ProvisionParams {
    #[serde(default)]
    valid_days: Option<i64>,
}

/// Factory pre-provisioning: a registry CSV in (as `POST /v1/lifts/import`, every lift with a
/// building), `lift_id,registration_code` CSV out. The lifts are registered (all or none) and
/// approved; each code is exchanged once for tokens and is shown only here.
#[utoipa::path(post, path = "/v1/devices/provision", summary = "Pre-provision lifts with registration codes", params(ProvisionParams),
    request_body(description = "A registry CSV (as `/v1/lifts/import`), every lift with a building", content((String = "text/csv"))),
    responses((status = 200, description = "`lift_id,registration_code` CSV; each code is shown only here and exchanged once for tokens", content_type = "text/csv", body = String)))]
pub async fn device_provision(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    axum::Extension(addr): axum::Extension<ClientAddr>,
    query: Result<axum::extract::Query<ProvisionParams>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> ApiResult<Response> {
    let (by, _) = user_of(principal)?;
    let axum::extract::Query(q) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let valid_days = q.valid_days.unwrap_or(365);
    if !(1..=3650).contains(&valid_days) {
        return Err(Problem::invalid("valid_days must be 1 to 3650", vec![]));
    }
    let csv = read_limited(body, 64 << 20).await?;
    let reg = app.registry.clone();
    let auth = app.auth.clone();
    let who = by.clone();
    let (out, n) = tokio::task::spawn_blocking(move || -> ApiResult<(String, usize)> {
        let lifts = hoistway_registry::parse_csv(&csv)
            .map_err(|e| Problem::invalid(e.to_string(), vec![]))?;
        if let Some(l) = lifts.iter().find(|l| l.building.trim().is_empty()) {
            return Err(Problem::invalid(
                format!(
                    "lift {} has no building; every provisioned lift needs one",
                    l.lift_id
                ),
                vec![],
            ));
        }
        reg.import_csv(&csv)
            .map_err(|e| Problem::invalid(e.to_string(), vec![]))?;
        let mut out = String::from("lift_id,registration_code\n");
        for l in &lifts {
            let code = auth
                .provision(&l.lift_id, &l.building, &who, valid_days)
                .map_err(problem)?;
            out.push_str(&format!("{},{code}\n", l.lift_id));
        }
        Ok((out, lifts.len()))
    })
    .await
    .map_err(|e| Problem::internal(&e))??;
    let detail = format!("{n} lifts, valid {valid_days} days");
    record(&app, &by, "device.provision", "", "ok", addr, &detail).await;
    let mut resp = no_store(out.into_response());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/csv"),
    );
    Ok(resp)
}

#[utoipa::path(get, path = "/v1/devices", summary = "List lifts' credentials",
    responses((status = 200, description = "Every lift that asked for credentials", body = Devices)))]
pub async fn devices(State(app): State<AppState>) -> ApiResult<Response> {
    let devices = with_auth(&app, move |auth| auth.devices()).await?;
    Ok(Json(Devices {
        default_mode: app.auth.config().devices,
        items: devices,
    })
    .into_response())
}

/// `GET /v1/devices/{lift_id}`: one lift's credentials: approved (when, by whom), revoked, mode.
#[utoipa::path(get, path = "/v1/devices/{lift_id}", summary = "Get a lift's credentials", params(("lift_id" = String, Path, description = "The lift's id")),
    responses((status = 200, description = "The lift's credentials", body = DeviceCredentials)))]
pub async fn device(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let lift = parse_lift_id(&id)?;
    let device = with_auth(&app, move |auth| auth.device(&lift)).await?;
    let Some(d) = device else {
        return Err(Problem::not_found(format!(
            "lift {id:?} has never asked for credentials"
        )));
    };
    Ok(Json(DeviceCredentials {
        lift_id: d.lift_id,
        approved_at: d.approved_us.map(micros_rfc3339),
        approved_by: d.approved_by,
        revoked_at: d.revoked_us.map(micros_rfc3339),
        mode: d.mode,
        default_mode: app.auth.config().devices,
    })
    .into_response())
}

#[utoipa::path(post, path = "/v1/devices/{lift_id}/revoke", summary = "Revoke a lift's credentials", params(("lift_id" = String, Path, description = "The lift's id")),
    responses((status = 200, description = "Revoked: its tokens are refused from now on", body = hoistway_auth::Device)))]
pub async fn device_revoke(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    axum::Extension(addr): axum::Extension<ClientAddr>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (by, _) = user_of(principal)?;
    let lift = parse_lift_id(&id)?;
    let who = by.clone();
    let device = with_auth(&app, move |auth| auth.revoke_device(&lift, &who)).await?;
    record(&app, &by, "device.revoke", &id, "ok", addr, "").await;
    Ok(Json(device).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ModeBody {
    /// `required`, `optional`, or null for the fleet default.
    mode: Option<DeviceMode>,
}

#[utoipa::path(put, path = "/v1/devices/{lift_id}/mode", summary = "Set a lift's authentication mode", params(("lift_id" = String, Path, description = "The lift's id")), request_body = ModeBody,
    responses((status = 200, description = "The lift's credentials with the new mode", body = hoistway_auth::Device)))]
pub async fn device_mode(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    axum::Extension(addr): axum::Extension<ClientAddr>,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let (by, _) = user_of(principal)?;
    let lift: LiftId = parse_lift_id(&id)?;
    let m: ModeBody = json_body(&read_limited(body, AUTH_BODY_LIMIT).await?)?;
    if m.mode == Some(DeviceMode::Open) {
        return Err(Problem::invalid(
            "a single lift cannot be open; use required or optional",
            vec![],
        ));
    }
    let mode = m.mode.map_or("default", DeviceMode::as_str);
    let device = with_auth(&app, move |auth| auth.set_device_mode(&lift, m.mode)).await?;
    record(&app, &by, "device.mode", &id, "ok", addr, mode).await;
    Ok(Json(device).into_response())
}

// ---- staff ------------------------------------------------------------------------------------

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Login {
    username: String,
    password: String,
    /// TOTP or recovery code.
    #[serde(default)]
    code: Option<String>,
}

#[utoipa::path(post, path = "/v1/auth/login", summary = "Sign in", request_body = Login,
    responses(
        (status = 200, description = "Signed in; also sets the session and CSRF cookies", body = LoginAnswer),
        (status = 401, description = "Wrong name, password or code; `second-factor-required` when a code is needed", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn login(
    State(app): State<AppState>,
    axum::Extension(addr): axum::Extension<ClientAddr>,
    body: Body,
) -> ApiResult<Response> {
    let l: Login = json_body(&read_limited(body, AUTH_BODY_LIMIT).await?)?;
    app.rate.login(addr.0, &l.username)?;
    let username = l.username.clone();
    let with_code = l.code.is_some();
    let result = with_auth(&app, move |auth| {
        auth.login(&l.username, &l.password, l.code.as_deref())
    })
    .await;
    let issued = match result {
        Ok(t) => t,
        Err(p) => {
            metrics::counter!("hoistway_auth_login_failures_total").increment(1);
            tracing::info!(username, status = p.status, "login refused");
            let detail = if with_code { "with a code" } else { "" };
            record(&app, &username, "login", &username, "denied", addr, detail).await;
            return Err(p);
        }
    };
    record(&app, &username, "login", &username, "ok", addr, "").await;
    let owner = issued.record.owner.clone();
    let user = with_auth(&app, move |auth| auth.user(&owner)).await?;
    let enrol = user.role.needs_second_factor() && !issued.record.second_factor;
    let csrf: String = hoistway_auth::secret::random_token("");
    let cookies = session_cookies(
        Some((&issued.token, &csrf)),
        app.auth.config().session_hours * 3600,
        app.tls,
    );
    Ok(with_cookies(
        no_store(
            Json(LoginAnswer {
                token: issued.token,
                csrf_token: csrf,
                username: user.username,
                role: user.role,
                customer: user.customer,
                expires_at: issued.record.expires_us.map(micros_rfc3339),
                second_factor: issued.record.second_factor,
                enrolment_required: enrol,
            })
            .into_response(),
        ),
        cookies,
    ))
}

#[utoipa::path(post, path = "/v1/auth/logout", summary = "Sign out",
    responses((status = 204, description = "The session's token is revoked and the cookies cleared")))]
pub async fn logout(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
) -> ApiResult<Response> {
    let (username, p) = user_of(principal)?;
    let Principal::User { token_id, .. } = p else {
        unreachable!("user_of returns users")
    };
    with_auth(&app, move |auth| auth.revoke_token(&username, &token_id)).await?;
    Ok(with_cookies(
        StatusCode::NO_CONTENT.into_response(),
        session_cookies(None, 0, app.tls),
    ))
}

#[utoipa::path(get, path = "/v1/auth/me", summary = "Who am I", responses((status = 200, description = "The signed-in user", body = Me)))]
pub async fn me(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
) -> ApiResult<Response> {
    let (username, p) = user_of(principal)?;
    let user = with_auth(&app, move |auth| auth.user(&username)).await?;
    let Principal::User { second_factor, .. } = p else {
        unreachable!("user_of returns users")
    };
    Ok(Json(Me {
        totp_enrolled: user.has_second_factor(),
        recovery_codes_left: user.recovery_codes.len(),
        username: user.username,
        role: user.role,
        customer: user.customer,
        second_factor,
    })
    .into_response())
}

#[utoipa::path(post, path = "/v1/auth/totp", summary = "Start TOTP enrolment",
    responses((status = 200, description = "A new TOTP secret; confirm it with a code", body = hoistway_auth::TotpEnrolment)))]
pub async fn totp_enrol(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    axum::Extension(addr): axum::Extension<ClientAddr>,
) -> ApiResult<Response> {
    let (username, _) = user_of(principal)?;
    let who = username.clone();
    let e = with_auth(&app, move |auth| auth.enrol_totp(&who)).await?;
    record(&app, &username, "totp.enrol", &username, "ok", addr, "").await;
    Ok(no_store(Json(e).into_response()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CodeBody {
    code: String,
}

#[utoipa::path(post, path = "/v1/auth/totp/confirm", summary = "Confirm TOTP enrolment", request_body = CodeBody,
    responses((status = 200, description = "Enrolled; the recovery codes are shown once", body = RecoveryCodes)))]
pub async fn totp_confirm(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    axum::Extension(addr): axum::Extension<ClientAddr>,
    body: Body,
) -> ApiResult<Response> {
    let (username, p) = user_of(principal)?;
    let Principal::User { token_id, .. } = p else {
        unreachable!("user_of returns users")
    };
    app.rate.login(addr.0, &username)?;
    let c: CodeBody = json_body(&read_limited(body, AUTH_BODY_LIMIT).await?)?;
    let who = username.clone();
    let codes = with_auth(&app, move |auth| {
        auth.confirm_totp(&who, &c.code, &token_id)
    })
    .await;
    let outcome = if codes.is_ok() { "ok" } else { "denied" };
    record(
        &app,
        &username,
        "totp.confirm",
        &username,
        outcome,
        addr,
        "",
    )
    .await;
    let codes = codes?;
    Ok(no_store(
        Json(RecoveryCodes {
            recovery_codes: codes,
            note: "each recovery code logs in once in place of a TOTP code; keep them offline",
        })
        .into_response(),
    ))
}

#[utoipa::path(get, path = "/v1/auth/tokens", summary = "List your tokens", responses((status = 200, description = "Your sessions and API tokens", body = Tokens)))]
pub async fn tokens(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
) -> ApiResult<Response> {
    let (username, _) = user_of(principal)?;
    let tokens = with_auth(&app, move |auth| auth.tokens(&username)).await?;
    Ok(Json(Tokens { items: tokens }).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    #[serde(default)]
    expires_days: Option<i64>,
}

#[utoipa::path(post, path = "/v1/auth/tokens", summary = "Create an API token", request_body = NewToken,
    responses((status = 201, description = "The token; its secret is shown only now", body = hoistway_auth::IssuedToken)))]
pub async fn token_create(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    axum::Extension(addr): axum::Extension<ClientAddr>,
    body: Body,
) -> ApiResult<Response> {
    let (username, p) = user_of(principal)?;
    let t: NewToken = json_body(&read_limited(body, AUTH_BODY_LIMIT).await?)?;
    let issued = with_auth(&app, move |auth| {
        auth.create_api_token(&p, &t.name, t.expires_days)
    })
    .await?;
    let (id, name) = (&issued.record.id, &issued.record.name);
    record(&app, &username, "token.create", id, "ok", addr, name).await;
    Ok(no_store(
        (StatusCode::CREATED, Json(issued)).into_response(),
    ))
}

#[utoipa::path(delete, path = "/v1/auth/tokens/{id}", summary = "Revoke one of your tokens", params(("id" = String, Path)),
    responses((status = 204, description = "Revoked")))]
pub async fn token_revoke(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    axum::Extension(addr): axum::Extension<ClientAddr>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (username, _) = user_of(principal)?;
    let (who, which) = (username.clone(), id.clone());
    with_auth(&app, move |auth| auth.revoke_token(&who, &which)).await?;
    record(&app, &username, "token.revoke", &id, "ok", addr, "").await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(post, path = "/v1/auth/sessions/revoke", summary = "End all your sessions",
    responses((status = 200, description = "Every session of yours ended (API tokens stay)", body = Revoked)))]
pub async fn sessions_revoke(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
) -> ApiResult<Response> {
    let (username, _) = user_of(principal)?;
    let n = with_auth(&app, move |auth| auth.revoke_sessions(&username)).await?;
    Ok(Json(Revoked { revoked: n }).into_response())
}

// ---- users (admin) ----------------------------------------------------------------------------

#[utoipa::path(get, path = "/v1/users", summary = "List users", responses((status = 200, description = "The users you manage", body = Users)))]
pub async fn users(State(app): State<AppState>, staff: Staff) -> ApiResult<Response> {
    let mut users = with_auth(&app, move |auth| auth.users()).await?;
    users.retain(|u| staff.manages(u));
    Ok(Json(Users {
        items: users.iter().map(UserView::from).collect(),
    })
    .into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewUser {
    username: String,
    password: String,
    role: Role,
    /// The customer the user belongs to; omitted: the lift maker's staff. A customer's admin
    /// creates users of that customer only (omitted means theirs).
    #[serde(default)]
    customer: Option<String>,
}

/// Finds `name` and checks that `staff` manages it; another customer's user is a 404.
fn managed_user(
    auth: &hoistway_auth::Authority,
    staff_customer: Option<&str>,
    name: &str,
) -> Result<hoistway_auth::User, AuthError> {
    let user = auth.user(name)?;
    if staff_customer.is_some_and(|c| user.customer.as_deref() != Some(c)) {
        return Err(AuthError::NotFound(format!("no user {name:?}")));
    }
    Ok(user)
}

#[utoipa::path(post, path = "/v1/users", summary = "Create a user", request_body = NewUser,
    responses((status = 201, description = "Created", body = UserView)))]
pub async fn user_create(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    axum::Extension(addr): axum::Extension<ClientAddr>,
    body: Body,
) -> ApiResult<Response> {
    let (by, p) = user_of(principal)?;
    let mut u: NewUser = json_body(&read_limited(body, AUTH_BODY_LIMIT).await?)?;
    if let Some(mine) = p.customer() {
        if u.customer.as_deref().is_some_and(|c| c != mine) {
            return Err(Problem::forbidden(format!(
                "you manage the users of customer {mine:?} only"
            )));
        }
        u.customer = Some(mine.to_string());
    }
    let user = with_auth(&app, move |auth| {
        auth.create_user(&u.username, &u.password, u.role, u.customer.as_deref())
    })
    .await?;
    let role = user.role.as_str();
    record(&app, &by, "user.create", &user.username, "ok", addr, role).await;
    Ok((StatusCode::CREATED, Json(UserView::from(&user))).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UserPatch {
    #[serde(default)]
    role: Option<Role>,
    #[serde(default)]
    password: Option<String>,
}

#[utoipa::path(patch, path = "/v1/users/{username}", summary = "Change a user's role or password", params(("username" = String, Path)), request_body = UserPatch,
    responses((status = 200, description = "Changed", body = UserView)))]
pub async fn user_update(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    axum::Extension(addr): axum::Extension<ClientAddr>,
    Path(name): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let (by, p) = user_of(principal)?;
    let scope = p.customer().map(str::to_string);
    let patch: UserPatch = json_body(&read_limited(body, AUTH_BODY_LIMIT).await?)?;
    let detail = format!(
        "{}{}",
        patch.role.map(|r| format!("role {r} ")).unwrap_or_default(),
        if patch.password.is_some() {
            "password"
        } else {
            ""
        }
    );
    let target = name.clone();
    let user = with_auth(&app, move |auth| {
        managed_user(auth, scope.as_deref(), &name)?;
        if let Some(p) = &patch.password {
            auth.set_password(&name, p)?;
        }
        if let Some(role) = patch.role {
            auth.set_role(&name, role)?;
        }
        auth.user(&name)
    })
    .await?;
    record(&app, &by, "user.update", &target, "ok", addr, detail.trim()).await;
    Ok(Json(UserView::from(&user)).into_response())
}

#[utoipa::path(delete, path = "/v1/users/{username}", summary = "Delete a user", params(("username" = String, Path)),
    responses((status = 204, description = "Deleted, with its tokens")))]
pub async fn user_delete(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    axum::Extension(addr): axum::Extension<ClientAddr>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let (me, p) = user_of(principal)?;
    if me == name {
        return Err(Problem::conflict("you cannot delete your own account"));
    }
    let target = name.clone();
    let scope = p.customer().map(str::to_string);
    with_auth(&app, move |auth| {
        managed_user(auth, scope.as_deref(), &name)?;
        auth.delete_user(&name)
    })
    .await?;
    record(&app, &me, "user.delete", &target, "ok", addr, "").await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(post, path = "/v1/users/{username}/totp/reset", summary = "Reset a user's TOTP", params(("username" = String, Path)),
    responses((status = 204, description = "The user enrols again at the next login")))]
pub async fn user_totp_reset(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    axum::Extension(addr): axum::Extension<ClientAddr>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let (by, p) = user_of(principal)?;
    let target = name.clone();
    let scope = p.customer().map(str::to_string);
    with_auth(&app, move |auth| {
        managed_user(auth, scope.as_deref(), &name)?;
        auth.reset_totp(&name)
    })
    .await?;
    record(&app, &by, "totp.reset", &target, "ok", addr, "").await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(post, path = "/v1/users/{username}/sessions/revoke", summary = "End a user's sessions", params(("username" = String, Path)),
    responses((status = 200, description = "The user's sessions ended", body = Revoked)))]
pub async fn user_sessions_revoke(
    State(app): State<AppState>,
    staff: Staff,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let scope = staff.customer().map(str::to_string);
    let n = with_auth(&app, move |auth| {
        managed_user(auth, scope.as_deref(), &name)?;
        auth.revoke_sessions(&name)
    })
    .await?;
    Ok(Json(Revoked { revoked: n }).into_response())
}

#[utoipa::path(get, path = "/v1/auth/keys", summary = "List token signing keys", responses((status = 200, description = "Token signing keys", body = Keys)))]
pub async fn keys(State(app): State<AppState>) -> ApiResult<Response> {
    Ok(Json(Keys {
        signing: None,
        items: app.auth.keys(),
    })
    .into_response())
}

#[utoipa::path(post, path = "/v1/auth/keys/rotate", summary = "Rotate the token signing key",
    responses((status = 200, description = "A new signing key, which signs after twice auth.refresh_secs; older ones verify until their tokens expire", body = Keys)))]
pub async fn keys_rotate(
    State(app): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    axum::Extension(addr): axum::Extension<ClientAddr>,
) -> ApiResult<Response> {
    let (by, _) = user_of(principal)?;
    let kid = with_auth(&app, move |auth| auth.rotate_keys()).await?;
    record(&app, &by, "keys.rotate", &kid, "ok", addr, "").await;
    Ok(Json(Keys {
        signing: Some(kid),
        items: app.auth.keys(),
    })
    .into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    #[serde(default)]
    after: Option<i64>,
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

/// The audit log, oldest first; page with `after` = the last id seen.
#[utoipa::path(get, path = "/v1/audit", summary = "Read the audit log", params(AuditParams),
    responses((status = 200, description = "The audit log, oldest first (a customer's admin sees its people's actions)", body = AuditPage)))]
pub async fn audit(
    State(app): State<AppState>,
    staff: Staff,
    query: Result<axum::extract::Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let axum::extract::Query(p) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    let q = hoistway_auth::AuditQuery {
        after_id: p.after,
        actor: p.actor,
        action: p.action,
        customer: staff.customer().map(str::to_string),
        limit,
    };
    let events = with_auth(&app, move |auth| auth.audit(&q)).await?;
    let next_after = (events.len() == limit)
        .then(|| events.last().map(|e| e.id))
        .flatten();
    let items = events
        .into_iter()
        .map(|e| AuditEntry {
            id: e.id,
            at: micros_rfc3339(e.at_us),
            actor: e.actor,
            action: e.action,
            target: e.target,
            outcome: e.outcome,
            address: e.address,
            detail: e.detail,
            customer: e.customer,
        })
        .collect();
    Ok(Json(AuditPage { items, next_after }).into_response())
}

// ---- answers, as the API document describes them -----------------------------------------------

/// A lift's pending request for credentials, as an operator sees it before deciding.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DeviceRequest {
    lift_id: LiftId,
    user_code: String,
    requested_at: String,
    expires_at: String,
    /// The lift is in the registry already (approving it needs no building).
    registered: bool,
}

/// The decision on a device request.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Decided {
    lift_id: LiftId,
    approved: bool,
}

/// Every lift that asked for credentials.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Devices {
    /// `auth.devices`: what a lift without its own mode must do.
    default_mode: DeviceMode,
    items: Vec<hoistway_auth::Device>,
}

/// One lift's credentials.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DeviceCredentials {
    lift_id: LiftId,
    approved_at: Option<String>,
    approved_by: Option<String>,
    /// Set while the lift is revoked.
    revoked_at: Option<String>,
    /// This lift's own mode; absent: `default_mode`.
    mode: Option<DeviceMode>,
    default_mode: DeviceMode,
}

/// A signed-in session.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct LoginAnswer {
    /// The bearer token (`hwt_…`); a browser uses the cookie set alongside instead.
    token: String,
    /// Send as `X-CSRF-Token` on changes signed by the cookie.
    csrf_token: String,
    username: String,
    role: Role,
    customer: Option<String>,
    expires_at: Option<String>,
    /// The login gave a second factor.
    second_factor: bool,
    /// The role needs a second factor and the user has none yet: enrol before anything else.
    enrolment_required: bool,
}

/// The signed-in user.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Me {
    username: String,
    role: Role,
    customer: Option<String>,
    totp_enrolled: bool,
    /// This session was opened with a second factor.
    second_factor: bool,
    recovery_codes_left: usize,
}

/// Recovery codes, shown once.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct RecoveryCodes {
    recovery_codes: Vec<String>,
    note: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Tokens {
    items: Vec<hoistway_auth::Token>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Revoked {
    /// Sessions ended.
    revoked: u64,
}

/// A staff account (no secrets).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct UserView {
    username: String,
    role: Role,
    customer: Option<String>,
    totp_enrolled: bool,
    created_at: String,
}

impl From<&hoistway_auth::User> for UserView {
    fn from(u: &hoistway_auth::User) -> Self {
        Self {
            username: u.username.clone(),
            role: u.role,
            customer: u.customer.clone(),
            totp_enrolled: u.has_second_factor(),
            created_at: micros_rfc3339(u.created_us),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Users {
    items: Vec<UserView>,
}

/// The token signing keys (no secrets).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Keys {
    /// After a rotation: the new key's id. It signs once every node has read it (twice
    /// `auth.refresh_secs`); until then the previous key does (`items` says which signs now).
    #[serde(skip_serializing_if = "Option::is_none")]
    signing: Option<String>,
    items: Vec<hoistway_auth::KeyInfo>,
}

/// A page of the audit log, oldest first.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct AuditPage {
    items: Vec<AuditEntry>,
    /// Pass as `after` for the next page; absent on the last.
    next_after: Option<i64>,
}

/// One security-relevant action.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct AuditEntry {
    id: i64,
    at: String,
    /// Username, `lift:<id>`, or what a failed login claimed to be.
    actor: String,
    /// e.g. `login`, `device.approve`, `token.create`, `user.update`, `dlq.replay`, `sql`.
    action: String,
    target: String,
    /// `ok`, `denied` or `failed`.
    outcome: String,
    address: Option<String>,
    detail: String,
    customer: Option<String>,
}

pub fn micros_rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.7, 10.0.0.2".parse().unwrap(),
        );
        let proxies = [ip("10.0.0.1"), ip("10.0.0.2")];
        // From a stranger the header is ignored.
        assert_eq!(
            client_address(Some(ip("198.51.100.1")), &headers, &proxies),
            Some(ip("198.51.100.1"))
        );
        // Behind the proxies: the last hop they did not add; what the client claimed before it
        // (6.6.6.6) is not believed.
        assert_eq!(
            client_address(Some(ip("10.0.0.1")), &headers, &proxies),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(
            client_address(Some(ip("10.0.0.1")), &HeaderMap::new(), &proxies),
            Some(ip("10.0.0.1"))
        );
    }
}
