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
    Decoded, ENTRY_HEADER_LEN, SEGMENT_HEADER_LEN, decode_entry, decode_header, encode_entry,
    encode_header, parse_segment_name, segment_path,
};
use crate::{Error, Log, Offset, Record, Result};

#[derive(Debug, Clone)]
pub struct FileLogConfig {
    pub dir: PathBuf,
    /// A segment is sealed and a new one started once it grows past this size.
    pub segment_bytes: u64,
    pub max_record_bytes: usize,
}

impl FileLogConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: 64 << 20,
            max_record_bytes: 32 << 20,
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
}

struct Writer {
    file: Arc<File>,
    base: Offset,
    pos: u64,
    next: Offset,
}

#[derive(Clone, Copy)]
struct SegmentMeta {
    base: Offset,
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
    pub fn open(config: FileLogConfig) -> Result<(Self, RecoveryReport)> {
        fs::create_dir_all(&config.dir)?;
        let mut bases: Vec<Offset> = fs::read_dir(&config.dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| parse_segment_name(e.file_name().to_str()?))
            .collect();
        bases.sort_unstable();
        let mut report = RecoveryReport::default();
        if bases.is_empty() {
            create_segment(&config.dir, 0)?;
            bases.push(0);
        }
        let last_base = *bases.last().unwrap();
        let last_path = segment_path(&config.dir, last_base);
        let (pos, count, truncated) = recover_tail(&last_path, last_base)?;
        report.truncated_bytes = truncated;
        if truncated > 0 {
            tracing::warn!(
                segment = %last_path.display(),
                truncated_bytes = truncated,
                "cut a torn or corrupt tail off the log"
            );
        }
        let file = OpenOptions::new().read(true).write(true).open(&last_path)?;
        let next = last_base + count;
        let mut size = 0;
        for base in &bases {
            size += fs::metadata(segment_path(&config.dir, *base))?.len();
        }
        report.segments = bases.len();
        report.start = bases[0];
        report.end = next;
        let inner = Inner {
            writer: Mutex::new(Writer {
                file: Arc::new(file),
                base: last_base,
                pos,
                next,
            }),
            segments: Mutex::new(bases.iter().map(|&base| SegmentMeta { base }).collect()),
            sync_lock: tokio::sync::Mutex::new(()),
            durable: watch::Sender::new(next),
            start: AtomicU64::new(bases[0]),
            size: AtomicU64::new(size),
            poison: Mutex::new(None),
            read_hint: Mutex::new(None),
            read_cache: Mutex::new(ReadCache::default()),
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
}

/// Scans the last segment; returns (valid end position, entries, bytes cut off).
fn recover_tail(path: &Path, base: Offset) -> Result<(u64, u64, u64)> {
    let bytes = fs::read(path)?;
    if decode_header(&bytes) != Some(base) {
        if bytes.len() <= SEGMENT_HEADER_LEN && bytes.iter().skip(6).all(|b| *b == 0)
            || bytes.len() < SEGMENT_HEADER_LEN
        {
            // The crash came while the segment was being created: nothing was in it.
            let cut = bytes.len() as u64;
            let mut f = OpenOptions::new().write(true).truncate(true).open(path)?;
            f.write_all(&encode_header(base))?;
            f.sync_all()?;
            return Ok((SEGMENT_HEADER_LEN as u64, 0, cut));
        }
        return Err(Error::Corrupt {
            offset: base,
            reason: format!("segment {} has a bad header", path.display()),
        });
    }
    let mut pos = SEGMENT_HEADER_LEN;
    let mut count = 0;
    while let Decoded::Entry { size, .. } = decode_entry(&bytes[pos..]) {
        pos += size;
        count += 1;
    }
    let cut = (bytes.len() - pos) as u64;
    if cut > 0 {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(pos as u64)?;
        f.sync_all()?;
    }
    Ok((pos as u64, count, cut))
}

fn create_segment(dir: &Path, base: Offset) -> Result<File> {
    let path = segment_path(dir, base);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    f.write_all(&encode_header(base))?;
    f.sync_all()?;
    sync_dir(dir)?;
    Ok(f)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Inner {
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
        if w.pos > SEGMENT_HEADER_LEN as u64 && w.pos + buf.len() as u64 > self.config.segment_bytes
        {
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

    /// Seals the active segment (fsync'd) and starts a new one at the next offset.
    fn roll(&self, w: &mut Writer) -> Result<()> {
        w.file
            .sync_data()
            .map_err(|e| self.poison(format!("fsync of sealed segment failed: {e}")))?;
        let file = create_segment(&self.config.dir, w.next).map_err(|e| match e {
            Error::Io(io) => Error::Write(io),
            other => other,
        })?;
        // Everything below w.next is now durable: the sealed segment was synced.
        self.durable.send_if_modified(|d| {
            let moved = *d < w.next;
            *d = (*d).max(w.next);
            moved
        });
        w.file = Arc::new(file);
        w.base = w.next;
        w.pos = SEGMENT_HEADER_LEN as u64;
        self.segments.lock().push(SegmentMeta { base: w.next });
        self.size
            .fetch_add(SEGMENT_HEADER_LEN as u64, Ordering::Relaxed);
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
        let (base, seg_end) = {
            let segs = self.segments.lock();
            let i = segs.partition_point(|s| s.base <= from) - 1;
            (segs[i].base, segs.get(i + 1).map(|s| s.base))
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
            _ => scan_to(&file, base, from)?,
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
fn scan_to(file: &File, base: Offset, target: Offset) -> Result<u64> {
    let mut pos = SEGMENT_HEADER_LEN as u64;
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

#[async_trait]
impl Log for FileLog {
    async fn append(&self, records: Vec<Bytes>) -> Result<Offset> {
        if records.is_empty() {
            return Ok(self.inner.writer.lock().next);
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.append_blocking(records))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))?
    }

    async fn wait_durable(&self, offset: Offset) -> Result<()> {
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
            let synced = tokio::task::spawn_blocking(move || file.sync_data())
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
