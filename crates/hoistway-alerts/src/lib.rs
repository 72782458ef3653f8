//! Alerting: rules evaluated over the stream of accepted readings, the alert lifecycle, and
//! notifications that are neither lost nor doubled.
//!
//! In: the processor's [`SinkBatch`]es ([`Alerts`] is a [`Sink`]), the passing of time (the
//! injected clock), people's actions (acknowledge, resolve, rule edits). Out: alerts and their
//! history in an [`AlertStore`], and notifications in the same store's outbox, which a
//! [`notify::Dispatcher`] delivers.
//!
//! The path of a critical event: `accept` evaluates the record's readings (`engine`) and
//! wakes the writer, which records the changes and their notifications in one transaction
//! (`lifecycle`), then wakes the dispatcher. Nothing waits for the processor's checkpoint,
//! and nothing on the ingest path waits for a receiver. Each change carries a key derived from
//! the readings that made it, so the records replayed after a crash change nothing twice.
//!
//! Not here: reading storage, and the HTTP API (the server crate calls the methods of
//! [`Alerts`]).

pub mod conformance;
pub mod engine;
pub mod lifecycle;
pub mod notify;
pub mod rule;
pub mod sqlite;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use hoistway_log::Offset;
use hoistway_model::Clock;
use hoistway_model::partition::partition_of_str;
use hoistway_processor::{Sink, SinkBatch, SinkError};
use hoistway_registry::LiftInfo;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

pub use engine::{Engine, EngineConfig};
pub use lifecycle::{Escalation, QuietHours, Route};
pub use rule::{Rule, RuleProblem, Severity};
pub use sqlite::SqliteAlertStore;
pub use store::{
    Alert, AlertEvent, AlertQuery, AlertState, AlertStore, DeliveryState, Notification, Silence,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("alert storage failed: {0}")]
    Storage(String),
    /// The store cannot be reached now (a shared database down); worth retrying (503).
    #[error("alert storage is unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the rule is not valid")]
    InvalidRule(Vec<RuleProblem>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The baselines of a rate rule: the median rise of `counter` per lift in the hour starting at
/// `hour_us` over the previous `weeks` weeks (the binary answers from the stored rollups).
pub type BaselineSource = Arc<
    dyn Fn(
            rule::Counter,
            i64,
            u32,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<
                        Output = std::result::Result<
                            std::collections::HashMap<String, f64>,
                            String,
                        >,
                    > + Send,
            >,
        > + Send
        + Sync,
>;

/// Every registered lift with the server time of its last reading (`None`: never reported).
pub type Presence = Arc<dyn Fn() -> Vec<(Arc<LiftInfo>, Option<i64>)> + Send + Sync>;

/// Why absence rules wait for now, if they do (see [`Alerts::set_absence_hold`]).
pub type AbsenceHold = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// How many lifts the alert engines of other processor nodes found newly silent at their last
/// tick (see [`Alerts::set_silent_elsewhere`]).
pub type SilentElsewhere = Arc<dyn Fn() -> usize + Send + Sync>;

#[derive(Debug, Clone)]
pub struct AlertsConfig {
    pub engine: EngineConfig,
    pub routes: Vec<Route>,
    pub escalations: Vec<Escalation>,
    /// Delays before each retry of a failed delivery.
    pub retry_schedule: Vec<Duration>,
    /// How often time-based rules (absence, the reorder wait) are evaluated.
    pub tick: Duration,
    /// Rate rules' baselines are read again at each new hour and after this long.
    pub baseline_refresh: Duration,
    /// Resolved alerts (and their history) are kept this long.
    pub history: Duration,
    /// Delivered and dead notifications are kept this long.
    pub outbox_history: Duration,
    /// The partitions readings come from (`cluster.partitions`): each partition's processor
    /// hands its readings to [`Alerts::partition`]'s sink, and the engine's snapshot is kept
    /// per partition, beside that partition's checkpoint.
    pub partitions: u16,
    /// Partitions come and go (processor nodes that spread them): none is taken at open, each
    /// one is taken with [`Alerts::take_partition`] when its processor starts here and let go
    /// with [`Alerts::drop_partition`] when it stops.
    pub spread: bool,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            engine: EngineConfig::default(),
            routes: Vec::new(),
            escalations: Vec::new(),
            retry_schedule: notify::DEFAULT_SCHEDULE_SECS
                .iter()
                .map(|s| Duration::from_secs_f64(*s))
                .collect(),
            tick: Duration::from_secs(5),
            baseline_refresh: Duration::from_secs(900),
            history: Duration::from_secs(1827 * 86_400),
            outbox_history: Duration::from_secs(30 * 86_400),
            partitions: 1,
            spread: false,
        }
    }
}

const SNAPSHOT: &str = "engine_snapshot";

/// Where partition `partition`'s engine snapshot is kept, of `partitions`.
fn snapshot_key(partition: u16, partitions: u16) -> String {
    if partitions <= 1 {
        SNAPSHOT.to_string()
    } else {
        format!("{SNAPSHOT}/{partition}")
    }
}
const SEEDED: &str = "default_rules_seeded";

/// The alerting service.
pub struct Alerts {
    store: Arc<dyn AlertStore>,
    engine: Arc<Mutex<Engine>>,
    pending: Arc<Mutex<Vec<engine::Evaluated>>>,
    /// Accepted batches go to the evaluation thread, so that rules never slow the processor.
    to_evaluate: std::sync::mpsc::SyncSender<(Arc<[hoistway_processor::SinkItem]>, i64)>,
    /// Batches handed to the evaluation thread, and (from it) how many it has evaluated.
    sent: Arc<std::sync::atomic::AtomicU64>,
    evaluated: watch::Receiver<u64>,
    routes: Vec<Route>,
    escalations: Vec<Escalation>,
    clock: Arc<dyn Clock>,
    /// Per partition: its records below this offset were evaluated before its last snapshot
    /// (skipped on replay).
    skip_below: Vec<std::sync::atomic::AtomicU64>,
    /// How many lifts the engines on other nodes found newly silent (spread partitions).
    silent_elsewhere: Mutex<Option<SilentElsewhere>>,
    /// Serialises writes of changes (the writer task and checkpoints).
    flush_lock: Arc<tokio::sync::Mutex<()>>,
    wake_writer: Arc<Notify>,
    wake_dispatcher: Arc<Notify>,
    tick: Duration,
    history: (Duration, Duration),
    baselines: Mutex<Option<BaselineSource>>,
    absence_hold: Mutex<Option<AbsenceHold>>,
    /// The store's silences, read again when they change.
    silences: Arc<parking_lot::RwLock<Vec<Silence>>>,
    baseline_refresh: Duration,
    /// When each rate rule's baselines were last asked for (clock µs).
    baselines_asked: Mutex<std::collections::HashMap<String, i64>>,
    /// `None` once shut down: subscribers' streams end.
    updates: Mutex<Option<tokio::sync::broadcast::Sender<Arc<AlertUpdate>>>>,
    /// Set by [`Alerts::follow`]: the change stream carries what the store records, this
    /// node's own acts included (so they are not published twice).
    following: std::sync::atomic::AtomicBool,
}

