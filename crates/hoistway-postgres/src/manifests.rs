//! [`ManifestStore`] in PostgreSQL: the storage catalog every node reads, one row per partition
//! and tier in `storage_manifests` (the manifest as JSON, as the file holds it, and its
//! generation). Each partition's holder writes its own files (under `partitions/<p>/` in the
//! tiers when there are several) and lists them in its own rows.
//!
//! A commit is a compare-and-swap on the generation. A store opened [`PgManifestStore::fenced`]
//! also checks, in the same transaction and under a share lock of the partition's row, that the
//! writer's epoch is still the partition's: a processor that lost its partition (paused, cut
//! off) cannot list files after the next holder claimed it, and the next holder, which loads
//! the manifests after its claim, sees everything the previous one committed.

use hoistway_store::manifest::conflict;
use hoistway_store::{Error as StoreError, Manifest, ManifestStore, Result as StoreResult, Tier};

use crate::{Error, Postgres};

/// The component name in `schema_versions`.
pub const COMPONENT: &str = "storage";

/// `MIGRATIONS[n]` takes the storage tables from version `n` to `n + 1`.
pub const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE storage_manifests (
        tier text PRIMARY KEY,
        generation bigint NOT NULL,
        body text NOT NULL,
        committed_at timestamptz NOT NULL);
",
    // Version 2: a catalog per partition; what was there is partition 0's.
    "
    ALTER TABLE storage_manifests ADD COLUMN partition integer NOT NULL DEFAULT 0;
    ALTER TABLE storage_manifests DROP CONSTRAINT storage_manifests_pkey;
    ALTER TABLE storage_manifests ADD PRIMARY KEY (partition, tier);
",
];

fn store_error(e: Error) -> StoreError {
    match e {
        Error::Format { .. } | Error::Record { .. } => StoreError::Corrupt(e.to_string()),
        other => StoreError::Catalog(other.to_string()),
    }
}

/// Both tiers' manifests of one partition, shared by every node given `pg`.
#[derive(Clone)]
pub struct PgManifestStore {
    pg: Postgres,
    partition: u16,
    /// Commits only while this epoch holds this partition (`processor_partitions`).
    fence: Option<(u16, u64)>,
}

impl std::fmt::Debug for PgManifestStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgManifestStore")
            .field("schema", &self.pg.schema())
            .field("partition", &self.partition)
            .field("fence", &self.fence)
            .finish()
    }
}

impl PgManifestStore {
    /// Opens the storage tables of `pg`, creating or migrating them: partition 0's catalog.
    /// Blocks.
    pub fn open(pg: Postgres) -> crate::Result<Self> {
        pg.migrate(COMPONENT, MIGRATIONS)?;
        Ok(Self {
            pg,
            partition: 0,
            fence: None,
        })
    }

    /// Partition `partition`'s catalog, read-only until [`PgManifestStore::fenced`].
    pub fn of_partition(&self, partition: u16) -> Self {
        Self {
            pg: self.pg.clone(),
            partition,
            fence: None,
        }
    }

    /// Partition `partition`'s catalog, committing only while `epoch` is its epoch in the
    /// processor tables (see `PgCheckpointStore`): what a partition's holder writes through.
    pub fn fenced(&self, partition: u16, epoch: u64) -> Self {
        Self {
            pg: self.pg.clone(),
            partition,
            fence: Some((partition, epoch)),
        }
    }
}

impl PgManifestStore {
    /// Takes `manifest` as `tier`'s if PostgreSQL holds none yet (a deployment whose tiers were
    /// on S3 before it moved to the cluster mode keeps its files): `true` if it did.
    pub async fn adopt(&self, tier: Tier, manifest: &Manifest) -> StoreResult<bool> {
        let body =
            serde_json::to_string(manifest).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (pg, generation) = (self.pg.clone(), manifest.generation as i64);
        let partition = i32::from(self.partition);
        self.pg
            .run(async move {
                let client = pg.client().await?;
                let n = client
                    .execute(
                        "INSERT INTO storage_manifests (partition, tier, generation, body, committed_at)
                         VALUES ($1, $2, $3, $4, now()) ON CONFLICT (partition, tier) DO NOTHING",
                        &[&partition, &tier.as_str(), &generation, &body],
                    )
                    .await?;
                Ok(n == 1)
            })
            .await
            .map_err(store_error)
    }

    /// `tier`'s manifest, unless it is still generation `known`.
    async fn read(&self, tier: Tier, known: Option<i64>) -> StoreResult<Option<Manifest>> {
        let pg = self.pg.clone();
        let partition = i32::from(self.partition);
        let body = self
            .pg
            .run(async move {
                let client = pg.client().await?;
                let row = client
                    .query_opt(
                        "SELECT body FROM storage_manifests
                         WHERE partition = $1 AND tier = $2 AND generation IS DISTINCT FROM $3",
                        &[&partition, &tier.as_str(), &known],
                    )
                    .await?;
                Ok::<_, Error>(row.map(|r| r.get::<_, String>(0)))
            })
            .await
            .map_err(store_error)?;
        body.map(|b| Manifest::decode(b.as_bytes())).transpose()
    }
}

#[async_trait::async_trait]
impl ManifestStore for PgManifestStore {
    async fn load(&self, tier: Tier) -> StoreResult<Option<Manifest>> {
        self.read(tier, None).await
    }

    async fn load_newer(&self, tier: Tier, known: u64) -> StoreResult<Option<Manifest>> {
        self.read(tier, Some(known as i64)).await
    }

    async fn commit(&self, tier: Tier, manifest: &Manifest) -> StoreResult<()> {
        let body =
            serde_json::to_string(manifest).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (pg, fence) = (self.pg.clone(), self.fence);
        let generation = manifest.generation as i64;
        let partition = i32::from(self.partition);
        self.pg
            .run(async move {
                let mut client = pg.client().await?;
                let tx = client.transaction().await?;
                if let Some(fence) = fence
                    && let Some(why) = crate::fenced_out(&tx, fence).await?
                {
                    return Ok(Err(StoreError::Conflict(format!(
                        "{why}: the {} manifest is not committed",
                        tier.as_str()
                    ))));
                }
                let written = if generation == 1 {
                    tx.execute(
                        "INSERT INTO storage_manifests (partition, tier, generation, body, committed_at)
                         VALUES ($1, $2, $3, $4, now()) ON CONFLICT (partition, tier) DO NOTHING",
                        &[&partition, &tier.as_str(), &generation, &body],
                    )
                    .await?
                } else {
                    tx.execute(
                        "UPDATE storage_manifests
                         SET generation = $3::bigint, body = $4, committed_at = now()
                         WHERE partition = $1 AND tier = $2 AND generation = $3::bigint - 1",
                        &[&partition, &tier.as_str(), &generation, &body],
                    )
                    .await?
                };
                if written == 0 {
                    let committed: Option<i64> = tx
                        .query_opt(
                            "SELECT generation FROM storage_manifests WHERE partition = $1 AND tier = $2",
                            &[&partition, &tier.as_str()],
                        )
                        .await?
                        .map(|r| r.get(0));
                    return Ok(Err(conflict(
                        tier,
                        committed.unwrap_or(0) as u64,
                        generation as u64,
                    )));
                }
                tx.commit().await?;
                Ok::<_, Error>(Ok(()))
            })
            .await
            .map_err(store_error)?
    }

    fn describe(&self) -> String {
        format!(
            "partition {}'s rows of the storage_manifests table of the PostgreSQL schema {:?}",
            self.partition,
            self.pg.schema()
        )
    }
}
