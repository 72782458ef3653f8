//! The simulation loop: schedule readings, dispatch them to connection workers, keep the ledger.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hoistway_model::{DedupWindow, Seen, SeqSet};
use hyper::{Method, StatusCode};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc, watch};

use crate::client::Connection;
use crate::lift::{SimLift, SimReading};

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub lifts: usize,
    /// Device time between two readings of one lift.
    pub interval: Duration,
    /// Device time runs this many times faster than real time.
    pub speedup: f64,
    pub connections: usize,
    /// Chance per reading that the lift's link goes down.
    pub outage_rate: f64,
    /// How many readings an outage lasts (min, max).
    pub outage_readings: (u32, u32),
    /// Chance per request of also sending a reading that was already acknowledged.
    pub duplicate_rate: f64,
    /// Most buffered readings resent in one request (as a JSON array, out of order).
    pub resend_batch: usize,
    pub seed: u64,
    pub prefix: String,
    pub request_timeout: Duration,
    /// How long the run is meant to last; device time starts that much (× speedup) in the past
    /// so it never runs ahead of the server's clock.
    pub planned_duration: Option<Duration>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            lifts: 1000,
            interval: Duration::from_secs(10),
            speedup: 1.0,
            connections: 32,
            outage_rate: 1.0 / 3000.0,
            outage_readings: (3, 60),
            duplicate_rate: 0.01,
            resend_batch: 50,
            seed: 1,
            prefix: "SIM-".into(),
            request_timeout: Duration::from_secs(10),
            planned_duration: None,
        }
    }
}

/// Live counters, readable while the simulation runs (for progress displays).
#[derive(Debug, Default)]
pub struct SimStats {
    pub generated: AtomicU64,
    pub acked: AtomicU64,
    pub server_accepted: AtomicU64,
    pub server_duplicates: AtomicU64,
    pub rejected: AtomicU64,
    pub failed_requests: AtomicU64,
    pub requests: AtomicU64,
    pub buffered: AtomicU64,
}

/// What the server must show for one lift.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LiftTotals {
    pub readings: u64,
    pub trips: u64,
    pub door_cycles: u64,
    pub epoch: u64,
    pub seqs: SeqSet,
}

/// Per-lift totals of every reading the server acknowledged (accepted or duplicate).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ledger {
    pub lifts: HashMap<String, LiftTotals>,
}

impl Ledger {
    fn record(&mut self, lift: &str, epoch: u64, r: &SimReading) {
        let window = DedupWindow {
            seqs: u64::MAX,
            max_ranges: usize::MAX,
            max_epochs: 1,
        };
        let t = self.lifts.entry(lift.to_string()).or_default();
        t.epoch = epoch;
        if t.seqs.insert(r.seq, &window) == Seen::New {
            t.readings += 1;
            t.trips += r.trips;
            t.door_cycles += r.door_cycles;
        }
    }

    pub fn total_readings(&self) -> u64 {
        self.lifts.values().map(|t| t.readings).sum()
    }
}

struct Slot {
    lift: SimLift,
    pending: VecDeque<SimReading>,
    last_acked: Option<SimReading>,
    in_flight: bool,
    retry_at: Option<Instant>,
    failures: u32,
    /// In the ready queue already.
    queued: bool,
}

struct Job {
    slot: usize,
    lift: String,
    seqs: Vec<u64>,
    body: Bytes,
}

enum JobResult {
    Acked {
        slot: usize,
        seqs: Vec<u64>,
        rejected: Vec<usize>,
    },
    Failed {
        slot: usize,
    },
}

#[derive(Deserialize)]
struct TelemetryReply {
    accepted: u64,
    duplicates: u64,
    #[serde(default)]
    rejected: Vec<RejectedItem>,
}

#[derive(Deserialize)]
struct RejectedItem {
    index: usize,
}

