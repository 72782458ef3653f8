//! A real `hoistway serve` process on a free loopback port, and a small HTTP helper.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

pub struct TestServer {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    /// An admin's API token; [`http`] sends it to this server unless the request names another.
    pub token: String,
    /// Processes that exited before listening in the last [`spawn`](Self::spawn) (it tries
    /// again, for a port still held by the previous process): a test that must see a server
    /// start at the first attempt checks it is 0.
    pub failed_starts: u32,
    env: Vec<(String, String)>,
    child: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestServer {
    pub fn start(env: &[(&str, &str)]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = Self::start_in(tmp.path().join("data"), env);
        s._tmp = Some(tmp);
        s
    }

    /// Starts on a data dir the caller prepared (e.g. a small filesystem). The data dir gets
    /// an admin account with an API token first. Lifts post without tokens
    /// (`auth.devices = open`) unless `env` says otherwise.
    pub fn start_in(data_dir: PathBuf, env: &[(&str, &str)]) -> Self {
        let token = admin_token(&data_dir);
        Self::start_with_token(data_dir, token, env)
    }

    /// Starts on a data dir that already has accounts (a restored backup), with `token`.
    pub fn start_with_token(data_dir: PathBuf, token: String, env: &[(&str, &str)]) -> Self {
        let mut all = vec![
            ("HOISTWAY_AUTH__DEVICES".to_string(), "open".to_string()),
            (
                "HOISTWAY_AUTH__POLL_INTERVAL_SECS".to_string(),
                "1".to_string(),
            ),
            // Tests run side by side: the wire endpoint only where a test gives it a port.
            ("HOISTWAY_QUERY__POSTGRES_LISTEN".to_string(), String::new()),
            ("HOISTWAY_QUERY__FLIGHT_LISTEN".to_string(), String::new()),
        ];
        for (k, v) in env {
            all.retain(|(key, _)| key != k);
            all.push((k.to_string(), v.to_string()));
        }
        let mut s = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            data_dir,
            token,
            failed_starts: 0,
            env: all,
            child: None,
            _tmp: None,
        };
        TOKENS.lock().unwrap().insert(s.addr, s.token.clone());
        s.spawn();
        s
    }

    /// Starts (again) on the same data dir and port, and waits for the listening line.
    pub fn spawn(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        self.failed_starts = 0;
        loop {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_hoistway"));
            cmd.arg("serve")
                .arg("--data-dir")
                .arg(&self.data_dir)
                .arg("--listen")
                .arg(self.addr.to_string())
                .env("HOISTWAY_LOG_LEVEL", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            for (k, v) in &self.env {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn().expect("spawn hoistway");
            let stdout = child.stdout.take().unwrap();
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).unwrap();
            if line.contains("listening on") {
                self.child = Some(child);
                return;
            }
            // The port may still be held by the previous process for a moment.
            let _ = child.wait();
            self.failed_starts += 1;
            assert!(Instant::now() < deadline, "server did not start: {line:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sets (or with `None` removes) an environment variable for the next [`spawn`](Self::spawn).
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.to_string(), v.to_string()));
        }
    }

    /// Waits for the process to exit by itself; `None` if it still runs at the deadline.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Runs a SQL query (CSV out) and returns the rows without the header.
    pub async fn sql_rows(&self, sql: &str) -> Vec<Vec<String>> {
        let body = serde_json::json!({ "sql": sql, "format": "csv" }).to_string();
        let reply = self.post_json("/v1/sql", &body).await;
        assert_eq!(
            reply.status,
            200,
            "{sql}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        String::from_utf8(reply.body.to_vec())
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(',').map(str::to_string).collect())
            .collect()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM; returns whether the process exited successfully.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()
            .unwrap();
        c.wait().unwrap().success()
    }

    /// The running process's id (to send it a signal).
    /// Sends the process `signal` (`STOP`, `CONT`, …) with kill(1).
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the server runs");
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {pid}");
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub async fn get(&self, path: &str) -> Reply {
        http(self.addr, "GET", path, &[], Bytes::new()).await
    }

    pub async fn post_json(&self, path: &str, body: &str) -> Reply {
        http(
            self.addr,
            "POST",
            path,
            &[("content-type", "application/json")],
            Bytes::from(body.to_string()),
        )
        .await
    }

