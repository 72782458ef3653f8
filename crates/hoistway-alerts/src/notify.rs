//! Notification channels and the dispatcher that drains the outbox into them.
//!
//! The dispatcher reads due notifications from the store, delivers them with bounded
//! concurrency and writes each outcome back: delivered; retried later on a schedule with
//! jitter; dead after the last attempt or when the endpoint answers 410 Gone (which also
//! disables the channel). Delivery is at least once: a crash between a delivery and its write
//! back sends it again, with the same id, so receivers drop the repeat. Nothing here runs on
//! the ingest path; a slow receiver slows only its own deliveries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use hoistway_model::Clock;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::store::{AlertStore, DeliveryState, Notification};
use crate::{Error, Result};

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// Worth another attempt later (timeouts, 5xx, refused connections).
    #[error("{0}")]
    Retry(String),
    /// The receiver asked to stop (HTTP 410 Gone): no more attempts, channel disabled.
    #[error("{0}")]
    Gone(String),
}

/// Where notifications go.
#[async_trait::async_trait]
pub trait Channel: Send + Sync + 'static {
    /// Delivers one notification; `Ok` once the receiver acknowledged it.
    async fn deliver(&self, n: &Notification) -> std::result::Result<(), DeliveryError>;
}

/// A channel as configured (`[[alerts.channels]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChannelConfig {
    /// An HTTP POST signed by the Standard Webhooks convention.
    Webhook {
        name: String,
        url: String,
        /// `whsec_` followed by the base64 of the key (at least 24 bytes).
        secret: String,
        #[serde(default = "ten")]
        timeout_secs: u64,
    },
    /// A line in Hoistway's own log (development).
    Log { name: String },
    /// Mail over SMTP: STARTTLS when the server offers it (`tls = "opportunistic"`), always
    /// (`"required"`), or never (`"none"`, loopback relays only).
    Email {
        name: String,
        host: String,
        #[serde(default = "smtp_port")]
        port: u16,
        #[serde(default)]
        tls: SmtpTls,
        #[serde(default)]
        username: String,
        #[serde(default)]
        password: String,
        from: String,
        to: Vec<String>,
        #[serde(default = "ten")]
        timeout_secs: u64,
    },
    /// Publication to NATS JetStream on `<subject>.<step>` (e.g. `hoistway.alerts.fired`) with
    /// the notification id as `Nats-Msg-Id`, delivered when the stream acknowledges it. The
    /// stream `stream` (covering `<subject>.>`) is created if it does not exist.
    Nats {
        name: String,
        url: String,
        subject: String,
        stream: String,
        #[serde(default = "ten")]
        timeout_secs: u64,
    },
    /// Publication to an MQTT broker on `<topic>/<step>` at QoS 1, delivered on the PUBACK.
    Mqtt {
        name: String,
        host: String,
        #[serde(default = "mqtt_port")]
        port: u16,
        topic: String,
        #[serde(default = "client_id")]
        client_id: String,
        #[serde(default)]
        username: String,
        #[serde(default)]
        password: String,
        /// Connect over TLS (MQTTS, usually port 8883), verifying the broker's certificate.
        #[serde(default)]
        tls: bool,
        /// PEM file of the CA(s) to trust for the broker; empty: the system's roots.
        #[serde(default)]
        ca_file: String,
        #[serde(default = "ten")]
        timeout_secs: u64,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    #[default]
    Opportunistic,
    Required,
    None,
}

fn smtp_port() -> u16 {
    587
}

fn mqtt_port() -> u16 {
    1883
}

fn client_id() -> String {
    "hoistway-alerts".into()
}

fn ten() -> u64 {
    10
}

impl ChannelConfig {
    pub fn name(&self) -> &str {
        match self {
            ChannelConfig::Webhook { name, .. }
            | ChannelConfig::Log { name }
            | ChannelConfig::Email { name, .. }
            | ChannelConfig::Nats { name, .. }
            | ChannelConfig::Mqtt { name, .. } => name,
        }
    }

