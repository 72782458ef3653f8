//! [`RegistryStore`] in PostgreSQL: the SQLite catalog's tables, prefixed `registry_`.
//!
//! Each write takes a transaction-scoped advisory lock and its revision from a counter row, so
//! writers of every node run one at a time and revisions commit in order. Writes and change
//! reads are set-based (`= ANY($1)`, `unnest`), so an import of 200,000 lifts is a few
//! statements, not 200,000 round trips.

use std::collections::{HashMap, HashSet};

use hoistway_model::LiftId;
use hoistway_registry::store::{Changed, RegistryStore, Stored, plan_period};
use hoistway_registry::{Assignment, Error as RegistryError, LiftInfo, Result as RegistryResult};
use tokio_postgres::Row;

use crate::{Error, Postgres};

/// The component name in `schema_versions`.
pub const COMPONENT: &str = "registry";

/// Serialises registry writes across nodes.
const WRITE_LOCK: i64 = 0x686f_6973_7472;

/// `MIGRATIONS[n]` takes the registry tables from version `n` to `n + 1`.
pub const MIGRATIONS: &[&str] = &["
    CREATE TABLE registry_lifts (lift_id text PRIMARY KEY, building text NOT NULL, site text NOT NULL,
                                 customer text NOT NULL, model text NOT NULL, install_date text,
                                 initial_trips bigint NOT NULL, rev bigint NOT NULL);
    CREATE INDEX registry_lifts_rev ON registry_lifts (rev);
    CREATE TABLE registry_assignments (id bigserial PRIMARY KEY, lift_id text NOT NULL,
                                       customer text NOT NULL, building text NOT NULL,
                                       valid_from_us bigint, valid_to_us bigint, rev bigint NOT NULL);
    CREATE INDEX registry_assignments_lift ON registry_assignments (lift_id);
    CREATE INDEX registry_assignments_rev ON registry_assignments (rev);
    CREATE TABLE registry_revision (rev bigint NOT NULL);
    INSERT INTO registry_revision VALUES (0);
"];

fn storage(e: Error) -> RegistryError {
    match e {
        Error::Unavailable(m) => RegistryError::Unavailable(m),
        other => RegistryError::Backend(other.to_string()),
    }
}

const LIFT_COLUMNS: &str = "lift_id, building, site, customer, model, install_date, initial_trips";
const HISTORY_ORDER: &str = "coalesce(valid_from_us, -9223372036854775808), id";

fn info_of(r: &Row) -> Option<LiftInfo> {
    Some(LiftInfo {
        lift_id: LiftId::new(r.get::<_, &str>(0)).ok()?,
        building: r.get(1),
        site: r.get(2),
        customer: r.get(3),
        model: r.get(4),
        install_date: r.get::<_, Option<&str>>(5).and_then(|d| d.parse().ok()),
        initial_trips: r.get::<_, i64>(6) as u64,
    })
}

/// Rows of (customer, building, from, to, lift_id), ordered by lift: each lift's periods.
fn histories(rows: &[Row]) -> Vec<(LiftId, Vec<Assignment>)> {
    let mut out: Vec<(LiftId, Vec<Assignment>)> = Vec::new();
    for r in rows {
        let Ok(id) = LiftId::new(r.get::<_, &str>(4)) else {
            continue;
        };
        let a = Assignment {
            customer: r.get(0),
            building: r.get(1),
            valid_from_us: r.get(2),
            valid_to_us: r.get(3),
        };
        match out.last_mut() {
            Some((last, periods)) if *last == id => periods.push(a),
            _ => out.push((id, vec![a])),
        }
    }
    out
}

/// A write: the transaction, under the write lock, and the revision it takes.
async fn write(
    client: &mut deadpool_postgres::Object,
) -> crate::Result<(deadpool_postgres::Transaction<'_>, i64)> {
    let tx = crate::exclusive(client, WRITE_LOCK).await?;
    let rev: i64 = tx
        .query_one(
            "UPDATE registry_revision SET rev = rev + 1 RETURNING rev",
            &[],
        )
        .await?
        .get(0);
    Ok((tx, rev))
}

/// The lift registry, shared by every node.
pub struct PgRegistryStore {
    pg: Postgres,
}

impl PgRegistryStore {
    /// Opens the registry tables of `pg`, creating or migrating them.
    pub fn open(pg: Postgres) -> RegistryResult<Self> {
        pg.migrate(COMPONENT, MIGRATIONS).map_err(storage)?;
        Ok(Self { pg })
    }
}

impl RegistryStore for PgRegistryStore {
    fn load(&self) -> RegistryResult<Stored> {
        self.pg
            .block(async {
                let mut client = self.pg.client().await?;
                let tx = crate::read_snapshot(&mut client).await?;
                let rev: i64 = tx
                    .query_one("SELECT rev FROM registry_revision", &[])
                    .await?
                    .get(0);
                let lifts = tx
                    .query(&format!("SELECT {LIFT_COLUMNS} FROM registry_lifts"), &[])
                    .await?;
                let history = tx
                    .query(
                        &format!(
                            "SELECT customer, building, valid_from_us, valid_to_us, lift_id
                             FROM registry_assignments ORDER BY lift_id, {HISTORY_ORDER}"
                        ),
                        &[],
                    )
                    .await?;
                tx.commit().await?;
                Ok(Stored {
                    lifts: lifts.iter().filter_map(info_of).collect(),
                    history: histories(&history),
                    rev,
                })
            })
            .map_err(storage)
    }

    fn upsert(&self, infos: &[LiftInfo], now_us: i64) -> RegistryResult<Vec<bool>> {
        let ids: Vec<&str> = infos.iter().map(|i| i.lift_id.as_str()).collect();
        self.pg
            .block(async {
                let mut client = self.pg.client().await?;
                let (tx, rev) = write(&mut client).await?;
                let existing: HashSet<String> = tx
                    .query(
                        "SELECT lift_id FROM registry_lifts WHERE lift_id = ANY($1)",
                        &[&ids],
                    )
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let mut open: HashMap<String, (String, String)> = HashMap::new();
                let mut seen: HashSet<String> = HashSet::new();
                for r in tx
                    .query(
                        "SELECT lift_id, customer, building, valid_to_us IS NULL
                         FROM registry_assignments WHERE lift_id = ANY($1)",
                        &[&ids],
                    )
                    .await?
                {
                    let id: String = r.get(0);
                    if r.get::<_, bool>(3) {
                        open.insert(id.clone(), (r.get(1), r.get(2)));
                    }
                    seen.insert(id);
                }
                // Column arrays for one statement each.
                let mut lifts: [Vec<String>; 5] = Default::default();
                let mut installed: Vec<Option<String>> = Vec::new();
                let mut trips: Vec<i64> = Vec::new();
                let mut moved: Vec<&str> = Vec::new();
                let mut periods: [Vec<String>; 3] = Default::default();
                let mut from: Vec<Option<i64>> = Vec::new();
                for i in infos {
                    let id = i.lift_id.as_str();
                    for (column, value) in lifts.iter_mut().zip([
                        id,
                        i.building.as_str(),
                        i.site.as_str(),
                        i.customer.as_str(),
                        i.model.as_str(),
                    ]) {
                        column.push(value.to_string());
                    }
                    installed.push(i.install_date.map(|d| d.to_string()));
                    trips.push(i.initial_trips as i64);
                    let current = open.get(id).map(|(c, b)| (c.as_str(), b.as_str()));
                    if let Some(a) = plan_period(i, current, seen.contains(id), now_us) {
                        moved.push(id);
                        for (column, value) in periods.iter_mut().zip([
                            id,
                            a.customer.as_str(),
                            a.building.as_str(),
                        ]) {
                            column.push(value.to_string());
                        }
                        from.push(a.valid_from_us);
                    }
                }
                tx.execute(
                    "INSERT INTO registry_lifts (lift_id, building, site, customer, model, install_date,
                                                 initial_trips, rev)
                     SELECT *, $8::bigint FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                              $5::text[], $6::text[], $7::bigint[])
                     ON CONFLICT (lift_id) DO UPDATE SET building = excluded.building,
                       site = excluded.site, customer = excluded.customer, model = excluded.model,
                       install_date = excluded.install_date, initial_trips = excluded.initial_trips,
                       rev = excluded.rev",
                    &[
                        &lifts[0], &lifts[1], &lifts[2], &lifts[3], &lifts[4], &installed, &trips,
                        &rev,
                    ],
                )
                .await?;
                tx.execute(
                    "UPDATE registry_assignments SET valid_to_us = $2, rev = $3
                     WHERE lift_id = ANY($1) AND valid_to_us IS NULL",
                    &[&moved, &now_us, &rev],
                )
                .await?;
                tx.execute(
                    "INSERT INTO registry_assignments (lift_id, customer, building, valid_from_us, rev)
                     SELECT *, $5::bigint FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])",
                    &[&periods[0], &periods[1], &periods[2], &from, &rev],
                )
                .await?;
                tx.commit().await?;
                Ok(ids.iter().map(|id| existing.contains(*id)).collect())
            })
            .map_err(storage)
    }

    fn remove(&self, lift_id: &str, now_us: i64) -> RegistryResult<bool> {
        self.pg
            .block(async {
                let mut client = self.pg.client().await?;
                let (tx, rev) = write(&mut client).await?;
                let n = tx
                    .execute("DELETE FROM registry_lifts WHERE lift_id = $1", &[&lift_id])
                    .await?;
                tx.execute(
                    "UPDATE registry_assignments SET valid_to_us = $2, rev = $3
                     WHERE lift_id = $1 AND valid_to_us IS NULL",
                    &[&lift_id, &now_us, &rev],
                )
                .await?;
                tx.commit().await?;
                Ok(n > 0)
            })
            .map_err(storage)
    }

    fn changed_since(&self, after: i64) -> RegistryResult<(Vec<Changed>, i64)> {
        self.pg
            .block(async {
                let mut client = self.pg.client().await?;
                let tx = crate::read_snapshot(&mut client).await?;
                let newest: i64 = tx
                    .query_one("SELECT rev FROM registry_revision", &[])
                    .await?
                    .get(0);
                let mut changed = Vec::new();
                if newest > after {
                    const IDS: &str = "SELECT lift_id FROM registry_lifts WHERE rev > $1
                                       UNION SELECT lift_id FROM registry_assignments WHERE rev > $1";
                    let lifts = tx
                        .query(
                            &format!(
                                "SELECT {LIFT_COLUMNS} FROM registry_lifts WHERE lift_id IN ({IDS})"
                            ),
                            &[&after],
                        )
                        .await?;
                    let mut infos: HashMap<LiftId, LiftInfo> = lifts
                        .iter()
                        .filter_map(info_of)
                        .map(|i| (i.lift_id.clone(), i))
                        .collect();
                    let history = tx
                        .query(
                            &format!(
                                "SELECT customer, building, valid_from_us, valid_to_us, lift_id
                                 FROM registry_assignments WHERE lift_id IN ({IDS})
                                 ORDER BY lift_id, {HISTORY_ORDER}"
                            ),
                            &[&after],
                        )
                        .await?;
                    for (lift_id, history) in histories(&history) {
                        changed.push(Changed {
                            info: infos.remove(&lift_id),
                            lift_id,
                            history,
                        });
                    }
                    changed.extend(infos.into_values().map(|info| Changed {
                        lift_id: info.lift_id.clone(),
                        info: Some(info),
                        history: Vec::new(),
                    }));
                }
                tx.commit().await?;
                Ok((changed, newest))
            })
            .map_err(storage)
    }
}
