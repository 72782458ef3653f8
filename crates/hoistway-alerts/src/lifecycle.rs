//! The alert lifecycle, written once against [`AlertTx`]: firing → acknowledged → resolved, one
//! open alert per (lift, rule), re-fires counted instead of new alerts, and the notifications
//! each step makes, recorded in the same transaction (the outbox).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::rule::Severity;
use crate::store::{
    Alert, AlertEvent, AlertState, AlertTx, DeliveryState, EventKind, Notification, Stamp,
};
use crate::{Error, Result};

/// The actor of what Hoistway does by itself.
pub const SYSTEM: &str = "hoistway";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Fire,
    Clear,
}

/// What the engine saw: a rule's condition began or ended on a lift.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Deterministic for the same readings in the same order: a change made again after a
    /// crash (the records after the last checkpoint are replayed) is recognised and skipped.
    pub key: String,
    pub kind: ChangeKind,
    pub rule: String,
    pub rule_name: String,
    pub severity: Severity,
    pub hold_secs: u64,
    pub lift_id: String,
    pub customer: String,
    pub building: String,
    pub model: String,
    pub at_us: i64,
    pub summary: String,
    pub value: Option<f64>,
}

/// Sends alert events of some kind to a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub channel: String,
    /// The least severity sent.
    #[serde(default = "info")]
    pub min_severity: Severity,
    /// Only these customers' alerts (empty: all).
    #[serde(default)]
    pub customers: Vec<String>,
    #[serde(default)]
    pub buildings: Vec<String>,
    #[serde(default)]
    pub rules: Vec<String>,
    /// Which steps are sent (default: fired, acknowledged and resolved).
    #[serde(default = "default_events")]
    pub events: Vec<EventKind>,
}

fn info() -> Severity {
    Severity::Info
}

fn default_events() -> Vec<EventKind> {
    vec![
        EventKind::Fired,
        EventKind::Acknowledged,
        EventKind::Resolved,
    ]
}

impl Route {
    fn matches(&self, alert: &Alert, event: EventKind) -> bool {
        fn any(list: &[String], v: &str) -> bool {
            list.is_empty() || list.iter().any(|x| x == v)
        }
        alert.severity >= self.min_severity
            && any(&self.customers, &alert.customer)
            && any(&self.buildings, &alert.building)
            && any(&self.rules, &alert.rule)
            && self.events.contains(&event)
    }
}

/// A firing alert of at least `min_severity` that nobody acknowledged within `after_secs` is
/// sent to `channel` (once per escalation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Escalation {
    pub channel: String,
    #[serde(default = "critical")]
    pub min_severity: Severity,
    pub after_secs: u64,
}

fn critical() -> Severity {
    Severity::Critical
}

/// Escalates `alert` (if still firing) by each escalation that is due and not yet done.
/// Returns whether anything was escalated.
pub fn escalate(
    tx: &mut dyn AlertTx,
    alert_id: i64,
    escalations: &[Escalation],
    now_us: i64,
) -> Result<bool> {
    let Some(alert) = tx.alert(alert_id)? else {
        return Ok(false);
    };
    if alert.state != AlertState::Firing {
        return Ok(false);
    }
    let mut any = false;
    for (i, e) in escalations.iter().enumerate() {
        if alert.severity < e.min_severity
            || now_us - alert.fired_us < e.after_secs as i64 * 1_000_000
        {
            continue;
        }
        let key = format!("escalate/{alert_id}/{i}");
        if tx.event_exists(&key)? {
            continue;
        }
        tx.insert_event(&AlertEvent {
            alert_id,
            key: Some(key.clone()),
            kind: EventKind::Escalated,
            at_us: now_us,
            by: SYSTEM.into(),
            note: format!(
                "not acknowledged within {} s; sent to {}",
                e.after_secs, e.channel
            ),
        })?;
        let route = Route {
            channel: e.channel.clone(),
            min_severity: e.min_severity,
            customers: vec![],
            buildings: vec![],
            rules: vec![],
            events: vec![EventKind::Escalated],
        };
        for n in notifications(&[route], &alert, EventKind::Escalated, &key, now_us) {
            tx.enqueue(&n)?;
        }
        any = true;
    }
    Ok(any)
}

/// The notification a step makes on each route it matches.
pub fn notifications(
    routes: &[Route],
    alert: &Alert,
    event: EventKind,
    key: &str,
    now_us: i64,
) -> Vec<Notification> {
    let payload = serde_json::json!({
        "type": format!("alert.{}", event.as_str()),
        "timestamp": hoistway_model::time::format_micros(now_us),
        "data": alert,
    });
    routes
        .iter()
        .filter(|r| r.matches(alert, event))
        .map(|r| {
            let digest = Sha256::digest(format!(
                "{}\n{}\n{}\n{}",
                alert.id,
                event.as_str(),
                key,
                r.channel
            ));
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            Notification {
                id: format!("msg_{hex}"),
                channel: r.channel.clone(),
                alert_id: alert.id,
                event,
                payload: payload.clone(),
                created_us: now_us,
                state: DeliveryState::Pending,
                attempts: 0,
                next_us: now_us,
                last_error: None,
                delivered_us: None,
            }
        })
        .collect()
}

