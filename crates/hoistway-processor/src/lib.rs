//! The processor: consumes the log in order and owns every lift's state.
//!
//! In: [`LogBatch`](hoistway_ingest::LogBatch) records from a [`Log`], from the offset of the last
//! checkpoint. Out: [`FleetState`] (latest state, exact lifetime counters, the authoritative
//! dedup index) shared with the API through [`Fleet`]; dead letters; applied readings handed to
//! every [`Sink`] (storage and alerting stand there); log truncation behind checkpoints.
//!
//! Records come from the sequencer's in-memory [`Feed`] once they are durable (decoded once, on
//! the request's task), and from the log itself after a restart or wherever the feed has a gap:
//! the log stays the recovery path, the feed only saves reading back and decoding what was just
//! written.
//!
//! State and the offset it reflects are checkpointed together, so after a crash the processor
//! loads the checkpoint and replays the log from that offset: every reading is applied exactly
//! once across any crash. It does not parse HTTP, does not write the log and does not store raw
//! readings.

pub mod checkpoint;
pub mod conformance;
pub mod membership;
pub mod sink;
pub mod state;
pub mod store;
mod view;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hoistway_dlq::{DeadLetter, Reason};
use hoistway_ingest::record::decode_record;
use hoistway_ingest::{DurableRecord, Feed, LogBatch, RecordError};
use hoistway_log::{Log, Offset, Record};
use hoistway_model::DedupWindow;
use hoistway_registry::{LiftInfo, Registry};
use parking_lot::RwLock;
use tokio::sync::watch;

pub use membership::{Alone, Member, Membership, share};
pub use sink::{Counters, Finish, Prepare, Sink, SinkBatch, SinkError, SinkItem};
pub use state::{Applied, FleetState, LiftState};
pub use store::{CheckpointStore, Claim, Claimed, Commit, FileCheckpointStore, Lease, StoreError};
pub use view::{Fleet, FleetSummary, LiftStatus, LiftView, ListQuery, Page};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Log(#[from] hoistway_log::Error),
    #[error(transparent)]
    Registry(#[from] hoistway_registry::Error),
    #[error("log record at offset {offset} cannot be applied: {source}")]
    Record { offset: Offset, source: RecordError },
    #[error("checkpoint failed: {0}")]
    Checkpoint(String),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "checkpoint is at offset {checkpoint} but the log starts at {log_start}: the log was truncated past it"
    )]
    Gap {
        checkpoint: Offset,
        log_start: Offset,
    },
    #[error(
        "checkpoint is at offset {checkpoint} but the log ends at {log_end}: the checkpoint was taken over another log (a data dir moved between the file log and a JetStream stream?)"
    )]
    AheadOfLog { checkpoint: Offset, log_end: Offset },
    #[error("i/o failed: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    /// The partition processed (a standalone server has one, partition 0)…
    pub partition: u16,
    /// … of this many (recorded in each checkpoint).
    pub partitions: u16,
    pub window: DedupWindow,
    pub checkpoint_interval: Duration,
    /// Register unknown lifts on their first reading instead of dead-lettering them.
    pub auto_register: bool,
    pub read_batch_bytes: usize,
    /// The checkpoint format written ([`checkpoint::VERSION_MIN`] to [`checkpoint::VERSION`]).
    pub checkpoint_format: u32,
    /// With the sequencer's feed: how long the feed stays quiet before the log is read for
    /// records the feed does not carry (another writer's: ingest nodes, edge regions). Records
    /// between two fed groups are read at once; this bounds the wait when no group comes.
    pub idle_read_after: Duration,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            partition: 0,
            partitions: 1,
            window: DedupWindow::default(),
            checkpoint_interval: Duration::from_secs(10),
            auto_register: false,
            read_batch_bytes: 1 << 20,
            checkpoint_format: checkpoint::VERSION,
            idle_read_after: Duration::from_millis(500),
        }
    }
}

/// Counters of what the processor did, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub offset: Offset,
    pub applied: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
    pub last_checkpoint_offset: Offset,
    /// When state was last known to be on disk (a checkpoint, or the recovery that loaded one).
    pub last_checkpoint_at: Instant,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            offset: 0,
            applied: 0,
            duplicates: 0,
            dead_lettered: 0,
            last_checkpoint_offset: 0,
            last_checkpoint_at: Instant::now(),
        }
    }
}

pub struct Processor {
    config: ProcessorConfig,
    log: Arc<dyn Log>,
    registry: Arc<Registry>,
    store: Arc<dyn CheckpointStore>,
    /// This processor's epoch on its partition (from its claim): every commit carries it.
    epoch: u64,
    state: Arc<RwLock<FleetState>>,
    sinks: Vec<Arc<dyn Sink>>,
    feed: Option<Feed>,
    /// Records taken off the feed and not applied yet, in offset order.
    fed: VecDeque<DurableRecord>,
    pending_dead: Vec<DeadLetter>,
    pending_dead_from: Option<Offset>,
    progress: watch::Sender<Progress>,
    last_checkpoint: Instant,
    /// The checkpoint being written while later records are applied.
    in_flight: Option<InFlight>,
    gate: CheckpointGate,
}

/// Held while something copies what checkpoints write (a backup): a checkpoint's second phase
/// (the sinks' commits, dead letters, state, log truncation) does not run meanwhile, so the
/// checkpoint file, the dead letters and each sink's committed state all describe the same
/// offset. Records keep being applied; only their checkpoint waits.
#[derive(Clone, Default)]
pub struct CheckpointGate(Arc<tokio::sync::Mutex<()>>);

impl CheckpointGate {
    /// Waits for a checkpoint being written to finish, then holds off the next.
    pub async fn hold(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.0.clone().lock_owned().await
    }
}