    /// Polls `check` until it is true or the deadline passes.
    pub async fn eventually<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !check().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// The admin token of each test server, by address.
static TOKENS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<SocketAddr, String>>,
> = std::sync::LazyLock::new(Default::default);

/// Adds an admin with an API token to a data dir (`hoistway users add`); returns the token.
pub fn admin_token(data_dir: &Path) -> String {
    admin_token_with_env(data_dir, &[])
}

/// [`admin_token`] with the server's environment (e.g. accounts in PostgreSQL).
pub fn admin_token_with_env(data_dir: &Path, env: &[(&str, &str)]) -> String {
    let env: Vec<(&str, &std::ffi::OsStr)> = env.iter().map(|(k, v)| (*k, v.as_ref())).collect();
    let out = hoistway_with_env(
        &[
            "users".as_ref(),
            "add".as_ref(),
            "admin".as_ref(),
            "--role".as_ref(),
            "admin".as_ref(),
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
            "--api-token".as_ref(),
            "tests".as_ref(),
        ],
        &env,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "users add: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("api token: "))
        .expect("an api token line")
        .trim()
        .to_string()
}

/// One HTTP/1.1 request. A request to a [`TestServer`] carries its admin token unless
/// `headers` has an `authorization` (an empty one sends none) or it posts telemetry.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    let explicit = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("authorization"));
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("authorization") && v.is_empty() {
            continue;
        }
        req = req.header(*k, *v);
    }
    // Telemetry is a lift's, never a staff member's.
    if !explicit
        && path != "/v1/telemetry"
        && let Some(t) = TOKENS.lock().unwrap().get(&addr)
    {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = sender
        .send_request(req.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    // A stream of server-sent events does not end: its head is the answer ([`events`] reads it).
    let body = if headers
        .get("content-type")
        .is_some_and(|c| c.as_bytes().starts_with(b"text/event-stream"))
    {
        Bytes::new()
    } else {
        resp.into_body().collect().await.unwrap().to_bytes()
    };
    Reply {
        status,
        headers,
        body,
    }
}

/// An hour, in µs.
pub const HOUR_US: i64 = 3_600_000_000;

/// Waits, if less than `needed` is left of the current hour, for the next one; returns when the
/// hour began (µs since the epoch). For tests that must stay inside one hour.
pub async fn inside_one_hour(needed: Duration) -> i64 {
    let now = || chrono::Utc::now().timestamp_micros();
    let left = HOUR_US - now().rem_euclid(HOUR_US);
    if left < needed.as_micros() as i64 {
        tokio::time::sleep(Duration::from_micros(left as u64 + 1_000_000)).await;
    }
    now().div_euclid(HOUR_US) * HOUR_US
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A valid reading as JSON text.
pub fn reading(lift: &str, seq: u64, trips: u64) -> serde_json::Value {
    serde_json::json!({
        "lift_id": lift, "seq": seq, "ts": now_rfc3339(), "floor": 3, "direction": "up",
        "door": "closed", "load_kg": 150.0, "speed_mps": 1.6, "motor_temp_c": 41.5,
        "vibration_mm_s": 0.8, "trips": trips, "door_cycles": trips * 2,
        "faults": [], "events": [],
    })
}

pub async fn register(server: &TestServer, csv: &str) {
    let r = http(
        server.addr,
        "POST",
        "/v1/lifts/import",
        &[("content-type", "text/csv")],
        Bytes::from(csv.to_string()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// Runs the `hoistway` binary with `args` to completion (at most a minute) and returns its output.
pub fn hoistway(args: &[&std::ffi::OsStr]) -> std::process::Output {
    hoistway_with_env(args, &[])
}

/// [`hoistway`] with extra environment variables.
pub fn hoistway_with_env(
    args: &[&std::ffi::OsStr],
    env: &[(&str, &std::ffi::OsStr)],
) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hoistway"))
        .args(args)
        .envs(env.iter().copied())
        .env("HOISTWAY_LOG_LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hoistway");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("hoistway {args:?} did not finish within a minute");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Copies a directory tree (a committed data-dir fixture) to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The LD_PRELOAD shim of `tests/faults/fail_io.c`, built once per test process with the system
/// C compiler.
pub fn fault_shim() -> PathBuf {
    static SHIM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    SHIM.get_or_init(|| {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/faults/fail_io.c");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("fail_io-{}.so", std::process::id()));
        let status = Command::new("cc")
            .args(["-shared", "-fPIC", "-O1", "-Wall", "-o"])
            .arg(&out)
            .arg(&source)
            .arg("-ldl")
            .status()
            .expect("run cc (the fault tests need a C compiler)");
        assert!(status.success(), "cc {} failed", source.display());
        out
    })
    .clone()
}

/// Reads the server-sent events of `GET path` into a shared string until dropped.
pub struct Events {
    pub text: std::sync::Arc<std::sync::Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Events {
    pub async fn open(addr: SocketAddr, path: &str, token: &str) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .uri(path)
            .header("host", addr.to_string())
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = text.clone();
        let task = tokio::spawn(async move {
            let mut body = resp.into_body();
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    sink.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(data));
                }
            }
        });
        Self { text, task }
    }

    pub fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A certificate authority of a test's own.
pub fn test_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // A subject of its own (OpenSSL takes a leaf with its issuer's name for self-signed).
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// Issues a certificate for `localhost` and 127.0.0.1 signed by `ca` and writes it and its key
/// (each through a rename, as a certificate renewal tool does); returns its DER.
pub fn issue_cert(
    ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    cert: &Path,
    key: &Path,
) -> Vec<u8> {
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let leaf = params.signed_by(&leaf_key, &**ca).unwrap();
    for (path, text) in [(key, leaf_key.serialize_pem()), (cert, leaf.pem())] {
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
    leaf.der().to_vec()
}

/// A Debian package's file, installed when missing (as root, like the Python packages).
pub fn debian_file(path: &str, package: &str) -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(tmp).unwrap();
    let lock = std::fs::File::create(tmp.join("apt.lock")).unwrap();
    lock.lock().unwrap();
    if !Path::new(path).exists() {
        let apt = |args: &[&str]| {
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success())
        };
        assert!(
            apt(&["update", "-qq"]) && apt(&["install", "-y", "-qq", package]),
            "this test needs {path} (apt-get install {package}, as root)"
        );
    }
    PathBuf::from(path)
}

/// The JSON a successful CLI command printed.
pub fn succeeded(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A loopback TCP proxy to `target` that a test can cut: while cut, it drops every connection
/// it carries and closes new ones at once, as a server out of reach would look to a client.
pub struct CutProxy {
    pub addr: SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
    target: std::sync::Arc<std::sync::Mutex<SocketAddr>>,
}

impl CutProxy {
    /// Starts on a thread of its own, so a test that blocks (running the CLI) does not stall it.
    pub fn start(target: SocketAddr) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let target = std::sync::Arc::new(std::sync::Mutex::new(target));
        let current = target.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        return;
                    };
                    if *cut_rx.borrow() {
                        continue;
                    }
                    let mut cut_rx = cut_rx.clone();
                    let target = *current.lock().unwrap();
                    tokio::spawn(async move {
                        let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut_rx.wait_for(|c| *c) => {}
                        }
                    });
                }
            });
        });
        Self { addr, cut, target }
    }

    /// Sends new connections to `target` (what a load balancer does once a health check fails
    /// over); connections already open stay where they are.
    pub fn set_target(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = target;
    }

    /// Cuts (`true`) or restores the connection.
    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

