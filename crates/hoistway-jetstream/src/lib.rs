//! The log on NATS JetStream: the [`Log`] seam's implementation for running Hoistway as several
//! processes on several machines (one stream per partition).
//!
//! - **One message per append** (or per share of it, when it exceeds the server's message
//!   size), holding its records with their checksums ([`message`]). A stream that syncs every
//!   write then syncs once per group of requests, as the file log's group commit does.
//! - **Offsets**: record `i` of the message at stream sequence `s` has offset
//!   `(s - 1) << 16 | i`. Offsets increase, are not consecutive across messages, and `offset + 1`
//!   is always a valid place to read from: a read that starts past a message's last record goes
//!   on with the next message. The durable end is exact (the last message's sequence and record
//!   count), so a reader that has applied everything is exactly at it.
//! - **Durability**: `append` returns after the stream's acknowledgement. Each message carries a
//!   message id (this writer's id and a counter); a publish whose acknowledgement is lost is sent
//!   again with the same id, and the server drops the copy (its duplicate window) and answers
//!   with the original's sequence.
//! - **Nothing expires unprocessed**: the stream has no age limit and discards *new* messages at
//!   its byte limit, which answers the append with a transient error (503 at ingest).
//! - **Truncation** purges whole messages below the one holding the offset, and never the last
//!   message (its record count is what makes the durable end exact).
//!
//! What the server promises is checked, not assumed: [`JetStreamLog::durability`] says whether the
//! server version and the stream's replicas are what durable acknowledgements need.

pub mod local;
pub mod message;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage, message::StreamMessage, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use hoistway_log::{Error, Log, Offset, Record, Result};

/// Bits of an offset that hold a record's place in its message.
const INDEX_BITS: u32 = 16;
/// How often a reader at the end asks the server whether the stream moved on.
const POLL: Duration = Duration::from_millis(50);
/// Messages fetched at once by a read.
const READ_AHEAD: usize = 8;
/// Record counts of the latest messages kept, so that a read from just past a message does
/// not fetch it again to learn that nothing of it is left.
const KNOWN_COUNTS: usize = 64;

/// The offset of record `index` of the message at stream sequence `seq` (≥ 1).
pub fn offset_of(seq: u64, index: usize) -> Offset {
    ((seq - 1) << INDEX_BITS) | index as u64
}

/// The stream sequence and record index an offset names.
pub fn position_of(offset: Offset) -> (u64, usize) {
    (
        (offset >> INDEX_BITS) + 1,
        (offset & ((1 << INDEX_BITS) - 1)) as usize,
    )
}

/// The streams' name prefix unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "HOISTWAY_LOG";

/// Where the log lives and how its stream is set up.
#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    /// NATS server URLs (`nats://host:4222`); the client fails over between them.
    pub servers: Vec<String>,
    /// The stream, one per partition (`HOISTWAY_LOG_<partition>`).
    pub stream: String,
    /// The stream's one subject (`hoistway.log.<partition>`).
    pub subject: String,
    /// Replicas of the stream; 3 for production (a lone server's disk is a single point of loss).
    pub replicas: usize,
    /// The stream's byte limit; at it, appends fail (transient: ingest answers 503) instead of
    /// old messages being dropped. `None`: the server's account limit.
    pub max_bytes: Option<u64>,
    /// How long the server remembers message ids (drops a retried publish within it).
    pub duplicate_window: Duration,
    /// How long a publish waits for its acknowledgement before it is sent again.
    pub ack_timeout: Duration,
    /// Sends of one message before the append fails.
    pub publish_attempts: u32,
    /// The servers' monitoring URLs (`http://nats-1:8222`), read at open to check that each
    /// syncs before acknowledging. Empty: that stays unverified.
    pub monitors: Vec<String>,
    /// The edge regions (each the JetStream domain of its NATS servers) whose stream of this
    /// partition this stream takes in: NATS sources them, resuming after an outage. `None`:
    /// as the stream has them (a node that does not manage them); `Some`: exactly these.
    pub sources: Option<Vec<String>>,
    prefix: String,
    partition: u32,
}