/// A checkpoint whose second phase (sinks' finishes, dead letters, state, log truncation) runs
/// on a task of its own.
struct InFlight {
    offset: Offset,
    started: Instant,
    /// Its dead letters (first offset, letters): pending again if it fails.
    dead: Option<(Offset, Vec<DeadLetter>)>,
    /// The bytes of state written.
    task: tokio::task::JoinHandle<Result<usize>>,
}

impl Processor {
    /// Starts from `claim` (the partition's, from [`claim_partition`] on `store`): its last
    /// checkpoint, then replays the log to its durable end, so that the returned processor's
    /// state covers everything already acknowledged.
    pub async fn recover(
        config: ProcessorConfig,
        log: Arc<dyn Log>,
        registry: Arc<Registry>,
        store: Arc<dyn CheckpointStore>,
        claim: Claim,
        sinks: Vec<Arc<dyn Sink>>,
    ) -> Result<Self> {
        let epoch = claim.epoch;
        // Other writers (the previous holder) appended since this node opened the log.
        log.refresh().await?;
        let state = claim.state.unwrap_or_else(|| FleetState {
            offset: log.start(),
            ..Default::default()
        });
        if state.offset < log.start() {
            return Err(Error::Gap {
                checkpoint: state.offset,
                log_start: log.start(),
            });
        }
        // A checkpoint only ever covers durable records: one past the log's end was taken
        // over another log (the data dir moved between the file log and a JetStream stream).
        if state.offset > log.durable_end() {
            return Err(Error::AheadOfLog {
                checkpoint: state.offset,
                log_end: log.durable_end(),
            });
        }
        let from = state.offset;
        let progress = Progress {
            offset: from,
            last_checkpoint_offset: from,
            ..Default::default()
        };
        let mut processor = Processor {
            config,
            log,
            registry,
            store,
            epoch,
            state: Arc::new(RwLock::new(state)),
            sinks,
            feed: None,
            fed: VecDeque::new(),
            pending_dead: Vec::new(),
            pending_dead_from: None,
            progress: watch::Sender::new(progress),
            last_checkpoint: Instant::now(),
            in_flight: None,
            gate: CheckpointGate::default(),
        };
        let started = Instant::now();
        let end = processor.log.durable_end();
        while processor.offset() < end {
            processor.step().await?;
        }
        tracing::info!(
            partition = processor.config.partition,
            epoch,
            checkpoints = %processor.store.describe(),
            from,
            to = end,
            lifts = processor.state.read().lifts.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "processor recovered"
        );
        Ok(processor)
    }

    pub fn offset(&self) -> Offset {
        self.state.read().offset
    }

    /// Takes records from the sequencer's feed (see [`hoistway_ingest::feed`]) instead of
    /// reading back what was just written; the log still fills any gap.
    /// The gate a backup holds while it copies what checkpoints write.
    pub fn checkpoint_gate(&self) -> CheckpointGate {
        self.gate.clone()
    }

    pub fn with_feed(mut self, feed: Feed) -> Self {
        self.feed = Some(feed);
        self
    }

    pub fn state(&self) -> &Arc<RwLock<FleetState>> {
        &self.state
    }

    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Applies the next records that are durable, from the feed if it holds the next offset,
    /// otherwise from the log; returns how many.
    pub async fn step(&mut self) -> Result<usize> {
        self.step_from(true).await
    }

    /// One step; with `log_when_idle` false an empty feed waits for the sequencer instead of
    /// reading the log: its records are durable a moment before they are fed, and reading them
    /// back then is the work the feed saves.
    async fn step_from(&mut self, log_when_idle: bool) -> Result<usize> {
        let from = self.offset();
        let records = match self.take_fed(from) {
            Fed::Next(fed) => fed,
            Fed::Idle if !log_when_idle => return Ok(0),
            Fed::Idle | Fed::Gap => self
                .log
                .read(from, self.config.read_batch_bytes)
                .await?
                .into_iter()
                .map(Input::Encoded)
                .collect(),
        };
        if records.is_empty() {
            return Ok(0);
        }
        let n = records.len();
        self.apply_records(records).await?;
        Ok(n)
    }

    /// The fed records that continue from `from`, if the feed holds it.
    fn take_fed(&mut self, from: Offset) -> Fed {
        if let Some(feed) = &mut self.feed {
            while let Ok(group) = feed.try_recv() {
                self.fed.extend(group);
            }
        }
        while self.fed.front().is_some_and(|r| r.offset < from) {
            self.fed.pop_front();
        }
        if self.fed.len() > MAX_FED_RECORDS {
            // Far behind the feed (a long gap read from the log): let go of it; the log has it.
            self.fed.clear();
        }
        match self.fed.front() {
            None => return Fed::Idle,
            // A later group came, so the one holding `from` was dropped: the log has it.
            Some(r) if r.offset != from => return Fed::Gap,
            Some(_) => {}
        }
        let mut out = Vec::new();
        let mut readings = 0;
        let mut next = from;
        while let Some(r) = self.fed.front()
            && r.offset == next
            && readings < MAX_FED_READINGS_PER_STEP
        {
            let r = self.fed.pop_front().expect("front exists");
            readings += r.batch.readings.len();
            next += 1;
            out.push(Input::Decoded(r));
        }
        Fed::Next(out)
    }

