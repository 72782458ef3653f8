//! `hoistway bench-storage`: archive size, write speed and query latency of the storage and
//! query crates in-process, on simulator data, each against a peer measured in the same run:
//! default Parquet settings for size, and DuckDB (from PyPI) over the same files for queries.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hoistway_ingest::{BodyFormat, DecodeLimits, decode_body};
use hoistway_model::{Clock, LiftId, ManualClock, Reading};
use hoistway_processor::FleetState;
use hoistway_query::{QueryEngine, QueryLimits};
use hoistway_registry::{LiftFilter, LiftInfo, Registry};
use hoistway_sim::lift::SimLift;
use hoistway_store::{DAY_US, Kind, Store, StoreConfig, Tier, TierStore};
use rand::SeedableRng;

#[derive(clap::Args)]
pub struct BenchStorageArgs {
    /// Simulated lifts.
    #[arg(long, default_value_t = 2_000)]
    lifts: usize,
    /// Days of readings per lift, one every 10 s (8,640 a day).
    #[arg(long, default_value_t = 1)]
    days: u32,
    /// Runs of each latency query.
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// Where the files go (a temporary dir by default; kept when given).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Query the files an earlier run with the same --lifts and --days left in --data-dir,
    /// without writing them again (for iterating on query speed).
    #[arg(long, requires = "data_dir")]
    reuse: bool,
    /// Also export every stored reading through the SQL clients analysts use: ADBC over Flight
    /// SQL, psycopg over the PostgreSQL protocol, pyarrow on the same files; and time
    /// SQLAlchemy's connect and table listing.
    #[arg(long)]
    sql_clients: bool,
    /// The Python of the SQL client phase (pip installs what it lacks).
    #[arg(long, default_value = "python3")]
    python: PathBuf,
}

/// 2026-01-01T00:00:00Z
const START_US: i64 = 1_767_225_600_000_000;

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

/// One simulated hour of the whole fleet, validated by the real ingest decoder.
fn hour_of_readings(
    lifts: &mut [SimLift],
    rng: &mut rand::rngs::SmallRng,
    hour_start: i64,
) -> Vec<Reading> {
    let mut out = Vec::with_capacity(lifts.len() * 360);
    let limits = DecodeLimits {
        max_decoded_bytes: usize::MAX,
        max_items: usize::MAX,
    };
    for step in 0..360 {
        let ts = hour_start + step * 10_000_000;
        let mut body = Vec::with_capacity(lifts.len() * 300);
        body.push(b'[');
        for (i, lift) in lifts.iter_mut().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            let r = lift.next_reading(ts, 10.0, rng);
            serde_json::to_writer(&mut body, &r.json).expect("json");
        }
        body.push(b']');
        let decoded = decode_body(&body, false, BodyFormat::Json, &limits, ts + 1_000_000)
            .expect("simulated readings decode");
        out.extend(decoded.readings.into_iter().map(|mut r| {
            r.received_us = r.ts_us + 200_000;
            r
        }));
    }
    out
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            total += if p.is_dir() {
                dir_bytes(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            };
        }
    }
    total
}

