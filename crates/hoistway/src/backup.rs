//! `hoistway backup` (asks the running server to take one), `hoistway backup verify|list|prune`
//! and `hoistway restore` (read a backup target directly; no server needed).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use hyper::Method;

use crate::config::Config;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackupArgs {
    #[command(subcommand)]
    command: Option<BackupCommand>,
    /// Where the server writes the backup: an absolute directory on the server's machine, or
    /// s3://bucket/prefix (default: the server's backup.target). Files already there from an
    /// earlier backup are not copied again.
    #[arg(long)]
    to: Option<String>,
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
}

#[derive(clap::Subcommand)]
enum BackupCommand {
    /// Read every part of a backup (or of all backups in the target) and check its checksum.
    Verify(TargetArgs),
    /// The backups in a target, oldest first.
    List(TargetArgs),
    /// Keep the newest backups and remove the rest, with the stored files only they list.
    Prune(PruneArgs),
}

#[derive(clap::Args)]
pub struct PruneArgs {
    /// The backup target: a directory, or s3://bucket/prefix.
    #[arg(long)]
    from: String,
    /// How many of the newest complete backups to keep (at least 1).
    #[arg(long)]
    keep: usize,
    /// Say what would be removed, and remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// The config whose [storage.s3] settings reach an s3:// target.
    #[arg(long, env = "HOISTWAY_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct TargetArgs {
    /// The backup target: a directory, or s3://bucket/prefix.
    #[arg(long)]
    from: String,
    /// One backup (its id); all of them (verify) or the newest (restore) by default.
    #[arg(long)]
    id: Option<String>,
    /// The config whose [storage.s3] settings reach an s3:// target.
    #[arg(long, env = "HOISTWAY_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// The data dir to build; it must not exist or be empty. Start `hoistway serve` on it.
    #[arg(long)]
    data_dir: PathBuf,
    /// Restore to this moment (RFC 3339, e.g. 2026-11-25T10:00:00Z): the newest backup taken
    /// before it, then the archived log up to it (needs `backup.log_archive`).
    #[arg(long, conflicts_with = "id")]
    until: Option<String>,
}

fn open(target: &TargetArgs) -> anyhow::Result<std::sync::Arc<dyn object_store::ObjectStore>> {
    open_target(&target.from, target.config.as_deref())
}

fn open_target(
    from: &str,
    config: Option<&std::path::Path>,
) -> anyhow::Result<std::sync::Arc<dyn object_store::ObjectStore>> {
    let config = Config::load(config)?;
    let from = if from.contains("://") {
        from.to_string()
    } else {
        let dir = std::path::absolute(from)?;
        if !dir.is_dir() {
            anyhow::bail!("{} is not a directory", dir.display());
        }
        dir.display().to_string()
    };
    crate::serve::backup_target(&from, &config.storage.s3)
}

pub async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    match args.command {
        Some(BackupCommand::Verify(target)) => verify(target).await,
        Some(BackupCommand::List(target)) => list(target).await,
        Some(BackupCommand::Prune(args)) => prune(args).await,
        None => take(&args.server, args.to.as_deref()).await,
    }
}

async fn take(server: &str, to: Option<&str>) -> anyhow::Result<()> {
    let body = match to {
        // The server writes it: a relative path would be relative to the server's directory.
        Some(to) if !to.contains("://") && !to.starts_with('/') => anyhow::bail!(
            "{to:?} is relative; give an absolute directory on the server's machine or an s3:// URL"
        ),
        Some(to) => serde_json::json!({ "to": to }),
        // The server's backup.target.
        None => serde_json::json!({}),
    };
    let mut conn = crate::access::connect(server)?;
    let body = serde_json::to_vec(&body)?;
    // A first backup of years of data takes hours; later ones copy only new files.
    let reply = conn
        .send(
            Method::POST,
            "/v1/backups",
            "application/json",
            Bytes::from(body),
            Duration::from_secs(7 * 24 * 3600),
        )
        .await
        .with_context(|| format!("calling {server}/v1/backups"))?;
    let text = String::from_utf8_lossy(&reply.body);
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    if !reply.status.is_success() {
        let detail = value["detail"].as_str().unwrap_or(&text);
        anyhow::bail!(
            "the server did not take the backup ({}): {detail}",
            reply.status
        );
    }
    println!("{}", serde_json::to_string_pretty(&value)?);
    eprintln!(
        "backup {} complete: {} files copied, {} already there",
        value["id"].as_str().unwrap_or("?"),
        value["copied_files"],
        value["reused_files"]
    );
    Ok(())
}

async fn verify(target: TargetArgs) -> anyhow::Result<()> {
    let store = open(&target)?;
    let report = hoistway_backup::verify(&*store, target.id.as_deref()).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    for id in &report.incomplete {
        eprintln!(
            "backup {id} is incomplete (interrupted; it has no backup.json and cannot be restored)"
        );
    }
    if !report.problems.is_empty() {
        anyhow::bail!(
            "{} of {} parts are damaged or missing",
            report.problems.len(),
            report.parts_checked
        );
    }
    if report.backups.is_empty() {
        anyhow::bail!("{} holds no complete backup", target.from);
    }
    eprintln!(
        "every checksum matches: {} backup(s), {} parts, {} bytes",
        report.backups.len(),
        report.parts_checked,
        report.bytes_checked
    );
    Ok(())
}

async fn list(target: TargetArgs) -> anyhow::Result<()> {
    let store = open(&target)?;
    let (complete, incomplete) = hoistway_backup::list(&*store).await?;
    for id in &complete {
        let c = hoistway_backup::contents(&*store, id).await?;
        let bytes: u64 = c.parts.iter().map(|p| p.bytes).sum();
        println!(
            "{id}  created {}  log offset {}  {} parts  {} bytes  hoistway {}",
            c.created,
            c.log_end,
            c.parts.len(),
            bytes,
            c.hoistway
        );
    }
    for id in &incomplete {
        println!("{id}  incomplete (interrupted)");
    }
    Ok(())
}

async fn prune(args: PruneArgs) -> anyhow::Result<()> {
    let store = open_target(&args.from, args.config.as_deref())?;
    let report = hoistway_backup::prune(&*store, args.keep, args.dry_run).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!(
        "{} {} backup(s) and {} stored file(s) ({}); kept {}",
        if args.dry_run {
            "would remove"
        } else {
            "removed"
        },
        report.removed_backups.len(),
        report.removed_files,
        indicatif::HumanBytes(report.removed_bytes),
        report.kept.join(", ")
    );
    Ok(())
}

pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let store = open(&args.target)?;
    if let Some(until) = &args.until {
        let at = chrono::DateTime::parse_from_rfc3339(until)
            .with_context(|| format!("--until {until:?} is not an RFC 3339 time"))?;
        let report =
            hoistway_backup::restore_until(&*store, at.timestamp_micros(), &args.data_dir).await?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        eprintln!(
            "restored backup {} and {} archived log segments into {}; the log ends at offset {} (last record received {}). Start it with `hoistway serve --data-dir {}`",
            report.restored.id,
            report.archived_segments,
            report.restored.data_dir,
            report.log_end,
            report
                .last_received
                .as_deref()
                .unwrap_or("before the backup"),
            report.restored.data_dir,
        );
        return Ok(());
    }
    let report =
        hoistway_backup::restore(&*store, args.target.id.as_deref(), &args.data_dir).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!(
        "restored backup {} into {}: start it with `hoistway serve --data-dir {}` (it replays the log from offset {} to {})",
        report.id, report.data_dir, report.data_dir, report.checkpoint_offset, report.log_end
    );
    Ok(())
}
