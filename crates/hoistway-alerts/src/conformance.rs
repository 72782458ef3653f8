//! The behaviour every [`AlertStore`] must show, run against each implementation (the
//! embedded SQLite one here; a PostgreSQL one passes the same function).

use crate::Error;
use crate::lifecycle::{self, Change, ChangeKind, Route};
use crate::rule::{Condition, Rule, Scope, Severity, default_rules};
use crate::store::{AlertQuery, AlertState, AlertStore, DeliveryState, EventKind};

fn change(kind: ChangeKind, key: &str, lift: &str, customer: &str, at_us: i64) -> Change {
    Change {
        key: key.into(),
        kind,
        rule: "motor-hot".into(),
        rule_name: "Motor hot".into(),
        severity: Severity::Major,
        hold_secs: 60,
        lift_id: lift.into(),
        customer: customer.into(),
        building: format!("{customer}-b1"),
        model: "m1".into(),
        at_us,
        summary: "motor_temp_c 95 above 90".into(),
        value: Some(95.0),
    }
}

fn apply(store: &dyn AlertStore, c: &Change, routes: &[Route]) -> Option<EventKind> {
    let mut out = None;
    store
        .transact(&mut |tx| {
            out = lifecycle::apply(tx, c, routes, false)?.map(|(_, e)| e);
            Ok(())
        })
        .expect("transaction");
    out
}

