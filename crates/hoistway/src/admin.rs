//! `hoistway lifts …` and `hoistway dlq …`: clients of a running server's API.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use hyper::Method;

#[derive(clap::Args)]
pub struct LiftsArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080", global = true)]
    server: String,
    #[command(subcommand)]
    command: LiftsCommand,
}

#[derive(clap::Subcommand)]
enum LiftsCommand {
    /// List lifts (filters as in GET /v1/lifts).
    List {
        #[arg(long)]
        building: Option<String>,
        #[arg(long)]
        customer: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one lift's registry entry and state.
    Show { lift_id: String },
    /// Add (or replace) a lift.
    Add {
        lift_id: String,
        #[command(flatten)]
        fields: LiftFields,
    },
    /// Change some fields of a lift.
    Set {
        lift_id: String,
        #[command(flatten)]
        fields: LiftFields,
    },
    /// Remove a lift from the registry.
    Remove { lift_id: String },
    /// Import lifts from a CSV file (header: lift_id,building,site,customer,model,install_date,initial_trips).
    Import { file: PathBuf },
}

/// Registry fields; with `add`, absent ones take their defaults, with `set` they stay as they are.
#[derive(clap::Args)]
struct LiftFields {
    #[arg(long)]
    building: Option<String>,
    #[arg(long)]
    site: Option<String>,
    #[arg(long)]
    customer: Option<String>,
    #[arg(long)]
    model: Option<String>,
    /// YYYY-MM-DD
    #[arg(long)]
    install_date: Option<String>,
    #[arg(long)]
    initial_trips: Option<u64>,
}

impl LiftFields {
    fn into_json(self) -> serde_json::Map<String, serde_json::Value> {
        let mut body = serde_json::Map::new();
        let texts = [
            ("building", self.building),
            ("site", self.site),
            ("customer", self.customer),
            ("model", self.model),
            ("install_date", self.install_date),
        ];
        for (k, v) in texts {
            if let Some(v) = v {
                body.insert(k.into(), v.into());
            }
        }
        if let Some(t) = self.initial_trips {
            body.insert("initial_trips".into(), t.into());
        }
        body
    }
}

#[derive(clap::Args)]
pub struct DlqArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080", global = true)]
    server: String,
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(clap::Subcommand)]
enum DlqCommand {
    /// Dead-letter files waiting for replay.
    List,
    /// The dead letters in one file.
    Show { id: String },
    /// Send one file's readings through the pipeline again.
    Replay { id: String },
}

pub async fn call(
    server: &str,
    method: Method,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> anyhow::Result<()> {
    let mut conn = crate::access::connect(server)?;
    let body = if body == b"null" { Vec::new() } else { body };
    let reply = conn
        .send(
            method,
            path,
            content_type,
            Bytes::from(body),
            Duration::from_secs(60),
        )
        .await
        .with_context(|| format!("calling {server}{path}"))?;
    let text = String::from_utf8_lossy(&reply.body);
    let pretty = serde_json::from_str::<serde_json::Value>(&text)
        .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default())
        .unwrap_or_else(|_| text.to_string());
    if reply.status.is_success() {
        println!("{pretty}");
        Ok(())
    } else {
        eprintln!("{pretty}");
        anyhow::bail!("server answered {}", reply.status)
    }
}

pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

pub fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub async fn lifts(args: LiftsArgs) -> anyhow::Result<()> {
    let s = &args.server;
    let json = "application/json";
    match args.command {
        LiftsCommand::List {
            building,
            customer,
            status,
            limit,
        } => {
            let q = query(&[
                ("building", building),
                ("customer", customer),
                ("status", status),
                ("limit", Some(limit.to_string())),
            ]);
            call(s, Method::GET, &format!("/v1/lifts{q}"), json, vec![]).await
        }
        LiftsCommand::Show { lift_id } => {
            call(
                s,
                Method::GET,
                &format!("/v1/lifts/{}/state", encode(&lift_id)),
                json,
                vec![],
            )
            .await
        }
        LiftsCommand::Add { lift_id, fields } => {
            let mut body = fields.into_json();
            body.insert("lift_id".into(), lift_id.into());
            let body = serde_json::to_vec(&body)?;
            call(s, Method::POST, "/v1/lifts", json, body).await
        }
        LiftsCommand::Set { lift_id, fields } => {
            let body = serde_json::to_vec(&fields.into_json())?;
            let path = format!("/v1/lifts/{}", encode(&lift_id));
            call(s, Method::PATCH, &path, json, body).await
        }
        LiftsCommand::Remove { lift_id } => {
            call(
                s,
                Method::DELETE,
                &format!("/v1/lifts/{}", encode(&lift_id)),
                json,
                vec![],
            )
            .await
        }
        LiftsCommand::Import { file } => {
            let csv =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            call(s, Method::POST, "/v1/lifts/import", "text/csv", csv).await
        }
    }
}

pub async fn dlq(args: DlqArgs) -> anyhow::Result<()> {
    let s = &args.server;
    let json = "application/json";
    match args.command {
        DlqCommand::List => call(s, Method::GET, "/v1/dlq", json, vec![]).await,
        DlqCommand::Show { id } => {
            call(
                s,
                Method::GET,
                &format!("/v1/dlq/{}", encode(&id)),
                json,
                vec![],
            )
            .await
        }
        DlqCommand::Replay { id } => {
            call(
                s,
                Method::POST,
                &format!("/v1/dlq/{}/replay", encode(&id)),
                json,
                vec![],
            )
            .await
        }
    }
}
