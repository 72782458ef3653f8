//! [`FileLog`]: the embedded log — a directory of segment files.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::segment::{
    self, Decoded, ENTRY_HEADER_LEN, Header, HeaderError, MARK_POS, SEGMENT_HEADER_LEN,
    SEGMENT_VERSION, SEGMENT_VERSION_MIN, decode_entry, decode_header, encode_entry, encode_header,
    encode_mark, parse_segment_name, scan_segment, segment_path,
};
use crate::{Error, Log, Offset, Record, Result};

#[derive(Debug, Clone)]
pub struct FileLogConfig {
    pub dir: PathBuf,
    /// A segment is sealed and a new one started once it grows past this size.
    pub segment_bytes: u64,
    pub max_record_bytes: usize,
    /// The segment format new segments are written in. The newest by default; an older one
    /// while nodes of an older release may still read this log (a rolling upgrade).
    pub write_version: u16,
}

impl FileLogConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: 64 << 20,
            max_record_bytes: 32 << 20,
            write_version: SEGMENT_VERSION,
        }
    }
}

/// What opening the log found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    pub start: Offset,
    pub end: Offset,
    /// Bytes cut from the tail of the last segment: a torn or corrupt write that was never
    /// acknowledged (acknowledged entries were fsync'd before their append returned durable).
    pub truncated_bytes: u64,
    /// How far the last segment's durable mark said the log was on stable storage.
    pub durable_mark: Offset,
}

/// A directory of segment files; see the crate docs and [`Log`] for the contract.
///
/// Appends are written by a blocking task; [`Log::wait_durable`] runs one `fdatasync` for every
/// caller waiting at that moment, so the number of fsyncs per second stays bounded by the disk
/// while the number of records per fsync grows with load.
pub struct FileLog {
    inner: Arc<Inner>,
}

struct Inner {
    config: FileLogConfig,
    writer: Mutex<Writer>,
    /// Sealed and active segments, oldest first.
    segments: Mutex<Vec<SegmentMeta>>,
    sync_lock: tokio::sync::Mutex<()>,
    durable: watch::Sender<Offset>,
    start: AtomicU64,
    size: AtomicU64,
    poison: Mutex<Option<String>>,
    /// Where the last read stopped, so sequential reads do not rescan a segment.
    read_hint: Mutex<Option<ReadHint>>,
    /// The reader's open segment and buffer, reused across reads: the processor reads after
    /// every sync, thousands of times a second.
    read_cache: Mutex<ReadCache>,
    /// Offsets a copy in progress still needs (see [`FileLog::copy_durable`]): truncation
    /// keeps every segment at or after the lowest.
    pins: Mutex<Vec<Offset>>,
}

struct Writer {
    file: Arc<File>,
    base: Offset,
    pos: u64,
    next: Offset,
    /// Format of the active segment.
    version: u16,
    /// The durable mark last written into the active segment's header (version 2).
    mark: Offset,
}

