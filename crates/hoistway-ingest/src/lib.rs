//! Ingest: from an HTTP body to durable, deduplicated log records.
//!
//! In: request bodies (JSON object, JSON array, NDJSON; optionally gzip) from lifts.
//! Out: [`Reading`]s appended to a [`hoistway_log::Log`] as [`LogBatch`] records, and, per
//! request, how many were accepted, how many were duplicates and which items were rejected why.
//!
//! [`decode`] validates and sanitises (pure, runs on the request's own task). [`Sequencer`] is the
//! single writer in front of the log: it filters duplicates against the *head* dedup index (what
//! has been appended, processed or not), appends, and answers each request once its records are
//! durable — many requests share one fsync. It does not apply readings to state; the processor
//! does, and its own deduplication is the authoritative one.

pub mod decode;
pub mod record;
mod sequencer;

pub use decode::{
    BodyError, BodyFormat, DecodeLimits, Decoded, Rejection, WireReading as TelemetryReading,
    decode_body,
};
pub use record::{LogBatch, RecordError};
pub use sequencer::{
    DurableRecord, Feed, Ingest, IngestError, IngestOutcome, Sequencer, SequencerConfig, feed,
};

pub use hoistway_model::Reading;
