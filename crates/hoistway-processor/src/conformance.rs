//! The behaviour every [`CheckpointStore`] (with the [`DeadLetters`] it writes) must show.
//! Call [`check`] on a fresh, empty store; it panics at the first difference. [`check_shared`]
//! runs two handles (two nodes) over one store, on partitions other than 0.

use hoistway_dlq::{DeadLetter, DeadLetters, Reason};
use hoistway_model::{DedupWindow, Direction, DoorState, LiftId, Reading};

use crate::checkpoint;
use crate::state::FleetState;
use std::time::Duration;

use crate::membership::{Member, Membership};
use crate::store::{CheckpointStore, Claim, Claimed, Commit, Lease, StoreError};

fn lease(holder: &str, ttl: Duration) -> Lease {
    Lease {
        holder: holder.into(),
        ttl,
    }
}

/// A claim that must be granted.
fn granted(store: &dyn CheckpointStore, partition: u16, holder: &str) -> Claim {
    match store
        .claim(partition, &lease(holder, Duration::from_secs(60)))
        .unwrap()
    {
        Claimed::Granted(claim) => claim,
        held => panic!("partition {partition} was not granted to {holder}: {held:?}"),
    }
}

fn reading(lift: &str, seq: u64) -> Reading {
    Reading {
        lift_id: LiftId::new(lift).unwrap(),
        epoch: 1,
        seq,
        ts_us: 1_764_400_000_000_000 + seq as i64 * 10_000_000,
        received_us: 1_764_400_000_500_000 + seq as i64 * 10_000_000,
        floor: 2,
        direction: Direction::Up,
        door: DoorState::Closed,
        load_kg: Some(75.0),
        speed_mps: Some(1.0),
        motor_temp_c: None,
        vibration_mm_s: None,
        trips: 1,
        door_cycles: 2,
        faults: vec![],
        events: vec![],
        extra: Default::default(),
    }
}

/// State at `offset` holding `seqs` of lift L-1.
fn state(offset: u64, seqs: &[u64]) -> FleetState {
    let mut state = FleetState {
        offset,
        ..Default::default()
    };
    for &seq in seqs {
        state.apply(&reading("L-1", seq), &DedupWindow::default());
    }
    state
}

fn letter(offset: u64, seq: u64) -> DeadLetter {
    DeadLetter::new(Reason::UnregisteredLift, offset, reading("L-STRANGER", seq))
}

/// `state` as partition `partition`'s checkpoint: partition 0 as a standalone server's, others
/// as one of [`CLUSTER_PARTITIONS`].
fn encoded(state: &FleetState, partition: u16) -> Vec<u8> {
    let partitions = if partition == 0 {
        1
    } else {
        CLUSTER_PARTITIONS
    };
    checkpoint::encode_partition(state, checkpoint::VERSION, partition, partitions).unwrap()
}

/// The partition count of the cases on partitions other than 0.
const CLUSTER_PARTITIONS: u16 = 8;

fn commit(store: &dyn CheckpointStore, partition: u16, epoch: u64, state: &FleetState) {
    store
        .commit(&Commit {
            partition,
            epoch,
            offset: state.offset,
            state: &encoded(state, partition),
            dead: None,
        })
        .unwrap();
}