impl JetStreamConfig {
    /// The stream of `partition` on `servers` (`HOISTWAY_LOG_<partition>`), with production
    /// defaults.
    pub fn new(servers: Vec<String>, partition: u32) -> Self {
        Self::named(servers, DEFAULT_PREFIX, partition)
    }

    /// The stream `<prefix>_<partition>` on subject `<prefix, lower case, _ as .>.<partition>`
    /// (several deployments, or a benchmark, on one NATS account).
    pub fn named(servers: Vec<String>, prefix: &str, partition: u32) -> Self {
        JetStreamConfig {
            servers,
            stream: format!("{prefix}_{partition}"),
            subject: format!(
                "{}.{partition}",
                prefix.to_ascii_lowercase().replace('_', ".")
            ),
            replicas: 3,
            max_bytes: None,
            duplicate_window: Duration::from_secs(120),
            ack_timeout: Duration::from_secs(5),
            publish_attempts: 3,
            monitors: Vec::new(),
            sources: None,
            prefix: prefix.to_owned(),
            partition,
        }
    }

    /// This partition's stream in edge region `region` instead, created in the region's own
    /// JetStream domain (`<prefix>_<region>_<partition>`, subject `<…>.<region>.<partition>`):
    /// the processing region's stream takes it in (see [`sources`](Self::sources)).
    pub fn in_region(mut self, region: &str) -> Self {
        self.stream = edge_stream(&self.prefix, region, self.partition);
        self.subject = edge_subject(&self.prefix, region, self.partition);
        self
    }
}

/// Whether `region` can name an edge region: it is a JetStream domain, a subject token and part
/// of a stream name (letters, digits, `-` and `_`, at most 32).
pub fn valid_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 32
        && region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn edge_stream(prefix: &str, region: &str, partition: u32) -> String {
    format!("{prefix}_{region}_{partition}")
}

fn edge_subject(prefix: &str, region: &str, partition: u32) -> String {
    format!(
        "{}.{region}.{partition}",
        prefix.to_ascii_lowercase().replace('_', ".")
    )
}

/// The edge region (JetStream domain) a source is in, from its API prefix (`$JS.<domain>.API`).
fn region_of(source: &stream::Source) -> Option<String> {
    let api = &source.external.as_ref()?.api_prefix;
    Some(api.strip_prefix("$JS.")?.strip_suffix(".API")?.to_owned())
}

/// An edge region's stream that this stream takes in.
#[derive(Debug, Clone)]
struct Edge {
    region: String,
    stream: String,
    /// Its messages keep their subject here.
    subject: String,
}

impl Edge {
    fn new(prefix: &str, region: &str, partition: u32) -> Self {
        Edge {
            region: region.to_owned(),
            stream: edge_stream(prefix, region, partition),
            subject: edge_subject(prefix, region, partition),
        }
    }

    /// How this stream sources it.
    fn as_source(&self) -> stream::Source {
        stream::Source {
            name: self.stream.clone(),
            // From the edge's first message whenever this stream holds none of its messages
            // to resume after; by default NATS would start at this stream's newest message's
            // time once it was truncated, skipping what the edge took meanwhile.
            start_sequence: Some(1),
            // The region's JetStream API, through the leaf node connection.
            external: Some(stream::External {
                api_prefix: format!("$JS.{}.API", self.region),
                delivery_prefix: None,
            }),
            ..Default::default()
        }
    }
}

/// The sequence in its source stream of a message a stream took in, from its
/// `Nats-Stream-Source` header (`<stream>[:<hash>] <sequence> …`).
fn source_sequence(header: &str) -> Option<u64> {
    header.split_whitespace().nth(1)?.parse().ok()
}

