//! `hoistway serve --role query`: a node that answers the API, the UI and SQL (HTTP, PostgreSQL
//! wire, Flight SQL) from the shared state, without holding the partition. It reads lift state
//! from the holder's last checkpoint and stored readings through the storage catalog, both in
//! PostgreSQL, and the Parquet files from S3; accounts, the registry and alerts are the shared
//! tables every node uses. So support staff keep their UI while the holder changes, and queries
//! run on machines of their own. With `roles = "ingest,query"` it also takes readings.
//!
//! What it shows lags the holder by up to one checkpoint interval plus one reread: lift state
//! and counters as of the last checkpoint, stored readings as of the last flush (the holder's
//! buffer is not visible here). Flushes, upkeep and backups run on the holder only.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Context;
use hoistway_log::Offset;
use hoistway_model::{Clock, SystemClock};
use hoistway_processor::{CheckpointStore, Fleet, FleetState, Progress};
use hoistway_server::{AppParts, AppState, Processing};
use hoistway_store::Store;
use parking_lot::RwLock;
use tokio::sync::watch;

use crate::config::Config;
use crate::serve::{self, Running};

/// How often a query node reads the holder's checkpoint and the storage catalog again.
const REREAD: Duration = Duration::from_secs(1);

/// Starts a query node (`ingest`: it takes readings too).
pub async fn start(config: Config, ingest: bool) -> anyhow::Result<Running> {
    let started = Instant::now();
    anyhow::ensure!(
        !config.cluster.nats_servers().is_empty() && !config.cluster.postgres.trim().is_empty(),
        "a query node (roles = \"query\") needs cluster.nats and cluster.postgres: it reads the state and the storage catalog \
         the node holding the partition keeps in PostgreSQL"
    );
    anyhow::ensure!(
        config.cluster.region.trim().is_empty(),
        "a query node runs in the processing region (cluster.region is for ingest nodes in an edge region)"
    );
    let partitions = serve::partitions(&config)?;
    let data = config.data_dir.clone();
    let lock = crate::offline::lock_data_dir(&data)?;
    let metrics = hoistway_server::install_metrics();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let analytics = serve::analytics_runtime(&config)?;
    let mut storage = serve::store_config(&config)?;
    anyhow::ensure!(
        serve::shared_tiers(&config),
        "a query node reads the Parquet files the holder writes: name both storage tiers, storage.hot_url and \
         storage.archive_url, the same on every node (S3, or a directory they all share)"
    );
    storage.work = Some(analytics.handle().clone());
    let shared = {
        let (config, clock) = (config.clone(), clock.clone());
        tokio::task::spawn_blocking(move || Shared::open(&config, clock)).await??
    };
    // Readings taken here (with the ingest role, and dead letters replayed) go to the shared
    // streams; the holders' dedup decides what counts, as on an ingest node.
    let (logs, ingest_handle, sequencers) =
        crate::ingest_node::partitioned_ingest(&config, partitions).await?;
    // Each partition's holder's state and catalog, followed.
    let (mut follows, mut stores, mut states, mut progress) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (partition, log) in (0..partitions).zip(&logs) {
        let mut storage = storage.of_partition(partition, partitions)?;
        storage.manifests = Arc::new(shared.manifests.of_partition(partition));
        let store = Arc::new(
            Store::open_reader(storage, clock.clone())
                .await
                .with_context(|| format!("cannot read partition {partition}'s storage catalog"))?,
        );
        let state = Arc::new(RwLock::new(FleetState::default()));
        let (progress_tx, progress_rx) = watch::channel(Progress::default());
        let mut follow = Follow {
            partition,
            checkpoints: shared.checkpoints.clone(),
            store: store.clone(),
            log: log.clone(),
            state: state.clone(),
            progress: progress_tx,
            known: None,
            failing: false,
        };
        follow.once().await?;
        follows.push(follow);
        stores.push(store);
        states.push(state);
        progress.push(progress_rx);
    }
    let stores = hoistway_store::Stores::partitioned(&storage, stores);
    let fleet = Fleet::partitioned(
        states,
        shared.registry.clone(),
        clock.clone(),
        Duration::from_secs(config.processor.silent_after_secs),
    );
    let query = serve::query_engine(
        &config,
        stores.clone(),
        fleet.clone(),
        shared.auth.clone(),
        &analytics,
        shared.alerts.as_ref().map(|a| a.store().clone()),
    )?;
    let (tls, acceptors) = serve::tls_of(&config)?;
    let sql_endpoints = serve::SqlEndpoints::bind(&config, &query, &shared.auth).await?;
    let accepting = Arc::new(AtomicBool::new(true));
    let app = AppState::new(AppParts {
        ingest: ingest_handle,
        auth: shared.auth.clone(),
        rate: hoistway_server::rate::RateLimits::new(serve::ingest_rate(&config)),
        trusted_proxies: config.auth.trusted_proxies.clone(),
        tls: tls.is_some() || !config.auth.trusted_proxies.is_empty(),
        registry: shared.registry.clone(),
        dlq: shared.checkpoints.clone(),
        logs,
        processing: Some(Processing {
            fleet,
            stores,
            query,
            progress,
            // The holder checkpoints this often; state read here is older than that only when
            // its checkpoints (or this node's reads of them) fail.
            checkpoint_interval: Duration::from_secs(
                config.processor.checkpoint_interval_secs.max(1),
            ) + REREAD,
        }),
        alerts: shared.alerts.clone(),
        backups: None,
        clock,
        limits: serve::api_limits(&config),
        metrics,
        accepting: accepting.clone(),
        takes_readings: ingest,
        started,
    });

    let serve::Listening {
        listener,
        addr,
        shutdown,
        shutdown_rx,
        sequencer_task,
    } = serve::listen(
        &config,
        sequencers,
        shared.auth.clone(),
        shared.registry.clone(),
    )
    .await?;
    let follow_tasks: Vec<_> = follows
        .into_iter()
        .map(|follow| tokio::spawn(follow.run(shutdown_rx.clone())))
        .collect();
    // The change stream of alerts (the UI's live list) carries what the holder records.
    let alerts_task = shared
        .alerts
        .clone()
        .map(|a| tokio::spawn(a.follow(REREAD, shutdown_rx.clone())));
    let sql_tasks = sql_endpoints.serve(&acceptors, &shutdown_rx)?;
    let router = if ingest {
        hoistway_server::router(app)
    } else {
        hoistway_server::query_router(app)
    };
    let roles = if ingest { "ingest,query" } else { "query" };
    tracing::info!(%addr, startup_ms = started.elapsed().as_millis() as u64, "hoistway is serving (roles: {roles})");
    let tls_task = serve::watch_tls(tls, &config, addr, shutdown_rx.clone());

    let limits = serve::conn_limits(&config);
    let graceful = serve::draining(shutdown_rx, accepting);
    let task = tokio::spawn(async move {
        let served =
            hoistway_server::listen::serve(listener, router, limits, acceptors, graceful).await;
        sequencer_task.await?;
        for task in follow_tasks {
            task.await?;
        }
        if let Some(task) = alerts_task {
            task.await?;
        }
        sql_tasks.finish().await?;
        if let Some(task) = tls_task {
            task.await?;
        }
        served?;
        drop(analytics);
        tracing::info!("hoistway stopped cleanly");
        drop(lock);
        Ok(())
    });
    Ok(Running {
        addr,
        shutdown,
        task,
    })
}

