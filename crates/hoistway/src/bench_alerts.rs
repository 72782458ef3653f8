//! `hoistway bench`, alerting: the same batches on two fresh servers with alerting off and with
//! 20 rules, and the time from a critical reading to a loopback webhook while the fleet ingests
//! at the steady rate.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hoistway_sim::client::Connection;
use hyper::{Method, StatusCode};
use parking_lot::Mutex;

use crate::bench::{
    BenchArgs, Load, Proc, batch_phase, load, now_ts, reading_json, register_lifts, serve_args,
};

/// A webhook receiver on loopback: records when each alert's lift first arrived.
async fn receiver() -> anyhow::Result<(std::net::SocketAddr, Arc<Mutex<HashMap<String, Instant>>>)>
{
    use axum::routing::post;
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let sink = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
                    && let Some(lift) = v["data"]["lift_id"].as_str()
                {
                    sink.lock()
                        .entry(lift.to_string())
                        .or_insert_with(Instant::now);
                }
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((addr, seen))
}

pub(crate) async fn run(tmp: &Path, args: &BenchArgs) -> anyhow::Result<()> {
    let rules = tmp.join("bench-rules.toml");
    std::fs::write(&rules, hoistway_alerts::rule::benchmark_rules())?;
    let (hook, seen) = receiver().await?;
    let config = tmp.join("bench-alerts.toml");
    std::fs::write(
        &config,
        format!(
            "[[alerts.channels]]\nkind = \"webhook\"\nname = \"hook\"\nurl = \"http://{hook}/hook\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n\n[[alerts.routes]]\nchannel = \"hook\"\nmin_severity = \"critical\"\n"
        ),
    )?;
    println!(
        "## Alert rules: batches of 1,000 readings on fresh servers, alerting off vs 20 rules"
    );
    println!("| alerting | acknowledged readings/s | end to end readings/s | errors |");
    println!("|---|---|---|---|");
    let rules_path = rules.display().to_string();
    let config_path = config.display().to_string();
    let mut end_to_end = Vec::new();
    let mut on_server = None;
    for (name, enabled) in [("off", "false"), ("20 rules", "true")] {
        let dir = tmp.join(format!("alerts-{}", enabled));
        let a = serve_args(&dir);
        let (server, _) = Proc::start(
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
            &[
                ("HOISTWAY_ALERTS__ENABLED", enabled),
                ("HOISTWAY_ALERTS__RULES_FILE", rules_path.as_str()),
                ("HOISTWAY_CONFIG", config_path.as_str()),
            ],
        )?;
        register_lifts(server.addr, args.lifts).await?;
        let (run, e2e) = batch_phase(server.addr, args).await?;
        println!(
            "| {name} | {:.0} | {:.0} | {} |",
            run.per_sec(),
            e2e,
            run.errors
        );
        end_to_end.push(e2e);
        if enabled == "true" {
            on_server = Some(server);
        } else {
            server.kill();
        }
    }
    println!(
        "\nend to end with 20 rules / alerting off: {:.2}\n",
        end_to_end[1] / end_to_end[0].max(1.0)
    );

    // The batch phase left the rules behind the processor (they take what it applied through
    // a bounded queue); the latency phase measures the steady state, once they caught up.
    let server = on_server.expect("the alerting server");
    let addr = server.addr;
    let caught_up = Instant::now();
    while crate::bench::metric(addr, "hoistway_alerts_evaluation_queue").await? > 0.0 {
        anyhow::ensure!(
            caught_up.elapsed() < Duration::from_secs(300),
            "the rules did not catch up with the batch phase within 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "the rules caught up with the batch phase {:.1} s after it ended\n",
        caught_up.elapsed().as_secs_f64()
    );
    // A critical event every 100 ms while the fleet ingests at the steady rate.
    let steady = tokio::spawn(load(
        addr,
        Load {
            rate: Some(args.rate),
            seq_base: 5_000_000,
            ..Load::single(args)
        },
    ));
    let mut sent: Vec<(String, Instant)> = Vec::new();
    let mut conn = Connection::new(addr);
    let probes = (args.seconds * 10.0).max(20.0) as usize;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for k in 0..probes {
        let lift = (k * 7919) % args.lifts;
        let body = reading_json(lift, 9_000_000 + k as u64, &now_ts())
            .replace(r#""events":[]"#, r#""events":["entrapment"]"#);
        let at = Instant::now();
        let r = conn
            .send(
                Method::POST,
                "/v1/telemetry",
                "application/json",
                Bytes::from(body),
                Duration::from_secs(30),
            )
            .await;
        if matches!(&r, Ok(r) if r.status == StatusCode::OK) {
            sent.push((format!("BENCH-{lift:06}"), at));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut steady = steady.await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = seen.lock().clone();
    let mut delays: Vec<f64> = sent
        .iter()
        .filter_map(|(lift, at)| {
            seen.get(lift)
                .map(|got| (*got - *at).as_secs_f64() * 1000.0)
        })
        .collect();
    delays.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        delays
            .get(((delays.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "## A critical event to a loopback webhook, during a steady {} readings/s",
        args.rate
    );
    println!(
        "steady load achieved {:.0} readings/s (ack p99 {:.2} ms, errors {}); {} entrapments sent, {} reached the webhook; reading sent → webhook received: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms\n",
        steady.per_sec(),
        steady.percentile_ms(0.99),
        steady.errors,
        sent.len(),
        delays.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    server.kill();
    Ok(())
}
