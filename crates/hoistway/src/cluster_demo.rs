//! `hoistway cluster-demo`: the cluster mode on one machine. Private servers on free loopback
//! ports (NATS, the pinned release, as a processing region and an edge region joined to it as a
//! leaf node; PostgreSQL from the machine's packages), three processor nodes that spread the
//! partitions over themselves (and take a dead one's over), a query node with the API, the UI
//! and SQL, an ingest node in each region, and a simulated fleet through each ingest node. Each
//! node is this binary's `serve`, a process of its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use hoistway_jetstream::local::{LocalNats, NATS_SERVER_VERSION};

use crate::simulate::SimulateArgs;

#[derive(clap::Args)]
pub struct ClusterDemoArgs {
    /// Simulated lifts in each region.
    #[arg(long, default_value_t = 500)]
    pub lifts: usize,
    /// Device time runs this many times faster than real time.
    #[arg(long, default_value_t = 1.0)]
    pub speedup: f64,
    /// Where the nodes' data dirs and logs and PostgreSQL's files go (default: a new directory
    /// under the temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The first node's HTTP port; the others take the next four (0: any free ports).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// A PostgreSQL to use (its URL) instead of starting one.
    #[arg(long)]
    pub postgres: Option<String>,
    /// Stop after this many seconds and check every lift's counters against what the
    /// simulators had acknowledged (a check that the cluster works; exits non-zero otherwise).
    #[arg(long)]
    pub run_for: Option<u64>,
    /// Partitions readings are spread over (`cluster.partitions`), and the three processor
    /// nodes share.
    #[arg(long, default_value_t = 3)]
    pub partitions: u16,
}

/// A node's settings (`HOISTWAY_*` variables).
type Env<'a> = [(&'a str, String)];

/// One `hoistway serve` process.
pub(crate) struct Node {
    pub(crate) name: &'static str,
    what: &'static str,
    pub(crate) addr: SocketAddr,
    pub(crate) child: Child,
}

