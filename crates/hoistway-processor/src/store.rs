//! Where a partition's checkpoints and dead letters live: the seam between the processor and
//! its durable state.
//!
//! A processor owns a partition from [`CheckpointStore::claim`] on, for as long as it renews its
//! lease ([`CheckpointStore::renew`]): a claim is granted only when no other holder's lease runs,
//! and it raises the partition's *epoch*, so a commit by an earlier owner (one paused, cut off, or
//! simply still running elsewhere) fails as [`StoreError::Fenced`] and nothing it wrote after the
//! claim is ever kept. The lease decides who should process (a dead holder's lapses within its
//! time to live); the epoch makes sure only that one does. [`CheckpointStore::commit`] writes a
//! checkpoint as one unit: the state with its offset and the dead letters of the records it
//! covers, all or nothing, and only while the committer's epoch is the partition's.
//!
//! [`FileCheckpointStore`] is the embedded one (`state/checkpoint.bin` and the dead-letter
//! files of a data dir: one process, one partition); `hoistway-postgres` has the one several
//! processors share. [`crate::conformance`] is the suite both pass.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hoistway_dlq::{DeadLetter, DeadLetterQueue};
use hoistway_log::Offset;

use crate::checkpoint;
use crate::state::FleetState;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another processor claimed the partition since this one did: it must stop processing it.
    #[error(
        "partition {partition} was claimed by another processor (epoch {current}; this one held {held}): this processor no longer owns it and stops"
    )]
    Fenced {
        partition: u16,
        held: u64,
        current: u64,
    },
    /// The store cannot be reached (a shared one): worth retrying.
    #[error("checkpoint storage is unavailable: {0}")]
    Unavailable(String),
    /// A stored checkpoint this build cannot read.
    #[error("{0}")]
    Unreadable(String),
    #[error("checkpoint storage failed: {0}")]
    Failed(String),
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        Self::Failed(e.to_string())
    }
}

impl From<hoistway_dlq::Error> for StoreError {
    fn from(e: hoistway_dlq::Error) -> Self {
        match e {
            hoistway_dlq::Error::Unavailable(m) => Self::Unavailable(m),
            other => Self::Failed(other.to_string()),
        }
    }
}

/// Who asks for a partition, and for how long its lease runs without a renewal.
#[derive(Debug, Clone)]
pub struct Lease {
    /// Names the process (host and pid), for the others' messages.
    pub holder: String,
    pub ttl: std::time::Duration,
}

/// The answer to a claim.
#[derive(Debug)]
pub enum Claimed {
    /// The partition is this claimant's.
    Granted(Claim),
    /// Another holder's lease still runs.
    Held {
        holder: String,
        /// Until it lapses unless renewed.
        remaining: std::time::Duration,
    },
}

/// What a claim hands the new owner.
#[derive(Debug)]
pub struct Claim {
    /// The partition's epoch from now on; every commit carries it.
    pub epoch: u64,
    /// The last checkpoint committed (by any owner), if any.
    pub state: Option<FleetState>,
}

/// One checkpoint of one partition.
#[derive(Debug, Clone, Copy)]
pub struct Commit<'a> {
    pub partition: u16,
    /// The committer's epoch (from its claim).
    pub epoch: u64,
    /// The state covers every record before this offset.
    pub offset: Offset,
    /// The state, encoded by [`checkpoint::encode_version`].
    pub state: &'a [u8],
    /// Dead letters of the records from `.0` to `.1` (both included), if any.
    pub dead: Option<(Offset, Offset, &'a [DeadLetter])>,
}

/// A partition's checkpoints and dead letters. Blocking: call it off the async runtime.
pub trait CheckpointStore: Send + Sync {
    /// Takes `partition` for `lease.ttl`, unless another holder's lease still runs: raises its
    /// epoch, drops what an unfinished commit left behind, and returns the new epoch with the
    /// last checkpoint.
    fn claim(&self, partition: u16, lease: &Lease) -> Result<Claimed, StoreError>;

    /// Extends the lease of the claim that got `epoch` by `ttl` from now; [`StoreError::Fenced`]
    /// once another claim took the partition.
    fn renew(&self, partition: u16, epoch: u64, ttl: std::time::Duration)
    -> Result<(), StoreError>;

    /// Ends the lease of the claim that got `epoch` (a clean stop): the next claim is granted
    /// at once. Nothing happens if another claim came since.
    fn release(&self, partition: u16, epoch: u64) -> Result<(), StoreError>;

