//! The JetStream log against private NATS servers (each test starts its own on a free loopback
//! port with its own store; the machine's shared server is left alone): the `Log` contract,
//! message splitting, retried publishes, a kill -9 of the server, the stream's leader killed in
//! a three-server cluster, the byte limit, damaged messages and unsuitable streams.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hoistway_jetstream::local::{LocalNats, LocalNatsCluster};
use hoistway_jetstream::message::{self, MAX_RECORDS, MESSAGE_HEADER_LEN, MessageError};
use hoistway_jetstream::{
    Durability, JetStreamLog, OpenError, ServerReport, offset_of, position_of,
};
use hoistway_log::conformance::{check_log, payload, read_all};
use hoistway_log::{Error, Log};

/// Where the pinned NATS server is installed.
fn tmp() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
}

#[test]
fn offsets_name_a_message_and_a_record_in_it() {
    assert_eq!(
        offset_of(1, 0),
        0,
        "the first record of a stream is offset 0, as in a file log"
    );
    assert_eq!(offset_of(1, 5), 5);
    assert_eq!(offset_of(2, 0), 1 << 16);
    for (seq, i) in [(1, 0), (7, 65_534), (1 << 40, 3)] {
        assert_eq!(position_of(offset_of(seq, i)), (seq, i));
    }
    // the place after a message's last record reads on from the next message
    assert_eq!(position_of(offset_of(3, 2) + 1), (3, 3));
}

#[tokio::test]
async fn jetstream_log_meets_the_contract() {
    let nats = LocalNats::start(tmp(), None).unwrap();
    let log = JetStreamLog::open(nats.log_config(0)).await.unwrap();
    assert_eq!((log.start(), log.durable_end()), (0, 0));
    let durability = log.durability().clone();
    // the pinned release, syncing every write (read off its monitoring endpoint): only the
    // lone replica falls short
    assert_eq!(durability.problems.len(), 1, "{durability:?}");
    assert!(
        durability.problems[0].contains("1 replica"),
        "{durability:?}"
    );
    check_log(Arc::new(log)).await;

    // a second node opening the same stream sees exactly what the first wrote
    let other = JetStreamLog::open(nats.log_config(0)).await.unwrap();
    let mine = other.append(vec![payload(7)]).await.unwrap();
    assert_eq!(other.durable_end(), mine[0] + 1);
    let again = JetStreamLog::open(nats.log_config(0)).await.unwrap();
    assert_eq!(again.durable_end(), other.durable_end());
    assert!(again.start() > 0, "the suite truncated");
    // what another node appends later shows once refreshed (a standby taking over relies on it)
    let end = other.append(vec![payload(8), payload(9)]).await.unwrap()[1] + 1;
    assert!(again.durable_end() < end);
    again.refresh().await.unwrap();
    assert_eq!(again.durable_end(), end);
}

/// Several nodes append to one partition at once: every record is read once, at its offset.
#[tokio::test]
async fn several_nodes_write_one_partition() {
    let nats = LocalNats::start(tmp(), None).unwrap();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Arc::new(
            JetStreamLog::open(nats.log_config(1)).await.unwrap(),
        ));
    }
    let mut tasks = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..40u64 {
                let records: Vec<Bytes> = (0..3)
                    .map(|k| payload(n as u64 * 10_000 + i * 10 + k))
                    .collect();
                let at = node.append(records.clone()).await.unwrap();
                mine.extend(at.into_iter().zip(records));
            }
            mine
        }));
    }
    let mut written = Vec::new();
    for t in tasks {
        written.extend(t.await.unwrap());
    }
    written.sort_by_key(|(o, _)| *o);
    let reader = JetStreamLog::open(nats.log_config(1)).await.unwrap();
    assert_eq!(read_all(&reader, 0).await, written);
    assert_eq!(reader.durable_end(), written.last().unwrap().0 + 1);
}

