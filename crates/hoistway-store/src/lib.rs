//! Storage of accepted readings as Parquet in object storage, in two tiers.
//!
//! In: readings the processor counted (new, registered, deduplicated), in log order, through
//! the [`Sink`] seam. They wait in an in-memory buffer of Arrow batches until the processor's
//! checkpoint calls [`Sink::commit`]; then they are sorted by (`lift_id`, `ts`), split by
//! UTC date, written as zstd Parquet files plus hourly rollup partials, and made visible by one
//! manifest write that also records the log offset they cover. Out: a consistent [`Snapshot`]
//! (committed files of both tiers plus the buffer) for the query engine, and [`Store::maintain`]
//! which compacts small files, moves files older than the hot retention to the archive tier, and
//! deletes what is older than the retention.
//!
//! Both tiers are `object_store` stores (a local directory, or S3-compatible storage), so the
//! same code path serves both. This crate does not parse SQL (that is `hoistway-query`) and
//! does not decide what is a duplicate (the processor does).

pub mod maintain;
pub mod manifest;
mod partitioned;
pub mod rollup;
pub mod scan;
pub mod schema;
mod write;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arrow::array::RecordBatch;
use futures::TryStreamExt;
use hoistway_log::Offset;
use hoistway_model::{Clock, Reading};
use hoistway_processor::{Finish, Prepare, Sink, SinkBatch, SinkError};
use object_store::ObjectStore;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use parking_lot::RwLock;

