//! `hoistway bench --ui-only`: what the web UI asks of the server with the whole fleet
//! registered (200,000 lifts by default): the fleet page's list, search, deep paging, status
//! filter and counts; a lift's charts from raw readings up to a year of daily rollups. Each
//! request is timed as a browser sends it (one connection, one at a time), beside `/healthz` on
//! the same server as the peer. Then the UI's download size, and, when Node.js and Chromium are
//! here, the fleet page's first render in a real browser.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode};

use crate::bench::{
    BenchArgs, Proc, get_json, reading_json, register_lifts, serve_args, staff_connection,
};

/// Requests timed per row.
const ROUNDS: usize = 40;

/// Posts as lifts do on a server with `auth.devices = open` (no token).
async fn post_all(addr: std::net::SocketAddr, readings: Vec<String>) -> anyhow::Result<()> {
    let mut conn = hoistway_sim::client::Connection::new(addr);
    for chunk in readings.chunks(1000) {
        let body = format!("[{}]", chunk.join(","));
        let r = conn
            .send(
                Method::POST,
                "/v1/telemetry",
                "application/json",
                Bytes::from(body),
                Duration::from_secs(60),
            )
            .await?;
        anyhow::ensure!(
            r.status == StatusCode::OK,
            "telemetry: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    Ok(())
}

/// (p50 ms, p99 ms, max ms, bytes of the last answer) of `ROUNDS` sequential GETs.
async fn time_get(
    addr: std::net::SocketAddr,
    path: &str,
) -> anyhow::Result<(f64, f64, f64, usize)> {
    let mut conn = staff_connection(addr);
    let mut ms = Vec::with_capacity(ROUNDS);
    let mut size = 0;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let r = conn
            .send(
                Method::GET,
                path,
                "application/json",
                Bytes::new(),
                Duration::from_secs(60),
            )
            .await?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(r.status == StatusCode::OK, "{path}: {}", r.status);
        size = r.body.len();
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    Ok((at(0.5), at(0.99), ms[ms.len() - 1], size))
}

pub(crate) async fn run(tmp: &Path, args: &BenchArgs) -> anyhow::Result<()> {
    let dir = tmp.join("ui");
    let a = serve_args(&dir);
    let (server, _) = Proc::start(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &[("HOISTWAY_PROCESSOR__CHECKPOINT_INTERVAL_SECS", "2")],
    )?;
    let addr = server.addr;
    let lifts = args.lifts.max(1000);
    let started = Instant::now();
    register_lifts(addr, lifts).await?;
    let now = crate::bench::now_ts();
    post_all(addr, (0..lifts).map(|i| reading_json(i, 1, &now)).collect()).await?;
    // A year of hourly readings of one lift, as a backlog: its charts read them back.
    let now_us = hoistway_model::time::now_us();
    let year: Vec<String> = (0..365 * 24)
        .map(|h| {
            let ts = hoistway_model::time::format_micros(now_us - (365 * 24 - h) * 3_600_000_000);
            reading_json(1, 10 + h as u64, &ts)
        })
        .collect();
    post_all(addr, year).await?;
    // Flushed to Parquet and compacted, as a year of data would be.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = get_json(addr, "/v1/storage/status").await?;
        if status["buffered_rows"] == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut conn = staff_connection(addr);
    conn.send(
        Method::POST,
        "/v1/storage/maintain",
        "application/json",
        Bytes::new(),
        Duration::from_secs(300),
    )
    .await?;
    println!(
        "## The web UI's requests, {lifts} lifts registered (set up in {:.0} s; {ROUNDS} sequential requests each)",
        started.elapsed().as_secs_f64()
    );
    println!("| request | p50 ms | p99 ms | max ms | p50 / healthz p50 | answer bytes |");
    println!("|---|---|---|---|---|---|");
    let iso = |days: i64| hoistway_model::time::format_micros(now_us - days * 86_400_000_000);
    let chart = |step: &str, days: i64| {
        format!(
            "/v1/lifts/BENCH-000001/readings?step={step}&from={}&to={}",
            iso(days),
            iso(0)
        )
    };
    let rows = [
        ("healthz (the peer)", "/healthz".to_string()),
        (
            "fleet list, first page of 50",
            "/v1/lifts?limit=50".to_string(),
        ),
        (
            "fleet list, page 3,000 of 4,000",
            "/v1/lifts?limit=50&after=BENCH-150000".to_string(),
        ),
        (
            "search by id (`q=BENCH-19999`)",
            "/v1/lifts?limit=50&q=BENCH-19999".to_string(),
        ),
        (
            "status filter (`faulted`, none match)",
            "/v1/lifts?limit=50&status=faulted".to_string(),
        ),
        ("fleet summary", "/v1/fleet/summary".to_string()),
        ("open alerts by severity", "/v1/alerts/counts".to_string()),
        ("lift state", "/v1/lifts/BENCH-000001/state".to_string()),
        ("chart 24 h (2-minute buckets of raw)", chart("2m", 1)),
        ("chart 7 d (15-minute buckets of raw)", chart("15m", 7)),
        ("chart 30 d (hourly rollups)", chart("1h", 30)),
        ("chart 1 y (daily rollups)", chart("1d", 365)),
    ];
    let mut peer = 0.0;
    for (name, path) in rows {
        let (p50, p99, max, size) = time_get(addr, &path).await?;
        if peer == 0.0 {
            peer = p50.max(0.001);
        }
        println!(
            "| {name} | {p50:.1} | {p99:.1} | {max:.1} | {:.0} | {size} |",
            p50 / peer
        );
    }
    let year = get_json(addr, &chart("1d", 365)).await?;
    println!(
        "\n1-year chart: {} points (one per day; a chart is wider than that in pixels)",
        year["row_count"]
    );

    let (mut js, mut js_gz, mut css_gz) = (0, 0, 0);
    for (path, a) in hoistway_ui::assets() {
        let gz = a.gzip.map_or(a.body.len(), <[u8]>::len);
        if path.ends_with(".js") {
            js += a.body.len();
            js_gz += gz;
        } else if path.ends_with(".css") {
            css_gz += gz;
        }
    }
    println!(
        "UI download: JavaScript {:.1} KB ({:.1} KB gzipped), CSS {:.1} KB gzipped",
        js as f64 / 1000.0,
        js_gz as f64 / 1000.0,
        css_gz as f64 / 1000.0
    );
    render(addr).await;
    server.kill();
    Ok(())
}

/// The fleet page's first render in Chromium (`ui/e2e/render.bench.mjs`), when it can run here.
async fn render(addr: std::net::SocketAddr) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ui/e2e/render.bench.mjs");
    let chromium = Path::new("/usr/bin/chromium");
    if !script.exists() || !chromium.exists() {
        println!("first render: skipped (needs the source tree's ui/ and /usr/bin/chromium)");
        return;
    }
    let mut conn = staff_connection(addr);
    let body = r#"{"username":"bench-viewer","password":"bench-viewer-password","role":"viewer"}"#;
    if conn
        .send(
            Method::POST,
            "/v1/users",
            "application/json",
            Bytes::from(body),
            Duration::from_secs(30),
        )
        .await
        .is_err()
    {
        println!("first render: skipped (could not add the viewer account)");
        return;
    }
    let ui = script.parent().and_then(Path::parent).expect("ui/e2e/…");
    let out = tokio::process::Command::new("node")
        .current_dir(ui)
        .arg("e2e/render.bench.mjs")
        .env("HOISTWAY_URL", format!("http://{addr}"))
        .env("HOISTWAY_USER", "bench-viewer")
        .env("HOISTWAY_PASSWORD", "bench-viewer-password")
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() => print!("{}", String::from_utf8_lossy(&o.stdout)),
        Ok(o) => println!(
            "first render: failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => println!("first render: skipped (node: {e})"),
    }
}