pub async fn run(args: BenchStorageArgs) -> anyhow::Result<()> {
    let root = match &args.data_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("hoistway-bench-storage-{}", std::process::id())),
    };
    if !args.reuse {
        let _ = std::fs::remove_dir_all(&root);
    }
    std::fs::create_dir_all(&root)?;
    let clock = Arc::new(ManualClock::new(START_US));
    let hot_dir = root.join("hot");
    let archive_dir = root.join("archive");
    let config = StoreConfig::new(TierStore::local(&hot_dir)?, TierStore::local(&archive_dir)?);
    // Default tiers: files older than 48 h move to the archive (a local dir here), and a month
    // of archived rollups is merged once it is over, as on a server.
    let store = Arc::new(Store::open(config, clock.clone()).await?);
    let total = args.lifts as u64 * args.days as u64 * 8640;
    println!(
        "# hoistway bench-storage — {} lifts × {} day(s) = {} readings, {} cores\n",
        args.lifts,
        args.days,
        total,
        cores()
    );

    let fleet_state = Arc::new(parking_lot::RwLock::new(FleetState::default()));
    let rows = if args.reuse {
        println!(
            "(reusing the files in {}: no write figures, and the latest state is empty)\n",
            root.display()
        );
        clock.set(START_US + (args.days as i64 + 1) * DAY_US);
        let snapshot = store.snapshot();
        let rows: u64 = [Tier::Hot, Tier::Archive]
            .into_iter()
            .flat_map(|tier| snapshot.files(tier, Kind::Readings).map(|f| f.rows))
            .sum();
        anyhow::ensure!(
            rows == total,
            "{} holds {rows} readings, not the {total} of --lifts {} --days {}",
            root.display(),
            args.lifts,
            args.days
        );
        rows
    } else {
        write(&args, &store, &clock, &fleet_state, total).await?
    };

    // 2. Queries, in-process through the same engine the API uses. Lifts are registered in
    // buildings of 20.
    let registry = Arc::new(Registry::open(root.join("registry.sqlite3"))?);
    registry.upsert_many(
        (0..args.lifts)
            .map(|i| {
                let mut info =
                    LiftInfo::new(LiftId::new(&lift_name(i)).expect("simulator ids are valid"));
                info.building = building_of(i);
                info
            })
            .collect(),
    )?;
    let fleet = hoistway_processor::Fleet::new(
        fleet_state,
        registry,
        clock.clone() as Arc<dyn Clock>,
        Duration::from_secs(60),
    );
    // The PostgreSQL path of the SQL client phase returns every stored row.
    let engine = Arc::new(QueryEngine::new(
        store.clone(),
        fleet.clone(),
        QueryLimits {
            max_rows: (rows as usize).max(10_000_000),
            timeout: Duration::from_secs(600),
            ..Default::default()
        },
    )?);
    let day0 = "2026-01-01T00:00:00Z";
    let day1 = "2026-01-02T00:00:00Z";
    let lift = lift_name(args.lifts / 2);
    let one_lift_day = format!(
        "SELECT * FROM readings WHERE lift_id = '{lift}' AND ts >= '{day0}' AND ts < '{day1}'"
    );
    let rollup_span =
        format!("SELECT * FROM rollups_hourly WHERE lift_id = '{lift}' ORDER BY hour");
    let scan = "SELECT count(*), sum(trips), avg(motor_temp_c), max(vibration_mm_s) FROM readings";
    let building = building_of(args.lifts / 2);
    let building_sql = format!("SELECT * FROM lift_state WHERE building = '{building}'");

    // The same queries in DuckDB over the same files, run by run after Hoistway's.
    let snapshot = store.snapshot();
    let paths = |kind| -> Vec<String> {
        [(Tier::Hot, &hot_dir), (Tier::Archive, &archive_dir)]
            .into_iter()
            .flat_map(|(tier, dir)| {
                snapshot
                    .files(tier, kind)
                    .map(|f| dir.join(&f.path).display().to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let mut duck = DuckPeer::start(&paths(Kind::Readings), &paths(Kind::RollupsHourly))?;
    let duck_raw = format!(
        "SELECT * FROM readings WHERE lift_id = '{lift}' AND ts >= TIMESTAMPTZ '{day0}' AND ts < TIMESTAMPTZ '{day1}'"
    );
    // DuckDB reads the stored partials of one lift without Hoistway's merge: less work.
    let duck_rollups =
        format!("SELECT * FROM rollup_partials WHERE lift_id = '{lift}' ORDER BY hour");

    let mut results = Vec::new();
    let mut cpu_ms = Vec::new();
    for (name, sql, peer_sql, runs) in [
        (
            "one lift, 24 h raw",
            one_lift_day.as_str(),
            Some(duck_raw.as_str()),
            args.runs,
        ),
        (
            "one lift, hourly rollups of the whole span",
            rollup_span.as_str(),
            Some(duck_rollups.as_str()),
            args.runs,
        ),
        ("full-scan aggregate", scan, Some(scan), 5usize),
        (
            "one building's latest state (SQL)",
            building_sql.as_str(),
            None,
            args.runs,
        ),
    ] {
        let mut samples = Vec::new();
        let mut cpu = Vec::new();
        let mut peer = Vec::new();
        let mut rows_out = 0;
        for _ in 0..runs.max(1) {
            let c = process_cpu_ms();
            let t = Instant::now();
            let r = engine
                .sql(sql, &hoistway_query::Caller::fleet_admin())
                .await
                .map_err(|e| anyhow::anyhow!("{sql}: {e}"))?;
            samples.push(t.elapsed().as_secs_f64() * 1000.0);
            cpu.push(process_cpu_ms() - c);
            rows_out = r.rows();
            if let Some(peer_sql) = peer_sql {
                peer.push(duck.time(peer_sql)?);
            }
        }
        cpu_ms.push(percentile(&mut cpu, 0.5));
        results.push(QueryResult {
            name,
            p50: percentile(&mut samples.clone(), 0.5),
            p99: percentile(&mut samples, 0.99),
            rows: rows_out,
            peer: Comparison::of(&samples, &peer),
        });
    }
    drop(duck);
    let sql_clients = if args.sql_clients {
        let from = hoistway_model::time::format_micros(START_US);
        let to = hoistway_model::time::format_micros(START_US + args.days as i64 * DAY_US);
        Some(
            crate::bench_sql::run(
                &args.python,
                &root,
                engine.clone(),
                clock.clone() as Arc<dyn Clock>,
                &paths(Kind::Readings),
                rows,
                (&from, &to),
            )
            .await?,
        )
    } else {
        None
    };

    // The building page's lookup (GET /v1/buildings/{id}): registry index plus latest state.
    let filter = LiftFilter {
        building: Some(building.clone()),
        ..Default::default()
    };
    let mut samples = Vec::new();
    let mut rows_out = 0;
    for _ in 0..args.runs.max(1) * 10 {
        let t = Instant::now();
        let views = fleet.select(&filter, None);
        let json = serde_json::to_vec(&views)?;
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
        rows_out = views.len();
        std::hint::black_box(json);
    }
    results.push(QueryResult {
        name: "one building's latest state (API lookup + JSON)",
        p50: percentile(&mut samples.clone(), 0.5),
        p99: percentile(&mut samples, 0.99),
        rows: rows_out,
        peer: None,
    });

    println!(
        "## Queries (p50 / p99 ms; DuckDB p50 over the same files, {} threads, results as Arrow, each run right after Hoistway's)",
        cores()
    );
    for r in &results {
        println!(
            "{}: {:.1} / {:.1} ms, {} rows{}",
            r.name,
            r.p50,
            r.p99,
            r.rows,
            r.peer
                .as_ref()
                .map(|c| format!(
                    "; DuckDB {:.1} ms (hoistway/DuckDB {:.2}×, warm runs paired {:.2}–{:.2}×)",
                    c.p50,
                    r.p50 / c.p50,
                    c.ratio_min,
                    c.ratio_max
                ))
                .unwrap_or_default()
        );
    }
    let (scan_ms, scan_cpu_ms) = (results[2].p50, cpu_ms[2]);
    let cores = cores();
    println!(
        "full scan: {:.1} M readings/s, {:.1} M readings/s per core ({cores} cores); {:.0} ms of CPU, {:.1} M readings per CPU-second ({:.2} cores busy)",
        rows as f64 / scan_ms / 1000.0,
        rows as f64 / scan_ms / 1000.0 / cores as f64,
        scan_cpu_ms,
        rows as f64 / scan_cpu_ms / 1000.0,
        scan_cpu_ms / scan_ms
    );
    if let Some(report) = sql_clients {
        println!("\n{report}");
    }
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    } else {
        println!(
            "files kept in {} ({:.1} MiB)",
            root.display(),
            dir_bytes(&root) as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}

/// Phase 1: generate an hour, hand it to the store, flush (as checkpoints do), upkeep after each
/// day; prints the size and write figures and returns the stored row count.
async fn write(
    args: &BenchStorageArgs,
    store: &Arc<Store>,
    clock: &ManualClock,
    fleet_state: &parking_lot::RwLock<FleetState>,
    total: u64,
) -> anyhow::Result<u64> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(42);
    let mut lifts: Vec<SimLift> = (0..args.lifts)
        .map(|i| SimLift::new(lift_name(i), &mut rng, 1))
        .collect();
    let progress = indicatif::ProgressBar::new(total);
    let mut write_time = Duration::ZERO;
    let mut peer_bytes = 0u64;
    let mut peer_time = Duration::ZERO;
    let mut offset = 0;
    let mut compact_time = Duration::ZERO;
    let mut compactions = 0;
    let mut buffered = 0;
    for hour in 0..(args.days as i64 * 24) {
        let readings = hour_of_readings(&mut lifts, &mut rng, START_US + hour * 3_600_000_000);
        // Peer: default Parquet writer settings (zstd), rows in arrival order.
        let t = Instant::now();
        let batch = hoistway_store::schema::readings_batch(&readings);
        let props = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
            .build();
        let mut out = Vec::new();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), Some(props))?;
        w.write(&batch)?;
        w.close()?;
        peer_time += t.elapsed();
        peer_bytes += out.len() as u64;

        let t = Instant::now();
        for chunk in readings.chunks(1000) {
            store.buffer(offset, chunk);
            offset += 1;
        }
        // The server flushes at every checkpoint; here a flush covers at least an hour and
        // up to a day, so that a small fleet over many days is not a benchmark of fsync.
        buffered += readings.len();
        if buffered >= 4_000_000 || hour % 24 == 23 {
            store.flush(offset).await?;
            buffered = 0;
        }
        write_time += t.elapsed();
        if hour % 24 == 23 {
            // As the server's upkeep does: once a day is over, its flushes are compacted.
            clock.set(START_US + (hour + 1) * 3_600_000_000 + 2 * 3_600_000_000);
            let t = Instant::now();
            let report = store.maintain().await?;
            compact_time += t.elapsed();
            compactions += report.compactions;
        }
        if hour == args.days as i64 * 24 - 1 {
            // The last hour's readings are the fleet's latest state.
            let window = hoistway_model::DedupWindow::default();
            let mut state = fleet_state.write();
            for r in &readings {
                state.apply(r, &window);
            }
        }
        progress.inc(readings.len() as u64);
    }
    progress.finish_and_clear();
    let snapshot = store.snapshot();
    let in_both_tiers = |kind| -> Vec<(Tier, hoistway_store::FileEntry)> {
        [Tier::Hot, Tier::Archive]
            .into_iter()
            .flat_map(|tier| snapshot.files(tier, kind).map(move |f| (tier, f.clone())))
            .collect()
    };
    let files = in_both_tiers(Kind::Readings);
    let rollup_files = in_both_tiers(Kind::RollupsHourly);
    let rows: u64 = files.iter().map(|(_, f)| f.rows).sum();
    anyhow::ensure!(rows == total, "stored {rows} rows, expected {total}");
    let bytes: u64 = files.iter().map(|(_, f)| f.bytes).sum();
    let rollup_bytes: u64 = rollup_files.iter().map(|(_, f)| f.bytes).sum();
    let rollup_files = rollup_files.len();
    println!("## Size");
    println!(
        "hoistway: {:.2} bytes/reading ({} files, {:.1} MiB); rollups add {:.3} bytes/reading ({} files)",
        bytes as f64 / rows as f64,
        files.len(),
        bytes as f64 / (1 << 20) as f64,
        rollup_bytes as f64 / rows as f64,
        rollup_files
    );
    println!(
        "peer (default Parquet writer, zstd, arrival order): {:.2} bytes/reading — hoistway is {:.2}× smaller\n",
        peer_bytes as f64 / rows as f64,
        peer_bytes as f64 / bytes as f64
    );
    println!("## Write");
    println!(
        "flush (sort, encode, fsync, commit): {:.0} readings/s; peer plain encode {:.0} readings/s; compaction {} merges in {:.1} s ({:.0} readings/s)\n",
        rows as f64 / write_time.as_secs_f64(),
        rows as f64 / peer_time.as_secs_f64(),
        compactions,
        compact_time.as_secs_f64(),
        rows as f64 / compact_time.as_secs_f64()
    );
    // Drop the compacted inputs now so the directory holds only the listed files.
    clock.set(START_US + (args.days as i64 + 1) * DAY_US);
    store.maintain().await?;

    Ok(rows)
}

/// User plus system CPU time of this process (all threads) so far, in ms; NaN where
/// /proc/self/stat is missing. Linux reports it in ticks of 10 ms (USER_HZ is 100).
fn process_cpu_ms() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) * 10.0,
        _ => f64::NAN,
    }
}

