//! The conformance suite every [`Log`] implementation passes: the embedded file log in this
//! crate's tests, the JetStream log in its own crate's. One suite, so that a backend cannot pass
//! a weaker contract than the other.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::{Error, Log, Offset};

/// A record's payload in the suite: distinct per `i`, of varying length.
pub fn payload(i: u64) -> Bytes {
    Bytes::from(format!("record-{i}-{}", "x".repeat((i % 17) as usize)))
}

/// Every record from `from` to the durable end, as (offset, payload).
pub async fn read_all(log: &dyn Log, from: Offset) -> Vec<(Offset, Bytes)> {
    let mut out = Vec::new();
    let mut at = from;
    loop {
        let batch = log.read(at, 4096).await.unwrap();
        if batch.is_empty() {
            return out;
        }
        for r in batch {
            assert!(r.offset >= at, "offsets increase");
            at = r.offset + 1;
            out.push((r.offset, r.payload));
        }
    }
}

/// Checks the [`Log`] contract on `log`, which may already hold records. It appends from
/// several tasks at once, as several ingest nodes do, and truncates at the end.
pub async fn check_log(log: Arc<dyn Log>) {
    let start = log.durable_end();
    let offsets = log.append(vec![payload(0), payload(1)]).await.unwrap();
    assert_eq!(offsets.len(), 2);
    assert!(
        offsets[0] >= start && offsets[1] > offsets[0],
        "{offsets:?}"
    );
    // durable on return: visible to readers, and past the durable end
    assert!(log.durable_end() > offsets[1]);
    let first = offsets[0];
    let back = read_all(log.as_ref(), first).await;
    assert_eq!(
        back,
        vec![(offsets[0], payload(0)), (offsets[1], payload(1))]
    );
    // the end of what was read is the durable end: a reader there has caught up
    assert_eq!(log.durable_end(), offsets[1] + 1);

    // several writers at once: each gets its own offsets, each record is read back once, at
    // the offset its writer was given, and one writer's records keep their order
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let log = log.clone();
        writers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..25u64 {
                let p = payload(w * 1000 + i);
                let at = log.append(vec![p.clone(), p.clone()]).await.unwrap();
                assert!(at[1] > at[0]);
                mine.push((at[0], p.clone()));
                mine.push((at[1], p));
            }
            mine
        }));
    }
    let mut written = Vec::new();
    for w in writers {
        let mine = w.await.unwrap();
        assert!(mine.windows(2).all(|p| p[0].0 < p[1].0), "a writer's order");
        written.extend(mine);
    }
    written.sort_by_key(|(o, _)| *o);
    let all = read_all(log.as_ref(), offsets[1] + 1).await;
    assert_eq!(all, written, "every record once, at its offset");

    // a reader waiting for data wakes when a record becomes durable
    let end = log.durable_end();
    let waiter = {
        let log = log.clone();
        tokio::spawn(async move { log.wait_for_data(end, Duration::from_secs(10)).await })
    };
    let at = log.append(vec![payload(99)]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter woke")
        .unwrap();
    assert_eq!(log.read(at[0], 1).await.unwrap()[0].payload, payload(99));
    // a reader at the end waits out its timeout instead of spinning or failing
    let end = log.durable_end();
    let waited = std::time::Instant::now();
    log.wait_for_data(end, Duration::from_millis(200)).await;
    assert!(waited.elapsed() >= Duration::from_millis(150));
    assert!(log.read(end, 1 << 20).await.unwrap().is_empty());
    // an empty append is not an error
    assert!(log.append(Vec::new()).await.unwrap().is_empty());
    // small max_bytes still returns one record
    assert_eq!(log.read(first, 1).await.unwrap().len(), 1);

    // truncation: what is kept still reads from the truncation point on, the start never
    // passes it, and offsets are never reused
    let cut = written[written.len() / 2].0;
    log.truncate_before(cut).await.unwrap();
    assert!(
        log.start() <= cut,
        "start {} past the cut {cut}",
        log.start()
    );
    let kept = read_all(log.as_ref(), cut).await;
    assert_eq!(kept.first().map(|r| r.0), Some(cut));
    assert_eq!(kept.last().map(|r| r.0), Some(at[0]));
    if log.start() > first {
        assert!(matches!(
            log.read(first, 1).await,
            Err(Error::Truncated { .. })
        ));
    }
    let after = log.append(vec![payload(100)]).await.unwrap();
    assert!(after[0] > at[0], "offsets are never reused");
}
