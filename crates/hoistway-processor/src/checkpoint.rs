//! The checkpoint file: fleet state together with the log offset it reflects.
//!
//! ```text
//! magic "HWCKPT\0\0" | version u32 LE | crc32c(body) u32 LE | body length u64 LE | postcard(FleetState)
//! ```
//! Written to a temporary file, fsync'd, renamed over `checkpoint.bin`, directory fsync'd: a crash
//! leaves either the old or the new checkpoint, never a mix.
//!
//! Version 1 is pinned by `tests/golden/checkpoint-v1.hex`: a change to [`FleetState`] (or to
//! the model types in it) fails that test. Then bump [`VERSION`] and keep a decoder for the old
//! body, so a data dir of an older release still opens.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::state::FleetState;
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"HWCKPT\0\0";
/// The checkpoint format written (and the newest read).
pub const VERSION: u32 = 1;
const HEADER: usize = 24;
pub const FILE_NAME: &str = "checkpoint.bin";

pub fn encode(state: &FleetState) -> Result<Vec<u8>> {
    let body = postcard::to_stdvec(state).map_err(|e| Error::Checkpoint(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
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

/// A checkpoint file's state; the error says what is wrong with the bytes.
pub fn decode(bytes: &[u8]) -> std::result::Result<FleetState, String> {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err("bad header".into());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
    if version != VERSION {
        return Err(format!(
            "it is in format version {version}, which this build does not read (it reads {VERSION}); run the release that wrote it or a newer one"
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
    postcard::from_bytes(body).map_err(|e| e.to_string())
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
    fn version_1_matches_its_golden_file_both_ways() {
        let golden = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/golden/checkpoint-v1.hex"
        );
        let encoded = encode(&sample()).unwrap();
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
            "the checkpoint format changed: bump VERSION and keep a decoder for version 1"
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
            message.contains("checkpoint.bin") && message.contains("format version 2"),
            "{message}"
        );
    }
}