    async fn apply_records(&mut self, records: Vec<Input>) -> Result<()> {
        let state = self.state.clone();
        let registry = self.registry.clone();
        let sinks = self.sinks.clone();
        let window = self.config.window;
        let auto_register = self.config.auto_register;
        let (dead, mut delta) = tokio::task::spawn_blocking(move || {
            apply_blocking(&state, &registry, &sinks, records, &window, auto_register)
        })
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        if !dead.is_empty() {
            self.pending_dead_from.get_or_insert(dead[0].offset);
            self.pending_dead.extend(dead);
        }
        let offset = self.offset();
        self.progress.send_modify(|p| {
            delta.offset = offset;
            p.offset = offset;
            p.applied += delta.applied;
            p.duplicates += delta.duplicates;
            p.dead_lettered += delta.dead_lettered;
        });
        metrics::counter!("hoistway_processor_readings_total", "outcome" => "applied")
            .increment(delta.applied);
        metrics::counter!("hoistway_processor_readings_total", "outcome" => "duplicate")
            .increment(delta.duplicates);
        metrics::counter!("hoistway_processor_readings_total", "outcome" => "dead_lettered")
            .increment(delta.dead_lettered);
        Ok(())
    }

    /// A whole checkpoint: writes pending dead letters, then state + offset, then lets the log
    /// drop what is covered; returns once all of it is done. On failure (a full disk) nothing is
    /// lost: the dead letters stay pending, a dead-letter file written for this attempt is
    /// removed, and the previous checkpoint stays valid.
    pub async fn checkpoint(&mut self) -> Result<()> {
        if let Err(e) = self.end_checkpoint().await {
            tracing::warn!(error = %e, "the previous checkpoint failed; writing a new one");
        }
        self.begin_checkpoint().await?;
        self.end_checkpoint().await
    }

    /// The first phase of a checkpoint at the current offset: each sink takes its share (see
    /// [`Sink::prepare`]) and state is encoded, while nothing is applied; the rest (the sinks'
    /// finishes, then dead letters, then state, then truncating the log) runs on a task while
    /// the processor applies what follows. Waits for a checkpoint still in flight first.
    async fn begin_checkpoint(&mut self) -> Result<()> {
        self.end_checkpoint().await?;
        let started = Instant::now();
        let offset = self.offset();
        let mut finishes = Vec::with_capacity(self.sinks.len());
        for sink in &self.sinks {
            match sink.clone().prepare(offset).await {
                Ok(finish) => finishes.push(finish),
                Err(e) => {
                    // What the others took is written (a sink ahead of state is replayed
                    // to, which it tolerates); only state waits for the next checkpoint.
                    finish_all(finishes).await.ok();
                    return Err(e.into());
                }
            }
        }
        let dead = self
            .pending_dead_from
            .take()
            .map(|first| (first, std::mem::take(&mut self.pending_dead)));
        let state = self.state.clone();
        let (format, partition, partitions) = (
            self.config.checkpoint_format,
            self.config.partition,
            self.config.partitions,
        );
        let bytes = tokio::task::spawn_blocking(move || {
            checkpoint::encode_partition(&state.read(), format, partition, partitions)
        })
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        let store = self.store.clone();
        let (partition, epoch) = (self.config.partition, self.epoch);
        let log = self.log.clone();
        let letters = dead.clone();
        let gate = self.gate.clone();
        let task = tokio::spawn(async move {
            let _gate = gate.hold().await;
            finish_all(finishes).await?;
            let len = bytes.len();
            tokio::task::spawn_blocking(move || {
                store.commit(&Commit {
                    partition,
                    epoch,
                    offset,
                    state: &bytes,
                    dead: letters
                        .as_ref()
                        .map(|(first, letters)| (*first, offset.saturating_sub(1), &letters[..])),
                })
            })
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??;
            log.truncate_before(offset).await?;
            Ok(len)
        });
        self.in_flight = Some(InFlight {
            offset,
            started,
            dead,
            task,
        });
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Waits for the checkpoint in flight, if any, and records its outcome; if it failed, its
    /// dead letters are pending again, ahead of the newer ones.
    async fn end_checkpoint(&mut self) -> Result<()> {
        let Some(flight) = self.in_flight.take() else {
            return Ok(());
        };
        let result = flight
            .task
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))
            .and_then(|r| r);
        match result {
            Ok(bytes) => {
                let offset = flight.offset;
                self.progress.send_modify(|p| {
                    p.last_checkpoint_offset = offset;
                    p.last_checkpoint_at = Instant::now();
                });
                metrics::gauge!("hoistway_processor_checkpoint_bytes").set(bytes as f64);
                metrics::histogram!("hoistway_processor_checkpoint_seconds")
                    .record(flight.started.elapsed().as_secs_f64());
                tracing::debug!(offset, bytes, "checkpoint written");
                Ok(())
            }
            Err(e) => {
                if let Some((first, mut letters)) = flight.dead {
                    letters.append(&mut self.pending_dead);
                    self.pending_dead = letters;
                    self.pending_dead_from = Some(first);
                }
                Err(e)
            }
        }
    }

    /// Applies records as they become durable until `shutdown` fires, checkpointing on the
    /// configured interval and once more on the way out.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let mut quiet = false;
        // Reads failing since this moment (an outage of a distributed log): warned once.
        let mut unreachable_since: Option<Instant> = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            // Fed: the log is read only where the feed has a gap, or after it stayed quiet
            // while the log moved on (a group dropped at the end of a burst).
            let n = match self.step_from(self.feed.is_none() || quiet).await {
                Ok(n) => {
                    if let Some(since) = unreachable_since.take() {
                        tracing::info!(
                            after_ms = since.elapsed().as_millis() as u64,
                            "reading the log works again"
                        );
                    }
                    n
                }
                // A distributed log's servers out of reach: nothing is wrong with the data,
                // so wait and read again rather than stop (a file log never says this).
                Err(Error::Log(e)) if e.is_transient() => {
                    if unreachable_since.is_none() {
                        tracing::warn!(error = %e, "reading the log failed; retrying until it works");
                        unreachable_since = Some(Instant::now());
                    }
                    metrics::counter!("hoistway_processor_log_read_retries_total").increment(1);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            quiet = false;
            let ended = self
                .in_flight
                .as_ref()
                .is_some_and(|f| f.task.is_finished());
            let due = self.in_flight.is_none()
                && self.last_checkpoint.elapsed() >= self.config.checkpoint_interval;
            let outcome = if ended {
                self.end_checkpoint().await
            } else if due {
                self.begin_checkpoint().await
            } else {
                Ok(())
            };
            if let Err(e) = outcome {
                if let Error::Store(StoreError::Fenced { .. }) = e {
                    // Another processor owns the partition now: applying more here would
                    // only diverge from it.
                    metrics::counter!("hoistway_processor_fenced_total").increment(1);
                    return Err(e);
                }
                // Not fatal: the log still holds everything since the last good checkpoint.
                tracing::error!(error = %e, "checkpoint failed; retrying at the next interval");
                metrics::counter!("hoistway_processor_checkpoint_failures_total").increment(1);
                self.last_checkpoint = Instant::now();
            }
            if n == 0 {
                let at = self.offset();
                match &mut self.feed {
                    // Fed: the sequencer sends every durable group; the timeout picks up a
                    // group it could not send (its channel was full) from the log.
                    Some(feed) => tokio::select! {
                        group = feed.recv() => match group {
                            Some(group) => self.fed.extend(group),
                            // The sequencer is gone: nothing new will be appended.
                            None => self.feed = None,
                        },
                        _ = tokio::time::sleep(self.config.idle_read_after) => quiet = true,
                        _ = shutdown.changed() => {}
                    },
                    None => tokio::select! {
                        _ = self.log.wait_for_data(at, Duration::from_millis(500)) => {}
                        _ = shutdown.changed() => {}
                    },
                }
            }
        }
        // Drain what is durable, then checkpoint, so a clean restart replays nothing.
        while self.step().await? > 0 {}
        self.checkpoint().await
    }

    /// This processor's epoch on its partition.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

