//! Crash safety and upgrades end to end: a simulated fleet with outages and resends against a
//! server that is killed with SIGKILL at random moments, once with a torn write left at the
//! log's tail; a damaged log entry; a data dir written by an earlier release. Afterwards every
//! acknowledged (lift_id, seq) is counted exactly once, in the latest state and in the stored
//! Parquet files (queried with SQL).

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use hoistway_sim::{Ledger, SimConfig, Simulator, verify};
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

/// One crash test at a time: each drives servers hard, and several time leases and failovers in
/// seconds, which a neighbour's load would upset (a 2 s lease lapsed under one).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn last_segment(data: &std::path::Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(data.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_readings_survive_repeated_kill_9() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut server = TestServer::start(&[
        ("HOISTWAY_PROCESSOR__CHECKPOINT_INTERVAL_SECS", "1"),
        ("HOISTWAY_LOG__SEGMENT_BYTES", "262144"),
        // Flushes every second and compaction every second: the kills land in both.
        ("HOISTWAY_STORAGE__COMPACT_MIN_FILES", "3"),
        ("HOISTWAY_STORAGE__MAINTENANCE_INTERVAL_SECS", "1"),
        // Every lift registers with its factory code and posts with its own token.
        ("HOISTWAY_AUTH__DEVICES", "required"),
    ]);
    let addr = server.addr;
    let run_for = Duration::from_secs(14);
    let config = SimConfig {
        lifts: 1000,
        speedup: 25.0,
        connections: 16,
        outage_rate: 0.02,
        outage_readings: (2, 25),
        duplicate_rate: 0.05,
        request_timeout: Duration::from_secs(5),
        planned_duration: Some(run_for),
        seed: 7,
        ..SimConfig::default()
    };
    let mut sim = Simulator::new(config, addr);
    register(&server, &sim.registry_csv()).await;
    sim.enrol(addr, &server.token).await.unwrap();
    let stats = sim.stats();
    let (_stop_tx, stop) = watch::channel(false);
    let running = tokio::spawn(async move {
        sim.run(Some(run_for), stop).await;
        sim
    });

    let mut rng = rand::rngs::SmallRng::seed_from_u64(std::process::id() as u64);
    let mut restarts = Vec::new();
    for kill in 0..6 {
        // a random moment, not a wait for anything
        tokio::time::sleep(Duration::from_millis(rng.random_range(800..2000))).await;
        tokio::task::block_in_place(|| server.kill9());
        if kill == 2 {
            // a write torn by the crash: half a header and garbage after the last entry
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(last_segment(server.data_dir()))
                .unwrap();
            f.write_all(&[0x40, 0, 0, 0, 0xde, 0xad]).unwrap();
        }
        let t = Instant::now();
        tokio::task::block_in_place(|| server.spawn());
        restarts.push(t.elapsed());
    }
    let mut sim = running.await.unwrap();
    assert!(
        sim.drain(Duration::from_secs(60)).await,
        "every buffered reading was acknowledged"
    );

    let ledger = sim.ledger().clone();
    let total = ledger.total_readings();
    assert_eq!(ledger.lifts.len(), 1000);
    assert_eq!(
        stats.rejected.load(Ordering::Relaxed),
        0,
        "the server rejected simulated readings"
    );
    assert!(total > 10_000, "only {total} readings were acknowledged");
    let failed = stats.failed_requests.load(Ordering::Relaxed);
    assert!(failed > 0, "the kills never hit a request");

    verified(&server, &ledger).await;
    stored_readings_match_the_ledger(&server, &ledger).await;
    eprintln!(
        "{total} readings acknowledged across 6 kills, {failed} failed requests retried, restarts took {restarts:?}"
    );
}

/// The log on NATS JetStream (a private server on one replica) instead of the data dir: a fleet
/// with outages and resends while the server is killed with SIGKILL twice and the NATS server
/// once. Every acknowledged reading is counted and stored exactly once; `/readyz` is ready and
/// says the durability of a lone server is unverified, and is not ready while NATS is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_log_on_jetstream_nothing_acknowledged_is_lost_when_either_process_dies() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut nats =
        hoistway_jetstream::local::LocalNats::start(Path::new(env!("CARGO_TARGET_TMPDIR")), None)
            .unwrap();
    let url = nats.url();
    let monitor = nats.monitor_url();
    let mut server = TestServer::start(&[
        ("HOISTWAY_CLUSTER__NATS", url.as_str()),
        ("HOISTWAY_CLUSTER__NATS_REPLICAS", "1"),
        ("HOISTWAY_CLUSTER__NATS_MONITOR", monitor.as_str()),
        ("HOISTWAY_PROCESSOR__CHECKPOINT_INTERVAL_SECS", "1"),
    ]);
    let ready = http(server.addr, "GET", "/readyz", &[], Bytes::new()).await;
    let body = String::from_utf8_lossy(&ready.body).into_owned();
    assert_eq!(ready.status, 200, "{body}");
    assert!(
        body.contains("durability unverified")
            && body.contains("1 replica")
            && !body.contains("sync"),
        "{body}"
    );
    let run_for = Duration::from_secs(12);
    let mut sim = Simulator::new(fleet_with_outages(run_for, 11), server.addr);
    register(&server, &sim.registry_csv()).await;
    let stats = sim.stats();
    let (_stop_tx, stop) = watch::channel(false);
    let running = tokio::spawn(async move {
        sim.run(Some(run_for), stop).await;
        sim
    });
    for step in 0..3 {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        if step == 1 {
            tokio::task::block_in_place(|| nats.kill());
            // not ready while NATS is out of reach, and saying why
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let ready = http(server.addr, "GET", "/readyz", &[], Bytes::new()).await;
                let body = String::from_utf8_lossy(&ready.body).into_owned();
                if ready.status == 503 {
                    assert!(body.contains("not connected to NATS"), "{body}");
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "still ready without NATS: {body}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::task::block_in_place(|| nats.restart()).unwrap();
        } else {
            tokio::task::block_in_place(|| {
                server.kill9();
                server.spawn();
            });
        }
    }
    let mut sim = running.await.unwrap();
    let ledger = drained(&mut sim).await;
    assert!(
        stats.failed_requests.load(Ordering::Relaxed) > 0,
        "the kills never hit a request"
    );
    assert!(
        ledger.total_readings() > 3_000,
        "{}",
        ledger.total_readings()
    );
    verified(&server, &ledger).await;
    stored_readings_match_the_ledger(&server, &ledger).await;
    assert!(
        !server.data_dir().join("log").exists(),
        "the log is the stream, not files"
    );
}

/// The log on JetStream and the processor's checkpoints in PostgreSQL: the machine running
/// Hoistway can be replaced. A fleet with outages and resends posts through a load balancer (a
/// proxy the test points at the live server). A standby on another machine (a data dir of its
/// own) waits for the partition's lease; the server is paused with SIGSTOP, the lease lapses,
/// the standby takes over and the proxy follows it; resumed with SIGCONT, the old server finds it
/// was fenced and stops without writing anything. Then the new one is killed with SIGKILL and a
/// third machine with an empty data dir takes over the same way. Both storage tiers are on S3,
/// so their manifests are in PostgreSQL too. Every acknowledged reading is counted exactly once
/// in the end, and stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_checkpoints_in_postgres_a_standby_takes_over_exactly() {
    let _one = ONE_AT_A_TIME.lock().await;
    let postgres = test_postgres();
    let schema = scratch_schema("takeover");
    let mut cluster = Cluster::start(&postgres, &schema);
    let s3 = S3Server::start("hoistway-cluster").await;
    cluster.store_on(&s3, "hoistway-cluster");
    let env = cluster.env();
    let tmp = tempfile::tempdir().unwrap();
    let machine = |n: u32| tmp.path().join(format!("machine-{n}"));
    // The admin account lives in PostgreSQL: made once, valid on every machine.
    let token = admin_token_with_env(&machine(1), &env);
    let first = TestServer::start_with_token(machine(1), token.clone(), &env);
    // A query node: the API, the UI and SQL from PostgreSQL and S3, whoever holds the partition.
    let mut query_env = env.clone();
    query_env.push(("HOISTWAY_ROLES", "query"));
    let query = TestServer::start_with_token(machine(4), token.clone(), &query_env);
    let balancer = CutProxy::start(first.addr);
    let run_for = Duration::from_secs(14);
    let mut config = fleet_with_outages(run_for, 13);
    config.request_timeout = Duration::from_secs(3);
    let mut sim = Simulator::new(config, balancer.addr);
    register(&first, &sim.registry_csv()).await;
    let (_stop_tx, stop) = watch::channel(false);
    let running = tokio::spawn(async move {
        sim.run(Some(run_for), stop).await;
        sim
    });
    // A standby: it starts listening only once it holds the partition.
    let standby = |n: u32| {
        let (token, env) = (token.clone(), cluster.settings.clone());
        let path = machine(n);
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            TestServer::start_with_token(path, token, &env)
        })
    };

    // Standbys start early: what the holder appends and checkpoints meanwhile is new to them.
    let second = standby(2);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(
        !second.is_finished(),
        "the standby took a partition that was held"
    );
    // What alerting recorded so far: in PostgreSQL too, so the next holder carries it on.
    let alerted = alert_ids(&first).await;
    let paused = Instant::now();
    first.signal("STOP");
    let second = second.await.unwrap();
    let takeover = paused.elapsed();
    assert_eq!(second.failed_starts, 0, "the standby failed to take over");
    balancer.set_target(second.addr);
    let mut first = first;
    first.signal("CONT");
    let stopped = tokio::task::block_in_place(|| first.wait_exit(Duration::from_secs(10)));
    assert!(
        stopped.is_some_and(|s| !s.success()),
        "the fenced server went on running: {stopped:?}"
    );

    let third = standby(3);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !third.is_finished(),
        "the standby took a partition that was held"
    );
    let mut second = second;
    tokio::task::block_in_place(|| second.kill9());
    let killed = Instant::now();
    let third = third.await.unwrap();
    let failover = killed.elapsed();
    assert_eq!(third.failed_starts, 0, "the standby failed to take over");
    balancer.set_target(third.addr);

    let mut sim = running.await.unwrap();
    let ledger = drained(&mut sim).await;
    assert!(
        ledger.total_readings() > 3_000,
        "{}",
        ledger.total_readings()
    );
    verified(&third, &ledger).await;
    stored_readings_match_the_ledger(&third, &ledger).await;
    // Stored on S3 and listed in PostgreSQL: the files the holders committed are the new one's.
    let status = third.get("/v1/storage/status").await.json();
    let files = status["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tier"] == "hot" && t["kind"] == "readings")
        .map_or(0, |t| t["files"].as_u64().unwrap());
    assert!(files > 0, "nothing was flushed to S3: {status}");
    let now = alert_ids(&third).await;
    assert!(!alerted.is_empty(), "no alert fired in the first seconds");
    assert!(
        alerted.iter().all(|id| now.contains(id)),
        "alerts of the first holder are gone: {alerted:?} then {now:?}"
    );

    // The query node served through both takeovers and shows what the last holder committed:
    // every lift's counters and every stored reading, and the same alerts.
    let since = Instant::now();
    verified(&query, &ledger).await;
    let caught_up = since.elapsed();
    stored_readings_match_the_ledger(&query, &ledger).await;
    assert_eq!(alert_ids(&query).await, now);
    let ready = query.get("/readyz").await;
    assert_eq!(
        ready.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&ready.body)
    );
    let posted = query.post_json("/v1/telemetry", "{}").await;
    assert_eq!(posted.status, 404, "a query node takes no readings");
    let upkeep = query.post_json("/v1/storage/maintain", "{}").await;
    assert_eq!(
        upkeep.status,
        409,
        "{:?}",
        String::from_utf8_lossy(&upkeep.body)
    );
    eprintln!(
        "{} readings; taken over {takeover:?} after SIGSTOP and {failover:?} after SIGKILL (lease 2 s); {} alerts, then {}; {files} hot files on S3; the query node agreed {caught_up:?} after the ledger was drained",
        ledger.total_readings(),
        alerted.len(),
        now.len()
    );
    cluster.finish([third, query]).await;
}

