//! Backups of a data dir: online, consistent and incremental; their verification; restore.
//!
//! A backup target is a directory or a prefix of S3-compatible storage (any `object_store`):
//!
//! ```text
//! files/<path>                  every stored Parquet file, copied once (stored files never change)
//! backups/<id>/data/...         the rest, laid out as in a data dir (state/checkpoint.bin, log/,
//!                               dlq/, the SQLite databases, auth/keys.json, and each tier's
//!                               store/<tier>/_hoistway/manifest.json)
//! backups/<id>/backup.json      what the backup holds, with the size and SHA-256 of every part;
//!                               written last, so a backup without it is incomplete
//! ```
//!
//! Consistency while ingest, checkpoints and compaction go on: the backup holds the processor's
//! [`CheckpointGate`] just long enough to copy what a checkpoint writes (the checkpoint, the
//! dead letters, the alert database, both storage manifests), all of which then describe the
//! same log offset. It pins the log from that offset and the stored files of that moment (a
//! compaction or tier move still runs, but deletes nothing until the backup ends), then copies
//! the log up to its durable end, the other databases, and the files not already in the
//! target. A restore is a data dir as a crash at that moment would have left it: the server
//! replays the log from the checkpoint, and each sink skips what it already holds.
//!
//! Not here: scheduling (run `hoistway backup` and `hoistway backup prune` from cron or a timer).

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use hoistway_log::FileLog;
use hoistway_processor::CheckpointGate;
use hoistway_store::{Manifest, Store, Tier};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The backup format written (`backup.json`'s `format`) and the newest read.
pub const FORMAT: u32 = 1;

/// Where things live in a data dir (the server opens the same paths).
pub mod layout {
    pub const LOG: &str = "log";
    pub const STATE: &str = "state";
    pub const DLQ: &str = "dlq";
    pub const REGISTRY: &str = "registry.sqlite3";
    pub const ALERTS_DB: &str = "alerts/alerts.sqlite3";
    pub const AUTH_DB: &str = "auth/auth.sqlite3";
    pub const AUTH_KEYS: &str = "auth/keys.json";
    pub const HOT: &str = "store/hot";
    pub const ARCHIVE: &str = "store/archive";
}

const MANIFEST_PATH: &str = hoistway_store::manifest::MANIFEST_PATH;
const STAGING: &str = ".backup-staging";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("a backup is already running; try again when it has finished")]
    Busy,
    #[error("{0}")]
    Invalid(String),
    #[error("the backup is damaged: {0}")]
    Corrupt(String),
    #[error("backup storage: {0}")]
    Target(#[from] object_store::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("copying a database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("copying the log: {0}")]
    Log(#[from] hoistway_log::Error),
    #[error("reading stored files: {0}")]
    Storage(#[from] hoistway_store::Error),
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One backup's table of contents (`backups/<id>/backup.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Contents {
    pub format: u32,
    pub id: String,
    /// RFC 3339, UTC.
    pub created: String,
    /// The release that took it.
    pub hoistway: String,
    /// The checkpoint's offset: state, dead letters, alerts and the manifests all reflect the
    /// log below it.
    pub checkpoint_offset: u64,
    /// The log copied: from the start of the segment holding the checkpoint's offset to the
    /// durable end when the copy began (every reading acknowledged by then).
    pub log_start: u64,
    pub log_end: u64,
    pub parts: Vec<Part>,
}

/// One file of a backup, by its key in the target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Part {
    pub key: String,
    pub bytes: u64,
    pub sha256: String,
    /// For stored files (`files/…`): the tier whose manifest lists it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<Tier>,
}

/// What a backup did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BackupReport {
    pub id: String,
    pub to: String,
    pub checkpoint_offset: u64,
    /// One past the last log record in the backup: everything acknowledged when it began.
    pub log_end: u64,
    pub parts: u64,
    pub bytes: u64,
    /// Stored files copied now, and those already in the target from an earlier backup.
    pub copied_files: u64,
    pub copied_bytes: u64,
    pub reused_files: u64,
    pub reused_bytes: u64,
    /// How long the checkpoint gate was held (checkpoints wait meanwhile; ingest does not).
    pub gate_held_ms: u64,
    pub seconds: f64,
}

/// What the backup reads, in the running server.
pub struct Sources {
    pub data_dir: PathBuf,
    pub log: Arc<FileLog>,
    pub gate: CheckpointGate,
    pub store: Arc<Store>,
    /// The release, recorded in each backup.
    pub version: String,
    /// Opens a target named by the user (a directory or an `s3://` URL); the error says why not.
    pub resolve: Resolve,
}

/// Opens a backup target from its name.
pub type Resolve =
    Box<dyn Fn(&str) -> std::result::Result<Arc<dyn ObjectStore>, String> + Send + Sync>;