/// Each lift's tokens, by slot (`None`: the lift posts without a token).
type Credentials = Arc<Vec<parking_lot::Mutex<Option<crate::device::DeviceTokens>>>>;

pub struct Simulator {
    credentials: Credentials,
    config: SimConfig,
    slots: Vec<Slot>,
    rng: SmallRng,
    stats: Arc<SimStats>,
    ledger: Ledger,
    jobs: mpsc::Sender<Job>,
    results: mpsc::UnboundedReceiver<JobResult>,
    /// Device time of round 0, position 0.
    device_start_us: i64,
    real_start: Instant,
    /// Next (round, position) to generate.
    next: (u64, usize),
    epoch: u64,
    /// Lifts that may have something to send; work is proportional to activity, not fleet size.
    ready: VecDeque<usize>,
    retries: BinaryHeap<Reverse<(Instant, usize)>>,
    pending_count: u64,
    in_flight_count: u64,
}

impl Simulator {
    pub fn new(config: SimConfig, addr: SocketAddr) -> Self {
        let mut rng = SmallRng::seed_from_u64(config.seed);
        // Each run is a new controller boot for every lift: seqs restart at 1 under a new,
        // larger epoch (the contract of docs/device-api.md), so runs never collide.
        let epoch = (hoistway_model::time::now_us() / 1_000_000) as u64;
        let slots = (0..config.lifts)
            .map(|i| Slot {
                lift: SimLift::new(format!("{}{:06}", config.prefix, i), &mut rng, epoch),
                pending: VecDeque::new(),
                last_acked: None,
                in_flight: false,
                retry_at: None,
                failures: 0,
                queued: false,
            })
            .collect();
        let (jobs, job_rx) = mpsc::channel::<Job>(config.connections * 4);
        let (result_tx, results) = mpsc::unbounded_channel();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let stats = Arc::new(SimStats::default());
        let credentials: Credentials = Arc::new(
            (0..config.lifts)
                .map(|_| parking_lot::Mutex::new(None))
                .collect(),
        );
        for _ in 0..config.connections.max(1) {
            let job_rx = job_rx.clone();
            let result_tx = result_tx.clone();
            let stats = stats.clone();
            let timeout = config.request_timeout;
            let credentials = credentials.clone();
            tokio::spawn(async move {
                let mut conn = Connection::new(addr);
                loop {
                    let job = { job_rx.lock().await.recv().await };
                    let Some(job) = job else { return };
                    stats.requests.fetch_add(1, Ordering::Relaxed);
                    let tokens = credentials[job.slot].lock().clone();
                    conn.set_bearer(tokens.as_ref().map(|t| t.access_token.clone()));
                    let reply = conn
                        .send(
                            Method::POST,
                            "/v1/telemetry",
                            "application/json",
                            job.body,
                            timeout,
                        )
                        .await;
                    let result = match reply {
                        Ok(r) if r.status == StatusCode::OK => {
                            match serde_json::from_slice::<TelemetryReply>(&r.body) {
                                Ok(t) => {
                                    stats
                                        .server_accepted
                                        .fetch_add(t.accepted, Ordering::Relaxed);
                                    stats
                                        .server_duplicates
                                        .fetch_add(t.duplicates, Ordering::Relaxed);
                                    JobResult::Acked {
                                        slot: job.slot,
                                        seqs: job.seqs,
                                        rejected: t.rejected.iter().map(|r| r.index).collect(),
                                    }
                                }
                                Err(_) => JobResult::Failed { slot: job.slot },
                            }
                        }
                        Ok(r) if r.status == StatusCode::UNPROCESSABLE_ENTITY => {
                            tracing::warn!(body = %String::from_utf8_lossy(&r.body), "server rejected simulated readings");
                            JobResult::Acked {
                                slot: job.slot,
                                rejected: (0..job.seqs.len()).collect(),
                                seqs: job.seqs,
                            }
                        }
                        Ok(r) if r.status == StatusCode::UNAUTHORIZED && tokens.is_some() => {
                            // The access token expired: refresh it, then the retry sends it.
                            let lift = job.lift.clone();
                            let old = tokens.expect("checked");
                            match crate::device::refresh(&mut conn, &lift, &old.refresh_token).await
                            {
                                Ok(new) => *credentials[job.slot].lock() = Some(new),
                                Err(e) => tracing::warn!(error = %e, "refresh failed"),
                            }
                            JobResult::Failed { slot: job.slot }
                        }
                        _ => JobResult::Failed { slot: job.slot },
                    };
                    if result_tx.send(result).is_err() {
                        return;
                    }
                }
            });
        }
        let now_us = hoistway_model::time::now_us();
        let catch_up = config
            .planned_duration
            .map(|d| d.as_micros() as f64 * (config.speedup - 1.0).max(0.0))
            .unwrap_or(0.0) as i64;
        Self {
            rng,
            slots,
            stats,
            ledger: Ledger::default(),
            jobs,
            results,
            device_start_us: now_us - catch_up - config.interval.as_micros() as i64,
            real_start: Instant::now(),
            next: (0, 0),
            epoch,
            ready: VecDeque::new(),
            retries: BinaryHeap::new(),
            pending_count: 0,
            in_flight_count: 0,
            credentials,
            config,
        }
    }

