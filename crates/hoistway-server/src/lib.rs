//! The HTTP API: the device ingest endpoint and the read/admin API for staff and tools.
//!
//! In: HTTP requests. Out: readings handed to [`hoistway_ingest::Ingest`]; registry changes;
//! dead-letter replays; JSON views of fleet state; Prometheus metrics. Every error is RFC 9457
//! `application/problem+json` ([`problem`]).
//!
//! This crate names no backend: it is handed an [`AppState`] built by the binary.

mod alerts;
mod analytics;
pub mod auth;
mod backup;
pub mod listen;
mod meter;
pub mod openapi;
pub mod problem;
pub mod rate;
mod routes;
pub mod tls;
mod ui;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use hoistway_dlq::DeadLetters;
use hoistway_ingest::{DecodeLimits, Ingest};
use hoistway_log::Log;
use hoistway_model::Clock;
use hoistway_processor::{Fleet, Progress};
use hoistway_registry::Registry;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

/// Everything the handlers need, wired by the binary. Cloned per request, so it is one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    pub fn new(parts: AppParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;
    fn deref(&self) -> &AppParts {
        &self.0
    }
}

pub struct AppParts {
    pub ingest: Ingest,
    pub auth: Arc<hoistway_auth::Authority>,
    pub rate: rate::RateLimits,
    /// Reverse proxies whose `X-Forwarded-For` names the client (rate limits, audit log).
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Whether clients reach this server over TLS (its own, or a trusted proxy's): session
    /// cookies are then `Secure`.
    pub tls: bool,
    pub registry: Arc<Registry>,
    pub dlq: Arc<dyn DeadLetters>,
    /// Each partition's log, in partition order (one: a standalone server's).
    pub logs: Vec<Arc<dyn Log>>,
    /// `None` on an ingest node (`--role ingest`), which then serves only [`ingest_router`].
    /// A query node has one that reads the holder's state and storage.
    pub processing: Option<Processing>,
    /// `None` when alerting is off (and on an ingest node).
    pub alerts: Option<Arc<hoistway_alerts::Alerts>>,
    /// `None` where this process cannot take backups (it does not hold the data dir).
    pub backups: Option<Arc<hoistway_backup::Backups>>,
    pub clock: Arc<dyn Clock>,
    pub limits: ApiLimits,
    pub metrics: Option<PrometheusHandle>,
    /// Cleared when shutdown begins, so readiness fails before the listener closes.
    pub accepting: Arc<AtomicBool>,
    /// Whether this node takes readings: its readiness then needs the log and room in it. A
    /// query node that takes none stays ready for staff with the log out of reach (a warning).
    pub takes_readings: bool,
    pub started: Instant,
}

/// What a node that processes the log has: its partitions' state, storage and queries.
pub struct Processing {
    pub fleet: Fleet,
    pub stores: hoistway_store::Stores,
    pub query: Arc<hoistway_query::QueryEngine>,
    /// Each partition's processor's progress, in partition order.
    pub progress: Vec<watch::Receiver<Progress>>,
    /// How often the processor checkpoints: `/readyz` warns when none succeeded for three times
    /// as long.
    pub checkpoint_interval: std::time::Duration,
}

impl AppParts {
    /// The processing side. Only the routes of [`router`] call it, and a node without one
    /// serves [`ingest_router`] instead.
    fn processing(&self) -> &Processing {
        self.processing
            .as_ref()
            .expect("only a node that processes serves this route")
    }

    pub(crate) fn fleet(&self) -> &Fleet {
        &self.processing().fleet
    }

    pub(crate) fn stores(&self) -> &hoistway_store::Stores {
        &self.processing().stores
    }

    pub(crate) fn query(&self) -> &Arc<hoistway_query::QueryEngine> {
        &self.processing().query
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ApiLimits {
    /// Largest request body as sent (compressed or not).
    pub max_body_bytes: usize,
    pub decode: DecodeLimits,
    /// Seconds a client is told to wait when ingest is behind or unavailable.
    pub retry_after_secs: u64,
    /// Readings of unregistered lifts (which become dead letters) are refused once pending
    /// dead letters take this many bytes; `None`: no cap (auto-registration makes none).
    pub dead_letter_max_bytes: Option<u64>,
    /// An edge region whose stream the log takes in, out of contact this long, is a warning
    /// on `/readyz`.
    pub edge_quiet: std::time::Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 << 20,
            decode: DecodeLimits::default(),
            retry_after_secs: 5,
            dead_letter_max_bytes: Some(1 << 30),
            edge_quiet: std::time::Duration::from_secs(30),
        }
    }
}

impl AppState {
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    layered(routes::routes(), state)
}

/// What a query node serves (`--role query`): the whole API but `POST /v1/telemetry`.
pub fn query_router(state: AppState) -> Router {
    layered(routes::routes_taking(false), state)
}

/// What an ingest node serves (`--role ingest`): readings from lifts, the device flow that
/// gives lifts their tokens, health and metrics.
pub fn ingest_router(state: AppState) -> Router {
    layered(routes::ingest_routes(), state)
}

/// What a processor node that takes no readings serves (`--role processor`): health and
/// metrics.
pub fn ops_router(state: AppState) -> Router {
    layered(routes::ops_routes(), state)
}

fn layered(routes: routes::Routes, state: AppState) -> Router {
    let routes::Routes {
        router: routes,
        rules,
        ..
    } = routes;
    let gate = auth::Gate {
        app: state.clone(),
        rules: Arc::new(rules),
    };
    use axum::http::{HeaderValue, header};
    use tower_http::set_header::SetResponseHeaderLayer;
    let security_headers = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'",
        ),
    ];
    let mut router = routes
        .layer(axum::middleware::from_fn_with_state(gate, auth::authorize))
        .layer(axum::middleware::from_fn(track_requests));
    for (name, value) in security_headers {
        router = router.layer(SetResponseHeaderLayer::if_not_present(
            name,
            HeaderValue::from_static(value),
        ));
    }
    router
        // A client that starts a body and then stalls is cut off.
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            std::time::Duration::from_secs(60),
        ))
        // Gzip for clients that ask (the UI's chart data and lists shrink ~10×); never for
        // server-sent events, tiny answers, or the UI's files (already gzipped).
        .layer(tower_http::compression::CompressionLayer::new())
        .layer(tower::limit::ConcurrencyLimitLayer::new(8192))
        .with_state(state)
}

/// Requests by route, method and status, and their duration.
async fn track_requests(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let resp = next.run(req).await;
    meter::request(
        route.as_ref().map_or("unmatched", |r| r.as_str()),
        &method,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

/// Every route with the access it needs: (method, path pattern, access). For the tests that walk
/// the whole API.
pub fn route_rules() -> Vec<(String, String, hoistway_auth::Access)> {
    let mut rules: Vec<_> = routes::routes()
        .rules
        .into_iter()
        .flat_map(|(m, paths)| paths.into_iter().map(move |(p, a)| (m.to_string(), p, a)))
        .collect();
    rules.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
    rules
}

/// Installs the process-wide Prometheus recorder (once) with Hoistway's histogram buckets.
pub fn install_metrics() -> Option<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<PrometheusHandle>> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
            let latency = [
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("hoistway_ingest_group_commit_requests".into()),
                        &[
                            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                            2048.0,
                        ],
                    )
                })
                .and_then(|b| b.install_recorder())
                .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()
        })
        .clone()
}