/// `--role ingest`: a node that only takes readings and appends them to the stream, beside the
/// node that holds the partition (which takes readings too: two writers on one stream). Two
/// fleets with outages and resends, one through each node, are counted exactly once each by
/// the processing node; the ingest node serves only what ingest needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_node_appends_for_the_processing_node_exactly() {
    let _one = ONE_AT_A_TIME.lock().await;
    let postgres = test_postgres();
    let schema = scratch_schema("ingestrole");
    let cluster = Cluster::start(&postgres, &schema);
    let tmp = tempfile::tempdir().unwrap();
    let (processing, ingest) = cluster.processing_and_ingest(tmp.path());
    let lifts = ingest.get("/v1/lifts").await;
    assert_eq!(lifts.status, 404, "an ingest node serves no lifts");
    assert!(
        lifts.json()["detail"]
            .as_str()
            .is_some_and(|d| d.contains("ingest node")),
        "{:?}",
        lifts.body
    );
    let ready = ingest.get("/readyz").await;
    assert_eq!(
        ready.status,
        200,
        "{}",
        String::from_utf8_lossy(&ready.body)
    );
    assert_eq!(ingest.get("/metrics").await.status, 200);

    let run_for = Duration::from_secs(10);
    let fleet = |seed: u64, prefix: &str| SimConfig {
        prefix: prefix.into(),
        ..fleet_with_outages(run_for, seed)
    };
    let mut through_ingest = Simulator::new(fleet(21, "IN-"), ingest.addr);
    let mut through_processing = Simulator::new(fleet(22, "PR-"), processing.addr);
    register(&processing, &through_ingest.registry_csv()).await;
    register(&processing, &through_processing.registry_csv()).await;
    let (_stop_tx, stop) = watch::channel(false);
    let runs = [
        tokio::spawn({
            let stop = stop.clone();
            async move {
                through_ingest.run(Some(run_for), stop).await;
                through_ingest
            }
        }),
        tokio::spawn(async move {
            through_processing.run(Some(run_for), stop).await;
            through_processing
        }),
    ];
    for run in runs {
        let mut sim = run.await.unwrap();
        let ledger = drained(&mut sim).await;
        assert!(
            ledger.total_readings() > 1_000,
            "{}",
            ledger.total_readings()
        );
        verified(&processing, &ledger).await;
        eprintln!("{} readings counted exactly", ledger.total_readings());
    }
    cluster.finish([ingest, processing]).await;
}

/// Three partitions (`cluster.partitions = 3`): readings spread over three streams by lift, each
/// with its processor, checkpoint, lease and storage catalog. A fleet with outages and resends
/// posts through an ingest node; the processing node holding every partition is killed with
/// SIGKILL mid-run and a standby takes all three over. The standby and a query node then agree
/// with the simulator's ledger exactly, in counters and in stored rows, every partition took
/// readings, and the alerts recorded before the kill are still there. A node configured with
/// another count refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_three_partitions_a_standby_takes_every_one_over_exactly() {
    let _one = ONE_AT_A_TIME.lock().await;
    let postgres = test_postgres();
    let schema = scratch_schema("partitions");
    let mut cluster = Cluster::start(&postgres, &schema);
    let s3 = S3Server::start("hoistway-partitions").await;
    cluster.store_on(&s3, "hoistway-partitions");
    cluster
        .settings
        .push(("HOISTWAY_CLUSTER__PARTITIONS", "3".into()));
    let env = cluster.env();
    let tmp = tempfile::tempdir().unwrap();
    let machine = |n: u32| tmp.path().join(format!("machine-{n}"));
    let (first, ingest) = cluster.processing_and_ingest(&machine(1));
    let token = first.token.clone();
    let mut query_env = env.clone();
    query_env.push(("HOISTWAY_ROLES", "query"));
    let query = TestServer::start_with_token(machine(4), token.clone(), &query_env);

    // The count is the cluster's: a node told otherwise does not start.
    let other: Vec<(&str, &std::ffi::OsStr)> = cluster
        .env_with(&[("HOISTWAY_CLUSTER__PARTITIONS", "2")])
        .into_iter()
        .map(|(k, v)| (k, v.as_ref()))
        .collect();
    let refused = serve_refused(&machine(5), &other);
    assert!(
        refused.contains("over 3 partition(s)") && refused.contains("cluster.partitions = 2"),
        "{refused}"
    );

    let run_for = Duration::from_secs(12);
    let mut sim = Simulator::new(fleet_with_outages(run_for, 31), ingest.addr);
    register(&first, &sim.registry_csv()).await;
    let (_stop_tx, stop) = watch::channel(false);
    let running = tokio::spawn(async move {
        sim.run(Some(run_for), stop).await;
        sim
    });
    let standby = {
        let (token, env) = (token.clone(), cluster.settings.clone());
        let path = machine(2);
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            TestServer::start_with_token(path, token, &env)
        })
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !standby.is_finished(),
        "the standby took partitions that were held"
    );
    let metrics = first.get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    for p in 0..3 {
        let line = format!("hoistway_processor_offset{{partition=\"{p}\"}}");
        let offset = text
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok());
        assert!(
            offset.is_some_and(|o| o > 0.0),
            "partition {p} took nothing: {offset:?}"
        );
    }
    // What alerting recorded so far, from every partition's lifts: the standby carries it on.
    let alerted = alert_ids(&first).await;
    let mut first = first;
    tokio::task::block_in_place(|| first.kill9());
    let killed = Instant::now();
    let second = standby.await.unwrap();
    let failover = killed.elapsed();
    assert_eq!(second.failed_starts, 0, "the standby failed to take over");

    let mut sim = running.await.unwrap();
    let ledger = drained(&mut sim).await;
    assert!(
        ledger.total_readings() > 2_000,
        "{}",
        ledger.total_readings()
    );
    verified(&second, &ledger).await;
    stored_readings_match_the_ledger(&second, &ledger).await;
    verified(&query, &ledger).await;
    stored_readings_match_the_ledger(&query, &ledger).await;
    let summary = query.get("/v1/fleet/summary").await.json();
    assert_eq!(summary["lifts"], 300, "{summary}");
    let now = alert_ids(&second).await;
    assert!(!alerted.is_empty(), "no alert fired in the first seconds");
    assert!(
        alerted.iter().all(|id| now.contains(id)),
        "alerts of the first holder are gone: {alerted:?} then {now:?}"
    );
    assert_eq!(alert_ids(&query).await, now);
    eprintln!(
        "{} readings over 3 partitions; taken over {failover:?} after SIGKILL (lease 2 s); {} alerts, then {}",
        ledger.total_readings(),
        alerted.len(),
        now.len()
    );
    cluster.finish([ingest, second, query]).await;
}