pub async fn run(args: ClusterDemoArgs) -> anyhow::Result<()> {
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("hoistway-cluster-demo-{}", std::process::id()))
    });
    // Not a private temp dir: PostgreSQL runs as its own user and must reach its directory.
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let install = install_dir(&dir);
    println!(
        "starting NATS {NATS_SERVER_VERSION} (installed once under {}) and PostgreSQL …",
        install.display()
    );
    let (hub, edge) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        let hub = LocalNats::start_hub(&install, "hub")?;
        let edge = LocalNats::start_leaf(&install, &hub, "edge")?;
        Ok((hub, edge))
    })
    .await?
    .context("cannot start the NATS servers")?;
    let (postgres, postgres_url) = match &args.postgres {
        Some(url) => (None, url.clone()),
        None => {
            let at = dir.join("postgres");
            let pg = tokio::task::spawn_blocking(move || {
                hoistway_postgres::local::LocalPostgres::start(&at)
            })
            .await?
            .context("cannot start a private PostgreSQL (or name one with --postgres)")?;
            let url = pg.url();
            (Some(pg), url)
        }
    };

    let common: Vec<(&str, String)> = vec![
        ("HOISTWAY_CLUSTER__PARTITIONS", args.partitions.to_string()),
        ("HOISTWAY_CLUSTER__NATS", hub.url()),
        ("HOISTWAY_CLUSTER__NATS_MONITOR", hub.monitor_url()),
        ("HOISTWAY_CLUSTER__NATS_REPLICAS", "1".into()),
        ("HOISTWAY_CLUSTER__POSTGRES", postgres_url.clone()),
        ("HOISTWAY_PROCESSOR__LEASE_SECS", "5".into()),
        // One machine: the SQL listeners would collide; SQL is on the HTTP API.
        ("HOISTWAY_QUERY__POSTGRES_LISTEN", String::new()),
        ("HOISTWAY_QUERY__FLIGHT_LISTEN", String::new()),
    ];
    let exe = std::env::current_exe().context("cannot find this program")?;
    let (password, token) = add_admin(&exe, &dir.join("p1"), &common)?;
    let ports: Vec<u16> = (0..6)
        .map(|i| match args.port {
            0 => free_port(),
            first => Ok(first + i),
        })
        .collect::<std::io::Result<_>>()?;
    let at = |i: usize| SocketAddr::from(([127, 0, 0, 1], ports[i]));
    // The storage tiers every processing node and the query node share: on one machine a
    // directory stands in for S3, and the catalog of its files is in PostgreSQL.
    let storage = [
        (
            "HOISTWAY_STORAGE__HOT_URL",
            path_text(&dir.join("store/hot"))?,
        ),
        (
            "HOISTWAY_STORAGE__ARCHIVE_URL",
            path_text(&dir.join("store/archive"))?,
        ),
    ];
    let processing: Vec<(&str, String)> = common
        .iter()
        .cloned()
        .chain(storage.clone())
        .chain([
            ("HOISTWAY_CLUSTER__EDGES", "edge".to_string()),
            ("HOISTWAY_ROLES", "processor".to_string()),
        ])
        .collect();
    let query: Vec<(&str, String)> = common
        .iter()
        .cloned()
        .chain(storage)
        .chain([("HOISTWAY_ROLES", "query".to_string())])
        .collect();
    let ingest: Vec<(&str, String)> = common
        .iter()
        .cloned()
        .chain([("HOISTWAY_ROLES", "ingest".to_string())])
        .collect();
    let at_edge: Vec<(&str, String)> = ingest
        .iter()
        .filter(|(k, _)| !k.starts_with("HOISTWAY_CLUSTER__NATS"))
        .cloned()
        .chain([
            ("HOISTWAY_CLUSTER__NATS", edge.url()),
            ("HOISTWAY_CLUSTER__NATS_MONITOR", edge.monitor_url()),
            ("HOISTWAY_CLUSTER__NATS_REPLICAS", "1".into()),
            ("HOISTWAY_CLUSTER__REGION", "edge".into()),
        ])
        .collect();

    let mut nodes = Vec::new();
    let result = async {
        // In this order: the edge's stream exists before the processing region's stream looks
        // for it (NATS waits longer between later looks).
        const PROCESSOR: &str = "processor: its share of the partitions";
        let plan: [(&'static str, &'static str, usize, &Env); 6] = [
            ("edge", "ingest, edge region", 4, &at_edge),
            ("ingest", "ingest, processing region", 3, &ingest),
            ("p1", PROCESSOR, 0, &processing),
            ("p2", PROCESSOR, 1, &processing),
            ("p3", PROCESSOR, 2, &processing),
            (
                "query",
                "query: the API, the UI and SQL, whichever processor holds what",
                5,
                &query,
            ),
        ];
        for (i, (name, what, port, env)) in plan.into_iter().enumerate() {
            nodes.push(spawn(&exe, &dir, name, what, at(port), env)?);
            ready(&nodes[i], Duration::from_secs(60)).await?;
        }
        // Listed with the processor nodes first, then the query node.
        nodes.rotate_left(2);
        for node in &nodes {
            crate::bench::remember_token(node.addr, &token);
        }
        let processors: Vec<_> = nodes[..3].iter().map(|n| (n.name, n.addr)).collect();
        let held = spread(&processors, args.partitions).await?;
        tell(&args, &dir, &nodes, &held, &postgres_url, &password, &token);
        // The ledgers of what each fleet had acknowledged, checked at the end on the query node
        // (whichever processors hold the partitions then).
        let ledger = |prefix: &str| dir.join(format!("ledger-{prefix}json"));
        let fleet = |target: SocketAddr, prefix: &str, seed: u64| SimulateArgs {
            api: Some(format!("http://{}", at(5))),
            prefix: prefix.into(),
            seed,
            duration_secs: args.run_for.map(|s| s as f64),
            ledger: args.run_for.map(|_| ledger(prefix)),
            operator_token: Some(token.clone()),
            ..SimulateArgs::for_demo(target, args.lifts, args.speedup)
        };
        let fleets = [
            tokio::spawn(crate::simulate::run(fleet(at(3), "HUB-", 1))),
            tokio::spawn(crate::simulate::run(fleet(at(4), "EDGE-", 2))),
        ];
        let status = tokio::spawn(report_status(
            nodes.iter().map(|n| (n.name, n.addr)).collect(),
            held,
        ));
        let mut outcome = Ok(());
        if args.run_for.is_some() {
            for fleet in fleets {
                if let Err(e) = fleet.await? {
                    outcome = Err(e);
                }
            }
            if outcome.is_ok() {
                outcome = verify_fleets(
                    (nodes[3].name, nodes[3].addr),
                    &token,
                    &[ledger("HUB-"), ledger("EDGE-")],
                )
                .await;
            }
        } else {
            // Until Ctrl-C: what the lifts still hold is not delivered (the nodes stop next).
            crate::serve::termination().await;
            for fleet in &fleets {
                fleet.abort();
            }
        }
        status.abort();
        outcome
    }
    .await;
    println!("stopping the nodes …");
    for node in nodes.iter_mut().rev() {
        stop(node);
    }
    drop((hub, edge, postgres));
    if args.dir.is_none() && result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

