//! The `Log` contract, checked against every implementation, and the file log's recovery.

use std::fs::OpenOptions;
use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use hoistway_log::{Error, FileLog, FileLogConfig, Log, SEGMENT_HEADER_LEN};

fn payload(i: u64) -> Bytes {
    Bytes::from(format!("record-{i}-{}", "x".repeat((i % 17) as usize)))
}

async fn read_all(log: &dyn Log, from: u64) -> Vec<(u64, Bytes)> {
    let mut out = Vec::new();
    let mut at = from;
    loop {
        let batch = log.read(at, 4096).await.unwrap();
        if batch.is_empty() {
            return out;
        }
        for r in batch {
            assert_eq!(r.offset, at, "offsets are consecutive");
            at += 1;
            out.push((r.offset, r.payload));
        }
    }
}

/// The conformance suite every `Log` implementation must pass.
async fn check_log(log: &dyn Log) {
    let start = log.durable_end();
    let first = log.append(vec![payload(0), payload(1)]).await.unwrap();
    assert_eq!(first, start);
    // appended but not yet durable: invisible to readers
    assert!(log.read(first, 1 << 20).await.unwrap().is_empty());
    log.wait_durable(first + 2).await.unwrap();
    assert_eq!(log.durable_end(), first + 2);

    // many appends share one sync
    for _ in 0..8u64 {
        for i in 0..25u64 {
            log.append(vec![payload(i)]).await.unwrap();
        }
    }
    log.wait_durable(first + 202).await.unwrap();
    let all = read_all(log, first).await;
    assert_eq!(all.len(), 202);
    assert_eq!(all[0].1, payload(0));
    assert_eq!(all[1].1, payload(1));
    for (k, (off, data)) in all.iter().enumerate().skip(2) {
        assert_eq!(*off, first + k as u64);
        assert_eq!(*data, payload(((k - 2) % 25) as u64));
    }
    // a reader waiting for data wakes when it becomes durable
    let end = log.durable_end();
    let at = log.append(vec![payload(99)]).await.unwrap();
    log.wait_durable(at + 1).await.unwrap();
    log.wait_for_data(end, Duration::from_secs(5)).await;
    assert_eq!(log.read(end, 1).await.unwrap()[0].payload, payload(99));
    // waiting for what was never appended is an error, not a hang
    let beyond = log.durable_end() + 10;
    assert!(log.wait_durable(beyond).await.is_err());
    // small max_bytes still returns one record
    assert_eq!(log.read(first, 1).await.unwrap().len(), 1);
}

fn small_segments(dir: &std::path::Path) -> FileLogConfig {
    let mut c = FileLogConfig::new(dir);
    c.segment_bytes = 1024;
    c
}

#[tokio::test]
async fn file_log_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = FileLog::open(FileLogConfig::new(dir.path())).unwrap();
    check_log(&log).await;
}

#[tokio::test]
async fn file_log_meets_the_contract_across_many_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = FileLog::open(small_segments(dir.path())).unwrap();
    check_log(&log).await;
    let segments = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(segments > 3, "expected rolled segments, got {segments}");
}

#[tokio::test]
async fn reopening_keeps_every_durable_record() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _) = FileLog::open(small_segments(dir.path())).unwrap();
        for i in 0..300 {
            log.append(vec![payload(i)]).await.unwrap();
        }
        log.wait_durable(300).await.unwrap();
    }
    let (log, report) = FileLog::open(small_segments(dir.path())).unwrap();
    assert_eq!(report.end, 300);
    assert_eq!(report.truncated_bytes, 0);
    let all = read_all(&log, 0).await;
    assert_eq!(all.len(), 300);
    assert!(all.iter().all(|(o, p)| *p == payload(*o)));
    // and it keeps appending after them
    assert_eq!(log.append(vec![payload(300)]).await.unwrap(), 300);
}