/// The state every node shares, in PostgreSQL.
struct Shared {
    registry: Arc<hoistway_registry::Registry>,
    auth: Arc<hoistway_auth::Authority>,
    checkpoints: Arc<hoistway_postgres::PgCheckpointStore>,
    manifests: hoistway_postgres::PgManifestStore,
    alerts: Option<Arc<hoistway_alerts::Alerts>>,
}

impl Shared {
    /// Blocks (connects, migrates).
    fn open(config: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let pg = serve::shared_postgres(config)?.context("cluster.postgres is set")?;
        serve::settle_partitions(config, Some(&pg))?;
        let registry = Arc::new(serve::open_registry(config, Some(&pg))?);
        let auth = Arc::new(serve::open_authority_on(config, clock.clone(), Some(&pg))?);
        let checkpoints = Arc::new(
            hoistway_postgres::PgCheckpointStore::open(pg.clone())
                .context("cannot open the processor tables in PostgreSQL")?,
        );
        let manifests = hoistway_postgres::PgManifestStore::open(pg.clone())
            .context("cannot open the storage tables in PostgreSQL")?;
        // Alerts as the holder records them: lists, acknowledgements, rules and silences
        // (the holder's engine rereads those); rules are evaluated and notifications sent
        // only there.
        let alerts = if config.alerts.enabled {
            let store: Arc<dyn hoistway_alerts::AlertStore> = Arc::new(
                hoistway_postgres::PgAlertStore::open(pg)
                    .context("cannot open the alert tables in PostgreSQL")?,
            );
            Some(Arc::new(
                hoistway_alerts::Alerts::open(store, serve::alerts_config(config), vec![], clock)
                    .context("cannot open alerting")?,
            ))
        } else {
            None
        };
        Ok(Self {
            registry,
            auth,
            checkpoints,
            manifests,
            alerts,
        })
    }
}

/// Keeps a query node's view of one partition up to date: its holder's last checkpoint (lift
/// state and counters), its storage catalog, and its stream's bounds.
struct Follow {
    partition: u16,
    checkpoints: Arc<hoistway_postgres::PgCheckpointStore>,
    store: Arc<Store>,
    log: Arc<dyn hoistway_log::Log>,
    state: Arc<RwLock<FleetState>>,
    progress: watch::Sender<Progress>,
    /// The offset of the checkpoint read last.
    known: Option<Offset>,
    failing: bool,
}

impl Follow {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(REREAD) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            match self.once().await {
                Ok(()) if self.failing => {
                    self.failing = false;
                    tracing::info!(
                        partition = self.partition,
                        "reading the holder's state and the storage catalog works again"
                    );
                }
                Ok(()) => {}
                Err(e) if !self.failing => {
                    self.failing = true;
                    tracing::warn!(
                        partition = self.partition,
                        error = format!("{e:#}"),
                        "cannot read the holder's state or the storage catalog; showing what was read last"
                    );
                }
                Err(_) => {}
            }
        }
    }

    /// One reread. The state moves only when the holder committed a newer checkpoint.
    async fn once(&mut self) -> anyhow::Result<()> {
        let (checkpoints, known, partition) =
            (self.checkpoints.clone(), self.known, self.partition);
        let latest = tokio::task::spawn_blocking(move || checkpoints.latest(partition, known))
            .await?
            .context("cannot read the holder's checkpoint")?;
        let now = Instant::now();
        if let Some(state) = latest {
            let offset = state.offset;
            *self.state.write() = state;
            self.known = Some(offset);
        }
        let offset = self.known.unwrap_or(0);
        self.progress.send_modify(|p| {
            p.offset = offset;
            p.last_checkpoint_offset = offset;
            // As fresh as the holder's last commit, once it is read here.
            p.last_checkpoint_at = now;
        });
        self.store
            .reload()
            .await
            .context("cannot read the storage catalog")?;
        self.log
            .refresh()
            .await
            .context("cannot read the stream's bounds")?;
        Ok(())
    }
}
