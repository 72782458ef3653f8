//! Storage at its boundary: readings in, Parquet files and manifests out, read back with the
//! plain parquet reader (not the query engine), with the clock injected.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type, TimestampMicrosecondType};
use hoistway_model::{Direction, DoorState, EventKind, LiftId, ManualClock, Reading};
use hoistway_store::rollup::{merge_partials, partials_of_readings};
use hoistway_store::schema::{self, readings_batch};
use hoistway_store::{
    DAY_US, HOUR_US, Kind, Manifest, ManifestStore, Store, StoreConfig, Tier, TierStore,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// 2026-11-23T00:00:00Z
const DAY0: i64 = 1_795_392_000_000_000;

fn reading(lift: &str, seq: u64, ts_us: i64) -> Reading {
    Reading {
        lift_id: LiftId::new(lift).unwrap(),
        epoch: 0,
        seq,
        ts_us,
        received_us: ts_us + 150_000,
        floor: (seq % 12) as i16,
        direction: Direction::Idle,
        door: DoorState::Closed,
        load_kg: Some((seq % 5) as f32 * 75.0),
        speed_mps: Some(0.0),
        motor_temp_c: Some(30.0 + (seq % 9) as f32),
        vibration_mm_s: None,
        trips: (seq % 3) as u32,
        door_cycles: 1,
        faults: if seq.is_multiple_of(50) {
            vec!["E101".into()]
        } else {
            vec![]
        },
        events: if seq.is_multiple_of(97) {
            vec![EventKind::Entrapment]
        } else {
            vec![]
        },
        extra: [("cabin_temp_c".to_string(), 21.5)].into_iter().collect(),
    }
}

/// `n` readings per lift for `lifts` lifts, 10 s apart from `start`.
fn fleet(lifts: usize, n: u64, start: i64) -> Vec<Reading> {
    let mut out = Vec::new();
    for i in 0..n {
        for l in 0..lifts {
            out.push(reading(
                &format!("lift-{l:04}"),
                i + 1,
                start + i as i64 * 10_000_000,
            ));
        }
    }
    out
}

struct Fixture {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
}

impl Fixture {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            clock: Arc::new(ManualClock::new(DAY0 + 12 * HOUR_US)),
        }
    }

    fn hot(&self) -> std::path::PathBuf {
        self.dir.path().join("hot")
    }

    fn archive(&self) -> std::path::PathBuf {
        self.dir.path().join("archive")
    }

    fn config(&self) -> StoreConfig {
        let mut c = StoreConfig::new(
            TierStore::local(self.hot()).unwrap(),
            TierStore::local(self.archive()).unwrap(),
        );
        c.compact_min_files = 4;
        c
    }

    async fn open(&self) -> Arc<Store> {
        Arc::new(
            Store::open(self.config(), self.clock.clone())
                .await
                .unwrap(),
        )
    }
}

fn read_file(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).unwrap();
    ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Every committed readings row in both tiers, as (lift, seq) pairs, checked sorted per file.
fn stored_keys(f: &Fixture, store: &Store) -> Vec<(String, i64)> {
    snapshot_keys(f, &store.snapshot())
}

/// [`stored_keys`] of a snapshot, its paths from the fixture's tiers' roots.
fn snapshot_keys(f: &Fixture, snapshot: &hoistway_store::Snapshot) -> Vec<(String, i64)> {
    let mut keys = Vec::new();
    for (tier, root) in [(Tier::Hot, f.hot()), (Tier::Archive, f.archive())] {
        for file in snapshot.files(tier, Kind::Readings) {
            let mut previous: Option<(String, i64)> = None;
            for batch in read_file(&root.join(&file.path)) {
                assert_eq!(batch.schema().fields(), schema::READINGS.fields());
                let lift = batch.column(0).as_string::<i32>();
                let ts = batch.column(1).as_primitive::<TimestampMicrosecondType>();
                let seq = batch.column(4).as_primitive::<Int64Type>();
                for i in 0..batch.num_rows() {
                    let key = (lift.value(i).to_string(), ts.value(i));
                    assert!(
                        previous.as_ref() <= Some(&key),
                        "{} is not sorted",
                        file.path
                    );
                    assert_eq!(hoistway_store::date_of(ts.value(i)), file.date);
                    previous = Some(key);
                    keys.push((lift.value(i).to_string(), seq.value(i)));
                }
            }
        }
    }
    keys.sort();
    keys
}

