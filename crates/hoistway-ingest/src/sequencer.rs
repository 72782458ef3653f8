//! The single writer in front of the log: head deduplication and group commit.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use hoistway_log::{Log, Offset};
use hoistway_model::partition::{MAX_PARTITIONS, partition_of};
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
    /// The log record holding the accepted readings, if any were (with several partitions, the
    /// record in the lowest partition that took some).
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

/// Cloneable handle that request handlers submit readings through: in front of one partition's
/// sequencer, or of several ([`Ingest::partitioned`]).
#[derive(Clone)]
pub struct Ingest {
    parts: Arc<[Part]>,
}

/// One partition's sequencer, as a handle sees it.
#[derive(Clone)]
struct Part {
    tx: mpsc::Sender<Request>,
    log: Arc<dyn Log>,
    max_log_bytes: u64,
}

type Reply = oneshot::Receiver<Result<IngestOutcome, IngestError>>;

impl Part {
    fn refused(&self) -> Option<IngestError> {
        if let Some(why) = self.log.poisoned() {
            return Some(hoistway_log::Error::Poisoned(why).into());
        }
        self.backlogged()
    }

    fn backlogged(&self) -> Option<IngestError> {
        let log_bytes = self.log.size_bytes();
        (log_bytes >= self.max_log_bytes).then_some(IngestError::Backlogged {
            log_bytes,
            limit: self.max_log_bytes,
        })
    }

    /// Queues `readings` for this partition's sequencer; the reply comes once they are durable.
    async fn queue(&self, readings: Vec<Reading>, replay: bool) -> Result<Reply, IngestError> {
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
        Ok(rx)
    }
}

impl Ingest {
    /// One handle over several partitions' sequencers, `parts[p]` (a handle from
    /// [`Sequencer::new`]) appending to partition `p`'s log. A request's readings are split by
    /// [`partition_of`] over `parts.len()` partitions, each part goes to its sequencer (so one
    /// lift's readings stay in order in one log), and the request is answered once every part
    /// is durable. If one part fails, the parts that did not are in their logs: the device
    /// resends the whole request, and what was already accepted counts once (the processors'
    /// dedup), as after any failed request.
    pub fn partitioned(parts: Vec<Ingest>) -> Self {
        assert!(
            !parts.is_empty() && parts.len() <= usize::from(MAX_PARTITIONS),
            "ingest has 1 to {MAX_PARTITIONS} partitions, not {}",
            parts.len()
        );
        Self {
            parts: parts.iter().flat_map(|i| i.parts.iter().cloned()).collect(),
        }
    }

    /// How many partitions readings are spread over.
    pub fn partitions(&self) -> u16 {
        self.parts.len() as u16
    }

    /// Appends the new ones among `readings` and returns once they are durable.
    pub async fn submit(&self, readings: Vec<Reading>) -> Result<IngestOutcome, IngestError> {
        self.send(readings, false).await
    }

    /// Sends readings again (from the dead-letter queue), skipping the head dedup index.
    pub async fn replay(&self, readings: Vec<Reading>) -> Result<IngestOutcome, IngestError> {
        self.send(readings, true).await
    }

    /// Whether a submit now would be refused as backlogged (any partition's log at its limit:
    /// which partitions a request needs is known only from its readings).
    pub fn backlogged(&self) -> Option<IngestError> {
        self.parts.iter().find_map(Part::backlogged)
    }

