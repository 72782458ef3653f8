//! The alert endpoints: alerts (list, one with its history, acknowledge, resolve), rules and
//! the notification outbox. A customer's people see and act on their customer's alerts only;
//! another's is a 404, as if it did not exist.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hoistway_alerts::{Alert, AlertQuery, DeliveryState, Error as AlertError, Rule};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::Staff;
use crate::problem::{ApiResult, FieldProblem, Problem};
use crate::routes::{json_body, read_limited};

const BODY_LIMIT: usize = 1 << 20;

fn problem(e: AlertError) -> Problem {
    match e {
        AlertError::NotFound(m) => Problem::not_found(m),
        AlertError::Conflict(m) => Problem::conflict(m),
        AlertError::Invalid(m) => Problem::invalid(m, vec![]),
        AlertError::InvalidRule(problems) => Problem::invalid(
            "the rule is not valid",
            problems
                .into_iter()
                .map(|p| FieldProblem {
                    index: None,
                    lift_id: None,
                    seq: None,
                    field: p.field,
                    message: p.message,
                })
                .collect(),
        ),
        e @ AlertError::Storage(_) => Problem::internal(&e),
        AlertError::Unavailable(m) => Problem::unavailable(m, 2),
    }
}

async fn run<T: Send + 'static>(
    app: &AppState,
    f: impl FnOnce(&hoistway_alerts::Alerts) -> Result<T, AlertError> + Send + 'static,
) -> ApiResult<T> {
    let Some(alerts) = app.alerts.clone() else {
        return Err(Problem::not_found(
            "alerting is off on this server (alerts.enabled = false)",
        ));
    };
    tokio::task::spawn_blocking(move || f(&alerts))
        .await
        .map_err(|e| Problem::internal(&e))?
        .map_err(problem)
}

fn alert_id(raw: &str) -> ApiResult<i64> {
    raw.parse()
        .map_err(|_| Problem::not_found(format!("alert {raw:?} does not exist (ids are numbers)")))
}

/// The alert `id` if `staff` may see it (another customer's: the same 404 as a missing one).
async fn visible(app: &AppState, staff: &Staff, id: i64) -> ApiResult<Alert> {
    let alert = run(app, move |a| a.store().alert(id)).await?;
    alert
        .filter(|a| staff.customer().is_none_or(|c| a.customer == c))
        .ok_or_else(|| Problem::not_found(format!("alert {id} does not exist")))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// `open` (firing or acknowledged), `firing`, `acknowledged` or `resolved`.
    state: Option<String>,
    /// `info`, `warning`, `major` or `critical`.
    severity: Option<String>,
    customer: Option<String>,
    building: Option<String>,
    lift: Option<String>,
    rule: Option<String>,
    /// Alerts with a smaller id than this (the previous page's `next_before`).
    before: Option<i64>,
    /// 1–500; default 100.
    limit: Option<usize>,
}

/// A page of alerts, newest first.
#[derive(Serialize, utoipa::ToSchema)]
struct AlertPage {
    items: Vec<Alert>,
    /// Pass as `before` for the next page; absent on the last.
    next_before: Option<i64>,
}

/// An alert and its history.
#[derive(Serialize, utoipa::ToSchema)]
struct AlertDetail {
    alert: Alert,
    events: Vec<hoistway_alerts::AlertEvent>,
}

