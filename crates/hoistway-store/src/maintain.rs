//! Background upkeep, all driven by the injected clock: retention, compaction, moves from the
//! hot tier to the archive, and deletion of removed files once queries can no longer read them.
//!
//! Every change follows the same order: write new files, make them durable, commit one
//! manifest, and only later delete what it no longer lists. A crash at any point leaves either
//! the old manifest (new files are unlisted and removed on open) or the new one (old files are
//! garbage, deleted after the grace period).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::execution::TaskContext;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::execute_stream;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::prelude::SessionConfig;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use tokio::io::AsyncWriteExt;

use crate::manifest::{FileEntry, Kind, Manifest, Tier};
use crate::scan::{ScanOptions, parquet_scan, sort_order, tier_url};
use crate::write::{RollingWriter, properties_of, schema_of};
use crate::{DAY_US, HOUR_US, Result, Store, by_date, crash_point, date_of, rollup};

/// What one [`Store::maintain`] pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct MaintenanceReport {
    pub compactions: u64,
    pub compacted_input_files: u64,
    pub compacted_output_files: u64,
    pub moved_files: u64,
    pub moved_bytes: u64,
    pub expired_files: u64,
    pub expired_rows: u64,
    pub deleted_garbage: u64,
}

impl MaintenanceReport {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Self) {
        self.compactions += other.compactions;
        self.compacted_input_files += other.compacted_input_files;
        self.compacted_output_files += other.compacted_output_files;
        self.moved_files += other.moved_files;
        self.moved_bytes += other.moved_bytes;
        self.expired_files += other.expired_files;
        self.expired_rows += other.expired_rows;
        self.deleted_garbage += other.deleted_garbage;
    }
}

impl Store {
    /// One pass of upkeep. Safe to run while ingest flushes and queries run.
    pub async fn maintain(&self) -> Result<MaintenanceReport> {
        self.writable()?;
        let mut report = MaintenanceReport::default();
        let now = self.clock.now_us();
        self.expire(now, &mut report).await?;
        self.compact_tier(Tier::Hot, now, &mut report).await?;
        self.move_to_archive(now, &mut report).await?;
        self.compact_tier(Tier::Archive, now, &mut report).await?;
        self.compact_rollup_months(now, &mut report).await?;
        self.collect_garbage(now, &mut report).await?;
        metrics::counter!("hoistway_store_compactions_total").increment(report.compactions);
        metrics::counter!("hoistway_store_moved_files_total").increment(report.moved_files);
        metrics::counter!("hoistway_store_expired_files_total").increment(report.expired_files);
        Ok(report)
    }

    fn manifest(&self, tier: Tier) -> Arc<Manifest> {
        let visible = self.visible.read();
        match tier {
            Tier::Hot => visible.hot.clone(),
            Tier::Archive => visible.archive.clone(),
        }
    }

    fn set_manifest(&self, tier: Tier, manifest: Manifest) {
        let mut visible = self.visible.write();
        match tier {
            Tier::Hot => visible.hot = Arc::new(manifest),
            Tier::Archive => visible.archive = Arc::new(manifest),
        }
    }

    async fn expire(&self, now: i64, report: &mut MaintenanceReport) -> Result<()> {
        let cutoff = now - self.config.retention_us;
        let _commit = self.commit.lock().await;
        for tier in [Tier::Hot, Tier::Archive] {
            let mut manifest = (*self.manifest(tier)).clone();
            let expired: Vec<&FileEntry> = manifest
                .files
                .iter()
                .filter(|f| f.max_ts_us < cutoff)
                .collect();
            if expired.is_empty() {
                continue;
            }
            report.expired_files += expired.len() as u64;
            report.expired_rows += expired
                .iter()
                .filter(|f| f.kind == Kind::Readings)
                .map(|f| f.rows)
                .sum::<u64>();
            let ids: Vec<u64> = expired.iter().map(|f| f.id).collect();
            manifest.remove(&ids, now);
            self.commit_manifest(tier, manifest).await?;
        }
        Ok(())
    }

    async fn commit_manifest(&self, tier: Tier, mut manifest: Manifest) -> Result<()> {
        manifest.generation += 1;
        if tier == Tier::Hot {
            manifest.next_file_id = self.next_file_id.load(std::sync::atomic::Ordering::Relaxed);
        }
        self.save_manifest(tier, &manifest).await?;
        self.set_manifest(tier, manifest);
        Ok(())
    }

    async fn compact_tier(
        &self,
        tier: Tier,
        now: i64,
        report: &mut MaintenanceReport,
    ) -> Result<()> {
        let manifest = self.manifest(tier);
        let groups = by_date(&manifest.files);
        for ((kind, date), files) in groups {
            let flushed = files.iter().filter(|f| f.level == 0).count();
            let day_over = files
                .iter()
                .map(|f| f.max_ts_us.div_euclid(DAY_US) * DAY_US + DAY_US + HOUR_US)
                .max()
                .unwrap_or(i64::MAX)
                <= now;
            let due = flushed > 0
                && (flushed >= self.config.compact_min_files || (day_over && files.len() > 1));
            if due {
                let inputs: Vec<FileEntry> = files.into_iter().cloned().collect();
                self.compact(tier, kind, &date, &inputs, now, report)
                    .await?;
            }
        }
        Ok(())
    }

