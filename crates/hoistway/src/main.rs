//! The `hoistway` command: server, simulator, demo, admin client.

mod access;
mod admin;
mod alerts;
mod backup;
mod bench;
mod bench_alerts;
mod bench_cluster;
mod bench_jetstream;
mod bench_pg;
mod bench_sql;
mod bench_storage;
mod bench_ui;
mod cluster_demo;
mod config;
mod ingest_node;
mod offline;
mod processor_node;
mod query_node;
mod serve;
mod simulate;
mod sql;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::LazyLock;

use clap::{Parser, Subcommand};

// The request path allocates many small short-lived objects across threads; mimalloc handles
// that markedly better than glibc malloc (see docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

static LONG_VERSION: LazyLock<String> = LazyLock::new(offline::long_version);

#[derive(Parser)]
#[command(
    name = "hoistway",
    version,
    long_version = LONG_VERSION.as_str(),
    about = "Telemetry, state and alerts for a fleet of lifts"
)]
struct Cli {
    /// Bearer token for client commands (else the one `hoistway login` stored for the server).
    #[arg(long, env = "HOISTWAY_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform (ingest, log, processor, API) with embedded defaults.
    Serve(ServeArgs),
    /// Drive a running server with a simulated fleet.
    Simulate(simulate::SimulateArgs),
    /// Serve on a fresh data dir and drive it with a simulated fleet: the quickest look.
    Demo(DemoArgs),
    /// The cluster mode on this machine: private NATS (a processing and an edge region) and
    /// PostgreSQL, three processing nodes, an ingest node per region, a simulated fleet each.
    ClusterDemo(cluster_demo::ClusterDemoArgs),
    /// Log in to a running server (password, then TOTP) and keep the session token.
    Login(access::LoginArgs),
    /// End the stored session.
    Logout(access::LogoutArgs),
    /// Staff accounts: add the first admin to a data dir, list accounts.
    Users(access::UsersArgs),
    /// Lift credentials: approve or deny device-flow codes, revoke lifts.
    Devices(access::DevicesArgs),
    /// Every API route and the access it needs, as JSON (docs/security.md explains them).
    Routes,
    /// Manage the lift registry of a running server.
    Lifts(admin::LiftsArgs),
    /// Inspect and replay the dead-letter queue of a running server.
    Dlq(admin::DlqArgs),
    /// Alerts, alert rules and notifications of a running server.
    Alerts(alerts::AlertsArgs),
    /// Run a read-only SQL query on a running server (tables: readings, rollups_hourly,
    /// rollups_daily, lifts, lift_state).
    Sql(sql::SqlArgs),
    /// Storage tiers of a running server: status, or run upkeep now.
    Storage(sql::StorageArgs),
    /// The log of a stopped server: repair damaged entries.
    Log(offline::LogArgs),
    /// Take an online backup (the running server writes it), or verify or list backups.
    Backup(backup::BackupArgs),
    /// Build a new data dir from a backup.
    Restore(backup::RestoreArgs),
    /// Benchmark ingest against a bare axum handler (see docs/BENCHMARKS.md).
    Bench(bench::BenchArgs),
    /// Benchmark storage and SQL on simulator data against default Parquet and DuckDB.
    BenchStorage(bench_storage::BenchStorageArgs),
    /// The benchmark's peer: a bare axum handler.
    #[command(hide = true)]
    BenchPeer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file (see config/hoistway.example.toml).
    #[arg(long, env = "HOISTWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Where the log, state, registry and dead letters live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free one).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// What this node runs: `all` (the default); with cluster.nats and cluster.postgres, `ingest`
    /// (takes readings and appends them for the node that processes), `query` (the API, the UI
    /// and SQL from the shared state), `ingest,query`, `processor` (one of several nodes that
    /// spread the partitions) or `ingest,processor`.
    #[arg(long)]
    role: Option<String>,
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<config::Config> {
        let mut c = config::Config::load(self.config.as_deref())?;
        if let Some(d) = &self.data_dir {
            c.data_dir = d.clone();
        }
        if let Some(l) = self.listen {
            c.listen = l;
        }
        if let Some(r) = &self.role {
            c.roles = r.clone();
        }
        Ok(c)
    }
}

