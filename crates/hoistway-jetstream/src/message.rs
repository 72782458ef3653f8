//! The payload of one JetStream message: several log records, each with its checksum.
//!
//! ```text
//! version u8 (= 1) | count u32 LE (≥ 1) | count × ( len u32 LE | crc32c u32 LE | len bytes )
//! ```
//!
//! One message carries one append's records (or a share of them, when they exceed the server's
//! message size), so that a stream that syncs every write syncs once per group, not per record.
//! The checksum travels end to end: a record damaged anywhere between the ingest node and the
//! processor is refused, never applied. Pinned by `tests/golden/message-v1.hex`.

use bytes::{BufMut, Bytes, BytesMut};

/// The message format this build writes.
pub const MESSAGE_VERSION: u8 = 1;
/// Bytes a message adds before its records.
pub const MESSAGE_HEADER_LEN: usize = 5;
/// Bytes a message adds per record.
pub const RECORD_HEADER_LEN: usize = 8;
/// Records per message: an offset keeps 16 bits for a record's place in its message.
pub const MAX_RECORDS: usize = u16::MAX as usize;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MessageError {
    #[error("message format version {0}, which this build does not read (it reads 1)")]
    Version(u8),
    #[error("record {index}: {reason}")]
    Corrupt { index: usize, reason: String },
}

/// The payload of a message holding `records` (at most [`MAX_RECORDS`]).
pub fn encode(records: &[Bytes]) -> Bytes {
    debug_assert!(!records.is_empty() && records.len() <= MAX_RECORDS);
    let len = MESSAGE_HEADER_LEN
        + records
            .iter()
            .map(|r| RECORD_HEADER_LEN + r.len())
            .sum::<usize>();
    let mut out = BytesMut::with_capacity(len);
    out.put_u8(MESSAGE_VERSION);
    out.put_u32_le(records.len() as u32);
    for r in records {
        out.put_u32_le(r.len() as u32);
        out.put_u32_le(crc32c::crc32c(r));
        out.put_slice(r);
    }
    out.freeze()
}

/// How many records a message holds, read off its header only.
pub fn count(payload: &[u8]) -> Result<usize, MessageError> {
    match payload.first() {
        None => return Err(corrupt(0, "empty message")),
        Some(&MESSAGE_VERSION) => {}
        Some(&v) => return Err(MessageError::Version(v)),
    }
    let n = payload
        .get(1..MESSAGE_HEADER_LEN)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or_else(|| corrupt(0, "truncated message header"))?;
    if n == 0 || n > MAX_RECORDS {
        return Err(corrupt(0, &format!("a message of {n} records")));
    }
    Ok(n)
}

/// The records of a message, each a slice of `payload`, checked against its checksum.
pub fn decode(payload: &Bytes) -> Result<Vec<Bytes>, MessageError> {
    let n = count(payload)?;
    let mut out = Vec::with_capacity(n);
    let mut at = MESSAGE_HEADER_LEN;
    for index in 0..n {
        let header = payload
            .get(at..at + RECORD_HEADER_LEN)
            .ok_or_else(|| corrupt(index, "truncated record header"))?;
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let from = at + RECORD_HEADER_LEN;
        if payload.len() - from < len {
            return Err(corrupt(index, "record runs past the message"));
        }
        let record = payload.slice(from..from + len);
        if crc32c::crc32c(&record) != crc {
            return Err(corrupt(index, "checksum mismatch"));
        }
        out.push(record);
        at = from + len;
    }
    if at != payload.len() {
        return Err(corrupt(n, "bytes after the last record"));
    }
    Ok(out)
}

fn corrupt(index: usize, reason: &str) -> MessageError {
    MessageError::Corrupt {
        index,
        reason: reason.to_owned(),
    }
}

/// Splits `records` into messages of at most `max_bytes` and [`MAX_RECORDS`] each, in order.
/// A record that cannot fit a message alone is an error (its length).
pub fn split(records: &[Bytes], max_bytes: usize) -> Result<Vec<&[Bytes]>, usize> {
    let mut out = Vec::new();
    let mut first = 0;
    let mut size = MESSAGE_HEADER_LEN;
    for (i, r) in records.iter().enumerate() {
        let add = RECORD_HEADER_LEN + r.len();
        if MESSAGE_HEADER_LEN + add > max_bytes {
            return Err(r.len());
        }
        if i > first && (size + add > max_bytes || i - first == MAX_RECORDS) {
            out.push(&records[first..i]);
            first = i;
            size = MESSAGE_HEADER_LEN;
        }
        size += add;
    }
    if first < records.len() {
        out.push(&records[first..]);
    }
    Ok(out)
}
