//! [`AlertStore`] in an embedded SQLite file (`alerts/alerts.sqlite3`): the filter keys as
//! columns and each record as JSON. WAL with `synchronous = FULL`, so a transaction that
//! returned is on disk. The schema is versioned by `user_version` and brought up to date by
//! [`MIGRATIONS`] on open.

use std::path::Path;

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::rule::{Rule, Severity};
use crate::store::{
    Alert, AlertEvent, AlertQuery, AlertStore, AlertTx, DeliveryState, Notification, Silence,
};
use crate::{Error, Result};

/// The schema version this build writes and the newest it reads.
pub const SCHEMA_VERSION: u32 = 1;

/// `MIGRATIONS[n]` takes the schema from version `n` to `n + 1`.
pub const MIGRATIONS: &[&str] = &["
    CREATE TABLE rules (id TEXT PRIMARY KEY, body TEXT NOT NULL);
    CREATE TABLE alerts (id INTEGER PRIMARY KEY AUTOINCREMENT, rule TEXT NOT NULL,
                         lift_id TEXT NOT NULL, customer TEXT NOT NULL, building TEXT NOT NULL,
                         severity TEXT NOT NULL, state TEXT NOT NULL, closed_us INTEGER,
                         body TEXT NOT NULL);
    CREATE INDEX alerts_closed ON alerts (closed_us);
    CREATE INDEX alerts_rule_lift ON alerts (rule, lift_id, id);
    CREATE INDEX alerts_state ON alerts (state, id);
    CREATE INDEX alerts_customer ON alerts (customer, id);
    CREATE TABLE alert_events (id INTEGER PRIMARY KEY AUTOINCREMENT, alert_id INTEGER NOT NULL,
                               key TEXT UNIQUE, body TEXT NOT NULL);
    CREATE INDEX alert_events_alert ON alert_events (alert_id, id);
    CREATE TABLE outbox (id TEXT PRIMARY KEY, state TEXT NOT NULL, next_us INTEGER NOT NULL,
                         seq INTEGER NOT NULL, created_us INTEGER NOT NULL, body TEXT NOT NULL);
    CREATE INDEX outbox_created ON outbox (created_us);
    CREATE INDEX outbox_due ON outbox (state, next_us);
    CREATE INDEX outbox_seq ON outbox (seq);
    CREATE TABLE disabled_channels (channel TEXT PRIMARY KEY, reason TEXT NOT NULL);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
    CREATE TABLE silences (id INTEGER PRIMARY KEY AUTOINCREMENT, ends_us INTEGER NOT NULL,
                           body TEXT NOT NULL);
"];

pub struct SqliteAlertStore {
    conn: Mutex<Connection>,
}

fn storage(e: rusqlite::Error) -> Error {
    Error::Storage(e.to_string())
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("alert records serialise")
}

fn from_json<T: DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| Error::Storage(format!("unreadable alert record: {e}")))
}

impl SqliteAlertStore {
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::Storage(e.to_string()))?;
        }
        Self::init(
            Connection::open(path).map_err(storage)?,
            &path.display().to_string(),
        )
    }

    /// An in-memory store (tests).
    pub fn in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory().map_err(storage)?, ":memory:")
    }

    fn init(mut conn: Connection, name: &str) -> Result<Self> {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(storage)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(storage)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(storage)?;
        let version: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(storage)?;
        if version > SCHEMA_VERSION {
            return Err(Error::Storage(format!(
                "{name} has schema version {version}; this build reads up to {SCHEMA_VERSION}"
            )));
        }
        for (from, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction().map_err(storage)?;
            tx.execute_batch(sql).map_err(storage)?;
            tx.pragma_update(None, "user_version", (from + 1) as u32)
                .map_err(storage)?;
            tx.commit().map_err(storage)?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn bodies<T: DeserializeOwned>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<T>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(sql).map_err(storage)?;
        let rows: Vec<String> = stmt
            .query_map(params, |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(storage)?;
        rows.iter().map(|b| from_json(b)).collect()
    }
}

struct Tx<'a>(Transaction<'a>);