/// Applies one engine change. `None`: nothing to do (already applied, or a clear with no open
/// alert).
pub fn apply(
    tx: &mut dyn AlertTx,
    change: &Change,
    routes: &[Route],
    quiet: bool,
) -> Result<Option<(Alert, EventKind)>> {
    if tx.event_exists(&change.key)? {
        return Ok(None);
    }
    let latest = tx.latest(&change.rule, &change.lift_id)?;
    let (alert, event, notify) = match (change.kind, latest) {
        (ChangeKind::Fire, Some(mut a)) if a.state.is_open() => {
            a.refires += 1;
            a.last_fired_us = change.at_us;
            a.value = change.value.or(a.value);
            tx.update_alert(&a)?;
            (a, EventKind::Refired, false)
        }
        (ChangeKind::Fire, Some(mut a))
            if change.hold_secs > 0
                && a.resolved.as_ref().is_some_and(|r| {
                    r.by == SYSTEM && change.at_us - r.at_us < change.hold_secs as i64 * 1_000_000
                }) =>
        {
            a.state = AlertState::Firing;
            a.resolved = None;
            a.acknowledged = None;
            a.refires += 1;
            a.last_fired_us = change.at_us;
            tx.update_alert(&a)?;
            (a, EventKind::Reopened, false)
        }
        (ChangeKind::Fire, _) => {
            let mut a = Alert {
                id: 0,
                rule: change.rule.clone(),
                rule_name: change.rule_name.clone(),
                severity: change.severity,
                lift_id: change.lift_id.clone(),
                customer: change.customer.clone(),
                building: change.building.clone(),
                model: change.model.clone(),
                state: AlertState::Firing,
                summary: change.summary.clone(),
                value: change.value,
                fired_us: change.at_us,
                last_fired_us: change.at_us,
                refires: 0,
                acknowledged: None,
                resolved: None,
            };
            if change.severity == Severity::Info {
                // Informational ("lift started"): a notification and a record, nothing to act on.
                a.state = AlertState::Resolved;
                a.resolved = Some(Stamp {
                    by: SYSTEM.into(),
                    at_us: change.at_us,
                    note: "informational".into(),
                });
            }
            a.id = tx.insert_alert(&a)?;
            (a, EventKind::Fired, true)
        }
        (ChangeKind::Clear, Some(mut a)) if a.state.is_open() => {
            a.state = AlertState::Resolved;
            a.resolved = Some(Stamp {
                by: SYSTEM.into(),
                at_us: change.at_us,
                note: change.summary.clone(),
            });
            tx.update_alert(&a)?;
            (a, EventKind::Resolved, true)
        }
        (ChangeKind::Clear, _) => return Ok(None),
    };
    tx.insert_event(&AlertEvent {
        alert_id: alert.id,
        key: Some(change.key.clone()),
        kind: event,
        at_us: change.at_us,
        by: SYSTEM.into(),
        note: change.summary.clone(),
    })?;
    if notify && !quiet {
        for n in notifications(routes, &alert, event, &change.key, change.at_us) {
            tx.enqueue(&n)?;
        }
    }
    Ok(Some((alert, event)))
}

/// A person acknowledges (`resolve == false`) or resolves an alert.
pub fn act(
    tx: &mut dyn AlertTx,
    id: i64,
    resolve: bool,
    by: &str,
    note: &str,
    now_us: i64,
    routes: &[Route],
) -> Result<Alert> {
    let mut alert = tx
        .alert(id)?
        .ok_or_else(|| Error::NotFound(format!("alert {id} does not exist")))?;
    let stamp = Stamp {
        by: by.into(),
        at_us: now_us,
        note: note.into(),
    };
    let event = if resolve {
        if !alert.state.is_open() {
            return Err(Error::Conflict(format!("alert {id} is already resolved")));
        }
        alert.state = AlertState::Resolved;
        alert.resolved = Some(stamp);
        EventKind::Resolved
    } else {
        if alert.state != AlertState::Firing {
            return Err(Error::Conflict(format!(
                "alert {id} is {}, not firing",
                alert.state.as_str()
            )));
        }
        alert.state = AlertState::Acknowledged;
        alert.acknowledged = Some(stamp);
        EventKind::Acknowledged
    };
    tx.update_alert(&alert)?;
    tx.insert_event(&AlertEvent {
        alert_id: id,
        key: None,
        kind: event,
        at_us: now_us,
        by: by.into(),
        note: note.into(),
    })?;
    let key = format!("{by}@{now_us}");
    for n in notifications(routes, &alert, event, &key, now_us) {
        tx.enqueue(&n)?;
    }
    Ok(alert)
}
