//! `hoistway serve`: the one place that names concrete backends and wires the pipeline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hoistway_dlq::{DeadLetterQueue, DeadLetters};
use hoistway_ingest::{DecodeLimits, Sequencer, SequencerConfig};
use hoistway_log::{FileLog, FileLogConfig, Log};
use hoistway_model::{Clock, SystemClock};
use hoistway_processor::{CheckpointStore, FileCheckpointStore, Processor, ProcessorConfig, Sink};
use hoistway_query::{QueryEngine, QueryLimits};
use hoistway_registry::Registry;
use hoistway_server::{ApiLimits, AppParts, AppState, Processing};
use hoistway_store::{HOUR_US, Store, StoreConfig, TierStore};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::ingest_node::NodeKind;

/// A started server: its address and the means to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits until the server stops by itself (on its own error).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await?
    }

    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

pub async fn start(config: Config) -> anyhow::Result<Running> {
    match crate::ingest_node::node_kind(&config)? {
        NodeKind::Processing => {}
        NodeKind::Processor { ingest } => {
            return crate::processor_node::start(config, ingest).await;
        }
        NodeKind::Ingest => return crate::ingest_node::start(config).await,
        NodeKind::Query { ingest } => return crate::query_node::start(config, ingest).await,
    }
    anyhow::ensure!(
        config.cluster.region.trim().is_empty(),
        "only ingest nodes run in an edge region (cluster.region = {:?}): set roles = \"ingest\" here, and run processing in the processing region",
        config.cluster.region.trim()
    );
    let partitions = partitions(&config)?;
    let started = Instant::now();
    let data = config.data_dir.clone();
    // One server per data dir: a second one would interleave writes to the same log.
    let lock = crate::offline::lock_data_dir(&data)?;
    // Installed first, so that what recovery counts (replayed readings, skipped records) shows.
    let metrics = hoistway_server::install_metrics();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);

    let mut logs = Vec::with_capacity(usize::from(partitions));
    let mut file_log = None;
    for partition in 0..partitions {
        let (log, file) = open_log(&config, &data, partition).await?;
        logs.push(log);
        file_log = file_log.or(file);
    }
    // Pins the log before anything can truncate it: no segment goes before it is archived.
    let archiver = if config.backup.log_archive {
        let file_log = file_log.clone().context(
            "backup.log_archive archives the log's files, and with cluster.nats the log is a JetStream stream (back it up with NATS's stream backups)",
        )?;
        let to = config.backup.target.trim();
        anyhow::ensure!(
            !to.is_empty(),
            "backup.log_archive needs backup.target (where the log is archived)"
        );
        let target = backup_target(to, &config.storage.s3)
            .with_context(|| format!("cannot open the log archive at {to}"))?;
        Some(Arc::new(hoistway_backup::LogArchiver::new(
            file_log,
            target,
            Duration::from_secs(config.backup.log_archive_retention_days * 24 * 3600),
        )))
    } else {
        None
    };

    let (registry, (checkpoints, dlq), auth, pg) = {
        let (config, clock) = (config.clone(), clock.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            // One pool for all the shared state.
            let pg = shared_postgres(&config)?;
            settle_partitions(&config, pg.as_ref())?;
            if let Some(pg) = pg.as_ref().filter(|_| checkpoints_in_postgres(&config)) {
                refuse_beside_processor_nodes(pg)?;
            }
            let registry = open_registry(&config, pg.as_ref())?;
            Ok((
                registry,
                open_checkpoints(&config, pg.as_ref())?,
                open_authority_on(&config, clock, pg.as_ref())?,
                pg,
            ))
        })
        .await??
    };
    let (registry, auth) = (Arc::new(registry), Arc::new(auth));
    let lease = hoistway_processor::Lease {
        holder: holder_name(),
        ttl: Duration::from_secs(config.processor.lease_secs.max(1)),
    };
    // A partition is this server's once claimed, and it holds every one: with checkpoints in
    // PostgreSQL, a standby waits at the first until the holder's leases end or lapse. (One
    // claimed early is not renewed until all are; if it lapsed meanwhile and another node took
    // it, this one is fenced at its first checkpoint and stops.)
    let mut claims = Vec::with_capacity(usize::from(partitions));
    for partition in 0..partitions {
        let claim =
            hoistway_processor::claim_partition(checkpoints.clone(), partition, lease.clone())
                .await
                .with_context(|| format!("cannot claim partition {partition}"))?;
        claims.push(claim);
    }
    if !config.cluster.postgres.trim().is_empty() {
        tracing::info!(
            schema = %config.cluster.postgres_schema,
            checkpoints = checkpoints_in_postgres(&config),
            "accounts, credentials, signing keys and the lift registry are in PostgreSQL (with checkpoints = true, the processor's checkpoints, the dead letters and alerting too)"
        );
    }
    // TLS before anything listens: a server told to use it does not start without it.
    let (tls, acceptors) = tls_of(&config)?;
    if config.auth.devices == hoistway_auth::DeviceMode::Open {
        tracing::warn!(
            "auth.devices = \"open\": any client can post readings for any lift; use it only on a closed network"
        );
    }

    let analytics = analytics_runtime(&config)?;
    let mut storage = store_config(&config)?;
    storage.work = Some(analytics.handle().clone());
    let mut catalog = None;
    if let Some(pg) = pg.as_ref().filter(|_| checkpoints_in_postgres(&config)) {
        if shared_tiers(&config) {
            // The catalogs beside the checkpoints, each written only while this server holds
            // its partition.
            let pg = pg.clone();
            let manifests =
                tokio::task::spawn_blocking(move || hoistway_postgres::PgManifestStore::open(pg))
                    .await?
                    .context("cannot open the storage tables in PostgreSQL")?;
            if partitions == 1 {
                adopt_tier_manifests(&manifests, &storage).await?;
            }
            catalog = Some(manifests);
        } else {
            tracing::warn!(
                "a storage tier is in this node's data dir: a standby that takes the partition over will not have its Parquet files, \
                 and no query node can read them (name both tiers, storage.hot_url and storage.archive_url: S3, or a directory all of them share)"
            );
        }
    }
    let alerts = if config.alerts.enabled {
        // This node holds every partition or none: the first one's epoch fences alerting's
        // writes (a standby claims it first).
        let epoch = claims[0].epoch;
        let (data, config, clock, pg) = (data.clone(), config.clone(), clock.clone(), pg.clone());
        let alerts = tokio::task::spawn_blocking(move || {
            open_alerts(
                &data,
                &config,
                clock,
                pg.as_ref().map(|pg| (pg, AlertFence::Holder(epoch))),
            )
        })
        .await??;
        Some(alerts)
    } else {
        None
    };

    let checkpoint_interval = Duration::from_secs(config.processor.checkpoint_interval_secs.max(1));
    let pconfig = ProcessorConfig {
        window: config.window(),
        checkpoint_interval,
        auto_register: config.ingest.auto_register,
        checkpoint_format: config.processor.checkpoint_format,
        // Other nodes append to a stream too (ingest nodes, edge regions): look for their
        // records sooner than for a group the feed dropped.
        idle_read_after: Duration::from_millis(if config.cluster.nats_servers().is_empty() {
            500
        } else {
            100
        }),
        ..Default::default()
    };
    // Each partition: its storage, its processor recovered from its checkpoint, and the
    // sequencer in front of its log.
    let mut held = Vec::with_capacity(usize::from(partitions));
    for (partition, claim) in (0..partitions).zip(claims) {
        let epoch = claim.epoch;
        let mut storage = storage.of_partition(partition, partitions)?;
        if let Some(catalog) = &catalog {
            // File ids above any the previous holder could still be writing.
            storage.manifests = Arc::new(catalog.fenced(partition, epoch));
            storage.first_file_id = epoch << 32;
        }
        tracing::info!(partition, manifests = %storage.manifests.describe(), "storage catalog");
        let store = Arc::new(
            Store::open(storage, clock.clone())
                .await
                .with_context(|| format!("cannot open partition {partition}'s storage"))?,
        );
        let mut sinks: Vec<Arc<dyn Sink>> = if config.storage.enabled {
            vec![store.clone()]
        } else {
            Vec::new()
        };
        if let Some((alerts, _)) = &alerts {
            sinks.push(alerts.partition(partition));
        }
        let (feed_tx, feed_rx) = hoistway_ingest::feed(1024);
        let log = logs[usize::from(partition)].clone();
        let processor = Processor::recover(
            ProcessorConfig {
                partition,
                partitions,
                ..pconfig.clone()
            },
            log.clone(),
            registry.clone(),
            checkpoints.clone(),
            claim,
            sinks,
        )
        .await
        .with_context(|| format!("cannot recover partition {partition}'s processor state"))?
        .with_feed(feed_rx);
        let dedup = processor.state().read().dedup_index();
        let (ingest, sequencer) = Sequencer::new(log, &sequencer_config(&config), dedup);
        held.push(Held {
            partition,
            epoch,
            store,
            processor,
            ingest,
            sequencer: Some(sequencer.with_feed(feed_tx)),
        });
    }
    let stores = hoistway_store::Stores::partitioned(
        &storage,
        held.iter().map(|h| h.store.clone()).collect(),
    );
    // A backup copies the log's files: with the log on JetStream, NATS backs the stream up.
    let backups = file_log.map(|file_log| {
        let s3 = config.storage.s3.clone();
        let default_target = config.backup.target.trim().to_string();
        Arc::new(hoistway_backup::Backups::new(hoistway_backup::Sources {
            data_dir: data.clone(),
            log: file_log.clone(),
            // A file log: one partition.
            gate: held[0].processor.checkpoint_gate(),
            store: held[0].store.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            resolve: Box::new(move |to| {
                let to = match to.trim() {
                    "" if default_target.is_empty() => {
                        return Err(
                            "name a target (hoistway backup --to DIR|s3://...) or set backup.target"
                                .to_string(),
                        );
                    }
                    "" => default_target.as_str(),
                    to => to,
                };
                backup_target(to, &s3).map_err(|e| format!("{e:#}"))
            }),
        }))
    });

    let fleet = hoistway_processor::Fleet::partitioned(
        held.iter().map(|h| h.processor.state().clone()).collect(),
        registry.clone(),
        clock.clone(),
        Duration::from_secs(config.processor.silent_after_secs),
    );
    let fleet_for_alerts = fleet.clone();
    let query = query_engine(
        &config,
        stores.clone(),
        fleet.clone(),
        auth.clone(),
        &analytics,
        alerts.as_ref().map(|(a, _)| a.store().clone()),
    )?;
    if let Some((alerts, _)) = &alerts {
        // A lift whose readings sit in an edge region's backlog is not silent: absence rules
        // wait while an edge region is out of contact or catching up.
        let (logs, quiet) = (
            logs.clone(),
            Duration::from_secs(config.cluster.edge_quiet_secs.max(1)),
        );
        alerts.set_absence_hold(Arc::new(move || {
            logs.iter()
                .flat_map(|log| log.sources())
                .find_map(|s| s.holding_back(quiet))
        }));
        alerts.set_baseline_source(baselines_from(query.clone()));
    }
    let sql_endpoints = SqlEndpoints::bind(&config, &query, &auth).await?;
    let reread_auth = auth.clone();
    let reread_registry = registry.clone();
    let accepting = Arc::new(AtomicBool::new(true));
    let ingest_rate = ingest_rate(&config);
    let (sequencers, ingests): (Vec<_>, Vec<_>) = held
        .iter_mut()
        .map(|h| (h.sequencer.take(), h.ingest.clone()))
        .unzip();
    let app = AppState::new(AppParts {
        ingest: hoistway_ingest::Ingest::partitioned(ingests),
        auth,
        rate: hoistway_server::rate::RateLimits::new(ingest_rate),
        trusted_proxies: config.auth.trusted_proxies.clone(),
        tls: tls.is_some() || !config.auth.trusted_proxies.is_empty(),
        registry,
        dlq,
        logs: logs.clone(),
        processing: Some(Processing {
            fleet,
            stores: stores.clone(),
            query,
            progress: held.iter().map(|h| h.processor.progress()).collect(),
            checkpoint_interval,
        }),
        alerts: alerts.as_ref().map(|(a, _)| a.clone()),
        backups,
        clock,
        limits: api_limits(&config),
        metrics,
        accepting: accepting.clone(),
        takes_readings: true,
        started,
    });

    let Listening {
        listener,
        addr,
        shutdown,
        shutdown_rx,
        sequencer_task,
    } = listen(
        &config,
        sequencers.into_iter().flatten().collect(),
        reread_auth,
        reread_registry,
    )
    .await?;
    let mut partition_tasks = Vec::with_capacity(held.len());
    for h in held {
        // A processor stopping on its own (a corrupt log, a failed checkpoint) stops the
        // server: acknowledging readings nobody applies would hide the failure.
        let processor_task = stops_server_on_error(
            h.processor.run(shutdown_rx.clone()),
            "processor failed",
            shutdown.clone(),
        );
        // Losing a partition's lease stops the server, as a processor stopping does.
        let lease_task = stops_server_on_error(
            hoistway_processor::keep_lease(
                checkpoints.clone(),
                h.partition,
                h.epoch,
                lease.ttl,
                shutdown_rx.clone(),
            ),
            "a partition's lease is lost",
            shutdown.clone(),
        );
        partition_tasks.push((h.partition, h.epoch, processor_task, lease_task));
    }
    let maintenance_task = analytics.handle().spawn(maintain_periodically(
        stores,
        Duration::from_secs(config.storage.maintenance_interval_secs.max(1)),
        shutdown_rx.clone(),
    ));
    let archive_task = archiver.map(|a| {
        let every = Duration::from_secs(config.backup.log_archive_interval_secs.max(1));
        (a.clone(), tokio::spawn(a.run(every, shutdown_rx.clone())))
    });
    let alert_tasks = alerts.map(|(alerts, dispatcher)| {
        let fleet = fleet_for_alerts.clone();
        let presence: hoistway_alerts::Presence = Arc::new(move || fleet.presence());
        (
            tokio::spawn(alerts.run(presence, shutdown_rx.clone())),
            tokio::spawn(dispatcher.run(shutdown_rx.clone())),
        )
    });
    let sql_tasks = sql_endpoints.serve(&acceptors, &shutdown_rx)?;
    let router = hoistway_server::router(app);
    tracing::info!(%addr, startup_ms = started.elapsed().as_millis() as u64, "hoistway is serving");
    let tls_task = watch_tls(tls, &config, addr, shutdown_rx.clone());

    let limits = conn_limits(&config);
    let graceful = draining(shutdown_rx.clone(), accepting);
    let task = tokio::spawn(async move {
        let served =
            hoistway_server::listen::serve(listener, router, limits, acceptors, graceful).await;
        // The router (and with it every Ingest handle) is gone: the sequencers answer what
        // they hold and end; then each processor drains its log and checkpoints.
        sequencer_task.await?;
        let mut failed = None;
        for (partition, epoch, processor_task, lease_task) in partition_tasks {
            let processed = processor_task.await?;
            let leased = lease_task.await?;
            if processed.is_ok() && leased.is_ok() {
                // After the last checkpoint: a standby takes over now, not when the lease
                // lapses.
                let store = checkpoints.clone();
                match tokio::task::spawn_blocking(move || store.release(partition, epoch)).await? {
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(partition, error = %e, "cannot end the partition's lease")
                    }
                }
            }
            let failure = processed
                .err()
                .map(anyhow::Error::from)
                .or(leased.err().map(anyhow::Error::from));
            failed = failed.or(failure);
        }
        maintenance_task.await?;
        if let Some((archiver, task)) = archive_task {
            task.await?;
            // After the last checkpoint: what it sealed is archived before the pin goes.
            archiver.pass().await;
        }
        if let Some((writer, dispatcher)) = alert_tasks {
            writer.await?;
            dispatcher.await?;
        }
        sql_tasks.finish().await?;
        if let Some(task) = tls_task {
            task.await?;
        }
        served?;
        if let Some(e) = failed {
            return Err(e);
        }
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

/// One partition this node holds, until its tasks start.
struct Held {
    partition: u16,
    epoch: u64,
    store: Arc<Store>,
    processor: Processor,
    ingest: hoistway_ingest::Ingest,
    /// Taken when the node starts listening.
    sequencer: Option<Sequencer>,
}

/// A node with every role holds every partition: beside processor nodes, which spread them, it
/// would wait for their leases for ever. Blocks.
fn refuse_beside_processor_nodes(pg: &hoistway_postgres::Postgres) -> anyhow::Result<()> {
    use hoistway_processor::Membership;
    let membership = hoistway_postgres::PgMembership::open(pg.clone())
        .context("cannot open the cluster's membership in PostgreSQL")?;
    let alive = membership
        .alive()
        .context("cannot read the cluster's membership in PostgreSQL")?;
    anyhow::ensure!(
        alive.is_empty(),
        "processor nodes spread this cluster's partitions ({} alive: {}); a node with every role holds every partition and \
         would wait for theirs: run this one as roles = \"processor\" or \"query\" (docs/deploy.md, \"Several processors\")",
        alive.len(),
        alive
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// The partition count the configuration names, checked: several need the log on JetStream
/// and the checkpoints in PostgreSQL.
pub(crate) fn partitions(config: &Config) -> anyhow::Result<u16> {
    let n = config.cluster.partitions;
    anyhow::ensure!(
        (1..=hoistway_model::partition::MAX_PARTITIONS).contains(&n),
        "cluster.partitions = {n}: a cluster has 1 to {} partitions",
        hoistway_model::partition::MAX_PARTITIONS
    );
    if n > 1 {
        anyhow::ensure!(
            checkpoints_in_postgres(config),
            "cluster.partitions = {n} needs cluster.nats and cluster.postgres: each partition is a JetStream stream, \
             with its checkpoint, lease and storage catalog in PostgreSQL (a standalone server has one partition)"
        );
    }
    Ok(n)
}

/// Records the partition count in PostgreSQL when this is the cluster's first node, and refuses
/// a count other than the one recorded: streams, checkpoints and catalogs are laid out by it.
/// Blocks.
pub(crate) fn settle_partitions(
    config: &Config,
    pg: Option<&hoistway_postgres::Postgres>,
) -> anyhow::Result<()> {
    let (Some(pg), configured) = (pg, config.cluster.partitions) else {
        return Ok(());
    };
    let recorded = hoistway_postgres::layout::settle_partitions(pg, configured)
        .context("cannot read the cluster's partition count in PostgreSQL")?;
    anyhow::ensure!(
        recorded == configured,
        "this cluster spreads readings over {recorded} partition(s) (recorded in PostgreSQL when it first ran), \
         and this node has cluster.partitions = {configured}: give every node the recorded count (changing it \
         would move lifts to partitions that do not hold their state)"
    );
    Ok(())
}

/// Alerting over `<data>/alerts/alerts.sqlite3` (in the cluster mode, where the processor's
/// checkpoints are in PostgreSQL, over the `alert_*` tables there, fenced by the partition's
/// epoch held, so a standby taking over has the rules, open alerts, the engine's snapshot and
/// the outbox), with the configured rules file, channels and routes, and the dispatcher that
/// drains its outbox. Blocks (opens files).
pub(crate) fn open_alerts(
    data: &std::path::Path,
    config: &Config,
    clock: Arc<dyn Clock>,
    pg: Option<(&hoistway_postgres::Postgres, AlertFence)>,
) -> anyhow::Result<(
    Arc<hoistway_alerts::Alerts>,
    hoistway_alerts::notify::Dispatcher,
)> {
    let settings = &config.alerts;
    let file_rules = match settings.rules_file.trim() {
        "" => Vec::new(),
        path => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the rules file {path}"))?;
            hoistway_alerts::rule::parse_rule_file(&text)
                .map_err(|e| anyhow::anyhow!("rules file {path}: {e}"))?
        }
    };
    let spread = matches!(pg, Some((_, AlertFence::Held(_))));
    let store: Arc<dyn hoistway_alerts::AlertStore> = match pg {
        // Beside the checkpoints: the engine's snapshot belongs to the partition's checkpoint.
        Some((pg, fence)) if checkpoints_in_postgres(config) => {
            let store = hoistway_postgres::PgAlertStore::open(pg.clone())
                .context("cannot open the alert tables in PostgreSQL")?;
            Arc::new(match fence {
                AlertFence::Holder(epoch) => store.fenced(PARTITION, epoch),
                AlertFence::Held(held) => store.fenced_by(held),
            })
        }
        _ => Arc::new(
            hoistway_alerts::SqliteAlertStore::open(&data.join("alerts").join("alerts.sqlite3"))
                .context("cannot open the alert store")?,
        ),
    };
    let mut alerts_config = alerts_config(config);
    alerts_config.spread = spread;
    let schedule = alerts_config.retry_schedule.clone();
    let alerts = Arc::new(
        hoistway_alerts::Alerts::open(store.clone(), alerts_config, file_rules, clock.clone())
            .context("cannot open alerting")?,
    );
    let mut channels = std::collections::HashMap::new();
    for channel in &settings.channels {
        channels.insert(channel.name().to_string(), channel.build()?);
    }
    let dispatcher = hoistway_alerts::notify::Dispatcher::new(
        store,
        channels,
        schedule,
        clock,
        alerts.dispatcher_wake(),
    );
    Ok((alerts, dispatcher))
}

/// What alerting's writes in PostgreSQL are fenced by.
pub(crate) enum AlertFence {
    /// The processing node's: the epoch it claimed the first partition with (it holds every
    /// partition or none).
    Holder(u64),
    /// A processor node's: the partitions it holds now, each with its epoch (alerting then
    /// takes partitions as they come).
    Held(hoistway_postgres::HeldPartitions),
}

/// Alerting's settings from the config.
pub(crate) fn alerts_config(config: &Config) -> hoistway_alerts::AlertsConfig {
    let settings = &config.alerts;
    hoistway_alerts::AlertsConfig {
        engine: hoistway_alerts::EngineConfig {
            silent_after_secs: config.processor.silent_after_secs,
            grace_secs: settings.grace_secs,
            outage_fraction: settings.outage_fraction,
            outage_min_lifts: settings.outage_min_lifts,
            reorder_wait_secs: settings.reorder_wait_secs,
            ..Default::default()
        },
        routes: settings.routes.clone(),
        escalations: settings.escalations.clone(),
        retry_schedule: settings
            .retry_schedule_secs
            .iter()
            .map(|s| Duration::from_secs_f64(s.max(0.0)))
            .collect(),
        tick: Duration::from_secs(settings.tick_secs.max(1)),
        baseline_refresh: Duration::from_secs(settings.baseline_refresh_secs.max(1)),
        history: Duration::from_secs(settings.history_days.max(1) * 86_400),
        outbox_history: Duration::from_secs(settings.outbox_days.max(1) * 86_400),
        partitions: config.cluster.partitions.max(1),
        spread: false,
    }
}

/// Moves the manifests of tiers that were used before the cluster mode (files on S3 listed by
/// `_hoistway/manifest.json` in each tier) to PostgreSQL, once: without them, opening the
/// tiers would take the files for leftovers and delete them. The file is then renamed, so it
/// is not mistaken for the current one later.
async fn adopt_tier_manifests(
    manifests: &hoistway_postgres::PgManifestStore,
    storage: &StoreConfig,
) -> anyhow::Result<()> {
    use hoistway_store::{ManifestStore, Tier};
    use object_store::ObjectStoreExt;
    let files = hoistway_store::TierManifests::new(storage.hot.clone(), storage.archive.clone());
    for tier in [Tier::Hot, Tier::Archive] {
        if manifests.load(tier).await?.is_some() {
            continue;
        }
        let Some(manifest) = files.load(tier).await? else {
            continue;
        };
        if manifests.adopt(tier, &manifest).await? {
            let store = &storage.tier(tier).store;
            let (from, to) = (
                object_store::path::Path::from(hoistway_store::manifest::MANIFEST_PATH),
                object_store::path::Path::from("_hoistway/manifest.moved-to-postgres.json"),
            );
            store.rename(&from, &to).await.with_context(|| {
                format!("cannot rename the {} tier's manifest file", tier.as_str())
            })?;
            tracing::info!(
                tier = tier.as_str(),
                generation = manifest.generation,
                files = manifest.files.len(),
                "moved the tier's manifest from its file to PostgreSQL"
            );
        }
    }
    Ok(())
}

/// The storage tiers named by the configuration.
pub(crate) fn store_config(config: &Config) -> anyhow::Result<StoreConfig> {
    let settings = &config.storage;
    let hot = if settings.hot_url.trim().is_empty() {
        let hot_dir = if settings.hot_dir.is_empty() {
            config.data_dir.join("store").join("hot")
        } else {
            settings.hot_dir.clone().into()
        };
        TierStore::local(&hot_dir)
            .with_context(|| format!("cannot open the hot tier in {}", hot_dir.display()))?
    } else {
        tier_at(settings.hot_url.trim(), config)
            .context("hot_url")
            .context("cannot open the hot tier")?
    };
    let archive = archive_tier(config).context("cannot open the archive tier")?;
    let mut store = StoreConfig::new(hot, archive);
    store.hot_retention_us = settings.hot_retention_hours as i64 * HOUR_US;
    store.retention_us = settings.retention_days as i64 * 24 * HOUR_US;
    store.compact_min_files = settings.compact_min_files.max(2);
    store.garbage_grace_us = settings.garbage_grace_secs as i64 * 1_000_000;
    store.max_rows_per_file = settings.max_rows_per_file.max(1);
    Ok(store)
}

fn archive_tier(config: &Config) -> anyhow::Result<TierStore> {
    let raw = config.storage.archive_url.trim();
    if raw.is_empty() {
        return Ok(TierStore::local(
            config.data_dir.join("store").join("archive"),
        )?);
    }
    tier_at(raw, config).context("archive_url")
}

/// A tier at a directory or URL (`file:///…`, `s3://…`).
fn tier_at(raw: &str, config: &Config) -> anyhow::Result<TierStore> {
    match location(raw, &config.storage.s3)? {
        Location::Dir(path) => Ok(TierStore::local(path)?),
        Location::Remote(store) => Ok(TierStore::remote(store)),
    }
}

/// The log: files in the data dir, or the JetStream stream `cluster.nats` names (then without
/// the file log, which backups and log archiving copy).
pub(crate) async fn open_log(
    config: &Config,
    data: &std::path::Path,
    partition: u16,
) -> anyhow::Result<(Arc<dyn Log>, Option<Arc<FileLog>>)> {
    let servers = config.cluster.nats_servers();
    if !servers.is_empty() {
        // The checkpoint and any unapplied records belong to the file log: refuse, not skip.
        let files = data.join("log");
        anyhow::ensure!(
            !files.exists(),
            "{} holds a file log, and cluster.nats puts the log on JetStream: moving a data dir from one log to the other \
             is not supported yet (its processor checkpoint counts the file log's offsets); use a new data dir with cluster.nats",
            files.display()
        );
        let mut js = hoistway_jetstream::JetStreamConfig::named(
            servers.clone(),
            &config.cluster.nats_stream,
            u32::from(partition),
        );
        match regions(config)? {
            Regions::Edge(region) => js = js.in_region(&region),
            // The partitions' holders keep the streams' lists of edge regions as configured.
            Regions::Processing(edges)
                if matches!(
                    crate::ingest_node::node_kind(config)?,
                    NodeKind::Processing | NodeKind::Processor { .. }
                ) =>
            {
                js.sources = Some(edges)
            }
            Regions::Processing(_) => {}
        }
        js.replicas = config.cluster.nats_replicas.max(1);
        // Ingest refuses (503) at log.max_bytes; the stream's own limit, an eighth higher, is
        // the backstop for what several nodes append between two reads of its size.
        let max_bytes = log_max_bytes(config);
        js.max_bytes = Some(max_bytes.saturating_add(max_bytes / 8));
        js.monitors = config.cluster.nats_monitors();
        let log = hoistway_jetstream::JetStreamLog::open(js)
            .await
            .with_context(|| {
                format!(
                    "cannot open the log on NATS JetStream at {}",
                    servers.join(",")
                )
            })?;
        let durability = log.durability();
        tracing::info!(
            stream = log.stream_name(),
            start = log.start(),
            end = log.durable_end(),
            server_version = %durability.server_version,
            replicas = durability.replicas,
            "log opened on JetStream"
        );
        if let Some(why) = log.durability_unverified() {
            tracing::warn!("{why}");
        }
        return Ok((Arc::new(log), None));
    }
    anyhow::ensure!(
        matches!(regions(config)?, Regions::Processing(edges) if edges.is_empty()),
        "cluster.region and cluster.edges are for the log on NATS JetStream (cluster.nats)"
    );
    anyhow::ensure!(partition == 0, "a log of files holds one partition");
    let mut log_config = FileLogConfig::new(data.join("log"));
    log_config.segment_bytes = config.log.segment_bytes;
    log_config.write_version = config.log.segment_format;
    // Opening reads and checks files: off the async runtime, like all startup I/O.
    let (file_log, report) = tokio::task::spawn_blocking(move || FileLog::open(log_config))
        .await?
        .context("cannot open the log")?;
    tracing::info!(
        start = report.start,
        end = report.end,
        segments = report.segments,
        truncated_bytes = report.truncated_bytes,
        durable_mark = report.durable_mark,
        "log opened"
    );
    let file_log = Arc::new(file_log);
    Ok((file_log.clone(), Some(file_log)))
}

/// A node listening, with its sequencer and the reread of shared state started.
pub(crate) struct Listening {
    pub listener: tokio::net::TcpListener,
    pub addr: SocketAddr,
    pub shutdown: watch::Sender<bool>,
    pub shutdown_rx: watch::Receiver<bool>,
    pub sequencer_task: JoinHandle<()>,
}

/// Listens on `config.listen`, starts the sequencers (each the single writer of its
/// partition's log here) and the
/// periodic reread of what other nodes change (auth, registry); both node kinds do this.
pub(crate) async fn listen(
    config: &Config,
    sequencers: Vec<Sequencer>,
    auth: Arc<hoistway_auth::Authority>,
    registry: Arc<Registry>,
) -> anyhow::Result<Listening> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let sequencer_task = tokio::spawn(async move {
        let running: Vec<_> = sequencers
            .into_iter()
            .map(|s| tokio::spawn(s.run()))
            .collect();
        for task in running {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a sequencer failed");
            }
        }
    });
    tokio::spawn(reread_shared_periodically(
        auth,
        registry,
        reread_every(config),
        shutdown_rx.clone(),
    ));
    Ok(Listening {
        listener,
        addr,
        shutdown,
        shutdown_rx,
        sequencer_task,
    })
}

