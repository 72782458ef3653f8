//! Which partition a lift's readings belong to.
//!
//! Every reading of one lift goes to one partition, so that its order (and its exactly-once
//! counting) never spans two writers. The function is part of the data format: a cluster's
//! streams, checkpoints and leases are laid out by it, so it must give the same answer in every
//! release and on every platform. It is FNV-1a (64 bit) of the lift id's bytes, reduced modulo
//! the partition count; `partition_is_pinned` in the tests fixes its values.

use crate::LiftId;

/// The partition count of a standalone server: one log, one writer.
pub const STANDALONE_PARTITIONS: u16 = 1;

/// Most partitions a deployment may have.
pub const MAX_PARTITIONS: u16 = 1024;

/// The partition of `lift_id` among `count` partitions (`count` ≥ 1).
pub fn partition_of(lift_id: &LiftId, count: u16) -> u16 {
    partition_of_str(lift_id.as_str(), count)
}

/// [`partition_of`] for an id already known to be valid.
pub fn partition_of_str(lift_id: &str, count: u16) -> u16 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = lift_id
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    (hash % u64::from(count.max(1))) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These values are stored (stream names, checkpoints): a change here is a format change.
    /// They were computed independently of this code (FNV-1a 64 from its published constants).
    #[test]
    fn partition_is_pinned() {
        let cases = [
            ("L-1", 32, 25),
            ("BENCH-000000", 32, 28),
            ("FY-0001", 32, 20),
            ("lift_7", 7, 3),
            ("L-1", 1, 0),
        ];
        let got: Vec<_> = cases
            .iter()
            .map(|(id, n, _)| (*id, *n, partition_of(&LiftId::new(id).unwrap(), *n)))
            .collect();
        let want: Vec<_> = cases.iter().map(|(id, n, p)| (*id, *n, *p)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn lifts_spread_over_partitions() {
        let mut counts = [0u32; 32];
        for i in 0..32_000 {
            counts[partition_of(&LiftId::new(&format!("LIFT-{i:06}")).unwrap(), 32) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 850 && *max < 1150, "{counts:?}");
    }
}