/// Open alerts by severity.
#[derive(Serialize, utoipa::ToSchema)]
struct OpenCounts {
    /// Every severity, zero included.
    open: BTreeMap<&'static str, u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Rules {
    items: Vec<Rule>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Notifications {
    items: Vec<hoistway_alerts::Notification>,
    /// Channels turned off because their receiver said it is gone (HTTP 410).
    disabled_channels: Vec<DisabledChannel>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct DisabledChannel {
    channel: String,
    reason: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Silences {
    items: Vec<hoistway_alerts::Silence>,
}

/// `GET /v1/alerts`: newest first, filtered; `next_before` pages.
#[utoipa::path(get, path = "/v1/alerts", summary = "List alerts", params(ListParams),
    responses((status = 200, description = "Alerts, newest first (a customer's user sees its own)", body = AlertPage)))]
pub async fn list(
    State(app): State<AppState>,
    staff: Staff,
    query: Result<Query<ListParams>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(p) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    if let Some(s) = p.state.as_deref()
        && s != "open"
        && hoistway_alerts::AlertState::parse(s).is_none()
    {
        return Err(Problem::bad_request(format!(
            "state {s:?} is not one of open, firing, acknowledged, resolved"
        )));
    }
    let severity = p
        .severity
        .as_deref()
        .map(|s| {
            hoistway_alerts::Severity::parse(s).ok_or_else(|| {
                Problem::bad_request(format!(
                    "severity {s:?} is not one of info, warning, major, critical"
                ))
            })
        })
        .transpose()?;
    let mut q = AlertQuery {
        state: p.state,
        severity,
        customer: p.customer,
        building: p.building,
        lift: p.lift,
        rule: p.rule,
        before: p.before,
        limit: Some(p.limit.unwrap_or(100).clamp(1, 1000)),
    };
    if let Some(mine) = staff.customer() {
        if q.customer.as_deref().is_some_and(|c| c != mine) {
            return Err(Problem::forbidden(format!(
                "you see only the alerts of customer {mine:?}"
            )));
        }
        q.customer = Some(mine.to_string());
    }
    let limit = q.limit.unwrap_or(100);
    let items = run(&app, move |a| a.store().list(&q)).await?;
    let next_before = (items.len() == limit)
        .then(|| items.last().map(|a| a.id))
        .flatten();
    Ok(Json(AlertPage { items, next_before }).into_response())
}

/// `GET /v1/alerts/{id}`: the alert and its history.
#[utoipa::path(get, path = "/v1/alerts/{id}", summary = "Get an alert and its history", params(("id" = i64, Path, description = "The alert's id")),
    responses((status = 200, description = "The alert and its history", body = AlertDetail)))]
pub async fn show(
    State(app): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = alert_id(&id)?;
    let alert = visible(&app, &staff, id).await?;
    let events = run(&app, move |a| a.store().events(id)).await?;
    Ok(Json(AlertDetail { alert, events }).into_response())
}

/// A note on an acknowledgement or resolution.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ActBody {
    /// Up to 2,000 bytes; required when resolving by hand.
    #[serde(default)]
    note: String,
}

async fn act(
    app: AppState,
    staff: Staff,
    id: i64,
    body: Body,
    resolve: bool,
) -> ApiResult<Response> {
    let bytes = read_limited(body, BODY_LIMIT).await?;
    let body: ActBody = if bytes.is_empty() {
        ActBody::default()
    } else {
        json_body(&bytes)?
    };
    if body.note.len() > 2000 {
        return Err(Problem::bad_request("note is longer than 2000 bytes"));
    }
    if resolve && body.note.trim().is_empty() {
        return Err(Problem::bad_request(
            "say why in `note` when resolving an alert by hand",
        ));
    }
    visible(&app, &staff, id).await?;
    let by = staff.username().to_string();
    let alert = run(&app, move |a| a.act(id, resolve, &by, &body.note)).await?;
    Ok(Json(alert).into_response())
}

/// `POST /v1/alerts/{id}/acknowledge` with `{"note": "..."}` (optional).
#[utoipa::path(post, path = "/v1/alerts/{id}/acknowledge", summary = "Acknowledge an alert", params(("id" = i64, Path, description = "The alert's id")),
    request_body(content = Option<ActBody>, description = "Optional: a note"),
    responses((status = 200, description = "The acknowledged alert", body = Alert)))]
pub async fn acknowledge(
    State(app): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    act(app, staff, alert_id(&id)?, body, false).await
}

/// `POST /v1/alerts/{id}/resolve` with `{"note": "why"}`.
#[utoipa::path(post, path = "/v1/alerts/{id}/resolve", summary = "Resolve an alert by hand", params(("id" = i64, Path, description = "The alert's id")), request_body = ActBody,
    responses((status = 200, description = "The resolved alert", body = Alert)))]
pub async fn resolve(
    State(app): State<AppState>,
    staff: Staff,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    act(app, staff, alert_id(&id)?, body, true).await
}

/// `GET /v1/alerts/counts`: open alerts by severity (every severity named, zero included), the
/// caller's customer's only.
#[utoipa::path(get, path = "/v1/alerts/counts", summary = "Count open alerts by severity",
    responses((status = 200, description = "Open alerts by severity", body = OpenCounts)))]
