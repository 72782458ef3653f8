//! The behaviour every [`RegistryStore`] must show. Call [`check`] on a fresh, empty store; it
//! panics at the first difference. [`check_shared`] runs two [`Registry`]s over one store.

use hoistway_model::LiftId;

use crate::store::RegistryStore;
use crate::{Assignment, LiftInfo, Registry};

fn lift(id: &str, customer: &str, building: &str) -> LiftInfo {
    LiftInfo {
        customer: customer.into(),
        building: building.into(),
        site: "S".into(),
        model: "M".into(),
        install_date: "2020-02-29".parse().ok(),
        initial_trips: 7,
        ..LiftInfo::new(LiftId::new(id).unwrap())
    }
}

fn period(customer: &str, from: Option<i64>, to: Option<i64>) -> Assignment {
    Assignment {
        customer: customer.into(),
        building: "B1".into(),
        valid_from_us: from,
        valid_to_us: to,
    }
}

fn history_of(store: &dyn RegistryStore, id: &str) -> Vec<Assignment> {
    store
        .load()
        .unwrap()
        .history
        .into_iter()
        .find(|(l, _)| l.as_str() == id)
        .map(|(_, h)| h)
        .unwrap_or_default()
}

/// Runs every check against `store`, which must start empty.
pub fn check(store: &dyn RegistryStore) {
    let empty = store.load().unwrap();
    assert!(empty.lifts.is_empty() && empty.history.is_empty());
    let r0 = empty.rev;
    assert_eq!(store.changed_since(r0).unwrap(), (vec![], r0));

    // A new lift: stored as given, owned by its customer since the beginning.
    let a = lift("L-A", "acme", "B1");
    assert_eq!(
        store.upsert(std::slice::from_ref(&a), 100).unwrap(),
        [false]
    );
    let loaded = store.load().unwrap();
    assert_eq!(loaded.lifts, std::slice::from_ref(&a));
    assert_eq!(history_of(store, "L-A"), [period("acme", None, None)]);
    let r1 = loaded.rev;
    assert!(r1 > r0, "a write takes a new revision");

    // The same customer and building: no new period; another customer: one closes, one opens.
    let mut a2 = a.clone();
    a2.model = "M2".into();
    assert_eq!(
        store.upsert(std::slice::from_ref(&a2), 200).unwrap(),
        [true]
    );
    assert_eq!(history_of(store, "L-A").len(), 1);
    let mut a3 = a2.clone();
    a3.customer = "bolt".into();
    let b = lift("L-B", "acme", "B1");
    assert_eq!(
        store.upsert(&[a3.clone(), b.clone()], 300).unwrap(),
        [true, false]
    );
    assert_eq!(
        history_of(store, "L-A"),
        [
            period("acme", None, Some(300)),
            period("bolt", Some(300), None)
        ]
    );

    // Changes since a revision: each lift once, as it is now, with its whole history.
    let (changed, r2) = store.changed_since(r1).unwrap();
    assert!(r2 > r1);
    let mut ids: Vec<_> = changed
        .iter()
        .map(|c| c.lift_id.as_str().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["L-A", "L-B"]);
    let ca = changed
        .iter()
        .find(|c| c.lift_id.as_str() == "L-A")
        .unwrap();
    assert_eq!(ca.info.as_ref(), Some(&a3));
    assert_eq!(ca.history, history_of(store, "L-A"));
    assert_eq!(store.changed_since(r2).unwrap(), (vec![], r2));

    // Removal: the lift goes, its history stays closed; a reader sees it gone.
    assert!(store.remove("L-A", 400).unwrap());
    assert!(!store.remove("L-A", 401).unwrap());
    assert!(!store.remove("L-NONE", 402).unwrap());
    let (changed, r3) = store.changed_since(r2).unwrap();
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].info, None);
    assert_eq!(
        changed[0].history,
        [
            period("acme", None, Some(300)),
            period("bolt", Some(300), Some(400))
        ]
    );
    let loaded = store.load().unwrap();
    assert_eq!(loaded.lifts, std::slice::from_ref(&b));
    assert_eq!(loaded.rev, store.changed_since(r3).unwrap().1);

    // Back again: a lift seen before starts its new period now, not at the beginning.
    assert_eq!(
        store.upsert(std::slice::from_ref(&a), 500).unwrap(),
        [false]
    );
    assert_eq!(
        history_of(store, "L-A").last(),
        Some(&period("acme", Some(500), None))
    );
}

/// Two registries over one store (as two nodes): a write through either reaches the other at
/// its next [`Registry::refresh`], and never before.
pub fn check_shared(a: &Registry, b: &Registry) {
    let mut info = lift("L-SHARED", "acme", "B1");
    assert_eq!(a.upsert_many(vec![info.clone()]).unwrap().created, 1);
    assert!(a.contains("L-SHARED"), "the writer sees its write at once");
    assert!(!b.contains("L-SHARED"), "the other reads from memory");
    assert_eq!(b.refresh().unwrap(), 1);
    assert_eq!(b.get("L-SHARED").as_deref(), Some(&info));
    assert_eq!(b.list(&Default::default()).len(), 1);
    info.building = "B2".into();
    b.upsert_many(vec![info.clone()]).unwrap();
    a.refresh().unwrap();
    assert_eq!(a.get("L-SHARED").unwrap().building, "B2");
    assert_eq!(a.history("L-SHARED"), b.history("L-SHARED"));
    assert_eq!(a.history("L-SHARED").len(), 2);
    assert!(b.remove("L-SHARED").unwrap());
    a.refresh().unwrap();
    assert!(!a.contains("L-SHARED"));
    assert_eq!(
        a.list(&crate::LiftFilter {
            building: Some("B2".into()),
            ..Default::default()
        })
        .len(),
        0,
        "the building index follows"
    );
    assert_eq!(a.refresh().unwrap(), 0, "each change is read once");
    // A lookup that missed reads again only if the last read began before the reading came.
    a.upsert_many(vec![lift("L-LATE", "acme", "B1")]).unwrap();
    let zero = std::time::Duration::ZERO;
    assert_eq!(
        b.refresh_if_read_before(0, zero).unwrap(),
        0,
        "read since the reading came: not read again"
    );
    assert!(!b.contains("L-LATE"));
    assert_eq!(
        b.refresh_if_read_before(crate::wall_us() + 1, zero)
            .unwrap(),
        1
    );
    assert!(b.contains("L-LATE"));
    assert!(a.remove("L-LATE").unwrap());
    b.refresh().unwrap();
}