/// Why the log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot connect to NATS at {servers}: {source}")]
    Connect {
        servers: String,
        source: async_nats::ConnectError,
    },
    #[error("cannot create or read JetStream stream {stream}: {reason}")]
    Stream { stream: String, reason: String },
    /// The stream exists with settings that could lose or expire acknowledged readings.
    #[error("JetStream stream {stream} cannot hold Hoistway's log: {reason}")]
    Unsuitable { stream: String, reason: String },
    #[error(transparent)]
    Log(#[from] Error),
}

/// What the servers promise about an acknowledged message.
#[derive(Debug, Clone, PartialEq)]
pub struct Durability {
    /// The version of the server this client is connected to.
    pub server_version: String,
    /// Replicas of the stream.
    pub replicas: usize,
    /// What falls short of durable acknowledgements; empty when nothing does.
    pub problems: Vec<String>,
}

/// What one server's monitoring endpoint (`/varz`) says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerReport {
    /// The monitoring URL it came from.
    pub monitor: String,
    pub version: String,
    /// JetStream syncs before acknowledging (`sync_interval: always`).
    pub sync_always: bool,
}

impl ServerReport {
    /// Reads a `/varz` answer.
    pub fn parse(monitor: &str, varz: &[u8]) -> Result<Self, String> {
        let v: serde_json::Value =
            serde_json::from_slice(varz).map_err(|e| format!("not a /varz answer: {e}"))?;
        let version = v["version"]
            .as_str()
            .ok_or("no version in its /varz")?
            .to_owned();
        let jetstream = &v["jetstream"]["config"];
        if jetstream.is_null() {
            return Err("JetStream is not enabled on it".into());
        }
        Ok(ServerReport {
            monitor: monitor.to_owned(),
            version,
            sync_always: jetstream["sync_always"].as_bool().unwrap_or(false),
        })
    }
}

impl Durability {
    /// The first server release with the fixes for acknowledged writes lost under failures.
    pub const MIN_VERSION: (u64, u64, u64) = (2, 12, 3);

    /// What the connected server (`server_version`), a stream of `replicas` and each server's
    /// monitoring report (or why it could not be read) fall short of. Without reports the
    /// servers' `sync_interval` is unknown: clients cannot see it.
    pub fn assess(
        server_version: &str,
        replicas: usize,
        reports: &[Result<ServerReport, String>],
    ) -> Self {
        let mut problems = Vec::new();
        let old = |version: &str| parse_version(version).is_none_or(|v| v < Self::MIN_VERSION);
        if old(server_version) {
            problems.push(format!(
                "NATS server {server_version} is older than 2.12.3, which fixed acknowledged writes lost under failures"
            ));
        }
        if replicas < 3 {
            problems.push(format!(
                "the stream has {replicas} replica(s): one machine's disk is a single point of loss (use 3)"
            ));
        }
        if reports.is_empty() {
            problems.push(
                "the servers' sync_interval is unknown (clients cannot see it): list their monitoring URLs in cluster.nats_monitor".to_owned(),
            );
        }
        for report in reports {
            match report {
                Err(why) => problems.push(why.clone()),
                Ok(r) if !r.sync_always => problems.push(format!(
                    "the server at {} acknowledges before it syncs (set sync_interval: always)",
                    r.monitor
                )),
                Ok(r) if old(&r.version) => problems.push(format!(
                    "the server at {} runs NATS {}, older than 2.12.3",
                    r.monitor, r.version
                )),
                Ok(_) => {}
            }
        }
        Durability {
            server_version: server_version.to_owned(),
            replicas,
            problems,
        }
    }

    pub fn verified(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Each monitoring endpoint's report (`{url}/varz`), or why it could not be read.
pub async fn read_monitors(monitors: &[String]) -> Vec<Result<ServerReport, String>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("an HTTP client");
    let mut out = Vec::with_capacity(monitors.len());
    for monitor in monitors {
        let url = format!("{}/varz", monitor.trim_end_matches('/'));
        let body = async {
            let response = client.get(&url).send().await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("HTTP {}", response.status()));
            }
            response.bytes().await.map_err(|e| e.to_string())
        };
        out.push(
            body.await
                .and_then(|b| ServerReport::parse(monitor, &b))
                .map_err(|e| format!("cannot read {url}: {e}")),
        );
    }
    out
}

fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.trim_start_matches('v').split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// One partition's log on a JetStream stream. See the crate documentation.
pub struct JetStreamLog {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    name: String,
    subject: String,
    /// This writer's message ids: `{writer}-{n}`.
    writer: String,
    next_id: AtomicU64,
    /// The largest message the server takes (its `max_payload`, less room for headers).
    max_message: usize,
    publish_attempts: u32,
    start: AtomicU64,
    end: AtomicU64,
    bytes: AtomicU64,
    appended: tokio::sync::Notify,
    /// (sequence, record count) of messages lately appended or read, newest last.
    counts: std::sync::Mutex<std::collections::VecDeque<(u64, usize)>>,
    /// Payloads of messages fetched ahead of the last read, by sequence. A message never
    /// changes once in the stream, so these are what a fetch would return; they spare a reader
    /// that stopped inside a window (at `max_bytes`) fetching the rest of it again.
    ahead: std::sync::Mutex<std::collections::BTreeMap<u64, Bytes>>,
    durability: Durability,
    /// The edge regions' streams this one takes in.
    edges: Vec<Edge>,
    /// What the server last said about them, and when.
    seen_sources: std::sync::Mutex<Option<(Instant, Vec<stream::SourceInfo>)>>,
    /// An edge trim is under way.
    trimming: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ack_timeout: Duration,
}