    /// Builds the channel; the error names what is wrong.
    pub fn build(&self) -> Result<Arc<dyn Channel>> {
        Ok(match self {
            ChannelConfig::Webhook {
                name,
                url,
                secret,
                timeout_secs,
            } => Arc::new(
                Webhook::new(url, secret, Duration::from_secs((*timeout_secs).max(1)))
                    .map_err(|e| Error::Invalid(format!("channel {name:?}: {e}")))?,
            ),
            ChannelConfig::Log { name } => Arc::new(LogChannel { name: name.clone() }),
            ChannelConfig::Email {
                name,
                host,
                port,
                tls,
                username,
                password,
                from,
                to,
                timeout_secs,
            } => Arc::new(
                Email::new(
                    host,
                    *port,
                    *tls,
                    (!username.is_empty()).then(|| (username.clone(), password.clone())),
                    from,
                    to,
                    Duration::from_secs((*timeout_secs).max(1)),
                )
                .map_err(|e| Error::Invalid(format!("channel {name:?}: {e}")))?,
            ),
            ChannelConfig::Nats {
                name,
                url,
                subject,
                stream,
                timeout_secs,
            } => {
                if subject.is_empty() || stream.is_empty() {
                    return Err(Error::Invalid(format!(
                        "channel {name:?}: give a subject and a stream"
                    )));
                }
                Arc::new(Nats {
                    url: url.clone(),
                    subject: subject.clone(),
                    stream: stream.clone(),
                    timeout: Duration::from_secs((*timeout_secs).max(1)),
                    context: tokio::sync::Mutex::new(None),
                })
            }
            ChannelConfig::Mqtt {
                name,
                host,
                port,
                topic,
                client_id,
                username,
                password,
                tls,
                ca_file,
                timeout_secs,
            } => {
                if topic.is_empty() || topic.contains(['#', '+']) {
                    return Err(Error::Invalid(format!(
                        "channel {name:?}: give a topic without wildcards"
                    )));
                }
                let mut options = rumqttc::MqttOptions::new(client_id, host, *port);
                options.set_keep_alive(Duration::from_secs(30));
                if !username.is_empty() {
                    options.set_credentials(username, password);
                }
                if *tls {
                    let config = tls_client_config(ca_file)
                        .map_err(|e| Error::Invalid(format!("channel {name:?}: {e}")))?;
                    options.set_transport(rumqttc::Transport::tls_with_config(
                        rumqttc::TlsConfiguration::Rustls(Arc::new(config)),
                    ));
                } else if !ca_file.is_empty() {
                    return Err(Error::Invalid(format!(
                        "channel {name:?}: ca_file is set but tls is not; set tls = true"
                    )));
                }
                Arc::new(Mqtt {
                    options,
                    topic: topic.clone(),
                    timeout: Duration::from_secs((*timeout_secs).max(1)),
                    connection: tokio::sync::Mutex::new(None),
                })
            }
        })
    }
}

/// A TLS client set-up that trusts the CAs in `ca_file` (PEM), or the system's roots when it is
/// empty. Errors name what could not be read.
fn tls_client_config(
    ca_file: &str,
) -> std::result::Result<tokio_rustls::rustls::ClientConfig, String> {
    use tokio_rustls::rustls::{
        self, RootCertStore, pki_types::CertificateDer, pki_types::pem::PemObject,
    };
    let mut roots = RootCertStore::empty();
    if ca_file.is_empty() {
        let found = rustls_native_certs::load_native_certs();
        if found.certs.is_empty() {
            return Err(format!(
                "no trusted CA certificates found on this system ({:?}); give ca_file",
                found.errors
            ));
        }
        roots.add_parsable_certificates(found.certs);
    } else {
        let certs = CertificateDer::pem_file_iter(ca_file)
            .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| format!("ca_file {ca_file:?}: {e}"))?;
        if certs.is_empty() {
            return Err(format!("ca_file {ca_file:?} holds no certificate"));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("ca_file {ca_file:?}: {e}"))?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// Writes each notification to the log.
pub struct LogChannel {
    name: String,
}

#[async_trait::async_trait]
impl Channel for LogChannel {
    async fn deliver(&self, n: &Notification) -> std::result::Result<(), DeliveryError> {
        tracing::info!(
            channel = %self.name,
            id = %n.id,
            alert = n.alert_id,
            event = n.event.as_str(),
            payload = %n.payload,
            "alert notification"
        );
        Ok(())
    }
}

/// Standard Webhooks 1.0: `webhook-id`, `webhook-timestamp` (Unix seconds) and
/// `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
pub struct Webhook {
    url: reqwest::Url,
    key: Vec<u8>,
    client: reqwest::Client,
}

impl Webhook {
    pub fn new(url: &str, secret: &str, timeout: Duration) -> std::result::Result<Self, String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("url {url:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("url {url} is not http or https"));
        }
        let key = secret
            .strip_prefix("whsec_")
            .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
            .filter(|k| k.len() >= 24)
            .ok_or("secret must be whsec_ followed by the base64 of at least 24 bytes")?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { url, key, client })
    }

    /// The `webhook-signature` value of a message.
    pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let sig = mac.finalize().into_bytes();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(sig)
        )
    }
}

