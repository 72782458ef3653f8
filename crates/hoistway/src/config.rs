//! Configuration: defaults, then an optional TOML file, then `HOISTWAY_*` environment variables
//! (nested keys joined by `__`, e.g. `HOISTWAY_INGEST__AUTO_REGISTER=true`), then flags.
//! `config/hoistway.example.toml` documents every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub const CONFIG_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub version: u32,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// What this node runs (`serve --role`): `all`, `ingest`, `query`, `ingest,query`,
    /// `processor` or `ingest,processor` (docs/deploy.md).
    pub roles: String,
    /// Seconds a client has to send a request's line and headers, from its first byte.
    pub header_read_timeout_secs: u64,
    /// Seconds a keep-alive connection may stay idle between requests (lifts post every 10 s).
    pub keep_alive_idle_secs: u64,
    pub ingest: IngestConfig,
    pub log: LogConfig,
    pub processor: ProcessorSettings,
    pub storage: StorageSettings,
    pub query: QuerySettings,
    pub auth: AuthSettings,
    pub tls: TlsSettings,
    pub alerts: AlertSettings,
    pub backup: BackupSettings,
    pub cluster: ClusterSettings,
}

/// Running on distributed engines (docs/deploy.md). Empty: standalone, everything in the data
/// dir.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// NATS servers whose JetStream holds the log, comma-separated (`nats://a:4222,nats://b:4222`).
    /// Empty: the log is files in the data dir.
    pub nats: String,
    /// Replicas of the log's stream when this node creates it: 3 in production, 1 on a lone
    /// server (which `/readyz` then reports as unverified durability).
    pub nats_replicas: usize,
    /// The NATS servers' monitoring URLs, comma-separated (`http://a:8222,http://b:8222`): read
    /// at start to check each syncs before acknowledging. Empty: `/readyz` says that is unknown.
    pub nats_monitor: String,
    /// The log's stream is `<nats_stream>_0` (subject `hoistway.log.0` for the default): another
    /// name keeps several deployments apart on one NATS account.
    pub nats_stream: String,
    /// This node's edge region, the JetStream domain of the NATS servers `nats` names (a leaf
    /// node of the processing region's cluster). Readings are acknowledged once in the region's
    /// own stream, which the processing region takes in. Only ingest nodes run in an edge
    /// region. Empty: the processing region.
    pub region: String,
    /// The edge regions whose streams the processing region's stream takes in, comma-separated
    /// (their JetStream domains). Set on the processing node; ingest nodes leave the stream's
    /// list as it is.
    pub edges: String,
    /// An edge region out of contact this long shows on `/readyz`, and absence alerts wait
    /// (its lifts' readings may be in its backlog) until it is back and caught up.
    pub edge_quiet_secs: u64,
    /// PostgreSQL URL of the shared state (accounts, tokens, lift credentials, signing keys, the
    /// audit log, the lift registry). Empty: SQLite and files in the data dir.
    pub postgres: String,
    /// The schema Hoistway's tables live in.
    pub postgres_schema: String,
    /// How many partitions readings are spread over by lift (1 to 1024): one JetStream stream,
    /// one processor, one checkpoint and one storage catalog each. Fixed when the cluster's
    /// first node starts (recorded in PostgreSQL); every node must be given the same. Several
    /// need `nats` and `postgres`.
    pub partitions: u16,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            nats: String::new(),
            nats_replicas: 3,
            nats_monitor: String::new(),
            nats_stream: hoistway_jetstream::DEFAULT_PREFIX.to_string(),
            region: String::new(),
            edges: String::new(),
            edge_quiet_secs: 30,
            postgres: String::new(),
            postgres_schema: "hoistway".to_string(),
            partitions: 1,
        }
    }
}

impl ClusterSettings {
    /// The NATS server URLs, if the log is on JetStream.
    pub fn nats_servers(&self) -> Vec<String> {
        list(&self.nats)
    }

    pub fn nats_monitors(&self) -> Vec<String> {
        list(&self.nats_monitor)
    }

    /// The edge regions the processing region's stream takes in.
    pub fn edge_regions(&self) -> Vec<String> {
        list(&self.edges)
    }
}

