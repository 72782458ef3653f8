//! `hoistway bench --cluster-only`: the cluster layout of docs/deploy.md on one machine against a
//! standalone server, in one run, with the same load generator. The cluster is one ingest node
//! and three processing nodes (one holds the partition, two stand by) over a NATS server and a
//! PostgreSQL of the benchmark's own, with both storage tiers in a directory they share. Then
//! the holder is killed with SIGKILL and the benchmark times the takeover, checks that the new
//! holder counts every acknowledged reading exactly once, and times a query node's read of the
//! last checkpoint at this fleet size. With `--processors` the three are processor nodes that
//! spread the partitions (`roles = "processor"`), beside a query node; the one killed is one
//! holding partitions, and the others take them over.

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
        "## One ingest node and three {} ({} partition(s); NATS {NATS_SERVER_VERSION}, sync_interval always, 1 replica; a private PostgreSQL) vs standalone",
        if args.processors {
            "processor nodes spreading the partitions, and a query node"
        } else {
            "processing nodes"
        },
        args.partitions
    );
    let outcome = async {
        let standalone = standalone(tmp, args).await?;
        let (cluster, mut nodes) = cluster(tmp, args, &nats, &postgres).await?;
        let (mut standalone, mut cluster) = (standalone, cluster);
        let result = report(args, &mut standalone, &mut cluster);
        let failover = match result {
            Ok(()) if args.processors => {
                spread_failover(&mut nodes, args.partitions, cluster.acknowledged).await
            }
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
        let mut m = phases(server.addr, &[server.addr], server.addr, args).await?;
        m.cpu = vec![("hoistway", server.cpu_secs() - cpu0)];
        anyhow::Ok(m)
    }
    .await;
    server.kill();
    measured
}

