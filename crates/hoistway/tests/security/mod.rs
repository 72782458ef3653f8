//! Security end to end: every route against every kind of caller, the device flow over HTTP,
//! lifts posting only as themselves, staff with a second factor.

use bytes::Bytes;
use serde::Deserialize;

use crate::common::{
    self, Reply, TestServer, drop_schema, http, reading, scratch_schema, test_postgres,
};
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
    staff_of(server, name, role, None).await
}

/// [`staff`] for one of `customer`'s people (the fleet admin creates the account).
pub(crate) async fn staff_of(
    server: &TestServer,
    name: &str,
    role: &str,
    customer: Option<&str>,
) -> String {
    let password = "correct horse battery staple";
    let r = server
        .post_json(
            "/v1/users",
            &json!({ "username": name, "password": password, "role": role, "customer": customer })
                .to_string(),
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
    let acme_viewer = staff_of(&server, "cleo", "viewer", Some("acme")).await;
    let acme_admin = staff_of(&server, "carl", "admin", Some("acme")).await;
    let device = device_tokens(&server, "L-1").await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    // Roles by rank; `None`: no staff role. A customer's people pass the role rules (the
    // handlers scope what they see) but not the lift maker's ("fleet ...") ones.
    let callers: [(&str, Option<&str>, Option<u8>); 7] = [
        ("nobody", None, None),
        ("device", Some(&device), None),
        ("viewer", Some(&viewer), Some(0)),
        ("operator", Some(&operator), Some(1)),
        ("admin", Some(&server.token), Some(2)),
        ("customer viewer", Some(&acme_viewer), Some(0)),
        ("customer admin", Some(&acme_admin), Some(2)),
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
                (needed, Some(r), caller) => match needed.strip_prefix("fleet ") {
                    Some(needed) => {
                        !caller.starts_with("customer")
                            && rank(needed).is_some_and(|n| r as usize >= n)
                    }
                    None => rank(needed).is_some_and(|n| r as usize >= n),
                },
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

/// The head deadline runs from a request's first byte, not while a keep-alive connection waits
/// between requests: a lift posting every 10 s keeps its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_idle_longer_than_the_head_deadline_stays_open() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start(&[
        ("HOISTWAY_HEADER_READ_TIMEOUT_SECS", "1"),
        ("HOISTWAY_KEEP_ALIVE_IDLE_SECS", "4"),
    ]);
    let mut conn = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";
    let answer = async |conn: &mut tokio::net::TcpStream| {
        conn.write_all(request).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    assert!(answer(&mut conn).await.starts_with("HTTP/1.1 200"));
    // Idle for twice the head deadline, then the same connection again.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(answer(&mut conn).await.starts_with("HTTP/1.1 200"));
    // Idle past the idle limit: the server closes it.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(std::time::Duration::from_secs(2), conn.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed after the idle limit: {read:?}"
    );
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

/// The lift ids in a JSON answer of a table with a `lift_id` column, or `None` when the table
/// has none.
fn lift_ids_of(reply: &Reply) -> Option<Vec<String>> {
    let answer = reply.json();
    let columns = answer["columns"].as_array()?;
    columns.iter().find(|c| c["name"] == "lift_id")?;
    Some(
        answer["rows"]
            .as_array()?
            .iter()
            .map(|r| r["lift_id"].as_str().unwrap_or_default().to_string())
            .collect(),
    )
}

/// The values of a JSON answer's first column, as text.
fn first_column(reply: &Reply) -> Vec<String> {
    let answer = reply.json();
    let name = answer["columns"][0]["name"].as_str().unwrap().to_string();
    answer["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| match &r[&name] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

async fn sql_as(server: &TestServer, token: &str, sql: &str) -> Reply {
    as_bearer(
        server,
        Some(token),
        "POST",
        "/v1/sql",
        json!({ "sql": sql }),
    )
    .await
}

/// Customers see their own lifts and nothing of anyone else's, through every door: each table
/// the catalog lists (so a new table must say how it is scoped, or this fails), the REST
/// reads, dead letters, and the PostgreSQL wire. A lift that changes hands is seen by each
/// customer for the period it held it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_sees_only_its_own_lifts_and_periods_everywhere() {
    let pg_port = common::free_port();
    let listen = format!("127.0.0.1:{pg_port}");
    let flight_port = common::free_port();
    let flight = format!("127.0.0.1:{flight_port}");
    let server = TestServer::start(&[
        ("HOISTWAY_QUERY__POSTGRES_LISTEN", listen.as_str()),
        ("HOISTWAY_QUERY__FLIGHT_LISTEN", flight.as_str()),
        ("HOISTWAY_QUERY__MAX_ROWS", "500"),
    ]);
    common::register(
        &server,
        "lift_id,customer,building\nA-1,acme,BA\nA-3,acme,BA\nB-1,bolt,BB\n",
    )
    .await;
    let post = |lift: &'static str, seq: u64| {
        let server = &server;
        async move {
            let r = server
                .post_json("/v1/telemetry", &reading(lift, seq, seq).to_string())
                .await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        }
    };
    for seq in 1..=3 {
        for lift in ["A-1", "A-3", "B-1", "A-2", "B-2"] {
            post(lift, seq).await;
        }
    }
    let count = |sql: &'static str| {
        let server = &server;
        async move { server.sql_rows(sql).await[0][0].clone() }
    };
    server
        .eventually("9 readings stored", || async {
            count("SELECT count(*) FROM readings").await == "9"
        })
        .await;
    // A-2 and B-2 were unknown: their readings are dead letters (written at the processor's
    // next checkpoint); then they are registered.
    server
        .eventually("6 dead letters", || async {
            let files = server.get("/v1/dlq").await.json()["files"].clone();
            let items: u64 = files
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["items"].as_u64().unwrap())
                .sum();
            items == 6
        })
        .await;
    common::register(
        &server,
        "lift_id,customer,building\nA-2,acme,BA\nB-2,bolt,BB\n",
    )
    .await;
    // A-3 is sold to bolt; what it reports from now on is bolt's.
    let r = http(
        server.addr,
        "PATCH",
        "/v1/lifts/A-3",
        &[("content-type", "application/json")],
        Bytes::from(json!({ "customer": "bolt", "building": "BB" }).to_string()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    for seq in 4..=5 {
        post("A-3", seq).await;
    }
    server
        .eventually("11 readings stored", || async {
            count("SELECT count(*) FROM readings").await == "11"
        })
        .await;

    let ann = staff_of(&server, "ann", "viewer", Some("acme")).await;
    let bob = staff_of(&server, "bob", "viewer", Some("bolt")).await;
    let ada = staff_of(&server, "ada", "admin", Some("acme")).await;

    // SQL: every table, as each customer.
    let r = sql_as(
        &server,
        &ann,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .await;
    assert_eq!(r.status, 200);
    let tables = first_column(&r);
    assert!(tables.len() >= 7, "{tables:?}");
    let acme: &[&str] = &["A-1", "A-2"];
    let bolt: &[&str] = &["B-1", "B-2"];
    for (who, token, mine, theirs) in [("ann", &ann, acme, bolt), ("bob", &bob, bolt, acme)] {
        for table in &tables {
            let r = sql_as(&server, token, &format!("SELECT * FROM {table}")).await;
            let body = String::from_utf8_lossy(&r.body).into_owned();
            if table == "audit" {
                assert_eq!(r.status, 403, "{who}: audit is for admins: {body}");
                continue;
            }
            assert_eq!(r.status, 200, "{who} {table}: {body}");
            let ids = lift_ids_of(&r)
                .unwrap_or_else(|| panic!("{table} has no lift_id column: how is it scoped?"));
            assert!(
                ids.iter().all(|id| !theirs.contains(&id.as_str())),
                "{who} sees another customer's rows in {table}: {ids:?}"
            );
            if table == "lifts" || table == "lift_state" || table == "readings" {
                assert!(
                    ids.iter().any(|id| mine.contains(&id.as_str())),
                    "{who} sees its own {table}"
                );
            }
        }
    }
    // The lift that changed hands: each side sees its own period.
    let seqs = |token: &String| {
        let token = token.clone();
        let server = &server;
        async move {
            let r = sql_as(
                server,
                &token,
                "SELECT seq FROM readings WHERE lift_id = 'A-3' ORDER BY seq",
            )
            .await;
            assert_eq!(r.status, 200);
            first_column(&r)
        }
    };
    assert_eq!(seqs(&ann).await, ["1", "2", "3"]);
    assert_eq!(seqs(&bob).await, ["4", "5"]);
    assert_eq!(seqs(&server.token).await.len(), 5);
    // The audit table: a customer's admin reads its own people's events only.
    let r = sql_as(
        &server,
        &ada,
        "SELECT DISTINCT actor || ':' || customer AS who FROM audit ORDER BY 1",
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let who = first_column(&r);
    assert!(who.contains(&"ann:acme".to_string()), "{who:?}");
    assert!(who.iter().all(|w| w.ends_with(":acme")), "{who:?}");

    // REST.
    let get = |token: &String, path: String| {
        let token = token.clone();
        let server = &server;
        async move { as_bearer(server, Some(&token), "GET", &path, Value::Null).await }
    };
    let r = get(&ann, "/v1/lifts".into()).await;
    let listed: Vec<String> = r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["lift_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, ["A-1", "A-2"], "A-3 is bolt's now");
    assert_eq!(
        get(&ann, "/v1/lifts?customer=bolt".into()).await.status,
        403
    );
    for path in [
        "/v1/lifts/B-1",
        "/v1/lifts/B-1/state",
        "/v1/lifts/B-1/readings",
        "/v1/lifts/B-1/assignments",
        "/v1/buildings/BB",
    ] {
        assert_eq!(get(&ann, path.into()).await.status, 404, "ann GET {path}");
        assert_eq!(
            get(&server.token, path.into()).await.status,
            200,
            "admin GET {path}"
        );
    }
    let r = get(&ann, "/v1/lifts/A-3/readings".into()).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["rows"].as_array().unwrap().len(),
        3,
        "{:?}",
        r.json()
    );
    let r = get(&ann, "/v1/lifts/A-3/assignments".into()).await;
    let periods = r.json()["items"].as_array().unwrap().clone();
    assert_eq!(periods.len(), 1);
    assert_eq!(periods[0]["customer"], "acme");
    assert!(periods[0]["valid_to"].is_string());
    let r = get(&server.token, "/v1/lifts/A-3/assignments".into()).await;
    assert_eq!(r.json()["items"].as_array().unwrap().len(), 2);
    assert_eq!(
        get(&ann, "/v1/fleet/summary".into()).await.json()["lifts"],
        2
    );
    // Dead letters: A-2's are acme's (its first owner owns its past), B-2's are not.
    let r = get(&ann, "/v1/dlq".into()).await;
    let files = r.json()["files"].as_array().unwrap().clone();
    assert!(!files.is_empty());
    let mut seen = 0;
    for f in &files {
        let id = f["id"].as_str().unwrap();
        let r = get(&ann, format!("/v1/dlq/{id}")).await;
        for item in r.json()["items"].as_array().unwrap() {
            assert_eq!(item["reading"]["lift_id"], "A-2");
            seen += 1;
        }
    }
    assert_eq!(seen, 3);

    // Property-level: a customer's admin changes its lifts, never their owner.
    let patch = |token: &String, lift: &str, body: Value| {
        let (token, path) = (token.clone(), format!("/v1/lifts/{lift}"));
        let server = &server;
        async move { as_bearer(server, Some(&token), "PATCH", &path, body).await }
    };
    assert_eq!(
        patch(&ada, "A-1", json!({ "customer": "bolt" }))
            .await
            .status,
        403
    );
    assert_eq!(
        patch(&ada, "A-1", json!({ "site": "north" })).await.status,
        200
    );
    assert_eq!(patch(&ada, "B-1", json!({ "site": "x" })).await.status, 404);
    assert_eq!(patch(&ann, "A-1", json!({ "site": "x" })).await.status, 403);
    // Users: a customer's admin manages its own people only.
    let r = get(&ada, "/v1/users".into()).await;
    let mut names: Vec<String> = r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["ada", "ann"]);
    let r = as_bearer(
        &server,
        Some(&ada),
        "POST",
        "/v1/users",
        json!({ "username": "eve", "password": "a long enough password", "role": "admin", "customer": "bolt" }),
    )
    .await;
    assert_eq!(r.status, 403);
    let r = as_bearer(
        &server,
        Some(&ada),
        "PATCH",
        "/v1/users/bob",
        json!({ "role": "admin" }),
    )
    .await;
    assert_eq!(r.status, 404);

    // The PostgreSQL wire: the same scope, with the user's token as the password.
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={pg_port} user=ann password={ann} dbname=hoistway"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let rows = client
        .query("SELECT DISTINCT lift_id FROM readings ORDER BY 1", &[])
        .await
        .unwrap();
    let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, ["A-1", "A-3"]);
    let err = client.query("SELECT * FROM audit", &[]).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    // The catalogs clients browse list only what the user may read: no `audit`.
    for catalog in [
        "SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = 'public' ORDER BY 1",
        "SELECT table_name FROM information_schema.tables ORDER BY 1",
        "SELECT DISTINCT table_name FROM information_schema.columns ORDER BY 1",
        "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n \
         ON n.oid = c.relnamespace WHERE n.nspname = 'public' ORDER BY 1",
    ] {
        let rows = client.query(catalog, &[]).await.unwrap();
        let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        assert!(!names.is_empty(), "{catalog}");
        assert!(!names.iter().any(|n| n == "audit"), "{catalog}: {names:?}");
        assert!(
            names.iter().any(|n| n == "readings"),
            "{catalog}: {names:?}"
        );
    }

    // Arrow Flight SQL: the same scope; a viewer does not export, so the row cap holds.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{flight}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut flight_client = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
    flight_client.handshake("ann", &ann).await.unwrap();
    async fn flight_rows(
        client: &mut arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
        sql: &str,
    ) -> Result<Vec<String>, arrow_flight::error::FlightError> {
        let info = client.execute(sql.to_string(), None).await?;
        let ticket = info.endpoint[0].ticket.clone().unwrap();
        let batches: Vec<arrow::array::RecordBatch> =
            futures::TryStreamExt::try_collect(client.do_get(ticket).await?).await?;
        let mut values = Vec::new();
        for b in &batches {
            let column = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8)?;
            let column = column
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap();
            values.extend(column.iter().map(|v| v.unwrap_or_default().to_string()));
        }
        Ok(values)
    }
    assert_eq!(
        flight_rows(
            &mut flight_client,
            "SELECT DISTINCT lift_id FROM readings ORDER BY 1"
        )
        .await
        .unwrap(),
        ["A-1", "A-3"]
    );
    assert_eq!(
        flight_rows(
            &mut flight_client,
            "SELECT value FROM generate_series(1, 1000)"
        )
        .await
        .unwrap()
        .len(),
        500,
        "a viewer's Flight result stops at query.max_rows"
    );
    let err = flight_rows(&mut flight_client, "SELECT * FROM audit")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("audit"), "{err}");
    let tables = flight_client
        .get_tables(arrow_flight::sql::CommandGetTables::default())
        .await
        .unwrap();
    let ticket = tables.endpoint[0].ticket.clone().unwrap();
    let batches: Vec<arrow::array::RecordBatch> =
        futures::TryStreamExt::try_collect(flight_client.do_get(ticket).await.unwrap())
            .await
            .unwrap();
    let names = arrow::compute::cast(
        batches[0].column_by_name("table_name").unwrap(),
        &arrow::datatypes::DataType::Utf8,
    )
    .unwrap();
    let names: Vec<&str> = names
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .unwrap()
        .iter()
        .flatten()
        .collect();
    assert!(
        names.contains(&"readings") && !names.contains(&"audit"),
        "{names:?}"
    );
    // Someone else's token, no token, a device: refused.
    for conn in [
        format!(
            "host=127.0.0.1 port={pg_port} user=ann password={} dbname=hoistway",
            server.token
        ),
        format!("host=127.0.0.1 port={pg_port} user=ann password=hwt_guess dbname=hoistway"),
    ] {
        let err = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
            .await
            .err()
            .expect("refused");
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD),
            "{err}"
        );
    }
    // Revoking the token ends the connection's access at its next query.
    let r = get(&ann, "/v1/auth/tokens".into()).await;
    let id = r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "walk")
        .expect("the API token")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = as_bearer(
        &server,
        Some(&ann),
        "DELETE",
        &format!("/v1/auth/tokens/{id}"),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 204);
    assert!(client.query("SELECT 1", &[]).await.is_err());
}

