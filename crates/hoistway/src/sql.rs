//! `hoistway sql` and `hoistway storage`: clients of a running server's query and storage API.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use hyper::Method;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OutputFormat {
    /// Aligned columns, for reading.
    Table,
    /// A JSON document; with --output, one object per line.
    Json,
    Csv,
    Parquet,
    /// The Arrow IPC stream format (pyarrow.ipc.open_stream).
    Arrow,
}

#[derive(clap::Args)]
pub struct SqlArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Output format (default: table; with --output, named by the file's extension, else
    /// parquet); parquet and arrow need --output.
    #[arg(long, value_enum)]
    format: Option<OutputFormat>,
    /// Export the whole result to this file, past the interactive row limit (for roles that
    /// may export), with a progress line.
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

/// The `detail` of a problem answer, or the answer itself.
fn problem_detail(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_owned))
        .unwrap_or_else(|| text.to_string())
}

pub async fn sql(args: SqlArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.output {
        return export(&args, path).await;
    }
    let format = args.format.unwrap_or(OutputFormat::Table);
    let wire = match format {
        OutputFormat::Table | OutputFormat::Json => "json",
        OutputFormat::Csv => "csv",
        OutputFormat::Parquet | OutputFormat::Arrow => {
            anyhow::bail!("--format parquet and arrow write a binary file: give --output FILE")
        }
    };
    let mut conn = crate::access::connect(&args.server)?;
    let body = serde_json::to_vec(&serde_json::json!({ "sql": args.sql, "format": wire }))?;
    let mut received = Vec::new();
    let status = conn
        .send_streaming(
            Method::POST,
            "/v1/sql",
            "application/json",
            Bytes::from(body),
            |_, chunk| received.extend_from_slice(chunk),
        )
        .await
        .with_context(|| format!("calling {}/v1/sql", args.server))?;
    if !status.is_success() {
        anyhow::bail!("{} (HTTP {status})", problem_detail(&received));
    }
    let mut stdout = std::io::stdout().lock();
    match format {
        OutputFormat::Table => {
            let value: serde_json::Value = serde_json::from_slice(&received)?;
            stdout.write_all(render_table(&value).as_bytes())?;
        }
        OutputFormat::Json => {
            let value: serde_json::Value = serde_json::from_slice(&received)?;
            writeln!(stdout, "{}", serde_json::to_string_pretty(&value)?)?;
        }
        OutputFormat::Csv | OutputFormat::Parquet | OutputFormat::Arrow => {
            stdout.write_all(&received)?
        }
    }
    Ok(())
}

/// `--output FILE`: the whole result through `POST /v1/sql/export`, written as it arrives into
/// `FILE.partial`, renamed to `FILE` once the server has sent all of it.
async fn export(args: &SqlArgs, path: &Path) -> anyhow::Result<()> {
    let format = args
        .format
        .unwrap_or_else(|| match path.extension().and_then(|e| e.to_str()) {
            Some("csv") => OutputFormat::Csv,
            Some("json" | "ndjson" | "jsonl") => OutputFormat::Json,
            Some("arrow" | "arrows" | "ipc") => OutputFormat::Arrow,
            _ => OutputFormat::Parquet,
        });
    let wire = match format {
        OutputFormat::Table => {
            anyhow::bail!("--output writes csv, json, parquet or arrow: choose one with --format")
        }
        OutputFormat::Json => "ndjson",
        OutputFormat::Csv => "csv",
        OutputFormat::Parquet => "parquet",
        OutputFormat::Arrow => "arrow",
    };
    let mut conn = crate::access::connect(&args.server)?;
    let body = serde_json::to_vec(&serde_json::json!({ "sql": args.sql, "format": wire }))?;
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let mut file = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?,
    );
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg}: {bytes} ({bytes_per_sec}, {elapsed})",
        )
        .expect("a valid template"),
    );
    bar.set_message(format!("exporting to {}", path.display()));
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut problem = Vec::new();
    let mut written = Ok(());
    let sent = conn
        .send_streaming(
            Method::POST,
            "/v1/sql/export",
            "application/json",
            Bytes::from(body),
            |status, chunk| {
                if !status.is_success() {
                    problem.extend_from_slice(chunk);
                } else if written.is_ok() {
                    written = file.write_all(chunk);
                    bar.inc(chunk.len() as u64);
                }
            },
        )
        .await;
    bar.finish_and_clear();
    let finished = match sent {
        Err(e) => Err(anyhow::anyhow!(
            "the export stopped before its end ({e}): the server ended it (see its log; \
             query.export_max_mb caps an export's size) or the connection broke"
        )),
        Ok(status) if !status.is_success() => Err(anyhow::anyhow!(
            "{} (HTTP {status})",
            problem_detail(&problem)
        )),
        Ok(_) => written
            .and_then(|()| file.flush())
            .and_then(|()| file.get_ref().sync_all())
            .with_context(|| format!("writing {}", partial.display())),
    };
    if let Err(e) = finished {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    drop(file);
    std::fs::rename(&partial, path)
        .with_context(|| format!("renaming {} to {}", partial.display(), path.display()))?;
    eprintln!(
        "wrote {} to {} in {:.1} s",
        indicatif::HumanBytes(bar.position()),
        path.display(),
        bar.elapsed().as_secs_f64()
    );
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
