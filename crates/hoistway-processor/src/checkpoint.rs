//! The checkpoint file: fleet state together with the log offset it reflects.
//!
//! ```text
//! magic "HWCKPT\0\0" | version u32 LE | crc32c(body) u32 LE | body length u64 LE | body
//! ```
//! Written to a temporary file, fsync'd, renamed over `checkpoint.bin`, directory fsync'd: a crash
//! leaves either the old or the new checkpoint, never a mix.
//!
//! Bodies (postcard):
//! - version 1: `offset u64, lifts map<LiftId, LiftState>`;
//! - version 2: `partitions u16, offsets [(partition u16, offset u64)], lifts` — the partition
//!   count of the deployment (see [`hoistway_model::partition`]) and one log offset per
//!   partition the state covers. A standalone server runs partition 0 of 1; in a cluster of N
//!   partitions each partition's processor writes its own checkpoint, partition `p` of N.
//!
//! Each version is pinned by `tests/golden/checkpoint-v{N}.hex`: a change to [`FleetState`] (or
//! to the model types in it) fails those tests. Then bump [`VERSION`] and keep a decoder for the
//! old body, so a data dir of an older release still opens.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use std::collections::HashMap;

use hoistway_log::Offset;
use hoistway_model::LiftId;
use hoistway_model::partition::STANDALONE_PARTITIONS;
use serde::{Deserialize, Serialize};

use crate::state::{FleetState, LiftState};
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"HWCKPT\0\0";
/// The newest checkpoint format (the default one written).
pub const VERSION: u32 = 2;
/// The oldest format read (and the oldest that may be written, for a rolling downgrade).
pub const VERSION_MIN: u32 = 1;
const HEADER: usize = 24;
pub const FILE_NAME: &str = "checkpoint.bin";

/// The partition a standalone processor owns.
const PARTITION: u16 = 0;

#[derive(Serialize)]
struct BodyV1Ref<'a> {
    offset: u64,
    lifts: &'a HashMap<LiftId, LiftState>,
}

#[derive(Deserialize)]
struct BodyV1 {
    offset: u64,
    lifts: HashMap<LiftId, LiftState>,
}

/// One partition's log position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffset {
    pub partition: u16,
    pub offset: Offset,
}

#[derive(Serialize)]
struct BodyV2Ref<'a> {
    partitions: u16,
    offsets: &'a [PartitionOffset],
    lifts: &'a HashMap<LiftId, LiftState>,
}

#[derive(Deserialize)]
struct BodyV2 {
    partitions: u16,
    offsets: Vec<PartitionOffset>,
    lifts: HashMap<LiftId, LiftState>,
}

/// The newest format.
pub fn encode(state: &FleetState) -> Result<Vec<u8>> {
    encode_version(state, VERSION)
}

/// `state` in format `version` ([`VERSION_MIN`] to [`VERSION`]), as a standalone server's.
pub fn encode_version(state: &FleetState, version: u32) -> Result<Vec<u8>> {
    encode_partition(state, version, PARTITION, STANDALONE_PARTITIONS)
}