/// Which region a node is in, as `cluster.region` and `cluster.edges` say.
#[derive(Debug, PartialEq)]
pub(crate) enum Regions {
    /// An edge region's (its name).
    Edge(String),
    /// The processing region's, which takes these edge regions in.
    Processing(Vec<String>),
}

/// The query engine over `store` and `fleet`, on the analytics runtime, with the audit log and
/// (when alerting is on) the alert tables.
/// Rate rules compare each lift with its own past hours, from the stored rollups `query` reads.
pub(crate) fn baselines_from(query: Arc<QueryEngine>) -> hoistway_alerts::BaselineSource {
    Arc::new(move |counter, hour_us, weeks| {
        let query = query.clone();
        Box::pin(async move {
            let column = counter
                .rollup_column()
                .ok_or_else(|| format!("no hourly rollup of {}", counter.as_str()))?;
            query
                .hourly_baselines(column, hour_us, weeks)
                .await
                .map_err(|e| e.to_string())
        })
    })
}

pub(crate) fn query_engine(
    config: &Config,
    stores: hoistway_store::Stores,
    fleet: hoistway_processor::Fleet,
    auth: Arc<hoistway_auth::Authority>,
    analytics: &hoistway_query::runtime::AnalyticsRuntime,
    alerts: Option<Arc<dyn hoistway_alerts::AlertStore>>,
) -> anyhow::Result<Arc<QueryEngine>> {
    let mut query = QueryEngine::new(
        stores,
        fleet,
        QueryLimits {
            max_rows: config.query.max_rows.max(1),
            timeout: Duration::from_secs(config.query.timeout_secs.max(1)),
            memory_bytes: config.query.memory_mb.max(16) << 20,
            export_role: config.query.export_role,
            export_max_bytes: config.query.export_max_mb.saturating_mul(1024 * 1024),
        },
    )
    .context("cannot start the query engine")?
    .with_audit(auth)
    .with_runtime(analytics.clone())
    .with_test_functions(config.query.test_functions);
    if let Some(alerts) = alerts {
        query = query.with_alerts(alerts);
    }
    Ok(Arc::new(query))
}