fn last_segment(dir: &std::path::Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

async fn write_records(dir: &std::path::Path, n: u64) {
    let (log, _) = FileLog::open(FileLogConfig::new(dir)).unwrap();
    for i in 0..n {
        log.append(vec![payload(i)]).await.unwrap();
    }
    log.wait_durable(n).await.unwrap();
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_earlier_records_survive() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), 50).await;
    let seg = last_segment(dir.path());
    let full = std::fs::metadata(&seg).unwrap().len();
    // a write that the crash tore: half an entry header plus garbage
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
    drop(f);
    let (log, report) = FileLog::open(FileLogConfig::new(dir.path())).unwrap();
    assert_eq!(report.end, 50);
    assert_eq!(report.truncated_bytes, 6);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), full);
    assert_eq!(read_all(&log, 0).await.len(), 50);
}

#[tokio::test]
async fn a_corrupt_last_entry_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), 20).await;
    let seg = last_segment(dir.path());
    let len = std::fs::metadata(&seg).unwrap().len();
    // flip a byte inside the last record's payload
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, b"#", len - 2).unwrap();
    drop(f);
    let (log, report) = FileLog::open(FileLogConfig::new(dir.path())).unwrap();
    assert_eq!(
        report.end, 19,
        "the corrupt entry is cut, the 19 before it kept"
    );
    assert!(report.truncated_bytes > 0);
    let all = read_all(&log, 0).await;
    assert_eq!(all.len(), 19);
    assert!(all.iter().all(|(o, p)| *p == payload(*o)));
}

#[tokio::test]
async fn corruption_inside_a_sealed_segment_is_an_error_not_data() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _) = FileLog::open(small_segments(dir.path())).unwrap();
        for i in 0..100 {
            log.append(vec![payload(i)]).await.unwrap();
        }
        log.wait_durable(100).await.unwrap();
    }
    let mut segs: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    let f = OpenOptions::new().write(true).open(&segs[0]).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, b"!!", SEGMENT_HEADER_LEN as u64 + 10).unwrap();
    drop(f);
    let (log, _) = FileLog::open(small_segments(dir.path())).unwrap();
    let err = log.read(0, 1 << 20).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { offset: 0, .. }), "{err}");
    // later segments are still readable
    let later = log.read(50, 1 << 20).await.unwrap();
    assert_eq!(later[0].payload, payload(50));
}

#[tokio::test]
async fn a_segment_torn_at_creation_is_reset() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), 5).await;
    // crash right after creating the next segment, before its header was written
    std::fs::File::create(dir.path().join(format!("{:020}.seg", 5))).unwrap();
    let (log, report) = FileLog::open(FileLogConfig::new(dir.path())).unwrap();
    assert_eq!(report.end, 5);
    assert_eq!(read_all(&log, 0).await.len(), 5);
    assert_eq!(log.append(vec![payload(5)]).await.unwrap(), 5);
}

#[tokio::test]
async fn truncation_drops_whole_segments_below_the_offset_only() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = FileLog::open(small_segments(dir.path())).unwrap();
    for i in 0..200 {
        log.append(vec![payload(i)]).await.unwrap();
    }
    log.wait_durable(200).await.unwrap();
    let before = log.size_bytes();
    log.truncate_before(120).await.unwrap();
    assert!(log.start() > 0 && log.start() <= 120);
    assert!(log.size_bytes() < before);
    let all = read_all(&log, 120).await;
    assert_eq!(all.len(), 80);
    assert!(matches!(
        log.read(0, 10).await,
        Err(Error::Truncated { offset: 0, .. })
    ));
}

/// The segment format is a contract with every existing data dir: a change shows up here.
#[tokio::test]
async fn segment_format_matches_the_golden_file() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = FileLog::open(FileLogConfig::new(dir.path())).unwrap();
    log.append(vec![Bytes::from_static(b"hello"), Bytes::from_static(b"")])
        .await
        .unwrap();
    log.wait_durable(2).await.unwrap();
    let bytes = std::fs::read(last_segment(dir.path())).unwrap();
    let hex: String = bytes
        .chunks(8)
        .map(|c| c.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
        .collect();
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/segment.hex");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(golden, &hex).unwrap();
    }
    assert_eq!(hex, std::fs::read_to_string(golden).unwrap());
}
