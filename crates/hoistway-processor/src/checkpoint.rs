//! The checkpoint file: fleet state together with the log offset it reflects.
//!
//! ```text
//! magic "HWCKPT\0\0" | version u32 LE | crc32c(body) u32 LE | body length u64 LE | postcard(FleetState)
//! ```
//! Written to a temporary file, fsync'd, renamed over `checkpoint.bin`, directory fsync'd: a crash
//! leaves either the old or the new checkpoint, never a mix.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::state::FleetState;
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"HWCKPT\0\0";
const VERSION: u32 = 1;
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
    let bytes = match fs::read(dir.join(FILE_NAME)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let bad = |why: &str| Error::Checkpoint(format!("{FILE_NAME} is unreadable: {why}"));
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(bad("bad header"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
    if version != VERSION {
        return Err(bad(&format!("unknown version {version}")));
    }
    let crc = u32::from_le_bytes(bytes[12..16].try_into().unwrap());
    let len = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    let body = bytes
        .get(HEADER..HEADER + len)
        .ok_or_else(|| bad("truncated"))?;
    if crc32c::crc32c(body) != crc {
        return Err(bad("checksum mismatch"));
    }
    postcard::from_bytes(body)
        .map(Some)
        .map_err(|e| bad(&e.to_string()))
}