/// The analytics runtime: SQL, compaction and flush encoding, at a lower priority than the
/// acks.
pub(crate) fn analytics_runtime(
    config: &Config,
) -> anyhow::Result<hoistway_query::runtime::AnalyticsRuntime> {
    let threads = match config.query.threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    hoistway_query::runtime::AnalyticsRuntime::new(threads, config.query.nice)
        .context("cannot start the analytics runtime")
}

/// SQL besides HTTP, where configured: the PostgreSQL wire protocol (`query.postgres_listen`)
/// and Arrow Flight SQL (`query.flight_listen`), bound before the server says it listens.
pub(crate) struct SqlEndpoints {
    postgres: Option<(
        tokio::net::TcpListener,
        Arc<QueryEngine>,
        Arc<hoistway_auth::Authority>,
        hoistway_pgwire::PlainPasswords,
    )>,
    flight: Option<(tokio::net::TcpListener, hoistway_flightsql::Service)>,
}

/// The running SQL endpoints, to wait for at shutdown.
pub(crate) struct SqlTasks {
    postgres: Option<JoinHandle<()>>,
    flight: Option<JoinHandle<()>>,
}

impl SqlEndpoints {
    pub(crate) async fn bind(
        config: &Config,
        query: &Arc<QueryEngine>,
        auth: &Arc<hoistway_auth::Authority>,
    ) -> anyhow::Result<Self> {
        let plain = config.query.postgres_plain_passwords;
        let postgres = match config.query.postgres_listen.trim() {
            "" => None,
            listen => Some((
                tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("cannot listen for postgres clients on {listen}"))?,
                query.clone(),
                auth.clone(),
                plain,
            )),
        };
        let flight = match config.query.flight_listen.trim() {
            "" => None,
            listen => Some((
                tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("cannot listen for Flight SQL clients on {listen}"))?,
                hoistway_flightsql::Service::new(query.clone(), auth.clone(), plain)
                    .map_err(|e| anyhow::anyhow!("cannot set up Flight SQL: {e}"))?,
            )),
        };
        Ok(Self { postgres, flight })
    }

    pub(crate) fn serve(
        self,
        acceptors: &hoistway_server::tls::Acceptors,
        shutdown: &watch::Receiver<bool>,
    ) -> anyhow::Result<SqlTasks> {
        let postgres = self
            .postgres
            .map(|(listener, query, auth, plain)| {
                let addr = listener.local_addr()?;
                tracing::info!(%addr, "postgres wire protocol listening");
                anyhow::Ok(tokio::spawn(hoistway_pgwire::serve(
                    listener,
                    query,
                    auth,
                    plain,
                    acceptors.clone(),
                    shutdown.clone(),
                )))
            })
            .transpose()?;
        let flight = self
            .flight
            .map(|(listener, service)| {
                let addr = listener.local_addr()?;
                tracing::info!(%addr, "Arrow Flight SQL listening");
                anyhow::Ok(tokio::spawn(hoistway_flightsql::serve(
                    listener,
                    service,
                    acceptors.clone(),
                    shutdown.clone(),
                )))
            })
            .transpose()?;
        Ok(SqlTasks { postgres, flight })
    }
}