/// Panics with a message at the first difference from the contract.
pub fn check(store: &dyn AlertStore) {
    let routes = vec![Route {
        channel: "hook".into(),
        min_severity: Severity::Warning,
        customers: vec![],
        buildings: vec![],
        rules: vec![],
        events: vec![
            EventKind::Fired,
            EventKind::Acknowledged,
            EventKind::Resolved,
        ],
        quiet_hours: None,
    }];
    let s = 1_000_000;

    // A follower starts at the newest event and then reads each one recorded after it.
    let (start, none) = store.events_since(None, 10).unwrap();
    assert!(none.is_empty());

    // Firing, re-firing while open, replaying a key.
    let fire = change(ChangeKind::Fire, "k1", "L1", "acme", 10 * s);
    assert_eq!(apply(store, &fire, &routes), Some(EventKind::Fired));
    assert_eq!(
        apply(store, &fire, &routes),
        None,
        "a replayed key is a no-op"
    );
    let again = change(ChangeKind::Fire, "k2", "L1", "acme", 20 * s);
    assert_eq!(apply(store, &again, &routes), Some(EventKind::Refired));
    let open = store.list(&AlertQuery::default()).unwrap();
    assert_eq!(open.len(), 1, "one open alert per lift and rule");
    assert_eq!(open[0].refires, 1);
    assert_eq!(open[0].state, AlertState::Firing);
    let id = open[0].id;
    assert_eq!(store.alert(id).unwrap().unwrap(), open[0]);

    // The outbox holds one notification for the fire (a re-fire does not notify).
    let due = store.due(10 * s, 10).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].alert_id, id);
    assert_eq!(due[0].event, EventKind::Fired);
    assert_eq!(store.next_due().unwrap(), Some(10 * s));

    // Acknowledge, then resolve by the condition clearing.
    let mut acked = None;
    store
        .transact(&mut |tx| {
            acked = Some(lifecycle::act(
                tx,
                id,
                false,
                "olga",
                "on it",
                30 * s,
                &routes,
            )?);
            Ok(())
        })
        .unwrap();
    assert_eq!(acked.unwrap().state, AlertState::Acknowledged);
    let (cursor, first) = store.events_since(Some(start), 2).unwrap();
    let kinds = |events: &[crate::AlertEvent]| events.iter().map(|e| e.kind).collect::<Vec<_>>();
    assert_eq!(kinds(&first), [EventKind::Fired, EventKind::Refired]);
    assert!(first.iter().all(|e| e.alert_id == id));
    let (cursor, rest) = store.events_since(Some(cursor), 10).unwrap();
    assert_eq!(kinds(&rest), [EventKind::Acknowledged]);
    assert_eq!(rest[0].by, "olga");
    assert_eq!(
        store.events_since(Some(cursor), 10).unwrap(),
        (cursor, vec![])
    );
    assert_eq!(store.events_since(None, 10).unwrap(), (cursor, vec![]));
    let again = store
        .transact(&mut |tx| lifecycle::act(tx, id, false, "olga", "", 31 * s, &routes).map(|_| ()));
    assert!(matches!(again, Err(Error::Conflict(_))), "{again:?}");
    let clear = change(ChangeKind::Clear, "k3", "L1", "acme", 40 * s);
    assert_eq!(apply(store, &clear, &routes), Some(EventKind::Resolved));
    let a = store.alert(id).unwrap().unwrap();
    assert_eq!(a.state, AlertState::Resolved);
    assert_eq!(a.resolved.as_ref().unwrap().by, lifecycle::SYSTEM);
    assert_eq!(
        apply(
            store,
            &change(ChangeKind::Clear, "k4", "L1", "acme", 41 * s),
            &routes
        ),
        None,
        "a clear with nothing open does nothing"
    );

    // Within the hold time a fire reopens the alert; after it, a new alert.
    assert_eq!(
        apply(
            store,
            &change(ChangeKind::Fire, "k5", "L1", "acme", 50 * s),
            &routes
        ),
        Some(EventKind::Reopened)
    );
    assert_eq!(
        apply(
            store,
            &change(ChangeKind::Clear, "k6", "L1", "acme", 60 * s),
            &routes
        ),
        Some(EventKind::Resolved)
    );
    assert_eq!(
        apply(
            store,
            &change(ChangeKind::Fire, "k7", "L1", "acme", 200 * s),
            &routes
        ),
        Some(EventKind::Fired)
    );
    let kinds: Vec<EventKind> = store.events(id).unwrap().iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::Fired,
            EventKind::Refired,
            EventKind::Acknowledged,
            EventKind::Resolved,
            EventKind::Reopened,
            EventKind::Resolved
        ]
    );

    // Filters and pages.
    apply(
        store,
        &change(ChangeKind::Fire, "k8", "L2", "globex", 210 * s),
        &routes,
    );
    let q = |f: &dyn Fn(&mut AlertQuery)| {
        let mut q = AlertQuery::default();
        f(&mut q);
        store.list(&q).unwrap()
    };
    assert_eq!(q(&|_| {}).len(), 3);
    assert_eq!(q(&|q| q.state = Some("open".into())).len(), 2);
    assert_eq!(q(&|q| q.state = Some("resolved".into())).len(), 1);
    assert_eq!(q(&|q| q.customer = Some("globex".into())).len(), 1);
    assert_eq!(q(&|q| q.building = Some("acme-b1".into())).len(), 2);
    assert_eq!(q(&|q| q.lift = Some("L2".into()))[0].customer, "globex");
    assert_eq!(q(&|q| q.severity = Some(Severity::Critical)).len(), 0);
    let first = q(&|q| q.limit = Some(2));
    assert_eq!(first.len(), 2);
    assert!(first[0].id > first[1].id, "newest first");
    let rest = q(&|q| q.before = Some(first[1].id));
    assert_eq!(rest.len(), 1);
    assert_eq!(store.open_counts(None).unwrap(), vec![(Severity::Major, 2)]);
    let open_of = |c: &str| -> u64 {
        store
            .open_counts(Some(c))
            .unwrap()
            .iter()
            .map(|(_, n)| n)
            .sum()
    };
    assert_eq!(
        open_of("acme") + open_of("globex"),
        2,
        "each open alert has one customer"
    );
    assert_eq!(open_of("initech"), 0);
    assert_eq!(store.open_of_rule("motor-hot").unwrap().len(), 2);

    // A failing transaction leaves nothing behind.
    let before = store.list(&AlertQuery::default()).unwrap().len();
    let failed = store.transact(&mut |tx| {
        lifecycle::apply(
            tx,
            &change(ChangeKind::Fire, "k9", "L3", "acme", 0),
            &routes,
            false,
        )?;
        Err(Error::Storage("injected".into()))
    });
    assert!(failed.is_err());
    assert_eq!(store.list(&AlertQuery::default()).unwrap().len(), before);

    // Delivery state.
    let mut n = store.due(i64::MAX, 100).unwrap().remove(0);
    n.state = DeliveryState::Dead;
    n.attempts = 3;
    n.last_error = Some("503".into());
    store.update_notification(&n).unwrap();
    assert_eq!(store.notification(&n.id).unwrap().unwrap(), n);
    assert_eq!(
        store.notifications(Some(DeliveryState::Dead), 10).unwrap(),
        vec![n.clone()]
    );
    assert!(
        store
            .due(i64::MAX, 100)
            .unwrap()
            .iter()
            .all(|d| d.id != n.id)
    );
    assert!(store.notifications(None, 100).unwrap().len() >= 3);

    // Rules.
    for rule in default_rules() {
        assert!(store.put_rule(&rule).unwrap());
    }
    let mut edited = default_rules()[0].clone();
    edited.scope = Scope {
        customer: Some("acme".into()),
        ..Scope::default()
    };
    assert!(
        !store.put_rule(&edited).unwrap(),
        "a replaced rule is not new"
    );
    let rules: Vec<Rule> = store.rules().unwrap();
    assert_eq!(rules.len(), default_rules().len());
    assert!(rules.contains(&edited));
    assert!(store.delete_rule("lift-offline").unwrap());
    assert!(!store.delete_rule("lift-offline").unwrap());
    assert!(
        !store
            .rules()
            .unwrap()
            .iter()
            .any(|r| matches!(r.when, Condition::Absence { .. }))
    );

    // Retention: resolved alerts and finished notifications go; open ones and pending stay.
    let open_before = store
        .list(&AlertQuery {
            state: Some("open".into()),
            ..Default::default()
        })
        .unwrap();
    let pending_before = store.due(i64::MAX, 100).unwrap();
    let (alerts, notifications) = store.prune(i64::MAX, i64::MAX).unwrap();
    assert_eq!(alerts, 1, "the one resolved alert");
    assert!(notifications >= 1, "the dead notification");
    assert_eq!(store.list(&AlertQuery::default()).unwrap(), open_before);
    assert_eq!(store.due(i64::MAX, 100).unwrap(), pending_before);
    assert!(store.events(id).unwrap().is_empty());
    assert!(store.notification(&n.id).unwrap().is_none());

    // Silences.
    let silence = crate::store::Silence {
        id: 0,
        rule: Some("entrapment".into()),
        scope: Scope {
            building: Some("B1".into()),
            ..Scope::default()
        },
        starts_us: 10 * s,
        ends_us: 20 * s,
        by: "olga".into(),
        reason: "lift under repair".into(),
    };
    let sid = store.add_silence(&silence).unwrap();
    let listed = store.silences().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, sid);
    assert_eq!(listed[0].reason, silence.reason);
    assert!(store.delete_silence(sid).unwrap());
    assert!(!store.delete_silence(sid).unwrap());
    assert!(store.silences().unwrap().is_empty());

    // Channels and metadata.
    store
        .set_channel_disabled("hook", Some("410 Gone"))
        .unwrap();
    assert_eq!(
        store.disabled_channels().unwrap(),
        vec![("hook".to_string(), "410 Gone".to_string())]
    );
    store.set_channel_disabled("hook", None).unwrap();
    assert!(store.disabled_channels().unwrap().is_empty());
    assert_eq!(store.meta("snapshot").unwrap(), None);
    store
        .transact(&mut |tx| tx.put_meta("snapshot", b"one"))
        .unwrap();
    store
        .transact(&mut |tx| tx.put_meta("snapshot", b"two"))
        .unwrap();
    assert_eq!(
        store.meta("snapshot").unwrap().as_deref(),
        Some(&b"two"[..])
    );

    batches_do_what_single_changes_do(store, &routes);
}

