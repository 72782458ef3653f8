//! On-disk format of one segment file (guarded by golden tests, one per version).
//!
//! ```text
//! version 2 header (32 bytes): magic "HWLOG\0" | version u16 LE | base offset u64 LE
//!                              | durable mark u64 LE | crc32c(bytes 8..24) u32 LE | zero u32
//! version 1 header (16 bytes): magic "HWLOG\0" | version u16 LE | base offset u64 LE
//! entry (both versions):       length u32 LE | crc32c(length bytes ++ payload) u32 LE | payload
//! ```
//! A segment is named after its base offset, `{base:020}.seg`. Entries follow back to back.
//!
//! The durable mark (version 2) says how far the segment was known to be on stable storage: it
//! is rewritten in place after each `fdatasync` (so it never claims more than was synced) and set
//! to the segment's end when the segment is sealed. Recovery may cut a torn tail only at or above
//! the mark; a damaged entry below it was acknowledged, so it is corruption, not the end of data.
//! Version 1 segments (written before the mark existed) are still read; their tail is cut at the
//! first bad entry, as that version always did.

use std::path::{Path, PathBuf};

pub const SEGMENT_MAGIC: &[u8; 6] = b"HWLOG\0";
/// The newest segment format, written by default.
pub const SEGMENT_VERSION: u16 = 2;
/// The oldest segment format this build reads (and can still write, for rolling upgrades).
pub const SEGMENT_VERSION_MIN: u16 = 1;
/// Header length of the newest format.
pub const SEGMENT_HEADER_LEN: usize = 32;
pub const ENTRY_HEADER_LEN: usize = 8;

const V1_HEADER_LEN: usize = 16;
/// Where the durable mark and its checksum sit in a version 2 header.
pub(crate) const MARK_POS: u64 = 16;

pub(crate) fn header_len(version: u16) -> usize {
    if version == 1 {
        V1_HEADER_LEN
    } else {
        SEGMENT_HEADER_LEN
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub version: u16,
    pub base: u64,
    /// Version 2 only, and only when its checksum holds.
    pub durable_mark: Option<u64>,
}

impl Header {
    pub fn len(&self) -> usize {
        header_len(self.version)
    }
}

pub(crate) fn encode_header(version: u16, base: u64) -> Vec<u8> {
    let mut h = vec![0u8; header_len(version)];
    h[..6].copy_from_slice(SEGMENT_MAGIC);
    h[6..8].copy_from_slice(&version.to_le_bytes());
    h[8..16].copy_from_slice(&base.to_le_bytes());
    if version >= 2 {
        h[16..28].copy_from_slice(&encode_mark(base, base));
    }
    h
}

/// The 12 bytes written at [`MARK_POS`]: the mark and a checksum over base and mark, so a torn
/// or stray write is recognised rather than trusted.
pub(crate) fn encode_mark(base: u64, mark: u64) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(&mark.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&base.to_le_bytes()), &mark.to_le_bytes());
    out[8..].copy_from_slice(&crc.to_le_bytes());
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// Too short, or not a segment at all.
    Unreadable,
    /// A segment of a format this build does not know (written by a newer release).
    UnknownVersion(u16),
}

pub(crate) fn decode_header(bytes: &[u8]) -> Result<Header, HeaderError> {
    if bytes.len() < V1_HEADER_LEN || &bytes[..6] != SEGMENT_MAGIC {
        return Err(HeaderError::Unreadable);
    }
    let version = u16::from_le_bytes([bytes[6], bytes[7]]);
    if !(SEGMENT_VERSION_MIN..=SEGMENT_VERSION).contains(&version) {
        return Err(HeaderError::UnknownVersion(version));
    }
    if bytes.len() < header_len(version) {
        return Err(HeaderError::Unreadable);
    }
    let base = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    let durable_mark = (version >= 2)
        .then(|| {
            let mark: [u8; 12] = bytes[16..28].try_into().unwrap();
            let value = u64::from_le_bytes(mark[..8].try_into().unwrap());
            (encode_mark(base, value) == mark).then_some(value)
        })
        .flatten();
    Ok(Header {
        version,
        base,
        durable_mark,
    })
}

/// What the bytes of a segment file hold, as recovery reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    pub version: u16,
    pub base: u64,
    /// Version 2: how far the segment was known durable (`None` when the mark is unreadable).
    pub durable_mark: Option<u64>,
    /// Whole entries after the header, up to the first that is short or fails its checksum.
    pub entries: u64,
    /// Where those entries end: everything after is a torn tail or damage.
    pub valid_len: usize,
}

/// Reads a segment file's header and walks its entries; `None` when the bytes do not start with
/// a segment header of a version this build reads.
pub fn scan_segment(bytes: &[u8]) -> Option<SegmentScan> {
    let header = decode_header(bytes).ok()?;
    let mut pos = header.len();
    let mut entries = 0;
    while let Decoded::Entry { size, .. } = decode_entry(&bytes[pos..]) {
        pos += size;
        entries += 1;
    }
    Some(SegmentScan {
        version: header.version,
        base: header.base,
        durable_mark: header.durable_mark,
        entries,
        valid_len: pos,
    })
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
