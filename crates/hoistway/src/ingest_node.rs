//! `hoistway serve --role ingest`: a node that takes readings from lifts and appends them to the
//! JetStream log, for the node that holds the partition to process. It keeps no state of its
//! own (accounts, lift credentials and the registry are read from PostgreSQL), so ingest scales
//! by adding nodes behind the load balancer, and one stopping loses nothing acknowledged.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Context;
use hoistway_dlq::DeadLetters;
use hoistway_ingest::{Ingest, Sequencer};
use hoistway_model::{Clock, SystemClock};
use hoistway_server::{AppParts, AppState};
use tokio::sync::watch;

use crate::config::Config;
use crate::serve::{self, Running};

/// What a node can run.
const ROLES: [&str; 4] = ["ingest", "processor", "query", "maintenance"];

/// What a node runs, as `roles` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// Every role (`all`, the default): holds the partition (or stands by for it), processes,
    /// stores, answers queries and does upkeep.
    Processing,
    /// `ingest`: takes readings from lifts and appends them to the shared log.
    Ingest,
    /// `query`: the API, the UI and SQL from the shared state and storage, without holding the
    /// partition; with `ingest` too (`ingest,query`) it also takes readings.
    Query { ingest: bool },
    /// `processor`: one of several processor nodes that spread the partitions over themselves
    /// (and their storage upkeep); with `ingest` too it also takes readings.
    Processor { ingest: bool },
}

/// Which kind of node `roles` makes: `all` (the default) or every role, `ingest`, `query`,
/// `ingest,query`, `processor` or `ingest,processor` (`maintenance` may be named with
/// `processor`: it runs there).
pub fn node_kind(config: &Config) -> anyhow::Result<NodeKind> {
    let mut named: Vec<&str> = config
        .roles
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .collect();
    if let Some(unknown) = named.iter().find(|r| **r != "all" && !ROLES.contains(r)) {
        anyhow::bail!(
            "unknown role {unknown:?}: roles are all (the default), {}",
            ROLES.join(", ")
        );
    }
    named.sort_unstable();
    named.dedup();
    match named.as_slice() {
        [] | ["all"] => Ok(NodeKind::Processing),
        ["ingest"] => Ok(NodeKind::Ingest),
        ["query"] => Ok(NodeKind::Query { ingest: false }),
        ["ingest", "query"] => Ok(NodeKind::Query { ingest: true }),
        ["processor"] | ["maintenance", "processor"] => Ok(NodeKind::Processor { ingest: false }),
        ["ingest", "processor"] | ["ingest", "maintenance", "processor"] => {
            Ok(NodeKind::Processor { ingest: true })
        }
        every if every.len() == ROLES.len() => Ok(NodeKind::Processing),
        other => anyhow::bail!(
            "roles {other:?}: a node runs every role (all, the default), ingest, query, ingest,query, processor or \
             ingest,processor (maintenance runs with processor: each partition's upkeep on the node holding it; \
             docs/deploy.md)"
        ),
    }
}

