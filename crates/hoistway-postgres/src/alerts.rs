//! [`AlertStore`] in PostgreSQL: the same tables as the SQLite store (filter keys as columns,
//! each record as JSON text), prefixed `alert_`.
//!
//! [`AlertStore::transact`] takes a transaction-scoped advisory lock first, so transactions of
//! every node sharing the schema run one at a time, as on SQLite's single connection: the
//! lifecycle's "at most one open alert per lift and rule" needs no more than that.

use hoistway_alerts::rule::{Rule, Severity};
use hoistway_alerts::store::{
    Alert, AlertEvent, AlertQuery, AlertStore, AlertTx, DeliveryState, Notification, Silence,
};
use hoistway_alerts::{Error as AlertError, Result as AlertResult};
use std::collections::HashSet;

use serde::de::DeserializeOwned;
use tokio_postgres::types::ToSql;

use crate::{Error, Postgres, from_json, to_json};

/// The component name in `schema_versions`.
pub const COMPONENT: &str = "alerts";

/// Serialises alert transactions across nodes.
const TRANSACT_LOCK: i64 = 0x686f_6973_7478;

/// `MIGRATIONS[n]` takes the alert tables from version `n` to `n + 1`.
pub const MIGRATIONS: &[&str] = &["
    CREATE TABLE alert_rules (id text PRIMARY KEY, body text NOT NULL);
    CREATE TABLE alert_alerts (id bigserial PRIMARY KEY, rule text NOT NULL, lift_id text NOT NULL,
                               customer text NOT NULL, building text NOT NULL, severity text NOT NULL,
                               state text NOT NULL, closed_us bigint, body text NOT NULL);
    CREATE INDEX alert_alerts_closed ON alert_alerts (closed_us);
    CREATE INDEX alert_alerts_rule_lift ON alert_alerts (rule, lift_id, id);
    CREATE INDEX alert_alerts_state ON alert_alerts (state, id);
    CREATE INDEX alert_alerts_customer ON alert_alerts (customer, id);
    CREATE TABLE alert_events (id bigserial PRIMARY KEY, alert_id bigint NOT NULL, key text UNIQUE,
                               body text NOT NULL);
    CREATE INDEX alert_events_alert ON alert_events (alert_id, id);
    CREATE TABLE alert_outbox (id text PRIMARY KEY, state text NOT NULL, next_us bigint NOT NULL,
                               seq bigint NOT NULL, created_us bigint NOT NULL, body text NOT NULL);
    CREATE INDEX alert_outbox_created ON alert_outbox (created_us);
    CREATE INDEX alert_outbox_due ON alert_outbox (state, next_us);
    CREATE INDEX alert_outbox_seq ON alert_outbox (seq);
    CREATE TABLE alert_disabled_channels (channel text PRIMARY KEY, reason text NOT NULL);
    CREATE TABLE alert_meta (key text PRIMARY KEY, value bytea NOT NULL);
    CREATE TABLE alert_silences (id bigserial PRIMARY KEY, ends_us bigint NOT NULL,
                                 body text NOT NULL);
"];

fn storage(e: Error) -> AlertError {
    match e {
        Error::Unavailable(m) => AlertError::Unavailable(m),
        Error::Conflict(m) => AlertError::Conflict(m),
        other => AlertError::Storage(other.to_string()),
    }
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Rules, alerts and their events, the notification outbox, silences and the engine's metadata.
pub struct PgAlertStore {
    pg: Postgres,
    /// Transactions commit only while these epochs hold these partitions
    /// (`processor_partitions`).
    fence: Fence,
}

/// The partitions (and the epochs they were claimed with) a node's alerting writes for, kept by
/// the node as it takes and lets go of partitions: [`PgAlertStore::fenced_by`].
pub type HeldPartitions = std::sync::Arc<std::sync::RwLock<std::collections::BTreeMap<u16, u64>>>;

enum Fence {
    None,
    One(u16, u64),
    Held(HeldPartitions),
}

impl PgAlertStore {
    /// Opens the alert tables of `pg`, creating or migrating them.
    pub fn open(pg: Postgres) -> AlertResult<Self> {
        pg.migrate(COMPONENT, MIGRATIONS).map_err(|e| match e {
            Error::Format { .. } => AlertError::Storage(e.to_string()),
            other => storage(other),
        })?;
        Ok(Self {
            pg,
            fence: Fence::None,
        })
    }

    /// The same store, whose transactions go through only while `epoch` is `partition`'s
    /// epoch in the processor tables: what the alerting of a partition's holder writes through,
    /// so a holder that was replaced (paused, cut off) records and queues nothing more.
    pub fn fenced(self, partition: u16, epoch: u64) -> Self {
        Self {
            fence: Fence::One(partition, epoch),
            ..self
        }
    }

    /// The same store, whose transactions go through only while every partition in `held`
    /// is still held with its epoch: a processor node's, whose partitions come and go.
    pub fn fenced_by(self, held: HeldPartitions) -> Self {
        Self {
            fence: Fence::Held(held),
            ..self
        }
    }

    fn rows(&self, sql: &str, params: Params<'_>) -> crate::Result<Vec<tokio_postgres::Row>> {
        self.pg.block(async {
            let client = self.pg.client().await?;
            let stmt = client.prepare_cached(sql).await?;
            Ok(client.query(&stmt, params).await?)
        })
    }

    fn execute(&self, sql: &str, params: Params<'_>) -> crate::Result<u64> {
        self.pg.block(async {
            let client = self.pg.client().await?;
            let stmt = client.prepare_cached(sql).await?;
            Ok(client.execute(&stmt, params).await?)
        })
    }

    /// The first column (`body`) of each row, decoded.
    fn bodies<T: DeserializeOwned>(
        &self,
        table: &'static str,
        sql: &str,
        params: Params<'_>,
    ) -> AlertResult<Vec<T>> {
        self.rows(sql, params)
            .and_then(|rows| rows.iter().map(|r| from_json(table, r.get(0))).collect())
            .map_err(storage)
    }
}

/// One transaction: each call waits for its statement on the caller's thread.
struct PgTx<'a> {
    pg: &'a Postgres,
    tx: deadpool_postgres::Transaction<'a>,
}

impl PgTx<'_> {
    // Statements are prepared once per pooled connection: a call is one round trip.

    fn opt(&mut self, sql: &str, params: Params<'_>) -> AlertResult<Option<tokio_postgres::Row>> {
        self.pg
            .block(async {
                let stmt = self.tx.prepare_cached(sql).await?;
                self.tx.query_opt(&stmt, params).await
            })
            .map_err(|e| storage(e.into()))
    }

    fn exec(&mut self, sql: &str, params: Params<'_>) -> AlertResult<u64> {
        self.pg
            .block(async {
                let stmt = self.tx.prepare_cached(sql).await?;
                self.tx.execute(&stmt, params).await
            })
            .map_err(|e| storage(e.into()))
    }

    fn all(&mut self, sql: &str, params: Params<'_>) -> AlertResult<Vec<tokio_postgres::Row>> {
        self.pg
            .block(async {
                let stmt = self.tx.prepare_cached(sql).await?;
                self.tx.query(&stmt, params).await
            })
            .map_err(|e| storage(e.into()))
    }

    fn alert_row(&mut self, sql: &str, params: Params<'_>) -> AlertResult<Option<Alert>> {
        self.opt(sql, params)?.as_ref().map(alert_of).transpose()
    }
}