fn keys_of(readings: &[Reading]) -> Vec<(String, i64)> {
    let mut keys: Vec<_> = readings
        .iter()
        .map(|r| (r.lift_id.as_str().to_string(), r.seq as i64))
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn flushed_readings_are_committed_sorted_and_replays_are_skipped() {
    let f = Fixture::new();
    let store = f.open().await;
    let readings = fleet(20, 30, DAY0);
    for (i, chunk) in readings.chunks(50).enumerate() {
        store.buffer(i as u64, chunk);
    }
    assert_eq!(
        store
            .snapshot()
            .buffer
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>(),
        600
    );
    let n = readings.chunks(50).count() as u64;
    store.flush(n).await.unwrap();
    assert_eq!(store.committed_offset(), n);
    assert!(store.snapshot().buffer.is_empty());
    assert_eq!(stored_keys(&f, &store), keys_of(&readings));
    drop(store);

    // After a crash the processor hands over records since its checkpoint again: the ones
    // already committed are skipped, the rest are kept.
    let store = f.open().await;
    let more = fleet(20, 2, DAY0 + HOUR_US);
    store.buffer(n - 1, &readings[..50]);
    store.buffer(n, &more);
    store.flush(n + 1).await.unwrap();
    let mut expected = readings.clone();
    expected.extend(more);
    assert_eq!(stored_keys(&f, &store), keys_of(&expected));
}

/// Several partitions' stores over the same tiers: each writes under its own directory with a
/// catalog of its own (file ids repeat across them), none takes another's files for leftovers
/// when it opens, and `Stores` reads them as one: every file from the tiers' roots, every
/// buffer, the status of all.
#[tokio::test]
async fn partitions_keep_their_own_files_and_read_as_one() {
    use hoistway_model::partition::partition_of;
    let f = Fixture::new();
    let root = f.config();
    let open = |p: u16| {
        let (config, clock) = (root.of_partition(p, 3).unwrap(), f.clock.clone());
        async move { Arc::new(Store::open(config, clock).await.unwrap()) }
    };
    let mut parts = Vec::new();
    for p in 0..3 {
        parts.push(open(p).await);
    }
    let flushed = fleet(30, 10, DAY0);
    let buffered = fleet(30, 1, DAY0 + HOUR_US);
    let of = |r: &Reading| usize::from(partition_of(&r.lift_id, 3));
    for (offset, r) in flushed.iter().enumerate() {
        parts[of(r)].buffer(offset as u64, std::slice::from_ref(r));
    }
    for store in &parts {
        store.flush(flushed.len() as u64).await.unwrap();
    }
    for (i, r) in buffered.iter().enumerate() {
        parts[of(r)].buffer((flushed.len() + i) as u64, std::slice::from_ref(r));
    }
    // Reopening one partition's store leaves the others' files alone.
    drop(parts.remove(0));
    parts.insert(0, open(0).await);
    for r in buffered.iter().filter(|r| of(r) == 0) {
        parts[0].buffer(flushed.len() as u64, std::slice::from_ref(r));
    }

    let stores = hoistway_store::Stores::partitioned(&root, parts.clone());
    let snapshot = stores.snapshot();
    assert_eq!(snapshot_keys(&f, &snapshot), keys_of(&flushed));
    let files: Vec<_> = snapshot.files(Tier::Hot, Kind::Readings).collect();
    for p in 0..3 {
        let dir = format!("{}/", hoistway_store::partition_dir(p));
        assert!(
            files.iter().any(|file| file.path.starts_with(&dir)),
            "{files:?}"
        );
    }
    let mut ids: Vec<u64> = files.iter().map(|file| file.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert!(
        ids.len() < files.len(),
        "each partition numbers its files from 1"
    );
    let rows: usize = snapshot.buffer.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, buffered.len());
    let status = stores.status();
    assert_eq!(status.buffered_rows, buffered.len() as u64);
    let hot = status
        .tiers
        .iter()
        .find(|t| t.tier == Tier::Hot && t.kind == Kind::Readings)
        .unwrap();
    assert_eq!(hot.rows, flushed.len() as u64);
    assert_eq!(hot.files, files.len() as u64);
}

#[tokio::test]
async fn files_no_manifest_lists_are_removed_on_open() {
    let f = Fixture::new();
    let store = f.open().await;
    store.buffer(0, &fleet(3, 10, DAY0));
    store.flush(1).await.unwrap();
    drop(store);
    // What a crash between writing a file and committing the manifest leaves behind.
    let orphan = f
        .hot()
        .join("readings/date=2026-11-23/f000000000999.parquet");
    std::fs::write(&orphan, b"half a file").unwrap();
    let store = f.open().await;
    assert!(!orphan.exists());
    assert_eq!(stored_keys(&f, &store).len(), 30);
}

/// A query node's store: it sees what the writer committed once it reloads, never deletes a
/// file the writer has not committed yet, and refuses to flush or do upkeep.
#[tokio::test]
async fn a_reader_follows_the_writer_and_changes_nothing() {
    let f = Fixture::new();
    let writer = f.open().await;
    // Three days old: upkeep moves it to the archive below.
    let first = fleet(3, 10, DAY0 - 3 * DAY_US);
    writer.buffer(0, &first);
    writer.flush(1).await.unwrap();
    // A file the writer is still writing (not in a manifest yet).
    let writing = f
        .hot()
        .join("readings/date=2026-11-23/f000000000999.parquet");
    std::fs::create_dir_all(writing.parent().unwrap()).unwrap();
    std::fs::write(&writing, b"half a file").unwrap();
    let reader = Arc::new(
        Store::open_reader(f.config(), f.clock.clone())
            .await
            .unwrap(),
    );
    assert!(writing.exists(), "a reader deletes nothing");
    assert_eq!(stored_keys(&f, &reader), keys_of(&first));
    assert!(!reader.reload().await.unwrap(), "nothing new");

    let second = fleet(3, 5, DAY0 + HOUR_US);
    writer.buffer(1, &second);
    writer.flush(2).await.unwrap();
    assert_eq!(
        stored_keys(&f, &reader),
        keys_of(&first),
        "until it reloads"
    );
    assert!(reader.reload().await.unwrap());
    let mut both = first.clone();
    both.extend(second);
    assert_eq!(stored_keys(&f, &reader), keys_of(&both));
    assert_eq!(reader.committed_offset(), 2);

    reader.buffer(2, &fleet(1, 1, DAY0));
    let refused = reader.flush(3).await.unwrap_err().to_string();
    assert!(refused.contains("does not write"), "{refused}");
    let refused = reader.maintain().await.unwrap_err().to_string();
    assert!(refused.contains("does not write"), "{refused}");
    assert_eq!(
        writer.snapshot().hot.generation,
        reader.snapshot().hot.generation
    );

    // The writer moves the old date to the archive: the reader sees each reading once.
    assert_eq!(writer.maintain().await.unwrap().moved_files, 2);
    assert!(reader.reload().await.unwrap());
    assert_eq!(stored_keys(&f, &reader), keys_of(&both));
    let archived = reader.snapshot().archive.files.len();
    assert_eq!(archived, 2, "readings and rollups of one date");
}

#[tokio::test]
async fn late_readings_are_stored_under_their_event_date() {
    let f = Fixture::new();
    let store = f.open().await;
    let mut readings = fleet(2, 5, DAY0);
    readings.extend(fleet(2, 5, DAY0 - DAY_US + 3 * HOUR_US));
    store.buffer(0, &readings);
    store.flush(1).await.unwrap();
    let snapshot = store.snapshot();
    let dates: std::collections::BTreeSet<&str> = snapshot
        .files(Tier::Hot, Kind::Readings)
        .map(|f| f.date.as_str())
        .collect();
    assert_eq!(
        dates.into_iter().collect::<Vec<_>>(),
        ["2026-11-22", "2026-11-23"]
    );
    assert!(f.hot().join("readings/date=2026-11-22").is_dir());
    assert_eq!(stored_keys(&f, &store).len(), 20);
}

#[tokio::test]
async fn compaction_merges_small_files_into_one_sorted_file() {
    let f = Fixture::new();
    let store = f.open().await;
    let mut all = Vec::new();
    for i in 0..6u64 {
        // Overlapping lifts and times across flushes, as live traffic gives.
        let batch: Vec<Reading> = fleet(7, 4, DAY0 + i as i64 * 40_000_000)
            .into_iter()
            .map(|mut r| {
                r.seq += i * 4;
                r
            })
            .collect();
        store.buffer(i, &batch);
        store.flush(i + 1).await.unwrap();
        all.extend(batch);
    }
    assert_eq!(store.snapshot().files(Tier::Hot, Kind::Readings).count(), 6);
    let before_partials = rollups(&f, &store);
    let report = store.maintain().await.unwrap();
    assert_eq!(
        report.compactions, 2,
        "readings and rollups of the one date"
    );
    let snapshot = store.snapshot();
    let files: Vec<_> = snapshot.files(Tier::Hot, Kind::Readings).collect();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].level, 1);
    assert_eq!(stored_keys(&f, &store), keys_of(&all));
    assert_eq!(snapshot.files(Tier::Hot, Kind::RollupsHourly).count(), 1);
    assert_eq!(rollups(&f, &store), before_partials);
    // The inputs stay until the grace period is over (a running query may read them).
    let garbage = snapshot.hot.garbage.len();
    assert_eq!(garbage, 12);
    f.clock.advance_secs(3600);
    let report = store.maintain().await.unwrap();
    assert_eq!(report.deleted_garbage, 12);
    let left = walk(&f.hot().join("readings"));
    assert_eq!(left.len(), 1, "{left:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// All committed rollup partials merged into one partial per (lift, hour).
fn rollups(f: &Fixture, store: &Store) -> RecordBatch {
    let snapshot = store.snapshot();
    let mut batches = Vec::new();
    for (tier, root) in [(Tier::Hot, f.hot()), (Tier::Archive, f.archive())] {
        for file in snapshot.files(tier, Kind::RollupsHourly) {
            batches.extend(read_file(&root.join(&file.path)));
        }
    }
    merge_partials(&batches)
}

#[tokio::test]
async fn tiers_and_retention_follow_the_clock() {
    let f = Fixture::new();
    let store = f.open().await;
    store.buffer(0, &fleet(3, 10, DAY0 - 3 * DAY_US));
    store.buffer(1, &fleet(3, 10, DAY0 - DAY_US));
    store.buffer(2, &fleet(3, 10, DAY0));
    store.flush(3).await.unwrap();
    let status = |store: &Store, tier: Tier| {
        store
            .status()
            .tiers
            .into_iter()
            .find(|t| t.tier == tier && t.kind == Kind::Readings)
            .unwrap()
    };
    assert_eq!(status(&store, Tier::Hot).rows, 90);

    // Now is DAY0 12:00: only the file of three days ago is older than 48 h.
    let report = store.maintain().await.unwrap();
    assert_eq!(report.moved_files, 2, "readings and rollups of one date");
    assert_eq!(status(&store, Tier::Hot).rows, 60);
    assert_eq!(status(&store, Tier::Archive).rows, 30);
    assert_eq!(
        status(&store, Tier::Archive).oldest.as_deref(),
        Some("2026-11-20")
    );
    assert!(f.archive().join("readings/date=2026-11-20").is_dir());
    assert_eq!(stored_keys(&f, &store).len(), 90);
    drop(store);
    // Reopening reads both manifests: nothing moved twice, nothing lost.
    let store = f.open().await;
    assert_eq!(stored_keys(&f, &store).len(), 90);

    // A day later the file of yesterday moves too, and with a short retention the oldest
    // date is deleted from the archive.
    f.clock.advance_secs(24 * 3600);
    let mut config = f.config();
    config.retention_us = 3 * DAY_US;
    drop(store);
    let store = Arc::new(Store::open(config, f.clock.clone()).await.unwrap());
    let report = store.maintain().await.unwrap();
    assert_eq!(report.expired_files, 2);
    assert_eq!(report.expired_rows, 30);
    assert_eq!(report.moved_files, 2);
    assert_eq!(status(&store, Tier::Hot).rows, 30);
    assert_eq!(status(&store, Tier::Archive).rows, 30);
    assert_eq!(
        status(&store, Tier::Archive).oldest.as_deref(),
        Some("2026-11-22")
    );
    f.clock.advance_secs(3600);
    store.maintain().await.unwrap();
    assert!(walk(&f.archive().join("readings/date=2026-11-20")).is_empty());
    assert!(walk(&f.hot().join("readings/date=2026-11-22")).is_empty());
}

#[tokio::test]
async fn archived_rollups_are_merged_per_month_once_it_is_over() {
    let f = Fixture::new(); // now: 2026-11-23 12:00
    let store = f.open().await;
    // Three dates in October and one in November, all older than the 48 h hot retention.
    for (offset, days_ago) in [49i64, 37, 23, 21].into_iter().enumerate() {
        store.buffer(offset as u64, &fleet(3, 10, DAY0 - days_ago * DAY_US));
    }
    store.flush(4).await.unwrap();
    let partitions = |store: &Store, kind: Kind| {
        let mut dates: Vec<String> = store
            .snapshot()
            .files(Tier::Archive, kind)
            .map(|f| f.date.clone())
            .collect();
        dates.sort();
        dates
    };
    let before = rollups(&f, &store);
    store.maintain().await.unwrap();
    assert_eq!(
        partitions(&store, Kind::RollupsHourly),
        ["2026-10", "2026-11-02"],
        "October is over and merged; November is still open"
    );
    assert_eq!(
        partitions(&store, Kind::Readings),
        ["2026-10-05", "2026-10-17", "2026-10-31", "2026-11-02"],
        "readings stay per date"
    );
    assert!(f.archive().join("rollups_hourly/month=2026-10").is_dir());
    assert_eq!(
        rollups(&f, &store),
        before,
        "merging keeps every rollup exact"
    );

    // A late October backlog reaches the archive and joins the month file.
    store.buffer(4, &fleet(4, 6, DAY0 - 40 * DAY_US));
    store.flush(5).await.unwrap();
    let before = rollups(&f, &store);
    let report = store.maintain().await.unwrap();
    assert!(report.compactions >= 1);
    assert_eq!(
        partitions(&store, Kind::RollupsHourly),
        ["2026-10", "2026-11-02"]
    );
    assert_eq!(rollups(&f, &store), before);
    // Merged files are not merged again.
    assert_eq!(store.maintain().await.unwrap().compactions, 0);
    drop(store);
    let store = f.open().await;
    assert_eq!(
        rollups(&f, &store),
        before,
        "the month file survives a reopen"
    );
}

#[tokio::test]
async fn an_interrupted_move_keeps_the_archive_copy_only() {
    let f = Fixture::new();
    let store = f.open().await;
    store.buffer(0, &fleet(2, 5, DAY0 - 3 * DAY_US));
    store.flush(1).await.unwrap();
    drop(store);
    // A crash after the archive manifest listed the file but before the hot one dropped it.
    let hot = Manifest::load(TierStore::local(f.hot()).unwrap().store.as_ref())
        .await
        .unwrap()
        .unwrap();
    let archive_store = TierStore::local(f.archive()).unwrap();
    let mut archive = Manifest::new();
    for file in &hot.files {
        let to = f.archive().join(&file.path);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(f.hot().join(&file.path), to).unwrap();
        archive.files.push(file.clone());
    }
    archive.save(archive_store.store.as_ref()).await.unwrap();
    let store = f.open().await;
    assert_eq!(store.snapshot().files(Tier::Hot, Kind::Readings).count(), 0);
    assert_eq!(
        store
            .snapshot()
            .files(Tier::Archive, Kind::Readings)
            .count(),
        1
    );
    assert_eq!(stored_keys(&f, &store).len(), 10);
}

#[test]
fn merging_split_partials_equals_partials_of_all() {
    let all = fleet(3, 400, DAY0 + 50 * 60_000_000);
    let whole = partials_of_readings(&[readings_batch(&all)]);
    let parts: Vec<RecordBatch> = all
        .chunks(17)
        .map(|c| partials_of_readings(&[readings_batch(c)]))
        .collect();
    assert_eq!(merge_partials(&parts), whole);
    let readings: i64 = whole
        .column(2)
        .as_primitive::<Int64Type>()
        .iter()
        .flatten()
        .sum();
    assert_eq!(readings, 1200);
    let trips: i64 = whole
        .column(3)
        .as_primitive::<Int64Type>()
        .iter()
        .flatten()
        .sum();
    let expected: i64 = all.iter().map(|r| i64::from(r.trips)).sum();
    assert_eq!(trips, expected);
    // 400 readings 10 s apart from 00:50:00 end at 01:56:30: minutes 50-59 of the first hour
    // and 0-56 of the second, for each of the three lifts.
    assert_eq!(whole.num_rows(), 6);
    let masks = whole.column(17).as_primitive::<Int64Type>();
    let minutes: Vec<u32> = (0..6).map(|i| masks.value(i).count_ones()).collect();
    assert_eq!(minutes, [10, 57, 10, 57, 10, 57]);
}

#[test]
fn stored_schemas_match_the_golden_files() {
    for (name, schema) in [
        ("readings", schema::READINGS.clone()),
        ("rollup_partials", schema::ROLLUP_PARTIALS.clone()),
    ] {
        let path = format!("{}/tests/golden/{name}.schema", env!("CARGO_MANIFEST_DIR"));
        let actual = schema::describe(&schema);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &actual).unwrap();
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            actual, expected,
            "the {name} schema changed: update docs/storage.md and rerun with UPDATE_GOLDEN=1"
        );
    }
}

