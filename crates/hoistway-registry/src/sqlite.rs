//! [`RegistryStore`] in an embedded SQLite catalog (`registry.sqlite3` in the data dir), WAL
//! with `synchronous = FULL`. The schema is versioned by `user_version` and brought up to date
//! by [`MIGRATIONS`] on open. One connection orders every writer.

use std::collections::HashMap;
use std::path::Path;

use hoistway_model::LiftId;
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};

use crate::store::{Changed, RegistryStore, Stored, plan_period};
use crate::{Assignment, Error, LiftInfo, Result};

/// The schema version this build writes (SQLite's `user_version`).
pub const SCHEMA_VERSION: u32 = 3;

/// `MIGRATIONS[v]` takes a catalog from schema version `v` to `v + 1`. Version 0 is an empty
/// file or a catalog written before versions were recorded (it already had `lifts`).
pub const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [SCHEMA_V1, SCHEMA_V2, SCHEMA_V3];

pub(crate) const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS lifts (
    lift_id       TEXT PRIMARY KEY NOT NULL,
    building      TEXT NOT NULL DEFAULT '',
    site          TEXT NOT NULL DEFAULT '',
    customer      TEXT NOT NULL DEFAULT '',
    model         TEXT NOT NULL DEFAULT '',
    install_date  TEXT,
    initial_trips INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS lifts_building ON lifts(building);
";

/// Version 2: who owned each lift when. Lifts registered before it belong to their customer
/// since the beginning.
const SCHEMA_V2: &str = "
CREATE TABLE assignments (
    lift_id       TEXT NOT NULL,
    customer      TEXT NOT NULL,
    building      TEXT NOT NULL,
    valid_from_us INTEGER,
    valid_to_us   INTEGER
);
CREATE INDEX assignments_lift ON assignments(lift_id);
INSERT INTO assignments (lift_id, customer, building, valid_from_us, valid_to_us)
    SELECT lift_id, customer, building, NULL, NULL FROM lifts;
";

/// Version 3: the revision of each write, for readers that follow changes.
const SCHEMA_V3: &str = "
ALTER TABLE lifts ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
ALTER TABLE assignments ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
CREATE INDEX lifts_rev ON lifts(rev);
CREATE INDEX assignments_rev ON assignments(rev);
CREATE TABLE revision (rev INTEGER NOT NULL);
INSERT INTO revision VALUES (0);
";

/// Brings the catalog to [`SCHEMA_VERSION`] in one transaction; refuses a newer one.
fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let tx = conn.transaction()?;
    let version: u32 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(Error::Format {
            file: path.display().to_string(),
            version,
        });
    }
    for step in &MIGRATIONS[version as usize..] {
        tx.execute_batch(step)?;
    }
    if version != SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tracing::info!(from = version, to = SCHEMA_VERSION, registry = %path.display(), "registry schema migrated");
    }
    tx.commit()?;
    Ok(())
}

pub struct SqliteRegistryStore {
    conn: Mutex<Connection>,
}

const LIFT_COLUMNS: &str = "lift_id, building, site, customer, model, install_date, initial_trips";

fn row_to_info(row: &rusqlite::Row<'_>) -> rusqlite::Result<LiftInfo> {
    let id: String = row.get(0)?;
    let install: Option<String> = row.get(5)?;
    Ok(LiftInfo {
        lift_id: LiftId::new(&id).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })?,
        building: row.get(1)?,
        site: row.get(2)?,
        customer: row.get(3)?,
        model: row.get(4)?,
        install_date: install.and_then(|d| d.parse().ok()),
        initial_trips: row.get::<_, i64>(6)? as u64,
    })
}

fn row_to_assignment(r: &rusqlite::Row<'_>) -> rusqlite::Result<Assignment> {
    Ok(Assignment {
        customer: r.get(0)?,
        building: r.get(1)?,
        valid_from_us: r.get(2)?,
        valid_to_us: r.get(3)?,
    })
}

const HISTORY_ORDER: &str = "coalesce(valid_from_us, -9223372036854775808), rowid";

impl SqliteRegistryStore {
    /// Opens the catalog at `path` (created if missing); `":memory:"` for tests.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        migrate(&mut conn, path)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn next_rev(tx: &rusqlite::Transaction<'_>) -> Result<i64> {
        tx.execute("UPDATE revision SET rev = rev + 1", [])?;
        Ok(tx.query_row("SELECT rev FROM revision", [], |r| r.get(0))?)
    }
}