impl JetStreamLog {
    /// Connects, creates the stream if it does not exist (or checks that the one there cannot
    /// expire or drop acknowledged records), and reads how far it reaches.
    pub async fn open(config: JetStreamConfig) -> Result<Self, OpenError> {
        let client = async_nats::ConnectOptions::new()
            .name("hoistway")
            .connection_timeout(Duration::from_secs(5))
            .connect(config.servers.clone())
            .await
            .map_err(|source| OpenError::Connect {
                servers: config.servers.join(","),
                source,
            })?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.ack_timeout)
            .build(client.clone());
        let edges_wanted: Option<Vec<Edge>> = config.sources.as_ref().map(|regions| {
            regions
                .iter()
                .map(|r| Edge::new(&config.prefix, r, config.partition))
                .collect()
        });
        let sources_of = |edges: &[Edge]| -> Option<Vec<stream::Source>> {
            (!edges.is_empty()).then(|| edges.iter().map(Edge::as_source).collect())
        };
        let wanted = stream::Config {
            name: config.stream.clone(),
            sources: edges_wanted.as_deref().and_then(sources_of),
            subjects: vec![config.subject.clone()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::New,
            max_bytes: config.max_bytes.map_or(-1, |b| b as i64),
            max_age: Duration::ZERO,
            num_replicas: config.replicas,
            duplicate_window: config.duplicate_window,
            deny_delete: true,
            ..Default::default()
        };
        let unsuitable = |reason: String| OpenError::Unsuitable {
            stream: config.stream.clone(),
            reason,
        };
        let mut stream = js
            .get_or_create_stream(wanted)
            .await
            .map_err(|e| OpenError::Stream {
                stream: config.stream.clone(),
                reason: e.to_string(),
            })?;
        let mut info = stream.info().await.map_err(|e| OpenError::Stream {
            stream: config.stream.clone(),
            reason: e.to_string(),
        })?;
        let source_key = |s: &stream::Source| (s.name.clone(), region_of(s), s.start_sequence);
        let have_sources: std::collections::BTreeSet<_> = info
            .config
            .sources
            .iter()
            .flatten()
            .map(source_key)
            .collect();
        if let Some(edges) = &edges_wanted {
            let want: std::collections::BTreeSet<_> =
                sources_of(edges).iter().flatten().map(source_key).collect();
            if want != have_sources {
                tracing::info!(stream = %config.stream, edges = ?config.sources, "setting the edge regions the stream takes in");
                let mut changed = info.config.clone();
                changed.sources = sources_of(edges);
                js.update_stream(&changed)
                    .await
                    .map_err(|e| OpenError::Stream {
                        stream: config.stream.clone(),
                        reason: format!("cannot set its sources: {e}"),
                    })?;
                info = stream.info().await.map_err(|e| OpenError::Stream {
                    stream: config.stream.clone(),
                    reason: e.to_string(),
                })?;
            }
        }
        let edges: Vec<Edge> = info
            .config
            .sources
            .iter()
            .flatten()
            .filter_map(|s| {
                Some(Edge {
                    stream: s.name.clone(),
                    ..Edge::new(&config.prefix, &region_of(s)?, config.partition)
                })
            })
            .collect();
        let have = &info.config;
        if have.max_age != Duration::ZERO {
            return Err(unsuitable(format!(
                "it expires messages after {:?}: unprocessed readings would be lost (set no age limit)",
                have.max_age
            )));
        }
        if have.retention != stream::RetentionPolicy::Limits {
            return Err(unsuitable(
                "its retention is not `limits`: messages would go before the processor checkpoints them".into(),
            ));
        }
        if have.discard != stream::DiscardPolicy::New
            && (have.max_bytes > 0 || have.max_messages > 0)
        {
            return Err(unsuitable(
                "it discards old messages at its limits: unprocessed readings would be dropped (set discard `new`)".into(),
            ));
        }
        if have.subjects != [config.subject.clone()] {
            return Err(unsuitable(format!(
                "its subjects are {:?}, not [{:?}]",
                have.subjects, config.subject
            )));
        }
        let reports = read_monitors(&config.monitors).await;
        let durability =
            Durability::assess(&client.server_info().version, have.num_replicas, &reports);
        let max_message = client
            .server_info()
            .max_payload
            .saturating_sub(512)
            .max(1024);
        let log = JetStreamLog {
            client,
            js,
            stream,
            name: config.stream,
            subject: config.subject,
            writer: format!("{:016x}", rand::random::<u64>()),
            next_id: AtomicU64::new(0),
            max_message,
            publish_attempts: config.publish_attempts.max(1),
            start: AtomicU64::new(0),
            end: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            appended: tokio::sync::Notify::new(),
            counts: Default::default(),
            ahead: Default::default(),
            durability,
            edges,
            seen_sources: Default::default(),
            trimming: Default::default(),
            ack_timeout: config.ack_timeout,
        };
        log.read_bounds().await?;
        Ok(log)
    }

    pub fn durability(&self) -> &Durability {
        &self.durability
    }

    /// The stream's name.
    pub fn stream_name(&self) -> &str {
        &self.name
    }

