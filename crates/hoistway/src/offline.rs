//! Commands that work on the data dir of a stopped server (they take its lock): `log repair`,
//! and the on-disk formats this build reads and writes (`hoistway --version`).

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};

/// Takes the data dir's exclusive lock: one process per data dir, server or offline command.
/// Held for as long as the returned file lives.
pub fn lock_data_dir(data: &Path) -> anyhow::Result<File> {
    std::fs::create_dir_all(data)
        .with_context(|| format!("cannot create data dir {}", data.display()))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data.join("LOCK"))
        .with_context(|| format!("cannot create the lock file in {}", data.display()))?;
    if lock.try_lock().is_err() {
        anyhow::bail!(
            "data dir {} is in use by another hoistway process",
            data.display()
        );
    }
    Ok(lock)
}

/// `hoistway --version`: the release, then every on-disk format it reads and writes.
pub fn long_version() -> String {
    let rows = [
        (
            "log segment",
            format!(
                "{}-{}",
                hoistway_log::SEGMENT_VERSION_MIN,
                hoistway_log::SEGMENT_VERSION
            ),
            format!("{} (log.segment_format)", hoistway_log::SEGMENT_VERSION),
        ),
        (
            "JetStream message",
            hoistway_jetstream::message::MESSAGE_VERSION.to_string(),
            hoistway_jetstream::message::MESSAGE_VERSION.to_string(),
        ),
        (
            "log record",
            hoistway_ingest::record::VERSION.to_string(),
            hoistway_ingest::record::VERSION.to_string(),
        ),
        (
            "processor checkpoint",
            format!(
                "{}-{}",
                hoistway_processor::checkpoint::VERSION_MIN,
                hoistway_processor::checkpoint::VERSION
            ),
            format!(
                "{} (processor.checkpoint_format)",
                hoistway_processor::checkpoint::VERSION
            ),
        ),
        (
            "dead-letter file",
            hoistway_dlq::FORMAT.to_string(),
            hoistway_dlq::FORMAT.to_string(),
        ),
        (
            "registry schema",
            format!("0-{}", hoistway_registry::SCHEMA_VERSION),
            hoistway_registry::SCHEMA_VERSION.to_string(),
        ),
        (
            "auth schema",
            format!("0-{}", hoistway_auth::sqlite::SCHEMA_VERSION),
            hoistway_auth::sqlite::SCHEMA_VERSION.to_string(),
        ),
        (
            "auth signing keys",
            hoistway_auth::keys::FORMAT.to_string(),
            hoistway_auth::keys::FORMAT.to_string(),
        ),
        (
            "auth tables (PG)",
            format!("0-{}", hoistway_postgres::auth::MIGRATIONS.len()),
            hoistway_postgres::auth::MIGRATIONS.len().to_string(),
        ),
        (
            "registry tables (PG)",
            format!("0-{}", hoistway_postgres::registry::MIGRATIONS.len()),
            hoistway_postgres::registry::MIGRATIONS.len().to_string(),
        ),
        (
            "alert tables (PG)",
            format!("0-{}", hoistway_postgres::alerts::MIGRATIONS.len()),
            hoistway_postgres::alerts::MIGRATIONS.len().to_string(),
        ),
        (
            "processor tables (PG)",
            format!("0-{}", hoistway_postgres::checkpoints::MIGRATIONS.len()),
            hoistway_postgres::checkpoints::MIGRATIONS.len().to_string(),
        ),
        (
            "storage tables (PG)",
            format!("0-{}", hoistway_postgres::manifests::MIGRATIONS.len()),
            hoistway_postgres::manifests::MIGRATIONS.len().to_string(),
        ),
        (
            "storage manifest",
            hoistway_store::manifest::FORMAT.to_string(),
            hoistway_store::manifest::FORMAT.to_string(),
        ),
    ];
    let mut out = format!(
        "{}\non-disk formats     reads  writes\n",
        env!("CARGO_PKG_VERSION")
    );
    for (name, reads, writes) in rows {
        out.push_str(&format!("  {name:<20} {reads:<6} {writes}\n"));
    }
    out.push_str("older versions are read and migrated on open; a newer one is refused by name");
    out
}

#[derive(Args)]
pub struct LogArgs {
    #[command(subcommand)]
    command: LogCommand,
}

#[derive(Subcommand)]
enum LogCommand {
    /// Replace damaged log entries by placeholders the processor skips, so a server that
    /// refused to start on a damaged log can start. Run with the server stopped; the records
    /// in those entries are lost (the command says which).
    Repair {
        #[arg(long, default_value = "hoistway-data")]
        data_dir: PathBuf,
        /// Report what would be done, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

pub fn log(args: LogArgs) -> anyhow::Result<()> {
    match args.command {
        LogCommand::Repair { data_dir, dry_run } => {
            let dir = data_dir.join("log");
            anyhow::ensure!(
                dir.is_dir(),
                "{} holds no log: is it a hoistway data dir?",
                data_dir.display()
            );
            let _lock = lock_data_dir(&data_dir)?;
            let report = hoistway_log::repair(&dir, dry_run)
                .with_context(|| format!("cannot repair the log in {}", dir.display()))?;
            println!("checked {} log segments", report.segments);
            if report.is_clean() {
                println!("no damaged entries: nothing to repair");
                return Ok(());
            }
            for offset in &report.zeroed {
                println!("record {offset}: damaged payload, replaced by a placeholder");
            }
            for range in &report.lost {
                println!(
                    "records {} to {}: entries unreadable, replaced by placeholders",
                    range.start,
                    range.end - 1
                );
            }
            if report.dropped_bytes > 0 {
                println!(
                    "{} bytes after the last readable entry dropped",
                    report.dropped_bytes
                );
            }
            let verb = if dry_run { "would lose" } else { "lost" };
            println!(
                "{verb} {} records; the processor skips their placeholders and counts them in hoistway_processor_removed_records_total",
                report.records_lost()
            );
            if dry_run {
                println!("dry run: nothing was written");
            }
            Ok(())
        }
    }
}