pub(crate) fn path_text(path: &Path) -> anyhow::Result<String> {
    path.to_str()
        .map(str::to_string)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

pub(crate) fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Where the pinned nats-server is installed, once: the user's cache, else `dir`.
pub(crate) fn install_dir(dir: &Path) -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .map_or_else(|| dir.join("nats"), |cache| cache.join("hoistway"))
}

/// An admin account with an API token, in the shared state (PostgreSQL).
pub(crate) fn add_admin(
    exe: &Path,
    data: &Path,
    env: &[(&str, String)],
) -> anyhow::Result<(String, String)> {
    let out = Command::new(exe)
        .args([
            "users",
            "add",
            "admin",
            "--role",
            "admin",
            "--api-token",
            "cluster-demo",
        ])
        .arg("--data-dir")
        .arg(data)
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .env("RUST_BACKTRACE", "0")
        .output()
        .context("cannot run hoistway users add")?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "hoistway users add failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::to_owned)
            .with_context(|| format!("hoistway users add printed no {prefix:?} line"))
    };
    Ok((line("password: ")?, line("api token: ")?))
}

pub(crate) fn spawn(
    exe: &Path,
    dir: &Path,
    name: &'static str,
    what: &'static str,
    addr: SocketAddr,
    env: &[(&str, String)],
) -> anyhow::Result<Node> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    use std::os::unix::process::CommandExt;
    // A group of its own: Ctrl-C reaches the demo, which stops the nodes before NATS.
    let child = Command::new(exe)
        .process_group(0)
        .arg("serve")
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .env("HOISTWAY_DATA_DIR", dir.join(name))
        .env("HOISTWAY_LISTEN", addr.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start node {name}"))?;
    Ok(Node {
        name,
        what,
        addr,
        child,
    })
}

