//! The durable log between ingest and processing.
//!
//! In: opaque records appended by ingest (one record = the accepted readings of one request).
//! Out: the same records, in the same order, to consumers that read from an offset.
//!
//! [`Log`] is the seam: the embedded [`FileLog`] (segment files with CRC32C-checked entries and
//! group-commit fsync) is the default, and a distributed log (NATS JetStream) implements the same
//! contract. This crate does not know what a reading is, does not deduplicate and does not decide
//! when a record may be dropped — consumers tell it with [`Log::truncate_before`].

pub mod conformance;
mod file;
mod repair;
mod segment;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use file::{FileLog, FileLogConfig, LogCopy, LogPin, RecoveryReport, cut_log};
pub use repair::{RepairReport, is_placeholder, repair};
pub use segment::{
    ENTRY_HEADER_LEN, SEGMENT_HEADER_LEN, SEGMENT_MAGIC, SEGMENT_VERSION, SEGMENT_VERSION_MIN,
    SegmentScan, scan_segment,
};

/// Position of a record in the log: records are numbered 0, 1, 2, … for the log's lifetime.
pub type Offset = u64;

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub offset: Offset,
    pub payload: Bytes,
}

/// A stream a log takes records in from, as last seen: an edge region's, whose lifts' readings
/// wait there while the region is out of reach and arrive once it is back.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// The edge region.
    pub region: String,
    /// Its messages not yet taken in, as last reported (while out of reach, the figure from
    /// before).
    pub backlog: u64,
    /// Time since the last contact with it; `None`: none yet.
    pub last_contact: Option<Duration>,
}

impl Source {
    /// Why this region is out of contact, if it has been for longer than `quiet` (or never
    /// was in contact): readings it took wait in its stream and arrive when it is back.
    pub fn out_of_contact(&self, quiet: Duration) -> Option<String> {
        match self.last_contact {
            None => Some(format!(
                "edge region {}: no contact yet; readings it takes wait in its stream",
                self.region
            )),
            Some(ago) if ago > quiet => Some(format!(
                "edge region {}: out of contact for {} s; readings it took wait in its stream and arrive when it is back",
                self.region,
                ago.as_secs()
            )),
            Some(_) => None,
        }
    }

    /// Why readings of this region's lifts may still be on their way, if they may: it is out
    /// of contact, or catching up.
    pub fn holding_back(&self, quiet: Duration) -> Option<String> {
        self.out_of_contact(quiet).or_else(|| {
            (self.backlog > 0).then(|| {
                format!(
                    "edge region {}: {} messages still to take in",
                    self.region, self.backlog
                )
            })
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing failed (e.g. the disk is full); nothing of this append is in the log and the
    /// log still accepts appends.
    #[error("log write failed: {0}")]
    Write(#[source] std::io::Error),
    /// An fsync failed or the log could not restore a clean tail: it accepts nothing more until
    /// restarted, because what the disk holds is no longer known.
    #[error("log is poisoned and accepts no more appends: {0}")]
    Poisoned(String),
    /// A sealed part of the log failed its checksum: it is never served.
    #[error("log is corrupt at offset {offset}: {reason}")]
    Corrupt { offset: Offset, reason: String },
    /// A file written in a format this build does not read (by a newer release): refused, never
    /// skipped.
    #[error(
        "{file} is in log format version {version}, which this build does not read (it reads {reads}); run the release that wrote it or a newer one"
    )]
    Format {
        file: String,
        version: u32,
        reads: String,
    },
    #[error("offset {offset} was truncated; the log starts at {start}")]
    Truncated { offset: Offset, start: Offset },
    /// A caller waited for records that were never appended.
    #[error("offset {offset} is beyond the end of the log ({end})")]
    BeyondEnd { offset: Offset, end: Offset },
    #[error("record of {0} bytes is larger than the log's record limit")]
    RecordTooLarge(usize),
    #[error("log i/o failed: {0}")]
    Io(#[from] std::io::Error),
    /// The log's servers cannot be reached or did not answer in time (a distributed log):
    /// nothing is known to be wrong with the data; the caller tries again.
    #[error("the log's servers are unavailable: {0}")]
    Unavailable(String),
}

impl Error {
    /// Whether the caller may try again later (the log itself is healthy).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Write(_) | Error::Unavailable(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An append-only, ordered, durable log of records: one partition's.
///
/// Contract, for every implementation (checked by the conformance suite in `tests/`), which
/// holds with one writer or several (processes appending to the same partition):
/// - [`append`](Log::append) returns once every record of the call is on stable storage (it
///   survives a process crash or power loss and is returned by reads after restart), with the
///   offset each got. Offsets are known only then, never promised earlier: several writers'
///   records interleave. One call's offsets increase in the order of its records; concurrent
///   calls share one sync (group commit). On error none of the call's records may be assumed
///   written, and a caller that retries may find the first attempt's records in the log too
///   (readers deduplicate: the processor's index does).
/// - [`read`](Log::read) returns only durable records, each exactly as appended, in offset order,
///   never a corrupt one (a checksum failure is an error, not data). Offsets increase; a reader
///   never assumes they are consecutive.
/// - [`truncate_before(o)`](Log::truncate_before) allows records below `o` to be deleted; the
///   log may keep more. Offsets are never reused.
/// - [`start`](Log::start) and [`durable_end`](Log::durable_end) are this handle's view: other
///   writers' appends (and truncations) show once [`refresh`](Log::refresh) or
///   [`wait_for_data`](Log::wait_for_data) has looked, or a read went past them.
#[async_trait]
pub trait Log: Send + Sync + 'static {
    /// Appends `records` and returns, once they are durable, the offset of each.
    async fn append(&self, records: Vec<Bytes>) -> Result<Vec<Offset>>;
    /// Up to `max_bytes` (at least one record if any) durable records starting at `from`.
    async fn read(&self, from: Offset, max_bytes: usize) -> Result<Vec<Record>>;
    /// Resolves when the durable end passes `offset` or after `timeout`, whichever is first.
    async fn wait_for_data(&self, offset: Offset, timeout: Duration);
    async fn truncate_before(&self, offset: Offset) -> Result<()>;
    /// Brings [`start`](Log::start) and [`durable_end`](Log::durable_end) up to what every
    /// writer did so far (a log with one writer is always current).
    async fn refresh(&self) -> Result<()> {
        Ok(())
    }
    /// First offset still held.
    fn start(&self) -> Offset;
    /// One past the last durable record.
    fn durable_end(&self) -> Offset;
    /// Bytes the log occupies on its storage.
    fn size_bytes(&self) -> u64;
    /// Why the log refuses appends, if it does.
    fn poisoned(&self) -> Option<String>;
    /// Why appends fail for now though nothing is wrong with the log (a distributed log's
    /// servers out of reach), if they do: unlike [`poisoned`](Log::poisoned), it passes.
    fn unavailable(&self) -> Option<String> {
        None
    }
    /// Why what this log acknowledges might not survive a failure it should (a replicated log
    /// on too few replicas, a server release with known durability bugs), if so.
    fn durability_unverified(&self) -> Option<String> {
        None
    }
    /// The streams this log takes records in from (edge regions), as last seen.
    fn sources(&self) -> Vec<Source> {
        Vec::new()
    }
    /// Log entries from `from` to the durable end: records for a log with consecutive offsets,
    /// messages (appends) for one that packs an append's records into a message.
    fn entries_behind(&self, from: Offset) -> u64 {
        self.durable_end().saturating_sub(from)
    }
}
