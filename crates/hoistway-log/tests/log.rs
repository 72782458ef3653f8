//! The `Log` contract, checked against every implementation, and the file log's recovery.

use std::fs::OpenOptions;
use std::io::Write;

use bytes::Bytes;
use hoistway_log::conformance::{check_log, payload, read_all};
use hoistway_log::{
    ENTRY_HEADER_LEN, Error, FileLog, FileLogConfig, Log, SEGMENT_HEADER_LEN, is_placeholder,
    repair,
};

fn small_segments(dir: &std::path::Path) -> FileLogConfig {
    let mut c = FileLogConfig::new(dir);
    c.segment_bytes = 1024;
    c
}

#[tokio::test]
async fn file_log_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = FileLog::open(FileLogConfig::new(dir.path())).unwrap();
    check_log(std::sync::Arc::new(log)).await;
}

/// The file log's two halves of an append: written records stay invisible until synced, and
/// waiting for what was never written is an error, not a hang.
#[tokio::test]
async fn file_log_records_are_invisible_until_synced() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = FileLog::open(FileLogConfig::new(dir.path())).unwrap();
    let first = log
        .append_unsynced(vec![payload(0), payload(1)])
        .await
        .unwrap();
    assert!(log.read(first, 1 << 20).await.unwrap().is_empty());
    assert_eq!(log.durable_end(), first);
    log.wait_durable(first + 2).await.unwrap();
    assert_eq!(log.durable_end(), first + 2);
    assert_eq!(log.read(first, 1 << 20).await.unwrap().len(), 2);
    assert!(matches!(
        log.wait_durable(first + 10).await,
        Err(Error::BeyondEnd { .. })
    ));
}

#[tokio::test]
async fn file_log_meets_the_contract_across_many_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = FileLog::open(small_segments(dir.path())).unwrap();
    check_log(std::sync::Arc::new(log)).await;
    let segments = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(segments > 3, "expected rolled segments, got {segments}");
}

#[tokio::test]
async fn reopening_keeps_every_durable_record() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _) = FileLog::open(small_segments(dir.path())).unwrap();
        for i in 0..300 {
            log.append_unsynced(vec![payload(i)]).await.unwrap();
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
    assert_eq!(log.append_unsynced(vec![payload(300)]).await.unwrap(), 300);
}

/// A backup's copy: while truncation is pinned, `copy_durable` copies exactly the durable
/// records from the segment holding the pinned offset (written but unsynced records stay out),
/// and the copy opens as a log; `cut_log` then ends it at an offset, mark included.
#[tokio::test]
async fn a_copy_holds_the_durable_records_and_a_cut_ends_the_log_there() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = FileLog::open(small_segments(dir.path())).unwrap();
    for i in 0..200 {
        log.append_unsynced(vec![payload(i)]).await.unwrap();
    }
    log.wait_durable(200).await.unwrap();
    let pin = log.pin(120);
    log.truncate_before(180).await.unwrap();
    assert!(
        log.start() <= 120,
        "the pin keeps truncation off offset 120"
    );
    // written, not synced: not in the copy
    log.append_unsynced(vec![payload(200)]).await.unwrap();
    let to = tempfile::tempdir().unwrap();
    let copy = log.copy_durable(&pin, 120, to.path()).unwrap();
    assert_eq!(copy.end, 200);
    assert!(copy.start <= 120 && copy.files.len() > 1, "{copy:?}");
    drop(pin);
    log.truncate_before(180).await.unwrap();
    assert!(log.start() > 120, "the pin is gone");

    let (copied, report) = FileLog::open(small_segments(to.path())).unwrap();
    assert_eq!((report.end, report.truncated_bytes), (200, 0));
    let records = read_all(&copied, copy.start).await;
    assert_eq!(records.len() as u64, 200 - copy.start);
    assert!(records.iter().all(|(o, p)| *p == payload(*o)));
    drop(copied);

    hoistway_log::cut_log(to.path(), 150).unwrap();
    let (cut, report) = FileLog::open(small_segments(to.path())).unwrap();
    assert_eq!((report.end, report.truncated_bytes), (150, 0));
    assert_eq!(report.durable_mark, 150);
    assert_eq!(
        read_all(&cut, copy.start).await.len() as u64,
        150 - copy.start
    );
    assert_eq!(cut.append_unsynced(vec![payload(150)]).await.unwrap(), 150);
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
        log.append_unsynced(vec![payload(i)]).await.unwrap();
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

