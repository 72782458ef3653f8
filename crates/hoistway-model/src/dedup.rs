//! The deduplication window: which `(epoch, seq)` of one lift have been accepted.
//!
//! A lift numbers its readings with an increasing `seq`. Normally they arrive in order, so the
//! accepted set is one range; after a power cut the lift resends its buffered backlog out of
//! order, interleaved with live readings, which opens gaps that close as the backlog arrives.
//! [`SeqSet`] keeps the accepted seqs as sorted disjoint ranges, so memory follows the number of
//! *gaps*, not the number of readings.
//!
//! The window is bounded two ways ([`DedupWindow`]): seqs more than `seqs` below the highest
//! accepted one fall behind the *horizon*, and at most `max_ranges` ranges are kept (the lowest
//! are dropped, moving the horizon up). A seq behind the horizon is [`Seen::OutsideWindow`]:
//! it cannot be told apart from a duplicate, so it is neither counted nor dropped silently — the
//! processor sends it to the dead-letter queue.

use serde::{Deserialize, Serialize};

/// What the window says about a seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    New,
    Duplicate,
    OutsideWindow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupWindow {
    /// How far below the highest accepted seq duplicates are still recognised.
    pub seqs: u64,
    /// Most gaps (+1) remembered per epoch.
    pub max_ranges: usize,
    /// Most sequence epochs remembered per lift.
    pub max_epochs: usize,
}

impl Default for DedupWindow {
    /// Two weeks of readings at one every 10 s: a lift that buffered a week during an outage and
    /// resends it while reporting live is deduplicated exactly.
    fn default() -> Self {
        Self {
            seqs: 14 * 24 * 360,
            max_ranges: 1024,
            max_epochs: 4,
        }
    }
}

/// Accepted seqs of one epoch of one lift: sorted, disjoint, non-adjacent inclusive ranges, all
/// at or above `horizon`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqSet {
    ranges: Vec<(u64, u64)>,
    horizon: u64,
}

impl SeqSet {
    pub fn check(&self, seq: u64) -> Seen {
        if self.find(seq).is_ok() {
            Seen::Duplicate
        } else if seq < self.horizon {
            Seen::OutsideWindow
        } else {
            Seen::New
        }
    }

    /// Checks `seq` and, when it is new, records it.
    pub fn insert(&mut self, seq: u64, window: &DedupWindow) -> Seen {
        let at = match self.find(seq) {
            Ok(_) => return Seen::Duplicate,
            Err(_) if seq < self.horizon => return Seen::OutsideWindow,
            Err(at) => at,
        };
        let joins_left = at > 0 && self.ranges[at - 1].1 + 1 == seq;
        let joins_right = at < self.ranges.len() && seq + 1 == self.ranges[at].0;
        match (joins_left, joins_right) {
            (true, true) => {
                self.ranges[at - 1].1 = self.ranges[at].1;
                self.ranges.remove(at);
            }
            (true, false) => self.ranges[at - 1].1 = seq,
            (false, true) => self.ranges[at].0 = seq,
            (false, false) => self.ranges.insert(at, (seq, seq)),
        }
        self.advance_horizon(window);
        debug_assert!(self.is_well_formed());
        Seen::New
    }

    pub fn max(&self) -> Option<u64> {
        self.ranges.last().map(|r| r.1)
    }