/// Runs every check against `store`, which must start empty. Partition 0 only: it is the one
/// every store holds.
pub fn check<S: CheckpointStore + DeadLetters>(store: &S) {
    // Nothing yet.
    let first = granted(store, 0, "one");
    assert!(first.state.is_none(), "a new store has no checkpoint");
    assert!(first.epoch >= 1);
    assert!(store.list().unwrap().is_empty());
    assert_eq!(store.size(), (0, 0));
    assert_eq!(store.pending_bytes(), 0);

    // A checkpoint with its dead letters, as one unit.
    let s5 = state(5, &[1, 2, 3]);
    let letters = [letter(2, 7), letter(4, 8)];
    let bytes = checkpoint::encode(&s5).unwrap();
    store
        .commit(&Commit {
            partition: 0,
            epoch: first.epoch,
            offset: 5,
            state: &bytes,
            dead: Some((0, 4, &letters)),
        })
        .unwrap();
    // A reader sees the last checkpoint without claiming anything, and nothing when it has it.
    assert_eq!(store.latest(0, None).unwrap(), Some(s5.clone()));
    assert_eq!(store.latest(0, Some(3)).unwrap(), Some(s5.clone()));
    assert_eq!(store.latest(0, Some(5)).unwrap(), None, "unchanged");
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    let batch = &listed[0];
    assert_eq!(
        (batch.first_offset, batch.last_offset, batch.items),
        (0, 4, 2)
    );
    assert_eq!(batch.reasons.get(&Reason::UnregisteredLift), Some(&2));
    assert!(batch.bytes > 0);
    assert_eq!(store.read(&batch.id).unwrap(), letters);
    assert_eq!(store.size(), (1, batch.bytes));
    assert_eq!(store.pending_bytes(), batch.bytes);
    assert!(matches!(
        store.read("00000000000000000099-00000000000000000099"),
        Err(hoistway_dlq::Error::NotFound(_))
    ));
    assert!(matches!(
        store.read("../../etc/passwd"),
        Err(hoistway_dlq::Error::NotFound(_))
    ));

    // A later checkpoint replaces the state; the same range of dead letters replaces them.
    let s9 = state(9, &[1, 2, 3, 4, 5]);
    let more = [letter(6, 9)];
    store
        .commit(&Commit {
            partition: 0,
            epoch: first.epoch,
            offset: 9,
            state: &checkpoint::encode(&s9).unwrap(),
            dead: Some((5, 8, &more)),
        })
        .unwrap();
    let ids: Vec<_> = store.list().unwrap().into_iter().map(|f| f.id).collect();
    assert_eq!(ids.len(), 2, "oldest first: {ids:?}");
    assert_eq!(store.read(&ids[0]).unwrap(), letters);
    assert_eq!(store.read(&ids[1]).unwrap(), more);

    // A new claim (after the lease ended) sees the last checkpoint and fences the earlier owner.
    store.release(0, first.epoch).unwrap();
    let second = granted(store, 0, "two");
    assert!(second.epoch > first.epoch, "a claim raises the epoch");
    assert_eq!(second.state, Some(s9.clone()));
    let late = [letter(10, 10)];
    let fenced = store.commit(&Commit {
        partition: 0,
        epoch: first.epoch,
        offset: 12,
        state: &checkpoint::encode(&state(12, &[1, 2, 3, 4, 5, 6])).unwrap(),
        dead: Some((9, 11, &late)),
    });
    match fenced {
        Err(StoreError::Fenced {
            partition: 0,
            held,
            current,
        }) => assert_eq!((held, current), (first.epoch, second.epoch)),
        other => panic!("a commit of an older epoch must be fenced, got {other:?}"),
    }
    assert_eq!(
        store.list().unwrap().len(),
        2,
        "nothing of a fenced commit is kept"
    );
    assert!(matches!(
        store.renew(0, first.epoch, Duration::from_secs(60)),
        Err(StoreError::Fenced { .. })
    ));
    store.release(0, first.epoch).unwrap();
    store
        .renew(0, second.epoch, Duration::from_secs(60))
        .unwrap();
    store.release(0, second.epoch).unwrap();
    assert_eq!(
        store.latest(0, Some(5)).unwrap(),
        Some(s9.clone()),
        "a fenced commit is never read"
    );
    let third = granted(store, 0, "three");
    assert_eq!(third.state, Some(s9), "a fenced commit leaves the state");
    commit(store, 0, third.epoch, &state(10, &[1]));

    // Replayed batches leave the pending set.
    let (_, before) = store.size();
    store.mark_replayed(&ids[0]).unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
    let (files, after) = store.size();
    assert_eq!(files, 1);
    assert!(after < before);
    assert_eq!(store.pending_bytes(), after);
    assert!(matches!(
        store.mark_replayed(&ids[0]),
        Err(hoistway_dlq::Error::NotFound(_))
    ));
}

