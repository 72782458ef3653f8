//! The processor: consumes the log in order and owns every lift's state.
//!
//! In: [`LogBatch`](hoistway_ingest::LogBatch) records from a [`Log`], from the offset of the last
//! checkpoint. Out: [`FleetState`] (latest state, exact lifetime counters, the authoritative
//! dedup index) shared with the API through [`Fleet`]; dead letters; accepted readings handed to
//! every [`AcceptedSink`] (storage and alerting stand there); log truncation behind checkpoints.
//!
//! State and the offset it reflects are checkpointed together, so after a crash the processor
//! loads the checkpoint and replays the log from that offset: every reading is applied exactly
//! once across any crash. It does not parse HTTP, does not write the log and does not store raw
//! readings.

pub mod checkpoint;
pub mod state;
mod view;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hoistway_dlq::{DeadLetter, DeadLetterQueue, Reason};
use hoistway_ingest::RecordError;
use hoistway_ingest::record::decode_record;
use hoistway_log::{Log, Offset, Record};
use hoistway_model::{Clock, DedupWindow, Reading};
use hoistway_registry::Registry;
use parking_lot::RwLock;
use tokio::sync::watch;

pub use state::{Applied, FleetState, LiftState};
pub use view::{Fleet, FleetSummary, LiftStatus, LiftView, ListQuery, Page};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Log(#[from] hoistway_log::Error),
    #[error(transparent)]
    Dlq(#[from] hoistway_dlq::Error),
    #[error(transparent)]
    Registry(#[from] hoistway_registry::Error),
    #[error("log record at offset {offset} cannot be applied: {source}")]
    Record { offset: Offset, source: RecordError },
    #[error("checkpoint failed: {0}")]
    Checkpoint(String),
    #[error("a sink could not commit: {0}")]
    Sink(String),
    #[error(
        "checkpoint is at offset {checkpoint} but the log starts at {log_start}: the log was truncated past it"
    )]
    Gap {
        checkpoint: Offset,
        log_start: Offset,
    },
    #[error("i/o failed: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Receives the readings the processor accepted (new, registered, inside the window), in log
/// order, once each — except after a crash, when readings after the last checkpoint are handed
/// over again: a sink that must not double count keeps its own offset.
#[async_trait::async_trait]
pub trait AcceptedSink: Send + Sync + 'static {
    /// Readings accepted from the log record at `offset`. Called on a blocking thread; must
    /// not block for long.
    fn accept(&self, offset: Offset, readings: &[Reading]);

    /// Makes everything accepted from records before `through` durable. Every checkpoint calls
    /// this before it writes state, and the log is truncated only after both succeeded, so
    /// what a sink has not committed can always be replayed to it.
    async fn commit(&self, through: Offset) -> Result<(), String>;
}

#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    pub state_dir: PathBuf,
    pub window: DedupWindow,
    pub checkpoint_interval: Duration,
    /// Register unknown lifts on their first reading instead of dead-lettering them.
    pub auto_register: bool,
    pub read_batch_bytes: usize,
}

impl ProcessorConfig {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            window: DedupWindow::default(),
            checkpoint_interval: Duration::from_secs(10),
            auto_register: false,
            read_batch_bytes: 1 << 20,
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
    dlq: Arc<DeadLetterQueue>,
    state: Arc<RwLock<FleetState>>,
    sinks: Vec<Arc<dyn AcceptedSink>>,
    pending_dead: Vec<DeadLetter>,
    pending_dead_from: Option<Offset>,
    progress: watch::Sender<Progress>,
    last_checkpoint: Instant,
}