    pub fn horizon(&self) -> u64 {
        self.horizon
    }

    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|(lo, hi)| hi - lo + 1).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// `Ok(i)`: range `i` holds `seq`; `Err(i)`: `seq` would go before range `i`.
    fn find(&self, seq: u64) -> Result<usize, usize> {
        let at = self.ranges.partition_point(|r| r.1 < seq);
        match self.ranges.get(at) {
            Some(r) if r.0 <= seq => Ok(at),
            _ => Err(at),
        }
    }

    fn advance_horizon(&mut self, window: &DedupWindow) {
        let Some(max) = self.max() else { return };
        let by_distance = max.saturating_sub(window.seqs);
        if by_distance > self.horizon {
            self.horizon = by_distance;
            let keep_from = self.ranges.partition_point(|r| r.1 < by_distance);
            self.ranges.drain(..keep_from);
            if let Some(first) = self.ranges.first_mut() {
                first.0 = first.0.max(by_distance);
            }
        }
        if self.ranges.len() > window.max_ranges.max(1) {
            let excess = self.ranges.len() - window.max_ranges.max(1);
            self.ranges.drain(..excess);
            self.horizon = self.ranges[0].0;
        }
    }

    fn is_well_formed(&self) -> bool {
        self.ranges
            .iter()
            .all(|r| r.0 <= r.1 && r.0 >= self.horizon)
            && self.ranges.windows(2).all(|w| w[0].1 + 1 < w[1].0)
    }
}

/// The windows of one lift, one per sequence epoch (newest last).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiftDedup {
    epochs: Vec<(u64, SeqSet)>,
}

impl LiftDedup {
    pub fn check(&self, epoch: u64, seq: u64, window: &DedupWindow) -> Seen {
        match self.epochs.binary_search_by_key(&epoch, |e| e.0) {
            Ok(i) => self.epochs[i].1.check(seq),
            Err(0) if self.epochs.len() >= window.max_epochs.max(1) => Seen::OutsideWindow,
            Err(_) => Seen::New,
        }
    }

    pub fn insert(&mut self, epoch: u64, seq: u64, window: &DedupWindow) -> Seen {
        let i = match self.epochs.binary_search_by_key(&epoch, |e| e.0) {
            Ok(i) => i,
            Err(0) if self.epochs.len() >= window.max_epochs.max(1) => return Seen::OutsideWindow,
            Err(i) => {
                self.epochs.insert(i, (epoch, SeqSet::default()));
                if self.epochs.len() > window.max_epochs.max(1) {
                    self.epochs.remove(0);
                    return self.insert(epoch, seq, window);
                }
                i
            }
        };
        self.epochs[i].1.insert(seq, window)
    }