pub async fn counts(State(app): State<AppState>, staff: Staff) -> ApiResult<Response> {
    let customer = staff.customer().map(str::to_string);
    let counts = run(&app, move |a| a.store().open_counts(customer.as_deref())).await?;
    let open = hoistway_alerts::Severity::ALL
        .iter()
        .map(|s| {
            let n = counts.iter().find(|(c, _)| c == s).map_or(0, |(_, n)| *n);
            (s.as_str(), n)
        })
        .collect();
    Ok(Json(OpenCounts { open }).into_response())
}

/// `GET /v1/alerts/stream`: server-sent events, one per alert step (`alert.fired`,
/// `alert.acknowledged`, …, the alert as data), only the caller's customer's; `lagged` when the
/// client fell behind and should read the list again.
#[utoipa::path(get, path = "/v1/alerts/stream", summary = "Follow alert changes (server-sent events)",
    responses((status = 200, description = "Server-sent events named `alert.fired`, `alert.acknowledged`, …, data an `AlertUpdate`; `lagged` when the client fell behind", content_type = "text/event-stream", body = String)))]
pub async fn stream(State(app): State<AppState>, staff: Staff) -> ApiResult<Response> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    let Some(alerts) = app.alerts.clone() else {
        return Err(Problem::not_found(
            "alerting is off on this server (alerts.enabled = false)",
        ));
    };
    let customer = staff.customer().map(str::to_string);
    let events = futures::stream::unfold(alerts.subscribe(), move |mut rx| {
        let customer = customer.clone();
        async move {
            loop {
                let event = match rx.recv().await {
                    Ok(u) if customer.as_deref().is_some_and(|c| u.alert.customer != c) => {
                        continue;
                    }
                    Ok(u) => Event::default()
                        .event(format!("alert.{}", u.event.as_str()))
                        .id(u.alert.id.to_string())
                        .json_data(&u.alert)
                        .unwrap_or_else(|_| Event::default().comment("unencodable")),
                    Err(RecvError::Lagged(n)) => {
                        Event::default().event("lagged").data(n.to_string())
                    }
                    Err(RecvError::Closed) => return None,
                };
                return Some((Ok::<_, std::convert::Infallible>(event), rx));
            }
        }
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// `GET /v1/alert-rules`.
#[utoipa::path(get, path = "/v1/alert-rules", summary = "List alert rules",
    responses((status = 200, description = "Every rule", body = Rules)))]
pub async fn rules(State(app): State<AppState>) -> ApiResult<Response> {
    let rules = run(&app, |a| a.store().rules()).await?;
    Ok(Json(Rules { items: rules }).into_response())
}

/// `PUT /v1/alert-rules/{id}`: adds or replaces a rule (201 when new).
#[utoipa::path(put, path = "/v1/alert-rules/{id}", summary = "Add or replace an alert rule", params(("id" = String, Path)), request_body = Rule,
    responses(
        (status = 201, description = "Added", body = Rule),
        (status = 200, description = "Replaced; open alerts are re-evaluated, not duplicated", body = Rule),
        (status = 422, description = "Not a valid rule; `errors` names each field", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_rule(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let bytes = read_limited(body, BODY_LIMIT).await?;
    let rule: Rule = json_body(&bytes)?;
    if rule.id != id {
        return Err(Problem::bad_request(format!(
            "the body's id {:?} is not the path's {id:?}",
            rule.id
        )));
    }
    let stored = rule.clone();
    let created = run(&app, move |a| a.put_rule(&stored)).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(rule)).into_response())
}

/// `DELETE /v1/alert-rules/{id}`: open alerts of the rule stay until resolved.
#[utoipa::path(delete, path = "/v1/alert-rules/{id}", summary = "Delete an alert rule", params(("id" = String, Path)),
    responses((status = 204, description = "Deleted")))]
pub async fn delete_rule(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let rule = id.clone();
    if run(&app, move |a| a.delete_rule(&rule)).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Problem::not_found(format!("rule {id:?} does not exist")))
    }
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct NotificationParams {
    /// `pending`, `delivered` or `dead`.
    state: Option<String>,
    /// 1–1000; default 100.
    limit: Option<usize>,
}

/// `GET /v1/notifications?state=dead`: the outbox, newest first.
#[utoipa::path(get, path = "/v1/notifications", summary = "List notifications", params(NotificationParams),
    responses((status = 200, description = "The outbox, newest first", body = Notifications)))]