fn list(comma_separated: &str) -> Vec<String> {
    comma_separated
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Backups (docs/operations.md): the default target, and continuous log archiving.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackupSettings {
    /// Where `hoistway backup` writes when it names no target, and where the log is archived:
    /// an absolute directory or `s3://bucket/prefix` (with `[storage.s3]`). Empty: none.
    pub target: String,
    /// Copy each sealed log segment to `<target>/log/` (point-in-time restore with
    /// `hoistway restore --until`). The log keeps a segment until it is copied.
    pub log_archive: bool,
    pub log_archive_interval_secs: u64,
    /// Archived segments are deleted after this many days (keep more than the interval
    /// between backups: a restore replays from its backup on).
    pub log_archive_retention_days: u64,
}

impl Default for BackupSettings {
    fn default() -> Self {
        Self {
            target: String::new(),
            log_archive: false,
            log_archive_interval_secs: 10,
            log_archive_retention_days: 35,
        }
    }
}

/// Alerting: rules over accepted readings, and where notifications go (docs/alerts.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertSettings {
    pub enabled: bool,
    /// A TOML file of `[[rule]]` tables, added to (or replacing by id) the stored rules at start.
    pub rules_file: String,
    /// No lift is declared offline before this long after start (default: `silent_after_secs`).
    pub grace_secs: u64,
    /// More than this share of reporting lifts silent at once: one "ingest outage" alert.
    pub outage_fraction: f64,
    pub outage_min_lifts: usize,
    /// How long a reading waits for the ones before it, for rules that follow each lift's order.
    pub reorder_wait_secs: u64,
    /// How often absence is checked.
    pub tick_secs: u64,
    /// Rate rules' baselines (from the hourly rollups) are read at each new hour and this often.
    pub baseline_refresh_secs: u64,
    /// Resolved alerts and their history are kept this many days.
    pub history_days: u64,
    /// Delivered and dead notifications are kept this many days.
    pub outbox_days: u64,
    /// Delays before each retry of a failed notification; after the last, it is dead.
    pub retry_schedule_secs: Vec<f64>,
    pub channels: Vec<hoistway_alerts::notify::ChannelConfig>,
    pub routes: Vec<hoistway_alerts::Route>,
    /// Firing alerts nobody acknowledged in time go to a further channel.
    pub escalations: Vec<hoistway_alerts::Escalation>,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            rules_file: String::new(),
            grace_secs: 60,
            outage_fraction: 0.2,
            outage_min_lifts: 10,
            reorder_wait_secs: 30,
            tick_secs: 5,
            baseline_refresh_secs: 900,
            history_days: 1827,
            outbox_days: 30,
            retry_schedule_secs: hoistway_alerts::notify::DEFAULT_SCHEDULE_SECS.to_vec(),
            channels: Vec::new(),
            routes: Vec::new(),
            escalations: Vec::new(),
        }
    }
}

/// TLS for the HTTP listener and the PostgreSQL wire endpoint, from PEM files; both empty:
/// plain TCP (behind a reverse proxy that terminates TLS, or on loopback).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// Certificate chain (leaf first).
    pub cert: String,
    pub key: String,
    /// How often the files are checked for a change (SIGHUP reloads at once).
    pub reload_check_secs: u64,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            cert: String::new(),
            key: String::new(),
            reload_check_secs: 10,
        }
    }
}