fn alert_row(tx: &Transaction<'_>, sql: &str, p: impl rusqlite::Params) -> Result<Option<Alert>> {
    let body: Option<(i64, String)> = tx
        .query_row(sql, p, |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(storage)?;
    body.map(|(id, b)| {
        let mut a: Alert = from_json(&b)?;
        a.id = id;
        Ok(a)
    })
    .transpose()
}

impl AlertTx for Tx<'_> {
    fn event_exists(&mut self, key: &str) -> Result<bool> {
        self.0
            .query_row("SELECT 1 FROM alert_events WHERE key = ?1", [key], |_| {
                Ok(())
            })
            .optional()
            .map(|r| r.is_some())
            .map_err(storage)
    }

    fn latest(&mut self, rule: &str, lift_id: &str) -> Result<Option<Alert>> {
        alert_row(
            &self.0,
            "SELECT id, body FROM alerts WHERE rule = ?1 AND lift_id = ?2 ORDER BY id DESC LIMIT 1",
            params![rule, lift_id],
        )
    }

    fn alert(&mut self, id: i64) -> Result<Option<Alert>> {
        alert_row(&self.0, "SELECT id, body FROM alerts WHERE id = ?1", [id])
    }

    fn insert_alert(&mut self, a: &Alert) -> Result<i64> {
        self.0
            .execute(
                "INSERT INTO alerts (rule, lift_id, customer, building, severity, state, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, '')",
                params![
                    a.rule,
                    a.lift_id,
                    a.customer,
                    a.building,
                    a.severity.as_str(),
                    a.state.as_str()
                ],
            )
            .map_err(storage)?;
        let id = self.0.last_insert_rowid();
        let mut stored = a.clone();
        stored.id = id;
        self.update_alert(&stored)?;
        Ok(id)
    }

    fn update_alert(&mut self, a: &Alert) -> Result<()> {
        let n = self
            .0
            .execute(
                "UPDATE alerts SET state = ?2, severity = ?3, closed_us = ?4, body = ?5 WHERE id = ?1",
                params![
                    a.id,
                    a.state.as_str(),
                    a.severity.as_str(),
                    a.resolved.as_ref().map(|r| r.at_us),
                    to_json(a)
                ],
            )
            .map_err(storage)?;
        if n == 0 {
            return Err(Error::NotFound(format!("alert {} does not exist", a.id)));
        }
        Ok(())
    }

    fn insert_event(&mut self, e: &AlertEvent) -> Result<()> {
        self.0
            .execute(
                "INSERT INTO alert_events (alert_id, key, body) VALUES (?1, ?2, ?3)",
                params![e.alert_id, e.key, to_json(e)],
            )
            .map_err(storage)?;
        Ok(())
    }

    fn enqueue(&mut self, n: &Notification) -> Result<()> {
        let seq: i64 = self
            .0
            .query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM outbox", [], |r| {
                r.get(0)
            })
            .map_err(storage)?;
        self.0
            .execute(
                "INSERT OR IGNORE INTO outbox (id, state, next_us, seq, created_us, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    n.id,
                    n.state.as_str(),
                    n.next_us,
                    seq,
                    n.created_us,
                    to_json(n)
                ],
            )
            .map_err(storage)?;
        Ok(())
    }

    fn put_meta(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.0
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map_err(storage)?;
        Ok(())
    }
}

impl AlertStore for SqliteAlertStore {
    fn transact(&self, f: &mut dyn FnMut(&mut dyn AlertTx) -> Result<()>) -> Result<()> {
        let mut conn = self.conn.lock();
        let mut tx = Tx(conn.transaction().map_err(storage)?);
        f(&mut tx)?;
        tx.0.commit().map_err(storage)
    }