#[test]
fn written_files_use_the_documented_encodings() {
    // 300,000 distinct speeds outgrow a dictionary page; temperatures repeat.
    let mut readings = fleet(3000, 100, DAY0);
    for (i, r) in readings.iter_mut().enumerate() {
        r.speed_mps = Some(0.5 + i as f32 * 1e-5);
    }
    let batch = readings_batch(&readings);
    let sorted = batch; // fleet() is sorted by ts, not lift; encodings do not depend on it
    let bytes = {
        let mut out = Vec::new();
        let mut w = parquet::arrow::ArrowWriter::try_new(
            &mut out,
            sorted.schema(),
            Some(schema::readings_writer_properties(1 << 20)),
        )
        .unwrap();
        w.write(&sorted).unwrap();
        w.close().unwrap();
        bytes::Bytes::from(out)
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
    let meta = reader.metadata().row_group(0);
    let encodings = |name: &str| {
        let column = meta
            .columns()
            .iter()
            .find(|c| c.column_path().string() == name)
            .unwrap();
        // The level is not recorded in the file, only the codec.
        assert!(matches!(
            column.compression(),
            parquet::basic::Compression::ZSTD(_)
        ));
        format!("{:?}", column.encodings().collect::<Vec<_>>())
    };
    assert!(encodings("ts").contains("DELTA_BINARY_PACKED"));
    assert!(encodings("seq").contains("DELTA_BINARY_PACKED"));
    assert!(!encodings("seq").contains("DICTIONARY"));
    for dictionary in ["lift_id", "epoch", "direction", "motor_temp_c", "trips"] {
        assert!(
            encodings(dictionary).contains("RLE_DICTIONARY"),
            "{dictionary}: {}",
            encodings(dictionary)
        );
    }
    assert!(!encodings("motor_temp_c").contains("BYTE_STREAM_SPLIT"));
    assert!(
        encodings("speed_mps").contains("BYTE_STREAM_SPLIT"),
        "a sensor's overflowing dictionary falls back to byte-stream-split: {}",
        encodings("speed_mps")
    );
    let trips = sorted.column(12).as_primitive::<Int32Type>();
    assert_eq!(trips.len(), 300_000);
}

#[tokio::test]
async fn tier_manifests_pass_the_manifest_store_conformance_suite() {
    let f = Fixture::new();
    let manifests = hoistway_store::TierManifests::new(
        TierStore::local(f.hot()).unwrap(),
        TierStore::local(f.archive()).unwrap(),
    );
    // One process writes a data dir: there is no second handle to check against.
    hoistway_store::manifest::conformance::check(&manifests, None).await;
}

/// A writer taking over from another starts its file ids at `first_file_id`, above any the
/// other could still use; and a manifest commit that loses its compare-and-swap keeps the
/// readings buffered and visible, and lists nothing.
#[tokio::test]
async fn a_writer_taking_over_writes_ids_of_its_own_and_a_lost_commit_lists_nothing() {
    let f = Fixture::new();
    let store = f.open().await;
    store.buffer(0, &fleet(2, 5, DAY0));
    store.flush(1).await.unwrap();
    drop(store);

    let mut config = f.config();
    config.first_file_id = 7 << 32;
    let manifests = Arc::new(hoistway_store::TierManifests::new(
        TierStore::local(f.hot()).unwrap(),
        TierStore::local(f.archive()).unwrap(),
    ));
    config.manifests = manifests.clone();
    let store = Arc::new(Store::open(config, f.clock.clone()).await.unwrap());
    store.buffer(1, &fleet(2, 5, DAY0 + HOUR_US));
    store.flush(2).await.unwrap();
    let ids: Vec<u64> = store
        .snapshot()
        .files(Tier::Hot, Kind::Readings)
        .map(|f| f.id)
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids[0] < 7 << 32 && ids[1] >= 7 << 32, "{ids:?}");

    // Another writer commits behind this one's back: its next commit is refused.
    let mut theirs = manifests.load(Tier::Hot).await.unwrap().unwrap();
    theirs.generation += 1;
    manifests.commit(Tier::Hot, &theirs).await.unwrap();
    store.buffer(2, &fleet(2, 5, DAY0 + 2 * HOUR_US));
    let err = store.flush(3).await.unwrap_err();
    assert!(matches!(err, hoistway_store::Error::Conflict(_)), "{err}");
    assert_eq!(store.snapshot().files(Tier::Hot, Kind::Readings).count(), 2);
    assert_eq!(store.committed_offset(), 2);
    assert_eq!(
        store.status().buffered_rows,
        10,
        "the readings stay buffered"
    );
}
