//! The cluster's layout, fixed when the first node starts: how many partitions readings are
//! spread over. Streams, checkpoints, leases and storage catalogs are laid out by it, so every
//! node must use the same count; a node configured otherwise refuses to start rather than
//! route readings to partitions nobody processes.

use crate::{Error, Postgres, Result};

/// The component name in `schema_versions`.
pub const COMPONENT: &str = "layout";

/// `MIGRATIONS[n]` takes the layout table from version `n` to `n + 1`.
pub const MIGRATIONS: &[&str] = &["
    CREATE TABLE cluster_layout (
        name text PRIMARY KEY,
        value bigint NOT NULL,
        set_at timestamptz NOT NULL);
"];

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