impl SqlTasks {
    pub(crate) async fn finish(self) -> anyhow::Result<()> {
        if let Some(task) = self.postgres {
            task.await?;
        }
        // gRPC clients keep connections open; past a few seconds they are cut with the process.
        if let Some(task) = self.flight
            && tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
        {
            tracing::warn!("Flight SQL clients still connected at shutdown");
        }
        Ok(())
    }
}

pub(crate) fn regions(config: &Config) -> anyhow::Result<Regions> {
    let region = config.cluster.region.trim();
    let edges = config.cluster.edge_regions();
    for r in edges.iter().map(String::as_str).chain(Some(region)) {
        anyhow::ensure!(
            r.is_empty() || hoistway_jetstream::valid_region(r),
            "{r:?} cannot name an edge region (its JetStream domain): letters, digits, - and _, at most 32"
        );
    }
    if region.is_empty() {
        return Ok(Regions::Processing(edges));
    }
    anyhow::ensure!(
        edges.is_empty(),
        "cluster.edges is for the processing region; this node is in edge region {region:?} (cluster.region)"
    );
    Ok(Regions::Edge(region.to_owned()))
}

/// Where an archive or a backup lives.
pub(crate) enum Location {
    Dir(std::path::PathBuf),
    Remote(Arc<dyn object_store::ObjectStore>),
}

