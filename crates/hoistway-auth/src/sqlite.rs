//! [`AuthStore`] in an embedded SQLite file (`auth/auth.sqlite3`): one table per record kind, the
//! lookup keys as columns and the record as JSON. The schema is versioned by `user_version` and
//! brought up to date by [`MIGRATIONS`] on open.

use std::path::Path;

use hoistway_model::LiftId;
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::{AuditEvent, AuditQuery};
use crate::store::{
    AuthStore, Device, DeviceGrant, GrantKey, RefreshToken, Token, TokenKind, User,
};
use crate::{Error, Result};

/// The schema version this build writes and the newest it reads.
pub const SCHEMA_VERSION: u32 = 4;

/// `MIGRATIONS[n]` takes the schema from version `n` to `n + 1`.
pub const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE users (username TEXT PRIMARY KEY, body TEXT NOT NULL);
    CREATE TABLE tokens (hash TEXT PRIMARY KEY, id TEXT NOT NULL UNIQUE, owner TEXT NOT NULL,
                         kind TEXT NOT NULL, body TEXT NOT NULL);
    CREATE INDEX tokens_owner ON tokens (owner);
    CREATE TABLE grants (device_code_hash TEXT PRIMARY KEY, user_code TEXT NOT NULL UNIQUE,
                         expires_us INTEGER NOT NULL, body TEXT NOT NULL);
    CREATE TABLE refresh (hash TEXT PRIMARY KEY, family TEXT NOT NULL, lift_id TEXT NOT NULL,
                          body TEXT NOT NULL);
    CREATE INDEX refresh_family ON refresh (family);
    CREATE INDEX refresh_lift ON refresh (lift_id);
    CREATE TABLE devices (lift_id TEXT PRIMARY KEY, body TEXT NOT NULL);
",
    "
    CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at_us INTEGER NOT NULL,
                        actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL,
                        outcome TEXT NOT NULL, address TEXT, detail TEXT NOT NULL);
    CREATE INDEX audit_actor ON audit (actor, id);
    CREATE INDEX audit_action ON audit (action, id);
",
    "
    ALTER TABLE audit ADD COLUMN customer TEXT;
    CREATE INDEX audit_customer ON audit (customer, id);
",
    "
    ALTER TABLE devices ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
    UPDATE devices SET rev = rowid;
    CREATE INDEX devices_rev ON devices (rev);
",
];

pub struct SqliteAuthStore {
    conn: Mutex<Connection>,
}

fn storage(e: rusqlite::Error) -> Error {
    Error::Storage(e.to_string())
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("auth records serialise")
}

fn from_json<T: DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| Error::Storage(format!("unreadable auth record: {e}")))
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

impl SqliteAuthStore {
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::Storage(e.to_string()))?;
        }
        let conn = Connection::open(path).map_err(storage)?;
        Self::init(conn, &path.display().to_string())
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
            return Err(Error::Format {
                file: name.to_string(),
                version,
                reads: SCHEMA_VERSION,
            });
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

    fn get<T: DeserializeOwned>(&self, sql: &str, key: &str) -> Result<Option<T>> {
        let conn = self.conn.lock();
        let body: Option<String> = conn
            .query_row(sql, [key], |r| r.get(0))
            .optional()
            .map_err(storage)?;
        body.map(|b| from_json(&b)).transpose()
    }

    fn all<T: DeserializeOwned>(&self, sql: &str, key: Option<&str>) -> Result<Vec<T>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(sql).map_err(storage)?;
        let bodies: Vec<String> = match key {
            Some(k) => stmt
                .query_map([k], |r| r.get::<_, String>(0))
                .and_then(|rows| rows.collect()),
            None => stmt
                .query_map([], |r| r.get::<_, String>(0))
                .and_then(|rows| rows.collect()),
        }
        .map_err(storage)?;
        bodies.iter().map(|b| from_json(b)).collect()
    }

    /// Read-modify-write of the row `select` finds by `key`; `update` takes (body, key).
    fn modify<T: Serialize + DeserializeOwned>(
        &self,
        select: &str,
        update: &str,
        key: &str,
        f: &mut dyn FnMut(&mut T) -> bool,
    ) -> Result<Option<T>> {
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(storage)?;
        let body: Option<String> = tx
            .query_row(select, [key], |r| r.get(0))
            .optional()
            .map_err(storage)?;
        let Some(body) = body else { return Ok(None) };
        let mut record: T = from_json(&body)?;
        if f(&mut record) {
            tx.execute(update, params![to_json(&record), key])
                .map_err(storage)?;
            tx.commit().map_err(storage)?;
        }
        Ok(Some(record))
    }
}

impl AuthStore for SqliteAuthStore {
    fn insert_user(&self, user: &User) -> Result<()> {
        let conn = self.conn.lock();
        conn.execute(
            "INSERT INTO users (username, body) VALUES (?1, ?2)",
            params![user.username, to_json(user)],
        )
        .map(|_| ())
        .map_err(|e| {
            if is_unique_violation(&e) {
                Error::Conflict(format!("user {:?} exists", user.username))
            } else {
                storage(e)
            }
        })
    }