#[async_trait::async_trait]
impl Channel for Webhook {
    async fn deliver(&self, n: &Notification) -> std::result::Result<(), DeliveryError> {
        let body = serde_json::to_vec(&n.payload).expect("payload serialises");
        let timestamp = hoistway_model::time::now_us() / 1_000_000;
        let response = self
            .client
            .post(self.url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", &n.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                Self::sign(&self.key, &n.id, timestamp, &body),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| DeliveryError::Retry(format!("POST {}: {e}", self.url)))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status == reqwest::StatusCode::GONE {
            Err(DeliveryError::Gone(format!(
                "{} answered 410 Gone",
                self.url
            )))
        } else {
            Err(DeliveryError::Retry(format!(
                "{} answered {status}",
                self.url
            )))
        }
    }
}

/// The subject line and text of a notification (mail).
fn describe(n: &Notification) -> (String, String) {
    let data = &n.payload["data"];
    let text = |k: &str| data[k].as_str().unwrap_or_default().to_string();
    let lift = match text("lift_id") {
        l if l.is_empty() => "the fleet".to_string(),
        l => format!("lift {l}"),
    };
    let subject = format!(
        "[Hoistway] {} {}: {} on {lift}",
        text("severity"),
        n.event.as_str(),
        text("rule_name")
    );
    let body = format!(
        "{subject}\n\n{}\n\ncustomer: {}\nbuilding: {}\nalert: {}\nnotification: {}\n\n{}\n",
        text("summary"),
        text("customer"),
        text("building"),
        data["id"],
        n.id,
        serde_json::to_string_pretty(&n.payload).unwrap_or_default()
    );
    (subject, body)
}

/// Mail over SMTP (lettre). The `Message-ID` is the notification id, so a repeat is visible.
pub struct Email {
    transport: lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    from: lettre::message::Mailbox,
    to: Vec<lettre::message::Mailbox>,
}

impl Email {
    pub fn new(
        host: &str,
        port: u16,
        tls: SmtpTls,
        credentials: Option<(String, String)>,
        from: &str,
        to: &[String],
        timeout: Duration,
    ) -> std::result::Result<Self, String> {
        use lettre::transport::smtp::client::{Tls, TlsParameters};
        let parameters = || TlsParameters::new(host.to_string()).map_err(|e| e.to_string());
        let tls = match tls {
            SmtpTls::Opportunistic => Tls::Opportunistic(parameters()?),
            SmtpTls::Required => Tls::Required(parameters()?),
            SmtpTls::None => Tls::None,
        };
        let mut builder =
            lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous(host)
                .port(port)
                .tls(tls)
                .timeout(Some(timeout));
        if let Some((user, password)) = credentials {
            builder = builder.credentials(
                lettre::transport::smtp::authentication::Credentials::new(user, password),
            );
        }
        let from = from
            .parse()
            .map_err(|e| format!("from {from:?} is not an address: {e}"))?;
        let to = to
            .iter()
            .map(|t| {
                t.parse()
                    .map_err(|e| format!("to {t:?} is not an address: {e}"))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if to.is_empty() {
            return Err("give at least one address in `to`".into());
        }
        Ok(Self {
            transport: builder.build(),
            from,
            to,
        })
    }
}

#[async_trait::async_trait]
impl Channel for Email {
    async fn deliver(&self, n: &Notification) -> std::result::Result<(), DeliveryError> {
        use lettre::AsyncTransport;
        let (subject, body) = describe(n);
        let mut message = lettre::Message::builder()
            .message_id(Some(format!("<{}@hoistway>", n.id)))
            .from(self.from.clone())
            .subject(subject)
            .header(lettre::message::header::ContentType::TEXT_PLAIN);
        for to in &self.to {
            message = message.to(to.clone());
        }
        let message = message
            .body(body)
            .map_err(|e| DeliveryError::Retry(format!("cannot build the mail: {e}")))?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| DeliveryError::Retry(format!("SMTP: {e}")))
    }
}

/// NATS JetStream publication, acknowledged by the stream.
pub struct Nats {
    url: String,
    subject: String,
    stream: String,
    timeout: Duration,
    context: tokio::sync::Mutex<Option<async_nats::jetstream::Context>>,
}

impl Nats {
    async fn context(&self) -> std::result::Result<async_nats::jetstream::Context, String> {
        let mut slot = self.context.lock().await;
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(self.timeout)
            .connect(self.url.as_str())
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.url))?;
        let mut context = async_nats::jetstream::new(client);
        context.set_timeout(self.timeout);
        context
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: self.stream.clone(),
                subjects: vec![format!("{}.>", self.subject)],
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot find or create the stream {}: {e}", self.stream))?;
        *slot = Some(context.clone());
        Ok(context)
    }
}