/// Starts an ingest node.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let started = Instant::now();
    anyhow::ensure!(
        !config.cluster.nats_servers().is_empty() && !config.cluster.postgres.trim().is_empty(),
        "an ingest node (roles = \"ingest\") needs cluster.nats, where it appends readings for the processing node, \
         and cluster.postgres, where it reads accounts, lift credentials and the registry"
    );
    let partitions = serve::partitions(&config)?;
    let data = config.data_dir.clone();
    let lock = crate::offline::lock_data_dir(&data)?;
    let metrics = hoistway_server::install_metrics();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (registry, auth, dlq) = {
        let (config, clock) = (config.clone(), clock.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let pg = serve::shared_postgres(&config)?.context("cluster.postgres is set")?;
            serve::settle_partitions(&config, Some(&pg))?;
            let registry = serve::open_registry(&config, Some(&pg))?;
            let auth = serve::open_authority_on(&config, clock, Some(&pg))?;
            // The pending dead letters cap what unregistered lifts may send.
            let dlq: Arc<dyn DeadLetters> = Arc::new(
                hoistway_postgres::PgCheckpointStore::open(pg)
                    .context("cannot open the processor tables in PostgreSQL")?,
            );
            Ok((Arc::new(registry), Arc::new(auth), dlq))
        })
        .await??
    };
    let (tls, acceptors) = serve::tls_of(&config)?;
    let (logs, ingest, sequencers) = partitioned_ingest(&config, partitions).await?;
    let accepting = Arc::new(AtomicBool::new(true));
    let app = AppState::new(AppParts {
        ingest,
        auth: auth.clone(),
        rate: hoistway_server::rate::RateLimits::new(serve::ingest_rate(&config)),
        trusted_proxies: config.auth.trusted_proxies.clone(),
        tls: tls.is_some() || !config.auth.trusted_proxies.is_empty(),
        registry: registry.clone(),
        dlq,
        logs: logs.clone(),
        processing: None,
        alerts: None,
        backups: None,
        clock,
        limits: serve::api_limits(&config),
        metrics,
        accepting: accepting.clone(),
        takes_readings: true,
        started,
    });

    let serve::Listening {
        listener,
        addr,
        shutdown,
        shutdown_rx,
        sequencer_task,
    } = serve::listen(&config, sequencers, auth, registry).await?;
    for log in logs {
        tokio::spawn(follow_the_stream(log, shutdown_rx.clone()));
    }
    let router = hoistway_server::ingest_router(app);
    tracing::info!(%addr, startup_ms = started.elapsed().as_millis() as u64, "hoistway is serving (roles: ingest)");
    let tls_task = serve::watch_tls(tls, &config, addr, shutdown_rx.clone());

    let limits = serve::conn_limits(&config);
    let graceful = serve::draining(shutdown_rx, accepting);
    let task = tokio::spawn(async move {
        let served =
            hoistway_server::listen::serve(listener, router, limits, acceptors, graceful).await;
        // Every Ingest handle is gone with the router: the sequencer answers what it holds.
        sequencer_task.await?;
        if let Some(task) = tls_task {
            task.await?;
        }
        served?;
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

/// Each partition's log, and the ingest handle over their sequencers, for a node that holds no
/// partition: no processor state here to tell resends apart, so each request's `duplicates`
/// count is best-effort, and the processors' dedup decides what counts (docs/device-api.md).
pub(crate) async fn partitioned_ingest(
    config: &Config,
    partitions: u16,
) -> anyhow::Result<(Vec<Arc<dyn hoistway_log::Log>>, Ingest, Vec<Sequencer>)> {
    let (mut logs, mut ingests, mut sequencers) = (Vec::new(), Vec::new(), Vec::new());
    for partition in 0..partitions {
        let (log, _) = serve::open_log(config, &config.data_dir, partition).await?;
        let (ingest, sequencer) = Sequencer::new(
            log.clone(),
            &serve::sequencer_config(config),
            HashMap::new(),
        );
        logs.push(log);
        ingests.push(ingest);
        sequencers.push(sequencer);
    }
    Ok((logs, Ingest::partitioned(ingests), sequencers))
}

/// Rereads the stream's bounds every second until shutdown. The byte limit that turns into 503s
/// counts what every node appended and what the processing node's checkpoints freed; this
/// node's handle sees only its own appends otherwise, and would go on refusing after the
/// processing node caught up.
pub(crate) async fn follow_the_stream(
    log: Arc<dyn hoistway_log::Log>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        match log.refresh().await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("reading the stream's bounds works again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot read the stream's bounds; retrying");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(roles: &str) -> anyhow::Result<NodeKind> {
        node_kind(&Config {
            roles: roles.into(),
            ..Config::default()
        })
    }

    #[test]
    fn a_node_runs_every_role_ingest_or_query() {
        for all in [
            "",
            "all",
            " all ",
            "ingest,processor,query,maintenance",
            "maintenance, query,processor ,ingest,ingest",
        ] {
            assert_eq!(roles(all).unwrap(), NodeKind::Processing, "{all:?}");
        }
        assert_eq!(roles("ingest").unwrap(), NodeKind::Ingest);
        assert_eq!(roles(" ingest, ingest").unwrap(), NodeKind::Ingest);
        assert_eq!(roles("query").unwrap(), NodeKind::Query { ingest: false });
        assert_eq!(
            roles("query, ingest").unwrap(),
            NodeKind::Query { ingest: true }
        );
        let unknown = roles("ingest,writer").unwrap_err().to_string();
        assert!(unknown.contains("unknown role \"writer\""), "{unknown}");
        for processor in ["processor", "maintenance,processor"] {
            assert_eq!(
                roles(processor).unwrap(),
                NodeKind::Processor { ingest: false }
            );
        }
        assert_eq!(
            roles("processor,ingest").unwrap(),
            NodeKind::Processor { ingest: true }
        );
        for apart in [
            "processor,query,maintenance",
            "maintenance",
            "query,processor",
        ] {
            let refused = roles(apart).unwrap_err().to_string();
            assert!(refused.contains("a node runs"), "{apart}: {refused}");
        }
    }

    #[test]
    fn a_node_is_in_an_edge_region_or_the_processing_region() {
        use crate::serve::{Regions, regions};
        let node = |region: &str, edges: &str| {
            let mut config = Config::default();
            config.cluster.region = region.into();
            config.cluster.edges = edges.into();
            regions(&config)
        };
        assert_eq!(node("", "").unwrap(), Regions::Processing(vec![]));
        assert_eq!(
            node(" ", "eu, ap-south_2").unwrap(),
            Regions::Processing(vec!["eu".into(), "ap-south_2".into()])
        );
        assert_eq!(node(" eu ", "").unwrap(), Regions::Edge("eu".into()));
        let both = node("eu", "ap").unwrap_err().to_string();
        assert!(
            both.contains("cluster.edges is for the processing region"),
            "{both}"
        );
        for bad in ["eu.west", "eu west", "hub*", &"x".repeat(33)] {
            let refused = node(bad, "").unwrap_err().to_string();
            assert!(
                refused.contains("cannot name an edge region"),
                "{bad}: {refused}"
            );
            assert!(node("", bad).is_err(), "{bad}");
        }
    }
}
