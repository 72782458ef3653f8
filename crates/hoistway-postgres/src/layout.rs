//! The cluster's layout, fixed when the first node starts: how many partitions readings are
//! spread over. Streams, checkpoints, leases and storage catalogs are laid out by it, so every
//! node must use the same count; a node configured otherwise refuses to start rather than
//! route readings to partitions nobody processes. And which processor nodes are alive
//! ([`PgMembership`]), so they spread the partitions over themselves.

use std::time::Duration;

use hoistway_processor::membership::{Member, Membership};
use hoistway_processor::store::StoreError;

use crate::{Error, Postgres, Result};

/// The component name in `schema_versions`.
pub const COMPONENT: &str = "layout";

/// `MIGRATIONS[n]` takes the layout table from version `n` to `n + 1`.
pub const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE cluster_layout (
        name text PRIMARY KEY,
        value bigint NOT NULL,
        set_at timestamptz NOT NULL);
",
    "
    CREATE TABLE cluster_members (
        member text PRIMARY KEY,
        alive_until timestamptz NOT NULL,
        silent_lifts bigint NOT NULL DEFAULT 0);
    CREATE TABLE cluster_duties (
        duty text PRIMARY KEY,
        member text NOT NULL,
        until timestamptz NOT NULL);
",
];

/// Records `partitions` as the cluster's partition count if none is recorded yet, and returns
/// the recorded count (`partitions` or the one recorded before). A cluster that processed
/// readings before the count was recorded (releases that ran one partition) is recorded as
/// one partition, whatever `partitions` says: its lifts' state is in partition 0. Blocks.
pub fn settle_partitions(pg: &Postgres, partitions: u16) -> Result<u16> {
    pg.migrate(COMPONENT, MIGRATIONS)?;
    pg.block(async {
        let client = pg.client().await?;
        let has_processed: bool = client
            .query_one(
                "SELECT to_regclass('processor_partitions') IS NOT NULL",
                &[],
            )
            .await?
            .get(0);
        let processed = has_processed
            && client
                .query_one("SELECT EXISTS (SELECT 1 FROM processor_partitions)", &[])
                .await?
                .get::<_, bool>(0);
        let count = if processed { 1 } else { i64::from(partitions) };
        client
            .execute(
                "INSERT INTO cluster_layout (name, value, set_at) VALUES ('partitions', $1, now())
                 ON CONFLICT (name) DO NOTHING",
                &[&count],
            )
            .await?;
        let recorded: i64 = client
            .query_one(
                "SELECT value FROM cluster_layout WHERE name = 'partitions'",
                &[],
            )
            .await?
            .get(0);
        u16::try_from(recorded).map_err(|_| Error::Record {
            table: "cluster_layout",
            message: format!("partitions = {recorded}"),
        })
    })
}

/// The processor nodes alive, in `cluster_members`: each one's heartbeat sets how long it counts
/// as alive, on PostgreSQL's clock (the nodes' clocks may disagree).
#[derive(Clone)]
pub struct PgMembership {
    pg: Postgres,
}

impl PgMembership {
    /// Opens the layout tables of `pg`, creating or migrating them. Blocks.
    pub fn open(pg: Postgres) -> Result<Self> {
        pg.migrate(COMPONENT, MIGRATIONS)?;
        Ok(Self { pg })
    }
}

/// The members alive now, sorted by name.
const ALIVE: &str = "SELECT member, silent_lifts FROM cluster_members
                     WHERE alive_until > clock_timestamp()
                     ORDER BY member COLLATE \"C\"";

fn members(rows: &[tokio_postgres::Row]) -> Vec<Member> {
    rows.iter()
        .map(|r| Member {
            name: r.get(0),
            silent_lifts: u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
        })
        .collect()
}

fn unavailable(e: Error) -> StoreError {
    match e {
        Error::Unavailable(m) => StoreError::Unavailable(m),
        other => StoreError::Failed(other.to_string()),
    }
}

impl Membership for PgMembership {
    fn heartbeat(
        &self,
        member: &str,
        ttl: Duration,
        silent_lifts: u64,
    ) -> std::result::Result<Vec<Member>, StoreError> {
        let silent = i64::try_from(silent_lifts).unwrap_or(i64::MAX);
        self.pg
            .block(async {
                let client = self.pg.client().await?;
                client
                    .execute(
                        "INSERT INTO cluster_members (member, alive_until, silent_lifts)
                         VALUES ($1, clock_timestamp() + make_interval(secs => $2), $3)
                         ON CONFLICT (member) DO UPDATE
                         SET alive_until = excluded.alive_until, silent_lifts = excluded.silent_lifts",
                        &[&member, &ttl.as_secs_f64(), &silent],
                    )
                    .await?;
                let rows = client.query(ALIVE, &[]).await?;
                Ok::<_, Error>(members(&rows))
            })
            .map_err(unavailable)
    }

    fn alive(&self) -> std::result::Result<Vec<Member>, StoreError> {
        self.pg
            .block(async {
                let client = self.pg.client().await?;
                let rows = client.query(ALIVE, &[]).await?;
                Ok::<_, Error>(members(&rows))
            })
            .map_err(unavailable)
    }

    fn lead(
        &self,
        member: &str,
        duty: &str,
        ttl: Duration,
    ) -> std::result::Result<bool, StoreError> {
        self.pg
            .block(async {
                let client = self.pg.client().await?;
                // Taken when free, lapsed or already this member's; otherwise nothing changes
                // and no row comes back.
                let held = client
                    .query_opt(
                        "INSERT INTO cluster_duties (duty, member, until)
                         VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3))
                         ON CONFLICT (duty) DO UPDATE
                         SET member = excluded.member, until = excluded.until
                         WHERE cluster_duties.member = excluded.member
                            OR cluster_duties.until <= clock_timestamp()
                         RETURNING member",
                        &[&duty, &member, &ttl.as_secs_f64()],
                    )
                    .await?;
                Ok::<_, Error>(held.is_some())
            })
            .map_err(unavailable)
    }

    fn leave(&self, member: &str) -> std::result::Result<(), StoreError> {
        self.pg
            .block(async {
                let client = self.pg.client().await?;
                client
                    .execute("DELETE FROM cluster_members WHERE member = $1", &[&member])
                    .await?;
                client
                    .execute("DELETE FROM cluster_duties WHERE member = $1", &[&member])
                    .await?;
                Ok::<_, Error>(())
            })
            .map_err(unavailable)
    }
}
