//! The HTTP API at its boundary: a real server process, requests in, responses and files out.

mod alerts;
mod common;
mod security;
mod sql_clients;
mod ui;

use std::io::Write;

use bytes::Bytes;
use common::*;
use serde_json::{Value, json};

async fn send(server: &TestServer, ctype: &str, body: impl Into<Bytes>) -> Reply {
    http(
        server.addr,
        "POST",
        "/v1/telemetry",
        &[("content-type", ctype)],
        body.into(),
    )
    .await
}

fn assert_problem(r: &Reply, status: u16) -> Value {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.content_type(), "application/problem+json");
    let p = r.json();
    assert_eq!(p["status"], status);
    assert!(p["type"].as_str().unwrap().starts_with("https://"));
    assert!(!p["detail"].as_str().unwrap().is_empty());
    p
}

async fn state(server: &TestServer, lift: &str) -> Value {
    let r = server.get(&format!("/v1/lifts/{lift}/state")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

async fn wait_readings(server: &TestServer, lift: &str, n: u64) {
    server
        .eventually(&format!("{lift} to have {n} readings"), || async {
            let r = server.get(&format!("/v1/lifts/{lift}/state")).await;
            r.status == 200 && r.json()["readings_total"] == n
        })
        .await;
}

#[tokio::test]
async fn every_bad_input_rule_gets_a_problem_naming_the_field() {
    let server = TestServer::start(&[("HOISTWAY_INGEST__MAX_BODY_BYTES", "65536")]);
    register(&server, "lift_id\nL1\n").await;

    // malformed JSON
    let p = assert_problem(
        &send(&server, "application/json", "{\"lift_id\": \"L1\", ").await,
        400,
    );
    assert!(
        p["detail"].as_str().unwrap().contains("not valid JSON"),
        "{p}"
    );
    // wrong type
    let mut r = reading("L1", 1, 0);
    r["floor"] = json!("third");
    let p = assert_problem(&send(&server, "application/json", r.to_string()).await, 422);
    assert_eq!(p["errors"][0]["field"], "floor", "{p}");
    // missing field
    let mut r = reading("L1", 1, 0);
    r.as_object_mut().unwrap().remove("seq");
    let p = assert_problem(&send(&server, "application/json", r.to_string()).await, 422);
    assert_eq!(p["errors"][0]["field"], "seq", "{p}");
    // out of range
    for (field, value) in [
        ("floor", json!(5000)),
        ("load_kg", json!(-1)),
        ("motor_temp_c", json!(900)),
        ("trips", json!(1_000_000)),
    ] {
        let mut r = reading("L1", 1, 0);
        r[field] = value;
        let p = assert_problem(&send(&server, "application/json", r.to_string()).await, 422);
        assert_eq!(p["errors"][0]["field"], field, "{p}");
        assert!(
            p["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("range")
                || p["errors"][0]["message"]
                    .as_str()
                    .unwrap()
                    .contains("more than"),
            "{p}"
        );
    }
    // bad enum and bad lift id
    let mut r = reading("L1", 1, 0);
    r["direction"] = json!("sideways");
    assert_eq!(
        assert_problem(&send(&server, "application/json", r.to_string()).await, 422)["errors"][0]["field"],
        "direction"
    );
    let r = reading("L 1", 1, 0);
    assert_eq!(
        assert_problem(&send(&server, "application/json", r.to_string()).await, 422)["errors"][0]["field"],
        "lift_id"
    );
    // ts in the future, ts without offset
    let mut r = reading("L1", 1, 0);
    r["ts"] = json!((chrono::Utc::now() + chrono::Duration::minutes(10)).to_rfc3339());
    let p = assert_problem(&send(&server, "application/json", r.to_string()).await, 422);
    assert_eq!(p["errors"][0]["field"], "ts");
    assert!(
        p["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("ahead")
    );
    r["ts"] = json!("2026-11-23T10:00:00");
    assert_eq!(
        assert_problem(&send(&server, "application/json", r.to_string()).await, 422)["errors"][0]["field"],
        "ts"
    );
    // wrong shape, empty body, unsupported content type and encoding
    assert_problem(&send(&server, "application/json", "42").await, 400);
    assert_problem(&send(&server, "application/json", "  ").await, 400);
    assert_problem(
        &send(&server, "text/plain", reading("L1", 1, 0).to_string()).await,
        415,
    );
    let r = http(
        server.addr,
        "POST",
        "/v1/telemetry",
        &[
            ("content-type", "application/json"),
            ("content-encoding", "br"),
        ],
        Bytes::from(reading("L1", 1, 0).to_string()),
    )
    .await;
    assert_problem(&r, 415);
    // body over the size limit: one byte over, so that the server has read all of it when it
    // answers (a longer body it stops reading, closes on, and the client may see a broken
    // pipe instead of the answer).
    let mut big = format!("[{}]", vec![reading("L1", 1, 0).to_string(); 100].join(","));
    assert!(big.len() < 65_536);
    big.push_str(&" ".repeat(65_537 - big.len()));
    assert_problem(&send(&server, "application/json", big).await, 413);
    // bad gzip
    let r = http(
        server.addr,
        "POST",
        "/v1/telemetry",
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        Bytes::from_static(b"not gzip"),
    )
    .await;
    assert_problem(&r, 400);
    // unknown endpoint
    assert_problem(&server.get("/v1/nope").await, 404);

    // none of it reached the lift
    assert_eq!(state(&server, "L1").await["readings_total"], 0);
}

#[tokio::test]
async fn a_batch_keeps_its_valid_readings_and_reports_each_bad_one() {
    let server = TestServer::start(&[]);
    register(&server, "lift_id\nL1\nL2\n").await;
    let mut bad = reading("L2", 7, 1);
    bad["door"] = json!("ajar");
    let batch = json!([reading("L1", 1, 2), bad, reading("L1", 2, 3), {"lift_id": "L2"}]);
    let r = send(&server, "application/json", batch.to_string()).await;
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["duplicates"], 0);
    let rejected = body["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0]["index"], 1);
    assert_eq!(rejected[0]["lift_id"], "L2");
    assert_eq!(rejected[0]["seq"], 7);
    assert_eq!(rejected[0]["field"], "door");
    assert_eq!(rejected[1]["index"], 3);

    // NDJSON, gzip'd, with a malformed line in the middle
    let ndjson = format!(
        "{}\n{{not json\n{}\n",
        reading("L2", 1, 1),
        reading("L2", 2, 1)
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(ndjson.as_bytes()).unwrap();
    let r = http(
        server.addr,
        "POST",
        "/v1/telemetry",
        &[
            ("content-type", "application/x-ndjson"),
            ("content-encoding", "gzip"),
        ],
        Bytes::from(gz.finish().unwrap()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["rejected"][0]["index"], 1);

    // all bad: 422 listing each
    let r = send(
        &server,
        "application/json",
        json!([{"seq": 1}, {"lift_id": "L1"}]).to_string(),
    )
    .await;
    let p = assert_problem(&r, 422);
    assert_eq!(p["errors"].as_array().unwrap().len(), 2);

    wait_readings(&server, "L1", 2).await;
    wait_readings(&server, "L2", 2).await;
    assert_eq!(state(&server, "L1").await["trips_total"], 5);
}

#[tokio::test]
async fn resends_are_duplicates_not_errors_and_count_once() {
    let server = TestServer::start(&[]);
    register(&server, "lift_id,initial_trips\nL1,999990\n").await;
    let live: Vec<Value> = (1..=5).map(|s| reading("L1", s, 2)).collect();
    for r in &live[..3] {
        assert_eq!(
            send(&server, "application/json", r.to_string())
                .await
                .json()["accepted"],
            1
        );
    }
    // the whole backlog again, out of order, with the two not yet sent
    let backlog = json!([live[4], live[0], live[3], live[2], live[1], live[4]]);
    let body = send(&server, "application/json", backlog.to_string())
        .await
        .json();
    assert_eq!(body["accepted"], 2, "{body}");
    assert_eq!(body["duplicates"], 4, "{body}");
    wait_readings(&server, "L1", 5).await;
    let s = state(&server, "L1").await;
    assert_eq!(
        s["trips_total"],
        999_990 + 10,
        "initial trips from the registry plus reported ones"
    );
    assert_eq!(s["door_cycles_total"], 20);
    assert_eq!(s["last_seq"], 5);
    assert_eq!(s["seq_ranges"][0]["ranges"], json!([[1, 5]]));
}

#[tokio::test]
async fn a_replaced_controller_starts_a_new_epoch_and_is_not_discarded() {
    let server = TestServer::start(&[]);
    register(&server, "lift_id\nL1\n").await;
    let mut old = reading("L1", 500, 1);
    old["epoch"] = json!(1_700_000_000u64);
    assert_eq!(
        send(&server, "application/json", old.to_string())
            .await
            .json()["accepted"],
        1
    );
    // new controller: seq restarts at 1 under a larger epoch
    let mut new = reading("L1", 1, 1);
    new["epoch"] = json!(1_800_000_000u64);
    let body = send(&server, "application/json", new.to_string())
        .await
        .json();
    assert_eq!(body["accepted"], 1, "{body}");
    wait_readings(&server, "L1", 2).await;
    let s = state(&server, "L1").await;
    assert_eq!(s["epoch"], 1_800_000_000u64);
    assert_eq!(s["last_seq"], 1);
}

#[tokio::test]
async fn registry_buildings_paging_and_summary() {
    let server = TestServer::start(&[]);
    let csv = "lift_id,building,site,customer,model,install_date,initial_trips\n\
               A1,B1,S1,acme,X,2020-01-01,10\nA2,B1,S1,acme,X,,0\nA3,B2,S1,other,Y,,0\n";
    register(&server, csv).await;
    let bad = http(
        server.addr,
        "POST",
        "/v1/lifts/import",
        &[("content-type", "text/csv")],
        Bytes::from_static(b"lift_id,initial_trips\nZ1,many\n"),
    )
    .await;
    let p = assert_problem(&bad, 422);
    assert!(p["detail"].as_str().unwrap().contains("line 2"), "{p}");

    let mut faulty = reading("A2", 1, 1);
    faulty["faults"] = json!(["E101"]);
    send(
        &server,
        "application/json",
        json!([reading("A1", 1, 1), faulty]).to_string(),
    )
    .await;
    wait_readings(&server, "A2", 1).await;

    let b1 = server.get("/v1/buildings/B1").await.json();
    assert_eq!(b1["lifts"].as_array().unwrap().len(), 2);
    assert_problem(&server.get("/v1/buildings/B9").await, 404);

    let page1 = server.get("/v1/lifts?limit=2").await.json();
    assert_eq!(page1["items"].as_array().unwrap().len(), 2);
    assert_eq!(page1["next_after"], "A2");
    let page2 = server.get("/v1/lifts?limit=2&after=A2").await.json();
    assert_eq!(page2["items"][0]["lift_id"], "A3");
    assert!(page2["next_after"].is_null());
    let acme = server
        .get("/v1/lifts?customer=acme&status=faulted")
        .await
        .json();
    assert_eq!(acme["items"].as_array().unwrap().len(), 1);
    assert_eq!(acme["items"][0]["lift_id"], "A2");

    let summary = server.get("/v1/fleet/summary").await.json();
    assert_eq!(summary["lifts"], 3);
    assert_eq!(summary["reporting"], 1);
    assert_eq!(summary["faulted"], 1);
    assert_eq!(summary["never_reported"], 1);

    // change and remove through the API
    let r = http(
        server.addr,
        "PATCH",
        "/v1/lifts/A3",
        &[("content-type", "application/json")],
        Bytes::from_static(b"{\"building\":\"B1\"}"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        server.get("/v1/buildings/B1").await.json()["lifts"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let r = http(
        server.addr,
        "PATCH",
        "/v1/lifts/A3",
        &[("content-type", "application/json")],
        Bytes::from_static(b"{\"colour\":\"red\"}"),
    )
    .await;
    assert_problem(&r, 422);
    assert_eq!(
        http(server.addr, "DELETE", "/v1/lifts/A3", &[], Bytes::new())
            .await
            .status,
        204
    );
    assert_problem(&server.get("/v1/lifts/A3").await, 404);
}

#[tokio::test]
async fn unregistered_lifts_are_dead_lettered_then_replayed() {
    let server = TestServer::start(&[("HOISTWAY_PROCESSOR__CHECKPOINT_INTERVAL_SECS", "1")]);
    let batch = json!([reading("NEW-1", 1, 4), reading("NEW-1", 2, 5)]);
    let body = send(&server, "application/json", batch.to_string())
        .await
        .json();
    assert_eq!(
        body["accepted"], 2,
        "the reading is durable, so the lift gets a success"
    );

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let files = loop {
        let files = server.get("/v1/dlq").await.json()["files"].clone();
        if files.as_array().is_some_and(|a| !a.is_empty()) {
            break files;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no dead-letter file appeared"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let file = &files[0];
    assert_eq!(file["items"], 2);
    assert_eq!(file["reasons"]["unregistered_lift"], 2);
    let id = file["id"].as_str().unwrap().to_string();
    let shown = server.get(&format!("/v1/dlq/{id}")).await.json();
    assert_eq!(shown["items"][0]["reading"]["lift_id"], "NEW-1");
    // the file is plain NDJSON on disk
    let on_disk =
        std::fs::read_to_string(server.data_dir().join("dlq").join(format!("{id}.ndjson")))
            .unwrap();
    assert_eq!(on_disk.lines().count(), 2);

    // fix the cause, replay with the CLI
    register(&server, "lift_id\nNEW-1\n").await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hoistway"))
        .args([
            "dlq",
            "replay",
            &id,
            "--server",
            &format!("http://{}", server.addr),
        ])
        .env("HOISTWAY_TOKEN", &server.token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_readings(&server, "NEW-1", 2).await;
    assert_eq!(state(&server, "NEW-1").await["trips_total"], 9);
    assert_eq!(
        server.get("/v1/dlq").await.json()["files"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_problem(
        &http(
            server.addr,
            "POST",
            &format!("/v1/dlq/{id}/replay"),
            &[],
            Bytes::new(),
        )
        .await,
        404,
    );
}

#[tokio::test]
async fn auto_registration_when_configured() {
    let server = TestServer::start(&[("HOISTWAY_INGEST__AUTO_REGISTER", "true")]);
    let r = send(
        &server,
        "application/json",
        reading("AUTO-1", 1, 1).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    wait_readings(&server, "AUTO-1", 1).await;
    assert_eq!(server.get("/v1/lifts/AUTO-1").await.status, 200);
}

#[tokio::test]
async fn a_full_log_answers_503_with_retry_after_and_loses_nothing_acknowledged() {
    let server = TestServer::start(&[
        ("HOISTWAY_LOG__MAX_BYTES", "20000"),
        ("HOISTWAY_LOG__SEGMENT_BYTES", "4096"),
        ("HOISTWAY_PROCESSOR__CHECKPOINT_INTERVAL_SECS", "3600"),
    ]);
    register(&server, "lift_id\nL1\n").await;
    let mut acked = 0u64;
    let mut refused = None;
    for seq in 1..=2000u64 {
        let r = send(
            &server,
            "application/json",
            reading("L1", seq, 1).to_string(),
        )
        .await;
        if r.status == 200 {
            acked += 1;
        } else {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("the log limit was never reached");
    assert_problem(&r, 503);
    assert!(r.headers.get("retry-after").is_some());
    assert_eq!(server.get("/readyz").await.status, 503);
    wait_readings(&server, "L1", acked).await;
    assert_eq!(state(&server, "L1").await["trips_total"], acked);
}

#[tokio::test]
async fn health_metrics_and_graceful_shutdown() {
    let mut server = TestServer::start(&[]);
    register(&server, "lift_id\nL1\n").await;
    assert_eq!(server.get("/healthz").await.status, 200);
    assert_eq!(server.get("/readyz").await.status, 200);
    for seq in 1..=20 {
        send(
            &server,
            "application/json",
            reading("L1", seq, 1).to_string(),
        )
        .await;
    }
    send(&server, "application/json", reading("L1", 3, 1).to_string()).await;
    send(&server, "text/plain", "x").await;
    wait_readings(&server, "L1", 20).await;
    let metrics = String::from_utf8(server.get("/metrics").await.body.to_vec()).unwrap();
    for name in [
        "hoistway_http_requests_total",
        "hoistway_ingest_readings_total{outcome=\"accepted\"} 20",
        "hoistway_ingest_readings_total{outcome=\"duplicate\"} 1",
        "hoistway_ingest_ack_seconds_bucket",
        "hoistway_log_bytes",
        "hoistway_processor_lag_records",
        "hoistway_dlq_files",
        "hoistway_processor_checkpoint_age_seconds",
        "status=\"415\"",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    assert!(server.terminate(), "SIGTERM exits cleanly");
    let checkpoint = server.data_dir().join("state").join("checkpoint.bin");
    assert!(checkpoint.exists(), "shutdown wrote a checkpoint");
    server.spawn();
    assert_eq!(state(&server, "L1").await["readings_total"], 20);
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    let server = TestServer::start(&[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hoistway"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(server.data_dir())
        .env("HOISTWAY_LOG_LEVEL", "error")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("in use by another hoistway process"),
        "{stderr}"
    );
    assert_eq!(
        server.get("/readyz").await.status,
        200,
        "the first one is unharmed"
    );
}

/// The fixture for SQL tests: three lifts in two buildings, readings on 2026-01-10 between
/// 10:00 and 11:40 plus one late reading from the day before.
async fn sql_fixture(server: &TestServer) {
    register(
        server,
        "lift_id,building,site,customer,model,install_date,initial_trips\n\
         L-A1,B1,S1,C1,M1,2020-01-01,100\n\
         L-A2,B1,S1,C1,M1,,0\n\
         L-B1,B2,S2,C2,M2,2021-06-30,5\n",
    )
    .await;
    let mut readings = Vec::new();
    for (lift, count) in [("L-A1", 6u64), ("L-A2", 3), ("L-B1", 4)] {
        for seq in 1..=count {
            let minute = (seq - 1) * 20;
            readings.push(json!({
                "lift_id": lift,
                "seq": seq,
                "ts": format!("2026-01-10T{:02}:{:02}:00Z", 10 + minute / 60, minute % 60),
                "floor": seq as i64,
                "direction": "up",
                "door": "closed",
                "load_kg": 75.0 * seq as f64,
                "motor_temp_c": 40.0 + seq as f64,
                "trips": seq,
                "door_cycles": 2,
                "faults": if seq == 2 { json!(["E7"]) } else { json!([]) },
                "events": if lift == "L-B1" && seq == 3 { json!(["entrapment", "alarm_button"]) } else { json!([]) },
                "extra": { "cabin_temp_c": 20.0 + seq as f64 },
            }));
        }
    }
    readings.push(json!({
        "lift_id": "L-A2", "seq": 100, "ts": "2026-01-09T23:59:50Z",
        "floor": 0, "direction": "idle", "door": "open", "trips": 9, "door_cycles": 1,
    }));
    let r = send(server, "application/json", json!(readings).to_string()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["accepted"], 14);
    wait_readings(server, "L-A2", 4).await;
}

/// Runs every case of tests/golden/sql.txt and returns the file with actual results.
async fn run_golden_sql(server: &TestServer) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/sql.txt");
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = String::new();
    for case in text.split("\n\n").filter(|c| !c.trim().is_empty()) {
        let (query_part, _) = case.split_once("----").unwrap();
        let sql: String = query_part
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        let r = server
            .post_json("/v1/sql", &json!({ "sql": sql.trim() }).to_string())
            .await;
        assert_eq!(r.status, 200, "{sql}: {}", String::from_utf8_lossy(&r.body));
        out.push_str(query_part);
        out.push_str("----\n");
        for row in r.json()["rows"].as_array().unwrap() {
            out.push_str(&row.to_string());
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_over_readings_rollups_registry_and_state_matches_the_golden_file() {
    let mut server = TestServer::start(&[("HOISTWAY_PROCESSOR__CHECKPOINT_INTERVAL_SECS", "3600")]);
    sql_fixture(&server).await;
    // First from the in-memory buffer...
    let status = server.get("/v1/storage/status").await.json();
    assert_eq!(status["buffered_rows"], 14, "{status}");
    let from_buffer = run_golden_sql(&server).await;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/sql.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, &from_buffer).unwrap();
    }
    assert_eq!(
        from_buffer,
        std::fs::read_to_string(path).unwrap(),
        "SQL results changed; review and rerun with UPDATE_GOLDEN=1"
    );
    // ...then from Parquet files after a restart (the shutdown checkpoint flushes), and again
    // after compaction merged them: the same answers.
    tokio::task::block_in_place(|| {
        assert!(server.terminate());
        server.spawn();
    });
    let status = server.get("/v1/storage/status").await.json();
    assert_eq!(status["buffered_rows"], 0, "{status}");
    let hot_readings = &status["tiers"][0];
    assert_eq!(hot_readings["tier"], "hot");
    assert_eq!(hot_readings["kind"], "readings");
    assert_eq!(hot_readings["rows"], 14);
    assert_eq!(hot_readings["dates"], 2);
    assert_eq!(run_golden_sql(&server).await, from_buffer);
    let r = server.post_json("/v1/storage/maintain", "").await;
    assert_eq!(r.status, 200);
    // The fixture's dates are long past: both move to the archive, and January's two rollup
    // files merge into one month file. Readings need no compaction (one file per date).
    assert_eq!(r.json()["moved_files"], 4, "{}", r.json());
    assert_eq!(r.json()["compactions"], 1, "{}", r.json());
    assert_eq!(run_golden_sql(&server).await, from_buffer);
}

#[tokio::test]
async fn sql_refuses_writes_and_files_and_enforces_its_limits() {
    let server = TestServer::start(&[
        ("HOISTWAY_QUERY__MAX_ROWS", "50"),
        ("HOISTWAY_QUERY__TIMEOUT_SECS", "1"),
    ]);
    sql_fixture(&server).await;
    for sql in [
        "CREATE TABLE t (x INT)",
        "CREATE VIEW v AS SELECT 1",
        "INSERT INTO lifts (lift_id) VALUES ('x')",
        "DELETE FROM readings",
        "DROP VIEW rollups_daily",
        "COPY (SELECT 1) TO 'out.csv'",
        "CREATE EXTERNAL TABLE e STORED AS CSV LOCATION '/etc/passwd'",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let r = server
            .post_json("/v1/sql", &json!({ "sql": sql }).to_string())
            .await;
        let p = assert_problem(&r, 403);
        assert_eq!(
            p["type"], "https://hoistway.dev/problems/read-only-sql",
            "{sql}"
        );
        assert!(
            p["detail"].as_str().unwrap().contains("read-only"),
            "{sql}: {p}"
        );
    }
    for (sql, names_tables) in [
        ("SELECT * FROM '/etc/passwd'", true),
        ("SELECT * FROM read_csv('/etc/passwd')", true),
        ("SELECT * FROM nope", true),
        ("SELEC 1", false),
        ("SELECT no_such_column FROM readings", false),
        // DataFusion's planner panics on it (found by fuzzing): refused, not a dropped connection.
        (
            "SELECT * FROM readings WHERE trips > (SELECT FROM readings)",
            false,
        ),
    ] {
        let r = server
            .post_json("/v1/sql", &json!({ "sql": sql }).to_string())
            .await;
        let p = assert_problem(&r, 400);
        assert_eq!(
            p["type"], "https://hoistway.dev/problems/invalid-sql",
            "{sql}: {p}"
        );
        let detail = p["detail"].as_str().unwrap();
        assert_eq!(
            detail.contains("The tables are readings, rollups_hourly"),
            names_tables,
            "{sql}: {p}"
        );
    }
    // A plain-text body works too; the row limit cuts and says so.
    let r = http(
        server.addr,
        "POST",
        "/v1/sql",
        &[("content-type", "text/plain")],
        Bytes::from("SELECT value FROM generate_series(1, 1000)"),
    )
    .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["row_count"], 50);
    assert_eq!(v["truncated"], true);
    assert_eq!(r.headers["hoistway-truncated"], "true");
    // A query past the time limit is cancelled.
    let r = server
        .post_json(
            "/v1/sql",
            &json!({ "sql": "SELECT sum(a.value * b.value) FROM generate_series(1, 200000) a, generate_series(1, 200000) b" })
                .to_string(),
        )
        .await;
    let p = assert_problem(&r, 422);
    assert!(p["detail"].as_str().unwrap().contains("time"), "{p}");
    // CSV and Parquet results.
    let r = server
        .post_json(
            "/v1/sql?format=csv",
            &json!({ "sql": "SELECT lift_id, count(*) AS n FROM readings GROUP BY lift_id ORDER BY lift_id" })
                .to_string(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type(), "text/csv; charset=utf-8");
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "lift_id,n\nL-A1,6\nL-A2,4\nL-B1,4\n"
    );
    let r = server
        .post_json(
            "/v1/sql",
            &json!({ "sql": "SELECT * FROM readings", "format": "parquet" }).to_string(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body.starts_with(b"PAR1") && r.body.ends_with(b"PAR1"));
    let r = server
        .post_json(
            "/v1/sql",
            &json!({ "sql": "SELECT faults FROM readings", "format": "csv" }).to_string(),
        )
        .await;
    let p = assert_problem(&r, 400);
    assert!(
        p["detail"].as_str().unwrap().contains("json or parquet"),
        "{p}"
    );
    let r = server
        .post_json(
            "/v1/sql",
            &json!({ "sql": "SELECT 1", "format": "xml" }).to_string(),
        )
        .await;
    assert_problem(&r, 400);
    // EXPLAIN and EXPLAIN ANALYZE show the plan, with the files the predicates kept.
    for explain in ["EXPLAIN", "EXPLAIN ANALYZE"] {
        let sql = format!("{explain} SELECT count(*) FROM readings WHERE lift_id = 'L-A1'");
        let r = server
            .post_json("/v1/sql", &json!({ "sql": sql }).to_string())
            .await;
        assert_eq!(r.status, 200, "{sql}: {}", String::from_utf8_lossy(&r.body));
        assert!(r.json()["rows"].to_string().contains("Exec"), "{sql}");
    }
}

/// The nice value of each analytics thread of process `pid` (Linux: field 19 of a task's stat).
fn analytics_thread_nices(pid: u32) -> Vec<i64> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with("hoistway-analyt") {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
        // after the command name in parentheses: state is field 3, nice field 19
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        out.push(fields[16].parse().unwrap());
    }
    out
}

/// Queries execute on their own runtime at a lower priority, never on the one that answers
/// devices: while SQL blocks every analytics thread for 5 s, acks keep coming (on a shared
/// runtime they would stop until the queries end).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queries_that_block_their_threads_do_not_stop_the_acks() {
    let server = TestServer::start(&[
        ("HOISTWAY_QUERY__TEST_FUNCTIONS", "true"),
        ("HOISTWAY_QUERY__THREADS", "2"),
    ]);
    register(&server, "lift_id,building\nL-1,B1\n").await;
    let nices = analytics_thread_nices(server.pid().unwrap());
    assert!(!nices.is_empty(), "no analytics threads found");
    assert!(nices.iter().all(|n| *n == 19), "{nices:?}");

    // More sleeping queries than analytics threads (and than the server's async workers).
    let addr = server.addr;
    let started = std::time::Instant::now();
    let blockers: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(async move {
                let body = json!({ "sql": "SELECT hoistway_test_sleep(5000) AS slept" });
                http(
                    addr,
                    "POST",
                    "/v1/sql",
                    &[("content-type", "application/json")],
                    Bytes::from(body.to_string()),
                )
                .await
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut slowest = std::time::Duration::ZERO;
    let mut acked = 0;
    let mut seq = 0;
    while started.elapsed() < std::time::Duration::from_secs(4) {
        seq += 1;
        let t = std::time::Instant::now();
        let r = server
            .post_json("/v1/telemetry", &reading("L-1", seq, 1).to_string())
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        slowest = slowest.max(t.elapsed());
        acked += 1;
    }
    let blocked_for = started.elapsed();
    for b in blockers {
        let r = b.await.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert!(r.json()["rows"].to_string().contains("5000"));
    }
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(5),
        "the queries did block for 5 s"
    );
    assert!(
        acked >= 20 && slowest < std::time::Duration::from_secs(2),
        "{acked} acks in {blocked_for:?} while queries blocked, the slowest took {slowest:?}"
    );
    wait_readings(&server, "L-1", seq).await;
}

#[tokio::test]
async fn a_lifts_readings_for_charts_raw_and_rolled_up() {
    let server = TestServer::start(&[]);
    sql_fixture(&server).await;
    let get = |q: &str| {
        let path = format!("/v1/lifts/L-A1/readings{q}");
        let server = &server;
        async move { server.get(&path).await }
    };
    let r = get("?from=2026-01-10&to=2026-01-11").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let rows = r.json()["rows"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 6);
    assert_eq!(rows[0]["seq"], 1);
    assert_eq!(rows[5]["seq"], 6);
    let r = get("?from=2026-01-10T10:30:00Z&to=2026-01-10T11:30:00Z").await;
    assert_eq!(r.json()["row_count"], 3);
    let r = get("?from=2026-01-10&to=2026-01-11&step=1h").await;
    let rows = r.json()["rows"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["readings"], 3);
    assert_eq!(rows[1]["trips"], 4 + 5 + 6);
    let r = get("?from=2026-01-01&to=2026-02-01&step=1d").await;
    assert_eq!(r.json()["rows"][0]["readings"], 6);
    // The default window is the last 24 h: the fixture is older.
    assert_eq!(get("").await.json()["row_count"], 0);
    assert_problem(&get("?from=yesterday").await, 400);
    // Minute buckets of raw readings, for a chart of a day or a week.
    let r = get("?from=2026-01-10&to=2026-01-11&step=30m").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let rows = r.json()["rows"].as_array().unwrap().clone();
    let sum = |f: &str| rows.iter().map(|r| r[f].as_u64().unwrap()).sum::<u64>();
    assert_eq!((sum("readings"), sum("trips")), (6, 1 + 2 + 3 + 4 + 5 + 6));
    let times: Vec<&str> = rows.iter().map(|r| r["time"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    assert!(
        times
            .iter()
            .all(|t| t.contains(":00:00") || t.contains(":30:00")),
        "{times:?}"
    );
    assert!(
        rows.iter()
            .all(|r| r["motor_temp_c_max"].as_f64() >= r["motor_temp_c_avg"].as_f64())
    );
    for bad in ["60m", "0m", "5x"] {
        assert_problem(&get(&format!("?step={bad}")).await, 400);
    }
    assert_problem(&get("?from=2026-01-11&to=2026-01-10").await, 400);
    assert_problem(&server.get("/v1/lifts/bad%20id/readings").await, 422);
}

/// The files are plain Parquet: pyarrow (pinned, from PyPI) reads the files the
/// manifest lists with the documented schema and the same row count as SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_files_are_read_back_by_pyarrow() {
    let mut server = TestServer::start(&[]);
    sql_fixture(&server).await;
    tokio::task::block_in_place(|| {
        assert!(server.terminate());
    });
    let python = test_python();
    let script = r#"
import json, sys, pyarrow.parquet as pq
root = sys.argv[1]
manifest = json.load(open(root + "/_hoistway/manifest.json"))
rows = 0
for f in manifest["files"]:
    if f["kind"] != "readings":
        continue
    t = pq.read_table(root + "/" + f["path"])
    assert t.num_rows == f["rows"], (f, t.num_rows)
    rows += t.num_rows
    schema = [(field.name, str(field.type)) for field in t.schema]
print(json.dumps({"rows": rows, "schema": schema}))
"#;
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(server.data_dir().join("store/hot"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rows"], 14);
    let schema: Vec<String> = v["schema"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| format!("{}: {}", f[0].as_str().unwrap(), f[1].as_str().unwrap()))
        .collect();
    assert_eq!(
        schema,
        [
            "lift_id: string",
            "ts: timestamp[us, tz=UTC]",
            "received: timestamp[us, tz=UTC]",
            "epoch: int64",
            "seq: int64",
            "floor: int16",
            "direction: string",
            "door: string",
            "load_kg: float",
            "speed_mps: float",
            "motor_temp_c: float",
            "vibration_mm_s: float",
            "trips: int32",
            "door_cycles: int32",
            "faults: list<item: string not null>",
            "events: list<item: string not null>",
            "extra: map<string ('keys'), double ('values') ('extra')>",
        ]
    );
}

/// A loopback HTTP proxy in front of the S3 server that, while `faulty` is set, fails half the
/// requests on purpose, in turn: a 500; the connection dropped before the request reaches S3;
/// the request done by S3 but its answer lost (the connection dropped after).
struct FaultyProxy {
    port: u16,
    faulty: std::sync::Arc<std::sync::atomic::AtomicBool>,
    faults: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultyProxy {
    async fn start(upstream: u16) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let faulty = Arc::new(AtomicBool::new(false));
        let faults = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let (flag, count) = (faulty.clone(), faults.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (flag, count, requests) = (flag.clone(), count.clone(), requests.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (flag, count, requests) =
                            (flag.clone(), count.clone(), requests.clone());
                        async move {
                            let n = requests.fetch_add(1, Ordering::Relaxed);
                            let fault = flag
                                .load(Ordering::Relaxed)
                                .then_some(n % 6)
                                .filter(|k| k % 2 == 0);
                            if fault.is_some() {
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                            match fault {
                                Some(0) => {
                                    return Ok(hyper::Response::builder()
                                        .status(500)
                                        .body(http_body_util::Full::new(Bytes::from_static(
                                            b"<Error><Code>InternalError</Code></Error>",
                                        )))
                                        .unwrap());
                                }
                                Some(2) => return Err(std::io::Error::other("dropped before")),
                                _ => {}
                            }
                            let answer = forward(upstream, req).await;
                            if fault == Some(4) {
                                return Err(std::io::Error::other("answer lost"));
                            }
                            Ok(answer)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            port,
            faulty,
            faults,
            task,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends `req` to the S3 server on `port` as it came (headers, body) and returns its answer.
async fn forward(
    port: u16,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<http_body_util::Full<Bytes>> {
    use http_body_util::BodyExt;
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(hyper::Request::from_parts(
            parts,
            http_body_util::Full::new(body),
        ))
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    hyper::Response::from_parts(parts, http_body_util::Full::new(body))
}

/// The archive tier behind a proxy that fails half the requests (500s, dropped connections, lost
/// answers): the move to it retries and completes, nothing is lost or counted twice, and the hot
/// tier keeps taking readings meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_to_a_failing_s3_retry_and_lose_or_duplicate_nothing() {
    use std::sync::atomic::Ordering;
    let s3 = S3Server::start("hoistway-faults").await;
    let proxy = FaultyProxy::start(s3.port).await;
    let endpoint = proxy.endpoint();
    let mut server = TestServer::start(&[
        (
            "HOISTWAY_STORAGE__ARCHIVE_URL",
            "s3://hoistway-faults/fleet-b",
        ),
        ("HOISTWAY_STORAGE__S3__ENDPOINT", &endpoint),
        ("HOISTWAY_STORAGE__S3__REGION", "us-east-1"),
        ("HOISTWAY_STORAGE__S3__ACCESS_KEY_ID", "test"),
        ("HOISTWAY_STORAGE__S3__SECRET_ACCESS_KEY", "test"),
        ("HOISTWAY_STORAGE__S3__ALLOW_HTTP", "true"),
    ]);
    sql_fixture(&server).await;
    register(
        &server,
        "lift_id,building,site,customer,model,install_date,initial_trips\nLIVE-1,B9,S9,C9,M9,,0\n",
    )
    .await;
    let fixture = "SELECT lift_id, count(*) AS n, sum(trips) AS trips, min(ts) AS first, max(ts) AS last \
                   FROM readings WHERE lift_id <> 'LIVE-1' GROUP BY lift_id ORDER BY lift_id";
    let sql = |server: &TestServer, q: &str| {
        let body = json!({ "sql": q }).to_string();
        let server_addr = server.addr;
        async move {
            let r = http(
                server_addr,
                "POST",
                "/v1/sql",
                &[("content-type", "application/json")],
                Bytes::from(body),
            )
            .await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            r.json()["rows"].clone()
        }
    };
    let before = sql(&server, fixture).await;
    tokio::task::block_in_place(|| {
        assert!(server.terminate());
        server.spawn();
    });
    // The fixture is from January: every file is due to move, and status says so.
    let backlog = server.get("/v1/storage/status").await.json()["move_backlog"].clone();
    assert_eq!(
        (backlog["files"].clone(), backlog["readings"].clone()),
        (json!(4), json!(14))
    );
    proxy.faulty.store(true, Ordering::Relaxed);
    // Readings keep coming while the archive fails.
    let live = tokio::spawn({
        let addr = server.addr;
        async move {
            for seq in 1..=20u64 {
                let r = http(
                    addr,
                    "POST",
                    "/v1/telemetry",
                    &[("content-type", "application/json")],
                    Bytes::from(reading("LIVE-1", seq, 1).to_string()),
                )
                .await;
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            }
        }
    });
    let r = server.post_json("/v1/storage/maintain", "").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["moved_files"],
        4,
        "every file moved, through the faults"
    );
    live.await.unwrap();
    let faults = proxy.faults.load(Ordering::Relaxed);
    assert!(faults >= 3, "the proxy failed only {faults} requests");
    proxy.faulty.store(false, Ordering::Relaxed);
    let status = server.get("/v1/storage/status").await.json();
    let archived = status["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tier"] == "archive" && t["kind"] == "readings")
        .unwrap()["rows"]
        .clone();
    assert_eq!(archived, 14, "each archived reading once: {status}");
    assert_eq!(status["move_backlog"]["files"], 0, "{status}");
    // The same rows, now read from the archive.
    assert_eq!(sql(&server, fixture).await, before);
    let state = server.get("/v1/lifts/LIVE-1/state").await.json();
    assert_eq!(
        state["readings_total"], 20,
        "the hot tier kept taking readings"
    );
}

/// A backup into S3-compatible storage, verified and restored from there by the CLI (which
/// reads `[storage.s3]` like the server): the restored server answers every golden query as the
/// original did, and a second backup copies no stored file again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_to_s3_restores_to_the_same_answers() {
    let s3 = S3Server::start("hoistway-backups").await;
    let endpoint = s3.endpoint();
    let s3_env = [
        ("HOISTWAY_STORAGE__S3__ENDPOINT", endpoint.as_str()),
        ("HOISTWAY_STORAGE__S3__REGION", "us-east-1"),
        ("HOISTWAY_STORAGE__S3__ACCESS_KEY_ID", "test"),
        ("HOISTWAY_STORAGE__S3__SECRET_ACCESS_KEY", "test"),
        ("HOISTWAY_STORAGE__S3__ALLOW_HTTP", "true"),
    ];
    let mut server = TestServer::start(&s3_env);
    sql_fixture(&server).await;
    // Flushed to Parquet by a clean restart, so the backup holds stored files.
    tokio::task::block_in_place(|| {
        assert!(server.terminate());
        server.spawn();
    });
    let expected = run_golden_sql(&server).await;
    let take = || async {
        let r = server
            .post_json("/v1/backups", r#"{"to": "s3://hoistway-backups/site-1"}"#)
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    };
    let first = take().await;
    assert!(first["copied_files"].as_u64().unwrap() >= 4, "{first}");
    let second = take().await;
    assert_eq!(second["copied_files"], 0, "{second}");
    assert_eq!(second["reused_files"], first["copied_files"], "{second}");
    let relative = server
        .post_json("/v1/backups", r#"{"to": "backups"}"#)
        .await;
    assert_problem(&relative, 422);

    let env: Vec<(&str, &std::ffi::OsStr)> = s3_env.iter().map(|(k, v)| (*k, v.as_ref())).collect();
    let cli = |args: &[&str]| {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        tokio::task::block_in_place(|| hoistway_with_env(&args, &env))
    };
    let verify = cli(&["backup", "verify", "--from", "s3://hoistway-backups/site-1"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("restored");
    let out = cli(&[
        "restore",
        "--from",
        "s3://hoistway-backups/site-1",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = TestServer::start_with_token(data, server.token.clone(), &[]);
    assert_eq!(run_golden_sql(&restored).await, expected);

    // Pruning to the newest backup in the bucket removes the first; every stored file is the
    // newest backup's too, so none goes, and the newest still verifies.
    let prune = cli(&[
        "backup",
        "prune",
        "--from",
        "s3://hoistway-backups/site-1",
        "--keep",
        "1",
    ]);
    let pruned = succeeded(&prune);
    assert_eq!(pruned["removed_backups"], serde_json::json!([first["id"]]));
    assert_eq!(pruned["kept"], serde_json::json!([second["id"]]));
    assert_eq!(pruned["removed_files"], 0, "{pruned}");
    let verify = cli(&["backup", "verify", "--from", "s3://hoistway-backups/site-1"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// The archive tier on a real S3-compatible server: files older than the hot retention move
/// there, the bucket holds the documented layout, and SQL answers exactly as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_tier_on_s3_answers_the_same_sql() {
    let s3 = S3Server::start("hoistway-test").await;
    let endpoint = s3.endpoint();
    let mut server = TestServer::start(&[
        (
            "HOISTWAY_STORAGE__ARCHIVE_URL",
            "s3://hoistway-test/fleet-a",
        ),
        ("HOISTWAY_STORAGE__S3__ENDPOINT", &endpoint),
        ("HOISTWAY_STORAGE__S3__REGION", "us-east-1"),
        ("HOISTWAY_STORAGE__S3__ACCESS_KEY_ID", "test"),
        ("HOISTWAY_STORAGE__S3__SECRET_ACCESS_KEY", "test"),
        ("HOISTWAY_STORAGE__S3__ALLOW_HTTP", "true"),
    ]);
    sql_fixture(&server).await;
    let expected = run_golden_sql(&server).await;
    tokio::task::block_in_place(|| {
        assert!(server.terminate());
        server.spawn();
    });
    // The fixture is from January: older than 48 h, so everything moves.
    let r = server.post_json("/v1/storage/maintain", "").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["moved_files"],
        4,
        "readings and rollups of two dates"
    );
    let status = server.get("/v1/storage/status").await.json();
    let rows = |tier: &str, kind: &str| {
        status["tiers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tier"] == tier && t["kind"] == kind)
            .unwrap()["rows"]
            .clone()
    };
    assert_eq!(rows("hot", "readings"), 0);
    assert_eq!(rows("archive", "readings"), 14);
    assert_eq!(run_golden_sql(&server).await, expected);
    let listing = http(
        std::net::SocketAddr::from(([127, 0, 0, 1], s3.port)),
        "GET",
        "/hoistway-test?list-type=2&prefix=fleet-a/",
        &[],
        Bytes::new(),
    )
    .await;
    let listing = String::from_utf8_lossy(&listing.body).to_string();
    for key in [
        "fleet-a/_hoistway/manifest.json",
        "fleet-a/readings/date=2026-01-09/",
        "fleet-a/readings/date=2026-01-10/",
        "fleet-a/rollups_hourly/date=2026-01-10/",
    ] {
        assert!(listing.contains(key), "{key} missing from {listing}");
    }
    // And after a restart the archive is read back from the bucket.
    tokio::task::block_in_place(|| {
        server.kill9();
        server.spawn();
    });
    assert_eq!(run_golden_sql(&server).await, expected);
}

/// psql (simple protocol) and tokio-postgres (extended protocol, `$n` parameters, binary
/// results) against the PostgreSQL wire listener: same tables, same refusals, same limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_clients_query_over_the_wire_protocol() {
    let pg_port = common::free_port();
    let listen = format!("127.0.0.1:{pg_port}");
    let server = TestServer::start(&[
        ("HOISTWAY_QUERY__POSTGRES_LISTEN", listen.as_str()),
        ("HOISTWAY_QUERY__MAX_ROWS", "5"),
    ]);
    sql_fixture(&server).await;

    // psql, the way a person would use it.
    let psql = |sql: &str| {
        std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &pg_port.to_string()])
            .args(["-U", "admin", "-d", "hoistway", "-X", "-A", "-t", "-F", ","])
            .args(["-c", sql])
            .env("PGPASSWORD", &server.token)
            .output()
            .expect("psql is installed (postgresql-client)")
    };
    let rows = |sql: &str| {
        let out = psql(sql);
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        rows(
            "SELECT lift_id, count(*), sum(trips), max(ts) FROM readings GROUP BY lift_id ORDER BY lift_id"
        ),
        "L-A1,6,21,2026-01-10 11:40:00.000000+00\n\
         L-A2,4,15,2026-01-10 10:40:00.000000+00\n\
         L-B1,4,10,2026-01-10 11:00:00.000000+00\n"
    );
    assert_eq!(
        rows("SELECT faults, extra FROM readings WHERE lift_id = 'L-B1' AND seq = 2"),
        "{E7},{cabin_temp_c: 22.0}\n"
    );
    for (sql, code) in [
        ("DROP VIEW rollups_daily", "read-only"),
        ("SELECT * FROM '/etc/passwd'", "ERROR"),
        ("SELEC 1", "ERROR"),
        (
            "SELECT * FROM readings WHERE trips > (SELECT FROM readings)",
            "cannot be planned",
        ),
    ] {
        let out = psql(sql);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{sql} was not refused");
        assert!(err.contains(code), "{sql}: {err}");
    }
    let out = psql("SELECT seq FROM readings ORDER BY lift_id, seq");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 5);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("truncated to 5 rows"),
        "the row limit is announced: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // tokio-postgres: session setup as drivers send it, then a prepared statement with
    // parameters, executed twice, results in binary.
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={pg_port} user=admin password={} dbname=hoistway",
            server.token
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute("SET application_name = 'dashboard'")
        .await
        .unwrap();
    let statement = client
        .prepare(
            "SELECT lift_id, count(*) AS readings, max(ts) AS last, avg(motor_temp_c) AS temp \
             FROM readings WHERE lift_id = $1 AND ts >= $2 GROUP BY lift_id",
        )
        .await
        .unwrap();
    let since = chrono::DateTime::parse_from_rfc3339("2026-01-10T10:30:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    for (lift, readings, temp) in [("L-A1", 4i64, 44.5f64), ("L-B1", 2, 43.5)] {
        let rows = client.query(&statement, &[&lift, &since]).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].get::<_, &str>("lift_id"), lift);
        assert_eq!(rows[0].get::<_, i64>("readings"), readings);
        assert_eq!(rows[0].get::<_, f64>("temp"), temp);
        assert!(rows[0].get::<_, chrono::DateTime<chrono::Utc>>("last") >= since);
    }
    let err = client
        .query("DELETE FROM readings WHERE lift_id = $1", &[&"L-A1"])
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
        "{err}"
    );
    // Nothing was deleted, and HTTP sees the same data.
    assert_eq!(
        server
            .sql_rows("SELECT count(*) FROM readings WHERE lift_id = 'L-A1'")
            .await,
        [["6"]]
    );
}