pub async fn notifications(
    State(app): State<AppState>,
    query: Result<Query<NotificationParams>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(p) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let state = p
        .state
        .as_deref()
        .map(|s| {
            DeliveryState::parse(s).ok_or_else(|| {
                Problem::bad_request(format!(
                    "state {s:?} is not one of pending, delivered, dead"
                ))
            })
        })
        .transpose()?;
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    let (items, disabled) = run(&app, move |a| {
        Ok((
            a.store().notifications(state, limit)?,
            a.store().disabled_channels()?,
        ))
    })
    .await?;
    let disabled_channels = disabled
        .into_iter()
        .map(|(channel, reason)| DisabledChannel { channel, reason })
        .collect();
    Ok(Json(Notifications {
        items,
        disabled_channels,
    })
    .into_response())
}

/// `POST /v1/notifications/{id}/replay`: sends it again with the same id.
#[utoipa::path(post, path = "/v1/notifications/{id}/replay", summary = "Send a notification again", params(("id" = String, Path)),
    responses((status = 202, description = "Queued again with the same id", body = hoistway_alerts::Notification)))]
pub async fn replay(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let n = run(&app, move |a| a.replay(&id)).await?;
    Ok((StatusCode::ACCEPTED, Json(n)).into_response())
}

/// A new silence: give `ends_at` or `duration_secs`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SilenceBody {
    /// Only this rule's alerts; absent: every rule.
    #[serde(default)]
    rule: Option<String>,
    #[serde(default)]
    scope: hoistway_alerts::rule::Scope,
    /// RFC 3339; default: now.
    #[serde(default)]
    starts_at: Option<String>,
    /// RFC 3339, or `duration_secs` from the start.
    #[serde(default)]
    ends_at: Option<String>,
    #[serde(default)]
    duration_secs: Option<u64>,
    #[serde(default)]
    reason: String,
}

fn parse_time(field: &str, text: &str) -> ApiResult<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_micros())
        .map_err(|e| {
            Problem::invalid(
                format!("{field} is not an RFC 3339 time"),
                vec![FieldProblem {
                    index: None,
                    lift_id: None,
                    seq: None,
                    field: field.into(),
                    message: e.to_string(),
                }],
            )
        })
}

/// `GET /v1/silences`.
#[utoipa::path(get, path = "/v1/silences", summary = "List silences",
    responses((status = 200, description = "Current and future silences", body = Silences)))]
pub async fn silences(State(app): State<AppState>) -> ApiResult<Response> {
    let items = run(&app, |a| Ok(a.silences())).await?;
    Ok(Json(Silences { items }).into_response())
}

/// `POST /v1/silences`: `{"rule", "scope", "starts_at", "ends_at" | "duration_secs", "reason"}`.
#[utoipa::path(post, path = "/v1/silences", summary = "Silence alerts for a while", request_body = SilenceBody,
    responses((status = 201, description = "The silence", body = hoistway_alerts::Silence)))]
pub async fn add_silence(
    State(app): State<AppState>,
    staff: Staff,
    body: Body,
) -> ApiResult<Response> {
    let bytes = read_limited(body, BODY_LIMIT).await?;
    let body: SilenceBody = json_body(&bytes)?;
    let starts_us = match &body.starts_at {
        Some(t) => parse_time("starts_at", t)?,
        None => app.clock.now_us(),
    };
    let ends_us = match (&body.ends_at, body.duration_secs) {
        (Some(t), None) => parse_time("ends_at", t)?,
        (None, Some(secs)) => starts_us.saturating_add(secs.saturating_mul(1_000_000) as i64),
        _ => {
            return Err(Problem::bad_request(
                "give exactly one of ends_at and duration_secs",
            ));
        }
    };
    let silence = hoistway_alerts::Silence {
        id: 0,
        rule: body.rule,
        scope: body.scope,
        starts_us,
        ends_us,
        by: staff.username().to_string(),
        reason: body.reason,
    };
    let silence = run(&app, move |a| a.add_silence(silence)).await?;
    Ok((StatusCode::CREATED, Json(silence)).into_response())
}

/// `DELETE /v1/silences/{id}`.
#[utoipa::path(delete, path = "/v1/silences/{id}", summary = "End a silence", params(("id" = i64, Path)),
    responses((status = 204, description = "Deleted")))]
pub async fn delete_silence(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let Ok(number) = id.parse::<i64>() else {
        return Err(Problem::not_found(format!("silence {id:?} does not exist")));
    };
    if run(&app, move |a| a.delete_silence(number)).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Problem::not_found(format!("silence {id} does not exist")))
    }
}
