//! Against the PostgreSQL server the tests are given: `HOISTWAY_TEST_POSTGRES`, by default
//! `postgres://postgres@127.0.0.1:5432/test`. Each test works in a schema of its own, dropped
//! at the end.

use std::sync::Arc;

use hoistway_auth::{AuthStore, Authority, AuthorityConfig, KeyStore};
use hoistway_model::{Clock, ManualClock};

use super::*;

fn url() -> String {
    std::env::var("HOISTWAY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema of its own for one test, dropped when it ends.
struct Scratch {
    name: String,
}

impl Scratch {
    fn new(test: &str) -> Self {
        let name = format!(
            "hw_test_{test}_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        Self { name }
    }

    fn connect(&self) -> Postgres {
        Postgres::connect(&url(), &self.name).expect("the test PostgreSQL server is running")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Ok(pg) = Postgres::connect(&url(), "public") {
            let _ = pg.block(async {
                let client = pg.client().await?;
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name))
                    .await?;
                crate::Result::<()>::Ok(())
            });
        }
    }
}

#[test]
fn the_auth_and_key_stores_pass_the_conformance_suites() {
    let scratch = Scratch::new("conformance");
    let pg = scratch.connect();
    let store = PgAuthStore::open(pg.clone()).unwrap();
    hoistway_auth::conformance::check(&store);
    hoistway_auth::conformance::check_keys(&PgKeyStore::open(pg.clone()).unwrap().emptied());
    assert_eq!(
        pg.version(auth::COMPONENT).unwrap(),
        auth::MIGRATIONS.len() as u32
    );
}

impl PgKeyStore {
    /// The suite starts from an empty store; a new schema's key row holds an empty list.
    fn emptied(self) -> Self {
        assert!(self.load().unwrap().is_empty());
        self
    }
}

#[test]
fn two_nodes_share_tokens_keys_and_revocations() {
    let scratch = Scratch::new("shared");
    let clock = Arc::new(ManualClock::new(1_800_000_000_000_000));
    // Each node has its own pool, as on two machines.
    let node = || {
        let pg = scratch.connect();
        Authority::open(
            Arc::new(PgAuthStore::open(pg.clone()).unwrap()),
            Arc::new(PgKeyStore::open(pg).unwrap()),
            clock.clone() as Arc<dyn Clock>,
            AuthorityConfig::default(),
        )
        .unwrap()
    };
    let (a, b) = (node(), node());
    hoistway_auth::conformance::check_shared(&a, &b, &clock);
}

#[test]
fn nodes_starting_together_make_one_signing_key_and_migrate_once() {
    let scratch = Scratch::new("together");
    let kids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let pg = scratch.connect();
                    let keys = PgKeyStore::open(pg.clone()).unwrap();
                    let ring = hoistway_auth::KeyRing::open(&keys, 0, 0).unwrap();
                    ring.signing(0).0.to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(kids.iter().all(|k| *k == kids[0]), "{kids:?}");
    let pg = scratch.connect();
    assert_eq!(PgKeyStore::open(pg).unwrap().load().unwrap().len(), 1);
}

#[test]
fn a_newer_schema_is_refused_by_name_and_a_dead_server_is_unavailable() {
    let scratch = Scratch::new("refusals");
    let pg = scratch.connect();
    PgAuthStore::open(pg.clone()).unwrap();
    pg.block(async {
        let client = pg.client().await?;
        client
            .execute(
                "UPDATE schema_versions SET version = version + 1 WHERE component = 'auth'",
                &[],
            )
            .await?;
        crate::Result::<()>::Ok(())
    })
    .unwrap();
    let err = PgAuthStore::open(pg.clone()).err().unwrap();
    let message = err.to_string();
    assert!(
        matches!(err, hoistway_auth::Error::Format { .. }) && message.contains(&scratch.name),
        "{message}"
    );

    // Nothing listens on port 1 of loopback.
    let err = Postgres::connect("postgres://postgres@127.0.0.1:1/test", "hoistway")
        .err()
        .unwrap();
    assert!(matches!(err, Error::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("127.0.0.1"), "{err}");
    let err = Postgres::connect(&url(), "Bad-Name").err().unwrap();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

#[test]
fn a_store_answers_from_inside_an_async_runtime() {
    // The server calls stores from blocking tasks, and some from its runtime threads.
    let scratch = Scratch::new("async");
    let store = Arc::new(PgAuthStore::open(scratch.connect()).unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let users = runtime.block_on(async {
        let inline = store.users().unwrap();
        let store = store.clone();
        let blocking = tokio::task::spawn_blocking(move || store.users().unwrap())
            .await
            .unwrap();
        (inline, blocking)
    });
    assert_eq!(users, (vec![], vec![]));
}

#[test]
fn the_alert_store_passes_the_conformance_suite() {
    let scratch = Scratch::new("alerts");
    let store = PgAlertStore::open(scratch.connect()).unwrap();
    hoistway_alerts::conformance::check(&store);
    assert_eq!(
        scratch.connect().version(alerts::COMPONENT).unwrap(),
        alerts::MIGRATIONS.len() as u32
    );
}

#[test]
fn nodes_firing_one_alert_at_once_open_it_once() {
    use hoistway_alerts::AlertStore;
    use hoistway_alerts::lifecycle::{self, Change, ChangeKind};
    let scratch = Scratch::new("alerts_race");
    let fired: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|node| {
                let scratch = &scratch;
                s.spawn(move || {
                    let store = PgAlertStore::open(scratch.connect()).unwrap();
                    let change = Change {
                        // Each node read the reading separately: different keys.
                        key: format!("node-{node}"),
                        kind: ChangeKind::Fire,
                        rule: "trapped".into(),
                        rule_name: "Passenger trapped".into(),
                        severity: hoistway_alerts::rule::Severity::Critical,
                        hold_secs: 60,
                        lift_id: "L-1".into(),
                        customer: "acme".into(),
                        building: "B-1".into(),
                        model: "m1".into(),
                        at_us: 1_000_000,
                        summary: "trapped".into(),
                        value: None,
                    };
                    let mut event = None;
                    store
                        .transact(&mut |tx| {
                            event = lifecycle::apply(tx, &change, &[], false)?.map(|(_, e)| e);
                            Ok(())
                        })
                        .unwrap();
                    event == Some(hoistway_alerts::store::EventKind::Fired)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(fired.iter().filter(|f| **f).count(), 1, "{fired:?}");
    let store = PgAlertStore::open(scratch.connect()).unwrap();
    let open = store
        .list(&hoistway_alerts::store::AlertQuery::default())
        .unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].refires, 3, "the others re-fired it");
}

#[test]
fn verify_full_checks_the_servers_certificate_and_name() {
    // The server says whether it offers TLS and with which certificate (on this machine).
    let pg = Postgres::connect(&url(), "public").unwrap();
    let (ssl, cert_file): (String, String) = pg
        .block(async {
            let client = pg.client().await?;
            let ssl = client.query_one("SHOW ssl", &[]).await?.get(0);
            let file = client.query_one("SHOW ssl_cert_file", &[]).await?.get(0);
            crate::Result::<_>::Ok((ssl, file))
        })
        .unwrap();
    let with = |host: &str, root: &str| {
        let base = url().replace("127.0.0.1", host);
        let sep = if base.contains('?') { '&' } else { '?' };
        Postgres::connect(
            &format!("{base}{sep}sslmode=verify-full&sslrootcert={root}"),
            "public",
        )
    };
    if ssl == "on" {
        // A self-signed certificate for "localhost", trusted through sslrootcert.
        with("localhost", &cert_file).expect("verified against its own certificate");
        let err = with("127.0.0.1", &cert_file).err().unwrap();
        assert!(
            matches!(err, Error::Unavailable(_)) && err.to_string().contains("certificate"),
            "the name does not match: {err}"
        );
    } else {
        let err = with("localhost", "/dev/null").err().unwrap();
        assert!(
            err.to_string().contains("sslrootcert") || err.to_string().contains("TLS"),
            "{err}"
        );
    }
}

#[test]
fn a_reader_paging_the_audit_log_while_nodes_write_misses_no_event() {
    use hoistway_auth::{AuditEvent, AuditQuery};
    let scratch = Scratch::new("audit");
    let (writers, each) = (4, 50);
    let seen: Vec<i64> = std::thread::scope(|s| {
        for w in 0..writers {
            let scratch = &scratch;
            s.spawn(move || {
                let store = PgAuthStore::open(scratch.connect()).unwrap();
                for i in 0..each {
                    store
                        .append_audit(&AuditEvent {
                            id: 0,
                            at_us: i,
                            actor: format!("node-{w}"),
                            action: "login".into(),
                            target: String::new(),
                            outcome: "ok".into(),
                            address: None,
                            detail: String::new(),
                            customer: None,
                        })
                        .unwrap();
                }
            });
        }
        let reader = PgAuthStore::open(scratch.connect()).unwrap();
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while seen.len() < writers * each as usize && std::time::Instant::now() < deadline {
            let page = reader
                .audit(&AuditQuery {
                    after_id: seen.last().copied(),
                    limit: 7,
                    ..Default::default()
                })
                .unwrap();
            seen.extend(page.iter().map(|e| e.id));
        }
        seen
    });
    let expected: Vec<i64> = (1..=(writers as i64 * each)).collect();
    assert_eq!(seen, expected, "ids commit in order, without gaps");
}

#[test]
fn the_registry_store_passes_the_conformance_suite_and_nodes_follow_each_other() {
    let scratch = Scratch::new("registry");
    hoistway_registry::conformance::check(&PgRegistryStore::open(scratch.connect()).unwrap());
    let shared = Scratch::new("registry_shared");
    let node = || {
        hoistway_registry::Registry::with_store(Arc::new(
            PgRegistryStore::open(shared.connect()).unwrap(),
        ))
        .unwrap()
    };
    hoistway_registry::conformance::check_shared(&node(), &node());
}

#[test]
fn a_fleet_imports_in_a_few_statements() {
    // 20,000 lifts through one node are read by another in one refresh.
    let scratch = Scratch::new("registry_import");
    let store = Arc::new(PgRegistryStore::open(scratch.connect()).unwrap());
    let a = hoistway_registry::Registry::with_store(store.clone()).unwrap();
    let b = hoistway_registry::Registry::with_store(Arc::new(
        PgRegistryStore::open(scratch.connect()).unwrap(),
    ))
    .unwrap();
    let fleet: Vec<hoistway_registry::LiftInfo> = (0..20_000)
        .map(|i| {
            let mut info = hoistway_registry::LiftInfo::new(
                hoistway_model::LiftId::new(&format!("L-{i:05}")).unwrap(),
            );
            info.customer = format!("C{}", i % 7);
            info.building = format!("B{}", i % 300);
            info
        })
        .collect();
    let report = a.upsert_many(fleet.clone()).unwrap();
    assert_eq!((report.created, report.updated), (20_000, 0));
    assert_eq!(b.refresh().unwrap(), 20_000);
    assert_eq!(b.len(), 20_000);
    assert_eq!(b.history("L-00042").len(), 1);
    // Again, with every lift moved: one period closes and one opens for each.
    let moved: Vec<_> = fleet
        .into_iter()
        .map(|mut i| {
            i.building.push('x');
            i
        })
        .collect();
    let report = b.upsert_many(moved).unwrap();
    assert_eq!((report.created, report.updated), (0, 20_000));
    a.refresh().unwrap();
    assert_eq!(a.history("L-19999").len(), 2);
    assert_eq!(
        hoistway_registry::RegistryStore::load(&*store)
            .unwrap()
            .history
            .len(),
        20_000
    );
}

#[test]
fn the_checkpoint_store_passes_the_conformance_suite_and_fences_across_nodes() {
    let scratch = Scratch::new("checkpoints");
    let store = PgCheckpointStore::open(scratch.connect()).unwrap();
    hoistway_processor::conformance::check(&store);
    // Each node has its own pool, as on two machines.
    let other = PgCheckpointStore::open(scratch.connect()).unwrap();
    hoistway_processor::conformance::check_shared(&store, &other);
    assert_eq!(
        scratch.connect().version(checkpoints::COMPONENT).unwrap(),
        checkpoints::MIGRATIONS.len() as u32
    );
}

/// Four nodes claiming one partition at once (with leases that lapse at once) each get an epoch
/// of their own, and only the last claim's commits go through.
#[test]
fn nodes_claiming_a_partition_at_once_get_distinct_epochs() {
    use hoistway_processor::store::{CheckpointStore, Claimed, Commit, Lease, StoreError};
    let scratch = Scratch::new("claims");
    let stores: Vec<_> = (0..4)
        .map(|_| Arc::new(PgCheckpointStore::open(scratch.connect()).unwrap()))
        .collect();
    // Leases of no length: each claim is granted, as a takeover after a lapse would be.
    let lease = Lease {
        holder: "node".into(),
        ttl: std::time::Duration::ZERO,
    };
    let epochs: Vec<u64> = std::thread::scope(|s| {
        let claims: Vec<_> = stores
            .iter()
            .map(|store| {
                let lease = &lease;
                s.spawn(move || match store.claim(7, lease).unwrap() {
                    Claimed::Granted(claim) => claim.epoch,
                    held => panic!("{held:?}"),
                })
            })
            .collect();
        claims.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let mut sorted = epochs.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [1, 2, 3, 4], "{epochs:?}");
    let state = hoistway_processor::checkpoint::encode_partition(
        &Default::default(),
        hoistway_processor::checkpoint::VERSION,
        7,
        8,
    )
    .unwrap();
    for (store, epoch) in stores.iter().zip(&epochs) {
        let outcome = store.commit(&Commit {
            partition: 7,
            epoch: *epoch,
            offset: 0,
            state: &state,
            dead: None,
        });
        if *epoch == 4 {
            outcome.unwrap();
        } else {
            assert!(
                matches!(outcome, Err(StoreError::Fenced { current: 4, .. })),
                "{outcome:?}"
            );
        }
    }
}

/// A data dir's checkpoint (from a node that kept it in files) moves to PostgreSQL once, with the
/// dead letters it covers; one PostgreSQL already holds is kept, and the file left alone.
#[test]
fn a_data_dirs_checkpoint_moves_to_postgres_once() {
    use hoistway_dlq::{DeadLetter, DeadLetterQueue, DeadLetters, Reason};
    use hoistway_processor::store::{CheckpointStore, Claimed, Commit, FileCheckpointStore, Lease};
    let lease = Lease {
        holder: "node".into(),
        ttl: std::time::Duration::from_secs(60),
    };
    let granted = |store: &dyn CheckpointStore| match store.claim(0, &lease).unwrap() {
        Claimed::Granted(claim) => claim,
        held => panic!("{held:?}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let (state_dir, dlq_dir) = (dir.path().join("state"), dir.path().join("dlq"));
    let dlq = Arc::new(DeadLetterQueue::open(&dlq_dir).unwrap());
    let files = FileCheckpointStore::new(&state_dir, dlq.clone());
    let mut state = hoistway_processor::FleetState {
        offset: 6,
        ..Default::default()
    };
    let reading = hoistway_model::Reading {
        lift_id: hoistway_model::LiftId::new("L-1").unwrap(),
        epoch: 1,
        seq: 1,
        ts_us: 1_764_400_000_000_000,
        received_us: 1_764_400_000_000_000,
        floor: 0,
        direction: hoistway_model::Direction::Idle,
        door: hoistway_model::DoorState::Closed,
        load_kg: None,
        speed_mps: None,
        motor_temp_c: None,
        vibration_mm_s: None,
        trips: 3,
        door_cycles: 1,
        faults: vec![],
        events: vec![],
        extra: Default::default(),
    };
    state.apply(&reading, &Default::default());
    let letters = [DeadLetter::new(
        Reason::UnregisteredLift,
        2,
        reading.clone(),
    )];
    files
        .commit(&Commit {
            partition: 0,
            epoch: granted(&files).epoch,
            offset: 6,
            state: &hoistway_processor::checkpoint::encode(&state).unwrap(),
            dead: Some((0, 5, &letters)),
        })
        .unwrap();
    // Dead letters of a checkpoint that never finished: not moved.
    dlq.write_batch(6, 8, &letters).unwrap();

    let scratch = Scratch::new("adopt");
    let pg = PgCheckpointStore::open(scratch.connect()).unwrap();
    assert_eq!(pg.adopt_files(0, &state_dir, &dlq_dir).unwrap(), Some(6));
    assert!(!state_dir.join("checkpoint.bin").exists());
    assert!(state_dir.join("checkpoint.bin.moved").exists());
    let listed = pg.list().unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|f| (f.first_offset, f.last_offset))
            .collect::<Vec<_>>(),
        [(0, 5)]
    );
    assert_eq!(pg.read(&listed[0].id).unwrap(), letters);
    assert_eq!(granted(&pg).state, Some(state.clone()));
    // Nothing left to move.
    assert_eq!(pg.adopt_files(0, &state_dir, &dlq_dir).unwrap(), None);
    // A file beside a checkpoint PostgreSQL holds: PostgreSQL's wins, the file stays.
    std::fs::rename(
        state_dir.join("checkpoint.bin.moved"),
        state_dir.join("checkpoint.bin"),
    )
    .unwrap();
    assert_eq!(pg.adopt_files(0, &state_dir, &dlq_dir).unwrap(), None);
    assert!(state_dir.join("checkpoint.bin").exists());
    assert_eq!(pg.list().unwrap().len(), 1);
}

/// The storage catalog passes the manifest store's suite with two nodes, and a holder's commits
/// stop the moment another processor claims its partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifest_store_passes_the_conformance_suite_and_is_fenced_by_the_partition() {
    use hoistway_processor::store::{CheckpointStore, Claimed, Lease};
    use hoistway_store::{Error as StoreError, Manifest, ManifestStore, Tier};
    let scratch = Scratch::new("manifests");
    let (one, two) = tokio::task::spawn_blocking({
        let (a, b) = (scratch.connect(), scratch.connect());
        move || {
            (
                PgManifestStore::open(a).unwrap(),
                PgManifestStore::open(b).unwrap(),
            )
        }
    })
    .await
    .unwrap();
    hoistway_store::manifest::conformance::check(&one, Some(&two)).await;
    // A manifest from a tier's file is taken only where PostgreSQL holds none.
    let committed = one.load(Tier::Archive).await.unwrap().unwrap();
    let mut from_file = committed.clone();
    from_file.generation = 40;
    assert!(!one.adopt(Tier::Archive, &from_file).await.unwrap());
    assert_eq!(one.load(Tier::Archive).await.unwrap().unwrap(), committed);
    let other_schema = Scratch::new("adopt");
    let fresh = {
        let pg = other_schema.connect();
        tokio::task::spawn_blocking(move || PgManifestStore::open(pg).unwrap())
            .await
            .unwrap()
    };
    assert!(fresh.adopt(Tier::Archive, &from_file).await.unwrap());
    assert_eq!(fresh.load(Tier::Archive).await.unwrap().unwrap(), from_file);
    let mut next = from_file.clone();
    next.generation = 41;
    fresh.commit(Tier::Archive, &next).await.unwrap();

    let checkpoints = {
        let pg = scratch.connect();
        tokio::task::spawn_blocking(move || PgCheckpointStore::open(pg).unwrap())
            .await
            .unwrap()
    };
    let claim = |ttl_ms: u64| {
        let lease = Lease {
            holder: "node".into(),
            ttl: std::time::Duration::from_millis(ttl_ms),
        };
        match checkpoints.claim(3, &lease).unwrap() {
            Claimed::Granted(c) => c.epoch,
            held => panic!("{held:?}"),
        }
    };
    let first = tokio::task::block_in_place(|| claim(0));
    let alerts = {
        let pg = scratch.connect();
        tokio::task::spawn_blocking(move || PgAlertStore::open(pg).unwrap().fenced(3, first))
            .await
            .unwrap()
    };
    let put = |value: &'static [u8]| {
        tokio::task::block_in_place(|| {
            hoistway_alerts::AlertStore::transact(&alerts, &mut |tx| tx.put_meta("fenced", value))
        })
    };
    put(b"before").unwrap();
    // Partition 3's catalog is its own: empty, beside partition 0's from the suite.
    let holder = one.fenced(3, first);
    assert!(holder.load(Tier::Hot).await.unwrap().is_none());
    let partition_0 = one.load(Tier::Hot).await.unwrap().unwrap();
    let mut hot = Manifest::new();
    hot.generation = 1;
    hot.log_offset = 100;
    holder.commit(Tier::Hot, &hot).await.unwrap();

    let second = tokio::task::block_in_place(|| claim(60_000));
    assert!(second > first);
    let mut late = hot.clone();
    late.generation += 1;
    late.log_offset = 200;
    let err = holder.commit(Tier::Hot, &late).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("claimed by another processor")),
        "{err}"
    );
    let err = put(b"after").unwrap_err();
    assert!(
        matches!(&err, hoistway_alerts::Error::Conflict(m) if m.contains("claimed by another processor")),
        "{err}"
    );
    assert_eq!(
        tokio::task::block_in_place(|| hoistway_alerts::AlertStore::meta(&alerts, "fenced"))
            .unwrap()
            .as_deref(),
        Some(&b"before"[..]),
        "a replaced holder's alert transaction records nothing"
    );
    let next = two.fenced(3, second);
    let seen: Manifest = next.load(Tier::Hot).await.unwrap().unwrap();
    assert_eq!(
        seen, hot,
        "the new holder sees what the old one committed before the claim"
    );
    next.commit(Tier::Hot, &late).await.unwrap();
    assert_eq!(
        one.of_partition(3)
            .load(Tier::Hot)
            .await
            .unwrap()
            .unwrap()
            .log_offset,
        200,
        "every node reads the new holder's commit"
    );
    assert_eq!(
        one.load(Tier::Hot).await.unwrap().unwrap(),
        partition_0,
        "partition 0's catalog is untouched"
    );
}

/// The first node records the partition count; later ones read it, whatever they were told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partition_count_is_recorded_once() {
    let scratch = Scratch::new("layout");
    let (a, b) = (scratch.connect(), scratch.connect());
    tokio::task::spawn_blocking(move || {
        assert_eq!(crate::layout::settle_partitions(&a, 4).unwrap(), 4);
        assert_eq!(crate::layout::settle_partitions(&b, 1).unwrap(), 4);
        assert_eq!(crate::layout::settle_partitions(&a, 4).unwrap(), 4);
    })
    .await
    .unwrap();
}

/// Two nodes over one membership table pass the membership suite.
#[test]
fn the_membership_passes_the_conformance_suite_across_nodes() {
    let scratch = Scratch::new("members");
    let a = crate::PgMembership::open(scratch.connect()).unwrap();
    let b = crate::PgMembership::open(scratch.connect()).unwrap();
    hoistway_processor::conformance::check_membership(&a, &b);
}
