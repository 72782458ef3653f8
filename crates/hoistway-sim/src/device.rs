//! Lifts registering as a factory-provisioned fleet does: an operator token provisions them, each
//! lift exchanges its one-time code for tokens, then refreshes them on expiry.

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

/// Registers the lifts of `registry_csv` as a factory does: `operator_token` provisions them
/// (`POST /v1/devices/provision`), then each lift exchanges its one-time registration code for
/// tokens. Returns the tokens by lift id.
pub async fn provision(
    addr: SocketAddr,
    operator_token: &str,
    registry_csv: String,
    connections: usize,
) -> Result<std::collections::HashMap<String, DeviceTokens>, String> {
    let mut op = Connection::new(addr).with_bearer(Some(operator_token.to_string()));
    let r = call(
        &mut op,
        "provisioning",
        "/v1/devices/provision?valid_days=1",
        "text/csv",
        Bytes::from(registry_csv),
    )
    .await?;
    let text = String::from_utf8_lossy(&r.body).to_string();
    let codes: Vec<(String, String)> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(','))
        .map(|(lift, code)| (lift.to_string(), code.to_string()))
        .collect();
    let chunk = codes.len().div_ceil(connections.max(1)).max(1);
    let mut tasks = Vec::new();
    for part in codes.chunks(chunk) {
        let part = part.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::new(addr);
            let mut out = Vec::with_capacity(part.len());
            for (lift, code) in part {
                let body = form(&[
                    ("grant_type", REGISTRATION_CODE_GRANT),
                    ("code", &code),
                    ("client_id", &lift),
                ]);
                let what = format!("{lift}: registration");
                let r = call(&mut conn, &what, "/oauth/token", FORM, body).await?;
                let tokens: DeviceTokens =
                    serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
                out.push((lift, tokens));
            }
            Ok::<_, String>(out)
        }));
    }
    let mut all = std::collections::HashMap::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())??);
    }
    Ok(all)
}

const REGISTRATION_CODE_GRANT: &str = "urn:hoistway:params:oauth:grant-type:registration_code";

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
