//! The alert lifecycle, written once against [`AlertTx`]: firing → acknowledged → resolved, one
//! open alert per (lift, rule), re-fires counted instead of new alerts, and the notifications
//! each step makes, recorded in the same transaction (the outbox).

use std::collections::HashMap;

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
    /// Hours in which this route holds its notifications back (below `except_from`) until
    /// the hours end; nothing is dropped.
    #[serde(default)]
    pub quiet_hours: Option<QuietHours>,
}

/// A daily period of local time, e.g. 22:00 to 07:00 in Europe/Berlin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// Start, `HH:MM` local time.
    pub from: String,
    /// End (exclusive), `HH:MM` local time; before `from` means the hours span midnight.
    pub to: String,
    /// IANA time zone name (default `UTC`); daylight saving time is followed.
    #[serde(default = "utc")]
    pub timezone: String,
    /// Alerts of this severity or above are sent at once even in quiet hours.
    #[serde(default = "critical")]
    pub except_from: Severity,
}

fn utc() -> String {
    "UTC".into()
}

impl QuietHours {
    fn parts(
        &self,
    ) -> std::result::Result<(chrono::NaiveTime, chrono::NaiveTime, chrono_tz::Tz), String> {
        let time = |name: &str, v: &str| {
            chrono::NaiveTime::parse_from_str(v, "%H:%M")
                .map_err(|_| format!("quiet_hours.{name} must be HH:MM (e.g. 22:00), got {v:?}"))
        };
        let (from, to) = (time("from", &self.from)?, time("to", &self.to)?);
        if from == to {
            return Err("quiet_hours.from and .to are the same time; give a period".into());
        }
        let tz = self.timezone.parse::<chrono_tz::Tz>().map_err(|_| {
            format!(
                "quiet_hours.timezone {:?} is not an IANA time zone (e.g. Europe/Berlin)",
                self.timezone
            )
        })?;
        Ok((from, to, tz))
    }

    /// Checks the times and the zone; the error names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.parts().map(|_| ())
    }

    /// When a notification made at `now_us` may go out: `now_us`, or the end of the quiet period
    /// that holds it.
    pub fn release_at(&self, now_us: i64) -> i64 {
        use chrono::{Duration, TimeZone};
        let Ok((from, to, tz)) = self.parts() else {
            return now_us;
        };
        let Some(now) = chrono::DateTime::from_timestamp_micros(now_us) else {
            return now_us;
        };
        let local = now.with_timezone(&tz);
        let (today, t) = (local.date_naive(), local.time());
        let end_day = if from < to {
            (from <= t && t < to).then_some(today)
        } else if t >= from {
            today.succ_opt()
        } else if t < to {
            Some(today)
        } else {
            None
        };
        let Some(day) = end_day else {
            return now_us;
        };
        // The end in local time; in a daylight saving gap, the first instant after it.
        let end = day.and_time(to);
        let at = tz.from_local_datetime(&end).earliest().or_else(|| {
            tz.from_local_datetime(&(end + Duration::hours(1)))
                .earliest()
        });
        at.map_or(now_us, |a| a.timestamp_micros().max(now_us))
    }
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
            quiet_hours: None,
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
                next_us: match &r.quiet_hours {
                    Some(q) if alert.severity < q.except_from => q.release_at(now_us),
                    _ => now_us,
                },
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
    Ok(apply_all(tx, &[(change, quiet)], routes)?.pop())
}