impl RegistryStore for SqliteRegistryStore {
    fn load(&self) -> Result<Stored> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let mut stored = Stored {
            rev: tx.query_row("SELECT rev FROM revision", [], |r| r.get(0))?,
            ..Default::default()
        };
        {
            let mut stmt = tx.prepare(&format!("SELECT {LIFT_COLUMNS} FROM lifts"))?;
            stored.lifts = stmt
                .query_map([], row_to_info)?
                .collect::<rusqlite::Result<_>>()?;
            let mut stmt = tx.prepare(&format!(
                "SELECT customer, building, valid_from_us, valid_to_us, lift_id FROM assignments
                 ORDER BY lift_id, {HISTORY_ORDER}"
            ))?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(4)?, row_to_assignment(r)?)))?;
            for row in rows {
                let (id, a) = row?;
                let Ok(id) = LiftId::new(&id) else { continue };
                match stored.history.last_mut() {
                    Some((last, periods)) if *last == id => periods.push(a),
                    _ => stored.history.push((id, vec![a])),
                }
            }
        }
        Ok(stored)
    }

    fn upsert(&self, infos: &[LiftInfo], now_us: i64) -> Result<Vec<bool>> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let rev = Self::next_rev(&tx)?;
        let mut existed = Vec::with_capacity(infos.len());
        {
            let mut exists = tx.prepare_cached("SELECT 1 FROM lifts WHERE lift_id = ?1")?;
            let mut open = tx.prepare_cached(
                "SELECT customer, building FROM assignments WHERE lift_id = ?1 AND valid_to_us IS NULL",
            )?;
            let mut any =
                tx.prepare_cached("SELECT 1 FROM assignments WHERE lift_id = ?1 LIMIT 1")?;
            let mut put = tx.prepare_cached(
                "INSERT INTO lifts (lift_id, building, site, customer, model, install_date, initial_trips, rev)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(lift_id) DO UPDATE SET building = excluded.building, site = excluded.site,
                   customer = excluded.customer, model = excluded.model,
                   install_date = excluded.install_date, initial_trips = excluded.initial_trips,
                   rev = excluded.rev",
            )?;
            let mut close = tx.prepare_cached(
                "UPDATE assignments SET valid_to_us = ?2, rev = ?3 WHERE lift_id = ?1 AND valid_to_us IS NULL",
            )?;
            let mut add = tx.prepare_cached(
                "INSERT INTO assignments (lift_id, customer, building, valid_from_us, valid_to_us, rev)
                 VALUES (?1, ?2, ?3, ?4, NULL, ?5)",
            )?;
            for i in infos {
                let id = i.lift_id.as_str();
                existed.push(exists.query_row([id], |_| Ok(())).optional()?.is_some());
                let current: Option<(String, String)> = open
                    .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                let has_history =
                    current.is_some() || any.query_row([id], |_| Ok(())).optional()?.is_some();
                put.execute(params![
                    id,
                    i.building,
                    i.site,
                    i.customer,
                    i.model,
                    i.install_date.map(|d| d.to_string()),
                    i.initial_trips as i64,
                    rev,
                ])?;
                let current = current.as_ref().map(|(c, b)| (c.as_str(), b.as_str()));
                if let Some(a) = plan_period(i, current, has_history, now_us) {
                    close.execute(params![id, now_us, rev])?;
                    add.execute(params![id, a.customer, a.building, a.valid_from_us, rev])?;
                }
            }
        }
        tx.commit()?;
        Ok(existed)
    }

    fn remove(&self, lift_id: &str, now_us: i64) -> Result<bool> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let rev = Self::next_rev(&tx)?;
        let n = tx.execute("DELETE FROM lifts WHERE lift_id = ?1", params![lift_id])?;
        tx.execute(
            "UPDATE assignments SET valid_to_us = ?2, rev = ?3 WHERE lift_id = ?1 AND valid_to_us IS NULL",
            params![lift_id, now_us, rev],
        )?;
        tx.commit()?;
        Ok(n > 0)
    }

    fn changed_since(&self, after: i64) -> Result<(Vec<Changed>, i64)> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let newest: i64 = tx.query_row("SELECT rev FROM revision", [], |r| r.get(0))?;
        let mut changed = Vec::new();
        if newest > after {
            // Set-based: an import of 200,000 lifts is read back in two scans.
            const IDS: &str = "SELECT lift_id FROM lifts WHERE rev > ?1
                               UNION SELECT lift_id FROM assignments WHERE rev > ?1";
            let mut stmt = tx.prepare(&format!(
                "SELECT {LIFT_COLUMNS} FROM lifts WHERE lift_id IN ({IDS})"
            ))?;
            let mut infos: HashMap<LiftId, LiftInfo> = stmt
                .query_map([after], row_to_info)?
                .map(|r| r.map(|i| (i.lift_id.clone(), i)))
                .collect::<rusqlite::Result<_>>()?;
            let mut stmt = tx.prepare(&format!(
                "SELECT customer, building, valid_from_us, valid_to_us, lift_id FROM assignments
                 WHERE lift_id IN ({IDS}) ORDER BY lift_id, {HISTORY_ORDER}"
            ))?;
            let rows = stmt.query_map([after], |r| {
                Ok((r.get::<_, String>(4)?, row_to_assignment(r)?))
            })?;
            for row in rows {
                let (id, a) = row?;
                let Ok(lift_id) = LiftId::new(&id) else {
                    continue;
                };
                match changed.last_mut() {
                    Some(Changed {
                        lift_id: last,
                        history,
                        ..
                    }) if *last == lift_id => history.push(a),
                    _ => changed.push(Changed {
                        info: infos.remove(&lift_id),
                        lift_id,
                        history: vec![a],
                    }),
                }
            }
            // A lift without a period (none is written without one, but be exact).
            changed.extend(infos.into_values().map(|info| Changed {
                lift_id: info.lift_id.clone(),
                info: Some(info),
                history: Vec::new(),
            }));
        }
        Ok((changed, newest))
    }
}
