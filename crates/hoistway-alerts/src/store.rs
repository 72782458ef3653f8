//! The seam to where alert state lives: rules, alerts, their events, the notification outbox,
//! and the engine's snapshot.
//!
//! [`AlertStore::transact`] runs a closure over an [`AlertTx`] in one transaction: everything
//! it wrote becomes durable together when it returns `Ok`, or nothing does. The lifecycle
//! (`crate::lifecycle`) is written against `AlertTx`, so the policy (one open alert per lift
//! and rule, flapping, which notifications a change makes) is the same for every backend.
//! Calls block: async callers use `spawn_blocking`.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::rule::{Rule, Severity};

/// Timestamps as RFC 3339 with microseconds (the API's form), kept as µs since the epoch.
pub(crate) mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(us: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hoistway_model::time::format_micros(*us))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let text = String::deserialize(d)?;
        chrono::DateTime::parse_from_rfc3339(&text)
            .map(|t| t.timestamp_micros())
            .map_err(|e| D::Error::custom(format!("{text:?} is not an RFC 3339 time: {e}")))
    }

    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(us: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
            match us {
                Some(us) => super::serialize(us, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
            #[derive(Deserialize)]
            struct Wrap(#[serde(with = "super")] i64);
            Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Firing,
    Acknowledged,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Acknowledged => "acknowledged",
            AlertState::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "firing" => Some(Self::Firing),
            "acknowledged" => Some(Self::Acknowledged),
            "resolved" => Some(Self::Resolved),
            _ => None,
        }
    }

    pub fn is_open(self) -> bool {
        self != AlertState::Resolved
    }
}

/// Who did something to an alert, when, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Stamp {
    pub by: String,
    #[serde(rename = "at", with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at_us: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// One alert: a rule's condition on one lift (or the fleet, `lift_id` empty), from firing to
/// resolution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Alert {
    /// Assigned by the store on insert.
    pub id: i64,
    pub rule: String,
    pub rule_name: String,
    pub severity: Severity,
    pub lift_id: String,
    pub customer: String,
    pub building: String,
    pub model: String,
    pub state: AlertState,
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(rename = "fired_at", with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub fired_us: i64,
    #[serde(rename = "last_fired_at", with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub last_fired_us: i64,
    /// Fires of the same condition while open (or within the rule's hold time after it
    /// resolved), counted instead of new alerts.
    pub refires: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<Stamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved: Option<Stamp>,
}

/// What happened to an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = AlertEventKind)]
pub enum EventKind {
    Fired,
    Refired,
    Reopened,
    Acknowledged,
    Resolved,
    /// Firing and not acknowledged in time: sent to the next route.
    Escalated,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Fired => "fired",
            EventKind::Refired => "refired",
            EventKind::Reopened => "reopened",
            EventKind::Acknowledged => "acknowledged",
            EventKind::Resolved => "resolved",
            EventKind::Escalated => "escalated",
        }
    }
}

/// One line of an alert's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertEvent {
    pub alert_id: i64,
    /// The idempotence key of the change that made it (`None` for a person's action): a
    /// change replayed after a crash finds its key and is not applied twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub kind: EventKind,
    #[serde(rename = "at", with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at_us: i64,
    pub by: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Delivered,
    /// Gave up (last attempt failed, or the endpoint said 410 Gone); replay sends it again.
    Dead,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "delivered" => Some(Self::Delivered),
            "dead" => Some(Self::Dead),
            _ => None,
        }
    }
}

/// One message to one channel, in the outbox. `id` is stable across retries and replays
/// (the webhook-id, the JetStream message id): receivers drop repeats by it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Notification {
    pub id: String,
    pub channel: String,
    pub alert_id: i64,
    pub event: EventKind,
    /// The JSON document sent.
    pub payload: serde_json::Value,
    #[serde(rename = "created_at", with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_us: i64,
    pub state: DeliveryState,
    pub attempts: u32,
    /// When the next attempt is due (pending).
    #[serde(rename = "next_at", with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub next_us: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(
        default,
        rename = "delivered_at",
        with = "rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub delivered_us: Option<i64>,
}

