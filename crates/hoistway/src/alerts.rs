//! `hoistway alerts …`: a client of a running server's alert API, and an offline check of a
//! rules file.

use std::path::PathBuf;

use anyhow::Context;
use hyper::Method;

use crate::admin::{call, encode, query};

#[derive(clap::Args)]
pub struct AlertsArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080", global = true)]
    server: String,
    #[command(subcommand)]
    command: AlertsCommand,
}

#[derive(clap::Subcommand)]
enum AlertsCommand {
    /// List alerts, newest first (filters as in GET /v1/alerts).
    List {
        /// open, firing, acknowledged or resolved.
        #[arg(long)]
        state: Option<String>,
        /// info, warning, major or critical.
        #[arg(long)]
        severity: Option<String>,
        #[arg(long)]
        customer: Option<String>,
        #[arg(long)]
        building: Option<String>,
        #[arg(long)]
        lift: Option<String>,
        #[arg(long)]
        rule: Option<String>,
        /// Alerts older than this id (the previous page's next_before).
        #[arg(long)]
        before: Option<i64>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One alert and its history.
    Show { id: i64 },
    /// Acknowledge a firing alert.
    Ack {
        id: i64,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Resolve an alert by hand (say why).
    Resolve {
        id: i64,
        #[arg(long)]
        note: String,
    },
    /// The alert rules.
    Rules,
    /// Add or replace the rules of a TOML rules file ([[rule]] tables).
    ApplyRules { file: PathBuf },
    /// Check a rules file without a server.
    CheckRules { file: PathBuf },
    /// Delete a rule (its open alerts stay until resolved).
    DeleteRule { id: String },
    /// The notification outbox, newest first.
    Notifications {
        /// pending, delivered or dead.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Send a notification again, with the same id.
    Replay { id: String },
    /// Record but do not notify matching alerts for a while (all given must match).
    Silence {
        #[arg(long)]
        rule: Option<String>,
        #[arg(long)]
        customer: Option<String>,
        #[arg(long)]
        building: Option<String>,
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        lift: Option<String>,
        /// How long: 90s, 30m, 2h or 1d.
        #[arg(long = "for")]
        duration: String,
        #[arg(long)]
        reason: String,
    },
    /// The silences.
    Silences,
    /// End a silence now.
    Unsilence { id: i64 },
}

/// `90s`, `30m`, `2h`, `1d` (a bare number is seconds).
fn parse_duration(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .with_context(|| format!("{text:?} is not a duration like 90s, 30m, 2h or 1d"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => anyhow::bail!("{text:?} is not a duration like 90s, 30m, 2h or 1d"),
    };
    Ok(n * scale)
}

fn read_rules(file: &PathBuf) -> anyhow::Result<Vec<hoistway_alerts::Rule>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    hoistway_alerts::rule::parse_rule_file(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

pub async fn alerts(args: AlertsArgs) -> anyhow::Result<()> {
    let s = &args.server;
    let json = "application/json";
    match args.command {
        AlertsCommand::List {
            state,
            severity,
            customer,
            building,
            lift,
            rule,
            before,
            limit,
        } => {
            let q = query(&[
                ("state", state),
                ("severity", severity),
                ("customer", customer),
                ("building", building),
                ("lift", lift),
                ("rule", rule),
                ("before", before.map(|b| b.to_string())),
                ("limit", Some(limit.to_string())),
            ]);
            call(s, Method::GET, &format!("/v1/alerts{q}"), json, vec![]).await
        }
        AlertsCommand::Show { id } => {
            call(s, Method::GET, &format!("/v1/alerts/{id}"), json, vec![]).await
        }
        AlertsCommand::Ack { id, note } => {
            let body = serde_json::to_vec(&serde_json::json!({ "note": note }))?;
            let path = format!("/v1/alerts/{id}/acknowledge");
            call(s, Method::POST, &path, json, body).await
        }
        AlertsCommand::Resolve { id, note } => {
            let body = serde_json::to_vec(&serde_json::json!({ "note": note }))?;
            let path = format!("/v1/alerts/{id}/resolve");
            call(s, Method::POST, &path, json, body).await
        }
        AlertsCommand::Rules => call(s, Method::GET, "/v1/alert-rules", json, vec![]).await,
        AlertsCommand::ApplyRules { file } => {
            for rule in read_rules(&file)? {
                let path = format!("/v1/alert-rules/{}", encode(&rule.id));
                call(s, Method::PUT, &path, json, serde_json::to_vec(&rule)?).await?;
            }
            Ok(())
        }
        AlertsCommand::CheckRules { file } => {
            let rules = read_rules(&file)?;
            println!("{}: {} rules, all valid", file.display(), rules.len());
            Ok(())
        }
        AlertsCommand::DeleteRule { id } => {
            let path = format!("/v1/alert-rules/{}", encode(&id));
            call(s, Method::DELETE, &path, json, vec![]).await
        }
        AlertsCommand::Notifications { state, limit } => {
            let q = query(&[("state", state), ("limit", Some(limit.to_string()))]);
            call(
                s,
                Method::GET,
                &format!("/v1/notifications{q}"),
                json,
                vec![],
            )
            .await
        }
        AlertsCommand::Replay { id } => {
            let path = format!("/v1/notifications/{}/replay", encode(&id));
            call(s, Method::POST, &path, json, vec![]).await
        }
        AlertsCommand::Silence {
            rule,
            customer,
            building,
            model,
            lift,
            duration,
            reason,
        } => {
            let body = serde_json::json!({
                "rule": rule,
                "scope": { "customer": customer, "building": building, "model": model, "lift": lift },
                "duration_secs": parse_duration(&duration)?,
                "reason": reason,
            });
            call(
                s,
                Method::POST,
                "/v1/silences",
                json,
                serde_json::to_vec(&body)?,
            )
            .await
        }
        AlertsCommand::Silences => call(s, Method::GET, "/v1/silences", json, vec![]).await,
        AlertsCommand::Unsilence { id } => {
            call(
                s,
                Method::DELETE,
                &format!("/v1/silences/{id}"),
                json,
                vec![],
            )
            .await
        }
    }
}
