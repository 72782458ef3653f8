//! Metric handles for the hot paths, resolved once per thread.
//!
//! `metrics::counter!(name, labels…)` builds a key and looks it up in the recorder on every
//! call; at tens of thousands of requests a second that is work the request does not need.
//! Each thread keeps the handles it has used, keyed by what varies (route, method, status), so
//! a request only bumps atomics. The metrics and their labels are the same as before.

use std::cell::RefCell;
use std::collections::HashMap;

use axum::http::Method;
use metrics::{Counter, Histogram};

struct RouteMeters {
    duration: Histogram,
    requests: HashMap<(Method, u16), Counter>,
}

thread_local! {
    static ROUTES: RefCell<HashMap<Box<str>, RouteMeters>> = RefCell::new(HashMap::new());
    static INGEST: IngestMeters = IngestMeters::new();
}

/// Counts one request of `route` and records how long it took.
pub(crate) fn request(route: &str, method: &Method, status: u16, seconds: f64) {
    ROUTES.with_borrow_mut(|routes| {
        if !routes.contains_key(route) {
            let meters = RouteMeters {
                duration: metrics::histogram!(
                    "hoistway_http_request_duration_seconds",
                    "route" => route.to_owned()
                ),
                requests: HashMap::new(),
            };
            routes.insert(route.into(), meters);
        }
        let meters = routes.get_mut(route).expect("inserted above");
        meters.duration.record(seconds);
        meters
            .requests
            .entry((method.clone(), status))
            .or_insert_with(|| {
                metrics::counter!(
                    "hoistway_http_requests_total",
                    "route" => route.to_owned(),
                    "method" => method.as_str().to_owned(),
                    "status" => status.to_string()
                )
            })
            .increment(1);
    });
}

pub(crate) struct IngestMeters {
    pub accepted: Counter,
    pub duplicate: Counter,
    pub rejected: Counter,
    pub ack_seconds: Histogram,
}

impl IngestMeters {
    fn new() -> Self {
        Self {
            accepted: metrics::counter!("hoistway_ingest_readings_total", "outcome" => "accepted"),
            duplicate: metrics::counter!("hoistway_ingest_readings_total", "outcome" => "duplicate"),
            rejected: metrics::counter!("hoistway_ingest_readings_total", "outcome" => "rejected"),
            ack_seconds: metrics::histogram!("hoistway_ingest_ack_seconds"),
        }
    }
}

/// The telemetry path's handles of the calling thread.
pub(crate) fn ingest<R>(f: impl FnOnce(&IngestMeters) -> R) -> R {
    INGEST.with(f)
}