/// Claims `partition` in `store` for `lease`, waiting (and saying who holds it) while another
/// holder's lease runs or the store is out of reach.
pub async fn claim_partition(
    store: Arc<dyn CheckpointStore>,
    partition: u16,
    lease: Lease,
) -> Result<Claim> {
    let mut said: Option<Instant> = None;
    loop {
        let (s, l) = (store.clone(), lease.clone());
        let claimed = tokio::task::spawn_blocking(move || s.claim(partition, &l))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        let wait = match claimed {
            Ok(Claimed::Granted(claim)) => return Ok(claim),
            Ok(Claimed::Held { holder, remaining }) => {
                if said.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
                    tracing::info!(
                        partition,
                        holder = %holder,
                        lease_remaining_ms = remaining.as_millis() as u64,
                        "the partition is another processor's; waiting to take it over when its lease lapses"
                    );
                    said = Some(Instant::now());
                }
                remaining.clamp(Duration::from_millis(100), Duration::from_secs(1))
            }
            Err(StoreError::Unavailable(why)) => {
                if said.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
                    tracing::warn!(partition, error = %why, "cannot claim the partition yet; retrying");
                    said = Some(Instant::now());
                }
                Duration::from_secs(1)
            }
            Err(e) => return Err(e.into()),
        };
        tokio::time::sleep(wait).await;
    }
}

/// Renews the lease of the claim that got `epoch` every third of `ttl` until `shutdown`; returns
/// an error once another claim took the partition.
///
/// While the store is out of reach the lease cannot be renewed, but nobody else can claim the
/// partition either (claims go through the same store), so processing goes on and renewals are
/// retried; once the store answers again, either the renewal goes through or a claim that came
/// first (the lease had lapsed) fences this processor.
pub async fn keep_lease(
    store: Arc<dyn CheckpointStore>,
    partition: u16,
    epoch: u64,
    ttl: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ttl / 3) => {}
            _ = shutdown.changed() => return Ok(()),
        }
        if *shutdown.borrow() {
            return Ok(());
        }
        let s = store.clone();
        let outcome = tokio::task::spawn_blocking(move || s.renew(partition, epoch, ttl))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        match outcome {
            Ok(()) => {
                if failing {
                    tracing::info!(partition, "the partition's lease is renewed again");
                    failing = false;
                }
            }
            Err(e @ StoreError::Fenced { .. }) => return Err(e.into()),
            Err(e) => {
                if !failing {
                    tracing::warn!(partition, error = %e, "cannot renew the partition's lease; retrying");
                    failing = true;
                }
                metrics::counter!("hoistway_processor_lease_renewal_failures_total").increment(1);
            }
        }
    }
}

/// Runs every finish to its end, side by side (the alerts' short write must not wait behind a
/// Parquet flush: it holds back the alert writer until done), even when one fails (each keeps
/// what it took only when it runs); returns the first failure.
async fn finish_all(finishes: Vec<Finish>) -> Result<()> {
    let tasks: Vec<_> = finishes.into_iter().map(tokio::spawn).collect();
    let mut failed = None;
    for task in tasks {
        let outcome = match task.await {
            Ok(outcome) => outcome.map_err(Error::from),
            Err(e) => Err(Error::Io(std::io::Error::other(e))),
        };
        if let Err(e) = outcome {
            failed.get_or_insert(e);
        }
    }
    failed.map_or(Ok(()), Err)
}

/// What the feed holds for the next offset.
enum Fed {
    /// The records that continue from it.
    Next(Vec<Input>),
    /// Nothing yet.
    Idle,
    /// Later records only: the ones before them must come from the log.
    Gap,
}

