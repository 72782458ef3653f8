//! Fuzz targets: every decoder that reads bytes Hoistway did not just write itself — request
//! bodies from the network, and log segments, log records, checkpoints and manifests from disk —
//! and the SQL guard that decides which statements a reader may run.
//!
//! In: arbitrary bytes. Out: nothing; a target panics only when a decoder breaks a property it
//! promises (it must never panic on its own, and what it accepts must survive a round trip).
//! The AFL harness in `fuzz/` calls these functions; `tests/replay.rs` runs every committed
//! corpus input and every past crash through them in the test suite (docs/testing.md).

#[cfg(feature = "sql")]
mod sql;
#[cfg(feature = "sql")]
pub use sql::sql_guard;

use bytes::Bytes;
use hoistway_ingest::record::{decode_record, encode_reading, encode_record};
use hoistway_ingest::{BodyFormat, DecodeLimits, LogBatch, decode_body};

/// A fuzz target: takes any bytes, panics only when a decoder breaks its promise.
pub type Target = fn(&[u8]);

/// The targets by name, as the corpus folders under `fuzz/corpus/` are named.
pub const TARGETS: &[(&str, Target)] = &[
    ("telemetry", telemetry),
    ("log_record", log_record),
    ("log_segment", log_segment),
    ("checkpoint", checkpoint),
    #[cfg(feature = "store")]
    ("manifest", manifest),
    #[cfg(feature = "sql")]
    ("sql_guard", sql_guard),
];

/// 2026-11-29T00:00:00Z: readings are validated against a fixed "now".
const NOW_US: i64 = 1_795_910_400_000_000;

/// A telemetry request body. The first byte picks the request's shape: bit 0 NDJSON (else
/// JSON), bit 1 gzip. Accepted readings must make a log record that decodes to them.
pub fn telemetry(data: &[u8]) {
    let Some((&shape, body)) = data.split_first() else {
        return;
    };
    let format = if shape & 1 == 0 {
        BodyFormat::Json
    } else {
        BodyFormat::NdJson
    };
    let limits = DecodeLimits {
        max_decoded_bytes: 1 << 20,
        max_items: 1000,
    };
    let Ok(decoded) = decode_body(body, shape & 2 != 0, format, &limits, NOW_US) else {
        return;
    };
    assert!(decoded.readings.len() + decoded.rejected.len() <= limits.max_items);
    let record = encode(&LogBatch {
        replay: false,
        readings: decoded.readings.clone(),
    });
    let back = decode_record(&record).expect("a record of accepted readings decodes");
    assert_eq!(back.readings.len(), decoded.readings.len());
}

fn encode(batch: &LogBatch) -> Bytes {
    let readings: Vec<Bytes> = batch.readings.iter().map(encode_reading).collect();
    encode_record(batch.replay, readings.iter().map(|r| r.as_ref()))
}

/// A log record's payload. What decodes must encode to bytes that decode to the same encoding.
pub fn log_record(data: &[u8]) {
    let Ok(batch) = decode_record(data) else {
        return;
    };
    let once = encode(&batch);
    let again = decode_record(&once).expect("an encoded record decodes");
    assert_eq!(encode(&again), once);
}

/// A log segment file as recovery scans it. The valid prefix must scan to the same entries.
pub fn log_segment(data: &[u8]) {
    let Some(scan) = hoistway_log::scan_segment(data) else {
        return;
    };
    assert!(scan.valid_len <= data.len());
    let prefix = hoistway_log::scan_segment(&data[..scan.valid_len])
        .expect("the valid prefix of a segment is a segment");
    assert_eq!(prefix.entries, scan.entries);
    assert_eq!(prefix.valid_len, scan.valid_len);
}

/// A processor checkpoint file. What decodes must encode to a checkpoint that decodes alike.
pub fn checkpoint(data: &[u8]) {
    use hoistway_processor::checkpoint::{decode, encode};
    let Ok(state) = decode(data) else {
        return;
    };
    let bytes = encode(&state).expect("a decoded state encodes");
    let again = decode(&bytes).expect("an encoded checkpoint decodes");
    assert_eq!(again.offset, state.offset);
    assert_eq!(again.lifts.len(), state.lifts.len());
}

/// A storage manifest. What decodes must survive a JSON round trip unchanged.
#[cfg(feature = "store")]
pub fn manifest(data: &[u8]) {
    use hoistway_store::Manifest;
    let Ok(manifest) = Manifest::decode(data) else {
        return;
    };
    let json = serde_json::to_vec(&manifest).expect("a manifest serialises");
    assert_eq!(
        Manifest::decode(&json).expect("its own JSON decodes"),
        manifest
    );
}
