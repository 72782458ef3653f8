//! The web UI: every `GET` outside the API answers with a built file, or with the single page
//! (`index.html`) for the app's own paths, such as `/lifts/L-1` or the device flow's `/activate`.
//! The files hold no data; the page reads everything through the API with the session cookie.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::problem::Problem;

/// The page's own scripts, styles and API only; images also as `data:` (the TOTP QR code).
const CSP: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; \
                   form-action 'self'; frame-ancestors 'none'";

/// The router's fallback.
pub async fn serve(req: Request) -> Response {
    let path = req.uri().path();
    let api = ["/v1/", "/oauth/"].iter().any(|p| path.starts_with(p))
        || matches!(path, "/v1" | "/oauth" | "/healthz" | "/readyz" | "/metrics");
    if api {
        return Problem::not_found("no such endpoint; the API is described in docs/api.md")
            .into_response();
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "the web UI's pages are read with GET",
        )
        .into_response();
    }
    let file = path.trim_start_matches('/');
    let (asset, cache) = match hoistway_ui::asset(file) {
        Some(a) if a.immutable => (a, "public, max-age=31536000, immutable"),
        Some(a) => (a, "no-cache"),
        // A missing hashed file is an old page asking for a file of a previous build.
        None if file.starts_with("assets/") => {
            return Problem::not_found(format!("no UI file {path}; reload the page"))
                .into_response();
        }
        None => (hoistway_ui::index(), "no-cache"),
    };
    let gzip_ok = req
        .headers()
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| e.split(';').next().is_some_and(|e| e.trim() == "gzip"));
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, asset.content_type)
        .header(header::CACHE_CONTROL, cache)
        .header(header::VARY, "accept-encoding")
        .header(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    let body = match asset.gzip {
        Some(gz) if gzip_ok => {
            builder = builder.header(header::CONTENT_ENCODING, "gzip");
            gz
        }
        _ => asset.body,
    };
    builder
        .body(Body::from(body))
        .unwrap_or_else(|e| Problem::internal(&e).into_response())
}
