//! Hoistway's shared state in PostgreSQL, for several nodes (`[cluster] postgres`).
//!
//! In: a PostgreSQL URL and a schema name. Out: implementations of the state seams that pass
//! the same conformance suites as the embedded ones: [`PgAuthStore`] (staff accounts, tokens,
//! device grants, refresh tokens, lift credentials, the audit log), [`PgKeyStore`] (the token
//! signing keys), [`PgRegistryStore`] (the lift registry), [`PgAlertStore`] (rules, alerts,
//! their events, the notification outbox, silences) and [`PgCheckpointStore`] (each partition's
//! processor checkpoint and epoch, and the dead letters) and [`PgManifestStore`] (the storage
//! catalog: both tiers' manifests). Not here: raw readings, which stay in the log and in Parquet.
//!
//! The seams block (their callers run them off the async runtime). [`Postgres`] keeps a
//! connection pool on a small tokio runtime of its own and waits for each call on the caller's
//! thread, so a store works from any thread and never needs the caller's runtime.
//!
//! Every table lives in one schema (`postgres_schema`, `hoistway` by default). Each component's
//! tables are versioned in `schema_versions` and brought up to date by its migrations, under an
//! advisory lock so nodes starting together migrate once; a schema newer than this build is
//! refused, naming the component and the version.

pub mod alerts;
pub mod auth;
pub mod checkpoints;
pub mod layout;
pub mod local;
pub mod manifests;
pub mod registry;

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_rustls::rustls;

pub use alerts::{HeldPartitions, PgAlertStore};
pub use auth::{PgAuthStore, PgKeyStore};
pub use checkpoints::PgCheckpointStore;
pub use layout::PgMembership;
pub use manifests::PgManifestStore;
pub use registry::PgRegistryStore;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server cannot be reached, or dropped the connection: worth retrying.
    #[error("PostgreSQL is unavailable: {0}")]
    Unavailable(String),
    /// A unique key is taken.
    #[error("{0}")]
    Conflict(String),
    #[error("PostgreSQL: {0}")]
    Query(String),
    #[error(
        "the PostgreSQL schema {schema:?} holds {component} tables of version {version}, which this build does not read (it reads up to {reads}); run the release that wrote them or a newer one"
    )]
    Format {
        schema: String,
        component: &'static str,
        version: u32,
        reads: u32,
    },
    #[error("invalid PostgreSQL setting: {0}")]
    Config(String),
    /// A stored record this build cannot read.
    #[error("unreadable record in {table}: {message}")]
    Record {
        table: &'static str,
        message: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        let unavailable = e.is_closed()
            || match e.code() {
                // Connection exceptions, server shutting down, too many connections.
                Some(code) => {
                    code.code().starts_with("08")
                        || code.code().starts_with("57P")
                        || *code == SqlState::TOO_MANY_CONNECTIONS
                }
                // Not a server error: I/O, TLS, a timeout.
                None => true,
            };
        if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
            let detail = e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_string());
            Self::Conflict(detail)
        } else if unavailable {
            Self::Unavailable(error_chain(&e))
        } else {
            Self::Query(error_chain(&e))
        }
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => Self::Unavailable(other.to_string()),
        }
    }
}

/// The error and its sources on one line (tokio-postgres keeps the cause in `source`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        next = cause.source();
    }
    s
}

/// A record as stored: JSON text (PostgreSQL's text holds no NUL character; JSON escapes it).
fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("records serialise")
}

fn from_json<T: serde::de::DeserializeOwned>(table: &'static str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| Error::Record {
        table,
        message: e.to_string(),
    })
}

/// How long the server lets a session sit idle inside a transaction before ending it.
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(10);

/// Most connections one node keeps to the server.
const POOL_SIZE: usize = 8;
/// How long a call waits to connect or for a free connection before it fails as unavailable.
const WAIT: Duration = Duration::from_secs(5);
/// Serialises migrations across nodes (an arbitrary constant: "hoistway" in ASCII, shortened).
const MIGRATION_LOCK: i64 = 0x686f_6973_7477;

/// A read-only transaction on one snapshot: what several reads see together.
pub async fn read_snapshot(client: &mut Object) -> Result<deadpool_postgres::Transaction<'_>> {
    Ok(client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}

/// A transaction that holds advisory lock `lock` until it ends: writers taking the same lock,
/// on every node, run one at a time.
pub async fn exclusive(
    client: &mut Object,
    lock: i64,
) -> Result<deadpool_postgres::Transaction<'_>> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock])
        .await?;
    Ok(tx)
}

