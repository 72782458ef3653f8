//! The single writer in front of the log: head deduplication and group commit.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use hoistway_log::{Log, Offset};
use hoistway_model::{DedupWindow, LiftDedup, LiftId, Reading, Seen};
use tokio::sync::{mpsc, oneshot};

use crate::record::{LogBatch, encode_reading, encode_record};

/// A record the sequencer appended, once it is durable: its offset and its readings, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct DurableRecord {
    pub offset: Offset,
    pub batch: LogBatch,
}

/// The processor's end of the in-memory hand-off: each item is one group commit's records, in
/// offset order, sent only after the log's `append` returned them durable.
pub type Feed = mpsc::Receiver<Vec<DurableRecord>>;

/// A channel for the hand-off from [`Sequencer::with_feed`] to the processor. When it is full
/// the sequencer drops the group rather than wait (acks come first); the processor then reads
/// those records from the log.
pub fn feed(groups: usize) -> (mpsc::Sender<Vec<DurableRecord>>, Feed) {
    mpsc::channel(groups.max(1))
}

#[derive(Debug, Clone)]
pub struct SequencerConfig {
    pub window: DedupWindow,
    /// Above this log size ingest answers "overloaded" instead of appending: the processor (or a
    /// downstream consumer holding truncation back) has fallen behind.
    pub max_log_bytes: u64,
    /// Most requests folded into one append.
    pub max_group: usize,
    pub queue_depth: usize,
}

impl Default for SequencerConfig {
    fn default() -> Self {
        Self {
            window: DedupWindow::default(),
            max_log_bytes: 2 << 30,
            max_group: 2048,
            queue_depth: 8192,
        }
    }
}

/// What happened to a request's valid readings. Sent only once they are durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    pub accepted: usize,
    /// Readings whose `(lift_id, epoch, seq)` was already accepted: not an error.
    pub duplicates: usize,
    /// The log record holding the accepted readings, if any were.
    pub offset: Option<Offset>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("ingest is behind: the log holds {log_bytes} bytes, the limit is {limit}")]
    Backlogged { log_bytes: u64, limit: u64 },
    #[error(transparent)]
    Log(#[from] hoistway_log::Error),
    #[error("ingest is shutting down")]
    Closed,
}

struct Request {
    readings: Vec<Reading>,
    /// Each reading in the log record format, encoded on the request's task.
    encoded: Vec<Bytes>,
    replay: bool,
    reply: oneshot::Sender<Result<IngestOutcome, IngestError>>,
}

/// Cloneable handle that request handlers submit readings through.
#[derive(Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Request>,
    log: Arc<dyn Log>,
    max_log_bytes: u64,
}

impl Ingest {
    /// Appends the new ones among `readings` and returns once they are durable.
    pub async fn submit(&self, readings: Vec<Reading>) -> Result<IngestOutcome, IngestError> {
        self.send(readings, false).await
    }

    /// Sends readings again (from the dead-letter queue), skipping the head dedup index.
    pub async fn replay(&self, readings: Vec<Reading>) -> Result<IngestOutcome, IngestError> {
        self.send(readings, true).await
    }

    /// Whether a submit now would be refused as backlogged.
    pub fn backlogged(&self) -> Option<IngestError> {
        let log_bytes = self.log.size_bytes();
        (log_bytes >= self.max_log_bytes).then_some(IngestError::Backlogged {
            log_bytes,
            limit: self.max_log_bytes,
        })
    }

    async fn send(
        &self,
        readings: Vec<Reading>,
        replay: bool,
    ) -> Result<IngestOutcome, IngestError> {
        if readings.is_empty() {
            return Ok(IngestOutcome::default());
        }
        if let Some(why) = self.log.poisoned() {
            return Err(hoistway_log::Error::Poisoned(why).into());
        }
        if let Some(e) = self.backlogged() {
            return Err(e);
        }
        let encoded = readings.iter().map(encode_reading).collect();
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request {
                readings,
                encoded,
                replay,
                reply,
            })
            .await
            .map_err(|_| IngestError::Closed)?;
        rx.await.map_err(|_| IngestError::Closed)?
    }
}

/// Owns the head dedup index; run it with [`Sequencer::run`].
pub struct Sequencer {
    rx: mpsc::Receiver<Request>,
    log: Arc<dyn Log>,
    window: DedupWindow,
    max_group: usize,
    dedup: HashMap<LiftId, LiftDedup>,
    feed: Option<mpsc::Sender<Vec<DurableRecord>>>,
    /// Failed appends since the last warning: an outage of a distributed log fails every
    /// group, and one line per group would bury the log.
    unreported_failures: u64,
    last_warned: Option<std::time::Instant>,
}