#[async_trait::async_trait]
impl Channel for Nats {
    async fn deliver(&self, n: &Notification) -> std::result::Result<(), DeliveryError> {
        let context = self.context().await.map_err(DeliveryError::Retry)?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", n.id.as_str());
        let body = serde_json::to_vec(&n.payload).expect("payload serialises");
        let subject = format!("{}.{}", self.subject, n.event.as_str());
        let ack = context
            .publish_with_headers(subject, headers, body.into())
            .await
            .map_err(|e| DeliveryError::Retry(format!("NATS publish: {e}")))?;
        match ack.await {
            Ok(_) => Ok(()),
            Err(e) => {
                // The connection may be gone: connect again next time.
                self.context.lock().await.take();
                Err(DeliveryError::Retry(format!(
                    "NATS publish not acknowledged: {e}"
                )))
            }
        }
    }
}

/// MQTT publication at QoS 1. Deliveries on one channel go one at a time over one connection,
/// each waiting for its PUBACK.
pub struct Mqtt {
    options: rumqttc::MqttOptions,
    topic: String,
    timeout: Duration,
    connection: tokio::sync::Mutex<Option<(rumqttc::AsyncClient, rumqttc::EventLoop)>>,
}

#[async_trait::async_trait]
impl Channel for Mqtt {
    async fn deliver(&self, n: &Notification) -> std::result::Result<(), DeliveryError> {
        use rumqttc::{Event, Outgoing, Packet, QoS};
        let mut slot = self.connection.lock().await;
        let (client, events) =
            slot.get_or_insert_with(|| rumqttc::AsyncClient::new(self.options.clone(), 16));
        let body = serde_json::to_vec(&n.payload).expect("payload serialises");
        let topic = format!("{}/{}", self.topic, n.event.as_str());
        let client = client.clone();
        let acked = async {
            client
                .publish(topic, QoS::AtLeastOnce, false, body)
                .await
                .map_err(|e| format!("MQTT publish: {e}"))?;
            let mut ours = None;
            loop {
                match events.poll().await {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) if ours.is_none() => {
                        ours = Some(pkid)
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) if Some(ack.pkid) == ours => {
                        return Ok(());
                    }
                    Ok(_) => {}
                    Err(e) => return Err(format!("MQTT connection: {e}")),
                }
            }
        };
        let outcome = match tokio::time::timeout(self.timeout, acked).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("no PUBACK within {:?}", self.timeout)),
        };
        if outcome.is_err() {
            // Start over with a fresh connection next time.
            *slot = None;
        }
        outcome.map_err(DeliveryError::Retry)
    }
}

/// Standard Webhooks' suggested schedule: the delays before the second, third, … attempt.
pub const DEFAULT_SCHEDULE_SECS: [f64; 7] = [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0];

/// Drains the outbox.
pub struct Dispatcher {
    store: Arc<dyn AlertStore>,
    channels: HashMap<String, Arc<dyn Channel>>,
    schedule: Vec<Duration>,
    clock: Arc<dyn Clock>,
    wake: Arc<Notify>,
}

/// Deliveries in flight at once.
const CONCURRENCY: usize = 32;

impl Dispatcher {
    pub fn new(
        store: Arc<dyn AlertStore>,
        channels: HashMap<String, Arc<dyn Channel>>,
        schedule: Vec<Duration>,
        clock: Arc<dyn Clock>,
        wake: Arc<Notify>,
    ) -> Self {
        // Every channel's series exist from the start, so a dashboard's rates read zero, not
        // nothing, until the first delivery or failure.
        for name in channels.keys() {
            let labels = [("channel", name.clone())];
            for counter in [
                "hoistway_notifications_delivered_total",
                "hoistway_notification_failures_total",
                "hoistway_notifications_dead_total",
            ] {
                metrics::counter!(counter, &labels).increment(0);
            }
        }
        Self {
            store,
            channels,
            schedule,
            clock,
            wake,
        }
    }

