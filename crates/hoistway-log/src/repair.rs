//! [`repair`]: the explicit, offline way past damaged log entries.
//!
//! Opening a log refuses to serve around damage that lies below a durable mark, because the
//! records there were acknowledged. An operator who accepts losing them runs `hoistway log
//! repair` with the server stopped. Each damaged entry keeps its offset, so every later record
//! keeps its own: an entry whose payload fails its checksum but whose length is intact is
//! rewritten with a payload of zero bytes (a placeholder, see [`is_placeholder`]); where the
//! length itself is damaged, the entries from there to the known end (the next segment's base,
//! or the durable mark of the last segment) become one-byte placeholders and the rest of the
//! segment's bytes are dropped. Consumers skip placeholders and say so.

use std::fs;
use std::ops::Range;
use std::path::Path;

use crate::file::{header_error, replace_file, segment_bases};
use crate::segment::{
    Decoded, HeaderError, MARK_POS, decode_entry, decode_header, encode_entry, encode_mark,
    segment_path,
};
use crate::{Error, Offset, Result};

/// What [`repair`] found and did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairReport {
    pub segments: usize,
    /// Entries whose payload was damaged, now zero-byte placeholders at the same offset.
    pub zeroed: Vec<Offset>,
    /// Offsets whose entries could not be found at all, now one-byte placeholders.
    pub lost: Vec<Range<Offset>>,
    /// Bytes after the last recoverable entry of a segment that were dropped.
    pub dropped_bytes: u64,
}

impl RepairReport {
    pub fn is_clean(&self) -> bool {
        self.zeroed.is_empty() && self.lost.is_empty() && self.dropped_bytes == 0
    }

    /// Records that no longer hold their data.
    pub fn records_lost(&self) -> u64 {
        self.zeroed.len() as u64 + self.lost.iter().map(|r| r.end - r.start).sum::<u64>()
    }
}

/// Whether a record's payload is a placeholder left by [`repair`]: non-empty and all zero
/// bytes. A record format must never write such a payload itself.
pub fn is_placeholder(payload: &[u8]) -> bool {
    !payload.is_empty() && payload.iter().all(|b| *b == 0)
}

/// Replaces damaged entries in every segment of the log in `dir` by placeholders. The log must
/// not be open. With `dry_run`, only reports.
pub fn repair(dir: &Path, dry_run: bool) -> Result<RepairReport> {
    let bases = segment_bases(dir)?;
    let mut report = RepairReport {
        segments: bases.len(),
        ..Default::default()
    };
    for (i, &base) in bases.iter().enumerate() {
        let path = segment_path(dir, base);
        let bytes = fs::read(&path)?;
        let header = decode_header(&bytes).map_err(|e| match e {
            HeaderError::Unreadable => Error::Corrupt {
                offset: base,
                reason: format!(
                    "segment {} has a damaged header, which repair cannot rebuild",
                    path.display()
                ),
            },
            e => header_error(&path, base, e),
        })?;
        let next_base = bases.get(i + 1).copied();
        // Below this offset every entry was durable: the next segment's base for a sealed
        // segment, the durable mark for the last one (above it, a bad entry is a torn tail).
        let durable_end = next_base.unwrap_or(header.durable_mark.unwrap_or(base));
        let mut out = bytes[..header.len()].to_vec();
        let mut pos = header.len();
        let mut offset = base;
        let mut changed = false;
        while pos < bytes.len() {
            match decode_entry(&bytes[pos..]) {
                Decoded::Entry { size, .. } => {
                    out.extend_from_slice(&bytes[pos..pos + size]);
                    pos += size;
                    offset += 1;
                }
                Decoded::BadChecksum => {
                    let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
                    let after = pos + 8 + len;
                    let boundary_holds = after == bytes.len()
                        || matches!(decode_entry(&bytes[after..]), Decoded::Entry { .. });
                    if !boundary_holds || offset >= durable_end {
                        break;
                    }
                    encode_entry(&mut out, &vec![0; len.max(1)]);
                    report.zeroed.push(offset);
                    changed = true;
                    pos = after;
                    offset += 1;
                }
                Decoded::Short => break,
            }
        }
        if pos < bytes.len() {
            report.dropped_bytes += (bytes.len() - pos) as u64;
            changed = true;
        }
        let known_end = if next_base.is_some() {
            durable_end
        } else {
            durable_end.max(offset)
        };
        if offset > known_end {
            return Err(Error::Corrupt {
                offset: known_end,
                reason: format!(
                    "segment {} holds entries past the next segment's base {known_end}",
                    path.display()
                ),
            });
        }
        if offset < known_end {
            report.lost.push(offset..known_end);
            for _ in offset..known_end {
                encode_entry(&mut out, &[0]);
            }
            changed = true;
            offset = known_end;
        }
        if changed && !dry_run {
            if header.version >= 2 {
                let at = MARK_POS as usize;
                out[at..at + 12].copy_from_slice(&encode_mark(base, offset));
            }
            replace_file(&path, &out)?;
            tracing::warn!(segment = %path.display(), "log segment repaired");
        }
    }
    Ok(report)
}