    fn user(&self, username: &str) -> Result<Option<User>> {
        self.get("SELECT body FROM users WHERE username = ?1", username)
    }

    fn users(&self) -> Result<Vec<User>> {
        self.all("SELECT body FROM users ORDER BY username", None)
    }

    fn update_user(
        &self,
        username: &str,
        f: &mut dyn FnMut(&mut User) -> bool,
    ) -> Result<Option<User>> {
        self.modify(
            "SELECT body FROM users WHERE username = ?1",
            "UPDATE users SET body = ?1 WHERE username = ?2",
            username,
            f,
        )
    }

    fn delete_user(&self, username: &str) -> Result<bool> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(storage)?;
        tx.execute("DELETE FROM tokens WHERE owner = ?1", [username])
            .map_err(storage)?;
        let n = tx
            .execute("DELETE FROM users WHERE username = ?1", [username])
            .map_err(storage)?;
        tx.commit().map_err(storage)?;
        Ok(n > 0)
    }

    fn insert_token(&self, token: &Token) -> Result<()> {
        let conn = self.conn.lock();
        conn.execute(
            "INSERT INTO tokens (hash, id, owner, kind, body) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                token.hash,
                token.id,
                token.owner,
                token.kind.as_str(),
                // The hash is the key column; the body leaves it out.
                to_json(token)
            ],
        )
        .map(|_| ())
        .map_err(|e| {
            if is_unique_violation(&e) {
                Error::Conflict("token id in use".into())
            } else {
                storage(e)
            }
        })
    }

    fn token_by_hash(&self, hash: &str) -> Result<Option<Token>> {
        let token: Option<Token> = self.get("SELECT body FROM tokens WHERE hash = ?1", hash)?;
        Ok(token.map(|t| Token {
            hash: hash.to_string(),
            ..t
        }))
    }

    fn update_token(
        &self,
        hash: &str,
        f: &mut dyn FnMut(&mut Token) -> bool,
    ) -> Result<Option<Token>> {
        let token: Option<Token> = self.modify(
            "SELECT body FROM tokens WHERE hash = ?1",
            "UPDATE tokens SET body = ?1 WHERE hash = ?2",
            hash,
            &mut |t: &mut Token| {
                t.hash = hash.to_string();
                f(t)
            },
        )?;
        Ok(token)
    }

    fn tokens(&self, owner: &str) -> Result<Vec<Token>> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare("SELECT hash, body FROM tokens WHERE owner = ?1 ORDER BY rowid")
            .map_err(storage)?;
        let rows = stmt
            .query_map([owner], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(storage)?;
        rows.map(|r| {
            let (hash, body) = r.map_err(storage)?;
            let t: Token = from_json(&body)?;
            Ok(Token { hash, ..t })
        })
        .collect()
    }

    fn delete_tokens(&self, owner: &str, id: Option<&str>, kind: Option<TokenKind>) -> Result<u64> {
        let conn = self.conn.lock();
        let n = conn
            .execute(
                "DELETE FROM tokens WHERE owner = ?1 AND (?2 IS NULL OR id = ?2) AND (?3 IS NULL OR kind = ?3)",
                params![owner, id, kind.map(TokenKind::as_str)],
            )
            .map_err(storage)?;
        Ok(n as u64)
    }

    fn insert_grant(&self, grant: &DeviceGrant) -> Result<()> {
        let conn = self.conn.lock();
        conn.execute(
            "INSERT INTO grants (device_code_hash, user_code, expires_us, body) VALUES (?1, ?2, ?3, ?4)",
            params![grant.device_code_hash, grant.user_code, grant.expires_us, to_json(grant)],
        )
        .map(|_| ())
        .map_err(|e| {
            if is_unique_violation(&e) {
                Error::Conflict("user code in use".into())
            } else {
                storage(e)
            }
        })
    }

    fn update_grant(
        &self,
        key: GrantKey<'_>,
        f: &mut dyn FnMut(&mut DeviceGrant) -> bool,
    ) -> Result<Option<DeviceGrant>> {
        match key {
            GrantKey::DeviceCodeHash(h) => self.modify(
                "SELECT body FROM grants WHERE device_code_hash = ?1",
                "UPDATE grants SET body = ?1 WHERE device_code_hash = ?2",
                h,
                f,
            ),
            GrantKey::UserCode(c) => self.modify(
                "SELECT body FROM grants WHERE user_code = ?1",
                "UPDATE grants SET body = ?1 WHERE user_code = ?2",
                c,
                f,
            ),
        }
    }

    fn purge_grants(&self, before_us: i64) -> Result<u64> {
        let conn = self.conn.lock();
        let n = conn
            .execute("DELETE FROM grants WHERE expires_us < ?1", [before_us])
            .map_err(storage)?;
        Ok(n as u64)
    }

    fn insert_refresh(&self, token: &RefreshToken) -> Result<()> {
        let conn = self.conn.lock();
        conn.execute(
            "INSERT INTO refresh (hash, family, lift_id, body) VALUES (?1, ?2, ?3, ?4)",
            params![
                token.hash,
                token.family,
                token.lift_id.as_str(),
                to_json(token)
            ],
        )
        .map(|_| ())
        .map_err(storage)
    }

    fn update_refresh(
        &self,
        hash: &str,
        f: &mut dyn FnMut(&mut RefreshToken) -> bool,
    ) -> Result<Option<RefreshToken>> {
        self.modify(
            "SELECT body FROM refresh WHERE hash = ?1",
            "UPDATE refresh SET body = ?1 WHERE hash = ?2",
            hash,
            f,
        )
    }

    fn revoke_family(&self, family: &str) -> Result<u64> {
        self.revoke_where("family", family)
    }

    fn revoke_lift_refresh(&self, lift: &LiftId) -> Result<u64> {
        self.revoke_where("lift_id", lift.as_str())
    }

    fn device(&self, lift: &LiftId) -> Result<Option<Device>> {
        self.get("SELECT body FROM devices WHERE lift_id = ?1", lift.as_str())
    }

    fn devices(&self) -> Result<Vec<Device>> {
        self.all("SELECT body FROM devices ORDER BY lift_id", None)
    }

    fn devices_since(&self, after: Option<i64>) -> Result<(Vec<Device>, i64)> {
        let conn = self.conn.lock();
        let newest: i64 = conn
            .query_row("SELECT coalesce(max(rev), 0) FROM devices", [], |r| {
                r.get(0)
            })
            .map_err(storage)?;
        let mut stmt = conn
            .prepare("SELECT body FROM devices WHERE rev > ?1 ORDER BY rev")
            .map_err(storage)?;
        let bodies: Vec<String> = stmt
            .query_map([after.unwrap_or(-1)], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(storage)?;
        let devices = bodies.iter().map(|b| from_json(b)).collect::<Result<_>>()?;
        Ok((devices, newest))
    }

    fn append_audit(&self, event: &AuditEvent) -> Result<i64> {
        self.append_audit_row(event).map_err(storage)
    }

    fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>> {
        self.audit_rows(query).map_err(storage)
    }

    fn put_device(&self, device: &Device) -> Result<()> {
        let conn = self.conn.lock();
        // One connection: revisions are taken and committed in order.
        conn.execute(
            "INSERT INTO devices (lift_id, body, rev)
             VALUES (?1, ?2, (SELECT coalesce(max(rev), 0) + 1 FROM devices))
             ON CONFLICT (lift_id) DO UPDATE SET body = excluded.body, rev = excluded.rev",
            params![device.lift_id.as_str(), to_json(device)],
        )
        .map(|_| ())
        .map_err(storage)
    }
}