    /// Delivers what is due until shutdown.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let (_always, active) = watch::channel(true);
        self.run_when(active, shutdown).await
    }

    /// As [`Dispatcher::run`], sending only while `active` says so (the one node of several
    /// that dispatches; the others wait).
    pub async fn run_when(
        self,
        mut active: watch::Receiver<bool>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let this = Arc::new(self);
        loop {
            if *shutdown.borrow() {
                return;
            }
            if !*active.borrow_and_update() {
                tokio::select! {
                    changed = active.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let wait = match this.clone().pass().await {
                Ok(true) => continue,
                Ok(false) => {
                    let store = this.store.clone();
                    let next = tokio::task::spawn_blocking(move || store.next_due())
                        .await
                        .ok()
                        .and_then(|r| r.ok())
                        .flatten();
                    let now = this.clock.now_us();
                    next.map_or(Duration::from_secs(1), |at| {
                        Duration::from_micros((at - now).clamp(1_000, 1_000_000) as u64)
                    })
                }
                Err(e) => {
                    tracing::error!(error = %e, "notification outbox unreadable; retrying");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = this.wake.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// One pass over what is due; `true` if it found some (look again at once).
    pub async fn pass(self: Arc<Self>) -> Result<bool> {
        let now = self.clock.now_us();
        let store = self.store.clone();
        let due = tokio::task::spawn_blocking(move || {
            let disabled = store.disabled_channels()?;
            Ok::<_, Error>((store.due(now, CONCURRENCY * 4)?, disabled))
        })
        .await
        .map_err(|e| Error::Storage(e.to_string()))??;
        let (due, disabled) = due;
        if due.is_empty() {
            return Ok(false);
        }
        let semaphore = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        for n in due {
            let this = self.clone();
            let permit = semaphore.clone().acquire_owned().await.expect("open");
            let off = disabled
                .iter()
                .find(|(c, _)| *c == n.channel)
                .map(|(_, why)| why.clone());
            tasks.spawn(async move {
                let _permit = permit;
                this.attempt(n, off).await
            });
        }
        while let Some(done) = tasks.join_next().await {
            if let Ok(Err(e)) = done {
                tracing::error!(error = %e, "cannot record a delivery");
            }
        }
        Ok(true)
    }

    async fn attempt(&self, mut n: Notification, disabled: Option<String>) -> Result<()> {
        let outcome = match (disabled, self.channels.get(&n.channel)) {
            (Some(why), _) => Err(DeliveryError::Gone(format!("channel disabled: {why}"))),
            (None, None) => Err(DeliveryError::Gone(format!(
                "no channel named {:?} is configured",
                n.channel
            ))),
            (None, Some(channel)) => {
                n.attempts += 1;
                channel.deliver(&n).await
            }
        };
        let now = self.clock.now_us();
        let labels = [("channel", n.channel.clone())];
        match outcome {
            Ok(()) => {
                n.state = DeliveryState::Delivered;
                n.delivered_us = Some(now);
                n.last_error = None;
                metrics::counter!("hoistway_notifications_delivered_total", &labels).increment(1);
                metrics::histogram!("hoistway_notification_delay_seconds", &labels)
                    .record((now - n.created_us).max(0) as f64 / 1e6);
            }
            Err(DeliveryError::Gone(why)) => {
                n.state = DeliveryState::Dead;
                n.last_error = Some(why.clone());
                metrics::counter!("hoistway_notifications_dead_total", &labels).increment(1);
                if self.channels.contains_key(&n.channel) {
                    let store = self.store.clone();
                    let channel = n.channel.clone();
                    tokio::task::spawn_blocking(move || {
                        store.set_channel_disabled(&channel, Some(&why))
                    })
                    .await
                    .map_err(|e| Error::Storage(e.to_string()))??;
                }
                tracing::warn!(id = %n.id, channel = %n.channel, error = ?n.last_error, "notification dead");
            }
            Err(DeliveryError::Retry(why)) => {
                metrics::counter!("hoistway_notification_failures_total", &labels).increment(1);
                n.last_error = Some(why);
                match self.schedule.get(n.attempts as usize - 1) {
                    Some(delay) => {
                        let jitter = rand::random_range(0.9..1.1);
                        n.next_us = now + (delay.as_micros() as f64 * jitter) as i64;
                    }
                    None => {
                        n.state = DeliveryState::Dead;
                        metrics::counter!("hoistway_notifications_dead_total", &labels)
                            .increment(1);
                        tracing::warn!(id = %n.id, channel = %n.channel, error = ?n.last_error, "notification dead after its last attempt");
                    }
                }
            }
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.update_notification(&n))
            .await
            .map_err(|e| Error::Storage(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn signatures_follow_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let key = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
        .unwrap();
        let sig = super::Webhook::sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
