//! Timestamps are carried as microseconds since the Unix epoch, UTC (`i64`), which is compact in
//! the log and maps directly onto Arrow/Parquet `Timestamp(Microsecond, UTC)`.

use chrono::{DateTime, TimeZone, Utc};

pub const MICROS_PER_SECOND: i64 = 1_000_000;

/// Microseconds since the Unix epoch by the system clock.
pub fn now_us() -> i64 {
    to_micros(Utc::now())
}

pub fn to_micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub fn from_micros(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// RFC 3339 with microseconds and `Z`, the form every API response uses.
pub fn format_micros(us: i64) -> String {
    from_micros(us).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Where "now" comes from. Injected so that offline detection, retention and alert timers are
/// tested by moving a clock, not by sleeping.
pub trait Clock: Send + Sync + 'static {
    fn now_us(&self) -> i64;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_us(&self) -> i64 {
        to_micros(Utc::now())
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    pub fn new(now_us: i64) -> Self {
        Self(std::sync::atomic::AtomicI64::new(now_us))
    }
    pub fn set(&self, now_us: i64) {
        self.0.store(now_us, std::sync::atomic::Ordering::SeqCst);
    }
    pub fn advance_secs(&self, secs: i64) {
        self.0.fetch_add(
            secs * MICROS_PER_SECOND,
            std::sync::atomic::Ordering::SeqCst,
        );
    }
}

impl Clock for ManualClock {
    fn now_us(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}