    pub fn epochs(&self) -> &[(u64, SeqSet)] {
        &self.epochs
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn window(seqs: u64, max_ranges: usize) -> DedupWindow {
        DedupWindow {
            seqs,
            max_ranges,
            max_epochs: 4,
        }
    }

    #[test]
    fn in_order_stream_is_one_range() {
        let w = DedupWindow::default();
        let mut s = SeqSet::default();
        for seq in 1..=10_000 {
            assert_eq!(s.insert(seq, &w), Seen::New);
        }
        assert_eq!(s.ranges(), &[(1, 10_000)]);
        assert_eq!(s.insert(5_000, &w), Seen::Duplicate);
    }

    #[test]
    fn backlog_after_outage_fills_the_gap() {
        let w = DedupWindow::default();
        let mut s = SeqSet::default();
        (1..=100).for_each(|q| assert_eq!(s.insert(q, &w), Seen::New));
        // power cut: 101..=200 buffered; live readings resume at 201
        (201..=250).for_each(|q| assert_eq!(s.insert(q, &w), Seen::New));
        assert_eq!(s.ranges(), &[(1, 100), (201, 250)]);
        // backlog resent newest first, interleaved with live ones and a few duplicates
        for q in (101..=200).rev() {
            assert_eq!(s.insert(q, &w), Seen::New);
            assert_eq!(s.insert(q, &w), Seen::Duplicate);
        }
        assert_eq!(s.ranges(), &[(1, 250)]);
    }

    #[test]
    fn seqs_behind_the_horizon_are_outside_the_window() {
        let w = window(100, 16);
        let mut s = SeqSet::default();
        s.insert(1, &w);
        s.insert(1_000, &w);
        assert_eq!(s.horizon(), 900);
        assert_eq!(s.check(2), Seen::OutsideWindow);
        assert_eq!(s.insert(1, &w), Seen::OutsideWindow);
        assert_eq!(s.insert(950, &w), Seen::New);
    }

    #[test]
    fn too_many_gaps_drop_the_oldest() {
        let w = window(1_000_000, 3);
        let mut s = SeqSet::default();
        for q in [10, 20, 30, 40] {
            s.insert(q, &w);
        }
        assert_eq!(s.ranges().len(), 3);
        assert_eq!(s.check(10), Seen::OutsideWindow);
        assert_eq!(s.check(15), Seen::OutsideWindow);
        assert_eq!(s.check(25), Seen::New);
    }

    #[test]
    fn a_new_epoch_restarts_the_sequence() {
        let w = DedupWindow::default();
        let mut d = LiftDedup::default();
        assert_eq!(d.insert(1, 500, &w), Seen::New);
        assert_eq!(d.insert(2, 1, &w), Seen::New);
        assert_eq!(d.insert(2, 1, &w), Seen::Duplicate);
        assert_eq!(d.insert(1, 500, &w), Seen::Duplicate);
        assert_eq!(d.insert(1, 501, &w), Seen::New);
    }

    #[test]
    fn epochs_older_than_the_kept_ones_are_outside_the_window() {
        let w = window(100, 16);
        let mut d = LiftDedup::default();
        for e in 10..14 {
            d.insert(e, 1, &w);
        }
        assert_eq!(d.insert(14, 1, &w), Seen::New);
        assert_eq!(d.epochs().len(), 4);
        assert_eq!(d.check(10, 1, &w), Seen::OutsideWindow);
        assert_eq!(d.insert(5, 1, &w), Seen::OutsideWindow);
    }

    proptest! {
        /// Against a plain set: inside the window the answer is exact, a seq is never `New`
        /// twice, and every range stays sorted, disjoint and above the horizon.
        #[test]
        fn matches_a_reference_set(
            ops in prop::collection::vec(0u64..400, 1..600),
            seqs in 50u64..300,
            max_ranges in 1usize..40,
        ) {
            let w = window(seqs, max_ranges);
            let mut s = SeqSet::default();
            let mut reference = BTreeSet::new();
            for q in ops {
                let before = s.check(q);
                let got = s.insert(q, &w);
                prop_assert_eq!(before, got);
                match got {
                    Seen::New => prop_assert!(reference.insert(q), "seq {} new twice", q),
                    Seen::Duplicate => prop_assert!(reference.contains(&q)),
                    Seen::OutsideWindow => prop_assert!(q < s.horizon()),
                }
                prop_assert!(s.is_well_formed());
                prop_assert!(s.ranges().len() <= max_ranges);
                // everything the window still covers answers exactly
                let max = *reference.iter().next_back().unwrap();
                for probe in s.horizon()..=max {
                    let expect = if reference.contains(&probe) { Seen::Duplicate } else { Seen::New };
                    prop_assert_eq!(s.check(probe), expect, "probe {}", probe);
                }
            }
        }

        /// The backlog scenario: a prefix, a gap resent in any order interleaved with live
        /// readings and repeats; afterwards one range and every seq counted once.
        #[test]
        fn shuffled_backlog_is_counted_once(
            gap in 1u64..2_000,
            order in prop::collection::vec(any::<u64>(), 0..64),
        ) {
            let w = DedupWindow::default();
            let mut s = SeqSet::default();
            let mut new = 0u64;
            let mut backlog: Vec<u64> = (101..=100 + gap).collect();
            for (i, k) in order.iter().enumerate() {
                let len = backlog.len() as u64;
                if len > 1 { backlog.swap(i % len as usize, (k % len) as usize); }
            }
            let mut live = 100 + gap + 1;
            for q in 1..=100 { if s.insert(q, &w) == Seen::New { new += 1; } }
            for (i, q) in backlog.iter().enumerate() {
                if s.insert(*q, &w) == Seen::New { new += 1; }
                if i % 7 == 0 { if s.insert(live, &w) == Seen::New { new += 1; } live += 1; }
                if i % 5 == 0 { prop_assert_eq!(s.insert(*q, &w), Seen::Duplicate); }
            }
            prop_assert_eq!(new, live - 1);
            prop_assert_eq!(s.ranges(), &[(1, live - 1)]);
        }
    }
}