    fn alert(&self, id: i64) -> Result<Option<Alert>> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(storage)?;
        alert_row(&tx, "SELECT id, body FROM alerts WHERE id = ?1", [id])
    }

    fn list(&self, q: &AlertQuery) -> Result<Vec<Alert>> {
        let (filter, args) = q.to_sql(|n| format!("?{n}"));
        let before = q.before_id();
        let mut values: Vec<&dyn rusqlite::ToSql> = vec![&before];
        values.extend(args.iter().map(|a| a as &dyn rusqlite::ToSql));
        self.bodies(
            &format!("SELECT body FROM alerts WHERE {filter}"),
            values.as_slice(),
        )
    }

    fn events(&self, alert_id: i64) -> Result<Vec<AlertEvent>> {
        self.bodies(
            "SELECT body FROM alert_events WHERE alert_id = ?1 ORDER BY id",
            [alert_id],
        )
    }

    fn events_since(&self, cursor: Option<i64>, limit: usize) -> Result<(i64, Vec<AlertEvent>)> {
        let conn = self.conn.lock();
        let Some(cursor) = cursor else {
            let newest: i64 = conn
                .query_row("SELECT coalesce(max(id), 0) FROM alert_events", [], |r| {
                    r.get(0)
                })
                .map_err(storage)?;
            return Ok((newest, Vec::new()));
        };
        let mut stmt = conn
            .prepare_cached("SELECT id, body FROM alert_events WHERE id > ?1 ORDER BY id LIMIT ?2")
            .map_err(storage)?;
        let rows: Vec<(i64, String)> = stmt
            .query_map(rusqlite::params![cursor, limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .and_then(|rows| rows.collect())
            .map_err(storage)?;
        let next = rows.last().map_or(cursor, |r| r.0);
        let events = rows
            .iter()
            .map(|(_, b)| from_json(b))
            .collect::<Result<_>>()?;
        Ok((next, events))
    }

    fn open_counts(&self, customer: Option<&str>) -> Result<Vec<(Severity, u64)>> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT severity, COUNT(*) FROM alerts WHERE state IN ('firing', 'acknowledged')
                 AND (?1 IS NULL OR customer = ?1) GROUP BY severity",
            )
            .map_err(storage)?;
        let rows: Vec<(String, i64)> = stmt
            .query_map([customer], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(storage)?;
        Ok(rows
            .into_iter()
            .filter_map(|(s, n)| Severity::parse(&s).map(|s| (s, n as u64)))
            .collect())
    }

    fn open_of_rule(&self, rule: &str) -> Result<Vec<Alert>> {
        self.bodies(
            "SELECT body FROM alerts WHERE rule = ?1 AND state IN ('firing', 'acknowledged')",
            [rule],
        )
    }

    fn rules(&self) -> Result<Vec<Rule>> {
        self.bodies("SELECT body FROM rules ORDER BY id", [])
    }

    fn put_rule(&self, rule: &Rule) -> Result<bool> {
        let conn = self.conn.lock();
        let existed = conn
            .query_row("SELECT 1 FROM rules WHERE id = ?1", [&rule.id], |_| Ok(()))
            .optional()
            .map_err(storage)?
            .is_some();
        conn.execute(
            "INSERT INTO rules (id, body) VALUES (?1, ?2)
             ON CONFLICT (id) DO UPDATE SET body = excluded.body",
            params![rule.id, to_json(rule)],
        )
        .map_err(storage)?;
        Ok(!existed)
    }

    fn delete_rule(&self, id: &str) -> Result<bool> {
        let conn = self.conn.lock();
        let n = conn
            .execute("DELETE FROM rules WHERE id = ?1", [id])
            .map_err(storage)?;
        Ok(n > 0)
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let conn = self.conn.lock();
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(storage)
    }

    fn due(&self, now_us: i64, limit: usize) -> Result<Vec<Notification>> {
        self.bodies(
            "SELECT body FROM outbox WHERE state = 'pending' AND next_us <= ?1
             ORDER BY next_us, seq LIMIT ?2",
            params![now_us, limit as i64],
        )
    }

    fn next_due(&self) -> Result<Option<i64>> {
        let conn = self.conn.lock();
        conn.query_row(
            "SELECT MIN(next_us) FROM outbox WHERE state = 'pending'",
            [],
            |r| r.get(0),
        )
        .map_err(storage)
    }

    fn update_notification(&self, n: &Notification) -> Result<()> {
        let conn = self.conn.lock();
        let changed = conn
            .execute(
                "UPDATE outbox SET state = ?2, next_us = ?3, body = ?4 WHERE id = ?1",
                params![n.id, n.state.as_str(), n.next_us, to_json(n)],
            )
            .map_err(storage)?;
        if changed == 0 {
            return Err(Error::NotFound(format!(
                "notification {} does not exist",
                n.id
            )));
        }
        Ok(())
    }

    fn notification(&self, id: &str) -> Result<Option<Notification>> {
        Ok(self
            .bodies("SELECT body FROM outbox WHERE id = ?1", [id])?
            .pop())
    }

    fn notifications(
        &self,
        state: Option<DeliveryState>,
        limit: usize,
    ) -> Result<Vec<Notification>> {
        let limit = limit.clamp(1, 1000) as i64;
        match state {
            Some(s) => self.bodies(
                "SELECT body FROM outbox WHERE state = ?1 ORDER BY seq DESC LIMIT ?2",
                params![s.as_str(), limit],
            ),
            None => self.bodies(
                "SELECT body FROM outbox ORDER BY seq DESC LIMIT ?1",
                [limit],
            ),
        }
    }

    fn prune(&self, alerts_before_us: i64, outbox_before_us: i64) -> Result<(u64, u64)> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(storage)?;
        tx.execute(
            "DELETE FROM alert_events WHERE alert_id IN
               (SELECT id FROM alerts WHERE closed_us < ?1)",
            [alerts_before_us],
        )
        .map_err(storage)?;
        let alerts = tx
            .execute(
                "DELETE FROM alerts WHERE closed_us < ?1",
                [alerts_before_us],
            )
            .map_err(storage)?;
        let notifications = tx
            .execute(
                "DELETE FROM outbox WHERE state != 'pending' AND created_us < ?1",
                [outbox_before_us],
            )
            .map_err(storage)?;
        tx.execute(
            "DELETE FROM silences WHERE ends_us < ?1",
            [outbox_before_us],
        )
        .map_err(storage)?;
        tx.commit().map_err(storage)?;
        Ok((alerts as u64, notifications as u64))
    }

    fn silences(&self) -> Result<Vec<Silence>> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached("SELECT id, body FROM silences ORDER BY id")
            .map_err(storage)?;
        let rows: Vec<(i64, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(storage)?;
        rows.into_iter()
            .map(|(id, body)| {
                let mut s: Silence = from_json(&body)?;
                s.id = id;
                Ok(s)
            })
            .collect()
    }

    fn add_silence(&self, silence: &Silence) -> Result<i64> {
        let conn = self.conn.lock();
        conn.execute(
            "INSERT INTO silences (ends_us, body) VALUES (?1, ?2)",
            params![silence.ends_us, to_json(silence)],
        )
        .map_err(storage)?;
        Ok(conn.last_insert_rowid())
    }

    fn delete_silence(&self, id: i64) -> Result<bool> {
        let conn = self.conn.lock();
        let n = conn
            .execute("DELETE FROM silences WHERE id = ?1", [id])
            .map_err(storage)?;
        Ok(n > 0)
    }

    fn disabled_channels(&self) -> Result<Vec<(String, String)>> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached("SELECT channel, reason FROM disabled_channels ORDER BY channel")
            .map_err(storage)?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(storage)
    }

    fn set_channel_disabled(&self, channel: &str, reason: Option<&str>) -> Result<()> {
        let conn = self.conn.lock();
        match reason {
            Some(reason) => conn.execute(
                "INSERT INTO disabled_channels (channel, reason) VALUES (?1, ?2)
                 ON CONFLICT (channel) DO UPDATE SET reason = excluded.reason",
                params![channel, reason],
            ),
            None => conn.execute(
                "DELETE FROM disabled_channels WHERE channel = ?1",
                [channel],
            ),
        }
        .map_err(storage)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_sqlite_store_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::SqliteAlertStore::open(&dir.path().join("alerts.sqlite3")).unwrap();
        crate::conformance::check(&store);
        crate::conformance::check(&super::SqliteAlertStore::in_memory().unwrap());
    }
}