/// Two nodes over one store, on partitions 1 to 4: a claim waits for another holder's lease to
/// end or lapse, each partition has its own checkpoint and epoch, a claim by one node fences the
/// other, and dead letters written by either are listed by both.
pub fn check_shared<S: CheckpointStore + DeadLetters>(a: &S, b: &S) {
    leases(a, b);
    // What partition 0 holds (from [`check`] on the same store, say) is left as it is.
    let before = a.list().unwrap();
    let a1 = granted(a, 1, "a");
    let b2 = granted(b, 2, "b");
    assert!(a1.state.is_none() && b2.state.is_none());
    let s1 = state(3, &[1]);
    let s2 = state(7, &[1, 2]);
    commit(a, 1, a1.epoch, &s1);
    let letters = [letter(5, 4)];
    b.commit(&Commit {
        partition: 2,
        epoch: b2.epoch,
        offset: 7,
        state: &encoded(&s2, 2),
        dead: Some((0, 6, &letters)),
    })
    .unwrap();
    // B takes partition 1 over (A stalled and its lease ended): A's next commit of it fails.
    a.release(1, a1.epoch).unwrap();
    let b1 = granted(b, 1, "b");
    assert_eq!(b1.state, Some(s1.clone()));
    assert!(matches!(
        a.commit(&Commit {
            partition: 1,
            epoch: a1.epoch,
            offset: 4,
            state: &encoded(&state(4, &[1, 2]), 1),
            dead: None,
        }),
        Err(StoreError::Fenced { partition: 1, .. })
    ));
    // Partition 2 is untouched by what happened to 1.
    commit(b, 2, b2.epoch, &state(8, &[1, 2, 3]));
    b.release(2, b2.epoch).unwrap();
    let a2 = granted(a, 2, "a");
    assert_eq!(a2.state, Some(state(8, &[1, 2, 3])));
    b.release(1, b1.epoch).unwrap();
    assert_eq!(granted(a, 1, "a").state, Some(s1));
    // Both see the dead letters, whoever wrote them.
    let on_a = a.list().unwrap();
    assert_eq!(b.list().unwrap(), on_a);
    let new: Vec<_> = on_a.iter().filter(|f| !before.contains(f)).collect();
    assert_eq!(new.len(), 1, "{on_a:?}");
    assert_eq!(a.read(&new[0].id).unwrap(), letters);
    a.mark_replayed(&new[0].id).unwrap();
    assert_eq!(b.list().unwrap(), before);
}

/// A lease keeps other claimants out while it runs and is renewed; it lapses without renewal,
/// and then the next claim is granted and fences the holder.
fn leases(a: &dyn CheckpointStore, b: &dyn CheckpointStore) {
    let a3 = granted(a, 3, "a");
    match b.claim(3, &lease("b", Duration::from_secs(60))).unwrap() {
        Claimed::Held { holder, remaining } => {
            assert_eq!(holder, "a");
            assert!(remaining > Duration::from_secs(50), "{remaining:?}");
        }
        other => panic!("a running lease must keep b out: {other:?}"),
    }
    a.renew(3, a3.epoch, Duration::from_secs(60)).unwrap();
    a.release(3, a3.epoch).unwrap();
    let b3 = granted(b, 3, "b");
    assert!(b3.epoch > a3.epoch);

    // A short lease, renewed: still held; not renewed: it lapses. Short, but with room for a
    // loaded machine: each renewal comes 300 ms after the last, well inside the two seconds.
    let short = Duration::from_secs(2);
    let Claimed::Granted(a4) = a.claim(4, &lease("a", short)).unwrap() else {
        panic!("partition 4 is free")
    };
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        a.renew(4, a4.epoch, short).unwrap();
        assert!(matches!(
            b.claim(4, &lease("b", short)).unwrap(),
            Claimed::Held { .. }
        ));
    }
    std::thread::sleep(short + Duration::from_millis(300));
    let b4 = granted(b, 4, "b");
    assert!(b4.epoch > a4.epoch);
    assert!(matches!(
        a.renew(4, a4.epoch, short),
        Err(StoreError::Fenced { partition: 4, .. })
    ));
    // A release by the fenced holder leaves the new lease alone.
    a.release(4, a4.epoch).unwrap();
    assert!(matches!(
        a.claim(4, &lease("a", short)).unwrap(),
        Claimed::Held { .. }
    ));
}