/// Whether `epoch` still holds `partition` (`processor_partitions`, see [`PgCheckpointStore`]),
/// checked inside `tx` under a share lock of the partition's row, so a claim waits for `tx` to
/// end and `tx` sees any claim committed before: `None` if so, else why not. What a partition's
/// holder writes beside its checkpoints (alerts, storage manifests) is fenced with it.
pub async fn fenced_out(
    tx: &deadpool_postgres::Transaction<'_>,
    (partition, epoch): (u16, u64),
) -> Result<Option<String>> {
    let current: Option<i64> = tx
        .query_opt(
            "SELECT epoch FROM processor_partitions WHERE partition = $1 FOR SHARE",
            &[&i32::from(partition)],
        )
        .await?
        .map(|r| r.get(0));
    Ok((current != Some(epoch as i64)).then(|| {
        format!(
            "partition {partition} was claimed by another processor (epoch {}; this one held {epoch})",
            current.unwrap_or(0)
        )
    }))
}

/// A pool of connections to one schema of one PostgreSQL database. Cheap to clone.
#[derive(Clone)]
pub struct Postgres {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pool: Pool,
    schema: String,
    /// Where it points, without credentials, for messages.
    target: String,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping a runtime waits for its threads, which an async caller may not do.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Whether `name` is usable as a schema name without quoting.
fn check_schema(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "schema {name:?}: use lower-case letters, digits and _ (at most 63), starting with a letter or _"
        )))
    }
}

/// libpq's TLS settings that tokio-postgres does not parse, taken out of the URL.
#[derive(Debug, Default, PartialEq)]
struct TlsSettings {
    /// `sslmode=verify-full` (or `verify-ca`): check the server's certificate and name.
    verify: bool,
    /// `sslrootcert`: the CA file to check it against (else the system's roots).
    root_cert: Option<std::path::PathBuf>,
}

