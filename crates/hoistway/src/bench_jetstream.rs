//! `hoistway bench --jetstream-only`: the same load against a server whose log is files in its
//! data dir and one whose log is a JetStream stream, in one run. The NATS server is the
//! benchmark's own on loopback: the pinned release, syncing every write before acknowledging,
//! one replica (a three-replica cluster adds a network round trip per message on top).

use std::path::Path;

use hoistway_jetstream::local::{LocalNats, NATS_SERVER_VERSION};

use crate::bench::{
    BenchArgs, Load, Proc, batch_phase, cpu_secs, load, register_lifts, serve_args, wait_processed,
};

pub(crate) async fn run(tmp: &Path, args: &BenchArgs) -> anyhow::Result<()> {
    let install = tmp.join("nats-install");
    let nats = tokio::task::spawn_blocking(move || LocalNats::start(&install, None)).await??;
    let (url, monitor) = (nats.url(), nats.monitor_url());
    println!(
        "## The log: files in the data dir vs a JetStream stream (NATS {NATS_SERVER_VERSION} on loopback, sync_interval always, 1 replica)"
    );
    println!(
        "| log | one reading per request, readings/s ({} connections) | p50 ms | p99 ms | batches of 1,000, readings/s end to end | hoistway CPU s | NATS CPU s |",
        args.connections
    );
    println!("|---|---|---|---|---|---|---|");
    let jetstream_env = [
        ("HOISTWAY_CLUSTER__NATS", url.as_str()),
        ("HOISTWAY_CLUSTER__NATS_REPLICAS", "1"),
        ("HOISTWAY_CLUSTER__NATS_MONITOR", monitor.as_str()),
    ];
    let mut rates = Vec::new();
    for (name, env) in [("files", &[][..]), ("JetStream", &jetstream_env[..])] {
        let dir = tmp.join(format!("log-{name}"));
        let a = serve_args(&dir);
        let (server, _) = Proc::start(&a.iter().map(String::as_str).collect::<Vec<_>>(), env)?;
        register_lifts(server.addr, args.lifts).await?;
        let (cpu0, nats0) = (server.cpu_secs(), cpu_secs(nats.pid()));
        let mut single = load(server.addr, Load::single(args)).await;
        wait_processed(server.addr).await?;
        let (_, batched) = batch_phase(server.addr, args).await?;
        let (cpu, nats_cpu) = (server.cpu_secs() - cpu0, cpu_secs(nats.pid()) - nats0);
        server.kill();
        let (p50, p99) = (single.percentile_ms(0.5), single.percentile_ms(0.99));
        println!(
            "| {name} | {:.0} (errors {}) | {p50:.2} | {p99:.2} | {batched:.0} | {cpu:.1} | {} |",
            single.per_sec(),
            single.errors,
            if env.is_empty() {
                "-".to_string()
            } else {
                format!("{nats_cpu:.1}")
            },
        );
        rates.push((single.per_sec(), batched));
    }
    let (files, jetstream) = (rates[0], rates[1]);
    println!(
        "\nratio JetStream / files: one reading per request {:.2}, batches {:.2}\n",
        jetstream.0 / files.0.max(1.0),
        jetstream.1 / files.1.max(1.0)
    );
    Ok(())
}

/// Records per message in the edge phase: an edge ingest node appends one message per group of
/// requests, tens of readings at fleet load.
const EDGE_RECORDS_PER_MESSAGE: usize = 64;
/// Bytes of each record (about a one-reading request's log record).
const EDGE_RECORD_BYTES: usize = 96;

/// `hoistway bench --edge-only`: an edge region cut off from the processing region takes
/// appends for `args.seconds` (its live rate), then the processing region's server comes back
/// and its stream takes the edge's backlog in (the catch-up rate), on NATS servers of the
/// benchmark's own (the pinned release, `sync_interval: always`, one replica each). NATS does
/// the catch-up; Hoistway's build only drives the appends.
pub(crate) async fn edge(tmp: &Path, args: &BenchArgs) -> anyhow::Result<()> {
    use hoistway_jetstream::JetStreamLog;
    use hoistway_log::Log;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let install = tmp.join("nats-install");
    let (mut hub, edge) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        let hub = LocalNats::start_hub(&install, "hub")?;
        let edge = LocalNats::start_leaf(&install, &hub, "edge")?;
        Ok((hub, edge))
    })
    .await??;
    let edge_log = Arc::new(JetStreamLog::open(edge.log_config(0).in_region("edge")).await?);
    let mut at_hub = hub.log_config(0);
    at_hub.sources = Some(vec!["edge".into()]);
    let hub_log = JetStreamLog::open(at_hub).await?;
    println!(
        "## An edge region catching up (NATS {NATS_SERVER_VERSION} on loopback, a leaf node with its own domain, sync_interval always, 1 replica each)"
    );
    // Cut off: the processing region's server is down while the edge takes appends.
    tokio::task::block_in_place(|| hub.kill());
    let record = bytes::Bytes::from(vec![7u8; EDGE_RECORD_BYTES]);
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.seconds);
    let appenders: Vec<_> = (0..16)
        .map(|_| {
            let (log, record) = (edge_log.clone(), record.clone());
            tokio::spawn(async move {
                let mut messages = 0u64;
                while Instant::now() < until {
                    log.append(vec![record.clone(); EDGE_RECORDS_PER_MESSAGE])
                        .await?;
                    messages += 1;
                }
                anyhow::Ok(messages)
            })
        })
        .collect();
    let mut messages = 0;
    for a in appenders {
        messages += a.await??;
    }
    let live_secs = started.elapsed().as_secs_f64();
    let records = messages * EDGE_RECORDS_PER_MESSAGE as u64;
    // Back: time until the processing region's stream holds every message of the edge's.
    tokio::task::block_in_place(|| hub.restart())?;
    let back = Instant::now();
    let deadline = back + Duration::from_secs(300);
    let mut first = None;
    loop {
        if hub_log.refresh().await.is_ok() && hub_log.durable_end() > 0 {
            first.get_or_insert_with(|| back.elapsed().as_secs_f64());
            let held = hub_log.sources().first().map(|s| s.backlog);
            let (last, _) = hoistway_jetstream::position_of(hub_log.durable_end() - 1);
            if last >= messages && held == Some(0) {
                break;
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the edge's backlog did not arrive in 300 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = back.elapsed().as_secs_f64();
    let first = first.unwrap_or(done);
    println!(
        "| records per message | record bytes | edge alone: messages/s | edge alone: records/s | backlog: messages | first message in after the restart, s | all in, s | catch-up records/s (first to last) | catch-up / edge alone | catch-up / {} readings/s |",
        args.rate
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let (live, catch_up) = (
        records as f64 / live_secs,
        records as f64 / (done - first).max(0.001),
    );
    println!(
        "| {EDGE_RECORDS_PER_MESSAGE} | {EDGE_RECORD_BYTES} | {:.0} | {live:.0} | {messages} | {first:.2} | {done:.2} | {catch_up:.0} | {:.1} | {:.1} |",
        messages as f64 / live_secs,
        catch_up / live.max(1.0),
        catch_up / (args.rate as f64).max(1.0)
    );
    Ok(())
}