/// One step of an alert, as the change stream tells it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AlertUpdate {
    pub event: store::EventKind,
    pub alert: Alert,
}

impl Alerts {
    /// Opens alerting over `store`: seeds the default rules into a new store, adds or replaces
    /// the rules of the rules file, and restores the engine's snapshot. Blocks (store I/O).
    pub fn open(
        store: Arc<dyn AlertStore>,
        config: AlertsConfig,
        file_rules: Vec<Rule>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        if store.meta(SEEDED)?.is_none() {
            for rule in rule::default_rules() {
                store.put_rule(&rule)?;
            }
            store.transact(&mut |tx| tx.put_meta(SEEDED, b"1"))?;
        }
        for rule in &file_rules {
            store.put_rule(rule)?;
        }
        let rules = store.rules()?;
        let mut engine = Engine::new(config.engine.clone(), rules.clone(), clock.now_us());
        let partitions = config.partitions.max(1);
        let mut skip_below = Vec::with_capacity(usize::from(partitions));
        for partition in 0..partitions {
            let snapshot = if config.spread {
                None
            } else {
                read_snapshot(&*store, partition, partitions)?
            };
            skip_below.push(std::sync::atomic::AtomicU64::new(
                snapshot.as_ref().map_or(0, |s| s.offset),
            ));
            if let Some(snapshot) = snapshot {
                engine.restore(snapshot);
            }
        }
        if !config.spread {
            engine.set_offline(open_absences(&*store, &rules, |_| true)?);
        }
        let store_silences = store.silences()?;
        let engine = Arc::new(Mutex::new(engine));
        let pending = Arc::new(Mutex::new(Vec::new()));
        let wake_writer = Arc::new(Notify::new());
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (to_evaluate, evaluated) = spawn_evaluator(&engine, &pending, &wake_writer, &sent)?;
        let alerts = Self {
            store,
            engine,
            pending,
            to_evaluate,
            sent,
            evaluated,
            routes: config.routes,
            escalations: config.escalations,
            clock,
            skip_below,
            silent_elsewhere: Mutex::new(None),
            flush_lock: Arc::new(tokio::sync::Mutex::new(())),
            wake_writer,
            wake_dispatcher: Arc::new(Notify::new()),
            tick: config.tick,
            history: (config.history, config.outbox_history),
            updates: Mutex::new(Some(tokio::sync::broadcast::channel(1024).0)),
            baselines: Mutex::new(None),
            absence_hold: Mutex::new(None),
            silences: Arc::new(parking_lot::RwLock::new(store_silences)),
            baseline_refresh: config.baseline_refresh,
            baselines_asked: Mutex::new(Default::default()),
            following: Default::default(),
        };
        alerts.publish_gauges();
        Ok(alerts)
    }

    pub fn store(&self) -> &Arc<dyn AlertStore> {
        &self.store
    }

    /// Wakes the dispatcher when the outbox has something new.
    pub fn dispatcher_wake(&self) -> Arc<Notify> {
        self.wake_dispatcher.clone()
    }

    /// Records what the engine found so far and wakes the dispatcher.
    pub async fn flush(&self) -> Result<()> {
        self.evaluated_all().await?;
        let _guard = self.flush_lock.lock().await;
        let changes = std::mem::take(&mut *self.pending.lock());
        if changes.is_empty() {
            return Ok(());
        }
        self.write(changes, None).await
    }

    /// Waits until the evaluation thread has evaluated every batch accepted so far.
    async fn evaluated_all(&self) -> Result<()> {
        let target = self.sent.load(std::sync::atomic::Ordering::Acquire);
        let mut evaluated = self.evaluated.clone();
        evaluated
            .wait_for(|done| *done >= target)
            .await
            .map(|_| ())
            .map_err(|_| Error::Storage("the alert evaluation thread stopped".into()))
    }

    /// Writes `changes` (and a snapshot) in one transaction; on failure puts them back.
    /// Records `changes`, and a partition's engine snapshot (its key and bytes) with them.
    async fn write(
        &self,
        changes: Vec<engine::Evaluated>,
        snapshot: Option<(String, Vec<u8>)>,
    ) -> Result<()> {
        let store = self.store.clone();
        let routes = self.routes.clone();
        let silences = self.silences.clone();
        let (changes, result) = tokio::task::spawn_blocking(move || {
            let mut updates = Vec::new();
            let result = {
                let silences = silences.read();
                let batch: Vec<(&lifecycle::Change, bool)> = changes
                    .iter()
                    .map(|c| {
                        let quiet = c.quiet || silences.iter().any(|s| s.covers(&c.change));
                        (&c.change, quiet)
                    })
                    .collect();
                store.transact(&mut |tx| {
                    updates = lifecycle::apply_all(tx, &batch, &routes)?
                        .into_iter()
                        .map(|(alert, event)| AlertUpdate { event, alert })
                        .collect();
                    if let Some((key, bytes)) = &snapshot {
                        tx.put_meta(key, bytes)?;
                    }
                    Ok(())
                })
            };
            (changes, result.map(|()| updates))
        })
        .await
        .map_err(|e| Error::Storage(e.to_string()))?;
        match result {
            Ok(updates) => {
                if !updates.is_empty() {
                    self.wake_dispatcher.notify_one();
                    let store = self.store.clone();
                    // A SQLite read: off the async runtime.
                    let _ = tokio::task::spawn_blocking(move || publish_gauges(&*store)).await;
                }
                for update in updates {
                    self.publish(update);
                }
                Ok(())
            }
            Err(e) => {
                let mut pending = self.pending.lock();
                let later = std::mem::replace(&mut *pending, changes);
                pending.extend(later);
                Err(e)
            }
        }
    }

    /// Counts a step and tells the subscribers of the change stream.
    fn publish(&self, update: AlertUpdate) {
        metrics::counter!(
            "hoistway_alert_events_total",
            "event" => update.event.as_str(),
            "severity" => update.alert.severity.as_str()
        )
        .increment(1);
        if let Some(updates) = &*self.updates.lock() {
            // No subscriber is not an error.
            let _ = updates.send(Arc::new(update));
        }
    }