pub use maintain::MaintenanceReport;
pub use manifest::{FileEntry, Kind, Manifest, ManifestStore, Tier, TierManifests};
pub use partitioned::{Stores, partition_dir};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("query engine: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("storage is corrupt: {0}")]
    Corrupt(String),
    #[error("i/o failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// A manifest commit lost its compare-and-swap (another writer committed), or the writer
    /// was fenced (another processor holds the partition now).
    #[error("storage commit refused: {0}")]
    Conflict(String),
    /// The catalog that holds the manifests is out of reach or failed.
    #[error("storage catalog: {0}")]
    Catalog(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub const HOUR_US: i64 = 3_600_000_000;
pub const DAY_US: i64 = 24 * HOUR_US;

/// One tier: an object store, and its directory when it is local disk (then writes are
/// fsynced before the manifest that lists them).
#[derive(Debug, Clone)]
pub struct TierStore {
    pub store: Arc<dyn ObjectStore>,
    pub local_dir: Option<PathBuf>,
}

impl TierStore {
    /// A local directory, created if missing.
    pub fn local(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            store: Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&dir)?),
            local_dir: Some(dir),
        })
    }

    pub fn remote(store: Arc<dyn ObjectStore>) -> Self {
        Self {
            store,
            local_dir: None,
        }
    }

    /// Makes a file written through the store durable (a no-op for remote stores, whose PUT
    /// is durable when it returns).
    fn sync(&self, path: &str) -> Result<()> {
        if let Some(dir) = &self.local_dir {
            let full = dir.join(path);
            std::fs::File::open(&full)?.sync_all()?;
            if let Some(parent) = full.parent() {
                std::fs::File::open(parent)?.sync_all()?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub hot: TierStore,
    pub archive: TierStore,
    /// Files whose newest reading is older than this move to the archive (default 48 h).
    pub hot_retention_us: i64,
    /// Files whose newest reading is older than this are deleted (default 5 years).
    pub retention_us: i64,
    /// Compact a date's flush files once this many exist (dates that are over compact anyway).
    pub compact_min_files: usize,
    /// Compaction starts a new file after this many rows (files then cover lift ranges).
    pub max_rows_per_file: usize,
    pub row_group_rows: usize,
    /// Buffered readings are converted to an Arrow batch every this many readings.
    pub seal_rows: usize,
    /// Removed files are deleted this long after removal, so running queries can finish.
    pub garbage_grace_us: i64,
    /// Where flush encoding runs: the analytics runtime (lower priority), so that a flush
    /// never takes a core from the acks. The caller's runtime when `None`.
    pub work: Option<tokio::runtime::Handle>,
    /// Where the manifests are committed (default: in each tier, [`TierManifests`]).
    pub manifests: Arc<dyn ManifestStore>,
    /// The least id a file written from now on gets. A writer that takes over from another
    /// one (which may still be writing before it learns it was fenced) starts above every id
    /// the other could use, so the two never write the same path.
    pub first_file_id: u64,
}

impl StoreConfig {
    pub fn new(hot: TierStore, archive: TierStore) -> Self {
        Self {
            manifests: Arc::new(TierManifests::new(hot.clone(), archive.clone())),
            first_file_id: 1,
            hot,
            archive,
            hot_retention_us: 48 * HOUR_US,
            retention_us: 5 * 366 * DAY_US,
            compact_min_files: 8,
            max_rows_per_file: 50_000_000,
            row_group_rows: 1 << 20,
            seal_rows: 16_384,
            garbage_grace_us: 10 * 60 * 1_000_000,
            work: None,
        }
    }

    pub fn tier(&self, tier: Tier) -> &TierStore {
        match tier {
            Tier::Hot => &self.hot,
            Tier::Archive => &self.archive,
        }
    }
}

/// What is visible: both manifests and the buffered readings, swapped together so that a
/// reader never sees a reading both in a file and in the buffer, or in neither.
#[derive(Debug, Clone)]
struct Visible {
    hot: Arc<Manifest>,
    archive: Arc<Manifest>,
    sealed: Vec<RecordBatch>,
    open: Vec<Reading>,
    /// Being written by a flush: still served from memory until the manifest lists it.
    flushing: Vec<RecordBatch>,
}

/// A consistent view for a query.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub hot: Arc<Manifest>,
    pub archive: Arc<Manifest>,
    /// Readings not yet in a committed file (schema [`schema::READINGS`]).
    pub buffer: Vec<RecordBatch>,
}

impl Snapshot {
    pub fn files(&self, tier: Tier, kind: Kind) -> impl Iterator<Item = &FileEntry> {
        let manifest = match tier {
            Tier::Hot => &self.hot,
            Tier::Archive => &self.archive,
        };
        manifest.files.iter().filter(move |f| f.kind == kind)
    }
}

/// Rows, bytes and files per tier and kind over the (hot, archive) manifests of one or more
/// partitions; hot files whose newest row is before `cutoff` are the move backlog.
fn status_of(
    catalogs: &[(Arc<Manifest>, Arc<Manifest>)],
    buffered_rows: u64,
    cutoff: i64,
) -> StoreStatus {
    let mut tiers = Vec::new();
    for tier in [Tier::Hot, Tier::Archive] {
        let manifests = catalogs.iter().map(|(hot, archive)| match tier {
            Tier::Hot => hot,
            Tier::Archive => archive,
        });
        for kind in Kind::ALL {
            let files: Vec<&FileEntry> = manifests
                .clone()
                .flat_map(|m| m.files.iter().filter(|f| f.kind == kind))
                .collect();
            let dates: std::collections::BTreeSet<&str> =
                files.iter().map(|f| f.date.as_str()).collect();
            tiers.push(TierStatus {
                tier,
                kind,
                files: files.len() as u64,
                rows: files.iter().map(|f| f.rows).sum(),
                bytes: files.iter().map(|f| f.bytes).sum(),
                dates: dates.len() as u64,
                oldest: dates.first().map(|d| d.to_string()),
                newest: dates.last().map(|d| d.to_string()),
            });
        }
    }
    let mut move_backlog = Backlog::default();
    let hot_files = catalogs.iter().flat_map(|(hot, _)| hot.files.iter());
    for f in hot_files.filter(|f| f.max_ts_us < cutoff) {
        move_backlog.files += 1;
        if f.kind == Kind::Readings {
            move_backlog.readings += f.rows;
        }
        move_backlog.bytes += f.bytes;
    }
    StoreStatus {
        log_offset: 0,
        buffered_rows,
        move_backlog,
        tiers,
    }
}

/// Rows, bytes and files per tier and kind, for `hoistway storage status`.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct StoreStatus {
    /// Every reading from log records before this offset is in a file (with several
    /// partitions, each has its own: 0).
    pub log_offset: u64,
    pub buffered_rows: u64,
    pub tiers: Vec<TierStatus>,
    /// Hot files older than the hot retention, waiting to move to the archive: above zero for
    /// longer than the maintenance interval, the archive is failing (or upkeep is off).
    pub move_backlog: Backlog,
}