/// One HTTPS request trusting only `ca`; the status and the certificate the server showed.
async fn https_get(addr: std::net::SocketAddr, ca: &[u8], path: &str) -> (u16, Vec<u8>) {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(ca.to_vec()))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let peer = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri(path)
        .header("host", "localhost")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let status = sender.send_request(req).await.unwrap().status().as_u16();
    (status, peer)
}

/// `serve` terminates TLS itself, for HTTP and the PostgreSQL wire, and picks up a renewed
/// certificate on SIGHUP without dropping anything; plain text is refused on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_both_listeners_with_a_certificate_reloaded_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca_pem) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("ca.pem"),
    );
    let ca = common::test_ca("Hoistway test CA");
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    let first = common::issue_cert(&ca, &cert, &key);
    let pg_port = common::free_port();
    let listen = format!("127.0.0.1:{pg_port}");
    let flight_port = common::free_port();
    let flight = format!("127.0.0.1:{flight_port}");
    let server = TestServer::start(&[
        ("HOISTWAY_QUERY__FLIGHT_LISTEN", flight.as_str()),
        ("HOISTWAY_TLS__CERT", cert.to_str().unwrap()),
        ("HOISTWAY_TLS__KEY", key.to_str().unwrap()),
        // Only SIGHUP reloads within this test's time.
        ("HOISTWAY_TLS__RELOAD_CHECK_SECS", "3600"),
        ("HOISTWAY_QUERY__POSTGRES_LISTEN", listen.as_str()),
        ("HOISTWAY_QUERY__POSTGRES_PLAIN_PASSWORDS", "never"),
    ]);
    let ca_der = ca.der().to_vec();
    let (status, shown) = https_get(server.addr, &ca_der, "/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(shown, first);
    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        plain.read_to_end(&mut answer),
    )
    .await;
    assert!(!answer.starts_with(b"HTTP/1.1 200"));

    // psql over TLS, verifying the certificate; a password without TLS is refused.
    let psql = |sslmode: &str| {
        std::process::Command::new("psql")
            .arg(format!(
                "host=localhost hostaddr=127.0.0.1 port={pg_port} user=admin dbname=hoistway sslmode={sslmode} sslrootcert={} gssencmode=disable",
                ca_pem.display()
            ))
            .args(["-X", "-A", "-t", "-c", "SELECT 40 + 2"])
            .env("PGPASSWORD", &server.token)
            .output()
            .expect("psql is installed (postgresql-client)")
    };
    let out = psql("verify-full");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    let out = psql("disable");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only over TLS"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Arrow Flight SQL (pyarrow.flight) over TLS with the same certificate; over plain gRPC the
    // handshake does not get through.
    let flight_login = |uri: String| {
        std::process::Command::new(crate::test_python())
            .args([
                "-c",
                "import sys, pyarrow.flight as f\n\
                 c = f.FlightClient(sys.argv[1], tls_root_certs=open(sys.argv[2], 'rb').read())\n\
                 print(c.authenticate_basic_token('admin', sys.argv[3])[0].decode())",
                &uri,
                ca_pem.to_str().unwrap(),
                &server.token,
            ])
            .output()
            .unwrap()
    };
    let out = flight_login(format!("grpc+tls://localhost:{flight_port}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "authorization");
    let out = flight_login(format!("grpc://127.0.0.1:{flight_port}"));
    assert!(!out.status.success(), "plain gRPC to a TLS listener");

    // A renewed certificate: SIGHUP, and new connections get it.
    let second = common::issue_cert(&ca, &cert, &key);
    assert_ne!(first, second);
    let pid = server.pid().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, shown) = https_get(server.addr, &ca_der, "/healthz").await;
        assert_eq!(status, 200);
        if shown == second {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate is served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let out = psql("verify-full");
    assert!(out.status.success());
}

/// Dead letters have a cap: past it, readings that would become dead letters are refused with
/// a clear error and nothing else stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_storage_has_a_cap() {
    let server = TestServer::start(&[("HOISTWAY_INGEST__DEAD_LETTER_MAX_BYTES", "1")]);
    common::register(&server, "lift_id\nL-KNOWN\n").await;
    let post = |lift: &'static str, seq: u64| {
        let server = &server;
        async move {
            server
                .post_json("/v1/telemetry", &reading(lift, seq, seq).to_string())
                .await
        }
    };
    assert_eq!(post("L-STRAY", 1).await.status, 200);
    server
        .eventually("a dead letter", || async {
            !server.get("/v1/dlq").await.json()["files"]
                .as_array()
                .unwrap()
                .is_empty()
        })
        .await;
    let r = post("L-STRAY", 2).await;
    assert_eq!(r.status, 507, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.content_type(), "application/problem+json");
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("dead_letter_max_bytes")
    );
    assert_eq!(post("L-KNOWN", 1).await.status, 200);
    let metrics = String::from_utf8(server.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains("hoistway_dlq_full_rejections_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("hoistway_dlq_pending_bytes"));
}

/// A browser signs in with cookies: the session in an HttpOnly, SameSite=Strict cookie, and a
/// request that changes something needs the CSRF token echoed in a header. Logout clears both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_session_is_a_cookie_and_changes_need_the_csrf_token() {
    let server = TestServer::start(&[]);
    let r = server
        .post_json(
            "/v1/users",
            &json!({ "username": "vic", "password": "correct horse battery staple", "role": "viewer" })
                .to_string(),
        )
        .await;
    assert_eq!(r.status, 201);
    let r = as_bearer(
        &server,
        None,
        "POST",
        "/v1/auth/login",
        json!({ "username": "vic", "password": "correct horse battery staple" }),
    )
    .await;
    assert_eq!(r.status, 200);
    let set: Vec<String> = r
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let session = set
        .iter()
        .find(|c| c.starts_with("hoistway_session="))
        .expect("a session cookie");
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Strict"),
        "{session}"
    );
    assert!(!session.contains("Secure"), "plain HTTP here: {session}");
    let pair = |c: &String| c.split(';').next().unwrap().to_string();
    let csrf = r.json()["csrf_token"].as_str().unwrap().to_string();
    let cookies = format!(
        "{}; {}",
        pair(session),
        pair(
            set.iter()
                .find(|c| c.starts_with("hoistway_csrf="))
                .unwrap()
        )
    );
    let call = |method: &'static str, path: &'static str, csrf: Option<String>| {
        let cookies = cookies.clone();
        let server = &server;
        async move {
            let mut headers = vec![
                ("cookie", cookies),
                ("authorization", String::new()),
                ("content-type", "application/json".to_string()),
            ];
            if let Some(t) = csrf {
                headers.push(("x-csrf-token", t));
            }
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            http(
                server.addr,
                method,
                path,
                &headers,
                Bytes::from(json!({ "name": "from the browser" }).to_string()),
            )
            .await
        }
    };
    let me = call("GET", "/v1/auth/me", None).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["username"], "vic");
    let r = call("POST", "/v1/auth/tokens", None).await;
    assert_eq!(r.status, 403, "no CSRF token");
    assert!(r.json()["type"].as_str().unwrap().ends_with("/csrf"));
    let r = call("POST", "/v1/auth/tokens", Some("forged".into())).await;
    assert_eq!(r.status, 403, "a wrong CSRF token");
    let r = call("POST", "/v1/auth/tokens", Some(csrf.clone())).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let r = call("POST", "/v1/auth/logout", Some(csrf)).await;
    assert_eq!(r.status, 204);
    assert!(
        r.headers
            .get_all("set-cookie")
            .iter()
            .all(|v| v.to_str().unwrap().contains("Max-Age=0"))
    );
    assert_eq!(call("GET", "/v1/auth/me", None).await.status, 401);
}

