//! Which processors are alive, and which partitions each one should hold.
//!
//! Processor nodes (`roles = "processor"`) spread the partitions over themselves: each one
//! records a heartbeat in a shared [`Membership`], reads back every live member, and works out
//! its [`share`] of the partitions from that list alone. Every member reading the same list
//! computes the same assignment, so nothing else needs agreeing on: a node claims the
//! partitions of its share whose leases are free, and ends its lease on the ones outside it
//! (after a last checkpoint), which lets their new owner claim them. Leases, not membership,
//! decide who may write: while two nodes see different lists for a moment, one of them simply
//! waits for a lease to end. A duty only one node may do at a time (sending notifications) has a
//! lease of its own ([`Membership::lead`]).

use std::time::Duration;

use crate::store::StoreError;

/// A live member, as the others see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// How many lifts its alerting found newly silent at its last look (the fleet-wide outage
    /// guard adds them up).
    pub silent_lifts: u64,
}

/// The processors that are alive. Blocking: call it off the async runtime.
pub trait Membership: Send + Sync {
    /// Records `member` as alive for `ttl` from now (from the store's clock), with what it
    /// reports (`silent_lifts`), and returns every member alive now, this one included, sorted
    /// by name.
    fn heartbeat(
        &self,
        member: &str,
        ttl: Duration,
        silent_lifts: u64,
    ) -> Result<Vec<Member>, StoreError>;

    /// Takes `member` out at once (a clean stop), so the others take its share without waiting
    /// for its heartbeat to lapse.
    fn leave(&self, member: &str) -> Result<(), StoreError>;

    /// Every member alive now, sorted by name, without beating (for a node that is not one).
    fn alive(&self) -> Result<Vec<Member>, StoreError>;

    /// Takes or renews the lease on `duty` (one node at a time does it: sending notifications)
    /// for `ttl` from now, unless another member holds it and its lease still runs; returns
    /// whether `member` holds it now. [`Membership::leave`] ends the member's leases too.
    fn lead(&self, member: &str, duty: &str, ttl: Duration) -> Result<bool, StoreError>;
}

/// A single process that holds every partition: the standalone server. No other member exists.
pub struct Alone;

impl Membership for Alone {
    fn heartbeat(
        &self,
        member: &str,
        _ttl: Duration,
        silent_lifts: u64,
    ) -> Result<Vec<Member>, StoreError> {
        Ok(vec![Member {
            name: member.to_string(),
            silent_lifts,
        }])
    }

    fn leave(&self, _member: &str) -> Result<(), StoreError> {
        Ok(())
    }

    fn alive(&self) -> Result<Vec<Member>, StoreError> {
        Ok(Vec::new())
    }

    fn lead(&self, _member: &str, _duty: &str, _ttl: Duration) -> Result<bool, StoreError> {
        Ok(true)
    }
}

/// The partitions (of `partitions`) that `me` should hold when `live` (sorted, as
/// [`Membership::heartbeat`] returns it) are the members alive: partition `p` goes to
/// `live[p % live.len()]`, so shares differ by at most one partition. Empty when `me` is not
/// among `live` (its heartbeat lapsed: it holds nothing until it is back).
pub fn share(partitions: u16, live: &[Member], me: &str) -> Vec<u16> {
    let Some(at) = live.iter().position(|m| m.name == me) else {
        return Vec::new();
    };
    (0..partitions)
        .filter(|p| usize::from(*p) % live.len() == at)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live<S: AsRef<str>>(names: &[S]) -> Vec<Member> {
        names
            .iter()
            .map(|n| Member {
                name: n.as_ref().to_string(),
                silent_lifts: 0,
            })
            .collect()
    }

    #[test]
    fn shares_cover_every_partition_once_and_differ_by_at_most_one() {
        for members in 1..=5usize {
            let names: Vec<String> = (0..members).map(|i| format!("node-{i}")).collect();
            let alive = live(&names);
            for partitions in [1u16, 2, 3, 7, 32] {
                let shares: Vec<Vec<u16>> =
                    names.iter().map(|n| share(partitions, &alive, n)).collect();
                let mut all: Vec<u16> = shares.iter().flatten().copied().collect();
                all.sort_unstable();
                assert_eq!(all, (0..partitions).collect::<Vec<_>>());
                let sizes = shares.iter().map(Vec::len);
                let (min, max) = (sizes.clone().min().unwrap(), sizes.max().unwrap());
                assert!(
                    max - min <= 1,
                    "{members} members, {partitions}: {shares:?}"
                );
            }
        }
    }

    #[test]
    fn a_member_not_alive_holds_nothing_and_one_alone_holds_all() {
        assert!(share(4, &live(&["a", "b"]), "c").is_empty());
        assert_eq!(share(3, &live(&["a"]), "a"), vec![0, 1, 2]);
        assert_eq!(share(3, &live(&["a", "b", "c"]), "b"), vec![1]);
        assert_eq!(
            Alone.heartbeat("x", Duration::from_secs(1), 0).unwrap(),
            live(&["x"])
        );
    }
}