/// [`lifecycle::apply_all`] over one batch leaves the store as the same changes applied one by
/// one do: the set-based calls of a store agree with its one-at-a-time calls.
fn batches_do_what_single_changes_do(store: &dyn AlertStore, routes: &[Route]) {
    let s = 1_000_000;
    let changes = |run: &str| -> Vec<Change> {
        let (lift, other, idle) = (format!("{run}-L"), format!("{run}-M"), format!("{run}-N"));
        let c = |kind, n: u32, lift: &str, at: i64| {
            change(kind, &format!("{run}-b{n}"), lift, "acme", at * s)
        };
        vec![
            c(ChangeKind::Fire, 1, &lift, 300),
            c(ChangeKind::Fire, 1, &lift, 300), // the same key twice in one batch
            c(ChangeKind::Fire, 2, &lift, 301), // re-fired
            c(ChangeKind::Clear, 3, &idle, 301), // nothing open
            c(ChangeKind::Fire, 4, &other, 302),
            c(ChangeKind::Clear, 5, &lift, 303),
            c(ChangeKind::Fire, 6, &lift, 304), // reopened within the hold time
            c(ChangeKind::Clear, 7, &lift, 305),
            c(ChangeKind::Fire, 8, &lift, 500), // after it: a new alert
            c(ChangeKind::Fire, 0, &lift, 501), // a key recorded before
            c(ChangeKind::Clear, 9, &other, 502),
        ]
    };
    // Recorded before each run: the change of key b0, on a lift of its own.
    let before = |run: &str| {
        let lift = format!("{run}-P");
        apply(
            store,
            &change(
                ChangeKind::Fire,
                &format!("{run}-b0"),
                &lift,
                "acme",
                290 * s,
            ),
            routes,
        );
    };
    before("one");
    let one = changes("one");
    let mut singly = Vec::new();
    for c in &one {
        singly.extend(apply(store, c, routes));
    }
    before("all");
    let all = changes("all");
    let batch: Vec<(&Change, bool)> = all.iter().map(|c| (c, false)).collect();
    let mut together = Vec::new();
    store
        .transact(&mut |tx| {
            together = lifecycle::apply_all(tx, &batch, routes)?;
            Ok(())
        })
        .unwrap();
    let kinds: Vec<EventKind> = together.iter().map(|(_, e)| *e).collect();
    assert_eq!(kinds, singly, "the steps of a batch");
    for (a, _) in &together {
        assert_eq!(
            store
                .alert(a.id)
                .unwrap()
                .as_ref()
                .map(|s| (s.rule.as_str(), s.lift_id.as_str())),
            Some((a.rule.as_str(), a.lift_id.as_str())),
            "a batch returns each alert with the id it was stored under"
        );
    }

    // Alert by alert (oldest first), the same states, events and notifications.
    let run_of = |run: &str| {
        let mut alerts: Vec<_> = store
            .list(&AlertQuery {
                limit: Some(1000),
                ..Default::default()
            })
            .unwrap()
            .into_iter()
            .filter(|a| a.lift_id.starts_with(&format!("{run}-")))
            .collect();
        alerts.reverse();
        let outbox = store.notifications(None, 1000).unwrap();
        alerts
            .into_iter()
            .map(|mut a| {
                let events: Vec<_> = store
                    .events(a.id)
                    .unwrap()
                    .into_iter()
                    .map(|e| (e.kind, e.at_us, e.key.map(|k| k.replacen(run, "", 1))))
                    .collect();
                let mut sent: Vec<_> = outbox
                    .iter()
                    .filter(|n| n.alert_id == a.id)
                    .map(|n| {
                        (
                            n.event,
                            n.channel.clone(),
                            n.payload["data"]["state"].clone(),
                        )
                    })
                    .collect();
                sent.sort_by_key(|(e, _, _)| e.as_str());
                a.id = 0;
                a.lift_id = a.lift_id.replacen(run, "", 1);
                (a, events, sent)
            })
            .collect::<Vec<_>>()
    };
    let (one, all) = (run_of("one"), run_of("all"));
    assert_eq!(one.len(), 4, "{one:?}");
    assert_eq!(all, one);
}