#[tokio::test]
async fn two_servers_on_one_postgres_share_accounts_lift_tokens_and_revocations() {
    let url = test_postgres();
    let schema = scratch_schema("api");
    let env = [
        ("HOISTWAY_CLUSTER__POSTGRES", url.as_str()),
        ("HOISTWAY_CLUSTER__POSTGRES_SCHEMA", schema.as_str()),
        ("HOISTWAY_AUTH__DEVICES", "required"),
        ("HOISTWAY_AUTH__REFRESH_SECS", "1"),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    // The admin is made once, in the shared state, from either node's configuration.
    let token = common::admin_token_with_env(&dir_a, &env);
    assert!(
        !dir_a.join("auth/auth.sqlite3").exists(),
        "accounts are not in the data dir"
    );
    let a = TestServer::start_with_token(dir_a, token.clone(), &env);
    let b = TestServer::start_with_token(dir_b, token, &env);

    // A lift registered through one node posts to the other with its token.
    let pair = device_tokens(&a, "L-1").await;
    let access = pair["access_token"].as_str().unwrap().to_string();
    let post = |seq: u64| {
        let access = access.clone();
        let b = &b;
        async move {
            as_bearer(
                b,
                Some(&access),
                "POST",
                "/v1/telemetry",
                reading("L-1", seq, seq),
            )
            .await
        }
    };
    let r = post(1).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // Revoked on one node, refused on the other within its reread interval (1 s here).
    let r = a.post_json("/v1/devices/L-1/revoke", "").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let revoked_at = std::time::Instant::now();
    let mut seq = 2;
    b.eventually("the revocation to reach the other node", || {
        seq += 1;
        let reply = post(seq);
        async move { reply.await.status == 401 }
    })
    .await;
    assert!(
        revoked_at.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        revoked_at.elapsed()
    );

    // The registry is one: a lift registered through one node is known on the other within its
    // reread interval, with its owner.
    common::register(&a, "lift_id,building,customer\nL-REG,B-9,acme\n").await;
    b.eventually("the registered lift to reach the other node", || async {
        let r = b.get("/v1/lifts/L-REG").await;
        r.status == 200 && r.json().to_string().contains("B-9")
    })
    .await;

    // A staff account made on one node logs in on the other; the audit log is one.
    let viewer = staff(&b, "vera", "viewer").await;
    let r = as_bearer(&a, Some(&viewer), "GET", "/v1/auth/me", Value::Null).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = a.get("/v1/audit?action=device.revoke").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = b.get("/v1/audit?action=device.revoke").await;
    assert!(
        String::from_utf8_lossy(&r.body).contains("L-1"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );

    drop((a, b));
    drop_schema(&url, &schema).await;
}

#[tokio::test]
async fn with_postgres_out_of_reach_staff_get_503_lifts_keep_posting_and_readyz_warns() {
    // (Staff tokens verified in the last auth.outage_grace_secs still hold meanwhile.)
    let (proxy, via_proxy) = common::postgres_via_proxy().await;
    let schema = scratch_schema("cut");
    let env = [
        ("HOISTWAY_CLUSTER__POSTGRES", via_proxy.as_str()),
        ("HOISTWAY_CLUSTER__POSTGRES_SCHEMA", schema.as_str()),
        ("HOISTWAY_AUTH__DEVICES", "required"),
        ("HOISTWAY_AUTH__REFRESH_SECS", "1"),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let token = common::admin_token_with_env(&dir, &env);
    let server = TestServer::start_with_token(dir, token, &env);
    let pair = device_tokens(&server, "L-1").await;
    let access = pair["access_token"].as_str().unwrap().to_string();
    // A token made now and not used before the outage.
    let r = server
        .post_json(
            "/v1/auth/tokens",
            &json!({ "name": "unused", "expires_days": 1 }).to_string(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let unused = r.json()["token"].as_str().unwrap().to_string();

    proxy.set_cut(true);
    // Staff tokens are looked up in the database: one it has not verified lately gets 503 with
    // a reason and when to retry; the admin's, verified a moment ago, still holds.
    let r = as_bearer(&server, Some(&unused), "GET", "/v1/auth/me", Value::Null).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.content_type(), "application/problem+json");
    assert!(r.headers.contains_key("retry-after"));
    assert!(
        r.json()["detail"].as_str().unwrap().contains("unavailable"),
        "{}",
        r.json()
    );
    // A lift's access token is checked in memory: its readings are still taken.
    let r = as_bearer(
        &server,
        Some(&access),
        "POST",
        "/v1/telemetry",
        reading("L-1", 1, 1),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // Readiness stays (readings are taken) and says what is stale.
    server
        .eventually("/readyz to warn of stale auth state", || async {
            let r = server.get("/readyz").await;
            r.status == 200
                && r.json()["warnings"]
                    .to_string()
                    .contains("auth: cannot reread")
        })
        .await;
    let r = server.get("/v1/lifts").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = server.get("/metrics").await;
    assert_eq!(r.status, 200, "metrics are scraped through the outage");
    let text = String::from_utf8_lossy(&r.body);
    for state in ["auth", "registry"] {
        assert!(
            text.contains(&format!(
                "hoistway_shared_state_stale{{state=\"{state}\"}} 1"
            )),
            "{text}"
        );
    }

    proxy.set_cut(false);
    server
        .eventually("staff requests to work again", || async {
            as_bearer(&server, Some(&unused), "GET", "/v1/auth/me", Value::Null)
                .await
                .status
                == 200
        })
        .await;
    server
        .eventually("the gauge to clear", || async {
            let r = server.get("/metrics").await;
            String::from_utf8_lossy(&r.body)
                .contains("hoistway_shared_state_stale{state=\"auth\"} 0")
        })
        .await;
    server
        .eventually("the warning to clear", || async {
            let r = server.get("/readyz").await;
            r.status == 200
                && r.json()
                    .get("warnings")
                    .is_none_or(|w| w.as_array().is_some_and(Vec::is_empty))
        })
        .await;

    drop(server);
    drop_schema(&test_postgres(), &schema).await;
}
