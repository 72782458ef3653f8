//! A log record: the accepted readings of one request (or of one dead-letter replay).
//!
//! ```text
//! version u8 (=1) | flags u8 (bit 0: replay) | count u32 LE | count × (len u32 LE | postcard(Reading))
//! ```
//! Readings are encoded one by one, on the request's task, so the single sequencer only copies
//! bytes of the readings it keeps.
//!
//! Version 1 is postcard of today's [`Reading`], pinned by `tests/golden/record-v1.hex`. A change
//! to `Reading` changes these bytes and fails that test: bump [`VERSION`], keep a frozen copy of
//! the old `Reading` to decode version 1 records, and add a golden file for the new version, so
//! records written by an older release are still read after an upgrade. Version 0 is never
//! written: a payload of zero bytes is a placeholder left by `hoistway log repair`.

use bytes::{BufMut, Bytes, BytesMut};
use hoistway_model::Reading;

/// The record format written (and the newest read).
pub const VERSION: u8 = 1;
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
    #[error(
        "log record is in format version {0}, which this build does not read (it reads {VERSION}); run the release that wrote it or a newer one"
    )]
    Version(u8),
    /// A placeholder left by `hoistway log repair` where a damaged record was.
    #[error("log record was replaced by a placeholder by `hoistway log repair`")]
    Removed,
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
    if hoistway_log::is_placeholder(bytes) {
        return Err(RecordError::Removed);
    }
    let [version, flags, rest @ ..] = bytes else {
        return Err(RecordError::Truncated);
    };
    if *version != VERSION {
        return Err(RecordError::Version(*version));
    }
    let (count, mut rest) = split_u32(rest)?;
    // Each reading takes at least its 4-byte length: a damaged count cannot reserve more.
    let mut readings = Vec::with_capacity((count as usize).min(rest.len() / 4));
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use hoistway_model::{Direction, DoorState, EventKind, LiftId};

    use super::*;

    fn sample() -> LogBatch {
        let full = Reading {
            lift_id: LiftId::new("L-000042").unwrap(),
            epoch: 1_764_000_000,
            seq: 7,
            ts_us: 1_764_400_000_123_456,
            received_us: 1_764_400_000_223_456,
            floor: -2,
            direction: Direction::Up,
            door: DoorState::Obstructed,
            load_kg: Some(412.5),
            speed_mps: Some(1.75),
            motor_temp_c: Some(61.25),
            vibration_mm_s: Some(0.5),
            trips: 3,
            door_cycles: 4,
            faults: vec!["E17".into(), "F2".into()],
            events: vec![EventKind::Entrapment, EventKind::Startup],
            extra: BTreeMap::from([("brake_wear_pct".to_string(), 12.5)]),
        };
        let bare = Reading {
            lift_id: LiftId::new("L-000043").unwrap(),
            seq: 1,
            floor: 0,
            direction: Direction::Idle,
            door: DoorState::Closed,
            load_kg: None,
            speed_mps: None,
            motor_temp_c: None,
            vibration_mm_s: None,
            trips: 0,
            door_cycles: 0,
            faults: Vec::new(),
            events: Vec::new(),
            extra: BTreeMap::new(),
            ..full.clone()
        };
        LogBatch {
            replay: true,
            readings: vec![full, bare],
        }
    }

    fn encode(batch: &LogBatch) -> Bytes {
        let readings: Vec<Bytes> = batch.readings.iter().map(encode_reading).collect();
        encode_record(batch.replay, readings.iter().map(|r| r.as_ref()))
    }

    fn hex(bytes: &[u8]) -> String {
        bytes
            .chunks(16)
            .map(|c| c.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
            .collect()
    }

    fn unhex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    /// Records written by every earlier release must stay readable: see the module docs.
    #[test]
    fn version_1_matches_its_golden_file_both_ways() {
        let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/record-v1.hex");
        let encoded = encode(&sample());
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(golden, hex(&encoded)).unwrap();
        }
        let stored = unhex(&std::fs::read_to_string(golden).unwrap());
        assert_eq!(
            hex(&encoded),
            hex(&stored),
            "the record format changed: bump VERSION and keep a decoder for version 1"
        );
        assert_eq!(decode_record(&stored).unwrap(), sample());
    }

    #[test]
    fn newer_versions_and_placeholders_are_named_not_skipped() {
        let mut newer = encode(&sample()).to_vec();
        newer[0] = VERSION + 1;
        let err = decode_record(&newer).unwrap_err();
        assert!(matches!(err, RecordError::Version(v) if v == VERSION + 1));
        assert!(err.to_string().contains("format version 2"), "{err}");
        assert!(matches!(
            decode_record(&[0, 0, 0]),
            Err(RecordError::Removed)
        ));
        assert!(matches!(decode_record(&[]), Err(RecordError::Truncated)));
        // a damaged count (found by fuzzing): refused, without reserving room for it first
        let huge = [VERSION, 0, 0xff, 0xff, 0xff, 0x7f, 0, 0];
        assert!(matches!(decode_record(&huge), Err(RecordError::Truncated)));
    }
}