fn flip_byte_at(path: &std::path::Path, at: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, at).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, &[b[0] ^ 0x20], at).unwrap();
}

fn version_1(dir: &std::path::Path) -> FileLogConfig {
    let mut c = FileLogConfig::new(dir);
    c.write_version = 1;
    c
}

#[tokio::test]
async fn a_damaged_entry_below_the_durable_mark_stops_recovery_until_repaired() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), 20).await;
    let seg = last_segment(dir.path());
    let len = std::fs::metadata(&seg).unwrap().len();
    // a bit flip inside the last record's payload: it was acknowledged, so it is not a torn tail
    flip_byte_at(&seg, len - 2);
    let err = match FileLog::open(FileLogConfig::new(dir.path())) {
        Err(e) => e,
        Ok(_) => panic!("a damaged acknowledged entry must stop recovery"),
    };
    assert!(matches!(err, Error::Corrupt { offset: 19, .. }), "{err}");
    assert!(err.to_string().contains("hoistway log repair"), "{err}");
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        len,
        "nothing was cut"
    );

    let dry = repair(dir.path(), true).unwrap();
    assert_eq!(dry.zeroed, vec![19]);
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        len,
        "a dry run writes nothing"
    );
    let report = repair(dir.path(), false).unwrap();
    assert_eq!(report.zeroed, vec![19]);
    assert_eq!(report.records_lost(), 1);
    assert!(repair(dir.path(), false).unwrap().is_clean());

    let (log, report) = FileLog::open(FileLogConfig::new(dir.path())).unwrap();
    assert_eq!((report.end, report.truncated_bytes), (20, 0));
    let all = read_all(&log, 0).await;
    assert_eq!(all.len(), 20);
    assert!(all[..19].iter().all(|(o, p)| *p == payload(*o)));
    assert!(is_placeholder(&all[19].1));
    assert_eq!(log.append_unsynced(vec![payload(20)]).await.unwrap(), 20);
}

#[tokio::test]
async fn a_damaged_length_in_the_middle_is_repaired_with_placeholders_up_to_the_mark() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), 30).await;
    let seg = last_segment(dir.path());
    // the length field of entry 10 claims far more than the segment holds
    let mut pos = SEGMENT_HEADER_LEN as u64;
    for i in 0..10 {
        pos += (ENTRY_HEADER_LEN + payload(i).len()) as u64;
    }
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, &[0xff, 0xff, 0x00], pos).unwrap();
    drop(f);
    assert!(matches!(
        FileLog::open(FileLogConfig::new(dir.path())),
        Err(Error::Corrupt { offset: 10, .. })
    ));
    let report = repair(dir.path(), false).unwrap();
    assert_eq!(report.lost, vec![10..30]);
    assert!(report.dropped_bytes > 0);
    let (log, _) = FileLog::open(FileLogConfig::new(dir.path())).unwrap();
    let all = read_all(&log, 0).await;
    assert_eq!(all.len(), 30, "every offset is still there");
    assert!(all[..10].iter().all(|(o, p)| *p == payload(*o)));
    assert!(all[10..].iter().all(|(_, p)| is_placeholder(p)));
}

#[tokio::test]
async fn a_version_1_log_still_cuts_a_corrupt_last_entry_and_moves_to_version_2() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _) = FileLog::open(version_1(dir.path())).unwrap();
        for i in 0..20 {
            log.append_unsynced(vec![payload(i)]).await.unwrap();
        }
        log.wait_durable(20).await.unwrap();
    }
    let seg = last_segment(dir.path());
    assert_eq!(&std::fs::read(&seg).unwrap()[6..8], &1u16.to_le_bytes());
    let len = std::fs::metadata(&seg).unwrap().len();
    flip_byte_at(&seg, len - 2);
    // version 1 has no durable mark: the first bad entry ends the data, as it always did
    let (log, report) = FileLog::open(FileLogConfig::new(dir.path())).unwrap();
    assert_eq!(report.end, 19);
    assert!(report.truncated_bytes > 0);
    // new entries go to a new, version 2 segment; the old one is read as it is
    assert_eq!(log.append_unsynced(vec![payload(19)]).await.unwrap(), 19);
    log.wait_durable(20).await.unwrap();
    let new_seg = last_segment(dir.path());
    assert_ne!(new_seg, seg);
    assert_eq!(&std::fs::read(&new_seg).unwrap()[6..8], &2u16.to_le_bytes());
    let all = read_all(&log, 0).await;
    assert_eq!(all.len(), 20);
    assert!(all.iter().all(|(o, p)| *p == payload(*o)));
}

