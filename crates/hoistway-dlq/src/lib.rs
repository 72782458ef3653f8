//! The dead-letter queue: readings the processor could not apply, kept as NDJSON files.
//!
//! In: batches of [`DeadLetter`]s from the processor, each batch tagged with the range of log
//! offsets it came from. Out: files an operator can list, read (`cat` works: one JSON object a
//! line) and replay through the pipeline once the cause is fixed.
//!
//! Files are written whole (temp file, fsync, rename), named `{first:020}-{last:020}.ndjson`
//! after the log offsets they cover, so a batch written before a crash but not yet covered by a
//! processor checkpoint is recognised and dropped on recovery ([`DeadLetterQueue::discard_from`])
//! — replay of the log writes it again, and no dead letter is kept twice. Replayed files move to
//! `replayed/`. This crate does not decide what is dead; the processor does.
//!
//! Each line carries its format version, `"format":1`, before the dead letter's own fields.
//! Lines without it were written before versions were recorded and are read as version 1; a
//! line of a newer version is refused with the file, line and version, never skipped.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use hoistway_model::Reading;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("dead-letter storage failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("no dead-letter file {0:?}")]
    NotFound(String),
    #[error("dead-letter file {file} line {line} is unreadable: {message}")]
    Unreadable {
        file: String,
        line: usize,
        message: String,
    },
    /// A shared store (PostgreSQL) cannot be reached: worth retrying.
    #[error("dead-letter storage is unavailable: {0}")]
    Unavailable(String),
    /// A shared store refused or failed the call.
    #[error("dead-letter storage failed: {0}")]
    Backend(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The line format written (and the newest read).
pub const FORMAT: u32 = 1;

#[derive(Serialize)]
struct LineOut<'a> {
    format: u32,
    #[serde(flatten)]
    letter: &'a DeadLetter,
}

#[derive(Deserialize)]
struct LineIn {
    /// Absent in lines written before versions were recorded: those are version 1.
    #[serde(default = "unversioned")]
    format: u32,
    #[serde(flatten)]
    letter: DeadLetter,
}

fn unversioned() -> u32 {
    1
}

/// Why a reading was not applied.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The lift is not in the registry (and auto-registration is off).
    UnregisteredLift,
    /// The reading's seq is older than the lift's dedup window: it cannot be told from a
    /// duplicate, so it is kept here rather than counted or dropped.
    OutsideDedupWindow,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UnregisteredLift => "unregistered_lift",
            Reason::OutsideDedupWindow => "outside_dedup_window",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Reason::UnregisteredLift => {
                "lift is not in the registry; register it, then replay this file"
            }
            Reason::OutsideDedupWindow => {
                "seq is older than the lift's dedup window and cannot be told from a duplicate"
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub reason: Reason,
    pub detail: String,
    /// The log record the reading came from.
    pub offset: u64,
    pub reading: Reading,
}

impl DeadLetter {
    /// A reading from the log record at `offset`, with the reason's standard description.
    pub fn new(reason: Reason, offset: u64, reading: Reading) -> Self {
        Self {
            reason,
            detail: reason.describe().into(),
            offset,
            reading,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DlqFile {
    pub id: String,
    pub first_offset: u64,
    pub last_offset: u64,
    pub items: u64,
    pub bytes: u64,
    pub reasons: BTreeMap<Reason, u64>,
}

/// The read side of dead letters, wherever they are kept: the API lists, reads and replays
/// through it. Files ([`DeadLetterQueue`]) in a standalone server; a cluster keeps them beside
/// the processor's checkpoints (the processor's `CheckpointStore` writes them, in the same
/// commit as the checkpoint that covers their offsets).
pub trait DeadLetters: Send + Sync {
    /// Pending (not yet replayed) batches, oldest first.
    fn list(&self) -> Result<Vec<DlqFile>>;
    /// One batch's letters; [`Error::NotFound`] for an unknown id.
    fn read(&self, id: &str) -> Result<Vec<DeadLetter>>;
    /// Takes a batch out of the pending set once its readings are back in the log.
    fn mark_replayed(&self, id: &str) -> Result<()>;
    /// (batches, bytes) pending; also refreshes [`Self::pending_bytes`].
    fn size(&self) -> (u64, u64);
    /// Bytes pending, without I/O (ingest checks it on every request). A shared store's figure
    /// is as of its last [`Self::size`] or write.
    fn pending_bytes(&self) -> u64;
}

/// `letters` as the lines of a dead-letter file: one JSON object each, its `"format"` first.
pub fn encode_lines(letters: &[DeadLetter]) -> Vec<u8> {
    let mut out = Vec::new();
    for letter in letters {
        let line = LineOut {
            format: FORMAT,
            letter,
        };
        serde_json::to_writer(&mut out, &line).expect("dead letters serialise");
        out.push(b'\n');
    }
    out
}

/// The letters in `text`, the lines of batch `id`: an unversioned line is version 1, a line
/// of a newer version is refused with the batch, line and version, never skipped.
pub fn decode_lines(id: &str, text: &str) -> Result<Vec<DeadLetter>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let unreadable = |message: String| Error::Unreadable {
            file: id.into(),
            line: i + 1,
            message,
        };
        let parsed: LineIn = serde_json::from_str(line).map_err(|e| {
            // Say what a newer release's line is, even when its fields no longer parse.
            match serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("format")?.as_u64())
            {
                Some(version) if version > u64::from(FORMAT) => unreadable(newer(version)),
                _ => unreadable(e.to_string()),
            }
        })?;
        if parsed.format > FORMAT {
            return Err(unreadable(newer(parsed.format.into())));
        }
        out.push(parsed.letter);
    }
    Ok(out)
}