/// Resolves `file:///dir`, `s3://bucket/prefix` (with the `[storage.s3]` settings) or an
/// absolute directory.
pub(crate) fn location(raw: &str, s3: &crate::config::S3Settings) -> anyhow::Result<Location> {
    if raw.starts_with('/') {
        return Ok(Location::Dir(raw.into()));
    }
    let url = url::Url::parse(raw).map_err(|_| {
        anyhow::anyhow!("{raw:?} is neither an absolute directory nor a file:// or s3:// URL")
    })?;
    match url.scheme() {
        "file" => {
            let path = url
                .to_file_path()
                .map_err(|_| anyhow::anyhow!("{raw:?} is not a local path"))?;
            Ok(Location::Dir(path))
        }
        "s3" => {
            let bucket = url
                .host_str()
                .ok_or_else(|| anyhow::anyhow!("{raw:?} names no bucket"))?;
            let mut builder = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_allow_http(s3.allow_http);
            if !s3.endpoint.is_empty() {
                builder = builder.with_endpoint(&s3.endpoint);
            }
            if !s3.region.is_empty() {
                builder = builder.with_region(&s3.region);
            }
            if !s3.access_key_id.is_empty() {
                builder = builder
                    .with_access_key_id(&s3.access_key_id)
                    .with_secret_access_key(&s3.secret_access_key);
            }
            let store: Arc<dyn object_store::ObjectStore> = Arc::new(builder.build()?);
            let prefix = url.path().trim_matches('/');
            Ok(Location::Remote(if prefix.is_empty() {
                store
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
            }))
        }
        other => anyhow::bail!("{raw:?}: scheme {other:?} is not supported; use file or s3"),
    }
}