/// The PostgreSQL server the tests use (`HOISTWAY_TEST_POSTGRES`; `.ci/run` starts it when it
/// is down).
pub fn test_postgres() -> String {
    std::env::var("HOISTWAY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema name of its own for one test's servers.
pub fn scratch_schema(test: &str) -> String {
    format!(
        "hw_{test}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

pub async fn drop_schema(url: &str, schema: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

/// A [`CutProxy`] in front of the test PostgreSQL server, and the server's URL through it.
pub async fn postgres_via_proxy() -> (CutProxy, String) {
    let url = test_postgres();
    let config: tokio_postgres::Config = url.parse().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        other => panic!("a TCP PostgreSQL for this test, not {other:?}"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let target = tokio::net::lookup_host((host.as_str(), port))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = CutProxy::start(target);
    let via_proxy = url.replacen(&format!("{host}:{port}"), &proxy.addr.to_string(), 1);
    assert_ne!(via_proxy, url, "the URL names its host and port");
    (proxy, via_proxy)
}

/// A Python with the tests' pinned packages (`tests/python-requirements.txt`), in a virtual
/// environment under `target/`: made on first use, and again when the requirements change. It
/// needs nothing of the system Python but `venv`, so it works where the system refuses
/// `pip install` (PEP 668).
pub fn test_python() -> String {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let requirements = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python-requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).unwrap();
    let venv = tmp.join("python");
    let python = venv.join("bin").join("python3");
    let stamp = venv.join("requirements.installed");
    std::fs::create_dir_all(tmp).unwrap();
    // Tests run in parallel: one makes the environment, the others wait for it.
    let lock = std::fs::File::create(tmp.join("python.lock")).unwrap();
    lock.lock().unwrap();
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        if !python.exists() {
            let made = std::process::Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .unwrap();
            assert!(made.success(), "python3 -m venv {} failed", venv.display());
        }
        let installed = std::process::Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&requirements)
            .status()
            .unwrap();
        assert!(
            installed.success(),
            "pip install -r {} failed",
            requirements.display()
        );
        std::fs::write(&stamp, &wanted).unwrap();
    }
    python.display().to_string()
}

/// An S3-compatible server (moto, from PyPI) on a loopback port, stopped when dropped.
pub struct S3Server {
    child: std::process::Child,
    pub port: u16,
}

impl S3Server {
    pub async fn start(bucket: &str) -> Self {
        let python = test_python();
        let port = free_port();
        let child = std::process::Command::new(python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let server = Self { child, port };
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the S3 server did not start"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let created = http(addr, "PUT", &format!("/{bucket}"), &[], Bytes::new()).await;
        assert_eq!(created.status, 200, "create bucket");
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