/// A period in which matching alerts are recorded but notify nobody (maintenance work, a known
/// outage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Silence {
    /// Assigned by the store.
    #[serde(default)]
    pub id: i64,
    /// Only this rule's alerts (none: every rule's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Which lifts (none given: the whole fleet).
    #[serde(default)]
    pub scope: crate::rule::Scope,
    #[serde(rename = "starts_at", with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub starts_us: i64,
    #[serde(rename = "ends_at", with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub ends_us: i64,
    #[serde(default)]
    pub by: String,
    #[serde(default)]
    pub reason: String,
}

impl Silence {
    /// Whether the change goes quiet.
    pub fn covers(&self, c: &crate::lifecycle::Change) -> bool {
        (self.starts_us..self.ends_us).contains(&c.at_us)
            && self.rule.as_deref().is_none_or(|r| r == c.rule)
            && self
                .scope
                .matches_parts(&c.lift_id, &c.customer, &c.building, &c.model)
    }
}

/// A filter over alerts. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AlertQuery {
    /// `open` (firing or acknowledged) is spelled `open`; otherwise one state.
    pub state: Option<String>,
    pub severity: Option<Severity>,
    pub customer: Option<String>,
    pub building: Option<String>,
    pub lift: Option<String>,
    pub rule: Option<String>,
    /// Alerts with an id below this one (the previous page's `next_before`).
    pub before: Option<i64>,
    pub limit: Option<usize>,
}

impl AlertQuery {
    /// The filter in SQL over an alert table's columns (`id`, `state`, `severity`, `customer`,
    /// `building`, `lift_id`, `rule`), newest first: the text after `WHERE`, written with
    /// `placeholder(n)` for the n-th argument, and the arguments from the second on (the first
    /// is `before`, [`Self::before_id`]). One place for what the filter means, for every store.
    pub fn to_sql(&self, placeholder: impl Fn(usize) -> String) -> (String, Vec<String>) {
        let mut sql = format!("id < {}", placeholder(1));
        if self.state.as_deref() == Some("open") {
            sql.push_str(" AND state IN ('firing', 'acknowledged')");
        }
        let mut args: Vec<String> = Vec::new();
        let mut add = |column: &str, value: Option<&str>| {
            if let Some(v) = value {
                args.push(v.to_string());
                sql.push_str(&format!(" AND {column} = {}", placeholder(args.len() + 1)));
            }
        };
        add("state", self.state.as_deref().filter(|s| *s != "open"));
        add("severity", self.severity.map(Severity::as_str));
        add("customer", self.customer.as_deref());
        add("building", self.building.as_deref());
        add("lift_id", self.lift.as_deref());
        add("rule", self.rule.as_deref());
        sql.push_str(&format!(
            " ORDER BY id DESC LIMIT {}",
            self.limit.unwrap_or(100).clamp(1, 1000)
        ));
        (sql, args)
    }

    /// The first argument of [`Self::to_sql`].
    pub fn before_id(&self) -> i64 {
        self.before.unwrap_or(i64::MAX)
    }
}

/// One transaction of an [`AlertStore`].
pub trait AlertTx {
    /// Whether an event with this idempotence key was recorded.
    fn event_exists(&mut self, key: &str) -> Result<bool>;
    /// The newest alert of `rule` on `lift_id` (open or not).
    fn latest(&mut self, rule: &str, lift_id: &str) -> Result<Option<Alert>>;
    fn alert(&mut self, id: i64) -> Result<Option<Alert>>;
    /// Inserts `alert` (its `id` ignored) and returns the id given.
    fn insert_alert(&mut self, alert: &Alert) -> Result<i64>;
    fn update_alert(&mut self, alert: &Alert) -> Result<()>;
    fn insert_event(&mut self, event: &AlertEvent) -> Result<()>;
    /// Adds a notification to the outbox; one with the same id already there is kept.
    fn enqueue(&mut self, notification: &Notification) -> Result<()>;
    /// Sets a value of the store's key-value metadata (engine snapshot, seeded flag).
    fn put_meta(&mut self, key: &str, value: &[u8]) -> Result<()>;

    // The set-based forms the lifecycle uses for a batch of changes. Each defaults to a loop
    // over the one-at-a-time calls (right for an embedded store, where a call costs no round
    // trip); a networked store answers each in one statement.