/// A backup target: a directory (created) or S3-compatible storage.
pub(crate) fn backup_target(
    raw: &str,
    s3: &crate::config::S3Settings,
) -> anyhow::Result<Arc<dyn object_store::ObjectStore>> {
    Ok(match location(raw.trim(), s3)? {
        Location::Dir(path) => {
            std::fs::create_dir_all(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(
                &path,
            )?)
        }
        Location::Remote(store) => store,
    })
}

/// Runs storage upkeep on an interval until shutdown. A failed pass is logged and retried.
pub(crate) async fn maintain_periodically(
    store: hoistway_store::Stores,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        match store.maintain().await {
            Ok(report) if report != Default::default() => {
                tracing::info!(?report, "storage maintenance");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "storage maintenance failed; retrying at the next interval");
                metrics::counter!("hoistway_store_maintenance_failures_total").increment(1);
            }
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn termination() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// TLS as configured: its reloader, if any, and the acceptors every listener takes.
pub(crate) fn tls_of(
    config: &Config,
) -> anyhow::Result<(
    Option<Arc<hoistway_server::tls::Reloader>>,
    hoistway_server::tls::Acceptors,
)> {
    Ok(match config.tls.files()? {
        None => (None, hoistway_server::tls::fixed(None)),
        Some(files) => {
            let (reloader, acceptors) = hoistway_server::tls::Reloader::start(files)?;
            (Some(reloader), acceptors)
        }
    })
}

/// Starts rereading the TLS files (with TLS) and prints the line tests and scripts wait for
/// (keep its shape).
pub(crate) fn watch_tls(
    reloader: Option<Arc<hoistway_server::tls::Reloader>>,
    config: &Config,
    addr: SocketAddr,
    shutdown: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    let every = Duration::from_secs(config.tls.reload_check_secs.max(1));
    let task = reloader.map(|r| tokio::spawn(r.watch(every, shutdown)));
    let scheme = if task.is_some() { "https" } else { "http" };
    println!("hoistway listening on {scheme}://{addr}");
    task
}

/// A sequencer's settings: the dedup window and its partition's log's byte limit.
pub(crate) fn sequencer_config(config: &Config) -> SequencerConfig {
    SequencerConfig {
        window: config.window(),
        max_log_bytes: log_max_bytes(config),
        ..SequencerConfig::default()
    }
}

/// Each partition's log's byte limit: `log.max_bytes` shared evenly (lifts spread evenly).
pub(crate) fn log_max_bytes(config: &Config) -> u64 {
    config.log.max_bytes / u64::from(config.cluster.partitions.max(1))
}

/// How often shared state (keys, revocations, the registry) is reread.
pub(crate) fn reread_every(config: &Config) -> Duration {
    Duration::from_secs(config.auth.refresh_secs.max(1) as u64)
}

/// The limits of the HTTP listener's connections.
pub(crate) fn conn_limits(config: &Config) -> hoistway_server::listen::ConnLimits {
    hoistway_server::listen::ConnLimits {
        header_read_timeout: Duration::from_secs(config.header_read_timeout_secs.max(1)),
        idle_timeout: Duration::from_secs(config.keep_alive_idle_secs.max(1)),
        ..Default::default()
    }
}

/// The HTTP listener's graceful signal: resolves once shutdown begins, after clearing
/// `accepting`, so readiness fails before the listener closes.
pub(crate) async fn draining(mut shutdown: watch::Receiver<bool>, accepting: Arc<AtomicBool>) {
    let _ = shutdown.wait_for(|s| *s).await;
    accepting.store(false, Ordering::Release);
}

/// The limits of the device API.
pub(crate) fn api_limits(config: &Config) -> ApiLimits {
    ApiLimits {
        max_body_bytes: config.ingest.max_body_bytes,
        decode: DecodeLimits {
            max_decoded_bytes: config.ingest.max_decoded_bytes,
            max_items: config.ingest.max_readings_per_request,
        },
        retry_after_secs: config.ingest.retry_after_secs,
        dead_letter_max_bytes: (!config.ingest.auto_register)
            .then_some(config.ingest.dead_letter_max_bytes),
        edge_quiet: Duration::from_secs(config.cluster.edge_quiet_secs.max(1)),
    }
}

/// Each lift's request rate limit, unless any client may post (`auth.devices = "open"`).
pub(crate) fn ingest_rate(config: &Config) -> Option<hoistway_server::rate::IngestRate> {
    (config.auth.devices != hoistway_auth::DeviceMode::Open).then_some(
        hoistway_server::rate::IngestRate {
            per_minute: config.auth.ingest_requests_per_minute,
            burst: config.auth.ingest_burst,
        },
    )
}

/// The PostgreSQL that holds shared state (`cluster.postgres`). Blocks (connects).
/// `None` when shared state stays in the data dir.
pub(crate) fn shared_postgres(
    config: &Config,
) -> anyhow::Result<Option<hoistway_postgres::Postgres>> {
    let url = config.cluster.postgres.trim();
    if url.is_empty() {
        return Ok(None);
    }
    hoistway_postgres::Postgres::connect(url, &config.cluster.postgres_schema)
        .map(Some)
        .context("cannot open the shared state in PostgreSQL (cluster.postgres)")
}

/// Runs `task`; if it fails, logs `what` with the error and shuts the server down.
fn stops_server_on_error<E: std::fmt::Display + Send + 'static>(
    task: impl std::future::Future<Output = Result<(), E>> + Send + 'static,
    what: &'static str,
    shutdown: watch::Sender<bool>,
) -> JoinHandle<Result<(), E>> {
    tokio::spawn(async move {
        let result = task.await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "{what}; shutting down");
            let _ = shutdown.send(true);
        }
        result
    })
}

