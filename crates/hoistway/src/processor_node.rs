//! `hoistway serve --role processor`: one of several processor nodes that spread the partitions
//! over themselves. Each node beats in the shared membership (PostgreSQL), works out its share
//! of the partitions from the list of live members ([`hoistway_processor::share`]), claims the
//! partitions of its share whose leases are free, and hands back the ones outside it: when a
//! node joins, the others end their leases on what is now its share (after a last checkpoint);
//! when one dies, its leases and heartbeat lapse and the others take its partitions over.
//!
//! A partition held here runs as on the processing node: its processor recovered from the last
//! checkpoint (replaying its stream from there), its storage writing Parquet through the
//! partition's catalog fenced by the claim's epoch, and its upkeep. A node that stalls (paused,
//! cut off) is fenced: another node's claim raises the epoch, so its next checkpoint or catalog
//! commit fails, and it steps down from that partition when it runs again.
//!
//! Alerting runs on every processor node over the partitions it holds: each partition's
//! processor hands its readings to the node's engine, which takes the partition's snapshot in
//! when the partition comes ([`hoistway_alerts::Alerts::take_partition`]) and forgets its lifts
//! when it goes; alert writes are fenced by every partition held; absence rules look at the
//! lifts of the partitions held here, and the outage guard adds up what every node found newly
//! silent (reported with the heartbeats). Notifications are sent by one node: the one holding
//! the lease on that duty.
//!
//! The API, the UI and SQL are on query nodes (`roles = "query"`), which follow every
//! partition's checkpoints and catalog; readings come through ingest nodes, or through this
//! node with `roles = "ingest,processor"`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hoistway_model::partition::partition_of;
use hoistway_model::{Clock, SystemClock};
use hoistway_processor::{
    CheckpointStore, Claim, Claimed, FleetState, Lease, Membership, Processor, ProcessorConfig,
    Progress, Sink, StoreError,
};
use hoistway_registry::Registry;
use hoistway_server::{AppParts, AppState};
use hoistway_store::{Store, StoreConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::serve::{self, Running};

/// Starts a processor node (`ingest`: it takes readings too).
pub async fn start(config: Config, ingest: bool) -> anyhow::Result<Running> {
    let started = Instant::now();
    anyhow::ensure!(
        serve::checkpoints_in_postgres(&config),
        "a processor node (roles = \"processor\") needs cluster.nats, where the partitions' streams are, and cluster.postgres, \
         where their leases, checkpoints and storage catalogs are"
    );
    anyhow::ensure!(
        config.cluster.region.trim().is_empty(),
        "a processor node runs in the processing region (cluster.region is for ingest nodes in an edge region)"
    );
    anyhow::ensure!(
        serve::shared_tiers(&config),
        "processor nodes hand partitions to each other, with their Parquet files: name both storage tiers, storage.hot_url \
         and storage.archive_url, the same on every node (S3, or a directory they all share)"
    );
    let partitions = serve::partitions(&config)?;
    let data = config.data_dir.clone();
    let lock = crate::offline::lock_data_dir(&data)?;
    let metrics = hoistway_server::install_metrics();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let fences = hoistway_postgres::HeldPartitions::default();
    let (registry, auth, checkpoints, manifests, membership, alerts) = {
        let (config, clock, fences) = (config.clone(), clock.clone(), fences.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let pg = serve::shared_postgres(&config)?.context("cluster.postgres is set")?;
            serve::settle_partitions(&config, Some(&pg))?;
            let registry = serve::open_registry(&config, Some(&pg))?;
            let auth = serve::open_authority_on(&config, clock.clone(), Some(&pg))?;
            let checkpoints = hoistway_postgres::PgCheckpointStore::open(pg.clone())
                .context("cannot open the processor tables in PostgreSQL")?;
            let manifests = hoistway_postgres::PgManifestStore::open(pg.clone())
                .context("cannot open the storage tables in PostgreSQL")?;
            let membership = hoistway_postgres::PgMembership::open(pg.clone())
                .context("cannot open the cluster's membership in PostgreSQL")?;
            let alerts = if config.alerts.enabled {
                Some(serve::open_alerts(
                    &config.data_dir,
                    &config,
                    clock,
                    Some((&pg, serve::AlertFence::Held(fences))),
                )?)
            } else {
                None
            };
            Ok((
                Arc::new(registry),
                Arc::new(auth),
                Arc::new(checkpoints),
                manifests,
                membership,
                alerts,
            ))
        })
        .await??
    };
    let (tls, acceptors) = serve::tls_of(&config)?;
    let (logs, ingest_handle, sequencers) =
        crate::ingest_node::partitioned_ingest(&config, partitions).await?;
    let analytics = serve::analytics_runtime(&config)?;
    let mut storage = serve::store_config(&config)?;
    storage.work = Some(analytics.handle().clone());
    let accepting = Arc::new(AtomicBool::new(true));
    let app = AppState::new(AppParts {
        ingest: ingest_handle,
        auth: auth.clone(),
        rate: hoistway_server::rate::RateLimits::new(serve::ingest_rate(&config)),
        trusted_proxies: config.auth.trusted_proxies.clone(),
        tls: tls.is_some() || !config.auth.trusted_proxies.is_empty(),
        registry: registry.clone(),
        dlq: checkpoints.clone(),
        logs: logs.clone(),
        processing: None,
        alerts: alerts.as_ref().map(|(a, _)| a.clone()),
        backups: None,
        clock: clock.clone(),
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
    } = serve::listen(&config, sequencers, auth.clone(), registry.clone()).await?;
    let stream_tasks: Vec<_> = logs
        .iter()
        .map(|log| {
            tokio::spawn(crate::ingest_node::follow_the_stream(
                log.clone(),
                shutdown_rx.clone(),
            ))
        })
        .collect();
    let ttl = Duration::from_secs(config.processor.lease_secs.max(1));
    let states = HeldStates::default();
    let (first_tx, first_rx) = watch::channel(false);
    let silent_elsewhere = Arc::new(AtomicU64::new(0));
    let mut alerting = None;
    if let Some((alerts, dispatcher)) = alerts {
        // A lift whose readings sit in an edge region's backlog is not silent.
        let (sources, quiet) = (
            logs.clone(),
            Duration::from_secs(config.cluster.edge_quiet_secs.max(1)),
        );
        alerts.set_absence_hold(Arc::new(move || {
            sources
                .iter()
                .flat_map(|log| log.sources())
                .find_map(|s| s.holding_back(quiet))
        }));
        let elsewhere = silent_elsewhere.clone();
        alerts.set_silent_elsewhere(Arc::new(move || elsewhere.load(Ordering::Relaxed) as usize));
        // Rate rules' baselines: every partition's stored rollups, as their catalogs list them
        // (reread every few seconds), through a query engine of this node's own.
        let (query, readers) = baseline_reader(
            &config, partitions, &storage, &manifests, &clock, &registry, &auth, &analytics,
        )
        .await?;
        alerts.set_baseline_source(serve::baselines_from(query));
        tokio::spawn(reread_catalogs(readers, shutdown_rx.clone()));
        let writer = tokio::spawn(alerts.clone().run(
            presence(registry.clone(), states.clone(), partitions),
            shutdown_rx.clone(),
        ));
        // One node sends the notifications: the one holding that duty's lease.
        let sender = tokio::spawn(dispatcher.run_when(first_rx, shutdown_rx.clone()));
        alerting = Some((alerts, writer, sender));
    }
    let spread = Spread {
        me: serve::holder_name(),
        ttl,
        partitions,
        membership: Arc::new(membership),
        checkpoints,
        manifests,
        registry,
        logs,
        storage,
        clock,
        analytics: analytics.handle().clone(),
        pconfig: ProcessorConfig {
            window: config.window(),
            checkpoint_interval: Duration::from_secs(
                config.processor.checkpoint_interval_secs.max(1),
            ),
            auto_register: config.ingest.auto_register,
            checkpoint_format: config.processor.checkpoint_format,
            // Every record here comes from the stream (no feed): look for new ones often.
            idle_read_after: Duration::from_millis(100),
            partitions,
            ..Default::default()
        },
        store_readings: config.storage.enabled,
        maintenance_every: Duration::from_secs(config.storage.maintenance_interval_secs.max(1)),
        held: BTreeMap::new(),
        alerts: alerting.as_ref().map(|(a, _, _)| a.clone()),
        fences,
        states,
        first: first_tx,
        silent_elsewhere,
    };
    let spread_task = tokio::spawn(spread.run(shutdown_rx.clone(), shutdown.clone()));
    let router = if ingest {
        hoistway_server::ingest_router(app)
    } else {
        hoistway_server::ops_router(app)
    };
    let roles = if ingest {
        "ingest,processor"
    } else {
        "processor"
    };
    tracing::info!(%addr, startup_ms = started.elapsed().as_millis() as u64, partitions, "hoistway is serving (roles: {roles})");
    let tls_task = serve::watch_tls(tls, &config, addr, shutdown_rx.clone());
    let limits = serve::conn_limits(&config);
    let graceful = serve::draining(shutdown_rx, accepting);
    let task = tokio::spawn(async move {
        let served =
            hoistway_server::listen::serve(listener, router, limits, acceptors, graceful).await;
        sequencer_task.await?;
        // Every partition held here checkpoints, ends its lease, and the node leaves.
        let spread = spread_task.await?;
        if let Some((_, writer, sender)) = alerting {
            writer.await?;
            sender.await?;
        }
        for task in stream_tasks {
            task.await?;
        }
        if let Some(task) = tls_task {
            task.await?;
        }
        served?;
        spread?;
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

/// This node's part in spreading the partitions: its membership, and the partitions it holds.
struct Spread {
    me: String,
    ttl: Duration,
    partitions: u16,
    membership: Arc<dyn Membership>,
    checkpoints: Arc<hoistway_postgres::PgCheckpointStore>,
    manifests: hoistway_postgres::PgManifestStore,
    registry: Arc<Registry>,
    logs: Vec<Arc<dyn hoistway_log::Log>>,
    storage: StoreConfig,
    clock: Arc<dyn Clock>,
    analytics: tokio::runtime::Handle,
    pconfig: ProcessorConfig,
    store_readings: bool,
    maintenance_every: Duration,
    held: BTreeMap<u16, Slot>,
    /// This node's alerting, if on: it takes each partition held here.
    alerts: Option<Arc<hoistway_alerts::Alerts>>,
    /// The partitions held here with their epochs, fencing alerting's writes.
    fences: hoistway_postgres::HeldPartitions,
    /// The state of each partition held here, for absence rules.
    states: HeldStates,
    /// Whether this node holds the lease on sending notifications.
    first: watch::Sender<bool>,
    /// What the other nodes' alerting found newly silent at their last look.
    silent_elsewhere: Arc<AtomicU64>,
}

/// How often a processor node rereads every partition's storage catalog for rate rules'
/// baselines (which change by the hour).
const CATALOG_REREAD: Duration = Duration::from_secs(5);

/// A query engine over every partition's stored files, each read through its catalog without
/// writing anything (as a query node does), for rate rules' baselines; and those readers.
#[allow(clippy::too_many_arguments)]
async fn baseline_reader(
    config: &Config,
    partitions: u16,
    storage: &StoreConfig,
    manifests: &hoistway_postgres::PgManifestStore,
    clock: &Arc<dyn Clock>,
    registry: &Arc<Registry>,
    auth: &Arc<hoistway_auth::Authority>,
    analytics: &hoistway_query::runtime::AnalyticsRuntime,
) -> anyhow::Result<(Arc<hoistway_query::QueryEngine>, Vec<Arc<Store>>)> {
    let mut readers = Vec::with_capacity(usize::from(partitions));
    for partition in 0..partitions {
        let mut reader = storage.of_partition(partition, partitions)?;
        reader.manifests = Arc::new(manifests.of_partition(partition));
        readers.push(Arc::new(
            Store::open_reader(reader, clock.clone())
                .await
                .with_context(|| format!("cannot read partition {partition}'s storage catalog"))?,
        ));
    }
    let stores = hoistway_store::Stores::partitioned(storage, readers.clone());
    // Baselines read stored rollups only: no lift state here.
    let fleet = hoistway_processor::Fleet::partitioned(
        (0..partitions).map(|_| Default::default()).collect(),
        registry.clone(),
        clock.clone(),
        Duration::from_secs(config.processor.silent_after_secs),
    );
    let query = serve::query_engine(config, stores, fleet, auth.clone(), analytics, None)?;
    Ok((query, readers))
}

/// Rereads each reader's catalog every [`CATALOG_REREAD`] until shutdown.
async fn reread_catalogs(readers: Vec<Arc<Store>>, mut shutdown: watch::Receiver<bool>) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CATALOG_REREAD) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let mut failed = None;
        for reader in &readers {
            if let Err(e) = reader.reload().await {
                failed = Some(e);
            }
        }
        match failed {
            Some(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot read the storage catalog for rate rules' baselines; using what was read last");
            }
            None if failing => {
                failing = false;
                tracing::info!("reading the storage catalog for rate rules' baselines works again");
            }
            _ => {}
        }
    }
}

/// The state of each partition a node holds.
type HeldStates = Arc<parking_lot::RwLock<BTreeMap<u16, Arc<parking_lot::RwLock<FleetState>>>>>;

/// Every registered lift of the partitions held here, with when its last reading came (absence
/// rules look at these; the other partitions' lifts are their holders').
fn presence(
    registry: Arc<Registry>,
    states: HeldStates,
    partitions: u16,
) -> hoistway_alerts::Presence {
    Arc::new(move || {
        let held = states.read().clone();
        let guards: BTreeMap<u16, _> = held.iter().map(|(p, s)| (*p, s.read())).collect();
        registry
            .list(&hoistway_registry::LiftFilter::default())
            .into_iter()
            .filter_map(|info| {
                let state = guards.get(&partition_of(&info.lift_id, partitions))?;
                let last = state.lifts.get(&info.lift_id).map(|s| s.last_received_us);
                Some((info, last))
            })
            .collect()
    })
}

/// One partition held here: its processor, lease keeper and upkeep run in `task` until `stop`.
struct Slot {
    epoch: u64,
    stop: Arc<watch::Sender<bool>>,
    progress: watch::Receiver<Progress>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Spread {
    /// Beats and rebalances every third of the lease until `shutdown`, then hands every
    /// partition back and leaves. A partition that fails other than by being taken over stops
    /// the server (`stop_server`), as a processor failing does on the processing node.
    async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
        stop_server: watch::Sender<bool>,
    ) -> anyhow::Result<()> {
        let mut failing = false;
        let mut outcome = Ok(());
        loop {
            if let Err(e) = self.rebalance(&mut failing).await {
                tracing::error!(
                    error = format!("{e:#}"),
                    "a partition failed; shutting down"
                );
                let _ = stop_server.send(true);
                outcome = Err(e);
                break;
            }
            self.gauges();
            tokio::select! {
                _ = tokio::time::sleep(self.ttl / 3) => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        let held: Vec<u16> = self.held.keys().copied().collect();
        for partition in held {
            if let Err(e) = self.hand_back(partition).await {
                outcome = outcome.and(Err(e));
            }
        }
        let (membership, me) = (self.membership.clone(), self.me.clone());
        match tokio::task::spawn_blocking(move || membership.leave(&me)).await? {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot leave the cluster's membership; the others wait for this node's heartbeat to lapse")
            }
        }
        self.gauges();
        outcome
    }

    /// One round: beat, drop what ended, hand back what is no longer this node's share, and
    /// claim the free partitions of it.
    async fn rebalance(&mut self, failing: &mut bool) -> anyhow::Result<()> {
        let (membership, me, ttl) = (self.membership.clone(), self.me.clone(), self.ttl);
        let silent = self.alerts.as_ref().map_or(0, |a| a.silent_here()) as u64;
        let live = match tokio::task::spawn_blocking(move || membership.heartbeat(&me, ttl, silent))
            .await?
        {
            Ok(live) => {
                if std::mem::take(failing) {
                    tracing::info!("the cluster's membership answers again");
                }
                live
            }
            // Leases, not membership, say who writes: keep what is held (its lease keepers
            // retry too) and beat again next round.
            Err(e) => {
                if !std::mem::replace(failing, true) {
                    tracing::warn!(error = %e, "cannot record this node's heartbeat; keeping the partitions held and retrying");
                }
                return Ok(());
            }
        };
        let share = hoistway_processor::share(self.partitions, &live, &self.me);
        let elsewhere: u64 = live
            .iter()
            .filter(|m| m.name != self.me)
            .map(|m| m.silent_lifts)
            .sum();
        self.silent_elsewhere.store(elsewhere, Ordering::Relaxed);
        if self.alerts.is_some() {
            let (membership, me, ttl) = (self.membership.clone(), self.me.clone(), self.ttl);
            let sends =
                tokio::task::spawn_blocking(move || membership.lead(&me, "notifications", ttl))
                    .await?;
            match sends {
                Ok(sends) => {
                    metrics::gauge!("hoistway_notification_sender").set(f64::from(u8::from(sends)));
                    if self
                        .first
                        .send_if_modified(|was| std::mem::replace(was, sends) != sends)
                    {
                        tracing::info!(sends, "notification sending moved");
                    }
                }
                // Its lease runs out by itself: stop sending until it can be renewed.
                Err(e) => {
                    metrics::gauge!("hoistway_notification_sender").set(0.0);
                    self.first
                        .send_if_modified(|was| std::mem::replace(was, false));
                    tracing::warn!(error = %e, "cannot renew the lease on sending notifications; pausing them");
                }
            }
        }
        let ended: Vec<u16> = self
            .held
            .iter()
            .filter(|(_, slot)| slot.task.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for partition in ended {
            self.hand_back(partition).await?;
        }
        let extra: Vec<u16> = self
            .held
            .keys()
            .filter(|p| !share.contains(p))
            .copied()
            .collect();
        for partition in extra {
            tracing::info!(
                partition,
                members = live.len(),
                "handing the partition over: it is another processor's share now"
            );
            self.hand_back(partition).await?;
        }
        for partition in share {
            if self.held.contains_key(&partition) {
                continue;
            }
            let (store, lease) = (
                self.checkpoints.clone(),
                Lease {
                    holder: self.me.clone(),
                    ttl: self.ttl,
                },
            );
            let claimed =
                tokio::task::spawn_blocking(move || store.claim(partition, &lease)).await?;
            match claimed {
                Ok(Claimed::Granted(claim)) => {
                    let slot = self.open(partition, claim).await?;
                    tracing::info!(
                        partition,
                        epoch = slot.epoch,
                        members = live.len(),
                        "holding the partition"
                    );
                    self.held.insert(partition, slot);
                }
                // Its holder hands it back once it sees this node (or its lease lapses).
                Ok(Claimed::Held { .. }) => {}
                Err(StoreError::Unavailable(why)) => {
                    tracing::warn!(partition, error = %why, "cannot claim the partition yet; retrying");
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot claim partition {partition}"));
                }
            }
        }
        Ok(())
    }

    /// Starts partition `partition`, just claimed: its storage, its processor recovered from
    /// the claim's checkpoint, its lease keeper and its upkeep.
    async fn open(&self, partition: u16, claim: Claim) -> anyhow::Result<Slot> {
        let epoch = claim.epoch;
        let mut storage = self.storage.of_partition(partition, self.partitions)?;
        // File ids above any the previous holder could still be writing.
        storage.manifests = Arc::new(self.manifests.fenced(partition, epoch));
        storage.first_file_id = epoch << 32;
        let store = Arc::new(
            Store::open(storage, self.clock.clone())
                .await
                .with_context(|| format!("cannot open partition {partition}'s storage"))?,
        );
        let mut sinks: Vec<Arc<dyn Sink>> = if self.store_readings {
            vec![store.clone()]
        } else {
            Vec::new()
        };
        if let Some(alerts) = &self.alerts {
            // Its writes are fenced by this claim from now on.
            self.fences
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(partition, epoch);
            let alerts = alerts.clone();
            let sink = tokio::task::spawn_blocking(move || alerts.take_partition(partition))
                .await?
                .with_context(|| format!("cannot take partition {partition}'s alerting in"))?;
            sinks.push(sink);
        }
        let checkpoints: Arc<dyn CheckpointStore> = self.checkpoints.clone();
        let processor = Processor::recover(
            ProcessorConfig {
                partition,
                ..self.pconfig.clone()
            },
            self.logs[usize::from(partition)].clone(),
            self.registry.clone(),
            checkpoints.clone(),
            claim,
            sinks,
        )
        .await
        .with_context(|| format!("cannot recover partition {partition}'s processor state"))?;
        let progress = processor.progress();
        self.states
            .write()
            .insert(partition, processor.state().clone());
        let (stop, stop_rx) = watch::channel(false);
        let stop = Arc::new(stop);
        let upkeep = self.analytics.spawn(serve::maintain_periodically(
            hoistway_store::Stores::one(store),
            self.maintenance_every,
            stop_rx.clone(),
        ));
        let ttl = self.ttl;
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut processed = tokio::spawn(processor.run(stop_rx.clone()));
                let lease = hoistway_processor::keep_lease(
                    checkpoints.clone(),
                    partition,
                    epoch,
                    ttl,
                    stop_rx,
                );
                tokio::pin!(lease);
                // Whichever ends first (the processor failing, the lease lost, or a stop)
                // stops the other.
                let (processed, leased) = tokio::select! {
                    processed = &mut processed => {
                        let _ = stop.send(true);
                        (processed, lease.await)
                    }
                    leased = &mut lease => {
                        let _ = stop.send(true);
                        (processed.await, leased)
                    }
                };
                upkeep.await?;
                let failed = match (processed?, leased) {
                    (Ok(()), Ok(())) => None,
                    (Err(e), _) => Some(anyhow::Error::from(e)),
                    (_, Err(e)) => Some(anyhow::Error::from(e)),
                };
                let Some(e) = failed else {
                    // After the last checkpoint: the next holder claims it now, not when the
                    // lease lapses.
                    let store = checkpoints.clone();
                    if let Err(e) =
                        tokio::task::spawn_blocking(move || store.release(partition, epoch)).await?
                    {
                        tracing::warn!(partition, error = %e, "cannot end the partition's lease");
                    }
                    return Ok(());
                };
                // Taken over while this node stalled: step down, nothing it wrote since
                // counts. Anything else is a failure.
                let store = checkpoints.clone();
                match tokio::task::spawn_blocking(move || store.renew(partition, epoch, ttl))
                    .await?
                {
                    Err(StoreError::Fenced { current, .. }) => {
                        tracing::warn!(
                            partition,
                            epoch,
                            current,
                            error = format!("{e:#}"),
                            "another processor took the partition over (this node stalled or was cut off); stepping down from it"
                        );
                        metrics::counter!("hoistway_processor_partitions_lost_total").increment(1);
                        Ok(())
                    }
                    _ => Err(e.context(format!("partition {partition}"))),
                }
            }
        });
        Ok(Slot {
            epoch,
            stop,
            progress,
            task,
        })
    }

    /// Stops partition `partition` held here (it checkpoints and ends its lease), or collects
    /// its end if it ended on its own.
    async fn hand_back(&mut self, partition: u16) -> anyhow::Result<()> {
        let Some(slot) = self.held.remove(&partition) else {
            return Ok(());
        };
        let _ = slot.stop.send(true);
        let ended = slot.task.await;
        // After its last checkpoint (which wrote its alerting's snapshot, fenced by it).
        self.states.write().remove(&partition);
        if let Some(alerts) = &self.alerts {
            alerts.drop_partition(partition);
        }
        self.fences
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&partition);
        ended?
    }

    /// What this node holds and how far each partition is, for `/metrics`.
    fn gauges(&self) {
        metrics::gauge!("hoistway_partitions_held").set(self.held.len() as f64);
        for (partition, log) in (0..self.partitions).zip(&self.logs) {
            let label = [("partition", partition.to_string())];
            let slot = self.held.get(&partition);
            metrics::gauge!("hoistway_partition_held", &label).set(if slot.is_some() {
                1.0
            } else {
                0.0
            });
            if let Some(slot) = slot {
                let progress = *slot.progress.borrow();
                metrics::gauge!("hoistway_processor_offset", &label).set(progress.offset as f64);
                metrics::gauge!("hoistway_processor_lag_records", &label)
                    .set(log.entries_behind(progress.offset) as f64);
                metrics::gauge!("hoistway_processor_checkpoint_age_seconds", &label)
                    .set(progress.last_checkpoint_at.elapsed().as_secs_f64());
            }
        }
    }
}
