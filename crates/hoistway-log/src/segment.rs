//! On-disk format of one segment file (guarded by a golden test).
//!
//! ```text
//! header (16 bytes): magic "HWLOG\0" | version u16 LE | base offset u64 LE
//! entry:             length u32 LE | crc32c(length bytes ++ payload) u32 LE | payload
//! ```
//! A segment is named after its base offset, `{base:020}.seg`. Entries follow back to back; the
//! first entry that is short or fails its checksum marks the end of what was written.

use std::path::{Path, PathBuf};

pub const SEGMENT_MAGIC: &[u8; 6] = b"HWLOG\0";
pub const SEGMENT_VERSION: u16 = 1;
pub const SEGMENT_HEADER_LEN: usize = 16;
pub const ENTRY_HEADER_LEN: usize = 8;

pub(crate) fn encode_header(base: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..6].copy_from_slice(SEGMENT_MAGIC);
    h[6..8].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[8..16].copy_from_slice(&base.to_le_bytes());
    h
}

/// `Some(base)` when `bytes` is a header this version understands.
pub(crate) fn decode_header(bytes: &[u8]) -> Option<u64> {
    if bytes.len() < SEGMENT_HEADER_LEN || &bytes[..6] != SEGMENT_MAGIC {
        return None;
    }
    if u16::from_le_bytes([bytes[6], bytes[7]]) != SEGMENT_VERSION {
        return None;
    }
    Some(u64::from_le_bytes(bytes[8..16].try_into().ok()?))
}

pub(crate) fn entry_checksum(len: [u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len), payload)
}

pub(crate) fn encode_entry(out: &mut Vec<u8>, payload: &[u8]) {
    let len = (payload.len() as u32).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&entry_checksum(len, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

pub(crate) enum Decoded<'a> {
    Entry {
        payload: &'a [u8],
        size: usize,
    },
    /// Not enough bytes for a whole entry: a torn write, or simply the end.
    Short,
    BadChecksum,
}

pub(crate) fn decode_entry(bytes: &[u8]) -> Decoded<'_> {
    if bytes.len() < ENTRY_HEADER_LEN {
        return Decoded::Short;
    }
    let len_bytes: [u8; 4] = bytes[..4].try_into().unwrap();
    let len = u32::from_le_bytes(len_bytes) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
    let Some(payload) = bytes.get(ENTRY_HEADER_LEN..ENTRY_HEADER_LEN + len) else {
        return Decoded::Short;
    };
    if entry_checksum(len_bytes, payload) != crc {
        return Decoded::BadChecksum;
    }
    Decoded::Entry {
        payload,
        size: ENTRY_HEADER_LEN + len,
    }
}

pub(crate) fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_suffix(".seg")?.parse().ok()
}