/// Whether the processor's checkpoints (and with them dead letters and alerts) are in
/// PostgreSQL: with the log on JetStream and `cluster.postgres`, so that another machine can
/// take over. A log of files keeps them beside it, in the data dir.
/// Whether both storage tiers are named by URL (S3, or a directory every node shares), not
/// kept in the data dir: in the cluster mode the holder's files are then every node's, and
/// their catalog is in PostgreSQL beside the checkpoints.
pub(crate) fn shared_tiers(config: &Config) -> bool {
    !config.storage.hot_url.trim().is_empty() && !config.storage.archive_url.trim().is_empty()
}

pub(crate) fn checkpoints_in_postgres(config: &Config) -> bool {
    !config.cluster.nats.trim().is_empty() && !config.cluster.postgres.trim().is_empty()
}

/// The partition a server processes: a standalone server (and, until partitions are spread over
/// several streams, a cluster) has one.
pub(crate) const PARTITION: u16 = 0;

/// Names this process in the partition's lease, for the messages of those waiting for it.
pub(crate) fn holder_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host = if host.is_empty() { "unknown" } else { &host };
    format!("{host}:{}", std::process::id())
}

/// Where the processor's checkpoints and the dead letters live: beside the log. With the log on
/// JetStream (`cluster.nats`) and `cluster.postgres`, in PostgreSQL, where a processor on another
/// machine takes over from them (a checkpoint and dead letters a data dir holds from before are
/// moved there once); otherwise the data dir's `state/` and `dlq/`. Blocks.
fn open_checkpoints(
    config: &Config,
    pg: Option<&hoistway_postgres::Postgres>,
) -> anyhow::Result<(Arc<dyn CheckpointStore>, Arc<dyn DeadLetters>)> {
    let data = &config.data_dir;
    match pg {
        Some(pg) if checkpoints_in_postgres(config) => {
            let store = hoistway_postgres::PgCheckpointStore::open(pg.clone())
                .context("cannot open the processor tables in PostgreSQL")?;
            let moved = store
                .adopt_files(0, &data.join("state"), &data.join("dlq"))
                .context("cannot move the data dir's checkpoint to PostgreSQL")?;
            if let Some(offset) = moved {
                tracing::info!(
                    offset,
                    "the data dir's checkpoint and dead letters moved to PostgreSQL"
                );
            }
            let store = Arc::new(store);
            Ok((store.clone(), store))
        }
        _ => {
            let dlq = Arc::new(
                DeadLetterQueue::open(data.join("dlq"))
                    .context("cannot open the dead-letter queue")?,
            );
            let store = FileCheckpointStore::new(data.join("state"), dlq.clone());
            Ok((Arc::new(store), dlq))
        }
    }
}

