//! Group commit of the file log, per segment format, against its peer: the same bytes written
//! and `fdatasync`ed with no log at all. Each round is 32 concurrent requests, each appending one
//! 200-byte record and waiting until it is durable (what the sequencer does under load). Format 2
//! adds the durable mark: one 12-byte pwrite into the segment header after each sync.
//!
//! `cargo bench -p hoistway-log --bench group_commit` (the temp dir is on the disk that holds
//! `TMPDIR`; the first line printed is that disk's raw fdatasync rate).

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hoistway_log::{FileLog, FileLogConfig, Log};

const WRITERS: usize = 32;
const RECORD: usize = 200;

fn raw_fdatasync_rate() -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut f = std::fs::File::create(dir.path().join("probe")).unwrap();
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(1) {
        f.write_all(&[0u8; RECORD]).unwrap();
        f.sync_data().unwrap();
        n += 1;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn group_commit(c: &mut Criterion) {
    println!("this disk: {:.0} fdatasync/s", raw_fdatasync_rate());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("group_commit");
    group.throughput(Throughput::Elements(WRITERS as u64));
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(5));

    // The peer: one write of the whole round's bytes and one fdatasync, no log.
    group.bench_function("raw_write_fdatasync", |b| {
        let dir = tempfile::tempdir().unwrap();
        let mut f = std::fs::File::create(dir.path().join("raw")).unwrap();
        let round = vec![7u8; WRITERS * (RECORD + 8)];
        b.iter(|| {
            f.write_all(&round).unwrap();
            f.sync_data().unwrap();
        });
    });

    for version in [1u16, 2] {
        group.bench_function(format!("file_log_format_{version}"), |b| {
            let dir = tempfile::tempdir().unwrap();
            let mut config = FileLogConfig::new(dir.path());
            config.write_version = version;
            let (log, _) = FileLog::open(config).unwrap();
            let log = Arc::new(log);
            let record = Bytes::from(vec![7u8; RECORD]);
            b.iter(|| {
                runtime.block_on(async {
                    let mut waiting = Vec::with_capacity(WRITERS);
                    for _ in 0..WRITERS {
                        let log = log.clone();
                        let record = record.clone();
                        waiting.push(tokio::spawn(async move {
                            log.append(vec![record]).await.unwrap();
                        }));
                    }
                    for w in waiting {
                        w.await.unwrap();
                    }
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, group_commit);
criterion_main!(benches);