#[derive(clap::Args)]
struct DemoArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// Simulated lifts.
    #[arg(long, default_value_t = 2000)]
    lifts: usize,
    /// Device time runs this many times faster than real time.
    #[arg(long, default_value_t = 1.0)]
    speedup: f64,
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("HOISTWAY_LOG_LEVEL").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("HOISTWAY_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    let _ = access::TOKEN.set(cli.token.clone());
    if let Command::Log(args) = cli.command {
        return offline::log(args);
    }
    if let Command::Routes = cli.command {
        let rules: Vec<_> = hoistway_server::route_rules()
            .into_iter()
            .map(|(method, path, access)| {
                let access = match access {
                    hoistway_auth::Access::Public => "public".to_string(),
                    hoistway_auth::Access::Device => "device".to_string(),
                    hoistway_auth::Access::Staff => "staff".to_string(),
                    hoistway_auth::Access::Role(r) => r.to_string(),
                    hoistway_auth::Access::Fleet(r) => format!("fleet {r}"),
                };
                serde_json::json!({ "method": method, "path": path, "access": access })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rules)?);
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => {
                let running = serve::start(args.config()?).await?;
                let stop = running.shutdown_handle();
                tokio::spawn(async move {
                    serve::termination().await;
                    tracing::info!(
                        "shutting down: finishing in-flight requests, then checkpointing"
                    );
                    let _ = stop.send(true);
                });
                running.wait().await
            }
            Command::Simulate(args) => simulate::run(args).await,
            Command::Demo(args) => demo(args).await,
            Command::ClusterDemo(args) => cluster_demo::run(args).await,
            Command::Login(args) => access::login(args).await,
            Command::Logout(args) => access::logout(args).await,
            Command::Users(args) => access::users(args).await,
            Command::Devices(args) => access::devices(args).await,
            Command::Lifts(args) => admin::lifts(args).await,
            Command::Dlq(args) => admin::dlq(args).await,
            Command::Alerts(args) => alerts::alerts(args).await,
            Command::Sql(args) => sql::sql(args).await,
            Command::BenchStorage(args) => bench_storage::run(args).await,
            Command::Storage(args) => sql::storage(args).await,
            Command::Backup(args) => backup::backup(args).await,
            Command::Restore(args) => backup::restore(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Log(_) | Command::Routes => unreachable!("runs without a runtime"),
            Command::BenchPeer { listen } => bench::peer(listen).await,
        }
    })
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let mut config = args.serve.config()?;
    if args.serve.data_dir.is_none() {
        config.data_dir =
            std::env::temp_dir().join(format!("hoistway-demo-{}", std::process::id()));
    }
    let data_dir = config.data_dir.clone();
    let postgres = config.query.postgres_listen.trim().to_string();
    let flight = config.query.flight_listen.trim().to_string();
    // A fresh data dir gets an admin (who enrols TOTP at the first login) and an API token
    // that provisions the simulated lifts (factory registration codes).
    let fresh = !data_dir.join("auth/auth.sqlite3").exists();
    let admin = if fresh {
        Some(access::add_user_offline(
            &data_dir,
            "admin",
            hoistway_auth::Role::Admin,
            None,
            None,
            Some("demo"),
        )?)
    } else {
        None
    };
    let running = serve::start(config).await?;
    let addr = running.addr;
    let stop = running.shutdown_handle();
    println!("data dir: {}", data_dir.display());
    println!("simulating {} lifts; Ctrl-C stops the demo", args.lifts);
    println!();
    println!("  web UI:   http://{addr}/");
    let token = match &admin {
        Some((password, token)) => {
            println!("  log in as admin, password {password}");
            println!(
                "  (the first login enrols a TOTP second factor: have an authenticator app at hand)"
            );
            println!("  CLI:      hoistway login --server http://{addr} --username admin");
            println!();
            token.clone()
        }
        None => {
            println!("existing data dir: log in with an account of it (hoistway login)");
            None
        }
    };
    if let Some(t) = &token {
        println!("API token for scripts: export HOISTWAY_TOKEN={t}");
    }
    let auth = "-H \"authorization: Bearer $HOISTWAY_TOKEN\"";
    println!("  fleet:    curl -s {auth} http://{addr}/v1/fleet/summary");
    println!("  lifts:    curl -s {auth} 'http://{addr}/v1/lifts?limit=5'");
    println!("  one lift: curl -s {auth} http://{addr}/v1/lifts/SIM-000001/state");
    println!("  building: curl -s {auth} http://{addr}/v1/buildings/B00000");
    println!("  metrics:  curl -s {auth} http://{addr}/metrics");
    println!(
        "  sql:      hoistway sql --server http://{addr} 'SELECT lift_id, sum(trips) AS trips FROM rollups_hourly GROUP BY 1 ORDER BY 2 DESC LIMIT 5'"
    );
    if let Some((host, port)) = postgres.rsplit_once(':') {
        println!(
            "  psql:     PGPASSWORD=$HOISTWAY_TOKEN psql -h {host} -p {port} -U admin -d hoistway -c 'SELECT * FROM lift_state LIMIT 5'"
        );
    }
    if !flight.is_empty() {
        println!(
            "  ADBC:     grpc://{flight} (Arrow Flight SQL; username admin, password $HOISTWAY_TOKEN)"
        );
    }
    let mut sim_args = simulate::SimulateArgs::for_demo(addr, args.lifts, args.speedup);
    sim_args.operator_token = token;
    let sim = tokio::spawn(simulate::run(sim_args));
    serve::termination().await;
    sim.abort();
    let _ = stop.send(true);
    running.wait().await
}