    /// Registers every lift as a factory does (`operator_token` provisions them, each lift
    /// exchanges its one-time code), so that each posts with its own access token from then on.
    pub async fn enrol(&self, addr: SocketAddr, operator_token: &str) -> Result<(), String> {
        let mut tokens = crate::device::provision(
            addr,
            operator_token,
            self.registry_csv(),
            self.config.connections,
        )
        .await?;
        for (slot, s) in self.credentials.iter().zip(&self.slots) {
            *slot.lock() = tokens.remove(&s.lift.id);
        }
        Ok(())
    }

    pub fn stats(&self) -> Arc<SimStats> {
        self.stats.clone()
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn lift_ids(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(|s| s.lift.id.as_str())
    }

    /// CSV for `POST /v1/lifts/import`: buildings of ~8 lifts, a handful of customers.
    pub fn registry_csv(&self) -> String {
        let mut out = String::from("lift_id,building,site,customer,model,install_date\n");
        for (i, s) in self.slots.iter().enumerate() {
            let building = i / 8;
            out.push_str(&format!(
                "{},B{:05},S{:04},customer-{},HW-{},20{:02}-0{}-1{}\n",
                s.lift.id,
                building,
                building / 10,
                building % 7,
                ["2000", "3300", "5500"][i % 3],
                10 + i % 15,
                1 + i % 9,
                i % 10
            ));
        }
        out
    }

    fn mark_ready(&mut self, i: usize) {
        let s = &mut self.slots[i];
        if !s.queued && !s.in_flight && s.retry_at.is_none() && !s.pending.is_empty() {
            s.queued = true;
            self.ready.push_back(i);
        }
    }

    /// Generates and sends readings until `stop` turns true or `duration` passes.
    pub async fn run(&mut self, duration: Option<Duration>, mut stop: watch::Receiver<bool>) {
        let until = duration.map(|d| Instant::now() + d);
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            if *stop.borrow() || until.is_some_and(|u| Instant::now() >= u) {
                break;
            }
            tokio::select! {
                _ = tick.tick() => {
                    self.generate_due();
                    self.dispatch().await;
                }
                Some(r) = self.results.recv() => self.handle(r),
                _ = stop.changed() => {}
            }
        }
    }

    /// Stops generating and resends until every buffered reading is acknowledged (true) or the
    /// timeout passes (false).
    pub async fn drain(&mut self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        for i in 0..self.slots.len() {
            self.slots[i].lift.power_off_until_us = None;
            self.mark_ready(i);
        }
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        while Instant::now() < until {
            if self.pending_count == 0 && self.in_flight_count == 0 {
                return true;
            }
            tokio::select! {
                _ = tick.tick() => self.dispatch().await,
                Some(r) = self.results.recv() => self.handle(r),
            }
        }
        false
    }

