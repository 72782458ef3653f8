//! The seam between the processor and what consumes accepted readings (storage, alerting).
//!
//! The processor hands each [`Sink`] one [`SinkBatch`] per log record, in log order, after the
//! readings are durable and applied, and outside the fleet-state lock. Each item says whether
//! the reading counted (a duplicate of an accepted one did not), the lift's lifetime counters
//! right after it, and the lift's registry entry (customer, building, model) as of that moment:
//! what a rule needs without a second lookup.
//!
//! After a crash the readings after the last checkpoint are handed over again: a sink that must
//! not act twice keeps its own offset (storage) or its own idempotence (alerting).
//!
//! A checkpoint has two phases, so that applying (and with it an entrapment's alert) never
//! waits for a Parquet flush: [`Sink::prepare`] takes, at the checkpoint's offset, what the sink
//! must make durable (a swap of buffers, a snapshot) while the processor applies nothing; the
//! [`Finish`] it returns writes that while the processor applies the records after it. State is
//! written and the log truncated only once every sink's finish succeeded.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use hoistway_log::Offset;
use hoistway_model::Reading;
use hoistway_registry::LiftInfo;

/// A lift's lifetime counters right after a reading was applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub readings_total: u64,
    /// The registry's initial trip count plus every trip reported since.
    pub trips_total: u64,
    pub door_cycles_total: u64,
    pub events_total: u64,
}

/// One reading as the processor saw it.
#[derive(Debug, Clone)]
pub struct SinkItem {
    pub reading: Reading,
    /// New: it changed the counters. `false`: a duplicate of an accepted reading (a resend).
    pub counted: bool,
    pub counters: Counters,
    /// The lift's registry entry when the reading was applied.
    pub lift: Arc<LiftInfo>,
}

/// The readings of one log record that reached state (new or duplicate), in record order.
#[derive(Debug, Clone, Default)]
pub struct SinkBatch {
    pub offset: Offset,
    /// Shared: a sink that keeps the readings (alerting hands them to its own thread) takes a
    /// reference, not a copy, on the processor's thread.
    pub items: Arc<[SinkItem]>,
}

impl SinkBatch {
    /// The readings that counted, in order.
    pub fn counted(&self) -> impl Iterator<Item = &Reading> {
        self.items.iter().filter(|i| i.counted).map(|i| &i.reading)
    }
}

/// Why a sink could not commit. The processor keeps the previous checkpoint and retries.
#[derive(Debug, thiserror::Error)]
#[error("sink {sink} could not commit through offset {through}: {source}")]
pub struct SinkError {
    pub sink: &'static str,
    pub through: Offset,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl SinkError {
    pub fn new(
        sink: &'static str,
        through: Offset,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            sink,
            through,
            source: source.into(),
        }
    }
}

/// The second phase of a sink's checkpoint: makes durable what [`Sink::prepare`] took.
pub type Finish = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'static>>;

/// The first phase: what [`Sink::prepare`] returns once it has taken its share.
pub type Prepare = Pin<Box<dyn Future<Output = Result<Finish, SinkError>> + Send + 'static>>;

/// Receives what the processor applied.
pub trait Sink: Send + Sync + 'static {
    /// A short name for logs and errors.
    fn name(&self) -> &'static str;

    /// The readings of the log record at `batch.offset`. Called on a blocking thread, in log
    /// order, never twice for one offset in one run; must not block for long (buffer, then
    /// do the work in a checkpoint or on a task of its own).
    fn accept(&self, batch: &SinkBatch);

    /// Takes everything accepted from records before `through`, and nothing after: the
    /// processor applies nothing until the returned future completes, so it should be quick (a
    /// swap of buffers, a snapshot). Its [`Finish`] makes that durable while the processor
    /// applies later records and calls `accept` again. The processor writes state and
    /// truncates the log only after every sink's finish succeeded, and prepares the next
    /// checkpoint only after this one ended, so what a sink has not made durable can always
    /// be replayed to it. A finish that fails must keep what it took, for the next checkpoint.
    fn prepare(self: Arc<Self>, through: Offset) -> Prepare;
}

/// Both phases of `sink`'s checkpoint at once, for callers that apply nothing meanwhile
/// (tests, tools).
pub async fn commit(sink: Arc<impl Sink>, through: Offset) -> Result<(), SinkError> {
    sink.prepare(through).await?.await
}
