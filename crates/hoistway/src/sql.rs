//! `hoistway sql` and `hoistway storage`: clients of a running server's query and storage API.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use hyper::Method;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OutputFormat {
    /// Aligned columns, for reading.
    Table,
    Json,
    Csv,
    Parquet,
}

#[derive(clap::Args)]
pub struct SqlArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Output format; parquet needs --output.
    #[arg(long, value_enum, default_value = "table")]
    format: OutputFormat,
    /// Write the result to this file (with a progress line) instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// A read-only query, e.g. "SELECT count(*) FROM readings".
    sql: String,
}

#[derive(clap::Args)]
pub struct StorageArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080", global = true)]
    server: String,
    #[command(subcommand)]
    command: StorageCommand,
}

#[derive(clap::Subcommand)]
enum StorageCommand {
    /// Rows, bytes and files per tier.
    Status,
    /// Run compaction, tier moves and retention now.
    Maintain,
}

pub async fn sql(args: SqlArgs) -> anyhow::Result<()> {
    let wire = match args.format {
        OutputFormat::Table | OutputFormat::Json => "json",
        OutputFormat::Csv => "csv",
        OutputFormat::Parquet => "parquet",
    };
    anyhow::ensure!(
        args.format != OutputFormat::Parquet || args.output.is_some(),
        "--format parquet writes a binary file: give --output FILE"
    );
    let mut conn = crate::access::connect(&args.server)?;
    let body = serde_json::to_vec(&serde_json::json!({ "sql": args.sql, "format": wire }))?;
    let progress = args.output.as_ref().map(|path| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg}: {bytes} ({bytes_per_sec})")
                .expect("a valid template"),
        );
        bar.set_message(format!("writing {}", path.display()));
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    let mut received = Vec::new();
    let status = conn
        .send_streaming(
            Method::POST,
            "/v1/sql",
            "application/json",
            Bytes::from(body),
            |chunk| {
                received.extend_from_slice(chunk);
                if let Some(bar) = &progress {
                    bar.inc(chunk.len() as u64);
                }
            },
        )
        .await
        .with_context(|| format!("calling {}/v1/sql", args.server))?;
    if let Some(bar) = &progress {
        bar.finish();
    }
    if !status.is_success() {
        let text = String::from_utf8_lossy(&received);
        let detail = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_owned))
            .unwrap_or_else(|| text.to_string());
        anyhow::bail!("{detail} (HTTP {status})");
    }
    if let Some(path) = &args.output {
        std::fs::write(path, &received).with_context(|| format!("writing {}", path.display()))?;
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    match args.format {
        OutputFormat::Table => {
            let value: serde_json::Value = serde_json::from_slice(&received)?;
            stdout.write_all(render_table(&value).as_bytes())?;
        }
        OutputFormat::Json => {
            let value: serde_json::Value = serde_json::from_slice(&received)?;
            writeln!(stdout, "{}", serde_json::to_string_pretty(&value)?)?;
        }
        OutputFormat::Csv | OutputFormat::Parquet => stdout.write_all(&received)?,
    }
    Ok(())
}

/// The JSON result as aligned columns, with a row count line.
fn render_table(result: &serde_json::Value) -> String {
    let columns: Vec<String> = result["columns"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|c| c["name"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = result["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| {
                    columns
                        .iter()
                        .map(|c| match &row[c] {
                            serde_json::Value::Null => "NULL".to_string(),
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", padded.join(" | ").trim_end())
    };
    let mut out = line(&columns);
    out.push_str(&format!(
        "{}\n",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-")
    ));
    for row in &rows {
        out.push_str(&line(row));
    }
    let truncated = result["truncated"].as_bool().unwrap_or(false);
    out.push_str(&format!(
        "({} row{}{})\n",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" },
        if truncated {
            ", cut at the server's row limit"
        } else {
            ""
        }
    ));
    out
}

pub async fn storage(args: StorageArgs) -> anyhow::Result<()> {
    let (method, path) = match args.command {
        StorageCommand::Status => (Method::GET, "/v1/storage/status"),
        StorageCommand::Maintain => (Method::POST, "/v1/storage/maintain"),
    };
    crate::admin::call(&args.server, method, path, "application/json", vec![]).await
}