/// The lift registry: in `pg` (the shared state, [`shared_postgres`]) if given, else
/// `registry.sqlite3` in the data dir. Blocks.
pub(crate) fn open_registry(
    config: &Config,
    pg: Option<&hoistway_postgres::Postgres>,
) -> anyhow::Result<Registry> {
    let Some(pg) = pg else {
        return Registry::open(config.data_dir.join("registry.sqlite3"))
            .context("cannot open the lift registry");
    };
    let store = hoistway_postgres::PgRegistryStore::open(pg.clone())
        .context("cannot open the registry tables in PostgreSQL")?;
    Registry::with_store(Arc::new(store)).context("cannot read the lift registry")
}

/// The auth state: in PostgreSQL when `cluster.postgres` names one (shared by every node given
/// it), else the data dir's `auth/auth.sqlite3` and the signing keys `auth/keys.json`. Blocks.
pub fn open_authority(
    config: &Config,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<hoistway_auth::Authority> {
    open_authority_on(config, clock, shared_postgres(config)?.as_ref())
}

/// [`open_authority`] on the shared state `pg` already open, if any.
pub(crate) fn open_authority_on(
    config: &Config,
    clock: Arc<dyn Clock>,
    pg: Option<&hoistway_postgres::Postgres>,
) -> anyhow::Result<hoistway_auth::Authority> {
    let (store, keys): (
        Arc<dyn hoistway_auth::AuthStore>,
        Arc<dyn hoistway_auth::KeyStore>,
    ) = if let Some(pg) = pg {
        let store = hoistway_postgres::PgAuthStore::open(pg.clone())
            .context("cannot open the auth tables in PostgreSQL")?;
        let keys = hoistway_postgres::PgKeyStore::new(pg.clone());
        (Arc::new(store), Arc::new(keys))
    } else {
        let dir = config.data_dir.join("auth");
        let store = hoistway_auth::SqliteAuthStore::open(&dir.join("auth.sqlite3"))
            .context("cannot open the auth store")?;
        let keys = hoistway_auth::FileKeyStore::new(&dir.join("keys.json"));
        (Arc::new(store), Arc::new(keys))
    };
    hoistway_auth::Authority::open(store, keys, clock, config.authority())
        .context("cannot open the auth keys")
}

/// Rereads, every `every` until shutdown, what other nodes change in shared state: signing keys
/// and lift revocations, and the lift registry. A failed read is warned once per outage; the
/// node goes on with what it last read.
pub(crate) async fn reread_shared_periodically(
    auth: Arc<hoistway_auth::Authority>,
    registry: Arc<Registry>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut auth_state = Reread::new(
        "auth",
        "revocations and key rotations made on other nodes wait until it is readable",
    );
    let mut registry_state = Reread::new(
        "registry",
        "lifts registered on other nodes wait until it is readable",
    );
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let (auth, registry) = (auth.clone(), registry.clone());
        let read = tokio::task::spawn_blocking(move || {
            (
                auth.reread_shared().map_err(|e| e.to_string()),
                registry.refresh().map_err(|e| e.to_string()),
            )
        })
        .await;
        let Ok((auth_read, registry_read)) = read else {
            tracing::error!("the reread of shared state failed");
            continue;
        };
        auth_state.observe(auth_read);
        registry_state.observe(registry_read);
    }
}

/// One kind of shared state being reread: warned once per outage, logged when back, measured
/// (`hoistway_shared_state_stale`, `hoistway_shared_state_reread_failures_total`).
struct Reread {
    state: &'static str,
    consequence: &'static str,
    failing: bool,
}

impl Reread {
    fn new(state: &'static str, consequence: &'static str) -> Self {
        Self {
            state,
            consequence,
            failing: false,
        }
    }

    fn observe(&mut self, read: Result<usize, String>) {
        let stale = if read.is_err() { 1.0 } else { 0.0 };
        metrics::gauge!("hoistway_shared_state_stale", "state" => self.state).set(stale);
        match read {
            Ok(_) if self.failing => {
                tracing::info!(state = self.state, "shared state readable again");
                self.failing = false;
            }
            Ok(_) => {}
            Err(e) => {
                metrics::counter!("hoistway_shared_state_reread_failures_total", "state" => self.state)
                    .increment(1);
                if !self.failing {
                    tracing::warn!(state = self.state, error = %e, consequence = self.consequence, "cannot reread shared state");
                    self.failing = true;
                }
            }
        }
    }
}