impl Processor {
    /// Loads the last checkpoint and replays the log to its durable end, so that the returned
    /// processor's state covers everything already acknowledged.
    pub async fn recover(
        config: ProcessorConfig,
        log: Arc<dyn Log>,
        registry: Arc<Registry>,
        dlq: Arc<DeadLetterQueue>,
        sinks: Vec<Arc<dyn AcceptedSink>>,
    ) -> Result<Self> {
        std::fs::create_dir_all(&config.state_dir)?;
        let state = checkpoint::read(&config.state_dir)?.unwrap_or_else(|| FleetState {
            offset: log.start(),
            ..Default::default()
        });
        if state.offset < log.start() {
            return Err(Error::Gap {
                checkpoint: state.offset,
                log_start: log.start(),
            });
        }
        let discarded = dlq.discard_from(state.offset)?;
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
            dlq,
            state: Arc::new(RwLock::new(state)),
            sinks,
            pending_dead: Vec::new(),
            pending_dead_from: None,
            progress: watch::Sender::new(progress),
            last_checkpoint: Instant::now(),
        };
        let started = Instant::now();
        let end = processor.log.durable_end();
        while processor.offset() < end {
            processor.step().await?;
        }
        tracing::info!(
            from,
            to = end,
            lifts = processor.state.read().lifts.len(),
            discarded_dead_letter_files = discarded,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "processor recovered"
        );
        Ok(processor)
    }

    pub fn offset(&self) -> Offset {
        self.state.read().offset
    }

    /// A read-only view for the API.
    pub fn fleet(&self, clock: Arc<dyn Clock>, silent_after: Duration) -> Fleet {
        Fleet::new(
            self.state.clone(),
            self.registry.clone(),
            clock,
            silent_after,
        )
    }

    pub fn state(&self) -> &Arc<RwLock<FleetState>> {
        &self.state
    }

    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Reads and applies one batch of records, if any are durable; returns how many.
    pub async fn step(&mut self) -> Result<usize> {
        let from = self.offset();
        let records = self.log.read(from, self.config.read_batch_bytes).await?;
        if records.is_empty() {
            return Ok(0);
        }
        let n = records.len();
        self.apply_records(records).await?;
        Ok(n)
    }

    async fn apply_records(&mut self, records: Vec<Record>) -> Result<()> {
        let state = self.state.clone();
        let registry = self.registry.clone();
        let sinks = self.sinks.clone();
        let window = self.config.window;
        let auto_register = self.config.auto_register;
        let (dead, mut delta) = tokio::task::spawn_blocking(move || {
            apply_blocking(&state, &registry, &sinks, &records, &window, auto_register)
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

    /// Writes pending dead letters, then state + offset, then lets the log drop what is covered.
    /// On failure (a full disk) nothing is lost: the dead letters stay pending, a dead-letter file
    /// written for this attempt is removed, and the previous checkpoint stays valid.
    pub async fn checkpoint(&mut self) -> Result<()> {
        let started = Instant::now();
        let offset = self.offset();
        for sink in &self.sinks {
            sink.commit(offset).await.map_err(Error::Sink)?;
        }
        let dead_file = match self.pending_dead_from {
            Some(first) => {
                let dead = self.pending_dead.clone();
                let dlq = self.dlq.clone();
                let last = offset.saturating_sub(1);
                tokio::task::spawn_blocking(move || dlq.write_batch(first, last, &dead))
                    .await
                    .map_err(|e| Error::Io(std::io::Error::other(e)))??;
                Some((first, last))
            }
            None => None,
        };
        let state = self.state.clone();
        let dir = self.config.state_dir.clone();
        let written = tokio::task::spawn_blocking(move || -> Result<usize> {
            let bytes = checkpoint::encode(&state.read())?;
            checkpoint::write(&dir, &bytes)?;
            Ok(bytes.len())
        })
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        let bytes = match written {
            Ok(bytes) => bytes,
            Err(e) => {
                if let Some((first, last)) = dead_file {
                    let dlq = self.dlq.clone();
                    let _ =
                        tokio::task::spawn_blocking(move || dlq.remove_batch(first, last)).await;
                }
                return Err(e);
            }
        };
        self.pending_dead.clear();
        self.pending_dead_from = None;
        self.last_checkpoint = Instant::now();
        self.progress.send_modify(|p| {
            p.last_checkpoint_offset = offset;
            p.last_checkpoint_at = Instant::now();
        });
        metrics::gauge!("hoistway_processor_checkpoint_bytes").set(bytes as f64);
        metrics::histogram!("hoistway_processor_checkpoint_seconds")
            .record(started.elapsed().as_secs_f64());
        tracing::debug!(offset, bytes, "checkpoint written");
        self.log.truncate_before(offset).await?;
        Ok(())
    }

    /// Applies records as they become durable until `shutdown` fires, checkpointing on the
    /// configured interval and once more on the way out.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        loop {
            if *shutdown.borrow() {
                break;
            }
            let n = self.step().await?;
            if self.last_checkpoint.elapsed() >= self.config.checkpoint_interval
                && let Err(e) = self.checkpoint().await
            {
                // Not fatal: the log still holds everything since the last good checkpoint.
                tracing::error!(error = %e, "checkpoint failed; retrying at the next interval");
                metrics::counter!("hoistway_processor_checkpoint_failures_total").increment(1);
                self.last_checkpoint = Instant::now();
            }
            if n == 0 {
                let at = self.offset();
                tokio::select! {
                    _ = self.log.wait_for_data(at, Duration::from_millis(500)) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
        // Drain what is durable, then checkpoint, so a clean restart replays nothing.
        while self.step().await? > 0 {}
        self.checkpoint().await
    }

    pub fn state_dir(&self) -> &Path {
        &self.config.state_dir
    }
}

fn apply_blocking(
    state: &RwLock<FleetState>,
    registry: &Registry,
    sinks: &[Arc<dyn AcceptedSink>],
    records: &[Record],
    window: &DedupWindow,
    auto_register: bool,
) -> Result<(Vec<DeadLetter>, Progress)> {
    let mut dead = Vec::new();
    let mut delta = Progress::default();
    let mut accepted = Vec::new();
    let mut guard = state.write();
    for record in records {
        debug_assert_eq!(record.offset, guard.offset);
        let batch = match decode_record(&record.payload) {
            Ok(b) => b,
            Err(RecordError::Removed) => {
                // An operator chose to lose this record with `hoistway log repair`.
                tracing::warn!(
                    offset = record.offset,
                    "log record removed by repair skipped"
                );
                metrics::counter!("hoistway_processor_removed_records_total").increment(1);
                guard.offset = record.offset + 1;
                continue;
            }
            Err(source) => {
                // The checksum held, so this is a record of a format this build does not
                // read (a newer release wrote it) or a bug: stop rather than lose it.
                return Err(Error::Record {
                    offset: record.offset,
                    source,
                });
            }
        };
        accepted.clear();
        for reading in batch.readings {
            if !registry.contains(reading.lift_id.as_str()) {
                if auto_register {
                    registry.insert_if_absent(&reading.lift_id)?;
                } else {
                    delta.dead_lettered += 1;
                    dead.push(DeadLetter {
                        reason: Reason::UnregisteredLift,
                        detail: Reason::UnregisteredLift.describe().into(),
                        offset: record.offset,
                        reading,
                    });
                    continue;
                }
            }
            match guard.apply(&reading, window) {
                Applied::New => {
                    delta.applied += 1;
                    accepted.push(reading);
                }
                Applied::Duplicate => delta.duplicates += 1,
                Applied::OutsideWindow => {
                    delta.dead_lettered += 1;
                    dead.push(DeadLetter {
                        reason: Reason::OutsideDedupWindow,
                        detail: Reason::OutsideDedupWindow.describe().into(),
                        offset: record.offset,
                        reading,
                    });
                }
            }
        }
        guard.offset = record.offset + 1;
        if !accepted.is_empty() {
            for sink in sinks {
                sink.accept(record.offset, &accepted);
            }
        }
    }
    Ok((dead, delta))
}