#[tokio::test]
async fn an_append_larger_than_a_message_is_split_in_order() {
    let nats = LocalNats::start(tmp(), Some(4096)).unwrap();
    let log = JetStreamLog::open(nats.log_config(0)).await.unwrap();
    let records: Vec<Bytes> = (0..100).map(|i| Bytes::from(vec![i as u8; 200])).collect();
    let offsets = log.append(records.clone()).await.unwrap();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]));
    let messages = position_of(*offsets.last().unwrap()).0;
    assert!(
        messages >= 5,
        "100 × 200 bytes in messages of ≤ 4 KiB: {messages}"
    );
    let back = read_all(&log, 0).await;
    assert_eq!(back.iter().map(|r| r.0).collect::<Vec<_>>(), offsets);
    assert_eq!(back.into_iter().map(|r| r.1).collect::<Vec<_>>(), records);
    // a read from the middle of a message starts at that record
    let mid = log.read(offsets[1], 1).await.unwrap();
    assert_eq!((mid.len(), mid[0].offset), (1, offsets[1]));
    // a record that cannot fit any message is refused, and nothing of its append is written
    let end = log.durable_end();
    assert!(matches!(
        log.append(vec![payload(1), Bytes::from(vec![0u8; 8192])])
            .await,
        Err(Error::RecordTooLarge(8192))
    ));
    assert_eq!(log.durable_end(), end);
}

/// A publish whose acknowledgement was lost is sent again with the same message id: the stream
/// keeps one copy and answers with its sequence.
#[tokio::test]
async fn a_retried_publish_is_stored_once() {
    let nats = LocalNats::start(tmp(), None).unwrap();
    let log = JetStreamLog::open(nats.log_config(0)).await.unwrap();
    let body = message::encode(&[payload(1), payload(2)]);
    let first = log.publish("node-a-1", body.clone()).await.unwrap();
    let retried = log.publish("node-a-1", body.clone()).await.unwrap();
    assert_eq!(first, retried);
    let next = log.publish("node-a-2", body).await.unwrap();
    assert_eq!(next, first + 1);
    let fresh = JetStreamLog::open(nats.log_config(0)).await.unwrap();
    let all = read_all(&fresh, 0).await;
    assert_eq!(all.len(), 4, "two messages of two records");
}

