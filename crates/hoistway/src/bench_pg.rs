//! The PostgreSQL peer of `hoistway bench`: what a user would otherwise pick for "an idempotent
//! conditional write keyed on the device sequence". The same readings go into a table keyed on
//! (lift_id, epoch, seq) with `INSERT … ON CONFLICT DO NOTHING` and synchronous commit (the
//! server's default: a commit returns once its WAL is flushed), one row per statement and in
//! batches of 1,000, and with COPY (batches, not idempotent: COPY has no ON CONFLICT).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::SinkExt;
use tokio_postgres::NoTls;

const TABLE: &str = "hoistway_bench_readings";

const CREATE: &str = "CREATE TABLE hoistway_bench_readings (
    lift_id text NOT NULL, epoch bigint NOT NULL, seq bigint NOT NULL,
    ts timestamptz NOT NULL, floor smallint NOT NULL, direction text NOT NULL,
    door text NOT NULL, load_kg real, speed_mps real, motor_temp_c real,
    vibration_mm_s real, trips integer NOT NULL, door_cycles integer NOT NULL,
    PRIMARY KEY (lift_id, epoch, seq))";

const INSERT_ONE: &str = "INSERT INTO hoistway_bench_readings VALUES
    ($1, 0, $2, now(), 3, 'up', 'closed', 420.5, 1.6, 41.2, 0.8, 1, 2)
    ON CONFLICT (lift_id, epoch, seq) DO NOTHING";

const INSERT_MANY: &str = "INSERT INTO hoistway_bench_readings
    SELECT l, 0, s, now(), 3, 'up', 'closed', 420.5, 1.6, 41.2, 0.8, 1, 2
    FROM unnest($1::text[], $2::bigint[]) AS r(l, s)
    ON CONFLICT (lift_id, epoch, seq) DO NOTHING";

/// How readings are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One `INSERT … ON CONFLICT DO NOTHING` per reading (one commit each).
    Single,
    /// 1,000 readings per `INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING`.
    Batch,
    /// 1,000 readings per `COPY … FROM STDIN`.
    Copy,
}

pub struct PgResult {
    pub readings: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latencies_us: Vec<u32>,
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {url:?}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Drops and creates the benchmark table; returns the server's version.
pub async fn prepare(url: &str) -> anyhow::Result<String> {
    let client = connect(url).await?;
    client
        .batch_execute(&format!("DROP TABLE IF EXISTS {TABLE}; {CREATE}"))
        .await?;
    let row = client.query_one("SHOW server_version", &[]).await?;
    let sync = client.query_one("SHOW synchronous_commit", &[]).await?;
    Ok(format!(
        "PostgreSQL {}, synchronous_commit = {}",
        row.get::<_, String>(0),
        sync.get::<_, String>(0)
    ))
}

/// Removes the benchmark table.
pub async fn cleanup(url: &str) -> anyhow::Result<()> {
    connect(url)
        .await?
        .batch_execute(&format!("DROP TABLE IF EXISTS {TABLE}"))
        .await?;
    Ok(())
}

/// A closed loop of `connections` clients for `seconds`, each writing its own lifts' readings
/// with fresh seqs (from `seq_base`), so that nothing conflicts.
pub async fn load(
    url: &str,
    mode: Mode,
    connections: usize,
    seconds: f64,
    lifts: usize,
    seq_base: i64,
) -> anyhow::Result<PgResult> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(connect(url).await?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let readings = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, client) in clients.into_iter().enumerate() {
        let (stop, readings, errors) = (stop.clone(), readings.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let per_conn = (lifts / connections).max(1);
            let batch = if mode == Mode::Single { 1 } else { 1000 };
            let insert = match mode {
                Mode::Single => client.prepare(INSERT_ONE).await.ok(),
                Mode::Batch => client.prepare(INSERT_MANY).await.ok(),
                Mode::Copy => None,
            };
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let keys: Vec<(String, i64)> = (0..batch as u64)
                    .map(|i| {
                        let k = n * batch as u64 + i;
                        let lift = (c + connections * (k as usize % per_conn)) % lifts;
                        let seq = seq_base + (k / per_conn as u64) as i64 + 1;
                        (format!("BENCH-{lift:06}"), seq)
                    })
                    .collect();
                n += 1;
                let done = match (mode, &insert) {
                    (Mode::Single, Some(stmt)) => client
                        .execute(stmt, &[&keys[0].0, &keys[0].1])
                        .await
                        .map(|_| ())
                        .map_err(anyhow::Error::from),
                    (Mode::Batch, Some(stmt)) => {
                        let ids: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
                        let seqs: Vec<i64> = keys.iter().map(|k| k.1).collect();
                        client
                            .execute(stmt, &[&ids, &seqs])
                            .await
                            .map(|_| ())
                            .map_err(anyhow::Error::from)
                    }
                    _ => copy(&client, &keys).await,
                };
                match done {
                    Ok(()) => {
                        readings.fetch_add(batch as u64, Ordering::Relaxed);
                        latencies.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    let (elapsed, latencies_us) = crate::bench::run_for(seconds, &stop, started, tasks).await;
    Ok(PgResult {
        readings: readings.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        latencies_us,
    })
}

async fn copy(client: &tokio_postgres::Client, keys: &[(String, i64)]) -> anyhow::Result<()> {
    let mut text = String::with_capacity(keys.len() * 100);
    let ts = chrono::Utc::now().to_rfc3339();
    for (lift, seq) in keys {
        text.push_str(&format!(
            "{lift}\t0\t{seq}\t{ts}\t3\tup\tclosed\t420.5\t1.6\t41.2\t0.8\t1\t2\n"
        ));
    }
    let sink = client.copy_in(&format!("COPY {TABLE} FROM STDIN")).await?;
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from(text)).await?;
    sink.finish().await?;
    Ok(())
}