    fn generate_due(&mut self) {
        let n = self.slots.len().max(1);
        let interval_us = self.config.interval.as_micros() as f64;
        let real_interval = interval_us / self.config.speedup.max(0.001);
        let elapsed_us = self.real_start.elapsed().as_micros() as f64;
        let now_us = hoistway_model::time::now_us();
        loop {
            let (round, pos) = self.next;
            let frac = round as f64 + pos as f64 / n as f64;
            if frac * real_interval > elapsed_us {
                break;
            }
            let ts_us = (self.device_start_us + (frac * interval_us) as i64).min(now_us);
            let slot = &mut self.slots[pos];
            if let Some(off_until) = slot.lift.power_off_until_us
                && ts_us >= off_until
            {
                slot.lift.power_off_until_us = None;
                slot.lift.just_restored = true;
            }
            let reading =
                slot.lift
                    .next_reading(ts_us, self.config.interval.as_secs_f64(), &mut self.rng);
            slot.pending.push_back(reading);
            self.pending_count += 1;
            self.stats.generated.fetch_add(1, Ordering::Relaxed);
            if slot.lift.power_off_until_us.is_none()
                && self
                    .rng
                    .random_bool(self.config.outage_rate.clamp(0.0, 1.0))
            {
                let (lo, hi) = self.config.outage_readings;
                let k = self.rng.random_range(lo..=hi.max(lo)) as f64;
                slot.lift.power_off_until_us = Some(ts_us + (k * interval_us) as i64);
            }
            if self.slots[pos].lift.power_off_until_us.is_none() {
                self.mark_ready(pos);
            }
            self.next = if pos + 1 == n {
                (round + 1, 0)
            } else {
                (round, pos + 1)
            };
        }
    }