/// `state` of partition `partition` of `partitions`, in format `version` (format 1 knows one
/// partition only).
pub fn encode_partition(
    state: &FleetState,
    version: u32,
    partition: u16,
    partitions: u16,
) -> Result<Vec<u8>> {
    let body = match version {
        1 if partitions == STANDALONE_PARTITIONS => postcard::to_stdvec(&BodyV1Ref {
            offset: state.offset,
            lifts: &state.lifts,
        }),
        1 => {
            return Err(Error::Checkpoint(format!(
                "checkpoint format 1 holds one partition; with {partitions} partitions write format 2 or newer"
            )));
        }
        2 => postcard::to_stdvec(&BodyV2Ref {
            partitions,
            offsets: &[PartitionOffset {
                partition,
                offset: state.offset,
            }],
            lifts: &state.lifts,
        }),
        other => {
            return Err(Error::Checkpoint(format!(
                "checkpoint format {other} is not one this build writes ({VERSION_MIN} to {VERSION})"
            )));
        }
    }
    .map_err(|e| Error::Checkpoint(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

pub fn write(dir: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{FILE_NAME}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(FILE_NAME))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// The last checkpoint, or `None` when there is none yet.
pub fn read(dir: &Path) -> Result<Option<FleetState>> {
    let path = dir.join(FILE_NAME);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    decode(&bytes)
        .map(Some)
        .map_err(|why| Error::Checkpoint(format!("{} is unreadable: {why}", path.display())))
}

/// A standalone server's checkpoint's state (partition 0 of 1); the error says what is wrong
/// with the bytes.
pub fn decode(bytes: &[u8]) -> std::result::Result<FleetState, String> {
    let (state, partitions) = decode_partition(bytes, PARTITION)?;
    if partitions != STANDALONE_PARTITIONS {
        return Err(format!(
            "it covers partition {PARTITION} of {partitions}, but this server runs partition {PARTITION} of {STANDALONE_PARTITIONS} (standalone)"
        ));
    }
    Ok(state)
}

/// The state of partition `partition`'s checkpoint and the partition count it was written
/// with; the error says what is wrong with the bytes (a checkpoint of another partition too).
pub fn decode_partition(
    bytes: &[u8],
    partition: u16,
) -> std::result::Result<(FleetState, u16), String> {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err("bad header".into());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
    if !(VERSION_MIN..=VERSION).contains(&version) {
        return Err(format!(
            "it is in format version {version}, which this build does not read (it reads {VERSION_MIN} to {VERSION}); run the release that wrote it or a newer one"
        ));
    }
    let crc = u32::from_le_bytes(bytes[12..16].try_into().unwrap());
    let len = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
    let body = usize::try_from(len)
        .ok()
        .and_then(|len| bytes.get(HEADER..HEADER.checked_add(len)?))
        .ok_or("truncated")?;
    if crc32c::crc32c(body) != crc {
        return Err("checksum mismatch".into());
    }
    match version {
        1 if partition == PARTITION => {
            let v1: BodyV1 = postcard::from_bytes(body).map_err(|e| e.to_string())?;
            let state = FleetState {
                offset: v1.offset,
                lifts: v1.lifts,
            };
            Ok((state, STANDALONE_PARTITIONS))
        }
        1 => Err(format!(
            "it is a standalone server's (format 1, partition {PARTITION}), not partition {partition}'s"
        )),
        _ => {
            let v2: BodyV2 = postcard::from_bytes(body).map_err(|e| e.to_string())?;
            match v2.offsets.as_slice() {
                [
                    PartitionOffset {
                        partition: p,
                        offset,
                    },
                ] if *p == partition && partition < v2.partitions => {
                    let state = FleetState {
                        offset: *offset,
                        lifts: v2.lifts,
                    };
                    Ok((state, v2.partitions))
                }
                other => Err(format!(
                    "it covers partitions {:?} of {}, but this is partition {partition}'s",
                    other.iter().map(|p| p.partition).collect::<Vec<_>>(),
                    v2.partitions
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use hoistway_model::{DedupWindow, Direction, DoorState, LiftId, Reading};

    use super::*;

    /// One lift (a map of several would encode in hash order), with a gap in its seqs.
    fn sample() -> FleetState {
        let mut state = FleetState {
            offset: 42,
            ..Default::default()
        };
        for seq in [1, 2, 3, 7] {
            let reading = Reading {
                lift_id: LiftId::new("L-000042").unwrap(),
                epoch: 1_764_000_000,
                seq,
                ts_us: 1_764_400_000_000_000 + seq as i64 * 10_000_000,
                received_us: 1_764_400_000_500_000 + seq as i64 * 10_000_000,
                floor: 3,
                direction: Direction::Down,
                door: DoorState::Open,
                load_kg: Some(80.5),
                speed_mps: None,
                motor_temp_c: Some(45.0),
                vibration_mm_s: None,
                trips: 2,
                door_cycles: 4,
                faults: vec!["E17".into()],
                events: vec![],
                extra: Default::default(),
            };
            state.apply(&reading, &DedupWindow::default());
        }
        state
    }

    #[test]
    fn every_version_matches_its_golden_file_both_ways() {
        for version in VERSION_MIN..=VERSION {
            golden_both_ways(version);
        }
    }

    fn golden_both_ways(version: u32) {
        let golden = format!(
            "{}/tests/golden/checkpoint-v{version}.hex",
            env!("CARGO_MANIFEST_DIR")
        );
        let golden = golden.as_str();
        let encoded = encode_version(&sample(), version).unwrap();
        let hex: String = encoded
            .chunks(16)
            .map(|c| c.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
            .collect();
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(golden, &hex).unwrap();
        }
        assert_eq!(
            hex,
            std::fs::read_to_string(golden).unwrap(),
            "checkpoint format {version} changed: bump VERSION and keep a decoder for the old one"
        );
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &encoded).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(sample()));
    }

    #[test]
    fn a_newer_version_is_refused_by_file_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = encode(&sample()).unwrap();
        bytes[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
        write(dir.path(), &bytes).unwrap();
        let message = read(dir.path()).unwrap_err().to_string();
        assert!(
            message.contains("checkpoint.bin")
                && message.contains(&format!("format version {}", VERSION + 1)),
            "{message}"
        );
    }

    /// A checkpoint of a clustered processor (another partition layout) is refused by name,
    /// never read as if it were this server's.
    #[test]
    fn a_checkpoint_of_other_partitions_is_refused() {
        let state = sample();
        let body = postcard::to_stdvec(&BodyV2Ref {
            partitions: 32,
            offsets: &[PartitionOffset {
                partition: 5,
                offset: 9,
            }],
            lifts: &state.lifts,
        })
        .unwrap();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&2u32.to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&body);
        let message = decode(&bytes).unwrap_err();
        assert!(message.contains("partitions [5] of 32"), "{message}");
        // Read as partition 5's, it is; as another partition's, it is refused.
        let (read, partitions) = decode_partition(&bytes, 5).unwrap();
        assert_eq!((read.offset, partitions), (9, 32));
        assert_eq!(read.lifts.len(), state.lifts.len());
        let message = decode_partition(&bytes, 4).unwrap_err();
        assert!(message.contains("this is partition 4's"), "{message}");
    }

    /// Each partition of a cluster writes its own checkpoint, which reads back as that
    /// partition's; format 1 knows one partition only.
    #[test]
    fn a_partition_writes_and_reads_its_own_checkpoint() {
        let state = sample();
        let bytes = encode_partition(&state, VERSION, 2, 3).unwrap();
        let (read, partitions) = decode_partition(&bytes, 2).unwrap();
        assert_eq!((read.offset, partitions), (state.offset, 3));
        assert!(decode(&bytes).is_err(), "not a standalone checkpoint");
        assert!(decode_partition(&bytes, 0).is_err());
        assert!(encode_partition(&state, 1, 0, 3).is_err());
        let standalone = encode_partition(&state, 1, 0, 1).unwrap();
        assert_eq!(decode(&standalone).unwrap().offset, state.offset);
        assert!(decode_partition(&standalone, 1).is_err());
    }
}
