//! Lifts registering as real ones do: the RFC 8628 device flow, with the simulator also playing
//! the installer (an operator token approves each user code), then refresh on expiry.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Deserialize;

use crate::client::Connection;

/// A lift's tokens.
#[derive(Debug, Clone, Deserialize)]
pub struct DeviceTokens {
    pub access_token: String,
    pub refresh_token: String,
}

const TIMEOUT: Duration = Duration::from_secs(30);

fn form(fields: &[(&str, &str)]) -> Bytes {
    let mut out = String::new();
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        for b in v.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    Bytes::from(out)
}

const FORM: &str = "application/x-www-form-urlencoded";

/// Registers each `(lift, building)` through the device flow; `operator_token` approves the
/// codes. Returns the tokens in the same order.
pub async fn enrol(
    addr: SocketAddr,
    operator_token: &str,
    lifts: &[(String, String)],
    connections: usize,
) -> Result<Vec<DeviceTokens>, String> {
    let chunk = lifts.len().div_ceil(connections.max(1)).max(1);
    let mut tasks = Vec::new();
    for part in lifts.chunks(chunk) {
        let part = part.to_vec();
        let operator = operator_token.to_string();
        tasks.push(tokio::spawn(async move {
            let mut lift_conn = Connection::new(addr);
            let mut op_conn = Connection::new(addr).with_bearer(Some(operator));
            // Every lift of this part asks and is approved, then all of them poll: one wait of
            // the poll interval for the part, not one per lift.
            let mut asked = Vec::with_capacity(part.len());
            for (lift, building) in &part {
                asked.push(ask_and_approve(&mut lift_conn, &mut op_conn, lift, building).await?);
            }
            let mut out = Vec::with_capacity(part.len());
            for (a, (lift, _)) in asked.iter().zip(&part) {
                out.push(poll(&mut lift_conn, lift, a).await?);
            }
            Ok::<_, String>(out)
        }));
    }
    let mut all = Vec::with_capacity(lifts.len());
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())??);
    }
    Ok(all)
}

#[derive(Deserialize)]
struct Authorization {
    device_code: String,
    user_code: String,
    interval: u64,
    #[serde(skip, default = "std::time::Instant::now")]
    at: std::time::Instant,
}

/// Sends one request; a transport error or a status other than 200 is an error naming `what`.
async fn call(
    conn: &mut Connection,
    what: &str,
    path: &str,
    content_type: &str,
    body: Bytes,
) -> Result<crate::client::Reply, String> {
    let r = conn
        .send(Method::POST, path, content_type, body, TIMEOUT)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    if r.status == StatusCode::OK {
        Ok(r)
    } else {
        Err(format!(
            "{what} answered {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        ))
    }
}

async fn ask_and_approve(
    lift_conn: &mut Connection,
    op_conn: &mut Connection,
    lift: &str,
    building: &str,
) -> Result<Authorization, String> {
    let r = call(
        lift_conn,
        &format!("{lift}: device authorization"),
        "/oauth/device_authorization",
        FORM,
        form(&[("client_id", lift)]),
    )
    .await?;
    let a: Authorization = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
    let approve = serde_json::json!({ "user_code": a.user_code, "building": building });
    call(
        op_conn,
        &format!("{lift}: approval"),
        "/v1/devices/approve",
        "application/json",
        Bytes::from(approve.to_string()),
    )
    .await?;
    Ok(a)
}

async fn poll(
    lift_conn: &mut Connection,
    lift: &str,
    a: &Authorization,
) -> Result<DeviceTokens, String> {
    // The lift polls no sooner than the interval it was given.
    let mut interval = a.interval;
    let mut last = a.at;
    for _ in 0..10 {
        let next = last + Duration::from_secs(interval);
        tokio::time::sleep_until(next.into()).await;
        last = std::time::Instant::now();
        let body = form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", &a.device_code),
            ("client_id", lift),
        ]);
        match call(
            lift_conn,
            &format!("{lift}: token request"),
            "/oauth/token",
            FORM,
            body,
        )
        .await
        {
            Ok(r) => return serde_json::from_slice(&r.body).map_err(|e| e.to_string()),
            Err(e) if e.contains("authorization_pending") => {}
            Err(e) if e.contains("slow_down") => interval += 5,
            Err(e) => return Err(e),
        }
    }
    Err(format!("{lift}: never approved"))
}

/// Exchanges a refresh token for new tokens.
pub async fn refresh(
    conn: &mut Connection,
    lift: &str,
    refresh_token: &str,
) -> Result<DeviceTokens, String> {
    conn.set_bearer(None);
    let body = form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("client_id", lift),
    ]);
    let r = call(
        conn,
        &format!("{lift}: refresh"),
        "/oauth/token",
        FORM,
        body,
    )
    .await?;
    serde_json::from_slice(&r.body).map_err(|e| e.to_string())
}
