//! `hoistway simulate`: a simulated fleet against a running server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hoistway_sim::client::Connection;
use hoistway_sim::{SimConfig, Simulator, verify};
use hyper::{Method, StatusCode};
use tokio::sync::watch;

#[derive(clap::Args)]
pub struct SimulateArgs {
    /// Server to drive, e.g. http://127.0.0.1:8080
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// The server whose API registers and enrols the lifts and answers `--verify` (default: the
    /// target). Name a node that processes when the target is an ingest node (`--role ingest`).
    #[arg(long)]
    pub api: Option<String>,
    #[arg(long, default_value_t = 1000)]
    pub lifts: usize,
    /// Seconds of device time between two readings of a lift.
    #[arg(long, default_value_t = 10.0)]
    pub interval_secs: f64,
    /// Device time runs this many times faster than real time.
    #[arg(long, default_value_t = 1.0)]
    pub speedup: f64,
    /// Stop after this many seconds (real time); runs until Ctrl-C otherwise.
    #[arg(long)]
    pub duration_secs: Option<f64>,
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Chance per reading that a lift loses its link and starts buffering.
    #[arg(long, default_value_t = 1.0 / 3000.0)]
    pub outage_rate: f64,
    /// Chance per request of resending an already acknowledged reading.
    #[arg(long, default_value_t = 0.01)]
    pub duplicate_rate: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Lift id prefix.
    #[arg(long, default_value = "SIM-")]
    pub prefix: String,
    /// Do not register the simulated lifts first.
    #[arg(long)]
    pub no_register: bool,
    /// At the end, compare every lift's state on the server with the ledger.
    #[arg(long)]
    pub verify: bool,
    /// Write the ledger (expected per-lift totals) to this JSON file at the end.
    #[arg(long)]
    pub ledger: Option<PathBuf>,
    /// No progress bar (for logs and CI).
    #[arg(long)]
    pub quiet: bool,
    /// The operator token that approves the lifts (the demo's; otherwise `--token`).
    #[arg(skip)]
    pub operator_token: Option<String>,
}

impl SimulateArgs {
    pub fn for_demo(addr: SocketAddr, lifts: usize, speedup: f64) -> Self {
        Self {
            target: format!("http://{addr}"),
            api: None,
            lifts,
            interval_secs: 10.0,
            speedup,
            duration_secs: None,
            connections: 32,
            outage_rate: 1.0 / 3000.0,
            duplicate_rate: 0.01,
            seed: 1,
            prefix: "SIM-".into(),
            no_register: false,
            verify: false,
            ledger: None,
            quiet: true,
            operator_token: None,
        }
    }
}

pub fn parse_target(target: &str) -> anyhow::Result<SocketAddr> {
    let hostport = target.trim_start_matches("http://").trim_end_matches('/');
    anyhow::ensure!(
        !target.starts_with("https://"),
        "https targets are not supported by the simulator yet"
    );
    use std::net::ToSocketAddrs;
    hostport
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {target}"))?
        .next()
        .with_context(|| format!("{target} resolves to no address"))
}

pub async fn register(addr: SocketAddr, token: Option<&str>, csv: String) -> anyhow::Result<()> {
    let mut conn = Connection::new(addr).with_bearer(token.map(str::to_string));
    let reply = conn
        .send(
            Method::POST,
            "/v1/lifts/import",
            "text/csv",
            Bytes::from(csv),
            Duration::from_secs(120),
        )
        .await
        .context("registering simulated lifts")?;
    anyhow::ensure!(
        reply.status == StatusCode::OK,
        "registering simulated lifts failed: {} {}",
        reply.status,
        String::from_utf8_lossy(&reply.body)
    );
    Ok(())
}

pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let addr = parse_target(&args.target)?;
    let duration = args.duration_secs.map(Duration::from_secs_f64);
    let config = SimConfig {
        lifts: args.lifts,
        interval: Duration::from_secs_f64(args.interval_secs),
        speedup: args.speedup,
        connections: args.connections,
        outage_rate: args.outage_rate,
        duplicate_rate: args.duplicate_rate,
        seed: args.seed,
        prefix: args.prefix.clone(),
        planned_duration: duration,
        ..SimConfig::default()
    };
    let mut sim = Simulator::new(config, addr);
    let api_url = args.api.as_deref().unwrap_or(&args.target);
    let api = parse_target(api_url)?;
    let token = args
        .operator_token
        .clone()
        .or_else(|| crate::access::token_for(api_url));
    if !args.no_register {
        register(api, token.as_deref(), sim.registry_csv()).await?;
        match &token {
            // The operator token provisions the fleet as a factory does; each lift exchanges its
            // one-time registration code for its own tokens.
            Some(t) => sim
                .enrol(api, t)
                .await
                .map_err(|e| anyhow::anyhow!("device registration failed: {e}"))?,
            None => eprintln!(
                "no token (--token, HOISTWAY_TOKEN or `hoistway login`): lifts post without access tokens, which only a server with auth.devices = open or optional takes"
            ),
        }
    }
    let stats = sim.stats();
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        crate::serve::termination().await;
        let _ = stop_tx.send(true);
    });
    let progress = (!args.quiet).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(200));
        let stats = stats.clone();
        let started = Instant::now();
        let b = bar.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let acked = stats.acked.load(Ordering::Relaxed);
                let rate = acked as f64 / started.elapsed().as_secs_f64().max(0.001);
                b.set_message(format!(
                    "acked {acked} ({rate:.0}/s) · duplicates reported {} · buffered {} · failed requests {}",
                    stats.server_duplicates.load(Ordering::Relaxed),
                    stats.buffered.load(Ordering::Relaxed),
                    stats.failed_requests.load(Ordering::Relaxed),
                ));
            }
        });
        bar
    });
    sim.run(duration, stop).await;
    let drained = sim.drain(Duration::from_secs(60)).await;
    if let Some(bar) = progress {
        bar.finish();
    }
    let ledger = sim.ledger();
    println!(
        "simulated {} lifts: {} readings acknowledged, {} duplicates reported by the server, {} rejected{}",
        args.lifts,
        ledger.total_readings(),
        stats.server_duplicates.load(Ordering::Relaxed),
        stats.rejected.load(Ordering::Relaxed),
        if drained {
            ""
        } else {
            " (some buffered readings were never acknowledged)"
        }
    );
    if let Some(path) = &args.ledger {
        std::fs::write(path, serde_json::to_vec_pretty(ledger)?)
            .with_context(|| format!("writing ledger {}", path.display()))?;
    }
    if args.verify {
        anyhow::ensure!(
            ledger.total_readings() > 0,
            "no reading was acknowledged, so there is nothing to verify: is the server reachable?"
        );
        // The processor may still be applying the last readings (on another node, it reads
        // them from the stream): look again for a while before calling a difference one.
        let deadline = Instant::now() + Duration::from_secs(15);
        let problems = loop {
            let problems = verify(api, token.as_deref(), ledger).await;
            if problems.is_empty() || Instant::now() >= deadline {
                break problems;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        if problems.is_empty() {
            println!("verified: every lift's counters and accepted seqs match the ledger");
        } else {
            for p in problems.iter().take(20) {
                eprintln!("mismatch: {p}");
            }
            anyhow::bail!("{} lifts disagree with the ledger", problems.len());
        }
    }
    Ok(())
}
