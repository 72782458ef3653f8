//! A log record: the accepted readings of one request (or of one dead-letter replay).
//!
//! ```text
//! version u8 (=1) | flags u8 (bit 0: replay) | count u32 LE | count × (len u32 LE | postcard(Reading))
//! ```
//! Readings are encoded one by one, on the request's task, so the single sequencer only copies
//! bytes of the readings it keeps.

use bytes::{BufMut, Bytes, BytesMut};
use hoistway_model::Reading;

const VERSION: u8 = 1;
const FLAG_REPLAY: u8 = 1;

#[derive(Debug, Clone, PartialEq)]
pub struct LogBatch {
    /// Sent again from the dead-letter queue: skips the head dedup index, so only the
    /// processor's decides.
    pub replay: bool,
    pub readings: Vec<Reading>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("log record is truncated")]
    Truncated,
    #[error("log record has unknown version {0}")]
    Version(u8),
    #[error("log record holds an undecodable reading: {0}")]
    Reading(#[from] postcard::Error),
}

pub fn encode_reading(r: &Reading) -> Bytes {
    Bytes::from(postcard::to_stdvec(r).expect("a reading always serialises"))
}

pub fn encode_record<'a>(replay: bool, readings: impl ExactSizeIterator<Item = &'a [u8]>) -> Bytes {
    let mut out = BytesMut::with_capacity(6 + readings.len() * 128);
    out.put_u8(VERSION);
    out.put_u8(if replay { FLAG_REPLAY } else { 0 });
    out.put_u32_le(readings.len() as u32);
    for r in readings {
        out.put_u32_le(r.len() as u32);
        out.put_slice(r);
    }
    out.freeze()
}

pub fn decode_record(bytes: &[u8]) -> Result<LogBatch, RecordError> {
    let [version, flags, rest @ ..] = bytes else {
        return Err(RecordError::Truncated);
    };
    if *version != VERSION {
        return Err(RecordError::Version(*version));
    }
    let (count, mut rest) = split_u32(rest)?;
    let mut readings = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let (len, tail) = split_u32(rest)?;
        let (item, tail) = tail
            .split_at_checked(len as usize)
            .ok_or(RecordError::Truncated)?;
        readings.push(postcard::from_bytes(item)?);
        rest = tail;
    }
    Ok(LogBatch {
        replay: flags & FLAG_REPLAY != 0,
        readings,
    })
}

fn split_u32(b: &[u8]) -> Result<(u32, &[u8]), RecordError> {
    let (head, tail) = b.split_at_checked(4).ok_or(RecordError::Truncated)?;
    Ok((u32::from_le_bytes(head.try_into().unwrap()), tail))
}
