//! The web UI in a real browser: `ui/e2e/ui.test.mjs` (playwright-core driving Debian's
//! Chromium, headless) against a server with the simulator. The script saves screenshots of the
//! main pages under `target/ui-screenshots/` and checks each with axe-core.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Debian's Chromium, installed here when missing (as the Python packages are).
fn chromium() -> PathBuf {
    debian_file(CHROMIUM, "chromium")
}

/// `ui/` with its npm packages (the build script installed them, unless the UI came prebuilt).
fn ui_dir() -> PathBuf {
    let ui = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ui");
    if !ui.join("node_modules/playwright-core").exists() {
        let ok = Command::new("npm")
            .current_dir(&ui)
            .args(["ci", "--no-audit", "--no-fund"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "npm ci in ui/ failed");
    }
    ui
}

#[tokio::test(flavor = "multi_thread")]
async fn the_web_ui_does_the_daily_tasks_in_a_real_browser() {
    let chromium = chromium();
    let ui = ui_dir();
    // A log channel that takes every alert: the notification series of the dashboard exist.
    let server = TestServer::start(&[
        (
            "HOISTWAY_ALERTS__CHANNELS",
            r#"[{kind="log",name="audit"}]"#,
        ),
        (
            "HOISTWAY_ALERTS__ROUTES",
            r#"[{channel="audit",min_severity="info"}]"#,
        ),
    ]);
    let url = format!("http://{}", server.addr);

    // The UI is served at / (and every app path) by the binary itself.
    let page = http(
        server.addr,
        "GET",
        "/lifts/ANY",
        &[("authorization", "")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(page.status, 200);
    assert!(page.content_type().starts_with("text/html"));
    assert!(String::from_utf8_lossy(&page.body).contains("<div id=\"app\""));
    let api = http(
        server.addr,
        "GET",
        "/v1/nope",
        &[("authorization", "")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(
        api.status, 404,
        "an unknown API path is a problem, not the page"
    );
    assert_eq!(api.content_type(), "application/problem+json");

    let mut sim = Command::new(env!("CARGO_BIN_EXE_hoistway"))
        .args([
            "simulate",
            "--target",
            &url,
            "--lifts",
            "24",
            "--speedup",
            "10",
        ])
        .args(["--duration-secs", "600", "--quiet", "--outage-rate", "0"])
        .env("HOISTWAY_TOKEN", &server.token)
        .stdout(Stdio::null())
        .spawn()
        .expect("start the simulator");
    server
        .eventually("the simulated lifts to report", || async {
            let r = server.get("/v1/fleet/summary").await;
            r.status == 200 && r.json()["reporting"].as_u64().unwrap_or(0) >= 20
        })
        .await;

    let screenshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots");
    let started = Instant::now();
    let mut node = Command::new("node")
        .current_dir(&ui)
        .arg("e2e/ui.test.mjs")
        .env("HOISTWAY_URL", &url)
        .env("HOISTWAY_TOKEN", &server.token)
        .env("SCREENSHOTS", &screenshots)
        .env("CHROMIUM", &chromium)
        .spawn()
        .expect("node runs the browser test");
    let status = loop {
        if let Some(s) = node.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(240) {
            let _ = node.kill();
            let _ = sim.kill();
            panic!("the browser test did not finish in 240 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = sim.kill();
    let _ = sim.wait();
    assert!(
        status.success(),
        "the browser test failed (its output is above)"
    );

    // The Grafana dashboard (config/grafana) names only metrics this run produced.
    let metrics = String::from_utf8(server.get("/metrics").await.body.to_vec()).unwrap();
    let missing: Vec<String> = dashboard_metrics()
        .into_iter()
        .filter(|name| {
            !metrics.lines().any(|l| {
                l.strip_prefix(name.as_str())
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard names metrics /metrics lacks: {missing:?}"
    );
    for name in ["fleet", "building", "lift", "alerts", "activate", "sql"] {
        let shot = screenshots.join(format!("{name}.png"));
        assert!(shot.exists(), "screenshot {} was saved", shot.display());
    }
}

/// Every metric the Grafana dashboard's queries name, as the names appear in `/metrics`.
fn dashboard_metrics() -> Vec<String> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/grafana/hoistway-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut names = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("hoistway_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                names.insert(name);
            }
        }
    }
    assert!(names.len() >= 15, "the dashboard's metrics: {names:?}");
    names.into_iter().collect()
}