    /// Which of `keys` were recorded as event keys.
    fn existing_events(&mut self, keys: &[&str]) -> Result<HashSet<String>> {
        let mut found = HashSet::new();
        for key in keys {
            if self.event_exists(key)? {
                found.insert((*key).to_string());
            }
        }
        Ok(found)
    }
    /// The newest alert of each `(rule, lift_id)` that has one, in no particular order.
    fn latest_of(&mut self, pairs: &[(&str, &str)]) -> Result<Vec<Alert>> {
        let mut found = Vec::new();
        for (rule, lift_id) in pairs {
            found.extend(self.latest(rule, lift_id)?);
        }
        Ok(found)
    }
    /// Inserts `alerts` in order, setting the id each was given (ascending).
    fn insert_alerts(&mut self, alerts: &mut [Alert]) -> Result<()> {
        for a in alerts.iter_mut() {
            a.id = self.insert_alert(a)?;
        }
        Ok(())
    }
    fn update_alerts(&mut self, alerts: &[Alert]) -> Result<()> {
        alerts.iter().try_for_each(|a| self.update_alert(a))
    }
    /// Inserts `events` in order.
    fn insert_events(&mut self, events: &[AlertEvent]) -> Result<()> {
        events.iter().try_for_each(|e| self.insert_event(e))
    }
    /// [`Self::enqueue`] for each, in order.
    fn enqueue_all(&mut self, notifications: &[Notification]) -> Result<()> {
        notifications.iter().try_for_each(|n| self.enqueue(n))
    }
}

/// Where alert state lives.
pub trait AlertStore: Send + Sync + 'static {
    /// Runs `f` in one transaction: all it wrote is durable when this returns `Ok`.
    fn transact(&self, f: &mut dyn FnMut(&mut dyn AlertTx) -> Result<()>) -> Result<()>;

    fn alert(&self, id: i64) -> Result<Option<Alert>>;
    /// Newest first.
    fn list(&self, query: &AlertQuery) -> Result<Vec<Alert>>;
    /// The events of an alert, oldest first.
    fn events(&self, alert_id: i64) -> Result<Vec<AlertEvent>>;
    /// Events of every alert recorded after `cursor`, oldest first, at most `limit`, with the
    /// cursor to pass next; without a cursor, none and the cursor of the newest event (where a
    /// reader starts following). For nodes that show changes recorded by another one.
    fn events_since(&self, cursor: Option<i64>, limit: usize) -> Result<(i64, Vec<AlertEvent>)>;
    /// Open alerts by severity: all, or one customer's.
    fn open_counts(&self, customer: Option<&str>) -> Result<Vec<(Severity, u64)>>;
    /// Open alerts of one rule (the engine's start: which lifts are offline).
    fn open_of_rule(&self, rule: &str) -> Result<Vec<Alert>>;

    fn rules(&self) -> Result<Vec<Rule>>;
    /// Adds or replaces a rule; `true` when it is new.
    fn put_rule(&self, rule: &Rule) -> Result<bool>;
    fn delete_rule(&self, id: &str) -> Result<bool>;

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>>;

    /// Pending notifications due at `now_us`, oldest first.
    fn due(&self, now_us: i64, limit: usize) -> Result<Vec<Notification>>;
    /// The earliest `next_us` of a pending notification.
    fn next_due(&self) -> Result<Option<i64>>;
    /// Writes a notification's delivery state back.
    fn update_notification(&self, notification: &Notification) -> Result<()>;
    fn notification(&self, id: &str) -> Result<Option<Notification>>;
    /// Newest first, optionally of one state.
    fn notifications(
        &self,
        state: Option<DeliveryState>,
        limit: usize,
    ) -> Result<Vec<Notification>>;
    /// Deletes alerts resolved before `alerts_before_us` (with their events) and delivered or
    /// dead notifications created before `outbox_before_us`; returns how many of each.
    fn prune(&self, alerts_before_us: i64, outbox_before_us: i64) -> Result<(u64, u64)>;
    /// Every silence (past ones too, until pruned), by id.
    fn silences(&self) -> Result<Vec<Silence>>;
    /// Adds a silence; returns its id.
    fn add_silence(&self, silence: &Silence) -> Result<i64>;
    fn delete_silence(&self, id: i64) -> Result<bool>;
    /// Channels disabled by a 410 Gone, with the reason.
    fn disabled_channels(&self) -> Result<Vec<(String, String)>>;
    /// Disables (`Some(reason)`) or enables a channel.
    fn set_channel_disabled(&self, channel: &str, reason: Option<&str>) -> Result<()>;
}