    /// The stream of alert changes (for the UI's live view). A subscriber that falls more than
    /// 1,024 changes behind is told it lagged and should read the list again.
    /// After shutdown the receiver is closed at once.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<AlertUpdate>> {
        match &*self.updates.lock() {
            Some(updates) => updates.subscribe(),
            None => tokio::sync::broadcast::channel(1).1,
        }
    }

    /// For a node whose engine does not run (a query node): every `every`, publishes on the
    /// change stream each alert event the store recorded since (whichever node recorded it),
    /// until shutdown; then ends the streams.
    pub async fn follow(self: Arc<Self>, every: Duration, mut shutdown: watch::Receiver<bool>) {
        self.following
            .store(true, std::sync::atomic::Ordering::Release);
        let mut cursor = None;
        let mut failing = false;
        loop {
            let this = self.clone();
            match tokio::task::spawn_blocking(move || this.publish_recorded(cursor)).await {
                Ok(Ok(next)) => {
                    cursor = Some(next);
                    if std::mem::take(&mut failing) {
                        tracing::info!("reading alert changes works again");
                    }
                }
                Ok(Err(e)) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cannot read alert changes; retrying");
                }
                Ok(Err(_)) => {}
                Err(e) => tracing::error!(error = %e, "reading alert changes failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait_for(|s| *s) => {
                    self.end_streams();
                    return;
                }
            }
        }
    }

    /// Publishes the events recorded after `cursor` (none without one); returns the next cursor.
    fn publish_recorded(&self, cursor: Option<i64>) -> Result<i64> {
        let (next, events) = self.store.events_since(cursor, 1000)?;
        for event in &events {
            if let Some(alert) = self.store.alert(event.alert_id)? {
                self.publish(AlertUpdate {
                    event: event.kind,
                    alert,
                });
            }
        }
        if !events.is_empty() {
            self.publish_gauges();
        }
        Ok(next)
    }

    /// Ends the change streams (at shutdown), so that open ones do not hold it up.
    pub fn end_streams(&self) {
        self.updates.lock().take();
    }

    fn publish_gauges(&self) {
        publish_gauges(&*self.store);
    }

    /// Records changes as they come and evaluates time-based rules every tick, until
    /// shutdown (then records what is left).
    pub async fn run(self: Arc<Self>, presence: Presence, mut shutdown: watch::Receiver<bool>) {
        let mut next_tick = tokio::time::Instant::now() + self.tick;
        let mut next_prune = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_prune {
                next_prune = tokio::time::Instant::now() + Duration::from_secs(3600);
                self.prune().await;
            }
            tokio::select! {
                _ = self.wake_writer.notified() => {}
                _ = tokio::time::sleep_until(next_tick) => {
                    next_tick = tokio::time::Instant::now() + self.tick;
                    // 200,000 lifts to look at: off the async runtime.
                    let (this, presence) = (self.clone(), presence.clone());
                    let ticked = tokio::task::spawn_blocking(move || {
                        if let Err(e) = this.reread_shared() {
                            tracing::warn!(error = %e, "cannot read the alert rules and silences again; going on with those read last");
                        }
                        let lifts = presence();
                        let held = this.absence_hold.lock().as_ref().and_then(|hold| hold());
                        let elsewhere = this.silent_elsewhere.lock().as_ref().map_or(0, |f| f());
                        let mut out = Vec::new();
                        let mut engine = this.engine.lock();
                        engine.hold_absence(held);
                        engine.set_silent_elsewhere(elsewhere);
                        engine.tick(this.clock.now_us(), lifts, &mut out);
                        drop(engine);
                        this.pending.lock().extend(out);
                    })
                    .await;
                    if let Err(e) = ticked {
                        tracing::error!(error = %e, "alert tick failed");
                    }
                    self.refresh_baselines();
                    if let Err(e) = self.escalate().await {
                        tracing::error!(error = %e, "cannot escalate alerts; retrying");
                    }
                }
                _ = shutdown.changed() => {}
            }
            if let Err(e) = self.flush().await {
                tracing::error!(error = %e, "cannot record alert changes; retrying");
                metrics::counter!("hoistway_alert_write_failures_total").increment(1);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            if *shutdown.borrow() {
                self.end_streams();
                return;
            }
        }
    }

    /// Adds a silence (by `silence.by`); returns it with its id.
    pub fn add_silence(&self, mut silence: Silence) -> Result<Silence> {
        if silence.ends_us <= silence.starts_us {
            return Err(Error::Invalid("a silence must end after it starts".into()));
        }
        if silence.reason.trim().is_empty() {
            return Err(Error::Invalid("say why in `reason`".into()));
        }
        silence.id = self.store.add_silence(&silence)?;
        *self.silences.write() = self.store.silences()?;
        Ok(silence)
    }

    pub fn delete_silence(&self, id: i64) -> Result<bool> {
        let deleted = self.store.delete_silence(id)?;
        *self.silences.write() = self.store.silences()?;
        Ok(deleted)
    }

    pub fn silences(&self) -> Vec<Silence> {
        self.silences.read().clone()
    }

    /// What holds absence rules back while it gives a reason (an edge region whose lifts'
    /// readings may still be on their way).
    /// Where the outage guard learns how many lifts the engines of other processor nodes found
    /// newly silent (see [`engine::Engine::set_silent_elsewhere`]).
    pub fn set_silent_elsewhere(&self, elsewhere: SilentElsewhere) {
        *self.silent_elsewhere.lock() = Some(elsewhere);
    }

    /// How many lifts this engine found newly silent at its last tick (for the other nodes).
    pub fn silent_here(&self) -> usize {
        self.engine.lock().silent_here()
    }

    pub fn set_absence_hold(&self, hold: AbsenceHold) {
        *self.absence_hold.lock() = Some(hold);
    }

    /// Where rate rules get their baselines.
    pub fn set_baseline_source(&self, source: BaselineSource) {
        *self.baselines.lock() = Some(source);
    }

    /// Starts a refresh of each rate rule's baselines whose hour has passed; the rule judges
    /// no lift of the new hour until its refresh is in.
    fn refresh_baselines(self: &Arc<Self>) {
        let Some(source) = self.baselines.lock().clone() else {
            return;
        };
        let now = self.clock.now_us();
        let hour = now.div_euclid(engine::HOUR_US) * engine::HOUR_US;
        let refresh = self.baseline_refresh.as_micros() as i64;
        let due: Vec<_> = {
            let mut engine = self.engine.lock();
            let mut asked = self.baselines_asked.lock();
            let due: Vec<_> = engine
                .rate_rules()
                .into_iter()
                .filter(|(rule, _, _)| {
                    engine.baseline_hour(rule) != Some(hour)
                        || asked.get(rule).is_none_or(|at| now - at >= refresh)
                })
                .collect();
            for (rule, _, _) in &due {
                if engine.baseline_hour(rule) != Some(hour) {
                    engine.set_baselines(rule, hour, Default::default());
                }
                asked.insert(rule.clone(), now);
            }
            due
        };
        for (rule, counter, weeks) in due {
            let this = self.clone();
            let source = source.clone();
            tokio::spawn(async move {
                match source(counter, hour, weeks).await {
                    Ok(per_lift) => {
                        tracing::debug!(rule, lifts = per_lift.len(), "rate baselines");
                        this.engine.lock().set_baselines(&rule, hour, per_lift);
                    }
                    Err(e) => tracing::warn!(rule, error = %e, "no rate baselines this hour"),
                }
            });
        }
    }

    /// Escalates firing alerts nobody acknowledged in time.
    pub async fn escalate(&self) -> Result<()> {
        if self.escalations.is_empty() {
            return Ok(());
        }
        let now = self.clock.now_us();
        let store = self.store.clone();
        let escalations = self.escalations.clone();
        let escalated = tokio::task::spawn_blocking(move || {
            let firing = store.list(&AlertQuery {
                state: Some("firing".into()),
                limit: Some(1000),
                ..Default::default()
            })?;
            let mut escalated = Vec::new();
            store.transact(&mut |tx| {
                escalated.clear();
                for alert in &firing {
                    if lifecycle::escalate(tx, alert.id, &escalations, now)? {
                        escalated.push(alert.clone());
                    }
                }
                Ok(())
            })?;
            Ok::<_, Error>(escalated)
        })
        .await
        .map_err(|e| Error::Storage(e.to_string()))??;
        if !escalated.is_empty() {
            self.wake_dispatcher.notify_one();
        }
        for alert in escalated {
            self.publish(AlertUpdate {
                event: store::EventKind::Escalated,
                alert,
            });
        }
        Ok(())
    }

    /// Deletes history older than the retention periods.
    async fn prune(&self) {
        let now = self.clock.now_us();
        let (alerts, outbox) = self.history;
        let store = self.store.clone();
        let pruned = tokio::task::spawn_blocking(move || {
            store.prune(
                now - alerts.as_micros() as i64,
                now - outbox.as_micros() as i64,
            )
        })
        .await;
        match pruned {
            Ok(Ok((0, 0))) => {}
            Ok(Ok((alerts, notifications))) => {
                tracing::info!(alerts, notifications, "alert history pruned");
            }
            Ok(Err(e)) => tracing::error!(error = %e, "cannot prune alert history"),
            Err(e) => tracing::error!(error = %e, "cannot prune alert history"),
        }
    }

    /// Evaluates time-based rules now (tests drive the clock and call this).
    pub async fn tick_now(&self, presence: Vec<(Arc<LiftInfo>, Option<i64>)>) -> Result<()> {
        let mut out = Vec::new();
        self.engine
            .lock()
            .tick(self.clock.now_us(), presence, &mut out);
        self.pending.lock().extend(out);
        self.flush().await
    }

    // --- what people do -------------------------------------------------------------------

    /// Acknowledges (`resolve == false`) or resolves alert `id` as `by`.
    pub fn act(&self, id: i64, resolve: bool, by: &str, note: &str) -> Result<Alert> {
        let now = self.clock.now_us();
        let mut out = None;
        self.store.transact(&mut |tx| {
            out = Some(lifecycle::act(
                tx,
                id,
                resolve,
                by,
                note,
                now,
                &self.routes,
            )?);
            Ok(())
        })?;
        let alert = out.expect("set by the transaction");
        self.wake_dispatcher.notify_one();
        self.publish_gauges();
        let event = if resolve {
            store::EventKind::Resolved
        } else {
            store::EventKind::Acknowledged
        };
        if !self.following.load(std::sync::atomic::Ordering::Acquire) {
            self.publish(AlertUpdate {
                event,
                alert: alert.clone(),
            });
        }
        Ok(alert)
    }

    /// Adds or replaces a rule (validated); the engine uses it from the next reading on.
    pub fn put_rule(&self, rule: &Rule) -> Result<bool> {
        let problems = rule.validate();
        if !problems.is_empty() {
            return Err(Error::InvalidRule(problems));
        }
        let created = self.store.put_rule(rule)?;
        self.reload_rules()?;
        Ok(created)
    }

    pub fn delete_rule(&self, id: &str) -> Result<bool> {
        let deleted = self.store.delete_rule(id)?;
        self.reload_rules()?;
        Ok(deleted)
    }

    /// Takes the rules and silences as the store has them now: changes made through another
    /// node (a query node's API, in the cluster mode) reach this one's engine. Blocks.
    pub fn reread_shared(&self) -> Result<()> {
        let rules = self.store.rules()?;
        let silences = self.store.silences()?;
        if *self.silences.read() != silences {
            *self.silences.write() = silences;
        }
        let mut engine = self.engine.lock();
        if !engine.has_rules(&rules) {
            engine.set_rules(rules);
        }
        Ok(())
    }

    fn reload_rules(&self) -> Result<()> {
        let rules = self.store.rules()?;
        self.engine.lock().set_rules(rules);
        Ok(())
    }

    /// Sends a notification again (dead or delivered), with the same id; re-enables its
    /// channel if a 410 had disabled it.
    pub fn replay(&self, id: &str) -> Result<Notification> {
        let mut n = self
            .store
            .notification(id)?
            .ok_or_else(|| Error::NotFound(format!("notification {id:?} does not exist")))?;
        if n.state == DeliveryState::Pending {
            return Err(Error::Conflict(format!(
                "notification {id:?} is still pending"
            )));
        }
        self.store.set_channel_disabled(&n.channel, None)?;
        n.state = DeliveryState::Pending;
        n.attempts = 0;
        n.next_us = self.clock.now_us();
        n.last_error = None;
        n.delivered_us = None;
        self.store.update_notification(&n)?;
        self.wake_dispatcher.notify_one();
        Ok(n)
    }
}