impl Writer {
    /// Raises the active segment's durable mark to `end`. Called only once everything below
    /// `end` is synced, so the mark never claims more than stable storage holds.
    fn write_mark(&mut self, end: Offset) -> std::io::Result<()> {
        if self.version < 2 || end <= self.mark {
            return Ok(());
        }
        self.file
            .write_all_at(&encode_mark(self.base, end), MARK_POS)?;
        self.mark = end;
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct SegmentMeta {
    base: Offset,
    header_len: u64,
}

#[derive(Default)]
struct ReadCache {
    file: Option<(Offset, Arc<File>)>,
    buf: Vec<u8>,
}

#[derive(Clone, Copy)]
struct ReadHint {
    offset: Offset,
    base: Offset,
    pos: u64,
}

impl FileLog {
    /// Opens (or creates) the log in `config.dir`, cutting a torn tail off the last segment.
    ///
    /// Fails with [`Error::Corrupt`] when a damaged entry of the last segment lies below its
    /// durable mark (acknowledged records would be lost: see [`repair`]) and with
    /// [`Error::Format`] when a segment was written in a format this build does not read.
    pub fn open(config: FileLogConfig) -> Result<(Self, RecoveryReport)> {
        fs::create_dir_all(&config.dir)?;
        let mut bases = segment_bases(&config.dir)?;
        let mut report = RecoveryReport::default();
        if bases.is_empty() {
            create_segment(&config.dir, 0, config.write_version)?;
            bases.push(0);
        }
        let last_base = *bases.last().unwrap();
        let mut segments = Vec::with_capacity(bases.len());
        for &base in &bases[..bases.len() - 1] {
            let header = read_header(&config.dir, base)?;
            segments.push(SegmentMeta {
                base,
                header_len: header.len() as u64,
            });
        }
        let last_path = segment_path(&config.dir, last_base);
        let tail = recover_tail(&last_path, last_base, config.write_version)?;
        report.truncated_bytes = tail.cut;
        report.durable_mark = tail.mark;
        if tail.cut > 0 {
            tracing::warn!(
                segment = %last_path.display(),
                truncated_bytes = tail.cut,
                durable_mark = tail.mark,
                "cut a torn tail off the log, above its durable mark"
            );
        }
        let next = last_base + tail.count;
        let file = OpenOptions::new().read(true).write(true).open(&last_path)?;
        let mut writer = Writer {
            file: Arc::new(file),
            base: last_base,
            pos: tail.pos,
            next,
            version: tail.header.version,
            mark: tail.mark,
        };
        segments.push(SegmentMeta {
            base: last_base,
            header_len: tail.header.len() as u64,
        });
        if writer.version != config.write_version {
            // Older (or newer) segments stay as they are and are read as such; new entries go
            // to a segment of the format this node is told to write.
            writer.file.sync_data()?;
            let header = encode_header(config.write_version, next);
            if tail.count == 0 {
                replace_file(&last_path, &header)?;
                writer.file = Arc::new(OpenOptions::new().read(true).write(true).open(&last_path)?);
                segments.pop();
            } else {
                writer.file = Arc::new(create_segment(&config.dir, next, config.write_version)?);
            }
            writer.base = next;
            writer.pos = header.len() as u64;
            writer.version = config.write_version;
            writer.mark = next;
            segments.push(SegmentMeta {
                base: next,
                header_len: header.len() as u64,
            });
            tracing::info!(
                segment_format = config.write_version,
                base = next,
                "new log entries go to a segment of the configured format"
            );
        }
        let mut size = 0;
        for s in &segments {
            size += fs::metadata(segment_path(&config.dir, s.base))?.len();
        }
        report.segments = segments.len();
        report.start = segments[0].base;
        report.end = next;
        let inner = Inner {
            writer: Mutex::new(writer),
            start: AtomicU64::new(segments[0].base),
            segments: Mutex::new(segments),
            sync_lock: tokio::sync::Mutex::new(()),
            durable: watch::Sender::new(next),
            size: AtomicU64::new(size),
            poison: Mutex::new(None),
            read_hint: Mutex::new(None),
            read_cache: Mutex::new(ReadCache::default()),
            pins: Mutex::new(Vec::new()),
            config,
        };
        Ok((
            Self {
                inner: Arc::new(inner),
            },
            report,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.inner.config.dir
    }

    /// Keeps the records from `from` on: [`Log::truncate_before`] deletes no segment holding
    /// one of them until the pin is dropped. Taken (by a backup) while the checkpoint at `from`
    /// is the newest, so the records it needs are still there.
    pub fn pin(&self, from: Offset) -> LogPin {
        self.inner.pins.lock().push(from);
        LogPin {
            inner: self.inner.clone(),
            from,
        }
    }

    /// Copies every durable record from the segment holding `from` on into `to` (created),
    /// while appends go on: sealed segments whole, the active one up to the durable end, with
    /// its durable mark set there, so the copy opens as a log holding exactly what was durable
    /// (acknowledged) when the copy began. Returns the segment files written and the copy's
    /// first and end offsets. Blocking (file I/O); `_pin` keeps truncation off the segments.
    pub fn copy_durable(&self, _pin: &LogPin, from: Offset, to: &Path) -> Result<LogCopy> {
        fs::create_dir_all(to)?;
        let end = *self.inner.durable.borrow();
        let bases: Vec<Offset> = {
            let segs = self.inner.segments.lock();
            let first = segs.partition_point(|s| s.base <= from).max(1) - 1;
            segs[first..]
                .iter()
                .map(|s| s.base)
                .filter(|b| *b < end || *b == segs[first].base)
                .collect()
        };
        let mut copy = LogCopy {
            start: bases[0],
            end,
            files: Vec::new(),
        };
        for (i, &base) in bases.iter().enumerate() {
            let bytes = fs::read(segment_path(self.dir(), base))?;
            let sealed = bases.get(i + 1).is_some_and(|next| *next <= end);
            let kept = if sealed {
                bytes
            } else {
                // The active segment (or the last one copied): its entries below `end`, under a
                // header whose mark says they are durable.
                let path = segment_path(self.dir(), base);
                let (header, pos) = position_of(&path, &bytes, base, end)?;
                let mut kept = bytes[..pos].to_vec();
                if header.version >= 2 {
                    let at = MARK_POS as usize;
                    kept[at..at + 12].copy_from_slice(&encode_mark(base, end));
                }
                kept
            };
            let path = segment_path(to, base);
            let mut f = File::create(&path)?;
            f.write_all(&kept)?;
            f.sync_all()?;
            copy.files.push(path);
        }
        sync_dir(to)?;
        Ok(copy)
    }
}

impl FileLog {
    /// The sealed segments (full, durable, never written again), oldest first: their first
    /// offset, one past their last, and their file. What continuous log archiving copies.
    pub fn sealed_segments(&self) -> Vec<(Offset, Offset, PathBuf)> {
        let segs = self.inner.segments.lock();
        segs.windows(2)
            .map(|w| (w[0].base, w[1].base, segment_path(self.dir(), w[0].base)))
            .collect()
    }
}

/// Offline (no server on `dir`): drops every record from `offset` on, so that the log ends
/// there; its durable mark says so. A point-in-time restore cuts the replayed log this way.
pub fn cut_log(dir: &Path, offset: Offset) -> Result<()> {
    let bases = segment_bases(dir)?;
    let Some(&first) = bases.first() else {
        return Ok(());
    };
    if offset < first {
        return Err(Error::Corrupt {
            offset,
            reason: format!("the log starts at {first}, after the offset to cut at"),
        });
    }
    for &base in bases.iter().filter(|b| **b >= offset && **b > first) {
        fs::remove_file(segment_path(dir, base))?;
    }
    let base = *bases
        .iter()
        .rfind(|b| **b < offset || **b == first)
        .expect("the first segment is kept");
    let path = segment_path(dir, base);
    let bytes = fs::read(&path)?;
    let (header, pos) = position_of(&path, &bytes, base, offset)?;
    let f = OpenOptions::new().write(true).open(&path)?;
    f.set_len(pos as u64)?;
    if header.version >= 2 {
        f.write_all_at(&encode_mark(base, offset), MARK_POS)?;
    }
    f.sync_all()?;
    sync_dir(dir)?;
    Ok(())
}

/// The header of the segment `bytes` (file `path`, first offset `base`) and the byte position
/// where the entry at `offset` starts, walking whole entries; an entry missing or damaged
/// before it is an error.
fn position_of(path: &Path, bytes: &[u8], base: Offset, offset: Offset) -> Result<(Header, usize)> {
    let header = decode_header(bytes).map_err(|e| header_error(path, base, e))?;
    let mut pos = header.len();
    for at in base..offset {
        match decode_entry(&bytes[pos..]) {
            Decoded::Entry { size, .. } => pos += size,
            _ => {
                return Err(Error::Corrupt {
                    offset: at,
                    reason: format!("segment {} ends before offset {offset}", path.display()),
                });
            }
        }
    }
    Ok((header, pos))
}

/// Keeps truncation off the records from an offset on; see [`FileLog::pin`].
pub struct LogPin {
    inner: Arc<Inner>,
    from: Offset,
}

impl LogPin {
    pub fn from(&self) -> Offset {
        self.from
    }
}

impl Drop for LogPin {
    fn drop(&mut self) {
        let mut pins = self.inner.pins.lock();
        if let Some(at) = pins.iter().position(|p| *p == self.from) {
            pins.swap_remove(at);
        }
    }
}

/// What [`FileLog::copy_durable`] wrote.
#[derive(Debug, Clone)]
pub struct LogCopy {
    /// The first offset of the first segment copied.
    pub start: Offset,
    /// One past the last record copied: the durable end when the copy began.
    pub end: Offset,
    pub files: Vec<PathBuf>,
}

pub(crate) fn segment_bases(dir: &Path) -> Result<Vec<Offset>> {
    let mut bases: Vec<Offset> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| parse_segment_name(e.file_name().to_str()?))
        .collect();
    bases.sort_unstable();
    Ok(bases)
}

pub(crate) fn header_error(path: &Path, base: Offset, e: HeaderError) -> Error {
    match e {
        HeaderError::UnknownVersion(version) => Error::Format {
            file: path.display().to_string(),
            version: version.into(),
            reads: format!("{SEGMENT_VERSION_MIN} to {SEGMENT_VERSION}"),
        },
        HeaderError::Unreadable => Error::Corrupt {
            offset: base,
            reason: format!("segment {} has a bad header", path.display()),
        },
    }
}

fn read_header(dir: &Path, base: Offset) -> Result<Header> {
    let path = segment_path(dir, base);
    let mut bytes = [0u8; SEGMENT_HEADER_LEN];
    let n = read_full_at(&File::open(&path)?, &mut bytes, 0)?;
    let header = decode_header(&bytes[..n]).map_err(|e| header_error(&path, base, e))?;
    if header.base != base {
        return Err(header_error(&path, base, HeaderError::Unreadable));
    }
    Ok(header)
}

/// What recovery found in the last segment.
struct Tail {
    header: Header,
    /// Byte position just past the last whole entry.
    pos: u64,
    count: u64,
    cut: u64,
    mark: Offset,
}

/// Scans the last segment and cuts a torn tail, but only above the durable mark.
fn recover_tail(path: &Path, base: Offset, write_version: u16) -> Result<Tail> {
    let bytes = fs::read(path)?;
    let header = match decode_header(&bytes) {
        Ok(h) if h.base == base => h,
        Err(HeaderError::Unreadable) if bytes.len() <= SEGMENT_HEADER_LEN => {
            // The crash came while the segment was being created: nothing was in it.
            let header = encode_header(write_version, base);
            replace_file(path, &header)?;
            return Ok(Tail {
                header: decode_header(&header).expect("a fresh header decodes"),
                pos: header.len() as u64,
                count: 0,
                cut: bytes.len() as u64,
                mark: base,
            });
        }
        Ok(_) => return Err(header_error(path, base, HeaderError::Unreadable)),
        Err(e) => return Err(header_error(path, base, e)),
    };
    let mark = match (header.version, header.durable_mark) {
        (1, _) => base,
        (_, Some(mark)) => mark,
        (_, None) => {
            // A torn write of the mark itself: it only ever grows, so nothing is claimed.
            tracing::warn!(segment = %path.display(), "durable mark unreadable; treating the whole segment as unconfirmed");
            base
        }
    };
    let scan = scan_segment(&bytes).expect("the header decoded above");
    let (pos, count) = (scan.valid_len, scan.entries);
    let end = base + count;
    if end < mark {
        let what = if pos < bytes.len() {
            "is damaged"
        } else {
            "is missing (the segment ends there)"
        };
        return Err(Error::Corrupt {
            offset: end,
            reason: format!(
                "in segment {}, the entry at offset {end} {what}, but the log was durable through offset {mark}: acknowledged records would be lost; stop and run `hoistway log repair`",
                path.display()
            ),
        });
    }
    let cut = (bytes.len() - pos) as u64;
    if cut > 0 {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(pos as u64)?;
        f.sync_all()?;
    }
    Ok(Tail {
        header,
        pos: pos as u64,
        count,
        cut,
        mark,
    })
}

/// Writes `bytes` as the whole content of `path`, atomically (temp file, fsync, rename).
pub(crate) fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("seg.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ok(())
}

fn create_segment(dir: &Path, base: Offset, version: u16) -> Result<File> {
    let path = segment_path(dir, base);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    f.write_all(&encode_header(version, base))?;
    f.sync_all()?;
    sync_dir(dir)?;
    Ok(f)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Inner {
    /// Records in the active segment's header that everything below `end` is synced (`file`
    /// was synced through `end`; if the writer has rolled since, the seal already covers it).
    fn advance_mark(&self, file: &Arc<File>, end: Offset) {
        let mut w = self.writer.lock();
        if Arc::ptr_eq(&w.file, file)
            && let Err(e) = w.write_mark(end)
        {
            // Not fatal: the records are synced, and a mark that lags only makes recovery less
            // sure of what it may cut.
            tracing::warn!(error = %e, "could not advance the log's durable mark");
        }
    }

    fn check_poison(&self) -> Result<()> {
        match &*self.poison.lock() {
            Some(why) => Err(Error::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    fn poison(&self, why: String) -> Error {
        tracing::error!(reason = %why, "log poisoned: refusing appends until restart");
        *self.poison.lock() = Some(why.clone());
        Error::Poisoned(why)
    }

    fn append_blocking(&self, records: Vec<Bytes>) -> Result<Offset> {
        self.check_poison()?;
        let mut buf = Vec::with_capacity(
            records
                .iter()
                .map(|r| r.len() + ENTRY_HEADER_LEN)
                .sum::<usize>(),
        );
        for r in &records {
            if r.len() > self.config.max_record_bytes {
                return Err(Error::RecordTooLarge(r.len()));
            }
            encode_entry(&mut buf, r);
        }
        let mut w = self.writer.lock();
        let has_entries = w.pos > segment::header_len(w.version) as u64;
        if has_entries && w.pos + buf.len() as u64 > self.config.segment_bytes {
            self.roll(&mut w)?;
        }
        let first = w.next;
        if let Err(e) = w.file.write_all_at(&buf, w.pos) {
            // Put the tail back where it was so the next append starts on a clean boundary.
            if let Err(e2) = w.file.set_len(w.pos) {
                return Err(self.poison(format!("write failed ({e}) and undoing it failed ({e2})")));
            }
            return Err(Error::Write(e));
        }
        w.pos += buf.len() as u64;
        w.next += records.len() as u64;
        self.size.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(first)
    }

    /// Seals the active segment (fsync'd, its durable mark set to its end, fsync'd again) and
    /// starts a new one at the next offset.
    fn roll(&self, w: &mut Writer) -> Result<()> {
        let next = w.next;
        w.file
            .sync_data()
            .and_then(|()| w.write_mark(next))
            .and_then(|()| w.file.sync_data())
            .map_err(|e| self.poison(format!("fsync of sealed segment failed: {e}")))?;
        let file = create_segment(&self.config.dir, next, self.config.write_version).map_err(
            |e| match e {
                Error::Io(io) => Error::Write(io),
                other => other,
            },
        )?;
        // Everything below next is now durable: the sealed segment was synced.
        self.durable.send_if_modified(|d| {
            let moved = *d < next;
            *d = (*d).max(next);
            moved
        });
        let header_len = segment::header_len(self.config.write_version) as u64;
        w.file = Arc::new(file);
        w.base = next;
        w.pos = header_len;
        w.version = self.config.write_version;
        w.mark = next;
        self.segments.lock().push(SegmentMeta {
            base: next,
            header_len,
        });
        self.size.fetch_add(header_len, Ordering::Relaxed);
        Ok(())
    }

    fn read_blocking(&self, from: Offset, max_bytes: usize) -> Result<Vec<Record>> {
        let durable = *self.durable.borrow();
        let start = self.start.load(Ordering::Acquire);
        if from < start {
            return Err(Error::Truncated {
                offset: from,
                start,
            });
        }
        if from >= durable {
            return Ok(Vec::new());
        }
        let (base, header_len, seg_end) = {
            let segs = self.segments.lock();
            let i = segs.partition_point(|s| s.base <= from) - 1;
            (
                segs[i].base,
                segs[i].header_len,
                segs.get(i + 1).map(|s| s.base),
            )
        };
        let limit = seg_end.unwrap_or(durable).min(durable);
        let mut cache = self.read_cache.lock();
        let file = match &cache.file {
            Some((b, f)) if *b == base => f.clone(),
            _ => {
                let f = Arc::new(File::open(segment_path(&self.config.dir, base))?);
                cache.file = Some((base, f.clone()));
                f
            }
        };
        let mut chunk = std::mem::take(&mut cache.buf);
        drop(cache);
        let hint = *self.read_hint.lock();
        let mut pos = match hint {
            Some(h) if h.offset == from && h.base == base => h.pos,
            _ => scan_to(&file, header_len, base, from)?,
        };
        let mut offset = from;
        let mut out = Vec::new();
        let mut taken = 0usize;
        // Sized once and reused: read_at copies only the bytes the file has.
        let want = max_bytes.clamp(64 << 10, 16 << 20);
        if chunk.len() < want {
            chunk.resize(want, 0);
        }
        let wants_more = |offset: Offset, out: &Vec<Record>, taken: usize| {
            offset < limit && (out.is_empty() || taken < max_bytes)
        };
        while wants_more(offset, &out, taken) {
            let n = read_full_at(&file, &mut chunk, pos)?;
            let mut at = 0;
            while wants_more(offset, &out, taken) {
                match decode_entry(&chunk[at..n]) {
                    Decoded::Entry { payload, size } => {
                        out.push(Record {
                            offset,
                            payload: Bytes::copy_from_slice(payload),
                        });
                        taken += size;
                        at += size;
                        offset += 1;
                    }
                    Decoded::Short if n == chunk.len() => {
                        // The entry continues past this chunk: read again from its start,
                        // with a chunk large enough to hold it.
                        if at == 0 {
                            let len = u32::from_le_bytes(chunk[..4].try_into().unwrap()) as usize;
                            if len > self.config.max_record_bytes {
                                return Err(Error::Corrupt {
                                    offset,
                                    reason: format!("entry claims {len} bytes"),
                                });
                            }
                            chunk.resize(len + ENTRY_HEADER_LEN, 0);
                        }
                        break;
                    }
                    Decoded::Short => {
                        return Err(Error::Corrupt {
                            offset,
                            reason: "entry is shorter than its header says".into(),
                        });
                    }
                    Decoded::BadChecksum => {
                        return Err(Error::Corrupt {
                            offset,
                            reason: "checksum mismatch".into(),
                        });
                    }
                }
            }
            pos += at as u64;
        }
        *self.read_hint.lock() = Some(ReadHint { offset, base, pos });
        if chunk.len() <= 16 << 20 {
            self.read_cache.lock().buf = chunk;
        }
        Ok(out)
    }

    fn truncate_blocking(&self, before: Offset) -> Result<()> {
        let before = self.pins.lock().iter().fold(before, |b, p| b.min(*p));
        let mut segs = self.segments.lock();
        let mut removed = 0;
        while segs.len() > 1 && segs[1].base <= before {
            let path = segment_path(&self.config.dir, segs[0].base);
            let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&path)?;
            self.size.fetch_sub(len, Ordering::Relaxed);
            segs.remove(0);
            removed += 1;
        }
        if removed > 0 {
            self.start.store(segs[0].base, Ordering::Release);
            sync_dir(&self.config.dir)?;
            tracing::debug!(segments = removed, start = segs[0].base, "truncated log");
        }
        Ok(())
    }
}

fn read_full_at(file: &File, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], pos + n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Byte position of entry `target` in the segment starting at `base`, walking entry headers.
fn scan_to(file: &File, header_len: u64, base: Offset, target: Offset) -> Result<u64> {
    let mut pos = header_len;
    let mut header = [0u8; ENTRY_HEADER_LEN];
    for offset in base..target {
        if read_full_at(file, &mut header, pos)? < ENTRY_HEADER_LEN {
            return Err(Error::Corrupt {
                offset,
                reason: "segment ends before the offset".into(),
            });
        }
        pos += (u32::from_le_bytes(header[..4].try_into().unwrap()) as usize + ENTRY_HEADER_LEN)
            as u64;
    }
    Ok(pos)
}

impl FileLog {
    /// Writes `records` at consecutive offsets and returns the first; they are not durable
    /// (nor visible to readers) until [`wait_durable`](Self::wait_durable) covers them. The
    /// two halves of [`Log::append`], for a single writer that knows its offsets at once.
    pub async fn append_unsynced(&self, records: Vec<Bytes>) -> Result<Offset> {
        if records.is_empty() {
            return Ok(self.inner.writer.lock().next);
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.append_blocking(records))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))?
    }

    /// Returns once every record below `offset` is durable; concurrent callers share one
    /// `fdatasync`.
    pub async fn wait_durable(&self, offset: Offset) -> Result<()> {
        loop {
            if *self.inner.durable.borrow() >= offset {
                return Ok(());
            }
            self.inner.check_poison()?;
            let _one_sync_at_a_time = self.inner.sync_lock.lock().await;
            if *self.inner.durable.borrow() >= offset {
                return Ok(());
            }
            let (file, end) = {
                let w = self.inner.writer.lock();
                (w.file.clone(), w.next)
            };
            if offset > end {
                return Err(Error::BeyondEnd { offset, end });
            }
            let inner = self.inner.clone();
            let synced = tokio::task::spawn_blocking(move || {
                file.sync_data()?;
                inner.advance_mark(&file, end);
                Ok(())
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
            match synced {
                Ok(()) => {
                    self.inner.durable.send_if_modified(|d| {
                        let moved = *d < end;
                        *d = (*d).max(end);
                        moved
                    });
                }
                Err(e) => return Err(self.inner.poison(format!("fsync failed: {e}"))),
            }
        }
    }
}

#[async_trait]
impl Log for FileLog {
    async fn append(&self, records: Vec<Bytes>) -> Result<Vec<Offset>> {
        let n = records.len() as u64;
        let first = self.append_unsynced(records).await?;
        self.wait_durable(first + n).await?;
        Ok((first..first + n).collect())
    }

    async fn read(&self, from: Offset, max_bytes: usize) -> Result<Vec<Record>> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.read_blocking(from, max_bytes))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))?
    }

    async fn wait_for_data(&self, offset: Offset, timeout: Duration) {
        let mut rx = self.inner.durable.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|d| *d > offset)).await;
    }

    async fn truncate_before(&self, offset: Offset) -> Result<()> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.truncate_blocking(offset))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))?
    }

    fn start(&self) -> Offset {
        self.inner.start.load(Ordering::Acquire)
    }

    fn durable_end(&self) -> Offset {
        *self.inner.durable.borrow()
    }

    fn size_bytes(&self) -> u64 {
        self.inner.size.load(Ordering::Relaxed)
    }

    fn poisoned(&self) -> Option<String> {
        self.inner.poison.lock().clone()
    }
}