impl SqliteAuthStore {
    fn append_audit_row(&self, e: &AuditEvent) -> rusqlite::Result<i64> {
        let conn = self.conn.lock();
        conn.execute(
            "INSERT INTO audit (at_us, actor, action, target, outcome, address, detail, customer)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                e.at_us, e.actor, e.action, e.target, e.outcome, e.address, e.detail, e.customer
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    fn audit_rows(&self, q: &AuditQuery) -> rusqlite::Result<Vec<AuditEvent>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(
            "SELECT id, at_us, actor, action, target, outcome, address, detail, customer FROM audit
             WHERE id > ?1 AND (?2 IS NULL OR actor = ?2) AND (?3 IS NULL OR action = ?3)
               AND (?5 IS NULL OR customer = ?5)
             ORDER BY id LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![
                q.after_id.unwrap_or(0),
                q.actor,
                q.action,
                q.limit.min(100_000) as i64,
                q.customer
            ],
            |r| {
                Ok(AuditEvent {
                    id: r.get(0)?,
                    at_us: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    target: r.get(4)?,
                    outcome: r.get(5)?,
                    address: r.get(6)?,
                    detail: r.get(7)?,
                    customer: r.get(8)?,
                })
            },
        )?;
        rows.collect()
    }

    fn revoke_where(&self, column: &str, value: &str) -> Result<u64> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(storage)?;
        let rows: Vec<(String, String)> = {
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT hash, body FROM refresh WHERE {column} = ?1"
                ))
                .map_err(storage)?;
            stmt.query_map([value], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(storage)?
                .collect::<rusqlite::Result<_>>()
                .map_err(storage)?
        };
        let mut changed = 0;
        for (hash, body) in rows {
            let mut token: RefreshToken = from_json(&body)?;
            if !token.revoked {
                token.revoked = true;
                tx.execute(
                    "UPDATE refresh SET body = ?1 WHERE hash = ?2",
                    params![to_json(&token), hash],
                )
                .map_err(storage)?;
                changed += 1;
            }
        }
        tx.commit().map_err(storage)?;
        Ok(changed)
    }
}
