//! The API's OpenAPI 3.1 document. Each handler describes its path, parameters, body and answers
//! with `#[utoipa::path]`; the route table ([`crate::routes`]) adds each route to the router and
//! to this document together, with the access it needs, so no route can be served undocumented.
//! The document is committed as `ui/openapi.json` (a test regenerates and compares it) and the
//! UI's TypeScript types are generated from that file.

use std::sync::OnceLock;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hoistway_auth::{Access, Role};
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{
    ComponentsBuilder, InfoBuilder, LicenseBuilder, OpenApi, OpenApiBuilder, Ref, RefOr,
};
use utoipa::{PartialSchema, ToSchema};

use crate::problem::{FieldProblem, PROBLEM_JSON, Problem};

const DESCRIPTION: &str = "Telemetry, state, analytics and alerts of a fleet of lifts.

Lifts authenticate with a device access token (the RFC 8628 device flow under `/oauth`). Staff \
sign in at `/v1/auth/login` and send the token it returns as `Authorization: Bearer …`, or, in a \
browser, the session cookie it sets; a cookie-signed request that changes something must also send \
`X-CSRF-Token` with the value of the `hoistway_csrf` cookie. Each operation names the access it \
needs in `x-hoistway-access`. Every error is an RFC 9457 problem (`application/problem+json`).";

/// The document without paths: title, version, security schemes and the shared schemas.
pub(crate) fn frame() -> OpenApi {
    let bearer = HttpBuilder::new()
        .scheme(HttpAuthScheme::Bearer)
        .description(Some(
            "A staff token (`hwt_…`, from login or `/v1/auth/tokens`) or a lift's access token",
        ))
        .build();
    let session = ApiKey::Cookie(ApiKeyValue::with_description(
        "hoistway_session",
        "The browser session set by login; changes also need the X-CSRF-Token header",
    ));
    let mut schemas = Vec::new();
    <Problem as ToSchema>::schemas(&mut schemas);
    let components = ComponentsBuilder::new()
        .security_scheme("bearer", SecurityScheme::Http(bearer))
        .security_scheme("session", SecurityScheme::ApiKey(session))
        .schema(Problem::name(), Problem::schema())
        .schema(FieldProblem::name(), FieldProblem::schema())
        .schemas_from_iter(schemas)
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Hoistway API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(DESCRIPTION))
                .license(Some(LicenseBuilder::new().name("Apache-2.0").build())),
        )
        .components(Some(components))
        .security(Some(vec![
            SecurityRequirement::new("bearer", Vec::<String>::new()),
            SecurityRequirement::new("session", Vec::<String>::new()),
        ]))
        .build()
}

/// How the document names an access rule (also the `x-hoistway-access` value).
pub fn access_name(access: Access) -> String {
    let role = |r: Role| r.as_str().to_string();
    match access {
        Access::Public => "public".into(),
        Access::Device => "device".into(),
        Access::Staff => "staff".into(),
        Access::Role(r) => role(r),
        Access::Fleet(r) => format!("fleet {}", role(r)),
    }
}

fn access_sentence(access: Access) -> String {
    match access {
        Access::Public => "Access: anyone.".into(),
        Access::Device => "Access: a lift's access token.".into(),
        Access::Staff => "Access: any signed-in staff member.".into(),
        Access::Role(r) => format!(
            "Access: role {} or higher; a customer's user sees only that customer's data.",
            r.as_str()
        ),
        Access::Fleet(r) => format!(
            "Access: the lift maker's staff with role {} or higher.",
            r.as_str()
        ),
    }
}