/// How many letters of each reason `letters` holds.
pub fn count_reasons(letters: &[DeadLetter]) -> BTreeMap<Reason, u64> {
    let mut reasons = BTreeMap::new();
    for l in letters {
        *reasons.entry(l.reason).or_default() += 1;
    }
    reasons
}

pub struct DeadLetterQueue {
    dir: PathBuf,
    /// Bytes of pending files, kept current by every change (ingest checks it per request).
    pending_bytes: std::sync::atomic::AtomicU64,
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".ndjson")?;
    let (a, b) = stem.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn valid_id(id: &str) -> bool {
    parse_name(&format!("{id}.ndjson")).is_some() && !id.contains('/')
}

fn newer(version: u64) -> String {
    format!(
        "it is in format version {version}, which this build does not read (it reads {FORMAT}); run the release that wrote it or a newer one"
    )
}

impl DeadLetterQueue {
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(dir.join("replayed"))?;
        let dlq = Self {
            dir,
            pending_bytes: Default::default(),
        };
        dlq.recount();
        Ok(dlq)
    }

    /// Bytes of the pending (not yet replayed) files.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn recount(&self) {
        let (_, bytes) = self.size();
        self.pending_bytes
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
        metrics::gauge!("hoistway_dlq_pending_bytes").set(bytes as f64);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes one batch durably. Rewriting the same offset range replaces the file.
    pub fn write_batch(
        &self,
        first_offset: u64,
        last_offset: u64,
        items: &[DeadLetter],
    ) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let name = format!("{first_offset:020}-{last_offset:020}.ndjson");
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let mut file = File::create(&tmp)?;
        file.write_all(&encode_lines(items))?;
        file.sync_all()?;
        fs::rename(&tmp, self.dir.join(&name))?;
        File::open(&self.dir)?.sync_all()?;
        self.recount();
        Ok(())
    }

    /// Removes a batch written by a checkpoint attempt that failed (it will be written again).
    pub fn remove_batch(&self, first_offset: u64, last_offset: u64) -> Result<()> {
        let name = format!("{first_offset:020}-{last_offset:020}.ndjson");
        let removed = match fs::remove_file(self.dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        };
        self.recount();
        removed
    }

    /// Deletes batches that start at or after `offset`: written before a crash, but not covered
    /// by the checkpoint the processor restarts from, so replay will write them again.
    pub fn discard_from(&self, offset: u64) -> Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                fs::remove_file(entry.path())?;
            } else if parse_name(name).is_some_and(|(first, _)| first >= offset) {
                fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        self.recount();
        Ok(removed)
    }

    /// Pending (not yet replayed) files, oldest first.
    pub fn list(&self) -> Result<Vec<DlqFile>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some((first_offset, last_offset)) = parse_name(name) else {
                continue;
            };
            let id = name.trim_end_matches(".ndjson").to_string();
            let letters = self.read(&id)?;
            out.push(DlqFile {
                id,
                first_offset,
                last_offset,
                items: letters.len() as u64,
                bytes: entry.metadata()?.len(),
                reasons: count_reasons(&letters),
            });
        }
        out.sort_by_key(|f| f.first_offset);
        Ok(out)
    }

    pub fn read(&self, id: &str) -> Result<Vec<DeadLetter>> {
        if !valid_id(id) {
            return Err(Error::NotFound(id.into()));
        }
        let path = self.dir.join(format!("{id}.ndjson"));
        let text = fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(id.into()),
            _ => Error::Io(e),
        })?;
        decode_lines(id, &text)
    }

    /// Moves a file out of the pending set once its readings are back in the log.
    pub fn mark_replayed(&self, id: &str) -> Result<()> {
        if !valid_id(id) {
            return Err(Error::NotFound(id.into()));
        }
        let name = format!("{id}.ndjson");
        fs::rename(self.dir.join(&name), self.dir.join("replayed").join(&name)).map_err(
            |e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::NotFound(id.into()),
                _ => Error::Io(e),
            },
        )?;
        File::open(&self.dir)?.sync_all()?;
        self.recount();
        Ok(())
    }

    /// (files, bytes) pending.
    pub fn size(&self) -> (u64, u64) {
        let mut files = 0;
        let mut bytes = 0;
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if e.file_name().to_str().and_then(parse_name).is_some() {
                    files += 1;
                    bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                }
            }
        }
        self.pending_bytes
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
        (files, bytes)
    }
}

