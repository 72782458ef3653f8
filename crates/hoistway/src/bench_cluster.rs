//! `hoistway bench --cluster-only`: the cluster layout of docs/deploy.md on one machine against a
//! standalone server, in one run, with the same load generator. The cluster is one ingest node
//! and three processing nodes (one holds the partition, two stand by) over a NATS server and a
//! PostgreSQL of the benchmark's own, with both storage tiers in a directory they share. Then
//! the holder is killed with SIGKILL and the benchmark times the takeover, checks that the new
//! holder counts every acknowledged reading exactly once, and times a query node's read of the
//! last checkpoint at this fleet size.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use hoistway_jetstream::local::{LocalNats, NATS_SERVER_VERSION};
use hoistway_postgres::local::LocalPostgres;

use crate::bench::{
    BenchArgs, Load, LoadResult, Proc, cpu_secs, get_json, load, metric, register_lifts,
    remember_token, serve_args,
};
use crate::cluster_demo::{Node, add_admin, free_port, path_text, readiness, ready, spawn, stop};

/// The lease a processing node holds the partition by: a standby takes over within it.
const LEASE_SECS: u64 = 5;

/// What one layout did under the load.
struct Measured {
    single: LoadResult,
    /// From the first single request until the processor had applied the last of them.
    single_e2e: f64,
    batched: f64,
    cpu: Vec<(&'static str, f64)>,
    acknowledged: u64,
}

pub(crate) async fn run(tmp: &Path, args: &BenchArgs) -> anyhow::Result<()> {
    let install = tmp.join("nats-install");
    let nats = tokio::task::spawn_blocking(move || LocalNats::start(&install, None)).await??;
    let pg_dir = tmp.join("postgres");
    let mut postgres = tokio::task::spawn_blocking(move || LocalPostgres::start(&pg_dir))
        .await?
        .context(
            "cannot start a private PostgreSQL (initdb and pg_ctl from the machine's packages)",
        )?;
    println!(
        "## One ingest node and three processing nodes ({} partition(s); NATS {NATS_SERVER_VERSION}, sync_interval always, 1 replica; a private PostgreSQL) vs standalone",
        args.partitions
    );
    let outcome = async {
        let standalone = standalone(tmp, args).await?;
        let (cluster, mut nodes) = cluster(tmp, args, &nats, &postgres).await?;
        let (mut standalone, mut cluster) = (standalone, cluster);
        let result = report(args, &mut standalone, &mut cluster);
        let failover = match result {
            Ok(()) => failover(&mut nodes, cluster.acknowledged).await,
            Err(e) => Err(e),
        };
        for node in nodes.iter_mut().rev() {
            stop(node);
        }
        failover?;
        checkpoint_read(&postgres.url()).await
    }
    .await;
    drop(nats);
    let _ = postgres.stop();
    outcome
}

async fn standalone(tmp: &Path, args: &BenchArgs) -> anyhow::Result<Measured> {
    let a = serve_args(&tmp.join("cluster-peer-standalone"));
    let (server, _) = Proc::start(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[])?;
    let measured = async {
        register_lifts(server.addr, args.lifts).await?;
        let cpu0 = server.cpu_secs();
        let mut m = phases(server.addr, server.addr, args).await?;
        m.cpu = vec![("hoistway", server.cpu_secs() - cpu0)];
        anyhow::Ok(m)
    }
    .await;
    server.kill();
    measured
}

/// One reading per request, then batches of 1,000, each sent to `to` and timed until `holder`
/// has counted every reading acknowledged (end to end).
async fn phases(to: SocketAddr, holder: SocketAddr, args: &BenchArgs) -> anyhow::Result<Measured> {
    let t = Instant::now();
    let single = load(to, Load::single(args)).await;
    wait_applied(holder, single.readings).await?;
    let single_e2e = single.readings as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let run = load(to, Load::batches(args)).await;
    let acknowledged = single.readings + run.readings;
    wait_applied(holder, acknowledged).await?;
    let batched = run.readings as f64 / t.elapsed().as_secs_f64();
    wait_counted(holder, acknowledged).await?;
    Ok(Measured {
        single,
        single_e2e,
        batched,
        cpu: Vec::new(),
        acknowledged,
    })
}

/// The readings the node at `addr` has counted (its lifts' counters).
async fn counted(addr: SocketAddr) -> anyhow::Result<u64> {
    let summary = get_json(addr, "/v1/fleet/summary").await?;
    summary["readings_total"]
        .as_u64()
        .context("no readings_total in /v1/fleet/summary")
}

/// Waits until the node at `addr` has counted `expected` readings (every one sent is new).
/// Polls its processor's counter of applied readings (cheap), then checks the lifts' counters
/// once (a pass over every lift: polled, it would take the node's CPU from the processing it
/// times). Counts only what this node applied itself, so `expected` is what it has to apply.
async fn wait_applied(addr: SocketAddr, expected: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let name = r#"hoistway_processor_readings_total{outcome="applied"}"#;
    while (metric(addr, name).await.unwrap_or(0.0) as u64) < expected {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the processor did not apply {expected} readings within 300 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Waits until the node at `addr` has counted `expected` readings (every one sent is new).
async fn wait_counted(addr: SocketAddr, expected: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let n = counted(addr).await?;
        anyhow::ensure!(
            n <= expected,
            "{n} readings counted, only {expected} acknowledged"
        );
        if n == expected {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{n} of {expected} acknowledged readings counted after 300 s"
        );
        // Each look is a pass over every lift on the node that is catching up.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Starts the cluster (p1 holds the partition, p2 and p3 stand by, then the ingest node),
/// registers the lifts and loads the ingest node.
async fn cluster(
    tmp: &Path,
    args: &BenchArgs,
    nats: &LocalNats,
    postgres: &LocalPostgres,
) -> anyhow::Result<(Measured, Vec<Node>)> {
    let dir = tmp.join("cluster");
    std::fs::create_dir_all(&dir)?;
    let env: Vec<(&str, String)> = vec![
        ("HOISTWAY_CLUSTER__NATS", nats.url()),
        ("HOISTWAY_CLUSTER__NATS_MONITOR", nats.monitor_url()),
        ("HOISTWAY_CLUSTER__NATS_REPLICAS", "1".into()),
        ("HOISTWAY_CLUSTER__POSTGRES", postgres.url()),
        ("HOISTWAY_PROCESSOR__LEASE_SECS", LEASE_SECS.to_string()),
        ("HOISTWAY_CLUSTER__PARTITIONS", args.partitions.to_string()),
        (
            "HOISTWAY_STORAGE__HOT_URL",
            path_text(&dir.join("store/hot"))?,
        ),
        (
            "HOISTWAY_STORAGE__ARCHIVE_URL",
            path_text(&dir.join("store/archive"))?,
        ),
        ("HOISTWAY_LOG_LEVEL", "warn".into()),
        // As for the standalone server: lifts post without tokens here.
        ("HOISTWAY_AUTH__DEVICES", "open".into()),
        ("HOISTWAY_QUERY__POSTGRES_LISTEN", String::new()),
        ("HOISTWAY_QUERY__FLIGHT_LISTEN", String::new()),
    ];
    let exe = std::env::current_exe()?;
    let (_, token) = add_admin(&exe, &dir.join("p1"), &env)?;
    let ingest_env: Vec<(&str, String)> = env
        .iter()
        .cloned()
        .chain([("HOISTWAY_ROLES", "ingest".to_string())])
        .collect();
    let at =
        || -> anyhow::Result<SocketAddr> { Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?))) };
    let mut nodes = Vec::new();
    let started = async {
        for (name, what, env) in [
            ("p1", "processing", &env),
            ("p2", "processing", &env),
            ("p3", "processing", &env),
            ("ingest", "ingest", &ingest_env),
        ] {
            let node = spawn(&exe, &dir, name, what, at()?, env)?;
            remember_token(node.addr, &token);
            // The first holds the partition; the others wait for it without listening.
            if name == "p1" || name == "ingest" {
                ready(&node, Duration::from_secs(120)).await?;
            }
            nodes.push(node);
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = started {
        for node in nodes.iter_mut().rev() {
            stop(node);
        }
        return Err(e);
    }
    let measured = async {
        let (holder, ingest) = (nodes[0].addr, nodes[3].addr);
        register_lifts(holder, args.lifts).await?;
        let cpu0: Vec<f64> = nodes.iter().map(|n| cpu_secs(n.child.id())).collect();
        let nats0 = cpu_secs(nats.pid());
        let mut m = phases(ingest, holder, args).await?;
        let used = |i: usize| cpu_secs(nodes[i].child.id()) - cpu0[i];
        m.cpu = vec![
            ("ingest", used(3)),
            ("holder", used(0)),
            ("standbys", used(1) + used(2)),
            ("NATS", cpu_secs(nats.pid()) - nats0),
        ];
        anyhow::Ok(m)
    }
    .await;
    match measured {
        Ok(m) => Ok((m, nodes)),
        Err(e) => {
            for node in nodes.iter_mut().rev() {
                stop(node);
            }
            Err(e)
        }
    }
}

fn report(
    args: &BenchArgs,
    standalone: &mut Measured,
    cluster: &mut Measured,
) -> anyhow::Result<()> {
    println!(
        "| layout | one reading per request: acknowledged/s ({} connections) | p50 ms | p99 ms | errors | the same, end to end/s | batches of 1,000, end to end/s | CPU s, by process |",
        args.connections
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, m) in [("standalone", &mut *standalone), ("cluster", &mut *cluster)] {
        let single = &mut m.single;
        let cpu: Vec<String> = m
            .cpu
            .iter()
            .map(|(who, s)| format!("{who} {s:.1}"))
            .collect();
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {} | {:.0} | {:.0} | {} |",
            single.per_sec(),
            single.percentile_ms(0.5),
            single.percentile_ms(0.99),
            single.errors,
            m.single_e2e,
            m.batched,
            cpu.join(", ")
        );
    }
    println!(
        "\nratio cluster / standalone: one reading per request {:.2} acknowledged, {:.2} end to end; batches {:.2}\n",
        cluster.single.per_sec() / standalone.single.per_sec().max(1.0),
        cluster.single_e2e / standalone.single_e2e.max(1.0),
        cluster.batched / standalone.batched.max(1.0),
    );
    anyhow::ensure!(
        standalone.single.errors == 0 && cluster.single.errors == 0,
        "requests failed under load"
    );
    Ok(())
}

/// Kills the holder (p1) with SIGKILL; times until a standby holds the partition and until it
/// has applied the whole stream, and checks its counters against what was acknowledged.
async fn failover(nodes: &mut [Node], acknowledged: u64) -> anyhow::Result<()> {
    let before = counted(nodes[0].addr).await?;
    anyhow::ensure!(
        before == acknowledged,
        "the holder counts {before} readings, {acknowledged} were acknowledged"
    );
    let _ = nodes[0].child.kill();
    let _ = nodes[0].child.wait();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(60 + 4 * LEASE_SECS);
    let holder = loop {
        let mut found = None;
        for node in &nodes[1..3] {
            if readiness(node.addr).await.as_deref() == Some("ready") {
                found = Some((node.name, node.addr));
            }
        }
        if let Some(h) = found {
            break h;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no standby took the partition over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let serving = killed.elapsed();
    // Fails unless the new holder counts every acknowledged reading once.
    wait_counted(holder.1, acknowledged).await?;
    println!(
        "failover: SIGKILL of the holder → {} ready after {:.2} s (lease {LEASE_SECS} s), every one of the {acknowledged} acknowledged readings counted once after {:.2} s\n",
        holder.0,
        serving.as_secs_f64(),
        killed.elapsed().as_secs_f64(),
    );
    Ok(())
}

/// What a query node pays each time the holder commits a checkpoint: reading the whole state
/// from PostgreSQL and decoding it.
async fn checkpoint_read(url: &str) -> anyhow::Result<()> {
    let url = url.to_string();
    let (lifts, bytes, times) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        use hoistway_processor::CheckpointStore;
        let schema = crate::config::Config::load(None)?.cluster.postgres_schema;
        let pg = hoistway_postgres::Postgres::connect(&url, &schema)?;
        let store = hoistway_postgres::PgCheckpointStore::open(pg)?;
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..5 {
            let t = Instant::now();
            let state = store.latest(0, None)?.context("no checkpoint committed")?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            last = Some(state);
        }
        let state = last.expect("read five times");
        let bytes = hoistway_processor::checkpoint::encode(&state)?.len();
        times.sort_by(f64::total_cmp);
        Ok((state.lifts.len(), bytes, times))
    })
    .await??;
    println!(
        "a query node's read of the last checkpoint ({lifts} lifts, {:.1} MiB encoded): min {:.0} ms, median {:.0} ms, max {:.0} ms (five reads)\n",
        bytes as f64 / (1024.0 * 1024.0),
        times[0],
        times[2],
        times[4]
    );
    Ok(())
}