impl AlertTx for PgTx<'_> {
    fn event_exists(&mut self, key: &str) -> AlertResult<bool> {
        Ok(self
            .opt("SELECT 1 FROM alert_events WHERE key = $1", &[&key])?
            .is_some())
    }

    fn latest(&mut self, rule: &str, lift_id: &str) -> AlertResult<Option<Alert>> {
        self.alert_row(
            "SELECT id, body FROM alert_alerts WHERE rule = $1 AND lift_id = $2
             ORDER BY id DESC LIMIT 1",
            &[&rule, &lift_id],
        )
    }

    fn alert(&mut self, id: i64) -> AlertResult<Option<Alert>> {
        self.alert_row("SELECT id, body FROM alert_alerts WHERE id = $1", &[&id])
    }

    fn insert_alert(&mut self, a: &Alert) -> AlertResult<i64> {
        let row = self
            .opt(
                "INSERT INTO alert_alerts (rule, lift_id, customer, building, severity, state, body)
                 VALUES ($1, $2, $3, $4, $5, $6, 'null') RETURNING id",
                &[
                    &a.rule,
                    &a.lift_id,
                    &a.customer,
                    &a.building,
                    &a.severity.as_str(),
                    &a.state.as_str(),
                ],
            )?
            .expect("INSERT … RETURNING gives a row");
        let id: i64 = row.get(0);
        let mut stored = a.clone();
        stored.id = id;
        self.update_alert(&stored)?;
        Ok(id)
    }

    fn update_alert(&mut self, a: &Alert) -> AlertResult<()> {
        let n = self.exec(
            "UPDATE alert_alerts SET state = $2, severity = $3, closed_us = $4, body = $5
             WHERE id = $1",
            &[
                &a.id,
                &a.state.as_str(),
                &a.severity.as_str(),
                &a.resolved.as_ref().map(|r| r.at_us),
                &to_json(a),
            ],
        )?;
        if n == 0 {
            return Err(AlertError::NotFound(format!(
                "alert {} does not exist",
                a.id
            )));
        }
        Ok(())
    }

    fn insert_event(&mut self, e: &AlertEvent) -> AlertResult<()> {
        self.exec(
            "INSERT INTO alert_events (alert_id, key, body) VALUES ($1, $2, $3)",
            &[&e.alert_id, &e.key, &to_json(e)],
        )?;
        Ok(())
    }

    fn enqueue(&mut self, n: &Notification) -> AlertResult<()> {
        // Under the transaction lock: seqs are taken one at a time.
        self.exec(
            "INSERT INTO alert_outbox (id, state, next_us, seq, created_us, body)
             VALUES ($1, $2, $3, (SELECT coalesce(max(seq), 0) + 1 FROM alert_outbox), $4,
                     $5)
             ON CONFLICT (id) DO NOTHING",
            &[
                &n.id,
                &n.state.as_str(),
                &n.next_us,
                &n.created_us,
                &to_json(n),
            ],
        )?;
        Ok(())
    }

    fn put_meta(&mut self, key: &str, value: &[u8]) -> AlertResult<()> {
        self.exec(
            "INSERT INTO alert_meta (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&key, &value],
        )?;
        Ok(())
    }

    // The set-based forms: one statement each, whatever the batch (a catch-up after an outage
    // of the database is thousands of changes).

    fn existing_events(&mut self, keys: &[&str]) -> AlertResult<HashSet<String>> {
        let rows = self.all(
            "SELECT key FROM alert_events WHERE key = ANY($1::text[])",
            &[&keys],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn latest_of(&mut self, pairs: &[(&str, &str)]) -> AlertResult<Vec<Alert>> {
        let (rules, lifts): (Vec<&str>, Vec<&str>) = pairs.iter().copied().unzip();
        // One index probe per pair (alert_alerts_rule_lift).
        let rows = self.all(
            "SELECT newest.id, newest.body
             FROM unnest($1::text[], $2::text[]) AS p(rule, lift_id)
             CROSS JOIN LATERAL (SELECT id, body FROM alert_alerts a
                                 WHERE a.rule = p.rule AND a.lift_id = p.lift_id
                                 ORDER BY id DESC LIMIT 1) AS newest",
            &[&rules, &lifts],
        )?;
        rows.iter().map(alert_of).collect()
    }

    fn insert_alerts(&mut self, alerts: &mut [Alert]) -> AlertResult<()> {
        if alerts.is_empty() {
            return Ok(());
        }
        // Ids first (ascending, as a sequence gives them), so each body holds its own.
        let ids = self.all(
            "SELECT nextval(pg_get_serial_sequence('alert_alerts', 'id'))
             FROM generate_series(1, $1::bigint) ORDER BY 1",
            &[&(alerts.len() as i64)],
        )?;
        for (a, row) in alerts.iter_mut().zip(&ids) {
            a.id = row.get(0);
        }
        let ids: Vec<i64> = alerts.iter().map(|a| a.id).collect();
        let rules: Vec<&str> = alerts.iter().map(|a| a.rule.as_str()).collect();
        let lifts: Vec<&str> = alerts.iter().map(|a| a.lift_id.as_str()).collect();
        let customers: Vec<&str> = alerts.iter().map(|a| a.customer.as_str()).collect();
        let buildings: Vec<&str> = alerts.iter().map(|a| a.building.as_str()).collect();
        let c = columns(alerts);
        self.exec(
            "INSERT INTO alert_alerts (id, rule, lift_id, customer, building, severity, state,
                                       closed_us, body)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::text[], $8::bigint[], $9::text[])",
            &[
                &ids,
                &rules,
                &lifts,
                &customers,
                &buildings,
                &c.severities,
                &c.states,
                &c.closed,
                &c.bodies,
            ],
        )?;
        Ok(())
    }

    fn update_alerts(&mut self, alerts: &[Alert]) -> AlertResult<()> {
        if alerts.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = alerts.iter().map(|a| a.id).collect();
        let c = columns(alerts);
        let n = self.exec(
            "UPDATE alert_alerts a
             SET severity = u.severity, state = u.state, closed_us = u.closed_us, body = u.body
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[])
                  AS u(id, severity, state, closed_us, body)
             WHERE a.id = u.id",
            &[&ids, &c.severities, &c.states, &c.closed, &c.bodies],
        )?;
        if n != alerts.len() as u64 {
            return Err(AlertError::NotFound(format!(
                "{} of {} alerts to update do not exist",
                alerts.len() as u64 - n,
                alerts.len()
            )));
        }
        Ok(())
    }

    fn insert_events(&mut self, events: &[AlertEvent]) -> AlertResult<()> {
        let alert_ids: Vec<i64> = events.iter().map(|e| e.alert_id).collect();
        let keys: Vec<Option<&str>> = events.iter().map(|e| e.key.as_deref()).collect();
        let bodies: Vec<String> = events.iter().map(to_json).collect();
        // In order, so their ids follow the order of the steps.
        self.exec(
            "INSERT INTO alert_events (alert_id, key, body)
             SELECT alert_id, key, body
             FROM unnest($1::bigint[], $2::text[], $3::text[]) WITH ORDINALITY
                  AS e(alert_id, key, body, n)
             ORDER BY n",
            &[&alert_ids, &keys, &bodies],
        )?;
        Ok(())
    }

    fn enqueue_all(&mut self, notifications: &[Notification]) -> AlertResult<()> {
        if notifications.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = notifications.iter().map(|n| n.id.as_str()).collect();
        let states: Vec<&str> = notifications.iter().map(|n| n.state.as_str()).collect();
        let next: Vec<i64> = notifications.iter().map(|n| n.next_us).collect();
        let created: Vec<i64> = notifications.iter().map(|n| n.created_us).collect();
        let bodies: Vec<String> = notifications.iter().map(to_json).collect();
        // Under the transaction lock: the seqs after the greatest, in order.
        self.exec(
            "INSERT INTO alert_outbox (id, state, next_us, seq, created_us, body)
             SELECT id, state, next_us,
                    (SELECT coalesce(max(seq), 0) FROM alert_outbox) + n, created_us, body
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[])
                  WITH ORDINALITY AS o(id, state, next_us, created_us, body, n)
             ORDER BY n
             ON CONFLICT (id) DO NOTHING",
            &[&ids, &states, &next, &created, &bodies],
        )?;
        Ok(())
    }
}