/// Splits `verify-full`/`verify-ca` (passed on as `require`) and `sslrootcert` out of a URL or
/// `key=value` string, so the rest parses as tokio-postgres expects.
fn split_tls(url: &str) -> (String, TlsSettings) {
    let mut tls = TlsSettings::default();
    let mut take = |key: &str, value: &str| -> Option<String> {
        match (key, value) {
            ("sslmode", "verify-full" | "verify-ca") => {
                tls.verify = true;
                Some("require".into())
            }
            ("sslrootcert", path) => {
                tls.root_cert = Some(path.into());
                None
            }
            (_, value) => Some(value.into()),
        }
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_string(),
            Some((base, query)) => {
                let kept: Vec<String> = query
                    .split('&')
                    .filter_map(|pair| {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        take(k, v).map(|v| format!("{k}={v}"))
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        url.split_whitespace()
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                take(k, v).map(|v| format!("{k}={v}"))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    (rest, tls)
}

/// Accepts any server certificate while still checking the handshake's signatures: libpq's
/// `prefer` and `require`, which encrypt without authenticating the server.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS connector for `settings`: with `verify`, the server's certificate is checked against
/// `root_cert` or the system's roots, and its name against the host; without, as libpq's
/// `prefer`/`require`, the connection is encrypted but the server is not authenticated.
fn tls(settings: &TlsSettings) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let config = if settings.verify {
        let mut roots = rustls::RootCertStore::empty();
        match &settings.root_cert {
            Some(path) => {
                use rustls::pki_types::pem::PemObject;
                let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| Error::Config(format!("sslrootcert {}: {e}", path.display())))?;
                for cert in certs {
                    roots.add(cert).map_err(|e| {
                        Error::Config(format!("sslrootcert {}: {e}", path.display()))
                    })?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth()
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

impl Postgres {
    /// Connects to `url` (a `postgres://` URL or `key=value` string) and uses `schema`,
    /// creating it if missing. Fails as [`Error::Unavailable`] when the server cannot be
    /// reached. `sslmode` is read as libpq reads it: `prefer` (the default) and `require`
    /// encrypt without checking the server's certificate, `verify-full` (and `verify-ca`) check it
    /// against `sslrootcert` or the system's roots.
    pub fn connect(url: &str, schema: &str) -> Result<Self> {
        check_schema(schema)?;
        let (url, tls_settings) = split_tls(url);
        let connector = tls(&tls_settings)?;
        let mut config = tokio_postgres::Config::from_str(&url)
            .map_err(|e| Error::Config(format!("the URL is not valid: {e}")))?;
        // Unqualified names resolve in Hoistway's schema only; notices ("already exists,
        // skipping") stay out of the log. A node that stalls inside a
        // transaction (paused, cut off) must not hold its row locks for ever: the server ends
        // such a session, so another node can take a partition over.
        config.options(format!(
            "-c search_path={schema} -c idle_in_transaction_session_timeout={} -c client_min_messages=warning",
            IDLE_IN_TRANSACTION.as_millis()
        ));
        if config.get_application_name().is_none() {
            config.application_name("hoistway");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(WAIT);
        }
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(dir) => dir.display().to_string(),
            })
            .collect();
        let target = format!(
            "PostgreSQL at {} (database {:?})",
            hosts.join(","),
            config.get_dbname().unwrap_or("")
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hoistway-postgres")
            .enable_all()
            .build()
            .map_err(|e| Error::Config(format!("cannot start a runtime: {e}")))?;
        let manager = Manager::from_config(
            config,
            connector,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(WAIT))
            .create_timeout(Some(WAIT))
            .recycle_timeout(Some(WAIT))
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        let handle = runtime.handle().clone();
        let pg = Self {
            inner: Arc::new(Inner {
                runtime: Some(runtime),
                handle,
                pool,
                schema: schema.to_string(),
                target,
            }),
        };
        // Reach the server now: a wrong URL fails at start, not at the first login.
        pg.block(async {
            let mut client = pg.client().await?;
            let tx = exclusive(&mut client, MIGRATION_LOCK).await?;
            tx.batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema};
                 CREATE TABLE IF NOT EXISTS schema_versions (
                     component text PRIMARY KEY, version integer NOT NULL);"
            ))
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .map_err(|e| match e {
            Error::Unavailable(m) => {
                Error::Unavailable(format!("{} cannot be reached: {m}", pg.inner.target))
            }
            other => other,
        })?;
        Ok(pg)
    }

    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// Runs `fut` to completion on the calling thread, with this pool's runtime entered (its
    /// connections' I/O runs on that runtime's thread). Blocks; never call it from that runtime.
    pub fn block<T>(&self, fut: impl Future<Output = T>) -> T {
        let _entered = self.inner.handle.enter();
        futures::executor::block_on(fut)
    }

    /// Runs `fut` on this pool's runtime and waits for it without blocking the caller's
    /// thread: the form for async callers.
    pub async fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        self.inner.handle.spawn(fut).await.unwrap_or_else(|e| {
            Err(Error::Unavailable(format!(
                "the PostgreSQL runtime stopped: {e}"
            )))
        })
    }

    /// A connection from the pool (inside [`Self::block`] or [`Self::run`]).
    pub async fn client(&self) -> Result<Object> {
        Ok(self.inner.pool.get().await?)
    }

    /// Brings `component`'s tables to `migrations.len()`: `migrations[n]` takes them from version
    /// `n` to `n + 1`, each in one transaction with the version it reaches. Refuses a newer one.
    pub fn migrate(&self, component: &'static str, migrations: &[&str]) -> Result<()> {
        let reads = migrations.len() as u32;
        let schema = self.inner.schema.clone();
        self.block(async {
            let mut client = self.client().await?;
            let tx = exclusive(&mut client, MIGRATION_LOCK).await?;
            let version: i32 = tx
                .query_opt(
                    "SELECT version FROM schema_versions WHERE component = $1",
                    &[&component],
                )
                .await?
                .map_or(0, |r| r.get(0));
            let version = version as u32;
            if version > reads {
                return Err(Error::Format {
                    schema,
                    component,
                    version,
                    reads,
                });
            }
            for sql in &migrations[version as usize..] {
                tx.batch_execute(sql).await?;
            }
            if version < reads {
                tx.execute(
                    "INSERT INTO schema_versions (component, version) VALUES ($1, $2)
                     ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                    &[&component, &(reads as i32)],
                )
                .await?;
                tracing::info!(component, from = version, to = reads, schema = %schema, "PostgreSQL tables migrated");
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// The version of `component`'s tables (0: none).
    pub fn version(&self, component: &str) -> Result<u32> {
        self.block(async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT version FROM schema_versions WHERE component = $1",
                    &[&component],
                )
                .await?;
            Ok(row.map_or(0, |r| r.get::<_, i32>(0) as u32))
        })
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn libpq_tls_settings_are_split_out_of_urls_and_key_value_strings() {
        let (rest, tls) = split_tls(
            "postgres://h@db:5432/x?application_name=a&sslmode=verify-full&sslrootcert=/ca.pem",
        );
        assert_eq!(
            rest,
            "postgres://h@db:5432/x?application_name=a&sslmode=require"
        );
        assert_eq!(
            tls,
            TlsSettings {
                verify: true,
                root_cert: Some("/ca.pem".into())
            }
        );
        let (rest, tls) = split_tls("host=db user=h sslmode=verify-ca dbname=x");
        assert_eq!(rest, "host=db user=h sslmode=require dbname=x");
        assert!(tls.verify && tls.root_cert.is_none());
        let (rest, tls) = split_tls("postgres://h@db/x?sslmode=require");
        assert_eq!(rest, "postgres://h@db/x?sslmode=require");
        assert_eq!(tls, TlsSettings::default());
        assert_eq!(split_tls("postgres://h@db/x").0, "postgres://h@db/x");
    }
}