/// Adds to an operation what the route table knows: its tag, the access it needs, and the
/// problem answers every route may give.
pub(crate) fn describe(op: &mut Operation, path: &str, access: Access) {
    let tag = match path.split('/').nth(1) {
        Some("v1") => path.split('/').nth(2).unwrap_or("v1"),
        Some("oauth") => "oauth",
        _ => "operations",
    };
    op.tags.get_or_insert_with(Vec::new).push(tag.to_string());
    let sentence = access_sentence(access);
    op.description = Some(match op.description.take() {
        Some(d) if !d.is_empty() => format!("{d}\n\n{sentence}"),
        _ => sentence,
    });
    op.security = match access {
        Access::Public => Some(vec![SecurityRequirement::default()]),
        Access::Device => Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]),
        _ => None,
    };
    let ext = ExtensionsBuilder::new()
        .add("x-hoistway-access", access_name(access))
        .build();
    match &mut op.extensions {
        Some(e) => e.merge(ext),
        None => op.extensions = Some(ext),
    }
    let problem = || {
        ContentBuilder::new()
            .schema(Some(RefOr::Ref(Ref::from_schema_name(Problem::name()))))
            .build()
    };
    for (code, what) in [
        ("4XX", "The request was refused; `detail` says why"),
        (
            "5XX",
            "The server could not answer; `Retry-After` when it is worth trying again",
        ),
    ] {
        op.responses
            .responses
            .entry(code.to_string())
            .or_insert_with(|| {
                ResponseBuilder::new()
                    .description(what)
                    .content(PROBLEM_JSON, problem())
                    .into()
            });
    }
}

/// The whole document, built once.
pub fn document() -> &'static OpenApi {
    static DOC: OnceLock<OpenApi> = OnceLock::new();
    DOC.get_or_init(|| crate::routes::routes().api)
}

/// The document as the committed golden file holds it (pretty JSON, trailing newline).
pub fn document_json() -> String {
    let mut s = document()
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    s.push('\n');
    s
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(get, path = "/openapi.json", summary = "The OpenAPI document", responses(
    (status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json"),
))]
pub(crate) async fn serve() -> Response {
    static JSON: OnceLock<String> = OnceLock::new();
    let body = JSON.get_or_init(document_json).as_str();
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed document the UI's types are generated from.
    const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../ui/openapi.json");

    #[test]
    fn the_committed_document_is_the_one_the_server_serves() {
        let now = document_json();
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(GOLDEN, &now).unwrap();
        }
        let committed = std::fs::read_to_string(GOLDEN).unwrap_or_default();
        assert!(
            committed == now,
            "ui/openapi.json differs from the API this build serves; run \
             `UPDATE_GOLDEN=1 cargo test -p hoistway-server openapi`, then rebuild the UI \
             (its types are generated from that file) and commit both"
        );
    }

    #[test]
    fn every_route_is_described_with_its_parameters_answers_and_access() {
        let routes = crate::routes::routes();
        let doc = serde_json::to_value(&routes.api).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let mut described = 0;
        for (method, by_path) in &routes.rules {
            for (path, access) in by_path {
                let m = method.as_str().to_ascii_lowercase();
                let op = &paths
                    .get(path)
                    .unwrap_or_else(|| panic!("{path} is served but not in the document"))[&m];
                assert!(
                    op.is_object(),
                    "{method} {path} is served but not described"
                );
                described += 1;
                assert_eq!(
                    op["x-hoistway-access"],
                    access_name(*access),
                    "{method} {path}"
                );
                let answers = op["responses"].as_object().unwrap();
                assert!(
                    answers.keys().any(|c| c.starts_with('2')),
                    "{method} {path} names no successful answer"
                );
                assert!(op["summary"].is_string(), "{method} {path} has no summary");
                // Each `{name}` of the path is a documented path parameter.
                let params: Vec<&str> = op["parameters"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .filter(|p| p["in"] == "path")
                            .filter_map(|p| p["name"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                for name in path.split('/').filter_map(|s| s.strip_prefix('{')) {
                    let name = name.trim_end_matches('}');
                    assert!(
                        params.contains(&name),
                        "{method} {path}: path parameter {name} is not described"
                    );
                }
            }
        }
        let operations: usize = paths
            .values()
            .map(|item| item.as_object().unwrap().len())
            .sum();
        assert_eq!(
            operations, described,
            "the document describes routes not served"
        );
        // Every `/v1` and `/oauth` route is in; each reference points at a known schema.
        assert!(described >= 66, "only {described} routes");
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let text = doc.to_string();
        for piece in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &piece[..piece.find('"').unwrap()];
            assert!(
                schemas.contains_key(name),
                "schema {name} is referenced but missing"
            );
        }
    }
}