fn lift_name(index: usize) -> String {
    format!("SIM-{index:06}")
}

/// The benchmark's buildings hold 20 lifts each.
fn building_of(lift_index: usize) -> String {
    format!("B-{:05}", lift_index / 20)
}

/// Cores this process may use: DataFusion's scan partitions and DuckDB's threads.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

struct QueryResult {
    name: &'static str,
    p50: f64,
    p99: f64,
    rows: usize,
    peer: Option<Comparison>,
}

/// DuckDB's p50 for a query and the spread of Hoistway/DuckDB over the paired runs. The spread
/// leaves out the first pair, which reads footers from disk for both (the p99 shows that run).
struct Comparison {
    p50: f64,
    ratio_min: f64,
    ratio_max: f64,
}

impl Comparison {
    fn of(ours: &[f64], peer: &[f64]) -> Option<Comparison> {
        if peer.is_empty() {
            return None;
        }
        let warm = usize::from(peer.len() > 1);
        let ratios = ours.iter().zip(peer).skip(warm).map(|(a, b)| a / b);
        Some(Comparison {
            p50: percentile(&mut peer.to_vec(), 0.5),
            ratio_min: ratios.clone().fold(f64::INFINITY, f64::min),
            ratio_max: ratios.fold(0.0, f64::max),
        })
    }
}

