//! TLS termination material: a certificate chain and key read from PEM files, reloaded when the
//! files change or on SIGHUP, and handed to every listener (HTTP and the PostgreSQL wire) as
//! the current [`TlsAcceptor`].
//!
//! A reload that fails (a half-written file, a key that does not match) keeps the previous
//! certificate and logs why: a renewal gone wrong must not take the server off the network.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS {what} {path}: {message}")]
    File {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("TLS certificate {cert} and key {key} do not make a server identity: {message}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
}

/// Where the certificate chain and key live.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// Reads both files into a rustls server configuration (HTTP/1.1 offered by ALPN).
    pub fn load(&self) -> Result<ServerConfig, TlsError> {
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| TlsError::File {
                what: "certificate",
                path: self.cert.clone(),
                message: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsError::File {
                what: "certificate",
                path: self.cert.clone(),
                message: "no CERTIFICATE block in the file".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| TlsError::File {
            what: "key",
            path: self.key.clone(),
            message: e.to_string(),
        })?;
        let mut config = ServerConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| TlsError::Config {
            cert: self.cert.clone(),
            key: self.key.clone(),
            message: e.to_string(),
        })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    fn stamp(&self) -> Option<(SystemTime, SystemTime)> {
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        Some((modified(&self.cert)?, modified(&self.key)?))
    }
}

/// The current acceptor, published to the listeners; `None` when TLS is off.
pub type Acceptors = watch::Receiver<Option<TlsAcceptor>>;

/// Acceptors that never change (TLS off, or tests).
pub fn fixed(acceptor: Option<TlsAcceptor>) -> Acceptors {
    let (tx, rx) = watch::channel(acceptor);
    // Keep the channel open for the life of the process: the receivers see a steady value.
    std::mem::forget(tx);
    rx
}

/// Loads the files and publishes their acceptor; [`Reloader::watch`] keeps it current.
pub struct Reloader {
    files: TlsFiles,
    stamp: Mutex<Option<(SystemTime, SystemTime)>>,
    tx: watch::Sender<Option<TlsAcceptor>>,
}

impl Reloader {
    /// Fails when the files cannot be read now: a server told to use TLS does not start
    /// without it.
    pub fn start(files: TlsFiles) -> Result<(Arc<Self>, Acceptors), TlsError> {
        let stamp = files.stamp();
        let config = files.load()?;
        let (tx, rx) = watch::channel(Some(TlsAcceptor::from(Arc::new(config))));
        Ok((
            Arc::new(Self {
                files,
                stamp: Mutex::new(stamp),
                tx,
            }),
            rx,
        ))
    }

    /// Reads the files again. `Ok(false)`: nothing changed (`force` reloads anyway).
    pub fn reload(&self, force: bool) -> Result<bool, TlsError> {
        let stamp = self.files.stamp();
        if !force && stamp == *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(false);
        }
        let config = self.files.load()?;
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = stamp;
        self.tx
            .send_replace(Some(TlsAcceptor::from(Arc::new(config))));
        Ok(true)
    }

    /// Reloads on SIGHUP and whenever the files' modification times change (checked every
    /// `every`), until `shutdown` turns true.
    pub async fn watch(self: Arc<Self>, every: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let force = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { hangup.as_mut()?.recv().await } => true,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            match self.reload(force) {
                Ok(true) => tracing::info!(
                    cert = %self.files.cert.display(),
                    "TLS certificate reloaded"
                ),
                Ok(false) => {}
                Err(e) => {
                    metrics::counter!("hoistway_tls_reload_failures_total").increment(1);
                    tracing::error!(error = %e, "TLS reload failed; still serving the previous certificate");
                }
            }
        }
    }
}