/// Two nodes' handles (`a`, `b`) over one fresh [`Membership`]: each sees the other once it
/// beats, with what it reported last, the list is sorted, a member that leaves is gone at once,
/// and one whose heartbeat lapses is gone once its time is up (this waits about a second).
pub fn check_membership<M: Membership + ?Sized>(a: &M, b: &M) {
    let long = Duration::from_secs(60);
    let names =
        |members: Vec<Member>| -> Vec<String> { members.into_iter().map(|m| m.name).collect() };
    assert_eq!(names(a.heartbeat("node-b", long, 0).unwrap()), ["node-b"]);
    assert_eq!(
        b.heartbeat("node-a", long, 7).unwrap(),
        [
            Member {
                name: "node-a".into(),
                silent_lifts: 7
            },
            Member {
                name: "node-b".into(),
                silent_lifts: 0
            }
        ],
        "a second member sees the first, sorted by name, with what each reported"
    );
    let seen = a.heartbeat("node-b", long, 3).unwrap();
    assert_eq!(names(seen.clone()), ["node-a", "node-b"]);
    assert_eq!(b.alive().unwrap(), seen, "read without beating");
    assert_eq!((seen[0].silent_lifts, seen[1].silent_lifts), (7, 3));
    // Beating again does not duplicate; the report is the latest.
    let seen = b.heartbeat("node-a", long, 0).unwrap();
    assert_eq!((seen[0].silent_lifts, seen[1].silent_lifts), (0, 3));
    b.leave("node-a").unwrap();
    assert_eq!(
        names(a.heartbeat("node-b", long, 0).unwrap()),
        ["node-b"],
        "left at once"
    );
    // A short heartbeat lapses by itself.
    b.heartbeat("node-c", Duration::from_millis(400), 0)
        .unwrap();
    assert_eq!(
        names(a.heartbeat("node-b", long, 0).unwrap()),
        ["node-b", "node-c"]
    );
    std::thread::sleep(Duration::from_millis(900));
    assert_eq!(
        names(a.heartbeat("node-b", long, 0).unwrap()),
        ["node-b"],
        "a member whose heartbeat lapsed is not alive"
    );
    // It comes back with its next beat; leaving twice is harmless.
    b.heartbeat("node-c", long, 0).unwrap();
    assert_eq!(
        names(a.heartbeat("node-b", long, 0).unwrap()),
        ["node-b", "node-c"]
    );
    a.leave("node-b").unwrap();
    a.leave("node-b").unwrap();
    b.leave("node-c").unwrap();
    assert!(a.alive().unwrap().is_empty());

    // A duty's lease: one holder at a time, renewed by it, taken over once it lapses or its
    // holder leaves; duties are apart.
    assert!(
        a.lead("node-a", "send", Duration::from_millis(400))
            .unwrap()
    );
    assert!(!b.lead("node-b", "send", long).unwrap(), "held by node-a");
    assert!(
        a.lead("node-a", "send", Duration::from_millis(400))
            .unwrap(),
        "renewed"
    );
    assert!(b.lead("node-b", "other", long).unwrap(), "another duty");
    std::thread::sleep(Duration::from_millis(900));
    assert!(
        b.lead("node-b", "send", long).unwrap(),
        "taken over once lapsed"
    );
    assert!(!a.lead("node-a", "send", long).unwrap());
    b.leave("node-b").unwrap();
    assert!(
        a.lead("node-a", "send", long).unwrap(),
        "free once its holder left"
    );
    assert!(a.lead("node-a", "other", long).unwrap());
    a.leave("node-a").unwrap();
}