/// Processor nodes (`roles = "processor"`) spread three partitions over themselves. One holds
/// all three until two more join, then each holds one; one is killed with SIGKILL and the other
/// two take its partition; one is paused with SIGSTOP, the last takes everything over, and once
/// resumed the paused one steps down from what it held (fenced) and gets a share again. All the
/// while a fleet with outages and resends posts through an ingest node; a query node then
/// agrees with the simulator's ledger exactly, in counters and stored rows, and the alerts the
/// nodes' engines recorded before the kill are all still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processors_spread_the_partitions_and_stay_exact_through_joins_kills_and_pauses() {
    let _one = ONE_AT_A_TIME.lock().await;
    let postgres = test_postgres();
    let schema = scratch_schema("spread");
    let mut cluster = Cluster::start(&postgres, &schema);
    let s3 = S3Server::start("hoistway-spread").await;
    cluster.store_on(&s3, "hoistway-spread");
    cluster
        .settings
        .extend([("HOISTWAY_CLUSTER__PARTITIONS", "3".into())]);
    let env = cluster.env();
    let tmp = tempfile::tempdir().unwrap();
    let machine = |n: u32| tmp.path().join(format!("machine-{n}"));
    let token = admin_token_with_env(&machine(9), &env);
    let with_roles = |roles: &'static str| {
        let mut env = env.clone();
        env.push(("HOISTWAY_ROLES", roles));
        env
    };
    let processor_env = with_roles("processor");
    let start_processor = |n: u32| {
        let (token, env, path) = (token.clone(), processor_env.clone(), machine(n));
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            TestServer::start_with_token(path, token, &env)
        })
    };
    let ingest = TestServer::start_with_token(machine(4), token.clone(), &with_roles("ingest"));
    let query = TestServer::start_with_token(machine(5), token.clone(), &with_roles("query"));
    let run_for = Duration::from_secs(24);
    let mut sim = Simulator::new(fleet_with_outages(run_for, 37), ingest.addr);
    // The lifts are registered before they report (processor nodes reread the registry every
    // second; a reading of a lift they do not know yet is a dead letter).
    register(&query, &sim.registry_csv()).await;
    let a = start_processor(1).await.unwrap();
    // A processor node serves health and metrics only.
    assert_eq!(a.get("/v1/fleet/summary").await.status, 404);
    held_becomes(&[&a], &[3], "one processor holds every partition").await;
    // A node with every role would hold every partition: beside processor nodes it refuses.
    let every_role: Vec<(&str, &std::ffi::OsStr)> =
        env.iter().map(|(k, v)| (*k, v.as_ref())).collect();
    let refused = serve_refused(&machine(6), &every_role);
    assert!(
        refused.contains("processor nodes spread this cluster's partitions"),
        "{refused}"
    );
    let (_stop_tx, stop) = watch::channel(false);
    let running = tokio::spawn(async move {
        sim.run(Some(run_for), stop).await;
        sim
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Scale from one processor to three: one partition each.
    let (b, c) = (start_processor(2), start_processor(3));
    let (mut b, c) = (b.await.unwrap(), c.await.unwrap());
    held_becomes(
        &[&a, &b, &c],
        &[1, 1, 1],
        "three processors hold one partition each",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    senders_become(&[&a, &b, &c]).await;
    // What alerting recorded so far (each node's engine over its partitions' lifts): it
    // survives the kill and the pause.
    let alerted = alert_ids(&query).await;

    // One dies: the other two take its partition over.
    tokio::task::block_in_place(|| b.kill9());
    held_becomes(
        &[&a, &c],
        &[2, 1],
        "the dead processor's partition is taken over",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // One stalls: fenced and taken over; resumed, it steps down, then gets a share again.
    c.signal("STOP");
    held_becomes(
        &[&a],
        &[3],
        "the paused processor's partition is taken over",
    )
    .await;
    c.signal("CONT");
    c.eventually("the resumed processor to step down", || async {
        metric(&c, "hoistway_processor_partitions_lost_total").await >= 1.0
    })
    .await;
    held_becomes(
        &[&a, &c],
        &[2, 1],
        "the resumed processor gets a share again",
    )
    .await;
    senders_become(&[&a, &c]).await;

    let mut sim = running.await.unwrap();
    let ledger = drained(&mut sim).await;
    assert!(
        ledger.total_readings() > 4_000,
        "{}",
        ledger.total_readings()
    );
    verified(&query, &ledger).await;
    stored_readings_match_the_ledger(&query, &ledger).await;
    let now = alert_ids(&query).await;
    assert!(!alerted.is_empty(), "no alert fired in the first seconds");
    assert!(
        alerted.iter().all(|id| now.contains(id)),
        "alerts recorded before the kill are gone: {alerted:?} then {now:?}"
    );
    // Handed from node to node, no condition was opened twice.
    let page = query.get("/v1/alerts?limit=1000").await.json();
    let mut open: Vec<(String, String)> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["state"] != "resolved")
        .map(|a| (a["rule"].to_string(), a["lift_id"].to_string()))
        .collect();
    let all = open.len();
    open.sort();
    open.dedup();
    assert_eq!(open.len(), all, "an alert is open twice");
    for p in 0..3 {
        let offsets = [
            metric(
                &a,
                &format!("hoistway_processor_offset{{partition=\"{p}\"}}"),
            )
            .await,
            metric(
                &c,
                &format!("hoistway_processor_offset{{partition=\"{p}\"}}"),
            )
            .await,
        ];
        assert!(
            offsets.iter().any(|o| *o > 0.0),
            "partition {p} took nothing: {offsets:?}"
        );
    }
    eprintln!(
        "{} readings over 3 partitions and 3 processors, through a join, a SIGKILL and a SIGSTOP; {} alerts, then {}",
        ledger.total_readings(),
        alerted.len(),
        now.len()
    );
    cluster.finish([ingest, a, c, query]).await;
}

/// Rate rules on processor nodes: a lift's baseline comes from its past weeks' stored rollups,
/// which a processor node reads through every partition's catalog (its own query engine, no
/// SQL served). Two lifts doing the same door cycles this hour, one usually busy and one usually
/// quiet: only the quiet one is unusual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_node_judges_rate_rules_by_each_lifts_past_weeks() {
    let _one = ONE_AT_A_TIME.lock().await;
    // Stay inside one hour for the whole test.
    let (start, hour) = (inside_one_hour(Duration::from_secs(90)).await, HOUR_US);
    let now = || chrono::Utc::now().timestamp_micros();
    let postgres = test_postgres();
    let schema = scratch_schema("rates");
    let mut cluster = Cluster::start(&postgres, &schema);
    let tmp = tempfile::tempdir().unwrap();
    let tier = |name: &str| tmp.path().join("store").join(name).display().to_string();
    cluster.settings.extend([
        ("HOISTWAY_CLUSTER__PARTITIONS", "2".into()),
        ("HOISTWAY_STORAGE__HOT_URL", tier("hot")),
        ("HOISTWAY_STORAGE__ARCHIVE_URL", tier("archive")),
        ("HOISTWAY_ALERTS__TICK_SECS", "1".into()),
        ("HOISTWAY_ALERTS__BASELINE_REFRESH_SECS", "1".into()),
    ]);
    let env = cluster.env();
    let machine = |n: u32| tmp.path().join(format!("machine-{n}"));
    let token = admin_token_with_env(&machine(9), &env);
    let with_roles = |roles: &'static str| {
        let mut env = env.clone();
        env.push(("HOISTWAY_ROLES", roles));
        env
    };
    let query = TestServer::start_with_token(machine(1), token.clone(), &with_roles("query"));
    let ingest = TestServer::start_with_token(machine(2), token.clone(), &with_roles("ingest"));
    register(
        &query,
        "lift_id,building,site,customer,model,install_date,initial_trips\n\
         BUSY,B1,S1,acme,m1,,0\nQUIET,B1,S1,acme,m1,,0\n",
    )
    .await;
    let processor =
        TestServer::start_with_token(machine(3), token.clone(), &with_roles("processor"));
    let at = |lift: &str, seq: u64, ts_us: i64, doors: u64| {
        let mut r = reading(lift, seq, 1);
        r["ts"] = serde_json::json!(hoistway_model::time::format_micros(ts_us));
        r["door_cycles"] = serde_json::json!(doors);
        r
    };
    let post = |readings: Vec<serde_json::Value>| {
        let ingest = &ingest;
        async move {
            let r = ingest
                .post_json(
                    "/v1/telemetry",
                    &serde_json::Value::Array(readings).to_string(),
                )
                .await;
            assert!(
                r.status == 200 || r.status == 207,
                "{}",
                String::from_utf8_lossy(&r.body)
            );
        }
    };
    // The same hour of the week, one to four weeks ago: BUSY 100 cycles, QUIET 10.
    let week = 7 * 24 * hour;
    let mut history = Vec::new();
    for w in 1..=4i64 {
        let t = start - w * week + 60_000_000;
        history.push(at("BUSY", w as u64, t, 100));
        history.push(at("QUIET", w as u64, t, 10));
    }
    post(history).await;
    // Applied, stored at a checkpoint, listed in the catalog, reread, then a baseline refresh.
    let stored = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = query.sql_rows("SELECT count(*) FROM readings").await;
        if rows[0][0] == "8" {
            break;
        }
        assert!(
            Instant::now() < stored,
            "the history was not stored: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    // This hour both do 80 cycles.
    let mut this_hour = Vec::new();
    for seq in 5..=12u64 {
        this_hour.push(at("BUSY", seq, now(), 10));
        this_hour.push(at("QUIET", seq, now(), 10));
    }
    post(this_hour).await;
    let rate_alerts = || async {
        let page = query
            .get("/v1/alerts?rule=door-cycles-unusual&limit=100")
            .await
            .json();
        page["items"].as_array().unwrap().clone()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while rate_alerts().await.is_empty() {
        assert!(Instant::now() < deadline, "no rate alert");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fired = rate_alerts().await;
    let lifts: Vec<&str> = fired
        .iter()
        .map(|a| a["lift_id"].as_str().unwrap())
        .collect();
    assert_eq!(lifts, ["QUIET"], "{fired:?}");
    cluster.finish([ingest, processor, query]).await;
}

/// A gauge or counter of a server's `/metrics` (0 when it is not there yet).
async fn metric(server: &TestServer, name: &str) -> f64 {
    let metrics = server.get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(name).filter(|v| v.starts_with(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits (at most 30 s) until exactly one of the processors sends notifications.
async fn senders_become(servers: &[&TestServer]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut senders = 0.0;
        for server in servers {
            senders += metric(server, "hoistway_notification_sender").await;
        }
        if senders == 1.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{senders} nodes send notifications"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (at most 30 s) until the processors hold these many partitions each, in any order.
async fn held_becomes(servers: &[&TestServer], counts: &[u32], what: &str) {
    let mut want = counts.to_vec();
    want.sort_unstable();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut held = Vec::new();
        for server in servers {
            held.push(metric(server, "hoistway_partitions_held").await as u32);
        }
        held.sort_unstable();
        if held == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: held {held:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An edge region (its NATS server a leaf node of the processing region's, with a JetStream
/// domain of its own; one ingest node) acknowledges readings once they are in the region's own
/// stream. While the processing region's NATS is down the edge keeps acknowledging, and absence
/// rules wait; once it is back the processing node takes everything in and the simulator's
/// ledger matches exactly. Readings sent through both regions count once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_region_keeps_accepting_while_the_processing_region_is_away() {
    let _one = ONE_AT_A_TIME.lock().await;
    let postgres = test_postgres();
    let schema = scratch_schema("edge");
    let installed = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let hub = hoistway_jetstream::local::LocalNats::start_hub(installed, "hub").unwrap();
    let edge_nats =
        hoistway_jetstream::local::LocalNats::start_leaf(installed, &hub, "eu").unwrap();
    let mut cluster = Cluster::on(hub, &postgres, &schema);
    let tmp = tempfile::tempdir().unwrap();
    let env = cluster.env_with(&[
        ("HOISTWAY_CLUSTER__EDGES", "eu"),
        ("HOISTWAY_CLUSTER__EDGE_QUIET_SECS", "3"),
        ("HOISTWAY_ALERTS__TICK_SECS", "1"),
    ]);
    let token = admin_token_with_env(&tmp.path().join("processing"), &env);
    let processing =
        TestServer::start_with_token(tmp.path().join("processing"), token.clone(), &env);
    let (edge_url, edge_monitor) = (edge_nats.url(), edge_nats.monitor_url());
    let edge_env = cluster.env_with(&[
        ("HOISTWAY_CLUSTER__NATS", &edge_url),
        ("HOISTWAY_CLUSTER__NATS_MONITOR", &edge_monitor),
        ("HOISTWAY_CLUSTER__REGION", "eu"),
        ("HOISTWAY_ROLES", "ingest"),
    ]);
    let edge = TestServer::start_with_token(tmp.path().join("edge"), token, &edge_env);
    assert_eq!(edge.get("/readyz").await.status, 200);

    let run_for = Duration::from_secs(14);
    let mut sim = Simulator::new(
        SimConfig {
            prefix: "EU-".into(),
            ..fleet_with_outages(run_for, 41)
        },
        edge.addr,
    );
    register(&processing, &sim.registry_csv()).await;
    let stats = sim.stats();
    let (_stop_tx, stop) = watch::channel(false);
    let run = tokio::spawn(async move {
        sim.run(Some(run_for), stop).await;
        sim
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| cluster.nats.kill());
    let before = stats.acked.load(Ordering::Relaxed);
    // The edge keeps acknowledging; the processing node's absence rules wait.
    processing
        .eventually("absence rules wait for the edge region", || async {
            let metrics = processing.get("/metrics").await;
            String::from_utf8_lossy(&metrics.body).contains("hoistway_alerts_absence_held 1")
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = stats.acked.load(Ordering::Relaxed) - before;
    assert!(
        during > 100,
        "the edge acknowledged {during} readings while the hub was down"
    );
    tokio::task::block_in_place(|| cluster.nats.restart().unwrap());

    let mut sim = run.await.unwrap();
    let ledger = drained(&mut sim).await;
    verified(&processing, &ledger).await;
    eprintln!(
        "{} readings counted exactly, {during} acknowledged by the edge while the hub was down",
        ledger.total_readings()
    );
    processing
        .eventually("the edge region is in contact and caught up", || async {
            let ready = processing.get("/readyz").await;
            let metrics = processing.get("/metrics").await;
            let metrics = String::from_utf8_lossy(&metrics.body).to_string();
            ready.status == 200
                && !String::from_utf8_lossy(&ready.body).contains("edge region")
                && metrics.contains("hoistway_edge_backlog_messages{region=\"eu\"} 0")
                && metrics.contains("hoistway_alerts_absence_held 0")
        })
        .await;

    // A lift that fails over between regions: what reaches both counts once.
    register(&processing, "lift_id\nBOTH-1\n").await;
    for seq in 1..=5 {
        let body = serde_json::to_string(&reading("BOTH-1", seq, 1)).unwrap();
        for node in [&edge, &processing] {
            let r = node.post_json("/v1/telemetry", &body).await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        }
    }
    processing
        .eventually("readings through both regions counted once", || async {
            let s = processing.get("/v1/lifts/BOTH-1/state").await.json();
            s["readings_total"] == 5 && s["trips_total"] == 5
        })
        .await;
    cluster.finish([edge, processing]).await;
    drop(edge_nats);
}

/// `hoistway cluster-demo` brings the cluster up on this machine (private NATS servers for a
/// processing and an edge region, a private PostgreSQL from the machine's packages, three
/// processor nodes, a query node and an ingest node per region) and drives a fleet through each
/// ingest node, over three partitions (so each region has a stream per partition, and each
/// partition's stream takes in its edge stream), spread over the processors. A processor holding
/// partitions is killed (-9) mid-run: the others take its partitions over, and with `--run-for`
/// the demo exits 0 only if every lift of both fleets agrees, on the query node, with what was
/// acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_demo_counts_every_reading_of_both_regions_across_a_failover() {
    let _one = ONE_AT_A_TIME.lock().await;
    let nats =
        hoistway_jetstream::local::nats_server(Path::new(env!("CARGO_TARGET_TMPDIR"))).unwrap();
    let mut demo = std::process::Command::new(env!("CARGO_BIN_EXE_hoistway"))
        .args([
            "cluster-demo",
            "--lifts",
            "60",
            "--speedup",
            "20",
            "--port",
            "0",
        ])
        .args(["--run-for", "16"])
        .env("HOISTWAY_NATS_SERVER", &nats)
        .env("HOISTWAY_LOG_LEVEL", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = demo.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let holder = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("no failover hint in {seen:#?}"));
        seen.push(line.clone());
        if let Some(rest) = line.strip_prefix("Try a failover: kill -9 ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let killed = std::process::Command::new("kill")
        .args(["-9", &holder])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(150);
    let status = loop {
        if let Some(status) = demo.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            demo.kill().unwrap();
            panic!("the demo did not end: {seen:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    reader.join().unwrap();
    seen.extend(lines.try_iter());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut demo.stderr.take().unwrap(), &mut stderr).unwrap();
    let stdout = seen.join("\n");
    assert!(status.success(), "{stdout}\n{stderr}");
    for node in ["p1", "p2", "p3", "query", "ingest", "edge"] {
        assert!(stdout.contains(&format!("  {node} ")), "{node}: {stdout}");
    }
    let verified: Vec<&str> = seen
        .iter()
        .filter(|l| l.starts_with("verified on "))
        .map(String::as_str)
        .collect();
    assert_eq!(
        verified
            .iter()
            .filter(|l| l.starts_with("verified on query:"))
            .count(),
        2,
        "the query node shows both fleets: {verified:?}"
    );
    let takeover = seen
        .iter()
        .find(|l| l.contains(" gone") && l.contains("every one held again after"))
        .unwrap_or_else(|| panic!("no takeover reported: {stdout}"));
    eprintln!("{takeover}");
}

/// With the processing node stopped, an ingest node keeps acknowledging until the stream reaches
/// its byte limit, then answers 503 (`/readyz` says why); the lifts keep what they could not
/// deliver. Once the processing node is back it works the backlog off, the ingest node accepts
/// again, and every reading is counted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_processing_node_stopped_ingest_acknowledges_until_the_stream_is_full() {
    let _one = ONE_AT_A_TIME.lock().await;
    let postgres = test_postgres();
    let schema = scratch_schema("backlog");
    let mut cluster = Cluster::start(&postgres, &schema);
    cluster
        .settings
        .push(("HOISTWAY_LOG__MAX_BYTES", (1u64 << 20).to_string()));
    let tmp = tempfile::tempdir().unwrap();
    let (processing, ingest) = cluster.processing_and_ingest(tmp.path());
    // Long enough that the fleet is still sending once the stream is full on a slow machine.
    let run_for = Duration::from_secs(16);
    let mut sim = Simulator::new(fleet_with_outages(run_for, 31), ingest.addr);
    register(&processing, &sim.registry_csv()).await;
    let mut processing = processing;
    tokio::task::block_in_place(|| assert!(processing.terminate()));

    let stats = sim.stats();
    let (_stop_tx, stop) = watch::channel(false);
    let running = tokio::spawn(async move {
        sim.run(Some(run_for), stop).await;
        sim
    });
    // Acknowledged while nobody processes, until the stream is full.
    let addr = ingest.addr;
    ingest
        .eventually(
            "the ingest node to refuse at the stream's byte limit",
            || async move {
                let r = http(addr, "GET", "/readyz", &[], Bytes::new()).await;
                r.status == 503 && String::from_utf8_lossy(&r.body).contains("log")
            },
        )
        .await;
    let acked_alone = stats.acked.load(Ordering::Relaxed);
    assert!(
        acked_alone > 1_000,
        "only {acked_alone} readings were acknowledged with the processing node stopped"
    );
    let refused = stats.clone();
    ingest
        .eventually("a request refused at the stream's byte limit", || {
            let refused = refused.clone();
            async move { refused.failed_requests.load(Ordering::Relaxed) > 0 }
        })
        .await;

    let processing = TestServer::start_with_token(
        tmp.path().join("processing"),
        ingest.token.clone(),
        &cluster.env(),
    );
    let mut sim = running.await.unwrap();
    let ledger = drained(&mut sim).await;
    verified(&processing, &ledger).await;
    eprintln!(
        "{acked_alone} readings acknowledged with the processing node stopped; {} in all, counted exactly",
        ledger.total_readings()
    );
    cluster.finish([ingest, processing]).await;
}

/// PostgreSQL itself crashes under a fleet's load (a private server stopped `immediate`: its
/// processes quit at once, nothing is flushed or checkpointed, and the next start recovers from
/// the WAL) and starts again 5 s later: as in [`through_a_postgres_outage`], and a restart of the
/// holder from what PostgreSQL recovered is still exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_checkpoints_in_postgres_a_crash_of_postgres_loses_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let _one = ONE_AT_A_TIME.lock().await;
    // Readable by the postgres user, which the server runs as when the tests run as root.
    let pg_dir = tempfile::Builder::new()
        .prefix("hoistway-pg-")
        .permissions(std::fs::Permissions::from_mode(0o755))
        .tempdir()
        .unwrap();
    let pg = tokio::task::block_in_place(|| {
        hoistway_postgres::local::LocalPostgres::start(&pg_dir.path().join("pg"))
    })
    .unwrap();
    let pg = std::sync::Mutex::new(pg);
    let cluster = Cluster::start(&pg.lock().unwrap().url(), "pgcrash");
    let tmp = tempfile::tempdir().unwrap();
    let outage = through_a_postgres_outage(
        &cluster,
        tmp.path(),
        19,
        || pg.lock().unwrap().crash().unwrap(),
        || pg.lock().unwrap().start_again().unwrap(),
    )
    .await;
    let mut server = outage.server;
    tokio::task::block_in_place(|| {
        server.kill9();
        server.spawn();
    });
    verified(&server, &outage.ledger).await;
    cluster.finish([server]).await;
}

/// Cluster mode with PostgreSQL's connections cut for three lease lengths under a fleet's load
/// (a proxy in between): as in [`through_a_postgres_outage`], and alerting, in PostgreSQL too,
/// caught up with the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_checkpoints_in_postgres_an_outage_of_postgres_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (proxy, postgres) = postgres_via_proxy().await;
    let cluster = Cluster::start(&postgres, &scratch_schema("pgcut"));
    let tmp = tempfile::tempdir().unwrap();
    let outage = through_a_postgres_outage(
        &cluster,
        tmp.path(),
        17,
        || proxy.set_cut(true),
        || proxy.set_cut(false),
    )
    .await;
    let alerts = alert_ids(&outage.server).await;
    eprintln!(
        "{} readings, {} acknowledged during the outage; checkpoints caught up {:?} after it; {} alerts",
        outage.ledger.total_readings(),
        outage.acked_during,
        outage.caught_up,
        alerts.len()
    );
    cluster.finish([outage.server]).await;
}

/// What [`through_a_postgres_outage`] leaves.
struct Outage {
    server: TestServer,
    ledger: Ledger,
    /// Readings acknowledged while PostgreSQL was away.
    acked_during: u64,
    /// From PostgreSQL's return until checkpoints were current again.
    caught_up: Duration,
}

/// A processing node of `cluster` (data dir under `dir`) under a fleet's load while PostgreSQL
/// goes away for 6 s (`away`, then `back`): the node keeps acknowledging and stays ready, saying
/// that checkpoints are behind; its lease renewals and checkpoints fail and are retried; it
/// stays the holder (nobody can claim meanwhile), every acknowledged reading is counted exactly
/// once, and checkpoints catch up.
async fn through_a_postgres_outage(
    cluster: &Cluster,
    dir: &Path,
    seed: u64,
    away: impl FnOnce(),
    back: impl FnOnce(),
) -> Outage {
    let env = cluster.env();
    let token = admin_token_with_env(&dir.join("data"), &env);
    let mut server = TestServer::start_with_token(dir.join("data"), token, &env);
    let run_for = Duration::from_secs(12);
    let mut sim = Simulator::new(fleet_with_outages(run_for, seed), server.addr);
    register(&server, &sim.registry_csv()).await;
    let stats = sim.stats();
    let (_stop_tx, stop) = watch::channel(false);
    let running = tokio::spawn(async move {
        sim.run(Some(run_for), stop).await;
        sim
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    tokio::task::block_in_place(away);
    let acked_before = stats.acked.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let acked_during = stats.acked.load(Ordering::Relaxed) - acked_before;
    // Still ready (readings are taken), and saying that checkpoints are behind.
    let ready = http(server.addr, "GET", "/readyz", &[], Bytes::new()).await;
    let body = String::from_utf8_lossy(&ready.body).into_owned();
    assert!(
        ready.status == 200 && body.contains("no checkpoint for"),
        "{body}"
    );
    tokio::task::block_in_place(back);
    let back_at = Instant::now();
    assert!(
        acked_during > 1_000,
        "only {acked_during} readings were acknowledged while PostgreSQL was away"
    );
    let mut sim = running.await.unwrap();
    let ledger = drained(&mut sim).await;
    verified(&server, &ledger).await;
    assert!(
        tokio::task::block_in_place(|| server.wait_exit(Duration::from_millis(200))).is_none(),
        "the holder stopped"
    );
    let addr = server.addr;
    server
        .eventually("checkpoints to catch up", || async move {
            let r = http(addr, "GET", "/readyz", &[], Bytes::new()).await;
            r.status == 200 && !String::from_utf8_lossy(&r.body).contains("no checkpoint for")
        })
        .await;
    let caught_up = back_at.elapsed();
    let metrics = String::from_utf8(server.get("/metrics").await.body.to_vec()).unwrap();
    let count = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    assert!(
        count("hoistway_processor_lease_renewal_failures_total") > 0.0
            && count("hoistway_processor_checkpoint_failures_total") > 0.0,
        "the outage went unnoticed: {metrics}"
    );
    Outage {
        server,
        ledger,
        acked_during,
        caught_up,
    }
}

/// A private NATS server, and the settings of the cluster mode on it with PostgreSQL (`postgres`,
/// `schema`): the log on JetStream, checkpoints every second, leases of 2 s.
struct Cluster {
    nats: hoistway_jetstream::local::LocalNats,
    settings: Vec<(&'static str, String)>,
    /// The schema of the cluster's tables in its PostgreSQL, dropped by `finish`.
    schema: String,
    postgres: String,
}

impl Cluster {
    fn start(postgres: &str, schema: &str) -> Self {
        let nats = hoistway_jetstream::local::LocalNats::start(
            Path::new(env!("CARGO_TARGET_TMPDIR")),
            None,
        )
        .unwrap();
        Self::on(nats, postgres, schema)
    }

    /// A cluster whose log is on `nats`.
    fn on(nats: hoistway_jetstream::local::LocalNats, postgres: &str, schema: &str) -> Self {
        let settings = vec![
            ("HOISTWAY_CLUSTER__NATS", nats.url()),
            ("HOISTWAY_CLUSTER__NATS_REPLICAS", "1".into()),
            ("HOISTWAY_CLUSTER__NATS_MONITOR", nats.monitor_url()),
            ("HOISTWAY_CLUSTER__POSTGRES", postgres.into()),
            ("HOISTWAY_CLUSTER__POSTGRES_SCHEMA", schema.into()),
            ("HOISTWAY_PROCESSOR__CHECKPOINT_INTERVAL_SECS", "1".into()),
            ("HOISTWAY_PROCESSOR__LEASE_SECS", "2".into()),
        ];
        Self {
            nats,
            settings,
            schema: schema.into(),
            postgres: postgres.into(),
        }
    }

    /// Puts both storage tiers in `bucket` of `s3` (their manifests then go to PostgreSQL).
    fn store_on(&mut self, s3: &S3Server, bucket: &str) {
        self.settings.extend([
            ("HOISTWAY_STORAGE__HOT_URL", format!("s3://{bucket}/hot")),
            (
                "HOISTWAY_STORAGE__ARCHIVE_URL",
                format!("s3://{bucket}/archive"),
            ),
            ("HOISTWAY_STORAGE__S3__ENDPOINT", s3.endpoint()),
            ("HOISTWAY_STORAGE__S3__REGION", "us-east-1".into()),
            ("HOISTWAY_STORAGE__S3__ACCESS_KEY_ID", "test".into()),
            ("HOISTWAY_STORAGE__S3__SECRET_ACCESS_KEY", "test".into()),
            ("HOISTWAY_STORAGE__S3__ALLOW_HTTP", "true".into()),
        ]);
    }

    /// Stops `servers` cleanly (each must exit with success) and drops the cluster's schema.
    async fn finish(self, servers: impl IntoIterator<Item = TestServer>) {
        for mut server in servers {
            tokio::task::block_in_place(|| assert!(server.terminate()));
        }
        drop_schema(&self.postgres, &self.schema).await;
    }

    /// A node with every role and an ingest node (`HOISTWAY_ROLES=ingest`), with the data dirs
    /// `processing` and `ingest` under `dir` and one admin token.
    fn processing_and_ingest(&self, dir: &Path) -> (TestServer, TestServer) {
        let env = self.env();
        let token = admin_token_with_env(&dir.join("processing"), &env);
        let processing = TestServer::start_with_token(dir.join("processing"), token.clone(), &env);
        let mut ingest_env = env.clone();
        ingest_env.push(("HOISTWAY_ROLES", "ingest"));
        let ingest = TestServer::start_with_token(dir.join("ingest"), token, &ingest_env);
        (processing, ingest)
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.settings
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect()
    }

    /// The settings with `changes` made (added, or replacing a setting of the same name).
    fn env_with<'a>(&'a self, changes: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut env: Vec<_> = self
            .env()
            .into_iter()
            .filter(|(k, _)| !changes.iter().any(|(c, _)| c == k))
            .collect();
        env.extend_from_slice(changes);
        env
    }
}

/// 300 lifts at 25 times real time over 8 connections, with outages (and the resends after
/// them) and duplicates, planned for `run_for`.
fn fleet_with_outages(run_for: Duration, seed: u64) -> SimConfig {
    SimConfig {
        lifts: 300,
        speedup: 25.0,
        connections: 8,
        outage_rate: 0.02,
        outage_readings: (2, 25),
        duplicate_rate: 0.05,
        request_timeout: Duration::from_secs(5),
        planned_duration: Some(run_for),
        seed,
        ..SimConfig::default()
    }
}

/// The ids of every alert a server lists (up to 1,000).
async fn alert_ids(server: &TestServer) -> Vec<i64> {
    let page = server.get("/v1/alerts?limit=1000").await.json();
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"))
        .iter()
        .map(|a| a["id"].as_i64().unwrap())
        .collect()
}

/// Every acknowledged reading is stored exactly once: per lift, the row count, the number of
/// distinct seqs and the sum of trips equal the ledger.
async fn stored_readings_match_the_ledger(server: &TestServer, ledger: &hoistway_sim::Ledger) {
    let rows = server
        .sql_rows(
            "SELECT lift_id, count(*), count(DISTINCT concat(epoch, ':', seq)), sum(trips) \
             FROM readings GROUP BY lift_id ORDER BY lift_id",
        )
        .await;
    assert_eq!(rows.len(), ledger.lifts.len());
    let mut mismatches = Vec::new();
    for row in &rows {
        let expected = &ledger.lifts[&row[0]];
        let (n, distinct, trips) = (
            row[1].parse::<u64>().unwrap(),
            row[2].parse::<u64>().unwrap(),
            row[3].parse::<u64>().unwrap(),
        );
        if n != expected.readings || distinct != n || trips != expected.trips {
            mismatches.push(format!(
                "{}: stored {n} rows ({distinct} distinct), {trips} trips; ledger {} readings, {} trips",
                row[0], expected.readings, expected.trips
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} lifts differ, e.g. {:?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(5)]
    );
}

/// The process dies at the exact moments storage is most fragile (between writing Parquet files
/// and committing the manifest that lists them, and right after a compaction commit), then
/// restarts; nothing acknowledged is lost and nothing is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_survives_crashes_at_flush_and_compaction() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut server = TestServer::start(&[
        ("HOISTWAY_PROCESSOR__CHECKPOINT_INTERVAL_SECS", "1"),
        ("HOISTWAY_STORAGE__COMPACT_MIN_FILES", "2"),
        ("HOISTWAY_STORAGE__MAINTENANCE_INTERVAL_SECS", "1"),
    ]);
    let addr = server.addr;
    let run_for = Duration::from_secs(20);
    let config = SimConfig {
        lifts: 300,
        speedup: 20.0,
        connections: 8,
        outage_rate: 0.02,
        outage_readings: (2, 20),
        duplicate_rate: 0.05,
        request_timeout: Duration::from_secs(5),
        planned_duration: Some(run_for),
        seed: 11,
        ..SimConfig::default()
    };
    let mut sim = Simulator::new(config, addr);
    register(&server, &sim.registry_csv()).await;
    let (_stop_tx, stop) = watch::channel(false);
    let running = tokio::spawn(async move {
        sim.run(Some(run_for), stop).await;
        sim
    });
    for point in [
        "flush_before_commit",
        "compact_before_commit",
        "compact_after_commit",
    ] {
        tokio::task::block_in_place(|| {
            server.set_env("HOISTWAY_UNSTABLE_CRASH_AT", Some(point));
            server.kill9();
            server.spawn();
            let status = server.wait_exit(Duration::from_secs(15));
            assert!(
                status.is_some_and(|s| !s.success()),
                "the server did not reach the crash point {point}"
            );
            server.set_env("HOISTWAY_UNSTABLE_CRASH_AT", None);
            server.spawn();
        });
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let mut sim = running.await.unwrap();
    let ledger = drained(&mut sim).await;
    assert!(ledger.total_readings() > 3_000);
    verified(&server, &ledger).await;
    stored_readings_match_the_ledger(&server, &ledger).await;
    // And again after a clean restart, from files only.
    tokio::task::block_in_place(|| {
        assert!(server.terminate());
        server.spawn();
    });
    let status = server.get("/v1/storage/status").await.json();
    assert_eq!(status["buffered_rows"], 0, "{status}");
    stored_readings_match_the_ledger(&server, &ledger).await;
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs needs root (CI runs as root)");
        Self { dir }
    }

    fn resize(&self, size: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_readings_and_keeps_every_acknowledged_one() {
    let _one = ONE_AT_A_TIME.lock().await;
    let disk = SmallDisk::mount("3m");
    let mut server = TestServer::start_in(
        disk.dir.path().join("data"),
        &[("HOISTWAY_PROCESSOR__CHECKPOINT_INTERVAL_SECS", "1")],
    );
    register(&server, "lift_id\nL1\n").await;
    let mut acked = 0u64;
    let mut seq = 0u64;
    let mut refusal = None;
    for _ in 0..1000 {
        let batch: Vec<_> = (0..200)
            .map(|_| {
                seq += 1;
                reading("L1", seq, 1)
            })
            .collect();
        let r = server
            .post_json("/v1/telemetry", &serde_json::Value::from(batch).to_string())
            .await;
        if r.status == 200 {
            acked += r.json()["accepted"].as_u64().unwrap();
        } else {
            refusal = Some(r);
            break;
        }
    }
    let r = refusal.expect("the disk never filled");
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.content_type(), "application/problem+json");
    assert!(r.headers.get("retry-after").is_some());
    assert!(acked > 1000, "only {acked} readings fit");
    // the refused batch is the lift's to resend; the server keeps running and answering
    assert_eq!(server.get("/healthz").await.status, 200);

    // room again: the same batch goes through, and nothing was lost or doubled
    disk.resize("64m");
    let resend: Vec<_> = (acked + 1..=acked + 200)
        .map(|s| reading("L1", s, 1))
        .collect();
    let r = server
        .post_json(
            "/v1/telemetry",
            &serde_json::Value::from(resend).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let total = acked + 200;
    tokio::task::block_in_place(|| {
        server.kill9();
        server.spawn();
    });
    server
        .eventually("every acknowledged reading counted once", || async {
            let s = server.get("/v1/lifts/L1/state").await.json();
            s["readings_total"] == total && s["trips_total"] == total
        })
        .await;
    let s = server.get("/v1/lifts/L1/state").await.json();
    assert_eq!(
        s["seq_ranges"][0]["ranges"],
        serde_json::json!([[1, total]])
    );
    tokio::task::block_in_place(|| server.kill9());
}

/// Runs `hoistway serve` on `data`, expecting it to refuse to start; returns what it said.
fn serve_refused(data: &Path, env: &[(&str, &std::ffi::OsStr)]) -> String {
    let args: [&std::ffi::OsStr; 5] = [
        "serve".as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
    ];
    let out = hoistway_with_env(&args, env);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "serve started: {stderr}");
    stderr
}

/// Adds what a later run acknowledged to what an earlier one did: lifetime counters add up,
/// accepted seqs are the later run's (a new epoch).
fn merge_ledgers(earlier: &Ledger, later: &Ledger) -> Ledger {
    let mut merged = earlier.clone();
    for (id, t) in &later.lifts {
        let m = merged.lifts.entry(id.clone()).or_default();
        m.readings += t.readings;
        m.trips += t.trips;
        m.door_cycles += t.door_cycles;
        m.epoch = t.epoch;
        m.seqs = t.seqs.clone();
    }
    merged
}

/// Delivers what the simulator still holds (all of it must be acknowledged) and checks that the
/// server rejected none of its readings; returns its ledger.
async fn drained(sim: &mut Simulator) -> Ledger {
    assert!(
        sim.drain(Duration::from_secs(60)).await,
        "every buffered reading was acknowledged"
    );
    assert_eq!(
        sim.stats().rejected.load(Ordering::Relaxed),
        0,
        "the server rejected simulated readings"
    );
    sim.ledger().clone()
}

/// Waits (at most a minute) until the server's state matches the ledger for every lift.
async fn verified(server: &TestServer, ledger: &Ledger) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let problems = verify(server.addr, Some(&server.token), ledger).await;
        if problems.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} lifts disagree with the ledger, e.g. {:?}",
            problems.len(),
            &problems[..problems.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn segment_versions(data: &Path) -> Vec<u16> {
    let mut segs: Vec<_> = std::fs::read_dir(data.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs.iter()
        .map(|p| {
            let b = std::fs::read(p).unwrap();
            u16::from_le_bytes([b[6], b[7]])
        })
        .collect()
}

/// A data dir written by the release before on-disk formats were versioned (committed with the
/// ledger of everything it acknowledged, some of it still only in its log) opens with this
/// build, which then ingests more in the new formats and still counts every reading exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_the_first_release_opens_and_keeps_counting_exactly() {
    let _one = ONE_AT_A_TIME.lock().await;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v0");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    copy_dir(&fixture.join("data"), &data);
    let old: Ledger =
        serde_json::from_slice(&std::fs::read(fixture.join("ledger.json")).unwrap()).unwrap();
    assert_eq!(
        segment_versions(&data),
        vec![1],
        "the fixture is a version 1 log"
    );

    let mut server = TestServer::start_in(
        data.clone(),
        &[("HOISTWAY_PROCESSOR__CHECKPOINT_INTERVAL_SECS", "1")],
    );
    verified(&server, &old).await;
    stored_readings_match_the_ledger(&server, &old).await;
    // the old release's dead letter (an unregistered lift) is listed and readable
    let listed = server.get("/v1/dlq").await.json();
    let files = listed["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    let id = files[0]["id"].as_str().unwrap();
    let letters = server.get(&format!("/v1/dlq/{id}")).await.json();
    assert_eq!(letters["items"][0]["reading"]["lift_id"], "FX-UNKNOWN");

    // the same lifts report on, after a controller restart (a new epoch)
    let run_for = Duration::from_secs(4);
    let mut sim = Simulator::new(
        SimConfig {
            lifts: old.lifts.len(),
            prefix: "FX-".into(),
            speedup: 20.0,
            connections: 8,
            outage_rate: 0.02,
            outage_readings: (2, 10),
            duplicate_rate: 0.05,
            planned_duration: Some(run_for),
            seed: 11,
            ..SimConfig::default()
        },
        server.addr,
    );
    register(&server, &sim.registry_csv()).await;
    let (_stop_tx, stop) = watch::channel(false);
    sim.run(Some(run_for), stop).await;
    assert!(sim.drain(Duration::from_secs(30)).await);
    assert_eq!(sim.stats().rejected.load(Ordering::Relaxed), 0);
    let both = merge_ledgers(&old, sim.ledger());
    assert!(both.total_readings() > old.total_readings());
    verified(&server, &both).await;

    // and again after a restart, from the new checkpoint and the new log segment
    assert!(server.terminate(), "a clean stop");
    server.spawn();
    verified(&server, &both).await;
    stored_readings_match_the_ledger(&server, &both).await;
    let versions = segment_versions(&data);
    assert_eq!(
        versions.last(),
        Some(&2),
        "new entries go to a version 2 segment: {versions:?}"
    );
}

/// A data dir of the release before customer scopes (registry schema 1, auth schema 2, with an
/// admin, her API token, factory-provisioned lifts and audit events) opens with its readings
/// exact, its accounts and tokens working, and each lift owned by its customer since the
/// beginning, so that customer's people see the old readings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_the_release_before_customer_scopes_opens_with_its_accounts() {
    let _one = ONE_AT_A_TIME.lock().await;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    copy_dir(&fixture.join("data"), &data);
    let old: Ledger =
        serde_json::from_slice(&std::fs::read(fixture.join("ledger.json")).unwrap()).unwrap();
    let olga = std::fs::read_to_string(fixture.join("olga.token"))
        .unwrap()
        .trim()
        .to_string();
    let server = TestServer::start_in(data.clone(), &[]);
    verified(&server, &old).await;
    stored_readings_match_the_ledger(&server, &old).await;
    let as_olga = |path: &'static str| {
        let auth = format!("Bearer {olga}");
        async move {
            http(
                server.addr,
                "GET",
                path,
                &[("authorization", &auth)],
                Default::default(),
            )
            .await
        }
    };
    // Her token from the old release still works, with her role.
    let me = as_olga("/v1/auth/me").await;
    assert_eq!(me.status, 200, "{}", String::from_utf8_lossy(&me.body));
    assert_eq!(me.json()["role"], "admin");
    assert!(me.json()["customer"].is_null());
    // The old audit events are there (the factory provisioning she did).
    let audit = as_olga("/v1/audit?actor=olga").await.json();
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"device.provision"), "{actions:?}");
    // Every lift belongs to its customer since the beginning: that customer's viewer sees all
    // of its old readings and none of the other customer's.
    let lifts = server
        .sql_rows("SELECT lift_id, customer FROM lifts ORDER BY lift_id")
        .await;
    let one = &lifts[0][1];
    let periods = server
        .get(&format!("/v1/lifts/{}/assignments", lifts[0][0]))
        .await
        .json();
    assert_eq!(periods["items"].as_array().unwrap().len(), 1);
    assert!(periods["items"][0]["valid_from"].is_null());
    let r = server
        .post_json(
            "/v1/users",
            &serde_json::json!({
                "username": "cora", "password": "a long enough password", "role": "viewer",
                "customer": one,
            })
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let login = http(
        server.addr,
        "POST",
        "/v1/auth/login",
        &[("content-type", "application/json"), ("authorization", "")],
        serde_json::json!({ "username": "cora", "password": "a long enough password" })
            .to_string()
            .into(),
    )
    .await
    .json();
    let cora = format!("Bearer {}", login["token"].as_str().unwrap());
    let r = http(
        server.addr,
        "POST",
        "/v1/sql",
        &[("content-type", "text/plain"), ("authorization", &cora)],
        "SELECT lift_id, count(*) AS n FROM readings GROUP BY lift_id ORDER BY lift_id".into(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen: Vec<(String, u64)> = r.json()["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["lift_id"].as_str().unwrap().to_string(),
                row["n"].as_u64().unwrap(),
            )
        })
        .collect();
    let mine: Vec<&String> = lifts
        .iter()
        .filter(|l| &l[1] == one)
        .map(|l| &l[0])
        .collect();
    assert!(!mine.is_empty() && mine.len() < lifts.len());
    assert_eq!(seen.iter().map(|(l, _)| l).collect::<Vec<_>>(), mine);
    let all = server
        .sql_rows("SELECT lift_id, count(*) FROM readings GROUP BY lift_id ORDER BY lift_id")
        .await;
    for (lift, n) in &seen {
        let row = all.iter().find(|r| &r[0] == lift).unwrap();
        assert_eq!(n.to_string(), row[1], "{lift}: every old reading");
    }
}

/// A bit flipped in an acknowledged log entry (below the durable mark) is not taken for a torn
/// tail: the server refuses to start and says why; `hoistway log repair` replaces the entry by a
/// placeholder and the server then starts with every other reading counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_log_entry_stops_the_start_until_an_operator_repairs_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut server = TestServer::start(&[("HOISTWAY_PROCESSOR__CHECKPOINT_INTERVAL_SECS", "3600")]);
    register(&server, "lift_id,building\nL-1,B1\n").await;
    for seq in 1..=10 {
        let body = serde_json::to_string(&reading("L-1", seq, 1)).unwrap();
        assert_eq!(server.post_json("/v1/telemetry", &body).await.status, 200);
    }
    tokio::task::block_in_place(|| server.kill9());
    // flip one byte in the payload of the 4th record since the server started
    let seg = last_segment(server.data_dir());
    let bytes = std::fs::read(&seg).unwrap();
    assert_eq!(u16::from_le_bytes([bytes[6], bytes[7]]), 2);
    let mut pos = 32;
    let mut entries = Vec::new();
    while pos + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        entries.push((pos, len));
        pos += 8 + len;
    }
    let (at, len) = entries[entries.len() - 7];
    let mut damaged = bytes.clone();
    damaged[at + 8 + len / 2] ^= 0x10;
    std::fs::write(&seg, &damaged).unwrap();

    let data = server.data_dir().as_os_str().to_owned();
    let stderr = serve_refused(Path::new(&data), &[]);
    assert!(
        stderr.contains("hoistway log repair") && stderr.contains("durable"),
        "{stderr}"
    );

    let repaired = hoistway(&[
        "log".as_ref(),
        "repair".as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ]);
    let stdout = String::from_utf8_lossy(&repaired.stdout);
    assert!(
        repaired.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&repaired.stderr)
    );
    assert!(stdout.contains("lost 1 records"), "{stdout}");

    tokio::task::block_in_place(|| server.spawn());
    let state = server.get("/v1/lifts/L-1/state").await.json();
    assert_eq!(state["readings_total"], 9, "{state}");
    let metrics = String::from_utf8(server.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "hoistway_processor_removed_records_total 1"),
        "{metrics}"
    );
}

/// A log record written by a newer release (an unknown record version) stops the server with
/// its offset and version; it is never skipped, which would lose acknowledged readings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_record_of_a_newer_release_stops_the_server_instead_of_being_skipped() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut server = TestServer::start(&[]);
    register(&server, "lift_id,building\nL-1,B1\n").await;
    let body = serde_json::to_string(&reading("L-1", 1, 1)).unwrap();
    assert_eq!(server.post_json("/v1/telemetry", &body).await.status, 200);
    assert!(tokio::task::block_in_place(|| server.terminate()));
    let data = server.data_dir().to_path_buf();
    let at = {
        use hoistway_log::{FileLog, FileLogConfig, Log};
        let (log, _) = FileLog::open(FileLogConfig::new(data.join("log"))).unwrap();
        log.append(vec![bytes::Bytes::from_static(&[9, 0, 1, 0, 0, 0])])
            .await
            .unwrap()[0]
    };
    let stderr = serve_refused(&data, &[]);
    assert!(
        stderr.contains(&format!("offset {at}")) && stderr.contains("format version 9"),
        "{stderr}"
    );
}

/// A server with the fault shim loaded, lift L-1 registered, and the shim's fault `variable`
/// armed while the returned trigger file exists.
async fn server_with_fault(variable: &str) -> (TestServer, std::path::PathBuf) {
    let shim = fault_shim();
    let trigger =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{variable}-{}", std::process::id()));
    let _ = std::fs::remove_file(&trigger);
    let server = TestServer::start(&[
        ("LD_PRELOAD", shim.to_str().unwrap()),
        (variable, trigger.to_str().unwrap()),
    ]);
    register(&server, "lift_id,building\nL-1,B1\n").await;
    (server, trigger)
}

async fn post_reading(server: &TestServer, seq: u64) -> Reply {
    let body = serde_json::to_string(&reading("L-1", seq, 1)).unwrap();
    server.post_json("/v1/telemetry", &body).await
}

/// Injected fault: fdatasync of the log fails (tests/faults/fail_io.c). The request waiting for
/// it gets a 503, the log is poisoned (every later request too, and /readyz says why), and after
/// a restart every acknowledged reading is there, counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_fsync_poisons_the_log_and_loses_nothing_acknowledged() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (mut server, trigger) = server_with_fault("FAIL_IO_FSYNC_TRIGGER").await;
    for seq in 1..=5 {
        assert_eq!(post_reading(&server, seq).await.status, 200);
    }
    std::fs::write(&trigger, b"").unwrap();
    let failed = post_reading(&server, 6).await;
    assert_eq!(
        failed.status,
        503,
        "{}",
        String::from_utf8_lossy(&failed.body)
    );
    assert!(failed.headers.contains_key("retry-after"));
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status, 503);
    let why = ready.json()["detail"].as_str().unwrap().to_string();
    assert!(why.contains("fsync failed"), "{why}");
    // Seq 6 was written but never durable: neither state nor storage has it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let state = server.get("/v1/lifts/L-1/state").await.json();
    assert_eq!(state["readings_total"], 5, "{state}");
    let rows = server
        .sql_rows("SELECT count(*), max(seq) FROM readings WHERE lift_id = 'L-1'")
        .await;
    assert_eq!(rows, vec![vec!["5".to_string(), "5".to_string()]]);
    // the disk may be back, but what it holds is no longer known: poisoned until restart
    std::fs::remove_file(&trigger).unwrap();
    assert_eq!(post_reading(&server, 7).await.status, 503);

    tokio::task::block_in_place(|| {
        server.kill9();
        server.set_env("LD_PRELOAD", None);
        server.spawn();
    });
    assert_eq!(server.get("/readyz").await.status, 200);
    let state = server.get("/v1/lifts/L-1/state").await.json();
    let ranges = &state["seq_ranges"][0]["ranges"];
    assert_eq!(ranges[0][0], 1, "{state}");
    assert!(
        ranges[0][1].as_u64().unwrap() >= 5,
        "acknowledged seqs 1..=5 are kept: {state}"
    );
    // The lift resends what was not acknowledged; each reading counts once either way.
    for seq in [6, 7] {
        assert_eq!(post_reading(&server, seq).await.status, 200);
    }
    let state = server.get("/v1/lifts/L-1/state").await.json();
    assert_eq!(state["readings_total"], 7, "{state}");
}

/// Injected fault: reading the log fails with EIO. The server does not take that for the end of
/// the log (which would drop what follows): it refuses to start and names the error; once the
/// disk reads again, every reading is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_io_error_reading_the_log_is_reported_not_taken_for_its_end() {
    let _one = ONE_AT_A_TIME.lock().await;
    let shim = fault_shim();
    let mut server = TestServer::start(&[("HOISTWAY_PROCESSOR__CHECKPOINT_INTERVAL_SECS", "3600")]);
    register(&server, "lift_id,building\nL-1,B1\n").await;
    for seq in 1..=3 {
        let body = serde_json::to_string(&reading("L-1", seq, 1)).unwrap();
        assert_eq!(server.post_json("/v1/telemetry", &body).await.status, 200);
    }
    // no checkpoint: a restart replays the log from its start
    tokio::task::block_in_place(|| server.kill9());
    let data = server.data_dir().to_path_buf();
    let trigger = data.join("fail-read");
    std::fs::write(&trigger, b"").unwrap();
    let stderr = serve_refused(
        &data,
        &[
            ("LD_PRELOAD", shim.as_os_str()),
            ("FAIL_IO_READ_TRIGGER", trigger.as_os_str()),
        ],
    );
    assert!(stderr.contains("Input/output error"), "{stderr}");
    std::fs::remove_file(&trigger).unwrap();
    tokio::task::block_in_place(|| server.spawn());
    let state = server.get("/v1/lifts/L-1/state").await.json();
    assert_eq!(state["readings_total"], 3, "{state}");
}

/// Injected fault: reading a stored Parquet file fails with EIO. A query over it is an error, not
/// an answer computed from fewer rows; once the disk reads again, the same query is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_io_error_reading_stored_files_fails_the_query_instead_of_dropping_rows() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (mut server, trigger) = server_with_fault("FAIL_IO_PARQUET_READ_TRIGGER").await;
    for seq in 1..=6 {
        assert_eq!(post_reading(&server, seq).await.status, 200);
    }
    // a clean stop flushes every reading to Parquet; after the restart none is in memory
    tokio::task::block_in_place(|| {
        assert!(server.terminate());
        server.spawn();
    });
    let sql =
        r#"{"sql": "SELECT count(*) AS n, sum(trips) AS trips FROM readings", "format": "csv"}"#;
    std::fs::write(&trigger, b"").unwrap();
    let failed = server.post_json("/v1/sql", sql).await;
    assert!(
        failed.status >= 500,
        "{}: {}",
        failed.status,
        String::from_utf8_lossy(&failed.body)
    );
    std::fs::remove_file(&trigger).unwrap();
    let answered = server.post_json("/v1/sql", sql).await;
    assert_eq!(answered.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&answered.body).lines().nth(1),
        Some("6,6")
    );
}