/// Applies engine changes in order, with the same outcome as [`apply`] for each in turn, and a
/// fixed number of store calls whatever their number: the keys already recorded and the newest
/// alert of each (rule, lift) are read first, the steps worked out in memory, then written set by
/// set. `quiet` (the second of each pair) records a change without notifications. Returns what
/// each change that did something did, in order.
pub fn apply_all(
    tx: &mut dyn AlertTx,
    changes: &[(&Change, bool)],
    routes: &[Route],
) -> Result<Vec<(Alert, EventKind)>> {
    /// The newest alert of a (rule, lift) as the batch goes: as read, or made by this batch.
    struct Slot {
        alert: Alert,
        new: bool,
        changed: bool,
    }
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<&str> = changes.iter().map(|(c, _)| c.key.as_str()).collect();
    let mut done = tx.existing_events(&keys)?;
    let mut pairs: Vec<(&str, &str)> = changes
        .iter()
        .map(|(c, _)| (c.rule.as_str(), c.lift_id.as_str()))
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    let mut slots: Vec<Slot> = tx
        .latest_of(&pairs)?
        .into_iter()
        .map(|alert| Slot {
            alert,
            new: false,
            changed: false,
        })
        .collect();
    let mut newest: HashMap<(String, String), usize> = slots
        .iter()
        .enumerate()
        .map(|(i, s)| ((s.alert.rule.clone(), s.alert.lift_id.clone()), i))
        .collect();
    // Each step: its slot, the alert as this step left it, what happened, the change, whether
    // it is sent.
    let mut steps: Vec<(usize, Alert, EventKind, &Change, bool)> = Vec::new();
    for &(change, quiet) in changes {
        if !done.insert(change.key.clone()) {
            continue;
        }
        let at = (change.rule.clone(), change.lift_id.clone());
        let latest = newest.get(&at).map(|&i| &slots[i].alert);
        let Some((alert, event)) = step(change, latest) else {
            continue;
        };
        let slot = if event == EventKind::Fired {
            slots.push(Slot {
                alert: alert.clone(),
                new: true,
                changed: true,
            });
            newest.insert(at, slots.len() - 1);
            slots.len() - 1
        } else {
            let i = newest[&at];
            slots[i].alert = alert.clone();
            slots[i].changed = true;
            i
        };
        let notify = matches!(event, EventKind::Fired | EventKind::Resolved) && !quiet;
        steps.push((slot, alert, event, change, notify));
    }
    if steps.is_empty() {
        return Ok(Vec::new());
    }

    let made: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].new).collect();
    let mut inserted: Vec<Alert> = made.iter().map(|&i| slots[i].alert.clone()).collect();
    tx.insert_alerts(&mut inserted)?;
    for (&i, a) in made.iter().zip(&inserted) {
        slots[i].alert.id = a.id;
    }
    let updated: Vec<Alert> = slots
        .iter()
        .filter(|s| s.changed && !s.new)
        .map(|s| s.alert.clone())
        .collect();
    tx.update_alerts(&updated)?;

    let mut events = Vec::with_capacity(steps.len());
    let mut outbox = Vec::new();
    let mut out = Vec::with_capacity(steps.len());
    for (slot, mut alert, event, change, notify) in steps {
        alert.id = slots[slot].alert.id;
        events.push(AlertEvent {
            alert_id: alert.id,
            key: Some(change.key.clone()),
            kind: event,
            at_us: change.at_us,
            by: SYSTEM.into(),
            note: change.summary.clone(),
        });
        if notify {
            outbox.extend(notifications(
                routes,
                &alert,
                event,
                &change.key,
                change.at_us,
            ));
        }
        out.push((alert, event));
    }
    tx.insert_events(&events)?;
    tx.enqueue_all(&outbox)?;
    Ok(out)
}