#[tokio::test]
async fn acknowledged_records_survive_a_kill_9_of_the_server() {
    let mut nats = LocalNats::start(tmp(), None).unwrap();
    let log = JetStreamLog::open(nats.log_config(0)).await.unwrap();
    let mut written = Vec::new();
    for i in 0..200u64 {
        let records = vec![payload(i), payload(i + 1000)];
        let at = log.append(records.clone()).await.unwrap();
        written.extend(at.into_iter().zip(records));
    }
    nats.restart().unwrap();
    // a node that starts now sees every acknowledged record
    let deadline = Instant::now() + Duration::from_secs(20);
    let fresh = loop {
        match JetStreamLog::open(nats.log_config(0)).await {
            Ok(log) => break log,
            Err(e) => {
                assert!(Instant::now() < deadline, "reopening: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(read_all(&fresh, 0).await, written);
    // and the node that was connected reconnects and goes on appending after them
    let after = loop {
        match log.append(vec![payload(5000)]).await {
            Ok(at) => break at,
            Err(e) => {
                assert!(e.is_transient(), "{e}");
                assert!(
                    Instant::now() < deadline,
                    "appending after the restart: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(after[0] > written.last().unwrap().0);
}

/// Three servers, the stream on three replicas, appends going on: the stream's leader is killed
/// with SIGKILL. Appends fail while the others elect a new leader, then go on, and every record
/// acknowledged before, during or after is in the stream at the offset it was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_loses_no_acknowledged_record_when_the_streams_leader_dies() {
    let mut cluster = LocalNatsCluster::start(tmp(), 3).unwrap();
    let config = cluster.log_config(0);
    // The servers elect JetStream's meta leader first.
    let deadline = Instant::now() + Duration::from_secs(60);
    let log = loop {
        match JetStreamLog::open(config.clone()).await {
            Ok(log) => break Arc::new(log),
            Err(e) => {
                assert!(Instant::now() < deadline, "opening on the cluster: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    assert_eq!(
        log.durability_unverified(),
        None,
        "three replicas, each syncing"
    );
    let servers: Vec<async_nats::ServerAddr> =
        cluster.urls().iter().map(|u| u.parse().unwrap()).collect();
    let client = async_nats::connect(servers).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let leader = async || -> Option<String> {
        let mut stream = js.get_stream(&config.stream).await.ok()?;
        stream.info().await.ok()?.cluster.as_ref()?.leader.clone()
    };

    // One writer appending two records at a time, bounded in count and time. An append retries
    // its publish (with the same message id) while the servers elect a new leader: what the
    // election costs shows as the longest append, and as failed appends if it outlasts them.
    let (killed_tx, killed) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn({
        let log = log.clone();
        async move {
            let mut written = Vec::new();
            let (mut failures, mut longest, mut after_kill) = (0u32, Duration::ZERO, 0);
            // From the moment the writer saw the kill to its first acknowledged append after.
            let (mut killed_at, mut resumed) = (None::<Instant>, None::<Duration>);
            let stop_at = Instant::now() + Duration::from_secs(90);
            for i in 0..20_000u64 {
                if after_kill >= 200 || Instant::now() >= stop_at {
                    break;
                }
                let records = vec![payload(i), payload(i + 100_000)];
                if *killed.borrow() && killed_at.is_none() {
                    killed_at = Some(Instant::now());
                }
                let started = Instant::now();
                let appended = log.append(records.clone()).await;
                if *killed.borrow() {
                    longest = longest.max(started.elapsed());
                }
                match appended {
                    Ok(at) => {
                        written.extend(at.into_iter().zip(records));
                        if let Some(at) = killed_at {
                            after_kill += 1;
                            resumed.get_or_insert_with(|| at.elapsed());
                        }
                    }
                    Err(e) => {
                        assert!(e.is_transient(), "{e}");
                        failures += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            (written, failures, longest, after_kill, resumed)
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let name = leader().await.expect("the stream has a leader");
    cluster.node(&name).unwrap().kill();
    killed_tx.send(true).unwrap();
    let (written, failures, longest, after_kill, resumed) = writer.await.unwrap();
    assert_eq!(
        after_kill, 200,
        "appends did not go on after the leader died"
    );
    let after = leader().await;
    assert!(
        after.is_some() && after.as_deref() != Some(name.as_str()),
        "{after:?}"
    );

    // A node that opens the log now reads every acknowledged record where it was put.
    let fresh = JetStreamLog::open(config.clone()).await.unwrap();
    let stored: std::collections::HashMap<_, _> = read_all(&fresh, 0).await.into_iter().collect();
    let lost: Vec<_> = written
        .iter()
        .filter(|(at, record)| stored.get(at) != Some(record))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged records lost, e.g. {:?}",
        lost.len(),
        &lost[..1]
    );
    eprintln!(
        "leader {name} killed: appends resumed {resumed:?} after; {} records acknowledged; the longest append after it took {longest:?}, {failures} failed; new leader {after:?}",
        written.len()
    );
}

/// At its byte limit the stream refuses new messages (a transient error: ingest answers 503)
/// and drops none it holds; truncation makes room again.
#[tokio::test]
async fn the_byte_limit_refuses_appends_and_drops_nothing() {
    // Each step says what failed: this test once failed in CI where the output kept no line.
    let nats = LocalNats::start(tmp(), None).expect("a NATS server");
    let mut config = nats.log_config(0);
    config.max_bytes = Some(32 * 1024);
    let log = JetStreamLog::open(config)
        .await
        .unwrap_or_else(|e| panic!("opening the stream: {e}"));
    let mut written = Vec::new();
    let refused = loop {
        assert!(written.len() < 1000, "the limit never refused an append");
        let record = Bytes::from(vec![written.len() as u8; 1024]);
        match log.append(vec![record.clone()]).await {
            Ok(at) => written.push((at[0], record)),
            Err(e) => break e,
        }
    };
    assert!(refused.is_transient(), "{refused}");
    assert!(
        written.len() >= 20,
        "{} accepted before {refused}",
        written.len()
    );
    assert_eq!(read_all(&log, 0).await, written);
    log.truncate_before(log.durable_end())
        .await
        .unwrap_or_else(|e| panic!("truncating: {e}"));
    log.append(vec![payload(1)])
        .await
        .unwrap_or_else(|e| panic!("appending after the truncation: {e}"));
}

#[tokio::test]
async fn readers_stopping_inside_messages_get_every_record_once_in_order() {
    let nats = LocalNats::start(tmp(), None).unwrap();
    let log = JetStreamLog::open(nats.log_config(0)).await.unwrap();
    // 30 messages of 7 records of one size each (one append is one message)
    let mut written = Vec::new();
    for m in 0..30u64 {
        let records: Vec<Bytes> = (0..7)
            .map(|i| Bytes::from(format!("r{:08}", m * 7 + i)))
            .collect();
        let offsets = log.append(records.clone()).await.unwrap();
        written.extend(offsets.into_iter().zip(records));
    }
    let size = written[0].1.len();
    // Two readers at once, each stopping mid-message (3 and 11 records per read), so the
    // messages fetched ahead serve one and are let go by the other.
    let read_in_steps = |per_read: usize| {
        let log = &log;
        async move {
            let mut got = Vec::new();
            let mut from = 0;
            loop {
                let batch = log.read(from, per_read * size).await.unwrap();
                let Some(last) = batch.last() else { break };
                assert!(
                    batch.len() <= per_read,
                    "{} records past max_bytes",
                    batch.len()
                );
                from = last.offset + 1;
                got.extend(batch.into_iter().map(|r| (r.offset, r.payload)));
            }
            got
        }
    };
    let (a, b) = tokio::join!(read_in_steps(3), read_in_steps(11));
    assert_eq!(a, written);
    assert_eq!(b, written);
    // and again from a place behind the last read: the messages are fetched again
    let again = log.read(written[40].0, 1 << 20).await.unwrap();
    let again: Vec<_> = again.into_iter().map(|r| (r.offset, r.payload)).collect();
    assert_eq!(again, written[40..]);
}

#[tokio::test]
async fn a_damaged_or_newer_message_stops_the_reader() {
    let nats = LocalNats::start(tmp(), None).unwrap();
    let log = JetStreamLog::open(nats.log_config(0)).await.unwrap();
    let good = log.append(vec![payload(1)]).await.unwrap();
    let mut damaged = message::encode(&[payload(2), payload(3)]).to_vec();
    *damaged.last_mut().unwrap() ^= 1;
    let seq = log.publish("damaged", Bytes::from(damaged)).await.unwrap();
    // a reader past the good record meets the damaged one
    match log.read(good[0] + 1, 1 << 20).await {
        Err(Error::Corrupt { offset, reason }) => {
            assert_eq!(
                offset,
                offset_of(seq, 1),
                "the damaged record, not its message"
            );
            assert!(
                reason.contains("HOISTWAY_LOG_0") && reason.contains("checksum"),
                "{reason}"
            );
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    let mut newer = message::encode(&[payload(4)]).to_vec();
    newer[0] = message::MESSAGE_VERSION + 1;
    let seq = log.publish("newer", Bytes::from(newer)).await.unwrap();
    match log.read(offset_of(seq, 0), 1 << 20).await {
        Err(Error::Format { file, version, .. }) => {
            assert_eq!(version, 2);
            assert!(file.contains("HOISTWAY_LOG_0"), "{file}");
        }
        other => panic!("expected a format refusal, got {other:?}"),
    }
    // the record before them is still served
    assert_eq!(log.read(good[0], 1).await.unwrap()[0].payload, payload(1));
}

#[tokio::test]
async fn a_stream_that_could_expire_readings_is_refused() {
    let nats = LocalNats::start(tmp(), None).unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let config = nats.log_config(0);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: config.stream.clone(),
        subjects: vec![config.subject.clone()],
        max_age: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .unwrap();
    match JetStreamLog::open(config).await {
        Err(OpenError::Unsuitable { reason, .. }) => {
            assert!(reason.contains("expires"), "{reason}")
        }
        Err(e) => panic!("expected an unsuitable stream, got {e}"),
        Ok(_) => panic!("a stream with an age limit was accepted"),
    }
}

#[test]
fn message_records_round_trip_and_damage_is_refused() {
    let records = vec![
        Bytes::from_static(b"one"),
        Bytes::from_static(b""),
        Bytes::from(vec![7u8; 300]),
    ];
    let body = message::encode(&records);
    assert_eq!(message::count(&body), Ok(3));
    assert_eq!(message::decode(&body).unwrap(), records);
    for at in 0..body.len() {
        let mut bad = body.to_vec();
        bad[at] ^= 0x10;
        assert!(
            message::decode(&Bytes::from(bad)).is_err(),
            "a flip at {at} went unnoticed"
        );
    }
    for len in 0..body.len() {
        assert!(message::decode(&body.slice(..len)).is_err(), "cut at {len}");
    }
    let mut newer = body.to_vec();
    newer[0] = message::MESSAGE_VERSION + 1;
    assert_eq!(
        message::decode(&Bytes::from(newer)),
        Err(MessageError::Version(2))
    );
}

#[test]
fn splitting_respects_size_and_count_and_keeps_order() {
    let records: Vec<Bytes> = (0..10).map(|i| Bytes::from(vec![i as u8; 10])).collect();
    let parts = message::split(&records, MESSAGE_HEADER_LEN + 3 * 18).unwrap();
    assert_eq!(
        parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
        vec![3, 3, 3, 1]
    );
    assert_eq!(parts.concat(), records);
    assert_eq!(message::split(&records, 20), Err(10));
    let many = vec![Bytes::new(); MAX_RECORDS + 2];
    let parts = message::split(&many, usize::MAX).unwrap();
    assert_eq!(
        parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
        vec![MAX_RECORDS, 2]
    );
}

/// The message format is a contract with every stream already written: a change shows here.
#[test]
fn the_message_format_matches_its_golden_file() {
    let body = message::encode(&[Bytes::from_static(b"hello"), Bytes::from_static(b"")]);
    let hex: String = body
        .chunks(8)
        .map(|c| c.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
        .collect();
    let golden = format!("{}/tests/golden/message-v1.hex", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &hex).unwrap();
    }
    assert_eq!(hex, std::fs::read_to_string(&golden).unwrap());
    assert_eq!(
        message::decode(&body).unwrap(),
        vec![Bytes::from_static(b"hello"), Bytes::new()]
    );
}

#[test]
fn durability_names_what_falls_short() {
    let report = |version: &str, sync: bool| {
        let varz = format!(
            r#"{{"version":"{version}","jetstream":{{"config":{{"sync_interval":120000000000,"sync_always":{sync}}}}}}}"#
        );
        ServerReport::parse("http://n1:8222", varz.as_bytes())
    };
    let good = [
        report("2.12.8", true),
        report("2.14.0", true),
        report("2.12.3", true),
    ];
    assert_eq!(
        Durability::assess("2.12.8", 3, &good).problems,
        Vec::<String>::new()
    );
    assert!(Durability::assess("2.12.8", 3, &good).verified());
    let old = Durability::assess("2.9.10", 3, &good);
    assert!(
        old.problems
            .iter()
            .any(|p| p.contains("2.9.10 is older than 2.12.3")),
        "{old:?}"
    );
    assert!(Durability::assess("v2.12.2-beta", 3, &good).problems[0].contains("older"));
    let lone = Durability::assess("2.12.8", 1, &good);
    assert!(
        lone.problems.iter().any(|p| p.contains("1 replica")),
        "{lone:?}"
    );
    let lazy = Durability::assess("2.12.8", 3, &[report("2.12.8", false)]);
    assert!(
        lazy.problems[0].contains("acknowledges before it syncs"),
        "{lazy:?}"
    );
    let stale = Durability::assess("2.12.8", 3, &[report("2.11.4", true)]);
    assert!(stale.problems[0].contains("2.11.4"), "{stale:?}");
    // without monitoring endpoints the sync setting is unknown: never verified
    let blind = Durability::assess("2.12.8", 3, &[]);
    assert!(
        blind.problems[0].contains("sync_interval is unknown"),
        "{blind:?}"
    );
    assert!(
        ServerReport::parse("x", br#"{"version":"2.12.8"}"#).is_err(),
        "JetStream off"
    );
}

/// Reads `log` until it holds `n` records (polling, as a processor at the end does), at most
/// `within`.
async fn read_until(log: &JetStreamLog, n: usize, within: Duration) -> Vec<Bytes> {
    let deadline = Instant::now() + within;
    loop {
        let _ = log.refresh().await;
        let got: Vec<Bytes> = match log.read(log.start(), usize::MAX).await {
            Ok(records) => records.into_iter().map(|r| r.payload).collect(),
            Err(_) => Vec::new(),
        };
        if got.len() >= n || Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An edge region (a leaf node with its own JetStream domain) acknowledges once a record is in
/// its own stream, keeps accepting while the processing region's server is down, and the
/// processing region's stream takes everything in once it is back; after that the edge drops
/// what was taken in, and the processing side sees the edge's state.
#[tokio::test]
async fn an_edge_region_keeps_accepting_while_the_hub_is_away() {
    let mut hub = LocalNats::start_hub(tmp(), "hub").unwrap();
    let edge = LocalNats::start_leaf(tmp(), &hub, "edge1").unwrap();
    let mut at_edge = edge.log_config(0).in_region("edge1");
    at_edge.sources = None;
    let edge_log = JetStreamLog::open(at_edge).await.unwrap();
    assert_eq!(edge_log.stream_name(), "HOISTWAY_LOG_edge1_0");
    // The edge takes readings before the processing region's stream takes it in, and that
    // stream, truncated already, holds nothing of it (NATS would start after its newest
    // message's time unless told to start at the edge's first).
    let mut sent = Vec::new();
    for i in 0..10u64 {
        let record = payload(i);
        edge_log.append(vec![record.clone()]).await.unwrap();
        sent.push(record);
    }
    let own = Bytes::from_static(b"from the hub's own ingest");
    {
        let before = JetStreamLog::open(hub.log_config(0)).await.unwrap();
        before.append(vec![own.clone()]).await.unwrap();
        before.append(vec![own.clone()]).await.unwrap();
        before.truncate_before(before.durable_end()).await.unwrap();
        assert!(before.start() > 0);
    }
    let mut at_hub = hub.log_config(0);
    at_hub.sources = Some(vec!["edge1".into()]);
    let hub_log = JetStreamLog::open(at_hub).await.unwrap();
    let got = read_until(&hub_log, 11, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 11, "the hub took in {got:?}");
    let from_edge: Vec<Bytes> = got.iter().filter(|r| **r != own).cloned().collect();
    assert_eq!(from_edge, sent, "in the edge's order");
    let sources = hub_log.sources();
    assert_eq!(sources.len(), 1, "{sources:?}");
    assert_eq!(sources[0].region, "edge1");
    assert!(
        sources[0]
            .last_contact
            .is_some_and(|c| c < Duration::from_secs(10)),
        "{sources:?}"
    );

    // the processing region goes away; the edge keeps acknowledging
    hub.kill();
    for i in 10..20u64 {
        let record = payload(i);
        tokio::time::timeout(
            Duration::from_secs(5),
            edge_log.append(vec![record.clone()]),
        )
        .await
        .expect("the edge acknowledges without the hub")
        .unwrap();
        sent.push(record);
    }
    hub.restart().unwrap();
    let got = read_until(&hub_log, 21, Duration::from_secs(30)).await;
    let from_edge: Vec<Bytes> = got.iter().filter(|r| **r != own).cloned().collect();
    assert_eq!(
        from_edge, sent,
        "everything sent to the edge arrived, once, in order"
    );

    // once the hub has it, the edge keeps none of it but its last message
    hub_log.truncate_before(0).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        edge_log.refresh().await.unwrap();
        if edge_log.start() == edge_log.durable_end() - 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the edge was not trimmed: it starts at {} and ends at {}",
            edge_log.start(),
            edge_log.durable_end()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        hub_log.truncate_before(0).await.unwrap();
    }
}