/// The columns an insert and an update of alerts share, one vector each.
struct Columns {
    severities: Vec<&'static str>,
    states: Vec<&'static str>,
    /// When each was resolved.
    closed: Vec<Option<i64>>,
    bodies: Vec<String>,
}

fn columns(alerts: &[Alert]) -> Columns {
    Columns {
        severities: alerts.iter().map(|a| a.severity.as_str()).collect(),
        states: alerts.iter().map(|a| a.state.as_str()).collect(),
        closed: alerts
            .iter()
            .map(|a| a.resolved.as_ref().map(|r| r.at_us))
            .collect(),
        bodies: alerts.iter().map(to_json).collect(),
    }
}

/// An alert from a row of `id, body`.
fn alert_of(row: &tokio_postgres::Row) -> AlertResult<Alert> {
    let mut a: Alert = from_json("alert_alerts", row.get(1)).map_err(storage)?;
    a.id = row.get(0);
    Ok(a)
}

impl AlertStore for PgAlertStore {
    fn transact(&self, f: &mut dyn FnMut(&mut dyn AlertTx) -> AlertResult<()>) -> AlertResult<()> {
        let pg = &self.pg;
        let mut client = pg.block(pg.client()).map_err(storage)?;
        let tx = pg
            .block(async { crate::exclusive(&mut client, TRANSACT_LOCK).await })
            .map_err(storage)?;
        let fences: Vec<(u16, u64)> = match &self.fence {
            Fence::None => Vec::new(),
            Fence::One(partition, epoch) => vec![(*partition, *epoch)],
            Fence::Held(held) => held
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(p, e)| (*p, *e))
                .collect(),
        };
        for fence in fences {
            if let Some(why) = pg.block(crate::fenced_out(&tx, fence)).map_err(storage)? {
                return Err(AlertError::Conflict(format!(
                    "{why}: its alert changes are not recorded"
                )));
            }
        }
        let mut tx = PgTx { pg, tx };
        // Dropped without a commit, the transaction rolls back.
        f(&mut tx)?;
        pg.block(tx.tx.commit()).map_err(|e| storage(e.into()))
    }

    fn alert(&self, id: i64) -> AlertResult<Option<Alert>> {
        let rows = self
            .rows("SELECT id, body FROM alert_alerts WHERE id = $1", &[&id])
            .map_err(storage)?;
        rows.first().map(alert_of).transpose()
    }

    fn list(&self, q: &AlertQuery) -> AlertResult<Vec<Alert>> {
        let (filter, args) = q.to_sql(|n| format!("${n}"));
        let before = q.before_id();
        let mut values: Vec<&(dyn ToSql + Sync)> = vec![&before];
        values.extend(args.iter().map(|a| a as &(dyn ToSql + Sync)));
        self.bodies(
            "alert_alerts",
            &format!("SELECT body FROM alert_alerts WHERE {filter}"),
            &values,
        )
    }

    fn events(&self, alert_id: i64) -> AlertResult<Vec<AlertEvent>> {
        self.bodies(
            "alert_events",
            "SELECT body FROM alert_events WHERE alert_id = $1 ORDER BY id",
            &[&alert_id],
        )
    }

    fn events_since(
        &self,
        cursor: Option<i64>,
        limit: usize,
    ) -> AlertResult<(i64, Vec<AlertEvent>)> {
        // Transactions take the store's advisory lock, so ids commit in order: a reader past
        // an id never misses a lower one committed later.
        let Some(cursor) = cursor else {
            let rows = self
                .rows("SELECT coalesce(max(id), 0)::bigint FROM alert_events", &[])
                .map_err(storage)?;
            return Ok((rows.first().map_or(0, |r| r.get(0)), Vec::new()));
        };
        let limit = limit as i64;
        let rows = self
            .rows(
                "SELECT id, body FROM alert_events WHERE id > $1 ORDER BY id LIMIT $2",
                &[&cursor, &limit],
            )
            .map_err(storage)?;
        let next = rows.last().map_or(cursor, |r| r.get(0));
        let events = rows
            .iter()
            .map(|r| from_json("alert_events", r.get(1)))
            .collect::<crate::Result<_>>()
            .map_err(storage)?;
        Ok((next, events))
    }

    fn open_counts(&self, customer: Option<&str>) -> AlertResult<Vec<(Severity, u64)>> {
        let rows = self
            .rows(
                "SELECT severity, count(*) FROM alert_alerts
                 WHERE state IN ('firing', 'acknowledged') AND ($1::text IS NULL OR customer = $1)
                 GROUP BY severity",
                &[&customer],
            )
            .map_err(storage)?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let n: i64 = r.get(1);
                Severity::parse(r.get(0)).map(|s| (s, n as u64))
            })
            .collect())
    }

    fn open_of_rule(&self, rule: &str) -> AlertResult<Vec<Alert>> {
        self.bodies(
            "alert_alerts",
            "SELECT body FROM alert_alerts
             WHERE rule = $1 AND state IN ('firing', 'acknowledged') ORDER BY id",
            &[&rule],
        )
    }

    fn rules(&self) -> AlertResult<Vec<Rule>> {
        self.bodies(
            "alert_rules",
            "SELECT body FROM alert_rules ORDER BY id",
            &[],
        )
    }

    fn put_rule(&self, rule: &Rule) -> AlertResult<bool> {
        // `xmax = 0` tells an inserted row from an updated one.
        let rows = self
            .rows(
                "INSERT INTO alert_rules (id, body) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET body = excluded.body
                 RETURNING (xmax = 0)",
                &[&rule.id, &to_json(rule)],
            )
            .map_err(storage)?;
        Ok(rows.first().is_some_and(|r| r.get::<_, bool>(0)))
    }

    fn delete_rule(&self, id: &str) -> AlertResult<bool> {
        Ok(self
            .execute("DELETE FROM alert_rules WHERE id = $1", &[&id])
            .map_err(storage)?
            > 0)
    }

    fn meta(&self, key: &str) -> AlertResult<Option<Vec<u8>>> {
        let rows = self
            .rows("SELECT value FROM alert_meta WHERE key = $1", &[&key])
            .map_err(storage)?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    fn due(&self, now_us: i64, limit: usize) -> AlertResult<Vec<Notification>> {
        self.bodies(
            "alert_outbox",
            "SELECT body FROM alert_outbox WHERE state = 'pending' AND next_us <= $1
             ORDER BY next_us, seq LIMIT $2",
            &[&now_us, &(limit as i64)],
        )
    }

    fn next_due(&self) -> AlertResult<Option<i64>> {
        let rows = self
            .rows(
                "SELECT min(next_us) FROM alert_outbox WHERE state = 'pending'",
                &[],
            )
            .map_err(storage)?;
        Ok(rows.first().and_then(|r| r.get(0)))
    }

    fn update_notification(&self, n: &Notification) -> AlertResult<()> {
        let changed = self
            .execute(
                "UPDATE alert_outbox SET state = $2, next_us = $3, body = $4
                 WHERE id = $1",
                &[&n.id, &n.state.as_str(), &n.next_us, &to_json(n)],
            )
            .map_err(storage)?;
        if changed == 0 {
            return Err(AlertError::NotFound(format!(
                "notification {} does not exist",
                n.id
            )));
        }
        Ok(())
    }

    fn notification(&self, id: &str) -> AlertResult<Option<Notification>> {
        Ok(self
            .bodies(
                "alert_outbox",
                "SELECT body FROM alert_outbox WHERE id = $1",
                &[&id],
            )?
            .pop())
    }

    fn notifications(
        &self,
        state: Option<DeliveryState>,
        limit: usize,
    ) -> AlertResult<Vec<Notification>> {
        let limit = limit.clamp(1, 1000) as i64;
        self.bodies(
            "alert_outbox",
            "SELECT body FROM alert_outbox WHERE ($1::text IS NULL OR state = $1)
             ORDER BY seq DESC LIMIT $2",
            &[&state.map(DeliveryState::as_str), &limit],
        )
    }

    fn prune(&self, alerts_before_us: i64, outbox_before_us: i64) -> AlertResult<(u64, u64)> {
        self.pg
            .block(async {
                let mut client = self.pg.client().await?;
                let tx = client.transaction().await?;
                tx.execute(
                    "DELETE FROM alert_events WHERE alert_id IN
                       (SELECT id FROM alert_alerts WHERE closed_us < $1)",
                    &[&alerts_before_us],
                )
                .await?;
                let alerts = tx
                    .execute(
                        "DELETE FROM alert_alerts WHERE closed_us < $1",
                        &[&alerts_before_us],
                    )
                    .await?;
                let notifications = tx
                    .execute(
                        "DELETE FROM alert_outbox WHERE state != 'pending' AND created_us < $1",
                        &[&outbox_before_us],
                    )
                    .await?;
                tx.execute(
                    "DELETE FROM alert_silences WHERE ends_us < $1",
                    &[&outbox_before_us],
                )
                .await?;
                tx.commit().await?;
                Ok((alerts, notifications))
            })
            .map_err(storage)
    }

    fn silences(&self) -> AlertResult<Vec<Silence>> {
        let rows = self
            .rows("SELECT id, body FROM alert_silences ORDER BY id", &[])
            .map_err(storage)?;
        rows.iter()
            .map(|r| {
                let mut s: Silence = from_json("alert_silences", r.get(1)).map_err(storage)?;
                s.id = r.get(0);
                Ok(s)
            })
            .collect()
    }

    fn add_silence(&self, silence: &Silence) -> AlertResult<i64> {
        let rows = self
            .rows(
                "INSERT INTO alert_silences (ends_us, body) VALUES ($1, $2) RETURNING id",
                &[&silence.ends_us, &to_json(silence)],
            )
            .map_err(storage)?;
        Ok(rows[0].get(0))
    }

    fn delete_silence(&self, id: i64) -> AlertResult<bool> {
        Ok(self
            .execute("DELETE FROM alert_silences WHERE id = $1", &[&id])
            .map_err(storage)?
            > 0)
    }

    fn disabled_channels(&self) -> AlertResult<Vec<(String, String)>> {
        let rows = self
            .rows(
                "SELECT channel, reason FROM alert_disabled_channels ORDER BY channel",
                &[],
            )
            .map_err(storage)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn set_channel_disabled(&self, channel: &str, reason: Option<&str>) -> AlertResult<()> {
        match reason {
            Some(reason) => self.execute(
                "INSERT INTO alert_disabled_channels (channel, reason) VALUES ($1, $2)
                 ON CONFLICT (channel) DO UPDATE SET reason = excluded.reason",
                &[&channel, &reason],
            ),
            None => self.execute(
                "DELETE FROM alert_disabled_channels WHERE channel = $1",
                &[&channel],
            ),
        }
        .map_err(storage)?;
        Ok(())
    }
}