/// A record to apply: as read from the log, or as fed by the sequencer (already decoded).
enum Input {
    Encoded(Record),
    Decoded(DurableRecord),
}

/// Most records held off the feed while the processor reads a gap from the log.
const MAX_FED_RECORDS: usize = 65_536;
/// Readings taken off the feed in one step (one state lock, one blocking task).
const MAX_FED_READINGS_PER_STEP: usize = 50_000;

fn apply_blocking(
    state: &RwLock<FleetState>,
    registry: &Registry,
    sinks: &[Arc<dyn Sink>],
    records: Vec<Input>,
    window: &DedupWindow,
    auto_register: bool,
) -> Result<(Vec<DeadLetter>, Progress)> {
    let mut dead = Vec::new();
    let mut delta = Progress::default();
    let mut batches: Vec<SinkBatch> = Vec::new();
    // Each reading's lift, looked up before the state lock is taken.
    let lifts_of = |batch: &LogBatch| -> Vec<Option<Arc<LiftInfo>>> {
        batch
            .readings
            .iter()
            .map(|r| registry.get(r.lift_id.as_str()))
            .collect()
    };
    let mut decoded: Vec<_> = records
        .into_iter()
        .map(|input| {
            let (offset, batch) = match input {
                Input::Encoded(record) => (record.offset, decode_record(&record.payload)),
                Input::Decoded(fed) => (fed.offset, Ok(fed.batch)),
            };
            let lifts = batch.as_ref().map_or_else(|_| Vec::new(), lifts_of);
            (offset, batch, lifts)
        })
        .collect();
    // A lift this node does not know may have been registered through another node since it
    // last read the registry (a lift added on a query node just before it reported, one added
    // while its readings waited in the log): read it again before dead-lettering. Always when
    // the last read began before such a reading was received (with a margin for the clocks of
    // the node that received it and this one), reads at least 100 ms apart; otherwise (a
    // backlog of older readings) at most once a second.
    let unknown_received = decoded
        .iter()
        .filter_map(|(_, batch, lifts)| {
            let batch = batch.as_ref().ok()?;
            batch
                .readings
                .iter()
                .zip(lifts)
                .filter(|(_, lift)| lift.is_none())
                .map(|(r, _)| r.received_us)
                .max()
        })
        .max();
    if let Some(received_us) = unknown_received.filter(|_| !auto_register) {
        const CLOCKS_APART_US: i64 = 2_000_000;
        match registry
            .refresh_if_read_before(
                received_us.saturating_add(CLOCKS_APART_US),
                Duration::from_millis(100),
            )
            .and_then(|_| registry.refresh_if_older(Duration::from_secs(1)))
        {
            // Looked up again even when this read found nothing new: another partition's
            // processor or the periodic reread may have just taken the lift in.
            Ok(_) => {
                for (_, batch, lifts) in &mut decoded {
                    if let Ok(batch) = batch
                        && lifts.iter().any(Option::is_none)
                    {
                        *lifts = lifts_of(batch);
                    }
                }
            }
            Err(e) => tracing::warn!(
                error = %e,
                "cannot read the lift registry again; readings of lifts it does not list are dead-lettered"
            ),
        }
    }
    {
        let mut guard = state.write();
        for (offset, decoded, lifts) in decoded {
            // Offsets increase; with several writers they need not be consecutive.
            debug_assert!(offset >= guard.offset);
            let batch: LogBatch = match decoded {
                Ok(b) => b,
                Err(RecordError::Removed) => {
                    // An operator chose to lose this record with `hoistway log repair`.
                    tracing::warn!(offset, "log record removed by repair skipped");
                    metrics::counter!("hoistway_processor_removed_records_total").increment(1);
                    guard.offset = offset + 1;
                    continue;
                }
                Err(source) => {
                    // The checksum held, so this is a record of a format this build does not
                    // read (a newer release wrote it) or a bug: stop rather than lose it.
                    return Err(Error::Record { offset, source });
                }
            };
            let mut items = Vec::with_capacity(batch.readings.len());
            for (reading, lift) in batch.readings.into_iter().zip(lifts) {
                let lift = match lift {
                    Some(lift) => lift,
                    None if auto_register => registry.insert_if_absent(&reading.lift_id)?,
                    None => {
                        delta.dead_lettered += 1;
                        dead.push(DeadLetter::new(Reason::UnregisteredLift, offset, reading));
                        continue;
                    }
                };
                let counted = match guard.apply(&reading, window) {
                    Applied::New => {
                        delta.applied += 1;
                        true
                    }
                    Applied::Duplicate => {
                        delta.duplicates += 1;
                        false
                    }
                    Applied::OutsideWindow => {
                        delta.dead_lettered += 1;
                        dead.push(DeadLetter::new(Reason::OutsideDedupWindow, offset, reading));
                        continue;
                    }
                };
                if !sinks.is_empty() {
                    let counters = guard
                        .lifts
                        .get(&reading.lift_id)
                        .map(|s| s.counters(lift.initial_trips))
                        .unwrap_or_default();
                    items.push(SinkItem {
                        reading,
                        counted,
                        counters,
                        lift,
                    });
                }
            }
            guard.offset = offset + 1;
            if !items.is_empty() {
                batches.push(SinkBatch {
                    offset,
                    items: items.into(),
                });
            }
        }
    }
    // Outside the state lock: the API reads state while sinks take their copy.
    for batch in &batches {
        for sink in sinks {
            sink.accept(batch);
        }
    }
    Ok((dead, delta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hoistway_dlq::DeadLetterQueue;
    use hoistway_ingest::record::{encode_reading, encode_record};
    use hoistway_log::{FileLog, FileLogConfig};
    use hoistway_model::{LiftId, Reading};

    use crate::state::tests::reading;

    fn record(readings: &[Reading]) -> bytes::Bytes {
        let encoded: Vec<_> = readings.iter().map(encode_reading).collect();
        encode_record(false, encoded.iter().map(|b| &b[..]))
    }

    #[derive(Default)]
    struct Recorder(parking_lot::Mutex<Vec<SinkBatch>>);

    impl Sink for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        fn accept(&self, batch: &SinkBatch) {
            self.0.lock().push(batch.clone());
        }
        fn prepare(self: Arc<Self>, _through: Offset) -> crate::Prepare {
            Box::pin(async { Ok(Box::pin(async { Ok(()) }) as crate::Finish) })
        }
    }

    /// Records come from the feed where it holds the next offset and from the log where it has
    /// a gap; sinks see each record once, in order, with what alerting needs.
    #[tokio::test]
    async fn the_feed_and_the_log_fill_each_other_and_sinks_get_counters_and_owner() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = FileLog::open(FileLogConfig::new(dir.path().join("log"))).unwrap();
        let log: Arc<dyn Log> = Arc::new(log);
        let registry = Arc::new(Registry::open(dir.path().join("registry.sqlite3")).unwrap());
        let mut info = LiftInfo::new(LiftId::new("L1").unwrap());
        info.customer = "acme".into();
        info.building = "B1".into();
        info.model = "M9".into();
        info.initial_trips = 999_990;
        registry.upsert(info).unwrap();
        let dlq = Arc::new(DeadLetterQueue::open(dir.path().join("dlq")).unwrap());
        let store = Arc::new(FileCheckpointStore::new(dir.path().join("state"), dlq));
        let recorder = Arc::new(Recorder::default());
        let config = ProcessorConfig {
            // one record per log read, so the gap is read alone
            read_batch_bytes: 1,
            ..Default::default()
        };
        let (tx, feed) = hoistway_ingest::feed(8);
        let claim = claim_partition(store.clone(), 0, lease()).await.unwrap();
        let mut processor = Processor::recover(
            config,
            log.clone(),
            registry,
            store,
            claim,
            vec![recorder.clone()],
        )
        .await
        .unwrap()
        .with_feed(feed);

        // Records 0 and 1 are durable in the log; only record 1 is fed (0 was dropped).
        let offsets = log
            .append(vec![record(&[reading(1, 4)]), record(&[reading(2, 3)])])
            .await
            .unwrap();
        assert_eq!(offsets, [0, 1]);
        // The fed copy of record 1 differs from the log's (seq 3 instead of 2) only so that this
        // test can tell which one was applied.
        tx.send(vec![DurableRecord {
            offset: 1,
            batch: LogBatch {
                replay: false,
                readings: vec![reading(3, 3), reading(1, 4)],
            },
        }])
        .await
        .unwrap();
        assert_eq!(processor.step().await.unwrap(), 1, "offset 0 from the log");
        assert_eq!(processor.step().await.unwrap(), 1, "offset 1 from the feed");
        assert_eq!(processor.step().await.unwrap(), 0);
        let state = processor.state().read().clone();
        let lift = &state.lifts[&LiftId::new("L1").unwrap()];
        assert_eq!(lift.last_seq, 3, "the fed record was applied");
        assert_eq!(lift.readings_total, 2);

        let batches = recorder.0.lock().clone();
        assert_eq!(batches.iter().map(|b| b.offset).collect::<Vec<_>>(), [0, 1]);
        let items: Vec<_> = batches.iter().flat_map(|b| b.items.iter()).collect();
        assert_eq!(
            items
                .iter()
                .map(|i| (i.reading.seq, i.counted, i.counters.trips_total))
                .collect::<Vec<_>>(),
            [(1, true, 999_994), (3, true, 999_997), (1, false, 999_997)],
            "counters after each reading, the resend of seq 1 not counted"
        );
        assert!(
            items.iter().all(|i| i.lift.customer == "acme"
                && i.lift.building == "B1"
                && i.lift.model == "M9")
        );
    }

    /// A lift registered through another node since this one read the registry (a standby
    /// that waited, a lift added on a query node) counts: the registry is read again before a
    /// reading is dead-lettered as unregistered. One that nobody registered is dead-lettered.
    #[tokio::test]
    async fn a_lift_registered_elsewhere_meanwhile_counts() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = FileLog::open(FileLogConfig::new(dir.path().join("log"))).unwrap();
        let log: Arc<dyn Log> = Arc::new(log);
        let path = dir.path().join("registry.sqlite3");
        let here = Arc::new(Registry::open(&path).unwrap());
        let elsewhere = Registry::open(&path).unwrap();
        let dlq = Arc::new(DeadLetterQueue::open(dir.path().join("dlq")).unwrap());
        let store = Arc::new(FileCheckpointStore::new(dir.path().join("state"), dlq));
        let claim = claim_partition(store.clone(), 0, lease()).await.unwrap();
        let mut processor = Processor::recover(
            ProcessorConfig::default(),
            log.clone(),
            here.clone(),
            store,
            claim,
            vec![],
        )
        .await
        .unwrap();
        elsewhere
            .upsert(LiftInfo::new(LiftId::new("L1").unwrap()))
            .unwrap();
        assert!(!here.contains("L1"), "not read yet");
        // Past the once-a-second limit on reading it again.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let mut stranger = reading(1, 1);
        stranger.lift_id = LiftId::new("NOBODY").unwrap();
        log.append(vec![record(&[reading(1, 1), stranger])])
            .await
            .unwrap();
        assert_eq!(processor.step().await.unwrap(), 1);
        let state = processor.state().read().clone();
        assert_eq!(state.lifts[&LiftId::new("L1").unwrap()].readings_total, 1);
        assert!(!state.lifts.contains_key(&LiftId::new("NOBODY").unwrap()));
        let progress = *processor.progress().borrow();
        assert_eq!((progress.applied, progress.dead_lettered), (1, 1));
    }

    /// A sink whose finish waits until let through, and fails while `fail` is set.
    #[derive(Default)]
    struct Gate {
        open: tokio::sync::Notify,
        fail: std::sync::atomic::AtomicBool,
        prepared: parking_lot::Mutex<Vec<Offset>>,
    }

    impl Sink for Gate {
        fn name(&self) -> &'static str {
            "gate"
        }
        fn accept(&self, _batch: &SinkBatch) {}
        fn prepare(self: Arc<Self>, through: Offset) -> crate::Prepare {
            self.prepared.lock().push(through);
            Box::pin(async move {
                Ok(Box::pin(async move {
                    self.open.notified().await;
                    if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                        Err(SinkError::new("gate", through, "refused"))
                    } else {
                        Ok(())
                    }
                }) as crate::Finish)
            })
        }
    }

    /// A file log, a registry holding lift L1 and a dead-letter queue in `dir`.
    fn parts(dir: &std::path::Path) -> (Arc<dyn Log>, Arc<Registry>, Arc<DeadLetterQueue>) {
        let (log, _) = FileLog::open(FileLogConfig::new(dir.join("log"))).unwrap();
        let registry = Arc::new(Registry::open(dir.join("registry.sqlite3")).unwrap());
        registry
            .upsert(LiftInfo::new(LiftId::new("L1").unwrap()))
            .unwrap();
        let dlq = Arc::new(DeadLetterQueue::open(dir.join("dlq")).unwrap());
        (Arc::new(log), registry, dlq)
    }

    /// A checkpoint's second phase runs while later records are applied: state is written only
    /// after the sinks' finishes succeeded, at the offset they were prepared at; a failed one
    /// writes nothing and gives its dead letters back.
    #[tokio::test]
    async fn checkpoints_are_written_while_later_records_are_applied() {
        let dir = tempfile::tempdir().unwrap();
        let (log, registry, dlq) = parts(dir.path());
        let gate = Arc::new(Gate::default());
        let state_dir = dir.path().join("state");
        let store = Arc::new(FileCheckpointStore::new(&state_dir, dlq.clone()));
        let claim = claim_partition(store.clone(), 0, lease()).await.unwrap();
        let mut processor = Processor::recover(
            ProcessorConfig::default(),
            log.clone(),
            registry,
            store,
            claim,
            vec![gate.clone()],
        )
        .await
        .unwrap();
        let mut stranger = reading(1, 1);
        stranger.lift_id = LiftId::new("L2").unwrap();
        log.append(vec![record(&[reading(1, 1)]), record(&[stranger])])
            .await
            .unwrap();
        while processor.step().await.unwrap() > 0 {}
        assert_eq!(processor.pending_dead.len(), 1, "L2 is not registered");

        processor.begin_checkpoint().await.unwrap();
        assert_eq!(*gate.prepared.lock(), [2]);
        // While the sink's finish waits, a later record is applied.
        log.append(vec![record(&[reading(2, 1)])]).await.unwrap();
        assert_eq!(processor.step().await.unwrap(), 1);
        assert_eq!(processor.offset(), 3);
        assert!(checkpoint::read(&state_dir).unwrap().is_none());
        // The finish fails: no state, no dead-letter file; the letter is pending again.
        gate.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        gate.open.notify_one();
        assert!(processor.end_checkpoint().await.is_err());
        assert!(checkpoint::read(&state_dir).unwrap().is_none());
        assert!(dlq.list().unwrap().is_empty());
        assert_eq!(processor.pending_dead.len(), 1);
        assert_eq!(processor.pending_dead_from, Some(1));
        // The next one goes through, at the offset it was prepared at.
        gate.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        gate.open.notify_one();
        processor.checkpoint().await.unwrap();
        assert_eq!(*gate.prepared.lock(), [2, 3]);
        assert_eq!(checkpoint::read(&state_dir).unwrap().unwrap().offset, 3);
        assert_eq!(dlq.list().unwrap().len(), 1);
        assert!(processor.pending_dead.is_empty());
        assert_eq!(processor.progress().borrow().last_checkpoint_offset, 3);
    }

    fn lease() -> Lease {
        Lease {
            holder: "test".into(),
            ttl: Duration::from_secs(10),
        }
    }

    #[test]
    fn the_file_store_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let dlq = Arc::new(DeadLetterQueue::open(dir.path().join("dlq")).unwrap());
        let store = FileCheckpointStore::new(dir.path().join("state"), dlq.clone());
        conformance::check(&DeadLettersBeside(store, dlq));
    }

    /// The file store with the dead-letter queue it writes, read as one (in `serve` they are two
    /// handles on the same directories).
    struct DeadLettersBeside(FileCheckpointStore, Arc<DeadLetterQueue>);

    impl CheckpointStore for DeadLettersBeside {
        fn claim(&self, partition: u16, lease: &Lease) -> Result<Claimed, StoreError> {
            self.0.claim(partition, lease)
        }
        fn renew(&self, partition: u16, epoch: u64, ttl: Duration) -> Result<(), StoreError> {
            self.0.renew(partition, epoch, ttl)
        }
        fn release(&self, partition: u16, epoch: u64) -> Result<(), StoreError> {
            self.0.release(partition, epoch)
        }
        fn commit(&self, commit: &Commit<'_>) -> Result<(), StoreError> {
            self.0.commit(commit)
        }
        fn latest(
            &self,
            partition: u16,
            known: Option<Offset>,
        ) -> Result<Option<FleetState>, StoreError> {
            self.0.latest(partition, known)
        }
        fn describe(&self) -> String {
            self.0.describe()
        }
    }

    impl hoistway_dlq::DeadLetters for DeadLettersBeside {
        fn list(&self) -> hoistway_dlq::Result<Vec<hoistway_dlq::DlqFile>> {
            self.1.list()
        }
        fn read(&self, id: &str) -> hoistway_dlq::Result<Vec<DeadLetter>> {
            self.1.read(id)
        }
        fn mark_replayed(&self, id: &str) -> hoistway_dlq::Result<()> {
            self.1.mark_replayed(id)
        }
        fn size(&self) -> (u64, u64) {
            self.1.size()
        }
        fn pending_bytes(&self) -> u64 {
            self.1.pending_bytes()
        }
    }

    /// A store whose renewals fail as unavailable a few times, then as fenced.
    struct Flaky {
        inner: FileCheckpointStore,
        renewals: std::sync::atomic::AtomicU32,
    }

    impl CheckpointStore for Flaky {
        fn claim(&self, partition: u16, lease: &Lease) -> Result<Claimed, StoreError> {
            self.inner.claim(partition, lease)
        }
        fn renew(&self, partition: u16, epoch: u64, _ttl: Duration) -> Result<(), StoreError> {
            match self
                .renewals
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            {
                0 => Ok(()),
                1..=4 => Err(StoreError::Unavailable("connection refused".into())),
                5 => Ok(()),
                _ => Err(StoreError::Fenced {
                    partition,
                    held: epoch,
                    current: epoch + 1,
                }),
            }
        }
        fn release(&self, partition: u16, epoch: u64) -> Result<(), StoreError> {
            self.inner.release(partition, epoch)
        }
        fn commit(&self, commit: &Commit<'_>) -> Result<(), StoreError> {
            self.inner.commit(commit)
        }
        fn latest(
            &self,
            partition: u16,
            known: Option<Offset>,
        ) -> Result<Option<FleetState>, StoreError> {
            self.inner.latest(partition, known)
        }
        fn describe(&self) -> String {
            "flaky".into()
        }
    }

    /// A lease whose store is out of reach is kept (nobody else can claim it meanwhile); only a
    /// claim by another ends it.
    #[tokio::test]
    async fn a_lease_outlives_an_unreachable_store_and_ends_when_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let dlq = Arc::new(DeadLetterQueue::open(dir.path().join("dlq")).unwrap());
        let store = Arc::new(Flaky {
            inner: FileCheckpointStore::new(dir.path().join("state"), dlq),
            renewals: Default::default(),
        });
        let (_stop, shutdown) = watch::channel(false);
        let ttl = Duration::from_millis(30);
        let kept = tokio::time::timeout(
            Duration::from_secs(10),
            keep_lease(store.clone(), 0, 1, ttl, shutdown),
        )
        .await
        .expect("a fenced lease ends");
        assert!(
            matches!(kept, Err(Error::Store(StoreError::Fenced { .. }))),
            "{kept:?}"
        );
        assert_eq!(
            store.renewals.load(std::sync::atomic::Ordering::SeqCst),
            7,
            "renewals went on through four failures, over more than a whole ttl"
        );
        // And it ends quietly at shutdown.
        let (stop, shutdown) = watch::channel(false);
        let kept = tokio::spawn(keep_lease(store, 0, 1, Duration::from_secs(60), shutdown));
        stop.send(true).unwrap();
        assert!(kept.await.unwrap().is_ok());
    }

    /// A processor whose partition another claimed stops at its next checkpoint, and writes
    /// nothing: the new owner's checkpoint stands.
    #[tokio::test]
    async fn a_fenced_processor_stops_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (log, registry, dlq) = parts(dir.path());
        let state_dir = dir.path().join("state");
        let store = Arc::new(FileCheckpointStore::new(&state_dir, dlq));
        let config = ProcessorConfig {
            checkpoint_interval: Duration::from_millis(10),
            ..Default::default()
        };
        let claim = claim_partition(store.clone(), 0, lease()).await.unwrap();
        let processor = Processor::recover(
            config.clone(),
            log.clone(),
            registry.clone(),
            store.clone(),
            claim,
            vec![],
        )
        .await
        .unwrap();
        assert_eq!(processor.epoch(), 1);
        let (_stop, shutdown) = watch::channel(false);
        let old = tokio::spawn(processor.run(shutdown));
        log.append(vec![record(&[reading(1, 1)])]).await.unwrap();

        // Another processor claims the partition (and checkpoints what it replayed).
        let claim = claim_partition(store.clone(), 0, lease()).await.unwrap();
        let mut newer = Processor::recover(config, log.clone(), registry, store, claim, vec![])
            .await
            .unwrap();
        assert_eq!(newer.epoch(), 2);
        assert_eq!(newer.offset(), 1);
        newer.checkpoint().await.unwrap();
        log.append(vec![record(&[reading(2, 1)])]).await.unwrap();

        let stopped = tokio::time::timeout(Duration::from_secs(10), old)
            .await
            .expect("the fenced processor stops")
            .unwrap();
        assert!(
            matches!(
                stopped,
                Err(Error::Store(StoreError::Fenced {
                    partition: 0,
                    held: 1,
                    current: 2
                }))
            ),
            "{stopped:?}"
        );
        assert_eq!(
            checkpoint::read(&state_dir).unwrap().unwrap().offset,
            1,
            "the fenced processor's checkpoint at 2 was not written"
        );
    }
}