/// Runs the CLI with the server's admin token (blocking: call from `block_in_place`).
fn cli(server: &TestServer, args: &[&str]) -> std::process::Output {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    hoistway_with_env(&args, &[("HOISTWAY_TOKEN", server.token.as_ref())])
}

fn backup_report(server: &TestServer, to: &Path) -> serde_json::Value {
    let url = format!("http://{}", server.addr);
    let out = tokio::task::block_in_place(|| {
        cli(
            server,
            &["backup", "--to", to.to_str().unwrap(), "--server", &url],
        )
    });
    assert!(
        out.status.success(),
        "backup: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every lift's stored rows equal its counted readings: a restored data dir is consistent even
/// for a backup taken in the middle of ingest (no ledger knows that moment).
async fn stored_rows_match_counters(server: &TestServer) {
    let rows = server
        .sql_rows(
            "SELECT s.lift_id, s.readings_total, count(r.seq) FROM lift_state s \
             LEFT JOIN readings r ON r.lift_id = s.lift_id \
             GROUP BY s.lift_id, s.readings_total HAVING count(r.seq) <> s.readings_total",
        )
        .await;
    assert!(
        rows.is_empty(),
        "stored rows differ from counters: {rows:?}"
    );
}

/// A backup taken while the simulator ingests and compaction removes and deletes files is
/// complete and consistent; a second one after the run restores every acknowledged reading
/// exactly; a third copies no stored file again; `verify` finds a flipped byte, and restore
/// refuses the damaged backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_taken_during_ingest_and_compaction_restore_exactly() {
    let _one = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start(&[
        ("HOISTWAY_PROCESSOR__CHECKPOINT_INTERVAL_SECS", "1"),
        ("HOISTWAY_STORAGE__COMPACT_MIN_FILES", "2"),
        ("HOISTWAY_STORAGE__MAINTENANCE_INTERVAL_SECS", "1"),
        ("HOISTWAY_STORAGE__GARBAGE_GRACE_SECS", "0"),
        // Each stored file's copy takes a while, so compaction runs in the middle of a backup.
        ("HOISTWAY_UNSTABLE_BACKUP_FILE_DELAY_MS", "400"),
        // Files are copied in 4 KiB pieces (multipart), as files over 8 MiB are.
        ("HOISTWAY_UNSTABLE_BACKUP_PIECE_BYTES", "4096"),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("backups");
    let run_for = Duration::from_secs(10);
    let mut sim = Simulator::new(
        SimConfig {
            lifts: 200,
            speedup: 30.0,
            connections: 8,
            outage_rate: 0.02,
            outage_readings: (2, 20),
            duplicate_rate: 0.05,
            planned_duration: Some(run_for),
            seed: 5,
            ..SimConfig::default()
        },
        server.addr,
    );
    register(&server, &sim.registry_csv()).await;
    let (_stop_tx, stop) = watch::channel(false);
    let running = tokio::spawn(async move {
        sim.run(Some(run_for), stop).await;
        sim
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    let compactions = || async {
        let text = String::from_utf8(server.get("/metrics").await.body.to_vec()).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("hoistway_store_compactions_total "))
            .map_or(0.0, |v| v.trim().parse::<f64>().unwrap())
    };
    let before = compactions().await;
    // The backup runs on a thread while upkeep is asked for again and again (as well as every
    // second): new flush files keep arriving, so compaction removes files during the backup.
    let (url, to, token) = (
        format!("http://{}", server.addr),
        target.to_str().unwrap().to_string(),
        server.token.clone(),
    );
    let backup = std::thread::spawn(move || {
        let args = ["backup", "--to", &to, "--server", &url];
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        hoistway_with_env(&args, &[("HOISTWAY_TOKEN", token.as_ref())])
    });
    while !backup.is_finished() {
        server.post_json("/v1/storage/maintain", "{}").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = backup.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        compactions().await > before,
        "compaction ran during the backup: {first}"
    );
    assert!(first["copied_files"].as_u64().unwrap() > 0, "{first}");
    let mut sim = running.await.unwrap();
    let ledger = drained(&mut sim).await;
    verified(&server, &ledger).await;
    // Quiet storage (everything flushed, nothing left to compact), so the third backup finds
    // every file in place.
    server
        .eventually("every reading flushed", || async {
            server.get("/v1/storage/status").await.json()["buffered_rows"] == 0
        })
        .await;
    assert_eq!(
        server.post_json("/v1/storage/maintain", "{}").await.status,
        200
    );
    let second = backup_report(&server, &target);
    let third = backup_report(&server, &target);
    assert_eq!(third["copied_files"], 0, "{third}");
    assert_eq!(
        third["reused_files"],
        second["copied_files"].as_u64().unwrap() + second["reused_files"].as_u64().unwrap(),
        "{second} {third}"
    );

    let verify = || {
        tokio::task::block_in_place(|| {
            cli(
                &server,
                &["backup", "verify", "--from", target.to_str().unwrap()],
            )
        })
    };
    let report = succeeded(&verify());
    assert_eq!(report["backups"].as_array().unwrap().len(), 3, "{report}");

    // The first backup, taken mid-run, restores to a data dir whose files and counters agree.
    let restore = |id: &str, dir: &Path| {
        tokio::task::block_in_place(|| {
            cli(
                &server,
                &[
                    "restore",
                    "--from",
                    target.to_str().unwrap(),
                    "--id",
                    id,
                    "--data-dir",
                    dir.to_str().unwrap(),
                ],
            )
        })
    };
    let early = tmp.path().join("restored-early");
    let out = restore(first["id"].as_str().unwrap(), &early);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Its accounts came with it: the admin's token works on the restored server.
    let restored = TestServer::start_with_token(early, server.token.clone(), &[]);
    stored_rows_match_counters(&restored).await;
    drop(restored);

    // The second, taken after the run, holds every acknowledged reading exactly once.
    let late = tmp.path().join("restored");
    let out = restore(second["id"].as_str().unwrap(), &late);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = TestServer::start_with_token(late, server.token.clone(), &[]);
    verified(&restored, &ledger).await;
    stored_readings_match_the_ledger(&restored, &ledger).await;
    drop(restored);

    // Pruning to the newest backup removes the two older ones and the stored files only the
    // first listed (compaction replaced them); what is left verifies.
    let prune = |dry_run: bool| {
        let mut args = vec![
            "backup",
            "prune",
            "--from",
            target.to_str().unwrap(),
            "--keep",
            "1",
        ];
        if dry_run {
            args.push("--dry-run");
        }
        succeeded(&tokio::task::block_in_place(|| cli(&server, &args)))
    };
    let stored_files = || walk_files(&target.join("files")).len();
    let before_prune = stored_files();
    let would = prune(true);
    assert_eq!(stored_files(), before_prune, "a dry run removes nothing");
    let pruned = prune(false);
    assert_eq!(
        would["removed_files"], pruned["removed_files"],
        "{would} {pruned}"
    );
    assert_eq!(
        pruned["removed_backups"],
        serde_json::json!([first["id"], second["id"]]),
        "{pruned}"
    );
    assert_eq!(pruned["kept"], serde_json::json!([third["id"]]));
    assert!(pruned["removed_files"].as_u64().unwrap() > 0, "{pruned}");
    assert_eq!(
        stored_files() as u64,
        third["reused_files"].as_u64().unwrap(),
        "the newest backup's files are left: {pruned}"
    );
    let report = succeeded(&verify());
    assert_eq!(
        report["backups"],
        serde_json::json!([third["id"]]),
        "{report}"
    );
    assert_eq!(report["incomplete"], serde_json::json!([]), "{report}");

    // A flipped byte in a stored file of the newest backup: verify names it, restore refuses it.
    let contents: serde_json::Value = serde_json::from_slice(
        &std::fs::read(target.join(format!(
            "backups/{}/backup.json",
            third["id"].as_str().unwrap()
        )))
        .unwrap(),
    )
    .unwrap();
    let key = contents["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|p| p["key"].as_str().filter(|k| k.ends_with(".parquet")))
        .unwrap();
    let stored = target.join(key);
    let mut bytes = std::fs::read(&stored).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&stored, bytes).unwrap();
    let verify = verify();
    assert!(!verify.status.success());
    let name = stored.file_name().unwrap().to_str().unwrap();
    let said = String::from_utf8_lossy(&verify.stdout);
    assert!(
        said.contains(name) && said.contains("checksum mismatch"),
        "{said}"
    );
    let out = restore(third["id"].as_str().unwrap(), &tmp.path().join("refused"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("checksum mismatch"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A client that hangs up does not cut its backup short: it completes on the server. With
    // the stored files gone from the target, the backup copies each again (slowly, by the
    // test hook), so it is still running when the client goes.
    std::fs::remove_dir_all(target.join("files")).unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let body = format!(r#"{{"to": "{}"}}"#, target.to_str().unwrap());
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let request = format!(
            "POST /v1/backups HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            server.token,
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let listed = || {
        let out = tokio::task::block_in_place(|| {
            cli(
                &server,
                &["backup", "list", "--from", target.to_str().unwrap()],
            )
        });
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    server
        .eventually("the abandoned backup completes", || async {
            let listed = listed();
            listed.lines().count() == 2 && !listed.contains("incomplete")
        })
        .await;
}

/// Runs the simulator for `secs` and waits until every reading is acknowledged.
async fn run(sim: &mut Simulator, secs: u64) {
    let (_stop_tx, stop) = watch::channel(false);
    sim.run(Some(Duration::from_secs(secs)), stop).await;
    assert!(sim.drain(Duration::from_secs(30)).await);
    assert_eq!(sim.stats().rejected.load(Ordering::Relaxed), 0);
}

/// Point-in-time restore: the log is archived segment by segment as it seals; a restore to a
/// moment after the last backup replays the archived log up to that moment and no further.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_in_time_restore_replays_the_archived_log_up_to_that_moment() {
    let _one = ONE_AT_A_TIME.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("backups");
    let target_env = target.to_str().unwrap().to_string();
    let mut server = TestServer::start(&[
        ("HOISTWAY_PROCESSOR__CHECKPOINT_INTERVAL_SECS", "1"),
        // Small segments seal often, so the archive soon holds what was written.
        ("HOISTWAY_LOG__SEGMENT_BYTES", "32768"),
        ("HOISTWAY_BACKUP__TARGET", &target_env),
        ("HOISTWAY_BACKUP__LOG_ARCHIVE", "true"),
        ("HOISTWAY_BACKUP__LOG_ARCHIVE_INTERVAL_SECS", "1"),
    ]);
    let fleet = |prefix: &str, seed| {
        Simulator::new(
            SimConfig {
                lifts: 100,
                prefix: prefix.into(),
                speedup: 20.0,
                connections: 4,
                duplicate_rate: 0.05,
                planned_duration: Some(Duration::from_secs(3)),
                seed,
                ..SimConfig::default()
            },
            server.addr,
        )
    };
    // Three fleets, all registered first (the registry is restored as the backup has it):
    // A reports before the backup, B after it and before the moment restored to, C after.
    let (mut a, mut b, mut c) = (fleet("PA-", 1), fleet("PB-", 2), fleet("PC-", 3));
    for sim in [&a, &b, &c] {
        register(&server, &sim.registry_csv()).await;
    }
    run(&mut a, 3).await;
    // No --to: the server's backup.target.
    let url = format!("http://{}", server.addr);
    let out = tokio::task::block_in_place(|| cli(&server, &["backup", "--server", &url]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run(&mut b, 3).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let until = now_rfc3339();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    run(&mut c, 5).await;
    // A clean stop archives every sealed segment after the last checkpoint.
    tokio::task::block_in_place(|| assert!(server.terminate()));
    let archived = std::fs::read_dir(target.join("log")).unwrap().count();
    assert!(archived > 3, "{archived} segments archived");

    let data = tmp.path().join("restored");
    let out = tokio::task::block_in_place(|| {
        cli(
            &server,
            &[
                "restore",
                "--from",
                target.to_str().unwrap(),
                "--until",
                &until,
                "--data-dir",
                data.to_str().unwrap(),
            ],
        )
    });
    let report = succeeded(&out);
    assert!(
        report["archived_segments"].as_u64().unwrap() > 0,
        "{report}"
    );
    let restored = TestServer::start_with_token(data, server.token.clone(), &[]);
    let before = merge_ledgers(a.ledger(), b.ledger());
    verified(&restored, &before).await;
    stored_readings_match_the_ledger(&restored, &before).await;
    let after = restored
        .sql_rows("SELECT count(*) FROM readings WHERE lift_id LIKE 'PC-%'")
        .await;
    assert_eq!(
        after,
        vec![vec!["0".to_string()]],
        "nothing after the moment restored to"
    );
}

/// Every file under `dir`, at any depth.
fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}