impl TlsSettings {
    /// The files, when TLS is on; an error when only one of the two is given.
    pub fn files(&self) -> anyhow::Result<Option<hoistway_server::tls::TlsFiles>> {
        match (self.cert.trim(), self.key.trim()) {
            ("", "") => Ok(None),
            ("", _) | (_, "") => anyhow::bail!(
                "tls.cert and tls.key go together: give both PEM files, or neither for plain TCP"
            ),
            (cert, key) => Ok(Some(hoistway_server::tls::TlsFiles {
                cert: cert.into(),
                key: key.into(),
            })),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Whether lifts must send an access token: `required`, `optional` (a registered lift's
    /// readings are also accepted without one, during a roll-out) or `open` (no device
    /// authentication; a closed lab network only).
    pub devices: hoistway_auth::DeviceMode,
    pub access_token_secs: i64,
    pub refresh_token_days: i64,
    pub refresh_grace_secs: i64,
    pub device_code_secs: i64,
    pub poll_interval_secs: u32,
    pub session_hours: i64,
    /// Where installers enter user codes; empty: `http://<listen>/activate`.
    pub verification_uri: String,
    /// Requests a lift may make per minute, sustained, and in one burst (a backlog resent after
    /// an outage); above them it gets 429 with Retry-After.
    pub ingest_requests_per_minute: u32,
    pub ingest_burst: u32,
    /// Addresses of reverse proxies whose `X-Forwarded-For` header names the client, for rate
    /// limits and the audit log; empty: every request is from its peer address.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// How often each node rereads what other nodes change (signing keys, lift revocations):
    /// the bound on how long a revocation takes to reach every node.
    pub refresh_secs: i64,
    /// While the shared database is out of reach, staff tokens verified in the last this many
    /// seconds are still accepted (dashboards, metrics scrapes); 0: none.
    pub outage_grace_secs: i64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        let d = hoistway_auth::AuthorityConfig::default();
        Self {
            devices: d.devices,
            access_token_secs: d.access_token_secs,
            refresh_token_days: d.refresh_token_days,
            refresh_grace_secs: d.refresh_grace_secs,
            device_code_secs: d.device_code_secs,
            poll_interval_secs: d.poll_interval_secs,
            session_hours: d.session_hours,
            verification_uri: String::new(),
            ingest_requests_per_minute: 120,
            ingest_burst: 600,
            trusted_proxies: Vec::new(),
            refresh_secs: d.refresh_secs,
            outage_grace_secs: d.outage_grace_secs,
        }
    }
}

impl Config {
    pub fn authority(&self) -> hoistway_auth::AuthorityConfig {
        let a = &self.auth;
        hoistway_auth::AuthorityConfig {
            access_token_secs: a.access_token_secs,
            refresh_token_days: a.refresh_token_days,
            refresh_grace_secs: a.refresh_grace_secs,
            device_code_secs: a.device_code_secs,
            poll_interval_secs: a.poll_interval_secs,
            session_hours: a.session_hours,
            verification_uri: if a.verification_uri.is_empty() {
                let scheme = if self.tls.cert.trim().is_empty() {
                    "http"
                } else {
                    "https"
                };
                format!("{scheme}://{}/activate", self.listen)
            } else {
                a.verification_uri.clone()
            },
            devices: a.devices,
            issuer: "Hoistway".into(),
            refresh_secs: a.refresh_secs,
            outage_grace_secs: a.outage_grace_secs,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    pub max_body_bytes: usize,
    pub max_decoded_bytes: usize,
    pub max_readings_per_request: usize,
    /// Register a lift on its first reading instead of dead-lettering its readings.
    pub auto_register: bool,
    pub retry_after_secs: u64,
    /// Readings of unregistered lifts are refused (507) while pending dead letters take this
    /// many bytes.
    pub dead_letter_max_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub segment_bytes: u64,
    /// Ingest answers 503 once the log (everything not yet checkpointed) is this large.
    pub max_bytes: u64,
    /// The format new segments are written in (an older one during a rolling upgrade).
    pub segment_format: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorSettings {
    pub checkpoint_interval_secs: u64,
    pub silent_after_secs: u64,
    pub dedup_window_seqs: u64,
    pub dedup_max_gaps: usize,
    pub dedup_max_epochs: usize,
    /// The checkpoint format written (an older one to roll back to the previous release).
    pub checkpoint_format: u32,
    /// With checkpoints in PostgreSQL: how long a processor's claim on its partition lasts
    /// without renewal (renewed every third of it). A standby takes over this long after the
    /// holder died or stalled.
    pub lease_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// Store accepted readings as Parquet (off: only latest state and counters are kept).
    pub enabled: bool,
    /// Directory of the hot tier; empty: `<data_dir>/store/hot`.
    pub hot_dir: String,
    /// The hot tier elsewhere than a directory: `s3://bucket/prefix` (see `[storage.s3]`) or a
    /// `file:///` URL; empty: `hot_dir`. In the cluster mode, both tiers on S3 is what lets a
    /// standby taking over serve the stored readings.
    pub hot_url: String,
    /// Where the archive tier lives: empty for `<data_dir>/store/archive`, a `file:///` URL,
    /// or `s3://bucket/prefix` (see `[storage.s3]`).
    pub archive_url: String,
    pub hot_retention_hours: u64,
    pub retention_days: u64,
    pub maintenance_interval_secs: u64,
    /// Files that compaction, tier moves or retention removed are deleted this long after, so
    /// queries that still read them can finish (a running backup keeps them until it ends).
    pub garbage_grace_secs: u64,
    pub compact_min_files: usize,
    pub max_rows_per_file: usize,
    pub s3: S3Settings,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct S3Settings {
    /// e.g. `http://127.0.0.1:9000` for MinIO or another S3-compatible server; empty for AWS.
    pub endpoint: String,
    pub region: String,
    /// Empty: taken from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` and the usual AWS sources.
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Allow `http://` endpoints (test servers on loopback).
    pub allow_http: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QuerySettings {
    pub max_rows: usize,
    pub timeout_secs: u64,
    pub memory_mb: usize,
    /// Address of the PostgreSQL wire protocol listener; empty: off.
    pub postgres_listen: String,
    /// Where PostgreSQL clients may send their password (an API token) without TLS:
    /// `never`, `loopback` (the default) or `anywhere`.
    pub postgres_plain_passwords: hoistway_pgwire::PlainPasswords,
    /// Address of the Arrow Flight SQL listener (ADBC, Flight SQL JDBC, Grafana); empty: off.
    /// Same accounts, TLS and plain-password rule as the PostgreSQL listener.
    pub flight_listen: String,
    /// The least role whose exports stream whole, past `max_rows`: Flight SQL results and
    /// `POST /v1/sql/export` (`hoistway sql --output FILE`).
    pub export_role: hoistway_auth::Role,
    /// Arrow data one exported result may stream, in MiB.
    pub export_max_mb: u64,
    /// Threads of the analytics runtime (SQL, the readings API, compaction, flush encoding);
    /// 0: one per core.
    pub threads: usize,
    /// Nice value of those threads (Linux): higher runs them after the acks to devices.
    pub nice: i32,
    /// Registers `hoistway_test_sleep(ms)` for tests of query isolation. Never in production.
    pub test_functions: bool,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            hot_dir: String::new(),
            hot_url: String::new(),
            archive_url: String::new(),
            hot_retention_hours: 48,
            retention_days: 1827,
            maintenance_interval_secs: 60,
            garbage_grace_secs: 600,
            compact_min_files: 8,
            max_rows_per_file: 50_000_000,
            s3: S3Settings::default(),
        }
    }
}

impl Default for QuerySettings {
    fn default() -> Self {
        Self {
            max_rows: 100_000,
            timeout_secs: 30,
            memory_mb: 1024,
            postgres_listen: "127.0.0.1:5433".into(),
            postgres_plain_passwords: hoistway_pgwire::PlainPasswords::Loopback,
            flight_listen: "127.0.0.1:5434".into(),
            export_role: hoistway_auth::Role::Operator,
            export_max_mb: 10 * 1024,
            threads: 0,
            nice: 19,
            test_functions: false,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            version: CONFIG_VERSION,
            data_dir: PathBuf::from("hoistway-data"),
            listen: "127.0.0.1:8080".parse().unwrap(),
            roles: "all".into(),
            header_read_timeout_secs: 10,
            keep_alive_idle_secs: 75,
            ingest: IngestConfig::default(),
            log: LogConfig::default(),
            processor: ProcessorSettings::default(),
            storage: StorageSettings::default(),
            query: QuerySettings::default(),
            tls: TlsSettings::default(),
            auth: AuthSettings::default(),
            alerts: AlertSettings::default(),
            backup: BackupSettings::default(),
            cluster: ClusterSettings::default(),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 << 20,
            max_decoded_bytes: 16 << 20,
            max_readings_per_request: 10_000,
            auto_register: false,
            dead_letter_max_bytes: 1 << 30,
            retry_after_secs: 5,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
            max_bytes: 2 << 30,
            segment_format: hoistway_log::SEGMENT_VERSION,
        }
    }
}

impl Default for ProcessorSettings {
    fn default() -> Self {
        let w = hoistway_model::DedupWindow::default();
        Self {
            checkpoint_interval_secs: 10,
            silent_after_secs: 60,
            dedup_window_seqs: w.seqs,
            dedup_max_gaps: w.max_ranges,
            dedup_max_epochs: w.max_epochs,
            checkpoint_format: hoistway_processor::checkpoint::VERSION,
            lease_secs: 10,
        }
    }
}

impl Config {
    /// Defaults ← `file` (if any) ← environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            anyhow::ensure!(
                path.exists(),
                "config file {} does not exist",
                path.display()
            );
            fig = fig.merge(Toml::file(path));
        }
        let config: Config = fig
            .merge(
                Env::prefixed("HOISTWAY_")
                    // HOISTWAY_UNSTABLE_*: test hooks, read where they act.
                    .filter(|k| !k.as_str().to_ascii_lowercase().starts_with("unstable_"))
                    .split("__")
                    // Read by the CLI, by the private servers of `cluster-demo` and by tests.
                    .ignore(&[
                        "config",
                        "log_level",
                        "log_format",
                        "token",
                        "nats_server",
                        "pg_bin",
                        "test_postgres",
                    ]),
            )
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        let checkpoints =
            hoistway_processor::checkpoint::VERSION_MIN..=hoistway_processor::checkpoint::VERSION;
        anyhow::ensure!(
            checkpoints.contains(&config.processor.checkpoint_format),
            "processor.checkpoint_format {} is not one this build writes ({} to {})",
            config.processor.checkpoint_format,
            checkpoints.start(),
            checkpoints.end()
        );
        let writable = hoistway_log::SEGMENT_VERSION_MIN..=hoistway_log::SEGMENT_VERSION;
        anyhow::ensure!(
            writable.contains(&config.log.segment_format),
            "log.segment_format {} is not one this build writes ({} to {})",
            config.log.segment_format,
            writable.start(),
            writable.end()
        );
        anyhow::ensure!(
            config.auth.access_token_secs >= 60 && config.auth.access_token_secs <= 86_400,
            "auth.access_token_secs must be 60 to 86400"
        );
        anyhow::ensure!(
            config.auth.poll_interval_secs >= 1,
            "auth.poll_interval_secs must be at least 1"
        );
        let mut names = std::collections::HashSet::new();
        for channel in &config.alerts.channels {
            anyhow::ensure!(
                names.insert(channel.name()),
                "alerts.channels: {:?} is defined twice",
                channel.name()
            );
            channel
                .build()
                .map_err(|e| anyhow::anyhow!("alerts.channels: {e}"))?;
        }
        for route in &config.alerts.routes {
            anyhow::ensure!(
                names.contains(route.channel.as_str()),
                "alerts.routes: no channel is named {:?}",
                route.channel
            );
            if let Some(q) = &route.quiet_hours {
                q.validate().map_err(|e| {
                    anyhow::anyhow!("alerts.routes (channel {:?}): {e}", route.channel)
                })?;
            }
        }
        for escalation in &config.alerts.escalations {
            anyhow::ensure!(
                names.contains(escalation.channel.as_str()),
                "alerts.escalations: no channel is named {:?}",
                escalation.channel
            );
        }
        anyhow::ensure!(
            (0.0..=1.0).contains(&config.alerts.outage_fraction),
            "alerts.outage_fraction must be between 0 and 1"
        );
        anyhow::ensure!(
            config.version == CONFIG_VERSION,
            "config version {} is not supported (this build reads version {CONFIG_VERSION})",
            config.version
        );
        Ok(config)
    }

    pub fn window(&self) -> hoistway_model::DedupWindow {
        hoistway_model::DedupWindow {
            seqs: self.processor.dedup_window_seqs,
            max_ranges: self.processor.dedup_max_gaps,
            max_epochs: self.processor.dedup_max_epochs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_and_equals_the_defaults() {
        let example = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/hoistway.example.toml"
        );
        let parsed: Config = Figment::from(Toml::file(example)).extract().unwrap();
        assert_eq!(parsed, Config::default());
    }
}
