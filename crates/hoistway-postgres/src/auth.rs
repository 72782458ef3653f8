//! [`AuthStore`] and [`KeyStore`] in PostgreSQL: the same tables as the SQLite store (lookup keys
//! as columns, the record as JSON text, which `body::jsonb` reads as JSON), prefixed `auth_`.
//! PostgreSQL's text holds no NUL character, so the audit log's free-text columns store one as
//! U+FFFD; JSON bodies escape it.
//!
//! Read-modify-writes lock their row (`SELECT … FOR UPDATE`) for the closure's decision.
//! Device revisions come from one counter row that each write locks, so revisions commit in
//! order and a reader following them misses nothing.

use hoistway_auth::store::{
    AuditEvent, AuditQuery, AuthStore, Device, DeviceGrant, GrantKey, RefreshToken, Token,
    TokenKind, User,
};
use hoistway_auth::{KeyStore, StoredKey};
use hoistway_model::LiftId;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_postgres::types::ToSql;

use crate::{Error, Postgres, from_json, to_json};

/// The component name in `schema_versions`.
pub const COMPONENT: &str = "auth";

/// `MIGRATIONS[n]` takes the auth tables from version `n` to `n + 1`.
pub const MIGRATIONS: &[&str] = &["
    CREATE TABLE auth_users (username text PRIMARY KEY, body text NOT NULL);
    CREATE TABLE auth_tokens (hash text PRIMARY KEY, id text NOT NULL UNIQUE, owner text NOT NULL,
                              kind text NOT NULL, created bigserial, body text NOT NULL);
    CREATE INDEX auth_tokens_owner ON auth_tokens (owner, created);
    CREATE TABLE auth_grants (device_code_hash text PRIMARY KEY, user_code text NOT NULL UNIQUE,
                              expires_us bigint NOT NULL, body text NOT NULL);
    CREATE TABLE auth_refresh (hash text PRIMARY KEY, family text NOT NULL, lift_id text NOT NULL,
                               body text NOT NULL);
    CREATE INDEX auth_refresh_family ON auth_refresh (family);
    CREATE INDEX auth_refresh_lift ON auth_refresh (lift_id);
    CREATE TABLE auth_devices (lift_id text PRIMARY KEY, rev bigint NOT NULL, body text NOT NULL);
    CREATE INDEX auth_devices_rev ON auth_devices (rev);
    CREATE TABLE auth_revisions (name text PRIMARY KEY, rev bigint NOT NULL);
    INSERT INTO auth_revisions VALUES ('devices', 0), ('audit', 0);
    CREATE TABLE auth_audit (id bigint PRIMARY KEY, at_us bigint NOT NULL, actor text NOT NULL,
                             action text NOT NULL, target text NOT NULL, outcome text NOT NULL,
                             address text, detail text NOT NULL, customer text);
    CREATE INDEX auth_audit_actor ON auth_audit (actor, id);
    CREATE INDEX auth_audit_action ON auth_audit (action, id);
    CREATE INDEX auth_audit_customer ON auth_audit (customer, id);
    CREATE TABLE auth_keys (id integer PRIMARY KEY CHECK (id = 1), body text NOT NULL);
    INSERT INTO auth_keys VALUES (1, '[]');
"];

fn storage(e: Error) -> hoistway_auth::Error {
    match e {
        Error::Unavailable(m) => hoistway_auth::Error::Unavailable(m),
        Error::Conflict(m) => hoistway_auth::Error::Conflict(m),
        Error::Format {
            schema,
            component,
            version,
            reads,
        } => hoistway_auth::Error::Format {
            file: format!("the PostgreSQL schema {schema:?} ({component} tables)"),
            version,
            reads,
        },
        other => hoistway_auth::Error::Storage(other.to_string()),
    }
}

/// Staff accounts, tokens, device grants, refresh tokens, lift credentials and the audit log.
pub struct PgAuthStore {
    pg: Postgres,
}

impl PgAuthStore {
    /// Opens the auth tables of `pg`, creating or migrating them.
    pub fn open(pg: Postgres) -> hoistway_auth::Result<Self> {
        pg.migrate(COMPONENT, MIGRATIONS).map_err(storage)?;
        Ok(Self { pg })
    }

    fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> crate::Result<u64> {
        self.pg.block(async {
            let client = self.pg.client().await?;
            let stmt = client.prepare_cached(sql).await?;
            Ok(client.execute(&stmt, params).await?)
        })
    }

    /// The first column (`body`) of each row.
    fn bodies(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> crate::Result<Vec<String>> {
        self.pg.block(async {
            let client = self.pg.client().await?;
            let stmt = client.prepare_cached(sql).await?;
            let rows = client.query(&stmt, params).await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn get<T: DeserializeOwned>(
        &self,
        table: &'static str,
        sql: &str,
        key: &str,
    ) -> crate::Result<Option<T>> {
        self.bodies(sql, &[&key])?
            .first()
            .map(|b| from_json(table, b))
            .transpose()
    }

    fn all<T: DeserializeOwned>(&self, table: &'static str, sql: &str) -> crate::Result<Vec<T>> {
        self.bodies(sql, &[])?
            .iter()
            .map(|b| from_json(table, b))
            .collect()
    }

    /// Read-modify-write of the row `select` (which locks it) finds by `key`; `update` takes
    /// (body, key).
    fn modify<T: Serialize + DeserializeOwned>(
        &self,
        table: &'static str,
        select: &str,
        update: &str,
        key: &str,
        f: &mut dyn FnMut(&mut T) -> bool,
    ) -> crate::Result<Option<T>> {
        self.pg.block(async {
            let mut client = self.pg.client().await?;
            let tx = client.transaction().await?;
            let Some(row) = tx.query_opt(select, &[&key]).await? else {
                return Ok(None);
            };
            let mut record: T = from_json(table, row.get(0))?;
            if f(&mut record) {
                tx.execute(update, &[&to_json(&record), &key]).await?;
                tx.commit().await?;
            }
            Ok(Some(record))
        })
    }

    fn revoke_where(&self, column: &str, value: &str) -> crate::Result<u64> {
        let select = format!("SELECT hash, body FROM auth_refresh WHERE {column} = $1 FOR UPDATE");
        self.pg.block(async {
            let mut client = self.pg.client().await?;
            let tx = client.transaction().await?;
            let rows = tx.query(&select, &[&value]).await?;
            let mut changed = 0;
            for row in rows {
                let hash: &str = row.get(0);
                let mut token: RefreshToken = from_json("auth_refresh", row.get(1))?;
                if !token.revoked {
                    token.revoked = true;
                    tx.execute(
                        "UPDATE auth_refresh SET body = $1 WHERE hash = $2",
                        &[&to_json(&token), &hash],
                    )
                    .await?;
                    changed += 1;
                }
            }
            tx.commit().await?;
            Ok(changed)
        })
    }
}

fn conflict(e: Error, message: impl FnOnce() -> String) -> hoistway_auth::Error {
    match e {
        Error::Conflict(_) => hoistway_auth::Error::Conflict(message()),
        other => storage(other),
    }
}

impl AuthStore for PgAuthStore {
    fn insert_user(&self, user: &User) -> hoistway_auth::Result<()> {
        self.execute(
            "INSERT INTO auth_users (username, body) VALUES ($1, $2)",
            &[&user.username, &to_json(user)],
        )
        .map(|_| ())
        .map_err(|e| conflict(e, || format!("user {:?} exists", user.username)))
    }

    fn user(&self, username: &str) -> hoistway_auth::Result<Option<User>> {
        self.get(
            "auth_users",
            "SELECT body FROM auth_users WHERE username = $1",
            username,
        )
        .map_err(storage)
    }

    fn users(&self) -> hoistway_auth::Result<Vec<User>> {
        self.all(
            "auth_users",
            "SELECT body FROM auth_users ORDER BY username",
        )
        .map_err(storage)
    }

    fn update_user(
        &self,
        username: &str,
        f: &mut dyn FnMut(&mut User) -> bool,
    ) -> hoistway_auth::Result<Option<User>> {
        self.modify(
            "auth_users",
            "SELECT body FROM auth_users WHERE username = $1 FOR UPDATE",
            "UPDATE auth_users SET body = $1 WHERE username = $2",
            username,
            f,
        )
        .map_err(storage)
    }

    fn delete_user(&self, username: &str) -> hoistway_auth::Result<bool> {
        self.pg
            .block(async {
                let mut client = self.pg.client().await?;
                let tx = client.transaction().await?;
                tx.execute("DELETE FROM auth_tokens WHERE owner = $1", &[&username])
                    .await?;
                let n = tx
                    .execute("DELETE FROM auth_users WHERE username = $1", &[&username])
                    .await?;
                tx.commit().await?;
                Ok(n > 0)
            })
            .map_err(storage)
    }

    fn insert_token(&self, token: &Token) -> hoistway_auth::Result<()> {
        self.execute(
            "INSERT INTO auth_tokens (hash, id, owner, kind, body)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &token.hash,
                &token.id,
                &token.owner,
                &token.kind.as_str(),
                // The hash is the key column; the body leaves it out.
                &to_json(token),
            ],
        )
        .map(|_| ())
        .map_err(|e| conflict(e, || "token id in use".into()))
    }

    fn token_by_hash(&self, hash: &str) -> hoistway_auth::Result<Option<Token>> {
        let token: Option<Token> = self
            .get(
                "auth_tokens",
                "SELECT body FROM auth_tokens WHERE hash = $1",
                hash,
            )
            .map_err(storage)?;
        Ok(token.map(|t| Token {
            hash: hash.to_string(),
            ..t
        }))
    }

    fn update_token(
        &self,
        hash: &str,
        f: &mut dyn FnMut(&mut Token) -> bool,
    ) -> hoistway_auth::Result<Option<Token>> {
        self.modify(
            "auth_tokens",
            "SELECT body FROM auth_tokens WHERE hash = $1 FOR UPDATE",
            "UPDATE auth_tokens SET body = $1 WHERE hash = $2",
            hash,
            &mut |t: &mut Token| {
                t.hash = hash.to_string();
                f(t)
            },
        )
        .map_err(storage)
    }

    fn tokens(&self, owner: &str) -> hoistway_auth::Result<Vec<Token>> {
        self.pg
            .block(async {
                let client = self.pg.client().await?;
                let stmt = client
                    .prepare_cached(
                        "SELECT hash, body FROM auth_tokens WHERE owner = $1 ORDER BY created",
                    )
                    .await?;
                let rows = client.query(&stmt, &[&owner]).await?;
                rows.iter()
                    .map(|r| {
                        let t: Token = from_json("auth_tokens", r.get(1))?;
                        Ok(Token {
                            hash: r.get(0),
                            ..t
                        })
                    })
                    .collect::<crate::Result<Vec<_>>>()
            })
            .map_err(storage)
    }

    fn delete_tokens(
        &self,
        owner: &str,
        id: Option<&str>,
        kind: Option<TokenKind>,
    ) -> hoistway_auth::Result<u64> {
        self.execute(
            "DELETE FROM auth_tokens WHERE owner = $1 AND ($2::text IS NULL OR id = $2)
             AND ($3::text IS NULL OR kind = $3)",
            &[&owner, &id, &kind.map(TokenKind::as_str)],
        )
        .map_err(storage)
    }

    fn insert_grant(&self, grant: &DeviceGrant) -> hoistway_auth::Result<()> {
        self.execute(
            "INSERT INTO auth_grants (device_code_hash, user_code, expires_us, body)
             VALUES ($1, $2, $3, $4)",
            &[
                &grant.device_code_hash,
                &grant.user_code,
                &grant.expires_us,
                &to_json(grant),
            ],
        )
        .map(|_| ())
        .map_err(|e| conflict(e, || "user code in use".into()))
    }

    fn update_grant(
        &self,
        key: GrantKey<'_>,
        f: &mut dyn FnMut(&mut DeviceGrant) -> bool,
    ) -> hoistway_auth::Result<Option<DeviceGrant>> {
        let (select, update, key) = match key {
            GrantKey::DeviceCodeHash(h) => (
                "SELECT body FROM auth_grants WHERE device_code_hash = $1 FOR UPDATE",
                "UPDATE auth_grants SET body = $1 WHERE device_code_hash = $2",
                h,
            ),
            GrantKey::UserCode(c) => (
                "SELECT body FROM auth_grants WHERE user_code = $1 FOR UPDATE",
                "UPDATE auth_grants SET body = $1 WHERE user_code = $2",
                c,
            ),
        };
        self.modify("auth_grants", select, update, key, f)
            .map_err(storage)
    }

    fn purge_grants(&self, before_us: i64) -> hoistway_auth::Result<u64> {
        self.execute(
            "DELETE FROM auth_grants WHERE expires_us < $1",
            &[&before_us],
        )
        .map_err(storage)
    }

    fn insert_refresh(&self, token: &RefreshToken) -> hoistway_auth::Result<()> {
        self.execute(
            "INSERT INTO auth_refresh (hash, family, lift_id, body) VALUES ($1, $2, $3, $4)",
            &[
                &token.hash,
                &token.family,
                &token.lift_id.as_str(),
                &to_json(token),
            ],
        )
        .map(|_| ())
        .map_err(storage)
    }

    fn update_refresh(
        &self,
        hash: &str,
        f: &mut dyn FnMut(&mut RefreshToken) -> bool,
    ) -> hoistway_auth::Result<Option<RefreshToken>> {
        self.modify(
            "auth_refresh",
            "SELECT body FROM auth_refresh WHERE hash = $1 FOR UPDATE",
            "UPDATE auth_refresh SET body = $1 WHERE hash = $2",
            hash,
            f,
        )
        .map_err(storage)
    }

    fn revoke_family(&self, family: &str) -> hoistway_auth::Result<u64> {
        self.revoke_where("family", family).map_err(storage)
    }

    fn revoke_lift_refresh(&self, lift: &LiftId) -> hoistway_auth::Result<u64> {
        self.revoke_where("lift_id", lift.as_str()).map_err(storage)
    }

    fn device(&self, lift: &LiftId) -> hoistway_auth::Result<Option<Device>> {
        self.get(
            "auth_devices",
            "SELECT body FROM auth_devices WHERE lift_id = $1",
            lift.as_str(),
        )
        .map_err(storage)
    }

    fn devices(&self) -> hoistway_auth::Result<Vec<Device>> {
        self.all(
            "auth_devices",
            "SELECT body FROM auth_devices ORDER BY lift_id",
        )
        .map_err(storage)
    }

    fn put_device(&self, device: &Device) -> hoistway_auth::Result<()> {
        self.pg
            .block(async {
                let mut client = self.pg.client().await?;
                let tx = client.transaction().await?;
                // The counter row is locked until commit: revisions commit in order.
                let rev: i64 = tx
                    .query_one(
                        "UPDATE auth_revisions SET rev = rev + 1 WHERE name = 'devices' RETURNING rev",
                        &[],
                    )
                    .await?
                    .get(0);
                tx.execute(
                    "INSERT INTO auth_devices (lift_id, rev, body) VALUES ($1, $2, $3)
                     ON CONFLICT (lift_id) DO UPDATE SET rev = excluded.rev, body = excluded.body",
                    &[&device.lift_id.as_str(), &rev, &to_json(device)],
                )
                .await?;
                tx.commit().await?;
                Ok(())
            })
            .map_err(storage)
    }

    fn devices_since(&self, after: Option<i64>) -> hoistway_auth::Result<(Vec<Device>, i64)> {
        self.pg
            .block(async {
                let mut client = self.pg.client().await?;
                // One snapshot for both reads.
                let tx = crate::read_snapshot(&mut client).await?;
                let newest: i64 = tx
                    .query_one("SELECT rev FROM auth_revisions WHERE name = 'devices'", &[])
                    .await?
                    .get(0);
                let rows = tx
                    .query(
                        "SELECT body FROM auth_devices WHERE rev > $1 ORDER BY rev",
                        &[&after.unwrap_or(-1)],
                    )
                    .await?;
                tx.commit().await?;
                let devices = rows
                    .iter()
                    .map(|r| from_json("auth_devices", r.get(0)))
                    .collect::<crate::Result<_>>()?;
                Ok((devices, newest))
            })
            .map_err(storage)
    }

    fn append_audit(&self, e: &AuditEvent) -> hoistway_auth::Result<i64> {
        let clean = |s: &str| s.replace('\0', "\u{fffd}");
        let (actor, action, target, outcome, detail) = (
            clean(&e.actor),
            clean(&e.action),
            clean(&e.target),
            clean(&e.outcome),
            clean(&e.detail),
        );
        let address = e.address.as_deref().map(clean);
        let customer = e.customer.as_deref().map(clean);
        self.pg
            .block(async {
                let mut client = self.pg.client().await?;
                let tx = client.transaction().await?;
                // Ids from a counter row locked until commit: they commit in order, so a reader
                // paging by id (after the last it saw) never skips an event.
                let id: i64 = tx
                    .query_one(
                        "UPDATE auth_revisions SET rev = rev + 1 WHERE name = 'audit' RETURNING rev",
                        &[],
                    )
                    .await?
                    .get(0);
                tx.execute(
                    "INSERT INTO auth_audit (id, at_us, actor, action, target, outcome, address, detail, customer)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    &[
                        &id, &e.at_us, &actor, &action, &target, &outcome, &address, &detail,
                        &customer,
                    ],
                )
                .await?;
                tx.commit().await?;
                Ok(id)
            })
            .map_err(storage)
    }

    fn audit(&self, q: &AuditQuery) -> hoistway_auth::Result<Vec<AuditEvent>> {
        self.pg
            .block(async {
                let client = self.pg.client().await?;
                let stmt = client
                    .prepare_cached(
                        "SELECT id, at_us, actor, action, target, outcome, address, detail, customer
                         FROM auth_audit
                         WHERE id > $1 AND ($2::text IS NULL OR actor = $2)
                           AND ($3::text IS NULL OR action = $3) AND ($5::text IS NULL OR customer = $5)
                         ORDER BY id LIMIT $4",
                    )
                    .await?;
                let rows = client
                    .query(
                        &stmt,
                        &[
                            &q.after_id.unwrap_or(0),
                            &q.actor,
                            &q.action,
                            &(q.limit.min(100_000) as i64),
                            &q.customer,
                        ],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| AuditEvent {
                        id: r.get(0),
                        at_us: r.get(1),
                        actor: r.get(2),
                        action: r.get(3),
                        target: r.get(4),
                        outcome: r.get(5),
                        address: r.get(6),
                        detail: r.get(7),
                        customer: r.get(8),
                    })
                    .collect())
            })
            .map_err(storage)
    }
}

/// The token signing keys, one row holding the list, shared by every node.
pub struct PgKeyStore {
    pg: Postgres,
}

impl PgKeyStore {
    /// Opens the auth tables of `pg`, creating or migrating them.
    pub fn open(pg: Postgres) -> hoistway_auth::Result<Self> {
        pg.migrate(COMPONENT, MIGRATIONS).map_err(storage)?;
        Ok(Self::new(pg))
    }

    /// Uses the auth tables of `pg` as they are: [`PgAuthStore::open`] on the same `pg` made
    /// or migrated them.
    pub fn new(pg: Postgres) -> Self {
        Self { pg }
    }
}

impl KeyStore for PgKeyStore {
    fn load(&self) -> hoistway_auth::Result<Vec<StoredKey>> {
        self.pg
            .block(async {
                let client = self.pg.client().await?;
                let row = client
                    .query_one("SELECT body FROM auth_keys WHERE id = 1", &[])
                    .await?;
                from_json("auth_keys", row.get(0))
            })
            .map_err(storage)
    }

    fn update(
        &self,
        f: &mut dyn FnMut(&mut Vec<StoredKey>) -> hoistway_auth::Result<bool>,
    ) -> hoistway_auth::Result<Vec<StoredKey>> {
        self.pg.block(async {
            let mut client = self.pg.client().await.map_err(storage)?;
            let tx = client
                .transaction()
                .await
                .map_err(Error::from)
                .map_err(storage)?;
            let row = tx
                .query_one("SELECT body FROM auth_keys WHERE id = 1 FOR UPDATE", &[])
                .await
                .map_err(Error::from)
                .map_err(storage)?;
            let mut keys: Vec<StoredKey> = from_json("auth_keys", row.get(0)).map_err(storage)?;
            if f(&mut keys)? {
                tx.execute(
                    "UPDATE auth_keys SET body = $1 WHERE id = 1",
                    &[&to_json(&keys)],
                )
                .await
                .map_err(Error::from)
                .map_err(storage)?;
                tx.commit().await.map_err(Error::from).map_err(storage)?;
            }
            Ok(keys)
        })
    }
}