    /// Writes `commit` as one unit, unless another claim came after the committer's
    /// ([`StoreError::Fenced`]); a failed commit leaves the previous checkpoint as it was.
    fn commit(&self, commit: &Commit<'_>) -> Result<(), StoreError>;

    /// The last checkpoint's state, for a reader that does not hold the partition (a query
    /// node): `None` when none was committed yet, or when the last one is at offset `known`
    /// (the one the reader has), so polling moves the state only when it changed. Claims
    /// nothing and fences no one.
    fn latest(
        &self,
        partition: u16,
        known: Option<Offset>,
    ) -> Result<Option<FleetState>, StoreError>;

    /// Where it keeps them, for logs and messages.
    fn describe(&self) -> String;
}

/// A data dir's checkpoint file and dead-letter files: one processor, partition 0.
///
/// The epoch lives in memory and every claim is granted: the data dir's lock already keeps a
/// second process out, so fencing here guards against a second claim within the process.
pub struct FileCheckpointStore {
    dir: PathBuf,
    dlq: Arc<DeadLetterQueue>,
    epoch: AtomicU64,
}

impl FileCheckpointStore {
    /// Checkpoints in `state_dir` (created if missing), dead letters in `dlq`.
    pub fn new(state_dir: impl Into<PathBuf>, dlq: Arc<DeadLetterQueue>) -> Self {
        Self {
            dir: state_dir.into(),
            dlq,
            epoch: AtomicU64::new(0),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn check_epoch(&self, partition: u16, held: u64) -> Result<(), StoreError> {
        Self::only_partition_0(partition)?;
        let current = self.epoch.load(Ordering::SeqCst);
        if held == current {
            Ok(())
        } else {
            Err(StoreError::Fenced {
                partition,
                held,
                current,
            })
        }
    }

    fn read(&self) -> Result<Option<FleetState>, StoreError> {
        checkpoint::read(&self.dir).map_err(|e| match e {
            crate::Error::Checkpoint(message) => StoreError::Unreadable(message),
            other => StoreError::Failed(other.to_string()),
        })
    }

    fn only_partition_0(partition: u16) -> Result<(), StoreError> {
        if partition == 0 {
            Ok(())
        } else {
            Err(StoreError::Failed(format!(
                "a data dir holds partition 0 only (standalone), not partition {partition}"
            )))
        }
    }
}

impl CheckpointStore for FileCheckpointStore {
    fn claim(&self, partition: u16, _lease: &Lease) -> Result<Claimed, StoreError> {
        Self::only_partition_0(partition)?;
        std::fs::create_dir_all(&self.dir)?;
        let state = self.read()?;
        // Dead letters are written before the checkpoint that covers them: any from its
        // offset on belong to a commit that did not finish, and replay writes them again.
        let discarded = self
            .dlq
            .discard_from(state.as_ref().map_or(0, |s| s.offset))?;
        if discarded > 0 {
            tracing::info!(
                files = discarded,
                "dead-letter files of an unfinished checkpoint removed"
            );
        }
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Claimed::Granted(Claim { epoch, state }))
    }

    fn renew(
        &self,
        partition: u16,
        epoch: u64,
        _ttl: std::time::Duration,
    ) -> Result<(), StoreError> {
        self.check_epoch(partition, epoch)
    }

    fn release(&self, _partition: u16, _epoch: u64) -> Result<(), StoreError> {
        Ok(())
    }

    fn commit(&self, commit: &Commit<'_>) -> Result<(), StoreError> {
        self.check_epoch(commit.partition, commit.epoch)?;
        if let Some((first, last, letters)) = commit.dead {
            self.dlq.write_batch(first, last, letters)?;
        }
        if let Err(e) = checkpoint::write(&self.dir, commit.state) {
            if let Some((first, last, _)) = commit.dead
                && let Err(e) = self.dlq.remove_batch(first, last)
            {
                // Left behind, it is removed at the next claim (its offsets are uncovered).
                tracing::warn!(error = %e, "cannot remove the dead letters of a failed checkpoint");
            }
            return Err(StoreError::Failed(e.to_string()));
        }
        Ok(())
    }

    fn latest(
        &self,
        partition: u16,
        known: Option<Offset>,
    ) -> Result<Option<FleetState>, StoreError> {
        Self::only_partition_0(partition)?;
        let state = self.read()?;
        Ok(state.filter(|s| Some(s.offset) != known))
    }

    fn describe(&self) -> String {
        format!("files in {}", self.dir.display())
    }
}