impl DeadLetters for DeadLetterQueue {
    fn list(&self) -> Result<Vec<DlqFile>> {
        DeadLetterQueue::list(self)
    }

    fn read(&self, id: &str) -> Result<Vec<DeadLetter>> {
        DeadLetterQueue::read(self, id)
    }

    fn mark_replayed(&self, id: &str) -> Result<()> {
        DeadLetterQueue::mark_replayed(self, id)
    }

    fn size(&self) -> (u64, u64) {
        DeadLetterQueue::size(self)
    }

    fn pending_bytes(&self) -> u64 {
        DeadLetterQueue::pending_bytes(self)
    }
}

#[cfg(test)]
mod tests {
    use hoistway_model::{Direction, DoorState, LiftId};

    use super::*;

    fn letter(seq: u64) -> DeadLetter {
        DeadLetter {
            reason: Reason::UnregisteredLift,
            detail: Reason::UnregisteredLift.describe().into(),
            offset: 3,
            reading: Reading {
                lift_id: LiftId::new("L-9").unwrap(),
                epoch: 1,
                seq,
                ts_us: 1_764_400_000_000_000,
                received_us: 1_764_400_000_000_000,
                floor: 1,
                direction: Direction::Idle,
                door: DoorState::Closed,
                load_kg: None,
                speed_mps: None,
                motor_temp_c: None,
                vibration_mm_s: None,
                trips: 0,
                door_cycles: 0,
                faults: vec![],
                events: vec![],
                extra: Default::default(),
            },
        }
    }

    #[test]
    fn lines_carry_their_version_and_unversioned_lines_are_read_as_version_1() {
        let dir = tempfile::tempdir().unwrap();
        let dlq = DeadLetterQueue::open(dir.path()).unwrap();
        dlq.write_batch(3, 3, &[letter(1)]).unwrap();
        let id = format!("{:020}-{:020}", 3, 3);
        let text = fs::read_to_string(dir.path().join(format!("{id}.ndjson"))).unwrap();
        assert!(text.starts_with("{\"format\":1,\"reason\""), "{text}");
        assert_eq!(dlq.read(&id).unwrap(), vec![letter(1)]);

        // what releases before versions wrote: the dead letter alone
        let old = format!(
            "{}\n{}\n",
            serde_json::to_string(&letter(1)).unwrap(),
            serde_json::to_string(&letter(2)).unwrap()
        );
        fs::write(dir.path().join(format!("{id}.ndjson")), old).unwrap();
        assert_eq!(dlq.read(&id).unwrap(), vec![letter(1), letter(2)]);
    }

    #[test]
    fn a_newer_line_is_refused_with_file_line_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let dlq = DeadLetterQueue::open(dir.path()).unwrap();
        let id = format!("{:020}-{:020}", 5, 9);
        let current = serde_json::to_string(&LineOut {
            format: FORMAT,
            letter: &letter(1),
        })
        .unwrap();
        let newer = r#"{"format":2,"why":"a field this build does not know"}"#;
        fs::write(
            dir.path().join(format!("{id}.ndjson")),
            format!("{current}\n{newer}\n"),
        )
        .unwrap();
        let message = dlq.read(&id).unwrap_err().to_string();
        assert!(
            message.contains(&id)
                && message.contains("line 2")
                && message.contains("format version 2"),
            "{message}"
        );
    }
}
