//! Rate limits that answer 429 with `Retry-After`: per lift on ingest (with room for the burst of
//! a backlog resent after an outage), per address and per account on login and second-factor
//! entry, per account on user-code entry, per address and per lift on the device flow.
//! docs/security.md states the arithmetic behind them.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::problem::Problem;

/// Per-lift ingest limit.
#[derive(Debug, Clone, Copy)]
pub struct IngestRate {
    pub per_minute: u32,
    pub burst: u32,
}

impl Default for IngestRate {
    fn default() -> Self {
        Self {
            per_minute: 120,
            burst: 600,
        }
    }
}

struct Limiter<K: Hash + Eq + Clone> {
    name: &'static str,
    inner: DefaultKeyedRateLimiter<K>,
    checks: AtomicU64,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    fn new(name: &'static str, per_minute: u32, burst: u32) -> Self {
        let per_minute = NonZeroU32::new(per_minute.max(1)).expect("non-zero");
        let burst = NonZeroU32::new(burst.max(1)).expect("non-zero");
        Self {
            name,
            inner: DefaultKeyedRateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
            checks: AtomicU64::new(0),
        }
    }

    fn check(&self, key: &K, what: &str) -> Result<(), Problem> {
        // Keys that are back to a full bucket are forgotten now and then, so the table stays
        // the size of the recent callers.
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            self.inner.retain_recent();
        }
        match self.inner.check_key(key) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                metrics::counter!("hoistway_rate_limited_total", "limit" => self.name).increment(1);
                Err(Problem::too_many(
                    format!("too many {what}; try again in {secs} s"),
                    secs.max(1),
                ))
            }
        }
    }
}

/// Every limit of the API.
pub struct RateLimits {
    ingest: Option<Limiter<String>>,
    login_address: Limiter<IpAddr>,
    login_account: Limiter<String>,
    code_entry: Limiter<String>,
    device_address: Limiter<IpAddr>,
    device_client: Limiter<String>,
}

impl RateLimits {
    /// `ingest: None` turns the per-lift ingest limit off.
    pub fn new(ingest: Option<IngestRate>) -> Self {
        Self {
            ingest: ingest.map(|r| Limiter::new("ingest", r.per_minute, r.burst)),
            login_address: Limiter::new("login_address", 30, 30),
            login_account: Limiter::new("login_account", 10, 10),
            code_entry: Limiter::new("user_code", 20, 20),
            // A building's or a factory's lifts may share one address.
            device_address: Limiter::new("device_address", 3000, 20_000),
            device_client: Limiter::new("device_client", 10, 20),
        }
    }

    pub fn ingest(&self, lift: &str) -> Result<(), Problem> {
        match &self.ingest {
            Some(l) => l.check(&lift.to_string(), "requests from this lift"),
            None => Ok(()),
        }
    }

    /// A login or second-factor attempt, by address and by account.
    pub fn login(&self, address: Option<IpAddr>, account: &str) -> Result<(), Problem> {
        if let Some(ip) = address {
            self.login_address
                .check(&ip, "login attempts from this address")?;
        }
        self.login_account
            .check(&account.to_string(), "login attempts for this account")
    }

    /// A user code typed by a staff member.
    pub fn code_entry(&self, account: &str) -> Result<(), Problem> {
        self.code_entry
            .check(&account.to_string(), "user codes entered by this account")
    }

    /// A device-flow request, by address and by client id.
    pub fn device(&self, address: Option<IpAddr>, client: &str) -> Result<(), Problem> {
        if let Some(ip) = address {
            self.device_address
                .check(&ip, "device requests from this address")?;
        }
        self.device_client
            .check(&client.to_string(), "device requests for this client_id")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_limit_answers_429_with_retry_after() {
        let limits = RateLimits::new(Some(IngestRate {
            per_minute: 60,
            burst: 5,
        }));
        for _ in 0..5 {
            limits.ingest("L-1").unwrap();
        }
        let p = limits.ingest("L-1").unwrap_err();
        assert_eq!(p.status, 429);
        assert_eq!(p.retry_after, Some(1));
        limits.ingest("L-2").unwrap();
        for _ in 0..10 {
            limits.login(None, "alice").unwrap();
        }
        assert_eq!(limits.login(None, "alice").unwrap_err().status, 429);
        limits.login(None, "bob").unwrap();
    }
}