    async fn dispatch(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, i))) = self.retries.peek().copied() {
            if at > now {
                break;
            }
            self.retries.pop();
            self.slots[i].retry_at = None;
            self.mark_ready(i);
        }
        while let Some(i) = self.ready.pop_front() {
            let slot = &mut self.slots[i];
            slot.queued = false;
            if slot.in_flight
                || slot.pending.is_empty()
                || slot.lift.power_off_until_us.is_some()
                || slot.retry_at.is_some()
            {
                continue;
            }
            // The newest reading first, then older buffered ones in a shuffled order.
            let mut picks: Vec<usize> = vec![slot.pending.len() - 1];
            if slot.pending.len() > 1 {
                let mut older: Vec<usize> = (0..slot.pending.len() - 1).collect();
                let take = older.len().min(self.config.resend_batch.saturating_sub(1));
                for k in 0..take {
                    let j = self.rng.random_range(k..older.len());
                    older.swap(k, j);
                }
                picks.extend_from_slice(&older[..take]);
            }
            let mut items: Vec<&serde_json::Value> =
                picks.iter().map(|&k| &slot.pending[k].json).collect();
            let mut seqs: Vec<u64> = picks.iter().map(|&k| slot.pending[k].seq).collect();
            if let Some(dup) = &slot.last_acked
                && self
                    .rng
                    .random_bool(self.config.duplicate_rate.clamp(0.0, 1.0))
            {
                items.push(&dup.json);
                seqs.push(dup.seq);
            }
            let body = if items.len() == 1 {
                serde_json::to_vec(items[0])
            } else {
                serde_json::to_vec(&items)
            }
            .expect("json");
            slot.in_flight = true;
            self.in_flight_count += 1;
            let job = Job {
                slot: i,
                lift: slot.lift.id.clone(),
                seqs,
                body: Bytes::from(body),
            };
            match self.jobs.try_send(job) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(job)) => {
                    // Workers are busy: wait for room rather than spin, keeping results flowing.
                    if self.jobs.send(job).await.is_err() {
                        return;
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
        self.stats
            .buffered
            .store(self.pending_count, Ordering::Relaxed);
        while let Ok(r) = self.results.try_recv() {
            self.handle(r);
        }
    }

    fn handle(&mut self, r: JobResult) {
        match r {
            JobResult::Acked {
                slot,
                seqs,
                rejected,
            } => {
                self.in_flight_count -= 1;
                let s = &mut self.slots[slot];
                s.in_flight = false;
                s.failures = 0;
                s.retry_at = None;
                for (idx, seq) in seqs.iter().enumerate() {
                    let Some(pos) = s.pending.iter().position(|p| p.seq == *seq) else {
                        continue; // the duplicate we added, or already acknowledged
                    };
                    let reading = s.pending.remove(pos).expect("present");
                    self.pending_count -= 1;
                    if rejected.contains(&idx) {
                        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    self.ledger.record(&s.lift.id, self.epoch, &reading);
                    self.stats.acked.fetch_add(1, Ordering::Relaxed);
                    s.last_acked = Some(reading);
                }
                self.mark_ready(slot);
            }
            JobResult::Failed { slot } => {
                self.in_flight_count -= 1;
                let s = &mut self.slots[slot];
                s.in_flight = false;
                s.failures += 1;
                let backoff = Duration::from_millis(50 * 2u64.pow(s.failures.min(6)));
                let jitter = Duration::from_millis(self.rng.random_range(0..50));
                let at = Instant::now() + backoff.min(Duration::from_secs(2)) + jitter;
                s.retry_at = Some(at);
                self.retries.push(Reverse((at, slot)));
                self.stats.failed_requests.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Compares the server's state with the ledger; returns one line per disagreement.
/// `token`: a staff token that may read lift state.
pub async fn verify(addr: SocketAddr, token: Option<&str>, ledger: &Ledger) -> Vec<String> {
    #[derive(Deserialize)]
    struct State {
        readings_total: u64,
        trips_total: u64,
        door_cycles_total: u64,
        #[serde(default)]
        seq_ranges: Option<Vec<Ranges>>,
    }
    #[derive(Deserialize)]
    struct Ranges {
        epoch: u64,
        ranges: Vec<(u64, u64)>,
    }
    let mut conn = Connection::new(addr).with_bearer(token.map(str::to_string));
    let mut problems = Vec::new();
    let mut ids: Vec<_> = ledger.lifts.keys().collect();
    ids.sort();
    for id in ids {
        let want = &ledger.lifts[id];
        let reply = match conn
            .send(
                Method::GET,
                &format!("/v1/lifts/{id}/state"),
                "application/json",
                Bytes::new(),
                Duration::from_secs(10),
            )
            .await
        {
            Ok(r) if r.status == StatusCode::OK => r,
            Ok(r) => {
                problems.push(format!("{id}: server answered {}", r.status));
                continue;
            }
            Err(e) => {
                problems.push(format!("{id}: {e}"));
                continue;
            }
        };
        let got: State = match serde_json::from_slice(&reply.body) {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!("{id}: unreadable state: {e}"));
                continue;
            }
        };
        let mut check = |what: &str, got: u64, want: u64| {
            if got != want {
                problems.push(format!("{id}: {what} is {got}, ledger says {want}"));
            }
        };
        check("readings_total", got.readings_total, want.readings);
        check("trips_total", got.trips_total, want.trips);
        check("door_cycles_total", got.door_cycles_total, want.door_cycles);
        let server_ranges = got
            .seq_ranges
            .unwrap_or_default()
            .into_iter()
            .find(|r| r.epoch == want.epoch)
            .map(|r| r.ranges)
            .unwrap_or_default();
        if server_ranges != want.seqs.ranges() {
            problems.push(format!(
                "{id}: accepted seqs {:?} differ from acknowledged {:?}",
                server_ranges,
                want.seqs.ranges()
            ));
        }
    }
    problems
}