/// DuckDB (from PyPI, installed with pyarrow and pytz when missing) in a child process over the
/// same files, timing one query run at a time on request. Each of its runs follows the matching
/// Hoistway run, so a busy moment on a shared machine weighs on both alike. Results are fetched
/// as Arrow tables, as DataFusion returns them.
struct DuckPeer {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

const DUCK_SCRIPT: &str = r#"
import duckdb, json, sys, time
readings, rollups, threads = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
con = duckdb.connect()
con.execute(f"SET threads = {threads}")
def view(name, files):
    paths = ",".join("'" + f.replace("'", "''") + "'" for f in files)
    con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{paths}])")
view("readings", readings)
view("rollup_partials", rollups)
def arrow(sql):
    # A relation hands Arrow over without the extra copy of a DB-API result; DuckDB renamed
    # its arrow() to to_arrow_table() in 1.4.
    rel = con.sql(sql)
    return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()
print("ready", flush=True)
for line in sys.stdin:
    sql = json.loads(line)
    t = time.perf_counter()
    arrow(sql)
    print((time.perf_counter() - t) * 1000, flush=True)
"#;

impl DuckPeer {
    fn start(readings: &[String], rollups: &[String]) -> anyhow::Result<DuckPeer> {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let have = Command::new("python3")
            .args(["-c", "import duckdb, pyarrow, pytz"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !have {
            let ok = Command::new("python3")
                // pytz: DuckDB needs it to hand timestamps with a zone to Arrow.
                .args([
                    "-m", "pip", "install", "--quiet", "duckdb", "pyarrow", "pytz",
                ])
                .status()
                .context("pip install duckdb")?
                .success();
            anyhow::ensure!(ok, "pip install duckdb failed");
        }
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(DUCK_SCRIPT)
            .arg(serde_json::to_string(readings)?)
            .arg(serde_json::to_string(rollups)?)
            .arg(cores().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting python3 for DuckDB")?;
        let stdin = child.stdin.take().context("DuckDB stdin")?;
        let stdout = std::io::BufReader::new(child.stdout.take().context("DuckDB stdout")?);
        let mut peer = DuckPeer {
            child,
            stdin,
            stdout,
        };
        let mut line = String::new();
        peer.stdout.read_line(&mut line)?;
        anyhow::ensure!(
            line.trim() == "ready",
            "DuckDB did not start (see its error above)"
        );
        Ok(peer)
    }

    /// One run of `sql`, in ms.
    fn time(&mut self, sql: &str) -> anyhow::Result<f64> {
        use std::io::{BufRead, Write};
        writeln!(self.stdin, "{}", serde_json::to_string(sql)?)?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        line.trim()
            .parse()
            .with_context(|| format!("DuckDB failed on {sql} (see its error above)"))
    }
}

impl Drop for DuckPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