/// Within this long of a warning about failed appends, further failures are counted, not logged.
const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl Sequencer {
    /// `dedup` describes what is already in the log (the processor's state after replay to the
    /// log's end), or less of it (an ingest node starts empty): a resend it does not know is
    /// appended again, and the processor's dedup counts it once.
    pub fn new(
        log: Arc<dyn Log>,
        config: &SequencerConfig,
        dedup: HashMap<LiftId, LiftDedup>,
    ) -> (Ingest, Sequencer) {
        let (tx, rx) = mpsc::channel(config.queue_depth);
        let ingest = Ingest {
            tx,
            log: log.clone(),
            max_log_bytes: config.max_log_bytes,
        };
        let sequencer = Sequencer {
            rx,
            log,
            window: config.window,
            max_group: config.max_group.max(1),
            dedup,
            feed: None,
            unreported_failures: 0,
            last_warned: None,
        };
        (ingest, sequencer)
    }

    /// Hands every durable record, decoded, to the processor through `feed` (see [`feed`]).
    pub fn with_feed(mut self, feed: mpsc::Sender<Vec<DurableRecord>>) -> Self {
        self.feed = Some(feed);
        self
    }

    /// Runs until every [`Ingest`] handle is dropped and every accepted request is answered.
    ///
    /// Group commit: one append and one sync are in flight at a time; every request that
    /// arrives meanwhile waits in the channel and goes into the next group, so the number of
    /// syncs per second is bounded by the disk while the group size grows with load.
    pub async fn run(mut self) {
        let mut group = Vec::with_capacity(self.max_group);
        while self.rx.recv_many(&mut group, self.max_group).await > 0 {
            self.commit(std::mem::take(&mut group)).await;
        }
    }

    async fn commit(&mut self, group: Vec<Request>) {
        metrics::histogram!("hoistway_ingest_group_commit_requests").record(group.len() as f64);
        let mut in_group: HashSet<(LiftId, u64, u64)> = HashSet::new();
        let mut records = Vec::with_capacity(group.len());
        let mut answers = Vec::with_capacity(group.len());
        // The kept readings of each record, for the feed.
        let mut fed: Vec<LogBatch> = Vec::new();
        for req in group {
            let mut kept = Vec::with_capacity(req.readings.len());
            let mut duplicates = 0;
            for (i, r) in req.readings.iter().enumerate() {
                let seen = match self.dedup.get(&r.lift_id) {
                    Some(d) if !req.replay => d.check(r.epoch, r.seq, &self.window),
                    _ => Seen::New,
                };
                let key = (r.lift_id.clone(), r.epoch, r.seq);
                if seen == Seen::Duplicate || !in_group.insert(key) {
                    duplicates += 1;
                } else {
                    kept.push(i);
                }
            }
            let record_index = (!kept.is_empty()).then(|| {
                records.push(encode_record(
                    req.replay,
                    kept.iter().map(|&i| &req.encoded[i][..]),
                ));
                if self.feed.is_some() {
                    let all = kept.len() == req.readings.len();
                    let readings = if all {
                        req.readings
                    } else {
                        let mut keep = kept.iter().copied().peekable();
                        req.readings
                            .into_iter()
                            .enumerate()
                            .filter(|(i, _)| keep.next_if_eq(i).is_some())
                            .map(|(_, r)| r)
                            .collect()
                    };
                    fed.push(LogBatch {
                        replay: req.replay,
                        readings,
                    });
                }
                records.len() - 1
            });
            let accepted = kept.len();
            answers.push((req.reply, accepted, duplicates, record_index));
        }
        let appended = if records.is_empty() {
            Ok(Vec::new())
        } else {
            self.log.append(records).await
        };
        let offsets = match appended {
            Ok(offsets) => offsets,
            Err(e) => {
                metrics::counter!("hoistway_log_append_failures_total").increment(1);
                self.unreported_failures += 1;
                if self.last_warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    tracing::warn!(
                        error = %e,
                        failed_appends = self.unreported_failures,
                        "log append failed; requests answered with an error (further failures within 5 s are counted, not logged)"
                    );
                    self.last_warned = Some(std::time::Instant::now());
                    self.unreported_failures = 0;
                }
                let transient = e.is_transient();
                let message = e.to_string();
                for (reply, ..) in answers {
                    let err = if transient {
                        hoistway_log::Error::Write(std::io::Error::other(message.clone()))
                    } else {
                        hoistway_log::Error::Poisoned(message.clone())
                    };
                    let _ = reply.send(Err(err.into()));
                }
                return;
            }
        };
        // Only now is it certain the records are in the log, durable.
        for (lift_id, epoch, seq) in in_group {
            self.dedup
                .entry(lift_id)
                .or_default()
                .insert(epoch, seq, &self.window);
        }
        if !fed.is_empty()
            && let Some(feed) = &self.feed
        {
            let group = fed
                .into_iter()
                .zip(&offsets)
                .map(|(batch, &offset)| DurableRecord { offset, batch })
                .collect();
            if feed.try_send(group).is_err() {
                metrics::counter!("hoistway_ingest_feed_dropped_groups_total").increment(1);
            }
        }
        for (reply, accepted, duplicates, record_index) in answers {
            let _ = reply.send(Ok(IngestOutcome {
                accepted,
                duplicates,
                offset: record_index.map(|i| offsets[i]),
            }));
        }
    }
}