/// Sets `hoistway_alerts_open{severity}` from the store.
fn publish_gauges(store: &dyn AlertStore) {
    if let Ok(counts) = store.open_counts(None) {
        for severity in Severity::ALL {
            let n = counts
                .iter()
                .find(|(s, _)| *s == severity)
                .map_or(0, |c| c.1);
            metrics::gauge!("hoistway_alerts_open", "severity" => severity.as_str()).set(n as f64);
        }
    }
}

type Evaluator = (
    std::sync::mpsc::SyncSender<(Arc<[hoistway_processor::SinkItem]>, i64)>,
    watch::Receiver<u64>,
);

/// The thread that runs the rules over accepted batches, in the order accepted.
fn spawn_evaluator(
    engine: &Arc<Mutex<Engine>>,
    pending: &Arc<Mutex<Vec<engine::Evaluated>>>,
    wake_writer: &Arc<Notify>,
    sent: &Arc<std::sync::atomic::AtomicU64>,
) -> Result<Evaluator> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<(Arc<[hoistway_processor::SinkItem]>, i64)>(64);
    let (done_tx, done_rx) = watch::channel(0u64);
    let (engine, pending, wake) = (engine.clone(), pending.clone(), wake_writer.clone());
    let sent = sent.clone();
    std::thread::Builder::new()
        .name("hoistway-alerts".into())
        .spawn(move || {
            let mut out = Vec::new();
            while let Ok((items, now)) = rx.recv() {
                {
                    let mut engine = engine.lock();
                    for item in items.iter() {
                        engine.evaluate(item, now, &mut out);
                    }
                }
                if !out.is_empty() {
                    pending.lock().append(&mut out);
                    wake.notify_one();
                }
                done_tx.send_modify(|done| *done += 1);
                // Batches accepted and not evaluated yet: how far the rules are behind.
                let behind = sent
                    .load(std::sync::atomic::Ordering::Acquire)
                    .saturating_sub(*done_tx.borrow());
                metrics::gauge!("hoistway_alerts_evaluation_queue").set(behind as f64);
            }
        })
        .map_err(|e| Error::Storage(format!("cannot start the alert evaluation thread: {e}")))?;
    Ok((tx, done_rx))
}

