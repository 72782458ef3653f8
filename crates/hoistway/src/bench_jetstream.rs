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
