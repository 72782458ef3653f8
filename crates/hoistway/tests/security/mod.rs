//! Security end to end: every route against every kind of caller, the device flow over HTTP,
//! lifts posting only as themselves, staff with a second factor.

use bytes::Bytes;
use serde::Deserialize;

use crate::common::{self, Reply, TestServer, http, reading};
use serde_json::{Value, json};

const FORM: &str = "application/x-www-form-urlencoded";

async fn form(server: &TestServer, path: &str, body: &str) -> Reply {
    http(
        server.addr,
        "POST",
        path,
        &[("content-type", FORM), ("authorization", "")],
        Bytes::from(body.to_string()),
    )
    .await
}

async fn as_bearer(
    server: &TestServer,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Value,
) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}")).unwrap_or_default();
    let body = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    http(
        server.addr,
        method,
        path,
        &[
            ("content-type", "application/json"),
            ("authorization", &auth),
        ],
        body,
    )
    .await
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Creates a user with `role`, logs in (enrolling TOTP where the role needs it) and returns an
/// API token made with that session.
async fn staff(server: &TestServer, name: &str, role: &str) -> String {
    let password = "correct horse battery staple";
    let r = server
        .post_json(
            "/v1/users",
            &json!({ "username": name, "password": password, "role": role }).to_string(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let login = json!({ "username": name, "password": password });
    let r = as_bearer(server, None, "POST", "/v1/auth/login", login.clone()).await;
    assert_eq!(r.status, 200);
    let session = r.json()["token"].as_str().unwrap().to_string();
    if role == "viewer" {
        assert_eq!(r.json()["enrolment_required"], false);
        return api_token(server, &session).await;
    }
    assert_eq!(r.json()["enrolment_required"], true);
    // Before enrolling, an operator can reach only their own account.
    let r = as_bearer(server, Some(&session), "GET", "/v1/lifts", Value::Null).await;
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    let r = as_bearer(server, Some(&session), "POST", "/v1/auth/totp", Value::Null).await;
    assert_eq!(r.status, 200);
    let e = r.json();
    assert!(e["qr_svg"].as_str().unwrap().contains("<svg"));
    let secret = hoistway_auth::totp::decode_base32(e["secret"].as_str().unwrap()).unwrap();
    let code = hoistway_auth::totp::code_at(&secret, now_secs());
    let r = as_bearer(
        server,
        Some(&session),
        "POST",
        "/v1/auth/totp/confirm",
        json!({ "code": code }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["recovery_codes"].as_array().unwrap().len(), 10);
    // From now on a login needs a code, and the code just used is spent.
    let r = as_bearer(server, None, "POST", "/v1/auth/login", login.clone()).await;
    assert_eq!(r.status, 401);
    assert!(
        r.json()["type"]
            .as_str()
            .unwrap()
            .ends_with("second-factor-required")
    );
    let mut with_code = login.clone();
    with_code["code"] = code.into();
    let r = as_bearer(server, None, "POST", "/v1/auth/login", with_code).await;
    assert_eq!(r.status, 401, "a TOTP code is accepted once");
    api_token(server, &session).await
}

async fn api_token(server: &TestServer, session: &str) -> String {
    let r = as_bearer(
        server,
        Some(session),
        "POST",
        "/v1/auth/tokens",
        json!({ "name": "walk", "expires_days": 1 }),
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()["token"].as_str().unwrap().to_string()
}

/// Runs the device flow for `lift` (approved by the admin) and returns its token pair.
async fn device_tokens(server: &TestServer, lift: &str) -> Value {
    let r = form(
        server,
        "/oauth/device_authorization",
        &format!("client_id={lift}"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let a = r.json();
    let device_code = a["device_code"].as_str().unwrap().to_string();
    let poll = format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&device_code={device_code}&client_id={lift}"
    );
    let r = form(server, "/oauth/token", &poll).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "authorization_pending");
    // Polling again at once is too fast.
    let r = form(server, "/oauth/token", &poll).await;
    assert_eq!(r.json()["error"], "slow_down");
    let r = server
        .post_json(
            "/v1/devices/approve",
            &json!({ "user_code": a["user_code"], "building": "B-1" }).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // The interval is now 1 + 5 s (the tests' poll interval is 1 s).
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let r = form(server, "/oauth/token", &poll).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers["cache-control"], "no-store");
    r.json()
}

fn concrete(path: &str) -> String {
    path.replace("{lift_id}", "L-NOPE")
        .replace("{username}", "nobody")
        .replace("{id}", "nope")
        .replace("{user_code}", "BCDF-GHJK")
        .replace("{building_id}", "B-NOPE")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_role_by_its_rule() {
    let server = TestServer::start(&[("HOISTWAY_AUTH__DEVICES", "required")]);
    let viewer = staff(&server, "vera", "viewer").await;
    let operator = staff(&server, "otto", "operator").await;
    let device = device_tokens(&server, "L-1").await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    // Roles by rank; `None`: no staff role.
    let callers: [(&str, Option<&str>, Option<u8>); 5] = [
        ("nobody", None, None),
        ("device", Some(&device), None),
        ("viewer", Some(&viewer), Some(0)),
        ("operator", Some(&operator), Some(1)),
        ("admin", Some(&server.token), Some(2)),
    ];
    let rank = |role: &str| {
        ["viewer", "operator", "admin"]
            .iter()
            .position(|r| *r == role)
    };
    // The route table as the binary has it: a new route comes with a rule or fails here.
    #[derive(Deserialize)]
    struct Rule {
        method: String,
        path: String,
        access: String,
    }
    let out = common::hoistway(&["routes".as_ref()]);
    assert!(out.status.success());
    let mut rules: Vec<Rule> = serde_json::from_slice(&out.stdout).unwrap();
    // Logout ends the token used (API tokens here, which revoking sessions leaves alone): last.
    rules.sort_by_key(|r| r.path.contains("logout"));
    assert!(rules.len() >= 40, "the whole API: {}", rules.len());
    for (caller, token, role) in callers {
        for Rule {
            method,
            path,
            access,
        } in &rules
        {
            let r = as_bearer(&server, token, method, &concrete(path), Value::Null).await;
            let denied = r.status == 401 || r.status == 403;
            let should_pass = match (access.as_str(), role, caller) {
                ("public", ..) => true,
                ("device", _, "device" | "nobody") => true,
                ("device", ..) => false,
                ("staff", Some(_), _) => true,
                (needed, Some(r), _) => rank(needed).is_some_and(|n| r as usize >= n),
                _ => false,
            };
            if access == "device" && caller == "nobody" {
                // The handler decides: the empty body never gets that far, so check the rule
                // with a reading instead (below).
                continue;
            }
            assert_eq!(
                !denied,
                should_pass,
                "{caller} {method} {path} ({access}) answered {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
            if denied {
                assert_eq!(r.content_type(), "application/problem+json");
            }
            if r.status == 401 {
                assert!(r.headers.contains_key("www-authenticate"));
            }
        }
    }
    let r = as_bearer(&server, None, "POST", "/v1/telemetry", reading("L-1", 1, 1)).await;
    assert_eq!(r.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lift_posts_only_as_itself_and_revocation_is_immediate() {
    let server = TestServer::start(&[("HOISTWAY_AUTH__DEVICES", "required")]);
    let l1 = device_tokens(&server, "L-1").await;
    let l2 = device_tokens(&server, "L-2").await;
    let t1 = l1["access_token"].as_str().unwrap();
    let r = as_bearer(
        &server,
        Some(t1),
        "POST",
        "/v1/telemetry",
        reading("L-1", 1, 10),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // Another lift's reading, alone or in a batch with its own: 403, nothing taken.
    let r = as_bearer(
        &server,
        Some(t1),
        "POST",
        "/v1/telemetry",
        reading("L-2", 1, 10),
    )
    .await;
    assert_eq!(r.status, 403);
    let batch = json!([reading("L-1", 2, 11), reading("L-2", 2, 11)]);
    let r = as_bearer(&server, Some(t1), "POST", "/v1/telemetry", batch).await;
    assert_eq!(r.status, 403);
    // Without a token, for a known lift or an invented one: 401, no dead letter.
    let r = as_bearer(&server, None, "POST", "/v1/telemetry", reading("L-2", 3, 1)).await;
    assert_eq!(r.status, 401);
    let r = as_bearer(
        &server,
        None,
        "POST",
        "/v1/telemetry",
        reading("INVENTED-9", 1, 1),
    )
    .await;
    assert_eq!(r.status, 401);
    // A forged token: alg none with L-2's claims.
    let parts: Vec<&str> = t1.split('.').collect();
    let forged = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
    let r = as_bearer(
        &server,
        Some(&forged),
        "POST",
        "/v1/telemetry",
        reading("L-1", 4, 1),
    )
    .await;
    assert_eq!(r.status, 401);
    let t2 = l2["access_token"].as_str().unwrap();
    let r = as_bearer(
        &server,
        Some(t2),
        "POST",
        "/v1/telemetry",
        reading("L-2", 5, 20),
    )
    .await;
    assert_eq!(r.status, 200);
    server
        .eventually("both readings applied", || async {
            let r = server.get("/v1/lifts/L-1/state").await;
            r.status == 200 && r.json()["readings_total"] == 1
        })
        .await;
    let r = server.get("/v1/lifts/L-2/state").await;
    server
        .eventually("L-2 applied", || async {
            server.get("/v1/lifts/L-2/state").await.json()["readings_total"] == 1
        })
        .await;
    drop(r);
    assert_eq!(
        server.get("/v1/lifts/L-1/state").await.json()["readings_total"],
        1
    );
    let dlq = server.get("/v1/dlq").await.json();
    assert_eq!(dlq["files"].as_array().unwrap().len(), 0, "{dlq}");

    // A refresh whose response was lost: the lift retries the same refresh token and gets a
    // working pair; the lost pair's refresh token is dead.
    let rt = l1["refresh_token"].as_str().unwrap();
    let refresh = format!("grant_type=refresh_token&refresh_token={rt}&client_id=L-1");
    let lost = form(&server, "/oauth/token", &refresh).await;
    assert_eq!(lost.status, 200);
    let retried = form(&server, "/oauth/token", &refresh).await;
    assert_eq!(
        retried.status,
        200,
        "{}",
        String::from_utf8_lossy(&retried.body)
    );
    let lost_rt = lost.json()["refresh_token"].as_str().unwrap().to_string();
    let r = form(
        &server,
        "/oauth/token",
        &format!("grant_type=refresh_token&refresh_token={lost_rt}"),
    )
    .await;
    assert_eq!(r.json()["error"], "invalid_grant");
    let fresh = retried.json()["access_token"].as_str().unwrap().to_string();
    let r = as_bearer(
        &server,
        Some(&fresh),
        "POST",
        "/v1/telemetry",
        reading("L-1", 6, 12),
    )
    .await;
    assert_eq!(r.status, 200);

    // Revoked: the next request is refused, whether the token was cached or not.
    let r = server.post_json("/v1/devices/L-1/revoke", "").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = as_bearer(
        &server,
        Some(&fresh),
        "POST",
        "/v1/telemetry",
        reading("L-1", 7, 13),
    )
    .await;
    assert_eq!(r.status, 401);
    let r = form(
        &server,
        "/oauth/token",
        &format!(
            "grant_type=refresh_token&refresh_token={}",
            retried.json()["refresh_token"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(r.json()["error"], "invalid_grant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_mode_takes_registered_lifts_without_a_token_during_a_roll_out() {
    let server = TestServer::start(&[("HOISTWAY_AUTH__DEVICES", "optional")]);
    common::register(&server, "lift_id,building\nOLD-1,B1\nOLD-2,B1\n").await;
    let r = as_bearer(
        &server,
        None,
        "POST",
        "/v1/telemetry",
        reading("OLD-1", 1, 5),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = as_bearer(
        &server,
        None,
        "POST",
        "/v1/telemetry",
        reading("NEW-1", 1, 5),
    )
    .await;
    assert_eq!(r.status, 401, "an unregistered lift needs a token");
    // One lift switched to required ahead of the fleet.
    let r = http(
        server.addr,
        "PUT",
        "/v1/devices/OLD-2/mode",
        &[("content-type", "application/json")],
        Bytes::from(r#"{"mode":"required"}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = as_bearer(
        &server,
        None,
        "POST",
        "/v1/telemetry",
        reading("OLD-2", 1, 5),
    )
    .await;
    assert_eq!(r.status, 401);
    let metrics = String::from_utf8(server.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains("hoistway_ingest_unauthenticated_requests_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brute_force_hits_the_rate_limit_and_the_audit_log_records_who_did_what() {
    let server = TestServer::start(&[]);
    let r = server
        .post_json(
            "/v1/users",
            &json!({ "username": "vera", "password": "a long enough password", "role": "viewer" })
                .to_string(),
        )
        .await;
    assert_eq!(r.status, 201);
    // Guessing a password: ten tries per account a minute, then 429 with Retry-After, even for
    // the right password.
    let mut limited = None;
    for i in 0..12 {
        let r = as_bearer(
            &server,
            None,
            "POST",
            "/v1/auth/login",
            json!({ "username": "vera", "password": format!("guess number {i}") }),
        )
        .await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 401);
    }
    let r = limited.expect("the limit was reached");
    assert!(
        r.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let r = as_bearer(
        &server,
        None,
        "POST",
        "/v1/auth/login",
        json!({ "username": "vera", "password": "a long enough password" }),
    )
    .await;
    assert_eq!(r.status, 429);

    // Browser-facing headers on every response, errors included.
    for h in [
        "x-content-type-options",
        "referrer-policy",
        "content-security-policy",
    ] {
        assert!(r.headers.contains_key(h), "{h}");
    }

    // The audit log has the failures, the user's creation and the SQL with its author.
    server.sql_rows("SELECT 1 AS one").await;
    let audit = server.get("/v1/audit?limit=1000").await;
    assert_eq!(audit.status, 200);
    let items = audit.json()["items"].as_array().unwrap().clone();
    let count = |action: &str, outcome: &str| {
        items
            .iter()
            .filter(|e| e["action"] == action && e["outcome"] == outcome)
            .count()
    };
    assert_eq!(count("login", "denied"), 10);
    assert_eq!(count("user.create", "ok"), 1);
    let sql = items.iter().find(|e| e["action"] == "sql").unwrap();
    assert_eq!(sql["actor"], "admin");
    assert_eq!(sql["detail"], "SELECT 1 AS one");
    assert_eq!(sql["address"], "127.0.0.1");
    let page = server.get("/v1/audit?action=user.create").await.json();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["target"], "vera");
    // Secrets never reach the log.
    let text = audit.body.iter().map(|b| *b as char).collect::<String>();
    assert!(!text.contains("a long enough password") && !text.contains("guess number"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_trickles_its_headers_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start(&[("HOISTWAY_HEADER_READ_TIMEOUT_SECS", "1")]);
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        slow.read_to_end(&mut buf),
    )
    .await;
    assert!(read.is_ok(), "the server kept a stalled connection open");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // Others are served all along.
    assert_eq!(server.get("/healthz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn factory_provisioned_lifts_exchange_their_code_once() {
    let server = TestServer::start(&[("HOISTWAY_AUTH__DEVICES", "required")]);
    let r = http(
        server.addr,
        "POST",
        "/v1/devices/provision?valid_days=30",
        &[("content-type", "text/csv")],
        Bytes::from("lift_id,building,model\nFAC-1,B-9,HW-2000\nFAC-2,B-9,HW-2000\n"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers["cache-control"], "no-store");
    let csv = String::from_utf8(r.body.to_vec()).unwrap();
    let codes: Vec<(String, String)> = csv
        .lines()
        .skip(1)
        .map(|l| {
            let (lift, code) = l.split_once(',').unwrap();
            (lift.to_string(), code.to_string())
        })
        .collect();
    assert_eq!(codes.len(), 2);
    assert_eq!(
        server.get("/v1/lifts/FAC-1").await.json()["model"],
        "HW-2000"
    );
    let grant = "urn%3Ahoistway%3Aparams%3Aoauth%3Agrant-type%3Aregistration_code";
    let (lift, code) = &codes[0];
    // Another lift cannot use it, nor can the device-code grant.
    let r = form(
        &server,
        "/oauth/token",
        &format!("grant_type={grant}&code={code}&client_id=FAC-2"),
    )
    .await;
    assert_eq!(r.json()["error"], "invalid_grant");
    let r = form(
        &server,
        "/oauth/token",
        &format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&device_code={code}&client_id={lift}"),
    )
    .await;
    assert_eq!(r.json()["error"], "invalid_grant");
    let r = form(
        &server,
        "/oauth/token",
        &format!("grant_type={grant}&code={code}&client_id={lift}"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let token = r.json()["access_token"].as_str().unwrap().to_string();
    let r = as_bearer(
        &server,
        Some(&token),
        "POST",
        "/v1/telemetry",
        reading(lift, 1, 3),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = form(
        &server,
        "/oauth/token",
        &format!("grant_type={grant}&code={code}&client_id={lift}"),
    )
    .await;
    assert_eq!(
        r.json()["error"],
        "invalid_grant",
        "a registration code works once"
    );
    // A lift without a building is refused, and nothing of that file is registered.
    let r = http(
        server.addr,
        "POST",
        "/v1/devices/provision",
        &[("content-type", "text/csv")],
        Bytes::from("lift_id,building\nFAC-3,B-9\nFAC-4,\n"),
    )
    .await;
    assert_eq!(r.status, 422);
    assert_eq!(server.get("/v1/lifts/FAC-3").await.status, 404);
}