    /// Once a month is over, its archived hourly rollups are merged into one partial per
    /// (lift, hour) in month files (`rollups_hourly/month=YYYY-MM/`), so a lift's year of
    /// rollups is 12 files to open instead of 365. Partials that arrive later for that month
    /// (a late backlog, moved to the archive after `hot_retention`) are merged into it at the
    /// next pass.
    async fn compact_rollup_months(&self, now: i64, report: &mut MaintenanceReport) -> Result<()> {
        // A day of slack after the month ends, for the hot tier to hand over its last day.
        let open_month = date_of(now - DAY_US)[..7].to_string();
        let manifest = self.manifest(Tier::Archive);
        let mut months: BTreeMap<String, Vec<FileEntry>> = BTreeMap::new();
        for f in manifest
            .files
            .iter()
            .filter(|f| f.kind == Kind::RollupsHourly)
        {
            months
                .entry(f.date[..7].to_string())
                .or_default()
                .push(f.clone());
        }
        for (month, files) in months {
            let has_dates = files.iter().any(|f| !f.is_month());
            if month < open_month && has_dates && files.len() > 1 {
                self.compact(
                    Tier::Archive,
                    Kind::RollupsHourly,
                    &month,
                    &files,
                    now,
                    report,
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Merges sorted files of one partition (a date, or a month of rollups) into sorted files
    /// of up to `max_rows_per_file` rows.
    async fn compact(
        &self,
        tier: Tier,
        kind: Kind,
        partition: &str,
        inputs: &[FileEntry],
        now: i64,
        report: &mut MaintenanceReport,
    ) -> Result<()> {
        let store = self.config.tier(tier).store.clone();
        let date = partition.to_string();
        let schema = schema_of(kind);
        let (first, second) = match kind {
            Kind::Readings => ("lift_id", "ts"),
            Kind::RollupsHourly => ("lift_id", "hour"),
        };
        let ordering = sort_order(&schema, first, second)?;
        let scan = parquet_scan(
            tier,
            schema.clone(),
            inputs,
            ScanOptions {
                ordering: Some(ordering.clone()),
                ..Default::default()
            },
        )?;
        let merge = Arc::new(SortPreservingMergeExec::new(ordering, scan));
        let runtime = RuntimeEnvBuilder::new().build_arc()?;
        runtime.register_object_store(tier_url(tier).as_ref(), store.clone());
        let task = Arc::new(
            TaskContext::default()
                .with_session_config(SessionConfig::new().with_batch_size(8192))
                .with_runtime(runtime),
        );
        let mut stream = execute_stream(merge, task)?;
        let counter = self.next_file_id.clone();
        let mut writer = RollingWriter::new(
            store.clone(),
            kind,
            date.clone(),
            properties_of(kind, self.config.row_group_rows),
            self.config.max_rows_per_file,
            Box::new(move || counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
        );
        let written: Result<()> = async {
            match kind {
                Kind::Readings => {
                    while let Some(batch) = stream.next().await {
                        writer.write(&batch?).await?;
                    }
                }
                Kind::RollupsHourly => {
                    // The stream is sorted by (lift, hour): every key but the last of a merged
                    // batch is complete; the last may continue in the next batch.
                    let mut carry: Option<RecordBatch> = None;
                    while let Some(batch) = stream.next().await {
                        let mut parts: Vec<RecordBatch> = carry.take().into_iter().collect();
                        parts.push(batch?);
                        let merged = rollup::merge_partials(&parts);
                        let n = merged.num_rows();
                        if n > 0 {
                            writer.write(&merged.slice(0, n - 1)).await?;
                            carry = Some(merged.slice(n - 1, 1));
                        }
                    }
                    if let Some(last) = carry {
                        writer.write(&last).await?;
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = written {
            self.delete_quietly(tier, &writer.started_paths()).await;
            return Err(e);
        }
        let finished = writer.finish().await?;
        let mut outputs = Vec::new();
        for (id, stats, path) in &finished {
            let bytes = store.head(&Path::from(path.as_str())).await?.size;
            outputs.push(stats.entry(kind, &date, *id, 1, bytes));
        }
        let paths: Vec<String> = outputs.iter().map(|f| f.path.clone()).collect();
        let synced = {
            let t = self.config.tier(tier).clone();
            let paths = paths.clone();
            tokio::task::spawn_blocking(move || paths.iter().try_for_each(|p| t.sync(p))).await?
        };
        if let Err(e) = synced {
            self.delete_quietly(tier, &paths).await;
            return Err(e);
        }
        let in_rows: u64 = inputs.iter().map(|f| f.rows).sum();
        let out_rows: u64 = outputs.iter().map(|f| f.rows).sum();
        if kind == Kind::Readings && in_rows != out_rows {
            self.delete_quietly(tier, &paths).await;
            return Err(crate::Error::Corrupt(format!(
                "compaction of {date} read {in_rows} rows but wrote {out_rows}"
            )));
        }
        crash_point("compact_before_commit");
        let _commit = self.commit.lock().await;
        let mut manifest = (*self.manifest(tier)).clone();
        let ids: Vec<u64> = inputs.iter().map(|f| f.id).collect();
        if !ids
            .iter()
            .all(|id| manifest.files.iter().any(|f| f.id == *id))
        {
            // Retention or a move took some inputs meanwhile: try again next pass.
            self.delete_quietly(tier, &paths).await;
            return Ok(());
        }
        manifest.remove(&ids, now);
        manifest.files.extend(outputs.iter().cloned());
        if let Err(e) = self.commit_manifest(tier, manifest).await {
            self.delete_quietly(tier, &paths).await;
            return Err(e);
        }
        crash_point("compact_after_commit");
        report.compactions += 1;
        report.compacted_input_files += inputs.len() as u64;
        report.compacted_output_files += outputs.len() as u64;
        tracing::info!(
            tier = tier.as_str(),
            kind = kind.dir(),
            date,
            inputs = inputs.len(),
            outputs = outputs.len(),
            rows = in_rows,
            "compacted"
        );
        Ok(())
    }

    /// Copies hot files older than the hot retention to the archive, then drops them from hot.
    async fn move_to_archive(&self, now: i64, report: &mut MaintenanceReport) -> Result<()> {
        let cutoff = now - self.config.hot_retention_us;
        let due: Vec<FileEntry> = self
            .manifest(Tier::Hot)
            .files
            .iter()
            .filter(|f| f.max_ts_us < cutoff)
            .cloned()
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let hot = self.config.hot.store.clone();
        let archive = self.config.archive.clone();
        for file in &due {
            let path = Path::from(file.path.as_str());
            let copy = async {
                let mut source = hot.get(&path).await?.into_stream();
                let mut sink =
                    object_store::buffered::BufWriter::new(archive.store.clone(), path.clone());
                while let Some(chunk) = source.next().await {
                    sink.write_all(&chunk?).await?;
                }
                sink.shutdown().await?;
                let a = archive.clone();
                let p = file.path.clone();
                tokio::task::spawn_blocking(move || a.sync(&p)).await??;
                Ok::<_, crate::Error>(())
            };
            // A failed copy leaves what it copied: unlisted, it is read by nobody, the next
            // move writes the same bytes over it, and the next open deletes what stays. Deleting
            // it here could delete the committed copy of a writer that took over meanwhile
            // (the same file has the same path in the archive).
            copy.await?;
        }
        let _commit = self.commit.lock().await;
        let mut hot_manifest = (*self.manifest(Tier::Hot)).clone();
        let still_hot: Vec<FileEntry> = due
            .into_iter()
            .filter(|f| hot_manifest.files.iter().any(|h| h.id == f.id))
            .collect();
        let mut archive_manifest = (*self.manifest(Tier::Archive)).clone();
        archive_manifest.files.extend(still_hot.iter().cloned());
        archive_manifest.generation += 1;
        self.save_manifest(Tier::Archive, &archive_manifest).await?;
        crash_point("move_after_archive_commit");
        let ids: Vec<u64> = still_hot.iter().map(|f| f.id).collect();
        hot_manifest.remove(&ids, now);
        hot_manifest.generation += 1;
        hot_manifest.next_file_id = self.next_file_id.load(std::sync::atomic::Ordering::Relaxed);
        self.save_manifest(Tier::Hot, &hot_manifest).await?;
        {
            // Both at once, so a query never sees a file in both tiers.
            let mut visible = self.visible.write();
            visible.hot = Arc::new(hot_manifest);
            visible.archive = Arc::new(archive_manifest);
        }
        report.moved_files += still_hot.len() as u64;
        report.moved_bytes += still_hot.iter().map(|f| f.bytes).sum::<u64>();
        Ok(())
    }

    async fn collect_garbage(&self, now: i64, report: &mut MaintenanceReport) -> Result<()> {
        if self.file_pins.load(std::sync::atomic::Ordering::Acquire) > 0 {
            tracing::debug!("a backup is copying files: removed files are kept until it ends");
            return Ok(());
        }
        let cutoff = now - self.config.garbage_grace_us;
        for tier in [Tier::Hot, Tier::Archive] {
            let due: Vec<String> = self
                .manifest(tier)
                .garbage
                .iter()
                .filter(|g| g.removed_us <= cutoff)
                .map(|g| g.path.clone())
                .collect();
            if due.is_empty() {
                continue;
            }
            let store = self.config.tier(tier).store.clone();
            for path in &due {
                match store.delete(&Path::from(path.as_str())).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let _commit = self.commit.lock().await;
            let mut manifest = (*self.manifest(tier)).clone();
            manifest.garbage.retain(|g| !due.contains(&g.path));
            self.commit_manifest(tier, manifest).await?;
            report.deleted_garbage += due.len() as u64;
        }
        Ok(())
    }
}
