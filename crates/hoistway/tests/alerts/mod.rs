//! Alerts end to end: rules over posted readings, the lifecycle over the API, notifications to
//! a webhook receiver that verifies them with an independent Standard Webhooks implementation,
//! and exactly-once across kill -9.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};

use crate::common::{Events, HOUR_US, TestServer, http, inside_one_hour, reading, register};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Starts one of this folder's Python servers, which prints its port on its first line.
fn python_server(script: &str, args: &[&std::ffi::OsStr]) -> (std::process::Child, u16) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/alerts")
        .join(script);
    let mut child = std::process::Command::new(crate::test_python())
        .arg(&script)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{} printed {line:?}, not its port", script.display()));
    (child, port)
}

/// The Python receiver of `webhook_receiver.py`, stopped when dropped.
struct Receiver {
    child: std::process::Child,
    dir: PathBuf,
    port: u16,
}

impl Receiver {
    fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("mode"), "fail").unwrap();
        let (child, port) =
            python_server("webhook_receiver.py", &[dir.as_os_str(), SECRET.as_ref()]);
        Self {
            child,
            dir: dir.to_path_buf(),
            port,
        }
    }

    fn mode(&self, mode: &str) {
        std::fs::write(self.dir.join("mode"), mode).unwrap();
    }

    fn lines(&self, file: &str) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn received(&self) -> Vec<Value> {
        self.lines("received.jsonl")
    }

    fn attempts(&self, id: &str) -> usize {
        self.lines("attempts.jsonl")
            .iter()
            .filter(|a| a["id"] == id)
            .count()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn call(server: &TestServer, method: &str, path: &str, body: Value) -> (u16, Value) {
    let body = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    let r = http(
        server.addr,
        method,
        path,
        &[("content-type", "application/json")],
        body,
    )
    .await;
    let v = if r.body.is_empty() {
        Value::Null
    } else {
        r.json()
    };
    (r.status, v)
}

async fn post(server: &TestServer, readings: Vec<Value>) {
    let r = server
        .post_json("/v1/telemetry", &Value::Array(readings).to_string())
        .await;
    assert!(
        r.status == 200 || r.status == 207,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

fn with_events(mut r: Value, events: &[&str]) -> Value {
    r["events"] = json!(events);
    r
}

async fn alerts(server: &TestServer, query: &str) -> Vec<Value> {
    let (status, v) = call(server, "GET", &format!("/v1/alerts?{query}"), Value::Null).await;
    assert_eq!(status, 200, "{v}");
    v["items"].as_array().unwrap().clone()
}

async fn until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn config(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("alerts.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[alerts]
retry_schedule_secs = [0.3, 4.0]

[[alerts.channels]]
kind = "webhook"
name = "ops"
url = "http://127.0.0.1:{port}/hook"
secret = "{SECRET}"

[[alerts.channels]]
kind = "log"
name = "devlog"

[[alerts.routes]]
channel = "ops"
min_severity = "major"

[[alerts.routes]]
channel = "devlog"
"#
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_a_verified_webhook_through_retries_dead_letters_replay_and_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&tmp.path().join("receiver"));
    let config = config(tmp.path(), receiver.port);
    let mut server = TestServer::start(&[("HOISTWAY_CONFIG", config.to_str().unwrap())]);
    register(
        &server,
        "lift_id,building,site,customer,model,install_date,initial_trips\n\
         L1,B1,S1,acme,m1,,999990\nL2,B2,S1,globex,m1,,0\n",
    )
    .await;

    // An entrapment (critical, routed to the webhook) while the receiver fails: three
    // attempts, then dead.
    post(
        &server,
        vec![with_events(reading("L1", 1, 1), &["entrapment"])],
    )
    .await;
    let dead = until_dead(&server, 1).await;
    let id = dead[0]["id"].as_str().unwrap().to_string();
    assert_eq!(receiver.attempts(&id), 3, "one try and two retries");
    assert!(
        dead[0]["last_error"].as_str().unwrap().contains("503"),
        "{}",
        dead[0]
    );
    let open = alerts(&server, "state=open").await;
    assert_eq!(open.len(), 1);
    assert_eq!(open[0]["rule"], "entrapment");
    assert_eq!(open[0]["severity"], "critical");
    assert_eq!(open[0]["customer"], "acme");

    // Replay once the receiver works: delivered once, with the same id and a valid signature.
    receiver.mode("ok");
    let (status, _) = call(
        &server,
        "POST",
        &format!("/v1/notifications/{id}/replay"),
        Value::Null,
    )
    .await;
    assert_eq!(status, 202);
    until("the replayed delivery", Duration::from_secs(10), || async {
        !receiver.received().is_empty()
    })
    .await;
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["id"], id.as_str());
    assert_eq!(got[0]["payload"]["type"], "alert.fired");
    assert_eq!(got[0]["payload"]["data"]["rule"], "entrapment");
    assert_eq!(got[0]["payload"]["data"]["lift_id"], "L1");

    // 999,990 initial trips + 20: the service-due alert (warning: logged, not sent to "ops").
    post(&server, vec![reading("L1", 2, 20)]).await;
    until("the service-due alert", Duration::from_secs(10), || async {
        !alerts(&server, "rule=service-due").await.is_empty()
    })
    .await;

    // Acknowledge, by an operator, with a note; then resolve by the clearing event.
    let alert_id = open[0]["id"].as_i64().unwrap();
    let (status, acked) = call(
        &server,
        "POST",
        &format!("/v1/alerts/{alert_id}/acknowledge"),
        json!({"note": "engineer on the way"}),
    )
    .await;
    assert_eq!(status, 200, "{acked}");
    assert_eq!(acked["state"], "acknowledged");
    assert_eq!(acked["acknowledged"]["by"], "admin");
    let (status, again) = call(
        &server,
        "POST",
        &format!("/v1/alerts/{alert_id}/acknowledge"),
        Value::Null,
    )
    .await;
    assert_eq!(status, 409, "{again}");
    post(
        &server,
        vec![with_events(reading("L1", 3, 1), &["entrapment_cleared"])],
    )
    .await;
    until(
        "the entrapment resolved",
        Duration::from_secs(10),
        || async { alerts(&server, "rule=entrapment").await[0]["state"] == "resolved" },
    )
    .await;
    let (_, shown) = call(
        &server,
        "GET",
        &format!("/v1/alerts/{alert_id}"),
        Value::Null,
    )
    .await;
    let kinds: Vec<&str> = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["fired", "acknowledged", "resolved"]);
    // The same in SQL (and so over the PostgreSQL wire).
    let rows = server
        .sql_rows(&format!(
            "SELECT state, acknowledged_by, resolved_by FROM alerts WHERE id = {alert_id}"
        ))
        .await;
    assert_eq!(rows, vec![vec!["resolved", "admin", "hoistway"]]);
    let rows = server
        .sql_rows(&format!(
            "SELECT kind FROM alert_events WHERE alert_id = {alert_id} ORDER BY at"
        ))
        .await;
    assert_eq!(
        rows,
        vec![vec!["fired"], vec!["acknowledged"], vec!["resolved"]]
    );
    until(
        "the acknowledgement and resolution sent",
        Duration::from_secs(10),
        || async { receiver.received().len() == 3 },
    )
    .await;

    // The live stream of alert changes: each customer's people see their own.
    let globex = crate::security::staff_of(&server, "gina", "operator", Some("globex")).await;
    let all_events = Events::open(server.addr, "/v1/alerts/stream", &server.token).await;
    let globex_events = Events::open(server.addr, "/v1/alerts/stream", &globex).await;

    // Kill -9 while notifications are pending (the receiver fails): after a restart with the
    // receiver working, each arrives; none is missing, none has two ids.
    receiver.mode("fail");
    let tried = receiver.lines("attempts.jsonl").len();
    post(
        &server,
        vec![
            with_events(reading("L2", 1, 1), &["entrapment"]),
            with_events(reading("L2", 2, 1), &["alarm_button"]),
            with_events(reading("L1", 4, 1), &["emergency_stop"]),
        ],
    )
    .await;
    until(
        "pending deliveries tried",
        Duration::from_secs(10),
        || async { receiver.lines("attempts.jsonl").len() >= tried + 3 },
    )
    .await;
    until("the stream events", Duration::from_secs(10), || async {
        all_events.text().matches("event: alert.fired").count() == 3
            && globex_events.text().matches("event: alert.fired").count() == 2
    })
    .await;
    assert!(
        !globex_events.text().contains("acme"),
        "{}",
        globex_events.text()
    );
    assert!(all_events.text().contains("emergency_stop reported"));
    drop((all_events, globex_events));
    server.kill9();
    receiver.mode("ok");
    server.spawn();
    until(
        "every pending notification delivered",
        Duration::from_secs(20),
        || async { receiver.received().len() >= 6 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = receiver.received();
    let mut by_event: HashMap<(i64, String), HashSet<String>> = HashMap::new();
    for g in &got {
        assert!(g["payload"].get("verification_error").is_none(), "{g}");
        by_event
            .entry((
                g["payload"]["data"]["id"].as_i64().unwrap(),
                g["payload"]["type"].as_str().unwrap().to_string(),
            ))
            .or_default()
            .insert(g["id"].as_str().unwrap().to_string());
    }
    assert!(
        by_event.values().all(|ids| ids.len() == 1),
        "one webhook-id per alert event: {by_event:?}"
    );
    let rules: HashSet<String> = got
        .iter()
        .filter(|g| g["payload"]["type"] == "alert.fired")
        .map(|g| g["payload"]["data"]["rule"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        rules,
        HashSet::from(["entrapment", "alarm-button", "emergency-stop"].map(String::from))
    );
    assert_eq!(by_event.len(), 6, "{by_event:?}");

    // Tenancy: globex's operator sees only globex's alerts, and cannot act on acme's.
    let as_globex = |method: &'static str, path: String| {
        let token = globex.clone();
        let addr = server.addr;
        async move {
            let auth = format!("Bearer {token}");
            http(
                addr,
                method,
                &path,
                &[("authorization", &auth)],
                Bytes::new(),
            )
            .await
        }
    };
    let mine = as_globex("GET", "/v1/alerts".into()).await.json();
    let customers: HashSet<&str> = mine["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["customer"].as_str().unwrap())
        .collect();
    assert_eq!(customers, HashSet::from(["globex"]));
    assert_eq!(
        as_globex("GET", "/v1/alerts?customer=acme".into())
            .await
            .status,
        403
    );
    assert_eq!(
        as_globex("GET", format!("/v1/alerts/{alert_id}"))
            .await
            .status,
        404
    );
    let acme_open = alerts(&server, "customer=acme&state=firing").await;
    let acme_id = acme_open[0]["id"].as_i64().unwrap();
    let r = as_globex("POST", format!("/v1/alerts/{acme_id}/acknowledge")).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        as_globex("GET", "/v1/notifications".into()).await.status,
        403
    );
    let sql = http(
        server.addr,
        "POST",
        "/v1/sql",
        &[
            ("content-type", "application/json"),
            ("authorization", &format!("Bearer {globex}")),
        ],
        Bytes::from(
            json!({"sql": "SELECT DISTINCT customer FROM alerts", "format": "json"}).to_string(),
        ),
    )
    .await
    .json();
    let rows = sql["rows"].to_string();
    assert!(rows.contains("globex") && !rows.contains("acme"), "{sql}");
    assert_eq!(sql["row_count"], 1, "{sql}");

    // 410 Gone: dead at once, and the channel is disabled until a replay.
    receiver.mode("gone");
    post(
        &server,
        vec![with_events(reading("L2", 3, 1), &["emergency_stop"])],
    )
    .await;
    let (_, outbox) = until_disabled(&server).await;
    assert_eq!(outbox["disabled_channels"][0]["channel"], "ops");

    // The CLI shows the same alerts.
    let out = crate::common::hoistway_with_env(
        &[
            "alerts".as_ref(),
            "list".as_ref(),
            "--server".as_ref(),
            format!("http://{}", server.addr).as_ref(),
            "--rule".as_ref(),
            "service-due".as_ref(),
        ],
        &[("HOISTWAY_TOKEN", server.token.as_ref())],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("trips_total passed 1000000"), "{stdout}");

    // A silence (by the CLI): building B1's alerts are recorded but send nothing.
    let out = crate::common::hoistway_with_env(
        &[
            "alerts".as_ref(),
            "silence".as_ref(),
            "--server".as_ref(),
            format!("http://{}", server.addr).as_ref(),
            "--building".as_ref(),
            "B1".as_ref(),
            "--for".as_ref(),
            "1h".as_ref(),
            "--reason".as_ref(),
            "rescue drill".as_ref(),
        ],
        &[("HOISTWAY_TOKEN", server.token.as_ref())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, before) = call(&server, "GET", "/v1/notifications?limit=1000", Value::Null).await;
    post(
        &server,
        vec![with_events(reading("L1", 5, 1), &["alarm_button"])],
    )
    .await;
    until(
        "the silenced alert recorded",
        Duration::from_secs(10),
        || async {
            !alerts(&server, "rule=alarm-button&lift=L1")
                .await
                .is_empty()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, after) = call(&server, "GET", "/v1/notifications?limit=1000", Value::Null).await;
    assert_eq!(
        before["items"].as_array().unwrap().len(),
        after["items"].as_array().unwrap().len(),
        "a silenced alert makes no notification"
    );
    let (_, silences) = call(&server, "GET", "/v1/silences", Value::Null).await;
    assert_eq!(silences["items"][0]["reason"], "rescue drill", "{silences}");
    assert_eq!(silences["items"][0]["by"], "admin");
}

async fn until_dead(server: &TestServer, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = call(server, "GET", "/v1/notifications?state=dead", Value::Null).await;
        let items = v["items"].as_array().unwrap().clone();
        if items.len() >= n {
            return items;
        }
        assert!(Instant::now() < deadline, "no dead notification: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn until_disabled(server: &TestServer) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, v) = call(server, "GET", "/v1/notifications", Value::Null).await;
        if !v["disabled_channels"].as_array().unwrap().is_empty() {
            return (status, v);
        }
        assert!(
            Instant::now() < deadline,
            "the channel was not disabled: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Posts `(lift, seq)` readings of ten trips each, 17 to a request.
async fn send_chunks(server: &TestServer, readings: &[(String, u64)]) {
    for chunk in readings.chunks(17) {
        post(
            server,
            chunk.iter().map(|(l, s)| reading(l, *s, 10)).collect(),
        )
        .await;
    }
}

/// Lifts near a million trips resend their backlog out of order around a kill -9: the
/// service-due alert fires once for each lift that crosses and for no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_million_trip_alert_fires_once_per_crossing_lift_across_kill_9_and_resends() {
    let mut server = TestServer::start(&[]);
    let mut csv = String::from("lift_id,building,site,customer,model,install_date,initial_trips\n");
    for i in 0..20 {
        // Even lifts cross during the test, odd ones stay below.
        let initial = if i % 2 == 0 { 999_950 } else { 900_000 };
        csv.push_str(&format!("M{i:02},B1,S1,acme,m1,,{initial}\n"));
    }
    register(&server, &csv).await;
    // Ten readings of ten trips each per lift, sent twice, shuffled, with a kill -9 between.
    let all: Vec<(String, u64)> = (0..20)
        .flat_map(|i| (1..=10).map(move |seq| (format!("M{i:02}"), seq)))
        .collect();
    let mut order = all.clone();
    let mut rng = 7u64;
    for i in (1..order.len()).rev() {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        order.swap(i, (rng >> 33) as usize % (i + 1));
    }
    send_chunks(&server, &order[..120]).await;
    server.kill9();
    server.spawn();
    send_chunks(&server, &order).await;
    until("service-due alerts", Duration::from_secs(20), || async {
        alerts(&server, "rule=service-due&limit=1000").await.len() >= 10
    })
    .await;
    // A second kill and full resend changes nothing.
    server.kill9();
    server.spawn();
    send_chunks(&server, &order).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = alerts(&server, "rule=service-due&limit=1000").await;
    let lifts: Vec<&str> = got.iter().map(|a| a["lift_id"].as_str().unwrap()).collect();
    let unique: HashSet<String> = lifts.iter().map(|l| l.to_string()).collect();
    let crossing: HashSet<String> = (0..10).map(|i| format!("M{:02}", i * 2)).collect();
    assert_eq!(lifts.len(), 10, "one alert per crossing lift: {lifts:?}");
    assert_eq!(unique, crossing);
    for a in &got {
        assert_eq!(a["refires"], 0, "{a}");
        let (_, shown) = call(
            &server,
            "GET",
            &format!("/v1/alerts/{}", a["id"]),
            Value::Null,
        )
        .await;
        assert_eq!(shown["events"].as_array().unwrap().len(), 1, "{shown}");
    }
}

/// The SMTP sink of `smtp_sink.py`, stopped when dropped.
struct SmtpSink {
    child: std::process::Child,
    dir: PathBuf,
    port: u16,
}

impl SmtpSink {
    fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let (child, port) = python_server("smtp_sink.py", &[dir.as_os_str()]);
        Self {
            child,
            dir: dir.to_path_buf(),
            port,
        }
    }

    fn mails(&self) -> Vec<String> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Mail to a real SMTP server, JetStream publication and MQTT QoS 1, each read back by an
/// ordinary subscriber of that system.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_events_reach_mail_nats_and_mqtt_subscribers() {
    let tmp = tempfile::tempdir().unwrap();
    let smtp = SmtpSink::start(&tmp.path().join("mail"));
    let unique = format!("t{}", rand::random::<u32>());
    let subject = format!("hoistway.{unique}.alerts");
    let stream = format!("HOISTWAY_{unique}");
    let topic = format!("hoistway/{unique}/alerts");

    // Subscribers first: NATS (a core subscription sees what JetStream stores) and MQTT.
    let nats = async_nats::connect("127.0.0.1:4222")
        .await
        .expect("NATS on 127.0.0.1:4222");
    let mut nats_sub = nats.subscribe(format!("{subject}.>")).await.unwrap();
    let mut options = rumqttc::MqttOptions::new(format!("sub-{unique}"), "127.0.0.1", 1883);
    options.set_keep_alive(Duration::from_secs(30));
    let (mqtt_got, mqtt_task) = mqtt_subscriber(options, &topic).await;

    let config = tmp.path().join("alerts.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[alerts.channels]]
kind = "email"
name = "mail"
host = "127.0.0.1"
port = {port}
from = "Hoistway <alerts@hoistway.test>"
to = ["support@hoistway.test"]

[[alerts.channels]]
kind = "nats"
name = "nats"
url = "nats://127.0.0.1:4222"
subject = "{subject}"
stream = "{stream}"

[[alerts.channels]]
kind = "mqtt"
name = "mqtt"
host = "127.0.0.1"
topic = "{topic}"
client_id = "pub-{unique}"

[[alerts.routes]]
channel = "mail"
min_severity = "critical"

[[alerts.routes]]
channel = "nats"

[[alerts.routes]]
channel = "mqtt"
"#,
            port = smtp.port
        ),
    )
    .unwrap();
    let server = TestServer::start(&[("HOISTWAY_CONFIG", config.to_str().unwrap())]);
    register(
        &server,
        "lift_id,building,site,customer,model,install_date,initial_trips\nL1,B1,S1,acme,m1,,0\n",
    )
    .await;
    post(
        &server,
        vec![with_events(reading("L1", 1, 1), &["entrapment"])],
    )
    .await;

    until("the mail", Duration::from_secs(20), || async {
        !smtp.mails().is_empty()
    })
    .await;
    let mail = &smtp.mails()[0];
    assert!(
        mail.contains("Subject: [Hoistway] critical fired: Passenger trapped on lift L1"),
        "{mail}"
    );
    assert!(mail.contains("support@hoistway.test"), "{mail}");
    assert!(mail.contains("Message-ID: <msg_"), "{mail}");

    let message = tokio::time::timeout(
        Duration::from_secs(20),
        futures::StreamExt::next(&mut nats_sub),
    )
    .await
    .expect("a NATS message")
    .unwrap();
    assert_eq!(message.subject.as_str(), format!("{subject}.fired"));
    let payload: Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(payload["data"]["rule"], "entrapment");
    let msg_id = message
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Msg-Id"))
        .map(|v| v.to_string())
        .expect("a Nats-Msg-Id header");
    assert!(msg_id.starts_with("msg_"), "{msg_id}");
    let js = async_nats::jetstream::new(nats.clone());
    let mut stored = js.get_stream(&stream).await.unwrap();
    assert_eq!(
        stored.info().await.unwrap().state.messages,
        1,
        "stored once in JetStream"
    );

    until("the MQTT message", Duration::from_secs(20), || async {
        !mqtt_got.lock().unwrap().is_empty()
    })
    .await;
    let (got_topic, got) = mqtt_got.lock().unwrap()[0].clone();
    assert_eq!(got_topic, format!("{topic}/fired"));
    assert_eq!(got["data"]["lift_id"], "L1");

    let (_, outbox) = call(
        &server,
        "GET",
        "/v1/notifications?state=delivered",
        Value::Null,
    )
    .await;
    let channels: HashSet<&str> = outbox["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["channel"].as_str().unwrap())
        .collect();
    assert_eq!(channels, HashSet::from(["mail", "nats", "mqtt"]));
    mqtt_task.abort();
    js.delete_stream(&stream).await.unwrap();
}

/// Quiet hours hold a route's notifications below `except_from` until the period ends, queued
/// and visible; a critical alert goes out at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_hold_all_but_critical_until_they_end() {
    let tmp = tempfile::tempdir().unwrap();
    // A period from an hour ago to an hour from now, in UTC.
    let now = chrono::Utc::now();
    let hour = chrono::Duration::hours(1);
    let hm = |t: chrono::DateTime<chrono::Utc>| t.format("%H:%M").to_string();
    let config = tmp.path().join("alerts.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[alerts.channels]]
kind = "log"
name = "night"

[[alerts.routes]]
channel = "night"
quiet_hours = {{ from = "{from}", to = "{to}", timezone = "UTC" }}
"#,
            from = hm(now - hour),
            to = hm(now + hour),
        ),
    )
    .unwrap();
    let server = TestServer::start(&[("HOISTWAY_CONFIG", config.to_str().unwrap())]);
    register(
        &server,
        "lift_id,building,site,customer,model,install_date,initial_trips\nL1,B1,S1,acme,m1,,0\n",
    )
    .await;
    post(
        &server,
        vec![with_events(
            reading("L1", 1, 1),
            &["alarm_button", "entrapment"],
        )],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let items = loop {
        let (_, outbox) = call(&server, "GET", "/v1/notifications", Value::Null).await;
        let items = outbox["items"].as_array().unwrap().clone();
        let delivered = items.iter().any(|n| n["state"] == "delivered");
        if items.len() == 2 && delivered {
            break items;
        }
        assert!(
            Instant::now() < deadline,
            "two notifications, one delivered: {outbox}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let by_rule = |rule: &str| {
        items
            .iter()
            .find(|n| n["payload"]["data"]["rule"] == rule)
            .unwrap_or_else(|| panic!("a notification for {rule}: {items:?}"))
            .clone()
    };
    assert_eq!(
        by_rule("entrapment")["state"],
        "delivered",
        "critical is not held"
    );
    let held = by_rule("alarm-button");
    assert_eq!(held["state"], "pending", "{held}");
    assert_eq!(held["attempts"], 0, "{held}");
    let next = chrono::DateTime::parse_from_rfc3339(held["next_at"].as_str().unwrap()).unwrap();
    let end = (now + hour).timestamp() / 60 * 60;
    assert_eq!(next.timestamp(), end, "held until the period ends: {held}");
}

/// What an MQTT subscriber to `topic/#` received: (topic, JSON body).
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>;

/// Subscribes to `topic/#` at QoS 1 and collects what arrives until the task is aborted.
async fn mqtt_subscriber(
    options: rumqttc::MqttOptions,
    topic: &str,
) -> (Received, tokio::task::JoinHandle<()>) {
    let (mqtt, mut events) = rumqttc::AsyncClient::new(options, 16);
    mqtt.subscribe(format!("{topic}/#"), rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.poll())
            .await
            .expect("a SUBACK from the MQTT broker in time")
            .expect("the subscriber's MQTT connection");
        if matches!(event, rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) {
            break;
        }
    }
    let got = Received::default();
    let sink = got.clone();
    let task = tokio::spawn(async move {
        // The client lives as long as the task, so the connection stays open.
        let _client = mqtt;
        while let Ok(event) = events.poll().await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = event {
                let body = serde_json::from_slice::<Value>(&p.payload).unwrap();
                sink.lock().unwrap().push((p.topic, body));
            }
        }
    });
    (got, task)
}

/// A private Mosquitto with only a TLS listener, its certificate issued by a CA of the test's own.
struct TlsBroker {
    port: u16,
    child: std::process::Child,
}

impl TlsBroker {
    fn start(dir: &Path, ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>) -> Self {
        let (cert_pem, key_pem, ca_pem) = (
            dir.join("broker.pem"),
            dir.join("broker.key"),
            dir.join("broker-ca.pem"),
        );
        crate::common::issue_cert(ca, &cert_pem, &key_pem);
        std::fs::write(&ca_pem, ca.pem()).unwrap();
        let port = crate::common::free_port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nallow_anonymous true\npersistence false\n",
                ca_pem.display(),
                cert_pem.display(),
                key_pem.display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto (apt-get install mosquitto)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, child }
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// MQTT over TLS: the channel verifies the broker against the configured CA and delivers at
/// QoS 1; a channel trusting another CA refuses the broker and keeps the notification pending
/// with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_tls_delivers_only_to_a_broker_it_trusts() {
    use tokio_rustls::rustls;
    let tmp = tempfile::tempdir().unwrap();
    let ca = crate::common::test_ca("Hoistway MQTT test CA");
    let broker = TlsBroker::start(tmp.path(), &ca);
    let other_ca = tmp.path().join("other-ca.pem");
    std::fs::write(&other_ca, crate::common::test_ca("Someone else").pem()).unwrap();
    let unique = format!("t{}", rand::random::<u32>());
    let topic = format!("hoistway/{unique}/alerts");

    // A subscriber over TLS too.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(ca.der().to_vec()))
        .unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut options = rumqttc::MqttOptions::new(format!("sub-{unique}"), "localhost", broker.port);
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(tls)),
    ));
    let (got, reader) = mqtt_subscriber(options, &topic).await;

    let config = tmp.path().join("alerts.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[alerts.channels]]
kind = "mqtt"
name = "mqtts"
host = "localhost"
port = {port}
topic = "{topic}"
client_id = "pub-{unique}"
tls = true
ca_file = "{ca}"

[[alerts.channels]]
kind = "mqtt"
name = "mqtts-untrusted"
host = "localhost"
port = {port}
topic = "{topic}"
client_id = "pub2-{unique}"
tls = true
ca_file = "{other}"

[[alerts.routes]]
channel = "mqtts"

[[alerts.routes]]
channel = "mqtts-untrusted"
"#,
            port = broker.port,
            ca = tmp.path().join("broker-ca.pem").display(),
            other = other_ca.display(),
        ),
    )
    .unwrap();
    let server = TestServer::start(&[("HOISTWAY_CONFIG", config.to_str().unwrap())]);
    register(
        &server,
        "lift_id,building,site,customer,model,install_date,initial_trips\nL1,B1,S1,acme,m1,,0\n",
    )
    .await;
    post(
        &server,
        vec![with_events(reading("L1", 1, 1), &["entrapment"])],
    )
    .await;
    until("the message over TLS", Duration::from_secs(20), || async {
        !got.lock().unwrap().is_empty()
    })
    .await;
    let (t, body) = got.lock().unwrap()[0].clone();
    assert_eq!(t, format!("{topic}/fired"));
    assert_eq!(body["data"]["lift_id"], "L1");

    // The channel that does not trust the broker's CA delivered nothing and says why.
    let deadline = Instant::now() + Duration::from_secs(20);
    let why = loop {
        let (_, outbox) = call(&server, "GET", "/v1/notifications", Value::Null).await;
        let untrusted = outbox["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["channel"] == "mqtts-untrusted")
            .cloned();
        if let Some(n) = untrusted
            && n["state"] == "pending"
            && let Some(e) = n["last_error"].as_str()
        {
            break e.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no refused handshake on record: {outbox}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(why.to_lowercase().contains("certificate"), "{why}");
    assert_eq!(
        got.lock().unwrap().len(),
        1,
        "one delivery, by the trusting channel"
    );
    reader.abort();
}

/// A rate rule compares each lift with its own past: two lifts doing the same number of door
/// cycles this hour, one usually busy and one usually quiet at this hour of the week.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_rule_judges_each_lift_by_its_own_past_weeks() {
    // Stay inside one hour for the whole test.
    let (start, hour) = (inside_one_hour(Duration::from_secs(60)).await, HOUR_US);
    let now = || chrono::Utc::now().timestamp_micros();
    let server = TestServer::start(&[
        ("HOISTWAY_ALERTS__TICK_SECS", "1"),
        ("HOISTWAY_ALERTS__BASELINE_REFRESH_SECS", "1"),
    ]);
    register(
        &server,
        "lift_id,building,site,customer,model,install_date,initial_trips\n\
         BUSY,B1,S1,acme,m1,,0\nQUIET,B1,S1,acme,m1,,0\n",
    )
    .await;
    let at = |lift: &str, seq: u64, ts_us: i64, doors: u64| {
        let mut r = reading(lift, seq, 1);
        r["ts"] = json!(hoistway_model::time::format_micros(ts_us));
        r["door_cycles"] = json!(doors);
        r
    };
    // The same hour of the week, one to four weeks ago: BUSY 100 cycles, QUIET 10.
    let week = 7 * 24 * hour;
    let mut history = Vec::new();
    for w in 1..=4i64 {
        let t = start - w * week + 60_000_000;
        history.push(at("BUSY", w as u64, t, 100));
        history.push(at("QUIET", w as u64, t, 10));
    }
    post(&server, history).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // a baseline refresh reads them
    // This hour both do 80 cycles.
    let mut now_readings = Vec::new();
    for seq in 5..=12u64 {
        now_readings.push(at("BUSY", seq, now(), 10));
        now_readings.push(at("QUIET", seq, now(), 10));
    }
    post(&server, now_readings).await;
    until("the rate alert", Duration::from_secs(20), || async {
        !alerts(&server, "rule=door-cycles-unusual").await.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fired = alerts(&server, "rule=door-cycles-unusual").await;
    let lifts: Vec<&str> = fired
        .iter()
        .map(|a| a["lift_id"].as_str().unwrap())
        .collect();
    assert_eq!(lifts, ["QUIET"], "{fired:?}");
    assert!(
        fired[0]["summary"]
            .as_str()
            .unwrap()
            .contains("usual for this hour of the week: 10"),
        "{}",
        fired[0]
    );
}