    /// Publishes one message under `id` until the stream acknowledges it, sending it again
    /// (same id: the server drops a copy it already stored) when an acknowledgement is lost.
    /// Returns the message's stream sequence. Public so that tests can repeat an id, as a
    /// retry after a lost acknowledgement does.
    #[doc(hidden)]
    pub async fn publish(&self, id: &str, payload: Bytes) -> Result<u64> {
        // Disconnected: refuse at once (ingest answers 503 and the lift sends again) rather
        // than hold the single writer for the acknowledgement timeouts.
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(Error::Write(std::io::Error::other(format!(
                "JetStream stream {}: not connected to NATS",
                self.name
            ))));
        }
        let size = payload.len() as u64;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = self
                .js
                .send_publish(
                    self.subject.clone(),
                    PublishMessage::build()
                        .payload(payload.clone())
                        .message_id(id),
                )
                .await;
            let acked = match sent {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match acked {
                Ok(ack) => {
                    if !ack.duplicate {
                        self.bytes.fetch_add(size, Ordering::Relaxed);
                    }
                    return Ok(ack.sequence);
                }
                Err(e) if attempt < self.publish_attempts && retryable(&e) => {
                    tracing::debug!(stream = %self.name, id, error = %e, "publish not acknowledged; sending it again");
                }
                Err(e) => {
                    return Err(Error::Write(std::io::Error::other(format!(
                        "JetStream stream {}: {e}",
                        self.name
                    ))));
                }
            }
        }
    }

    /// Reads the stream's bounds from the server: first and last sequence, and the last
    /// message's record count for an exact durable end.
    async fn read_bounds(&self) -> Result<()> {
        let info = self.stream.get_info().await.map_err(unavailable)?;
        if !self.edges.is_empty() {
            *self.seen_sources.lock().expect("not poisoned") =
                Some((Instant::now(), info.sources.clone()));
        }
        let state = info.state;
        self.bytes.store(state.bytes, Ordering::Relaxed);
        if state.last_sequence == 0 {
            return Ok(());
        }
        self.start
            .fetch_max(offset_of(state.first_sequence.max(1), 0), Ordering::AcqRel);
        if self.end.load(Ordering::Acquire) > offset_of(state.last_sequence, 0) {
            return Ok(());
        }
        let last = self.get(state.last_sequence).await?;
        let n = message::count(&last.payload).map_err(|e| self.damaged(state.last_sequence, e))?;
        self.learn_count(state.last_sequence, n);
        self.end
            .fetch_max(offset_of(state.last_sequence, n), Ordering::AcqRel);
        Ok(())
    }

    async fn get(&self, seq: u64) -> Result<StreamMessage> {
        self.stream.get_raw_message(seq).await.map_err(|e| {
            let start = self.start.load(Ordering::Acquire);
            if offset_of(seq, 0) < start {
                Error::Truncated {
                    offset: offset_of(seq, 0),
                    start,
                }
            } else {
                unavailable(e)
            }
        })
    }

    fn learn_count(&self, seq: u64, count: usize) {
        let mut counts = self.counts.lock().expect("not poisoned");
        if counts.iter().any(|(s, _)| *s == seq) {
            return;
        }
        if counts.len() == KNOWN_COUNTS {
            counts.pop_front();
        }
        counts.push_back((seq, count));
    }

    /// The first message a read from (`seq`, `index`) needs: the next one when `index` is past
    /// the end of a message whose record count is known.
    fn first_needed(&self, seq: u64, index: usize) -> (u64, usize) {
        let counts = self.counts.lock().expect("not poisoned");
        match counts.iter().find(|(s, _)| *s == seq) {
            Some(&(_, n)) if index >= n => (seq + 1, 0),
            _ => (seq, index),
        }
    }

    /// Lets each edge region drop what this stream has taken in from it (its own copy is not
    /// needed once this stream holds it): the last message from the edge here names its
    /// sequence there. In the background, one pass at a time: an edge out of reach is tried
    /// again at the next truncation.
    fn trim_edges(&self) {
        if self.edges.is_empty() || self.trimming.swap(true, Ordering::AcqRel) {
            return;
        }
        let (stream, client, edges, timeout, trimming) = (
            self.stream.clone(),
            self.client.clone(),
            self.edges.clone(),
            self.ack_timeout,
            self.trimming.clone(),
        );
        tokio::spawn(async move {
            for edge in &edges {
                let trimmed = async {
                    let last = stream
                        .get_last_raw_message_by_subject(&edge.subject)
                        .await
                        .map_err(|e| e.to_string())?;
                    let seq = last
                        .headers
                        .get("Nats-Stream-Source")
                        .and_then(|h| source_sequence(h.as_str()))
                        .ok_or("the message has no readable Nats-Stream-Source header")?;
                    let js = jetstream::ContextBuilder::new()
                        .domain(edge.region.clone())
                        .timeout(timeout)
                        .build(client.clone());
                    let there = js
                        .get_stream_no_info(&edge.stream)
                        .await
                        .map_err(|e| e.to_string())?;
                    there
                        .purge()
                        .sequence(seq)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<u64, String>(seq)
                };
                match trimmed.await {
                    Ok(seq) => {
                        tracing::debug!(region = %edge.region, below = seq, "edge stream trimmed")
                    }
                    Err(e) => {
                        tracing::debug!(region = %edge.region, error = %e, "edge stream not trimmed")
                    }
                }
            }
            trimming.store(false, Ordering::Release);
        });
    }

    fn damaged(&self, seq: u64, e: message::MessageError) -> Error {
        match e {
            message::MessageError::Version(version) => Error::Format {
                file: format!("JetStream stream {} message {seq}", self.name),
                version: version.into(),
                reads: message::MESSAGE_VERSION.to_string(),
            },
            message::MessageError::Corrupt { index, reason } => Error::Corrupt {
                offset: offset_of(seq, index),
                reason: format!("JetStream stream {} message {seq}: {reason}", self.name),
            },
        }
    }
}