/// Waits until `node` answers `/readyz` with 200.
pub(crate) async fn ready(node: &Node, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if readiness(node.addr).await.as_deref() == Some("ready") {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "node {} did not become ready at {} (see {}.log)",
            node.name,
            node.addr,
            node.name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a node's `/readyz` says: `ready`, the reason it is not, or `None` if it does not
/// answer.
pub(crate) async fn readiness(addr: SocketAddr) -> Option<String> {
    let mut conn = hoistway_sim::client::Connection::new(addr);
    let reply = conn
        .send(
            hyper::Method::GET,
            "/readyz",
            "application/json",
            bytes::Bytes::new(),
            Duration::from_secs(2),
        )
        .await
        .ok()?;
    let body: serde_json::Value = serde_json::from_slice(&reply.body).ok()?;
    Some(if reply.status == hyper::StatusCode::OK {
        "ready".into()
    } else {
        body["detail"].as_str().unwrap_or("not ready").to_owned()
    })
}

/// Checks each fleet's ledger on the query node (for a while: processors may still be taking
/// partitions over or applying the last readings, and it shows their checkpoints).
async fn verify_fleets(
    query: (&'static str, SocketAddr),
    token: &str,
    ledgers: &[PathBuf],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for path in ledgers {
        let ledger: hoistway_sim::Ledger = serde_json::from_slice(
            &std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        )?;
        anyhow::ensure!(ledger.total_readings() > 0, "no reading was acknowledged");
        verify_on(|| async { Some(query) }, token, &ledger, path, deadline).await?;
    }
    Ok(())
}

/// Checks `ledger` on the node `which` names (asked again at each try) until it agrees or the
/// deadline passes.
async fn verify_on<F, Fut>(
    which: F,
    token: &str,
    ledger: &hoistway_sim::Ledger,
    path: &Path,
    deadline: Instant,
) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<(&'static str, SocketAddr)>>,
{
    loop {
        let node = which().await;
        let problems = match node {
            Some((_, addr)) => hoistway_sim::verify(addr, Some(token), ledger).await,
            None => vec!["no node to verify on".to_string()],
        };
        if problems.is_empty() {
            println!(
                "verified on {}: {} readings of {} lifts, each counted exactly once",
                node.map_or("?", |h| h.0),
                ledger.total_readings(),
                ledger.lifts.len()
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            for p in problems.iter().take(20) {
                eprintln!("mismatch: {p}");
            }
            anyhow::bail!("{} differences from {}", problems.len(), path.display());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How many partitions each processor node holds (`None`: it does not answer).
type Held = Vec<(&'static str, Option<u32>)>;

async fn held_by(processors: &[(&'static str, SocketAddr)]) -> Held {
    let mut held = Vec::new();
    for (name, addr) in processors {
        let n = crate::bench::metric(*addr, "hoistway_partitions_held")
            .await
            .ok()
            .map(|n| n as u32);
        held.push((*name, n));
    }
    held
}

fn held_text(held: &Held) -> String {
    held.iter()
        .map(|(name, n)| match n {
            Some(n) => format!("{name} {n}"),
            None => format!("{name} gone"),
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

/// Waits (up to a minute) until the processors hold every partition between them, spread as
/// evenly as they go.
async fn spread(
    processors: &[(&'static str, SocketAddr)],
    partitions: u16,
) -> anyhow::Result<Held> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held = held_by(processors).await;
        let counts: Vec<u32> = held.iter().map(|(_, n)| n.unwrap_or(0)).collect();
        let (min, max) = (
            counts.iter().min().copied().unwrap_or(0),
            counts.iter().max().copied().unwrap_or(0),
        );
        if counts.iter().sum::<u32>() == u32::from(partitions) && max - min <= 1 {
            return Ok(held);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the processors hold {} of {partitions} partitions",
            held_text(&held)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A line whenever the partitions move between processors (once every one is held again, with
/// how long that took), and every 15 s one with what each node's `/readyz` says.
async fn report_status(nodes: Vec<(&'static str, SocketAddr)>, mut held: Held) {
    let processors: Vec<_> = nodes
        .iter()
        .filter(|(n, _)| n.starts_with('p'))
        .copied()
        .collect();
    let total: u32 = held.iter().filter_map(|(_, n)| *n).sum();
    let mut moving_since: Option<Instant> = None;
    let mut next_line = Instant::now() + Duration::from_secs(15);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = held_by(&processors).await;
        if now != held {
            let sum: u32 = now.iter().filter_map(|(_, n)| *n).sum();
            if sum == total {
                println!(
                    "[cluster] partitions held: {}{}",
                    held_text(&now),
                    moving_since.take().map_or(String::new(), |t| format!(
                        " (every one held again after {:.1} s)",
                        t.elapsed().as_secs_f64()
                    ))
                );
            } else if moving_since.is_none() {
                moving_since = Some(Instant::now());
                println!(
                    "[cluster] partitions held: {} — the others take the rest over once its leases lapse",
                    held_text(&now)
                );
            }
            held = now;
        }
        if Instant::now() >= next_line {
            next_line += Duration::from_secs(15);
            let mut parts = Vec::new();
            for (name, addr) in &nodes {
                let state = readiness(*addr)
                    .await
                    .unwrap_or_else(|| "not listening".into());
                parts.push(format!("{name}: {state}"));
            }
            println!("[cluster] {}", parts.join(" · "));
        }
    }
}

fn tell(
    args: &ClusterDemoArgs,
    dir: &Path,
    nodes: &[Node],
    held: &Held,
    postgres: &str,
    password: &str,
    token: &str,
) {
    println!();
    println!("the cluster (logs in {}):", dir.display());
    for node in nodes {
        println!(
            "  {:<7} http://{:<16} pid {:<7} {}",
            node.name,
            node.addr,
            node.child.id(),
            node.what
        );
    }
    println!("  PostgreSQL: {postgres}");
    println!();
    let query = nodes
        .iter()
        .find(|n| n.name == "query")
        .unwrap_or(&nodes[0]);
    println!(
        "web UI: http://{}/ on the query node, up whichever processors hold the partitions (log in as admin, password \
         {password}; the first login enrols a TOTP second factor)",
        query.addr
    );
    println!("API token: export HOISTWAY_TOKEN={token}");
    println!(
        "  curl -s -H \"authorization: Bearer $HOISTWAY_TOKEN\" http://{}/v1/fleet/summary",
        query.addr
    );
    println!(
        "  curl -s -H \"authorization: Bearer $HOISTWAY_TOKEN\" http://{}/metrics | grep -E 'edge|absence'",
        nodes[0].addr
    );
    println!();
    println!(
        "{} lifts report through the processing region's ingest node, {} through the edge region's.",
        args.lifts, args.lifts
    );
    println!("partitions held: {}", held_text(held));
    // A processor that holds something: killing it moves partitions.
    let victim = held
        .iter()
        .position(|(_, n)| n.is_some_and(|n| n > 0))
        .unwrap_or(0);
    println!(
        "Try a failover: kill -9 {} ({}); within seconds the other processors take its partitions over.",
        nodes[victim].child.id(),
        nodes[victim].name
    );
    println!(
        "(The processor nodes and the query node share the storage tiers in {}: here a directory stands in for S3.)",
        dir.join("store").display()
    );
    match args.run_for {
        Some(s) => println!("running for {s} s, then checking every lift's counters"),
        None => println!("Ctrl-C stops the demo"),
    }
    println!();
}

/// SIGTERM, then (after 20 s) SIGKILL.
pub(crate) fn stop(node: &mut Node) {
    if let Ok(Some(_)) = node.child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(node.child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = node.child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = node.child.kill();
    let _ = node.child.wait();
}