/// One reading per request, then batches of 1,000, each sent to `to` and timed until the
/// processors at `processors` have applied every reading acknowledged (end to end); then
/// checks that the node at `counts` (one holding every partition, or a query node) counts each
/// once.
async fn phases(
    to: SocketAddr,
    processors: &[SocketAddr],
    counts: SocketAddr,
    args: &BenchArgs,
) -> anyhow::Result<Measured> {
    let t = Instant::now();
    let single = load(to, Load::single(args)).await;
    wait_applied(processors, single.readings).await?;
    let single_e2e = single.readings as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let run = load(to, Load::batches(args)).await;
    let acknowledged = single.readings + run.readings;
    wait_applied(processors, acknowledged).await?;
    let batched = run.readings as f64 / t.elapsed().as_secs_f64();
    wait_counted(counts, acknowledged).await?;
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

/// Waits until the nodes at `addrs` have applied `expected` readings between them (every one
/// sent is new). Polls their processors' counters of applied readings (cheap); the lifts'
/// counters are checked once afterwards (a pass over every lift: polled, it would take CPU
/// from the processing it times). Counts only what these nodes applied themselves, so
/// `expected` is what they have to apply (no partition moves meanwhile).
async fn wait_applied(addrs: &[SocketAddr], expected: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let name = r#"hoistway_processor_readings_total{outcome="applied"}"#;
    let applied = || async {
        let mut sum = 0;
        for addr in addrs {
            sum += metric(*addr, name).await.unwrap_or(0.0) as u64;
        }
        sum
    };
    while applied().await < expected {
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
    let with_roles = |roles: &str| -> Vec<(&str, String)> {
        env.iter()
            .cloned()
            .chain([("HOISTWAY_ROLES", roles.to_string())])
            .collect()
    };
    let ingest_env = with_roles("ingest");
    let query_env = with_roles("query");
    let processing_env = if args.processors {
        with_roles("processor")
    } else {
        env.clone()
    };
    let at =
        || -> anyhow::Result<SocketAddr> { Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?))) };
    let mut nodes = Vec::new();
    let started = async {
        let mut plan = vec![
            ("p1", "processing", &processing_env),
            ("p2", "processing", &processing_env),
            ("p3", "processing", &processing_env),
            ("ingest", "ingest", &ingest_env),
        ];
        if args.processors {
            plan.push(("query", "query", &query_env));
        }
        for (name, what, env) in plan {
            let node = spawn(&exe, &dir, name, what, at()?, env)?;
            remember_token(node.addr, &token);
            // The first processing node holds the partitions; the others wait for them
            // without listening. Processor nodes all listen.
            if args.processors || name == "p1" || name == "ingest" {
                ready(&node, Duration::from_secs(120)).await?;
            }
            nodes.push(node);
        }
        if args.processors {
            spread_evenly(&nodes[..3], args.partitions).await?;
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
        let ingest = nodes[3].addr;
        // The API: the query node beside processor nodes, else the holder.
        let api = nodes.get(4).unwrap_or(&nodes[0]).addr;
        register_lifts(api, args.lifts).await?;
        let cpu0: Vec<f64> = nodes.iter().map(|n| cpu_secs(n.child.id())).collect();
        let nats0 = cpu_secs(nats.pid());
        let processors: Vec<SocketAddr> = if args.processors {
            nodes[..3].iter().map(|n| n.addr).collect()
        } else {
            vec![nodes[0].addr]
        };
        let mut m = phases(ingest, &processors, api, args).await?;
        let used = |i: usize| cpu_secs(nodes[i].child.id()) - cpu0[i];
        m.cpu = if args.processors {
            vec![
                ("ingest", used(3)),
                ("processors", used(0) + used(1) + used(2)),
                ("query", used(4)),
                ("NATS", cpu_secs(nats.pid()) - nats0),
            ]
        } else {
            vec![
                ("ingest", used(3)),
                ("holder", used(0)),
                ("standbys", used(1) + used(2)),
                ("NATS", cpu_secs(nats.pid()) - nats0),
            ]
        };
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

/// How many partitions each of `processors` holds (0 where one does not answer).
async fn held(processors: &[Node]) -> Vec<u32> {
    let mut held = Vec::new();
    for node in processors {
        let n = metric(node.addr, "hoistway_partitions_held")
            .await
            .unwrap_or(0.0);
        held.push(n as u32);
    }
    held
}

/// Waits until the processor nodes hold every partition between them, as evenly as they can.
async fn spread_evenly(processors: &[Node], partitions: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = held(processors).await;
        let (min, max) = (
            now.iter().min().copied().unwrap_or(0),
            now.iter().max().copied().unwrap_or(0),
        );
        if now.iter().sum::<u32>() == u32::from(partitions) && max - min <= 1 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the processors hold {now:?} of {partitions} partitions"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Kills a processor node holding partitions with SIGKILL; times until the others hold every
/// partition and until the query node counts every acknowledged reading once.
async fn spread_failover(
    nodes: &mut [Node],
    partitions: u16,
    acknowledged: u64,
) -> anyhow::Result<()> {
    let query = nodes[4].addr;
    let before = counted(query).await?;
    anyhow::ensure!(
        before == acknowledged,
        "the query node counts {before} readings, {acknowledged} were acknowledged"
    );
    let held_before = held(&nodes[..3]).await;
    let victim = held_before.iter().position(|n| *n > 0).unwrap_or(0);
    let _ = nodes[victim].child.kill();
    let _ = nodes[victim].child.wait();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(60 + 4 * LEASE_SECS);
    let others: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    loop {
        let mut sum = 0;
        for i in &others {
            sum += metric(nodes[*i].addr, "hoistway_partitions_held")
                .await
                .unwrap_or(0.0) as u32;
        }
        if sum == u32::from(partitions) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the other processors did not take the partitions over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let taken = killed.elapsed();
    wait_counted(query, acknowledged).await?;
    println!(
        "failover: SIGKILL of {} (holding {} of {partitions} partitions) → every partition held again after {:.2} s (lease {LEASE_SECS} s), every one of the {acknowledged} acknowledged readings counted once on the query node after {:.2} s\n",
        nodes[victim].name,
        held_before[victim],
        taken.as_secs_f64(),
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