/// What `change` does to the newest alert of its rule and lift: the alert after it (id 0 when
/// new, with [`EventKind::Fired`]) and the step, or `None` (a clear with nothing open).
fn step(change: &Change, latest: Option<&Alert>) -> Option<(Alert, EventKind)> {
    match (change.kind, latest) {
        (ChangeKind::Fire, Some(a)) if a.state.is_open() => {
            let mut a = a.clone();
            a.refires += 1;
            a.last_fired_us = change.at_us;
            a.value = change.value.or(a.value);
            Some((a, EventKind::Refired))
        }
        (ChangeKind::Fire, Some(a))
            if change.hold_secs > 0
                && a.resolved.as_ref().is_some_and(|r| {
                    r.by == SYSTEM && change.at_us - r.at_us < change.hold_secs as i64 * 1_000_000
                }) =>
        {
            let mut a = a.clone();
            a.state = AlertState::Firing;
            a.resolved = None;
            a.acknowledged = None;
            a.refires += 1;
            a.last_fired_us = change.at_us;
            Some((a, EventKind::Reopened))
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
            Some((a, EventKind::Fired))
        }
        (ChangeKind::Clear, Some(a)) if a.state.is_open() => {
            let mut a = a.clone();
            a.state = AlertState::Resolved;
            a.resolved = Some(Stamp {
                by: SYSTEM.into(),
                at_us: change.at_us,
                note: change.summary.clone(),
            });
            Some((a, EventKind::Resolved))
        }
        (ChangeKind::Clear, _) => None,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_micros()
    }

    fn night(zone: &str) -> QuietHours {
        QuietHours {
            from: "22:00".into(),
            to: "07:00".into(),
            timezone: zone.into(),
            except_from: Severity::Critical,
        }
    }

    #[test]
    fn quiet_hours_hold_until_their_local_end() {
        let q = night("Europe/Berlin");
        // 23:30 in Berlin (winter, UTC+1): held until 07:00 the next morning.
        let late = at("2026-11-30T22:30:00Z");
        assert_eq!(q.release_at(late), at("2026-12-01T06:00:00Z"));
        // 06:59 in Berlin: until 07:00 the same morning.
        assert_eq!(
            q.release_at(at("2026-12-01T05:59:00Z")),
            at("2026-12-01T06:00:00Z")
        );
        // Noon, and the end itself: not quiet.
        let noon = at("2026-12-01T11:00:00Z");
        assert_eq!(q.release_at(noon), noon);
        let end = at("2026-12-01T06:00:00Z");
        assert_eq!(q.release_at(end), end);
        // In summer the same local hours are an hour earlier in UTC.
        assert_eq!(
            q.release_at(at("2026-07-01T21:00:00Z")),
            at("2026-07-02T05:00:00Z")
        );
        // A period within one day, in UTC.
        let lunch = QuietHours {
            from: "12:00".into(),
            to: "13:00".into(),
            timezone: "UTC".into(),
            except_from: Severity::Major,
        };
        assert_eq!(
            lunch.release_at(at("2026-12-01T12:10:00Z")),
            at("2026-12-01T13:00:00Z")
        );
        let before = at("2026-12-01T11:59:00Z");
        assert_eq!(lunch.release_at(before), before);
    }

    #[test]
    fn quiet_hours_ending_in_a_daylight_saving_gap_end_at_the_same_instant() {
        // 2026-03-29 02:00 CET jumps to 03:00 CEST in Berlin: 02:30 never happens on the wall
        // clock; the period ends at 03:30 CEST, the instant 02:30 CET would have been.
        let q = QuietHours {
            from: "01:00".into(),
            to: "02:30".into(),
            timezone: "Europe/Berlin".into(),
            except_from: Severity::Critical,
        };
        assert_eq!(
            q.release_at(at("2026-03-29T00:15:00Z")),
            at("2026-03-29T01:30:00Z")
        );
    }

    #[test]
    fn quiet_hours_hold_only_alerts_below_their_exception_and_check_their_fields() {
        let route = Route {
            channel: "pager".into(),
            min_severity: Severity::Info,
            customers: vec![],
            buildings: vec![],
            rules: vec![],
            events: default_events(),
            quiet_hours: Some(night("UTC")),
        };
        let mut alert = Alert {
            id: 7,
            rule: "hot-motor".into(),
            rule_name: "Hot motor".into(),
            severity: Severity::Warning,
            lift_id: "L1".into(),
            customer: "acme".into(),
            building: "B1".into(),
            model: "m1".into(),
            state: AlertState::Firing,
            summary: "hot".into(),
            value: None,
            fired_us: 0,
            last_fired_us: 0,
            refires: 0,
            acknowledged: None,
            resolved: None,
        };
        let now = at("2026-12-01T23:00:00Z");
        let held = notifications(
            std::slice::from_ref(&route),
            &alert,
            EventKind::Fired,
            "k",
            now,
        );
        assert_eq!(held[0].next_us, at("2026-12-02T07:00:00Z"));
        assert_eq!(held[0].created_us, now);
        alert.severity = Severity::Critical;
        let sent = notifications(&[route], &alert, EventKind::Fired, "k", now);
        assert_eq!(sent[0].next_us, now, "critical goes out at once");

        for (bad, field) in [
            (
                QuietHours {
                    from: "25:00".into(),
                    ..night("UTC")
                },
                "quiet_hours.from",
            ),
            (
                QuietHours {
                    to: "7".into(),
                    ..night("UTC")
                },
                "quiet_hours.to",
            ),
            (night("Mars/Olympus"), "quiet_hours.timezone"),
            (
                QuietHours {
                    to: "22:00".into(),
                    ..night("UTC")
                },
                "the same time",
            ),
        ] {
            let e = bad.validate().unwrap_err();
            assert!(e.contains(field), "{e}");
        }
        assert!(night("America/New_York").validate().is_ok());
    }
}