#[tokio::test]
async fn a_node_told_to_write_version_1_keeps_writing_it_for_older_readers() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = FileLog::open(version_1(dir.path())).unwrap();
    check_log(std::sync::Arc::new(log)).await;
    // the version 1 reader (the previous release's rules) reads every entry of it
    let mut total = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        total += read_version_1_segment(&bytes).len();
    }
    assert_eq!(total, 404, "every record the suite appended");
}

/// The previous release's reader: a 16-byte header of version 1, then entries.
fn read_version_1_segment(bytes: &[u8]) -> Vec<Vec<u8>> {
    assert_eq!(&bytes[..6], b"HWLOG\0");
    assert_eq!(
        u16::from_le_bytes([bytes[6], bytes[7]]),
        1,
        "version 1 only"
    );
    let mut pos = 16;
    let mut out = Vec::new();
    while pos + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap());
        let payload = &bytes[pos + 8..pos + 8 + len];
        assert_eq!(
            crc32c::crc32c_append(crc32c::crc32c(&bytes[pos..pos + 4]), payload),
            crc
        );
        out.push(payload.to_vec());
        pos += 8 + len;
    }
    out
}

#[tokio::test]
async fn a_segment_of_a_newer_format_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), 3).await;
    let seg = last_segment(dir.path());
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, &9u16.to_le_bytes(), 6).unwrap();
    drop(f);
    let err = match FileLog::open(FileLogConfig::new(dir.path())) {
        Err(e) => e,
        Ok(_) => panic!("a newer format must be refused"),
    };
    assert!(matches!(err, Error::Format { version: 9, .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("00000000000000000000.seg") && message.contains("version 9"),
        "{message}"
    );
    assert!(matches!(
        repair(dir.path(), true),
        Err(Error::Format { .. })
    ));
}

#[tokio::test]
async fn corruption_inside_a_sealed_segment_is_an_error_not_data() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _) = FileLog::open(small_segments(dir.path())).unwrap();
        for i in 0..100 {
            log.append_unsynced(vec![payload(i)]).await.unwrap();
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
    assert_eq!(log.append_unsynced(vec![payload(5)]).await.unwrap(), 5);
}

#[tokio::test]
async fn truncation_drops_whole_segments_below_the_offset_only() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = FileLog::open(small_segments(dir.path())).unwrap();
    for i in 0..200 {
        log.append_unsynced(vec![payload(i)]).await.unwrap();
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

fn hex_lines(bytes: &[u8]) -> String {
    bytes
        .chunks(8)
        .map(|c| c.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
        .collect()
}

/// Each segment format is a contract with every existing data dir: a change shows up here.
#[tokio::test]
async fn segment_formats_match_their_golden_files() {
    for (version, golden) in [(1, "segment-v1.hex"), (2, "segment-v2.hex")] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = FileLogConfig::new(dir.path());
        config.write_version = version;
        let (log, _) = FileLog::open(config.clone()).unwrap();
        log.append_unsynced(vec![Bytes::from_static(b"hello"), Bytes::from_static(b"")])
            .await
            .unwrap();
        log.wait_durable(2).await.unwrap();
        let hex = hex_lines(&std::fs::read(last_segment(dir.path())).unwrap());
        let golden = format!("{}/tests/golden/{golden}", env!("CARGO_MANIFEST_DIR"));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &hex).unwrap();
        }
        assert_eq!(hex, std::fs::read_to_string(&golden).unwrap(), "{golden}");
        // and the golden bytes are read back by this build
        drop(log);
        let (log, report) = FileLog::open(config).unwrap();
        assert_eq!(report.end, 2);
        let all = read_all(&log, 0).await;
        assert_eq!(all[0].1, Bytes::from_static(b"hello"));
    }
}