/// Files, readings and bytes waiting for the next move to the archive.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct Backlog {
    /// Files of every kind (readings and rollups).
    pub files: u64,
    /// Readings in those files.
    pub readings: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct TierStatus {
    pub tier: Tier,
    pub kind: Kind,
    pub files: u64,
    pub rows: u64,
    pub bytes: u64,
    pub dates: u64,
    pub oldest: Option<String>,
    pub newest: Option<String>,
}

pub struct Store {
    config: StoreConfig,
    clock: Arc<dyn Clock>,
    visible: RwLock<Visible>,
    /// Serialises manifest changes (flush, compaction, tier moves, retention).
    commit: tokio::sync::Mutex<()>,
    /// One flush at a time, from taking the buffers to committing them.
    flush_slot: Arc<tokio::sync::Mutex<()>>,
    /// File ids are unique across both tiers; the hot manifest records the next one.
    next_file_id: Arc<AtomicU64>,
    /// Copies in progress (backups) of the files of a snapshot: no removed file is deleted
    /// while one runs.
    file_pins: Arc<std::sync::atomic::AtomicUsize>,
    /// Opened by [`Store::open_reader`]: it reads what the writer commits and changes nothing.
    reader: bool,
}

/// Keeps removed files from being deleted while it lives; see [`Store::pin_files`].
pub struct FilePin(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for FilePin {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// Test hook: `HOISTWAY_UNSTABLE_CRASH_AT=<point>` aborts the process at that point, the way a
/// kill -9 would, so crash tests can hit the exact moment between writing files and committing.
pub fn crash_point(point: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    if AT
        .get_or_init(|| std::env::var("HOISTWAY_UNSTABLE_CRASH_AT").ok())
        .as_deref()
        == Some(point)
    {
        eprintln!("crash point {point} reached: aborting");
        std::process::abort();
    }
}

impl Store {
    /// Loads both manifests, settles a tier move that a crash interrupted, and deletes files
    /// that no manifest lists (left by a crash between writing and committing).
    pub async fn open(config: StoreConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        // The write counters exist from the start, so their rates read zero before a flush.
        for counter in [
            "hoistway_store_flushed_rows_total",
            "hoistway_store_flushed_bytes_total",
            "hoistway_store_flush_failures_total",
        ] {
            metrics::counter!(counter).increment(0);
        }
        let (mut hot, archive) = Self::load_manifests(&config).await?;
        let archived: HashSet<u64> = archive.files.iter().map(|f| f.id).collect();
        let moved: Vec<u64> = hot
            .files
            .iter()
            .filter(|f| archived.contains(&f.id))
            .map(|f| f.id)
            .collect();
        if !moved.is_empty() {
            hot.remove(&moved, clock.now_us());
            hot.generation += 1;
            config.manifests.commit(Tier::Hot, &hot).await?;
            tracing::info!(
                files = moved.len(),
                "finished an interrupted move to the archive"
            );
        }
        let mut removed = 0;
        for (tier, manifest) in [(&config.hot, &hot), (&config.archive, &archive)] {
            removed += remove_unlisted(tier.store.as_ref(), manifest).await?;
        }
        if removed > 0 {
            tracing::info!(files = removed, "removed uncommitted files left by a crash");
        }
        let next_file_id = hot
            .files
            .iter()
            .chain(&archive.files)
            .map(|f| f.id + 1)
            .chain([hot.next_file_id, config.first_file_id, 1])
            .max()
            .unwrap_or(1);
        Ok(Self::new(config, clock, hot, archive, next_file_id, false))
    }

    /// Opens the store for reading only (a query node, beside the node that holds the
    /// partition and writes): loads both manifests, changes nothing and deletes nothing.
    /// [`reload`](Self::reload) takes the writer's later commits; flushes and upkeep are refused.
    pub async fn open_reader(config: StoreConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        let (hot, archive) = Self::load_manifests(&config).await?;
        Ok(Self::new(config, clock, hot, archive, 0, true))
    }

    /// Reads both manifests again where the writer committed since (a reader's view of its
    /// commits); returns whether either changed.
    pub async fn reload(&self) -> Result<bool> {
        let known = {
            let visible = self.visible.read();
            (visible.hot.generation, visible.archive.generation)
        };
        // Hot first: a move to the archive commits the archive, then the hot tier, so a file
        // being moved is read in both (and kept in the archive only), never in neither.
        let manifests = &self.config.manifests;
        let hot = manifests.load_newer(Tier::Hot, known.0).await?;
        let archive = manifests.load_newer(Tier::Archive, known.1).await?;
        if hot.is_none() && archive.is_none() {
            return Ok(false);
        }
        let mut visible = self.visible.write();
        if let Some(archive) = archive {
            visible.archive = Arc::new(archive);
        }
        let mut hot = hot.unwrap_or_else(|| (*visible.hot).clone());
        let archived: HashSet<u64> = visible.archive.files.iter().map(|f| f.id).collect();
        hot.files.retain(|f| !archived.contains(&f.id));
        visible.hot = Arc::new(hot);
        Ok(true)
    }

    async fn load_manifests(config: &StoreConfig) -> Result<(Manifest, Manifest)> {
        let hot = config.manifests.load(Tier::Hot).await?;
        let archive = config.manifests.load(Tier::Archive).await?;
        Ok((
            hot.unwrap_or_else(Manifest::new),
            archive.unwrap_or_else(Manifest::new),
        ))
    }

    fn new(
        config: StoreConfig,
        clock: Arc<dyn Clock>,
        hot: Manifest,
        archive: Manifest,
        next_file_id: u64,
        reader: bool,
    ) -> Self {
        Self {
            next_file_id: Arc::new(AtomicU64::new(next_file_id)),
            file_pins: Arc::default(),
            config,
            clock,
            visible: RwLock::new(Visible {
                hot: Arc::new(hot),
                archive: Arc::new(archive),
                sealed: Vec::new(),
                open: Vec::new(),
                flushing: Vec::new(),
            }),
            commit: tokio::sync::Mutex::new(()),
            flush_slot: Arc::new(tokio::sync::Mutex::new(())),
            reader,
        }
    }

    /// Refuses a change on a store opened by [`open_reader`](Self::open_reader).
    fn writable(&self) -> Result<()> {
        if self.reader {
            return Err(Error::Conflict(
                "this node reads storage and does not write it: flushes and upkeep run on the node that holds the partition".into(),
            ));
        }
        Ok(())
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Keeps every file of every manifest from now on (compaction and moves still run, but
    /// what they remove stays on disk) until the pin is dropped: a backup takes a
    /// [`snapshot`](Self::snapshot), then copies its files at leisure.
    pub fn pin_files(&self) -> FilePin {
        self.file_pins.fetch_add(1, Ordering::AcqRel);
        FilePin(self.file_pins.clone())
    }

    /// The log offset everything committed covers: readings from earlier records are in files.
    pub fn committed_offset(&self) -> Offset {
        self.visible.read().hot.log_offset
    }

    pub fn snapshot(&self) -> Snapshot {
        let visible = self.visible.read();
        let mut buffer = visible.flushing.clone();
        buffer.extend(visible.sealed.iter().cloned());
        if !visible.open.is_empty() {
            buffer.push(schema::readings_batch(&visible.open));
        }
        Snapshot {
            hot: visible.hot.clone(),
            archive: visible.archive.clone(),
            buffer,
        }
    }

    pub fn status(&self) -> StoreStatus {
        let (manifests, buffered_rows) = self.catalog();
        let mut status = status_of(
            std::slice::from_ref(&manifests),
            buffered_rows,
            self.clock.now_us() - self.config.hot_retention_us,
        );
        status.log_offset = manifests.0.log_offset;
        status
    }

    /// Both tiers' manifests as visible now, and how many readings wait in memory (counted
    /// without an Arrow conversion of the open buffer).
    fn catalog(&self) -> ((Arc<Manifest>, Arc<Manifest>), u64) {
        let visible = self.visible.read();
        let batched: usize = visible
            .flushing
            .iter()
            .chain(&visible.sealed)
            .map(|b| b.num_rows())
            .sum();
        (
            (visible.hot.clone(), visible.archive.clone()),
            (batched + visible.open.len()) as u64,
        )
    }

    /// Writes every buffered reading to committed files and records `through` as covered.
    /// On failure the readings stay buffered (and visible) and the previous manifest stays.
    pub async fn flush(self: &Arc<Self>, through: Offset) -> Result<FlushStats> {
        self.begin_flush(through).await.await
    }

    /// The first half of [`flush`](Self::flush): takes every buffered reading (queries still see
    /// them) and returns the second half, which writes them and commits the manifest. Readings
    /// buffered meanwhile wait for the next flush; one flush runs at a time.
    pub async fn begin_flush(
        self: &Arc<Self>,
        through: Offset,
    ) -> impl Future<Output = Result<FlushStats>> + Send + 'static {
        let slot = self.flush_slot.clone().lock_owned().await;
        let batches = {
            let mut visible = self.visible.write();
            let mut batches = std::mem::take(&mut visible.sealed);
            if !visible.open.is_empty() {
                batches.push(schema::readings_batch(&visible.open));
                visible.open.clear();
            }
            visible.flushing = batches.clone();
            batches
        };
        let store = self.clone();
        async move {
            let _slot = slot;
            store.finish_flush(batches, through).await
        }
    }

    async fn finish_flush(&self, batches: Vec<RecordBatch>, through: Offset) -> Result<FlushStats> {
        self.writable()?;
        let _commit = self.commit.lock().await;
        let started = Instant::now();
        // Read under the commit lock: compaction may have changed it since the buffers were taken.
        let mut manifest = (*self.visible.read().hot).clone();
        if batches.is_empty() && manifest.log_offset == through {
            return Ok(FlushStats::default());
        }
        let result = self.write_flush(batches, &mut manifest, through).await;
        let mut visible = self.visible.write();
        match result {
            Ok(stats) => {
                visible.hot = Arc::new(manifest);
                visible.flushing.clear();
                metrics::counter!("hoistway_store_flushed_rows_total").increment(stats.rows);
                metrics::counter!("hoistway_store_flushed_bytes_total").increment(stats.bytes);
                metrics::histogram!("hoistway_store_flush_seconds")
                    .record(started.elapsed().as_secs_f64());
                Ok(stats)
            }
            Err(e) => {
                // Put the readings back in front of anything buffered since.
                let mut restored = std::mem::take(&mut visible.flushing);
                restored.append(&mut visible.sealed);
                visible.sealed = restored;
                metrics::counter!("hoistway_store_flush_failures_total").increment(1);
                Err(e)
            }
        }
    }

    async fn write_flush(
        &self,
        batches: Vec<RecordBatch>,
        manifest: &mut Manifest,
        through: Offset,
    ) -> Result<FlushStats> {
        let row_group_rows = self.config.row_group_rows;
        let encoded = if batches.is_empty() {
            Vec::new()
        } else {
            let encode = move || write::encode_flush(&batches, row_group_rows);
            match &self.config.work {
                Some(work) => work.spawn_blocking(encode).await??,
                None => tokio::task::spawn_blocking(encode).await??,
            }
        };
        let mut stats = FlushStats::default();
        let mut written = Vec::new();
        for file in encoded {
            let id = self.next_file_id.fetch_add(1, Ordering::Relaxed);
            let entry = file.entry(id, 0);
            let put = self
                .config
                .hot
                .store
                .put(&Path::from(entry.path.as_str()), file.bytes.into())
                .await;
            if let Err(e) = put {
                self.delete_quietly(Tier::Hot, &written).await;
                return Err(e.into());
            }
            written.push(entry.path.clone());
            if entry.kind == Kind::Readings {
                stats.rows += entry.rows;
            }
            stats.bytes += entry.bytes;
            stats.files += 1;
            manifest.files.push(entry);
        }
        let hot = self.config.hot.clone();
        let paths = written.clone();
        let synced = tokio::task::spawn_blocking(move || -> Result<()> {
            for p in &paths {
                hot.sync(p)?;
            }
            Ok(())
        })
        .await?;
        if let Err(e) = synced {
            self.delete_quietly(Tier::Hot, &written).await;
            return Err(e);
        }
        crash_point("flush_before_commit");
        manifest.log_offset = through;
        manifest.generation += 1;
        manifest.next_file_id = self.next_file_id.load(Ordering::Relaxed);
        if let Err(e) = self.save_manifest(Tier::Hot, manifest).await {
            self.delete_quietly(Tier::Hot, &written).await;
            return Err(e);
        }
        Ok(stats)
    }

    async fn save_manifest(&self, tier: Tier, manifest: &Manifest) -> Result<()> {
        self.config.manifests.commit(tier, manifest).await
    }

    async fn delete_quietly(&self, tier: Tier, paths: &[String]) {
        for p in paths {
            if let Err(e) = self
                .config
                .tier(tier)
                .store
                .delete(&Path::from(p.as_str()))
                .await
            {
                tracing::warn!(path = %p, error = %e, "could not delete an uncommitted file");
            }
        }
    }

    /// Buffers the counted readings of the log record at `offset` (what [`Sink::accept`] does),
    /// for callers that hold plain readings: tests and the storage benchmark.
    pub fn buffer(&self, offset: Offset, readings: &[Reading]) {
        self.push(offset, readings.iter());
    }

    /// Buffers readings from the log record at `offset`, unless a committed flush covers it.
    fn push<'a>(&self, offset: Offset, readings: impl Iterator<Item = &'a Reading>) {
        let mut visible = self.visible.write();
        // After a crash the processor replays from its checkpoint, which may be behind what a
        // flush already committed: those readings are in files already.
        if offset < visible.hot.log_offset {
            return;
        }
        visible.open.extend(readings.cloned());
        if visible.open.len() >= self.config.seal_rows {
            let batch = schema::readings_batch(&visible.open);
            visible.open.clear();
            visible.sealed.push(batch);
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStats {
    pub rows: u64,
    pub bytes: u64,
    pub files: u64,
}

impl Sink for Store {
    fn name(&self) -> &'static str {
        "storage"
    }

    fn accept(&self, batch: &SinkBatch) {
        self.push(batch.offset, batch.counted());
    }

    /// Takes the buffered readings; the finish writes and commits them (the Parquet flush runs
    /// while the processor applies later records).
    fn prepare(self: Arc<Self>, through: Offset) -> Prepare {
        Box::pin(async move {
            let flush = self.begin_flush(through).await;
            Ok(Box::pin(async move {
                flush
                    .await
                    .map(|_| ())
                    .map_err(|e| SinkError::new("storage", through, e))
            }) as Finish)
        })
    }
}

/// Deletes data files under the tier that neither the listing nor the garbage list names.
async fn remove_unlisted(store: &dyn ObjectStore, manifest: &Manifest) -> Result<usize> {
    let known: HashSet<&str> = manifest
        .files
        .iter()
        .map(|f| f.path.as_str())
        .chain(manifest.garbage.iter().map(|g| g.path.as_str()))
        .collect();
    let mut removed = 0;
    for kind in Kind::ALL {
        let prefix = Path::from(kind.dir());
        let objects: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
        for object in objects {
            if !known.contains(object.location.as_ref()) {
                store.delete(&object.location).await?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// `YYYY-MM-DD` of a UTC timestamp in microseconds.
pub fn date_of(ts_us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(ts_us)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "invalid".into())
}

/// Groups files by (kind, date), for compaction and status.
pub fn by_date(files: &[FileEntry]) -> BTreeMap<(Kind, String), Vec<&FileEntry>> {
    let mut out: BTreeMap<(Kind, String), Vec<&FileEntry>> = BTreeMap::new();
    for f in files {
        out.entry((f.kind, f.date.clone())).or_default().push(f);
    }
    out
}