/// Takes backups of a running server's data dir, one at a time.
pub struct Backups {
    sources: Sources,
    running: tokio::sync::Mutex<()>,
}

/// The parts of a backup taken under the checkpoint gate.
struct Held {
    checkpoint_offset: u64,
    log_pin: hoistway_log::LogPin,
    staged: Vec<Staged>,
    hot: Arc<Manifest>,
    archive: Arc<Manifest>,
}

impl Backups {
    pub fn new(sources: Sources) -> Self {
        Self {
            sources,
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Takes a backup into the target named `to`. Refused with [`Error::Busy`] while another
    /// runs, and with [`Error::Invalid`] when `to` names no usable target.
    pub async fn run(&self, to: &str) -> Result<BackupReport> {
        let target = (self.sources.resolve)(to).map_err(Error::Invalid)?;
        let _one = self.running.try_lock().map_err(|_| Error::Busy)?;
        let started = Instant::now();
        let now = chrono::Utc::now();
        let id = now.format("%Y%m%dT%H%M%S%.3fZ").to_string();
        let staging = self.sources.data_dir.join(STAGING);
        let dir = staging.clone();
        tokio::task::spawn_blocking(move || remove_dir(&dir)).await??;
        let result = self.take(target, to, &id, now, &staging, started).await;
        let dir = staging.clone();
        let _ = tokio::task::spawn_blocking(move || remove_dir(&dir)).await;
        match &result {
            Ok(r) => tracing::info!(
                id = %r.id,
                to,
                copied_files = r.copied_files,
                reused_files = r.reused_files,
                bytes = r.bytes,
                seconds = r.seconds,
                "backup taken"
            ),
            Err(e) => tracing::error!(error = %e, to, "backup failed"),
        }
        result
    }

    async fn take(
        &self,
        target: Arc<dyn ObjectStore>,
        to: &str,
        id: &str,
        now: chrono::DateTime<chrono::Utc>,
        staging: &FsPath,
        started: Instant,
    ) -> Result<BackupReport> {
        let src = &self.sources;
        // Pinned before the snapshot, so nothing it lists is deleted while it is copied.
        let _files = src.store.pin_files();
        let gate_start = Instant::now();
        let held = {
            let _gate = src.gate.hold().await;
            let (data, log, stage) = (src.data_dir.clone(), src.log.clone(), staging.to_owned());
            let (offset, log_pin, staged) =
                tokio::task::spawn_blocking(move || under_gate(&data, &log, &stage)).await??;
            let snapshot = src.store.snapshot();
            Held {
                checkpoint_offset: offset,
                log_pin,
                staged,
                hot: snapshot.hot,
                archive: snapshot.archive,
            }
        };
        let gate_held_ms = gate_start.elapsed().as_millis() as u64;
        let (data, log, stage, pin) = (
            src.data_dir.clone(),
            src.log.clone(),
            staging.to_owned(),
            held.log_pin,
        );
        let offset = held.checkpoint_offset;
        let (copy, later) = tokio::task::spawn_blocking(move || {
            let copy = log.copy_durable(&pin, offset, &stage.join(layout::LOG))?;
            drop(pin);
            // After the log: the registry then knows every lift the copied records name.
            let later = after_log(&data, &stage)?;
            Ok::<_, Error>((copy, later))
        })
        .await??;

        let prefix = format!("backups/{id}/data");
        let mut parts = Vec::new();
        let mut staged = held.staged;
        staged.extend(later);
        for file in &copy.files {
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            staged.push((format!("{}/{name}", layout::LOG), file.clone()));
        }
        let local = object_store::local::LocalFileSystem::new();
        for (rel, path) in staged {
            let from = Path::from_absolute_path(&path)
                .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
            parts
                .push(copy_object(&local, &from, &*target, format!("{prefix}/{rel}"), None).await?);
        }
        for (tier, manifest) in [(Tier::Hot, &held.hot), (Tier::Archive, &held.archive)] {
            let json = serde_json::to_vec_pretty(&**manifest)
                .map_err(|e| Error::Invalid(e.to_string()))?;
            let rel = format!("{}/{MANIFEST_PATH}", tier_dir(tier));
            parts.push(put(&*target, format!("{prefix}/{rel}"), json.into(), None).await?);
        }

        let earlier = newest_contents(&*target).await?;
        let known: HashMap<&str, &Part> = earlier
            .iter()
            .flat_map(|c| &c.parts)
            .filter(|p| p.tier.is_some())
            .map(|p| (p.key.as_str(), p))
            .collect();
        let delay = test_delay();
        let (mut copied, mut copied_bytes, mut reused, mut reused_bytes) = (0, 0, 0, 0);
        for (tier, manifest) in [(Tier::Hot, &held.hot), (Tier::Archive, &held.archive)] {
            let store = src.store.config().tier(tier).store.clone();
            for file in &manifest.files {
                let key = format!("files/{}", file.path);
                if let Some(part) = known.get(key.as_str())
                    && target
                        .head(&Path::from(key.as_str()))
                        .await
                        .is_ok_and(|m| m.size == part.bytes)
                {
                    reused += 1;
                    reused_bytes += part.bytes;
                    parts.push(Part {
                        tier: Some(tier),
                        ..(*part).clone()
                    });
                    continue;
                }
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                let part = copy_object(
                    &*store,
                    &Path::from(file.path.as_str()),
                    &*target,
                    key,
                    Some(tier),
                )
                .await?;
                copied += 1;
                copied_bytes += part.bytes;
                parts.push(part);
            }
        }

        let contents = Contents {
            format: FORMAT,
            id: id.to_string(),
            created: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            hoistway: src.version.clone(),
            checkpoint_offset: offset,
            log_start: copy.start,
            log_end: copy.end,
            parts,
        };
        let json =
            serde_json::to_vec_pretty(&contents).map_err(|e| Error::Invalid(e.to_string()))?;
        target
            .put(&contents_key(id), PutPayload::from(json))
            .await?;
        Ok(BackupReport {
            id: id.to_string(),
            to: to.to_string(),
            checkpoint_offset: offset,
            log_end: copy.end,
            parts: contents.parts.len() as u64,
            bytes: contents.parts.iter().map(|p| p.bytes).sum(),
            copied_files: copied,
            copied_bytes,
            reused_files: reused,
            reused_bytes,
            gate_held_ms,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// Under the checkpoint gate: the checkpoint (and its offset), a pin on the log from there,
/// the dead letters and the alert database, staged as (path in the data dir, staged file).
fn under_gate(
    data: &FsPath,
    log: &FileLog,
    staging: &FsPath,
) -> Result<(u64, hoistway_log::LogPin, Vec<Staged>)> {
    let mut staged = Vec::new();
    let checkpoint = data
        .join(layout::STATE)
        .join(hoistway_processor::checkpoint::FILE_NAME);
    let offset = match std::fs::read(&checkpoint) {
        Ok(bytes) => {
            let state = hoistway_processor::checkpoint::decode(&bytes)
                .map_err(|e| Error::Invalid(format!("{}: {e}", checkpoint.display())))?;
            let rel = format!(
                "{}/{}",
                layout::STATE,
                hoistway_processor::checkpoint::FILE_NAME
            );
            staged.push(stage_bytes(staging, &rel, &bytes)?);
            state.offset
        }
        // No checkpoint yet: the log is replayed from its start.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e.into()),
    };
    let pin = log.pin(offset);
    let dlq = data.join(layout::DLQ);
    if dlq.is_dir() {
        for entry in std::fs::read_dir(&dlq)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let rel = format!("{}/{name}", layout::DLQ);
                staged.push(stage_bytes(staging, &rel, &std::fs::read(entry.path())?)?);
            }
        }
    }
    staged.extend(vacuum_into(data, staging, layout::ALERTS_DB)?);
    Ok((offset, pin, staged))
}

/// After the log is copied: the registry, the accounts and the signing keys.
fn after_log(data: &FsPath, staging: &FsPath) -> Result<Vec<Staged>> {
    let mut staged = Vec::new();
    staged.extend(vacuum_into(data, staging, layout::REGISTRY)?);
    staged.extend(vacuum_into(data, staging, layout::AUTH_DB)?);
    let keys = data.join(layout::AUTH_KEYS);
    if keys.exists() {
        staged.push(stage_bytes(
            staging,
            layout::AUTH_KEYS,
            &std::fs::read(keys)?,
        )?);
    }
    Ok(staged)
}

/// A file copied into the staging directory: its path in the data dir, and where it is.
type Staged = (String, PathBuf);

fn stage_bytes(staging: &FsPath, rel: &str, bytes: &[u8]) -> Result<Staged> {
    let path = staging.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, bytes)?;
    Ok((rel.to_string(), path))
}

/// A consistent copy of a live SQLite database (`VACUUM INTO` reads one snapshot while its
/// owner keeps writing).
fn vacuum_into(data: &FsPath, staging: &FsPath, rel: &str) -> Result<Option<Staged>> {
    let source = data.join(rel);
    if !source.exists() {
        return Ok(None);
    }
    let path = staging.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let db = rusqlite::Connection::open_with_flags(
        &source,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    db.busy_timeout(Duration::from_secs(30))?;
    let into = path
        .to_str()
        .ok_or_else(|| Error::Invalid(format!("{} is not UTF-8", path.display())))?;
    db.execute("VACUUM INTO ?1", [into])?;
    Ok(Some((rel.to_string(), path)))
}

fn remove_dir(dir: &FsPath) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Test hook: `HOISTWAY_UNSTABLE_BACKUP_FILE_DELAY_MS` slows the copy of each stored file, so
/// a test can run compaction in the middle of a backup.
fn test_delay() -> Option<Duration> {
    std::env::var("HOISTWAY_UNSTABLE_BACKUP_FILE_DELAY_MS")
        .ok()?
        .parse()
        .ok()
        .map(Duration::from_millis)
}

fn tier_dir(tier: Tier) -> &'static str {
    match tier {
        Tier::Hot => layout::HOT,
        Tier::Archive => layout::ARCHIVE,
    }
}

fn contents_key(id: &str) -> Path {
    Path::from(format!("backups/{id}/backup.json"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Objects larger than this are copied in pieces of this size (a multipart upload on S3), so
/// that a backup holds no more than a few pieces of a file in memory; restores and checks read
/// any object piece by piece as it arrives.
const PIECE: usize = 8 << 20;

/// Test hook: `HOISTWAY_UNSTABLE_BACKUP_PIECE_BYTES` copies in smaller pieces, so that a test's
/// small files go through the multipart path (S3 itself takes no piece under 5 MiB).
fn piece_bytes() -> usize {
    std::env::var("HOISTWAY_UNSTABLE_BACKUP_PIECE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(PIECE)
}

/// Copies `from` in `source` to `key` in `target`, hashing it on the way through.
async fn copy_object(
    source: &dyn ObjectStore,
    from: &Path,
    target: &dyn ObjectStore,
    key: String,
    tier: Option<Tier>,
) -> Result<Part> {
    let got = source.get(from).await?;
    let size = got.meta.size;
    let to = Path::from(key.as_str());
    let mut stream = got.into_stream();
    let mut hasher = Sha256::new();
    let mut read = 0u64;
    let piece = piece_bytes();
    if size <= piece as u64 {
        let mut buf = Vec::with_capacity(size as usize);
        while let Some(chunk) = stream.try_next().await? {
            hasher.update(&chunk);
            buf.extend_from_slice(&chunk);
        }
        read = buf.len() as u64;
        target.put(&to, PutPayload::from(buf)).await?;
    } else {
        let mut upload = object_store::WriteMultipart::new_with_chunk_size(
            target.put_multipart(&to).await?,
            piece,
        );
        let streamed: object_store::Result<()> = async {
            while let Some(chunk) = stream.try_next().await? {
                hasher.update(&chunk);
                read += chunk.len() as u64;
                upload.wait_for_capacity(2).await?;
                upload.put(chunk);
            }
            Ok(())
        }
        .await;
        if let Err(e) = streamed {
            let _ = upload.abort().await;
            return Err(e.into());
        }
        upload.finish().await?;
    }
    if read != size {
        return Err(Error::Invalid(format!(
            "{from}: {read} bytes read of {size}: it changed while it was copied"
        )));
    }
    Ok(Part {
        key,
        bytes: size,
        sha256: hex(&hasher.finalize()),
        tier,
    })
}

async fn put(
    target: &dyn ObjectStore,
    key: String,
    bytes: Bytes,
    tier: Option<Tier>,
) -> Result<Part> {
    let part = Part {
        bytes: bytes.len() as u64,
        sha256: sha256_hex(&bytes),
        key,
        tier,
    };
    target
        .put(&Path::from(part.key.as_str()), PutPayload::from(bytes))
        .await?;
    Ok(part)
}

/// The ids of the backups in `target`, oldest first, and those without a table of contents
/// (interrupted).
pub async fn list(target: &dyn ObjectStore) -> Result<(Vec<String>, Vec<String>)> {
    let listed = target
        .list_with_delimiter(Some(&Path::from("backups")))
        .await?;
    let mut complete = Vec::new();
    let mut incomplete = Vec::new();
    for prefix in listed.common_prefixes {
        let Some(id) = prefix.filename() else {
            continue;
        };
        match target.head(&contents_key(id)).await {
            Ok(_) => complete.push(id.to_string()),
            Err(object_store::Error::NotFound { .. }) => {
                // A directory target keeps the empty folders of a pruned backup.
                let mut objects = target.list(Some(&prefix));
                if objects.try_next().await?.is_some() {
                    incomplete.push(id.to_string());
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    complete.sort();
    incomplete.sort();
    Ok((complete, incomplete))
}

/// A backup's table of contents.
pub async fn contents(target: &dyn ObjectStore, id: &str) -> Result<Contents> {
    let bytes = match target.get(&contents_key(id)).await {
        Ok(got) => got.bytes().await?,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(Error::Invalid(format!(
                "there is no complete backup {id:?}"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    #[derive(Deserialize)]
    struct Head {
        format: u32,
    }
    let corrupt = |e: serde_json::Error| Error::Corrupt(format!("backups/{id}/backup.json: {e}"));
    let head: Head = serde_json::from_slice(&bytes).map_err(corrupt)?;
    if head.format > FORMAT {
        return Err(Error::Invalid(format!(
            "backups/{id}/backup.json is in backup format {}, which this build does not read (it reads up to {FORMAT}); use the release that took it or a newer one",
            head.format
        )));
    }
    serde_json::from_slice(&bytes).map_err(corrupt)
}

async fn newest_contents(target: &dyn ObjectStore) -> Result<Option<Contents>> {
    match list(target).await?.0.last() {
        Some(id) => contents(target, id).await.map(Some),
        None => Ok(None),
    }
}

/// The named backup, or the newest.
async fn pick(target: &dyn ObjectStore, id: Option<&str>) -> Result<Contents> {
    match id {
        Some(id) => contents(target, id).await,
        None => newest_contents(target)
            .await?
            .ok_or_else(|| Error::Invalid("the target holds no complete backup".into())),
    }
}

/// What `prune` removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// The complete backups kept, oldest first.
    pub kept: Vec<String>,
    /// Complete backups removed, and interrupted ones older than the newest complete backup.
    pub removed_backups: Vec<String>,
    /// Stored files no kept backup lists.
    pub removed_files: u64,
    pub removed_bytes: u64,
    pub dry_run: bool,
}

/// Keeps the newest `keep` complete backups (at least one) and removes the others, the
/// interrupted backups older than the newest complete one, and every stored file that no kept
/// backup lists. A backup running meanwhile is safe: the files it reuses are listed by the
/// newest backup, which is always kept, and the files it copies are newer than that backup,
/// and only files older than it are removed. Each backup's `backup.json` goes first, so a
/// prune cut short leaves the rest listed as interrupted, to be removed by the next.
pub async fn prune(target: &dyn ObjectStore, keep: usize, dry_run: bool) -> Result<PruneReport> {
    if keep == 0 {
        return Err(Error::Invalid(
            "keep at least one backup (--keep 1 or more)".into(),
        ));
    }
    let (complete, incomplete) = list(target).await?;
    let Some(newest) = complete.last() else {
        return Err(Error::Invalid(
            "the target holds no complete backup; nothing is pruned".into(),
        ));
    };
    let newest_created =
        chrono::DateTime::parse_from_rfc3339(&contents(target, newest).await?.created)
            .map_err(|e| Error::Corrupt(format!("backups/{newest}/backup.json: created: {e}")))?
            .with_timezone(&chrono::Utc);
    let split = complete.len().saturating_sub(keep);
    let (removed, kept) = complete.split_at(split);
    let mut listed = std::collections::HashSet::new();
    for id in kept {
        for part in contents(target, id).await?.parts {
            if part.tier.is_some() {
                listed.insert(part.key);
            }
        }
    }
    let mut report = PruneReport {
        kept: kept.to_vec(),
        dry_run,
        ..Default::default()
    };
    // Interrupted backups are named by when they started: those before the newest complete
    // one are over.
    let interrupted = incomplete.iter().filter(|id| id.as_str() < newest.as_str());
    for id in removed.iter().chain(interrupted) {
        if !dry_run {
            match target.delete(&contents_key(id)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            let rest: Vec<Path> = target
                .list(Some(&Path::from(format!("backups/{id}"))))
                .map_ok(|m| m.location)
                .try_collect()
                .await?;
            for key in rest {
                target.delete(&key).await?;
            }
        }
        report.removed_backups.push(id.clone());
    }
    let unlisted: Vec<object_store::ObjectMeta> = target
        .list(Some(&Path::from("files")))
        .try_filter(|m| {
            futures::future::ready(
                m.last_modified < newest_created && !listed.contains(m.location.as_ref()),
            )
        })
        .try_collect()
        .await?;
    for meta in unlisted {
        if !dry_run {
            target.delete(&meta.location).await?;
        }
        report.removed_files += 1;
        report.removed_bytes += meta.size;
    }
    Ok(report)
}

/// What `verify` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub backups: Vec<String>,
    /// Backups without a table of contents: interrupted, not restorable.
    pub incomplete: Vec<String>,
    pub parts_checked: u64,
    pub bytes_checked: u64,
    /// Each part that is missing or whose size or checksum differs, by key.
    pub problems: Vec<String>,
}

/// Reads every part of the named backup (or of all of them) and checks its size and SHA-256.
/// A stored file shared by several backups is read once.
pub async fn verify(target: &dyn ObjectStore, id: Option<&str>) -> Result<VerifyReport> {
    let (complete, incomplete) = list(target).await?;
    let ids = match id {
        Some(id) => vec![id.to_string()],
        None => complete,
    };
    let mut report = VerifyReport {
        incomplete,
        ..Default::default()
    };
    let mut seen = std::collections::HashSet::new();
    for id in &ids {
        let contents = contents(target, id).await?;
        for part in &contents.parts {
            if !seen.insert((part.key.clone(), part.sha256.clone())) {
                continue;
            }
            report.parts_checked += 1;
            match check_part(target, part, None).await {
                Ok(bytes) => report.bytes_checked += bytes,
                Err(problem) => report.problems.push(format!("backup {id}: {problem}")),
            }
        }
        report.backups.push(id.clone());
    }
    Ok(report)
}

/// Reads a part through, piece by piece, and checks its size and SHA-256 against those
/// recorded; with `into`, writes it to that file (synced; removed again if the part is bad).
/// Returns its size, or what is wrong.
async fn check_part(
    target: &dyn ObjectStore,
    part: &Part,
    into: Option<&FsPath>,
) -> std::result::Result<u64, String> {
    use tokio::io::AsyncWriteExt;
    let mut stream = match target.get(&Path::from(part.key.as_str())).await {
        Ok(got) => got.into_stream(),
        Err(object_store::Error::NotFound { .. }) => return Err(format!("{}: missing", part.key)),
        Err(e) => return Err(format!("{}: cannot be read: {e}", part.key)),
    };
    let write_err = |path: &FsPath, e: std::io::Error| format!("{}: {e}", path.display());
    let mut file = match into {
        Some(path) => {
            let parent = path.parent().unwrap_or(FsPath::new("."));
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| write_err(parent, e))?;
            Some(
                tokio::fs::File::create(path)
                    .await
                    .map_err(|e| write_err(path, e))?,
            )
        }
        None => None,
    };
    let mut hasher = Sha256::new();
    let mut read = 0u64;
    let checked = async {
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|e| format!("{}: cannot be read: {e}", part.key))?
        {
            hasher.update(&chunk);
            read += chunk.len() as u64;
            if let (Some(f), Some(path)) = (file.as_mut(), into) {
                f.write_all(&chunk).await.map_err(|e| write_err(path, e))?;
            }
        }
        if read != part.bytes {
            return Err(format!(
                "{}: {read} bytes, the backup recorded {}",
                part.key, part.bytes
            ));
        }
        if hex(&hasher.finalize()) != part.sha256 {
            return Err(format!(
                "{}: checksum mismatch (the bytes changed)",
                part.key
            ));
        }
        if let (Some(f), Some(path)) = (file.as_mut(), into) {
            f.sync_all().await.map_err(|e| write_err(path, e))?;
            let parent = path.parent().unwrap_or(FsPath::new("."));
            sync_dir(parent).map_err(|e| write_err(parent, e))?;
        }
        Ok(read)
    }
    .await;
    if checked.is_err()
        && let Some(path) = into
    {
        drop(file);
        let _ = std::fs::remove_file(path);
    }
    checked
}

fn sync_dir(dir: &FsPath) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// What `restore` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub id: String,
    pub data_dir: String,
    pub checkpoint_offset: u64,
    pub log_end: u64,
    pub parts: u64,
    pub bytes: u64,
}

/// Rebuilds a data dir (which must not exist or be empty) from the named backup or the
/// newest, checking every part's checksum as it goes; the storage manifests are written last,
/// so an interrupted restore never lists a file it lacks. Start the server on it: it replays
/// the log from the checkpoint.
pub async fn restore(
    target: &dyn ObjectStore,
    id: Option<&str>,
    data_dir: &FsPath,
) -> Result<RestoreReport> {
    if data_dir.exists() && std::fs::read_dir(data_dir)?.next().is_some() {
        return Err(Error::Invalid(format!(
            "{} is not empty; restore into a new directory",
            data_dir.display()
        )));
    }
    let contents = pick(target, id).await?;
    let prefix = format!("backups/{}/data/", contents.id);
    let mut last = Vec::new();
    let mut bytes_total = 0;
    for part in &contents.parts {
        let rel = match (&part.tier, part.key.strip_prefix(&prefix)) {
            (Some(tier), _) => {
                let path = part.key.strip_prefix("files/").ok_or_else(|| {
                    Error::Corrupt(format!("{}: a stored file outside files/", part.key))
                })?;
                format!("{}/{path}", tier_dir(*tier))
            }
            (None, Some(rel)) => rel.to_string(),
            (None, None) => {
                return Err(Error::Corrupt(format!(
                    "{}: not part of this backup",
                    part.key
                )));
            }
        };
        if rel.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(Error::Corrupt(format!("{}: not a relative path", part.key)));
        }
        if rel.ends_with(MANIFEST_PATH) {
            last.push((rel, part));
            continue;
        }
        bytes_total += check_part(target, part, Some(&data_dir.join(rel)))
            .await
            .map_err(Error::Corrupt)?;
    }
    for (rel, part) in last {
        bytes_total += check_part(target, part, Some(&data_dir.join(rel)))
            .await
            .map_err(Error::Corrupt)?;
    }
    Ok(RestoreReport {
        id: contents.id.clone(),
        data_dir: data_dir.display().to_string(),
        checkpoint_offset: contents.checkpoint_offset,
        log_end: contents.log_end,
        parts: contents.parts.len() as u64,
        bytes: bytes_total,
    })
}

fn write_synced(path: &FsPath, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let parent = path.parent().unwrap_or(FsPath::new("."));
    std::fs::create_dir_all(parent)?;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::File::open(parent)?.sync_all()?;
    Ok(())
}

/// Continuous archiving of the log (as PostgreSQL archives its WAL): each sealed segment is
/// copied to `<target>/log/` once, and the log deletes no segment before it is copied, so a
/// restore can replay from a backup to any later moment (`restore --until`). What may be lost
/// is what the active segment holds (lower `log.segment_bytes` to seal segments sooner).
pub struct LogArchiver {
    log: Arc<FileLog>,
    target: Arc<dyn ObjectStore>,
    retention: Duration,
    /// At the first segment not yet archived.
    pin: parking_lot::Mutex<hoistway_log::LogPin>,
}

/// What one archiving pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchivePass {
    pub archived: u64,
    pub bytes: u64,
    pub expired: u64,
}

impl LogArchiver {
    /// Pins the whole log at once: nothing is truncated before it is archived.
    pub fn new(log: Arc<FileLog>, target: Arc<dyn ObjectStore>, retention: Duration) -> Self {
        let pin = log.pin(hoistway_log::Log::start(&*log));
        Self {
            log,
            target,
            retention,
            pin: parking_lot::Mutex::new(pin),
        }
    }

    /// Copies the sealed segments not archived yet, then deletes archived segments older than
    /// the retention.
    pub async fn archive_once(&self) -> Result<ArchivePass> {
        let mut pass = ArchivePass::default();
        let archived: std::collections::HashSet<String> = self
            .target
            .list(Some(&Path::from("log")))
            .map_ok(|m| m.location.filename().unwrap_or_default().to_string())
            .try_collect()
            .await?;
        let sealed = self.log.sealed_segments();
        for (_, _, path) in &sealed {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if archived.contains(&name) {
                continue;
            }
            let from = Path::from_absolute_path(path)
                .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
            let part = copy_object(
                &object_store::local::LocalFileSystem::new(),
                &from,
                &*self.target,
                format!("log/{name}"),
                None,
            )
            .await?;
            pass.bytes += part.bytes;
            pass.archived += 1;
        }
        // Every sealed segment is archived: the active one is the first that is not.
        let next = sealed
            .last()
            .map_or_else(|| hoistway_log::Log::start(&*self.log), |(_, end, _)| *end);
        let new_pin = self.log.pin(next);
        *self.pin.lock() = new_pin;
        metrics::counter!("hoistway_log_archived_segments_total").increment(pass.archived);
        pass.expired = self.expire().await?;
        Ok(pass)
    }

    async fn expire(&self) -> Result<u64> {
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(self.retention).unwrap_or(chrono::Duration::MAX);
        let old: Vec<Path> = self
            .target
            .list(Some(&Path::from("log")))
            .try_filter(|m| futures::future::ready(m.last_modified < cutoff))
            .map_ok(|m| m.location)
            .try_collect()
            .await?;
        for path in &old {
            self.target.delete(path).await?;
        }
        Ok(old.len() as u64)
    }

    /// Archives every `every` until `shutdown`. The owner keeps the archiver (and its pin)
    /// until the processor's last checkpoint is written, then calls [`Self::pass`] once more.
    pub async fn run(
        self: Arc<Self>,
        every: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        metrics::counter!("hoistway_log_archive_failures_total").increment(0);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            self.pass().await;
        }
    }

    /// One archiving pass; a failure is logged, counted (`hoistway_log_archive_failures_total`)
    /// and retried at the next, while the log keeps what is not archived.
    pub async fn pass(&self) {
        match self.archive_once().await {
            Ok(pass) if pass.archived > 0 || pass.expired > 0 => tracing::debug!(
                archived = pass.archived,
                bytes = pass.bytes,
                expired = pass.expired,
                "log archived"
            ),
            Ok(_) => {}
            Err(e) => {
                metrics::counter!("hoistway_log_archive_failures_total").increment(1);
                tracing::warn!(error = %e, "log archiving failed; the log keeps the segments until it succeeds");
            }
        }
    }
}

/// What a point-in-time restore did after restoring its backup.
#[derive(Debug, Clone, Serialize)]
pub struct PointInTime {
    pub restored: RestoreReport,
    /// Archived log segments added after the backup's log.
    pub archived_segments: u64,
    /// The log now ends here: at the first record received after the target time, or at the
    /// end of the archive.
    pub log_end: u64,
    /// When the last record kept was received (RFC 3339), if any was.
    pub last_received: Option<String>,
}

/// Restores the newest backup taken at or before `until_us` (µs since the epoch) into
/// `data_dir`, adds the archived log that follows it, and cuts the log at the first record
/// received after `until_us`. The server then replays to that moment.
pub async fn restore_until(
    target: &dyn ObjectStore,
    until_us: i64,
    data_dir: &FsPath,
) -> Result<PointInTime> {
    let (ids, _) = list(target).await?;
    let mut chosen = None;
    for id in ids.iter().rev() {
        let c = contents(target, id).await?;
        let created = chrono::DateTime::parse_from_rfc3339(&c.created)
            .map_err(|e| Error::Corrupt(format!("backup {id}: created {:?}: {e}", c.created)))?;
        if created.timestamp_micros() <= until_us {
            chosen = Some(id.clone());
            break;
        }
    }
    let Some(id) = chosen else {
        return Err(Error::Invalid(
            "no backup was taken at or before that time; restore a later time or an older target"
                .into(),
        ));
    };
    let restored = restore(target, Some(&id), data_dir).await?;
    let archived_segments = add_archived_log(target, data_dir).await?;
    let (log_end, last_received) = cut_after(
        &data_dir.join(layout::LOG),
        restored.checkpoint_offset,
        until_us,
    )
    .await?;
    Ok(PointInTime {
        restored,
        archived_segments,
        log_end,
        last_received: last_received.map(|us| {
            chrono::DateTime::from_timestamp_micros(us)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        }),
    })
}

/// Cuts the log in `dir` at the first record (from `from` on) holding a reading received
/// after `until_us`; returns where the log ends and when its last kept record was received.
async fn cut_after(dir: &FsPath, from: u64, until_us: i64) -> Result<(u64, Option<i64>)> {
    use hoistway_log::Log;
    let config = hoistway_log::FileLogConfig::new(dir);
    let (log, _) = tokio::task::spawn_blocking(move || FileLog::open(config)).await??;
    let end = log.durable_end();
    let mut at = from;
    let mut cut = None;
    let mut last_received = None;
    'scan: while at < end {
        let records = log.read(at, 8 << 20).await?;
        if records.is_empty() {
            break;
        }
        for record in records {
            at = record.offset + 1;
            // A placeholder left by a repair holds nothing to keep or cut.
            let Ok(batch) = hoistway_ingest::record::decode_record(&record.payload) else {
                continue;
            };
            let received = batch.readings.iter().map(|r| r.received_us).max();
            if received.is_some_and(|r| r > until_us) {
                cut = Some(record.offset);
                break 'scan;
            }
            last_received = received.or(last_received);
        }
    }
    drop(log);
    match cut {
        Some(offset) => {
            let dir = dir.to_owned();
            tokio::task::spawn_blocking(move || hoistway_log::cut_log(&dir, offset)).await??;
            Ok((offset, last_received))
        }
        None => Ok((end, last_received)),
    }
}

/// After [`restore`] into `data_dir`: adds the archived log segments that follow the backup's
/// log, checking that none is missing. Returns how many were added.
pub async fn add_archived_log(target: &dyn ObjectStore, data_dir: &FsPath) -> Result<u64> {
    let dir = data_dir.join(layout::LOG);
    let restored = segment_ends(&dir)?;
    let Some(&(last_base, last_end)) = restored.last() else {
        return Err(Error::Invalid("the restored backup holds no log".into()));
    };
    let mut archived: Vec<(u64, Path)> = target
        .list(Some(&Path::from("log")))
        .try_filter_map(|m| {
            let base = m
                .location
                .filename()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok());
            futures::future::ready(Ok(base.map(|b| (b, m.location))))
        })
        .try_collect()
        .await?;
    archived.sort_by_key(|(base, _)| *base);
    let mut end = last_end;
    let mut added = 0;
    for (base, key) in archived.into_iter().filter(|(b, _)| *b >= last_base) {
        // The sealed copy of the backup's last segment holds all of it, and more.
        if base != last_base && base != end {
            return Err(Error::Corrupt(format!(
                "the log archive has no segment for offsets {end} to {base}: it cannot replay past {end}"
            )));
        }
        let bytes = target.get(&key).await?.bytes().await?;
        let scan = hoistway_log::scan_segment(&bytes)
            .ok_or_else(|| Error::Corrupt(format!("{key}: not a log segment")))?;
        if scan.valid_len != bytes.len() {
            return Err(Error::Corrupt(format!(
                "{key}: damaged after {} entries",
                scan.entries
            )));
        }
        end = base + scan.entries;
        write_synced(&dir.join(key.filename().unwrap_or_default()), &bytes)?;
        added += 1;
    }
    Ok(added)
}

/// Each segment file of a log directory: its first offset and one past its last whole entry.
fn segment_ends(dir: &FsPath) -> Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(base) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let bytes = std::fs::read(&path)?;
        let scan = hoistway_log::scan_segment(&bytes)
            .ok_or_else(|| Error::Corrupt(format!("{}: not a log segment", path.display())))?;
        out.push((base, base + scan.entries));
    }
    out.sort_unstable();
    Ok(out)
}