impl Alerts {
    /// The sink partition `partition`'s processor hands its readings to (with one partition,
    /// the `Alerts` itself is that sink). One engine evaluates every partition's readings, so
    /// absence and the fleet-wide outage guard see the whole fleet; at each partition's
    /// checkpoint the snapshot of that partition's lifts is written, at its offset.
    pub fn partition(self: &Arc<Self>, partition: u16) -> Arc<dyn Sink> {
        self.sink_of(partition)
    }

    /// Takes partition `partition` in (its processor starts on this node): restores the
    /// snapshot its last holder wrote at its last checkpoint, marks its lifts with an open
    /// absence alert offline, and returns its sink (records below the snapshot's offset are
    /// passed over on replay). Blocks (store reads).
    pub fn take_partition(self: &Arc<Self>, partition: u16) -> Result<Arc<dyn Sink>> {
        let partitions = self.skip_below.len() as u16;
        let sink = self.sink_of(partition);
        let ours = |lift: &str| partition_of_str(lift, partitions) == partition;
        let snapshot = read_snapshot(&*self.store, partition, partitions)?;
        let rules = self.store.rules()?;
        let offline = open_absences(&*self.store, &rules, ours)?;
        let mut engine = self.engine.lock();
        // Whatever an earlier hold of it left here is stale.
        engine.forget(ours);
        self.skip_below[usize::from(partition)].store(
            snapshot.as_ref().map_or(0, |s| s.offset),
            std::sync::atomic::Ordering::Release,
        );
        if let Some(snapshot) = snapshot {
            engine.restore(snapshot);
        }
        engine.set_offline(offline);
        Ok(sink)
    }

    /// Lets partition `partition` go (its processor stopped here; another node takes it over
    /// from its last checkpoint): forgets its lifts and drops the changes found for them and not
    /// recorded yet (its next holder finds them again from the snapshot on).
    pub fn drop_partition(&self, partition: u16) {
        let partitions = self.skip_below.len() as u16;
        let ours = |lift: &str| partition_of_str(lift, partitions) == partition;
        self.engine.lock().forget(ours);
        self.pending
            .lock()
            .retain(|c| c.change.lift_id.is_empty() || !ours(&c.change.lift_id));
    }

    fn sink_of(self: &Arc<Self>, partition: u16) -> Arc<dyn Sink> {
        assert!(
            usize::from(partition) < self.skip_below.len(),
            "partition {partition} of {}",
            self.skip_below.len()
        );
        Arc::new(PartitionSink {
            alerts: self.clone(),
            partition,
        })
    }

    fn accept_from(&self, partition: u16, batch: &SinkBatch) {
        if batch.offset
            < self.skip_below[usize::from(partition)].load(std::sync::atomic::Ordering::Acquire)
        {
            return;
        }
        // Only readings that counted reach the rules (the engine passes over the others); a
        // record of resends only is not sent at all.
        if !batch.items.iter().any(|i| i.counted) {
            return;
        }
        self.sent.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        // Bounded: when the rules fall behind, the processor waits rather than memory grows.
        if self
            .to_evaluate
            .send((batch.items.clone(), self.clock.now_us()))
            .is_err()
        {
            tracing::error!("the alert evaluation thread stopped; alerts are not evaluated");
        }
    }

    /// Takes the engine's snapshot of `partition`'s lifts at `through` (its processor applies
    /// nothing meanwhile) and the changes found so far; the finish writes both in one
    /// transaction (holding off other flushes until then, so changes are written in the order
    /// they were found).
    fn prepare_for(
        self: Arc<Self>,
        partition: u16,
        through: Offset,
    ) -> hoistway_processor::Prepare {
        Box::pin(async move {
            // Everything accepted below `through` is evaluated before the snapshot says so.
            self.evaluated_all()
                .await
                .map_err(|e| SinkError::new("alerts", through, e))?;
            let guard = self.flush_lock.clone().lock_owned().await;
            let (changes, snapshot) = {
                let engine = self.engine.lock();
                let changes = std::mem::take(&mut *self.pending.lock());
                let partitions = self.skip_below.len() as u16;
                let snapshot = if partitions == 1 {
                    engine.snapshot(through)
                } else {
                    engine.snapshot_of(through, |lift| {
                        partition_of_str(lift, partitions) == partition
                    })
                };
                (changes, (snapshot_key(partition, partitions), snapshot))
            };
            Ok(Box::pin(async move {
                let _guard = guard;
                let (key, snapshot) = snapshot;
                let bytes = serde_json::to_vec(&snapshot).expect("snapshot serialises");
                self.write(changes, Some((key, bytes)))
                    .await
                    .map_err(|e| SinkError::new("alerts", through, e))
            }) as hoistway_processor::Finish)
        })
    }
}

/// Partition `partition`'s engine snapshot, if one was written.
fn read_snapshot(
    store: &dyn AlertStore,
    partition: u16,
    partitions: u16,
) -> Result<Option<engine::Snapshot>> {
    let Some(bytes) = store.meta(&snapshot_key(partition, partitions))? else {
        return Ok(None);
    };
    let snapshot: engine::Snapshot = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Storage(format!("unreadable engine snapshot: {e}")))?;
    if snapshot.version > engine::SNAPSHOT_VERSION {
        return Err(Error::Storage(format!(
            "the engine snapshot has format {}; this build reads up to {}",
            snapshot.version,
            engine::SNAPSHOT_VERSION
        )));
    }
    Ok(Some(snapshot))
}