    async fn send(
        &self,
        readings: Vec<Reading>,
        replay: bool,
    ) -> Result<IngestOutcome, IngestError> {
        if readings.is_empty() {
            return Ok(IngestOutcome::default());
        }
        if let [part] = &self.parts[..] {
            if let Some(e) = part.refused() {
                return Err(e);
            }
            let reply = part.queue(readings, replay).await?;
            return reply.await.map_err(|_| IngestError::Closed)?;
        }
        let count = self.partitions();
        let mut split: Vec<Vec<Reading>> = vec![Vec::new(); self.parts.len()];
        for r in readings {
            split[usize::from(partition_of(&r.lift_id, count))].push(r);
        }
        // Refused before anything is queued, where that is known in advance.
        let used = || {
            split
                .iter()
                .zip(&self.parts[..])
                .filter(|(r, _)| !r.is_empty())
        };
        if let Some(e) = used().find_map(|(_, part)| part.refused()) {
            return Err(e);
        }
        // Every part queued first, so the sequencers work on them at once.
        let mut replies = Vec::new();
        for (readings, part) in split.into_iter().zip(&self.parts[..]) {
            if !readings.is_empty() {
                replies.push(part.queue(readings, replay).await?);
            }
        }
        let mut merged = IngestOutcome::default();
        let mut failed = None;
        for reply in replies {
            match reply.await.map_err(|_| IngestError::Closed)? {
                Ok(outcome) => {
                    merged.accepted += outcome.accepted;
                    merged.duplicates += outcome.duplicates;
                    merged.offset = merged.offset.or(outcome.offset);
                }
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        failed.map_or(Ok(merged), Err)
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
            parts: Arc::new([Part {
                tx,
                log: log.clone(),
                max_log_bytes: config.max_log_bytes,
            }]),
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

#[cfg(test)]
mod tests {
    use hoistway_log::{FileLog, FileLogConfig};
    use hoistway_model::{Direction, DoorState};

    use super::*;
    use crate::record::decode_record;

    fn reading(lift: &str, seq: u64) -> Reading {
        Reading {
            lift_id: LiftId::new(lift).unwrap(),
            epoch: 1,
            seq,
            ts_us: 1_764_400_000_000_000 + seq as i64,
            received_us: 1_764_400_000_000_000 + seq as i64,
            floor: 0,
            direction: Direction::Idle,
            door: DoorState::Closed,
            load_kg: None,
            speed_mps: None,
            motor_temp_c: None,
            vibration_mm_s: None,
            trips: 0,
            door_cycles: 0,
            faults: Vec::new(),
            events: Vec::new(),
            extra: Default::default(),
        }
    }

    async fn lifts_in(log: &dyn Log) -> Vec<(String, u64)> {
        let records = log.read(log.start(), usize::MAX).await.unwrap();
        records
            .iter()
            .flat_map(|r| decode_record(&r.payload).unwrap().readings)
            .map(|r| (r.lift_id.to_string(), r.seq))
            .collect()
    }

    /// Several partitions: each reading goes to its lift's partition's log, in order; a
    /// request is answered with every part's counts; a partition whose log is full refuses
    /// the requests that need it, and only those, before anything is appended.
    #[tokio::test]
    async fn readings_are_split_by_partition_and_answered_together() {
        let dir = tempfile::tempdir().unwrap();
        let mut logs: Vec<Arc<dyn Log>> = Vec::new();
        let mut handles = Vec::new();
        let mut tasks = Vec::new();
        for p in 0..3 {
            let (log, _) =
                FileLog::open(FileLogConfig::new(dir.path().join(format!("{p}")))).unwrap();
            let log: Arc<dyn Log> = Arc::new(log);
            let config = SequencerConfig {
                // Partition 2 refuses once anything is in its log.
                max_log_bytes: if p == 2 {
                    log.size_bytes() + 1
                } else {
                    1 << 30
                },
                ..Default::default()
            };
            let (ingest, sequencer) = Sequencer::new(log.clone(), &config, HashMap::new());
            tasks.push(tokio::spawn(sequencer.run()));
            logs.push(log);
            handles.push(ingest);
        }
        let ingest = Ingest::partitioned(handles);
        assert_eq!(ingest.partitions(), 3);
        let lifts: Vec<String> = (0..30).map(|i| format!("L-{i}")).collect();
        let of = |lift: &str| partition_of(&LiftId::new(lift).unwrap(), 3);
        // Two readings per lift, in one request.
        let readings: Vec<Reading> = (1..=2)
            .flat_map(|seq| lifts.iter().map(move |l| reading(l, seq)))
            .collect();
        let outcome = ingest.submit(readings.clone()).await.unwrap();
        assert_eq!((outcome.accepted, outcome.duplicates), (60, 0));
        for (p, log) in logs.iter().enumerate() {
            let want: Vec<(String, u64)> = readings
                .iter()
                .filter(|r| usize::from(of(r.lift_id.as_str())) == p)
                .map(|r| (r.lift_id.to_string(), r.seq))
                .collect();
            assert!(!want.is_empty(), "partition {p} has lifts");
            assert_eq!(lifts_in(log.as_ref()).await, want, "partition {p}");
        }
        // Resent: every partition's head dedup knows its own.
        let in_two = lifts.iter().find(|l| of(l) == 2).unwrap();
        let elsewhere: Vec<Reading> = lifts
            .iter()
            .filter(|l| of(l) != 2)
            .map(|l| reading(l, 1))
            .collect();
        let again = ingest.submit(elsewhere.clone()).await.unwrap();
        assert_eq!((again.accepted, again.duplicates), (0, elsewhere.len()));
        // Partition 2's log is at its limit: a request with one of its lifts is refused whole.
        let before: Vec<_> = every_log(&logs).await;
        let mut mixed = vec![reading(in_two, 3)];
        mixed.extend(lifts.iter().filter(|l| of(l) != 2).map(|l| reading(l, 3)));
        assert!(matches!(
            ingest.submit(mixed).await,
            Err(IngestError::Backlogged { .. })
        ));
        assert_eq!(every_log(&logs).await, before, "nothing was appended");
        let fine = ingest
            .submit(
                lifts
                    .iter()
                    .filter(|l| of(l) != 2)
                    .map(|l| reading(l, 3))
                    .collect(),
            )
            .await
            .unwrap();
        assert_eq!(fine.accepted, elsewhere.len());
        drop(ingest);
        for task in tasks {
            task.await.unwrap();
        }
    }

    async fn every_log(logs: &[Arc<dyn Log>]) -> Vec<Vec<(String, u64)>> {
        let mut all = Vec::new();
        for log in logs {
            all.push(lifts_in(log.as_ref()).await);
        }
        all
    }
}