fn retryable(e: &jetstream::context::PublishError) -> bool {
    use jetstream::context::PublishErrorKind as K;
    matches!(e.kind(), K::TimedOut | K::BrokenPipe | K::MaxAckPending)
}

/// A request to the server that failed: the server or the way to it, not the data.
fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::Unavailable(e.to_string())
}

#[async_trait]
impl Log for JetStreamLog {
    async fn refresh(&self) -> Result<()> {
        self.read_bounds().await
    }

    async fn append(&self, records: Vec<Bytes>) -> Result<Vec<Offset>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let parts = message::split(&records, self.max_message).map_err(Error::RecordTooLarge)?;
        let mut offsets = Vec::with_capacity(records.len());
        for part in parts {
            let id = format!(
                "{}-{}",
                self.writer,
                self.next_id.fetch_add(1, Ordering::Relaxed)
            );
            let seq = self.publish(&id, message::encode(part)).await?;
            offsets.extend((0..part.len()).map(|i| offset_of(seq, i)));
            self.learn_count(seq, part.len());
            self.end
                .fetch_max(offset_of(seq, part.len()), Ordering::AcqRel);
        }
        self.appended.notify_waiters();
        Ok(offsets)
    }

    async fn read(&self, from: Offset, max_bytes: usize) -> Result<Vec<Record>> {
        if from >= self.end.load(Ordering::Acquire) {
            self.read_bounds().await?;
            if from >= self.end.load(Ordering::Acquire) {
                return Ok(Vec::new());
            }
        }
        let start = self.start.load(Ordering::Acquire);
        if from < start {
            return Err(Error::Truncated {
                offset: from,
                start,
            });
        }
        let (first, skip) = {
            let (seq, index) = position_of(from);
            self.first_needed(seq, index)
        };
        let (last, _) = position_of(self.end.load(Ordering::Acquire) - 1);
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut seq = first;
        'windows: while seq <= last {
            // A window of messages: those not fetched ahead before, side by side.
            let window = seq..=last.min(seq + READ_AHEAD as u64 - 1);
            let missing: Vec<u64> = {
                let ahead = self.ahead.lock().expect("not poisoned");
                window.clone().filter(|s| !ahead.contains_key(s)).collect()
            };
            let fetched = futures::stream::iter(missing)
                .map(|seq| async move { self.get(seq).await.map(|m| (seq, m)) })
                .buffered(READ_AHEAD)
                .try_collect::<Vec<_>>()
                .await?;
            let mut messages = Vec::with_capacity(READ_AHEAD);
            {
                let mut ahead = self.ahead.lock().expect("not poisoned");
                for (s, m) in fetched {
                    ahead.insert(s, m.payload);
                }
                for s in window {
                    match ahead.get(&s) {
                        Some(payload) => messages.push((s, payload.clone())),
                        // Let go by a reader elsewhere in the stream meanwhile: the next
                        // window fetches it again.
                        None => break,
                    }
                }
            }
            for (s, message) in messages {
                if !out.is_empty() && bytes >= max_bytes {
                    break 'windows;
                }
                // Decoded only when reached: a damaged message further on fails the read
                // that gets to it, not one that stops before.
                let records = message::decode(&message).map_err(|e| self.damaged(s, e))?;
                self.learn_count(s, records.len());
                let from_index = if s == first { skip } else { 0 };
                for (i, payload) in records.into_iter().enumerate().skip(from_index) {
                    if !out.is_empty() && bytes + payload.len() > max_bytes {
                        break 'windows;
                    }
                    bytes += payload.len();
                    out.push(Record {
                        offset: offset_of(s, i),
                        payload,
                    });
                }
                seq = s + 1;
            }
        }
        // Keep what the next read from here needs: the message it starts in and those after.
        let mut ahead = self.ahead.lock().expect("not poisoned");
        ahead.retain(|&s, _| s >= seq);
        while ahead.len() > 2 * READ_AHEAD {
            ahead.pop_last();
        }
        Ok(out)
    }

    async fn wait_for_data(&self, offset: Offset, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.end.load(Ordering::Acquire) > offset {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            // This node's own appends wake at once; other writers' are seen by polling.
            let appended = self.appended.notified();
            let _ = tokio::time::timeout((deadline - now).min(POLL), appended).await;
            if self.end.load(Ordering::Acquire) <= offset
                && let Err(e) = self.read_bounds().await
            {
                tracing::debug!(stream = %self.name, error = %e, "reading the stream's end failed");
            }
        }
    }

    async fn truncate_before(&self, offset: Offset) -> Result<()> {
        self.trim_edges();
        let end = self.end.load(Ordering::Acquire);
        if end == 0 {
            return Ok(());
        }
        // Never the last message: its record count makes the durable end exact.
        let (last, _) = position_of(end - 1);
        let (keep_from, _) = position_of(offset);
        let keep_from = keep_from.min(last);
        if offset_of(keep_from, 0) <= self.start.load(Ordering::Acquire) {
            return Ok(());
        }
        self.stream
            .purge()
            .sequence(keep_from)
            .await
            .map_err(unavailable)?;
        self.start
            .fetch_max(offset_of(keep_from, 0), Ordering::AcqRel);
        // the bytes it freed (the byte limit answers 503 at ingest)
        self.read_bounds().await
    }

    fn start(&self) -> Offset {
        self.start.load(Ordering::Acquire)
    }

    fn durable_end(&self) -> Offset {
        self.end.load(Ordering::Acquire)
    }

    fn size_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn poisoned(&self) -> Option<String> {
        None
    }

    fn unavailable(&self) -> Option<String> {
        (self.client.connection_state() != async_nats::connection::State::Connected).then(|| {
            format!(
                "not connected to NATS (JetStream stream {}); reconnecting",
                self.name
            )
        })
    }

    fn durability_unverified(&self) -> Option<String> {
        (!self.durability.verified()).then(|| {
            format!(
                "log durability unverified (JetStream stream {}): {}",
                self.name,
                self.durability.problems.join("; ")
            )
        })
    }

    fn sources(&self) -> Vec<hoistway_log::Source> {
        let seen = self.seen_sources.lock().expect("not poisoned");
        self.edges
            .iter()
            .map(|e| {
                let info = seen.as_ref().and_then(|(at, infos)| {
                    infos
                        .iter()
                        .find(|i| i.name == e.stream)
                        .map(|i| (i.lag, i.active.map(|a| a + at.elapsed())))
                });
                hoistway_log::Source {
                    region: e.region.clone(),
                    backlog: info.map_or(0, |i| i.0),
                    last_contact: info.and_then(|i| i.1),
                }
            })
            .collect()
    }

    fn entries_behind(&self, from: Offset) -> u64 {
        let end = self.end.load(Ordering::Acquire);
        if from >= end {
            return 0;
        }
        let (last, _) = position_of(end - 1);
        last + 1 - position_of(from).0
    }
}