/// (rule, lift) of every open absence alert of the lifts `keep` selects.
fn open_absences(
    store: &dyn AlertStore,
    rules: &[Rule],
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<(String, String)>> {
    let mut open = Vec::new();
    for rule in rules
        .iter()
        .filter(|r| matches!(r.when, rule::Condition::Absence { .. }))
    {
        open.extend(
            store
                .open_of_rule(&rule.id)?
                .into_iter()
                .filter(|a| keep(&a.lift_id))
                .map(|a| (rule.id.clone(), a.lift_id)),
        );
    }
    Ok(open)
}

/// One partition's processor's sink into the shared [`Alerts`] ([`Alerts::partition`]).
struct PartitionSink {
    alerts: Arc<Alerts>,
    partition: u16,
}

impl Sink for PartitionSink {
    fn name(&self) -> &'static str {
        "alerts"
    }

    fn accept(&self, batch: &SinkBatch) {
        self.alerts.accept_from(self.partition, batch);
    }

    fn prepare(self: Arc<Self>, through: Offset) -> hoistway_processor::Prepare {
        self.alerts.clone().prepare_for(self.partition, through)
    }
}

/// With one partition, alerting is its sink.
impl Sink for Alerts {
    fn name(&self) -> &'static str {
        "alerts"
    }

    fn accept(&self, batch: &SinkBatch) {
        self.accept_from(0, batch);
    }

    fn prepare(self: Arc<Self>, through: Offset) -> hoistway_processor::Prepare {
        self.prepare_for(0, through)
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::Arc;

    use hoistway_model::{Direction, DoorState, LiftId, Reading};
    use hoistway_processor::{Counters, SinkItem};
    use hoistway_registry::LiftInfo;

    const US: i64 = 1_000_000;

    pub const T0: i64 = 1_700_000_000_000_000;

    pub fn lift(id: &str, customer: &str) -> Arc<LiftInfo> {
        let mut info = LiftInfo::new(LiftId::new(id).unwrap());
        info.customer = customer.into();
        info.building = format!("{customer}-b1");
        Arc::new(info)
    }

    pub fn reading(id: &str, seq: u64, temp: f32) -> Reading {
        Reading {
            lift_id: LiftId::new(id).unwrap(),
            epoch: 1,
            seq,
            ts_us: T0 + seq as i64 * 10 * US,
            received_us: T0 + seq as i64 * 10 * US,
            floor: 0,
            direction: Direction::Idle,
            door: DoorState::Closed,
            load_kg: None,
            speed_mps: None,
            motor_temp_c: Some(temp),
            vibration_mm_s: None,
            trips: 0,
            door_cycles: 0,
            faults: vec![],
            events: vec![],
            extra: Default::default(),
        }
    }

    pub fn item(r: Reading, lift: &Arc<LiftInfo>) -> SinkItem {
        SinkItem {
            reading: r,
            counted: true,
            counters: Counters::default(),
            lift: lift.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hoistway_model::{EventKind, ManualClock};
    use hoistway_processor::{Sink, SinkBatch};

    use super::*;
    use crate::test_support::{T0, item, lift, reading};

    #[tokio::test]
    async fn an_unacknowledged_critical_alert_escalates_once_and_subscribers_see_each_step() {
        let clock = Arc::new(ManualClock::new(T0));
        let store = Arc::new(SqliteAlertStore::in_memory().unwrap());
        let config = AlertsConfig {
            escalations: vec![Escalation {
                channel: "oncall".into(),
                min_severity: Severity::Critical,
                after_secs: 600,
            }],
            ..AlertsConfig::default()
        };
        let alerts = Alerts::open(store.clone(), config, vec![], clock.clone()).unwrap();
        let mut updates = alerts.subscribe();
        let trapped = |id: &str| {
            let mut r = reading(id, 1, 20.0);
            r.events = vec![EventKind::Entrapment];
            item(r, &lift(id, "acme"))
        };
        alerts.accept(&SinkBatch {
            offset: 0,
            items: vec![trapped("L1"), trapped("L2")].into(),
        });
        alerts.flush().await.unwrap();
        let open = store.list(&AlertQuery::default()).unwrap();
        assert_eq!(open.len(), 2);
        let l2 = open.iter().find(|a| a.lift_id == "L2").unwrap().id;
        alerts.act(l2, false, "olga", "").unwrap();

        let escalated = |store: &SqliteAlertStore| {
            store
                .notifications(None, 100)
                .unwrap()
                .into_iter()
                .filter(|n| n.channel == "oncall")
                .collect::<Vec<_>>()
        };
        clock.advance_secs(605); // the reading was received at T0 + 10 s
        alerts.escalate().await.unwrap();
        assert!(escalated(&store).is_empty(), "not yet due");
        clock.advance_secs(6);
        alerts.escalate().await.unwrap();
        alerts.escalate().await.unwrap();
        let sent = escalated(&store);
        assert_eq!(
            sent.len(),
            1,
            "once, and not for the acknowledged alert: {sent:?}"
        );
        assert_eq!(sent[0].event, store::EventKind::Escalated);
        assert_eq!(sent[0].payload["data"]["lift_id"], "L1");

        let mut seen = Vec::new();
        while let Ok(u) = updates.try_recv() {
            seen.push((u.event, u.alert.lift_id.clone()));
        }
        use store::EventKind as E;
        assert_eq!(
            seen,
            vec![
                (E::Fired, "L1".to_string()),
                (E::Fired, "L2".to_string()),
                (E::Acknowledged, "L2".to_string()),
                (E::Escalated, "L1".to_string()),
            ]
        );
    }

    /// Alerting on two nodes over one store.
    fn two_nodes() -> (Arc<SqliteAlertStore>, Alerts, Alerts) {
        let clock = Arc::new(ManualClock::new(T0));
        let store = Arc::new(SqliteAlertStore::in_memory().unwrap());
        let open = || {
            Alerts::open(
                store.clone(),
                AlertsConfig::default(),
                vec![],
                clock.clone(),
            )
            .unwrap()
        };
        let (a, b) = (open(), open());
        (store, a, b)
    }

    /// Rules and silences changed through another node's API reach the evaluating node at its
    /// next reread.
    #[tokio::test]
    async fn rules_and_silences_changed_elsewhere_reach_the_engine() {
        let (store, evaluating, elsewhere) = two_nodes();
        let mut changed = rule::default_rules().remove(0);
        changed.severity = Severity::Info;
        assert!(!elsewhere.put_rule(&changed).unwrap(), "replaced");
        let silence = elsewhere
            .add_silence(Silence {
                id: 0,
                rule: None,
                scope: Default::default(),
                starts_us: T0,
                ends_us: T0 + 3_600_000_000,
                by: "olga".into(),
                reason: "lift works".into(),
            })
            .unwrap();
        let rules = store.rules().unwrap();
        assert!(!evaluating.engine.lock().has_rules(&rules));
        assert!(evaluating.silences().is_empty());
        evaluating.reread_shared().unwrap();
        assert!(evaluating.engine.lock().has_rules(&rules));
        assert_eq!(evaluating.silences(), vec![silence]);
        assert!(elsewhere.delete_rule(&changed.id).unwrap());
        evaluating.reread_shared().unwrap();
        assert!(evaluating.engine.lock().has_rules(&store.rules().unwrap()));
        assert!(!evaluating.engine.lock().has_rules(&rules));
    }

    /// A node that follows the store (a query node) publishes what the evaluating node records,
    /// and its own acts once, from the store.
    #[tokio::test]
    async fn a_follower_publishes_each_recorded_change_once() {
        let (store, evaluating, follower) = two_nodes();
        follower
            .following
            .store(true, std::sync::atomic::Ordering::Release);
        let mut updates = follower.subscribe();
        let cursor = follower.publish_recorded(None).unwrap();
        let mut r = reading("L1", 1, 20.0);
        r.events = vec![EventKind::Entrapment];
        evaluating.accept(&SinkBatch {
            offset: 0,
            items: vec![item(r, &lift("L1", "acme"))].into(),
        });
        evaluating.flush().await.unwrap();
        let id = store.list(&AlertQuery::default()).unwrap()[0].id;
        follower.act(id, false, "olga", "").unwrap();
        assert!(updates.try_recv().is_err(), "nothing until read back");
        let cursor = follower.publish_recorded(Some(cursor)).unwrap();
        let mut seen = Vec::new();
        while let Ok(u) = updates.try_recv() {
            seen.push((u.event, u.alert.lift_id.clone(), u.alert.state));
        }
        use store::EventKind as E;
        assert_eq!(
            seen,
            vec![
                (E::Fired, "L1".to_string(), AlertState::Acknowledged),
                (E::Acknowledged, "L1".to_string(), AlertState::Acknowledged),
            ]
        );
        assert_eq!(follower.publish_recorded(Some(cursor)).unwrap(), cursor);
        assert!(updates.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_silenced_building_records_its_alerts_but_notifies_nobody() {
        let clock = Arc::new(ManualClock::new(T0));
        let store = Arc::new(SqliteAlertStore::in_memory().unwrap());
        let config = AlertsConfig {
            routes: vec![Route {
                channel: "ops".into(),
                min_severity: Severity::Info,
                customers: vec![],
                buildings: vec![],
                rules: vec![],
                events: vec![store::EventKind::Fired],
                quiet_hours: None,
            }],
            ..AlertsConfig::default()
        };
        let alerts = Alerts::open(store.clone(), config, vec![], clock.clone()).unwrap();
        let silence = alerts
            .add_silence(Silence {
                id: 0,
                rule: Some("entrapment".into()),
                scope: rule::Scope {
                    building: Some("acme-b1".into()),
                    ..Default::default()
                },
                starts_us: T0,
                ends_us: T0 + 3_600_000_000,
                by: "olga".into(),
                reason: "rescue drill".into(),
            })
            .unwrap();
        assert!(silence.id > 0);
        let trapped = |id: &str, customer: &str| {
            let mut r = reading(id, 1, 20.0);
            r.events = vec![EventKind::Entrapment];
            item(r, &lift(id, customer))
        };
        alerts.accept(&SinkBatch {
            offset: 0,
            items: vec![trapped("L1", "acme"), trapped("L2", "globex")].into(),
        });
        alerts.flush().await.unwrap();
        assert_eq!(
            store.list(&AlertQuery::default()).unwrap().len(),
            2,
            "both recorded"
        );
        let sent: Vec<i64> = store
            .notifications(None, 10)
            .unwrap()
            .iter()
            .map(|n| n.alert_id)
            .collect();
        let l2 = store
            .list(&AlertQuery {
                lift: Some("L2".into()),
                ..Default::default()
            })
            .unwrap()[0]
            .id;
        assert_eq!(sent, vec![l2], "only the lift outside the silence notifies");
        assert!(alerts.delete_silence(silence.id).unwrap());
        assert!(alerts.silences().is_empty());
    }

    #[tokio::test]
    async fn an_edited_rule_starts_over_without_a_second_open_alert() {
        let clock = Arc::new(ManualClock::new(T0));
        let store = Arc::new(SqliteAlertStore::in_memory().unwrap());
        let alerts = Alerts::open(store.clone(), AlertsConfig::default(), vec![], clock).unwrap();
        let hot = |seq| item(reading("L1", seq, 95.0), &lift("L1", "acme"));
        let feed = |alerts: &Alerts, seqs: std::ops::RangeInclusive<u64>| {
            for seq in seqs {
                alerts.accept(&SinkBatch {
                    offset: seq,
                    items: vec![hot(seq)].into(),
                });
            }
        };
        feed(&alerts, 1..=3);
        alerts.flush().await.unwrap();
        assert_eq!(store.list(&AlertQuery::default()).unwrap().len(), 1);
        // Two readings are enough now: the rule's state starts over and fires again, which
        // counts on the open alert.
        let mut edited = store
            .rules()
            .unwrap()
            .into_iter()
            .find(|r| r.id == "motor-hot")
            .unwrap();
        if let rule::Condition::Threshold { for_readings, .. } = &mut edited.when {
            *for_readings = 2;
        }
        assert!(!alerts.put_rule(&edited).unwrap(), "replaced, not new");
        feed(&alerts, 4..=5);
        alerts.flush().await.unwrap();
        let all = store.list(&AlertQuery::default()).unwrap();
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(all[0].refires, 1);
        // A bad rule is refused with its fields named.
        let mut bad = edited.clone();
        bad.id = "Bad Id".into();
        let Err(Error::InvalidRule(problems)) = alerts.put_rule(&bad) else {
            panic!("accepted a bad rule")
        };
        assert_eq!(problems[0].field, "id");
    }

    #[tokio::test]
    async fn records_before_the_snapshot_are_skipped_after_a_restart() {
        let clock = Arc::new(ManualClock::new(T0));
        let store: Arc<dyn AlertStore> = Arc::new(SqliteAlertStore::in_memory().unwrap());
        let alerts = Alerts::open(
            store.clone(),
            AlertsConfig::default(),
            vec![],
            clock.clone(),
        )
        .unwrap();
        let hot = |seq| item(reading("L1", seq, 95.0), &lift("L1", "acme"));
        for seq in 1..=2 {
            alerts.accept(&SinkBatch {
                offset: seq,
                items: vec![hot(seq)].into(),
            });
        }
        let alerts = Arc::new(alerts);
        hoistway_processor::sink::commit(alerts.clone(), 3)
            .await
            .unwrap();
        // A restart: records 1 and 2 are replayed (the processor's checkpoint was older); the
        // motor-hot rule counts them once, so the third reading fires it, not the first replay.
        let again = Alerts::open(store.clone(), AlertsConfig::default(), vec![], clock).unwrap();
        for seq in 1..=2 {
            again.accept(&SinkBatch {
                offset: seq,
                items: vec![hot(seq)].into(),
            });
        }
        again.flush().await.unwrap();
        assert!(store.list(&AlertQuery::default()).unwrap().is_empty());
        again.accept(&SinkBatch {
            offset: 3,
            items: vec![hot(3)].into(),
        });
        again.flush().await.unwrap();
        let fired = store.list(&AlertQuery::default()).unwrap();
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].rule, "motor-hot");
    }

    /// Two partitions, one engine: each partition's checkpoint writes the snapshot of its own
    /// lifts at its own offset, and after a restart each partition's replay is skipped up to its
    /// own snapshot only.
    #[tokio::test]
    async fn each_partition_keeps_its_own_snapshot() {
        let clock = Arc::new(ManualClock::new(T0));
        let store: Arc<dyn AlertStore> = Arc::new(SqliteAlertStore::in_memory().unwrap());
        let config = AlertsConfig {
            partitions: 2,
            ..AlertsConfig::default()
        };
        let of = |id: &str| partition_of_str(id, 2);
        let a = (0..)
            .map(|i| format!("A{i}"))
            .find(|id| of(id) == 0)
            .unwrap();
        let b = (0..)
            .map(|i| format!("B{i}"))
            .find(|id| of(id) == 1)
            .unwrap();
        let hot = |id: &str, seq| SinkBatch {
            offset: seq,
            items: vec![item(reading(id, seq, 95.0), &lift(id, "acme"))].into(),
        };
        let alerts =
            Arc::new(Alerts::open(store.clone(), config.clone(), vec![], clock.clone()).unwrap());
        let (zero, one) = (alerts.partition(0), alerts.partition(1));
        for seq in 1..=2 {
            zero.accept(&hot(&a, seq));
            one.accept(&hot(&b, seq));
        }
        // Partition 0 checkpoints through its record 3; partition 1 does not get to.
        zero.prepare(3).await.unwrap().await.unwrap();
        assert!(store.meta("engine_snapshot/0").unwrap().is_some());
        assert!(store.meta("engine_snapshot/1").unwrap().is_none());
        drop(one);

        // A restart replays both partitions from their checkpoints: partition 0's records 1
        // and 2 are in its snapshot (skipped, the lift's count restored), partition 1's are
        // evaluated again. Each lift's third hot reading fires the rule once.
        let again = Arc::new(Alerts::open(store.clone(), config, vec![], clock).unwrap());
        let (zero, one) = (again.partition(0), again.partition(1));
        for seq in 1..=2 {
            zero.accept(&hot(&a, seq));
            one.accept(&hot(&b, seq));
        }
        again.flush().await.unwrap();
        assert!(store.list(&AlertQuery::default()).unwrap().is_empty());
        zero.accept(&hot(&a, 3));
        one.accept(&hot(&b, 3));
        again.flush().await.unwrap();
        let mut fired: Vec<_> = store
            .list(&AlertQuery::default())
            .unwrap()
            .into_iter()
            .map(|alert| (alert.lift_id, alert.rule))
            .collect();
        fired.sort();
        assert_eq!(
            fired,
            [(a, "motor-hot".to_string()), (b, "motor-hot".to_string())]
        );
    }

    /// Processor nodes that spread the partitions: a partition handed from one node's engine
    /// to another's carries its lifts' rule state over in its snapshot, and the node that let
    /// it go forgets them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partition_moves_between_spread_engines_with_its_snapshot() {
        let clock = Arc::new(ManualClock::new(T0));
        let store: Arc<dyn AlertStore> = Arc::new(SqliteAlertStore::in_memory().unwrap());
        let config = AlertsConfig {
            partitions: 2,
            spread: true,
            ..AlertsConfig::default()
        };
        let of = |id: &str| partition_of_str(id, 2);
        let a = (0..)
            .map(|i| format!("A{i}"))
            .find(|id| of(id) == 0)
            .unwrap();
        let b = (0..)
            .map(|i| format!("B{i}"))
            .find(|id| of(id) == 1)
            .unwrap();
        let hot = |id: &str, seq| SinkBatch {
            offset: seq,
            items: vec![item(reading(id, seq, 95.0), &lift(id, "acme"))].into(),
        };
        let x =
            Arc::new(Alerts::open(store.clone(), config.clone(), vec![], clock.clone()).unwrap());
        let y = Arc::new(Alerts::open(store.clone(), config, vec![], clock).unwrap());
        let (x0, x1) = (x.take_partition(0).unwrap(), x.take_partition(1).unwrap());
        for seq in 1..=2 {
            x0.accept(&hot(&a, seq));
            x1.accept(&hot(&b, seq));
        }
        // Partition 1's last checkpoint on x, then it goes to y.
        x1.prepare(3).await.unwrap().await.unwrap();
        x.drop_partition(1);
        let y1 = y.take_partition(1).unwrap();
        // y replays from the checkpoint: what is in the snapshot is passed over.
        for seq in 1..=2 {
            y1.accept(&hot(&b, seq));
        }
        y.flush().await.unwrap();
        assert!(store.list(&AlertQuery::default()).unwrap().is_empty());
        // The third hot reading of each lift fires, each on the node holding its partition.
        x0.accept(&hot(&a, 3));
        y1.accept(&hot(&b, 3));
        x.flush().await.unwrap();
        y.flush().await.unwrap();
        let mut fired: Vec<_> = store
            .list(&AlertQuery::default())
            .unwrap()
            .into_iter()
            .map(|alert| (alert.lift_id, alert.rule))
            .collect();
        fired.sort();
        assert_eq!(
            fired,
            [
                (a, "motor-hot".to_string()),
                (b.clone(), "motor-hot".to_string())
            ]
        );
        // x forgot partition 1's lifts: its snapshots hold only its own.
        assert!(
            x.engine
                .lock()
                .snapshot(0)
                .lifts
                .iter()
                .all(|(id, _, _)| *id != b)
        );
    }
}
